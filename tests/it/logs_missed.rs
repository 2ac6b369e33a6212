//! A `fleet logs -f` follower that falls behind is told exactly what it missed: an
//! app floods numbered lines while the follower's reader stops reading; afterwards
//! the lines it printed plus the lines its notices say were missed, for that app,
//! are exactly the lines the app wrote. Never silently, never approximately.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::logs::logs_dir;

const LINES: u64 = 1_000_000;

#[test]
fn a_follower_that_falls_behind_is_told_exactly_how_many_lines_of_which_app_it_missed() {
    let fleet = Fleet::new();
    let go = fleet.home.path().join("go");
    // Ticks until told to go (so the follower is known to be reading), then LINES
    // numbered lines, one write each, then `done`.
    fleet.script(
        "flood.py",
        &format!(
            "import os, sys, time\n\
             while not os.path.exists({go:?}):\n    print('tick', flush=True)\n    time.sleep(0.05)\n\
             for n in range(1, {LINES} + 1):\n    sys.stdout.write('%d\\n' % n)\n    sys.stdout.flush()\n\
             print('done', flush=True)\n\
             time.sleep(3600)\n",
            go = go.display().to_string()
        ),
    );
    fleet.ok(&["start", "flood.py"]);
    let mut child = fleet
        .command(&["logs", "flood", "-f", "--lines", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fleet logs -f");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("tick"), "{first}");

    // The follower's stdout is no longer read: its pipe fills, and it falls behind
    // while the app floods. The files get every line.
    std::fs::write(&go, "").unwrap();
    let log = logs_dir(&fleet).join("flood-out.log");
    wait_until("the flood to be written", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.ends_with("done\n"))
    });

    let (mut shown, mut missed, mut notices) = (0u64, 0u64, 0);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the follower ended early"
        );
        let entry: Value = serde_json::from_str(&line).unwrap();
        if let Some(count) = entry["missed"].as_u64() {
            assert_eq!(entry["app"], "flood", "{entry}");
            assert_eq!(entry["stream"], "out", "{entry}");
            missed += count;
            notices += 1;
            continue;
        }
        match entry["line"].as_str() {
            Some("done") => break,
            Some(text) if text.parse::<u64>().is_ok() => shown += 1,
            _ => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("flood of {LINES}: {shown} shown, {missed} reported missed in {notices} notices");
    assert!(
        missed > 0,
        "the follower fell behind (else this tests nothing)"
    );
    assert_eq!(shown + missed, LINES, "shown plus missed is every line");
}
