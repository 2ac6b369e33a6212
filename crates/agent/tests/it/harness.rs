//! An agent in this test process: `daemon::run` on a temp `FLEET_HOME` with its own
//! unix socket and a shutdown channel, as `fleet-agent` runs it, and a gRPC client
//! connected to it. Dropping the agent stops it.

use std::path::Path;
use std::time::Duration;

use fleet_agent::logs::LogHub;
use fleet_agent::store::Home;
use fleet_proto::agent::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Uri};

/// Every wait in these tests gives up after this long.
pub const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

pub struct Agent {
    pub home: TempDir,
    pub client: AgentServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    /// An agent on an empty home.
    pub async fn start() -> Agent {
        let home = tempfile::Builder::new()
            .prefix("fleet-agent-it")
            .tempdir()
            .expect("a temp home");
        Agent::start_in(home).await
    }

    /// An agent on `home`, which may hold an earlier agent's files.
    pub async fn start_in(home: TempDir) -> Agent {
        let paths = Home::new(home.path());
        paths.create().expect("create the home");
        let (lock, listener) = fleet_agent::daemon::bind(&paths).expect("bind the socket");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.await;
            };
            let start = fleet_agent::daemon::Start::Fresh {
                resurrect: false,
                stored: Default::default(),
            };
            fleet_agent::daemon::run(paths, (lock, listener), LogHub::new(), stop, start).await
        });
        let client = connect(&home.path().join("agent.sock")).await;
        Agent {
            home,
            client,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the agent as SIGTERM would (apps stopped, kept in the state file) and
    /// hands back its home.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown_now().await;
        let home = tempfile::Builder::new().tempdir().expect("a placeholder");
        std::mem::replace(&mut self.home, home)
    }

    async fn shutdown_now(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(DEADLINE, task)
                .await
                .expect("the agent stops within the deadline");
            result.expect("the agent task").expect("the agent ran");
        }
    }

    /// Every instance, as `fleet list` sees them.
    pub async fn list(&mut self) -> Vec<pb::ProcessInfo> {
        self.client
            .list(pb::ListRequest::default())
            .await
            .expect("list")
            .into_inner()
            .processes
    }

    /// Waits until `done` holds for the process list.
    pub async fn wait_until(
        &mut self,
        what: &str,
        done: impl Fn(&[pb::ProcessInfo]) -> bool,
    ) -> Vec<pb::ProcessInfo> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let list = self.list().await;
            if done(&list) {
                return list;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {list:#?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A test that panicked: stop the apps' process groups the agent started.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn connect(socket: &Path) -> AgentServiceClient<Channel> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no agent socket");
        tokio::time::sleep(POLL).await;
    }
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://agent.sock")
        .expect("a placeholder URI")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to the agent");
    let (client, _) = fleet_proto::ops::handshake(channel, fleet_proto::ops::ANY_MINOR)
        .await
        .expect("the handshake");
    client
}

/// Apps from a `fleet.toml` text, resolved here as the CLI resolves them.
pub fn apps(dir: &Path, toml: &str) -> Vec<pb::AppConfig> {
    let path = dir.join("fleet.toml");
    std::fs::write(&path, toml).expect("write fleet.toml");
    let options = fleet_config::LoadOptions {
        cwd: dir.to_path_buf(),
        ..Default::default()
    };
    let file = fleet_config::load(&path, &options).expect("a valid config");
    file.apps
        .iter()
        .map(|app| pb::AppConfig {
            json: serde_json::to_string(app).expect("AppSpec as JSON"),
        })
        .collect()
}
