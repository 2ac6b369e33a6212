//! PM2's own vocabulary: every key of PM2 7's ecosystem schema (`lib/API/schema.json`
//! at Unitech/pm2 31adee80) is accepted with a value of the form PM2 documents, and
//! the keys fleet gives a behaviour (`env_file`, `uid`/`gid`, `pid`) do what they say.

use fleet_config::LogType;

use crate::harness::{Project, expect_errors, expect_ok, summary};

/// `(key, value)` for each key of PM2's schema, values as PM2's docs write them.
const PM2_SCHEMA_KEYS: &[(&str, &str)] = &[
    ("script", r#""app.js""#),
    ("name", r#""api""#),
    ("name_prefix", r#""acme""#),
    ("filter_env", r#"["SECRET"]"#),
    ("namespace", r#""web""#),
    ("install_url", r#""https://example.com/x.tgz""#),
    ("exec_interpreter", r#""node""#),
    ("exec_mode", r#""cluster_mode""#),
    ("instances", "2"),
    ("node_args", r#""--max-old-space-size=512""#),
    ("args", r#""--port 3000""#),
    ("cwd", r#"".""#),
    ("env", r#"{"NODE_ENV": "development"}"#),
    ("env_production", r#"{"NODE_ENV": "production"}"#),
    ("log_date_format", r#""YYYY-MM-DD HH:mm Z""#),
    ("time", "true"),
    ("error_file", r#""logs/err.log""#),
    ("out_file", r#""logs/out.log""#),
    ("log_file", "true"),
    ("merge_logs", "true"),
    ("log_type", r#""json""#),
    ("disable_logs", "false"),
    ("pid_file", r#""app.pid""#),
    ("min_uptime", r#""10s""#),
    ("max_restarts", "10"),
    ("restart_delay", "4000"),
    ("exp_backoff_restart_delay", "100"),
    ("max_memory_restart", r#""500M""#),
    ("cron_restart", r#""0 0 * * *""#),
    ("kill_timeout", "5000"),
    ("kill_retry_time", "100"),
    ("listen_timeout", "8000"),
    ("wait_ready", "true"),
    ("shutdown_with_message", "false"),
    ("stop_exit_codes", "[0]"),
    ("autorestart", "true"),
    ("autostart", "true"),
    ("treekill", "true"),
    ("watch", r#"["src"]"#),
    ("ignore_watch", r#"["node_modules"]"#),
    ("watch_delay", "1000"),
    ("watch_options", r#"{"followSymlinks": false}"#),
    ("port", "3000"),
    ("instance_var", r#""INSTANCE_ID""#),
    ("increment_var", r#""PORT""#),
    ("append_env_to_name", "false"),
    ("source_map_support", "true"),
    ("disable_source_map_support", "false"),
    ("vizion", "false"),
    ("pmx", "true"),
    ("automation", "false"),
    ("trace", "false"),
    ("disable_trace", "true"),
    ("v8", "false"),
    ("event_loop_inspector", "false"),
    ("deep_monitoring", "false"),
    ("io", r#"{"metrics": {"http": true}}"#),
    ("post_update", r#"["npm install"]"#),
    ("force", "false"),
    ("write", "false"),
    ("execute_command", "false"),
    ("windowsHide", "true"),
    ("username", r#""deploy""#),
    ("uid", r#""root""#),
    ("gid", "0"),
];

#[test]
fn every_key_of_pm2s_schema_is_accepted() {
    let project = Project::new();
    project.file("app.js", "");
    std::fs::create_dir_all(project.path().join("src")).unwrap();
    let apps: Vec<String> = PM2_SCHEMA_KEYS
        .iter()
        .enumerate()
        .map(|(i, (key, value))| match *key {
            "script" | "name" => format!(r#"{{"name": "k{i}", "script": "app.js"}}"#),
            _ => format!(r#"{{"name": "k{i}", "script": "app.js", "{key}": {value}}}"#),
        })
        .collect();
    let text = format!(r#"{{"apps": [{}]}}"#, apps.join(",\n"));
    let file = expect_ok(project.json(&text));
    assert_eq!(file.apps.len(), PM2_SCHEMA_KEYS.len());
    // The aliases PM2's schema lists are accepted too.
    let file = expect_ok(project.json(
        r#"{"apps": [{"name": "a", "exec": "app.js", "interpreter": "node",
            "interpreterArgs": "--inspect", "pid": "a.pid", "user": "root",
            "combine_logs": true, "log": true}]}"#,
    ));
    assert_eq!(file.apps[0].user.as_deref(), Some("root"));
    assert!(file.apps[0].pid_file.is_some());
}

#[test]
fn unknown_keys_stay_errors() {
    let project = Project::new();
    project.file("app.js", "");
    let errors = expect_errors(
        project.json(r#"{"apps": [{"name": "a", "script": "app.js", "instnaces": 2}]}"#),
    );
    let (_, key, message) = summary(&errors).remove(0);
    assert_eq!(key, "apps.a.instnaces");
    assert_eq!(message, "unknown key");
    assert!(errors.to_string().contains("instances"), "{errors}");
}

#[test]
fn env_file_paths_resolve_against_cwd_and_are_checked_locally() {
    let project = Project::new();
    project.file("app.js", "");
    project.file(".env", "A=1\nnot an assignment\n");
    let file = expect_ok(project.json(
        r#"{"apps": [{"name": "a", "script": "app.js", "env_file": ".env",
            "env_production": {"B": "2"}},
                     {"name": "b", "script": "app.js", "env_file": [".env", "missing.env"]}]}"#,
    ));
    assert_eq!(file.apps[0].env_files, vec![project.path().join(".env")]);
    assert_eq!(file.apps[1].env_files.len(), 2);
    // `env_file` is not a stage named "file".
    assert!(file.apps[0].env.is_empty(), "{:?}", file.apps[0].env);
    let warnings = file.warnings.join("\n");
    assert!(
        warnings.contains(".env:2 is not a KEY=value line"),
        "{warnings}"
    );
    assert!(
        warnings.contains("missing.env does not exist"),
        "{warnings}"
    );
    // fleet.toml takes it too.
    let file = expect_ok(project.toml("[apps.a]\nscript = \"app.js\"\nenv_file = \".env\"\n"));
    assert_eq!(file.apps[0].env_files.len(), 1);
}

#[test]
fn users_and_groups_are_names_or_numbers() {
    let project = Project::new();
    project.file("app.js", "");
    let file = expect_ok(project.json(
        r#"{"apps": [{"name": "a", "script": "app.js", "uid": "www-data", "gid": 33},
                     {"name": "b", "script": "app.js", "user": 1000}]}"#,
    ));
    assert_eq!(file.apps[0].user.as_deref(), Some("www-data"));
    assert_eq!(file.apps[0].group.as_deref(), Some("33"));
    assert_eq!(file.apps[1].user.as_deref(), Some("1000"));
    let errors = expect_errors(
        project.json(r#"{"apps": [{"name": "a", "script": "app.js", "uid": "bad name;rm"}]}"#),
    );
    let (_, key, message) = summary(&errors).remove(0);
    assert_eq!(key, "apps.a.uid");
    assert!(message.contains("is not a user name"), "{message}");
}

#[test]
fn log_type_other_than_json_writes_raw_lines_as_in_pm2() {
    let project = Project::new();
    project.file("app.js", "");
    let file = expect_ok(
        project.json(r#"{"apps": [{"name": "a", "script": "app.js", "log_type": "format"}]}"#),
    );
    assert_eq!(file.apps[0].logs.log_type, LogType::Raw);
    assert!(file.warnings.iter().any(|w| w.contains("\"format\"")));
    // fleet.toml keeps its strict check.
    expect_errors(project.toml("[apps.a]\nscript = \"app.js\"\nlog_type = \"format\"\n"));
}

#[test]
fn a_pm2_files_relative_paths_start_where_the_command_runs() {
    let project = Project::new();
    project.file("server.js", "");
    // `pm2 start deploy/ecosystem.json` from the project's root.
    let file = expect_ok(project.load_file(
        "deploy/ecosystem.json",
        r#"{"apps": [{"name": "a", "script": "server.js", "out_file": "logs/a.log"}]}"#,
    ));
    assert_eq!(file.apps[0].cwd, project.path());
    let out = file.apps[0].logs.out_file.clone().unwrap_or_default();
    assert_eq!(out, project.path().join("logs/a.log").display().to_string());
    // fleet.toml keeps its own rule: paths start at its directory.
    project.file("deploy/server.js", "");
    let file =
        expect_ok(project.load_file("deploy/fleet.toml", "[apps.a]\nscript = \"server.js\"\n"));
    assert_eq!(file.apps[0].cwd, project.path().join("deploy"));
}

#[test]
fn a_pm2_deploy_section_gets_a_checkout_and_its_post_deploy_starts_the_apps() {
    let project = Project::new();
    project.file("app.js", "");
    let deploy = r#"{"apps": [{"name": "a", "script": "app.js"}],
        "deploy": {"production": {"host": "h", "repo": "git@example.com:a.git",
            "ref": "origin/main", "path": "/srv/a",
            "post-deploy": "npm install && pm2 reload ecosystem.config.js --env production"}}}"#;
    let file = expect_ok(project.json(deploy));
    let stage = &file.deploy["production"];
    assert_eq!(stage.strategy, fleet_config::DeployStrategy::Checkout);
    assert!(stage.post_deploy_starts_apps());
    assert!(stage.hooks_call_pm2());
    // fleet.toml keeps the archive default; a strategy set by hand wins.
    let file = expect_ok(project.toml(
        "[deploy.p]\nhost = \"h\"\nrepo = \"git@example.com:a.git\"\npath = \"/srv/a\"\npost_deploy = \"npm run build\"\n",
    ));
    assert_eq!(
        file.deploy["p"].strategy,
        fleet_config::DeployStrategy::Archive
    );
    assert!(!file.deploy["p"].post_deploy_starts_apps());
    assert!(!file.deploy["p"].hooks_call_pm2());
    for (line, starts) in [
        ("pm2 startOrRestart ecosystem.json --env production", true),
        ("cd app; ./node_modules/.bin/pm2 -s reload all", true),
        ("npm ci && pm2 save", false),
        ("echo pm2 reload", false),
        ("pm2 logs --nostream", false),
    ] {
        assert_eq!(fleet_config::runs_pm2_start(line), starts, "{line}");
    }
}
