//! The agent as a systemd service: the unit `fleet startup` writes passes
//! `systemd-analyze verify` (system and user units) with the settings it needs; the
//! agent speaks sd_notify (READY=1 once it serves, WATCHDOG=1, STOPPING=1); and the
//! first start after a reboot with `--resurrect` brings back what `fleet save` saved.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::testbed::agent_binary;

const SETTLE: Duration = Duration::from_secs(15);

fn printed_unit(fleet: &Fleet, args: &[&str]) -> (String, String) {
    let out = fleet.ok(args);
    let (first, text) = out.split_once('\n').expect("a path line, then the unit");
    let path = first.strip_prefix("# ").expect("# <path>").to_string();
    (path, text.to_string())
}

/// `systemd-analyze verify` of `text` saved as `name`: no error and no warning.
fn verify(fleet: &Fleet, name: &str, text: &str, user: bool) {
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("FLEET_REQUIRE_TESTBED").is_none(),
            "systemd-analyze is missing\nhint: apt-get install systemd"
        );
        eprintln!("skipping the unit check: no systemd-analyze");
        return;
    };
    assert!(found.status.success());
    let dir = fleet.path("units");
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = fleet.path("xdg-runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let mut command = Command::new("systemd-analyze");
    if user {
        command.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    let output = command.arg("verify").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{text}\n{stderr}"
    );
}

#[test]
fn startup_units_verify_and_carry_what_the_agent_needs() {
    let fleet = Fleet::new();
    let home = fleet.home.path().display().to_string();
    let agent = agent_binary().canonicalize().unwrap().display().to_string();
    let (path, system) = printed_unit(&fleet, &["startup", "--print"]);
    assert!(
        path.starts_with("/etc/systemd/system/fleet-agent"),
        "{path}"
    );
    for line in [
        "Type=notify".to_string(),
        "KillMode=process".to_string(),
        "WantedBy=multi-user.target".to_string(),
        format!("Environment=\"FLEET_HOME={home}\" \"FLEET_FDSTORE=16384\""),
        "FileDescriptorStoreMax=16384".to_string(),
        "Restart=always".to_string(),
        format!("ExecStart=\"{agent}\" --home \"{home}\" --daemon --resurrect"),
    ] {
        assert!(
            system.lines().any(|l| l == line),
            "{line} missing:\n{system}"
        );
    }
    verify(&fleet, "fleet-agent.service", &system, false);

    let (path, user) = printed_unit(&fleet, &["startup", "--user", "--print"]);
    assert!(path.ends_with("systemd/user/fleet-agent.service"), "{path}");
    assert!(
        user.contains("WantedBy=default.target") && !user.contains("User="),
        "{user}"
    );
    verify(&fleet, "fleet-agent.service", &user, true);

    // Another init system: not supported, exit 2, the unit printed to adapt.
    let output = fleet.run(&["startup", "upstart"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("Type=notify"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not supported"));
}

/// Receives sd_notify datagrams until one equals `want`.
fn receive(socket: &UnixDatagram, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        assert!(started.elapsed() < timeout, "no {want} within {timeout:?}");
        if let Ok(n) = socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == want)
        {
            return started.elapsed();
        }
    }
}

#[test]
fn the_agent_says_ready_pings_its_watchdog_and_says_stopping() {
    let fleet = Fleet::new();
    let socket_path = fleet.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut agent = Command::new(agent_binary())
        .args(["--daemon", "--home"])
        .arg(fleet.home.path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    receive(&socket, "READY=1", SETTLE);
    // Serving by then: a command answers without starting another agent.
    fleet.ok(&["ping"]);
    receive(&socket, "WATCHDOG=1", Duration::from_secs(2));
    kill(agent.id() as i32, nix::sys::signal::Signal::SIGTERM);
    receive(&socket, "STOPPING=1", SETTLE);
    let _ = agent.wait();
}

#[test]
fn the_first_start_after_a_reboot_resurrects_what_was_saved() {
    let fleet = Fleet::new();
    fleet.ok(&["start", "sleep 1000", "--name", "kept"]);
    fleet.ok(&["save"]);
    fleet.ok(&["start", "sleep 1001", "--name", "unsaved"]);
    fleet.wait_list("two online", SETTLE, |l| {
        l.len() == 2 && all_status(l, "online")
    });
    let pid = fleet.agent_pid().unwrap();
    // The agent stops; state.json still names both apps.
    kill(pid, nix::sys::signal::Signal::SIGTERM);
    wait_until("the agent gone", SETTLE, || dead(pid));
    // As if the machine rebooted: another boot id than the one the agent recorded.
    std::fs::write(fleet.home.path().join("boot_id"), "a-previous-boot").unwrap();
    let mut agent = Command::new(agent_binary())
        .args(["--daemon", "--resurrect", "--home"])
        .arg(fleet.home.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // `fleet list` would start an agent of its own (without --resurrect) if it ran
    // before this one serves.
    let socket = fleet.home.path().join("agent.sock");
    wait_until("the agent to serve", SETTLE, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let list = fleet.wait_list("the saved app back", SETTLE, |l| {
        l.len() == 1 && all_status(l, "online")
    });
    assert_eq!(list[0]["name"], "kept");
    fleet.ok(&["kill"]);
    let _ = agent.wait();
}
