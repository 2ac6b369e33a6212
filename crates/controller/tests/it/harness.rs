//! A controller running in the test, CLI clients with a token, and fake agents that
//! join and hold a session like `fleet-agent` does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_controller::ControllerConfig;
use fleet_proto::agent::v1::{LogEntry, ProcessInfo};
use fleet_proto::controller::v1::agent_link_client::AgentLinkClient;
use fleet_proto::controller::v1::fleet_service_client::FleetServiceClient;
use fleet_proto::controller::v1::{
    Action, AgentHello, AgentMessage, CommandRequest, CommandResponse, ControllerMessage,
    FleetLogsRequest, JoinRequest, Stage, StatusRequest, StatusResponse, Welcome, agent_message,
    controller_message,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status, Streaming};

/// Every wait in these tests is bounded by this; a hang fails instead of blocking CI.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A controller serving in this test's runtime, or the real binary in a child process.
pub struct Controller {
    pub data: PathBuf,
    /// Its store (the data directory's SQLite, or a PostgreSQL the test runs).
    pub store: fleet_controller::store::Location,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), fleet_controller::Error>>>,
    pub process: Option<std::process::Child>,
}

impl Controller {
    /// Starts a controller on `data` with the default settings.
    pub async fn start(data: &Path) -> Controller {
        Controller::start_with(data, |_| {}).await
    }

    /// Starts a controller on `data` with its HTTP face (TLS or plain) on a free
    /// loopback port, returned.
    pub async fn start_http(data: &Path, tls: bool) -> (Controller, SocketAddr) {
        Controller::start_http_with(data, tls, |_| {}).await
    }

    /// `start_http` after `adjust` changed the controller's config.
    pub async fn start_http_with(
        data: &Path,
        tls: bool,
        adjust: impl FnOnce(&mut ControllerConfig),
    ) -> (Controller, SocketAddr) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, http) = (
            listener.local_addr().unwrap(),
            http_listener.local_addr().unwrap(),
        );
        let face = fleet_controller::http::HttpListener::new(http_listener, tls).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = ControllerConfig::new(data);
        adjust(&mut config);
        let store = config.location();
        let task = tokio::spawn(fleet_controller::serve_with(
            config,
            listener,
            Some(face),
            async {
                let _ = stopped.await;
            },
        ));
        let controller = Controller {
            data: data.to_owned(),
            store,
            addr,
            stop: Some(stop),
            task: Some(task),
            process: None,
        };
        controller.wait_until_up().await;
        (controller, http)
    }

    /// Starts a controller on `data` after `adjust` changed its config.
    pub async fn start_with(data: &Path, adjust: impl FnOnce(&mut ControllerConfig)) -> Controller {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut config = ControllerConfig::new(data);
        adjust(&mut config);
        let store = config.location();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(fleet_controller::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let controller = Controller {
            data: data.to_owned(),
            store,
            addr,
            stop: Some(stop),
            task: Some(task),
            process: None,
        };
        controller.wait_until_up().await;
        controller
    }

    /// Runs the `fleet-controller` binary on `data` and a free loopback port; the child
    /// is killed when this is dropped.
    pub async fn spawn_binary(data: &Path) -> Controller {
        Controller::spawn_binary_with(data, &[]).await
    }

    /// `spawn_binary` with more arguments (`--http 127.0.0.1:<port>`).
    pub async fn spawn_binary_with(data: &Path, extra: &[String]) -> Controller {
        Controller::spawn_binary_on(data, extra, None).await
    }

    /// `spawn_binary_with` on a shared store (`FLEET_STORE`; its password in the URL,
    /// through the environment).
    pub async fn spawn_binary_on(
        data: &Path,
        extra: &[String],
        store: Option<&fleet_controller::store::PgLocation>,
    ) -> Controller {
        let (url, location) = match store {
            Some(location) => (
                Some(location.url_with_password()),
                fleet_controller::store::Location::Postgres(Box::new(location.clone())),
            ),
            None => (None, fleet_controller::store::Location::in_data_dir(data)),
        };
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-controller"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("FLEET_LOG", "warn")
            .envs(url.map(|url| ("FLEET_STORE", url)))
            .spawn()
            .unwrap();
        let controller = Controller {
            data: data.to_owned(),
            addr,
            stop: None,
            task: None,
            process: Some(process),
            store: location,
        };
        controller.wait_until_up().await;
        controller
    }

    /// The data directory (CA, database) is ready once the port answers TLS.
    async fn wait_until_up(&self) {
        let until = tokio::time::Instant::now() + DEADLINE;
        while !self.data.join("ca.pem").exists() || self.channel(None).await.is_err() {
            assert!(
                tokio::time::Instant::now() < until,
                "the controller did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the controller and waits for `serve` (or the child) to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.as_mut() {
            let result = tokio::time::timeout(DEADLINE, task)
                .await
                .expect("serve returns after shutdown")
                .unwrap();
            result.unwrap();
        }
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data.join("ca.pem")).unwrap()
    }

    /// A TLS channel trusting the controller's CA, with a client certificate if given.
    pub async fn channel(
        &self,
        identity: Option<&AgentIdentity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem()));
        if let Some(identity) = identity {
            tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        }
        // By IP: the server certificate names 127.0.0.1 as well as localhost.
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.addr.port()))
            .unwrap()
            .tls_config(tls)?
            .connect_timeout(DEADLINE)
            .connect()
            .await
    }

    /// A new `admin` API token, made as `fleet-controller token create` makes it.
    pub fn api_token(&self) -> String {
        self.token_with(fleet_controller::tokens::Role::Admin, None)
    }

    /// A new API token with `role`, valid for `ttl` when given.
    pub fn token_with(
        &self,
        role: fleet_controller::tokens::Role,
        ttl: Option<Duration>,
    ) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}-{n}", role.as_str());
        let store = self.store.clone();
        off_runtime(move || fleet_controller::create_api_token(&store, &name, role, ttl)).unwrap()
    }

    pub async fn fleet(&self) -> FleetServiceClient<Channel> {
        FleetServiceClient::new(self.channel(None).await.unwrap())
            .max_decoding_message_size(fleet_proto::ops::MAX_CONTROLLER_ANSWER_BYTES)
    }

    /// Joins `host` with a fresh key, as `fleet-agent join` does.
    pub async fn join(&self, host: &str) -> AgentIdentity {
        let (token, _) = self.join_token(host);
        let (key, csr_pem) = csr(host);
        let response = AgentLinkClient::new(self.channel(None).await.unwrap())
            .join(JoinRequest {
                token,
                host: host.to_owned(),
                csr_pem,
                protocol_major: 1,
                rejoin: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.ca_pem, self.ca_pem());
        assert_eq!(
            response.controllers.first(),
            Some(&format!("https://{}", self.addr)),
            "a join names the controllers, this one first"
        );
        AgentIdentity {
            cert_pem: response.certificate_pem,
            key_pem: key.serialize_pem(),
            controllers: response.controllers,
        }
    }

    /// A one-time join token for `host`, as `fleet-controller join-token` makes it.
    pub fn join_token(&self, host: &str) -> (String, u64) {
        let (store, host) = (self.store.clone(), host.to_owned());
        off_runtime(move || {
            fleet_controller::create_join_token(&store, &host, Duration::from_secs(3600))
        })
        .unwrap()
    }

    /// `Status` for a stage of `hosts`.
    pub async fn status(&self, token: &str, hosts: &[&str]) -> StatusResponse {
        status_on(&mut self.fleet().await, token, hosts).await
    }

    /// `Logs` of a stage of `hosts` for `targets`: `lines` of history, then (with
    /// `follow`) live.
    pub async fn logs(
        &self,
        token: &str,
        hosts: &[&str],
        targets: &[&str],
        lines: u32,
        follow: bool,
    ) -> Streaming<LogEntry> {
        let request = FleetLogsRequest {
            stage: Some(stage(hosts)),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            lines,
            follow,
        };
        (self.fleet().await)
            .logs(authed(request, token))
            .await
            .unwrap()
            .into_inner()
    }

    /// `Command` `action` of `targets` on a stage of `hosts`.
    pub async fn command(
        &self,
        token: &str,
        hosts: &[&str],
        action: Action,
        targets: &[&str],
    ) -> CommandResponse {
        let request = CommandRequest {
            stage: Some(stage(hosts)),
            action: action.into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            count: String::new(),
        };
        (self.fleet().await)
            .command(authed(request, token))
            .await
            .unwrap()
            .into_inner()
    }
}

/// `Status` for a stage of `hosts` over an open client (the benchmarks call it in a loop).
pub async fn status_on(
    fleet: &mut FleetServiceClient<Channel>,
    token: &str,
    hosts: &[&str],
) -> StatusResponse {
    fleet
        .status(authed(
            StatusRequest {
                stage: Some(stage(hosts)),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// Runs `work` on a thread of its own: the store's offline calls block (PostgreSQL's
/// client runs a runtime of its own, which must not be inside the test's).
pub fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(work)
        .join()
        .expect("the store call does not panic")
}

/// A key and the certificate the controller issued for it.
#[derive(Clone, Debug)]
pub struct AgentIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    /// The controllers the join named (`JoinResponse.controllers`).
    pub controllers: Vec<String>,
}

/// A new key and a PEM CSR for it, with `host` as the requested common name.
pub fn csr(host: &str) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host);
    params.distinguished_name = name;
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

pub fn stage(hosts: &[&str]) -> Stage {
    Stage {
        name: "test".to_owned(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    }
}

/// A request carrying `token` as the CLI sends it.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn hello(host: &str) -> AgentHello {
    AgentHello {
        protocol_major: 1,
        protocol_minor: 0,
        agent_version: "0.1.0-test".to_owned(),
        host: host.to_owned(),
        boot_id: "boot-1".to_owned(),
    }
}

pub fn process(id: u32, name: &str) -> ProcessInfo {
    ProcessInfo {
        id,
        name: name.to_owned(),
        pid: Some(1000 + id),
        status: fleet_proto::agent::v1::ProcessStatus::Online.into(),
        ..ProcessInfo::default()
    }
}

/// An agent's session, driven by the test.
pub struct FakeAgent {
    outbound: mpsc::Sender<AgentMessage>,
    pub inbound: Streaming<ControllerMessage>,
    pub welcome: Welcome,
}

impl FakeAgent {
    /// Opens a session on `channel` and says `hello`; the error is the controller's
    /// refusal.
    pub async fn connect(channel: Channel, hello: AgentHello) -> Result<FakeAgent, Status> {
        let (outbound, queue) = mpsc::channel(64);
        outbound
            .send(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            })
            .await
            .unwrap();
        let mut inbound = tokio::time::timeout(
            DEADLINE,
            AgentLinkClient::new(channel).session(ReceiverStream::new(queue)),
        )
        .await
        .expect("the controller answers the session")?
        .into_inner();
        let first = tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .expect("the controller says welcome")?;
        let Some(ControllerMessage {
            body: Some(controller_message::Body::Welcome(welcome)),
        }) = first
        else {
            panic!("the first message is not a welcome: {first:?}");
        };
        Ok(FakeAgent {
            outbound,
            inbound,
            welcome,
        })
    }

    /// Joins `host` and opens its session.
    pub async fn joined(controller: &Controller, host: &str) -> (FakeAgent, AgentIdentity) {
        let identity = controller.join(host).await;
        let channel = controller.channel(Some(&identity)).await.unwrap();
        let agent = FakeAgent::connect(channel, hello(host)).await.unwrap();
        (agent, identity)
    }

    /// Sends `body`; false once the session is gone (a simulated agent then reconnects).
    pub async fn try_send(&self, body: agent_message::Body) -> bool {
        self.outbound
            .send(AgentMessage { body: Some(body) })
            .await
            .is_ok()
    }

    pub async fn send(&self, body: agent_message::Body) {
        self.outbound
            .send(AgentMessage { body: Some(body) })
            .await
            .unwrap();
    }

    /// The next message from the controller, or None when the session ended.
    pub async fn next(&mut self) -> Option<controller_message::Body> {
        tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .expect("a message from the controller in time")
            .ok()
            .flatten()
            .map(|message| message.body.expect("a message with a body"))
    }
}

/// Polls `status` until `done` holds, failing after `within`.
pub async fn wait_for_status(
    controller: &Controller,
    token: &str,
    hosts: &[&str],
    within: Duration,
    done: impl Fn(&StatusResponse) -> bool,
) -> StatusResponse {
    let until = tokio::time::Instant::now() + within;
    loop {
        let status = controller.status(token, hosts).await;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "status did not settle: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
