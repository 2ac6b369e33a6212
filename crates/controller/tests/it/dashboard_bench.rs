//! The dashboard benchmark (`bench/fleet/run.sh`), with 1,000 simulated agents of 10
//! instances each against the real `fleet-controller` binary: the overview's time to
//! first render in a headless Chromium (target under 1 s), the bytes a second pushed to
//! one open dashboard in the steady state (a fifth of the agents report new CPU and
//! memory figures each second) and during a fleet-wide restart, and the controller's
//! CPU and RSS with 10 dashboards open. Ignored by default; run by hand with
//! `--release --ignored --exact --nocapture dashboard_bench::dashboard_of_a_thousand_hosts`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_controller::tokens::Role;
use fleet_proto::agent::v1::{HostMetrics, ProcessStatus};
use fleet_proto::controller::v1::{Delta, Heartbeat, agent_message};
use fleet_tests::browser::{Browser, spki_hash};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::scale::{HOSTS, connect_agents, rss_bytes};

const LOADS: usize = 5;
const STEADY: Duration = Duration::from_secs(20);
const DASHBOARDS: usize = 10;

/// CPU time the process used so far (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// One open `/api/events` stream counting the bytes it receives, until dropped.
fn dashboard_stream(
    http: SocketAddr,
    ca: String,
    cookie: String,
    bytes: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tls = crate::http::connect(http, Some(&ca)).await;
        let request =
            format!("GET /api/events HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = tls.read(&mut buffer).await {
            if n == 0 {
                return;
            }
            bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    })
}

fn metrics(cpu: f64) -> HostMetrics {
    HostMetrics {
        at_unix_ms: 1,
        cpus: 4,
        cpu_percent: cpu,
        load1: 0.5,
        memory_total_bytes: 8 << 30,
        memory_available_bytes: 6 << 30,
        ..HostMetrics::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opens 1,000 TLS sessions and a browser; run by hand with --release"]
async fn dashboard_of_a_thousand_hosts() {
    let Some(chromium) = Browser::find() else {
        panic!("the dashboard benchmark needs Chromium (Debian's chromium package)");
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let controller =
        Controller::spawn_binary_with(dir.path(), &["--http".into(), http.to_string()]).await;
    let pid = controller.process.as_ref().unwrap().id();
    let ca = controller.ca_pem();
    let (agents, names) = connect_agents(&controller).await;
    for agent in &agents {
        agent
            .send(agent_message::Body::HostMetrics(metrics(10.0)))
            .await;
    }
    let admin = controller.api_token();
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    controller.status(&admin, &hosts).await;
    let token = controller.token_with(Role::Operate, None);

    let agents = Arc::new(agents);
    let restart = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reporter = tokio::spawn(report(agents.clone(), restart.clone()));

    let spki = spki_hash(&dir.path().join("server.pem"));
    let base = format!("https://127.0.0.1:{port}/");
    let browser_token = token.clone();
    let mut renders =
        tokio::task::spawn_blocking(move || first_renders(&chromium, &spki, &base, &browser_token))
            .await
            .unwrap();
    renders.sort_by(f64::total_cmp);

    // Bytes pushed to one dashboard: steady state, then a fleet-wide restart.
    let session = sign_in_cookie(http, &ca, &token).await;
    let bytes = Arc::new(AtomicU64::new(0));
    let one = dashboard_stream(http, ca.clone(), session.clone(), bytes.clone());
    tokio::time::sleep(Duration::from_secs(3)).await; // past the snapshot
    bytes.store(0, Ordering::Relaxed);
    tokio::time::sleep(STEADY).await;
    let steady = bytes.swap(0, Ordering::Relaxed) as f64 / STEADY.as_secs_f64();
    restart.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarting = bytes.swap(0, Ordering::Relaxed) as f64 / 5.0;
    one.abort();

    // Ten dashboards open: the controller's CPU and RSS over the steady state.
    let rss_before = rss_bytes(pid);
    let streams: Vec<_> = (0..DASHBOARDS)
        .map(|_| {
            dashboard_stream(
                http,
                ca.clone(),
                session.clone(),
                Arc::new(AtomicU64::new(0)),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu_before, begun) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(STEADY).await;
    let cpu = (cpu_time(pid) - cpu_before).as_secs_f64() / begun.elapsed().as_secs_f64() * 100.0;
    let rss = rss_bytes(pid);
    for stream in streams {
        stream.abort();
    }
    reporter.abort();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "dashboard: first render p50 {:.0} ms, max {:.0} ms over {LOADS} loads of {HOSTS} hosts; \
         pushed to one dashboard: steady {:.0} B/s, fleet-wide restart {:.0} B/s; \
         {DASHBOARDS} dashboards: controller CPU {cpu:.1}% of a core, RSS {} MB ({} MB before) ({cpus} CPUs, shared with the simulation and the browser)",
        renders[LOADS / 2],
        renders[LOADS - 1],
        steady,
        restarting,
        rss >> 20,
        rss_before >> 20,
    );
    drop(agents);
    controller.stop().await;
}

/// Signs in over HTTPS; the session cookie (`name=value`).
/// Agents report every second, as real ones do: a fifth with new CPU and memory
/// figures, the rest a heartbeat; all at once with new pids when `restart` is set.
async fn report(agents: Arc<Vec<FakeAgent>>, restart: Arc<std::sync::atomic::AtomicBool>) {
    // Each agent's own delta sequence, after its snapshot (1).
    let mut seqs = vec![1u64; agents.len()];
    let mut tick = 0u64;
    loop {
        let restarting = restart.swap(false, Ordering::Relaxed);
        for (index, agent) in agents.iter().enumerate() {
            let changes = restarting || (index as u64 + tick).is_multiple_of(5);
            if !changes {
                let seq = seqs[index];
                agent
                    .send(agent_message::Body::Heartbeat(Heartbeat { seq }))
                    .await;
                continue;
            }
            seqs[index] += 1;
            let seq = seqs[index];
            let processes = (0..10)
                .map(|id| {
                    let mut p = process(id, "app");
                    p.cpu_percent =
                        ((index as u64 * 7 + tick * 3 + u64::from(id)) % 40) as f64 / 10.0;
                    p.memory_bytes = (40 + (tick + index as u64) % 3) << 20;
                    if restarting {
                        p.restarts = 1;
                        p.pid = Some(5000 + id);
                        p.status = ProcessStatus::Launching.into();
                    }
                    p
                })
                .collect();
            agent
                .send(agent_message::Body::Delta(Delta {
                    seq,
                    changed: processes,
                    removed: vec![],
                }))
                .await;
            agent
                .send(agent_message::Body::HostMetrics(metrics(
                    ((index as u64 + tick) % 30) as f64,
                )))
                .await;
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Signs in with `token`, then loads the overview `LOADS` times: when each load showed
/// every host (ms from the navigation's start, as the page measures it).
fn first_renders(chromium: &std::path::Path, spki: &str, base: &str, token: &str) -> Vec<f64> {
    let mut browser = Browser::launch(
        chromium,
        &[format!("--ignore-certificate-errors-spki-list={spki}")],
    );
    browser.navigate(base);
    browser.wait_for(
        "the sign-in form",
        DEADLINE,
        "!!document.getElementById('login')",
    );
    browser.eval(&format!(
        "document.getElementById('token').value = {token:?}; document.getElementById('login').requestSubmit(); true"
    ));
    let rows = format!("document.querySelectorAll('tr[data-host]').length === {HOSTS}");
    browser.wait_for("the overview", Duration::from_secs(30), &rows);
    let mut renders = Vec::new();
    for _ in 0..LOADS {
        browser.navigate(base);
        let at = browser.wait_for(
            "the first render",
            Duration::from_secs(30),
            &format!("{rows} && window.fleetFirstRender"),
        );
        renders.push(at.as_f64().unwrap());
    }
    renders
}

async fn sign_in_cookie(http: SocketAddr, ca: &str, token: &str) -> String {
    let body = format!(r#"{{"token":"{token}"}}"#);
    let request = format!(
        "POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = crate::http::exchange(http, Some(ca), request.as_bytes()).await;
    assert_eq!(answer.code, 200, "{}", answer.body);
    answer
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}
