//! Error reporting: every error of a file at once, each with file, line, key path and
//! a hint where one is known, in every format.

use fleet_config::{ConfigError, ConfigErrors};

use crate::harness::{Project, expect_errors, summary};

fn one(errors: &ConfigErrors) -> &ConfigError {
    assert_eq!(errors.errors.len(), 1, "{errors}");
    &errors.errors[0]
}

#[test]
fn unknown_key_with_line_and_hint_in_toml() {
    let errors =
        expect_errors(Project::new().toml("[apps.api]\nscript = \"sleep 1\"\ninstancs = 2\n"));
    let error = one(&errors);
    assert_eq!(error.line, Some(3));
    assert_eq!(error.key, "apps.api.instancs");
    assert_eq!(error.message, "unknown key");
    assert_eq!(error.hint.as_deref(), Some("did you mean `instances`?"));
    assert_eq!(
        errors.to_string(),
        "fleet.toml:3: apps.api.instancs: unknown key\n  hint: did you mean `instances`?"
    );
}

#[test]
fn unknown_key_with_line_and_hint_in_json() {
    let text = "{\n  \"apps\": [\n    {\n      \"name\": \"api\",\n      \"script\": \"sleep 1\",\n      \"max_memory_restat\": \"1G\"\n    }\n  ]\n}\n";
    let errors = expect_errors(Project::new().json(text));
    let error = one(&errors);
    assert_eq!(
        (error.line, error.key.as_str()),
        (Some(6), "apps.api.max_memory_restat")
    );
    assert_eq!(
        error.hint.as_deref(),
        Some("did you mean `max_memory_restart`?")
    );
    assert_eq!(error.file, std::path::Path::new("ecosystem.json"));
}

#[test]
fn unknown_key_with_line_and_hint_in_yaml() {
    let text = "apps:\n  - name: api\n    script: sleep 1\n    exec_interpretr: python3\n";
    let errors = expect_errors(Project::new().yaml(text));
    let error = one(&errors);
    assert_eq!(
        (error.line, error.key.as_str()),
        (Some(4), "apps.api.exec_interpretr")
    );
    // The hint names the native key, not the alias that was nearly typed.
    assert_eq!(error.hint.as_deref(), Some("did you mean `interpreter`?"));
}

#[test]
fn unknown_keys_everywhere_are_reported() {
    let text = r#"
[app.api]
script = "x"

[apps.web]
script = "sleep 1"
envv = { A = "1" }

[deploy.production]
host = "h"
path = "/srv"
keep_release = 2

[controller]
url = "https://c:7443"
token = "x"
"#;
    let errors = expect_errors(Project::new().toml(text));
    assert_eq!(
        summary(&errors),
        [
            (Some(2), "app".to_string(), "unknown key".to_string()),
            (
                Some(7),
                "apps.web.envv".to_string(),
                "unknown key".to_string()
            ),
            (
                Some(12),
                "deploy.production.keep_release".to_string(),
                "unknown key".to_string()
            ),
            (
                Some(16),
                "controller.token".to_string(),
                "unknown key".to_string()
            ),
        ]
    );
    assert_eq!(
        errors.errors[0].hint.as_deref(),
        Some("did you mean `apps`?")
    );
    assert_eq!(
        errors.errors[1].hint.as_deref(),
        Some("did you mean `env`?")
    );
    assert_eq!(
        errors.errors[2].hint.as_deref(),
        Some("did you mean `keep_releases`?")
    );
}

#[test]
fn every_error_of_a_file_is_reported_at_once() {
    let text = r#"
[apps.api]
script = "sleep 1"
instances = "lots"
port = 70000
kill_signal = "SIGFOO"
min_uptime = ["1s"]
restart_delay = -5
max_memory_restart = "12Q"
cron_restart = "* * *"
exec_mode = "swarm"
autorestart = "yes"
stop_exit_codes = [0, 300]
log_type = "xml"

[apps.worker]
instances = 1
"#;
    let errors = expect_errors(Project::new().toml(text));
    let expected = [
        (
            4,
            "apps.api.instances",
            "expected a number, \"max\" or a negative number (CPUs minus n), got \"lots\"",
        ),
        (
            5,
            "apps.api.port",
            "expected a number from 1 to 65535, got 70000",
        ),
        (6, "apps.api.kill_signal", "unknown signal \"SIGFOO\""),
        (
            7,
            "apps.api.min_uptime",
            "expected a number of milliseconds or a duration like \"5s\", got an array",
        ),
        (
            8,
            "apps.api.restart_delay",
            "a duration cannot be negative, got -5",
        ),
        (
            9,
            "apps.api.max_memory_restart",
            "expected a number of bytes or a size like \"200M\", got \"12Q\"",
        ),
        (
            10,
            "apps.api.cron_restart",
            "a cron pattern has 5 or 6 fields, got 3 in \"* * *\"",
        ),
        (
            11,
            "apps.api.exec_mode",
            "expected \"fork\", \"cluster\" or \"proxy\", got \"swarm\"",
        ),
        (
            12,
            "apps.api.autorestart",
            "expected true or false, got \"yes\"",
        ),
        (
            13,
            "apps.api.stop_exit_codes[1]",
            "expected an exit code from 0 to 255, got 300",
        ),
        (
            14,
            "apps.api.log_type",
            "expected \"raw\" or \"json\", got \"xml\"",
        ),
        (16, "apps.worker", "missing `script`"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(line, key, message)| (Some(*line), key.to_string(), message.to_string()))
        .collect();
    assert_eq!(summary(&errors), expected);
    let rendered = errors.to_string();
    assert_eq!(
        rendered
            .lines()
            .filter(|l| l.starts_with("fleet.toml:"))
            .count(),
        expected.len()
    );
}

#[test]
fn wrong_types_name_what_was_expected_in_the_users_terms() {
    let text = "apps:\n  - name: api\n    script: sleep 1\n    min_uptime: [1]\n    env: 3\n    args: {a: 1}\n";
    let errors = expect_errors(Project::new().yaml(text));
    assert_eq!(
        summary(&errors),
        [
            (
                Some(4),
                "apps.api.min_uptime".to_string(),
                "expected a number of milliseconds or a duration like \"5s\", got a list"
                    .to_string()
            ),
            (
                Some(5),
                "apps.api.env".to_string(),
                "expected an object of environment variables, got a number".to_string()
            ),
            (
                Some(6),
                "apps.api.args".to_string(),
                "expected a string or a list of strings, got an object".to_string()
            ),
        ]
    );
}

#[test]
fn bad_ports() {
    for (value, message) in [
        ("0", "expected a number from 1 to 65535, got 0"),
        ("\"abc\"", "expected a whole number, got \"abc\""),
        ("80.5", "expected a whole number, got 80.5"),
    ] {
        let errors = expect_errors(
            Project::new().toml(&format!("[apps.a]\nscript = \"sleep 1\"\nport = {value}\n")),
        );
        assert_eq!(one(&errors).message, message, "{value}");
    }
}

#[test]
fn bad_durations_and_sizes() {
    for (key, value, message) in [
        (
            "kill_timeout",
            "\"5x\"",
            "expected a number of milliseconds or a duration like \"5s\", got \"5x\"",
        ),
        (
            "min_uptime",
            "\"-1s\"",
            "a duration cannot be negative, got \"-1s\"",
        ),
        (
            "listen_timeout",
            "true",
            "expected a number of milliseconds or a duration like \"5s\", got a boolean",
        ),
        ("max_memory_restart", "0", "must be more than 0 bytes"),
        (
            "max_memory_restart",
            "\"-3M\"",
            "a size cannot be negative, got \"-3M\"",
        ),
        (
            "instances",
            "5000",
            "expected at most 1024 instances, got 5000",
        ),
        (
            "instances",
            "1.5",
            "expected a number, \"max\" or a negative number (CPUs minus n), got 1.5",
        ),
        (
            "max_restarts",
            "-1",
            "expected a number from 0 to 4294967295, got -1",
        ),
    ] {
        let text = format!("[apps.a]\nscript = \"sleep 1\"\n{key} = {value}\n");
        let errors = expect_errors(Project::new().toml(&text));
        let error = one(&errors);
        assert_eq!(
            (error.line, error.message.as_str()),
            (Some(3), message),
            "{key} = {value}"
        );
    }
}

#[test]
fn bad_names() {
    // PM2 takes `My APP` and `api/development`; fleet does too (see options.rs), but not
    // names targets would misread, nor `all`.
    let errors = expect_errors(
        Project::new()
            .toml("[apps.\"#1\"]\nscript = \"sleep 1\"\n[apps.all]\nscript = \"sleep 1\"\n"),
    );
    assert_eq!(
        summary(&errors),
        [
            (
                Some(1),
                "apps.\"#1\"".to_string(),
                "\"#1\" cannot start with `/` or `#`: targets read those as a regex or an id"
                    .to_string()
            ),
            (
                Some(3),
                "apps.all".to_string(),
                "`all` is reserved: it targets every app".to_string()
            ),
        ]
    );
    let errors =
        expect_errors(Project::new().toml("[apps.a]\nscript = \"sleep 1\"\nnamespace = \"a/b\"\n"));
    assert_eq!(one(&errors).key, "apps.a.namespace");
    // A name derived from the script must be valid too.
    let errors = expect_errors(Project::new().json(r#"[{"script": "/"}]"#));
    assert!(
        one(&errors)
            .message
            .starts_with("cannot name the app after its script"),
        "{errors}"
    );
}

#[test]
fn name_must_match_the_table_key() {
    let errors =
        expect_errors(Project::new().toml("[apps.api]\nname = \"web\"\nscript = \"sleep 1\"\n"));
    let error = one(&errors);
    assert_eq!((error.line, error.key.as_str()), (Some(2), "apps.api.name"));
    assert_eq!(
        error.message,
        "name \"web\" differs from the table's name \"api\""
    );
    crate::harness::expect_ok(
        Project::new().toml("[apps.api]\nname = \"api\"\nscript = \"sleep 1\"\n"),
    );
}

#[test]
fn duplicate_names_in_one_file() {
    let text = "apps:\n  - name: api\n    script: sleep 1\n  - script: sleep 2\n    name: api\n";
    let errors = expect_errors(Project::new().yaml(text));
    let error = one(&errors);
    assert_eq!((error.line, error.key.as_str()), (Some(5), "apps.api"));
    assert_eq!(
        error.message,
        "duplicate app name \"api\" (first on line 2)"
    );
    // Names derived from scripts collide too.
    let errors =
        expect_errors(Project::new().json(r#"[{"script": "sleep 1"}, {"script": "sleep 2"}]"#));
    assert_eq!(
        one(&errors).message,
        "duplicate app name \"sleep\" (first on line 1)"
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let errors = expect_errors(
        Project::new().json("{\"apps\": [\n  {\"name\": \"a\",\n   \"name\": \"b\"}\n]}\n"),
    );
    let error = one(&errors);
    assert_eq!(error.line, Some(3));
    assert!(
        error.message.starts_with("duplicate key `name`"),
        "{}",
        error.message
    );
    let errors = expect_errors(Project::new().toml("[apps.a]\nscript = \"x\"\nscript = \"y\"\n"));
    assert_eq!(one(&errors).line, Some(3));
}

#[test]
fn syntax_errors_have_lines() {
    let errors = expect_errors(Project::new().toml("[apps.a]\nscript = \"x\n"));
    assert_eq!(errors.errors[0].line, Some(2));
    let errors = expect_errors(
        Project::new().json("{\n  \"apps\": [\n    {\"name\": \"a\" \"script\": \"x\"}\n  ]\n}\n"),
    );
    assert_eq!(errors.errors[0].line, Some(3), "{errors}");
    assert!(
        errors.to_string().starts_with("ecosystem.json:3: "),
        "{errors}"
    );
    let errors = expect_errors(Project::new().yaml("apps:\n  - name: a\n   script: x\n"));
    assert!(errors.errors[0].line.is_some_and(|l| l >= 2), "{errors}");
}

#[test]
fn unsupported_pm2_keys_explain_themselves() {
    // (pid_file and uid are supported now: see the end-to-end tests.)
    let errors = expect_errors(
        Project::new().toml("[apps.a]\nscript = \"sleep 1\"\ndocker = true\ntreekill = false\n"),
    );
    let messages: Vec<_> = summary(&errors)
        .into_iter()
        .map(|(_, key, message)| format!("{key}: {message}"))
        .collect();
    assert_eq!(
        messages,
        [
            "apps.a.docker: not supported: fleet does not run containers",
            "apps.a.treekill: cannot be false: fleet always stops the whole process group",
        ]
    );
    assert!(errors.errors.iter().all(|e| e.hint.is_some()));
}

#[test]
fn scripts_that_cannot_run_are_errors_at_their_line() {
    let project = Project::new();
    project.file("tool", "#!/bin/sh\n");
    project.file("server.ts", "");
    let text = "[apps.a]\nscript = \"missing.js\"\n[apps.b]\nscript = \"tool\"\n[apps.c]\ncwd = \"nowhere\"\nscript = \"sleep 1\"\n[apps.d]\nscript = \"server.ts\"\ninterpreter = \"deno\"\n";
    let errors = expect_errors(project.toml(text));
    let messages: Vec<_> = summary(&errors);
    assert_eq!(
        messages[0],
        (
            Some(2),
            "apps.a.script".to_string(),
            "script not found: missing.js".to_string()
        )
    );
    assert_eq!(messages[1].1, "apps.b.script");
    assert!(messages[1].2.starts_with("script is not executable"));
    assert_eq!(messages[2].0, Some(6));
    assert!(messages[2].2.starts_with("cwd does not exist"));
    assert_eq!(
        messages[3],
        (
            Some(10),
            "apps.d.interpreter".to_string(),
            "interpreter not found on PATH: deno".to_string()
        )
    );
}

#[test]
fn bad_deploy_stages() {
    let text = r#"
[deploy.production]
host = []
path = "srv/app"
batch = "150%"
strategy = "clone"
shared_dirs = ["../etc"]
port = "ssh"

[deploy.production.hosts."other.example.com"]
port = 22

[deploy.staging]
repo = "git@x:y.git"
"#;
    let errors = expect_errors(Project::new().toml(text));
    let got = summary(&errors);
    let expected = [
        (
            Some(2),
            "deploy.production",
            "missing `repo`: the clone strategy needs a repository",
        ),
        (Some(3), "deploy.production.host", "no hosts given"),
        (
            Some(4),
            "deploy.production.path",
            "path must be absolute, got \"srv/app\"",
        ),
        (
            Some(5),
            "deploy.production.batch",
            "expected a number of hosts or a percentage like \"25%\" (1% to 100%), got \"150%\"",
        ),
        (
            Some(7),
            "deploy.production.shared_dirs",
            "\"../etc\" is not a path inside the release",
        ),
        (
            Some(8),
            "deploy.production.port",
            "expected a whole number, got \"ssh\"",
        ),
        (
            Some(10),
            "deploy.production.hosts.\"other.example.com\"",
            "\"other.example.com\" is not one of this stage's hosts",
        ),
        (Some(13), "deploy.staging", "missing `host`"),
        (Some(13), "deploy.staging", "missing `path`"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(line, key, message)| (*line, key.to_string(), message.to_string()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn deploy_batches_and_defaults() {
    let project = Project::new();
    let file = crate::harness::expect_ok(project.toml(
        "[deploy.a]\nhost = \"h1\"\npath = \"~/app\"\nbatch = 2\n[deploy.b]\nhost = [\"h1\", \"h2\"]\npath = \"/srv\"\nbatch = \"25%\"\n[deploy.c]\nhost = \"h\"\npath = \"/srv\"\n",
    ));
    assert_eq!(file.deploy["a"].batch, fleet_config::Batch::Count(2));
    assert_eq!(file.deploy["a"].path, "~/app");
    assert_eq!(file.deploy["b"].batch, fleet_config::Batch::Percent(25));
    let c = &file.deploy["c"];
    assert_eq!(c.batch, fleet_config::Batch::Count(1));
    assert_eq!(c.keep_releases, fleet_config::DEFAULT_KEEP_RELEASES);
    assert_eq!(c.strategy, fleet_config::DeployStrategy::Archive);
    assert_eq!(c.max_fail, 0);
    assert_eq!(c.host, ["h"]);
}

#[test]
fn controller_url_must_be_https() {
    let errors = expect_errors(Project::new().toml("[controller]\nurl = \"http://c:7443\"\n"));
    let error = one(&errors);
    assert_eq!(
        (error.line, error.key.as_str()),
        (Some(2), "controller.url")
    );
    assert!(error.hint.as_deref().unwrap().contains("https://"));
}

#[test]
fn missing_and_unknown_files() {
    let project = Project::new();
    let errors = fleet_config::load(std::path::Path::new("nope.toml"), &project.opts).unwrap_err();
    assert_eq!(errors.to_string(), "nope.toml: file not found");
    project.file("app.txt", "");
    let errors = fleet_config::load(std::path::Path::new("app.txt"), &project.opts).unwrap_err();
    assert!(
        errors
            .to_string()
            .starts_with("app.txt: not a config file\n  hint: ")
    );
}

#[test]
fn resolve_command_errors_name_the_script_key() {
    let project = Project::new();
    let error =
        fleet_config::resolve_command("nope.py", None, &[], &[], project.path(), None).unwrap_err();
    assert_eq!(error.key, "script");
    assert_eq!(error.file, std::path::PathBuf::new());
    assert_eq!(error.message, "script not found: nope.py");
}
