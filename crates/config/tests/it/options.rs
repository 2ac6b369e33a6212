//! PM2 compatibility of app options: aliases, camelCase, loose types, env stages,
//! `--only`, and how scripts resolve from a config file.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_config::{ExecMode, Format, Instances, is_config_file, load_unresolved};

use crate::harness::{Project, display, expect_errors, expect_ok, summary};

#[test]
fn pm2_aliases_mean_the_native_keys() {
    let project = Project::new();
    project.file("app.js", "");
    let file = expect_ok(project.json(
        r#"{"apps": [{
            "name": "a", "exec": "app.js", "exec_interpreter": "node", "node_args": "--inspect",
            "out": "o.log", "err": "e.log", "log": "c.log", "combine_logs": false,
            "cron": "*/5 * * * *", "exec_mode": "fork_mode"
        }, {
            "name": "b", "cmd": "app.js", "output": "o.log", "error": "e.log"
        }, {
            "name": "c", "command": "app.js", "out_log": "o.log", "err_log": "e.log"
        }, {
            "name": "d", "script": "app.js", "out_file": "NULL", "err_file": null
        }]}"#,
    ));
    let [a, b, c, d] = &file.apps[..] else {
        panic!()
    };
    let dir = project.path();
    assert_eq!(a.script, "app.js");
    assert_eq!(a.interpreter.as_deref(), Some("node"));
    assert_eq!(a.interpreter_args, ["--inspect"]);
    assert_eq!(
        a.command,
        [
            "node".to_string(),
            "--inspect".to_string(),
            display(&dir.join("app.js"))
        ]
    );
    assert_eq!(a.logs.out_file, Some(display(&dir.join("o.log"))));
    assert_eq!(a.logs.error_file, Some(display(&dir.join("e.log"))));
    assert_eq!(a.logs.log_file, Some(display(&dir.join("c.log"))));
    assert_eq!(a.logs.merge_logs, Some(false));
    assert_eq!(a.cron_restart.as_deref(), Some("*/5 * * * *"));
    assert_eq!(a.exec_mode, ExecMode::Fork);
    assert_eq!(b.logs.out_file, a.logs.out_file);
    assert_eq!(b.logs.error_file, a.logs.error_file);
    assert_eq!(c.logs.out_file, a.logs.out_file);
    assert_eq!(c.logs.error_file, a.logs.error_file);
    // PM2's `NULL` and `null` log paths disable the stream.
    assert_eq!(d.logs.out_file.as_deref(), Some("/dev/null"));
    assert_eq!(d.logs.error_file.as_deref(), Some("/dev/null"));
}

#[test]
fn two_spellings_of_one_option_with_different_values_are_an_error() {
    let project = Project::new();
    project.file("app.js", "");
    project.file("other.js", "");
    let errors =
        expect_errors(project.yaml("apps:\n  - name: a\n    script: app.js\n    exec: other.js\n"));
    assert_eq!(
        summary(&errors),
        [(
            Some(4),
            "apps.a.exec".to_string(),
            "`script` is already set by `script` on line 3".to_string()
        )]
    );
}

#[test]
fn camel_case_keys_are_accepted() {
    let project = Project::new();
    project.file("app.js", "");
    let file = expect_ok(project.json(
        r#"{"apps": [{"name": "a", "script": "app.js", "maxMemoryRestart": "1G", "killTimeout": 3000,
            "minUptime": "10s", "maxRestarts": 3, "restartDelay": 100, "expBackoffRestartDelay": 50,
            "listenTimeout": 100, "waitReady": true, "logDateFormat": "HH:mm", "instanceVar": "ID",
            "mergeLogs": true, "interpreterArgs": ["--x"], "ignoreWatch": "node_modules",
            "envProduction": {"A": "1"}, "stopExitCodes": [3], "cronRestart": "0 * * * *"}]}"#,
    ));
    let app = &file.apps[0];
    assert_eq!(app.max_memory_restart_bytes, Some(1 << 30));
    assert_eq!(app.kill_timeout_ms, 3000);
    assert_eq!(app.min_uptime_ms, 10_000);
    assert_eq!(app.max_restarts, 3);
    assert_eq!(app.restart_delay_ms, 100);
    assert_eq!(app.exp_backoff_restart_delay_ms, Some(50));
    assert_eq!(app.listen_timeout_ms, 100);
    assert!(app.wait_ready);
    assert_eq!(app.logs.log_date_format.as_deref(), Some("HH:mm"));
    assert_eq!(app.instance_var, "ID");
    assert_eq!(app.logs.merge_logs, Some(true));
    assert_eq!(app.interpreter_args, ["--x"]);
    assert_eq!(app.ignore_watch, ["node_modules"]);
    assert_eq!(app.stop_exit_codes, [3]);
    assert_eq!(app.cron_restart.as_deref(), Some("0 * * * *"));

    let staged = expect_ok(
        Project::new()
            .with_stage("production")
            .json(r#"{"apps": {"script": "sleep 1", "envProduction": {"A": "1"}}}"#),
    );
    assert_eq!(staged.apps[0].env.get("A").map(String::as_str), Some("1"));
}

#[test]
fn loose_types_like_pm2() {
    let project = Project::new();
    project.file("app.js", "");
    let file = expect_ok(project.json(
        r#"{"apps": [{"name": 42, "script": "app.js", "instances": "2", "port": "8080",
            "autorestart": "false", "wait_ready": "TRUE", "max_restarts": "5", "kill_timeout": 2.5,
            "args": ["--n", 3, true], "stop_exit_codes": "7",
            "env": {"NUM": 3000, "FLOAT": 1.5, "BOOL": true, "OBJ": {"a": [1, "x"]}, "NIL": null}}]}"#,
    ));
    let app = &file.apps[0];
    assert_eq!(app.name, "42");
    assert_eq!(app.instances, Instances::Count(2));
    assert_eq!(app.port, Some(8080));
    assert!(!app.autorestart);
    assert!(app.wait_ready);
    assert_eq!(app.max_restarts, 5);
    assert_eq!(app.kill_timeout_ms, 3);
    assert_eq!(app.args, ["--n", "3", "true"]);
    assert_eq!(app.stop_exit_codes, [7]);
    let env: BTreeMap<&str, &str> = app
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        BTreeMap::from([
            ("BOOL", "true"),
            ("FLOAT", "1.5"),
            ("NIL", "null"),
            ("NUM", "3000"),
            ("OBJ", r#"{"a":[1,"x"]}"#),
        ])
    );
}

#[test]
fn instances_forms() {
    let project = Project::new();
    let cases = [
        ("4", Instances::Count(4)),
        ("\"4\"", Instances::Count(4)),
        ("\"max\"", Instances::Max),
        ("\"MAX\"", Instances::Max),
        ("0", Instances::Max),
        ("-1", Instances::MaxMinus(1)),
        ("\"-2\"", Instances::MaxMinus(2)),
    ];
    for (value, expected) in cases {
        let text = format!("[apps.a]\nscript = \"sleep 1\"\ninstances = {value}\n");
        let file = expect_ok(project.toml(&text));
        assert_eq!(file.apps[0].instances, expected, "{value}");
    }
}

#[test]
fn env_stage_precedence_deploy_then_env_then_stage() {
    let project = Project::new().with_stage("staging");
    let file = expect_ok(project.toml(
        r#"
[apps.api]
script = "sleep 1"
env = { A = "env", B = "env" }
env_staging = { B = "stage", C = "stage" }
env_production = { B = "production" }

[deploy.staging]
host = "staging.example.com"
path = "/srv/api"
env = { A = "deploy", B = "deploy", D = "deploy" }
"#,
    ));
    let env = &file.apps[0].env;
    assert_eq!(env["A"], "env");
    assert_eq!(env["B"], "stage");
    assert_eq!(env["C"], "stage");
    assert_eq!(env["D"], "deploy");

    // Without `--env`, no stage applies, not even the deploy stage's env.
    let file = expect_ok(Project::new().toml("[apps.api]\nscript = \"sleep 1\"\nenv = { A = \"env\" }\nenv_staging = { A = \"stage\" }\n"));
    assert_eq!(file.apps[0].env["A"], "env");
}

#[test]
fn append_env_to_name_needs_a_stage() {
    let text = "apps:\n  - name: api\n    script: sleep 1\n    append_env_to_name: true\n";
    let file = expect_ok(Project::new().with_stage("production").yaml(text));
    assert_eq!(file.apps[0].name, "api-production");
    let file = expect_ok(Project::new().yaml(text));
    assert_eq!(file.apps[0].name, "api");
}

#[test]
fn only_selects_apps_in_file_order() {
    let text = "[apps.a]\nscript = \"sleep 1\"\n[apps.b]\nscript = \"sleep 2\"\n[apps.c]\nscript = \"sleep 3\"\n";
    let file = expect_ok(Project::new().with_only(&["c", "a"]).toml(text));
    let names: Vec<&str> = file.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);

    let errors = expect_errors(Project::new().with_only(&["a", "zz"]).toml(text));
    assert_eq!(errors.errors.len(), 1);
    assert_eq!(errors.errors[0].key, "--only");
    assert_eq!(errors.errors[0].message, "no app named \"zz\"");
    assert_eq!(
        errors.errors[0].hint.as_deref(),
        Some("apps in this file: a, b, c")
    );
}

#[test]
fn only_skips_resolving_other_apps_scripts() {
    let project = Project::new().with_only(&["web"]);
    project.file("web.js", "");
    let text = "[apps.web]\nscript = \"web.js\"\n[apps.job]\nscript = \"dist/job.js\"\n";
    let file = expect_ok(project.toml(text));
    assert_eq!(file.apps.len(), 1);
    // Other errors in unselected apps still count: nothing starts from a broken file.
    let errors = expect_errors(
        project
            .toml("[apps.web]\nscript = \"web.js\"\n[apps.job]\nscript = \"job.js\"\nport = 0\n"),
    );
    assert_eq!(summary(&errors)[0].1, "apps.job.port");
}

#[test]
fn filter_env_drops_inherited_variables() {
    let project = Project::new();
    let file = expect_ok(project.toml(
        "[apps.a]\nscript = \"sleep 1\"\nfilter_env = true\n[apps.b]\nscript = \"sleep 1\"\nfilter_env = [\"SECRET\", \"LANG\"]\n[apps.c]\nscript = \"sleep 1\"\nfilter_env = \"TOKEN\"\n[apps.d]\nscript = \"sleep 1\"\n",
    ));
    assert!(file.apps[0].inherited_env.is_empty());
    let keys = |i: usize| {
        file.apps[i]
            .inherited_env
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(1), ["HOME", "PATH"]);
    assert_eq!(keys(2), ["HOME", "LANG", "PATH"]);
    assert_eq!(file.apps[3].inherited_env, project.opts.inherited_env);
}

#[test]
fn time_does_not_replace_a_custom_log_date_format() {
    // PM2 #5466: `time: true` overrode a custom format there.
    let file = expect_ok(Project::new().toml(
        "[apps.a]\nscript = \"sleep 1\"\ntime = true\nlog_date_format = \"HH:mm:ss\"\n[apps.b]\nscript = \"sleep 1\"\ntime = true\n[apps.c]\nscript = \"sleep 1\"\ntime = false\n",
    ));
    assert_eq!(
        file.apps[0].logs.log_date_format.as_deref(),
        Some("HH:mm:ss")
    );
    assert_eq!(
        file.apps[1].logs.log_date_format.as_deref(),
        Some("YYYY-MM-DDTHH:mm:ss")
    );
    assert_eq!(file.apps[2].logs.log_date_format, None);
}

#[test]
fn watch_paths_are_relative_to_cwd() {
    let project = Project::new();
    std::fs::create_dir(project.path().join("srv")).unwrap();
    let file = expect_ok(project.toml(
        "[apps.a]\nscript = \"sleep 1\"\ncwd = \"srv\"\nwatch = true\n[apps.b]\nscript = \"sleep 1\"\ncwd = \"srv\"\nwatch = \"lib\"\n[apps.c]\nscript = \"sleep 1\"\nwatch = false\n",
    ));
    let srv = project.path().join("srv");
    assert_eq!(file.apps[0].watch, std::slice::from_ref(&srv));
    assert_eq!(file.apps[0].cwd, srv);
    assert_eq!(file.apps[1].watch, [srv.join("lib")]);
    assert!(file.apps[2].watch.is_empty());
}

#[test]
fn defaults_are_pm2s() {
    let project = Project::new();
    let file = expect_ok(project.toml("[apps.a]\nscript = \"sleep 1\"\n"));
    let app = &file.apps[0];
    assert_eq!(app.namespace, "default");
    assert_eq!(app.instances, Instances::Count(1));
    assert_eq!(app.exec_mode, ExecMode::Fork);
    assert!(app.autorestart && app.autostart);
    assert_eq!(app.max_restarts, 16);
    assert_eq!(app.min_uptime_ms, 1000);
    assert_eq!(app.kill_timeout_ms, 1600);
    assert_eq!(app.listen_timeout_ms, 3000);
    assert_eq!(app.kill_signal, "SIGINT");
    assert_eq!(app.instance_var, "FLEET_APP_INSTANCE");
    assert_eq!(app.cwd, project.path());
    assert_eq!(app.logs, Default::default());
}

#[test]
fn node_only_keys_warn_and_are_ignored() {
    let project = Project::new();
    let file = expect_ok(project.toml(
        "[apps.a]\nscript = \"sleep 1\"\nvizion = false\npmx = true\ntreekill = true\nwindowsHide = true\nsource_map_support = true\nforce = true\n",
    ));
    assert_eq!(file.warnings.len(), 5, "{:?}", file.warnings);
    assert_eq!(
        file.warnings[0],
        "fleet.toml:3: apps.a.vizion: ignored: a node-only pm2 option"
    );
    assert!(file.warnings.iter().any(|w| {
        w.contains("apps.a.treekill: ignored: fleet always stops the whole process group")
    }));
}

#[test]
fn cluster_without_port_warns() {
    let file = expect_ok(
        Project::new()
            .toml("[apps.a]\nscript = \"sleep 1\"\nexec_mode = \"cluster\"\ninstances = 2\n"),
    );
    assert_eq!(file.warnings.len(), 1);
    assert!(file.warnings[0].starts_with("fleet.toml:3: apps.a.exec_mode: without `port`"));
}

#[test]
fn document_shapes() {
    let project = Project::new();
    // A bare list of apps, a single app object, one app at the top level, and
    // fleet.toml's name-keyed shape in JSON.
    for text in [
        r#"[{"name": "a", "script": "sleep 1"}]"#,
        r#"{"apps": {"name": "a", "script": "sleep 1"}}"#,
        r#"{"name": "a", "script": "sleep 1"}"#,
        r#"{"apps": {"a": {"script": "sleep 1"}}}"#,
    ] {
        let file = expect_ok(project.json(text));
        assert_eq!(file.apps.len(), 1, "{text}");
        assert_eq!(file.apps[0].name, "a", "{text}");
    }
    // TOML's array of tables.
    let file = expect_ok(
        project
            .toml("[[apps]]\nname = \"a\"\nscript = \"sleep 1\"\n[[apps]]\nscript = \"sleep 2\"\n"),
    );
    let names: Vec<&str> = file.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "sleep"]);
    // An empty file has no apps and is not an error.
    assert!(expect_ok(project.yaml("")).apps.is_empty());
}

#[test]
fn yaml_anchors_share_settings() {
    // A top-level key holding the anchor is ignored, as PM2 ignores it (a warning);
    // a likely typo of `apps` is still an error.
    let text = "defaults: &defaults\n  autorestart: false\n  max_restarts: 2\napps:\n  - <<: *defaults\n    name: a\n    script: sleep 1\n";
    let file = expect_ok(Project::new().yaml(text));
    assert_eq!(file.apps[0].max_restarts, 2);
    assert!(!file.apps[0].autorestart);
    assert!(
        file.warnings[0].contains("defaults: ignored, as PM2 ignores it"),
        "{:?}",
        file.warnings
    );
    let errors = expect_errors(Project::new().yaml("app:\n  - name: a\n    script: sleep 1\n"));
    assert_eq!(summary(&errors)[0].2, "unknown key");
    let text = "apps:\n  - &base\n    name: a\n    script: sleep 1\n    max_restarts: 3\n  - <<: *base\n    name: b\n";
    let file = expect_ok(Project::new().yaml(text));
    assert_eq!(file.apps[1].name, "b");
    assert_eq!(file.apps[1].max_restarts, 3);
}

#[test]
fn scripts_resolve_from_config_files() {
    let project = Project::new();
    let py = project.file("jobs/clean.py", "");
    let sh = project.file("run.sh", "");
    let shebang = project.executable("tool", "#!/bin/sh\n");
    let elf = project.path().join("true-copy");
    std::fs::copy("/bin/true", &elf).unwrap();
    let plain = project.file("server", "console.log(1)\n");
    let file = expect_ok(project.toml(
        r#"
[apps.py]
script = "jobs/clean.py"
[apps.sh]
script = "run.sh"
[apps.shebang]
script = "tool"
[apps.elf]
script = "true-copy"
[apps.plain]
script = "server"
[apps.redis]
script = "redis-server"
args = "--port 7000"
[apps.npm]
script = "npm run start"
args = ["--", "--port", "3000"]
[apps.direct]
script = "tool"
interpreter = "none"
"#,
    ));
    let commands: Vec<Vec<String>> = file.apps.iter().map(|a| a.command.clone()).collect();
    let fake = |p: &str| display(&project.path().join(".fakebin").join(p));
    assert_eq!(commands[0], ["python3".to_string(), display(&py)]);
    assert_eq!(commands[1], ["bash".to_string(), display(&sh)]);
    assert_eq!(commands[2], [display(&shebang)]);
    assert_eq!(commands[3], [display(&elf)]);
    assert_eq!(commands[4], ["node".to_string(), display(&plain)]);
    assert_eq!(commands[5], [fake("redis-server")]);
    assert_eq!(file.apps[5].args, ["--port", "7000"]);
    assert_eq!(commands[6], ["sh", "-c", "npm run start \"$@\"", "sh"]);
    assert_eq!(file.apps[6].args, ["--", "--port", "3000"]);
    assert_eq!(commands[7], [display(&shebang)]);
    assert_eq!(file.apps[7].interpreter, None);
    assert_eq!(file.apps[0].script, "jobs/clean.py");
}

#[test]
fn unresolved_loading_skips_script_lookup() {
    let project = Project::new();
    project.file("fleet.toml", "[apps.api]\nscript = \"dist/server.js\"\ninterpreter = \"bun\"\n[apps.b]\nscript = \"x\"\ninterpreter = \"none\"\n");
    let file = expect_ok(load_unresolved(Path::new("fleet.toml"), &project.opts));
    assert!(file.apps[0].command.is_empty());
    assert_eq!(file.apps[0].interpreter.as_deref(), Some("bun"));
    assert_eq!(file.apps[1].interpreter, None);
    let errors = expect_errors(fleet_config::load(Path::new("fleet.toml"), &project.opts));
    assert_eq!(
        summary(&errors),
        [
            (
                Some(2),
                "apps.api.script".to_string(),
                "script not found: dist/server.js".to_string()
            ),
            (
                Some(5),
                "apps.b.script".to_string(),
                "script not found: x".to_string()
            ),
        ]
    );
}

#[test]
fn files_are_found_relative_to_the_cli_cwd() {
    let project = Project::new();
    project.file("deploy/app.js", "");
    project.file("deploy/fleet.toml", "[apps.a]\nscript = \"app.js\"\n");
    let file = expect_ok(fleet_config::load(
        Path::new("deploy/fleet.toml"),
        &project.opts,
    ));
    assert_eq!(file.path, project.path().join("deploy/fleet.toml"));
    assert_eq!(file.apps[0].cwd, project.path().join("deploy"));
    assert_eq!(
        file.apps[0].source,
        Some(project.path().join("deploy/fleet.toml"))
    );
}

#[test]
fn config_file_names() {
    for yes in [
        "fleet.toml",
        "ecosystem.json",
        "ecosystem.yaml",
        "pm2.yml",
        "ecosystem.config.js",
        "ecosystem.config.cjs",
        "app.config.mjs",
        "ecosystem.js",
        "ecosystem-prod.js",
        "/etc/fleet/FLEET.TOML",
    ] {
        assert!(is_config_file(Path::new(yes)), "{yes}");
    }
    for no in [
        "app.js",
        "server.mjs",
        "worker.py",
        "run.sh",
        "Makefile",
        "config",
        ".toml",
    ] {
        assert!(!is_config_file(Path::new(no)), "{no}");
    }
}

#[test]
fn load_str_accepts_every_format() {
    let project = Project::new();
    for (format, text) in [
        (Format::Toml, "[apps.a]\nscript = \"sleep 1\"\n"),
        (
            Format::Json,
            r#"{"apps": [{"name": "a", "script": "sleep 1"}]}"#,
        ),
        (Format::Yaml, "apps:\n  - name: a\n    script: sleep 1\n"),
    ] {
        let file = expect_ok(project.load(format, text));
        assert_eq!(file.apps[0].command, ["sh", "-c", "sleep 1"]);
    }
}

#[test]
fn rotation_readiness_cron_zone_and_watch_delay_keys() {
    let project = Project::new();
    project.file("app.js", "");
    let file = expect_ok(project.toml(
        r#"
[apps.api]
script = "app.js"
exec_mode = "proxy"
port = 3000
max_size = "1M"
retain = 3
compress = true
rotate_interval = "0 * * * *"
cron_restart = "0 3 * * *"
cron_timezone = "Europe/Paris"
watch_delay = "2s"
health_check = { path = "/health", interval = "500ms", timeout = 1000 }
balance = "least-connections"

[apps.plain]
script = "app.js"
rotate_interval = false
health_check = "/up"
"#,
    ));
    let api = &file.apps[0];
    assert_eq!(api.logs.rotation.max_size_bytes, 1024 * 1024);
    assert_eq!(api.logs.rotation.retain, 3);
    assert!(api.logs.rotation.compress);
    assert_eq!(api.logs.rotation.interval.as_deref(), Some("0 * * * *"));
    assert_eq!(api.cron_timezone.as_deref(), Some("Europe/Paris"));
    assert_eq!(api.watch_delay_ms, 2000);
    let check = api.health_check.as_ref().unwrap();
    assert_eq!(
        (check.path.as_str(), check.interval_ms, check.timeout_ms),
        ("/health", 500, 1000)
    );
    assert_eq!(api.balance, fleet_config::Balance::LeastConnections);
    let plain = &file.apps[1];
    assert_eq!(
        plain.logs.rotation.interval, None,
        "false disables rotation by time"
    );
    assert_eq!(plain.health_check.as_ref().unwrap().path, "/up");
    assert_eq!(
        plain.logs.rotation.max_size_bytes,
        fleet_config::DEFAULT_ROTATE_MAX_SIZE
    );
}

#[test]
fn bad_readiness_and_zone_values_are_errors() {
    let project = Project::new();
    project.file("app.js", "");
    let errors = expect_errors(project.toml(
        r#"
[apps.api]
script = "app.js"
health_check = { path = "health", every = "1s" }
balance = "random"
cron_timezone = "../etc/passwd"
"#,
    ));
    let text = errors.to_string();
    assert!(text.contains("health_check"), "{text}");
    assert!(
        text.contains("every"),
        "unknown key inside health_check: {text}"
    );
    assert!(text.contains("balance"), "{text}");
    assert!(text.contains("cron_timezone"), "{text}");
}

#[test]
fn shutdown_with_message_is_taken_and_node_cluster_apps_need_no_port() {
    let project = Project::new();
    project.file("app.js", "");
    let file = expect_ok(project.json(
        r#"{"apps": [{"name": "a", "script": "app.js", "shutdown_with_message": true,
            "instances": 2, "exec_mode": "cluster"}]}"#,
    ));
    let app = &file.apps[0];
    assert!(app.shutdown_with_message);
    // A Node app in cluster mode shares what it listens on (the agent is its cluster
    // primary): no warning about a missing `port`.
    assert!(
        file.warnings.iter().all(|w| !w.contains("port")),
        "{:?}",
        file.warnings
    );
}

#[test]
fn a_pm2_file_runs_a_node_app_with_instances_in_cluster_mode_as_pm2_does() {
    let project = Project::new();
    project.file("app.js", "");
    project.file("worker.py", "");
    let file = expect_ok(project.json(
        r#"{"apps": [{"name": "api", "script": "app.js", "instances": 4},
                     {"name": "one", "script": "app.js"},
                     {"name": "py", "script": "worker.py", "instances": 2},
                     {"name": "forked", "script": "app.js", "instances": 2, "exec_mode": "fork"}]}"#,
    ));
    let modes: Vec<(&str, ExecMode)> = file
        .apps
        .iter()
        .map(|a| (a.name.as_str(), a.exec_mode))
        .collect();
    assert_eq!(
        modes,
        [
            ("api", ExecMode::Cluster),
            ("one", ExecMode::Fork),
            ("py", ExecMode::Fork),
            ("forked", ExecMode::Fork)
        ]
    );
    // fleet.toml keeps fleet's own default: fork unless exec_mode says otherwise.
    let file = expect_ok(project.toml("[apps.api]\nscript = \"app.js\"\ninstances = 4\n"));
    assert_eq!(file.apps[0].exec_mode, ExecMode::Fork);
}

#[test]
fn one_option_under_two_of_its_names_is_taken_when_the_values_agree() {
    let project = Project::new();
    project.file("app.js", "");
    let file = expect_ok(project.json(
        r#"{"apps": [{"name": "a", "script": "app.js", "merge_logs": true, "combine_logs": true}]}"#,
    ));
    assert_eq!(file.apps[0].logs.merge_logs, Some(true));
    let errors = expect_errors(project.json(
        r#"{"apps": [{"name": "a", "script": "app.js", "merge_logs": true, "combine_logs": false}]}"#,
    ));
    assert!(
        errors.to_string().contains("already set by `merge_logs`"),
        "{errors}"
    );
}

#[test]
fn node_at_a_version_runs_that_version_from_nvm() {
    let mut project = Project::new();
    project.file("app.js", "");
    let nvm = project.path().join("nvm");
    let node = nvm.join("versions/node/v20.12.2/bin/node");
    std::fs::create_dir_all(node.parent().unwrap()).unwrap();
    crate::harness::write_executable(&node, "#!/bin/sh\n");
    let mut env = (*project.opts.inherited_env).clone();
    env.insert("NVM_DIR".into(), display(&nvm));
    project.opts.inherited_env = env.into();
    let file = expect_ok(
        project.json(r#"{"apps": [{"name": "a", "script": "app.js", "interpreter": "node@20"}]}"#),
    );
    assert_eq!(file.apps[0].command[0], display(&node));
    let errors =
        expect_errors(project.json(
            r#"{"apps": [{"name": "a", "script": "app.js", "interpreter": "node@18.19.0"}]}"#,
        ));
    let (_, key, message) = summary(&errors).remove(0);
    assert_eq!(key, "apps.a.interpreter");
    assert!(
        message.starts_with("node@18.19.0 is not installed here (looked in "),
        "{message}"
    );
    assert!(
        message.contains(&display(&nvm.join("versions/node"))),
        "{message}"
    );
}

#[test]
fn liveness_keys_health_fail_count_and_watchdog() {
    let project = Project::new();
    let file = expect_ok(project.toml(
        "[apps.a]\nscript = \"sleep 1\"\nhealth_check = \"/health\"\nhealth_fail_count = 5\nwatchdog = \"10s\"\n[apps.b]\nscript = \"sleep 1\"\nhealth_check = \"/\"\n",
    ));
    assert_eq!(file.apps[0].health_check.as_ref().unwrap().fail_count, 5);
    assert_eq!(file.apps[0].watchdog_ms, Some(10_000));
    assert_eq!(file.apps[1].health_check.as_ref().unwrap().fail_count, 3);
    let errors = expect_errors(
        project
            .toml("[apps.a]\nscript = \"sleep 1\"\nhealth_fail_count = 2\nwatchdog = \"10ms\"\n"),
    );
    let messages: Vec<String> = summary(&errors)
        .into_iter()
        .map(|(_, k, m)| format!("{k}: {m}"))
        .collect();
    assert_eq!(
        messages,
        [
            "apps.a.health_fail_count: counts failed health checks, and there is no `health_check`",
            "apps.a.watchdog: must be at least 100ms",
        ]
    );
}
