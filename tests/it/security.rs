//! Inputs that must be refused where they arrive, and credentials that never travel in
//! cleartext: a scale bomb refused at once, an app name that cannot write outside
//! `FLEET_HOME`, an `http://` controller refused before any connection, and a join token
//! never taken from the command line.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn a_scale_bomb_is_refused_at_once_with_exit_2() {
    let fleet = Fleet::new();
    fleet.ok(&["start", "/bin/sleep", "--name", "x", "--", "1000"]);
    let started = Instant::now();
    let err = fleet.fails(&["scale", "x", "12000"], 2);
    assert!(err.contains("at most 1024"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    // The agent still answers at once.
    let started = Instant::now();
    assert_eq!(fleet.list().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn an_app_name_never_writes_outside_fleet_home() {
    let fleet = Fleet::new();
    let outside = fleet.home.path().parent().unwrap().join("evil-out.log");
    let _ = fleet.run(&["start", "/bin/sleep", "--name", "../../evil", "--", "1000"]);
    let logs = fleet.home.path().join("logs");
    wait_until("a log file or a refusal", Duration::from_secs(5), || {
        fleet.list().is_empty() || std::fs::read_dir(&logs).is_ok_and(|mut d| d.next().is_some())
    });
    assert!(!outside.exists(), "{} was written", outside.display());
    let beside_home: Vec<String> = std::fs::read_dir(fleet.home.path().parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("evil"))
        .collect();
    assert!(beside_home.is_empty(), "{beside_home:?}");
}

#[test]
fn an_http_controller_is_refused_before_any_connection() {
    let fleet = Fleet::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    fleet.file(
        "fleet.toml",
        "[apps.a]\nscript = \"sleep 1\"\n[deploy.bed]\nhost = \"127.0.0.1\"\npath = \"/srv/a\"\n",
    );
    let mut command = fleet.command(&["status", "bed"]);
    command
        .env("FLEET_CONTROLLER", &url)
        .env("FLEET_TOKEN", "secret-token");
    let output = fleet.run_with(command);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only https://"), "{stderr}");
    // `fleet-agent join` refuses it too, before reading anything else.
    let agent = crate::testbed::agent_binary();
    let output = std::process::Command::new(agent)
        .args(["--home"])
        .arg(fleet.home.path())
        .args(["join", &url, "--ca", "/nonexistent.pem"])
        .env("FLEET_JOIN_TOKEN", "join-token")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("only https://"));
    // The listener never saw a connection.
    assert!(matches!(
        listener.accept(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    ));
}

#[test]
fn a_join_token_is_never_taken_from_the_command_line() {
    let fleet = Fleet::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let join = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(crate::testbed::agent_binary())
            .arg("--home")
            .arg(fleet.home.path())
            .args(["join", &url, "--ca", "/nonexistent.pem"])
            .args(args)
            .env_remove("FLEET_JOIN_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = join(&["fjt_on_argv"], "");
    assert!(stderr.contains("visible to every local user"), "{stderr}");
    assert!(
        !stderr.contains("fjt_on_argv"),
        "the token is not repeated: {stderr}"
    );
    assert!(join(&[], "").contains("no join token given"));
    // A token on stdin is read: the join goes on to the CA file, named.
    let stderr = join(&[], "fjt_from_stdin\n");
    assert!(stderr.contains("/nonexistent.pem"), "{stderr}");
    let file = fleet.home.path().join("token");
    std::fs::write(&file, "fjt_from_file\n").unwrap();
    let stderr = join(&["--token-file", file.to_str().unwrap()], "");
    assert!(stderr.contains("/nonexistent.pem"), "{stderr}");
    // Nothing reached the listener.
    assert!(matches!(
        listener.accept(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    ));
}

#[test]
fn apps_never_inherit_the_operators_credentials() {
    let fleet = Fleet::new();
    fleet.script(
        "env.sh",
        "#!/bin/sh\nenv | sort\necho END-OF-ENV\nexec sleep 1000\n",
    );
    fleet.file(
        "ecosystem.config.json",
        r#"{"apps": [{"name": "envy", "script": "./env.sh", "out_file": "env.out", "env": {"OWN": "kept"}}]}"#,
    );
    let mut command = fleet.command(&["start", "ecosystem.config.json"]);
    command
        .env("FLEET_TOKEN", "operator-token")
        .env("SSH_AUTH_SOCK", "/tmp/agent.sock")
        .env("PM2_SECRET_KEY", "pm2-secret")
        .env("SHELL_VAR", "inherited");
    let output = fleet.run_with(command);
    assert!(output.status.success(), "{output:?}");
    // The whole listing: `sort` may write it in several pieces.
    let out = fleet.path("env.out");
    wait_until(
        "the whole environment listing",
        Duration::from_secs(10),
        || std::fs::read_to_string(&out).is_ok_and(|text| text.contains("END-OF-ENV")),
    );
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(
        env.contains("SHELL_VAR=inherited") && env.contains("OWN=kept"),
        "{env}"
    );
    for secret in [
        "FLEET_TOKEN",
        "SSH_AUTH_SOCK",
        "PM2_SECRET_KEY",
        "FLEET_HOME",
    ] {
        assert!(
            !env.contains(&format!("{secret}=")),
            "{secret} reached the app:\n{env}"
        );
    }
}

#[test]
fn a_word_that_may_name_a_stage_never_runs_an_ecosystem_file() {
    let fleet = Fleet::new();
    let marker = fleet.path("ran");
    fleet.file(
        "ecosystem.config.js",
        &format!(
            "require('fs').writeFileSync({:?}, 'evaluated');\nmodule.exports = {{ apps: [] }};\n",
            marker.display().to_string()
        ),
    );
    fleet.ok(&["start", "/bin/sleep", "--name", "api", "--", "1000"]);
    fleet.ok(&["logs", "api", "--lines", "1"]);
    let _ = fleet.run(&["restart", "api", "web"]);
    let _ = fleet.run(&["stop", "production", "api"]);
    assert!(!marker.exists(), "a command evaluated ecosystem.config.js");
}
