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

use fleet_proto::controller::v1 as cpb;
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

/// This controller's place among its peers.
pub struct Peers {
    pub me: Member,
    live: Mutex<Vec<Member>>,
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

    fn others(&self) -> Vec<Member> {
        lock(&self.live)
            .iter()
            .filter(|m| m.id != self.me.id)
            .cloned()
            .collect()
    }

    async fn channel(&self, url: &str) -> Result<Channel, String> {
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
            .timeout(PEER_DEADLINE)
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
                let mut known = lock(&controller.peers.live);
                if *known != live {
                    tracing::info!(
                        controllers = live.len(),
                        "the store's live controllers changed"
                    );
                    *known = live;
                }
            }
            Err(crate::Error::StoreStopped) => return,
            Err(error) => tracing::warn!(%error, "cannot renew this controller's lease"),
        }
    }
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
) -> HashMap<String, cpb::HostStatus> {
    let peers = controller.peers.others();
    if hosts.is_empty() || peers.is_empty() {
        return HashMap::new();
    }
    let asks = peers.into_iter().map(|peer| {
        let hosts = hosts.clone();
        async move {
            let channel = controller.peers.channel(&peer.url).await?;
            let reply = cpb::peer_service_client::PeerServiceClient::new(channel)
                .peer_status(cpb::PeerStatusRequest { hosts })
                .await
                .map_err(|status| format!("{}: {}", peer.url, status.message()))?;
            Ok::<_, String>(reply.into_inner().hosts)
        }
    });
    let mut found = HashMap::new();
    for answer in futures::future::join_all(asks).await {
        match answer {
            Ok(statuses) => {
                for status in statuses.into_iter().filter(|s| s.reachable) {
                    found.entry(status.host.clone()).or_insert(status);
                }
            }
            Err(error) => tracing::debug!(%error, "a peer did not answer for its hosts"),
        }
    }
    found
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
        let peer = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .and_then(|leaf| crate::pki::certificate_identity(leaf.as_ref()))
            .map(|(name, _, _)| name)
            .filter(|name| name.starts_with(PEER_NAME_PREFIX))
            .ok_or_else(|| {
                Status::permission_denied("PeerService is for the store's controllers")
            })?;
        let hosts = request.into_inner().hosts;
        if hosts.len() > MAX_PEER_HOSTS {
            return Err(Status::invalid_argument(format!(
                "{peer} asked about more than {MAX_PEER_HOSTS} hosts"
            )));
        }
        let registry = &self.controller.registry;
        let hosts = hosts
            .into_iter()
            .filter_map(|host| {
                let view = registry.view(&host);
                view.reachable
                    .then(|| crate::fleet_service::host_status(host, view))
            })
            .collect();
        Ok(Response::new(cpb::PeerStatusReply { hosts }))
    }
}
