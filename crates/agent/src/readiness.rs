//! How the agent learns an instance is ready, in order of preference: the sd_notify
//! protocol (`NOTIFY_SOCKET`, `READY=1`; also `STOPPING=1` and `WATCHDOG=1`), an HTTP
//! health check, or its private port accepting connections. PM2 waits for Node's
//! `listening` event or `process.send('ready')`, which only Node apps can give.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_config::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

/// How often a private port is tried until it accepts.
const PORT_POLL_INTERVAL: Duration = Duration::from_millis(25);
/// sd_notify datagrams are short; systemd allows up to this many bytes.
const NOTIFY_MAX: usize = 4096;

/// What an instance said or what a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    Ready,
    /// `STOPPING=1`: the app began shutting down; it takes no new connections.
    Stopping,
    Watchdog,
    /// A health check after the instance was ready.
    Healthy(bool),
    /// The health check failed this many times in a row (`health_fail_count`): the
    /// instance is to be restarted. Sent once per streak.
    Unresponsive(u32),
    /// No `WATCHDOG=1` within `watchdog` (after start-up): the instance is to be restarted.
    WatchdogMissed,
}

/// The per-instance `NOTIFY_SOCKET`: a unix datagram socket the agent reads. Removed
/// when dropped.
pub struct NotifySocket {
    pub path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    /// Another descriptor of the socket, for a handover; taken by one.
    spare: Option<OwnedFd>,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
        if self.spare.is_some() && abstract_name(&self.path).is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl NotifySocket {
    /// Stops reading and returns the socket's path and descriptor for the next agent
    /// image (`fleet update`); the socket file stays. Datagrams that arrive meanwhile
    /// wait in the socket.
    /// Another descriptor of the socket, for systemd's store (`crate::fdstore`).
    pub fn copy(&self) -> Option<(PathBuf, OwnedFd)> {
        let fd = self.spare.as_ref()?.try_clone().ok()?;
        Some((self.path.clone(), fd))
    }

    pub fn hand_over(mut self) -> Option<(PathBuf, OwnedFd)> {
        self.task.abort();
        let fd = self.spare.take()?;
        Some((self.path.clone(), fd))
    }
}

/// `@name` is a socket in Linux's abstract namespace (as systemd's `NOTIFY_SOCKET`
/// writes it): reachable by any user of the host, since it has no file.
fn abstract_name(path: &Path) -> Option<&str> {
    path.to_str().and_then(|p| p.strip_prefix('@'))
}

/// Binds `path` and calls `on` for each sd_notify assignment it receives.
pub fn notify_socket(
    path: &Path,
    on: impl Fn(Signal) + Send + 'static,
) -> std::io::Result<NotifySocket> {
    let socket = match abstract_name(path) {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            std::os::unix::net::UnixDatagram::bind_addr(&address)?
        }
        None => {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::os::unix::net::UnixDatagram::bind(path)?
        }
    };
    adopt_notify_socket(path, OwnedFd::from(socket), on)
}

/// Reads sd_notify messages from a socket bound before (by `notify_socket`, or by the
/// agent image that handed it over).
pub fn adopt_notify_socket(
    path: &Path,
    fd: OwnedFd,
    on: impl Fn(Signal) + Send + 'static,
) -> std::io::Result<NotifySocket> {
    let spare = fd.try_clone()?;
    let socket = std::os::unix::net::UnixDatagram::from(fd);
    socket.set_nonblocking(true)?;
    let socket = UnixDatagram::from_std(socket)?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; NOTIFY_MAX];
        while let Ok(n) = socket.recv(&mut buf).await {
            for signal in parse_notify(&buf[..n]) {
                on(signal);
            }
        }
    });
    Ok(NotifySocket {
        path: path.to_path_buf(),
        task,
        spare: Some(spare),
    })
}

/// sd_notify(3): newline-separated `KEY=VALUE` assignments.
fn parse_notify(message: &[u8]) -> Vec<Signal> {
    String::from_utf8_lossy(message)
        .lines()
        .filter_map(|line| match line.trim() {
            "READY=1" => Some(Signal::Ready),
            "STOPPING=1" => Some(Signal::Stopping),
            "WATCHDOG=1" => Some(Signal::Watchdog),
            _ => None,
        })
        .collect()
}

/// Tries `port` until it accepts a connection, then calls `ready` once.
pub fn watch_port(port: u16, ready: impl FnOnce() + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_err()
        {
            tokio::time::sleep(PORT_POLL_INTERVAL).await;
        }
        ready();
    })
}

/// Checks `GET <path>` on `port` every interval: `Ready` at the first success, then
/// `Healthy(false)`/`Healthy(true)` whenever the answer changes.
pub fn watch_health(
    port: u16,
    check: HealthCheck,
    on: impl Fn(Signal) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_millis(check.interval_ms);
        let timeout = Duration::from_millis(check.timeout_ms);
        let mut ready = false;
        let mut healthy = true;
        let mut failures = 0u32;
        loop {
            let ok = tokio::time::timeout(timeout, probe(port, &check.path))
                .await
                .unwrap_or(false);
            if !ready {
                if ok {
                    ready = true;
                    on(Signal::Ready);
                }
            } else {
                if ok != healthy {
                    healthy = ok;
                    on(Signal::Healthy(ok));
                }
                failures = if ok { 0 } else { failures + 1 };
                if failures == check.fail_count {
                    on(Signal::Unresponsive(failures));
                }
            }
            tokio::time::sleep(interval).await;
        }
    })
}

/// An app's watchdog (`watchdog`, systemd's `WatchdogSec`): `WATCHDOG=1` pings go to
/// `ping`; the first `period` starts after `grace` (start-up), and a period without a
/// ping calls `missed` once. Dropping it stops the timer.
pub struct Watchdog {
    pings: tokio::sync::mpsc::UnboundedSender<()>,
}

impl Watchdog {
    pub fn start(
        period: Duration,
        grace: Duration,
        missed: impl FnOnce() + Send + 'static,
    ) -> Watchdog {
        let (pings, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut deadline = tokio::time::Instant::now() + grace + period;
            loop {
                tokio::select! {
                    ping = rx.recv() => match ping {
                        Some(()) => deadline = tokio::time::Instant::now() + period,
                        None => return,
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        missed();
                        return;
                    }
                }
            }
        });
        Watchdog { pings }
    }

    pub fn ping(&self) {
        let _ = self.pings.send(());
    }
}

/// One `GET` over a fresh connection; a 2xx status line means healthy.
async fn probe(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: fleet-agent\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    // "HTTP/1.1 200 " -> the status code's first digit.
    read >= 12 && head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_messages() {
        assert_eq!(
            parse_notify(b"STATUS=warming\nREADY=1\nWATCHDOG=1"),
            vec![Signal::Ready, Signal::Watchdog]
        );
        assert_eq!(parse_notify(b"STOPPING=1\n"), vec![Signal::Stopping]);
        assert!(parse_notify(b"READY=0").is_empty());
    }

    #[tokio::test]
    async fn notify_socket_delivers_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _socket = notify_socket(&path, move |s| {
            let _ = tx.send(s);
        })
        .unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", &path).unwrap();
        assert_eq!(rx.recv().await, Some(Signal::Ready));
    }

    #[tokio::test]
    async fn health_probe_reads_the_status_line() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        assert!(!probe(port, "/health").await);
        assert!(probe(port, "/health").await);
    }
}
