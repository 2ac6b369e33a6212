//! The fixture files in `tests/fixtures` (STYLE rule 18): fleet.toml and the three PM2
//! ecosystem forms must keep loading, and must keep meaning the same thing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_config::{
    AppSpec, Batch, ConfigFile, DeployStrategy, ExecMode, Instances, LogType, load,
};

use crate::harness::{HOME, Project, display, expect_ok, node_available};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Loads a fixture as a project would: from the directory it sits in (PM2 files'
/// relative paths start there).
fn load_fixture(name: &str, project: &Project) -> ConfigFile {
    let mut opts = project.opts.clone();
    opts.cwd = fixtures();
    expect_ok(load(Path::new(name), &opts))
}

fn without_source(apps: &[AppSpec]) -> Vec<AppSpec> {
    apps.iter()
        .cloned()
        .map(|mut app| {
            app.source = None;
            app
        })
        .collect()
}

#[test]
fn every_fixture_format_resolves_to_the_same_config() {
    let project = Project::new().with_stage("production");
    let toml = load_fixture("fleet.toml", &project);
    let mut others = vec![
        ("ecosystem.json", load_fixture("ecosystem.json", &project)),
        ("ecosystem.yaml", load_fixture("ecosystem.yaml", &project)),
    ];
    if node_available() {
        others.push((
            "ecosystem.config.js",
            load_fixture("ecosystem.config.js", &project),
        ));
    } else {
        eprintln!("node is not on PATH: skipping ecosystem.config.js");
    }
    for (name, other) in others {
        assert_eq!(
            without_source(&other.apps),
            without_source(&toml.apps),
            "{name}"
        );
        assert_eq!(other.deploy, toml.deploy, "{name}");
        assert_eq!(other.controller, toml.controller, "{name}");
        assert_eq!(other.warnings, Vec::<String>::new(), "{name}");
        assert_eq!(other.path, fixtures().join(name));
    }
    assert!(toml.warnings.is_empty(), "{:?}", toml.warnings);
}

#[test]
fn fleet_toml_fixture_resolves_as_documented() {
    let project = Project::new().with_stage("production");
    let file = load_fixture("fleet.toml", &project);
    let dir = fixtures();
    let names: Vec<&str> = file.apps.iter().map(|app| app.name.as_str()).collect();
    assert_eq!(names, ["api", "worker", "report", "ticker"]);

    check_api(&file.apps[0], &project, &dir);
    check_worker(&file.apps[1], &dir);
    check_report_and_ticker(&file.apps[2], &file.apps[3], &dir);
    check_production_stage(&file);
}

/// The fixture's `api`: cluster mode, stage env precedence, log paths.
fn check_api(api: &AppSpec, project: &Project, dir: &Path) {
    assert_eq!(api.namespace, "web");
    assert_eq!(
        api.command,
        ["node".to_string(), display(&dir.join("api/server.js"))]
    );
    assert_eq!(api.interpreter.as_deref(), Some("node"));
    assert_eq!(api.args, ["--color"]);
    assert_eq!(api.cwd, dir);
    assert_eq!(api.instances, Instances::Count(2));
    assert_eq!(api.exec_mode, ExecMode::Cluster);
    assert_eq!(api.port, Some(3000));
    assert_eq!(api.max_memory_restart_bytes, Some(300 * 1024 * 1024));
    assert_eq!(api.kill_timeout_ms, 5000);
    assert!(api.wait_ready);
    assert_eq!(api.listen_timeout_ms, 8000);
    // deploy.production.env < env < env_production.
    let env = BTreeMap::from([
        ("API_WORKERS".to_string(), "4".to_string()),
        ("DEPLOYED".to_string(), "1".to_string()),
        ("NODE_ENV".to_string(), "production".to_string()),
    ]);
    assert_eq!(api.env, env);
    assert_eq!(api.inherited_env, project.opts.inherited_env);
    assert_eq!(
        api.logs.out_file,
        Some(display(&dir.join("logs/api-out.log")))
    );
    assert_eq!(
        api.logs.error_file,
        Some(display(&dir.join("logs/api-err.log")))
    );
    assert_eq!(api.logs.merge_logs, Some(true));
    assert_eq!(
        api.logs.log_date_format.as_deref(),
        Some("YYYY-MM-DD HH:mm Z")
    );
    assert_eq!(api.source, Some(dir.join("fleet.toml")));
}

/// The fixture's `worker`: a Python script in its own cwd, PM2's restart policy keys.
fn check_worker(worker: &AppSpec, dir: &Path) {
    let worker_dir = dir.join("worker");
    assert_eq!(worker.cwd, worker_dir);
    assert_eq!(
        worker.command,
        [
            "python3".to_string(),
            "-u".to_string(),
            display(&worker_dir.join("worker.py"))
        ]
    );
    assert_eq!(worker.interpreter_args, ["-u"]);
    assert_eq!(worker.args, ["--queue", "default", "--concurrency", "2"]);
    assert_eq!(worker.instances, Instances::Max);
    assert_eq!(worker.max_restarts, 10);
    assert_eq!(worker.min_uptime_ms, 2000);
    assert_eq!(worker.restart_delay_ms, 500);
    assert_eq!(worker.exp_backoff_restart_delay_ms, Some(100));
    assert_eq!(worker.stop_exit_codes, [0]);
    assert_eq!(worker.kill_signal, "SIGTERM");
    assert_eq!(worker.watch, [worker_dir.join("src")]);
    assert_eq!(worker.ignore_watch, ["*.pyc"]);
    assert_eq!(worker.instance_var, "WORKER_ID");
    assert_eq!(worker.env.get("DEPLOYED").map(String::as_str), Some("1"));
}

/// The fixture's `report` (cron, JSON logs) and `ticker` (a command string, logs off).
fn check_report_and_ticker(report: &AppSpec, ticker: &AppSpec, dir: &Path) {
    assert_eq!(
        report.command,
        ["bash".to_string(), display(&dir.join("bin/report.sh"))]
    );
    assert_eq!(report.cron_restart.as_deref(), Some("0 3 * * *"));
    assert!(!report.autorestart);
    assert_eq!(
        report.logs.log_date_format.as_deref(),
        Some("YYYY-MM-DDTHH:mm:ss")
    );
    assert_eq!(report.logs.log_type, LogType::Json);
    assert_eq!(report.logs.log_file.as_deref(), Some(""));

    assert_eq!(
        ticker.command,
        ["sh", "-c", "while true; do date; sleep 5; done"]
    );
    assert_eq!(ticker.interpreter, None);
    assert_eq!(ticker.name, "ticker");
    assert_eq!(ticker.logs.out_file.as_deref(), Some("/dev/null"));
    assert_eq!(ticker.logs.error_file.as_deref(), Some("/dev/null"));
    assert_eq!(ticker.logs.log_file.as_deref(), Some("/dev/null"));
}

/// The fixture's `[deploy.production]` and `[controller]`.
fn check_production_stage(file: &ConfigFile) {
    let stage = &file.deploy["production"];
    assert_eq!(stage.user.as_deref(), Some("deploy"));
    assert_eq!(stage.host, ["web1.example.com", "web2.example.com"]);
    assert_eq!(stage.repo.as_deref(), Some("git@github.com:acme/shop.git"));
    assert_eq!(stage.git_ref.as_deref(), Some("origin/main"));
    assert_eq!(stage.path, "/var/www/shop");
    assert_eq!(stage.key, Some(format!("{HOME}/.ssh/deploy")));
    assert_eq!(stage.ssh_options, ["StrictHostKeyChecking=accept-new"]);
    assert_eq!(
        stage.pre_deploy_local.as_deref(),
        Some("./scripts/check.sh")
    );
    assert!(stage.post_deploy.as_deref().unwrap().starts_with("npm ci"));
    assert!(stage.forward_agent);
    assert!(!stage.needs_tty);
    assert_eq!(stage.keep_releases, 3);
    assert_eq!(stage.shared_dirs, ["logs", "node_modules"]);
    assert_eq!(stage.shared_files, [".env"]);
    assert_eq!(stage.strategy, DeployStrategy::Clone);
    assert_eq!(stage.batch, Batch::Percent(50));
    assert!(stage.canary);
    assert_eq!(stage.max_fail, 1);
    let targets = stage.targets();
    assert_eq!(targets[0].port, None);
    assert_eq!(targets[1].port, Some(2222));
    assert_eq!(targets[1].user.as_deref(), Some("deploy"));
    assert_eq!(
        file.controller.as_ref().unwrap().url,
        "https://controller.example.com:7443"
    );
}

#[test]
fn fixtures_without_a_stage_use_the_plain_env() {
    let project = Project::new();
    let file = load_fixture("fleet.toml", &project);
    let api = &file.apps[0];
    assert_eq!(
        api.env.get("NODE_ENV").map(String::as_str),
        Some("development")
    );
    assert_eq!(api.env.get("DEPLOYED"), None);
    let yaml = load_fixture("ecosystem.yaml", &project);
    assert_eq!(without_source(&yaml.apps), without_source(&file.apps));
}

#[test]
fn resolved_specs_round_trip_through_json() {
    let project = Project::new().with_stage("production");
    let file = load_fixture("fleet.toml", &project);
    for app in &file.apps {
        let json = serde_json::to_string(app).unwrap();
        let back: AppSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, app);
    }
    for stage in file.deploy.values() {
        let json = serde_json::to_string(stage).unwrap();
        assert!(json.contains("\"ref\":\"origin/main\""), "{json}");
        let back: fleet_config::DeployStage = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, stage);
    }
}
