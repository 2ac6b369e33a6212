//! Each rule fires once when its incident opens and once when it clears.

use std::time::Duration;

use super::*;

const S: u64 = 1000;

fn config() -> RuleConfig {
    RuleConfig {
        errored: true,
        crash_loop: Some((3, Duration::from_secs(60))),
        host_unreachable: Some(Duration::from_secs(30)),
        memory: Some((100 << 20, Duration::from_secs(10))),
        deploy_failed: true,
    }
}

fn host(name: &str, reachable: bool, instances: Vec<Instance>) -> Observation {
    Observation {
        host: name.into(),
        reachable,
        instances,
    }
}

fn app(name: &str, restarts: u32) -> Instance {
    Instance {
        app: name.into(),
        instance: 0,
        restarts,
        ..Instance::default()
    }
}

fn states(alerts: &[Alert]) -> Vec<(Kind, State)> {
    alerts.iter().map(|a| (a.key.kind, a.state)).collect()
}

#[test]
fn an_errored_app_fires_once_and_resolves_once() {
    let mut rules = Rules::new(config(), 0, Vec::new());
    let errored = Instance {
        errored: true,
        ..app("api", 0)
    };
    let fired = rules.evaluate(S, &[host("web1", true, vec![errored.clone()])]);
    assert_eq!(states(&fired), [(Kind::Errored, State::Firing)]);
    assert_eq!(
        fired[0].summary,
        "api#0 on web1 is errored: fleet stopped restarting it"
    );
    for t in 2..10 {
        assert!(
            rules
                .evaluate(t * S, &[host("web1", true, vec![errored.clone()])])
                .is_empty()
        );
    }
    // Unreachable meanwhile: what was open stays open, nothing new.
    assert!(
        rules
            .evaluate(10 * S, &[host("web1", false, vec![errored.clone()])])
            .is_empty()
    );
    let cleared = rules.evaluate(11 * S, &[host("web1", true, vec![app("api", 0)])]);
    assert_eq!(states(&cleared), [(Kind::Errored, State::Resolved)]);
    assert_eq!(cleared[0].summary, "api#0 on web1 is no longer errored");
}

#[test]
fn a_crash_loop_is_n_restarts_within_the_window() {
    let mut rules = Rules::new(config(), 0, Vec::new());
    let at = |rules: &mut Rules, t: u64, restarts: u32| {
        rules.evaluate(t * S, &[host("web1", true, vec![app("worker", restarts)])])
    };
    assert!(
        at(&mut rules, 0, 10).is_empty(),
        "restarts before watching do not count"
    );
    assert!(at(&mut rules, 10, 11).is_empty());
    assert!(at(&mut rules, 20, 12).is_empty());
    let fired = at(&mut rules, 30, 13);
    assert_eq!(states(&fired), [(Kind::CrashLoop, State::Firing)]);
    assert!(
        fired[0].summary.contains("restarted 3 times within 1m00s"),
        "{fired:?}"
    );
    assert!(at(&mut rules, 40, 14).is_empty(), "one alert per incident");
    assert!(at(&mut rules, 50, 14).is_empty());
    // Within the last minute (20s..80s] only 2 restarts: cleared.
    let cleared = at(&mut rules, 80, 14);
    assert_eq!(states(&cleared), [(Kind::CrashLoop, State::Resolved)]);
    // A reset count begins again without a false alarm.
    assert!(at(&mut rules, 110, 0).is_empty());
}

#[test]
fn a_host_unreachable_for_longer_than_t_fires_and_its_return_resolves() {
    let mut rules = Rules::new(config(), 0, Vec::new());
    assert!(
        rules
            .evaluate(5 * S, &[host("web2", false, Vec::new())])
            .is_empty()
    );
    assert!(
        rules
            .evaluate(34 * S, &[host("web2", false, Vec::new())])
            .is_empty()
    );
    let fired = rules.evaluate(35 * S, &[host("web2", false, Vec::new())]);
    assert_eq!(states(&fired), [(Kind::HostUnreachable, State::Firing)]);
    assert_eq!(fired[0].summary, "web2 has been unreachable for 30s");
    assert!(
        rules
            .evaluate(60 * S, &[host("web2", false, Vec::new())])
            .is_empty()
    );
    let back = rules.evaluate(61 * S, &[host("web2", true, Vec::new())]);
    assert_eq!(states(&back), [(Kind::HostUnreachable, State::Resolved)]);
    // A short blip later does not fire.
    assert!(
        rules
            .evaluate(70 * S, &[host("web2", false, Vec::new())])
            .is_empty()
    );
    assert!(
        rules
            .evaluate(80 * S, &[host("web2", true, Vec::new())])
            .is_empty()
    );
    assert!(
        rules
            .evaluate(200 * S, &[host("web2", true, Vec::new())])
            .is_empty()
    );
}

#[test]
fn memory_above_the_threshold_for_longer_than_t_fires() {
    let mut rules = Rules::new(config(), 0, Vec::new());
    let big = Instance {
        memory_bytes: 200 << 20,
        ..app("api", 0)
    };
    assert!(
        rules
            .evaluate(0, &[host("web1", true, vec![big.clone()])])
            .is_empty()
    );
    assert!(
        rules
            .evaluate(5 * S, &[host("web1", true, vec![app("api", 0)])])
            .is_empty()
    );
    assert!(
        rules
            .evaluate(6 * S, &[host("web1", true, vec![big.clone()])])
            .is_empty()
    );
    assert!(
        rules
            .evaluate(15 * S, &[host("web1", true, vec![big.clone()])])
            .is_empty(),
        "a dip restarts the clock"
    );
    let fired = rules.evaluate(16 * S, &[host("web1", true, vec![big.clone()])]);
    assert_eq!(states(&fired), [(Kind::Memory, State::Firing)]);
    assert!(
        fired[0].summary.contains("200 MB (over 100 MB) for 10s"),
        "{fired:?}"
    );
    let cleared = rules.evaluate(17 * S, &[host("web1", true, vec![app("api", 0)])]);
    assert_eq!(states(&cleared), [(Kind::Memory, State::Resolved)]);
}

#[test]
fn a_failed_deploy_fires_and_the_next_good_one_resolves() {
    let mut rules = Rules::new(config(), 0, Vec::new());
    let fired = rules.deploy(
        S,
        "production",
        "update",
        false,
        "failed on web2; rolled back",
    );
    assert_eq!(states(&fired), [(Kind::DeployFailed, State::Firing)]);
    assert_eq!(
        fired[0].summary,
        "deploy update of production: failed on web2; rolled back"
    );
    assert!(
        rules
            .deploy(2 * S, "production", "update", false, "failed on web1")
            .is_empty()
    );
    // Evaluations never clear a deploy incident.
    assert!(rules.evaluate(3 * S, &[]).is_empty());
    let cleared = rules.deploy(4 * S, "production", "update", true, "ok");
    assert_eq!(states(&cleared), [(Kind::DeployFailed, State::Resolved)]);
}

#[test]
fn incidents_open_before_a_restart_do_not_fire_again() {
    let errored = Instance {
        errored: true,
        ..app("api", 0)
    };
    let open = vec![(key(Kind::Errored, "web1", "api", 0), 5)];
    let mut rules = Rules::new(config(), 100 * S, open);
    assert!(
        rules
            .evaluate(101 * S, &[host("web1", true, vec![errored])])
            .is_empty()
    );
    let gone = rules.evaluate(102 * S, &[]);
    assert_eq!(
        states(&gone),
        [(Kind::Errored, State::Resolved)],
        "a host gone clears its incidents"
    );
}

#[test]
fn keys_survive_the_store() {
    let key = key(Kind::CrashLoop, "web-1.example", "api", 3);
    assert_eq!(Key::decode(&key.encode()), Some(key));
    assert_eq!(Key::decode("crash_loop web1 api"), None);
    assert_eq!(Key::decode("nope web1 api 0"), None);
    assert_eq!(Key::decode("crash_loop web1 api 0 extra"), None);
}
