//! The HTTP server and its graceful stop: accept on one listener, answer `/`, `/health`
//! and `/slow` over keep-alive connections, and on shutdown drain the way a reload needs
//! (issue 4): stop accepting at once, finish in-flight requests, close every keep-alive
//! connection cleanly, then return. Where the listener comes from is `listen`'s business.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use crate::http::{self, ParseError, Request};

/// How long a keep-alive connection with no request under way may stay open once the
/// drain has started. Closing an idle keep-alive connection is ordinary HTTP (clients
/// retry a request that got no response byte), but a client may be sending at that very
/// instant; a short grace lets such a request arrive and be answered instead. The issue
/// suggests 100 ms; a client under load (wrk) sends its next request within microseconds.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(100);

/// During the drain, how long a client may take to finish sending a request it started.
/// Past this the connection is dropped, so one stuck client cannot hold the stop forever
/// (fleet's kill_timeout would end it anyway; this keeps the exit code 0).
pub const DRAIN_PARTIAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// After the last response on a connection, how long to keep reading (and discarding)
/// before closing. Closing a socket with unread input makes the kernel send RST, which
/// can destroy a response the client has not read yet; nginx's `lingering_close` does
/// the same. The client closes first after a `Connection: close` response, so this
/// bound is only reached by a client that keeps an idle connection open.
pub const LINGER_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest `/slow?ms=N` honoured (10 minutes), so a typo cannot park a request for days.
pub const MAX_SLOW_MS: u64 = 600_000;

/// `/slow` without `ms`.
pub const DEFAULT_SLOW_MS: u64 = 1000;

/// At most this many queued connections are taken when a private listener closes
/// (Linux's default `somaxconn`), so a client that keeps connecting cannot delay the
/// stop forever.
const MAX_BACKLOG_TAKEN: usize = 4096;

/// Pause after an `accept` error (EMFILE and the like) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What `GET /` reports, so a test can tell instances and generations apart.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `FLEET_APP_INSTANCE` or `NODE_APP_INSTANCE`, `-` when neither is set.
    pub instance: String,
    pub pid: u32,
    /// `VERSION`, `v1` when unset.
    pub version: String,
    /// False under `--never-ready --listen-anyway` (an HTTP health check never passes
    /// either), and after `--unhealthy-after-ms`: `/health` answers 503 while `/` still
    /// answers.
    pub healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Identity {
    fn line(&self) -> String {
        format!(
            "instance={} pid={} version={}",
            self.instance, self.pid, self.version
        )
    }
}

/// Whether other processes accept on the same socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Inherited (fd 3): closing our descriptor leaves the socket to the others.
    Shared,
    /// Our own `PORT`: closing it resets the connections still in its accept queue.
    Private,
}

/// Serves `listener` until `shutdown` completes, then drains and returns once every
/// connection is closed.
pub async fn serve(
    listener: TcpListener,
    kind: Listener,
    identity: Identity,
    shutdown: impl Future<Output = ()>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    // Every connection task holds a clone of `open_tx`; `recv` returns `None` once all
    // of them (and this one) are dropped, which is "every connection closed".
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    let spawn = |stream: TcpStream| {
        let connection = Connection {
            stream,
            identity: identity.clone(),
            drain: drain_rx.clone(),
            _open: open_tx.clone(),
        };
        tokio::spawn(connection.run());
    };
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn(stream),
                Err(e) => {
                    eprintln!("fleet-testapp: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    // Closing our listener first: with an inherited socket the kernel's accept queue is
    // shared, and the connections in it now go to the instances still accepting. A
    // private listener's queue has no one else to go to (in proxy mode the agent may
    // have connected just before the signal), so those connections are taken first.
    if kind == Listener::Private {
        for stream in take_backlog(listener) {
            spawn(stream);
        }
    } else {
        drop(listener);
    }
    drain_tx.send_replace(true);
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// Accepts what is already queued on `listener` without waiting, then closes it.
fn take_backlog(listener: TcpListener) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    let Ok(listener) = listener.into_std() else {
        return streams;
    };
    while streams.len() < MAX_BACKLOG_TAKEN {
        match listener.accept() {
            Ok((stream, _)) => match stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
            {
                Ok(stream) => streams.push(stream),
                Err(e) => eprintln!("fleet-testapp: cannot take a queued connection: {e}"),
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break, // WouldBlock: the queue is empty
        }
    }
    streams
}

struct Connection {
    stream: TcpStream,
    identity: Identity,
    drain: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

/// How reading the next request head ended.
enum Next {
    Request(Request),
    /// The client closed, the connection failed, or the drain closed it while idle.
    Closed,
    Bad(ParseError),
}

impl Connection {
    async fn run(mut self) {
        let _ = self.stream.set_nodelay(true);
        let mut buf = Vec::with_capacity(1024);
        loop {
            let request = match self.next_request(&mut buf).await {
                Next::Request(request) => request,
                Next::Closed => break,
                Next::Bad(error) => {
                    let (code, reason) = error.status();
                    let response = Response::new(code, reason, format!("{reason}\n"));
                    let _ = self.respond(&response, true, false, 1).await;
                    break;
                }
            };
            if self
                .skip_body(&mut buf, request.content_length)
                .await
                .is_err()
            {
                return;
            }
            let response = self.answer(&request).await;
            // Decided after the handler ran, so a request in flight when the drain began
            // is the connection's last one.
            let keep_alive = request.keep_alive && !*self.drain.borrow();
            let with_body = request.method != "HEAD";
            if self
                .respond(&response, with_body, keep_alive, request.minor_version)
                .await
                .is_err()
            {
                return;
            }
            if !keep_alive {
                break;
            }
        }
        self.close_gracefully().await;
    }

    /// Reads until `buf` starts with a whole request head, and removes the head from it.
    async fn next_request(&mut self, buf: &mut Vec<u8>) -> Next {
        loop {
            match http::parse_head(buf) {
                Ok(Some((request, used))) => {
                    buf.drain(..used);
                    return Next::Request(request);
                }
                Ok(None) => {}
                Err(error) => return Next::Bad(error),
            }
            let draining = *self.drain.borrow_and_update();
            let read = if buf.is_empty() && draining {
                // Idle keep-alive connection during the drain: wait a short grace for a
                // request the client may be sending right now, then close.
                match timeout(DRAIN_IDLE_GRACE, self.stream.read_buf(buf)).await {
                    Ok(read) => read,
                    Err(_) => return Next::Closed,
                }
            } else if buf.is_empty() {
                // Idle: wait for the next request or the start of the drain.
                tokio::select! {
                    read = self.stream.read_buf(buf) => read,
                    _ = self.drain.changed() => continue,
                }
            } else if draining {
                match timeout(DRAIN_PARTIAL_REQUEST_TIMEOUT, self.stream.read_buf(buf)).await {
                    Ok(read) => read,
                    Err(_) => return Next::Closed,
                }
            } else {
                self.stream.read_buf(buf).await
            };
            match read {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Reads and discards `len` bytes of request body, taking what is buffered first.
    async fn skip_body(&mut self, buf: &mut Vec<u8>, len: u64) -> io::Result<()> {
        let buffered = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        buf.drain(..buffered);
        let mut left = len - buffered as u64;
        let mut scratch = [0u8; 8192];
        while left > 0 {
            let want = scratch
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.stream.read(&mut scratch[..want]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left -= n as u64;
        }
        Ok(())
    }

    /// The routes.
    async fn answer(&self, request: &Request) -> Response {
        if request.method != "GET" && request.method != "HEAD" {
            let mut response =
                Response::new(405, "Method Not Allowed", "method not allowed\n".into());
            response.extra_header = Some("Allow: GET, HEAD");
            return response;
        }
        match request.path() {
            "/" => Response::ok(format!("{}\n", self.identity.line())),
            // Where this connection arrived and from whom: behind fleet's proxy the local
            // port is the instance's own, when the kernel steered it the app's public one.
            "/addr" => Response::ok(format!(
                "local={} peer={}\n",
                self.stream
                    .local_addr()
                    .map_or_else(|e| e.to_string(), |a| a.to_string()),
                self.stream
                    .peer_addr()
                    .map_or_else(|e| e.to_string(), |a| a.to_string()),
            )),
            "/health"
                if self
                    .identity
                    .healthy
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Response::ok("ok".into())
            }
            "/health" => Response::new(503, "Service Unavailable", "not ready".into()),
            "/slow" => {
                let ms = match request.query_param("ms").map(str::parse::<u64>) {
                    None => DEFAULT_SLOW_MS,
                    Some(Ok(ms)) => ms.min(MAX_SLOW_MS),
                    Some(Err(_)) => {
                        return Response::new(400, "Bad Request", "ms must be a number\n".into());
                    }
                };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Response::ok(format!("{} slept_ms={ms}\n", self.identity.line()))
            }
            _ => Response::new(404, "Not Found", "not found\n".into()),
        }
    }

    /// Writes one response; a HEAD response carries the GET body's length and no body.
    async fn respond(
        &mut self,
        response: &Response,
        with_body: bool,
        keep_alive: bool,
        minor_version: u8,
    ) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            response.code,
            response.reason,
            response.body.len()
        );
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        } else if minor_version == 0 {
            out.push_str("Connection: keep-alive\r\n");
        }
        if let Some(line) = response.extra_header {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if with_body {
            out.push_str(&response.body);
        }
        self.stream.write_all(out.as_bytes()).await
    }

    /// Sends FIN, then reads and discards until the client closes (or
    /// [`LINGER_TIMEOUT`]), so unread input never turns the close into a reset.
    async fn close_gracefully(mut self) {
        let _ = self.stream.shutdown().await;
        let mut scratch = [0u8; 4096];
        let _ = timeout(LINGER_TIMEOUT, async {
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

struct Response {
    code: u16,
    reason: &'static str,
    body: String,
    extra_header: Option<&'static str>,
}

impl Response {
    fn new(code: u16, reason: &'static str, body: String) -> Response {
        Response {
            code,
            reason,
            body,
            extra_header: None,
        }
    }

    fn ok(body: String) -> Response {
        Response::new(200, "OK", body)
    }
}
