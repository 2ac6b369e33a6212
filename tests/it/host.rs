//! What an app takes from its host: `env_file` variables read at each start, and
//! `uid`/`gid` running it as another user when the agent is root.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Fleet, all_status, by_name, dead, wait_lines, wait_until};

const TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn env_file_is_read_at_each_start_below_env_and_never_stored() {
    let fleet = Fleet::new();
    fleet.script(
        "show.sh",
        "#!/bin/sh\necho \"A=$A B=$B C=$C\"\nexec sleep 100\n",
    );
    fleet.file(
        ".env",
        "A=from-file\nB=from-file\nC=\"two words\" # comment\n",
    );
    fleet.file(
        "ecosystem.config.json",
        r#"{"apps": [{"name": "envy", "script": "./show.sh", "env_file": ".env",
            "env": {"B": "from-env"}, "out_file": "out.log"}]}"#,
    );
    fleet.ok(&["start", "ecosystem.config.json"]);
    let out = fleet.path("out.log");
    let lines = wait_lines(&out, 1, TIMEOUT);
    assert_eq!(lines[0], "A=from-file B=from-env C=two words");

    // A changed file counts from the next start.
    fleet.file(".env", "A=changed\n");
    fleet.ok(&["restart", "envy"]);
    let lines = wait_lines(&out, 2, TIMEOUT);
    assert_eq!(lines[1], "A=changed B=from-env C=");

    // The values stay on the host: not in the API's answers, not in the saved list.
    fleet.ok(&["save"]);
    let described = fleet.ok(&["describe", "envy", "--json"]);
    assert!(!described.contains("changed"), "{described}");
    let dump = std::fs::read_to_string(fleet.home.path().join("dump.json")).unwrap();
    assert!(!dump.contains("changed"), "{dump}");
    assert!(dump.contains(".env"), "the file's path is kept: {dump}");
}

/// A throwaway account (and a supplementary group) for the test, removed on drop.
struct Account {
    user: String,
    group: String,
}

impl Account {
    fn create(home: &std::path::Path) -> Account {
        let id = std::process::id();
        let account = Account {
            user: format!("fleet-it-u{id}"),
            group: format!("fleet-it-g{id}"),
        };
        run(&["groupadd", &account.group]);
        run(&[
            "useradd",
            "--no-create-home",
            "--home-dir",
            &home.display().to_string(),
            "--groups",
            &account.group,
            "--shell",
            "/bin/sh",
            &account.user,
        ]);
        account
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.user).status();
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed");
}

#[test]
fn uid_and_gid_run_the_app_as_that_user_with_its_home_and_groups() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs the agent to run as root");
        return;
    }
    let fleet = Fleet::new();
    // The app's user has to read its script, as it would in /srv.
    std::fs::set_permissions(fleet.work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = fleet.path("home");
    let account = Account::create(&home);
    fleet.script(
        "who.sh",
        "#!/bin/sh\nsleep 1000 &\necho \"uid=$(id -un) gid=$(id -gn) groups=$(id -Gn) home=$HOME user=$USER child=$!\"\nwait\n",
    );
    fleet.file(
        "ecosystem.config.json",
        &format!(
            r#"{{"apps": [{{"name": "who", "script": "./who.sh", "uid": "{}", "gid": "{}", "out_file": "who.log"}}]}}"#,
            account.user, account.group
        ),
    );
    fleet.ok(&["start", "ecosystem.config.json"]);
    let line = wait_lines(&fleet.path("who.log"), 1, TIMEOUT).remove(0);
    let field = |name: &str| -> String {
        let start = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
        line[start..]
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("uid"), account.user, "{line}");
    assert_eq!(field("gid"), account.group, "{line}");
    assert_eq!(field("home"), home.display().to_string(), "{line}");
    assert_eq!(field("user"), account.user, "{line}");
    assert!(
        line.contains(&account.group),
        "supplementary group missing: {line}"
    );
    // The agent, not the app's user, writes the log, so `fleet logs` reads it.
    let logs = fleet.ok(&["logs", "who", "--lines", "5"]);
    assert!(logs.contains(&format!("uid={}", account.user)), "{logs}");
    let pid = by_name(&fleet.list(), "who")[0]["pid"].as_i64().unwrap() as i32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid_line.contains("\t0\t"), "still root: {uid_line}");

    // Stopping reaches the whole group, the child the app started included.
    let child: i32 = field("child").parse().unwrap();
    fleet.ok(&["stop", "who"]);
    wait_until("the app's child stopped", TIMEOUT, || dead(child));

    // An unknown account is a clear start error, not a run as root.
    fleet.file(
        "bad.config.json",
        r#"{"apps": [{"name": "bad", "script": "./who.sh", "uid": "no-such-user-here", "max_restarts": 1}]}"#,
    );
    fleet.ok(&["start", "bad.config.json"]);
    let list = fleet.wait_list("bad errored", TIMEOUT, |l| {
        by_name(l, "bad")
            .first()
            .is_some_and(|p| p["status"] == "errored")
    });
    assert!(!all_status(&list, "online"));
    let log = fleet.agent_log();
    assert!(
        log.contains("user no-such-user-here: no such user"),
        "{log}"
    );
}
