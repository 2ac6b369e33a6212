//! Liveness, not only readiness: an instance whose health check keeps failing, or
//! whose watchdog goes quiet, is restarted (a readiness-gated replacement where the app
//! shares a port, so traffic sees no gap), counted, and `describe` says why.

use std::time::Duration;

use crate::harness::*;
use crate::http::Load;

const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn a_failing_health_check_restarts_the_instance_without_a_failed_request() {
    let fleet = Fleet::new();
    let port = free_port();
    fleet.file(
        "fleet.toml",
        &format!(
            r#"[apps.web]
script = "{testapp}"
args = ["--unhealthy-after-ms", "1500"]
exec_mode = "proxy"
port = {port}
instances = 2
health_check = {{ path = "/health", interval = "200ms", timeout = "500ms" }}
health_fail_count = 3
"#,
            testapp = fleet.testapp().display()
        ),
    );
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("two online", SETTLE, |l| {
        status_of(l, "web") == ["online"; 2]
    });
    let load = Load::start("127.0.0.1", port, 4);
    // Each instance turns unhealthy 1.5 s after it starts: within a few seconds both
    // have been replaced at least once.
    let list = fleet.wait_list("both restarted by their health check", SETTLE, |l| {
        by_name(l, "web")
            .iter()
            .all(|p| p["restarts"].as_u64().unwrap_or(0) >= 1 && p["status"] == "online")
    });
    let (ok, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{failed} failed of {}: {errors:?}", ok + failed);
    assert!(ok > 20, "only {ok} requests made it");
    assert_eq!(by_name(&list, "web").len(), 2);
    let described = fleet.describe("web");
    let cause = &described[0]["restart_cause"]["cause"];
    assert_eq!(
        cause, "health check failed 3 times in a row",
        "{described:?}"
    );
    let text = fleet.ok(&["describe", "web"]);
    assert!(text.contains("restarted by fleet"), "{text}");
}

#[test]
fn a_quiet_watchdog_restarts_the_instance_within_its_period_and_a_second() {
    let fleet = Fleet::new();
    let port = free_port();
    fleet.file(
        "fleet.toml",
        &format!(
            r#"[apps.dog]
script = "{testapp}"
args = ["--watchdog-for-ms", "1500"]
port = {port}
watchdog = "1s"
"#,
            testapp = fleet.testapp().display()
        ),
    );
    fleet.ok(&["start", "fleet.toml"]);
    let list = fleet.wait_list("dog online", SETTLE, |l| status_of(l, "dog") == ["online"]);
    let first_pid = list[0]["pid"].clone();
    let uptime = list[0]["uptime_ms"].as_u64().unwrap_or(0);
    let started_ms = now_ms() - uptime;
    let list = fleet.wait_list("dog restarted", SETTLE, |l| {
        l.len() == 1 && l[0]["pid"] != first_pid && l[0]["status"] == "online"
    });
    assert_eq!(list[0]["restarts"], 1);
    let described = fleet.describe("dog");
    let restart = &described[0]["restart_cause"];
    assert_eq!(
        restart["cause"], "no WATCHDOG=1 within its watchdog (1000ms)",
        "{described:?}"
    );
    // Pings stop 1.5 s after the start; the restart is due a period later, plus a second.
    let at = restart["at"].as_u64().unwrap_or(u64::MAX);
    let late = at.saturating_sub(started_ms + 1500);
    assert!(
        late <= 1000 + 1000,
        "restarted {late} ms after the last ping"
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
