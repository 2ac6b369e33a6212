//! Deploys the controller runs, on the netns test bed with a real controller and five
//! hosts (`fleet deploy` with `FLEET_CONTROLLER` set): the CLI that submitted a deploy
//! SIGKILLed, the deploy finishing anyway and `attach` from another `FLEET_HOME`
//! replaying it; a second deploy of the stage refused naming the first, a `read` token
//! refused, `cancel` putting switched hosts back; the controller SIGKILLed mid-rollout
//! and started again, the deploy finished with every host on one release and every lock
//! released; a host whose key the controller does not know refusing the deploy before
//! any host changes.

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::controller::Controller;
use crate::deploy::{
    APP_PORT, DeployBed, SETTLE, ThroughController, a_deploy_shows_in_the_controllers_status,
    setup_joins_each_agent,
};
use crate::harness::*;
use crate::http::get;

/// What a slow deploy's hosts run after the switch, so the test can act meanwhile.
const SLOW: &str = "post_deploy = \"sleep 4\"";
const APP_PATH: &str = "/srv/app";
/// A controller-run deploy of the bed, from submission to its end, under load.
const DEPLOY: Duration = Duration::from_secs(120);

struct Bed<'a> {
    d: &'a DeployBed,
    controller: Controller,
    hosts: Vec<String>,
    addresses: Vec<String>,
}

impl Bed<'_> {
    fn via(&self) -> ThroughController<'_> {
        ThroughController {
            d: self.d,
            env: self.controller.env(),
        }
    }

    /// `fleet deploy bed <args> --json` through the controller, in the background.
    fn spawn_deploy(&self, args: &[&str]) -> Child {
        let mut all = vec!["deploy", "bed"];
        all.extend_from_slice(args);
        all.push("--json");
        let mut command = self.d.fleet.command(&all);
        command.envs(self.controller.env());
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().expect("spawn fleet deploy")
    }

    /// `fleet deploy bed history --json`.
    fn history(&self) -> Vec<Value> {
        let (code, json, stderr) = self.via().run(&["deploy", "bed", "history", "--json"]);
        assert_eq!(code, Some(0), "history: {stderr}");
        json.as_array().cloned().unwrap_or_default()
    }

    /// What `attach` replays of run `id` within a few seconds (it follows a run that
    /// has not ended, so it is stopped then): for a failing test to show.
    fn replay(&self, id: u64) -> String {
        let id = id.to_string();
        let mut attach = self.d.fleet.command(&["deploy", "bed", "attach", &id]);
        attach
            .envs(self.controller.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let Ok(mut child) = attach.spawn() else {
            return "attach did not start".to_owned();
        };
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < until && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        match child.wait_with_output() {
            Ok(output) => format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => format!("attach: {error}"),
        }
    }

    fn wait_running(&self) -> u64 {
        let mut id = 0;
        wait_until("a running deploy in the history", SETTLE, || {
            let history = self.history();
            match history.first() {
                Some(run) if run["state"] == "running" => {
                    id = run["id"].as_u64().unwrap();
                    true
                }
                _ => false,
            }
        });
        id
    }

    fn current(&self, host: &str) -> String {
        let (_, target) = self
            .d
            .sh(host, &format!("readlink {APP_PATH}/current || true"));
        target.trim_start_matches("releases/").to_string()
    }

    fn currents(&self) -> Vec<String> {
        self.hosts.iter().map(|h| self.current(h)).collect()
    }

    fn locks(&self) -> Vec<&String> {
        (self.hosts.iter())
            .filter(|h| self.d.sh(h, &format!("test -e {APP_PATH}/.fleet/lock")).0)
            .collect()
    }

    fn answers(&self, version: &str) -> bool {
        self.addresses.iter().all(|address| {
            get(address, APP_PORT, "/")
                .is_ok_and(|body| body.contains(&format!("version={version}")))
        })
    }
}

fn finish(child: Child) -> (Option<i32>, Value, String) {
    let output = wait_output(child, DEPLOY);
    (
        output.status.code(),
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn controller_run_deploys_survive_their_cli_and_their_controller() {
    let test = "controller_run_deploys_survive_their_cli_and_their_controller";
    let Some(d) = DeployBed::up(test, 5, "") else {
        return;
    };
    let controller = Controller::start(&d.bed);
    let hosts = d.names();
    let addresses: Vec<String> = d.bed.hosts.iter().map(|h| h.address.clone()).collect();
    let mut bed = Bed {
        d: &d,
        controller,
        hosts,
        addresses,
    };
    setup_joins_each_agent(&d, &bed.via(), &bed.controller.url, &bed.hosts);
    a_deploy_shows_in_the_controllers_status(&d, &bed.via(), &bed.hosts, &bed.addresses);
    assert_eq!(
        bed.history()[0]["state"],
        "ok",
        "the first deploy ran in the controller"
    );

    the_cli_killed_and_attach_from_elsewhere(&bed);
    a_second_deploy_and_a_read_token_are_refused_and_cancel_goes_back(&bed);
    the_controller_killed_mid_rollout_finishes_on_restart(&mut bed);
    a_revert_runs_in_the_controller(&bed);
    the_clone_strategy_resolves_on_a_host(&bed);
    an_unknown_host_key_changes_nothing(&bed);
}

fn the_cli_killed_and_attach_from_elsewhere(bed: &Bed<'_>) {
    bed.d.commit("c2", SLOW);
    let mut cli = bed.spawn_deploy(&[]);
    let id = bed.wait_running();
    kill(cli.id() as i32, nix::sys::signal::Signal::SIGKILL);
    let _ = cli.wait();
    // Another machine: another FLEET_HOME, the same stage and a deploy token.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut attach = bed.d.fleet.command(&["deploy", "bed", "attach", "--json"]);
    attach
        .envs(bed.controller.env())
        .env("FLEET_HOME", elsewhere.path());
    let output = bed.d.fleet.run_with(attach);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "attach: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    for address in &bed.addresses {
        assert!(
            stderr.contains(address.as_str()),
            "attach replays {address}'s steps: {stderr}"
        );
    }
    assert!(bed.answers("c2"), "every host answers c2");
    let run = &bed.history()[0];
    assert_eq!(
        (run["id"].as_u64(), &run["state"]),
        (Some(id), &Value::from("ok"))
    );
    assert!(
        run["who"].as_str().unwrap().starts_with("token:e2e ("),
        "{run:#}"
    );
}

fn a_second_deploy_and_a_read_token_are_refused_and_cancel_goes_back(bed: &Bed<'_>) {
    let before = bed.currents();
    bed.d.commit("c3", SLOW);
    let first = bed.spawn_deploy(&[]);
    let id = bed.wait_running();
    let other = bed.controller.token("other-deployer", "deploy");
    let elsewhere = tempfile::tempdir().unwrap();
    let mut second = bed.d.fleet.command(&["deploy", "bed"]);
    second
        .envs(bed.controller.env())
        .env("FLEET_TOKEN", &other)
        .env("FLEET_HOME", elsewhere.path());
    let output = bed.d.fleet.run_with(second);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is being deployed: deploy #{id} by token e2e")),
        "{stderr}"
    );
    let reader = bed.controller.token("reader", "read");
    let mut read = bed.d.fleet.command(&["deploy", "bed"]);
    read.envs(bed.controller.env()).env("FLEET_TOKEN", &reader);
    let output = bed.d.fleet.run_with(read);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(stderr.contains("read"), "a read token is refused: {stderr}");
    let mut attach = bed.d.fleet.command(&["deploy", "bed", "attach"]);
    attach
        .envs(bed.controller.env())
        .env("FLEET_TOKEN", &reader);
    let output = bed.d.fleet.run_with(attach);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr.contains("needs deploy"),
        "attach needs a deploy token: {stderr}"
    );

    let (code, _, stderr) = bed.via().run(&["deploy", "bed", "cancel"]);
    assert_eq!(code, Some(0), "cancel: {stderr}");
    let (code, report, stderr) = finish(first);
    assert_eq!(
        code,
        Some(1),
        "the cancelled deploy fails: {report:#}\n{stderr}"
    );
    assert_eq!(bed.currents(), before, "every host back on its release");
    assert!(bed.locks().is_empty(), "locks released: {:?}", bed.locks());
    assert!(bed.answers("c2"));
    assert_eq!(bed.history()[0]["state"], "cancelled");
}

fn the_controller_killed_mid_rollout_finishes_on_restart(bed: &mut Bed<'_>) {
    let before = bed.current(&bed.hosts[0]);
    // The canary goes first, alone: kill the controller once it switched.
    bed.d.commit("c4", &format!("canary = true\n{SLOW}"));
    let cli = bed.spawn_deploy(&[]);
    let id = bed.wait_running();
    let first = bed.hosts[0].clone();
    wait_until("the canary switched", DEPLOY, || {
        let now = bed.current(&first);
        !now.is_empty() && now != before
    });
    bed.controller.stop();
    let (code, _, stderr) = finish(cli);
    assert_ne!(code, Some(0), "the CLI lost its controller: {stderr}");
    bed.controller.spawn();
    let found = std::cell::RefCell::new(Value::Null);
    wait_until_or(
        "the deploy to end after the restart",
        DEPLOY,
        || {
            let now = bed
                .history()
                .into_iter()
                .find(|r| r["id"].as_u64() == Some(id))
                .unwrap_or(Value::Null);
            let ended = now["state"] != "running";
            *found.borrow_mut() = now;
            ended
        },
        || {
            format!(
                "run: {:#}\nits events, as attach replays them:\n{}\n{}",
                found.borrow(),
                bed.replay(id),
                bed.controller.log_tail()
            )
        },
    );
    let run = found.into_inner();
    assert_eq!(run["state"], "ok", "{run:#}");
    assert_eq!(run["attempts"], 2, "{run:#}");
    let release = run["release"].as_str().unwrap().to_owned();
    assert_eq!(
        bed.currents(),
        vec![release.clone(); bed.hosts.len()],
        "one release everywhere"
    );
    assert!(bed.locks().is_empty(), "locks released: {:?}", bed.locks());
    wait_until("every host answers c4", SETTLE, || bed.answers("c4"));
    let audit = bed.controller.audit();
    assert!(
        audit.iter().any(|e| e["action"] == "deploy update"
            && e["result"] == "ok"
            && e["targets"][0] == format!("release={release}").as_str()),
        "{audit:#?}"
    );
}

fn a_revert_runs_in_the_controller(bed: &Bed<'_>) {
    let before = bed.current(&bed.hosts[0]);
    let (code, report, stderr) = finish(bed.spawn_deploy(&["revert"]));
    assert_eq!(code, Some(0), "revert: {report:#}\n{stderr}");
    assert_eq!(report["action"], "revert", "{report:#}");
    let target = report["release"].as_str().unwrap().to_owned();
    assert_ne!(target, before);
    assert_eq!(bed.currents(), vec![target.clone(); bed.hosts.len()]);
    let run = &bed.history()[0];
    assert_eq!(
        (&run["action"], &run["state"]),
        (&Value::from("revert"), &Value::from("ok"))
    );
    assert_eq!(run["release"], target.as_str());
    assert!(bed.locks().is_empty());
}

/// The clone strategy through the controller: nothing is uploaded, the first host's
/// mirror resolves the ref (the hosts share this machine's file system, so the work
/// directory is a URL they can clone), and the history names the commit.
fn the_clone_strategy_resolves_on_a_host(bed: &Bed<'_>) {
    let extra = format!(
        "strategy = \"clone\"\nrepo = \"{}\"",
        bed.d.fleet.work.path().display()
    );
    bed.d.commit("c6", &extra);
    let (code, report, stderr) = finish(bed.spawn_deploy(&[]));
    assert_eq!(code, Some(0), "clone: {report:#}\n{stderr}");
    wait_until("every host answers c6", SETTLE, || bed.answers("c6"));
    let run = &bed.history()[0];
    assert_eq!(run["commit"], report["commit"], "{run:#}");
    assert_eq!(run["commit"].as_str().map(str::len), Some(40));
}

fn an_unknown_host_key_changes_nothing(bed: &Bed<'_>) {
    let before = bed.currents();
    let known = bed.controller.data.path().join("known_hosts");
    let last = bed.addresses.last().unwrap().clone();
    let text = std::fs::read_to_string(&known).unwrap();
    let kept: String = (text.lines())
        .filter(|l| {
            !l.split_whitespace()
                .next()
                .unwrap_or("")
                .split(',')
                .any(|h| h == last)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&known, kept).unwrap();
    bed.d.commit("c5", "");
    let (code, _, stderr) = finish(bed.spawn_deploy(&[]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("refused before any host changed"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&last) && stderr.contains("SHA256:"),
        "names the host and key: {stderr}"
    );
    assert_eq!(bed.currents(), before, "no host changed");
    assert!(bed.locks().is_empty());
}
