//! `fleet deploy` end to end: a git repository made by the test, test-bed hosts (network
//! namespaces with their own sshd, private /srv, agents installed by `setup`), the
//! real CLI over SSH. Clients load every host through deploys and reverts; hooks fail
//! on one host; a host is cut off mid-deploy; a second deploy meets the lock; `setup`
//! joins agents to a real controller, whose audit log records every deploy.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::http::{Load, get};
use crate::testbed::{HOST_FLEET_HOME, TestBed};

pub(crate) const APP_PORT: u16 = 8080;
const APP_PATH: &str = "/srv/app";
/// A hook that waits (at most 60 s) until the test creates /srv/go on the host.
const WAIT_FOR_GO: &str =
    "i=0; while [ ! -e /srv/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done";
/// Polls for what follows a deploy; covers the 8 s lock TTL after a partition.
pub(crate) const SETTLE: Duration = Duration::from_secs(40);

/// A bed, and a work dir holding a git repository whose fleet.toml has the app and a
/// stage `bed` naming every host.
pub(crate) struct DeployBed {
    pub bed: TestBed,
    pub fleet: Fleet,
}

impl DeployBed {
    pub(crate) fn up(test: &str, hosts: usize, stage_extra: &str) -> Option<DeployBed> {
        if !TestBed::available_or_skip(test) {
            return None;
        }
        // No agent: `fleet deploy bed setup` installs and starts it.
        let bed = TestBed::up(hosts, None);
        let fleet = Fleet::new();
        let deploy = DeployBed { bed, fleet };
        deploy.git(&["init", "-q", "-b", "main"]);
        deploy.write_config("c0", stage_extra);
        Some(deploy)
    }

    fn write_config(&self, version: &str, stage_extra: &str) {
        let addresses: Vec<String> = self
            .bed
            .hosts
            .iter()
            .map(|h| format!("\"{}\"", h.address))
            .collect();
        self.fleet.file(
            "fleet.toml",
            &format!(
                r#"[apps.web]
script = "{testapp}"
exec_mode = "cluster"
port = {APP_PORT}
instances = 2
kill_timeout = 3000
env = {{ VERSION = "{version}" }}

[deploy.bed]
host = [{hosts}]
user = "root"
key = "{key}"
ssh_options = ["UserKnownHostsFile={known}", "ConnectTimeout=3", "ServerAliveInterval=1", "ServerAliveCountMax=2"]
fleet_home = "{HOST_FLEET_HOME}"
path = "{APP_PATH}"
ref = "main"
batch = "100%"
lock_ttl = "8s"
{stage_extra}
"#,
                testapp = self.fleet.testapp().display(),
                hosts = addresses.join(", "),
                key = self.bed.client_key().display(),
                known = self.bed.known_hosts().display(),
            ),
        );
    }

    fn git(&self, args: &[&str]) {
        git(self.fleet.work.path(), args);
    }

    /// Commits a new version of the app (its VERSION is what it answers with).
    pub(crate) fn commit(&self, version: &str, stage_extra: &str) {
        self.write_config(version, stage_extra);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", version]);
    }

    /// `fleet deploy bed <args> --json`: exit code, the summary, stderr.
    fn deploy(&self, args: &[&str]) -> (Option<i32>, Value, String) {
        let mut all = vec!["deploy", "bed"];
        all.extend_from_slice(args);
        all.push("--json");
        let output = self.fleet.run(&all);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (output.status.code(), json, stderr)
    }

    fn deploy_ok(&self, args: &[&str]) -> Value {
        let (code, json, stderr) = self.deploy(args);
        assert_eq!(code, Some(0), "deploy {args:?}: {json:#}\n{stderr}");
        json
    }

    /// Starts `fleet deploy bed --json` and returns once it holds every host's lock.
    fn deploy_in_background(&self) -> std::process::Child {
        let child = self
            .fleet
            .command(&["deploy", "bed", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fleet deploy");
        wait_until("every host locked", SETTLE, || {
            self.names().iter().all(|h| self.locked(h))
        });
        child
    }

    pub(crate) fn sh(&self, host: &str, command: &str) -> (bool, String) {
        let output = self.bed.exec(host, &["sh", "-c", command]);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        )
    }

    fn current(&self, host: &str) -> String {
        let (_, target) = self.sh(host, &format!("readlink {APP_PATH}/current || true"));
        target.trim_start_matches("releases/").to_string()
    }

    fn releases(&self, host: &str) -> Vec<String> {
        let (_, list) = self.sh(host, &format!("ls {APP_PATH}/releases 2>/dev/null || true"));
        list.lines().map(str::to_string).collect()
    }

    fn locked(&self, host: &str) -> bool {
        self.sh(host, &format!("test -e {APP_PATH}/.fleet/lock")).0
    }

    fn answer(&self, host: &str) -> String {
        get(self.bed.address(host), APP_PORT, "/").unwrap_or_else(|e| format!("error: {e}"))
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.bed.hosts.iter().map(|h| h.name.clone()).collect()
    }

    fn on_all(&self, command: &str) {
        for host in self.names() {
            let (ok, _) = self.sh(&host, command);
            assert!(ok, "{command} on {host}");
        }
    }

    fn agent_pid(&self, host: &str) -> String {
        self.sh(host, &format!("cat {HOST_FLEET_HOME}/agent.pid")).1
    }
}

fn host_result<'a>(summary: &'a Value, address: &str) -> &'a Value {
    summary["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["host"] == address))
        .unwrap_or_else(|| panic!("no result for {address} in {summary:#}"))
}

#[test]
fn deploy_and_revert_reach_five_hosts_without_a_failed_request() {
    let extra = "keep_releases = 2\nshared_dirs = [\"logs\"]\npost_deploy = \"echo built $FLEET_RELEASE > logs/last\"";
    let Some(d) = DeployBed::up(
        "deploy_and_revert_reach_five_hosts_without_a_failed_request",
        5,
        extra,
    ) else {
        return;
    };
    let hosts = d.names();
    setup_twice_changes_nothing(&d, &hosts);
    let (r1, r2) = deploy_and_revert_under_load(&d, &hosts, extra);
    let r4 = prune_keeps_current_and_previous(&d, &hosts, extra, &r1, &r2);
    list_exec_and_unlock_reach_every_host(&d, &hosts, &r4);
}

fn setup_twice_changes_nothing(d: &DeployBed, hosts: &[String]) {
    // setup twice: the second run changes nothing (same agent, binary not re-sent).
    d.deploy_ok(&["setup"]);
    let pids: Vec<String> = hosts.iter().map(|h| d.agent_pid(h)).collect();
    let stamp = |h: &str| {
        d.sh(
            h,
            &format!("stat -c %Y.%i {HOST_FLEET_HOME}/bin/fleet-agent"),
        )
        .1
    };
    let stamps: Vec<String> = hosts.iter().map(|h| stamp(h)).collect();
    assert!(pids.iter().all(|p| !p.is_empty()), "agents: {pids:?}");
    d.deploy_ok(&["setup"]);
    assert_eq!(
        hosts.iter().map(|h| d.agent_pid(h)).collect::<Vec<_>>(),
        pids
    );
    assert_eq!(hosts.iter().map(|h| stamp(h)).collect::<Vec<_>>(), stamps);

    // Another agent binary (trailing bytes: the same program, another sha256): setup
    // installs it and updates each running agent in place, apps and pid kept.
    let newer = d.fleet.home.path().join("fleet-agent-newer"); // not in the deployed repo
    let mut bytes = std::fs::read(d.fleet.testapp().with_file_name("fleet-agent")).unwrap();
    bytes.extend_from_slice(b"\0another build");
    std::fs::write(&newer, bytes).unwrap();
    std::fs::set_permissions(&newer, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = d.fleet.command(&["deploy", "bed", "setup", "--json"]);
    command.env("FLEET_AGENT_BINARY", &newer);
    let output = d.fleet.run_with(command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        hosts.iter().map(|h| d.agent_pid(h)).collect::<Vec<_>>(),
        pids
    );
    for host in hosts {
        let exe = d.sh(
            host,
            &format!("readlink /proc/$(cat {HOST_FLEET_HOME}/agent.pid)/exe"),
        );
        assert!(exe.1.ends_with("/bin/fleet-agent"), "{host} runs {exe:?}");
    }
}

/// Deploys c1, then c2 under load on every host, then reverts to c1: no request
/// fails. Returns the two release ids.
fn deploy_and_revert_under_load(d: &DeployBed, hosts: &[String], extra: &str) -> (String, String) {
    // The first release.
    d.commit("c1", extra);
    let r1 = d.deploy_ok(&[])["release"].as_str().unwrap().to_string();
    for host in hosts {
        assert_eq!(d.current(host), r1, "{host}");
        assert!(
            d.answer(host).contains("version=c1"),
            "{host}: {}",
            d.answer(host)
        );
    }

    // Under load on every host: deploy c2, then revert to c1.
    let loads: Vec<Load> = hosts
        .iter()
        .map(|h| Load::start(d.bed.address(h), APP_PORT, 2))
        .collect();
    d.commit("c2", extra);
    let summary = d.deploy_ok(&[]);
    let r2 = summary["release"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    let commit = summary["commit"].as_str().unwrap();
    for host in hosts {
        assert_eq!(d.current(host), r2, "{host}: one release id everywhere");
        assert!(
            d.answer(host).contains("version=c2"),
            "{host}: {}",
            d.answer(host)
        );
        let (_, revision) = d.sh(host, &format!("cat {APP_PATH}/current/REVISION"));
        assert_eq!(revision, commit);
        let (_, built) = d.sh(host, &format!("cat {APP_PATH}/shared/logs/last"));
        assert_eq!(built, format!("built {r2}"), "{host}: shared dir linked");
    }
    d.deploy_ok(&["revert"]);
    for host in hosts {
        assert_eq!(d.current(host), r1, "{host}");
        assert!(
            d.answer(host).contains("version=c1"),
            "{host}: {}",
            d.answer(host)
        );
    }
    for (host, load) in hosts.iter().zip(loads) {
        let (ok, failed, errors) = load.finish();
        assert!(ok > 0, "{host}: no request answered");
        assert_eq!(failed, 0, "{host}: failed requests: {errors:?}");
    }
    let (_, log) = d.sh(&hosts[0], &format!("cat {APP_PATH}/.fleet/releases.log"));
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{log}");
    assert_eq!(records[1]["id"], r2.as_str());
    assert_eq!(records[1]["result"], "ok");
    assert_eq!(records[2]["action"], "revert");

    (r1, r2)
}

/// keep_releases = 2 over two more deploys; returns the last release id.
fn prune_keeps_current_and_previous(
    d: &DeployBed,
    hosts: &[String],
    extra: &str,
    r1: &str,
    r2: &str,
) -> String {
    // keep_releases = 2 prunes old releases, never the current or the previous one:
    // after c3 the previous (r1, current before) stays although r2 is newer.
    d.commit("c3", extra);
    let r3 = d.deploy_ok(&[])["release"].as_str().unwrap().to_string();
    for host in hosts {
        assert_eq!(
            d.releases(host),
            vec![r1.to_string(), r2.to_string(), r3.clone()]
        );
    }
    d.commit("c4", extra);
    let r4 = d.deploy_ok(&[])["release"].as_str().unwrap().to_string();
    for host in hosts {
        assert_eq!(d.releases(host), vec![r3.clone(), r4.clone()], "{host}");
        assert!(!d.locked(host), "{host} still locked");
    }

    r4
}

fn list_exec_and_unlock_reach_every_host(d: &DeployBed, hosts: &[String], r4: &str) {
    // list and curr agree with the hosts.
    let list = d.fleet.ok(&["deploy", "bed", "curr", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert!(list.iter().all(|h| h["current"] == r4), "{list:#?}");

    // exec runs in `current` on every host, its output prefixed with the host.
    let out = d.fleet.ok(&["deploy", "bed", "exec", "cat REVISION"]);
    for host in &d.bed.hosts {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{} | ", host.address)) && l.len() > 40),
            "{out}"
        );
    }
    // unlock says there was nothing to remove.
    let out = d.fleet.ok(&["deploy", "bed", "unlock"]);
    assert_eq!(out.matches("not locked").count(), hosts.len(), "{out}");
}

#[test]
fn the_clone_strategy_keeps_a_mirror_on_each_host() {
    let Some(d) = DeployBed::up("the_clone_strategy_keeps_a_mirror_on_each_host", 2, "") else {
        return;
    };
    // The hosts share the machine's file system, so the repository's local path is a
    // URL they can clone.
    let extra = format!(
        "strategy = \"clone\"\nrepo = \"{}\"",
        d.fleet.work.path().display()
    );
    d.deploy_ok(&["setup"]);
    d.commit("c1", &extra);
    let summary = d.deploy_ok(&[]);
    let r1 = summary["release"].as_str().unwrap().to_string();
    let commit = summary["commit"].as_str().unwrap().to_string();
    for host in d.names() {
        assert_eq!(d.current(&host), r1);
        assert!(
            d.answer(&host).contains("version=c1"),
            "{}",
            d.answer(&host)
        );
        let (ok, mirror) = d.sh(&host, &format!("git -C {APP_PATH}/repo rev-parse main"));
        assert!(ok, "no mirror on {host}");
        assert_eq!(mirror, commit);
    }
    d.commit("c2", &extra);
    let r2 = d.deploy_ok(&[])["release"].as_str().unwrap().to_string();
    for host in d.names() {
        assert_eq!(d.current(&host), r2);
        assert!(
            d.answer(&host).contains("version=c2"),
            "{}",
            d.answer(&host)
        );
    }
}

#[test]
fn failures_roll_back_locks_hold_and_a_lost_host_comes_back_unlocked() {
    let extra = format!(
        "pre_deploy = \"{WAIT_FOR_GO}\"\npost_deploy = \"[ ! -e /srv/fail-post-deploy ]\"\n\n[deploy.strict]\nhost = [\"198.18.0.1\"]\npath = \"/srv/app\"\n"
    );
    let Some(d) = DeployBed::up(
        "failures_roll_back_locks_hold_and_a_lost_host_comes_back_unlocked",
        3,
        &extra,
    ) else {
        return;
    };
    let hosts = d.names();
    d.deploy_ok(&["setup"]);
    d.on_all("touch /srv/go");
    d.commit("c1", &extra);
    let r1 = d.deploy_ok(&[])["release"].as_str().unwrap().to_string();

    post_deploy_failure_rolls_every_host_back(&d, &hosts, &extra, &r1);
    let r4 = a_held_lock_refuses_and_a_lost_host_comes_back(&d, &hosts, &extra, &r1);
    interrupt_puts_every_host_back(&d, &hosts, &extra, &r4);
    unknown_host_keys_are_refused(&d);
}

fn address(d: &DeployBed, host: &str) -> String {
    d.bed.address(host).to_string()
}

/// A post-deploy that fails on h2: h2 goes back, and so do the others (max_fail 0).
fn post_deploy_failure_rolls_every_host_back(
    d: &DeployBed,
    hosts: &[String],
    extra: &str,
    r1: &str,
) {
    d.sh("h2", "touch /srv/fail-post-deploy");
    d.commit("c2", extra);
    let (code, summary, stderr) = d.deploy(&[]);
    assert_eq!(code, Some(1), "{summary:#}\n{stderr}");
    let h2 = host_result(&summary, &address(d, "h2"));
    assert_eq!(h2["result"], "failed", "{summary:#}");
    assert_eq!(h2["step"], "post-deploy", "{summary:#}");
    assert_eq!(h2["release"], r1, "{summary:#}");
    for host in ["h1", "h3"] {
        assert_eq!(
            host_result(&summary, &address(d, host))["result"],
            "rolled_back"
        );
    }
    assert_eq!(summary["rolled_back"], true);
    for host in hosts {
        assert_eq!(d.current(host), r1, "{host}");
        assert!(
            d.answer(host).contains("version=c1"),
            "{host}: {}",
            d.answer(host)
        );
        assert!(!d.locked(host), "{host} still locked");
    }
    d.sh("h2", "rm -f /srv/fail-post-deploy");
}

/// A held lock refuses a second deploy; a host cut off mid-deploy comes back
/// unlocked and clean, and the next deploy works. Returns its release.
fn a_held_lock_refuses_and_a_lost_host_comes_back(
    d: &DeployBed,
    hosts: &[String],
    extra: &str,
    r1: &str,
) -> String {
    // A deploy waiting in pre-deploy holds every host's lock: a second one is refused,
    // naming the first one's owner and pid.
    d.on_all("rm -f /srv/go");
    d.commit("c3", extra);
    let first = d.deploy_in_background();
    let first_pid = first.id();
    let (code, _, stderr) = d.deploy(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("locked by"), "{stderr}");
    assert!(stderr.contains(&format!("(pid {first_pid})")), "{stderr}");

    // h2 is cut off while the first deploy waits in pre-deploy; the others go on.
    d.bed.partition("h2");
    d.sh("h1", "touch /srv/go");
    d.sh("h3", "touch /srv/go");
    let output = wait_output(first, Duration::from_secs(60));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{summary:#}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r3 = summary["release"].as_str().unwrap().to_string();
    let h2 = host_result(&summary, &address(d, "h2"));
    assert_eq!(h2["result"], "failed", "{summary:#}");
    assert!(h2["error"].as_str().is_some_and(|e| !e.is_empty()));
    for host in ["h1", "h3"] {
        assert_eq!(
            host_result(&summary, &address(d, host))["result"],
            "rolled_back"
        );
        assert_eq!(d.current(host), r1, "{host}");
        assert!(d.answer(host).contains("version=c1"), "{host}");
    }
    // Cut off, h2 still serves its release; once back, its lock is gone (the host
    // released it when the deployer stopped renewing) and the unfinished release too.
    assert_eq!(d.current("h2"), r1);
    d.bed.heal("h2");
    wait_until("h2 unlocked", SETTLE, || !d.locked("h2"));
    wait_until("h2's unfinished release removed", SETTLE, || {
        !d.releases("h2").contains(&r3)
    });
    assert!(d.answer("h2").contains("version=c1"), "{}", d.answer("h2"));

    // Everything works again.
    d.sh("h2", "touch /srv/go");
    let r4 = d.deploy_ok(&[])["release"].as_str().unwrap().to_string();
    for host in hosts {
        assert_eq!(d.current(host), r4, "{host}");
        assert!(d.answer(host).contains("version=c3"), "{host}");
    }

    r4
}

fn interrupt_puts_every_host_back(d: &DeployBed, hosts: &[String], extra: &str, r4: &str) {
    // Ctrl-C while hosts wait in pre-deploy: the steps in progress end, no host
    // switches, every host is unlocked and keeps serving r4; exit 1.
    d.on_all("rm -f /srv/go");
    d.commit("c4", extra);
    let interrupted = d.deploy_in_background();
    kill(interrupted.id() as i32, nix::sys::signal::Signal::SIGINT);
    d.on_all("touch /srv/go");
    let output = wait_output(interrupted, Duration::from_secs(60));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert_eq!(output.status.code(), Some(1), "{summary:#}");
    let r5 = summary["release"].as_str().unwrap().to_string();
    for host in hosts {
        let result = host_result(&summary, &address(d, host));
        assert_eq!(result["result"], "failed", "{summary:#}");
        assert!(
            result["error"]
                .as_str()
                .unwrap_or("")
                .contains("interrupted"),
            "{summary:#}"
        );
        assert_eq!(d.current(host), r4, "{host}");
        assert!(!d.locked(host), "{host} still locked");
        assert!(!d.releases(host).contains(&r5), "{host} kept {r5}");
        assert!(d.answer(host).contains("version=c3"), "{host}");
    }
}

fn unknown_host_keys_are_refused(d: &DeployBed) {
    // A host whose key is not in known_hosts is refused, with its fingerprint.
    let empty = d.fleet.file("empty_known_hosts", "");
    d.fleet.file(
        "fleet.toml",
        &std::fs::read_to_string(d.fleet.path("fleet.toml"))
            .unwrap()
            .replace(
                "host = [\"198.18.0.1\"]",
                &format!(
                    "host = [\"{}\"]\nuser = \"root\"\nkey = \"{}\"\nssh_options = [\"UserKnownHostsFile={}\", \"GlobalKnownHostsFile=/dev/null\"]",
                    address(d, "h1"),
                    d.bed.client_key().display(),
                    empty.display()
                ),
            ),
    );
    let stderr = d.fleet.fails(&["deploy", "strict", "list"], 1);
    assert!(stderr.contains("unknown host key"), "{stderr}");
    assert!(stderr.contains("SHA256:"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");
}

#[test]
fn a_ref_with_shell_metacharacters_is_rejected_before_any_connection() {
    let fleet = Fleet::new();
    // A host that records any connection attempt.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stage = |git_ref: &str| {
        format!(
            "[deploy.prod]\nhost = [\"127.0.0.1\"]\nport = {port}\nuser = \"root\"\npath = \"/srv/app\"\nref = {git_ref:?}\n"
        )
    };
    fleet.file("fleet.toml", &stage("main"));
    for bad in [
        "main; touch /tmp/pwned",
        "$(id)",
        "`id`",
        "main && id",
        "a|b",
    ] {
        let stderr = fleet.fails(&["deploy", "prod", "--ref", bad], 2);
        assert!(stderr.contains("not a valid git ref"), "{bad}: {stderr}");
    }
    fleet.file("fleet.toml", &stage("main;reboot"));
    let stderr = fleet.fails(&["deploy", "prod"], 2);
    assert!(stderr.contains("not a valid git ref"), "{stderr}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "fleet connected to the host"
    );
    assert!(!Path::new("/tmp/pwned").exists());
}

#[test]
fn setup_joins_agents_to_the_controller_and_deploys_land_in_its_audit_log() {
    let Some(d) = DeployBed::up(
        "setup_joins_agents_to_the_controller_and_deploys_land_in_its_audit_log",
        2,
        "",
    ) else {
        return;
    };
    let controller = crate::controller::Controller::start(&d.bed);
    let via = ThroughController {
        d: &d,
        env: controller.env(),
    };
    let addresses: Vec<String> = d.bed.hosts.iter().map(|h| h.address.clone()).collect();
    let hosts = d.names();
    setup_joins_each_agent(&d, &via, &controller.url, &hosts);
    a_second_setup_joins_nothing_again(&d, &via, &hosts);
    let release = a_deploy_shows_in_the_controllers_status(&d, &via, &hosts, &addresses);
    the_audit_log_has_the_setups_and_the_deploy(&controller, &addresses, &release);
}

/// `fleet` commands run with the controller's environment.
pub(crate) struct ThroughController<'a> {
    pub d: &'a DeployBed,
    pub env: Vec<(&'static str, String)>,
}

impl ThroughController<'_> {
    /// Any `fleet` command through the controller: exit code, stdout as JSON, stderr.
    pub(crate) fn run(&self, args: &[&str]) -> (Option<i32>, Value, String) {
        let mut command = self.d.fleet.command(args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let output = self.d.fleet.run_with(command);
        let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (
            output.status.code(),
            json,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub(crate) fn deploy_ok(&self, args: &[&str]) -> Value {
        let mut all = vec!["deploy", "bed"];
        all.extend_from_slice(args);
        all.push("--json");
        let (code, summary, stderr) = self.run(&all);
        assert_eq!(code, Some(0), "deploy {args:?}: {summary:#}\n{stderr}");
        assert!(
            !stderr.contains("did not record"),
            "deploy {args:?} was not audited: {stderr}"
        );
        summary
    }
}

pub(crate) fn setup_joins_each_agent(
    d: &DeployBed,
    via: &ThroughController<'_>,
    url: &str,
    hosts: &[String],
) {
    // setup installs each agent, joins it as the host is named in the stage (its
    // address) and starts it; the agents dial the controller on their own.
    via.deploy_ok(&["setup"]);
    for host in hosts {
        let (_, joined_url) = d.sh(host, &format!("cat {HOST_FLEET_HOME}/controller/url"));
        assert_eq!(url, joined_url, "{host} joined another controller");
        let (_, name) = d.sh(host, &format!("cat {HOST_FLEET_HOME}/controller/host"));
        assert_eq!(
            name,
            d.bed.address(host),
            "{host} joined under another name"
        );
    }
    // With no app yet, a connected host contributes no line; one that never connected
    // is listed as unreachable and makes the exit code 1.
    wait_until("both agents connected to the controller", SETTLE, || {
        let (code, status, _) = via.run(&["status", "bed", "--json"]);
        code == Some(0)
            && status.as_array().is_some_and(|s| {
                s.iter()
                    .all(|v| v.get("reachable") != Some(&Value::Bool(false)))
            })
    });
}

fn a_second_setup_joins_nothing_again(
    d: &DeployBed,
    via: &ThroughController<'_>,
    hosts: &[String],
) {
    // A second setup finds the agents joined to this controller: no new join (the
    // controller settings are not rewritten, no join token is asked for), same agents.
    let joined = |host: &str| {
        let output = d.bed.exec(
            host,
            &[
                "stat",
                "-c",
                "%y %i",
                &format!("{HOST_FLEET_HOME}/controller/url"),
            ],
        );
        assert!(output.status.success(), "stat on {host}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let stamps: Vec<String> = hosts.iter().map(|h| joined(h)).collect();
    let pids: Vec<String> = hosts.iter().map(|h| d.agent_pid(h)).collect();
    via.deploy_ok(&["setup"]);
    assert_eq!(hosts.iter().map(|h| joined(h)).collect::<Vec<_>>(), stamps);
    assert_eq!(
        hosts.iter().map(|h| d.agent_pid(h)).collect::<Vec<_>>(),
        pids
    );
}

/// A deploy through SSH, recorded by the controller; returns its release.
pub(crate) fn a_deploy_shows_in_the_controllers_status(
    d: &DeployBed,
    via: &ThroughController<'_>,
    hosts: &[String],
    addresses: &[String],
) -> String {
    // A deploy through SSH, recorded by the controller, whose status shows the app.
    d.commit("c1", "");
    let release = via.deploy_ok(&[])["release"].as_str().unwrap().to_string();
    wait_until(
        "the app on both hosts through the controller",
        SETTLE,
        || {
            let (code, status, _) = via.run(&["status", "bed", "--json"]);
            let status = status.as_array().cloned().unwrap_or_default();
            code == Some(0)
                && addresses.iter().all(|address| {
                    status
                        .iter()
                        .filter(|v| v["host"] == address.as_str() && v["name"] == "web")
                        .filter(|v| v["status"] == "online")
                        .count()
                        == 2
                })
        },
    );
    for host in hosts {
        assert!(
            d.answer(host).contains("version=c1"),
            "{host}: {}",
            d.answer(host)
        );
    }

    release
}

fn the_audit_log_has_the_setups_and_the_deploy(
    controller: &crate::controller::Controller,
    addresses: &[String],
    release: &str,
) {
    // The audit log, read while the controller runs.
    let audit = controller.audit();
    let with_action =
        |action: &str| -> Vec<&Value> { audit.iter().filter(|e| e["action"] == action).collect() };
    let setups = with_action("deploy setup");
    assert_eq!(setups.len(), 2, "{audit:#?}");
    let updates = with_action("deploy update");
    assert_eq!(updates.len(), 1, "{audit:#?}");
    let mut update_targets = vec![Value::from(format!("release={release}"))];
    update_targets.extend(addresses.iter().map(|a| Value::from(a.as_str())));
    for (entry, targets) in [
        (setups[0], Value::from(addresses.to_vec())),
        (updates[0], Value::from(update_targets)),
    ] {
        assert_eq!(entry["stage"], "bed", "{entry:#}");
        assert_eq!(entry["result"], "ok", "{entry:#}");
        assert_eq!(entry["targets"], targets, "{entry:#}");
        assert!(
            entry["who"]
                .as_str()
                .is_some_and(|w| w.starts_with("token:")),
            "{entry:#}"
        );
    }
    // One join token per host, asked for by the first setup only.
    let mut join_tokens: Vec<&str> = with_action("join-token")
        .iter()
        .filter_map(|e| e["targets"][0].as_str())
        .collect();
    join_tokens.sort_unstable();
    let mut expected: Vec<&str> = addresses.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(join_tokens, expected, "{audit:#?}");
}
