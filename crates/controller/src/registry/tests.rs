//! The registry's sessions, deltas and reachability, without a network.

use super::*;

fn hello(host: &str, boot: &str) -> AgentHello {
    AgentHello {
        protocol_major: 1,
        host: host.into(),
        boot_id: boot.into(),
        agent_version: "0.1.0".into(),
        ..AgentHello::default()
    }
}

fn process(id: u32, name: &str) -> ProcessInfo {
    ProcessInfo {
        id,
        name: name.into(),
        config_json: "{\"big\": true}".into(),
        ..ProcessInfo::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_host_becomes_unreachable_after_the_limit() {
    let registry = Registry::new(Duration::from_secs(15), Vec::new());
    let (tx, _rx) = mpsc::channel(8);
    let handle = registry.connect(&hello("web-1", "b1"), "s1", tx);
    assert!(registry.view("web-1").reachable);
    tokio::time::advance(Duration::from_secs(17)).await;
    let view = registry.view("web-1");
    assert!(!view.reachable);
    assert!(
        view.error.starts_with("no heartbeat for 17s (last seen "),
        "{}",
        view.error
    );
    handle.heard();
    assert!(registry.view("web-1").reachable);
    assert_eq!(registry.view("ghost").error, "never connected");
}

#[tokio::test]
async fn deltas_apply_in_sequence_and_a_gap_asks_for_one_resync() {
    let registry = Registry::new(Duration::from_secs(15), Vec::new());
    let (tx, _rx) = mpsc::channel(8);
    let handle = registry.connect(&hello("web-1", "b1"), "s1", tx);
    let early = Delta {
        seq: 1,
        ..Delta::default()
    };
    assert_eq!(
        handle.delta(early.clone()),
        After::Resync,
        "no snapshot after hello"
    );
    assert_eq!(handle.delta(early), After::Continue);
    let snapshot = Snapshot {
        processes: vec![process(0, "api"), process(1, "worker")],
        seq: 7,
    };
    assert_eq!(handle.snapshot(snapshot), After::Continue);
    let view = registry.view("web-1");
    assert_eq!(view.processes.len(), 2);
    assert!(view.processes[0].config_json.is_empty());
    assert_eq!(view.processes[0].host, "web-1");
    let delta = Delta {
        changed: vec![process(2, "cron")],
        removed: vec![1],
        seq: 8,
    };
    assert_eq!(handle.delta(delta), After::Continue);
    let names: Vec<_> = registry
        .view("web-1")
        .processes
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["api", "cron"]);
    let gap = Delta {
        seq: 10,
        ..Delta::default()
    };
    assert_eq!(handle.delta(gap.clone()), After::Resync);
    assert_eq!(
        handle.delta(gap),
        After::Continue,
        "only one resync until the snapshot"
    );
    assert_eq!(handle.heartbeat(12), After::Continue);
    handle.snapshot(Snapshot {
        processes: vec![],
        seq: 12,
    });
    assert_eq!(handle.heartbeat(13), After::Resync);
}

#[tokio::test]
async fn a_new_session_replaces_the_old_one() {
    let registry = Registry::new(Duration::from_secs(15), Vec::new());
    let (tx, _rx) = mpsc::channel(8);
    let old = registry.connect(&hello("web-1", "b1"), "s1", tx.clone());
    let new = registry.connect(&hello("web-1", "b2"), "s1", tx);
    assert!(old.link.is_ended());
    assert_eq!(old.heard(), After::Replaced);
    assert_eq!(old.disconnect("gone"), None);
    assert_eq!(new.heard(), After::Continue);
    assert!(registry.view("web-1").reachable);
    new.disconnect("the agent closed the session");
    let view = registry.view("web-1");
    assert!(!view.reachable);
    assert!(
        view.error
            .starts_with("disconnected: the agent closed the session (last seen ")
    );
}

#[tokio::test]
async fn an_agent_cannot_speak_for_another_host() {
    let registry = Registry::new(Duration::from_secs(15), Vec::new());
    let (tx, _rx) = mpsc::channel(8);
    let handle = registry.connect(&hello("web-1", "b1"), "s1", tx);
    let mut forged = process(0, "api");
    forged.host = "db-1".into();
    handle.snapshot(Snapshot {
        processes: vec![forged],
        seq: 1,
    });
    assert_eq!(registry.view("web-1").processes[0].host, "web-1");
    let (logs_tx, mut logs_rx) = mpsc::channel(4);
    handle
        .link
        .add_log_subscription(9, logs_tx, true, Arc::default());
    let entry = LogEntry {
        host: "db-1".into(),
        line: "forged".into(),
        ..LogEntry::default()
    };
    handle.link.deliver_logs(LogBatch {
        subscription_id: 9,
        entries: vec![entry],
    });
    let delivered = logs_rx.recv().await.unwrap();
    assert_eq!(delivered[0].host, "web-1");
}
