//! A `fleet-controller` process for tests that reach test-bed hosts through it: it
//! listens on the bed's bridge address (which every host's namespace can reach), with
//! its own data directory and an API token; killed on drop. Joining agents is left to
//! the tests: by hand with `fleet-agent join`, or by `fleet deploy <stage> setup`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::testbed::{TestBed, agent_binary};

/// The controller's heartbeat window in these tests (default 15 s is too slow to wait
/// for in a test); agents send a heartbeat every second.
const UNREACHABLE_AFTER: &str = "3s";
const HEARTBEAT: &str = "1s";
/// Generating the CA and the server certificate takes well under a second; the margin
/// is for a loaded 2-core runner.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// The offline commands (`token create`, `join-token`, `audit`) only touch the database.
const OFFLINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A controller in the root namespace, on the bridge address the hosts can reach.
pub struct Controller {
    child: Option<Child>,
    pub data: tempfile::TempDir,
    pub url: String,
    listen: String,
    pub token: String,
    /// More flags for the next `spawn`.
    pub flags: Vec<String>,
    /// The environment naming a shared store (`FLEET_STORE`, its password), for the
    /// controller and its offline commands.
    store_env: Vec<(&'static str, String)>,
}

/// A PostgreSQL store several test controllers share.
#[derive(Clone)]
pub struct SharedStore {
    /// The URL without its password, and the password (`FLEET_STORE_PASSWORD`).
    pub url: String,
    pub password: String,
    /// The first controller's seal key, given to the others; and its admin token.
    pub seal_key: Option<PathBuf>,
    pub token: Option<String>,
}

impl Controller {
    fn bin() -> PathBuf {
        agent_binary().with_file_name("fleet-controller")
    }

    /// Runs an offline command (`token create`, `join-token`, `audit`) on `data`.
    fn offline(data: &Path, store_env: &[(&'static str, String)], args: &[&str]) -> String {
        let mut command = Command::new(Self::bin());
        command
            .args(args)
            .arg("--data")
            .arg(data)
            .envs(store_env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = wait_output(command.spawn().unwrap(), OFFLINE_TIMEOUT);
        assert!(
            output.status.success(),
            "fleet-controller {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    pub fn start(bed: &TestBed) -> Controller {
        Controller::start_with(bed, &[])
    }

    /// `start` with more flags (`--http 127.0.0.1:<port>`).
    pub fn start_with(bed: &TestBed, flags: &[String]) -> Controller {
        Controller::start_on(bed, flags, None)
    }

    /// A controller on a shared store: the first makes the token and the seal key, the
    /// others are given them (`store.token`, `store.seal_key`).
    pub fn start_shared(bed: &TestBed, store: &SharedStore) -> Controller {
        Controller::start_on(bed, &[], Some(store))
    }

    fn start_on(bed: &TestBed, flags: &[String], store: Option<&SharedStore>) -> Controller {
        let data = tempfile::Builder::new()
            .prefix("fleet-controller-")
            .tempdir()
            .unwrap();
        let bridge = bed.hosts[0].address.rsplit_once('.').unwrap().0.to_string() + ".254";
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("{bridge}:{port}");
        let mut store_env = Vec::new();
        let mut flags = flags.to_vec();
        if let Some(store) = store {
            store_env.push(("FLEET_STORE", store.url.clone()));
            store_env.push(("FLEET_STORE_PASSWORD", store.password.clone()));
            if let Some(seal) = &store.seal_key {
                flags.extend(["--seal-key".to_owned(), seal.display().to_string()]);
            }
        }
        let token = match store.and_then(|s| s.token.clone()) {
            Some(token) => token,
            None => Self::offline(
                data.path(),
                &store_env,
                &["token", "create", "--name", "e2e", "--role", "admin"],
            )
            .trim()
            .to_string(),
        };
        assert!(token.starts_with("fct_"), "token create printed {token:?}");
        // Deploys the controller runs reach the bed as the tests do: its client key,
        // and the bed's host keys, added as an operator would (ssh-keyscan output).
        let known = bed.known_hosts().display().to_string();
        Self::offline(data.path(), &store_env, &["known-hosts", "add", &known]);
        flags.extend([
            "--deploy-key".to_owned(),
            bed.client_key().display().to_string(),
        ]);
        let mut controller = Controller {
            child: None,
            url: format!("https://{listen}"),
            listen,
            data,
            token,
            flags,
            store_env,
        };
        controller.spawn();
        controller
    }

    pub fn spawn(&mut self) {
        let child = Command::new(Self::bin())
            .args(["--listen", &self.listen, "--data"])
            .arg(self.data.path())
            .args([
                "--heartbeat",
                HEARTBEAT,
                "--unreachable-after",
                UNREACHABLE_AFTER,
            ])
            .args(&self.flags)
            .envs(self.store_env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::null())
            .stderr(self.log_file())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let address = self.listen.clone();
        wait_until("the controller to listen", LISTEN_TIMEOUT, || {
            TcpStream::connect(&address).is_ok()
        });
    }

    /// Where every start of this controller logs, kept for a failing test to show.
    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("controller.log"))
            .expect("open the controller's log")
    }

    /// The end of what this controller logged, over all its starts.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.data.path().join("controller.log")).unwrap_or_default();
        format!("controller.log (end):\n{}", crate::harness::tail(&log, 400))
    }

    /// SIGKILL: the controller gets no chance to leave the store or close sessions.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// The seal key the first controller of a store made.
    pub fn seal_key(&self) -> PathBuf {
        self.data.path().join("seal.key")
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.data.path().join("ca.pem")
    }

    /// What the CLI needs to go through this controller.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FLEET_CONTROLLER", self.url.clone()),
            ("FLEET_TOKEN", self.token.clone()),
            ("FLEET_CA", self.ca().display().to_string()),
        ]
    }

    /// A new API token with `role` for this controller, as `token create` prints it.
    pub fn token(&self, name: &str, role: &str) -> String {
        Self::offline(
            self.data.path(),
            &self.store_env,
            &["token", "create", "--name", name, "--role", role],
        )
        .trim()
        .to_string()
    }

    /// An offline command on this controller's data (`host remove`, ...).
    pub fn run(&self, args: &[&str]) -> String {
        Self::offline(self.data.path(), &self.store_env, args)
    }

    /// A one-time join token for `host`, as `fleet-controller join-token` prints it.
    pub fn join_token(&self, host: &str) -> String {
        let token = Self::offline(self.data.path(), &self.store_env, &["join-token", host])
            .trim()
            .to_string();
        assert!(!token.is_empty(), "join-token printed nothing");
        token
    }

    /// `fleet-controller audit --json --limit 0`: the whole audit log, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        let stdout = Self::offline(
            self.data.path(),
            &self.store_env,
            &["audit", "--json", "--limit", "0"],
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("audit --json: {e}: {stdout}"))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}
