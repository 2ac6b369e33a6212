//! Commands go out on the hosts' sessions and come back as per-host results; a reload
//! rolls host by host and stops at the first failure. Every command is audited.

use fleet_proto::controller::v1::{
    Action, CommandRequest, CommandResult, agent_message, controller_message,
};
use tokio::sync::mpsc;

use crate::harness::{Controller, FakeAgent, authed, process, stage};

/// Answers every command like an agent would: `ok` unless told to fail, with the
/// process list. Reports each command it saw.
pub(crate) fn answer_commands(
    mut agent: FakeAgent,
    fail: bool,
) -> mpsc::UnboundedReceiver<(Action, Vec<String>)> {
    let (seen, commands) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(message)) = agent.inbound.message().await {
            if let Some(controller_message::Body::Command(command)) = message.body {
                let _ = seen.send((command.action(), command.targets.clone()));
                let result = CommandResult {
                    request_id: command.request_id,
                    ok: !fail,
                    error: if fail {
                        "app api failed to start".into()
                    } else {
                        String::new()
                    },
                    processes: vec![process(0, "api")],
                    code: 0,
                };
                agent.send(agent_message::Body::Result(result)).await;
            }
        }
    });
    commands
}

#[tokio::test]
async fn restart_returns_each_hosts_result_and_an_unconnected_host_fails() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let (agent, _) = FakeAgent::joined(&controller, "web-1").await;
    let mut seen = answer_commands(agent, false);

    let response = controller
        .command(&token, &["web-1", "ghost"], Action::Restart, &["api"])
        .await;
    let (web, ghost) = (&response.hosts[0], &response.hosts[1]);
    assert_eq!(web.host, "web-1");
    assert!(web.ok, "{web:?}");
    assert_eq!(web.processes.len(), 1);
    assert_eq!(web.processes[0].host, "web-1");
    assert_eq!(ghost.host, "ghost");
    assert!(!ghost.ok);
    assert_eq!(ghost.error, "unreachable: never connected");
    assert_eq!(
        seen.recv().await.unwrap(),
        (Action::Restart, vec!["api".to_owned()])
    );
    controller.stop().await;

    let conn = rusqlite::Connection::open(dir.path().join("controller.db")).unwrap();
    let (who, action, stage, targets, result): (String, String, String, String, String) = conn
        .query_row(
            "SELECT who, action, stage, targets, result FROM audit_log WHERE action = 'restart'",
            [],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .unwrap();
    assert!(who.starts_with("token:"));
    assert_eq!(
        (action.as_str(), stage.as_str(), targets.as_str()),
        ("restart", "test", "[\"api\"]")
    );
    assert_eq!(result, "failed: ghost: unreachable: never connected");
    let stages: String = conn
        .query_row("SELECT hosts FROM stages WHERE name = 'test'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(stages, "[\"web-1\",\"ghost\"]");
}

#[tokio::test]
async fn reload_rolls_host_by_host_and_stops_at_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let (web1, _) = FakeAgent::joined(&controller, "web-1").await;
    let (web2, _) = FakeAgent::joined(&controller, "web-2").await;
    let (web3, _) = FakeAgent::joined(&controller, "web-3").await;
    let mut seen1 = answer_commands(web1, false);
    let mut seen2 = answer_commands(web2, true);
    let mut seen3 = answer_commands(web3, false);

    let response = controller
        .command(
            &token,
            &["web-1", "web-2", "web-3"],
            Action::Reload,
            &["all"],
        )
        .await;
    let summary: Vec<_> = response
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.ok, h.error.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("web-1", true, ""),
            ("web-2", false, "app api failed to start"),
            ("web-3", false, "not reloaded: an earlier host failed"),
        ]
    );
    assert_eq!(seen1.recv().await.unwrap().0, Action::Reload);
    assert_eq!(seen2.recv().await.unwrap().0, Action::Reload);
    assert!(seen3.try_recv().is_err(), "web-3 was never asked");
    controller.stop().await;
}

#[tokio::test]
async fn a_command_without_an_action_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let refused = controller
        .fleet()
        .await
        .command(authed(
            CommandRequest {
                stage: Some(stage(&["web-1"])),
                ..CommandRequest::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    controller.stop().await;
}
