//! The restarts that metrics, cron and file watching trigger, with real apps:
//! `max_memory_restart` over the whole process tree, `cron_restart` (never of a
//! stopped app) and `watch` (once per burst, ignored paths ignored): PM2's case 25.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::logs::{QUIET, SETTLE, logs_dir, restarts, wait_complete_lines};

#[test]
fn max_memory_restart_restarts_a_60_mb_app_within_3_seconds() {
    let fleet = Fleet::new();
    let marker = fleet.path("allocated.txt");
    fleet.script(
        "hog.py",
        "import sys, time\nb = bytearray(60 * 1024 * 1024)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\nwith open(sys.argv[1], 'a') as f:\n    f.write('allocated\\n')\nwhile True:\n    time.sleep(1)\n",
    );
    fleet.file(
        "fleet.toml",
        &format!(
            "[apps.hog]\nscript = \"hog.py\"\nargs = [\"{}\"]\nmax_memory_restart = \"40M\"\n",
            marker.display()
        ),
    );
    fleet.ok(&["start", "fleet.toml"]);
    wait_lines(&marker, 1, SETTLE);
    let allocated = Instant::now();
    fleet.wait_list("a memory restart", Duration::from_secs(3), |l| {
        restarts(l, "hog") >= 1
    });
    let elapsed = allocated.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "restarted {elapsed:?} after reaching 60 MB"
    );
    let described = fleet.describe("hog");
    assert!(
        described[0]["restarts"].as_i64().unwrap_or(0) >= 1,
        "{:#}",
        described[0]
    );
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_counts_a_grandchild() {
    let fleet = Fleet::new();
    let pid_file = fleet.path("grandchild.pid");
    fleet.script(
        "hold.py",
        "import os, sys, time\nb = bytearray(40 * 1024 * 1024)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\nwith open(sys.argv[1] + '.tmp', 'w') as f:\n    f.write('%d\\n' % os.getpid())\nos.rename(sys.argv[1] + '.tmp', sys.argv[1])\nwhile True:\n    time.sleep(1)\n",
    );
    // The leader's child is a shell that waits for the python it started: the 40 MB
    // are two generations below the leader.
    fleet.script(
        "tree.sh",
        &format!(
            "#!/bin/sh\nsh -c 'python3 {} {}; echo done' &\nwhile true; do sleep 1; done\n",
            fleet.path("hold.py").display(),
            pid_file.display()
        ),
    );
    fleet.ok(&["start", "tree.sh"]);
    let grandchild: i32 = wait_lines(&pid_file, 1, SETTLE)[0].parse().unwrap();
    let leader = fleet.list()[0]["pid"].as_i64().unwrap() as i32;
    let middle = parent_of(grandchild);
    assert_ne!(middle, leader, "python is a grandchild, not a child");
    assert_eq!(parent_of(middle), leader);

    fleet.wait_list("memory over 40 MB", SETTLE, |l| {
        l[0]["memory_bytes"].as_u64().unwrap_or(0) > 40 * 1024 * 1024
    });
}

#[test]
fn cron_restart_fires_and_never_restarts_a_stopped_app() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.file(
        "fleet.toml",
        "[apps.cron]\nscript = \"app.sh\"\ncron_restart = \"*/2 * * * * *\"\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let list = fleet.wait_list("a cron restart", Duration::from_secs(5), |l| {
        restarts(l, "cron") >= 1
    });
    assert_eq!(status_of(&list, "cron"), ["online"]);

    fleet.ok(&["stop", "cron"]);
    let stopped = fleet.list();
    assert_eq!(status_of(&stopped, "cron"), ["stopped"]);
    let count = restarts(&stopped, "cron");
    // Asserting an absence: watch for longer than the cron period.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let list = fleet.list();
        assert_eq!(status_of(&list, "cron"), ["stopped"], "{list:#?}");
        assert_eq!(restarts(&list, "cron"), count, "{list:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls for `QUIET` and fails if the app's restart count moves from `expected`.
fn assert_restarts_stay(fleet: &Fleet, name: &str, expected: i64, why: &str) {
    let started = Instant::now();
    while started.elapsed() < QUIET {
        let list = fleet.list();
        assert_eq!(
            restarts(&list, name),
            expected,
            "{why}\nagent.log:\n{}",
            fleet.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_restarts_once_per_burst_and_ignores_ignored_paths() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    for dir in ["src/cache", "src/deep"] {
        std::fs::create_dir_all(fleet.path(dir)).unwrap();
    }
    fleet.file("src/deep/z.js", "1\n");
    fleet.file("src/cache/y", "1\n");
    fleet.file("src/x.tmp", "1\n");
    fleet.file(
        "fleet.toml",
        r#"
[apps.watched]
script = "app.sh"
watch = ["src"]
ignore_watch = ["*.tmp", "cache"]
watch_delay = 300
"#,
    );
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("online", SETTLE, |l| status_of(l, "watched") == ["online"]);

    for n in 0..5 {
        fleet.file(&format!("src/file{n}.js"), &format!("{n}\n"));
    }
    fleet.wait_list("one watch restart", SETTLE, |l| restarts(l, "watched") >= 1);
    assert_restarts_stay(&fleet, "watched", 1, "one restart for a burst of 5 edits");

    fleet.file("src/x.tmp", "2\n");
    fleet.file("src/cache/y", "2\n");
    fleet.file("src/new.tmp", "1\n");
    assert_restarts_stay(&fleet, "watched", 1, "*.tmp and cache/ are ignored");

    fleet.file("src/deep/z.js", "2\n");
    fleet.wait_list("a restart for src/deep/z.js", SETTLE, |l| {
        restarts(l, "watched") >= 2
    });
    assert_restarts_stay(&fleet, "watched", 2, "one restart for one edit");
}

// ---------------------------------------------------------------------------------
// Lines are never lost or cut
// ---------------------------------------------------------------------------------

#[test]
fn a_crash_never_loses_lines_already_written() {
    let fleet = Fleet::new();
    fleet.script(
        "crash.sh",
        "#!/bin/sh\ni=1\nwhile [ $i -le 1000 ]; do echo \"line $i\"; i=$((i+1)); done\nkill -9 $$\n",
    );
    fleet.file(
        "fleet.toml",
        "[apps.crash]\nscript = \"crash.sh\"\nautorestart = false\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("the crash", SETTLE, |l| {
        status_of(l, "crash") == ["stopped"]
    });
    assert_eq!(fleet.describe("crash")[0]["last_exit"]["signal"], "SIGKILL");
    let out = logs_dir(&fleet).join("crash-out.log");
    let lines = wait_complete_lines(&out, 1000, SETTLE);
    let expected: Vec<String> = (1..=1000).map(|n| format!("line {n}")).collect();
    assert_eq!(lines, expected);
}

#[test]
fn merged_instances_never_interleave_mid_line() {
    const LINE: usize = 2000;
    const LINES: usize = 1000;
    let fleet = Fleet::new();
    // Each instance writes its digit in lines of 2,000, in 1,500-byte writes, so most
    // lines reach the agent in two pieces while the other instance writes too.
    fleet.script(
        "wide.py",
        &format!(
            "import os, time\nd = os.environ['FLEET_APP_INSTANCE']\ndata = ((d * {LINE}) + '\\n').encode() * {LINES}\ni = 0\nwhile i < len(data):\n    i += os.write(1, data[i:i + 1500])\nwhile True:\n    time.sleep(1)\n"
        ),
    );
    fleet.file(
        "fleet.toml",
        "[apps.wide]\nscript = \"wide.py\"\ninstances = 2\nmerge_logs = true\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let out = logs_dir(&fleet).join("wide-out.log");
    let lines = wait_complete_lines(&out, 2 * LINES, SETTLE);
    assert_eq!(lines.len(), 2 * LINES);
    let mut counts = [0usize; 2];
    for (n, line) in lines.iter().enumerate() {
        let first = line.as_bytes().first().copied().unwrap_or(b'?');
        assert!(
            line.len() == LINE
                && (first == b'0' || first == b'1')
                && line.bytes().all(|b| b == first),
            "line {n} is cut or mixed ({} bytes): {}...",
            line.len(),
            &line[..line.len().min(80)]
        );
        counts[usize::from(first - b'0')] += 1;
    }
    assert_eq!(counts, [LINES, LINES]);
    assert!(!logs_dir(&fleet).join("wide-out-0.log").exists());
}
