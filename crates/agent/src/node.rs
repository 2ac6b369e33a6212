//! Node's IPC channel, as `child_process.fork` sets it up, for every instance that runs
//! on Node (or Bun): a unix socket pair whose child end is `NODE_CHANNEL_FD`, carrying
//! one JSON value per line and, beside a `NODE_HANDLE` message, a file descriptor
//! (SCM_RIGHTS). It gives PM2's apps what they rely on: `process.send('ready')` for
//! `wait_ready`, `'shutdown'` for `shutdown_with_message`, `process.on('message')` for
//! `fleet send`, and, with `NODE_UNIQUE_ID`, the Node cluster worker protocol, in which
//! the agent plays the primary: each `queryServer` is answered with a listening
//! socket the agent binds once per address and keeps across restarts and reloads
//! (Node's "shared handle" scheduling; the kernel spreads connections). The supervisor
//! decides what to do with each message; this file only speaks the protocol.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use fleet_config::AppSpec;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde_json::{Value, json};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// The channel's descriptor number in the child: after fd 3, which a shared socket
/// (`LISTEN_FDS`) may take.
pub const CHANNEL_FD: i32 = 4;

/// A message line longer than this is dropped (an app cannot make the agent buffer
/// without bound); Node's own default is far below it for anything but data dumps.
const MAX_LINE: usize = 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

pub use fleet_config::runs_on_node;

/// Whether the agent is the Node cluster primary of the app's instances: cluster mode
/// on Node with no `port` of fleet's (PM2's "cluster mode without code changes").
pub fn is_cluster_worker(spec: &AppSpec) -> bool {
    spec.exec_mode == fleet_config::ExecMode::Cluster && spec.port.is_none() && runs_on_node(spec)
}

/// What the app sent.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// `process.send('ready')`: PM2's readiness signal for `wait_ready`.
    Ready,
    /// A cluster worker listens on an address (`cluster` `listening`).
    Listening,
    /// A cluster worker asks for the listening socket of an address.
    QueryServer(Query),
    /// Anything else the app sent: replies for `fleet send --wait`.
    Message(Value),
}

/// A worker's `queryServer`: the address its `listen()` or `bind()` asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The worker's sequence number, echoed as `ack` in the reply.
    pub seq: u64,
    /// `null` (any address), an IP address, or a unix socket path.
    pub address: Option<String>,
    pub port: i64,
    /// 4, 6, -1 (a unix socket path), `udp4` or `udp6`.
    pub address_type: String,
    /// `listen({ fd })`.
    pub fd: Option<i64>,
    /// libuv flags: 1 is `ipv6Only`.
    pub flags: i64,
    /// Several servers of one worker on the same address.
    pub index: i64,
    /// Server data the worker hands to the others (TLS ticket keys), echoed back.
    pub data: Value,
}

impl Query {
    /// The address the socket is bound to: workers of an app asking for the same one
    /// share its socket.
    pub fn address_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.address.as_deref().unwrap_or(""),
            self.port,
            self.address_type,
            self.fd.map(|fd| fd.to_string()).unwrap_or_default()
        )
    }

    /// The key a worker tracks the server by (Node's primary adds the index).
    pub fn server_key(&self) -> String {
        format!("{}:{}", self.address_key(), self.index)
    }

    /// The reply, with the listening socket (`errno` 0) or the error (negative errno,
    /// as libuv reports it) and no socket.
    pub fn reply(&self, errno: i32) -> Value {
        json!({
            "cmd": "NODE_CLUSTER",
            "errno": errno,
            "key": self.server_key(),
            "ack": self.seq,
            "data": self.data,
        })
    }
}

/// Reads one message; `None` for the protocol's own bookkeeping.
pub fn classify(message: Value) -> Option<Incoming> {
    if message.as_str() == Some("ready") {
        return Some(Incoming::Ready);
    }
    let cmd = message.get("cmd").and_then(Value::as_str).unwrap_or("");
    if cmd == "NODE_CLUSTER" {
        return match message.get("act").and_then(Value::as_str) {
            Some("queryServer") => parse_query(&message).map(Incoming::QueryServer),
            Some("listening") => Some(Incoming::Listening),
            // online, close, exitedAfterDisconnect: nothing for the agent to do.
            _ => None,
        };
    }
    if cmd.starts_with("NODE_") {
        return None;
    }
    Some(Incoming::Message(message))
}

fn parse_query(message: &Value) -> Option<Query> {
    let address_type = match message.get("addressType")? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    Some(Query {
        seq: message.get("seq")?.as_u64()?,
        address: message
            .get("address")
            .and_then(Value::as_str)
            .map(str::to_string),
        port: message.get("port").and_then(Value::as_i64).unwrap_or(0),
        address_type,
        fd: message.get("fd").and_then(Value::as_i64),
        flags: message.get("flags").and_then(Value::as_i64).unwrap_or(0),
        index: message.get("index").and_then(Value::as_i64).unwrap_or(0),
        data: message.get("data").cloned().unwrap_or(Value::Null),
    })
}

/// What kind of socket a handle is, for the receiving Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketKind {
    /// A TCP or unix stream listener.
    Stream,
    /// A UDP socket (`dgram`).
    Datagram,
}

impl SocketKind {
    fn node_type(self) -> &'static str {
        match self {
            SocketKind::Stream => "net.Native",
            SocketKind::Datagram => "dgram.Native",
        }
    }
}

/// A socket the agent bound for a worker's `queryServer`.
pub struct Socket {
    pub fd: OwnedFd,
    pub kind: SocketKind,
    /// A unix socket's path, on the copy the agent keeps: removed with the app.
    pub unix_path: Option<std::path::PathBuf>,
}

impl Socket {
    /// Another descriptor of the same socket, for one more worker.
    pub fn try_clone(&self) -> std::io::Result<Socket> {
        Ok(Socket {
            fd: self.fd.try_clone()?,
            kind: self.kind,
            unix_path: None,
        })
    }

    /// Closes the agent's copy; a unix socket's file goes with it.
    pub fn close(self) {
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds what `query` asks for, as Node's primary would: no address means `::`
/// (dual-stack) and else `0.0.0.0`; `addressType` -1 is a unix socket path; `udp4`
/// and `udp6` are datagram sockets. The error is a negative errno, as libuv's are.
pub fn bind(query: &Query) -> Result<Socket, i32> {
    use socket2::{Domain, Protocol, SockAddr, Socket as RawSocket, Type};
    let errno = |error: std::io::Error| -error.raw_os_error().unwrap_or(libc_einval());
    if query.fd.is_some_and(|fd| fd >= 0) {
        // listen({ fd }): the worker's own descriptor, meaningless in the agent.
        return Err(-95);
    }
    let (datagram, v6) = match query.address_type.as_str() {
        "-1" => {
            let path = query.address.as_deref().ok_or(-22)?;
            let listener = std::os::unix::net::UnixListener::bind(path).map_err(errno)?;
            listener.set_nonblocking(true).map_err(errno)?;
            return Ok(Socket {
                fd: OwnedFd::from(listener),
                kind: SocketKind::Stream,
                unix_path: Some(path.into()),
            });
        }
        "udp4" => (true, false),
        "udp6" => (true, true),
        "6" => (false, true),
        _ => (false, false),
    };
    let kind = if datagram { Type::DGRAM } else { Type::STREAM };
    let protocol = if datagram {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let port = u16::try_from(query.port.max(0)).map_err(|_| -22)?;
    let open = |address: std::net::IpAddr, only_v6: bool| -> std::io::Result<RawSocket> {
        let domain = if address.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = RawSocket::new(domain, kind, Some(protocol))?;
        socket.set_reuse_address(true)?;
        if address.is_ipv6() {
            socket.set_only_v6(only_v6)?;
        }
        socket.set_cloexec(true)?;
        // libuv takes a passed socket as it is and expects it non-blocking (Node's
        // primary makes them so): a blocking one would hang a worker's accept loop
        // whenever another worker took the connection first.
        socket.set_nonblocking(true)?;
        socket.bind(&SockAddr::from(std::net::SocketAddr::new(address, port)))?;
        // Bound, not listening, as Node's primary leaves it: the first worker's
        // `listen()` makes it listen, and the agent's copy keeps it listening
        // across every worker's restart.
        Ok(socket)
    };
    let only_v6 = query.flags & IPV6_ONLY != 0;
    let socket = match &query.address {
        Some(address) => {
            let address: std::net::IpAddr = address.parse().map_err(|_| -22)?;
            open(address, only_v6)
        }
        // Node's default: IPv6 any, dual-stack, else IPv4 any.
        None if !datagram || v6 => open(std::net::Ipv6Addr::UNSPECIFIED.into(), only_v6)
            .or_else(|_| open(std::net::Ipv4Addr::UNSPECIFIED.into(), false)),
        None => open(std::net::Ipv4Addr::UNSPECIFIED.into(), false),
    }
    .map_err(errno)?;
    Ok(Socket {
        fd: OwnedFd::from(socket),
        kind: if datagram {
            SocketKind::Datagram
        } else {
            SocketKind::Stream
        },
        unix_path: None,
    })
}

/// libuv's `UV_TCP_IPV6ONLY` / `UV_UDP_IPV6ONLY`.
const IPV6_ONLY: i64 = 1;

fn libc_einval() -> i32 {
    22
}

/// PM2's `shutdown_with_message`: what a stop sends instead of the kill signal.
pub const SHUTDOWN: &str = "shutdown";

/// A way to send on a channel that outlives a borrow of it (a delayed stop).
#[derive(Clone)]
pub struct Sender(mpsc::UnboundedSender<Outgoing>);

impl Sender {
    pub fn send(&self, message: Value) {
        let _ = self.0.send(Outgoing { message, fd: None });
    }
}

/// A message for the app, with a descriptor to pass beside it.
pub struct Outgoing {
    pub message: Value,
    pub fd: Option<OwnedFd>,
}

/// The agent's end of one process's channel. Dropping it closes the channel, which a
/// Node cluster worker takes as the primary's exit: keep it as long as the process.
pub struct Channel {
    tx: mpsc::UnboundedSender<Outgoing>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Option<ChannelCarry>>>,
    /// Another descriptor of the agent's end: what is handed over if the task does
    /// not stop in time (a message half written to an app that stopped reading).
    spare: OwnedFd,
}

impl Drop for Channel {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A channel handed from one agent image to the next (`fleet update`): the agent's
/// end and where the conversation stands.
#[derive(Debug)]
pub struct ChannelCarry {
    pub fd: OwnedFd,
    /// The start of a message line not yet complete, and whether it is being dropped.
    pub partial: Vec<u8>,
    pub skipping: bool,
    /// A handle was sent and the app has not acknowledged it yet.
    pub awaiting_ack: bool,
    /// Messages not sent yet, in order, with the socket to pass beside each.
    pub queued: Vec<(Value, Option<OwnedFd>)>,
}

/// How long a handover waits for the channel's task to stop between two messages.
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Channel {
    /// A channel and the child's end, for `NODE_CHANNEL_FD`; `on_message` is called
    /// with each message the app sends.
    pub fn open(
        on_message: impl Fn(Incoming) + Send + 'static,
    ) -> std::io::Result<(Channel, OwnedFd)> {
        let (ours, theirs) = StdUnixStream::pair()?;
        let channel = Channel::adopt(
            ChannelCarry {
                fd: OwnedFd::from(ours),
                partial: Vec::new(),
                skipping: false,
                awaiting_ack: false,
                queued: Vec::new(),
            },
            on_message,
        )?;
        Ok((channel, OwnedFd::from(theirs)))
    }

    /// Takes over a channel another agent image handed over.
    pub fn adopt(
        carry: ChannelCarry,
        on_message: impl Fn(Incoming) + Send + 'static,
    ) -> std::io::Result<Channel> {
        let spare = carry.fd.try_clone()?;
        let ours = StdUnixStream::from(carry.fd);
        ours.set_nonblocking(true)?;
        let stream = UnixStream::from_std(ours)?;
        let state = State {
            lines: LineBuffer {
                partial: carry.partial,
                skipping: carry.skipping,
            },
            awaiting_ack: carry.awaiting_ack,
            queued: (carry.queued.into_iter())
                .map(|(message, fd)| Outgoing { message, fd })
                .collect(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(stream, rx, stopped, state, on_message));
        Ok(Channel {
            tx,
            stop: Some(stop),
            task: Some(task),
            spare,
        })
    }

    /// The channel as systemd's store keeps it (`crate::fdstore`): another
    /// descriptor of the agent's end; what is in flight is not kept.
    pub fn copy(&self) -> std::io::Result<ChannelCarry> {
        Ok(ChannelCarry {
            fd: self.spare.try_clone()?,
            partial: Vec::new(),
            skipping: false,
            awaiting_ack: false,
            queued: Vec::new(),
        })
    }

    /// Stops the channel between two messages and hands it over, for the next agent
    /// image. A task that does not stop in time is dropped and its end handed over as
    /// it is (a message it was writing may arrive cut).
    pub async fn hand_over(mut self) -> std::io::Result<ChannelCarry> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            match tokio::time::timeout(HANDOVER_WAIT, task).await {
                Ok(Ok(Some(carry))) => return Ok(carry),
                Ok(_) => {}
                Err(_) => {
                    abort.abort();
                    tracing::warn!("a Node IPC channel did not stop in time; handed over as it is");
                }
            }
        }
        self.copy()
    }

    pub fn sender(&self) -> Sender {
        Sender(self.tx.clone())
    }

    /// Sends `message`; a channel whose process is gone drops it.
    pub fn send(&self, message: Value) {
        let _ = self.tx.send(Outgoing { message, fd: None });
    }

    /// Sends `message` with a socket, wrapped in `NODE_HANDLE` as Node does.
    pub fn send_handle(&self, message: Value, socket: Socket) {
        let message =
            json!({"cmd": "NODE_HANDLE", "type": socket.kind.node_type(), "msg": message});
        let _ = self.tx.send(Outgoing {
            message,
            fd: Some(socket.fd),
        });
    }
}

/// Where a conversation stands (what a handover carries).
struct State {
    lines: LineBuffer,
    // Node's own rule: after a message with a handle, nothing more is sent until the
    // other side acknowledges it (`NODE_HANDLE_ACK`), so every handle is read with
    // its own message.
    awaiting_ack: bool,
    queued: VecDeque<Outgoing>,
}

async fn run(
    stream: UnixStream,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    mut stop: oneshot::Receiver<()>,
    mut state: State,
    on_message: impl Fn(Incoming) + Send + 'static,
) -> Option<ChannelCarry> {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        while !state.awaiting_ack
            && let Some(next) = state.queued.pop_front()
        {
            state.awaiting_ack = next.fd.is_some();
            if write(&stream, next).await.is_err() {
                return None;
            }
        }
        tokio::select! {
            _ = &mut stop => {
                while let Ok(next) = outgoing.try_recv() {
                    state.queued.push_back(next);
                }
                let fd = OwnedFd::from(stream.into_std().ok()?);
                return Some(ChannelCarry {
                    fd,
                    partial: state.lines.partial,
                    skipping: state.lines.skipping,
                    awaiting_ack: state.awaiting_ack,
                    queued: state.queued.into_iter().map(|o| (o.message, o.fd)).collect(),
                });
            }
            ready = stream.readable() => {
                if ready.is_err() {
                    return None;
                }
                match stream.try_read(&mut chunk) {
                    Ok(0) => return None,
                    Ok(n) => {
                        for line in state.lines.push(&chunk[..n]) {
                            let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                                continue;
                            };
                            if message.get("cmd").and_then(Value::as_str) == Some("NODE_HANDLE_ACK") {
                                state.awaiting_ack = false;
                            } else if let Some(incoming) = classify(message) {
                                on_message(incoming);
                            }
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
            next = outgoing.recv() => {
                let next = next?;
                state.queued.push_back(next);
            }
        }
    }
}

/// Writes one message line; the descriptor goes with its first byte (Node delivers a
/// handle with the message read in the same chunk).
async fn write(stream: &UnixStream, outgoing: Outgoing) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&outgoing.message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut written = 0;
    let mut fd = outgoing.fd;
    while written < line.len() {
        stream.writable().await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&line[written..])];
            let raw = fd.as_ref().map(|fd| [fd.as_raw_fd()]);
            let control: Vec<ControlMessage<'_>> = match &raw {
                Some(raw) => vec![ControlMessage::ScmRights(raw)],
                None => Vec::new(),
            };
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                &control,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match result {
            Ok(n) => {
                written += n;
                // Sent with the first bytes: the descriptor can close on our side.
                fd = None;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Splits the stream into lines, dropping any line longer than `MAX_LINE`.
#[derive(Default)]
struct LineBuffer {
    partial: Vec<u8>,
    /// Inside a line that is being dropped.
    skipping: bool,
}

impl LineBuffer {
    fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let complete = piece.last() == Some(&b'\n');
            let body = if complete {
                &piece[..piece.len() - 1]
            } else {
                piece
            };
            if !self.skipping {
                if self.partial.len() + body.len() > MAX_LINE {
                    self.partial.clear();
                    self.skipping = true;
                } else {
                    self.partial.extend_from_slice(body);
                }
            }
            if complete {
                if !self.skipping {
                    lines.push(std::mem::take(&mut self.partial));
                }
                self.skipping = false;
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests;
