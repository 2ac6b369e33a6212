//! The web dashboard's HTTP API over real TLS: sign-in and its cookie, sessions that
//! end with their token, CSRF and role checks on actions (each refusal audited), body
//! limits, the security headers, and the overview's snapshot and deltas over
//! Server-Sent Events. The browser itself is driven in `tests/it/dashboard.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use fleet_controller::tokens::Role;
use fleet_proto::agent::v1::ProcessStatus;
use fleet_proto::controller::v1::{Action, Delta, Snapshot, agent_message};
use serde_json::Value;

use crate::command::answer_commands;
use crate::harness::*;
use crate::http::{Answer, read_until};

/// A dashboard over TLS with one host, `web-1`, in stage `test`, running `api`.
struct Bed {
    controller: Controller,
    http: SocketAddr,
    ca: String,
    agent: Option<FakeAgent>,
}

impl Bed {
    async fn up() -> (tempfile::TempDir, Bed) {
        let dir = tempfile::tempdir().unwrap();
        let (controller, http) = Controller::start_http(dir.path(), true).await;
        let ca = controller.ca_pem();
        let (agent, _) = FakeAgent::joined(&controller, "web-1").await;
        agent
            .send(agent_message::Body::Snapshot(Snapshot {
                seq: 1,
                processes: vec![process(0, "api")],
            }))
            .await;
        // A CLI call names the stage, which the dashboard then knows.
        let admin = controller.api_token();
        wait_for_status(&controller, &admin, &["web-1"], DEADLINE, |s| {
            s.hosts[0].processes.len() == 1
        })
        .await;
        let bed = Bed {
            controller,
            http,
            ca,
            agent: Some(agent),
        };
        (dir, bed)
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        crate::http::send(self.http, Some(&self.ca), (method, path), headers, body).await
    }

    /// Signs in with a new token of `role`: the cookie header to send and the CSRF token.
    async fn sign_in(&self, role: Role) -> (String, String, String) {
        let token = self.controller.token_with(role, None);
        let (cookie, csrf) = self.sign_in_with(&token).await;
        (cookie, csrf, token)
    }

    async fn sign_in_with(&self, token: &str) -> (String, String) {
        let answer = self
            .send(
                "POST",
                "/api/login",
                &[("Content-Type", "application/json")],
                &format!(r#"{{"token":"{token}"}}"#),
            )
            .await;
        assert_eq!(answer.code, 200, "{}", answer.body);
        let set = answer.header("set-cookie").unwrap().to_owned();
        for part in [
            "__Host-fleet_session=",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
            "Max-Age=",
        ] {
            assert!(set.contains(part), "{set} lacks {part}");
        }
        let cookie = set.split(';').next().unwrap().to_owned();
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        (cookie, body["csrf"].as_str().unwrap().to_owned())
    }

    async fn action(&self, cookie: &str, csrf: Option<&str>, body: &str) -> Answer {
        let mut headers = vec![("Cookie", cookie), ("Content-Type", "application/json")];
        if let Some(csrf) = csrf {
            headers.push(("X-CSRF-Token", csrf));
        }
        self.send("POST", "/api/action", &headers, body).await
    }

    fn audit(&self) -> Vec<fleet_controller::store::AuditEntry> {
        fleet_controller::read_audit(&self.controller.store, None).unwrap()
    }

    /// Waits until `cookie`'s session is refused (`what` names why it should end).
    async fn wait_signed_out(&self, cookie: &str, what: &str) {
        let until = tokio::time::Instant::now() + DEADLINE;
        while self
            .send("GET", "/api/session", &[("Cookie", cookie)], "")
            .await
            .code
            != 401
        {
            assert!(tokio::time::Instant::now() < until, "{what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `path` answers 200 for `cookie` (the dashboard reads stages every
    /// few seconds).
    async fn wait_ok(&self, cookie: &str, path: &str) -> Answer {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let answer = self.send("GET", path, &[("Cookie", cookie)], "").await;
            if answer.code == 200 || tokio::time::Instant::now() > until {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const RESTART: &str = r#"{"stage":"test","app":"api","action":"restart"}"#;

#[tokio::test]
async fn pages_carry_a_strict_policy_and_sign_in_refuses_bad_tokens_audited() {
    let (_dir, bed) = Bed::up().await;
    let page = bed.send("GET", "/", &[], "").await;
    assert_eq!(page.code, 200);
    assert!(
        page.body.contains("<script src=\"/app.js\""),
        "{}",
        page.body
    );
    let csp = page.header("content-security-policy").unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(!page.body.contains("<script>"), "no inline script");
    assert_eq!(bed.send("GET", "/app.js", &[], "").await.code, 200);

    let bad = bed
        .send(
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            r#"{"token":"fct_guess"}"#,
        )
        .await;
    assert_eq!(bad.code, 401);
    assert!(bad.header("set-cookie").is_none());
    let form = bed
        .send(
            "POST",
            "/api/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "token=x",
        )
        .await;
    assert_eq!(form.code, 415, "a cross-site form cannot sign in");
    let metrics = bed.controller.token_with(Role::Metrics, None);
    let scrape = bed
        .send(
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            &format!(r#"{{"token":"{metrics}"}}"#),
        )
        .await;
    assert_eq!(scrape.code, 403, "a scrape token cannot sign in");
    let audit = bed.audit();
    let failed: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "login" && e.result.starts_with("failed"))
        .collect();
    assert_eq!(failed.len(), 2, "{audit:#?}");
    assert!(
        failed[0].who.starts_with("dashboard:127.0.0.1"),
        "{:?}",
        failed[0]
    );

    // Guessing is slowed like on the gRPC face: soon refused without a check.
    let mut limited = false;
    for n in 0..40 {
        let answer = bed
            .send(
                "POST",
                "/api/login",
                &[("Content-Type", "application/json")],
                &format!(r#"{{"token":"fct_guess{n}"}}"#),
            )
            .await;
        if answer.code == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "failed sign-ins are rate-limited");
}

#[tokio::test]
async fn sessions_end_with_a_tampered_cookie_or_a_revoked_or_expired_token() {
    let (_dir, bed) = Bed::up().await;
    let (cookie, _, _) = bed.sign_in(Role::Read).await;
    let me = bed
        .send("GET", "/api/session", &[("Cookie", &cookie)], "")
        .await;
    assert_eq!(me.code, 200);
    assert!(
        me.body.contains(r#""role":"read""#) && me.body.contains(r#""can_act":false"#),
        "{}",
        me.body
    );
    assert_eq!(bed.send("GET", "/api/session", &[], "").await.code, 401);
    let mut tampered = cookie.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        bed.send("GET", "/api/session", &[("Cookie", &tampered)], "")
            .await
            .code,
        401
    );
    assert_eq!(
        bed.send("GET", "/api/host/web-1", &[("Cookie", &tampered)], "")
            .await
            .code,
        401
    );
    // The cookie of a plain-HTTP session is not read over TLS.
    let plain = cookie.replace("__Host-fleet_session", "fleet_session");
    assert_eq!(
        bed.send("GET", "/api/session", &[("Cookie", &plain)], "")
            .await
            .code,
        401
    );

    let name = fleet_controller::list_api_tokens(&bed.controller.store)
        .unwrap()
        .into_iter()
        .find(|t| t.role == Role::Read)
        .map(|t| t.name)
        .unwrap();
    fleet_controller::revoke_api_token(&bed.controller.store, &name).unwrap();
    bed.wait_signed_out(&cookie, "a revoked token's session ends")
        .await;

    let short = bed
        .controller
        .token_with(Role::Operate, Some(Duration::from_secs(2)));
    let (cookie, _) = bed.sign_in_with(&short).await;
    assert_eq!(
        bed.send("GET", "/api/session", &[("Cookie", &cookie)], "")
            .await
            .code,
        200
    );
    bed.wait_signed_out(&cookie, "an expired token's session ends")
        .await;
}

#[tokio::test]
async fn actions_need_operate_a_csrf_token_and_json_and_every_refusal_is_audited() {
    let (_dir, mut bed) = Bed::up().await;
    let mut seen = answer_commands(bed.agent.take().unwrap(), false);
    let (reader, reader_csrf, _) = bed.sign_in(Role::Read).await;
    let (operator, csrf, _) = bed.sign_in(Role::Operate).await;
    assert_eq!(bed.wait_ok(&operator, "/api/app/test/api").await.code, 200);

    let refused = bed.action(&reader, Some(&reader_csrf), RESTART).await;
    assert_eq!(refused.code, 403, "{}", refused.body);
    assert!(
        refused.body.contains("actions need operate"),
        "{}",
        refused.body
    );
    assert_eq!(bed.action(&operator, None, RESTART).await.code, 403);
    assert_eq!(
        bed.action(&operator, Some("0123abcd"), RESTART).await.code,
        403
    );
    let text = bed
        .send(
            "POST",
            "/api/action",
            &[
                ("Cookie", &operator),
                ("X-CSRF-Token", &csrf),
                ("Content-Type", "text/plain"),
            ],
            RESTART,
        )
        .await;
    assert_eq!(text.code, 415);
    let huge = format!(
        r#"{{"stage":"test","app":"{}","action":"restart"}}"#,
        "a".repeat(64 * 1024)
    );
    assert_eq!(bed.action(&operator, Some(&csrf), &huge).await.code, 413);
    assert_eq!(
        bed.action(
            &operator,
            Some(&csrf),
            r#"{"stage":"test","app":"api","action":"delete"}"#
        )
        .await
        .code,
        400
    );
    assert_eq!(
        bed.action(
            &operator,
            Some(&csrf),
            r#"{"stage":"nope","app":"api","action":"restart"}"#
        )
        .await
        .code,
        404
    );
    assert_eq!(
        bed.action("Cookie: none", Some(&csrf), RESTART).await.code,
        401
    );
    assert!(seen.try_recv().is_err(), "nothing reached the host");
    let audit = bed.audit();
    let refusals: Vec<_> = audit
        .iter()
        .filter(|e| e.result.starts_with("refused"))
        .collect();
    assert_eq!(refusals.len(), 7, "{refusals:#?}");
    assert!(refusals[0].who.starts_with("token:read-") && refusals[0].who.ends_with("(dashboard)"));
    assert!(refusals[1].result.contains("CSRF") && refusals[1].who.starts_with("token:operate-"));
    assert!(
        refusals[6].who.starts_with("dashboard:127.0.0.1"),
        "{:?}",
        refusals[6]
    );

    let done = bed.action(&operator, Some(&csrf), RESTART).await;
    assert_eq!(done.code, 200, "{}", done.body);
    let body: Value = serde_json::from_str(&done.body).unwrap();
    assert_eq!(body["ok"], true, "{body}");
    let (action, targets) = tokio::time::timeout(DEADLINE, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((action, targets), (Action::Restart, vec!["api".to_owned()]));
    let last = bed.audit().pop().unwrap();
    assert_eq!(
        (
            last.action.as_str(),
            last.stage.as_str(),
            last.result.as_str()
        ),
        ("restart", "test", "ok")
    );
    assert!(
        last.who.starts_with("token:operate-") && last.who.ends_with("(dashboard)"),
        "{last:?}"
    );
}

#[tokio::test]
async fn the_overview_streams_a_snapshot_then_only_what_changed() {
    let (_dir, bed) = Bed::up().await;
    let (cookie, _, _) = bed.sign_in(Role::Read).await;
    let request =
        format!("GET /api/events HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n");
    let first = read_until(
        bed.http,
        Some(&bed.ca),
        request.as_bytes(),
        "\"web-1\"",
        DEADLINE,
    )
    .await;
    assert_eq!(first.code, 200, "{}", first.head);
    assert!(
        first
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(first.body.contains("event: snapshot"), "{}", first.body);
    assert!(
        first.body.contains(r#""status":"online""#),
        "{}",
        first.body
    );

    let agent = bed.agent.as_ref().unwrap();
    let mut errored = process(0, "api");
    errored.status = ProcessStatus::Errored.into();
    let watch = tokio::spawn({
        let (http, ca, request) = (bed.http, bed.ca.clone(), request.clone());
        async move {
            read_until(
                http,
                Some(&ca),
                request.as_bytes(),
                r#""status":"errored""#,
                DEADLINE,
            )
            .await
        }
    });
    // Let the watcher take its snapshot before the change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent
        .send(agent_message::Body::Delta(Delta {
            seq: 2,
            changed: vec![errored],
            removed: vec![],
        }))
        .await;
    let answer = watch.await.unwrap();
    let delta = answer
        .body
        .split("\n\n")
        .find(|event| event.contains("event: delta") && event.contains("errored"))
        .unwrap_or_else(|| panic!("no delta with the errored app: {}", answer.body));
    let data: Value = serde_json::from_str(delta.split("data: ").nth(1).unwrap().trim()).unwrap();
    assert_eq!(data["hosts"][0]["name"], "web-1");
    assert_eq!(data["hosts"][0]["apps"][0]["status"], "errored");
    assert_eq!(
        data["hosts"].as_array().unwrap().len(),
        1,
        "only the changed host"
    );

    let host = bed.wait_ok(&cookie, "/api/host/web-1").await;
    let host: Value = serde_json::from_str(&host.body).unwrap();
    assert_eq!(host["instances"][0]["status"], "errored");
    assert_eq!(host["card"]["stages"][0], "test");
    assert_eq!(
        bed.send("GET", "/api/host/nowhere", &[("Cookie", &cookie)], "")
            .await
            .code,
        404
    );
    let logs = bed
        .send(
            "GET",
            &format!("/api/logs?q={}", "x".repeat(300)),
            &[("Cookie", &cookie)],
            "",
        )
        .await;
    assert_eq!(logs.code, 400);
}
