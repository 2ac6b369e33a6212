//! `fleet` as `pm2`: `fleet install-pm2` links it, and the PM2 command lines of deploy
//! hooks and scripts run unchanged against fleet's agent.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Fleet, all_status, by_name};

const TIMEOUT: Duration = Duration::from_secs(15);

fn pm2(fleet: &Fleet, bin: &std::path::Path, line: &str) -> Output {
    let mut command = Command::new(bin.join("pm2"));
    command
        .args(line.split_whitespace())
        .current_dir(fleet.work.path())
        .env("FLEET_HOME", fleet.home.path())
        .env("NO_COLOR", "1");
    fleet.run_with(command)
}

fn pm2_ok(fleet: &Fleet, bin: &std::path::Path, line: &str) -> String {
    let output = pm2(fleet, bin, line);
    assert!(
        output.status.success(),
        "pm2 {line}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn pm2_command_lines_run_against_fleet() {
    let fleet = Fleet::new();
    let bin = fleet.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let installed = fleet.ok(&["install-pm2", &bin.display().to_string()]);
    assert!(installed.contains("pm2"), "{installed}");
    // Installing again is a no-op; PM2's own `pm2` is never overwritten silently.
    fleet.ok(&["install-pm2", &bin.display().to_string()]);

    fleet.script(
        "app.sh",
        "#!/bin/sh\necho \"stage=$STAGE\"\nexec sleep 100\n",
    );
    fleet.file(
        "ecosystem.config.json",
        r#"{"apps": [{"name": "api", "script": "./app.sh", "env_production": {"STAGE": "prod"}}]}"#,
    );
    pm2_ok(&fleet, &bin, "start ecosystem.config.json --env production");
    fleet.wait_list("api online", TIMEOUT, |l| {
        l.len() == 1 && all_status(l, "online")
    });
    let first_pid = by_name(&fleet.list(), "api")[0]["pid"].clone();

    // `pm2 jlist` in PM2's shape.
    let jlist: Value = serde_json::from_str(&pm2_ok(&fleet, &bin, "jlist")).unwrap();
    assert_eq!(jlist[0]["name"], "api");
    assert_eq!(jlist[0]["pm2_env"]["status"], "online");
    assert_eq!(jlist[0]["pid"], first_pid);

    // The usual post-deploy line, then startOrRestart.
    pm2_ok(
        &fleet,
        &bin,
        "reload ecosystem.config.json --env production --update-env",
    );
    let list = fleet.wait_list("api replaced", TIMEOUT, |l| {
        l.len() == 1 && all_status(l, "online") && l[0]["pid"] != first_pid
    });
    let second_pid = list[0]["pid"].clone();
    pm2_ok(
        &fleet,
        &bin,
        "startOrRestart ecosystem.config.json --env production",
    );
    fleet.wait_list("api restarted", TIMEOUT, |l| {
        l.len() == 1 && all_status(l, "online") && l[0]["pid"] != second_pid
    });
    let logs = pm2_ok(&fleet, &bin, "logs api --nostream --lines 5");
    assert!(logs.contains("stage=prod"), "{logs}");
    pm2_ok(&fleet, &bin, "save");
    assert!(fleet.home.path().join("dump.json").is_file());

    // What fleet does not do says so and exits 2.
    let startup = pm2(&fleet, &bin, "startup systemd");
    assert_eq!(startup.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&startup.stderr);
    assert!(stderr.contains("pm2 startup: not supported"), "{stderr}");

    pm2_ok(&fleet, &bin, "delete all");
    fleet.wait_list("nothing left", TIMEOUT, |l| l.is_empty());
}
