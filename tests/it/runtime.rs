//! `fleet-runtime` as a container's PID 1, in a new PID namespace (`unshare --pid
//! --fork --mount-proc`): it reaps the grandchildren apps abandon, stops every app on
//! SIGTERM within its kill_timeout and exits 0, exits 1 once a crash loop leaves every
//! app errored, prints whole prefixed lines, and serves `fleet list` meanwhile.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const SETTLE: Duration = Duration::from_secs(20);

fn runtime_binary() -> std::path::PathBuf {
    crate::testbed::agent_binary().with_file_name("fleet-runtime")
}

fn available(test: &str) -> bool {
    let ok = nix::unistd::Uid::effective().is_root()
        && Command::new("unshare").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("FLEET_REQUIRE_TESTBED").is_none(),
            "{test}: needs root and unshare"
        );
        eprintln!("skipping {test}: needs root and unshare");
    }
    ok
}

/// `fleet-runtime <config>` as PID 1 of a new PID namespace; returns the `unshare`
/// child and the runtime's pid as seen from here.
fn start(fleet: &Fleet, config: &str) -> (Child, i32) {
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(runtime_binary())
        .arg(config)
        .arg("--home")
        .arg(fleet.home.path())
        .current_dir(fleet.work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let unshare = child.id();
    let mut runtime = 0;
    wait_until("the runtime started", SETTLE, || {
        runtime = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        runtime != 0
    });
    // Its socket first: a `fleet` command before it would start an agent of its own on
    // this home (as it does for any home without one), and the runtime would lose it.
    let socket = fleet.home.path().join("agent.sock");
    wait_until("the runtime's socket", SETTLE, || {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket())
    });
    (child, runtime)
}

/// Zombies whose parent is `pid`.
fn zombies_of(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str()) {
            found.push(entry.file_name().to_string_lossy().parse().unwrap_or(0));
        }
    }
    found
}

#[test]
fn as_pid_1_it_reaps_orphans_prints_prefixed_lines_and_stops_on_sigterm() {
    if !available("as_pid_1_it_reaps_orphans_prints_prefixed_lines_and_stops_on_sigterm") {
        return;
    }
    let fleet = Fleet::new();
    // Each start abandons a grandchild that exits shortly after: an orphan for PID 1.
    fleet.script(
        "abandon.sh",
        "#!/bin/sh\n(sleep 0.2 &)\n(sleep 0.3 &)\necho \"started $$\"\necho 'to stderr' >&2\ntrap 'echo bye; exit 0' INT TERM\nsleep 1000 & wait\n",
    );
    fleet.file(
        "fleet.toml",
        "[apps.worker]\nscript = \"./abandon.sh\"\ninstances = 2\nkill_timeout = 2000\n",
    );
    let (child, runtime) = start(&fleet, "fleet.toml");
    // Its socket serves the CLI meanwhile.
    fleet.wait_list("two online", SETTLE, |l| {
        l.len() == 2 && all_status(l, "online")
    });
    // The grandchildren exit after 0.3 s: none stays a zombie under PID 1.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        std::thread::sleep(POLL_INTERVAL);
    }
    wait_until("the orphans reaped", SETTLE, || {
        zombies_of(runtime).is_empty()
    });

    let stopped_at = Instant::now();
    kill(runtime, nix::sys::signal::Signal::SIGTERM);
    let output = wait_output(child, SETTLE);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stopped_at.elapsed() < Duration::from_millis(2000 + 1000));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for instance in ["worker:0 | started ", "worker:1 | started "] {
        assert!(stdout.contains(instance), "{stdout}");
    }
    assert!(
        stdout.contains("worker:0 | bye"),
        "stopped gracefully: {stdout}"
    );
    assert!(stderr.contains("worker:0 | to stderr"), "{stderr}");
    assert!(
        stdout.lines().all(|l| l.starts_with("worker:")),
        "whole, prefixed lines only: {stdout}"
    );
}

#[test]
fn a_crash_loop_leaving_every_app_errored_exits_1() {
    if !available("a_crash_loop_leaving_every_app_errored_exits_1") {
        return;
    }
    let fleet = Fleet::new();
    fleet.file(
        "fleet.toml",
        "[apps.crash]\nscript = \"echo failing; exit 3\"\nmax_restarts = 2\nmin_uptime = \"1s\"\n",
    );
    let (child, _) = start(&fleet, "fleet.toml");
    let output = wait_output(child, SETTLE);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("every app has ended; exiting 1"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("crash:0 | failing"));
}
