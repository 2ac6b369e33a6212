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

mod auth;
mod host_keys;
mod parsing;
mod properties;
mod transport;

use super::SshSettings;

pub(super) const SSHD: &str = "/usr/sbin/sshd";
/// Every wait in these tests gives up after this long.
pub(super) const DEADLINE: Duration = Duration::from_secs(30);
pub(super) const POLL: Duration = Duration::from_millis(20);

pub(super) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

pub(super) async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

pub(super) fn run(command: &mut Command) -> String {
    let output = command.output().expect("run a helper program");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Makes a key pair with ssh-keygen; returns the public line.
pub(super) fn keygen(path: &Path, kind: &str, passphrase: &str) -> String {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", "fleet-test", "-f"])
        .arg(path));
    std::fs::read_to_string(path.with_extension("pub")).expect("read the public key")
}

/// `SHA256:…` of a public key file, as ssh-keygen prints it.
pub(super) fn fingerprint_of(public: &Path) -> String {
    run(Command::new("ssh-keygen").arg("-lf").arg(public))
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_string()
}

/// A test world: a temp dir with a client key, known_hosts and (empty) ssh config.
pub(super) struct World {
    pub(super) dir: TempDir,
    pub(super) key: PathBuf,
    pub(super) public: String,
}

impl World {
    pub(super) fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("fleet-ssh")
            .tempdir()
            .expect("temp dir");
        let key = dir.path().join("id_ed25519");
        let public = keygen(&key, "ed25519", "");
        World { dir, key, public }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(super) fn known_hosts(&self) -> PathBuf {
        self.path("known_hosts")
    }

    /// Settings that touch nothing of the user's: this world's key, known_hosts and
    /// an ssh config that does not exist.
    pub(super) fn settings(&self) -> SshSettings {
        SshSettings {
            key: Some(self.key.clone()),
            known_hosts: Some(self.known_hosts()),
            ssh_config: Some(self.path("ssh_config")),
            connect_timeout: Duration::from_secs(10),
            ..SshSettings::default()
        }
    }

    pub(super) fn trust(&self, sshd: &Sshd) {
        let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_public);
        append(&self.known_hosts(), &line);
    }

    pub(super) fn sshd(&self, name: &str, extra_config: &str) -> Sshd {
        Sshd::start(&self.path(name), &self.public, extra_config)
    }
}

pub(super) fn append(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    writeln!(file, "{}", line.trim_end()).expect("append");
}

/// A real sshd on 127.0.0.1, killed on drop.
pub(super) struct Sshd {
    pub(super) child: Child,
    pub(super) port: u16,
    pub(super) dir: PathBuf,
    /// `ssh-ed25519 AAAA…` (the only host key).
    pub(super) host_public: String,
}

impl Sshd {
    pub(super) fn start(dir: &Path, authorized: &str, extra_config: &str) -> Sshd {
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
        // A CA placed in the directory beforehand (`host_ca`, and the principals in
        // `host_ca.principals`) signs the host key: the sshd presents a certificate.
        let ca = dir.join("host_ca");
        let certificate = if ca.exists() {
            let principals = std::fs::read_to_string(dir.join("host_ca.principals"))
                .unwrap_or_else(|_| "127.0.0.1".into());
            run(Command::new("ssh-keygen")
                .arg("-q")
                .arg("-s")
                .arg(&ca)
                .args(["-I", "fleet-test-host", "-h", "-n", principals.trim()])
                .arg(host_key.with_extension("pub")));
            format!(
                "HostCertificate {}\n",
                dir.join("host_ed25519-cert.pub").display()
            )
        } else {
            String::new()
        };
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
                 LogLevel DEBUG1\n{certificate}{extra_config}\n",
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

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    pub(super) fn host_public_path(&self) -> PathBuf {
        self.dir.join("host_ed25519.pub")
    }

    pub(super) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// Whether sshd answers on `port` with its version banner.
pub(super) fn banner(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buffer = [0u8; 8];
    stream.read_exact(&mut buffer).is_ok() && buffer.starts_with(b"SSH-2.0")
}

/// A real fleet-agent (`target/debug/fleet-agent --home DIR`), killed on drop.
pub(super) struct Agent {
    pub(super) child: Child,
}

impl Agent {
    pub(super) fn start(home: &Path) -> Agent {
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
    pub(super) fn kill(mut self) {
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

pub(super) async fn try_hello(
    channel: tonic::transport::Channel,
) -> Result<pb::HelloResponse, tonic::Status> {
    let response = AgentServiceClient::new(channel)
        .hello(pb::HelloRequest {
            protocol_major: pb::PROTOCOL_MAJOR,
            protocol_minor: pb::PROTOCOL_MINOR,
            client_version: "ssh-test".to_string(),
        })
        .await?;
    Ok(response.into_inner())
}

pub(super) async fn hello(channel: tonic::transport::Channel) -> pb::HelloResponse {
    try_hello(channel)
        .await
        .expect("Hello through the SSH channel")
}
