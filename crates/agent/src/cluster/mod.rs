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
//!   an instance refuses is retried on another, so a crash costs no request. Where the
//!   agent may load BPF programs (root, Linux 5.9+), round-robin connections are steered
//!   by the kernel straight to the instances' own listeners instead ([`steer`]): the
//!   same instances, without the two extra TCP hops per request.

mod steer;

pub use steer::{SteeringCarry, allowed as steering_allowed};

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

/// An instance ready for new connections: its id, the pid of its process and the
/// private port that process listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub id: u32,
    pub pid: i32,
    pub port: u16,
}

/// One instance the proxy may send connections to.
#[derive(Clone, Debug)]
pub struct Backend {
    pub ready: Ready,
    pub active: Arc<AtomicUsize>,
}

impl PartialEq for Backend {
    fn eq(&self, other: &Backend) -> bool {
        self.ready == other.ready
    }
}

/// The balancer of one proxied app; dropping it stops accepting and closes every
/// proxied connection.
pub struct Proxy {
    backends: watch::Sender<Vec<Backend>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Connection counters survive backend list updates, keyed by port.
    counters: std::collections::HashMap<u16, Arc<AtomicUsize>>,
    /// The kernel-side balancer, where the agent may attach one.
    steering: Option<steer::Steering>,
    /// Another descriptor of the public socket, for a handover.
    spare: std::os::fd::OwnedFd,
}

/// A proxy between two agent images (`fleet update`): its public socket, which keeps
/// queueing connections while no image accepts, and its steering program.
#[derive(Debug)]
pub struct ProxyCarry {
    pub listener: std::os::fd::OwnedFd,
    pub steering: Option<SteeringCarry>,
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
    ///
    /// With round-robin balancing and `steer` set, connections are steered in the
    /// kernel where it allows ([`steer`]); the proxy then carries only those arriving
    /// while no instance is steered to.
    pub fn spawn(listener: StdListener, balance: Balance, steer: bool) -> std::io::Result<Proxy> {
        let port = listener.local_addr()?.port();
        let steering = if steer && balance == Balance::RoundRobin {
            match steer::Steering::attach(port) {
                Ok(steering) => {
                    tracing::info!(port, "connections are balanced in the kernel (sk_lookup)");
                    Some(steering)
                }
                Err(error) => {
                    tracing::info!(port, %error, "connections are balanced by the proxy: the kernel cannot steer them");
                    None
                }
            }
        } else {
            None
        };
        Proxy::run(listener, balance, steering)
    }

    /// Takes over a proxy another agent image handed over.
    pub fn adopt(carry: ProxyCarry, balance: Balance) -> std::io::Result<Proxy> {
        let steering = carry.steering.map(steer::Steering::adopt);
        Proxy::run(StdListener::from(carry.listener), balance, steering)
    }

    /// Stops accepting and hands the public socket and the steering program over to
    /// the next agent image. Connections the proxy itself carries end with this image;
    /// steered ones never pass through it.
    /// Other descriptors of the public socket and the steering program, for
    /// systemd's store (`crate::fdstore`); the proxy carries on.
    pub fn copy(&self) -> std::io::Result<ProxyCarry> {
        Ok(ProxyCarry {
            listener: self.spare.try_clone()?,
            steering: self
                .steering
                .as_ref()
                .map(steer::Steering::copy)
                .transpose()?,
        })
    }

    pub fn hand_over(mut self) -> std::io::Result<ProxyCarry> {
        let listener = self.spare.try_clone()?;
        Ok(ProxyCarry {
            listener,
            steering: self.steering.take().map(steer::Steering::hand_over),
        })
    }

    fn run(
        listener: StdListener,
        balance: Balance,
        steering: Option<steer::Steering>,
    ) -> std::io::Result<Proxy> {
        listener.set_nonblocking(true)?;
        let spare = std::os::fd::OwnedFd::from(listener.try_clone()?);
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
            steering,
            spare,
        })
    }

    /// Whether new connections are steered in the kernel.
    pub fn steered(&self) -> bool {
        self.steering.is_some()
    }

    /// Replaces the set of instances taking new connections.
    pub fn set_backends(&mut self, ready: &[Ready]) {
        self.counters
            .retain(|port, _| ready.iter().any(|r| r.port == *port));
        let list: Vec<Backend> = ready
            .iter()
            .map(|&ready| Backend {
                ready,
                active: self.counters.entry(ready.port).or_default().clone(),
            })
            .collect();
        let changed = self.backends.send_if_modified(|current| {
            if *current == list {
                false
            } else {
                *current = list;
                true
            }
        });
        if changed && let Some(steering) = self.steering.as_mut() {
            let pairs: Vec<(i32, u16)> = ready.iter().map(|r| (r.pid, r.port)).collect();
            let steered = steering.set(&pairs);
            tracing::debug!(steered, ready = ready.len(), "steering table updated");
        }
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
            .filter(|b| !refused.contains(&b.ready.port))
            .cloned()
            .collect();
        if let Some(backend) = pick(&candidates, balance, &next) {
            let connect = tokio::time::timeout(
                BACKEND_CONNECT_TIMEOUT,
                TcpStream::connect((Ipv4Addr::LOCALHOST, backend.ready.port)),
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
                    refused.push(backend.ready.port);
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

    /// A backend that answers each connection with its name and the local port the
    /// connection arrived on: its own port when proxied, the public one when steered.
    async fn echo_server(name: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let local = stream.local_addr().unwrap().port();
                let _ = stream.write_all(format!("{name}:{local}").as_bytes()).await;
            }
        });
        (port, task)
    }

    async fn ask(port: u16) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let mut reply = String::new();
        let mut buf = [0u8; 32];
        let n = stream.read(&mut buf).await.unwrap();
        reply.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        reply
    }

    fn ready(id: u32, port: u16) -> Ready {
        Ready {
            id,
            pid: std::process::id() as i32,
            port,
        }
    }

    fn public() -> (StdListener, u16) {
        let public = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = public.local_addr().unwrap().port();
        (public, port)
    }

    #[tokio::test]
    async fn round_robin_and_a_refusing_backend_is_skipped() {
        let (a, _ta) = echo_server("a").await;
        let (b, _tb) = echo_server("b").await;
        let dead = free_loopback_port().unwrap();
        let (public, port) = public();
        let mut proxy = Proxy::spawn(public, Balance::RoundRobin, false).unwrap();
        proxy.set_backends(&[ready(0, a), ready(1, b), ready(2, dead)]);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(port).await);
        }
        assert!(seen.contains(&format!("a:{a}")), "{seen:?}");
        assert!(seen.contains(&format!("b:{b}")), "{seen:?}");
        assert_eq!(seen.len(), 6, "the refusing backend cost no connection");
    }

    #[tokio::test]
    async fn a_connection_waits_for_a_backend_to_become_ready() {
        let (public, port) = public();
        let mut proxy = Proxy::spawn(public, Balance::LeastConnections, true).unwrap();
        assert!(
            !proxy.steered(),
            "least-connections needs the proxy's counts"
        );
        let pending = tokio::spawn(ask(port));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (a, _ta) = echo_server("late").await;
        proxy.set_backends(&[ready(0, a)]);
        assert_eq!(pending.await.unwrap(), format!("late:{a}"));
    }

    /// Where the kernel allows steering (root; required where CI runs the test bed):
    /// connections land on the instances' own listeners, round-robin; an instance
    /// leaving the ready set or closing its listener gets no more; with none steered the
    /// proxy carries them; dropping the proxy detaches the program.
    #[tokio::test]
    async fn steered_connections_reach_the_instances_listeners() {
        let (public, port) = public();
        let mut proxy = Proxy::spawn(public, Balance::RoundRobin, true).unwrap();
        if !proxy.steered() {
            assert!(
                std::env::var_os("FLEET_REQUIRE_TESTBED").is_none(),
                "steering is unavailable where it is required (root)"
            );
            eprintln!("skipped: this process may not attach BPF programs");
            return;
        }
        let (a, ta) = echo_server("a").await;
        let (b, _tb) = echo_server("b").await;
        proxy.set_backends(&[ready(0, a), ready(1, b)]);
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(ask(port).await);
        }
        let steered_a = format!("a:{port}");
        let steered_b = format!("b:{port}");
        assert_eq!(
            seen.iter().filter(|s| **s == steered_a).count(),
            2,
            "{seen:?}"
        );
        assert_eq!(
            seen.iter().filter(|s| **s == steered_b).count(),
            2,
            "{seen:?}"
        );

        // Out of the ready set: no more connections for a.
        proxy.set_backends(&[ready(1, b)]);
        for _ in 0..3 {
            assert_eq!(ask(port).await, steered_b);
        }

        // a's listener closes (its process exited) while still in the set: the kernel
        // drops it from the table and the proxy retries on b.
        proxy.set_backends(&[ready(0, a), ready(1, b)]);
        ta.abort();
        let _ = ta.await;
        for _ in 0..4 {
            let reply = ask(port).await;
            assert!(reply.starts_with("b:"), "{reply}");
        }

        // Nothing steered: the proxy carries the connection to a backend it knows.
        proxy.set_backends(&[]);
        let (c, _tc) = echo_server("c").await;
        let pending = tokio::spawn(ask(port));
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.steering.as_mut().unwrap().set(&[]);
        proxy.backends.send_replace(vec![Backend {
            ready: ready(2, c),
            active: Arc::default(),
        }]);
        assert_eq!(
            pending.await.unwrap(),
            format!("c:{c}"),
            "proxied, not steered"
        );

        // Dropped: the program is detached with it, so nothing reaches b any more.
        drop(proxy);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "port {port} still answers"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
