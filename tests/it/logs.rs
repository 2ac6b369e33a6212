//! Log capture, rotation and `fleet logs` with real apps: PM2's log-file cases
//! (acceptance cases 34 and 35), rotation that loses no line (pm2-logrotate's
//! copy-then-truncate does), a crash that keeps every line already written and merged
//! logs never cut mid-line. The restarts that metrics, cron and watching trigger are
//! in `triggers`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::*;

pub(crate) const SETTLE: Duration = Duration::from_secs(10);
/// How long a restart that must not happen is given to happen anyway.
pub(crate) const QUIET: Duration = Duration::from_millis(1500);

/// Prints one line on each stream, tagged with its instance, then waits.
const ECHO: &str = "#!/bin/sh\necho \"out from $FLEET_APP_INSTANCE\"\necho \"err from $FLEET_APP_INSTANCE\" >&2\nwhile true; do sleep 1; done\n";

pub(crate) fn logs_dir(fleet: &Fleet) -> PathBuf {
    fleet.home.path().join("logs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `path` holds `needle` on a line of its own, then returns the file.
fn wait_line(path: &Path, needle: &str) -> String {
    let mut content = String::new();
    wait_until(&format!("{needle:?} in {}", path.display()), SETTLE, || {
        content = read(path);
        content.lines().any(|l| l == needle)
    });
    content
}

/// Waits until `path` holds `count` complete (newline-terminated) lines; a line still
/// being written is not counted.
pub(crate) fn wait_complete_lines(path: &Path, count: usize, timeout: Duration) -> Vec<String> {
    let mut content = String::new();
    wait_until(
        &format!("{count} complete lines in {}", path.display()),
        timeout,
        || {
            content = read(path);
            content.bytes().filter(|b| *b == b'\n').count() >= count
        },
    );
    content.lines().map(str::to_string).collect()
}

pub(crate) fn restarts(list: &[Value], name: &str) -> i64 {
    by_name(list, name)
        .first()
        .and_then(|p| p["restarts"].as_i64())
        .unwrap_or(-1)
}

/// The names of the files in `dir` starting with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// `dddd-dd-ddTdd:dd:dd`, the start of an ISO 8601 date and time.
fn iso_like(text: &str) -> bool {
    let pattern = "dddd-dd-ddTdd:dd:dd";
    text.len() >= pattern.len()
        && pattern.bytes().zip(text.bytes()).all(|(p, c)| match p {
            b'd' => c.is_ascii_digit(),
            other => other == c,
        })
}

// ---------------------------------------------------------------------------------
// PM2's log-file cases (acceptance case 34)
// ---------------------------------------------------------------------------------

#[test]
fn default_log_files_are_named_after_the_app_and_suffixed_per_instance() {
    let fleet = Fleet::new();
    fleet.script("echo.sh", ECHO);
    fleet.script("multi.sh", ECHO);
    let logs = logs_dir(&fleet);

    fleet.ok(&["start", "echo.sh"]);
    wait_line(&logs.join("echo-out.log"), "out from 0");
    wait_line(&logs.join("echo-error.log"), "err from 0");

    fleet.ok(&["start", "multi.sh", "-i", "2"]);
    for instance in 0..2 {
        wait_line(
            &logs.join(format!("multi-out-{instance}.log")),
            &format!("out from {instance}"),
        );
        wait_line(
            &logs.join(format!("multi-error-{instance}.log")),
            &format!("err from {instance}"),
        );
    }
    assert!(
        !logs.join("multi-out.log").exists(),
        "not merged by default"
    );
    assert!(!logs.join("multi-error.log").exists());
    // Each instance's own files only, never the other's.
    assert_eq!(read(&logs.join("multi-out-1.log")), "out from 1\n");

    // `describe` names the files each instance writes.
    for process in fleet.describe("multi") {
        let instance = process["instance"].as_i64().unwrap();
        let files: Vec<&str> = process["log_files"]
            .as_array()
            .unwrap_or_else(|| panic!("log_files is a list: {process:#}"))
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        for name in [
            format!("multi-out-{instance}.log"),
            format!("multi-error-{instance}.log"),
        ] {
            assert!(
                files.iter().any(|f| Path::new(f) == logs.join(&name)),
                "{name} in {files:?}"
            );
        }
    }
}

#[test]
fn custom_log_paths_get_the_instance_suffix_unless_merge_logs() {
    let fleet = Fleet::new();
    fleet.script("echo.sh", ECHO);
    fleet.file(
        "fleet.toml",
        r#"
[apps.split]
script = "echo.sh"
instances = 2
out_file = "out.log"
error_file = "err.log"

[apps.merged]
script = "echo.sh"
instances = 2
out_file = "merged/out.log"
merge_logs = true
"#,
    );
    fleet.ok(&["start", "fleet.toml"]);
    for instance in 0..2 {
        wait_line(
            &fleet.path(&format!("out-{instance}.log")),
            &format!("out from {instance}"),
        );
        wait_line(
            &fleet.path(&format!("err-{instance}.log")),
            &format!("err from {instance}"),
        );
    }
    assert!(!fleet.path("out.log").exists());
    assert!(!fleet.path("err.log").exists());

    // merge_logs: one file holding both instances' lines, the default error file too.
    let merged = fleet.path("merged/out.log");
    wait_line(&merged, "out from 0");
    wait_line(&merged, "out from 1");
    assert!(!fleet.path("merged/out-0.log").exists());
    assert!(!fleet.path("merged/out-1.log").exists());
    let merged_err = logs_dir(&fleet).join("merged-error.log");
    wait_line(&merged_err, "err from 0");
    wait_line(&merged_err, "err from 1");
}

#[test]
fn log_file_gets_both_streams_and_true_means_the_default_combined_file() {
    let fleet = Fleet::new();
    fleet.script("echo.sh", ECHO);
    fleet.file(
        "fleet.toml",
        r#"
[apps.entire]
script = "echo.sh"
log_file = "entire.log"

[apps.combined]
script = "echo.sh"
log = true
"#,
    );
    fleet.ok(&["start", "fleet.toml"]);
    let entire = fleet.path("entire.log");
    wait_line(&entire, "out from 0");
    wait_line(&entire, "err from 0");
    // The combined file is written besides the usual ones, not instead of them.
    wait_line(&logs_dir(&fleet).join("entire-out.log"), "out from 0");
    wait_line(&logs_dir(&fleet).join("entire-error.log"), "err from 0");

    let combined = logs_dir(&fleet).join("combined.log");
    wait_line(&combined, "out from 0");
    wait_line(&combined, "err from 0");
}

#[test]
fn null_and_dev_null_log_paths_create_no_file() {
    let fleet = Fleet::new();
    fleet.script(
        "quiet.sh",
        "#!/bin/sh\necho out\necho err >&2\necho written > \"$1\"\nwhile true; do sleep 1; done\n",
    );
    fleet.file(
        "fleet.toml",
        r#"
[apps.nulls]
script = "quiet.sh"
args = ["nulls.marker"]
out_file = "NULL"
error_file = "/dev/null"

[apps.devnull]
script = "quiet.sh"
args = ["devnull.marker"]
out_file = "/dev/null"
error_file = "NULL"
"#,
    );
    fleet.ok(&["start", "fleet.toml"]);
    // Each app has printed both lines once its marker exists.
    wait_lines(&fleet.path("nulls.marker"), 1, SETTLE);
    wait_lines(&fleet.path("devnull.marker"), 1, SETTLE);
    let list = fleet.list();
    assert_eq!(status_of(&list, "nulls"), ["online"]);
    assert_eq!(status_of(&list, "devnull"), ["online"]);
    let logs = logs_dir(&fleet);
    assert_eq!(files_starting(&logs, "nulls"), Vec::<String>::new());
    assert_eq!(files_starting(&logs, "devnull"), Vec::<String>::new());
    assert!(!fleet.path("NULL").exists(), "NULL is not a file name");
    assert!(!fleet.path("NULL-0.log").exists());
}

#[test]
fn a_deep_missing_log_directory_is_created() {
    let fleet = Fleet::new();
    fleet.script("echo.sh", ECHO);
    fleet.file(
        "fleet.toml",
        "[apps.deep]\nscript = \"echo.sh\"\nout_file = \"logs/a/b/c/out.log\"\nerror_file = \"logs/x/y/err.log\"\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    wait_line(&fleet.path("logs/a/b/c/out.log"), "out from 0");
    wait_line(&fleet.path("logs/x/y/err.log"), "err from 0");
}

#[test]
fn log_date_format_and_time_prefix_lines_and_a_bogus_format_does_not_crash() {
    let fleet = Fleet::new();
    fleet.script("echo.sh", ECHO);
    fleet.file(
        "fleet.toml",
        r#"
[apps.year]
script = "echo.sh"
log_date_format = "YYYY"

[apps.bogus]
script = "echo.sh"
log_date_format = "qqq"

[apps.stamped]
script = "echo.sh"
time = true
"#,
    );
    fleet.ok(&["start", "fleet.toml"]);
    let logs = logs_dir(&fleet);
    let year = String::from_utf8(
        std::process::Command::new("date")
            .arg("+%Y")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    wait_line(&logs.join("year-out.log"), &format!("{year}: out from 0"));
    wait_line(&logs.join("year-error.log"), &format!("{year}: err from 0"));

    let stamped = wait_complete_lines(&logs.join("stamped-out.log"), 1, SETTLE);
    assert!(
        iso_like(&stamped[0]) && stamped[0].ends_with(": out from 0"),
        "an ISO-like prefix: {stamped:?}"
    );

    let bogus = wait_complete_lines(&logs.join("bogus-out.log"), 1, SETTLE);
    assert!(bogus[0].ends_with("out from 0"), "{bogus:?}");
    let list = fleet.list();
    assert_eq!(status_of(&list, "bogus"), ["online"]);
    assert_eq!(restarts(&list, "bogus"), 0);
    fleet.ok(&["ping"]);
}

#[test]
fn log_type_json_writes_one_pm2_json_object_per_line() {
    let fleet = Fleet::new();
    fleet.script(
        "talk.sh",
        "#!/bin/sh\necho 'say \"hi\"'\necho second\necho 'oops' >&2\nwhile true; do sleep 1; done\n",
    );
    fleet.file(
        "fleet.toml",
        "[apps.talk]\nscript = \"talk.sh\"\nlog_type = \"json\"\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let id = fleet.list()[0]["id"].as_i64().unwrap();
    let logs = logs_dir(&fleet);
    for (file, count, stream, first) in [
        ("talk-out.log", 2, "out", "say \"hi\""),
        ("talk-error.log", 1, "err", "oops"),
    ] {
        let lines = wait_complete_lines(&logs.join(file), count, SETTLE);
        assert_eq!(lines.len(), count, "{lines:?}");
        for line in &lines {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{file}: {line:?} is not JSON: {e}"));
            assert!(value["message"].is_string(), "{value}");
            assert!(
                value["timestamp"].as_str().is_some_and(|t| !t.is_empty()),
                "{value}"
            );
            assert_eq!(value["type"], stream, "{value}");
            assert_eq!(value["process_id"], id, "{value}");
            assert_eq!(value["app_name"], "talk", "{value}");
        }
        let value: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(value["message"], first);
    }
}

#[test]
fn reload_logs_recreates_a_deleted_log_file() {
    let fleet = Fleet::new();
    fleet.script(
        "tick.sh",
        "#!/bin/sh\ni=0\nwhile true; do i=$((i+1)); echo \"tick $i\"; sleep 0.05; done\n",
    );
    fleet.ok(&["start", "tick.sh"]);
    let out = logs_dir(&fleet).join("tick-out.log");
    let before = wait_complete_lines(&out, 3, SETTLE);
    let last_before: u64 = before.last().unwrap()["tick ".len()..].parse().unwrap();
    std::fs::remove_file(&out).unwrap();

    fleet.ok(&["reload-logs"]);
    let after = wait_complete_lines(&out, 2, SETTLE);
    for line in &after {
        let tick: u64 = line
            .strip_prefix("tick ")
            .unwrap_or_else(|| panic!("{line:?}"))
            .parse()
            .unwrap();
        assert!(
            tick > last_before,
            "only new lines in the new file: {after:?} (last before: {last_before})"
        );
    }
}

#[test]
fn flush_empties_only_that_apps_files_and_later_lines_start_at_the_top() {
    let fleet = Fleet::new();
    fleet.script(
        "usr2.sh",
        "#!/bin/sh\ntrap 'echo after; echo err after >&2' USR2\necho before\necho err before >&2\nwhile true; do sleep 0.1; done\n",
    );
    fleet.file(
        "fleet.toml",
        "[apps.a]\nscript = \"usr2.sh\"\n\n[apps.b]\nscript = \"usr2.sh\"\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let logs = logs_dir(&fleet);
    for app in ["a", "b"] {
        wait_line(&logs.join(format!("{app}-out.log")), "before");
        wait_line(&logs.join(format!("{app}-error.log")), "err before");
    }

    fleet.ok(&["flush", "a"]);
    assert_eq!(read(&logs.join("a-out.log")), "");
    assert_eq!(read(&logs.join("a-error.log")), "");
    assert_eq!(read(&logs.join("b-out.log")), "before\n", "b is untouched");
    assert_eq!(read(&logs.join("b-error.log")), "err before\n");

    // The app keeps writing: new lines land at the start of the emptied file (append
    // mode), not after a hole of NUL bytes where the old content was.
    fleet.ok(&["send-signal", "SIGUSR2", "a"]);
    wait_complete_lines(&logs.join("a-out.log"), 1, SETTLE);
    wait_complete_lines(&logs.join("a-error.log"), 1, SETTLE);
    assert_eq!(read(&logs.join("a-out.log")), "after\n");
    assert_eq!(read(&logs.join("a-error.log")), "err after\n");
}

// ---------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------

const ROTATION_LINES: u32 = 50_000;

/// Writes `ROTATION_LINES` numbered lines of 40 bytes as fast as it can (about 2 MB),
/// then waits.
fn rotation_app(fleet: &Fleet) {
    fleet.script(
        "numbers.py",
        &format!(
            "import time\nfor i in range(1, {}):\n    print('%06d %s' % (i, 'x' * 33))\nwhile True:\n    time.sleep(1)\n",
            ROTATION_LINES + 1
        ),
    );
}

fn rotation_line(n: u32) -> String {
    format!("{n:06} {}", "x".repeat(33))
}

/// A rotated file's name and modification time, which decides what `retain` prunes.
fn with_mtime(dir: &Path, name: &str) -> String {
    let modified = std::fs::metadata(dir.join(name))
        .and_then(|m| m.modified())
        .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_nanos());
    format!("{name} (mtime {modified:?})")
}

/// The numbers of a rotation app's lines, checking each line is whole.
fn numbers(what: &str, text: &str) -> Vec<u32> {
    text.lines()
        .map(|line| {
            let n: u32 = line
                .get(..6)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{what}: a line that is not numbered: {line:?}"));
            assert_eq!(line, rotation_line(n), "{what}: a damaged line");
            n
        })
        .collect()
}

/// The kept files, current one included, hold one run of numbers ending at the last
/// line: no gap, no duplicate, and the oldest lines pruned.
fn assert_contiguous(mut segments: Vec<(String, Vec<u32>)>) {
    segments.retain(|(_, numbers)| !numbers.is_empty());
    segments.sort_by_key(|(_, numbers)| numbers[0]);
    let all: Vec<u32> = segments.iter().flat_map(|(_, n)| n.clone()).collect();
    let summary: Vec<String> = segments
        .iter()
        .map(|(name, n)| format!("{name}: {}..={}", n[0], n[n.len() - 1]))
        .collect();
    for pair in all.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "a gap or a duplicate after line {} in the kept files: {summary:#?}",
            pair[0]
        );
    }
    assert_eq!(all.last(), Some(&ROTATION_LINES), "{summary:#?}");
    assert!(all[0] > 1, "retain pruned the oldest files: {summary:#?}");
}

#[test]
fn rotation_by_size_under_continuous_writing_loses_no_line_and_keeps_retain_files() {
    let fleet = Fleet::new();
    rotation_app(&fleet);
    fleet.file(
        "fleet.toml",
        "[apps.rot]\nscript = \"numbers.py\"\nmax_size = \"100K\"\nretain = 3\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let logs = logs_dir(&fleet);
    let current = logs.join("rot-out.log");
    // Rotation happens before a write, so the last line is in the current file.
    wait_line(&current, &rotation_line(ROTATION_LINES));

    let rotated = files_starting(&logs, "rot-out__");
    assert_eq!(rotated.len(), 3, "retain = 3: {rotated:?}");
    let mut segments = vec![(
        "rot-out.log".to_string(),
        numbers("current", &read(&current)),
    )];
    for name in &rotated {
        assert!(
            name.ends_with(".log") && name.len() > "rot-out__.log".len(),
            "rotated as <stem>__<date>.log: {name}"
        );
        segments.push((
            with_mtime(&logs, name),
            numbers(name, &read(&logs.join(name))),
        ));
    }
    assert_contiguous(segments);
}

#[test]
fn compressed_rotation_produces_gzip_files_and_loses_no_line() {
    let fleet = Fleet::new();
    rotation_app(&fleet);
    fleet.file(
        "fleet.toml",
        "[apps.gz]\nscript = \"numbers.py\"\nmax_size = \"100K\"\nretain = 3\ncompress = true\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let logs = logs_dir(&fleet);
    let current = logs.join("gz-out.log");
    wait_line(&current, &rotation_line(ROTATION_LINES));

    // Compression runs in the background: wait for it to settle on `retain` gzip files.
    let until = Instant::now() + SETTLE;
    let rotated = loop {
        let rotated = files_starting(&logs, "gz-out__");
        if rotated.len() == 3 && rotated.iter().all(|n| n.ends_with(".log.gz")) {
            break rotated;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for retain = 3 gzipped rotated files and no plain one: {rotated:#?}\nagent.log:\n{}",
            fleet.agent_log()
        );
        std::thread::sleep(POLL_INTERVAL);
    };
    let mut segments = vec![(
        "gz-out.log".to_string(),
        numbers("current", &read(&current)),
    )];
    for name in &rotated {
        let output = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(logs.join(name))
            .output()
            .expect("run gzip");
        assert!(
            output.status.success(),
            "{name} is not gzip: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        segments.push((with_mtime(&logs, name), numbers(name, &text)));
    }
    assert_contiguous(segments);
}

// ---------------------------------------------------------------------------------
// `fleet logs` (acceptance case 35)
// ---------------------------------------------------------------------------------

/// Runs `fleet logs` and returns its stdout lines.
fn logs_output(fleet: &Fleet, args: &[&str]) -> Vec<String> {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    fleet.ok(&all).lines().map(str::to_string).collect()
}

#[test]
fn logs_prints_the_last_lines_by_stream_as_raw_or_json() {
    let fleet = Fleet::new();
    // Standard error first, so the last lines of both streams are standard output.
    fleet.script(
        "count.sh",
        "#!/bin/sh\necho 'oops 1' >&2\necho 'oops 2' >&2\nsleep 0.5\ni=1\nwhile [ $i -le 20 ]; do echo \"line $i\"; i=$((i+1)); done\nwhile true; do sleep 1; done\n",
    );
    fleet.ok(&["start", "count.sh"]);
    wait_until("line 20 in fleet logs", SETTLE, || {
        logs_output(&fleet, &["count", "--raw", "--lines", "1"]) == ["line 20"]
    });

    let last: Vec<String> = (16..=20).map(|n| format!("line {n}")).collect();
    assert_eq!(
        logs_output(&fleet, &["count", "--lines", "5", "--raw"]),
        last
    );
    let pretty = logs_output(&fleet, &["count", "--lines", "5"]);
    assert_eq!(pretty.len(), 5, "{pretty:?}");
    for (printed, line) in pretty.iter().zip(&last) {
        assert!(
            printed.contains("count") && printed.ends_with(&format!("| {line}")),
            "{printed:?}"
        );
    }

    assert_eq!(
        logs_output(&fleet, &["count", "--err", "--raw"]),
        ["oops 1", "oops 2"]
    );
    let out = logs_output(&fleet, &["count", "--out", "--raw", "--lines", "100"]);
    assert_eq!(
        out,
        (1..=20).map(|n| format!("line {n}")).collect::<Vec<_>>()
    );

    for (args, stream, lines) in [
        (
            &["count", "--json", "--lines", "2"][..],
            "out",
            ["line 19", "line 20"],
        ),
        (
            &["count", "--json", "--err"][..],
            "err",
            ["oops 1", "oops 2"],
        ),
    ] {
        let printed = logs_output(&fleet, args);
        assert_eq!(printed.len(), 2, "{printed:?}");
        for (text, line) in printed.iter().zip(lines) {
            let value: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
            let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
            for key in ["ts", "host", "app", "instance", "stream", "line"] {
                assert!(value.get(key).is_some(), "{key} missing in {value}");
            }
            assert_eq!(keys.len(), 6, "{value}");
            assert!(value["ts"].as_u64().is_some_and(|t| t > 0), "{value}");
            assert!(value["host"].is_string(), "{value}");
            assert_eq!(value["app"], "count");
            assert_eq!(value["instance"], 0);
            assert_eq!(value["stream"], stream);
            assert_eq!(value["line"], line);
        }
    }
}

#[test]
fn logs_of_an_unknown_target_exits_1() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh"]);
    fleet.fails(&["logs", "nope"], 1);
    fleet.fails(&["logs", "nope", "--lines", "0", "-f"], 1);
    fleet.fails(&["logs", "/^zz/"], 1);
    fleet.ok(&["logs", "app", "--lines", "0"]);
}

/// A `fleet logs -f` child whose stdout lines arrive on a channel; killed on drop.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<(u128, String)>,
}

impl Follower {
    fn start(fleet: &Fleet, args: &[&str]) -> Follower {
        let mut child = fleet
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fleet logs -f");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send((now_ms(), line)).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    fn next(&self, timeout: Duration) -> (u128, String) {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no line from fleet logs -f within {timeout:?}: {e}"))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_follow_shows_a_new_line_within_a_second_and_no_history_with_lines_0() {
    let fleet = Fleet::new();
    fleet.script(
        "tick.py",
        "import time\nn = 0\nwhile True:\n    n += 1\n    print('tick %d %d' % (n, int(time.time() * 1000)))\n    time.sleep(0.2)\n",
    );
    fleet.ok(&["start", "tick.py"]);
    let out = logs_dir(&fleet).join("tick-out.log");
    let before = wait_complete_lines(&out, 2, SETTLE);
    let parse = |line: &str| -> (u64, u128) {
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("tick"), "{line:?}");
        let n = words.next().unwrap().parse().unwrap();
        let at = words.next().unwrap().parse().unwrap();
        (n, at)
    };
    let (last_before, _) = parse(before.last().unwrap());

    let follower = Follower::start(&fleet, &["logs", "tick", "-f", "--lines", "0"]);
    for _ in 0..3 {
        let (received, printed) = follower.next(Duration::from_secs(5));
        let (_, line) = printed
            .split_once(" | ")
            .unwrap_or_else(|| panic!("an app prefix: {printed:?}"));
        let (n, printed_at) = parse(line);
        assert!(
            n > last_before,
            "--lines 0 shows no history: got tick {n}, file had up to {last_before}"
        );
        let latency = received.saturating_sub(printed_at);
        assert!(
            latency < 1000,
            "tick {n} shown {latency} ms after the app printed it"
        );
    }
}

// ---------------------------------------------------------------------------------
// Restarts driven by metrics, cron and watch (acceptance case 25)
// ---------------------------------------------------------------------------------
