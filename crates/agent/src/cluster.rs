//! Cluster mode for any language: the agent binds an app's `port` once and keeps it for
//! the app's whole life, across restarts and reloads. PM2's cluster mode only works for
//! Node (#3260, #3222) because it relies on Node's `cluster` module.
//!
//! - `exec_mode = "cluster"`: every instance inherits the bound socket at fd 3 by the
//!   systemd socket-activation protocol; the kernel spreads connections over the
//!   instances accepting on it. Zero copies.
//! - `exec_mode = "proxy"`: for programs that only read `PORT`. Each instance listens on
//!   a private loopback port; the agent accepts on the public port and hands each
//!   connection to a ready instance (round-robin or least-connections). An instance
//!   that is not ready, unhealthy or draining gets no new connections, and a connection
//!   an instance refuses is retried on another, so a crash costs no request.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_config::Balance;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The listen backlog of shared sockets: large enough that a burst arriving while
/// instances are being swapped waits in the kernel instead of being refused.
const LISTEN_BACKLOG: i32 = 1024;
/// How long the proxy holds a new connection while no instance is ready (a restart of
/// a single instance, every instance crashed) before closing it.
const NO_BACKEND_WAIT: Duration = Duration::from_secs(10);
/// A backend that does not accept within this long is skipped for this connection.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `port` on every IPv4 address, as apps behind PM2 usually do.
pub fn bind_shared(port: u16) -> std::io::Result<StdListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    // Restarting the agent must not wait for TIME_WAIT connections of the old socket.
    socket.set_reuse_address(true)?;
    let address = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// A free port on the loopback interface for a proxied instance.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let probe = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(probe.local_addr()?.port())
}

/// One instance the proxy may send connections to.
#[derive(Clone, Debug)]
pub struct Backend {
    pub id: u32,
    pub port: u16,
    pub active: Arc<AtomicUsize>,
}

impl PartialEq for Backend {
    fn eq(&self, other: &Backend) -> bool {
        self.id == other.id && self.port == other.port
    }
}

/// The balancer of one proxied app; dropping it stops accepting and closes every
/// proxied connection.
pub struct Proxy {
    backends: watch::Sender<Vec<Backend>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Connection counters survive backend list updates, keyed by port.
    counters: std::collections::HashMap<u16, Arc<AtomicUsize>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Proxy {
    /// Runs the proxy on a thread of its own with a single-threaded runtime: every
    /// proxied byte is a read and a write, and keeping them off the agent's shared
    /// workers avoids a cross-thread wake-up per request (`bench/cluster`).
    pub fn spawn(listener: StdListener, balance: Balance) -> std::io::Result<Proxy> {
        listener.set_nonblocking(true)?;
        let (backends, rx) = watch::channel(Vec::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("fleet-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "proxy cannot listen");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = accept_loop(listener, rx, balance) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here closes every proxied connection.
            })?;
        Ok(Proxy {
            backends,
            stop: Some(stop),
            counters: std::collections::HashMap::new(),
        })
    }

    /// Replaces the set of instances taking new connections (`(id, port)` pairs).
    pub fn set_backends(&mut self, ready: &[(u32, u16)]) {
        self.counters
            .retain(|port, _| ready.iter().any(|(_, p)| p == port));
        let list: Vec<Backend> = ready
            .iter()
            .map(|&(id, port)| Backend {
                id,
                port,
                active: self.counters.entry(port).or_default().clone(),
            })
            .collect();
        self.backends.send_if_modified(|current| {
            if *current == list {
                false
            } else {
                *current = list;
                true
            }
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    backends: watch::Receiver<Vec<Backend>>,
    balance: Balance,
) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let (client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(serve(client, backends.clone(), balance, next.clone()));
    }
}

/// Connects `client` to a backend and copies both ways until either side closes.
async fn serve(
    mut client: TcpStream,
    mut backends: watch::Receiver<Vec<Backend>>,
    balance: Balance,
    next: Arc<AtomicUsize>,
) {
    let deadline = tokio::time::Instant::now() + NO_BACKEND_WAIT;
    let mut refused: Vec<u16> = Vec::new();
    loop {
        let candidates: Vec<Backend> = backends
            .borrow_and_update()
            .iter()
            .filter(|b| !refused.contains(&b.port))
            .cloned()
            .collect();
        if let Some(backend) = pick(&candidates, balance, &next) {
            let connect = tokio::time::timeout(
                BACKEND_CONNECT_TIMEOUT,
                TcpStream::connect((Ipv4Addr::LOCALHOST, backend.port)),
            )
            .await;
            match connect {
                Ok(Ok(mut upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    backend.active.fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    backend.active.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                _ => {
                    // Refused or too slow: this instance is going away or stuck; the
                    // client's connection goes to another one.
                    refused.push(backend.port);
                    continue;
                }
            }
        }
        // Nothing to try now: wait for the set to change (an instance becoming ready).
        refused.clear();
        if tokio::time::timeout_at(deadline, backends.changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn pick(candidates: &[Backend], balance: Balance, next: &AtomicUsize) -> Option<Backend> {
    if candidates.is_empty() {
        return None;
    }
    match balance {
        Balance::RoundRobin => {
            let n = next.fetch_add(1, Ordering::Relaxed);
            Some(candidates[n % candidates.len()].clone())
        }
        Balance::LeastConnections => candidates
            .iter()
            .min_by_key(|b| b.active.load(Ordering::Relaxed))
            .cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers each connection with its own name.
    async fn echo_server(name: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let _ = stream.write_all(name.as_bytes()).await;
            }
        });
        (port, task)
    }

    async fn ask(port: u16) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let mut reply = String::new();
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.unwrap();
        reply.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        reply
    }

    #[tokio::test]
    async fn round_robin_and_a_refusing_backend_is_skipped() {
        let (a, _ta) = echo_server("a").await;
        let (b, _tb) = echo_server("b").await;
        let dead = free_loopback_port().unwrap();
        let public = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = public.local_addr().unwrap().port();
        let mut proxy = Proxy::spawn(public, Balance::RoundRobin).unwrap();
        proxy.set_backends(&[(0, a), (1, b), (2, dead)]);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(port).await);
        }
        assert!(seen.contains(&"a".to_string()) && seen.contains(&"b".to_string()));
        assert_eq!(seen.len(), 6, "the refusing backend cost no connection");
    }

    #[tokio::test]
    async fn a_connection_waits_for_a_backend_to_become_ready() {
        let public = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = public.local_addr().unwrap().port();
        let mut proxy = Proxy::spawn(public, Balance::LeastConnections).unwrap();
        let pending = tokio::spawn(ask(port));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (a, _ta) = echo_server("late").await;
        proxy.set_backends(&[(0, a)]);
        assert_eq!(pending.await.unwrap(), "late");
    }
}
