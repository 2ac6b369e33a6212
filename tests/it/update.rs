//! `fleet update`: the agent re-executes as another binary and keeps every app: 20 apps
//! (cluster mode under load, proxy mode, a log flood with numbered lines, a crash loop
//! waiting for its restart) keep their pids, no request fails, every line is logged
//! exactly once and in order; a broken binary, and one that refuses the handoff, leave
//! the old agent serving with the command exiting 1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::http::Load;

const SETTLE: Duration = Duration::from_secs(20);
/// Lines the flood app prints before it goes quiet.
const FLOOD_LINES: usize = 1_000_000;

fn twenty_apps(fleet: &Fleet, cluster: u16, proxy: u16) {
    let app = fleet.testapp();
    let mut config = format!(
        "[apps.web]\nscript = \"{app}\"\nexec_mode = \"cluster\"\nport = {cluster}\ninstances = 2\n\n\
         [apps.behind]\nscript = \"{app}\"\nargs = [\"--port-only\"]\nexec_mode = \"proxy\"\nport = {proxy}\ninstances = 2\n\n\
         [apps.flood]\nscript = \"/bin/sh\"\nargs = [\"-c\", \"seq 1 {FLOOD_LINES}; exec sleep 1000\"]\n\n\
         [apps.crashy]\nscript = \"/bin/sh\"\nargs = [\"-c\", \"exit 3\"]\nrestart_delay = 1500\nmax_restarts = 1000\n\n",
        app = app.display()
    );
    for n in 0..16 {
        config.push_str(&format!(
            "[apps.quiet{n}]\nscript = \"/bin/sh\"\nargs = [\"-c\", \"echo started {n}; exec sleep 1000\"]\n\n"
        ));
    }
    fleet.file("fleet.toml", &config);
}

fn pids(list: &[serde_json::Value]) -> BTreeMap<String, i64> {
    list.iter()
        .filter(|p| p["name"] != "crashy")
        .map(|p| {
            (
                format!("{}:{}", p["name"].as_str().unwrap(), p["instance"]),
                p["pid"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn exe_of(pid: i32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// A copy of the built agent: the "new" binary.
fn agent_copy(fleet: &Fleet) -> std::path::PathBuf {
    let built = fleet.testapp().with_file_name("fleet-agent");
    let copy = fleet.path("fleet-agent-new");
    std::fs::copy(&built, &copy).unwrap();
    copy
}

/// Every line of the flood's log is the next number: none lost, none doubled.
fn assert_numbered(path: &std::path::Path, count: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut expected = 1;
    for line in text.lines() {
        assert_eq!(
            line,
            expected.to_string(),
            "line {expected} of {}",
            path.display()
        );
        expected += 1;
    }
    assert_eq!(expected - 1, count, "lines in {}", path.display());
}

#[test]
fn an_update_keeps_twenty_apps_their_pids_their_connections_and_their_lines() {
    let fleet = Fleet::new();
    let (cluster, proxy) = (free_port(), free_port());
    twenty_apps(&fleet, cluster, proxy);
    fleet.ok(&["start", "fleet.toml"]);
    let before = fleet.wait_list("every app up", SETTLE, |l| {
        l.len() == 22
            && l.iter()
                .filter(|p| p["name"] != "crashy")
                .all(|p| p["status"] == "online")
            && status_of(l, "crashy") == ["waiting-restart"]
    });
    let agent = fleet.agent_pid().unwrap();
    let original = exe_of(agent);
    let new = agent_copy(&fleet);
    let flood_log = fleet.home.path().join("logs/flood-out.log");
    wait_until("the flood to start", SETTLE, || {
        std::fs::metadata(&flood_log).is_ok_and(|m| m.len() > 0)
    });

    let load = Load::start("127.0.0.1", cluster, 4);
    // Requests are flowing before the update, and after it.
    wait_until("requests to flow", SETTLE, || {
        crate::http::get("127.0.0.1", cluster, "/").is_ok()
    });
    let out = fleet.ok(&["update", "--agent", new.to_str().unwrap()]);
    assert!(out.contains("no app restarted"), "{out}");
    let served = Instant::now() + Duration::from_millis(300);
    while Instant::now() < served {
        assert!(
            crate::http::get("127.0.0.1", proxy, "/").is_ok(),
            "the proxy serves"
        );
    }
    let (ok, failed, errors) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {errors:?}",
        ok + failed
    );
    assert!(ok > 20, "only {ok} requests made it");

    let after = fleet.list();
    assert_eq!(pids(&after), pids(&before), "every app kept its pid");
    assert_eq!(fleet.agent_pid(), Some(agent), "the agent kept its pid");
    assert_eq!(exe_of(agent), std::fs::canonicalize(&new).unwrap());
    let log = fleet.agent_log();
    assert!(
        log.contains(&format!(
            "({}) took over from fleet-agent",
            new.canonicalize().unwrap().display()
        )) && log.contains(&format!("({})", original.display())),
        "{log}"
    );
    // The crash loop's backoff carried on in the new agent.
    let crashy = |l: &[serde_json::Value]| by_name(l, "crashy")[0]["restarts"].as_u64().unwrap();
    let restarts = crashy(&after);
    fleet.wait_list("the crash loop to go on", SETTLE, |l| crashy(l) > restarts);
    wait_lines(&flood_log, FLOOD_LINES, SETTLE);
    assert_numbered(&flood_log, FLOOD_LINES);
    // The new agent supervises: a stop and a restart work.
    fleet.ok(&["restart", "quiet0"]);
    let restarted = fleet.wait_list("quiet0 restarted", SETTLE, |l| {
        status_of(l, "quiet0") == ["online"]
    });
    assert_ne!(
        by_name(&restarted, "quiet0")[0]["pid"],
        by_name(&before, "quiet0")[0]["pid"]
    );
}

#[test]
fn a_broken_binary_leaves_the_agent_serving_and_exits_1() {
    let fleet = Fleet::new();
    fleet.ok(&["start", "sleep", "--name", "nap", "--", "1000"]);
    let before = fleet.wait_list("nap online", SETTLE, |l| status_of(l, "nap") == ["online"]);
    let agent = fleet.agent_pid().unwrap();
    let exe = exe_of(agent);
    let broken = fleet.script(
        "broken-agent",
        "#!/bin/sh\necho 'segfault, say' >&2\nexit 139\n",
    );
    let err = fleet.fails(&["update", "--agent", broken.to_str().unwrap()], 1);
    assert!(
        err.contains("cannot take over") && err.contains("segfault, say"),
        "{err}"
    );
    let garbage = fleet.script("garbage-agent", "\u{7f}ELF not really");
    let err = fleet.fails(&["update", "--agent", garbage.to_str().unwrap()], 1);
    assert!(err.contains("cannot run"), "{err}");
    let err = fleet.fails(&["update", "--agent", "/nonexistent/fleet-agent"], 2);
    assert!(err.contains("/nonexistent/fleet-agent"), "{err}");
    assert_eq!(pids(&fleet.list()), pids(&before));
    assert_eq!((fleet.agent_pid(), exe_of(agent)), (Some(agent), exe));
}

#[test]
fn a_binary_that_refuses_the_handoff_hands_it_back() {
    let fleet = Fleet::new();
    fleet.ok(&["start", "sleep", "--name", "nap", "--", "1000"]);
    let before = fleet.wait_list("nap online", SETTLE, |l| status_of(l, "nap") == ["online"]);
    let agent = fleet.agent_pid().unwrap();
    let exe = exe_of(agent);
    let real = fleet.testapp().with_file_name("fleet-agent");
    // A fleet-agent that passes the check and then refuses the document: started for
    // another home, it goes back to the previous binary, which carries on.
    let other = fleet.script(
        "other-home-agent",
        &format!(
            "#!/bin/sh\n\
             case \"$*\" in *--handoff-check*) echo '{{\"version\":\"9.9.9\",\"formats\":[1]}}'; exit 0;; esac\n\
             eval fd=\\${{$#}}\n\
             exec {real} --daemon --home {elsewhere} --handoff $fd\n",
            real = real.display(),
            elsewhere = fleet.path("elsewhere").display()
        ),
    );
    let err = fleet.fails(&["update", "--agent", other.to_str().unwrap()], 1);
    assert!(
        err.contains("started for") && err.contains("carries on"),
        "{err}"
    );
    assert_eq!(pids(&fleet.list()), pids(&before));
    assert_eq!((fleet.agent_pid(), exe_of(agent)), (Some(agent), exe));
    // It can still be updated afterwards.
    let new = agent_copy(&fleet);
    fleet.ok(&["update", "--agent", new.to_str().unwrap()]);
    assert_eq!(pids(&fleet.list()), pids(&before));
}
