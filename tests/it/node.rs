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

#[test]
fn fleet_send_reaches_process_on_message_and_prints_the_reply() {
    if !node_or_skip("fleet_send_reaches_process_on_message_and_prints_the_reply") {
        return;
    }
    let fleet = Fleet::new();
    // PM2's sendDataToProcessId packet shape, answered the way PM2's docs show.
    fleet.file(
        "echo.js",
        "process.on('message', (packet) => process.send({ type: 'process:msg', data: { echo: packet.data, pm_id: process.env.pm_id } }));\nsetInterval(() => {}, 1000);\n",
    );
    fleet.file(
        "fleet.toml",
        "[apps.echo]\nscript = \"echo.js\"\ninstances = 2\n",
    );
    fleet.file("plain.sh", SLEEPER);
    fleet.ok(&["start", "fleet.toml"]);
    fleet.wait_list("both online", SETTLE, |l| {
        l.len() == 2 && all_status(l, "online")
    });
    let out = fleet.ok(&[
        "send",
        "echo",
        r#"{"type":"process:msg","data":{"n":42},"topic":"t"}"#,
        "--wait",
        "2000",
        "--json",
    ]);
    let result: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        result["sent"].as_array().map(Vec::len),
        Some(2),
        "{result:#}"
    );
    let replies = result["replies"].as_array().cloned().unwrap_or_default();
    assert_eq!(replies.len(), 2, "{result:#}");
    let mut ids: Vec<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r["message"]["data"]["echo"]["n"], 42, "{r:#}");
            r["message"]["data"]["pm_id"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["0", "1"]);

    // A program that is not Node has no channel: said so, exit 1.
    let script = fleet.path("plain.sh");
    fleet.ok(&["start", script.to_str().unwrap(), "--name", "plain"]);
    let stderr = fleet.fails(&["send", "plain", "hello"], 1);
    assert!(stderr.contains("no IPC channel"), "{stderr}");
}

#[test]
fn cluster_workers_share_listen_0_a_unix_socket_and_udp() {
    if !node_or_skip("cluster_workers_share_listen_0_a_unix_socket_and_udp") {
        return;
    }
    let fleet = Fleet::new();
    let ports = fleet.path("ports");
    let unix = fleet.path("app.sock");
    let udp = free_port();
    fleet.file(
        "multi.js",
        &format!(
            "const http = require('http'); const net = require('net'); const dgram = require('dgram'); const fs = require('fs');\n\
             const zero = http.createServer((q, r) => r.end(`pid=${{process.pid}}\\n`)).listen(0, () => fs.appendFileSync('{ports}', `${{zero.address().port}}\\n`));\n\
             net.createServer((c) => c.end(`pid=${{process.pid}}\\n`)).listen('{unix}');\n\
             const udp = dgram.createSocket('udp4'); udp.on('message', (m, r) => udp.send(`pid=${{process.pid}}`, r.port, r.address)); udp.bind({udp});\n",
            ports = ports.display(),
            unix = unix.display(),
        ),
    );
    fleet.file(
        "ecosystem.config.js",
        "module.exports = { apps: [{ name: 'multi', script: 'multi.js', instances: 2, exec_mode: 'cluster' }] };\n",
    );
    fleet.ok(&["start", "ecosystem.config.js"]);
    let list = fleet.wait_list("2 workers online", SETTLE, |l| {
        l.len() == 2 && all_status(l, "online")
    });
    let pids: BTreeSet<String> = list.iter().map(|p| p["pid"].to_string()).collect();
    let reported = wait_lines(&ports, 2, SETTLE);
    assert_eq!(
        reported[0], reported[1],
        "listen(0): one port for every worker"
    );
    let port: u16 = reported[0].parse().unwrap();
    assert_eq!(answering_pids(port, 2), pids);
    // The unix socket and the UDP socket answer from both workers.
    let mut from_unix = BTreeSet::new();
    let mut from_udp = BTreeSet::new();
    let deadline = Instant::now() + SETTLE;
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    while (from_unix.len() < 2 || from_udp.len() < 2) && Instant::now() < deadline {
        if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&unix) {
            let mut body = String::new();
            let _ = std::io::Read::read_to_string(&mut stream, &mut body);
            from_unix.insert(pid_of(&body));
        }
        client.send_to(b"hi", ("127.0.0.1", udp)).unwrap();
        let mut buffer = [0u8; 64];
        if let Ok(n) = client.recv(&mut buffer) {
            from_udp.insert(pid_of(&String::from_utf8_lossy(&buffer[..n])));
        }
    }
    assert_eq!(from_unix, pids, "unix socket");
    assert_eq!(from_udp, pids, "udp");
    // Deleting the app removes the unix socket it bound.
    fleet.ok(&["delete", "multi"]);
    wait_until("the unix socket removed", SETTLE, || !unix.exists());
}
