//! Agents' certificates: one current certificate per host. A rejoin supersedes the
//! previous one (its open session closes, a new session with it is refused), `host
//! remove` revokes the host, and an agent renews its certificate over its session.

use std::time::Duration;

use fleet_proto::controller::v1::agent_link_client::AgentLinkClient;
use fleet_proto::controller::v1::{JoinRequest, RenewRequest, agent_message, controller_message};
use tonic::Code;

use crate::harness::{AgentIdentity, Controller, DEADLINE, FakeAgent, csr, hello};

/// Joins `host` again with a new join token; `rejoin` as `fleet-agent join --rejoin`.
async fn join_again(
    controller: &Controller,
    host: &str,
    rejoin: bool,
) -> Result<AgentIdentity, tonic::Status> {
    let (token, _) =
        fleet_controller::create_join_token(&controller.store, host, Duration::from_secs(60))
            .unwrap();
    let (key, csr_pem) = csr(host);
    let response = AgentLinkClient::new(controller.channel(None).await.unwrap())
        .join(JoinRequest {
            token,
            host: host.to_owned(),
            csr_pem,
            protocol_major: 1,
            rejoin,
        })
        .await?
        .into_inner();
    Ok(AgentIdentity {
        cert_pem: response.certificate_pem,
        key_pem: key.serialize_pem(),
        controllers: Vec::new(),
    })
}

async fn session(
    controller: &Controller,
    identity: &AgentIdentity,
    host: &str,
) -> Result<FakeAgent, tonic::Status> {
    let channel = controller.channel(Some(identity)).await.unwrap();
    FakeAgent::connect(channel, hello(host)).await
}

/// Waits for the controller to end `agent`'s session.
async fn ended(agent: &mut FakeAgent) {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(until, agent.inbound.message()).await {
            Err(_) => panic!("the session is still open after {DEADLINE:?}"),
            Ok(Ok(Some(_))) => continue,
            Ok(_) => return,
        }
    }
}

#[tokio::test]
async fn a_rejoin_supersedes_the_old_certificate_and_ends_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let (mut first, old) = FakeAgent::joined(&controller, "web-1").await;

    let refused = join_again(&controller, "web-1", false).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(
        refused.message().starts_with("web-1 has already joined")
            && refused.message().contains("--rejoin"),
        "{}",
        refused.message()
    );
    // Refused, the old certificate still works.
    assert!(first.welcome.heartbeat_interval_ms > 0);

    let new = join_again(&controller, "web-1", true).await.unwrap();
    ended(&mut first).await;
    let superseded = session(&controller, &old, "web-1").await.err().unwrap();
    assert_eq!(superseded.code(), Code::Unauthenticated);
    assert!(
        superseded
            .message()
            .starts_with("this certificate of web-1 was superseded"),
        "{}",
        superseded.message()
    );
    session(&controller, &new, "web-1")
        .await
        .expect("the new certificate opens a session");
    let audit = fleet_controller::read_audit(&controller.store, None).unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"rejoin"), "{actions:?}");
    controller.stop().await;
}

#[tokio::test]
async fn a_removed_host_is_refused_until_it_joins_again() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let (mut agent, identity) = FakeAgent::joined(&controller, "web-1").await;

    fleet_controller::remove_host(&controller.store, "web-1").unwrap();
    // The running controller closes the open session (it checks every 2 s).
    ended(&mut agent).await;
    let refused = session(&controller, &identity, "web-1")
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().starts_with("web-1 was removed at "),
        "{}",
        refused.message()
    );
    let twice = fleet_controller::remove_host(&controller.store, "web-1").unwrap_err();
    assert!(twice.to_string().contains("no host named web-1"), "{twice}");

    // A new join token brings it back, no --rejoin needed.
    let back = join_again(&controller, "web-1", false).await.unwrap();
    session(&controller, &back, "web-1")
        .await
        .expect("joined again");
    controller.stop().await;
}

#[tokio::test]
async fn an_agent_renews_its_certificate_over_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start_with(dir.path(), |config| {
        config.agent_cert_lifetime = Duration::from_secs(3600);
        config.agent_cert_renew_before = Duration::from_secs(2 * 3600);
    })
    .await;
    let (mut agent, old) = FakeAgent::joined(&controller, "web-1").await;
    assert!(agent.welcome.renew_certificate, "it expires within 2 h");

    let (key, csr_pem) = csr("web-1");
    agent
        .send(agent_message::Body::Renew(RenewRequest { csr_pem }))
        .await;
    let renewed = loop {
        match agent.next().await {
            Some(controller_message::Body::Renewed(renewed)) => break renewed,
            Some(_) => continue,
            None => panic!("the session ended before the renewal"),
        }
    };
    let new = AgentIdentity {
        cert_pem: renewed.certificate_pem,
        key_pem: key.serialize_pem(),
        controllers: Vec::new(),
    };
    // The renewing session carries on: the sweep (every 2 s) does not take it for a
    // superseded one. Nothing arrives, and the session does not end, over one sweep.
    let quiet = tokio::time::timeout(Duration::from_millis(2500), agent.inbound.message()).await;
    assert!(
        quiet.is_err(),
        "the session stays open and quiet: {quiet:?}"
    );
    let superseded = session(&controller, &old, "web-1").await.err().unwrap();
    assert_eq!(superseded.code(), Code::Unauthenticated);
    session(&controller, &new, "web-1")
        .await
        .expect("the renewed certificate opens a session");
    controller.stop().await;
}

#[tokio::test]
async fn an_oversized_join_is_cut_off_and_the_controller_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let mut link = AgentLinkClient::new(controller.channel(None).await.unwrap());
    let huge = link
        .join(JoinRequest {
            token: "fjt_x".into(),
            host: "web-1".into(),
            csr_pem: "A".repeat(4 << 20),
            protocol_major: 1,
            rejoin: false,
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    assert!(
        huge.message().contains("at most 64 KiB"),
        "{}",
        huge.message()
    );
    // A normal join on a new connection still works.
    FakeAgent::joined(&controller, "web-1").await;
    controller.stop().await;
}

#[tokio::test]
async fn a_peer_that_keeps_failing_to_authenticate_is_refused_early() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let mut link = AgentLinkClient::new(controller.channel(None).await.unwrap());
    let attempt = || JoinRequest {
        token: "fjt_guess".into(),
        host: "web-1".into(),
        csr_pem: csr("web-1").1,
        protocol_major: 1,
        rejoin: false,
    };
    let mut codes = Vec::new();
    for _ in 0..25 {
        codes.push(link.join(attempt()).await.unwrap_err().code());
    }
    let unauthenticated = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    assert_eq!(unauthenticated, 20, "a burst of 20 failures: {codes:?}");
    assert!(
        codes[20..].iter().all(|c| *c == Code::ResourceExhausted),
        "{codes:?}"
    );
    // The same limit covers API tokens from this address.
    let refused = controller
        .fleet()
        .await
        .hello(crate::harness::authed(Default::default(), "fct_guess"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .starts_with("too many failed attempts from 127.0.0.1")
    );
    // A valid token from the same address still works: at once for a token the
    // controller knows (its list is refreshed every 2 s), checked at the call.
    let token = controller.api_token();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let hello = controller
            .fleet()
            .await
            .hello(crate::harness::authed(
                fleet_proto::controller::v1::FleetHello {
                    protocol_major: 1,
                    ..Default::default()
                },
                &token,
            ))
            .await;
        match hello {
            Ok(_) => break,
            Err(status) if tokio::time::Instant::now() < until => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("a valid token stays refused: {status:?}"),
        }
    }
    controller.stop().await;
}
