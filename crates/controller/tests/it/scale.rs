//! The scale target: `Status` of a 1,000-host stage answered within 50 ms (p99), from
//! memory, by a controller under 150 MB RSS. The real binary runs in a child process so
//! its RSS is its own. Ignored by default (it opens 1,000 TLS sessions); run it with
//! `cargo test -p fleet-controller --release --test it -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use fleet_proto::controller::v1::{Heartbeat, Snapshot, StatusRequest, agent_message};

use crate::harness::{Controller, FakeAgent, authed, hello, process, stage};

/// The brief's figures: 1,000 hosts, p99 under 50 ms.
pub const HOSTS: usize = 1000;
const PROCESSES_PER_HOST: u32 = 10;
const STATUS_CALLS: usize = 200;

/// The brief's memory ceiling for the controller at 1,000 hosts.
const MAX_RSS_BYTES: u64 = 150 << 20;

/// `HOSTS` agents, each joined with its own key and holding its own TLS session as
/// real agents do, each having sent a snapshot of `PROCESSES_PER_HOST` processes.
pub async fn connect_agents(controller: &Controller) -> (Vec<FakeAgent>, Vec<String>) {
    let started = Instant::now();
    let mut agents = Vec::with_capacity(HOSTS);
    let mut names = Vec::with_capacity(HOSTS);
    for index in 0..HOSTS {
        let host = format!("host-{index:04}");
        let identity = controller.join(&host).await;
        let channel = controller.channel(Some(&identity)).await.unwrap();
        let agent = FakeAgent::connect(channel, hello(&host)).await.unwrap();
        agent
            .send(agent_message::Body::Snapshot(Snapshot {
                processes: (0..PROCESSES_PER_HOST)
                    .map(|id| process(id, "app"))
                    .collect(),
                seq: 1,
            }))
            .await;
        agents.push(agent);
        names.push(host);
    }
    eprintln!(
        "{HOSTS} agents joined and connected in {:?}",
        started.elapsed()
    );
    (agents, names)
}

pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opens 1,000 TLS sessions; run by hand with --release"]
async fn status_of_a_thousand_hosts_answers_within_50ms_p99() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::spawn_binary(dir.path()).await;
    let pid = controller.process.as_ref().unwrap().id();
    let token = controller.api_token();
    let rss_before = rss_bytes(pid);
    let (agents, names) = connect_agents(&controller).await;
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut fleet = controller.fleet().await;
    let mut latencies = Vec::with_capacity(STATUS_CALLS);
    for round in 0..STATUS_CALLS {
        // Heartbeats keep flowing meanwhile, as they would.
        for agent in agents.iter().skip(round % 5).step_by(5) {
            agent
                .send(agent_message::Body::Heartbeat(Heartbeat { seq: 1 }))
                .await;
        }
        let begun = Instant::now();
        let status = fleet
            .status(authed(
                StatusRequest {
                    stage: Some(stage(&hosts)),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        latencies.push(begun.elapsed());
        assert_eq!(status.hosts.len(), HOSTS);
    }
    latencies.sort();
    let p50 = latencies[STATUS_CALLS / 2];
    let p99 = latencies[STATUS_CALLS * 99 / 100];
    let rss = rss_bytes(pid);
    eprintln!(
        "status of {HOSTS} hosts x {PROCESSES_PER_HOST} processes: p50 {p50:?}, p99 {p99:?}; \
         controller RSS {} MB ({} MB before the agents)",
        rss / (1 << 20),
        rss_before / (1 << 20)
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    assert!(rss < MAX_RSS_BYTES, "controller RSS {} MB", rss / (1 << 20));
    drop(agents);
    controller.stop().await;
}
