//! Prometheus' own `promtool`, for the tests of the agent's and the controller's
//! `/metrics` and of `deploy/prometheus/`: absent, the check is skipped with a note,
//! unless `FLEET_REQUIRE_PROMTOOL` is set (CI installs it and sets it).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// `promtool <args>` in `dir` (the current one when `None`) with `stdin` as its input:
/// whether it succeeded and what it said, or `None` when promtool is not installed.
pub fn promtool(args: &[&str], stdin: &str, dir: Option<&Path>) -> Option<(bool, String)> {
    let mut command = Command::new("promtool");
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(_) if std::env::var_os("FLEET_REQUIRE_PROMTOOL").is_some() => {
            panic!("promtool is not installed (Debian: apt-get install prometheus)")
        }
        Err(_) => {
            eprintln!("promtool is not installed: the text is not checked by Prometheus");
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), said))
}
