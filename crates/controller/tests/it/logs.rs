//! Log lines flow from agents to the CLI only while someone watches.

use std::time::Duration;

use fleet_proto::agent::v1::{LogEntry, LogStream};
use fleet_proto::controller::v1::{LogBatch, agent_message, controller_message};

use crate::harness::{Controller, DEADLINE, FakeAgent};

/// `logs` of web-1 with every target: `lines` of history, then (with `follow`) live.
async fn watch(
    controller: &Controller,
    token: &str,
    lines: u32,
    follow: bool,
) -> tonic::Streaming<LogEntry> {
    controller.logs(token, &["web-1"], &[], lines, follow).await
}

fn line(text: &str) -> LogEntry {
    LogEntry {
        ts_unix_ms: 1,
        app: "api".into(),
        id: 0,
        instance: 0,
        stream: LogStream::Out.into(),
        line: text.into(),
        host: "web-1".into(),
        notice: String::new(),
        missed: 0,
        seq: 0,
    }
}

#[tokio::test]
async fn followed_lines_reach_the_cli_and_stop_when_it_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let (mut agent, _) = FakeAgent::joined(&controller, "web-1").await;

    let mut lines = controller
        .logs(&token, &["web-1", "ghost"], &["api"], 5, true)
        .await;
    let Some(controller_message::Body::Subscribe(subscribe)) = agent.next().await else {
        panic!("the agent was not asked for logs");
    };
    assert_eq!(subscribe.targets, ["api"]);
    assert_eq!((subscribe.lines, subscribe.follow), (5, true));

    let ghost = tokio::time::timeout(DEADLINE, lines.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ghost.host, "ghost");
    assert_eq!(ghost.notice, "unreachable: never connected");

    agent
        .send(agent_message::Body::Logs(LogBatch {
            subscription_id: subscribe.subscription_id,
            entries: vec![line("hello"), line("world")],
        }))
        .await;
    for expected in ["hello", "world"] {
        let entry = tokio::time::timeout(DEADLINE, lines.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (entry.host.as_str(), entry.line.as_str()),
            ("web-1", expected)
        );
    }

    drop(lines);
    let Some(controller_message::Body::Unsubscribe(unsubscribe)) = agent.next().await else {
        panic!("the agent was not told to stop");
    };
    assert_eq!(unsubscribe.subscription_id, subscribe.subscription_id);
    controller.stop().await;
}

#[tokio::test]
async fn logs_without_follow_end_when_the_agent_sends_an_empty_batch() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let (mut agent, _) = FakeAgent::joined(&controller, "web-1").await;
    let mut lines = watch(&controller, &token, 10, false).await;
    let Some(controller_message::Body::Subscribe(subscribe)) = agent.next().await else {
        panic!("the agent was not asked for logs");
    };
    for entries in [vec![line("history")], vec![]] {
        agent
            .send(agent_message::Body::Logs(LogBatch {
                subscription_id: subscribe.subscription_id,
                entries,
            }))
            .await;
    }
    let entry = tokio::time::timeout(DEADLINE, lines.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(entry.line, "history");
    let end = tokio::time::timeout(DEADLINE, lines.message())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "the stream ends after the history");
    controller.stop().await;
}

/// A watcher that stops reading loses lines at the controller (the agent's session is
/// never slowed), and is told how many of which app it missed, with its next lines or
/// once it has read what was queued:
/// lines shown plus lines reported missed are every line the agent sent.
#[tokio::test]
async fn a_slow_watcher_is_told_how_many_lines_of_which_app_it_missed() {
    const BATCHES: usize = 2_000;
    const PER_BATCH: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let (mut agent, _) = FakeAgent::joined(&controller, "web-1").await;
    let mut lines = watch(&controller, &token, 0, true).await;
    let Some(controller_message::Body::Subscribe(subscribe)) = agent.next().await else {
        panic!("the agent was not asked for logs");
    };
    let batch = |n: usize, text: &str| {
        let mut entries: Vec<LogEntry> = (0..PER_BATCH).map(|_| line(text)).collect();
        for entry in entries.iter_mut().skip(n % 2) {
            entry.app = "worker".into();
            entry.instance = 1;
        }
        LogBatch {
            subscription_id: subscribe.subscription_id,
            entries,
        }
    };
    // Nobody reads while the agent floods.
    for n in 0..BATCHES {
        agent.send(agent_message::Body::Logs(batch(n, "x"))).await;
    }
    // Read until nothing more comes: no line follows the flood, yet the lines lost at
    // its end are told too (once the queue is empty, the notices fit).
    let (mut shown, mut missed) = (0usize, 0u64);
    let mut per_app: std::collections::BTreeMap<String, u64> = Default::default();
    while let Ok(entry) = tokio::time::timeout(Duration::from_secs(1), lines.message()).await {
        let entry = entry.unwrap().unwrap();
        if entry.missed > 0 {
            assert!(
                entry.notice.contains("on web-1 were not shown"),
                "{entry:?}"
            );
            missed += entry.missed;
            *per_app
                .entry(format!("{}#{}", entry.app, entry.instance))
                .or_default() += entry.missed;
        } else {
            shown += 1;
        }
    }
    assert!(
        missed > 0,
        "the watcher fell behind (else this tests nothing)"
    );
    assert_eq!(shown as u64 + missed, (BATCHES * PER_BATCH) as u64);
    assert_eq!(
        per_app.keys().collect::<Vec<_>>(),
        ["api#0", "worker#1"],
        "{per_app:?}"
    );
    controller.stop().await;
}
