//! The benchmark of controllers sharing a store (`bench/fleet/run.sh` runs it from the
//! release test binary): 10,000 simulated agents (each its own key, certificate and TLS
//! session, 10 processes, a heartbeat every 5 s carrying every instance's moved CPU and
//! memory as a real agent's does) on one controller on SQLite, then on
//! three controllers sharing a PostgreSQL of the test's own, spread over them. Each
//! agent does what `fleet-agent`'s link does when its session ends: the next controller
//! it knows after 0.1-1 s. Prints, for each: `Status` of the whole stage and of 1,000
//! hosts (p50/p99) through a controller holding a third of the agents (all of them on
//! SQLite), each controller's RSS; for PostgreSQL also the time until every agent of a
//! SIGKILLed controller is back through the others, the database's row writes a second
//! in the steady state and while every agent reports new processes (a fleet-wide
//! restart), and the database's memory. `FLEET_BENCH_HOSTS` sets the agent count.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_proto::agent::v1::ProcessInfo;
use fleet_proto::controller::v1::agent_link_client::AgentLinkClient;
use fleet_proto::controller::v1::{
    CreateJoinTokenRequest, Delta, JoinRequest, Snapshot, agent_message,
};
use fleet_tests::postgres::Postgres;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::harness::{AgentIdentity, Controller, FakeAgent, authed, csr, hello, process};
use crate::scale::rss_bytes;

const PROCESSES_PER_HOST: u32 = 10;
const STATUS_CALLS: usize = 100;
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Joins in flight at once while enrolling the agents.
const JOINING: usize = 16;

fn hosts_wanted() -> usize {
    std::env::var("FLEET_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Enrolls `count` hosts through `controller` (join tokens over the API, as `fleet
/// deploy setup` asks for them), each with its own key.
async fn enroll(
    controller: &Controller,
    token: &str,
    count: usize,
) -> Vec<(String, AgentIdentity)> {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..JOINING {
        let (next, token) = (next.clone(), token.to_owned());
        let fleet = controller.fleet().await;
        let channel = controller.channel(None).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut fleet, mut link) = (fleet, AgentLinkClient::new(channel));
            let mut joined = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return joined;
                }
                let host = format!("host-{index:05}");
                let join = fleet
                    .create_join_token(authed(
                        CreateJoinTokenRequest {
                            host: host.clone(),
                            ttl_seconds: 0,
                        },
                        &token,
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .token;
                let (key, csr_pem) = csr(&host);
                let response = link
                    .join(JoinRequest {
                        token: join,
                        host: host.clone(),
                        csr_pem,
                        protocol_major: 1,
                        rejoin: false,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                joined.push((
                    host,
                    AgentIdentity {
                        cert_pem: response.certificate_pem,
                        key_pem: key.serialize_pem(),
                        controllers: Vec::new(),
                    },
                ));
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    eprintln!("  {count} hosts joined in {:.1?}", started.elapsed());
    all
}

/// A simulated agent: a session with one controller, a snapshot, heartbeats; when the
/// session ends, the next controller after 0.1-1 s, as `fleet-agent` does. `online`
/// counts agents with an open session; `generation` bumped makes each send a new
/// snapshot (new pids: a fleet-wide restart).
struct Simulation {
    online: Arc<AtomicUsize>,
    generation: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Simulation {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A session's channel from agent `index`'s own loopback address (127.1.x.y): agents
/// come from as many addresses as there are hosts, as the controller's per-address
/// limits expect.
async fn channel_to(
    url: &str,
    ca: &str,
    identity: &AgentIdentity,
    index: usize,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    let source = std::net::Ipv4Addr::new(127, 1, (index / 250) as u8, 1 + (index % 250) as u8);
    Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        .local_address(Some(source.into()))
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
}

/// The host's instances in `generation` (a restart makes the next), their CPU and
/// memory figures as of heartbeat `beat`.
fn processes(generation: usize, beat: u64) -> Vec<ProcessInfo> {
    (0..PROCESSES_PER_HOST)
        .map(|id| {
            let mut info = process(id, "app");
            info.pid = Some(10_000 + id + generation as u32 * 100);
            info.cpu_percent = (beat % 97) as f64 / 2.0;
            info.memory_bytes = (40 << 20) + (beat % 89) * 4096;
            info
        })
        .collect()
}

fn snapshot(generation: usize) -> agent_message::Body {
    agent_message::Body::Snapshot(Snapshot {
        processes: processes(generation, 0),
        seq: 1 + generation as u64,
    })
}

/// What a real agent's heartbeat is while its apps run: the figures that moved (every
/// instance's CPU and memory), as a delta.
fn moved(generation: usize, beat: u64, seq: u64) -> agent_message::Body {
    agent_message::Body::Delta(Delta {
        changed: processes(generation, beat),
        removed: Vec::new(),
        seq,
    })
}

fn jitter(index: usize) -> Duration {
    Duration::from_millis(100 + (index as u64 * 7919) % 900)
}

async fn simulate(
    agents: Vec<(String, AgentIdentity)>,
    urls: Vec<String>,
    ca: String,
) -> Simulation {
    let online = Arc::new(AtomicUsize::new(0));
    let generation = Arc::new(AtomicUsize::new(0));
    let (urls, ca) = (Arc::new(urls), Arc::new(ca));
    let mut tasks = Vec::with_capacity(agents.len());
    let started = Instant::now();
    for (index, (host, identity)) in agents.into_iter().enumerate() {
        let (online, generation, urls, ca) =
            (online.clone(), generation.clone(), urls.clone(), ca.clone());
        tasks.push(tokio::spawn(async move {
            let mut at = index % urls.len();
            loop {
                let session = async {
                    let channel = channel_to(&urls[at], &ca, &identity, index).await.ok()?;
                    FakeAgent::connect(channel, hello(&host)).await.ok()
                };
                let Some(mut agent) = session.await else {
                    at = (at + 1) % urls.len();
                    tokio::time::sleep(jitter(index)).await;
                    continue;
                };
                let mut sent = generation.load(Ordering::Relaxed);
                let (mut seq, mut beat) = (1 + sent as u64, 0);
                if !agent.try_send(snapshot(sent)).await {
                    at = (at + 1) % urls.len();
                    tokio::time::sleep(jitter(index)).await;
                    continue;
                }
                online.fetch_add(1, Ordering::Relaxed);
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + jitter(index) * 5,
                    HEARTBEAT,
                );
                loop {
                    tokio::select! {
                        message = agent.inbound.message() => match message {
                            Ok(Some(_)) => {}
                            _ => break,
                        },
                        _ = tick.tick() => {
                            let now = generation.load(Ordering::Relaxed);
                            let body = if now != sent {
                                sent = now;
                                seq = 1 + now as u64;
                                snapshot(now)
                            } else {
                                (seq, beat) = (seq + 1, beat + 1);
                                moved(now, beat, seq)
                            };
                            if !agent.try_send(body).await {
                                break;
                            }
                        }
                    }
                }
                online.fetch_sub(1, Ordering::Relaxed);
                at = (at + 1) % urls.len();
                tokio::time::sleep(jitter(index)).await;
            }
        }));
        // Connecting thousands at once would only queue in the controllers' backlogs.
        if index % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    let simulation = Simulation {
        online,
        generation,
        tasks,
    };
    let count = simulation.tasks.len();
    let until = Instant::now() + Duration::from_secs(600);
    while simulation.online.load(Ordering::Relaxed) < count {
        assert!(Instant::now() < until, "agents did not all connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("  {count} sessions open in {:.1?}", started.elapsed());
    simulation
}

/// `Status` of `hosts` through `controller`, `STATUS_CALLS` times: p50, p99, and how
/// many hosts the last one showed reachable.
async fn status_figures(
    controller: &Controller,
    token: &str,
    hosts: &[String],
) -> (Duration, Duration, usize) {
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut fleet = controller.fleet().await;
    let mut latencies = Vec::with_capacity(STATUS_CALLS);
    let mut reachable = 0;
    for _ in 0..STATUS_CALLS {
        let begun = Instant::now();
        let status = crate::harness::status_on(&mut fleet, token, &names).await;
        latencies.push(begun.elapsed());
        reachable = status.hosts.iter().filter(|h| h.reachable).count();
    }
    latencies.sort();
    (
        latencies[STATUS_CALLS / 2],
        latencies[STATUS_CALLS * 99 / 100],
        reachable,
    )
}

async fn wait_all_reachable(
    controller: &Controller,
    token: &str,
    hosts: &[String],
    within: Duration,
) -> Duration {
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut fleet = controller.fleet().await;
    let started = Instant::now();
    loop {
        let status = crate::harness::status_on(&mut fleet, token, &names).await;
        if status.hosts.iter().all(|h| h.reachable) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not every host reachable within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Row writes the database has counted (inserts, updates, deletes) in `db`.
fn row_writes(server: &Postgres, db: &str) -> u64 {
    let output = server.psql(
        "postgres",
        &format!(
            "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = '{db}'"
        ),
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The database server's memory: the proportional set size of its processes.
fn database_pss(server: &Postgres) -> u64 {
    let pid = server.postmaster_pid();
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(other) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{other}/stat")).unwrap_or_default();
        let parent = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if other == pid || parent == Some(pid) {
            let rollup =
                std::fs::read_to_string(format!("/proc/{other}/smaps_rollup")).unwrap_or_default();
            total += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
    }
    total
}

fn mb(bytes: u64) -> u64 {
    bytes >> 20
}

/// The run on one controller on SQLite: its table row, and the hosts' names.
async fn on_sqlite(dir: &std::path::Path, count: usize, thousand: usize) -> (String, Vec<String>) {
    eprintln!("one controller on SQLite, {count} agents:");
    let sqlite = Controller::spawn_binary(&dir.join("sqlite")).await;
    let token = sqlite.api_token();
    let agents = enroll(&sqlite, &token, count).await;
    let hosts: Vec<String> = agents.iter().map(|(h, _)| h.clone()).collect();
    let url = format!("https://127.0.0.1:{}", sqlite.addr.port());
    let simulation = simulate(agents, vec![url], sqlite.ca_pem()).await;
    let (p50, p99, reachable) = status_figures(&sqlite, &token, &hosts).await;
    let (small50, small99, _) = status_figures(&sqlite, &token, &hosts[..thousand]).await;
    let sqlite_rss = rss_bytes(sqlite.process.as_ref().unwrap().id());
    let sqlite_row = format!(
        "| SQLite, 1 controller | {:.1?} / {:.1?} ({reachable} reachable) | {:.1?} / {:.1?} | - | - | - | {} MB | - |",
        p50,
        p99,
        small50,
        small99,
        mb(sqlite_rss)
    );
    eprintln!("{sqlite_row}");
    drop(simulation);
    sqlite.stop().await;
    (sqlite_row, hosts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10,000 TLS sessions twice and a PostgreSQL; run by hand with --release (bench/fleet/run.sh)"]
async fn three_controllers_on_postgresql_beside_one_on_sqlite() {
    let count = hosts_wanted();
    let thousand = count.min(1000);
    let dir = tempfile::tempdir().unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let (sqlite_row, hosts) = on_sqlite(dir.path(), count, thousand).await;

    eprintln!("three controllers on PostgreSQL, {count} agents:");
    let Some(server) = Postgres::start() else {
        return;
    };
    server.create_database("bench");
    let location = fleet_controller::store::PgLocation::parse(&server.url("bench")).unwrap();
    let seal = dir.path().join("a/seal.key");
    let mut controllers = Vec::new();
    for name in ["a", "b", "c"] {
        let mut extra = Vec::new();
        if name != "a" {
            extra = vec!["--seal-key".to_owned(), seal.display().to_string()];
        }
        controllers.push(
            Controller::spawn_binary_on(&dir.path().join(name), &extra, Some(&location)).await,
        );
    }
    // The lease renewals (every 3 s) make the three know each other.
    tokio::time::sleep(crate::harness::DEADLINE.min(Duration::from_secs(4))).await;
    let token = controllers[0].api_token();
    let agents = enroll(&controllers[0], &token, count).await;
    let urls: Vec<String> = controllers
        .iter()
        .map(|c| format!("https://127.0.0.1:{}", c.addr.port()))
        .collect();
    let simulation = simulate(agents, urls, controllers[0].ca_pem()).await;
    let (p50, p99, reachable) = status_figures(&controllers[0], &token, &hosts).await;
    let (small50, small99, _) = status_figures(&controllers[0], &token, &hosts[..thousand]).await;

    // Steady state: heartbeats only. Then every agent reports new pids.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let steady_window = Duration::from_secs(30);
    let before = row_writes(&server, "bench");
    tokio::time::sleep(steady_window).await;
    let steady = (row_writes(&server, "bench") - before) as f64 / steady_window.as_secs_f64();
    let before = row_writes(&server, "bench");
    simulation.generation.fetch_add(1, Ordering::Relaxed);
    let restart_window = Duration::from_secs(15);
    tokio::time::sleep(restart_window).await;
    let restart = (row_writes(&server, "bench") - before) as f64 / restart_window.as_secs_f64();
    let rss: Vec<u64> = controllers
        .iter()
        .map(|c| rss_bytes(c.process.as_ref().unwrap().id()))
        .collect();
    let database = database_pss(&server);
    eprintln!(
        "  status {p50:.1?} / {p99:.1?} ({reachable} reachable), 1,000: {small50:.1?} / {small99:.1?}; writes/s steady {steady:.1}, restart {restart:.1}; RSS {:?} MB; database {} MB",
        rss.iter().map(|r| mb(*r)).collect::<Vec<_>>(),
        mb(database)
    );

    // SIGKILL the third controller: its agents turn to the others.
    let mut killed = controllers.pop().unwrap();
    if let Some(mut process) = killed.process.take() {
        let _ = process.kill();
        let _ = process.wait();
    }
    let back = wait_all_reachable(&controllers[0], &token, &hosts, Duration::from_secs(120)).await;
    let per_thousand = 1000.0 / count as f64;
    println!();
    println!(
        "controllers sharing a store: {count} simulated agents x {PROCESSES_PER_HOST} processes, 2 CPUs shared with the simulation"
    );
    println!(
        "| store | Status p50 / p99, {count} hosts | Status p50 / p99, {thousand} hosts | back after SIGKILL | writes/s steady | writes/s restart | controllers' RSS | database |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!("{sqlite_row}");
    println!(
        "| PostgreSQL, 3 controllers | {:.1?} / {:.1?} ({reachable} reachable) | {:.1?} / {:.1?} | {:.1?} | {steady:.1} ({:.2} per 1,000 hosts) | {restart:.1} | {} MB | {} MB |",
        p50,
        p99,
        small50,
        small99,
        back,
        steady * per_thousand,
        rss.iter()
            .map(|r| mb(*r).to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        mb(database),
    );
    println!(
        "targets: Status p99 < 100 ms at 10,000 hosts ({}), < 50 ms at 1,000 ({}); back < 10 s ({}); < 1 write/s per 1,000 hosts steady ({}); RSS < 300 MB each ({})",
        verdict(p99 < Duration::from_millis(100)),
        verdict(small99 < Duration::from_millis(50)),
        verdict(back < Duration::from_secs(10)),
        verdict(steady * per_thousand < 1.0),
        verdict(rss.iter().all(|r| *r < 300 << 20)),
    );
    drop(simulation);
    for controller in controllers {
        controller.stop().await;
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}
