//! The restart policy and stops with real processes: stop_exit_codes, autorestart,
//! kill_timeout escalation over the whole process group, crash loops, backoff,
//! reset and signals (PM2 acceptance cases 17, 19, 22-24, 26, 37; PM2 #6084).

use std::time::{Duration, Instant};

use crate::harness::*;

const SETTLE: Duration = Duration::from_secs(10);

#[test]
fn stop_exit_codes_and_no_autorestart_leave_the_app_stopped() {
    let fleet = Fleet::new();
    let runs = fleet.path("runs.txt");
    fleet.script(
        "exit.sh",
        &format!(
            "#!/bin/sh\necho run >> {}\nsleep 0.2\nexit \"$1\"\n",
            runs.display()
        ),
    );
    fleet.file(
        "fleet.toml",
        r#"
[apps.expected]
script = "exit.sh"
args = ["42"]
stop_exit_codes = [42]

[apps.unexpected]
script = "exit.sh"
args = ["3"]
stop_exit_codes = [42]
min_uptime = 100
"#,
    );
    fleet.ok(&["start", "fleet.toml"]);
    let list = fleet.wait_list("expected stopped, unexpected restarted", SETTLE, |l| {
        status_of(l, "expected") == ["stopped"]
            && by_name(l, "unexpected")[0]["restarts"]
                .as_i64()
                .unwrap_or(0)
                >= 2
    });
    assert_eq!(by_name(&list, "expected")[0]["restarts"], 0);
    let described = fleet.describe("expected");
    assert_eq!(described[0]["last_exit"]["code"], 42);

    let fleet = Fleet::new();
    fleet.script("crash.sh", "#!/bin/sh\nsleep 0.2\nexit 1\n");
    fleet.ok(&["start", "crash.sh", "--no-autorestart"]);
    let list = fleet.wait_list("crash.sh stopped", SETTLE, |l| {
        status_of(l, "crash") == ["stopped"]
    });
    assert_eq!(list[0]["restarts"], 0);
    assert_eq!(fleet.describe("crash")[0]["last_exit"]["code"], 1);
}

#[test]
fn an_app_ignoring_sigint_is_stopping_until_kill_timeout_and_its_grandchildren_die_too() {
    let fleet = Fleet::new();
    let grandchild = fleet.path("grandchild.pid");
    // Ignored signals stay ignored across fork and exec, so the grandchild ignores
    // SIGINT as well: only the SIGKILL of the whole group can end it.
    fleet.script(
        "stubborn.sh",
        &format!(
            "#!/bin/sh\ntrap '' INT\nsleep 1000 &\necho $! > {}\nwhile true; do sleep 1; done\n",
            grandchild.display()
        ),
    );
    fleet.file(
        "fleet.toml",
        "[apps.stubborn]\nscript = \"stubborn.sh\"\nkill_timeout = 3000\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let grandchild_pid: i32 = wait_lines(&grandchild, 1, SETTLE)[0].parse().unwrap();
    let leader = fleet.list()[0]["pid"].as_i64().unwrap() as i32;
    assert!(alive(grandchild_pid));

    let started = Instant::now();
    let mut stop = fleet.command(&["stop", "stubborn"]).spawn().unwrap();
    fleet.wait_list("stopping", SETTLE, |l| {
        status_of(l, "stubborn") == ["stopping"]
    });
    // Still stopping well inside the timeout: SIGINT is ignored.
    while started.elapsed() < Duration::from_millis(2000) {
        let list = fleet.list();
        assert_eq!(
            status_of(&list, "stubborn"),
            ["stopping"],
            "at {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    fleet.wait_list("stopped", SETTLE, |l| {
        status_of(l, "stubborn") == ["stopped"]
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2900),
        "stopped after {elapsed:?}"
    );
    assert!(stop.wait().unwrap().success());
    wait_until("the leader and grandchild to die", SETTLE, || {
        dead(leader) && dead(grandchild_pid)
    });
    assert_eq!(
        fleet.describe("stubborn")[0]["last_exit"]["signal"],
        "SIGKILL"
    );
}

#[test]
fn stop_sends_the_configured_kill_signal_to_the_whole_group() {
    let fleet = Fleet::new();
    let log = fleet.path("signals.txt");
    fleet.script(
        "graceful.sh",
        &format!(
            "#!/bin/sh\ntrap 'echo TERM >> {log}; exit 0' TERM\ntrap 'echo INT >> {log}; exit 0' INT\nwhile true; do sleep 0.1; done\n",
            log = log.display()
        ),
    );
    fleet.file(
        "fleet.toml",
        "[apps.graceful]\nscript = \"graceful.sh\"\nkill_signal = \"SIGTERM\"\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let started = Instant::now();
    fleet.ok(&["stop", "graceful"]);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "graceful exit, no SIGKILL"
    );
    assert_eq!(wait_lines(&log, 1, SETTLE), ["TERM"]);
    assert_eq!(fleet.describe("graceful")[0]["last_exit"]["code"], 0);
}

#[test]
fn an_instantly_crashing_app_ends_errored() {
    let fleet = Fleet::new();
    fleet.script("crash.sh", "#!/bin/sh\necho boom >&2\nexit 1\n");
    fleet.ok(&["start", "crash.sh"]);
    let list = fleet.wait_list("errored", SETTLE, |l| status_of(l, "crash") == ["errored"]);
    assert_eq!(
        list[0]["restarts"], 15,
        "16 unstable exits, the last one not restarted"
    );
    assert!(list[0]["pid"].is_null());
    let described = fleet.describe("crash");
    assert_eq!(described[0]["last_exit"]["code"], 1);
    assert_eq!(described[0]["unstable_restarts"], 16);
    // The error log has what the app printed.
    let err_log = std::fs::read_to_string(fleet.home.path().join("logs/crash-error.log")).unwrap();
    assert!(err_log.contains("boom"));

    // A manual start gives it a fresh window.
    fleet.ok(&["start", "crash"]);
    assert_ne!(status_of(&fleet.list(), "crash"), ["stopped"]);
}

#[test]
fn backoff_delays_grow_and_a_restart_resets_them() {
    let fleet = Fleet::new();
    fleet.script("crash.sh", "#!/bin/sh\nexit 1\n");
    fleet.file(
        "fleet.toml",
        "[apps.crash]\nscript = \"crash.sh\"\nexp_backoff_restart_delay = 100\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let mut seen = Vec::new();
    wait_until("backoff to reach 337 ms", SETTLE, || {
        let delay = fleet.describe("crash")[0]["prev_restart_delay_ms"]
            .as_u64()
            .unwrap();
        if seen.last() != Some(&delay) {
            seen.push(delay);
        }
        delay >= 337
    });
    let growing: Vec<u64> = seen.iter().copied().filter(|d| *d > 0).collect();
    assert!(
        growing.windows(2).all(|w| w[1] > w[0]),
        "grows: {growing:?}"
    );
    assert!(
        growing.contains(&225) || growing.contains(&150),
        "x1.5 steps: {growing:?}"
    );
    let status = fleet.list()[0]["status"].clone();
    assert!(
        status == "waiting-restart" || status == "online",
        "{status}"
    );

    // A manual restart starts the backoff over, as PM2 resets it on restart.
    fleet.ok(&["stop", "crash"]);
    fleet.ok(&["restart", "crash"]);
    let first = fleet.describe("crash")[0]["prev_restart_delay_ms"]
        .as_u64()
        .unwrap();
    assert!(first <= 100, "reset to the base delay, got {first}");
}

#[test]
fn restart_delay_keeps_the_app_waiting() {
    let fleet = Fleet::new();
    fleet.script("crash.sh", "#!/bin/sh\nexit 1\n");
    fleet.file(
        "fleet.toml",
        "[apps.crash]\nscript = \"crash.sh\"\nrestart_delay = 5000\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let list = fleet.wait_list("waiting-restart", SETTLE, |l| {
        status_of(l, "crash") == ["waiting-restart"]
    });
    assert_eq!(list[0]["restarts"], 0, "not restarted yet");
    assert!(
        fleet.describe("crash")[0]["restart_at_ms"]
            .as_u64()
            .is_some()
    );
}

#[test]
fn reset_zeroes_counters() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh"]);
    fleet.ok(&["restart", "app"]);
    fleet.ok(&["restart", "app"]);
    assert_eq!(fleet.list()[0]["restarts"], 2);
    fleet.ok(&["reset", "app"]);
    let list = fleet.list();
    assert_eq!(list[0]["restarts"], 0);
    assert_eq!(list[0]["status"], "online");
    fleet.ok(&["restart", "all"]);
    fleet.ok(&["reset", "all"]);
    assert_eq!(fleet.list()[0]["restarts"], 0);
}

#[test]
fn send_signal_reaches_the_app() {
    let fleet = Fleet::new();
    let log = fleet.path("usr2.txt");
    fleet.script(
        "sig.sh",
        &format!(
            "#!/bin/sh\ntrap 'echo USR2 >> {}' USR2\nwhile true; do sleep 0.1; done\n",
            log.display()
        ),
    );
    fleet.ok(&["start", "sig.sh"]);
    // Standard signals do not queue: wait for each before sending the next.
    for (n, (signal, target)) in [("SIGUSR2", "sig"), ("USR2", "0"), ("12", "sig")]
        .iter()
        .enumerate()
    {
        fleet.ok(&["send-signal", signal, target]);
        assert_eq!(wait_lines(&log, n + 1, SETTLE).len(), n + 1);
    }
    fleet.fails(&["send-signal", "SIGNOPE", "sig"], 2);
}

#[test]
fn memory_counts_the_whole_process_tree() {
    let fleet = Fleet::new();
    // The leader is a tiny shell; a child python holds 40 MB.
    fleet.script(
        "tree.sh",
        "#!/bin/sh\npython3 -c 'import time; b = bytearray(40 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1000)' &\nwhile true; do sleep 1; done\n",
    );
    fleet.ok(&["start", "tree.sh"]);
    fleet.wait_list("tree memory over 40 MB", SETTLE, |l| {
        l[0]["memory_bytes"].as_u64().unwrap_or(0) > 40 * 1024 * 1024
    });
}
