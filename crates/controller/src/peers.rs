//! Controllers sharing one store, with no leader. Each joins the store's `controllers`
//! table under a random id with the URL agents and peers reach it at, and renews a
//! short lease (`LEASE`) every `RENEW`; the live members are those whose lease runs.
//! Agents are told every member's URL in `Welcome` and turn to another when theirs
//! goes. Which controller holds each host's session is a `host_sessions` row (moved,
//! with a growing epoch, when a host connects elsewhere); a controller answers for the
//! hosts it holds from memory and asks its peers for the others over `PeerService`,
//! with a client certificate of the store's CA named `controller:<id>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use fleet_proto::agent::v1::LogEntry;
use fleet_proto::controller::v1 as cpb;
use fleet_proto::status::HostStatusHead;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

use crate::server::Controller;
use crate::store::{self, Member};

/// How long a controller counts as alive after its last renewal. Past it, its hosts
/// are another's to take and its peers stop asking it.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often the lease is renewed: three tries before it runs out.
pub const RENEW: Duration = Duration::from_secs(3);
/// How long a peer may take to answer for its hosts before they show as unreachable
/// through this controller (its own `Status` keeps its 50 ms p99 at 1,000 hosts).
const PEER_DEADLINE: Duration = Duration::from_secs(2);
/// Connecting to a peer: a dead one's address refuses at once, a cut one times out.
const PEER_CONNECT: Duration = Duration::from_millis(500);
/// The prefix of a peer certificate's common name; never a host name (`validate_host`
/// refuses ':').
pub const PEER_NAME_PREFIX: &str = "controller:";
/// The most hosts one `PeerStatus` may ask about (a stage's worth).
const MAX_PEER_HOSTS: usize = 100_000;

/// Which hosts this controller's alerts watch, on a shared store: not those a live peer
/// holds (that peer watches them), and, for the oldest live controller only, those
/// whose holder died (nobody else would).
#[derive(Default, Debug)]
pub struct Watch {
    pub elsewhere: std::collections::HashSet<String>,
    pub orphans: Vec<String>,
}

/// This controller's place among its peers.
pub struct Peers {
    pub me: Member,
    live: Mutex<Vec<Member>>,
    watch: Mutex<Watch>,
    /// The client identity peers see (`controller:<id>`), and the CA to check them by.
    identity: Identity,
    ca_pem: String,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    pub fn new(url: String, pki: &crate::pki::Pki) -> Result<Peers, crate::Error> {
        let mut id = [0u8; 8];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| crate::Error::Invalid("no randomness".into()))?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let key = rcgen::KeyPair::generate().map_err(|source| {
            crate::Error::certificate(std::path::Path::new("peer key"), source)
        })?;
        let name = format!("{PEER_NAME_PREFIX}{id}");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .and_then(|pem| crate::pki::parse_csr(&pem))
            .and_then(|csr| pki.sign_agent_csr(&csr, &name, Duration::from_secs(365 * 86_400)))
            .map_err(|source| {
                crate::Error::certificate(std::path::Path::new("peer certificate"), source)
            })?;
        let me = Member {
            id,
            url,
            started_at_ms: crate::now_unix_ms(),
        };
        Ok(Peers {
            live: Mutex::new(vec![me.clone()]),
            watch: Mutex::default(),
            me,
            identity: Identity::from_pem(csr.pem, key.serialize_pem()),
            ca_pem: pki.ca_pem.clone(),
            channels: Mutex::default(),
        })
    }

    /// Every live controller's URL, this one first (what agents are told).
    pub fn urls(&self) -> Vec<String> {
        let live = lock(&self.live);
        std::iter::once(self.me.url.clone())
            .chain(
                live.iter()
                    .filter(|m| m.id != self.me.id)
                    .map(|m| m.url.clone()),
            )
            .collect()
    }

    /// What the alerts watch (`Watch`).
    pub fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        lock(&self.watch)
    }

    /// Sorts the store's `holders` into `Watch` against the live members.
    fn refresh_watch(&self, holders: &[(String, String, u64)], live: &[Member]) {
        let live_ids: std::collections::HashSet<&str> =
            live.iter().map(|m| m.id.as_str()).collect();
        let oldest = live.first().is_some_and(|m| m.id == self.me.id);
        let mut watch = Watch::default();
        for (host, holder, _) in holders {
            if *holder == self.me.id {
                continue;
            }
            if live_ids.contains(holder.as_str()) {
                watch.elsewhere.insert(host.clone());
            } else if oldest {
                watch.orphans.push(host.clone());
            } else {
                watch.elsewhere.insert(host.clone());
            }
        }
        *lock(&self.watch) = watch;
    }

    fn others(&self) -> Vec<Member> {
        lock(&self.live)
            .iter()
            .filter(|m| m.id != self.me.id)
            .cloned()
            .collect()
    }

    /// A channel to the peer at `url`, connected at its first call and kept.
    fn channel(&self, url: &str) -> Result<Channel, String> {
        if let Some(channel) = lock(&self.channels).get(url) {
            return Ok(channel.clone());
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity.clone());
        let channel = Endpoint::from_shared(url.to_owned())
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(PEER_CONNECT)
            .connect_lazy();
        lock(&self.channels).insert(url.to_owned(), channel.clone());
        Ok(channel)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps this controller's lease (and the list of live peers) while it runs, with the
/// server's background tasks; a clean stop also `leave`s. A store away keeps the last
/// known list.
pub(crate) async fn keep_lease(controller: Arc<Controller>) {
    let mut tick = tokio::time::interval(RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let me = controller.peers.me.clone();
        let now = crate::now_unix_ms();
        let until = now + LEASE.as_millis() as u64;
        match controller
            .store
            .call(move |db| store::renew_lease(db, &me, now, until))
            .await
        {
            Ok(live) => {
                let changed = {
                    let mut known = lock(&controller.peers.live);
                    let changed = *known != live;
                    if changed {
                        tracing::info!(
                            controllers = live.len(),
                            "the store's live controllers changed"
                        );
                        *known = live.clone();
                    }
                    changed
                };
                if changed {
                    // Agents hear of a new or departed controller now, not at their
                    // next session.
                    let urls = controller.peers.urls();
                    (controller.registry).send_all(&cpb::controller_message::Body::Controllers(
                        cpb::ControllerSet { urls },
                    ));
                }
                if controller.config.store.is_some() {
                    // Deploys of controllers whose lease ended are this one's to finish.
                    crate::deployer::take_over(&controller, &live).await;
                    crate::deployer::notice_cancels(&controller).await;
                    if let Ok(holders) = controller.store.call(store::holders).await {
                        controller.peers.refresh_watch(&holders, &live);
                    }
                }
            }
            Err(crate::Error::StoreStopped) => return,
            Err(error) => tracing::warn!(%error, "cannot renew this controller's lease"),
        }
    }
}

/// The hosts this controller reports on by itself (alerts, `/metrics`), with what it
/// knows of each: on a shared store, not a host a live peer holds (that peer reports
/// it; two controllers saying "up" and "down" of one host would be one too many), and,
/// for the oldest live controller, the hosts whose holder died.
pub(crate) fn own_views(controller: &Controller) -> Vec<(String, crate::registry::HostView)> {
    let registry = &controller.registry;
    let watch = controller.peers.watch();
    let mut views: Vec<(String, crate::registry::HostView)> = (registry.hosts().into_iter())
        .filter_map(|host| {
            let view = registry.view(&host);
            (view.reachable || !watch.elsewhere.contains(&host)).then_some((host, view))
        })
        .collect();
    let known: std::collections::HashSet<String> =
        views.iter().map(|(host, _)| host.clone()).collect();
    for host in watch.orphans.iter().filter(|h| !known.contains(*h)) {
        views.push((host.clone(), registry.view(host)));
    }
    views
}

/// A clean stop: the store forgets this controller at once.
pub(crate) async fn leave(controller: &Controller) {
    let id = controller.peers.me.id.clone();
    if let Err(error) = controller.store.call(move |db| store::leave(db, &id)).await {
        tracing::warn!(%error, "cannot leave the store's controllers");
    }
}

/// The status of `hosts` this controller holds no session for, from the peers that do:
/// each live peer asked at once, the first reachable answer per host kept.
pub(crate) async fn status_elsewhere(
    controller: &Controller,
    hosts: Vec<String>,
) -> HashMap<String, Bytes> {
    held_elsewhere(controller, hosts)
        .await
        .into_iter()
        .map(|(host, (_, status))| (host, status))
        .collect()
}

/// Every host this controller knows of: its registry's, and on a shared store those
/// its live peers hold or held (`Watch`, refreshed at each lease renewal), sorted.
pub(crate) fn known_hosts(controller: &Controller) -> Vec<String> {
    let mut hosts = controller.registry.hosts();
    {
        let watch = controller.peers.watch();
        hosts.extend(watch.elsewhere.iter().cloned());
        hosts.extend(watch.orphans.iter().cloned());
    }
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

/// `hosts` as this controller can see them: from its registry, and each host not
/// reachable here that a live peer holds, as that peer sees it (`PeerStatus`).
pub(crate) async fn views(
    controller: &Controller,
    hosts: Vec<String>,
) -> Vec<(String, crate::registry::HostView)> {
    let registry = &controller.registry;
    let mut views: Vec<(String, crate::registry::HostView)> = (hosts.into_iter())
        .map(|host| {
            let view = registry.view(&host);
            (host, view)
        })
        .collect();
    let elsewhere: Vec<String> = (views.iter())
        .filter(|(_, view)| !view.reachable)
        .map(|(host, _)| host.clone())
        .collect();
    let mut found = status_elsewhere(controller, elsewhere).await;
    if found.is_empty() {
        return views;
    }
    for (host, view) in &mut views {
        let decoded = found
            .remove(host.as_str())
            .and_then(|bytes| fleet_proto::status::decode_host(bytes).ok());
        if let Some(status) = decoded {
            *view = status.into();
        }
    }
    views
}

/// Which peer holds each of `hosts` this controller holds no session for (those no
/// peer holds are left out).
pub(crate) async fn holders(controller: &Controller, hosts: &[String]) -> HashMap<String, String> {
    let not_here: Vec<String> = (hosts.iter())
        .filter(|host| controller.registry.reach(host).is_err())
        .cloned()
        .collect();
    held_elsewhere(controller, not_here)
        .await
        .into_iter()
        .map(|(host, (url, _))| (host, url))
        .collect()
}

/// Each host a live peer holds, with the peer's URL and the host's encoded status.
async fn held_elsewhere(
    controller: &Controller,
    hosts: Vec<String>,
) -> HashMap<String, (String, Bytes)> {
    let peers = controller.peers.others();
    if hosts.is_empty() || peers.is_empty() {
        return HashMap::new();
    }
    let asks = peers.into_iter().map(|peer| {
        let hosts = hosts.clone();
        async move {
            let channel = controller.peers.channel(&peer.url)?;
            let mut request = Request::new(cpb::PeerStatusRequest { hosts });
            request.set_timeout(PEER_DEADLINE);
            let reply = peer_client(channel)
                .peer_status(request)
                .await
                .map_err(|status| format!("{}: {}", peer.url, status.message()))?;
            Ok::<_, String>((peer.url, reply.into_inner().hosts))
        }
    });
    let mut found = HashMap::new();
    for answer in futures::future::join_all(asks).await {
        match answer {
            Ok((url, statuses)) => {
                for status in statuses {
                    match HostStatusHead::of(&status) {
                        Ok(head) if head.reachable => {
                            found
                                .entry(head.host)
                                .or_insert_with(|| (url.clone(), status));
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::debug!(%url, %error, "a peer sent an undecodable host");
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "a peer did not answer for its hosts"),
        }
    }
    found
}

/// A client of a peer's `PeerService`, taking answers as large as a client of the
/// controller does (a peer's hosts pass 4 MiB at a few thousand).
fn peer_client(channel: Channel) -> cpb::peer_service_client::PeerServiceClient<Channel> {
    cpb::peer_service_client::PeerServiceClient::new(channel)
        .max_decoding_message_size(fleet_proto::ops::MAX_CONTROLLER_ANSWER_BYTES)
}

/// A command for `host`, through the peer at `url` that holds it.
pub(crate) async fn command_at(
    controller: &Controller,
    url: &str,
    host: &str,
    command: &crate::fleet_service::HostCommand,
) -> cpb::HostResult {
    let failed = |error: String| cpb::HostResult {
        host: host.to_owned(),
        ok: false,
        error: format!("unreachable: the controller holding it ({url}): {error}"),
        processes: Vec::new(),
    };
    let channel = match controller.peers.channel(url) {
        Ok(channel) => channel,
        Err(error) => return failed(error),
    };
    let mut request = Request::new(cpb::PeerCommandRequest {
        host: host.to_owned(),
        action: command.action.into(),
        targets: command.targets.clone(),
        count: command.count.clone(),
    });
    // The agent's own deadline for the action, and a margin for the hop.
    request.set_timeout(fleet_proto::ops::timeout(command.action) + PEER_DEADLINE);
    match peer_client(channel).peer_command(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => failed(status.message().to_owned()),
    }
}

/// What a peer is asked for lines of.
pub(crate) struct LogQuery {
    pub hosts: Vec<String>,
    pub targets: Vec<String>,
    pub lines: u32,
    pub follow: bool,
}

/// Brings the lines of `query.hosts` from the peer at `url` into `sink` until either
/// ends; a peer that cannot be reached or fails is said in a notice line per host.
pub(crate) fn forward_logs(
    controller: &Controller,
    url: String,
    query: LogQuery,
    sink: tokio::sync::mpsc::Sender<Vec<LogEntry>>,
) -> crate::server::AbortOnDrop {
    let channel = controller.peers.channel(&url);
    crate::server::AbortOnDrop(tokio::spawn(async move {
        let hosts = query.hosts.clone();
        let notice = |why: &str| -> Vec<LogEntry> {
            (hosts.iter())
                .map(|host| LogEntry {
                    ts_unix_ms: crate::now_unix_ms(),
                    host: host.clone(),
                    notice: format!("unreachable: the controller holding it ({url}): {why}"),
                    ..LogEntry::default()
                })
                .collect()
        };
        let channel = match channel {
            Ok(channel) => channel,
            Err(error) => {
                let _ = sink.send(notice(&error)).await;
                return;
            }
        };
        let request = cpb::PeerLogsRequest {
            hosts: query.hosts,
            targets: query.targets,
            lines: query.lines,
            follow: query.follow,
        };
        let mut stream = match peer_client(channel).peer_logs(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                let _ = sink.send(notice(status.message())).await;
                return;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(entry)) => {
                    if sink.send(vec![entry]).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    let _ = sink.send(notice(status.message())).await;
                    return;
                }
            }
        }
    }))
}

/// `PeerService`: a peer asks about the hosts this controller holds.
pub struct PeerApi {
    controller: Arc<Controller>,
}

impl PeerApi {
    pub(crate) fn new(controller: Arc<Controller>) -> PeerApi {
        PeerApi { controller }
    }
}

#[tonic::async_trait]
impl cpb::peer_service_server::PeerService for PeerApi {
    async fn peer_status(
        &self,
        request: Request<cpb::PeerStatusRequest>,
    ) -> Result<Response<cpb::PeerStatusReply>, Status> {
        let peer = peer_of(&request)?;
        let hosts = request.into_inner().hosts;
        if hosts.len() > MAX_PEER_HOSTS {
            return Err(Status::invalid_argument(format!(
                "{peer} asked about more than {MAX_PEER_HOSTS} hosts"
            )));
        }
        let registry = &self.controller.registry;
        let hosts = (hosts.iter())
            .filter_map(|host| registry.encoded_if_reachable(host))
            .collect();
        Ok(Response::new(cpb::PeerStatusReply { hosts }))
    }

    async fn peer_command(
        &self,
        request: Request<cpb::PeerCommandRequest>,
    ) -> Result<Response<cpb::HostResult>, Status> {
        peer_of(&request)?;
        let request = request.into_inner();
        let action = cpb::Action::try_from(request.action).unwrap_or(cpb::Action::Unspecified);
        fleet_proto::ops::agent_call(action, request.targets.clone(), &request.count)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        crate::validate_host(&request.host).map_err(Status::invalid_argument)?;
        let command = crate::fleet_service::HostCommand {
            action,
            targets: request.targets,
            count: request.count,
        };
        Ok(Response::new(
            crate::fleet_service::run_on_host(&self.controller, &request.host, &command).await,
        ))
    }

    type PeerLogsStream = crate::fleet_service::MergedLogs;

    async fn peer_logs(
        &self,
        request: Request<cpb::PeerLogsRequest>,
    ) -> Result<Response<Self::PeerLogsStream>, Status> {
        peer_of(&request)?;
        let request = request.into_inner();
        if request.hosts.len() > MAX_PEER_HOSTS {
            return Err(Status::invalid_argument(format!(
                "more than {MAX_PEER_HOSTS} hosts"
            )));
        }
        let (merged, _) = crate::fleet_service::subscribe_held_logs(
            &self.controller,
            request.hosts,
            request.targets,
            request.lines,
            request.follow,
            false,
        );
        Ok(Response::new(merged))
    }
}

/// The calling controller's name (`controller:<id>`), from its client certificate; any
/// other caller (an agent, nobody) is refused.
fn peer_of<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .and_then(|leaf| crate::pki::certificate_identity(leaf.as_ref()))
        .map(|(name, _, _)| name)
        .filter(|name| name.starts_with(PEER_NAME_PREFIX))
        .ok_or_else(|| Status::permission_denied("PeerService is for the store's controllers"))
}
