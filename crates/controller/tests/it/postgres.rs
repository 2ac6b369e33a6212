//! Controllers on one PostgreSQL (a server of the test's own, `fleet_tests::postgres`):
//! they share tokens, the CA and single-use join tokens; with the database stopped a
//! controller still answers status and refuses writes, and nothing is lost once it is
//! back; `fleet-controller migrate` moves a SQLite controller's state so a controller
//! on PostgreSQL serves the same hosts with the same tokens.

use std::path::Path;
use std::time::Duration;

use fleet_controller::store::{Location, PgLocation};
use fleet_proto::controller::v1::agent_link_client::AgentLinkClient;
use fleet_proto::controller::v1::{AgentHello, JoinRequest, controller_message};
use fleet_tests::postgres::Postgres;
use tonic::Code;

use crate::harness::{
    AgentIdentity, Controller, DEADLINE, FakeAgent, csr, hello, off_runtime, wait_for_status,
};

pub(crate) fn location(server: &Postgres, db: &str) -> PgLocation {
    PgLocation::parse(&server.url(db)).unwrap()
}

/// A controller's settings for `db`, with the seal key at `seal` (made there by the
/// first).
pub(crate) fn on_db(
    server: &Postgres,
    db: &str,
    seal: &Path,
) -> impl FnOnce(&mut fleet_controller::ControllerConfig) + use<> {
    let (store, seal) = (location(server, db), seal.to_owned());
    move |config| {
        config.store = Some(store);
        config.seal_key = Some(seal);
    }
}

/// A controller on `db`, with the seal key at `seal` (made there by the first).
async fn on_postgres(data: &Path, server: &Postgres, db: &str, seal: &Path) -> Controller {
    Controller::start_with(data, on_db(server, db, seal)).await
}

async fn join_with(
    controller: &Controller,
    host: &str,
    token: &str,
) -> Result<AgentIdentity, tonic::Status> {
    let (key, csr_pem) = csr(host);
    let response = AgentLinkClient::new(controller.channel(None).await.unwrap())
        .join(JoinRequest {
            token: token.to_owned(),
            host: host.to_owned(),
            csr_pem,
            protocol_major: 1,
            rejoin: false,
        })
        .await?
        .into_inner();
    Ok(AgentIdentity {
        cert_pem: response.certificate_pem,
        key_pem: key.serialize_pem(),
        controllers: Vec::new(),
    })
}

fn audit_actions(store: &Location) -> Vec<String> {
    let store = store.clone();
    off_runtime(move || fleet_controller::read_audit(&store, None))
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_share_tokens_the_ca_and_single_use_join_tokens() {
    let Some(server) = Postgres::start() else {
        return;
    };
    server.create_database("shared");
    let dir = tempfile::tempdir().unwrap();
    let seal = dir.path().join("a/seal.key");
    let a = on_postgres(&dir.path().join("a"), &server, "shared", &seal).await;
    assert!(
        seal.is_file(),
        "the first controller of an empty store makes the seal key"
    );
    let b = on_postgres(&dir.path().join("b"), &server, "shared", &seal).await;
    assert_eq!(a.ca_pem(), b.ca_pem(), "one CA for the store's controllers");

    // A token made through A's store works against B, a revoked one on neither.
    let token = a.api_token();
    b.status(&token, &["web-1"]).await;

    // A join token is usable once, even when both controllers are asked at once.
    let (join, _) = a.join_token("web-1");
    let (first, second) =
        tokio::join!(join_with(&a, "web-1", &join), join_with(&b, "web-1", &join));
    let (identity, refused) = match (first, second) {
        (Ok(identity), Err(refused)) | (Err(refused), Ok(identity)) => (identity, refused),
        other => panic!("exactly one join must succeed: {other:?}"),
    };
    // Refused as a used token, or (when the other join ended between this one's token
    // check and its host check) as a host that has joined: never a second certificate.
    match refused.code() {
        Code::Unauthenticated => {
            assert!(refused.message().contains("used"), "{}", refused.message())
        }
        Code::AlreadyExists => assert!(
            refused.message().contains("already joined"),
            "{}",
            refused.message()
        ),
        _ => panic!("{refused:?}"),
    }

    // The certificate either issued works with the other: its serial is the store's.
    let channel = b.channel(Some(&identity)).await.unwrap();
    let _agent = FakeAgent::connect(channel, hello("web-1")).await.unwrap();
    wait_for_status(&b, &token, &["web-1"], DEADLINE, |s| {
        s.hosts.iter().any(|h| h.host == "web-1" && h.reachable)
    })
    .await;
    let actions = audit_actions(&a.store);
    assert!(actions.iter().any(|a| a == "join-token"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "join"), "{actions:?}");

    // A third controller without the seal key refuses to start, saying why.
    let mut config = fleet_controller::ControllerConfig::new(dir.path().join("c"));
    config.store = Some(location(&server, "shared"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = fleet_controller::serve(config, listener, async {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("seal key"), "{error}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_away_status_answers_writes_are_refused_and_nothing_is_lost() {
    let Some(server) = Postgres::start() else {
        return;
    };
    server.create_database("away");
    let dir = tempfile::tempdir().unwrap();
    let seal = dir.path().join("seal.key");
    let controller = on_postgres(&dir.path().join("c"), &server, "away", &seal).await;
    let token = controller.api_token();
    let identity = controller.join("web-1").await;
    let (join, _) = controller.join_token("web-2");
    let channel = controller.channel(Some(&identity)).await.unwrap();
    let agent = FakeAgent::connect(channel, hello("web-1")).await.unwrap();
    wait_for_status(&controller, &token, &["web-1"], DEADLINE, |s| {
        s.hosts.iter().any(|h| h.reachable)
    })
    .await;

    server.stop();
    // Status answers from memory (the token was verified before; the controller keeps
    // the valid ones it knows).
    let status = wait_for_status(&controller, &token, &["web-1"], DEADLINE, |s| s.stale).await;
    assert!(status.hosts[0].reachable, "{status:#?}");
    // A join is refused, saying the store is away and nothing changed.
    let refused = join_with(&controller, "web-2", &join).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("store is unavailable"),
        "{}",
        refused.message()
    );
    // The host reconnects meanwhile: that write is kept until the store is back.
    drop(agent);
    let channel = controller.channel(Some(&identity)).await.unwrap();
    let upgraded = AgentHello {
        agent_version: "0.2.0-during-the-outage".into(),
        ..hello("web-1")
    };
    let _agent = FakeAgent::connect(channel, upgraded).await.unwrap();

    server.start_again();
    let until = tokio::time::Instant::now() + DEADLINE;
    let joined = loop {
        match join_with(&controller, "web-2", &join).await {
            Ok(identity) => break identity,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(tokio::time::Instant::now() < until, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the join after the database came back: {status:?}"),
        }
    };
    assert!(!joined.cert_pem.is_empty());
    let status = wait_for_status(&controller, &token, &["web-1"], DEADLINE, |s| !s.stale).await;
    assert!(status.hosts[0].reachable, "{status:#?}");
    let actions = audit_actions(&controller.store);
    for action in ["token create", "join-token", "join"] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    // The kept write (web-1's new session) reached the store.
    let store = controller.store.clone();
    let hosts = off_runtime(move || fleet_controller::list_hosts(&store)).unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2"]);
    assert_eq!(hosts[0].agent_version, "0.2.0-during-the-outage");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_sqlite_controller_so_the_same_hosts_and_tokens_work() {
    let Some(server) = Postgres::start() else {
        return;
    };
    server.create_database("moved");
    let dir = tempfile::tempdir().unwrap();
    let old_data = dir.path().join("old");
    let old = Controller::start(&old_data).await;
    let token = old.api_token();
    let identity = old.join("web-1").await;
    {
        let channel = old.channel(Some(&identity)).await.unwrap();
        let _agent = FakeAgent::connect(channel, hello("web-1")).await.unwrap();
        wait_for_status(&old, &token, &["web-1"], DEADLINE, |s| {
            s.hosts.iter().any(|h| h.reachable)
        })
        .await;
    }
    let before = audit_actions(&old.store);
    old.stop().await;

    let binary = env!("CARGO_BIN_EXE_fleet-controller");
    let migrate = |url: &str, password: Option<&str>| {
        let mut command = std::process::Command::new(binary);
        command
            .args(["migrate", "--from"])
            .arg(&old_data)
            .args(["--to", url])
            .env_remove("FLEET_STORE")
            .env_remove("FLEET_STORE_PASSWORD");
        if let Some(password) = password {
            command.env("FLEET_STORE_PASSWORD", password);
        }
        command.output().unwrap()
    };
    // A password on the command line is refused before anything is read.
    let refused = migrate(&server.url("moved"), None);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("FLEET_STORE_PASSWORD"), "{said}");
    assert!(!said.contains(fleet_tests::postgres::PASSWORD), "{said}");
    let bare = format!(
        "postgres://{}@127.0.0.1:{}/moved",
        fleet_tests::postgres::USER,
        server.port()
    );
    let moved = migrate(&bare, Some(fleet_tests::postgres::PASSWORD));
    let said = String::from_utf8_lossy(&moved.stderr);
    assert!(moved.status.success(), "{said}");
    let table = String::from_utf8_lossy(&moved.stdout);
    assert!(table.contains("audit_log"), "{table}");
    // Never over a store that holds a fleet.
    let again = migrate(&bare, Some(fleet_tests::postgres::PASSWORD));
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("holds a fleet already"), "{said}");

    let seal = old_data.join("seal.key");
    let new = on_postgres(&dir.path().join("new"), &server, "moved", &seal).await;
    assert_eq!(
        new.ca_pem(),
        std::fs::read_to_string(old_data.join("ca.pem")).unwrap()
    );
    let channel = new.channel(Some(&identity)).await.unwrap();
    let _agent = FakeAgent::connect(channel, hello("web-1")).await.unwrap();
    wait_for_status(&new, &token, &["web-1"], DEADLINE, |s| {
        s.hosts.iter().any(|h| h.reachable)
    })
    .await;
    let after = audit_actions(&new.store);
    assert!(after.starts_with(&before), "{before:?} then {after:?}");
    assert!(after.iter().any(|a| a == "store migrate"), "{after:?}");
    new.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_controller_answers_for_hosts_its_peers_hold_and_agents_learn_every_controller() {
    let Some(server) = Postgres::start() else {
        return;
    };
    server.create_database("peers");
    let dir = tempfile::tempdir().unwrap();
    let seal = dir.path().join("a/seal.key");
    let a = on_postgres(&dir.path().join("a"), &server, "peers", &seal).await;
    let token = a.api_token();
    let one = a.join("web-1").await;
    let mut on_a = FakeAgent::connect(a.channel(Some(&one)).await.unwrap(), hello("web-1"))
        .await
        .unwrap();
    let a_url = format!("https://{}", a.addr);
    assert_eq!(
        on_a.welcome.controllers,
        std::slice::from_ref(&a_url),
        "A alone"
    );
    let b = on_postgres(&dir.path().join("b"), &server, "peers", &seal).await;
    let two = b.join("web-2").await;
    let _on_b = FakeAgent::connect(b.channel(Some(&two)).await.unwrap(), hello("web-2"))
        .await
        .unwrap();
    // B started after A: its join and its welcome name both, itself first.
    let b_url = format!("https://{}", b.addr);
    assert_eq!(two.controllers, [b_url.clone(), a_url.clone()]);
    assert_eq!(_on_b.welcome.controllers, [b_url.clone(), a_url.clone()]);
    // The agent A welcomed alone hears of B on its open session (A's next lease renewal).
    assert_eq!(
        controllers_pushed(&mut on_a).await,
        [a_url.clone(), b_url.clone()]
    );

    // Through either, the whole stage: its own host from memory, the other's from it.
    for controller in [&a, &b] {
        wait_for_status(controller, &token, &["web-1", "web-2"], DEADLINE, |s| {
            s.hosts.iter().all(|h| h.reachable)
        })
        .await;
    }
    // The store says who holds which.
    let store = a.store.clone();
    let holders = off_runtime(move || {
        let db = store.open().unwrap();
        fleet_controller::store::holders(db.as_ref()).unwrap()
    });
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert_ne!(holders[0].1, holders[1].1, "{holders:?}");

    // A controller's peer certificate is no agent's: PeerService refuses an agent.
    let agent_channel = a.channel(Some(&one)).await.unwrap();
    let refused =
        fleet_proto::controller::v1::peer_service_client::PeerServiceClient::new(agent_channel)
            .peer_status(fleet_proto::controller::v1::PeerStatusRequest {
                hosts: vec!["web-1".into()],
            })
            .await
            .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // B goes (a clean stop leaves the store at once): A's agents hear so, and web-2
    // turns to A, which then answers for it itself.
    b.stop().await;
    drop(_on_b);
    assert_eq!(
        controllers_pushed(&mut on_a).await,
        std::slice::from_ref(&a_url)
    );
    let _moved = FakeAgent::connect(a.channel(Some(&two)).await.unwrap(), hello("web-2"))
        .await
        .unwrap();
    let status = wait_for_status(&a, &token, &["web-1", "web-2"], DEADLINE, |s| {
        s.hosts.iter().all(|h| h.reachable)
    })
    .await;
    assert!(!status.stale);
    drop(on_a);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_followed_logs_reach_the_hosts_a_peer_holds() {
    use fleet_proto::controller::v1::{Action, LogBatch, agent_message, controller_message};
    let Some(server) = Postgres::start() else {
        return;
    };
    server.create_database("forward");
    let dir = tempfile::tempdir().unwrap();
    let seal = dir.path().join("a/seal.key");
    let a = on_postgres(&dir.path().join("a"), &server, "forward", &seal).await;
    let b = on_postgres(&dir.path().join("b"), &server, "forward", &seal).await;
    let token = a.api_token();
    let identity = b.join("web-2").await;
    let mut agent = FakeAgent::connect(b.channel(Some(&identity)).await.unwrap(), hello("web-2"))
        .await
        .unwrap();
    wait_for_status(&a, &token, &["web-2"], DEADLINE, |s| s.hosts[0].reachable).await;

    // Followed logs through A: B subscribes its agent, the lines come back through A.
    let mut lines = a.logs(&token, &["web-2", "ghost"], &["api"], 5, true).await;
    let Some(controller_message::Body::Subscribe(subscribe)) = agent.next().await else {
        panic!("web-2 was not asked for logs through its controller");
    };
    assert_eq!((subscribe.lines, subscribe.follow), (5, true));
    let ghost = tokio::time::timeout(DEADLINE, lines.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ghost.notice, "unreachable: never connected");
    agent
        .send(agent_message::Body::Logs(LogBatch {
            subscription_id: subscribe.subscription_id,
            entries: vec![fleet_proto::agent::v1::LogEntry {
                app: "api".into(),
                line: "through the peer".into(),
                host: "web-2".into(),
                ..Default::default()
            }],
        }))
        .await;
    let entry = tokio::time::timeout(DEADLINE, lines.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.host.as_str(), entry.line.as_str()),
        ("web-2", "through the peer")
    );
    drop(lines);
    let Some(controller_message::Body::Unsubscribe(_)) = agent.next().await else {
        panic!("web-2 was not told to stop once the follower went");
    };

    // A restart through A reaches web-2 through B, and is audited once.
    let mut seen = crate::command::answer_commands(agent, false);
    let reply = a
        .command(&token, &["web-2"], Action::Restart, &["api"])
        .await;
    assert!(reply.hosts[0].ok, "{reply:?}");
    assert_eq!(reply.hosts[0].processes[0].host, "web-2");
    assert_eq!(
        seen.recv().await.unwrap(),
        (Action::Restart, vec!["api".to_owned()])
    );
    let restarts = audit_actions(&a.store)
        .into_iter()
        .filter(|action| action == "restart")
        .count();
    assert_eq!(restarts, 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_controller_dies_follows_through_another_printing_each_line_once() {
    use fleet_proto::agent::v1::LogEntry;
    use fleet_proto::controller::v1::{LogBatch, agent_message};
    let Some(server) = Postgres::start() else {
        return;
    };
    server.create_database("follow");
    let dir = tempfile::tempdir().unwrap();
    let location = location(&server, "follow");
    // A is a real process, to be SIGKILLed; B runs here.
    let mut a = Controller::spawn_binary_on(&dir.path().join("a"), &[], Some(&location)).await;
    let seal = dir.path().join("a/seal.key");
    let b = on_postgres(&dir.path().join("b"), &server, "follow", &seal).await;
    let token = b.api_token();
    let identity = b.join("web-2").await;
    let mut agent = FakeAgent::connect(b.channel(Some(&identity)).await.unwrap(), hello("web-2"))
        .await
        .unwrap();
    wait_for_status(&a, &token, &["web-2"], DEADLINE, |s| s.hosts[0].reachable).await;

    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        "[deploy.bed]\nhost = [\"web-2\"]\nrepo = \"https://example.invalid/app.git\"\npath = \"/srv/app\"\n",
    )
    .unwrap();
    let mut stage = fleet_remote::stage::find_in(&config, "bed")
        .unwrap()
        .unwrap();
    stage.controller = Some(fleet_remote::stage::ControllerSettings {
        url: format!(
            "https://127.0.0.1:{},https://127.0.0.1:{}",
            a.addr.port(),
            b.addr.port()
        ),
        token: token.clone(),
        ca: Some(dir.path().join("b/ca.pem")),
    });
    let mut api = stage
        .connect(&fleet_remote::ssh::SshChoices::default())
        .await
        .unwrap();
    let mut lines = api
        .logs(fleet_remote::stage::LogsQuery {
            targets: Vec::new(),
            lines: 0,
            follow: true,
        })
        .await
        .unwrap();
    let line = |seq: u64, at: u64| LogEntry {
        ts_unix_ms: at,
        app: "api".into(),
        host: "web-2".into(),
        line: format!("line {seq}"),
        seq,
        ..LogEntry::default()
    };
    // Through A, which asks B, which asks the agent.
    let first = next_subscribe(&mut agent).await;
    agent
        .send(agent_message::Body::Logs(LogBatch {
            subscription_id: first.subscription_id,
            entries: (1..=3).map(|seq| line(seq, 100 + seq)).collect(),
        }))
        .await;
    let mut printed = Vec::new();
    while printed.len() < 3 {
        let entry = tokio::time::timeout(DEADLINE, lines.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        printed.push(entry.line);
    }
    // A dies; the follower follows through B, which asks the agent for history again.
    if let Some(mut process) = a.process.take() {
        process.kill().unwrap();
        process.wait().unwrap();
    }
    let again = next_subscribe(&mut agent).await;
    assert!(again.lines >= 1000, "{again:?}");
    agent
        .send(agent_message::Body::Logs(LogBatch {
            subscription_id: again.subscription_id,
            entries: (1..=6).map(|seq| line(seq, 100 + seq)).collect(),
        }))
        .await;
    let mut notices = Vec::new();
    while printed.len() < 6 {
        let entry = tokio::time::timeout(DEADLINE, lines.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if entry.notice.is_empty() {
            printed.push(entry.line);
        } else {
            notices.push(entry.notice);
        }
    }
    let expected: Vec<String> = (1..=6).map(|seq| format!("line {seq}")).collect();
    assert_eq!(printed, expected, "each line once, in order");
    assert!(
        notices
            .iter()
            .any(|n| n.contains("following through another")),
        "{notices:?}"
    );
    drop(lines);
    b.stop().await;
}

/// The next log subscription the agent is asked for (other messages skipped).
/// The next controller set the agent's controller pushes on its session.
async fn controllers_pushed(agent: &mut FakeAgent) -> Vec<String> {
    loop {
        match agent.next().await {
            Some(controller_message::Body::Controllers(set)) => return set.urls,
            Some(_) => continue,
            None => panic!("the session ended before a controller set came"),
        }
    }
}

async fn next_subscribe(agent: &mut FakeAgent) -> fleet_proto::controller::v1::LogSubscribe {
    use fleet_proto::controller::v1::controller_message;
    loop {
        match agent.next().await {
            Some(controller_message::Body::Subscribe(subscribe)) => return subscribe,
            Some(_) => continue,
            None => panic!("the agent's session ended"),
        }
    }
}
