//! Agents join with a one-time token, then hold one session identified by their
//! certificate; what they report is what `Status` answers.

use std::time::Duration;

use fleet_proto::controller::v1::agent_link_client::AgentLinkClient;
use fleet_proto::controller::v1::{
    AgentHello, Delta, JoinRequest, Snapshot, agent_message, controller_message,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use tonic::Code;

use crate::harness::{AgentIdentity, Controller, FakeAgent, csr, hello, process, wait_for_status};

#[tokio::test]
async fn a_joined_agent_shows_its_processes_then_goes_unreachable_when_silent() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start_with(dir.path(), |config| {
        config.unreachable_after = Duration::from_secs(1);
    })
    .await;
    let token = controller.api_token();
    let (agent, _) = FakeAgent::joined(&controller, "web-1").await;
    assert_eq!(agent.welcome.protocol_major, 1);
    assert_eq!(agent.welcome.heartbeat_interval_ms, 5000);
    agent
        .send(agent_message::Body::Snapshot(Snapshot {
            processes: vec![process(0, "api"), process(1, "worker")],
            seq: 1,
        }))
        .await;

    let status = wait_for_status(
        &controller,
        &token,
        &["web-1", "ghost"],
        Duration::from_secs(2),
        |status| status.hosts[0].processes.len() == 2,
    )
    .await;
    let (web, ghost) = (&status.hosts[0], &status.hosts[1]);
    assert_eq!(web.host, "web-1");
    assert!(web.reachable, "{web:?}");
    assert_eq!(web.agent_version, "0.1.0-test");
    assert!(web.processes.iter().all(|p| p.host == "web-1"));
    assert_eq!(ghost.host, "ghost");
    assert!(!ghost.reachable);
    assert_eq!(ghost.error, "never connected");

    // No heartbeats from here on: within two seconds the host is unreachable.
    let status = wait_for_status(
        &controller,
        &token,
        &["web-1"],
        Duration::from_secs(2),
        |status| !status.hosts[0].reachable,
    )
    .await;
    let web = &status.hosts[0];
    assert!(
        web.error.starts_with("no heartbeat for 1s (last seen 20"),
        "{}",
        web.error
    );
    assert!(web.last_seen_unix_ms > 0);
    assert!(web.processes.is_empty());

    // A heartbeat brings it back.
    agent
        .send(agent_message::Body::Heartbeat(
            fleet_proto::controller::v1::Heartbeat { seq: 1 },
        ))
        .await;
    wait_for_status(
        &controller,
        &token,
        &["web-1"],
        Duration::from_secs(2),
        |status| status.hosts[0].reachable,
    )
    .await;
    drop(agent);
    controller.stop().await;
}

#[tokio::test]
async fn a_session_without_a_certificate_is_told_to_join() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let refused = FakeAgent::connect(controller.channel(None).await.unwrap(), hello("web-1"))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "no client certificate: this agent has not joined\nhint: `fleet-agent join <url>` with a join token"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_certificate_for_one_host_cannot_claim_another() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let identity = controller.join("h1").await;
    let channel = controller.channel(Some(&identity)).await.unwrap();
    let refused = FakeAgent::connect(channel, hello("h2"))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.message(), "certificate is for h1, agent claims h2");
    controller.stop().await;
}

#[tokio::test]
async fn an_agent_speaking_protocol_0_is_told_to_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let identity = controller.join("web-1").await;
    let channel = controller.channel(Some(&identity)).await.unwrap();
    let old = AgentHello {
        protocol_major: 0,
        ..hello("web-1")
    };
    let refused = FakeAgent::connect(channel, old).await.err().unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "agent speaks protocol 0.x, controller speaks 1.x; upgrade the agent"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    // A CA of the attacker's own, and a certificate for a real host name from it.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "fleet-controller CA");
    ca_params.distinguished_name = name;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "web-1");
    params.distinguished_name = name;
    let forged = AgentIdentity {
        cert_pem: params.signed_by(&key, &issuer).unwrap().pem(),
        key_pem: key.serialize_pem(),
        controllers: Vec::new(),
    };

    // TLS 1.3 finishes the client's side of the handshake before the server checks the
    // client's certificate, so the refusal shows on the connection or on the first call.
    let error = match controller.channel(Some(&forged)).await {
        Err(error) => format!("{error:?}"),
        Ok(channel) => {
            let refused = FakeAgent::connect(channel, hello("web-1"))
                .await
                .err()
                .unwrap();
            assert_ne!(refused.code(), Code::Ok);
            format!("{refused:?}")
        }
    };
    eprintln!("forged certificate refused: {error}");
    assert!(
        error.contains("UnknownCA"),
        "the error does not say why: {error}"
    );
    let token = controller.api_token();
    assert!(!controller.status(&token, &["web-1"]).await.hosts[0].reachable);
    controller.stop().await;
}

#[tokio::test]
async fn a_join_token_works_once_and_only_for_its_host() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let (token, _) =
        fleet_controller::create_join_token(&controller.store, "web-1", Duration::from_secs(60))
            .unwrap();
    let mut link = AgentLinkClient::new(controller.channel(None).await.unwrap());
    let join = |host: &str| JoinRequest {
        token: token.clone(),
        host: host.to_owned(),
        csr_pem: csr(host).1,
        protocol_major: 1,
        rejoin: false,
    };
    let other = link.join(join("web-2")).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    assert!(
        other
            .message()
            .starts_with("this join token is for web-1, not web-2")
    );
    let bad_csr = link
        .join(JoinRequest {
            csr_pem: "not a csr".into(),
            ..join("web-1")
        })
        .await
        .unwrap_err();
    assert_eq!(bad_csr.code(), Code::InvalidArgument);
    link.join(join("web-1"))
        .await
        .expect("the first join works");
    let again = link.join(join("web-1")).await.unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    assert!(
        again
            .message()
            .starts_with("this join token was already used at "),
        "{}",
        again.message()
    );
    let unknown = link
        .join(JoinRequest {
            token: "fjt_nope".into(),
            ..join("web-1")
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    controller.stop().await;
}

#[tokio::test]
async fn a_skipped_delta_asks_the_agent_for_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let (mut agent, _) = FakeAgent::joined(&controller, "web-1").await;
    agent
        .send(agent_message::Body::Snapshot(Snapshot {
            processes: vec![process(0, "api")],
            seq: 4,
        }))
        .await;
    agent
        .send(agent_message::Body::Delta(Delta {
            changed: vec![process(1, "worker")],
            removed: vec![],
            seq: 5,
        }))
        .await;
    wait_for_status(
        &controller,
        &token,
        &["web-1"],
        Duration::from_secs(2),
        |status| status.hosts[0].processes.len() == 2,
    )
    .await;
    agent
        .send(agent_message::Body::Delta(Delta {
            changed: vec![],
            removed: vec![0],
            seq: 7,
        }))
        .await;
    assert!(matches!(
        agent.next().await,
        Some(controller_message::Body::Resync(_))
    ));
    let status = controller.status(&token, &["web-1"]).await;
    assert_eq!(
        status.hosts[0].processes.len(),
        2,
        "the out-of-sequence delta was not applied"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_new_session_for_a_host_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let (mut first, identity) = FakeAgent::joined(&controller, "web-1").await;
    let channel = controller.channel(Some(&identity)).await.unwrap();
    let second = FakeAgent::connect(channel, hello("web-1")).await.unwrap();
    assert!(first.next().await.is_none(), "the old session ends");
    second
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
