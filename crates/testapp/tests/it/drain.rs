//! The graceful stop a reload relies on (issue 4): in-flight requests finish, idle
//! keep-alive connections close cleanly, the listener closes at once, exit status 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::{App, Client, DEADLINE, recv, spawn_inherited};

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let mut app = App::spawn(&[], &[]);
    let addr = app.listening("PORT");

    let mut idle = Client::connect(addr).unwrap();
    assert_eq!(idle.get("/").status, 200); // now an idle keep-alive connection
    let mut busy = Client::connect(addr).unwrap();
    assert_eq!(busy.get("/health").status, 200);
    busy.send("/slow?ms=1500", "");
    std::thread::sleep(Duration::from_millis(200)); // the request is in flight

    app.signal(Signal::SIGTERM);
    app.expect_line("draining on SIGTERM");

    // The idle connection is closed without a response, after the grace.
    assert!(idle.closed_without_response());
    // The listener is closed at once: no new connection is accepted.
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        Client::connect(addr).is_err(),
        "the listener is closed during the drain"
    );
    assert!(app.is_running(), "still draining the /slow request");

    let response = busy
        .read_response()
        .expect("the in-flight response arrives whole");
    assert_eq!(response.status, 200);
    assert!(response.body.ends_with("slept_ms=1500\n"), "{response:?}");
    assert!(
        response.closes(),
        "the last response on a draining connection says close"
    );
    assert!(busy.closed_without_response());

    let status = app.wait_exit(DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}; stderr: {}",
        app.stderr()
    );
    app.expect_line("stopped");
}

#[test]
fn sigint_drains_like_sigterm() {
    let mut app = App::spawn(&[], &[]);
    let addr = app.listening("PORT");
    let mut busy = Client::connect(addr).unwrap();
    busy.send("/slow?ms=300", "");
    std::thread::sleep(Duration::from_millis(100));
    app.signal(Signal::SIGINT);
    let response = busy.read_response().unwrap();
    assert_eq!(response.status, 200);
    assert!(response.closes());
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(0));
    app.expect_line("draining on SIGINT");
}

#[test]
fn notify_socket_gets_ready_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut app = App::spawn(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    app.listening("PORT");
    assert_eq!(recv(&socket).expect("READY=1"), b"READY=1");
    app.signal(Signal::SIGTERM);
    assert_eq!(recv(&socket).expect("STOPPING=1"), b"STOPPING=1");
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(0));
}

/// A reload in miniature: two instances share an inherited socket, one is stopped
/// while clients keep sending requests, over keep-alive connections that start on the
/// old instance and over a new connection per request; not one request fails.
#[test]
fn stopping_one_of_two_instances_on_a_shared_socket_fails_no_request() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut old = spawn_inherited(&listener, &[], &[("VERSION", "old")]);
    let mut new = spawn_inherited(&listener, &[], &[("VERSION", "new")]);
    old.listening("inherited");
    new.listening("inherited");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            let keep_alive = i < 2;
            std::thread::spawn(move || {
                let mut served = Vec::new();
                let mut failed = Vec::new();
                let mut client = keep_alive.then(|| connect_to_version(addr, "old"));
                while !stop.load(Ordering::Relaxed) {
                    let mut c = match client.take() {
                        Some(c) => c,
                        None => match Client::connect(addr) {
                            Ok(c) => c,
                            Err(e) => {
                                failed.push(format!("connect: {e}"));
                                continue;
                            }
                        },
                    };
                    c.send(
                        "/slow?ms=5",
                        if keep_alive {
                            ""
                        } else {
                            "Connection: close\r\n"
                        },
                    );
                    match c.read_response() {
                        Ok(r) if r.status == 200 => {
                            served.push(version(&r.body));
                            if !r.closes() {
                                client = Some(c);
                            }
                        }
                        Ok(r) => failed.push(format!("status {}", r.status)),
                        Err(e) => failed.push(format!("read: {e}")),
                    }
                }
                (served, failed)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(DEADLINE).code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    let mut served = Vec::new();
    for client in clients {
        let (ok, failed) = client.join().unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        served.extend(ok);
    }
    assert!(served.len() > 50, "only {} requests", served.len());
    assert!(served.contains(&"old".to_string()) && served.contains(&"new".to_string()));
    assert!(new.is_running());
}

/// A keep-alive connection whose server is the instance with `VERSION=version`.
fn connect_to_version(addr: std::net::SocketAddr, version_wanted: &str) -> Client {
    for _ in 0..500 {
        let mut client = Client::connect(addr).unwrap();
        if version(&client.get("/").body) == version_wanted {
            return client;
        }
    }
    panic!("no connection reached the {version_wanted} instance in 500 tries");
}

fn version(body: &str) -> String {
    let rest = body
        .split("version=")
        .nth(1)
        .expect("a version in the body");
    rest.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
