//! Secrets of a deploy never reach a command line on a host: the stage's `env` values
//! (exported for hooks) travel inside the scripts, and the scripts on the SSH
//! channel's stdin, so `/proc/*/cmdline` (what `ps` shows every user) never holds them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{Fleet, git};
use crate::testbed::{HOST_FLEET_HOME, TestBed};

const SECRET: &str = "s3cr3t-value-for-the-cmdline-check";

/// Every process command line on the machine (test-bed hosts share its PID namespace).
fn any_cmdline_holds(needle: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle))
    })
}

#[test]
fn stage_secrets_never_reach_a_command_line_on_the_host() {
    let test = "stage_secrets_never_reach_a_command_line_on_the_host";
    if !TestBed::available_or_skip(test) {
        return;
    }
    let bed = TestBed::up(1, None);
    let fleet = Fleet::new();
    let host = &bed.hosts[0];
    git(fleet.work.path(), &["init", "-q", "-b", "main"]);
    fleet.file(
        "fleet.toml",
        &format!(
            r#"[apps.idle]
script = "sleep 1000"

[deploy.bed]
host = "{address}"
user = "root"
key = "{key}"
ssh_options = ["UserKnownHostsFile={known}", "ConnectTimeout=3"]
fleet_home = "{HOST_FLEET_HOME}"
path = "/srv/secrets"
ref = "main"
env = {{ DB_PASSWORD = "{SECRET}" }}
pre_deploy = "sleep 1; printf '%s' \"$DB_PASSWORD\" > seen-by-hook"
post_deploy = "sleep 1"
"#,
            address = host.address,
            key = bed.client_key().display(),
            known = bed.known_hosts().display(),
        ),
    );
    git(fleet.work.path(), &["add", "-A"]);
    git(fleet.work.path(), &["commit", "-q", "-m", "c1"]);

    // Watch every command line while setup and the deploy run.
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, seen) = (done.clone(), seen.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if any_cmdline_holds(SECRET) {
                    seen.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    fleet.ok(&["deploy", "bed", "setup"]);
    let summary = fleet.ok(&["deploy", "bed", "--json"]);
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert!(
        !seen.load(Ordering::SeqCst),
        "the secret was on a command line"
    );
    // The hook still had it.
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let release = summary["release"].as_str().unwrap();
    let output = bed.exec(
        &host.name,
        &[
            "cat",
            &format!("/srv/secrets/releases/{release}/seen-by-hook"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), SECRET);
}
