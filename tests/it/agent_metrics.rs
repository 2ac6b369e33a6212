//! The agent's own `/metrics` (`metrics_listen` in `FLEET_HOME/agent.toml`): this host
//! and its instances as Prometheus text that promtool accepts (CI installs it), on
//! loopback when given a bare port; a bad settings file leaves the apps running.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::*;

/// `GET path` over plain HTTP: the status code and the body.
fn get(port: u16, path: &str, accept: &str) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

fn promtool_check(text: &str) {
    if let Some((ok, said)) = fleet_tests::promtool::promtool(&["check", "metrics"], text, None) {
        assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    }
}

#[test]
fn the_agent_serves_its_host_and_instances_to_prometheus() {
    let fleet = Fleet::new();
    let port = free_port();
    std::fs::create_dir_all(fleet.home.path()).unwrap();
    std::fs::write(
        fleet.home.path().join("agent.toml"),
        format!("metrics_listen = {port}\n"),
    )
    .unwrap();
    fleet.ok(&[
        "start",
        "/bin/sleep",
        "--name",
        "napper",
        "-i",
        "2",
        "--",
        "1000",
    ]);
    let mut body = String::new();
    wait_until(
        "/metrics with both instances and the host",
        Duration::from_secs(15),
        || {
            let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            drop(stream);
            let (code, _, text) = get(port, "/metrics", "");
            body = text;
            code == 200
                && body.contains("instance=\"1\"")
                && body.contains("fleet_host_memory_total_bytes")
        },
    );
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for series in [
        format!("fleet_host_up{{host=\"{host}\"}} 1"),
        format!(
            "fleet_process_status{{host=\"{host}\",app=\"napper\",namespace=\"default\",instance=\"0\",status=\"online\"}} 1"
        ),
        format!(
            "fleet_process_restarts_total{{host=\"{host}\",app=\"napper\",namespace=\"default\",instance=\"1\"}} 0"
        ),
        "fleet_agent_info{version=".to_string(),
        "process_resident_memory_bytes ".to_string(),
        "process_open_fds ".to_string(),
    ] {
        assert!(body.contains(&series), "{series} missing from:\n{body}");
    }
    promtool_check(&body);
    let (_, head, open) = get(
        port,
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(open.ends_with("# EOF\n"));
    assert_eq!(get(port, "/", "").0, 404);
    // Loopback only: the port is not open on another address of this machine.
    let public = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr());
    if let Ok(address) = public
        && !address.ip().is_loopback()
    {
        assert!(std::net::TcpStream::connect((address.ip(), port)).is_err());
    }
}

#[test]
fn a_bad_settings_file_is_reported_and_the_apps_run_anyway() {
    let fleet = Fleet::new();
    std::fs::create_dir_all(fleet.home.path()).unwrap();
    std::fs::write(
        fleet.home.path().join("agent.toml"),
        "metrics_listen = \"nowhere\"\n",
    )
    .unwrap();
    fleet.ok(&["start", "/bin/sleep", "--name", "napper", "--", "1000"]);
    wait_until("napper online", Duration::from_secs(10), || {
        all_status(&fleet.list(), "online")
    });
    let log = fleet.agent_log();
    assert!(
        log.contains("agent.toml") && log.contains("metrics_listen"),
        "{log}"
    );
}
