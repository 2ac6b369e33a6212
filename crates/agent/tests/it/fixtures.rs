//! Every released format of `state.json` and `dump.json` (`tests/fixtures/v<N>/`),
//! as an earlier agent wrote them, must still load: an upgraded agent reads the
//! home the old one left (pueue keeps such fixtures too). A new format adds a
//! directory here; none is ever removed.

use std::path::{Path, PathBuf};

use fleet_agent::store::SavedList;

use crate::harness::Agent;

fn fixture(version: u32, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("v{version}"))
        .join(name)
}

#[test]
fn state_and_dump_of_format_1_still_load() {
    for name in ["state.json", "dump.json"] {
        let list = SavedList::read(&fixture(1, name)).expect(name);
        assert_eq!(list.version, 1, "{name}");
        let summary: Vec<(u32, &str, u32, bool)> = (list.processes.iter())
            .map(|p| (p.id, p.spec.name.as_str(), p.instance, p.wants_running))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, "api", 0, true),
                (1, "api", 1, true),
                (2, "worker", 0, false)
            ],
            "{name}"
        );
        let api = &list.processes[0].spec;
        assert_eq!(api.args, ["3600"]);
        assert_eq!(
            api.env.get("NODE_ENV").map(String::as_str),
            Some("production")
        );
        assert_eq!(api.max_memory_restart_bytes, Some(200 * 1024 * 1024));
        assert_eq!(api.kill_timeout_ms, 3000);
        assert_eq!(api.cron_restart.as_deref(), Some("0 3 * * *"));
        assert_eq!(
            api.inherited_env.get("HOME").map(String::as_str),
            Some("/home/deploy")
        );
        let worker = &list.processes[2].spec;
        assert_eq!(worker.namespace, "jobs");
        assert!(!worker.autorestart);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_format_1_home_brings_its_apps_back() {
    let home = tempfile::Builder::new()
        .prefix("fleet-agent-v1")
        .tempdir()
        .expect("a temp home");
    // The apps ran in /srv/app on the old host; here they run in the temp home.
    let state = std::fs::read_to_string(fixture(1, "state.json"))
        .expect("the fixture")
        .replace("/srv/app", &home.path().display().to_string());
    std::fs::write(home.path().join("state.json"), state).expect("an old state file");
    let mut agent = Agent::start_in(home).await;
    let list = agent
        .wait_until("api online twice, worker stopped", |list| {
            let status = |id: u32| list.iter().find(|p| p.id == id).map(|p| p.status());
            use fleet_proto::agent::v1::ProcessStatus::{Online, Stopped};
            status(0) == Some(Online) && status(1) == Some(Online) && status(2) == Some(Stopped)
        })
        .await;
    assert!(
        list.iter()
            .filter(|p| p.name == "api")
            .all(|p| p.pid.is_some())
    );
    // What the new agent writes back is the current format, with the same apps.
    let home = agent.stop().await;
    let rewritten = SavedList::read(&home.path().join("state.json")).expect("state.json");
    assert_eq!(rewritten.processes.len(), 3);
}
