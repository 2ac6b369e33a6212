//! Starting apps: smart start, the duplicate guard, targets, arguments and
//! interpreter detection (PM2 acceptance cases 1-3, 5-9, 11).

use std::time::Duration;

use crate::harness::*;

const SETTLE: Duration = Duration::from_secs(10);

#[test]
fn smart_start_restarts_known_apps_and_guards_duplicates() {
    let fleet = Fleet::new();
    fleet.script("echo.sh", SLEEPER);
    fleet.ok(&["start", "echo.sh"]);
    let list = fleet.list();
    assert_eq!(status_of(&list, "echo"), ["online"]);
    assert_eq!(list[0]["restarts"], 0);
    assert!(list[0]["pid"].as_i64().unwrap() > 0);

    // The same script under the same name again is refused...
    let err = fleet.fails(&["start", "echo.sh"], 1);
    assert!(err.contains("already launched"), "{err}");
    assert_eq!(fleet.list().len(), 1);

    // ...starting a stopped app is not a restart; starting a running one is.
    fleet.ok(&["stop", "echo"]);
    assert_eq!(status_of(&fleet.list(), "echo"), ["stopped"]);
    fleet.ok(&["start", "echo"]);
    let list = fleet.list();
    assert_eq!(
        (list[0]["status"].as_str(), list[0]["restarts"].as_i64()),
        (Some("online"), Some(0))
    );
    fleet.ok(&["start", "echo"]);
    assert_eq!(fleet.list()[0]["restarts"], 1);
    fleet.ok(&["start", "0"]);
    assert_eq!(fleet.list()[0]["restarts"], 2);

    // -f starts a second copy.
    fleet.ok(&["start", "echo.sh", "-f"]);
    let list = fleet.list();
    assert_eq!(status_of(&list, "echo"), ["online", "online"]);
    let instances: Vec<_> = list
        .iter()
        .map(|p| p["instance"].as_i64().unwrap())
        .collect();
    assert_eq!(instances, [0, 1]);
}

#[test]
fn unknown_targets_exit_1() {
    let fleet = Fleet::new();
    for args in [
        &["stop", "all"][..],
        &["restart", "foo"],
        &["restart", "666"],
        &["delete", "10"],
        &["describe", "nope"],
        &["reset", "nope"],
        &["send-signal", "SIGUSR2", "nope"],
        &["start", "does-not-exist.js"],
    ] {
        let err = fleet.fails(args, 1);
        assert!(!err.is_empty(), "{args:?} printed no error");
    }
    fleet.script("a.sh", SLEEPER);
    fleet.ok(&["start", "a.sh"]);
    let err = fleet.fails(&["stop", "a", "ghost"], 1);
    assert!(
        err.contains("ghost"),
        "the error names the unknown target: {err}"
    );
    assert_eq!(status_of(&fleet.list(), "a"), ["online"], "nothing changed");
}

#[test]
fn regex_namespace_and_multiple_targets() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    for (name, namespace) in [("echo-1", "one"), ("echo-2", "one"), ("echo-3", "two")] {
        fleet.ok(&["start", "app.sh", "--name", name, "--namespace", namespace]);
    }
    fleet.ok(&["stop", "/echo-[12]/"]);
    let list = fleet.list();
    assert_eq!(status_of(&list, "echo-1"), ["stopped"]);
    assert_eq!(status_of(&list, "echo-2"), ["stopped"]);
    assert_eq!(status_of(&list, "echo-3"), ["online"]);

    fleet.ok(&["restart", "one"]);
    let list = fleet.list();
    assert_eq!(by_name(&list, "echo-1")[0]["restarts"], 1);
    assert_eq!(
        by_name(&list, "echo-3")[0]["restarts"],
        0,
        "other namespace untouched"
    );

    fleet.ok(&["restart", "echo-1", "echo-2", "echo-3"]);
    let list = fleet.list();
    for (name, restarts) in [("echo-1", 2), ("echo-2", 2), ("echo-3", 1)] {
        assert_eq!(by_name(&list, name)[0]["restarts"], restarts, "{name}");
        assert_eq!(status_of(&list, name), ["online"]);
    }
    fleet.ok(&["delete", "echo-1", "echo-3"]);
    let names: Vec<_> = fleet.list().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, ["echo-2"]);
}

#[test]
fn a_numeric_name_wins_over_an_id() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh", "--name", "first"]);
    fleet.ok(&["start", "app.sh", "--name", "0", "-f"]);
    fleet.ok(&["restart", "0"]);
    let list = fleet.list();
    assert_eq!(by_name(&list, "0")[0]["restarts"], 1);
    assert_eq!(by_name(&list, "first")[0]["restarts"], 0);
}

#[test]
fn arguments_after_double_dash_reach_the_app_verbatim() {
    let fleet = Fleet::new();
    let out = fleet.path("args.txt");
    fleet.script(
        "args.sh",
        &format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> {}; done\nexec sleep 1000\n",
            out.display()
        ),
    );
    fleet.ok(&[
        "start",
        "args.sh",
        "--",
        "--k=v",
        "--k=v",
        "two words",
        "-x",
        "$HOME",
    ]);
    let lines = wait_lines(&out, 5, SETTLE);
    assert_eq!(lines, ["--k=v", "--k=v", "two words", "-x", "$HOME"]);
}

#[test]
fn interpreters_are_chosen_like_pm2() {
    let fleet = Fleet::new();
    fleet.file("app.py", "import time\nwhile True: time.sleep(1)\n");
    fleet.file("app.sh", "while true; do sleep 1; done\n");
    let binary = fleet.path("mybinary");
    std::fs::copy("/bin/sleep", &binary).unwrap();
    fleet.ok(&["start", "app.py"]);
    fleet.ok(&["start", "app.sh"]);
    fleet.ok(&["start", "mybinary", "--", "1000"]);
    fleet.ok(&["start", "sleep", "--name", "from-path", "--", "1000"]);
    fleet.ok(&["start", "sleep 1000 && true", "--name", "command-string"]);

    let interpreter = |target: &str| fleet.describe(target)[0]["config"]["interpreter"].clone();
    assert!(interpreter("app").as_str().unwrap().contains("python"));
    let described = fleet.describe("/^app$/");
    assert_eq!(described.len(), 2, "app.py and app.sh are both named app");
    let interpreters: Vec<_> = described
        .iter()
        .map(|d| d["config"]["interpreter"].clone())
        .collect();
    assert!(
        interpreters.contains(&serde_json::json!("bash")),
        "{interpreters:?}"
    );
    assert_eq!(
        interpreter("mybinary"),
        serde_json::Value::Null,
        "a binary runs directly"
    );
    assert_eq!(interpreter("from-path"), serde_json::Value::Null);
    let command = fleet.describe("command-string")[0]["config"]["command"].clone();
    assert_eq!(command[0], "sh");
    assert_eq!(command[1], "-c");

    let list = fleet.wait_list("every app online", SETTLE, |l| {
        l.len() == 5 && all_status(l, "online")
    });
    assert!(
        list.iter().all(|p| p["restarts"] == 0),
        "none crashed: {list:#?}"
    );
}

#[test]
fn list_json_carries_the_contract_fields() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh", "-i", "2"]);
    let list = fleet.list();
    assert_eq!(list.len(), 2);
    for key in [
        "id",
        "name",
        "namespace",
        "instance",
        "pid",
        "status",
        "restarts",
        "uptime_ms",
        "cpu_percent",
        "memory_bytes",
        "exec_mode",
        "host",
    ] {
        assert!(list[0].get(key).is_some(), "list --json lacks {key}");
    }
    assert_eq!(list[0]["exec_mode"], "fork");
    assert_eq!(list[0]["namespace"], "default");
    // Memory is sampled every second over the whole process tree.
    let list = fleet.wait_list("memory sampled", SETTLE, |l| {
        l.iter()
            .all(|p| p["memory_bytes"].as_u64().unwrap_or(0) > 0)
    });
    assert!(list[0]["cpu_percent"].is_f64());

    let described = fleet.describe("app");
    assert_eq!(described.len(), 2);
    assert!(described[0]["config"].is_object());
    assert!(
        described[0]["log_files"].as_array().unwrap()[0]
            .as_str()
            .unwrap()
            .ends_with("app-out-0.log")
    );
    assert!(described[0]["last_exit"].is_null());

    let table = fleet.ok(&["list"]);
    assert!(table.contains("app") && table.contains("online"), "{table}");
}

#[test]
fn names_pm2_allows_run_and_log_to_safe_file_names() {
    let fleet = Fleet::new();
    fleet.file(
        "names.config.json",
        r#"{"apps": [{"name": "My APP", "script": "/bin/sleep", "args": "100"},
                     {"name": "api/development", "script": "/bin/sleep", "args": "100"}]}"#,
    );
    fleet.ok(&["start", "names.config.json"]);
    // A name is never a path: it cannot write outside FLEET_HOME/logs.
    fleet.ok(&["start", "/bin/sleep", "--name", "../../evil", "--", "100"]);
    fleet.wait_list("three online", Duration::from_secs(10), |l| {
        l.len() == 3 && all_status(l, "online")
    });
    let logs = fleet.home.path().join("logs");
    for file in [
        "My-APP-out.log",
        "api-development-out.log",
        "..-..-evil-out.log",
    ] {
        assert!(logs.join(file).exists(), "{file} in {}", logs.display());
    }
    assert!(!fleet.home.path().join("../../evil-out.log").exists());
    fleet.ok(&["stop", "My APP"]);
    let list = fleet.list();
    assert_eq!(status_of(&list, "My APP"), ["stopped"]);
    assert_eq!(status_of(&list, "api/development"), ["online"]);
}

#[test]
fn pid_file_holds_each_instances_pid_while_it_runs() {
    let fleet = Fleet::new();
    fleet.file(
        "pids.config.json",
        r#"{"apps": [{"name": "one", "script": "/bin/sleep", "args": "100", "pid_file": "run/one.pid"},
                     {"name": "two", "script": "/bin/sleep", "args": "100", "instances": 2, "pid_file": "run/two.pid"}]}"#,
    );
    fleet.ok(&["start", "pids.config.json"]);
    let list = fleet.wait_list("three online", Duration::from_secs(10), |l| {
        l.len() == 3 && all_status(l, "online")
    });
    let pid_of = |name: &str, instance: i64| {
        by_name(&list, name)
            .into_iter()
            .find(|p| p["instance"] == instance)
            .and_then(|p| p["pid"].as_i64())
            .expect("a pid")
    };
    let run = fleet.work.path().join("run");
    let read = |file: &str| std::fs::read_to_string(run.join(file)).unwrap_or_default();
    assert_eq!(read("one.pid").trim(), pid_of("one", 0).to_string());
    assert_eq!(read("two-0.pid").trim(), pid_of("two", 0).to_string());
    assert_eq!(read("two-1.pid").trim(), pid_of("two", 1).to_string());
    fleet.ok(&["stop", "two"]);
    wait_until("two's pid files removed", Duration::from_secs(10), || {
        !run.join("two-0.pid").exists() && !run.join("two-1.pid").exists()
    });
    assert!(run.join("one.pid").exists(), "one still runs");
}

#[test]
fn init_writes_a_fleet_toml_for_the_apps_it_finds_and_they_start() {
    let fleet = Fleet::new();
    fleet.file(
        "package.json",
        r#"{"name": "@acme/shop", "main": "server.js", "scripts": {"start": "node server.js"}}"#,
    );
    fleet.file("server.js", "setInterval(() => {}, 1 << 30);\n");
    fleet.file(
        "worker.py",
        "import time\nwhile True:\n    time.sleep(60)\n",
    );
    fleet.script("run.sh", "#!/bin/sh\nexec sleep 1000\n");
    fleet.file("README.md", "not an app\n");
    let out = fleet.ok(&["init"]);
    assert!(out.contains("with shop, run, worker"), "{out}");
    let err = fleet.fails(&["init"], 2);
    assert!(err.contains("fleet init --force"), "{err}");
    fleet.ok(&["start"]);
    let list = fleet.wait_list("three online", Duration::from_secs(15), |l| {
        l.len() == 3 && all_status(l, "online")
    });
    let mut names: Vec<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["run", "shop", "worker"]);
}
