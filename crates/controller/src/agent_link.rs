//! `AgentLink`, the agents' face: `Join` trades a one-time token and a CSR for a
//! certificate; `Session` is the one long-lived stream per agent, identified by its
//! certificate's common name. What a session reports goes into the registry; what the
//! CLI asks of a host goes out on it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fleet_proto::controller::v1::agent_link_server::AgentLink;
use fleet_proto::controller::v1::{
    AgentMessage, ControllerMessage, JoinRequest, JoinResponse, LogUnsubscribe, PROTOCOL_MAJOR,
    PROTOCOL_MINOR, RenewRequest, RenewedCertificate, ResyncRequest, Welcome, agent_message,
    controller_message,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::error::Refusal;
use crate::hosts::{self, Standing};
use crate::registry::{After, Delivery, HostHandle};
use crate::server::Controller;
use crate::store::{self, AuditEntry};
use crate::{now_unix_ms, pki};

/// An agent must say `hello` this soon after opening its session.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines in one log batch (the agent sends at most 256).
const MAX_LOG_BATCH: usize = 4096;
/// Messages queued for one agent (commands, subscriptions, resyncs) before senders wait.
const OUTBOUND_QUEUE: usize = 64;

pub(crate) struct AgentLinkService {
    controller: Arc<Controller>,
}

impl AgentLinkService {
    pub(crate) fn new(controller: Arc<Controller>) -> AgentLinkService {
        AgentLinkService { controller }
    }
}

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        // TLS verified the certificate; a session refused past that (superseded,
        // removed) counts as a failure of its peer, but never blocks a valid one.
        let peer = crate::limits::peer(&request);
        let checked = match certified_identity(&request) {
            Ok((host, serial, expires_ms)) => (self.check_standing(&host, &serial, expires_ms))
                .await
                .map(|()| (host, serial, expires_ms)),
            Err(refusal) => Err(refusal),
        };
        let (certified, serial, expires_ms) = checked.map_err(|refusal| {
            if matches!(refusal, Refusal::Internal(_)) {
                return Status::from(refusal);
            }
            let limited = self.controller.failures.check(peer);
            self.controller.failures.record(peer);
            limited.err().unwrap_or_else(|| Status::from(refusal))
        })?;
        self.controller.connections.prove(request.remote_addr());
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Refusal::HelloTimeout(HELLO_TIMEOUT.as_secs()).into()),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => {
                return Err(Status::cancelled(
                    "the agent closed the session before `hello`",
                ));
            }
            Ok(Ok(Some(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => return Err(Refusal::HelloFirst.into()),
        };
        if hello.protocol_major != PROTOCOL_MAJOR {
            return Err(Refusal::AgentProtocol {
                agent: hello.protocol_major,
                controller: PROTOCOL_MAJOR,
            }
            .into());
        }
        if certified.starts_with(crate::peers::PEER_NAME_PREFIX) {
            return Err(Refusal::NamelessCertificate.into());
        }
        if hello.host != certified {
            return Err(Refusal::HostMismatch {
                certificate: certified,
                claimed: hello.host,
            }
            .into());
        }

        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        let welcome = ControllerMessage {
            body: Some(controller_message::Body::Welcome(Welcome {
                protocol_major: PROTOCOL_MAJOR,
                protocol_minor: PROTOCOL_MINOR,
                heartbeat_interval_ms: self.controller.config.heartbeat_interval.as_millis() as u64,
                renew_certificate: expires_ms
                    < now_unix_ms().saturating_add(
                        self.controller.config.agent_cert_renew_before.as_millis() as u64,
                    ),
                controllers: self.controller.peers.urls(),
            })),
        };
        outbound
            .try_send(welcome)
            .expect("a new queue has room for the welcome");
        let handle = self.controller.registry.connect(&hello, &serial, outbound);
        let (host, version, boot) = (
            hello.host.clone(),
            hello.agent_version.clone(),
            hello.boot_id.clone(),
        );
        let me = self.controller.peers.me.id.clone();
        self.controller.store.write("host connected", move |conn| {
            let now = now_unix_ms();
            store::host_connected(conn, &host, &version, &boot, now)?;
            store::hold_host(conn, &host, &me, now).map(|_| ())
        });
        tracing::info!(host = %hello.host, agent_version = %hello.agent_version, "agent connected");
        let ended = Box::pin(handle.link.ended());
        tokio::spawn(read_session(self.controller.clone(), handle, inbound));
        Ok(Response::new(Outbound {
            queue,
            ended,
            done: false,
        }))
    }

    /// A peer that failed too often lately is refused before anything is parsed:
    /// joins are rare, and a guesser's attempts should cost next to nothing.
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let peer = crate::limits::peer(&request);
        let address = request.remote_addr();
        self.controller.failures.check(peer)?;
        let _turn = (self.controller.joins.acquire())
            .await
            .map_err(|_| Status::unavailable("the controller is stopping"))?;
        let joined = self.join_checked(request.into_inner()).await;
        if let Err(status) = &joined
            && matches!(
                status.code(),
                Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::AlreadyExists
            )
        {
            self.controller.failures.record(peer);
        }
        if joined.is_ok() {
            self.controller.connections.prove(address);
        }
        joined.map(Response::new)
    }
}

impl AgentLinkService {
    async fn join_checked(&self, request: JoinRequest) -> Result<JoinResponse, Status> {
        if request.protocol_major != PROTOCOL_MAJOR {
            return Err(Refusal::AgentProtocol {
                agent: request.protocol_major,
                controller: PROTOCOL_MAJOR,
            }
            .into());
        }
        crate::validate_host(&request.host).map_err(Refusal::InvalidArgument)?;
        // Parse the CSR before touching the token, so a bad request does not use it up.
        let csr =
            pki::parse_csr(&request.csr_pem).map_err(|error| Refusal::BadCsr(error.to_string()))?;
        let hash = pki::token_hash(&request.token);
        let host = request.host.clone();
        let store = &self.controller.store;
        {
            let (hash, host) = (hash.clone(), host.clone());
            store
                .call(move |conn| store::check_join_token(conn, &hash, &host, now_unix_ms()))
                .await??;
        }
        // Only a valid token learns whether the host joined before.
        let standing = {
            let host = host.clone();
            store.call(move |conn| hosts::standing(conn, &host)).await?
        };
        let rejoin = matches!(standing, Standing::Current { .. } | Standing::Unrecorded);
        if rejoin && !request.rejoin {
            return Err(Refusal::AlreadyJoined(host).into());
        }
        let certificate = self
            .controller
            .pki
            .sign_agent_csr(&csr, &host, self.controller.config.agent_cert_lifetime)
            .map_err(|error| Refusal::BadCsr(error.to_string()))?;
        let claimed = {
            let (hash, host) = (hash.clone(), host.clone());
            store
                .call(move |conn| store::claim_join_token(conn, &hash, &host, now_unix_ms()))
                .await?
        };
        if !claimed {
            // Another `Join` used it (or it expired) since the check: say which.
            store
                .call(move |conn| store::check_join_token(conn, &hash, &host, now_unix_ms()))
                .await??;
            return Err(Refusal::UnknownJoinToken.into());
        }
        let action = if rejoin { "rejoin" } else { "join" };
        record_issued(&self.controller, &host, &certificate, action).await?;
        // The superseded certificate's session, if one is open, ends now.
        self.controller
            .registry
            .sweep(&std::collections::HashMap::from([(
                host.clone(),
                Some(certificate.serial.clone()),
            )]));
        tracing::info!(host = %request.host, serial = %certificate.serial, rejoin, "agent joined");
        Ok(JoinResponse {
            certificate_pem: certificate.pem,
            ca_pem: self.controller.pki.ca_pem.clone(),
            controllers: self.controller.peers.urls(),
        })
    }

    /// Whether the session's certificate is its host's current one. A certificate
    /// issued before serials were recorded becomes the current one here.
    async fn check_standing(
        &self,
        host: &str,
        serial: &str,
        expires_ms: u64,
    ) -> Result<(), Refusal> {
        let store = &self.controller.store;
        let standing = {
            let host = host.to_owned();
            store.call(move |conn| hosts::standing(conn, &host)).await
        };
        let standing = match standing {
            Ok(standing) => standing,
            // The store is away: a certificate known current lately is taken, so agents
            // reconnecting through a database restart are not left out.
            Err(error) if error.is_store_unavailable() => {
                if self.controller.known_serials.is_current(host, serial) {
                    tracing::warn!(%host, "the store is unavailable: accepted the host's certificate as last known current");
                    return Ok(());
                }
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        match standing {
            Standing::Current { serial: current } if current == serial => {
                self.controller.known_serials.set(host, serial);
                Ok(())
            }
            Standing::Current { .. } => Err(Refusal::CertificateSuperseded(host.to_owned())),
            Standing::Removed { at_ms } => Err(Refusal::HostRemoved {
                host: host.to_owned(),
                at: crate::format_unix_ms(at_ms),
            }),
            Standing::Unknown | Standing::Unrecorded => {
                let (host, serial) = (host.to_owned(), serial.to_owned());
                store
                    .call(move |conn| {
                        hosts::record_certificate(conn, &host, &serial, expires_ms, now_unix_ms())
                    })
                    .await?;
                Ok(())
            }
        }
    }
}

/// The host a verified client certificate was issued for, its serial and expiry. TLS
/// already checked the chain against the controller's CA; a connection without a
/// certificate gets here with none (client auth is optional because `Join` has none).
fn certified_identity<T>(request: &Request<T>) -> Result<(String, String, u64), Refusal> {
    let certificates = request.peer_certs().ok_or(Refusal::NoClientCertificate)?;
    let leaf = certificates.first().ok_or(Refusal::NoClientCertificate)?;
    pki::certificate_identity(leaf.as_ref()).ok_or(Refusal::NamelessCertificate)
}

/// A renewal the agent asked for (`Welcome.renew_certificate`): a certificate for the
/// session's host and the CSR's key, recorded as the host's current one; the session
/// carries on, standing on the new serial.
async fn renew(
    controller: Arc<Controller>,
    link: Arc<crate::registry::SessionLink>,
    request: RenewRequest,
) {
    let host = link.host.clone();
    let issued = pki::parse_csr(&request.csr_pem).and_then(|csr| {
        (controller.pki).sign_agent_csr(&csr, &host, controller.config.agent_cert_lifetime)
    });
    let issued = match issued {
        Ok(issued) => issued,
        Err(error) => {
            tracing::warn!(%host, %error, "refused a certificate renewal: bad CSR");
            return;
        }
    };
    let recorded = record_issued(&controller, &host, &issued, "renew certificate").await;
    if let Err(error) = recorded {
        tracing::error!(%host, %error, "cannot record a renewed certificate");
        return;
    }
    *crate::registry::lock(&link.serial) = issued.serial.clone();
    tracing::info!(%host, serial = %issued.serial, "renewed the agent's certificate");
    link.send_soon(controller_message::Body::Renewed(RenewedCertificate {
        certificate_pem: issued.pem,
    }));
}

/// Records `issued` as `host`'s current certificate, and in the audit log as `action`
/// by the agent: one database call.
async fn record_issued(
    controller: &Controller,
    host: &str,
    issued: &pki::AgentCertificate,
    action: &'static str,
) -> Result<(), crate::Error> {
    let (host, issued) = (host.to_owned(), issued.clone());
    controller
        .store
        .call(move |conn| {
            let now = now_unix_ms();
            hosts::record_certificate(conn, &host, &issued.serial, issued.expires_ms, now)?;
            store::append_audit(
                conn,
                &AuditEntry {
                    at_ms: now,
                    who: format!("agent:{host}"),
                    action: action.to_owned(),
                    stage: String::new(),
                    targets: vec![host.clone()],
                    result: "ok".to_owned(),
                },
            )
        })
        .await
}

/// Reads one session's messages into the registry until the agent hangs up or the
/// controller closes the session (a newer one replaced it, or shutdown).
async fn read_session(
    controller: Arc<Controller>,
    handle: HostHandle,
    mut inbound: Streaming<AgentMessage>,
) {
    let link = handle.link.clone();
    let ended = link.ended();
    tokio::pin!(ended);
    let reason = loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = &mut ended => break "the controller closed the session".to_owned(),
        };
        let body = match message {
            Ok(Some(AgentMessage { body: Some(body) })) => body,
            // A message type this controller does not know, from a newer agent.
            Ok(Some(AgentMessage { body: None })) => {
                handle.heard();
                continue;
            }
            Ok(None) => break "the agent closed the session".to_owned(),
            Err(status) => break format!("connection lost: {}", status.message()),
        };
        if handle.heard() == After::Replaced {
            break "replaced by a newer session".to_owned();
        }
        let after = match body {
            agent_message::Body::Hello(_) => {
                tracing::warn!(host = %link.host, "a second hello on one session; ignored");
                After::Continue
            }
            agent_message::Body::Snapshot(snapshot) => handle.snapshot(snapshot),
            agent_message::Body::Delta(delta) => handle.delta(delta),
            agent_message::Body::Heartbeat(heartbeat) => handle.heartbeat(heartbeat.seq),
            agent_message::Body::HostMetrics(metrics) => handle.host_metrics(metrics),
            agent_message::Body::Result(result) => {
                link.resolve(result);
                After::Continue
            }
            agent_message::Body::Renew(request) => {
                tokio::spawn(renew(controller.clone(), link.clone(), request));
                After::Continue
            }
            agent_message::Body::Logs(batch) if batch.entries.len() > MAX_LOG_BATCH => {
                After::Refused(format!(
                    "a log batch of {} lines; at most {MAX_LOG_BATCH}",
                    batch.entries.len()
                ))
            }
            agent_message::Body::Logs(batch) => {
                let subscription_id = batch.subscription_id;
                if link.deliver_logs(batch) == Delivery::Unwatched {
                    link.send_soon(controller_message::Body::Unsubscribe(LogUnsubscribe {
                        subscription_id,
                    }));
                }
                After::Continue
            }
        };
        match after {
            After::Continue => {}
            After::Resync => link.send_soon(controller_message::Body::Resync(ResyncRequest {})),
            After::Replaced => break "replaced by a newer session".to_owned(),
            After::Refused(reason) => {
                tracing::warn!(host = %link.host, %reason, "ended a session that broke a bound");
                break reason;
            }
        }
    };
    if let Some(last_seen) = handle.disconnect(&reason) {
        let host = link.host.clone();
        let me = controller.peers.me.id.clone();
        controller.store.write("host disconnected", move |conn| {
            store::host_disconnected(conn, &host, last_seen)?;
            store::release_host(conn, &host, &me)
        });
        tracing::info!(host = %link.host, %reason, "agent disconnected");
    }
    link.close();
}

/// The controller's side of a session: queued messages until the session is closed.
pub(crate) struct Outbound {
    queue: mpsc::Receiver<ControllerMessage>,
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl Stream for Outbound {
    type Item = Result<ControllerMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.ended.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        this.queue.poll_recv(cx).map(|message| message.map(Ok))
    }
}

/// Each host's certificate serial as last read from the store (a session accepted, the
/// sweep's reading every few seconds): what a session is checked against while the
/// store is unavailable.
#[derive(Default)]
pub struct KnownSerials {
    serials: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl KnownSerials {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.serials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, host: &str, serial: &str) {
        self.lock().insert(host.to_owned(), serial.to_owned());
    }

    fn is_current(&self, host: &str, serial: &str) -> bool {
        self.lock().get(host).is_some_and(|known| known == serial)
    }

    /// The store's current serials (`None`: removed), as the sweep read them.
    pub fn refresh(&self, current: &std::collections::HashMap<String, Option<String>>) {
        let mut serials = self.lock();
        serials.clear();
        serials.extend(
            current
                .iter()
                .filter_map(|(host, serial)| Some((host.clone(), serial.clone()?))),
        );
    }
}
