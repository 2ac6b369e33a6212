//! The abuse run (`bench/fleet/run.sh`): while 1,000 agents hold their sessions and
//! `Status` of their stage is called as in the scale test, 200 unauthenticated clients
//! send oversized and malformed `Join`s and 50 clients call with a revoked token.
//! Every abusive request must be refused, `Status` keep its p99 under 50 ms, and the
//! controller's RSS grow by under 20 MB. All come from 127.0.0.1, like the agents:
//! past `MAX_UNPROVEN_PER_PEER` unauthenticated connections, the abusers' new ones
//! are refused at accept (counted as refused requests), while the agents' and the
//! status caller's, authenticated, carry on. Ignored by default; run by hand with
//! `--release --ignored --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_proto::controller::v1::agent_link_client::AgentLinkClient;
use fleet_proto::controller::v1::fleet_service_client::FleetServiceClient;
use fleet_proto::controller::v1::{Heartbeat, JoinRequest, StatusRequest, agent_message};
use tonic::transport::Channel;

use crate::harness::{Controller, authed, csr, stage};
use crate::scale::{HOSTS, connect_agents, rss_bytes};

const JOIN_ABUSERS: usize = 200;
const REVOKED_CLIENTS: usize = 50;
const STATUS_CALLS: usize = 200;
const MAX_RSS_GROWTH: u64 = 20 << 20;
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// What the abusers sent and how much of it was refused.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    refused: AtomicU64,
}

impl Tally {
    fn count(&self, refused: bool) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A connection for an abuser, retried until one is admitted (or the run stops): a
/// connection the controller refuses counts as a refused request. Retried every
/// `RECONNECT_PAUSE`: the controller refuses one in microseconds, but each attempt
/// costs this process a TLS client setup, on the same two CPUs the status calls use.
async fn admitted(controller: &Controller, stop: &AtomicBool, tally: &Tally) -> Option<Channel> {
    while !stop.load(Ordering::Relaxed) {
        match controller.channel(None).await {
            Ok(channel) => return Some(channel),
            Err(_) => {
                tally.count(true);
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
    None
}

/// One unauthenticated client: oversized, malformed and guessed joins in turn.
async fn join_abuser(controller: &Controller, n: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let Some(channel) = admitted(controller, &stop, &tally).await else {
        return;
    };
    let mut link = AgentLinkClient::new(channel);
    let mut round = n;
    while !stop.load(Ordering::Relaxed) {
        let request = match round % 3 {
            0 => JoinRequest {
                token: "fjt_x".into(),
                host: "web-1".into(),
                csr_pem: "A".repeat(1 << 20),
                protocol_major: 1,
                rejoin: false,
            },
            1 => JoinRequest {
                token: "\u{0}garbage".into(),
                host: "../../etc".into(),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n".into(),
                protocol_major: 1,
                rejoin: true,
            },
            _ => JoinRequest {
                token: format!("fjt_{round:064x}"),
                host: format!("host-{:04}", round % HOSTS),
                csr_pem: csr("web-1").1,
                protocol_major: 1,
                rejoin: false,
            },
        };
        round += 1;
        tally.count(link.join(request).await.is_err());
    }
}

/// One client with a revoked token, asking for the stage's status.
async fn revoked_client(
    controller: &Controller,
    token: String,
    hosts: Vec<String>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let Some(channel) = admitted(controller, &stop, &tally).await else {
        return;
    };
    let mut fleet = FleetServiceClient::new(channel);
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    while !stop.load(Ordering::Relaxed) {
        let request = StatusRequest {
            stage: Some(stage(&hosts)),
        };
        tally.count(fleet.status(authed(request, &token)).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opens 1,250 TLS sessions; run by hand with --release"]
async fn abuse_while_a_thousand_hosts_are_watched() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Arc::new(Controller::spawn_binary(dir.path()).await);
    let pid = controller.process.as_ref().unwrap().id();
    let token = controller.api_token();
    let (agents, names) = connect_agents(&controller).await;
    let revoked = controller.token_with(fleet_controller::tokens::Role::Admin, None);
    let revoked_name = fleet_controller::list_api_tokens(&controller.store)
        .unwrap()
        .into_iter()
        .last()
        .unwrap()
        .name;
    fleet_controller::revoke_api_token(&controller.store, &revoked_name).unwrap();
    // The dashboard or CLI watching the stage is connected before the abuse begins
    // (a connection authenticates with its first call).
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut fleet = controller.fleet().await;
    let status = |token: &str| {
        authed(
            StatusRequest {
                stage: Some(stage(&hosts)),
            },
            token,
        )
    };
    fleet.status(status(&token)).await.unwrap();
    let rss_before = rss_bytes(pid);

    // The abusers run on a runtime of their own, so the status calls measured below
    // never wait behind their tasks in this process (only for the CPUs all share).
    let abuse = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let joins = Arc::new(Tally::default());
    let revokes = Arc::new(Tally::default());
    let mut abusers = Vec::new();
    for n in 0..JOIN_ABUSERS {
        let (c, s, t) = (controller.clone(), stop.clone(), joins.clone());
        abusers.push(abuse.spawn(async move { join_abuser(&c, n, s, t).await }));
    }
    for _ in 0..REVOKED_CLIENTS {
        let (c, s, t) = (controller.clone(), stop.clone(), revokes.clone());
        let (token, hosts) = (revoked.clone(), names.clone());
        abusers.push(abuse.spawn(async move { revoked_client(&c, token, hosts, s, t).await }));
    }
    // Let the abuse get going before measuring.
    let until = Instant::now() + Duration::from_secs(30);
    while joins.sent.load(Ordering::Relaxed) < 1000 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut latencies = Vec::with_capacity(STATUS_CALLS);
    let mut peak = rss_before;
    for round in 0..STATUS_CALLS {
        for agent in agents.iter().skip(round % 5).step_by(5) {
            agent
                .send(agent_message::Body::Heartbeat(Heartbeat { seq: 1 }))
                .await;
        }
        let begun = Instant::now();
        let status = fleet.status(status(&token)).await.unwrap();
        latencies.push(begun.elapsed());
        assert_eq!(status.into_inner().hosts.len(), HOSTS);
        peak = peak.max(rss_bytes(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for abuser in abusers {
        let _ = abuser.await;
    }
    abuse.shutdown_background();
    peak = peak.max(rss_bytes(pid));
    latencies.sort();
    let p50 = latencies[STATUS_CALLS / 2];
    let p99 = latencies[STATUS_CALLS * 99 / 100];
    let growth = peak.saturating_sub(rss_before);
    let (j_sent, j_refused) = (
        joins.sent.load(Ordering::Relaxed),
        joins.refused.load(Ordering::Relaxed),
    );
    let (r_sent, r_refused) = (
        revokes.sent.load(Ordering::Relaxed),
        revokes.refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "abuse: {JOIN_ABUSERS} join abusers sent {j_sent}, refused {j_refused}; \
         {REVOKED_CLIENTS} revoked-token clients sent {r_sent}, refused {r_refused}"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("abuse: {cpus} CPUs, shared by the controller, the abusers and the status caller");
    eprintln!(
        "abuse: status of {HOSTS} hosts during the abuse: p50 {p50:?}, p99 {p99:?}; \
         controller RSS {} MB before, peak {} MB (growth {} MB)",
        rss_before >> 20,
        peak >> 20,
        growth >> 20
    );
    assert!(j_sent > 0 && r_sent > 0, "the abusers ran");
    assert_eq!(j_refused, j_sent, "every abusive join refused");
    assert_eq!(r_refused, r_sent, "every revoked-token call refused");
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    assert!(growth < MAX_RSS_GROWTH, "RSS grew {} MB", growth >> 20);
    drop(agents);
    Arc::into_inner(controller).unwrap().stop().await;
}
