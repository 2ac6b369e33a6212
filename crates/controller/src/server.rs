//! `serve`: prepares the data directory (CA, server certificate, database), then serves
//! `AgentLink` and `FleetService` on one TLS port until the shutdown future resolves.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::controller::v1::agent_link_server::AgentLinkServer;
use fleet_proto::controller::v1::fleet_service_server::FleetServiceServer;
use fleet_proto::controller::v1::peer_service_server::PeerServiceServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::agent_link::AgentLinkService;
use crate::config::ControllerConfig;
use crate::error::Error;
use crate::fleet_service::FleetApi;
use crate::pki::{Pki, PkiPaths};
use crate::registry::Registry;
use crate::store::{self, Store};

/// A client that opens TCP but never finishes the TLS handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find dead TCP connections that application heartbeats cannot tell from
/// silent agents (the research note's 20 s, as in Nomad's and the kubelet's links).
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A snapshot of a host with many instances is bigger than tonic's 4 MiB default.
const MAX_AGENT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// After shutdown is asked for, open calls get this long to finish before the server
/// stops regardless.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What both services share.
pub(crate) struct Controller {
    pub config: ControllerConfig,
    pub store: Store,
    pub registry: Registry,
    pub pki: Pki,
    /// Failed authentications per peer (`limits`).
    pub failures: Arc<crate::limits::Failures>,
    /// API tokens that verified lately (`limits::Guard`).
    pub valid_tokens: Arc<crate::limits::ValidTokens>,
    /// Callers verified lately, taken as they were while the store is away (`auth`).
    pub verified: crate::auth::Verified,
    /// Hosts' current certificate serials, checked while the store is away.
    pub known_serials: crate::agent_link::KnownSerials,
    /// The controllers sharing the store, this one among them.
    pub peers: crate::peers::Peers,
    /// Joins being signed at once.
    pub joins: tokio::sync::Semaphore,
    /// Open connections, and which have authenticated (`limits`).
    pub connections: crate::limits::Connections,
    /// Alerts, when the config file has `[alerts]`.
    pub alerts: Option<Arc<crate::alerts::AlertEngine>>,
    /// RPC and store latencies, and deploys by outcome, for `/metrics`.
    pub telemetry: crate::http::metrics::Telemetry,
    pub deploys: crate::http::metrics::DeployCounts,
    /// Deploys this controller runs.
    pub deployer: crate::deployer::Deployer,
}

/// Serves the controller on `listener` until `shutdown` resolves. The first start
/// creates the data directory with the CA, the server certificate and the database;
/// later starts load them.
pub async fn serve(
    config: ControllerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_with(config, listener, None, shutdown).await
}

/// `serve`, with the HTTP face (`/metrics`) on `http` when given.
pub async fn serve_with(
    config: ControllerConfig,
    listener: TcpListener,
    http: Option<crate::http::HttpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let local = listener
        .local_addr()
        .map_err(|source| Error::io(&config.data_dir, source))?;
    let controller = open(config, local).await?;
    let pki = &controller.pki;
    let tls = ServerTlsConfig::new()
        // The chain with the CA: `fleet controller trust` shows its fingerprint.
        .identity(Identity::from_pem(
            format!("{}{}", pki.server_cert_pem, pki.ca_pem),
            &pki.server_key_pem,
        ))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem))
        // `Join` comes without a client certificate; `Session` checks for one itself.
        .client_auth_optional(true)
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    let _background = background(&controller, http);
    crate::deployer::resume(&controller).await;
    let connections = controller.connections.clone();
    let incoming = TcpListenerStream::new(listener).filter_map(move |stream| match stream {
        Ok(stream) => {
            // Commands and heartbeats are small messages; don't let Nagle hold them.
            let _ = stream.set_nodelay(true);
            connections.admit(stream).map(Ok)
        }
        Err(error) => Some(Err(error)),
    });
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let controller = controller.clone();
        async move {
            shutdown.await;
            tracing::info!("controller stopping");
            // Sessions and log streams never end on their own: close them so the
            // graceful shutdown has nothing to wait for.
            controller.registry.close_all();
            crate::peers::leave(&controller).await;
            let _ = stopping.send(());
        }
    };
    tracing::info!(
        address = %local,
        ca = %controller.config.data_dir.join("ca.pem").display(),
        "controller serving; the CLI trusts it with FLEET_CA=<ca>"
    );
    let server = Server::builder()
        .layer(crate::limits::Guard {
            failures: controller.failures.clone(),
            valid: controller.valid_tokens.clone(),
            telemetry: controller.telemetry.clone(),
        })
        .max_concurrent_streams(crate::limits::MAX_STREAMS_PER_CONNECTION)
        // What a connection may have in flight before it is read: a 1 MiB `Join`
        // is cut off at 64 KiB instead of buffered whole, per abuser.
        .initial_stream_window_size(crate::limits::STREAM_WINDOW)
        .initial_connection_window_size(crate::limits::CONNECTION_WINDOW)
        .tls_config(tls)?
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(
            AgentLinkServer::new(AgentLinkService::new(controller.clone()))
                .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES),
        )
        .add_service(FleetServiceServer::new(FleetApi::new(controller.clone())))
        .add_service(PeerServiceServer::new(crate::peers::PeerApi::new(
            controller.clone(),
        )))
        .serve_with_incoming_shutdown(incoming, signal);
    let grace = async move {
        match stopped.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result?,
        () = grace => tracing::warn!("calls still open {}s after shutdown; stopping anyway", SHUTDOWN_GRACE.as_secs()),
    }
    tracing::info!("controller stopped");
    Ok(())
}

/// The controller's state, opened from its data directory: the PKI (made on the first
/// start), the database, open alert incidents, deploy counts and the known hosts.
async fn open(config: ControllerConfig, local: SocketAddr) -> Result<Arc<Controller>, Error> {
    // One crypto backend (aws-lc-rs); installing it as the process default keeps rustls
    // working even if some dependency also enables ring. Already installed is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let data_dir = config.data_dir.clone();
    let sans = server_sans(&config, local);
    {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || crate::prepare_data_dir(&data_dir))
            .await
            .expect("preparing the data directory does not panic")?;
    }
    let telemetry = crate::http::metrics::Telemetry::default();
    let location = config.location();
    let store = Store::start(location.clone(), telemetry.store.clone()).await?;
    // A shared store holds the fleet's one CA (its key sealed); a SQLite controller
    // keeps its own in files.
    let shared = if location.is_shared() {
        let path = config.seal_key_path();
        // Only the first controller of an empty store makes the key; the others must
        // be given a copy.
        let empty = store
            .call(|db| crate::store::stored_ca(db))
            .await?
            .is_none();
        let seal = tokio::task::spawn_blocking(move || crate::seal::SealKey::load(&path, empty))
            .await
            .expect("loading the seal key does not panic")?;
        Some(crate::pki::shared_ca(&store, &seal).await?)
    } else {
        None
    };
    let pki = tokio::task::spawn_blocking(move || {
        Pki::load_or_create(&PkiPaths::new(&data_dir), &sans, shared)
    })
    .await
    .expect("loading the PKI does not panic")?;
    let alerts = match config.alerts.clone() {
        Some(alerts) => {
            let open = store
                .call(|conn| crate::alerts::open_incidents(conn))
                .await?;
            Some(Arc::new(crate::alerts::AlertEngine::new(
                alerts,
                open,
                crate::now_unix_ms(),
            )))
        }
        None => None,
    };
    let deploys = crate::http::metrics::DeployCounts::default();
    deploys.load(store.call(|conn| store::deploy_counts(conn)).await?);
    let known = store.call(|conn| store::known_hosts(conn)).await?;
    let registry = Registry::new(config.unreachable_after, known);
    let advertise = (config.advertise.clone()).unwrap_or_else(|| default_url(local));
    let peers = crate::peers::Peers::new(advertise, &pki)?;
    let files = crate::deployer::keys::Files::new(&config.data_dir, config.deploy_key.as_deref());
    {
        let files = files.clone();
        tokio::task::spawn_blocking(move || files.prepare())
            .await
            .expect("preparing the deploy key does not panic")?;
    }

    Ok(Arc::new(Controller {
        config,
        store,
        registry,
        pki,
        failures: Arc::default(),
        valid_tokens: Arc::default(),
        verified: crate::auth::Verified::default(),
        known_serials: crate::agent_link::KnownSerials::default(),
        peers,
        joins: tokio::sync::Semaphore::new(crate::limits::MAX_CONCURRENT_JOINS),
        connections: crate::limits::Connections::default(),
        telemetry,
        deploys,
        alerts,
        deployer: crate::deployer::Deployer::new(files),
    }))
}

/// Background tasks stop with the server: each is aborted when the returned guards are
/// dropped (an in-process controller that stopped must not go on sweeping or alerting).
fn background(
    controller: &Arc<Controller>,
    http: Option<crate::http::HttpListener>,
) -> Vec<AbortOnDrop> {
    let mut background = vec![
        AbortOnDrop(tokio::spawn(sweep_sessions(controller.clone()))),
        AbortOnDrop(tokio::spawn(crate::peers::keep_lease(controller.clone()))),
    ];
    if let Some(engine) = &controller.alerts {
        let (c, e) = (controller.clone(), engine.clone());
        background.push(AbortOnDrop(tokio::spawn(crate::alerts::evaluate(c, e))));
        let (c, e) = (controller.clone(), engine.clone());
        background.push(AbortOnDrop(tokio::spawn(crate::alerts::deliver(c, e))));
    }
    if let Some(http) = http {
        let task = crate::http::serve(controller.clone(), http);
        background.push(AbortOnDrop(tokio::spawn(async move {
            if let Err(error) = task.await {
                tracing::error!(%error, "the HTTP face stopped");
            }
        })));
    }
    background
}

/// A task aborted when this is dropped.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often open sessions are checked against the hosts' current certificates
/// (`fleet-controller host remove` writes the database from another process).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Closes sessions whose certificate was superseded or whose host was removed, and
/// refreshes the API tokens known valid (`limits::ValidTokens`).
async fn sweep_sessions(controller: Arc<Controller>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = controller
            .store
            .call(|conn| crate::hosts::current_serials(conn))
            .await;
        match current {
            Ok(current) => {
                controller.known_serials.refresh(&current);
                for host in controller.registry.sweep(&current) {
                    tracing::warn!(%host, "closed the session of a removed host or superseded certificate");
                }
            }
            Err(crate::Error::StoreStopped) => return,
            Err(error) => tracing::error!(%error, "cannot check hosts' certificates"),
        }
        let usable = controller
            .store
            .call(|conn| crate::tokens::usable_hashes(conn, crate::now_unix_ms()))
            .await;
        if let Ok(usable) = usable {
            controller.valid_tokens.refresh(usable);
        }
    }
}

/// The URL agents and peers reach a controller listening on `local` at, unless
/// `--advertise` says: the address itself, or the machine's name when listening on
/// every address.
fn default_url(local: SocketAddr) -> String {
    if local.ip().is_unspecified() {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name = name.trim();
        if !name.is_empty() {
            return format!("https://{name}:{}", local.port());
        }
    }
    format!("https://{local}")
}

/// The names the server certificate must carry: the listener's address, the local
/// names, the machine's host name when listening on every address, and `--san`s.
fn server_sans(config: &ControllerConfig, local: SocketAddr) -> BTreeSet<String> {
    let mut sans: BTreeSet<String> = ["localhost".to_owned(), "127.0.0.1".to_owned()].into();
    if local.ip().is_unspecified() {
        if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let name = name.trim();
            if !name.is_empty() {
                sans.insert(name.to_owned());
            }
        }
        tracing::info!(
            "listening on every address: pass --san <name> for each name agents and the CLI use"
        );
    } else {
        sans.insert(local.ip().to_string());
    }
    sans.extend(config.sans.iter().cloned());
    // Agents and peers check the advertised name.
    if let Some(host) = (config.advertise.as_deref())
        .and_then(|url| url.parse::<http::Uri>().ok())
        .and_then(|uri| {
            uri.host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        })
    {
        sans.insert(host);
    }
    sans
}
