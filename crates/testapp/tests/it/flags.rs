//! The flags that make the app misbehave on purpose: late, never ready, deaf to
//! signals, crashing.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{App, Client, DEADLINE};

#[test]
fn ready_delay_ms_delays_listening_and_ready() {
    let started = Instant::now();
    let mut app = App::spawn(&["--ready-delay-ms", "300"], &[]);
    app.listening("PORT");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn never_ready_neither_binds_nor_notifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket.set_nonblocking(true).unwrap();
    // A fixed port, so the test can check nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port = port.to_string();
    let mut app = App::spawn(
        &["--never-ready"],
        &[("PORT", &port), ("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    assert!(
        app.wait_line("listening", Duration::from_millis(500))
            .is_none()
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err());
    assert!(crate::harness::recv(&socket).is_err(), "no READY=1");
    app.signal(Signal::SIGTERM);
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn never_ready_listen_anyway_serves_but_fails_health() {
    let mut app = App::spawn(&["--never-ready", "--listen-anyway"], &[]);
    let addr = app.listening("PORT");
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(client.get("/").status, 200);
    assert_eq!(client.get("/health").status, 503);
}

#[test]
fn ignore_signals_keeps_serving_after_sigterm_and_sigint() {
    let mut app = App::spawn(&["--ignore-signals"], &[]);
    let addr = app.listening("PORT");
    app.signal(Signal::SIGTERM);
    app.signal(Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    assert!(app.is_running());
    assert_eq!(Client::connect(addr).unwrap().get("/health").status, 200);
    app.expect_stderr("ignoring SIGTERM");
    app.expect_stderr("ignoring SIGINT");
}

#[test]
fn crash_after_ms_exits_1() {
    let started = Instant::now();
    let mut app = App::spawn(&["--crash-after-ms", "200"], &[]);
    app.listening("PORT");
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(1));
    assert!(started.elapsed() >= Duration::from_millis(200));
}
