//! The SSH transport against a real OpenSSH sshd on 127.0.0.1 (package
//! `openssh-server`) and a real `fleet-agent`: no mocks. Each test starts its own
//! sshd on a free port with temporary host keys and kills it on drop. Parsing is
//! tested without sshd at the end.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_proto::agent::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use tempfile::TempDir;

use super::options::{self, Destination, Role, SshConfig, StrictHostKeyChecking};
use super::{Pool, SshError, SshSettings};

const SSHD: &str = "/usr/sbin/sshd";
/// Every wait in these tests gives up after this long.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run a helper program");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Makes a key pair with ssh-keygen; returns the public line.
fn keygen(path: &Path, kind: &str, passphrase: &str) -> String {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", "fleet-test", "-f"])
        .arg(path));
    std::fs::read_to_string(path.with_extension("pub")).expect("read the public key")
}

/// `SHA256:…` of a public key file, as ssh-keygen prints it.
fn fingerprint_of(public: &Path) -> String {
    run(Command::new("ssh-keygen").arg("-lf").arg(public))
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_string()
}

/// A test world: a temp dir with a client key, known_hosts and (empty) ssh config.
struct World {
    dir: TempDir,
    key: PathBuf,
    public: String,
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("fleet-ssh")
            .tempdir()
            .expect("temp dir");
        let key = dir.path().join("id_ed25519");
        let public = keygen(&key, "ed25519", "");
        World { dir, key, public }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn known_hosts(&self) -> PathBuf {
        self.path("known_hosts")
    }

    /// Settings that touch nothing of the user's: this world's key, known_hosts and
    /// an ssh config that does not exist.
    fn settings(&self) -> SshSettings {
        SshSettings {
            key: Some(self.key.clone()),
            known_hosts: Some(self.known_hosts()),
            ssh_config: Some(self.path("ssh_config")),
            connect_timeout: Duration::from_secs(10),
            ..SshSettings::default()
        }
    }

    fn trust(&self, sshd: &Sshd) {
        let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_public);
        append(&self.known_hosts(), &line);
    }

    fn sshd(&self, name: &str, extra_config: &str) -> Sshd {
        Sshd::start(&self.path(name), &self.public, extra_config)
    }
}

fn append(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    writeln!(file, "{}", line.trim_end()).expect("append");
}

/// A real sshd on 127.0.0.1, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// `ssh-ed25519 AAAA…` (the only host key).
    host_public: String,
}

impl Sshd {
    fn start(dir: &Path, authorized: &str, extra_config: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing\nhint: apt-get install openssh-server"
        );
        // sshd refuses to start as root without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        std::fs::create_dir_all(dir).expect("sshd dir");
        let host_key = dir.join("host_ed25519");
        let host_public = keygen(&host_key, "ed25519", "");
        let host_public = host_public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(dir.join("authorized_keys"), authorized).expect("authorized_keys");
        for _attempt in 0..5 {
            let port = free_port();
            let listen = extra_config
                .lines()
                .any(|l| l.starts_with("ListenAddress"))
                .then(String::new)
                .unwrap_or_else(|| "ListenAddress 127.0.0.1\n".to_string());
            let config = format!(
                "Port {port}\n{listen}HostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 UsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 AllowTcpForwarding yes\nAllowStreamLocalForwarding yes\nMaxAuthTries 20\n\
                 LogLevel DEBUG1\n{extra_config}\n",
                host_key.display(),
                dir.join("authorized_keys").display(),
                dir.join("sshd.pid").display(),
            );
            std::fs::write(dir.join("sshd_config"), config).expect("sshd_config");
            let log = dir.join("sshd.log");
            let _ = std::fs::remove_file(&log);
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-f")
                .arg(dir.join("sshd_config"))
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + DEADLINE;
            loop {
                if banner(port) {
                    return Sshd {
                        child,
                        port,
                        dir: dir.to_path_buf(),
                        host_public,
                    };
                }
                if child.try_wait().expect("poll sshd").is_some() {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(
                        log.contains("Address already in use"),
                        "sshd exited:\n{log}"
                    );
                    break;
                }
                assert!(Instant::now() < deadline, "sshd did not start");
                std::thread::sleep(POLL);
            }
        }
        panic!("no free port for sshd");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    fn host_public_path(&self) -> PathBuf {
        self.dir.join("host_ed25519.pub")
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// Whether sshd answers on `port` with its version banner.
fn banner(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buffer = [0u8; 8];
    stream.read_exact(&mut buffer).is_ok() && buffer.starts_with(b"SSH-2.0")
}

/// A real fleet-agent (`target/debug/fleet-agent --home DIR`), killed on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(home: &Path) -> Agent {
        // The test binary is target/debug/deps/fleet-*; the agent is target/debug/fleet-agent.
        let binary = std::env::current_exe()
            .expect("test binary path")
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("fleet-agent");
        assert!(
            binary.exists(),
            "{} is missing\nhint: cargo build -p fleet-agent",
            binary.display()
        );
        std::fs::create_dir_all(home).expect("agent home");
        let child = Command::new(&binary)
            .arg("--home")
            .arg(home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fleet-agent");
        let socket = home.join("agent.sock");
        wait_until("agent.sock", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Agent { child }
    }
}

impl Agent {
    /// SIGKILL, as a crash.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn try_hello(channel: tonic::transport::Channel) -> Result<pb::HelloResponse, tonic::Status> {
    let response = AgentServiceClient::new(channel)
        .hello(pb::HelloRequest {
            protocol_major: pb::PROTOCOL_MAJOR,
            protocol_minor: pb::PROTOCOL_MINOR,
            client_version: "ssh-test".to_string(),
        })
        .await?;
    Ok(response.into_inner())
}

async fn hello(channel: tonic::transport::Channel) -> pb::HelloResponse {
    try_hello(channel)
        .await
        .expect("Hello through the SSH channel")
}

#[tokio::test]
async fn agent_channel_reaches_the_agent_over_direct_streamlocal() {
    let world = World::new();
    let home = world.path("fleet-home");
    let agent = Agent::start(&home);
    // sshd gives sessions FLEET_HOME, so the pool can ask for it.
    let sshd = world.sshd("sshd", &format!("SetEnv FLEET_HOME={}", home.display()));
    world.trust(&sshd);
    let pool = Pool::new(world.settings(), super::DEFAULT_MAX_HANDSHAKES);

    let explicit = pool
        .agent_channel(&sshd.host(), Some(home.to_str().unwrap()))
        .await
        .expect("agent channel with fleet_home");
    let answer = hello(explicit).await;
    assert_eq!(answer.agent_version, env!("CARGO_PKG_VERSION"));

    // Without fleet_home the host is asked for ${FLEET_HOME:-$HOME/.fleet}.
    let asked = pool
        .agent_channel(&sshd.host(), None)
        .await
        .expect("agent channel with the host's FLEET_HOME");
    hello(asked.clone()).await;

    // The agent dies and starts again: the same tonic channel reconnects over a new
    // SSH channel.
    agent.kill();
    let agent = Agent::start(&home);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Err(status) = try_hello(asked.clone()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Hello after the agent restarted: {status}"
        );
        tokio::time::sleep(POLL).await;
    }

    // No agent there: the error names the socket and says what to do.
    let error = pool
        .agent_channel(&sshd.host(), Some(world.path("nowhere").to_str().unwrap()))
        .await
        .expect_err("no agent in that home");
    let message = error.to_string();
    assert!(matches!(error, SshError::Channel { .. }), "{message}");
    assert!(message.contains("nowhere/agent.sock"), "{message}");
    assert!(
        message.contains("hint: is fleet-agent running there?"),
        "{message}"
    );
    assert!(pool.take_warnings().is_empty());
    // The agent waits for its clients before it exits on SIGTERM: end the SSH
    // connection (and with it the forwarded socket) first.
    pool.close().await;
    drop(agent);
}

#[tokio::test]
async fn unknown_host_key_is_refused_with_its_fingerprint_and_learned_when_asked() {
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    let expected = fingerprint_of(&sshd.host_public_path());

    let strict = Pool::new(world.settings(), 4);
    let error = strict
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("unknown key refused");
    let message = error.to_string();
    assert!(
        matches!(error, SshError::UnknownHostKey { .. }),
        "{message}"
    );
    assert!(message.contains(&expected), "{message} lacks {expected}");
    assert!(message.contains("--accept-new-host-keys"), "{message}");
    assert!(!world.known_hosts().exists(), "strict mode learned a key");

    let accepting = Pool::new(
        SshSettings {
            accept_new_host_keys: true,
            ..world.settings()
        },
        4,
    );
    let output = accepting
        .exec(&sshd.host(), "echo hi", Duration::from_secs(10))
        .await
        .expect("accept-new connects");
    assert_eq!(output.stdout, b"hi\n");
    let learned = std::fs::read_to_string(world.known_hosts()).unwrap();
    assert_eq!(
        learned,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_public)
    );

    // Now known: strict checking connects, and OpenSSH agrees with the learned line.
    let again = Pool::new(world.settings(), 4);
    again
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("learned key accepted");
    run(Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.1]:{}", sshd.port))
        .arg("-f")
        .arg(world.known_hosts()));

    // The same through ssh_options, as a PM2 config writes it.
    let world2 = World::new();
    let sshd2 = world2.sshd("sshd", "");
    let options = Pool::new(
        SshSettings {
            ssh_options: vec!["StrictHostKeyChecking=accept-new".to_string()],
            ..world2.settings()
        },
        4,
    );
    options
        .exec(&sshd2.host(), "true", Duration::from_secs(10))
        .await
        .expect("StrictHostKeyChecking=accept-new learns");
    assert!(
        std::fs::read_to_string(world2.known_hosts())
            .unwrap()
            .contains(&sshd2.host_public)
    );
}

#[tokio::test]
async fn changed_host_key_is_refused_even_with_accept_new() {
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    let impostor = keygen(&world.path("other_host_key"), "ed25519", "");
    let impostor = impostor.split_whitespace().take(2).collect::<Vec<_>>();
    append(&world.known_hosts(), "# a comment line");
    append(
        &world.known_hosts(),
        &format!(
            "[127.0.0.1]:{}\t{}  {}",
            sshd.port, impostor[0], impostor[1]
        ),
    );
    let accepting = Pool::new(
        SshSettings {
            accept_new_host_keys: true,
            ..world.settings()
        },
        4,
    );
    let error = accepting
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("changed key refused");
    let message = error.to_string();
    assert!(
        matches!(&error, SshError::ChangedHostKey { line: 2, .. }),
        "{message}"
    );
    assert!(
        message.contains(&fingerprint_of(&sshd.host_public_path())),
        "{message}"
    );
    assert!(message.contains("known_hosts:2"), "{message}");
    let before = std::fs::read_to_string(world.known_hosts()).unwrap();
    assert!(
        !before.contains(&sshd.host_public),
        "the new key was learned"
    );

    // A known key of another algorithm is a change too, not a new key to learn.
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    let rsa = keygen(&world.path("rsa_host_key"), "rsa", "");
    let rsa = rsa.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    append(
        &world.known_hosts(),
        &format!("[127.0.0.1]:{} {rsa}", sshd.port),
    );
    let error = Pool::new(
        SshSettings {
            accept_new_host_keys: true,
            ..world.settings()
        },
        4,
    )
    .exec(&sshd.host(), "true", Duration::from_secs(10))
    .await
    .expect_err("other algorithm refused");
    assert!(matches!(error, SshError::ChangedHostKey { .. }), "{error}");

    // Hashed entries (ssh-keygen -H) and wildcard patterns are understood.
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    world.trust(&sshd);
    run(Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(world.known_hosts()));
    assert!(
        std::fs::read_to_string(world.known_hosts())
            .unwrap()
            .starts_with("|1|")
    );
    Pool::new(world.settings(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("hashed entry accepted");
    std::fs::write(
        world.known_hosts(),
        format!("[127.0.0.?]:{},!nothing {}\n", sshd.port, sshd.host_public),
    )
    .unwrap();
    Pool::new(world.settings(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("pattern entry accepted");

    // @revoked wins over everything.
    append(
        &world.known_hosts(),
        &format!("@revoked * {}", sshd.host_public),
    );
    let error = Pool::new(world.settings(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("revoked key refused");
    assert!(matches!(error, SshError::RevokedHostKey { .. }), "{error}");

    // StrictHostKeyChecking=no (only when written) connects, with a warning.
    let lax = Pool::new(
        SshSettings {
            ssh_options: vec!["StrictHostKeyChecking no".to_string()],
            known_hosts: Some(world.path("other_known_hosts")),
            ..world.settings()
        },
        4,
    );
    append(
        &world.path("other_known_hosts"),
        &format!("[127.0.0.1]:{} {}", sshd.port, impostor.join(" ")),
    );
    lax.exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("StrictHostKeyChecking=no connects");
    let warnings = lax.take_warnings();
    assert!(
        warnings.iter().any(|w| w.contains("changed")),
        "{warnings:?}"
    );
}

/// Whether a process with exactly this argv is alive on this machine.
fn process_running(argv: &[&str]) -> bool {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .any(|cmdline| cmdline == wanted)
}

#[tokio::test]
async fn exec_returns_output_and_status_and_a_timeout_kills_the_command() {
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    world.trust(&sshd);
    let pool = Pool::new(world.settings(), 4);

    let output = pool
        .exec(
            &sshd.host(),
            r#"printf '%s\n' "it's quoted"; echo oops >&2; exit 7"#,
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "it's quoted\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "oops\n");
    assert_eq!(output.exit_status, Some(7));
    assert!(!output.success());

    // A command that outlives its timeout: the caller hears Timeout, and the remote
    // `timeout` wrapper kills it (closing the channel alone would orphan it).
    let sleeper = ["sleep", "100.4242"];
    let started = Instant::now();
    let host = sshd.host();
    let exec = pool.exec(&host, "sleep 100.4242", Duration::from_secs(2));
    let watch = async {
        wait_for("the remote sleep to start", || process_running(&sleeper)).await;
        std::future::pending::<()>().await
    };
    let error = tokio::select! {
        result = exec => result.expect_err("timed out"),
        () = watch => unreachable!(),
    };
    assert!(
        matches!(
            error,
            SshError::Timeout {
                step: "command",
                ..
            }
        ),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    wait_for("the remote sleep to be killed", || {
        !process_running(&sleeper)
    })
    .await;

    // The connection is still good after a timeout.
    let output = pool
        .exec(&sshd.host(), "echo still here", Duration::from_secs(10))
        .await
        .expect("exec after a timeout");
    assert_eq!(output.stdout, b"still here\n");
}

#[tokio::test]
async fn proxy_jump_goes_through_a_second_sshd() {
    let world = World::new();
    let target = world.sshd("target", "");
    let bastion = world.sshd("bastion", "");
    world.trust(&target);
    world.trust(&bastion);
    let user = options::local_user();
    let jumping = Pool::new(
        SshSettings {
            proxy_jump: Some(format!("{user}@127.0.0.1:{}", bastion.port)),
            ..world.settings()
        },
        4,
    );
    let output = jumping
        .exec(&target.host(), "echo through", Duration::from_secs(10))
        .await
        .expect("exec through the jump host");
    assert_eq!(output.stdout, b"through\n");
    let forwarded = format!("target 127.0.0.1 port {}", target.port);
    assert!(
        bastion.log().contains(&forwarded),
        "the bastion did not forward to the target:\n{}",
        bastion.log()
    );

    // The same route from ~/.ssh/config: an alias, HostName, Port and ProxyJump.
    std::fs::write(
        world.path("ssh_config"),
        format!(
            "Host web1\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump jumpbox\n\n\
             Host jumpbox\n  HostName 127.0.0.1\n  Port {}\n",
            target.port, bastion.port
        ),
    )
    .unwrap();
    let pool = Pool::new(world.settings(), 4);
    let output = pool
        .exec("web1", "echo alias", Duration::from_secs(10))
        .await
        .expect("exec through the configured jump host");
    assert_eq!(output.stdout, b"alias\n");
    assert!(pool.take_warnings().is_empty());

    // A jump host that cannot reach the target says so.
    let closed = free_port();
    let error = jumping
        .exec(
            &format!("127.0.0.1:{closed}"),
            "true",
            Duration::from_secs(10),
        )
        .await
        .expect_err("nothing listens there");
    let message = error.to_string();
    assert!(matches!(error, SshError::Connect { .. }), "{message}");
    assert!(message.contains("cannot reach"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_parallel_calls_share_one_connection_within_max_sessions() {
    let world = World::new();
    let home = world.path("fleet-home");
    let _agent = Agent::start(&home);
    // More listening addresses make distinct hosts for the handshake cap below.
    let sshd = world.sshd(
        "sshd",
        "ListenAddress 127.0.0.1\nListenAddress 127.0.0.2\nListenAddress 127.0.0.3\n\
         ListenAddress 127.0.0.4\nListenAddress 127.0.0.5\nListenAddress 127.0.0.6",
    );
    world.trust(&sshd);
    let pool = std::sync::Arc::new(Pool::new(world.settings(), super::DEFAULT_MAX_HANDSHAKES));
    let home_text = home.to_str().unwrap().to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let exec_pool = pool.clone();
        let host = sshd.host();
        tasks.spawn(async move {
            let output = exec_pool
                .exec(
                    &host,
                    &format!("sleep 0.2; echo {i}"),
                    Duration::from_secs(20),
                )
                .await?;
            assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{i}\n"));
            Ok::<_, SshError>(())
        });
        let agent_pool = pool.clone();
        let host = sshd.host();
        let home = home_text.clone();
        tasks.spawn(async move {
            let channel = agent_pool.agent_channel(&host, Some(&home)).await?;
            hello(channel).await;
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task").expect("every call succeeds");
    }
    assert_eq!(pool.peak_handshakes(), 1, "one connection for one host");
    pool.close().await;

    // Six distinct hosts, at most two handshakes at a time.
    let pool = std::sync::Arc::new(Pool::new(
        SshSettings {
            accept_new_host_keys: true,
            known_hosts: Some(world.path("known_hosts_6")),
            ..world.settings()
        },
        2,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 1..=6 {
        let pool = pool.clone();
        let host = format!("127.0.0.{n}:{}", sshd.port);
        tasks.spawn(async move { pool.exec(&host, "true", Duration::from_secs(20)).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task").expect("every host answers");
    }
    assert!(pool.peak_handshakes() <= 2, "{}", pool.peak_handshakes());
    assert!(pool.peak_handshakes() >= 1);
}

/// A real ssh-agent on a socket in `dir`, killed on drop.
struct SshAgent {
    child: Child,
    socket: PathBuf,
}

impl SshAgent {
    fn start(dir: &Path) -> SshAgent {
        let socket = dir.join("ssh-agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        wait_until("ssh-agent's socket", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        SshAgent { child, socket }
    }

    fn add(&self, key: &Path) {
        run(Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket));
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set by `agent_identities_are_tried_first` for its child process.
const CHILD_HOST: &str = "FLEET_SSH_TEST_HOST";
const CHILD_DIR: &str = "FLEET_SSH_TEST_DIR";

#[tokio::test]
async fn agent_identities_are_tried_first() {
    let world = World::new();
    // An RSA key, held by ssh-agent; the stage names an encrypted copy of it.
    let rsa = world.path("id_rsa");
    let rsa_public = keygen(&rsa, "rsa", "");
    let sshd = Sshd::start(&world.path("sshd"), &rsa_public, "");
    world.trust(&sshd);
    let agent = SshAgent::start(world.dir.path());
    agent.add(&rsa);
    std::fs::copy(&rsa, world.path("id_rsa_locked")).unwrap();
    run(Command::new("ssh-keygen")
        .args(["-q", "-p", "-N", "a passphrase", "-P", "", "-f"])
        .arg(world.path("id_rsa_locked")));

    // The pool reads SSH_AUTH_SOCK, which a test cannot set for itself without
    // `unsafe`; a child process of this test binary runs the pool instead.
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ssh::tests::agent_identities_child",
            "--ignored",
            "--nocapture",
        ])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .env(CHILD_HOST, sshd.host())
        .env(CHILD_DIR, world.dir.path())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && printed.contains("1 passed"),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // rsa-sha2 through the agent: OpenSSH 8.8+ refuses SHA-1 signatures.
    assert!(
        sshd.log().contains("Accepted publickey for"),
        "{}",
        sshd.log()
    );
}

#[tokio::test]
#[ignore = "run by agent_identities_are_tried_first with SSH_AUTH_SOCK set"]
async fn agent_identities_child() {
    let Ok(host) = std::env::var(CHILD_HOST) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    let pool = Pool::new(
        SshSettings {
            key: Some(dir.join("id_rsa_locked")),
            known_hosts: Some(dir.join("known_hosts")),
            ssh_config: Some(dir.join("ssh_config")),
            ..SshSettings::default()
        },
        4,
    );
    let output = pool
        .exec(&host, "echo agent", Duration::from_secs(10))
        .await
        .expect("the agent's key opens the door");
    assert_eq!(output.stdout, b"agent\n");
}

#[tokio::test]
async fn rsa_key_files_sign_with_sha2() {
    let world = World::new();
    let rsa = world.path("id_rsa");
    let rsa_public = keygen(&rsa, "rsa", "");
    let sshd = Sshd::start(&world.path("sshd"), &rsa_public, "");
    world.trust(&sshd);
    let pool = Pool::new(
        SshSettings {
            key: Some(rsa),
            ..world.settings()
        },
        4,
    );
    let output = pool
        .exec(&sshd.host(), "echo rsa", Duration::from_secs(10))
        .await
        .expect("rsa key accepted");
    assert_eq!(output.stdout, b"rsa\n");
}

#[tokio::test]
async fn authentication_failure_lists_what_was_tried_without_secrets() {
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    world.trust(&sshd);
    let stranger = world.path("stranger");
    keygen(&stranger, "ed25519", "");
    let locked = world.path("locked");
    keygen(&locked, "ed25519", "a passphrase");
    let pool = Pool::new(
        SshSettings {
            key: Some(stranger.clone()),
            ssh_options: vec![
                format!("IdentityFile {}", locked.display()),
                "ForwardAgent yes".to_string(),
            ],
            ..world.settings()
        },
        4,
    );
    let warnings = pool.take_warnings();
    assert_eq!(
        warnings,
        vec!["ignored ssh option `ForwardAgent`: fleet's ssh client does not support it"]
    );
    let error = pool
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("no authorized key");
    let message = error.to_string();
    assert!(matches!(error, SshError::Auth { .. }), "{message}");
    assert!(message.contains(stranger.to_str().unwrap()), "{message}");
    assert!(message.contains("locked (encrypted, skipped"), "{message}");
    let secret = std::fs::read_to_string(&stranger).unwrap();
    let body = secret.lines().nth(1).unwrap();
    assert!(!message.contains(body), "key material in the message");
}

#[test]
fn destinations_parse_like_ssh() {
    let parse = |s| Destination::parse(s).unwrap();
    assert_eq!(
        parse("deploy@web1:2222"),
        Destination {
            user: Some("deploy".into()),
            host: "web1".into(),
            port: Some(2222)
        }
    );
    assert_eq!(parse("ssh://web1").host, "web1");
    assert_eq!(parse("[::1]:22").host, "::1");
    assert_eq!(parse("fe80::1").port, None);
    assert!(Destination::parse("-oProxyCommand=x").is_err());
    assert!(Destination::parse("web1:0").is_err());
    assert!(Destination::parse("@web1").is_err());
}

#[test]
fn ssh_config_first_value_wins_with_patterns_includes_and_match() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/10-web.conf"),
        "Host web*\n  User included\n",
    )
    .unwrap();
    let config = format!(
        "# global options come first\nConnectTimeout=7\n\
         Host web? !web9\n  HostName %h.example.com\n  Port 2200\n  IdentityFile ~/.ssh/web_key\n\
         Include {}/conf.d/*.conf\n\
         Host *\n  User everyone\n  Port 22\n  IdentityFile \"/keys/with space\"\n\
         \tStrictHostKeyChecking accept-new # trailing comment\n\
         Match exec \"true\"\n  User never\n",
        dir.path().display()
    );
    let mut warnings = Vec::new();
    let config = SshConfig::parse(&config, &mut warnings);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Match exec"), "{warnings:?}");
    let settings = SshSettings::default();
    let resolve = |host: &str| {
        options::resolve(host, Role::Target, &settings, &Default::default(), &config).unwrap()
    };
    let web1 = resolve("web1");
    assert_eq!(web1.hostname, "web1.example.com");
    assert_eq!(web1.port, 2200);
    assert_eq!(web1.user, "included");
    assert_eq!(web1.connect_timeout, Duration::from_secs(7));
    assert_eq!(web1.strict, StrictHostKeyChecking::AcceptNew);
    let home = std::env::home_dir().unwrap();
    assert_eq!(
        web1.identity_files,
        vec![home.join(".ssh/web_key"), PathBuf::from("/keys/with space")]
    );
    let web9 = resolve("web9");
    assert_eq!(web9.hostname, "web9");
    assert_eq!((web9.port, web9.user.as_str()), (22, "included"));
    let db = resolve("deploy@db:2022");
    assert_eq!((db.user.as_str(), db.port), ("deploy", 2022));
}

#[test]
fn explicit_settings_beat_ssh_options_which_beat_the_config() {
    let mut warnings = Vec::new();
    let config = SshConfig::parse(
        "Host *\n User fromconfig\n Port 2000\n ProxyJump cfgjump\n StrictHostKeyChecking no\n",
        &mut warnings,
    );
    let options_layer = options::parse_ssh_options(
        &["Port=3000".to_string(), "User optuser".to_string()],
        &mut warnings,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let settings = SshSettings {
        user: Some("stageuser".into()),
        accept_new_host_keys: true,
        ..SshSettings::default()
    };
    let host = options::resolve("web", Role::Target, &settings, &options_layer, &config).unwrap();
    assert_eq!((host.user.as_str(), host.port), ("stageuser", 3000));
    assert_eq!(host.jumps, vec!["cfgjump".to_string()]);
    // The user wrote `no`: --accept-new-host-keys does not make it stricter or laxer.
    assert_eq!(host.strict, StrictHostKeyChecking::No);
    // A jump host takes neither the stage's user nor its -o Port.
    let jump = options::resolve(
        "cfgjump",
        Role::Jump { jumps: None },
        &settings,
        &options_layer,
        &config,
    )
    .unwrap();
    assert_eq!((jump.user.as_str(), jump.port), ("fromconfig", 2000));
    // The config's ProxyJump applies to a first hop too (here: itself, which the
    // pool skips).
    assert_eq!(jump.jumps, vec!["cfgjump".to_string()]);
    assert!(jump.identity_files.is_empty());

    // A per-host key replaces the stage's key for that host only.
    let settings = SshSettings {
        key: Some("/keys/stage".into()),
        host_keys: [("web2".to_string(), PathBuf::from("/keys/web2"))].into(),
        ..SshSettings::default()
    };
    let key_of = |host| {
        options::resolve(host, Role::Target, &settings, &options_layer, &config)
            .unwrap()
            .identity_files
    };
    assert_eq!(key_of("web2"), vec![PathBuf::from("/keys/web2")]);
    assert_eq!(key_of("web3"), vec![PathBuf::from("/keys/stage")]);
}

#[test]
fn remote_commands_are_quoted_for_sh() {
    assert_eq!(super::quote("it's"), r"'it'\''s'");
    assert_eq!(
        super::remote_command("echo 'a b'", Duration::from_millis(1500)),
        r"exec timeout -k 5 3 sh -c 'echo '\''a b'\'''"
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(super::remote_command(
            r#"printf '%s|' "$0" 'x'\''y' "a  b""#,
            Duration::from_secs(5),
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "sh|x'y|a  b|");
}

#[test]
fn wildcards_match_like_ssh() {
    use options::{pattern_list_matches, wildcard_match};
    assert!(wildcard_match("*.example.com", "a.b.example.com"));
    assert!(wildcard_match("web?", "web1"));
    assert!(!wildcard_match("web?", "web10"));
    assert!(wildcard_match("*", ""));
    assert!(pattern_list_matches(
        "[10.0.0.1]:2222",
        "[10.0.0.*]:2222,other"
    ));
    assert!(!pattern_list_matches(
        "bad.example.com",
        "*.example.com,!bad.*"
    ));
}
