//! Cluster mode for any program, with real HTTP servers (`crates/testapp`): instances
//! sharing the agent's socket (fd 3) or behind its proxy (`PORT`), PM2's instance
//! numbering and scale cases (12-14), reloads under load with zero failed requests,
//! a replacement that never gets ready, and a crashed instance out of rotation.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::http::Load;

const SETTLE: Duration = Duration::from_secs(15);

fn config(fleet: &Fleet, name: &str, mode: &str, port: u16, instances: u32, extra: &str) {
    let app = fleet.testapp();
    let args = if mode == "proxy" {
        r#"args = ["--port-only"]"#
    } else {
        ""
    };
    fleet.file(
        "fleet.toml",
        &format!(
            "[apps.{name}]\nscript = \"{}\"\nexec_mode = \"{mode}\"\nport = {port}\ninstances = {instances}\nkill_timeout = 3000\n{args}\n{extra}\n",
            app.display()
        ),
    );
}

/// One request on a new connection to loopback; the body.
fn get(port: u16, path: &str) -> std::io::Result<String> {
    crate::http::get("127.0.0.1", port, path)
}

fn pid_of(body: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .unwrap_or_default()
        .to_string()
}

fn pids(fleet: &Fleet, name: &str) -> BTreeSet<i64> {
    by_name(&fleet.list(), name)
        .iter()
        .filter_map(|p| p["pid"].as_i64())
        .collect()
}

fn four_instances_share_the_port(mode: &str) {
    let fleet = Fleet::new();
    let port = free_port();
    config(&fleet, "web", mode, port, 4, "");
    fleet.ok(&["start", "fleet.toml"]);
    let list = fleet.wait_list("four online", SETTLE, |l| {
        status_of(l, "web") == ["online"; 4]
    });
    assert!(
        list.iter().all(|p| p["exec_mode"] == "cluster"),
        "{list:#?}"
    );
    let mut answered = BTreeSet::new();
    for _ in 0..200 {
        answered.insert(pid_of(&get(port, "/").unwrap()));
        if answered.len() == 4 {
            break;
        }
    }
    let expected = if mode == "proxy" { 4 } else { 2 };
    assert!(
        answered.len() >= expected,
        "{mode}: instances answering: {answered:?}"
    );
}

#[test]
fn four_instances_share_the_port_by_socket_inheritance() {
    four_instances_share_the_port("cluster");
}

#[test]
fn four_instances_share_the_port_behind_the_proxy() {
    four_instances_share_the_port("proxy");
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// The local port of the connections a proxy-mode app receives, over `n` requests.
fn arrival_ports(port: u16, n: usize) -> BTreeSet<u16> {
    (0..n)
        .map(|_| {
            let body = get(port, "/addr").unwrap();
            let local = body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("local="))
                .unwrap_or_else(|| panic!("no local= in {body:?}"));
            local.rsplit_once(':').unwrap().1.parse().unwrap()
        })
        .collect()
}

/// An agent running as root steers proxy-mode connections in the kernel: each one
/// arrives at an instance's own listener with the app's public port as its local port.
/// With `FLEET_PROXY_STEERING=0` in the agent's environment (and where the agent may not
/// load BPF programs) the agent proxies: connections arrive on the private ports.
#[test]
fn proxy_mode_is_steered_in_the_kernel_unless_turned_off() {
    for steering in [true, false] {
        let fleet = Fleet::new();
        let port = free_port();
        config(&fleet, "web", "proxy", port, 2, "");
        let mut start = fleet.command(&["start", "fleet.toml"]);
        if !steering {
            start.env("FLEET_PROXY_STEERING", "0");
        }
        let output = fleet.run_with(start);
        assert!(output.status.success(), "{output:?}");
        fleet.wait_list("two online", SETTLE, |l| {
            status_of(l, "web") == ["online"; 2]
        });
        let arrived = arrival_ports(port, 8);
        if steering && running_as_root() {
            assert_eq!(arrived, BTreeSet::from([port]), "steered to the instances");
        } else {
            // Round-robin over both instances, each on its own private port.
            assert!(
                arrived.len() == 2 && !arrived.contains(&port),
                "proxied: {arrived:?}"
            );
        }
        fleet.ok(&["kill"]);
    }
}

fn reloads_under_load_fail_no_request(mode: &str) {
    let fleet = Fleet::new();
    let port = free_port();
    config(&fleet, "web", mode, port, 2, "");
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("two online", SETTLE, |l| {
        status_of(l, "web") == ["online"; 2]
    });
    let before = pids(&fleet, "web");

    let load = Load::start("127.0.0.1", port, 8);
    let mut seen_pids = before.clone();
    for _ in 0..3 {
        fleet.ok(&["reload", "web"]);
        seen_pids.extend(pids(&fleet, "web"));
    }
    // Keep the load on a moment after the last swap, then stop.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        std::thread::sleep(POLL_INTERVAL);
    }
    let (ok, failed, errors) = load.finish();
    assert_eq!(
        failed,
        0,
        "{mode}: {failed} failed of {}: {errors:?}",
        ok + failed
    );
    assert!(ok > 50, "{mode}: only {ok} requests made it");
    let list = fleet.list();
    assert_eq!(status_of(&list, "web"), ["online"; 2]);
    assert!(by_name(&list, "web").iter().all(|p| p["restarts"] == 3));
    assert_eq!(seen_pids.len(), 8, "each reload replaced both instances");
    let after = pids(&fleet, "web");
    wait_until("the replaced processes to exit", SETTLE, || {
        before.iter().all(|&p| dead(p as i32))
    });
    assert!(after.is_disjoint(&before));
}

#[test]
fn reloads_under_load_fail_no_request_with_socket_inheritance() {
    reloads_under_load_fail_no_request("cluster");
}

#[test]
fn reloads_under_load_fail_no_request_behind_the_proxy() {
    reloads_under_load_fail_no_request("proxy");
}

#[test]
fn a_replacement_that_never_gets_ready_leaves_the_old_instances_serving() {
    let fleet = Fleet::new();
    let port = free_port();
    config(
        &fleet,
        "web",
        "cluster",
        port,
        2,
        "wait_ready = true\nlisten_timeout = 1000",
    );
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("two online", SETTLE, |l| {
        status_of(l, "web") == ["online"; 2]
    });
    let before = pids(&fleet, "web");

    // The new config never says READY=1; a reload of the file must fail and keep the
    // old processes.
    let app = fleet.testapp();
    fleet.file(
        "fleet.toml",
        &format!(
            "[apps.web]\nscript = \"{}\"\nexec_mode = \"cluster\"\nport = {port}\ninstances = 2\nwait_ready = true\nlisten_timeout = 1000\nargs = [\"--never-ready\", \"--listen-anyway\"]\n",
            app.display()
        ),
    );
    let load = Load::start("127.0.0.1", port, 4);
    let err = fleet.fails(&["reload", "fleet.toml"], 1);
    let (ok, failed, errors) = load.finish();
    assert!(err.contains("web") && err.contains("not ready"), "{err}");
    assert_eq!(
        pids(&fleet, "web"),
        before,
        "the old instances keep serving"
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok > 0);
    let described = fleet.describe("web");
    assert!(described.iter().all(|d| d["status"] == "online"));
    // And a later reload is not blocked by a stale lock.
    let err = fleet.fails(&["reload", "fleet.toml"], 1);
    assert!(err.contains("not ready"), "{err}");
}

/// `web`, one cluster instance whose replacement takes 1.5 s to be ready, with a
/// `fleet reload web` under way (its replacement launching); and the pid it had
/// before.
fn mid_reload(fleet: &Fleet) -> (Option<i64>, std::process::Child) {
    config(
        fleet,
        "web",
        "cluster",
        free_port(),
        1,
        "wait_ready = true\nlisten_timeout = 10000\nargs = [\"--ready-delay-ms\", \"1500\"]",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let before = fleet.list()[0]["pid"].as_i64();
    let reload = fleet.command(&["reload", "web"]).spawn().unwrap();
    wait_until("the first reload to start", SETTLE, || {
        fleet.list()[0]["status"] == "launching"
    });
    (before, reload)
}

#[test]
fn a_second_reload_of_the_same_app_is_refused() {
    let fleet = Fleet::new();
    let (_, mut first) = mid_reload(&fleet);
    let err = fleet.fails(&["reload", "web"], 1);
    assert!(err.contains("already running"), "{err}");
    assert!(first.wait().unwrap().success());
}

#[test]
fn a_reload_whose_client_goes_away_still_finishes_and_the_next_one_runs() {
    let fleet = Fleet::new();
    let (before, mut first) = mid_reload(&fleet);
    // The client goes away mid-reload, as a controller killed mid-deploy does.
    first.kill().unwrap();
    first.wait().unwrap();
    let replaced = fleet.wait_list("the replacement online", SETTLE, |l| {
        l[0]["status"] == "online" && l[0]["pid"].as_i64() != before
    });
    // Nothing was left half replaced: the next reload runs.
    fleet.ok(&["reload", "web"]);
    let after = fleet.list();
    assert_eq!(after[0]["status"], "online");
    assert_ne!(after[0]["pid"], replaced[0]["pid"], "replaced again");
}

#[test]
fn a_crashed_instance_is_out_of_rotation_until_it_is_back() {
    let fleet = Fleet::new();
    let port = free_port();
    config(&fleet, "web", "proxy", port, 2, "restart_delay = 1500");
    fleet.ok(&["start", "fleet.toml"]);
    let list = fleet.wait_list("two online", SETTLE, |l| {
        status_of(l, "web") == ["online"; 2]
    });
    let victim = list[0]["pid"].as_i64().unwrap() as i32;
    kill(victim, nix::sys::signal::Signal::SIGKILL);
    fleet.wait_list("one waiting to restart", SETTLE, |l| {
        status_of(l, "web").contains(&"waiting-restart".to_string())
    });
    // Every request is served, by the survivor only.
    let mut answered = BTreeSet::new();
    for _ in 0..20 {
        answered.insert(pid_of(
            &get(port, "/").expect("served while one instance is down"),
        ));
    }
    assert_eq!(answered.len(), 1);
    assert!(!answered.contains(&victim.to_string()));
    // Back in rotation once it restarted.
    fleet.wait_list("both online again", SETTLE, |l| {
        status_of(l, "web") == ["online"; 2]
    });
    wait_until("both instances answering", SETTLE, || {
        let mut seen = BTreeSet::new();
        for _ in 0..10 {
            seen.insert(pid_of(&get(port, "/").unwrap()));
        }
        seen.len() == 2
    });
}

#[test]
fn instance_numbers_and_scale_follow_pm2() {
    let fleet = Fleet::new();
    let out = fleet.path("instances.txt");
    fleet.script(
        "inst.sh",
        &format!(
            "#!/bin/sh\necho \"$FLEET_APP_INSTANCE $NODE_APP_INSTANCE $APP_ID $PORT\" >> {}\nexec sleep 1000\n",
            out.display()
        ),
    );
    fleet.file(
        "fleet.toml",
        "[apps.child]\nscript = \"inst.sh\"\ninstances = 2\ninstance_var = \"APP_ID\"\nincrement_var = \"PORT\"\nenv = { PORT = 3000 }\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    let mut lines = wait_lines(&out, 2, SETTLE);
    lines.sort();
    // instance_var names fleet's variable; NODE_APP_INSTANCE is always set for PM2 apps.
    assert_eq!(lines, [" 0 0 3000", " 1 1 3001"]);

    let instances = |fleet: &Fleet| -> Vec<i64> {
        let mut v: Vec<i64> = by_name(&fleet.list(), "child")
            .iter()
            .map(|p| p["instance"].as_i64().unwrap())
            .collect();
        v.sort();
        v
    };
    fleet.ok(&["scale", "child", "4"]);
    assert_eq!(instances(&fleet), [0, 1, 2, 3]);
    fleet.ok(&["scale", "child", "2"]);
    assert_eq!(instances(&fleet), [2, 3], "PM2 keeps the highest numbers");
    fleet.ok(&["scale", "child", "+2"]);
    assert_eq!(
        instances(&fleet),
        [0, 1, 2, 3],
        "the lowest free numbers are reused"
    );
    fleet.ok(&["scale", "child", "-1"]);
    assert_eq!(instances(&fleet).len(), 3);
    let err = fleet.fails(&["scale", "child", "3"], 1);
    assert!(err.contains("already has 3"), "{err}");
    fleet.fails(&["scale", "child", "0"], 2);
    fleet.fails(&["scale", "nope", "2"], 1);
    fleet.wait_list("all online", SETTLE, |l| {
        l.len() == 3 && all_status(l, "online")
    });

    // The same with instances = max and negative counts resolved against the CPUs.
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    fleet.ok(&["start", "inst.sh", "--name", "maxed", "-i", "max"]);
    assert_eq!(by_name(&fleet.list(), "maxed").len() as i64, cpus);
    fleet.ok(&["start", "inst.sh", "--name", "floor", "-i", "-100"]);
    assert_eq!(
        by_name(&fleet.list(), "floor").len(),
        1,
        "at least one instance"
    );
}

#[test]
fn a_fork_app_without_a_port_is_restarted_by_reload() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh"]);
    let before = fleet.list()[0]["pid"].clone();
    fleet.ok(&["reload", "app"]);
    let list = fleet.list();
    assert_eq!(list[0]["restarts"], 1);
    assert_eq!(list[0]["status"], "online");
    assert_ne!(list[0]["pid"], before);
}
