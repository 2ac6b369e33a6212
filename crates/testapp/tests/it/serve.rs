//! Serving: the routes, keep-alive, `Connection: close`, and where the listener comes
//! from (PORT, or an inherited fd 3).

use crate::harness::{App, Client, DEADLINE, spawn_inherited};

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let mut app = App::spawn(&[], &[("FLEET_APP_INSTANCE", "3"), ("VERSION", "v7")]);
    let addr = app.listening("PORT");
    let mut client = Client::connect(addr).unwrap();

    let root = client.get("/");
    assert_eq!(root.status, 200);
    assert_eq!(
        root.body,
        format!("instance=3 pid={} version=v7\n", app.pid())
    );
    assert!(!root.closes(), "HTTP/1.1 keeps the connection: {root:?}");

    let health = client.get("/health");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    let slow = client.get("/slow?ms=20");
    assert_eq!(slow.status, 200);
    assert!(slow.body.ends_with("slept_ms=20\n"), "{slow:?}");

    assert_eq!(client.get("/nope").status, 404);
    assert_eq!(client.get("/slow?ms=x").status, 400);
}

#[test]
fn node_app_instance_and_the_default_version_fill_in() {
    let mut app = App::spawn(&[], &[("NODE_APP_INSTANCE", "1")]);
    let addr = app.listening("PORT");
    let body = Client::connect(addr).unwrap().get("/").body;
    assert_eq!(body, format!("instance=1 pid={} version=v1\n", app.pid()));
}

#[test]
fn connection_close_is_honoured() {
    let mut app = App::spawn(&[], &[]);
    let addr = app.listening("PORT");
    let mut client = Client::connect(addr).unwrap();
    client.send("/health", "Connection: close\r\n");
    let response = client.read_response().unwrap();
    assert_eq!(response.status, 200);
    assert!(response.closes(), "{response:?}");
    assert!(client.closed_without_response());
}

#[test]
fn pipelined_requests_and_request_bodies_are_handled_in_order() {
    let mut app = App::spawn(&[], &[]);
    let addr = app.listening("PORT");
    let mut client = Client::connect(addr).unwrap();
    // A POST body is skipped (405, the route takes GET), then the next request is read.
    client.send_raw(
        b"GET /health HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /slow?ms=1 HTTP/1.1\r\n\r\n",
    );
    assert_eq!(client.read_response().unwrap().status, 200);
    let post = client.read_response().unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert!(
        client
            .read_response()
            .unwrap()
            .body
            .ends_with("slept_ms=1\n")
    );
}

#[test]
fn an_inherited_socket_at_fd_3_is_used_and_shared() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut apps = [
        spawn_inherited(&listener, &[], &[]),
        spawn_inherited(&listener, &[], &[]),
    ];
    for app in &mut apps {
        assert_eq!(app.listening("inherited"), addr);
    }
    // Which instance the kernel hands a connection to is its choice; stopping the one
    // that answered shows the other accepts on the same socket too.
    let first = pid_of(&Client::connect(addr).unwrap().get("/").body);
    let (stopped, other) = if first == apps[0].pid() {
        (0, 1)
    } else {
        (1, 0)
    };
    assert_eq!(first, apps[stopped].pid());
    apps[stopped].signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(apps[stopped].wait_exit(DEADLINE).code(), Some(0));
    let second = pid_of(&Client::connect(addr).unwrap().get("/").body);
    assert_eq!(second, apps[other].pid());
}

fn pid_of(body: &str) -> u32 {
    let rest = body.split("pid=").nth(1).expect("a pid in the body");
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn listen_pid_of_another_process_means_port() {
    let mut app = App::spawn(&[], &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")]);
    app.listening("PORT");
}

#[test]
fn port_only_ignores_listen_fds() {
    let mut app = App::spawn(&["--port-only"], &[("LISTEN_FDS", "1")]);
    app.listening("PORT");
}

#[test]
fn listen_fds_without_a_socket_at_fd_3_is_an_error() {
    let mut app = App::spawn(&[], &[("LISTEN_FDS", "1")]);
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(2));
    app.expect_stderr("fd 3 is not a TCP listening socket");
}

#[test]
fn no_port_and_no_socket_is_an_error() {
    let mut app = App::spawn_command(crate::harness::command(&[], &[]));
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(2));
    app.expect_stderr("PORT is not set");
}
