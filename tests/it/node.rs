//! Node apps as PM2 users write them, unchanged, on a real `node`: cluster mode with
//! no `port` (the agent is the cluster primary; every worker's `listen()` shares one
//! socket), readiness by `process.send('ready')`, `shutdown_with_message`, and an
//! unguarded `process.send` in fork mode.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::http::Load;

const SETTLE: Duration = Duration::from_secs(20);

/// Whether `node` runs here; CI installs it, so there its absence fails the test.
fn node_or_skip(test: &str) -> bool {
    let found = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("FLEET_REQUIRE_TESTBED").is_none(),
            "{test}: node is missing\nhint: apt-get install nodejs"
        );
        eprintln!("skipping {test}: no node");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP server as PM2 users write one: `listen()` on fixed ports, a graceful
/// SIGINT (stop accepting, answer the requests in flight with `Connection: close`).
const SERVER: &str = r#"
const http = require('http');
const ports = process.env.APP_PORTS.split(',').map(Number);
let draining = false;
const servers = ports.map((port) => {
  const server = http.createServer((req, res) => {
    if (draining) res.setHeader('Connection', 'close');
    res.end(`pid=${process.pid} port=${port} pm_id=${process.env.pm_id}\n`);
  });
  server.listen(port);
  return server;
});
process.on('SIGINT', () => {
  draining = true;
  for (const server of servers) {
    server.closeIdleConnections = () => {};
    server.close();
  }
  setTimeout(() => process.exit(0), 1500).unref();
});
"#;

fn ecosystem(fleet: &Fleet, app: &str, ports: &[u16], extra: &str) {
    fleet.file("server.js", SERVER);
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    fleet.file(
        "ecosystem.config.js",
        &format!(
            "module.exports = {{ apps: [{{ name: '{app}', script: 'server.js', instances: 4, exec_mode: 'cluster', kill_timeout: 3000, env: {{ APP_PORTS: '{}' }}{extra} }}] }};\n",
            ports.join(",")
        ),
    );
}

fn pid_of(body: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .unwrap_or_default()
        .to_string()
}

/// Pids that answer on `port`, over new connections from 8 clients at once, until
/// `want` are seen. The workers share one socket and the kernel wakes whichever is
/// waiting, so concurrent clients reach them all.
fn answering_pids(port: u16, want: usize) -> BTreeSet<String> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let deadline = Instant::now() + SETTLE;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let seen = seen.clone();
            std::thread::spawn(move || {
                while seen.lock().unwrap().len() < want && Instant::now() < deadline {
                    if let Ok(body) = crate::http::get("127.0.0.1", port, "/") {
                        seen.lock().unwrap().insert(pid_of(&body));
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    seen.lock().unwrap().clone()
}

#[test]
fn cluster_mode_without_a_port_shares_what_each_worker_listens_on() {
    if !node_or_skip("cluster_mode_without_a_port_shares_what_each_worker_listens_on") {
        return;
    }
    let fleet = Fleet::new();
    let (first, second) = (free_port(), free_port());
    ecosystem(&fleet, "api", &[first, second], "");
    fleet.ok(&["start", "ecosystem.config.js"]);
    let list = fleet.wait_list("4 workers online", SETTLE, |l| {
        by_name(l, "api").len() == 4 && all_status(l, "online")
    });
    let pids: BTreeSet<String> = by_name(&list, "api")
        .iter()
        .map(|p| p["pid"].to_string())
        .collect();
    // Every worker serves both ports, as under PM2's cluster mode.
    for port in [first, second] {
        let answering = answering_pids(port, 4);
        assert_eq!(answering, pids, "port {port}");
    }
    let body = crate::http::get("127.0.0.1", first, "/").unwrap();
    assert!(!body.contains("pm_id=undefined"), "{body}");

    // Reloads under load: the sockets stay open in the agent, no request fails.
    let load = Load::start("127.0.0.1", first, 4);
    for _ in 0..3 {
        fleet.ok(&["reload", "api"]);
    }
    let (ok, failed, errors) = load.finish();
    assert!(ok > 100, "only {ok} requests answered");
    assert_eq!(failed, 0, "failed requests during reloads: {errors:?}");
    let after: BTreeSet<String> = by_name(&fleet.list(), "api")
        .iter()
        .map(|p| p["pid"].to_string())
        .collect();
    assert!(after.is_disjoint(&pids), "every worker was replaced");
    assert_eq!(answering_pids(first, 4), after);

    // Deleting the app closes its sockets.
    fleet.ok(&["delete", "api"]);
    wait_until("the port closed", SETTLE, || {
        std::net::TcpStream::connect(("127.0.0.1", first)).is_err()
    });
}

#[test]
fn process_send_ready_marks_a_wait_ready_app_online_and_gates_its_reload() {
    if !node_or_skip("process_send_ready_marks_a_wait_ready_app_online_and_gates_its_reload") {
        return;
    }
    let fleet = Fleet::new();
    fleet.file(
        "ready.js",
        "setTimeout(() => process.send('ready'), 200);\nsetInterval(() => {}, 1000);\n",
    );
    fleet.file(
        "fleet.toml",
        "[apps.slow]\nscript = \"ready.js\"\nwait_ready = true\nlisten_timeout = 20000\n",
    );
    let started = Instant::now();
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("online once ready", SETTLE, |l| all_status(l, "online"));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "online after {took:?}: the app's 'ready' was not seen (listen_timeout is 20 s)"
    );
    // A reload waits for the replacement's 'ready' too, well before listen_timeout.
    let started = Instant::now();
    fleet.ok(&["reload", "slow"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(all_status(&fleet.list(), "online"));
}

#[test]
fn shutdown_with_message_sends_shutdown_before_any_signal() {
    if !node_or_skip("shutdown_with_message_sends_shutdown_before_any_signal") {
        return;
    }
    let fleet = Fleet::new();
    let seen = fleet.path("seen");
    fleet.file(
        "graceful.js",
        &format!(
            "const fs = require('fs');\nprocess.on('SIGINT', () => fs.appendFileSync('{0}', 'SIGINT\\n'));\nprocess.on('message', (m) => {{ fs.appendFileSync('{0}', m + '\\n'); if (m === 'shutdown') process.exit(0); }});\nsetInterval(() => {{}}, 1000);\n",
            seen.display()
        ),
    );
    fleet.file(
        "fleet.toml",
        "[apps.graceful]\nscript = \"graceful.js\"\nshutdown_with_message = true\nkill_timeout = 5000\n",
    );
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("online", SETTLE, |l| all_status(l, "online"));
    // Give the app a moment to have its listener: poll its status, then stop.
    let started = Instant::now();
    fleet.ok(&["stop", "graceful"]);
    assert!(all_status(&fleet.list(), "stopped"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the stop waited for kill_timeout: the message did not arrive"
    );
    let seen = std::fs::read_to_string(&seen).unwrap_or_default();
    assert_eq!(seen, "shutdown\n", "what the app saw");
}

#[test]
fn an_unguarded_process_send_in_fork_mode_runs() {
    if !node_or_skip("an_unguarded_process_send_in_fork_mode_runs") {
        return;
    }
    let fleet = Fleet::new();
    fleet.file(
        "chatty.js",
        "process.send({ type: 'process:msg', data: { up: true } });\nprocess.send('hello');\nconsole.log('connected=' + process.connected + ' cluster=' + require('cluster').isWorker);\nsetInterval(() => {}, 1000);\n",
    );
    fleet.file("fleet.toml", "[apps.chatty]\nscript = \"chatty.js\"\n");
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("online for a second", SETTLE, |l| {
        all_status(l, "online") && l[0]["uptime_ms"].as_u64().unwrap_or(0) > 1000
    });
    assert_eq!(fleet.list()[0]["restarts"], 0);
    let log = fleet.home.path().join("logs/chatty-out.log");
    let lines = wait_lines(&log, 1, SETTLE);
    assert_eq!(lines[0], "connected=true cluster=false");
}
