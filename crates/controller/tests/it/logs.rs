//! Log lines flow from agents to the CLI only while someone watches.

use fleet_proto::agent::v1::{LogEntry, LogStream};
use fleet_proto::controller::v1::{FleetLogsRequest, LogBatch, agent_message, controller_message};

use crate::harness::{Controller, DEADLINE, FakeAgent, authed, stage};

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
    }
}

#[tokio::test]
async fn followed_lines_reach_the_cli_and_stop_when_it_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let (mut agent, _) = FakeAgent::joined(&controller, "web-1").await;

    let mut lines = controller
        .fleet()
        .await
        .logs(authed(
            FleetLogsRequest {
                stage: Some(stage(&["web-1", "ghost"])),
                targets: vec!["api".into()],
                lines: 5,
                follow: true,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
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
    let mut lines = controller
        .fleet()
        .await
        .logs(authed(
            FleetLogsRequest {
                stage: Some(stage(&["web-1"])),
                targets: vec![],
                lines: 10,
                follow: false,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
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
