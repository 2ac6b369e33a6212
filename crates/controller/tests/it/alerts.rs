//! Alerts end to end, with real TCP: a webhook receiver and an SMTP receiver in the
//! test get exactly one alert when an app goes `errored` and when a host is gone past
//! `host_unreachable`, and one recovery for each; a receiver that is down for a while,
//! even across a controller restart, still gets each alert once it is back; every alert
//! and delivery is in the audit log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_proto::agent::v1::ProcessStatus;
use fleet_proto::controller::v1::{Delta, Snapshot, agent_message};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::harness::*;

/// A webhook receiver: every POSTed JSON body arrives on `bodies`; while `down` it
/// answers 503 and keeps nothing.
struct Webhook {
    port: u16,
    bodies: mpsc::UnboundedReceiver<Value>,
    down: Arc<AtomicBool>,
}

impl Webhook {
    async fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, bodies) = mpsc::unbounded_channel();
        let down = Arc::new(AtomicBool::new(false));
        let is_down = down.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, is_down) = (tx.clone(), is_down.clone());
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = n.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let answer = if is_down.load(Ordering::SeqCst) {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    } else {
                        let _ = tx.send(serde_json::from_slice(&body).unwrap());
                        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    };
                    let _ = reader.get_mut().write_all(answer.as_bytes()).await;
                });
            }
        });
        Webhook { port, bodies, down }
    }

    /// The next body, within `within`.
    async fn next(&mut self, within: Duration) -> Value {
        tokio::time::timeout(within, self.bodies.recv())
            .await
            .expect("an alert in time")
            .unwrap()
    }

    /// Nothing more arrives for `quiet`.
    async fn nothing_for(&mut self, quiet: Duration) {
        if let Ok(Some(body)) = tokio::time::timeout(quiet, self.bodies.recv()).await {
            panic!("an extra alert: {body}");
        }
    }
}

async fn say(reader: &mut BufReader<tokio::net::TcpStream>, text: &str) -> std::io::Result<()> {
    reader.get_mut().write_all(text.as_bytes()).await
}

/// A minimal SMTP receiver: each message's DATA arrives on `mails`.
async fn smtp_receiver() -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mails) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let _ = say(&mut reader, "220 test ESMTP\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let answer = match verb.as_str() {
                        "EHLO" | "HELO" => "250 test\r\n",
                        "DATA" => {
                            let _ = say(&mut reader, "354 go on\r\n").await;
                            let mut data = String::new();
                            loop {
                                line.clear();
                                if reader.read_line(&mut line).await.unwrap_or(0) == 0
                                    || line == ".\r\n"
                                {
                                    break;
                                }
                                data.push_str(&line);
                            }
                            let _ = tx.send(data);
                            "250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = say(&mut reader, "221 bye\r\n").await;
                            return;
                        }
                        _ => "250 ok\r\n",
                    };
                    let _ = say(&mut reader, answer).await;
                }
            });
        }
    });
    (port, mails)
}

fn config(webhook: u16, smtp: Option<u16>) -> fleet_controller::alerts::config::Alerts {
    let mut text = format!(
        "[alerts]\nhost_unreachable = \"2s\"\n\
         [[alerts.webhook]]\nname = \"ops-hook\"\nurl = \"http://127.0.0.1:{webhook}/hook\"\n"
    );
    if let Some(port) = smtp {
        text.push_str(&format!(
            "[[alerts.email]]\nname = \"ops-mail\"\nsmtp = \"smtp://127.0.0.1:{port}\"\nfrom = \"fleet@example.com\"\nto = [\"ops@example.com\"]\n"
        ));
    }
    fleet_controller::alerts::config::parse(&text, std::path::Path::new("controller.toml"))
        .unwrap()
        .unwrap()
}

/// A host's agent back with its certificate.
async fn reconnect(controller: &Controller, identity: &AgentIdentity, host: &str) -> FakeAgent {
    let channel = controller.channel(Some(identity)).await.unwrap();
    FakeAgent::connect(channel, hello(host)).await.unwrap()
}

fn errored(id: u32) -> fleet_proto::agent::v1::ProcessInfo {
    let mut p = process(id, "api");
    p.status = ProcessStatus::Errored.into();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_errored_app_and_a_lost_host_alert_once_each_and_recover_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut hook = Webhook::start().await;
    let (smtp, mut mails) = smtp_receiver().await;
    let alerts = config(hook.port, Some(smtp));
    let controller = Controller::start_with(dir.path(), |c| c.alerts = Some(alerts)).await;
    let (web1, _) = FakeAgent::joined(&controller, "web1").await;
    let (web2, web2_identity) = FakeAgent::joined(&controller, "web2").await;
    web1.send(agent_message::Body::Snapshot(Snapshot {
        processes: vec![errored(0)],
        seq: 1,
    }))
    .await;
    web2.send(agent_message::Body::Snapshot(Snapshot {
        processes: Vec::new(),
        seq: 1,
    }))
    .await;

    let fired = hook.next(DEADLINE).await;
    assert_eq!(
        (
            &fired["alert"],
            &fired["state"],
            &fired["host"],
            &fired["app"],
            &fired["instance"]
        ),
        (
            &"app_errored".into(),
            &"firing".into(),
            &"web1".into(),
            &"api".into(),
            &0.into()
        ),
        "{fired}"
    );
    let mail = tokio::time::timeout(DEADLINE, mails.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        mail.contains("Subject: [FIRING] app_errored: api#0 on web1 is errored"),
        "{mail}"
    );
    assert!(mail.contains("To: ops@example.com"), "{mail}");
    hook.nothing_for(Duration::from_secs(2)).await;

    // Fixed: one recovery.
    let mut online = process(0, "api");
    online.restarts = 1;
    web1.send(agent_message::Body::Delta(Delta {
        changed: vec![online],
        removed: Vec::new(),
        seq: 2,
    }))
    .await;
    let resolved = hook.next(DEADLINE).await;
    assert_eq!(
        (&resolved["alert"], &resolved["state"]),
        (&"app_errored".into(), &"resolved".into())
    );

    // A host gone: an alert once it has been gone 2 s, one recovery when it is back.
    drop(web2);
    let lost = hook.next(DEADLINE).await;
    assert_eq!(
        (&lost["alert"], &lost["state"], &lost["host"]),
        (&"host_unreachable".into(), &"firing".into(), &"web2".into())
    );
    hook.nothing_for(Duration::from_secs(2)).await;
    let web2 = reconnect(&controller, &web2_identity, "web2").await;
    web2.send(agent_message::Body::Snapshot(Snapshot {
        processes: Vec::new(),
        seq: 1,
    }))
    .await;
    let back = hook.next(DEADLINE).await;
    assert_eq!(
        (&back["alert"], &back["state"]),
        (&"host_unreachable".into(), &"resolved".into())
    );

    let audit = fleet_controller::store::audit_entries(
        &fleet_controller::store::open_read_only(&dir.path().join(fleet_controller::DATABASE_FILE))
            .unwrap(),
        None,
    )
    .unwrap();
    let alerts = audit
        .iter()
        .filter(|e| e.action.starts_with("alert ") && e.action != "alert delivery")
        .count();
    let delivered = (audit.iter())
        .filter(|e| e.action == "alert delivery" && e.result.starts_with("delivered"))
        .count();
    assert_eq!(alerts, 4, "{audit:#?}");
    // Each alert to both targets (the mail of the last ones may still be on its way).
    assert!(delivered >= 6, "{audit:#?}");
    drop((web1, web2));
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_its_alert_even_across_a_controller_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut hook = Webhook::start().await;
    hook.down.store(true, Ordering::SeqCst);
    let controller =
        Controller::start_with(dir.path(), |c| c.alerts = Some(config(hook.port, None))).await;
    let (web1, identity) = FakeAgent::joined(&controller, "web1").await;
    web1.send(agent_message::Body::Snapshot(Snapshot {
        processes: vec![errored(0)],
        seq: 1,
    }))
    .await;
    // The first attempt fails and is recorded, due again later.
    let data = dir.path().join(fleet_controller::DATABASE_FILE);
    let failed = || {
        let conn = fleet_controller::store::open_read_only(&data).unwrap();
        (fleet_controller::store::audit_entries(&conn, None)
            .unwrap()
            .iter())
        .any(|e| {
            e.action == "alert delivery"
                && e.result
                    .starts_with("failed (attempt 1): the webhook answered 503")
        })
    };
    let until = tokio::time::Instant::now() + DEADLINE;
    while !failed() {
        assert!(
            tokio::time::Instant::now() < until,
            "a failed attempt audited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The controller stops with the delivery pending, and starts again.
    drop(web1);
    controller.stop().await;
    hook.down.store(false, Ordering::SeqCst);
    let controller =
        Controller::start_with(dir.path(), |c| c.alerts = Some(config(hook.port, None))).await;
    let web1 = reconnect(&controller, &identity, "web1").await;
    web1.send(agent_message::Body::Snapshot(Snapshot {
        processes: vec![errored(0)],
        seq: 1,
    }))
    .await;
    let fired = hook.next(Duration::from_secs(20)).await;
    assert_eq!(
        (&fired["alert"], &fired["state"]),
        (&"app_errored".into(), &"firing".into())
    );
    // Still errored after the restart: the incident was open, nothing fires again.
    hook.nothing_for(Duration::from_secs(3)).await;
    drop(web1);
    controller.stop().await;
}

#[tokio::test]
async fn alerts_test_reaches_every_target_and_says_which_failed() {
    let dir = tempfile::tempdir().unwrap();
    fleet_controller::prepare_data_dir(dir.path()).unwrap();
    let mut hook = Webhook::start().await;
    let (smtp, mut mails) = smtp_receiver().await;
    let alerts = config(hook.port, Some(smtp));
    assert!(
        fleet_controller::alerts::send_test(
            &fleet_controller::store::Location::in_data_dir(dir.path()),
            &alerts
        )
        .await
        .unwrap()
    );
    let body = hook.next(DEADLINE).await;
    assert_eq!(body["alert"], "test");
    let mail = tokio::time::timeout(DEADLINE, mails.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        mail.contains("[FIRING] test: a test alert from fleet-controller"),
        "{mail}"
    );
    hook.down.store(true, Ordering::SeqCst);
    assert!(
        !fleet_controller::alerts::send_test(
            &fleet_controller::store::Location::in_data_dir(dir.path()),
            &alerts
        )
        .await
        .unwrap()
    );
}
