//! The protocol without Node: message classification, queryServer keys and replies,
//! line splitting, binding, and a message with a socket read back with recvmsg.

use super::*;

#[test]
fn ready_cluster_acts_and_app_messages_are_told_apart() {
    assert_eq!(classify(json!("ready")), Some(Incoming::Ready));
    assert_eq!(
        classify(json!({"cmd": "NODE_CLUSTER", "act": "listening", "seq": 2})),
        Some(Incoming::Listening)
    );
    assert_eq!(
        classify(json!({"cmd": "NODE_CLUSTER", "act": "online", "seq": 0})),
        None
    );
    assert_eq!(classify(json!({"cmd": "NODE_HANDLE_ACK"})), None);
    let app = json!({"type": "process:msg", "data": {"ok": true}});
    assert_eq!(classify(app.clone()), Some(Incoming::Message(app)));
    assert_eq!(
        classify(json!("hello")),
        Some(Incoming::Message(json!("hello")))
    );
}

#[test]
fn a_query_is_answered_with_its_key_and_sequence_number() {
    let message = json!({
        "cmd": "NODE_CLUSTER", "act": "queryServer", "seq": 7, "index": 0, "data": null,
        "address": null, "port": 3000, "addressType": 4, "fd": null, "backlog": 511
    });
    let Some(Incoming::QueryServer(query)) = classify(message) else {
        panic!("a queryServer");
    };
    assert_eq!(query.address_key(), ":3000:4:");
    assert_eq!(query.server_key(), ":3000:4::0");
    assert_eq!(
        query.reply(0),
        json!({"cmd": "NODE_CLUSTER", "errno": 0, "key": ":3000:4::0", "ack": 7, "data": null})
    );
}

#[test]
fn lines_are_split_across_reads_and_long_ones_dropped() {
    let mut buffer = LineBuffer::default();
    assert!(buffer.push(b"\"rea").is_empty());
    assert_eq!(
        buffer.push(b"dy\"\n{\"a\":1}\n{"),
        vec![b"\"ready\"".to_vec(), b"{\"a\":1}".to_vec()]
    );
    let long = vec![b'x'; MAX_LINE + 1];
    assert!(buffer.push(&long).is_empty());
    assert_eq!(buffer.push(b"x\n\"ok\"\n"), vec![b"\"ok\"".to_vec()]);
}

#[test]
fn node_apps_are_recognised_by_their_program() {
    let mut spec = AppSpec::with_defaults("api".into(), "app.js".into(), "/srv".into());
    spec.command = vec!["/usr/bin/node".into(), "/srv/app.js".into()];
    assert!(runs_on_node(&spec));
    spec.command = vec!["python3".into(), "app.py".into()];
    assert!(!runs_on_node(&spec));
    spec.interpreter = Some("bun".into());
    assert!(runs_on_node(&spec));
}

#[test]
fn the_same_address_is_refused_a_second_bind_but_any_port_binds() {
    let query = |port: i64| Query {
        seq: 1,
        address: Some("127.0.0.1".into()),
        port,
        address_type: "4".into(),
        fd: None,
        flags: 0,
        index: 0,
        data: Value::Null,
    };
    let first = bind(&query(0)).expect("bind 127.0.0.1:0");
    let port = socket2::SockRef::from(&first.fd)
        .local_addr()
        .expect("bound")
        .as_socket()
        .expect("an IP socket")
        .port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("another listener");
    let taken = listener.local_addr().expect("bound").port();
    assert_eq!(
        bind(&query(i64::from(taken))).err(),
        Some(-98),
        "EADDRINUSE"
    );
    assert!(port > 0);
}

#[tokio::test]
async fn a_socket_travels_beside_its_message() {
    use std::os::fd::AsFd;
    let (channel, theirs) = Channel::open(|_| {}).expect("a channel");
    let query = Query {
        seq: 1,
        address: Some("127.0.0.1".into()),
        port: 0,
        address_type: "4".into(),
        fd: None,
        flags: 0,
        index: 0,
        data: Value::Null,
    };
    let socket = bind(&query).expect("bind 127.0.0.1:0");
    channel.send_handle(query.reply(0), socket);
    let theirs = StdUnixStream::from(theirs);
    let (line, fds) = tokio::task::spawn_blocking(move || {
        let mut buffer = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
        let message = nix::sys::socket::recvmsg::<()>(
            theirs.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        let fds: Vec<i32> = message
            .cmsgs()
            .expect("control messages")
            .filter_map(|c| match c {
                nix::sys::socket::ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        let bytes = message.bytes;
        (buffer[..bytes].to_vec(), fds)
    })
    .await
    .expect("the reader");
    let value: Value = serde_json::from_slice(line.trim_ascii_end()).expect("one JSON line");
    assert_eq!(value["cmd"], "NODE_HANDLE");
    assert_eq!(value["type"], "net.Native");
    assert_eq!(value["msg"]["ack"], 1);
    assert_eq!(fds.len(), 1, "one descriptor beside the message");
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fds[0])).expect("the descriptor");
    assert!(
        target.to_string_lossy().starts_with("socket:"),
        "{target:?}"
    );
}
