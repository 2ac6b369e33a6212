//! Config files end to end: bad files start nothing and exit 2 naming file, line and
//! key; env precedence with `--env`; `--update-env`; `--only`; PM2 ecosystem files.

use std::time::Duration;

use crate::harness::*;

const SETTLE: Duration = Duration::from_secs(10);

#[test]
fn a_bad_config_exits_2_names_file_line_and_key_and_starts_nothing() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.file(
        "fleet.toml",
        "[apps.good]\nscript = \"app.sh\"\n\n[apps.bad]\nscript = \"app.sh\"\ninstancs = 2\nport = \"http\"\n",
    );
    let err = fleet.fails(&["start", "fleet.toml"], 2);
    assert!(err.contains("fleet.toml:6"), "names file and line: {err}");
    assert!(err.contains("instancs"), "names the key: {err}");
    assert!(err.contains("instances"), "suggests the right key: {err}");
    assert!(err.contains("port"), "every error at once: {err}");
    assert!(fleet.list().is_empty(), "nothing started");

    fleet.file(
        "ecosystem.json",
        "{\"apps\": [{\"name\": \"x\", \"script\": \"app.sh\", \"maxRestarts\": \"many\"}]}",
    );
    let err = fleet.fails(&["start", "ecosystem.json"], 2);
    assert!(
        err.contains("ecosystem.json:1") && err.contains("maxRestarts"),
        "{err}"
    );
    assert!(fleet.list().is_empty());
}

#[test]
fn env_precedence_follows_pm2_and_update_env_refreshes() {
    let fleet = Fleet::new();
    let out = fleet.path("env.txt");
    fleet.script(
        "env.sh",
        &format!(
            "#!/bin/sh\necho \"A=$A B=$B C=$C SHELL_VAR=$SHELL_VAR\" >> {}\nexec sleep 1000\n",
            out.display()
        ),
    );
    fleet.file(
        "fleet.toml",
        r#"
[apps.env]
script = "env.sh"
env = { A = "env", B = "env" }
env_production = { B = "production" }

[deploy.production]
host = "localhost"
repo = "."
ref = "origin/main"
path = "/srv/app"
env = { A = "deploy", C = "deploy" }
"#,
    );
    let mut start = fleet.command(&["start", "fleet.toml", "--env", "production"]);
    start.env("SHELL_VAR", "one");
    let output = fleet.run_with(start);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        wait_lines(&out, 1, SETTLE)[0],
        "A=env B=production C=deploy SHELL_VAR=one"
    );

    // The environment is kept across restarts...
    let mut restart = fleet.command(&["restart", "env"]);
    restart.env("SHELL_VAR", "two");
    assert!(fleet.run_with(restart).status.success());
    assert_eq!(
        wait_lines(&out, 2, SETTLE)[1],
        "A=env B=production C=deploy SHELL_VAR=one"
    );

    // ...until --update-env.
    let mut restart = fleet.command(&["restart", "env", "--update-env"]);
    restart.env("SHELL_VAR", "two");
    assert!(fleet.run_with(restart).status.success());
    assert_eq!(
        wait_lines(&out, 3, SETTLE)[2],
        "A=env B=production C=deploy SHELL_VAR=two"
    );

    // Without --env the base env applies: restarting from the file switches it.
    assert!(
        fleet
            .run_with(fleet.command(&["restart", "fleet.toml"]))
            .status
            .success()
    );
    assert!(wait_lines(&out, 4, SETTLE)[3].starts_with("A=env B=env C= "));
}

#[test]
fn only_limits_a_config_file_and_instances_get_their_numbers() {
    let fleet = Fleet::new();
    let out = fleet.path("instances.txt");
    fleet.script(
        "inst.sh",
        &format!(
            "#!/bin/sh\necho \"$NAME_OF_APP $FLEET_APP_INSTANCE $NODE_APP_INSTANCE $PORT\" >> {}\nexec sleep 1000\n",
            out.display()
        ),
    );
    fleet.file(
        "ecosystem.config.js",
        r#"module.exports = {
  apps: [
    { name: "api", script: "inst.sh", instances: 2, increment_var: "PORT", env: { PORT: 3000, NAME_OF_APP: "api" } },
    { name: "worker", script: "inst.sh", env: { NAME_OF_APP: "worker" } },
  ],
};
"#,
    );
    fleet.ok(&["start", "ecosystem.config.js", "--only", "api"]);
    let mut lines = wait_lines(&out, 2, SETTLE);
    lines.sort();
    assert_eq!(lines, ["api 0 0 3000", "api 1 1 3001"]);
    let list = fleet.list();
    assert_eq!(list.len(), 2, "worker was not started: {list:#?}");
    fleet.ok(&["start", "ecosystem.config.js"]);
    fleet.wait_list("worker online", SETTLE, |l| {
        status_of(l, "worker") == ["online"]
    });
    assert_eq!(
        by_name(&fleet.list(), "api")[0]["restarts"],
        1,
        "start of a file restarts what runs"
    );
    fleet.ok(&["stop", "ecosystem.config.js", "--only", "worker"]);
    let list = fleet.list();
    assert_eq!(status_of(&list, "worker"), ["stopped"]);
    assert_eq!(status_of(&list, "api"), ["online", "online"]);
}

#[test]
fn describe_redacts_secrets() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.file(
        "fleet.toml",
        "[apps.app]\nscript = \"app.sh\"\nenv = { DB_PASSWORD = \"hunter2\", MODE = \"fast\" }\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let described = fleet.describe("app");
    assert_eq!(described[0]["config"]["env"]["DB_PASSWORD"], "[redacted]");
    assert_eq!(described[0]["config"]["env"]["MODE"], "fast");
    let text = fleet.ok(&["describe", "app"]);
    assert!(!text.contains("hunter2"));
}
