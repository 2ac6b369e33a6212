//! The multi-host test bed (`deploy/testbed/testbed`) as a handle for tests: hosts as
//! network namespaces, each with its own address, OpenSSH sshd, private `/srv` and
//! agent. The script owns namespaces, links and processes; this module calls it and
//! tears the bed down on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::wait_until;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/testbed/testbed");
/// `up` waits up to 60 s for every host (the script's `READY_TIMEOUT`); the margin covers
/// key generation and namespace setup on a loaded 2-core runner.
const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Any other script command or remote command; `down` kills for at most 20 s.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for a partition, heal or host loss to show on the network. All
/// three take effect at once; the margin is for a loaded runner.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);
/// One TCP connection attempt to a host's sshd.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The agent's home inside every host, as the script sets it up.
pub const HOST_FLEET_HOME: &str = "/srv/fleet/home";
/// Set in CI so a machine without the bed's tools fails instead of skipping.
const REQUIRE_ENV: &str = "FLEET_REQUIRE_TESTBED";

pub struct TestBed {
    /// The bed number: bridge `fltb<id>`, hosts at 198.18.<id>.1..N.
    pub id: u8,
    /// The state dir: keys, configs, pids and logs; removed by `down`.
    pub dir: PathBuf,
    pub hosts: Vec<BedHost>,
}

pub struct BedHost {
    /// `h1`, `h2`, ...
    pub name: String,
    /// `198.18.<id>.<i>`
    pub address: String,
}

impl TestBed {
    /// Whether this machine can run a bed: root, iproute2, util-linux and OpenSSH.
    pub fn available() -> bool {
        nix::unistd::geteuid().is_root()
            && Path::new("/usr/sbin/sshd").is_file()
            && [
                "ip",
                "unshare",
                "nsenter",
                "setsid",
                "ssh",
                "ssh-keygen",
                "pgrep",
            ]
            .iter()
            .all(|tool| on_path(tool))
    }

    /// Returns false, after saying why, when the test should be skipped; panics instead
    /// when `FLEET_REQUIRE_TESTBED` is set.
    pub fn available_or_skip(test: &str) -> bool {
        if Self::available() {
            return true;
        }
        let why = "the test bed needs root, iproute2, util-linux and openssh-server";
        assert!(std::env::var_os(REQUIRE_ENV).is_none(), "{test}: {why}");
        eprintln!("skipping {test}: {why}");
        false
    }

    /// Starts `n` hosts, each with `agent` running if given. The script claims a free
    /// bed number itself (by creating its bridge), so parallel tests never collide.
    pub fn up(n: usize, agent: Option<&Path>) -> TestBed {
        let dir = tempfile::Builder::new()
            .prefix("fleet-testbed-")
            .tempdir()
            .expect("create the state dir")
            .keep();
        let mut command = script(&dir);
        command.arg("up").arg(n.to_string());
        if let Some(agent) = agent {
            command.arg("--agent").arg(agent);
        }
        let output = match run(command, UP_TIMEOUT) {
            Ok(output) => output,
            Err(output) => {
                // `up` was cut short, so it could not clean up after itself.
                let _ = run(with_args(script(&dir), &["down"]), COMMAND_TIMEOUT);
                panic!(
                    "testbed up timed out after {UP_TIMEOUT:?}\n{}",
                    text(&output)
                );
            }
        };
        assert!(
            output.status.success(),
            "testbed up {n} failed:\n{}",
            text(&output)
        );
        let id = std::fs::read_to_string(dir.join("id"))
            .expect("the bed's id file")
            .trim()
            .parse()
            .expect("a bed id from 0 to 255");
        let hosts = std::fs::read_to_string(dir.join("hosts"))
            .expect("the bed's hosts file")
            .lines()
            .map(|line| {
                let mut fields = line.split_whitespace();
                BedHost {
                    name: fields.next().expect("host name").to_string(),
                    address: fields.next().expect("host address").to_string(),
                }
            })
            .collect();
        TestBed { id, dir, hosts }
    }

    /// Cuts the host's link to the bridge: it keeps running but nobody reaches it.
    pub fn partition(&self, host: &str) {
        self.ok(&["partition", host]);
    }

    /// Restores the host's link; returns once the bridge forwards to it again.
    pub fn heal(&self, host: &str) {
        self.ok(&["heal", host]);
    }

    /// SIGKILLs every process of the host (a host loss); its `/srv` is lost with them.
    pub fn kill(&self, host: &str) {
        self.ok(&["kill", host]);
    }

    /// Starts a killed host's sshd (and agent) again on a fresh `/srv`.
    pub fn revive(&self, host: &str) {
        self.ok(&["revive", host]);
    }

    /// Runs `command` in the host's network and mount namespaces, with
    /// `FLEET_HOME=/srv/fleet/home`; the caller checks the status.
    pub fn exec(&self, host: &str, command: &[&str]) -> Output {
        let mut args = vec!["exec", host, "--"];
        args.extend_from_slice(command);
        self.run_script(&args)
    }

    /// `exec` with `env` added to the command's environment (`nsenter` passes it on):
    /// for a secret that must not be in an argv.
    pub fn exec_with_env(&self, host: &str, command: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec!["exec", host, "--"];
        args.extend_from_slice(command);
        let mut script = with_args(script(&self.dir), &args);
        script.envs(env.iter().copied());
        run(script, COMMAND_TIMEOUT)
            .unwrap_or_else(|output| panic!("testbed {args:?} hung:\n{}", text(&output)))
    }

    /// Runs a shell command on the host through its sshd and the system OpenSSH client;
    /// the caller checks the status.
    pub fn ssh(&self, host: &str, command: &str) -> Output {
        let mut ssh = Command::new("ssh");
        ssh.arg("-F").arg(self.ssh_config()).arg(host).arg(command);
        run(ssh, COMMAND_TIMEOUT)
            .unwrap_or_else(|output| panic!("ssh {host} {command:?} hung:\n{}", text(&output)))
    }

    pub fn address(&self, host: &str) -> &str {
        &self
            .hosts
            .iter()
            .find(|candidate| candidate.name == host)
            .unwrap_or_else(|| panic!("bed {} has no host {host}", self.id))
            .address
    }

    /// `Host h<i>` entries with user, key and known hosts; for `ssh -F`.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// Every host's key, under its name and its address.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The private key every host's sshd accepts for root.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let output = self.run_script(args);
        assert!(
            output.status.success(),
            "testbed {args:?} failed (bed {}):\n{}",
            self.id,
            text(&output)
        );
        output
    }

    fn run_script(&self, args: &[&str]) -> Output {
        run(with_args(script(&self.dir), args), COMMAND_TIMEOUT).unwrap_or_else(|output| {
            panic!(
                "testbed {args:?} hung for {COMMAND_TIMEOUT:?}:\n{}",
                text(&output)
            )
        })
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // No panic here: a drop during unwinding would abort and hide the real failure.
        match run(with_args(script(&self.dir), &["down"]), COMMAND_TIMEOUT) {
            Ok(output) if output.status.success() => {}
            Ok(output) | Err(output) => {
                eprintln!("testbed down (bed {}) failed:\n{}", self.id, text(&output))
            }
        }
    }
}

/// The script, told which bed to act on; the caller's `TESTBED_*` variables must not
/// redirect a test to someone else's bed.
fn script(dir: &Path) -> Command {
    let mut command = Command::new(SCRIPT);
    command
        .arg("--dir")
        .arg(dir)
        .env_remove("TESTBED_ID")
        .env_remove("TESTBED_DIR");
    command
}

fn with_args(mut command: Command, args: &[&str]) -> Command {
    command.args(args);
    command
}

/// Runs `command` to completion, or kills it after `timeout` and returns what it
/// printed as the error.
fn run(mut command: Command, timeout: Duration) -> Result<Output, Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {command:?}: {error}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Read the output on another thread so a chatty command never blocks on a full pipe.
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match finished.recv_timeout(timeout) {
        Ok(output) => Ok(output.expect("wait for the command")),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            Err(finished
                .recv()
                .expect("the waiting thread")
                .expect("wait for the command"))
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "status: {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

/// The workspace's agent binary (`target/debug/fleet-agent`).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/it-<hash> -> target/debug
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("fleet-agent");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

fn sshd_accepts(address: &str) -> bool {
    let address: SocketAddr = format!("{address}:22").parse().expect("a host address");
    TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).is_ok()
}

fn assert_success(what: &str, output: &Output) -> String {
    assert!(output.status.success(), "{what} failed:\n{}", text(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn testbed_hosts_are_reachable_over_ssh_and_isolated() {
    if !TestBed::available_or_skip("testbed_hosts_are_reachable_over_ssh_and_isolated") {
        return;
    }
    let bed = TestBed::up(3, Some(&agent_binary()));
    assert_eq!(bed.hosts.len(), 3);

    every_host_answers_over_ssh(&bed);
    let probe = format!("/srv/testbed-probe-{}", bed.id);
    srv_is_private_and_hosts_reach_each_other(&bed, &probe);
    a_partition_cuts_a_host_off_until_healed(&bed);
    a_killed_host_revives_fresh(&bed, &probe);
    teardown_leaves_nothing(bed);
}

fn every_host_answers_over_ssh(bed: &TestBed) {
    // Every host answers on its own address, through its own sshd, with its agent up.
    for host in &bed.hosts {
        let addresses = assert_success(
            &format!("ssh {} ip addr", host.name),
            &bed.ssh(&host.name, "ip -4 -o addr show dev eth0"),
        );
        assert!(
            addresses.contains(&format!("inet {}/24", host.address)),
            "{} should have {}: {addresses}",
            host.name,
            host.address
        );
        assert_success(
            &format!("agent socket on {}", host.name),
            &bed.ssh(&host.name, &format!("test -S {HOST_FLEET_HOME}/agent.sock")),
        );
    }

    // The key and known_hosts also work without the generated config, by address: how
    // a controller that builds its own ssh command line sees the bed.
    let h1 = bed.address("h1").to_string();
    let mut ssh = Command::new("ssh");
    ssh.arg("-i")
        .arg(bed.client_key())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            bed.known_hosts().display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-F",
            "/dev/null",
        ])
        .arg(format!("root@{h1}"))
        .arg("true");
    let output = run(ssh, COMMAND_TIMEOUT).expect("ssh by address hung");
    assert_success("ssh by address with client_key and known_hosts", &output);
}

fn srv_is_private_and_hosts_reach_each_other(bed: &TestBed, probe: &str) {
    // /srv is private to each host, shared by its sshd sessions and `exec`, and
    // invisible from the machine itself.
    assert_success(
        "write the probe on h1",
        &bed.ssh("h1", &format!("echo h1 > {probe}")),
    );
    assert_eq!(
        assert_success("exec cat on h1", &bed.exec("h1", &["cat", probe])),
        "h1\n"
    );
    assert_success(
        "h2 must not see h1's /srv",
        &bed.ssh("h2", &format!("test ! -e {probe}")),
    );
    assert!(!Path::new(probe).exists(), "{probe} leaked to the machine");

    // Hosts reach each other over the bridge.
    let h2 = bed.address("h2").to_string();
    let h1_to_h2 = format!("exec 3<>/dev/tcp/{h2}/22");
    assert_success(
        "h1 connects to h2",
        &bed.exec("h1", &["timeout", "2", "bash", "-c", &h1_to_h2]),
    );
}

fn a_partition_cuts_a_host_off_until_healed(bed: &TestBed) {
    let h2 = bed.address("h2").to_string();
    let h1_to_h2 = format!("exec 3<>/dev/tcp/{h2}/22");
    // A partition: h2 keeps running but neither the machine nor h1 reaches it.
    bed.partition("h2");
    wait_until("h2 unreachable", NETWORK_TIMEOUT, || !sshd_accepts(&h2));
    assert!(
        !bed.exec("h1", &["timeout", "2", "bash", "-c", &h1_to_h2])
            .status
            .success(),
        "h1 still reaches the partitioned h2"
    );
    assert_success(
        "h2's agent survives the partition",
        &bed.exec(
            "h2",
            &["test", "-S", &format!("{HOST_FLEET_HOME}/agent.sock")],
        ),
    );
    bed.heal("h2");
    wait_until("h2 reachable again", NETWORK_TIMEOUT, || sshd_accepts(&h2));
    assert_success("ssh h2 after heal", &bed.ssh("h2", "true"));
}

fn a_killed_host_revives_fresh(bed: &TestBed, probe: &str) {
    // A host loss: everything on h3 dies, /srv with it; revive brings back a fresh host.
    let h3 = bed.address("h3").to_string();
    assert_success(
        "write the probe on h3",
        &bed.ssh("h3", &format!("echo h3 > {probe}")),
    );
    bed.kill("h3");
    assert!(!sshd_accepts(&h3), "h3's sshd survived kill");
    assert!(
        !bed.exec("h3", &["true"]).status.success(),
        "exec on a killed host should fail"
    );
    bed.revive("h3");
    assert_success(
        "h3's agent after revive",
        &bed.ssh("h3", &format!("test -S {HOST_FLEET_HOME}/agent.sock")),
    );
    assert_success(
        "h3's /srv is fresh after revive",
        &bed.ssh("h3", &format!("test ! -e {probe}")),
    );
}

/// Teardown leaves nothing: no namespace, link, process or state dir.
fn teardown_leaves_nothing(bed: TestBed) {
    let id = bed.id;
    let dir = bed.dir.clone();
    drop(bed);
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.contains(&format!("fltb{id}-")),
        "namespaces of bed {id} remain: {namespaces}"
    );
    let bridge = Command::new("ip")
        .args(["link", "show", &format!("fltb{id}")])
        .stderr(Stdio::null())
        .output()
        .expect("ip link show");
    assert!(!bridge.status.success(), "bridge fltb{id} remains");
    let leftovers = Command::new("pgrep")
        .arg("-af")
        .arg(dir.as_os_str())
        .output()
        .expect("pgrep");
    assert!(
        leftovers.stdout.is_empty(),
        "processes of bed {id} remain:\n{}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
    assert!(!dir.exists(), "{} remains", dir.display());
}
