//! A restarted controller keeps its CA, its tokens and what it knew of its hosts.

use std::time::Duration;

use fleet_proto::controller::v1::{Snapshot, agent_message};

use crate::harness::{Controller, FakeAgent, hello, process, wait_for_status};

#[tokio::test]
async fn a_restarted_controller_keeps_its_ca_tokens_and_agents() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let ca = controller.ca_pem();
    let (agent, identity) = FakeAgent::joined(&controller, "web-1").await;
    drop(agent);
    wait_for_status(
        &controller,
        &token,
        &["web-1"],
        Duration::from_secs(2),
        |status| !status.hosts[0].reachable,
    )
    .await;
    controller.stop().await;

    let controller = Controller::start(dir.path()).await;
    assert_eq!(controller.ca_pem(), ca, "the CA survives a restart");
    let status = controller.status(&token, &["web-1"]).await;
    let web = &status.hosts[0];
    assert!(!web.reachable);
    assert!(
        web.error
            .starts_with("disconnected: no session since the controller started (last seen "),
        "{}",
        web.error
    );
    assert!(web.last_seen_unix_ms > 0);

    // The agent's certificate from before the restart still opens a session.
    let channel = controller.channel(Some(&identity)).await.unwrap();
    let agent = FakeAgent::connect(channel, hello("web-1")).await.unwrap();
    agent
        .send(agent_message::Body::Snapshot(Snapshot {
            processes: vec![process(0, "api")],
            seq: 1,
        }))
        .await;
    wait_for_status(
        &controller,
        &token,
        &["web-1"],
        Duration::from_secs(2),
        |status| status.hosts[0].reachable && status.hosts[0].processes.len() == 1,
    )
    .await;
    controller.stop().await;
}
