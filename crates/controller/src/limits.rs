//! What any client can cost the controller, bounded before it authenticates:
//! connections per peer address (all of them, and those not yet authenticated, which
//! are also closed after a grace time), streams and flow-control windows per connection
//! (`server`), the size of an unauthenticated `Join` (`Guard` cuts its body short),
//! failed authentications
//! per peer (a token bucket: past a burst, the peer's calls are refused before their
//! body is read, unless they carry a token known valid, which is still checked at the
//! call), and how many joins sign at once. What an authenticated agent can grow (its process
//! table, its log batches) is bounded in `registry`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::Status;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::registry::lock;

/// `Join` is a token, a host name and a CSR: a few KiB. Anything larger is cut off
/// while it arrives, before it is decoded.
pub const MAX_JOIN_BYTES: usize = 64 * 1024;
/// The path of `AgentLink.Join`, the one call without a credential at the TLS layer.
const JOIN_PATH: &str = "/fleet.controller.v1.AgentLink/Join";
/// Open connections from one address. The 1,000-agent simulation (`bench/fleet`) runs
/// from one address; a real fleet has one or two per host.
pub const MAX_CONNECTIONS_PER_PEER: usize = 2048;
/// HTTP/2 streams one connection may have open (an agent has one session and the
/// CLI a few calls; a follower of logs one stream per host).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Failed authentications per peer address: a burst, then one every few seconds.
const FAILURE_BURST: f64 = 20.0;
const FAILURE_REFILL_PER_SEC: f64 = 0.5;
/// Peers remembered by the failure limiter; past this, full buckets are forgotten
/// (they are what an unknown peer starts with).
const MAX_TRACKED_PEERS: usize = 16 * 1024;
/// HTTP/2 flow-control windows: what one stream and one connection may send before
/// the controller reads it. HTTP/2's 64 KiB per stream (a refused 1 MiB `Join` costs
/// at most that), and 256 KiB per connection instead of the megabytes hyper's
/// adaptive window grows to: 250 abusive connections cost the controller 22 MB of
/// RSS with 256 KiB / 1 MiB windows.
pub const STREAM_WINDOW: u32 = 64 * 1024;
pub const CONNECTION_WINDOW: u32 = 256 * 1024;
/// Connections from one address that have not made an authenticated call yet: past
/// this, new ones from that address are closed at accept, before TLS costs anything
/// (sshd's `MaxStartups`, per address). Agents and CLIs prove themselves on their
/// first call, so only a flood of unauthenticated connections meets this.
pub const MAX_UNPROVEN_PER_PEER: usize = 64;
/// How long a connection may stay open without an authenticated call (sshd's
/// `LoginGraceTime`).
pub const PROVE_WITHIN: Duration = Duration::from_secs(30);
/// Joins being signed at once; more wait their turn.
pub const MAX_CONCURRENT_JOINS: usize = 8;

/// A token bucket of failed authentications per peer address.
#[derive(Default)]
pub struct Failures {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Failures {
    fn refilled(tokens: f64, since: Instant, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(since).as_secs_f64() * FAILURE_REFILL_PER_SEC;
        (tokens + refill).min(FAILURE_BURST)
    }

    /// Refuses a peer that failed too often lately, saying when to try again.
    pub fn check(&self, peer: Option<IpAddr>) -> Result<(), Status> {
        let Some(peer) = peer else { return Ok(()) };
        let buckets = lock(&self.buckets);
        let Some(&(tokens, since)) = buckets.get(&peer) else {
            return Ok(());
        };
        let tokens = Self::refilled(tokens, since, Instant::now());
        if tokens >= 1.0 {
            return Ok(());
        }
        let wait = ((1.0 - tokens) / FAILURE_REFILL_PER_SEC).ceil() as u64;
        Err(Status::resource_exhausted(format!(
            "too many failed attempts from {peer}; retry in {wait} s"
        )))
    }

    /// Counts one failed authentication of `peer`.
    pub fn record(&self, peer: Option<IpAddr>) {
        let Some(peer) = peer else { return };
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_TRACKED_PEERS && !buckets.contains_key(&peer) {
            buckets
                .retain(|_, (tokens, since)| Self::refilled(*tokens, *since, now) < FAILURE_BURST);
            if buckets.len() >= MAX_TRACKED_PEERS {
                // Everyone is failing: forget the oldest half rather than grow.
                let mut ages: Vec<Instant> = buckets.values().map(|(_, since)| *since).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                buckets.retain(|_, (_, since)| *since > cut);
            }
        }
        let (tokens, since) = buckets.get(&peer).copied().unwrap_or((FAILURE_BURST, now));
        let tokens = Self::refilled(tokens, since, now);
        buckets.insert(peer, ((tokens - 1.0).max(0.0), now));
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }
}

/// The peer address of a request (tonic records it for TCP and TLS connections).
pub fn peer<T>(request: &tonic::Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|address| address.ip())
}

/// Token hashes and what was last learned of each, bounded: once full, the entry
/// touched longest ago is forgotten first. Both token caches are one of these.
pub struct Recent<V> {
    entries: Mutex<HashMap<Vec<u8>, (V, Instant)>>,
}

/// Entries a `Recent` keeps.
const MAX_RECENT: usize = 4096;

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            entries: Mutex::default(),
        }
    }
}

impl<V: Clone> Recent<V> {
    /// Remembers `value` for `hash`, as of now.
    pub fn remember(&self, hash: &[u8], value: V) {
        let mut entries = lock(&self.entries);
        // Every authorized call comes here: a known token is only touched.
        if let Some(entry) = entries.get_mut(hash) {
            *entry = (value, Instant::now());
            return;
        }
        if entries.len() >= MAX_RECENT
            && let Some(oldest) =
                (entries.iter().min_by_key(|(_, (_, at))| *at)).map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(hash.to_vec(), (value, Instant::now()));
    }

    /// What was remembered for `hash`, if it was within `within`.
    pub fn recall(&self, hash: &[u8], within: Duration) -> Option<V> {
        let entries = lock(&self.entries);
        let (value, at) = entries.get(hash)?;
        (at.elapsed() < within).then(|| value.clone())
    }

    /// Replaces every entry with `fresh` (at most the bound), as of now.
    pub fn replace(&self, fresh: impl IntoIterator<Item = (Vec<u8>, V)>) {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        entries.clear();
        for (hash, value) in fresh.into_iter().take(MAX_RECENT) {
            entries.insert(hash, (value, now));
        }
    }
}

/// Token hashes known valid (the database's, every `SWEEP_INTERVAL`, and each one
/// that verified since): a peer over its failure budget still
/// gets through with one of these (checked again at the call, so a revocation still
/// applies at once), and with anything else is refused before its request is read.
#[derive(Default)]
pub struct ValidTokens(Recent<()>);

impl ValidTokens {
    pub fn remember(&self, hash: &[u8]) {
        self.0.remember(hash, ());
    }

    fn contains(&self, hash: &[u8]) -> bool {
        self.0.recall(hash, Duration::MAX).is_some()
    }

    /// Replaces the set with the database's usable tokens (every few seconds), so a
    /// token created meanwhile is known and a revoked one forgotten.
    pub fn refresh(&self, usable: Vec<Vec<u8>>) {
        self.0.replace(usable.into_iter().map(|hash| (hash, ())));
    }
}

/// In front of every call, before its body is read: a peer past its failure budget is
/// refused (unless it carries a token known valid), and a `Join` body is cut off past
/// `MAX_JOIN_BYTES`.
#[derive(Clone)]
pub struct Guard {
    pub failures: Arc<Failures>,
    pub valid: Arc<ValidTokens>,
    /// Each call's latency, by method (`/metrics`).
    pub telemetry: crate::http::metrics::Telemetry,
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

type Respond<E> =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for Guarded<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Respond<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let peer = request_peer(&request);
        let join = request.uri().path() == JOIN_PATH;
        if let Err(refused) = self.guard.failures.check(peer) {
            let known = (request.headers().get("authorization"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|token| {
                    self.guard
                        .valid
                        .contains(&crate::pki::token_hash(token.trim()))
                });
            if join || !known {
                self.guard.failures.record(peer);
                return Box::pin(std::future::ready(Ok(refused.into_http())));
            }
        }
        let path = request.uri().path().to_owned();
        let (telemetry, started) = (self.guard.telemetry.clone(), Instant::now());
        let answer = if join {
            let (parts, body) = request.into_parts();
            let body = tonic::body::Body::new(Limited {
                inner: body,
                left: MAX_JOIN_BYTES,
            });
            self.inner.call(http::Request::from_parts(parts, body))
        } else {
            self.inner.call(request)
        };
        Box::pin(async move {
            let answer = answer.await;
            telemetry.rpc(&path, started.elapsed());
            answer
        })
    }
}

/// The peer address tonic records for a TCP or TLS connection.
fn request_peer<B>(request: &http::Request<B>) -> Option<IpAddr> {
    use tonic::transport::server::TlsConnectInfo;
    let extensions = request.extensions();
    (extensions.get::<TcpConnectInfo>())
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            (extensions.get::<TlsConnectInfo<TcpConnectInfo>>())
                .and_then(|info| info.get_ref().remote_addr())
        })
        .map(|address| address.ip())
}

/// A body that fails once more than `left` bytes arrived.
struct Limited {
    inner: tonic::body::Body,
    left: usize,
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > this.left {
                        this.left = 0;
                        return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                            "a Join request is at most {} KiB",
                            MAX_JOIN_BYTES / 1024
                        )))));
                    }
                    this.left -= data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// Open connections per peer address, counted while each one lives, and the ones
/// among them that have not made an authenticated call yet ("unproven": no valid
/// token, no accepted session, no join).
#[derive(Clone)]
pub struct Connections {
    table: Arc<Mutex<Table>>,
    /// How long an unproven connection stays open (`PROVE_WITHIN`).
    grace: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            table: Arc::default(),
            grace: PROVE_WITHIN,
        }
    }
}

#[derive(Default)]
struct Table {
    peers: HashMap<IpAddr, PeerCount>,
    /// Each unproven connection by its peer's address and port, with the flag its
    /// `Counted` reads.
    unproven: HashMap<SocketAddr, Arc<AtomicBool>>,
}

#[derive(Default)]
struct PeerCount {
    open: usize,
    unproven: usize,
}

impl Connections {
    /// The connection, counted; `None` (and the connection dropped before TLS) when
    /// its peer has `MAX_CONNECTIONS_PER_PEER` open already, or
    /// `MAX_UNPROVEN_PER_PEER` that have not authenticated yet.
    pub fn admit(&self, stream: TcpStream) -> Option<Counted> {
        let address = stream.peer_addr().ok()?;
        let peer = address.ip();
        let mut table = lock(&self.table);
        let count = table.peers.entry(peer).or_default();
        if count.open >= MAX_CONNECTIONS_PER_PEER {
            tracing::warn!(%peer, "refused a connection: {MAX_CONNECTIONS_PER_PEER} open from this address already");
            return None;
        }
        if count.unproven >= MAX_UNPROVEN_PER_PEER {
            // Said at debug: a flood would otherwise flood the log too.
            tracing::debug!(%peer, "refused a connection: {MAX_UNPROVEN_PER_PEER} from this address have not authenticated");
            return None;
        }
        count.open += 1;
        count.unproven += 1;
        let proven = Arc::new(AtomicBool::new(false));
        table.unproven.insert(address, proven.clone());
        drop(table);
        Some(Counted {
            stream,
            address,
            proven,
            deadline: Some(Box::pin(tokio::time::sleep(self.grace))),
            table: self.table.clone(),
        })
    }

    /// Marks the connection from `address` as having made an authenticated call: it
    /// no longer counts against its peer's unproven ones, and stays open.
    pub fn prove(&self, address: Option<SocketAddr>) {
        let Some(address) = address else { return };
        let mut table = lock(&self.table);
        if let Some(proven) = table.unproven.remove(&address) {
            proven.store(true, Ordering::Relaxed);
            if let Some(count) = table.peers.get_mut(&address.ip()) {
                count.unproven -= 1;
            }
        }
    }

    #[cfg(test)]
    fn unproven(&self, peer: IpAddr) -> usize {
        lock(&self.table)
            .peers
            .get(&peer)
            .map_or(0, |count| count.unproven)
    }
}

/// A TCP connection counted in `Connections` until it is dropped; closed (its next
/// read fails) if it makes no authenticated call within `PROVE_WITHIN`.
pub struct Counted {
    stream: TcpStream,
    address: SocketAddr,
    proven: Arc<AtomicBool>,
    /// Until proven: when it is closed.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    table: Arc<Mutex<Table>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut table = lock(&self.table);
        let unproven = !self.proven.load(Ordering::Relaxed)
            && (table.unproven.get(&self.address))
                .is_some_and(|flag| Arc::ptr_eq(flag, &self.proven));
        if unproven {
            table.unproven.remove(&self.address);
        }
        let peer = self.address.ip();
        if let Some(count) = table.peers.get_mut(&peer) {
            count.open -= 1;
            count.unproven -= usize::from(unproven);
            if count.open == 0 {
                table.peers.remove(&peer);
            }
        }
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline {
            if this.proven.load(Ordering::Relaxed) {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no authenticated call in time",
                )));
            }
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_forgets_the_entry_touched_longest_ago_and_honours_its_window() {
        let recent = Recent::default();
        for i in 0..MAX_RECENT as u32 {
            recent.remember(&i.to_be_bytes(), i);
        }
        // Touching the first keeps it; the second is now the oldest and goes.
        recent.remember(&0u32.to_be_bytes(), 0);
        recent.remember(b"new", 7);
        assert_eq!(recent.recall(&0u32.to_be_bytes(), Duration::MAX), Some(0));
        assert_eq!(recent.recall(&1u32.to_be_bytes(), Duration::MAX), None);
        assert_eq!(recent.recall(b"new", Duration::MAX), Some(7));
        assert_eq!(
            recent.recall(b"new", Duration::ZERO),
            None,
            "outside the window"
        );
        recent.replace([(b"only".to_vec(), 1)]);
        assert_eq!(recent.recall(b"new", Duration::MAX), None);
        assert_eq!(recent.recall(b"only", Duration::MAX), Some(1));
    }

    #[test]
    fn a_peer_is_refused_after_a_burst_of_failures_and_others_are_not() {
        let failures = Failures::default();
        let bad: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let good: Option<IpAddr> = Some("192.0.2.2".parse().unwrap());
        for _ in 0..FAILURE_BURST as usize {
            assert!(failures.check(bad).is_ok());
            failures.record(bad);
        }
        let refused = failures.check(bad).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("retry in 2 s"),
            "{}",
            refused.message()
        );
        assert!(failures.check(good).is_ok());
        assert!(failures.check(None).is_ok(), "no address, no bucket");
    }

    /// `count` connections to a listener, as the controller accepts them.
    async fn accept(
        listener: &tokio::net::TcpListener,
        count: usize,
    ) -> Vec<(TcpStream, TcpStream)> {
        let mut pairs = Vec::new();
        for _ in 0..count {
            let client = TcpStream::connect(listener.local_addr().unwrap());
            let (client, accepted) = tokio::join!(client, listener.accept());
            pairs.push((client.unwrap(), accepted.unwrap().0));
        }
        pairs
    }

    #[tokio::test]
    async fn unproven_connections_are_capped_per_peer_and_closed_after_the_grace_time() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connections = Connections {
            grace: Duration::from_millis(300),
            ..Connections::default()
        };
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let mut admitted = Vec::new();
        for (client, accepted) in accept(&listener, MAX_UNPROVEN_PER_PEER).await {
            admitted.push((client, connections.admit(accepted).expect("under the cap")));
        }
        assert_eq!(connections.unproven(loopback), MAX_UNPROVEN_PER_PEER);
        let (_client, extra) = accept(&listener, 1).await.pop().unwrap();
        assert!(
            connections.admit(extra).is_none(),
            "one past the cap is refused"
        );

        // One authenticates: it no longer counts, and a new connection gets in.
        let (_, first) = &admitted[0];
        connections.prove(Some(first.address));
        assert_eq!(connections.unproven(loopback), MAX_UNPROVEN_PER_PEER - 1);
        let (_c, next) = accept(&listener, 1).await.pop().unwrap();
        let next = connections.admit(next).expect("room again");

        // Past the grace time an unproven connection's read fails; a proven one waits.
        let (_proven_client, mut proven) = admitted.remove(0);
        let (_unproven_client, mut unproven) = admitted.pop().unwrap();
        let mut buffer = [0u8; 1];
        let failed = tokio::time::timeout(Duration::from_secs(5), unproven.read(&mut buffer))
            .await
            .expect("the grace time ends the read");
        assert_eq!(failed.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        let waited =
            tokio::time::timeout(Duration::from_millis(600), proven.read(&mut buffer)).await;
        assert!(waited.is_err(), "a proven connection is left alone");

        // Dropped connections are forgotten, proven or not.
        drop((proven, unproven, next));
        admitted.clear();
        assert_eq!(connections.unproven(loopback), 0);
        assert!(lock(&connections.table).peers.is_empty());
        assert!(lock(&connections.table).unproven.is_empty());
    }

    #[test]
    fn the_failure_table_stays_bounded() {
        let failures = Failures::default();
        for n in 0..(MAX_TRACKED_PEERS as u32 + 5000) {
            failures.record(Some(IpAddr::from(n.to_be_bytes())));
        }
        assert!(
            failures.tracked() <= MAX_TRACKED_PEERS,
            "{}",
            failures.tracked()
        );
    }
}
