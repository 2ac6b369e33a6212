//! A PM2 ecosystem file's deploy section, unchanged, deployed by `fleet deploy` to a
//! test-bed host: the release is a git checkout its `pre-deploy` can `git reset
//! --hard`, and its `post-deploy` (`npm install && pm2 reload ecosystem.config.js
//! --env production`) runs fleet's `pm2`, which reloads the Node app on the host's
//! agent.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Fleet, wait_until};
use crate::http::get;
use crate::testbed::{HOST_FLEET_HOME, TestBed};

const PORT: u16 = 8090;
const PATH: &str = "/srv/pm2app";
const SETTLE: Duration = Duration::from_secs(40);

const SERVER_JS: &str = r#"const http = require('http');
http.createServer((req, res) => {
  res.end(`version=${process.env.VERSION} pid=${process.pid}\n`);
}).listen(8090, () => process.send && process.send('ready'));
"#;

fn git(fleet: &Fleet, args: &[&str]) {
    crate::harness::git(fleet.work.path(), args);
}

/// The project as a PM2 user has it: `ecosystem.config.js` with apps and a deploy
/// section, `server.js`, `package.json`.
fn commit(fleet: &Fleet, bed: &TestBed, version: &str) {
    let host = &bed.hosts[0];
    fleet.file("server.js", SERVER_JS);
    fleet.file(
        "package.json",
        r#"{"name": "pm2app", "version": "1.0.0", "private": true}"#,
    );
    // The registry is out of reach in the test bed: no audit, no funding call.
    fleet.file(".npmrc", "audit=false\nfund=false\nupdate-notifier=false\n");
    fleet.file(
        "ecosystem.config.js",
        &format!(
            r#"module.exports = {{
  apps: [{{
    name: "web",
    script: "server.js",
    instances: 2,
    exec_mode: "cluster",
    wait_ready: true,
    env_production: {{ VERSION: "{version}" }}
  }}],
  deploy: {{
    production: {{
      user: "root",
      host: ["{address}"],
      key: "{key}",
      ssh_options: ["UserKnownHostsFile={known}", "ConnectTimeout=3"],
      ref: "origin/main",
      repo: "{repo}",
      path: "{PATH}",
      fleet_home: "{HOST_FLEET_HOME}",
      "pre-deploy": "git reset --hard && git status --porcelain --untracked-files=no | wc -l > pre-deploy.out",
      "post-deploy": "npm install && pm2 reload ecosystem.config.js --env production"
    }}
  }}
}};
"#,
            address = host.address,
            key = bed.client_key().display(),
            known = bed.known_hosts().display(),
            repo = fleet.work.path().display(),
        ),
    );
    git(fleet, &["add", "-A"]);
    git(fleet, &["commit", "-q", "-m", version]);
}

fn deploy(fleet: &Fleet, args: &[&str]) -> (Value, String) {
    let mut all = vec!["deploy", "production"];
    all.extend_from_slice(args);
    all.push("--json");
    let output = fleet.run(&all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "deploy {args:?}:\n{stdout}\n{stderr}"
    );
    (serde_json::from_str(&stdout).unwrap_or(Value::Null), stderr)
}

#[test]
fn a_pm2_deploy_section_deploys_and_reloads_unchanged() {
    let test = "a_pm2_deploy_section_deploys_and_reloads_unchanged";
    if !TestBed::available_or_skip(test) {
        return;
    }
    let bed = TestBed::up(1, None);
    let fleet = Fleet::new();
    let host = bed.hosts[0].name.clone();
    let address = bed.hosts[0].address.clone();
    git(&fleet, &["init", "-q", "-b", "main"]);
    commit(&fleet, &bed, "c1");

    let (_, setup) = deploy(&fleet, &["setup"]);
    assert!(setup.contains("pm2"), "setup installs pm2:\n{setup}");
    let (summary, stderr) = deploy(&fleet, &[]);
    // Said once, before the first host.
    assert_eq!(
        stderr.matches("what differs from pm2 deploy").count(),
        1,
        "{stderr}"
    );
    let release = summary["release"].as_str().unwrap().to_string();
    let answer = || get(&address, PORT, "/").unwrap_or_default();
    wait_until("c1 answers", SETTLE, || answer().contains("version=c1"));

    // The release is a checkout on the stage's branch; pre-deploy's reset found it clean.
    let sh = |command: &str| {
        let output = bed.exec(&host, &["sh", "-c", command]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let dir = format!("{PATH}/releases/{release}");
    assert_eq!(
        sh(&format!("git -C {dir} rev-parse --abbrev-ref HEAD")),
        "main"
    );
    assert_eq!(sh(&format!("cat {dir}/pre-deploy.out")), "0");
    // npm install ran in the release, before the apps started.
    assert_eq!(
        sh(&format!("test -f {dir}/package-lock.json && echo yes")),
        "yes"
    );

    // A second deploy: the hook's `pm2 reload` replaces both instances.
    commit(&fleet, &bed, "c2");
    deploy(&fleet, &[]);
    wait_until("c2 answers", SETTLE, || answer().contains("version=c2"));
    let list = sh(&format!(
        "FLEET_HOME={HOST_FLEET_HOME} {HOST_FLEET_HOME}/bin/pm2 jlist"
    ));
    let list: Value = serde_json::from_str(&list).unwrap_or(Value::Null);
    let online = list.as_array().map(|l| {
        l.iter()
            .filter(|p| p["pm2_env"]["status"] == "online")
            .count()
    });
    assert_eq!(online, Some(2), "{list:#}");
}
