//! `fleet startup` for real: a minimal Debian booted by systemd in a container
//! (`debootstrap`, cached under `target/systemd-root`; `systemd-nspawn -b`), commands run
//! inside with `nsenter`. Apps started and saved, the unit installed, the container
//! powered off and booted again: the agent comes back under its unit with what was saved,
//! and only that. Then the agent is SIGKILLed: systemd starts it again and it adopts
//! the apps from the unit's file descriptor store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{POLL_INTERVAL, wait_output};

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

fn target_dir() -> PathBuf {
    crate::testbed::agent_binary()
        .parent()
        .and_then(Path::parent)
        .expect("target/")
        .to_path_buf()
}

/// Whether this machine can boot a container: root, debootstrap, systemd-nspawn.
fn available(test: &str) -> bool {
    let has = |program: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {program}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = nix::unistd::Uid::effective().is_root() && has("debootstrap") && has("systemd-nspawn");
    if !ok {
        assert!(
            std::env::var_os("FLEET_REQUIRE_TESTBED").is_none(),
            "{test}: needs root, debootstrap and systemd-nspawn\nhint: apt-get install debootstrap systemd-container"
        );
        eprintln!("skipping {test}: needs root, debootstrap and systemd-nspawn");
    }
    ok
}

/// The cached Debian root (`debootstrap` once; later runs reuse it).
fn cached_root() -> PathBuf {
    let dir = target_dir().join("systemd-root");
    let root = dir.join("rootfs");
    let done = dir.join("complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&dir).unwrap();
        let output = Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus",
                "bookworm",
            ])
            .arg(&root)
            .arg("http://deb.debian.org/debian")
            .stdin(Stdio::null())
            .output()
            .expect("debootstrap");
        assert!(
            output.status.success(),
            "debootstrap failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(&done, "").unwrap();
    }
    root
}

/// A booted container; powered off (or killed) when dropped.
struct Machine {
    root: PathBuf,
    nspawn: Child,
    init: i32,
}

impl Machine {
    fn boot(root: &Path) -> Machine {
        // target/debug, with fleet and fleet-agent, read-only inside as /opt/fleet.
        let agent = crate::testbed::agent_binary();
        let bin = agent.parent().expect("the binaries' directory");
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(root)
            .args(["-b", "--register=no", "--keep-unit", "--quiet"])
            .arg(format!("--bind-ro={}:/opt/fleet", bin.display()))
            .arg(format!("--machine=fleet-it-{}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn");
        // nspawn's first child may be its transient outer child: the container's init
        // is the child whose command is systemd.
        let started = Instant::now();
        let init = loop {
            let children = std::fs::read_to_string(format!(
                "/proc/{}/task/{}/children",
                nspawn.id(),
                nspawn.id()
            ))
            .unwrap_or_default();
            let systemd = children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .find(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                });
            if let Some(pid) = systemd {
                break pid;
            }
            assert!(
                started.elapsed() < BOOT_TIMEOUT,
                "systemd-nspawn started no systemd"
            );
            std::thread::sleep(POLL_INTERVAL);
        };
        let machine = Machine {
            root: root.to_path_buf(),
            nspawn,
            init,
        };
        let mut state = String::new();
        while started.elapsed() < BOOT_TIMEOUT {
            state = machine
                .sh("systemctl is-system-running || true")
                .trim()
                .to_string();
            if state == "running" {
                return machine;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let failed = machine.sh("systemctl --failed --no-pager || true");
        panic!("the container is {state:?}, not running:\n{failed}");
    }

    fn run(&self, command: &str) -> Output {
        let child = Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a"])
            .args([
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin:/opt/fleet",
                "HOME=/root",
            ])
            .args(["sh", "-c", command])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter");
        wait_output(child, Duration::from_secs(60))
    }

    fn sh(&self, command: &str) -> String {
        String::from_utf8_lossy(&self.run(command).stdout).into_owned()
    }

    fn ok(&self, command: &str) -> String {
        let output = self.run(command);
        assert!(
            output.status.success(),
            "{command}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `systemctl poweroff`, then waits for the container to end.
    fn power_off(mut self) -> PathBuf {
        let _ = self.run("systemctl poweroff");
        let until = Instant::now() + BOOT_TIMEOUT;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return self.root.clone();
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        panic!("the container did not power off");
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Ok(None) = self.nspawn.try_wait() {
            // SIGKILL to the container's init ends its whole PID namespace.
            crate::harness::kill(self.init, nix::sys::signal::Signal::SIGKILL);
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

fn names_online(machine: &Machine) -> Vec<String> {
    let list: Value = serde_json::from_str(&machine.ok("fleet list --json")).unwrap_or(Value::Null);
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"] == "online")
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn startup_brings_the_saved_apps_back_after_a_reboot() {
    let test = "startup_brings_the_saved_apps_back_after_a_reboot";
    if !available(test) {
        return;
    }
    let cached = cached_root();
    let copy = tempfile::Builder::new()
        .prefix("fleet-systemd-")
        .tempdir()
        .unwrap();
    let root = copy.path().join("root");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&cached)
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a of the cached root");

    let machine = Machine::boot(&root);
    machine.ok("fleet start 'sleep 1000' --name kept && fleet save");
    machine.ok("fleet start 'sleep 1001' --name unsaved");
    let installed = machine.ok("fleet startup");
    assert!(
        installed.contains("wrote /etc/systemd/system/fleet-agent.service"),
        "{installed}"
    );
    assert_eq!(
        machine
            .sh("systemctl is-enabled fleet-agent.service")
            .trim(),
        "enabled"
    );
    let root = machine.power_off();

    let machine = Machine::boot(&root);
    assert_eq!(
        machine.sh("systemctl is-active fleet-agent.service").trim(),
        "active"
    );
    let until = Instant::now() + Duration::from_secs(20);
    let mut names = Vec::new();
    while Instant::now() < until {
        names = names_online(&machine);
        if !names.is_empty() {
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    assert_eq!(names, ["kept"], "what `fleet save` saved, and only that");
    // The agent is the unit's main process, and the app runs in the unit's cgroup.
    let main_pid = machine.ok("systemctl show -p MainPID --value fleet-agent.service");
    let agent_pid = machine.ok("cat /root/.fleet/agent.pid");
    assert_eq!(main_pid.trim(), agent_pid.trim());

    a_killed_agent_adopts_its_apps(&machine, main_pid.trim());
    let _ = machine.power_off();
}

/// Each app's name and pid, from `fleet list --json`.
fn pids(machine: &Machine) -> Vec<(String, i64)> {
    let list: Value = serde_json::from_str(&machine.ok("fleet list --json")).unwrap_or(Value::Null);
    let mut pids: Vec<(String, i64)> = (list.as_array().into_iter().flatten())
        .filter(|p| p["status"] == "online")
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["pid"].as_i64()?)))
        .collect();
    pids.sort();
    pids
}

fn poll<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < until, "{what} within {within:?}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The counter's numbers in its log, checked to be whole and each once, in order.
fn counted(machine: &Machine) -> (u64, u64) {
    let text = machine.ok("cat /root/.fleet/logs/counter-out.log");
    let numbers: Vec<u64> = text.lines().map(|l| l.trim().parse().expect(l)).collect();
    let first = *numbers.first().expect("counted lines");
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, first + i as u64, "line {i} of the counter's log");
    }
    (first, *numbers.last().unwrap())
}

/// The agent SIGKILLed under its unit: systemd starts it again with the store it
/// kept (pipes, sockets, the table), and the apps run on with the same pids, their
/// output captured with no line lost; an adopted app that then dies is restarted by
/// its policy, its exit code unknown.
fn a_killed_agent_adopts_its_apps(machine: &Machine, agent: &str) {
    machine.ok(
        "printf '#!/bin/sh\\ni=0\\nwhile :; do i=$((i+1)); echo $i; sleep 0.01; done\\n' > /root/count.sh \
         && chmod +x /root/count.sh && fleet start /root/count.sh --name counter",
    );
    let before = poll("both apps online", Duration::from_secs(20), || {
        Some(pids(machine)).filter(|p| p.len() == 2)
    });
    // Two pipes for each app and the document: the store is up to date.
    poll("the store filled", Duration::from_secs(10), || {
        let n = machine.sh("systemctl show -p NFileDescriptorStore --value fleet-agent.service");
        (n.trim().parse::<u32>().unwrap_or(0) >= 5).then_some(())
    });
    machine.ok(&format!("kill -KILL {agent}"));
    let adopted = poll("a new agent", Duration::from_secs(30), || {
        let pid = machine.sh("systemctl show -p MainPID --value fleet-agent.service");
        let pid = pid.trim().to_string();
        let active = machine.sh("systemctl is-active fleet-agent.service");
        (pid != agent && pid != "0" && active.trim() == "active").then_some(pid)
    });
    assert_eq!(pids(machine), before, "the same processes, adopted");
    let said = machine.ok("cat /root/.fleet/agent.log");
    assert!(
        said.contains("adopted 2 instances from systemd's file descriptor store"),
        "{said}"
    );
    // What the counter wrote while no agent read is in its log, once and in order.
    let (_, at_adoption) = counted(machine);
    poll("more counted lines", Duration::from_secs(10), || {
        (counted(machine).1 > at_adoption + 50).then_some(())
    });

    let kept = before.iter().find(|(name, _)| name == "kept").unwrap().1;
    machine.ok(&format!("kill -KILL {kept}"));
    poll("kept restarted", Duration::from_secs(20), || {
        pids(machine)
            .iter()
            .any(|(name, pid)| name == "kept" && *pid != kept)
            .then_some(())
    });
    let described: Value =
        serde_json::from_str(&machine.ok("fleet describe kept --json")).unwrap_or(Value::Null);
    let described = described
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or(described);
    assert_eq!(described["last_exit"]["unknown"], true, "{described}");
    assert_eq!(described["restarts"], 1, "{described}");
    let same = machine.sh("systemctl show -p MainPID --value fleet-agent.service");
    assert_eq!(
        same.trim(),
        adopted,
        "the agent itself did not restart again"
    );

    // `fleet update` hands the store over with the table: what the new image stores
    // next names the same objects, and an agent killed then still adopts everything.
    let stored = || {
        let n = machine.sh("systemctl show -p NFileDescriptorStore --value fleet-agent.service");
        n.trim().parse::<u32>().unwrap_or(0)
    };
    let held = stored();
    machine.ok("fleet update");
    machine.ok("fleet start 'sleep 1002' --name third");
    poll(
        "the third app's pipes stored",
        Duration::from_secs(10),
        || (stored() >= held + 2).then_some(()),
    );
    let before = pids(machine);
    assert_eq!(before.len(), 3, "{before:?}");
    machine.ok(&format!("kill -KILL {adopted}"));
    poll("a third agent", Duration::from_secs(30), || {
        let pid = machine.sh("systemctl show -p MainPID --value fleet-agent.service");
        let active = machine.sh("systemctl is-active fleet-agent.service");
        (pid.trim() != adopted && pid.trim() != "0" && active.trim() == "active").then_some(())
    });
    assert_eq!(pids(machine), before, "adopted again after an update");
}
