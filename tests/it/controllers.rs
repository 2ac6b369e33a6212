//! Three controllers on one PostgreSQL (a server of the test's own) and five test-bed
//! hosts joined by `fleet deploy <stage> setup`, the CLI given all three URLs: the
//! agents learn every controller; a token made through one works through another; the
//! controller holding every session is SIGKILLed and, through the others, every host
//! is reachable again within 10 s, with the audit log whole; the deploy it was running
//! is taken over and finished by another; a restart of the stage through a controller
//! reaches the hosts its peers hold.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::controller::{Controller, SharedStore};
use crate::deploy::{
    DeployBed, SETTLE, ThroughController, a_deploy_shows_in_the_controllers_status,
};
use crate::harness::*;
use crate::testbed::HOST_FLEET_HOME;

/// The failover bound: every agent of a SIGKILLed controller back within it.
const FAILOVER: Duration = Duration::from_secs(10);
/// A controller-run deploy of the bed, taken over included.
const DEPLOY: Duration = Duration::from_secs(120);

fn reachable_hosts(status: &Value) -> Option<usize> {
    let entries = status.as_array()?;
    if entries.iter().any(|v| v["reachable"] == false) {
        return None;
    }
    let mut hosts: Vec<&str> = entries.iter().filter_map(|v| v["host"].as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    Some(hosts.len())
}

#[test]
fn three_controllers_on_one_postgresql_lose_one_and_every_host_stays_reachable() {
    let test = "three_controllers_on_one_postgresql_lose_one_and_every_host_stays_reachable";
    let Some(d) = DeployBed::up(test, 5, "") else {
        return;
    };
    let Some(pg) = fleet_tests::postgres::Postgres::start() else {
        return;
    };
    let [mut a, b, c] = three_controllers(&d, &pg);
    let all = [&a, &b, &c].map(|c| c.url.clone()).join(",");
    // One CA for the store: A's copy of it serves for all three.
    let ca = a.ca().display().to_string();
    let env = |url: &str, token: &str| {
        vec![
            ("FLEET_CONTROLLER", url.to_owned()),
            ("FLEET_TOKEN", token.to_owned()),
            ("FLEET_CA", ca.clone()),
        ]
    };
    let via = ThroughController {
        d: &d,
        env: env(&all, &a.token),
    };
    let hosts = d.names();
    let addresses: Vec<String> = d.bed.hosts.iter().map(|h| h.address.clone()).collect();

    // setup joins every agent to the first controller that answers; each learns all
    // three from its welcome.
    setup_teaches_every_controller(&d, &via, &hosts, &a.url);
    a_deploy_shows_in_the_controllers_status(&d, &via, &hosts, &addresses);

    // A token made through B's store works through C.
    let reader = b.token("reader", "read");
    let through_c = ThroughController {
        d: &d,
        env: env(&c.url, &reader),
    };
    let (code, status, stderr) = through_c.run(&["status", "bed", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(reachable_hosts(&status), Some(5), "{status:#}");
    // A deploy through A, slow after each host's switch; A dies once the canary switched.
    let current = |host: &str| current(&d, host);
    let first_release = current(&hosts[0]);
    d.commit("c2", "canary = true\npost_deploy = \"sleep 4\"");
    let mut deploy = d.fleet.command(&["deploy", "bed", "--json"]);
    deploy.envs(env(&a.url, &a.token));
    deploy
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut deploy = deploy.spawn().unwrap();
    wait_until("the canary switched", DEPLOY, || {
        let now = current(&hosts[0]);
        !now.is_empty() && now != first_release
    });
    let before: Vec<Value> = a.audit();
    assert!(!before.is_empty());

    // A holds every session: SIGKILL it. Through the others (the CLI skips the dead
    // first URL), every host is reachable again within the bound.
    a.kill();
    let _ = deploy.wait();
    let killed = Instant::now();
    let back = loop {
        let (code, status, _) = via.run(&["status", "bed", "--json"]);
        if code == Some(0) && reachable_hosts(&status) == Some(5) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < FAILOVER,
            "not every host back within {FAILOVER:?}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("every host reachable through the others {back:?} after the SIGKILL");
    // The agents spread over B and C, and each answers for all five.
    for survivor in [&b, &c] {
        let only = ThroughController {
            d: &d,
            env: env(&survivor.url, &reader),
        };
        let (code, status, stderr) = only.run(&["status", "bed", "--json"]);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(
            reachable_hosts(&status),
            Some(5),
            "{}: {status:#}",
            survivor.url
        );
    }
    // A's deploy is taken over once A's lease ends, and finished: one release on every
    // host, every lock released, the run's second attempt by another controller.
    // Following it through C, which does not run it: from the store, to its end.
    let mut attach = d.fleet.command(&["deploy", "bed", "attach", "--json"]);
    attach.envs(env(&c.url, &c.token));
    attach
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let attach = attach.spawn().unwrap();
    the_deploy_is_finished_by_another(&d, &via, &hosts);
    let attached = wait_output(attach, DEPLOY);
    assert_eq!(
        attached.status.code(),
        Some(0),
        "attach through C: {}",
        String::from_utf8_lossy(&attached.stderr)
    );
    // A restart of the stage through B reaches every host, those C holds through C.
    let through_b = ThroughController {
        d: &d,
        env: env(&b.url, &b.token),
    };
    let (code, _, stderr) = through_b.run(&["restart", "bed", "web"]);
    assert_eq!(code, Some(0), "{stderr}");
    // The audit log, read through B, has every entry from before.
    let after = b.audit();
    assert!(
        after.len() >= before.len() && after[..before.len()] == before[..],
        "before: {before:#?}\nafter: {after:#?}"
    );
}

/// Three controllers on a new database of `pg`: the first makes the token and the seal
/// key the others are given.
fn three_controllers(d: &DeployBed, pg: &fleet_tests::postgres::Postgres) -> [Controller; 3] {
    pg.create_database("fleet");
    let mut store = SharedStore {
        url: format!(
            "postgres://{}@127.0.0.1:{}/fleet",
            fleet_tests::postgres::USER,
            pg.port()
        ),
        password: fleet_tests::postgres::PASSWORD.to_owned(),
        seal_key: None,
        token: None,
    };
    let a = Controller::start_shared(&d.bed, &store);
    store.seal_key = Some(a.seal_key());
    store.token = Some(a.token.clone());
    let b = Controller::start_shared(&d.bed, &store);
    let c = Controller::start_shared(&d.bed, &store);
    [a, b, c]
}

/// The release `host` is on.
fn current(d: &DeployBed, host: &str) -> String {
    let (_, target) = d.sh(host, "readlink /srv/app/current || true");
    target.trim_start_matches("releases/").to_string()
}

/// `setup` joins every agent to the first controller that answers (`first`); each
/// learns all three from its welcome.
fn setup_teaches_every_controller(
    d: &DeployBed,
    via: &ThroughController<'_>,
    hosts: &[String],
    first: &str,
) {
    via.deploy_ok(&["setup"]);
    for host in hosts {
        let (_, joined) = d.sh(host, &format!("cat {HOST_FLEET_HOME}/controller/url"));
        assert_eq!(joined, first, "{host}");
    }
    wait_until("every agent knows the three controllers", SETTLE, || {
        hosts.iter().all(|host| {
            let (_, known) = d.sh(
                host,
                &format!("cat {HOST_FLEET_HOME}/controller/controllers 2>/dev/null || true"),
            );
            known.lines().count() == 3
        })
    });
}

/// The deploy of the SIGKILLed controller is taken over once its lease ends, and
/// finished: one release on every host, every lock released, a second attempt.
fn the_deploy_is_finished_by_another(d: &DeployBed, via: &ThroughController<'_>, hosts: &[String]) {
    let mut run = Value::Null;
    wait_until("the deploy finished by another controller", DEPLOY, || {
        let (_, history, _) = via.run(&["deploy", "bed", "history", "--json"]);
        run = history
            .as_array()
            .and_then(|h| h.first().cloned())
            .unwrap_or(Value::Null);
        run["state"] != "running" && !run.is_null()
    });
    assert_eq!(run["state"], "ok", "{run:#}");
    assert_eq!(run["attempts"], 2, "{run:#}");
    let release = run["release"].as_str().unwrap().to_owned();
    let currents: Vec<String> = hosts.iter().map(|h| current(d, h)).collect();
    assert_eq!(
        currents,
        vec![release; hosts.len()],
        "one release everywhere"
    );
    for host in hosts {
        assert!(
            !d.sh(host, "test -e /srv/app/.fleet/lock").0,
            "{host} still locked"
        );
    }
}
