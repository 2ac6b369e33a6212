//! What controllers sharing one PostgreSQL show of each other's hosts: each one's
//! `/metrics` reports the hosts it holds and no other (two controllers must never
//! report one host, one "up" and one "down"), the dashboard of either shows every host
//! as the controller holding it sees it, and a `Status` larger than tonic's 4 MiB
//! default passes from the peer to the controller to the CLI's client.

use std::net::SocketAddr;

use fleet_controller::tokens::Role;
use fleet_proto::controller::v1::{Snapshot, agent_message};
use fleet_tests::postgres::Postgres;
use serde_json::Value;

use crate::harness::{Controller, DEADLINE, FakeAgent, hello, process, stage, wait_for_status};
use crate::http::send;
use crate::postgres::on_db;

/// Two controllers, A and B, on a new database `db` of `server`, each with its HTTP
/// face; the directory holding their data goes with the first.
async fn two_on(
    server: &Postgres,
    db: &str,
) -> (
    tempfile::TempDir,
    (Controller, SocketAddr),
    (Controller, SocketAddr),
) {
    server.create_database(db);
    let dir = tempfile::tempdir().unwrap();
    let seal = dir.path().join("a/seal.key");
    let a =
        Controller::start_http_with(&dir.path().join("a"), true, on_db(server, db, &seal)).await;
    let b =
        Controller::start_http_with(&dir.path().join("b"), true, on_db(server, db, &seal)).await;
    (dir, a, b)
}

/// `/metrics` of the controller at `http`, scraped with a new metrics token.
async fn scrape(controller: &Controller, http: SocketAddr) -> String {
    let token = controller.token_with(Role::Metrics, None);
    let bearer = format!("Bearer {token}");
    let answer = send(
        http,
        Some(&controller.ca_pem()),
        ("GET", "/metrics"),
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(answer.code, 200, "{}", answer.head);
    answer.body
}

/// A dashboard session's cookie on the controller at `http`.
async fn sign_in(controller: &Controller, http: SocketAddr) -> String {
    let token = controller.token_with(Role::Read, None);
    let answer = send(
        http,
        Some(&controller.ca_pem()),
        ("POST", "/api/login"),
        &[("Content-Type", "application/json")],
        &format!(r#"{{"token":"{token}"}}"#),
    )
    .await;
    assert_eq!(answer.code, 200, "{}", answer.body);
    let set = answer.header("set-cookie").unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_is_reported_once_and_every_dashboard_shows_every_host() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let (_dir, (a, a_http), (b, b_http)) = two_on(&server, "faces").await;
    let (one, two) = (a.join("web-1").await, a.join("web-2").await);
    let web1 = FakeAgent::connect(a.channel(Some(&one)).await.unwrap(), hello("web-1"))
        .await
        .unwrap();
    // web-2 was A's, then moved to B: A still knows it, disconnected.
    let first = FakeAgent::connect(a.channel(Some(&two)).await.unwrap(), hello("web-2"))
        .await
        .unwrap();
    drop(first);
    let web2 = FakeAgent::connect(b.channel(Some(&two)).await.unwrap(), hello("web-2"))
        .await
        .unwrap();
    for (agent, app) in [(&web1, "api"), (&web2, "worker")] {
        agent
            .send(agent_message::Body::Snapshot(Snapshot {
                seq: 1,
                processes: vec![process(0, app)],
            }))
            .await;
    }
    let token = a.api_token();
    for controller in [&a, &b] {
        wait_for_status(controller, &token, &["web-1", "web-2"], DEADLINE, |s| {
            s.hosts
                .iter()
                .all(|h| h.reachable && h.processes.len() == 1)
        })
        .await;
    }

    // Each host's series come from its holder only (A learns who holds what at its
    // next lease renewal, every 3 s).
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut on_a = scrape(&a, a_http).await;
    while on_a.contains(r#"host="web-2""#) {
        assert!(
            tokio::time::Instant::now() < until,
            "A still reports B's host:\n{on_a}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        on_a = scrape(&a, a_http).await;
    }
    let on_b = scrape(&b, b_http).await;
    assert!(on_a.contains(r#"fleet_host_up{host="web-1"} 1"#), "{on_a}");
    assert!(on_b.contains("fleet_host_up{host=\"web-2\"} 1"), "{on_b}");
    assert!(
        !on_b.contains("host=\"web-1\""),
        "B reports A's host:\n{on_b}"
    );

    // A's dashboard shows web-2 as B sees it: reachable, running `worker`.
    let cookie = sign_in(&a, a_http).await;
    let answer = send(
        a_http,
        Some(&a.ca_pem()),
        ("GET", "/api/host/web-2"),
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(answer.code, 200, "{}", answer.body);
    let host: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(host["card"]["reachable"], true, "{host:#}");
    assert_eq!(host["instances"][0]["name"], "worker", "{host:#}");
    assert!(host["card"]["since"].as_u64().unwrap() > 0, "{host:#}");
    drop((web1, web2));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_past_four_mib_passes_from_the_peer_through_the_cli_client() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let (dir, (a, _), (b, _)) = two_on(&server, "large").await;
    let big = b.join("big").await;
    let agent = FakeAgent::connect(b.channel(Some(&big)).await.unwrap(), hello("big"))
        .await
        .unwrap();
    // 9,000 instances with long names: about 5.8 MB as a Status.
    let name = "n".repeat(600);
    agent
        .send(agent_message::Body::Snapshot(Snapshot {
            seq: 1,
            processes: (0..9_000).map(|id| process(id, &name)).collect(),
        }))
        .await;
    // Through A (which asks B) with the CLI's own client.
    let settings = fleet_remote::stage::ControllerSettings {
        url: format!("https://{}", a.addr),
        token: a.api_token(),
        ca: Some(dir.path().join("a/ca.pem")),
    };
    let mut client = fleet_remote::stage::connect_controller(&settings)
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let request = fleet_proto::controller::v1::StatusRequest {
            stage: Some(stage(&["big"])),
        };
        let status = client.status(request).await.unwrap().into_inner();
        if status.hosts[0].processes.len() == 9_000 {
            assert!(status.hosts[0].reachable);
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "A never showed big's 9,000 instances: {:?}",
            status.hosts[0].error
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(agent);
    a.stop().await;
    b.stop().await;
}
