//! The CLI's face needs a stored API token on every call, and tokens are kept hashed.

use fleet_proto::controller::v1::{FleetHello, StatusRequest};
use tonic::{Code, Request};

use crate::harness::{Controller, authed, stage};

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let mut fleet = controller.fleet().await;
    let request = || StatusRequest {
        stage: Some(stage(&["web-1"])),
    };

    let missing = fleet.status(Request::new(request())).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(
        missing.message(),
        "invalid or missing API token\nhint: create one with `fleet-controller token create`"
    );
    let wrong = fleet
        .status(authed(request(), "fct_0123"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let hello = fleet
        .hello(Request::new(FleetHello::default()))
        .await
        .unwrap_err();
    assert_eq!(
        hello.code(),
        Code::Unauthenticated,
        "even hello needs a token"
    );

    let token = controller.api_token();
    let status = fleet
        .status(authed(request(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.hosts.len(), 1);
    assert_eq!(status.hosts[0].error, "never connected");
    controller.stop().await;
}

#[tokio::test]
async fn api_tokens_are_stored_only_as_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    assert!(token.starts_with("fct_"));
    controller.status(&token, &[]).await;
    controller.stop().await;

    let conn = rusqlite::Connection::open(dir.path().join("controller.db")).unwrap();
    let (hash, last_used): (Vec<u8>, Option<i64>) = conn
        .query_row("SELECT sha256, last_used FROM api_tokens", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!(hash.len(), 32);
    assert!(last_used.is_some(), "a used token records when");
    // Nowhere in the database files, WAL included, is the token itself.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let secret = &token.as_bytes()[4..];
        assert!(
            !bytes.windows(secret.len()).any(|window| window == secret),
            "{} holds the plaintext token",
            path.display()
        );
    }
}

#[tokio::test]
async fn hello_from_another_major_version_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    let mut fleet = controller.fleet().await;
    let reply = fleet
        .hello(authed(
            FleetHello {
                protocol_major: 1,
                protocol_minor: 0,
                client_version: "test".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.protocol_major, 1);
    let refused = fleet
        .hello(authed(
            FleetHello {
                protocol_major: 2,
                ..FleetHello::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.message(),
        "client speaks protocol 2.x, controller speaks 1.x; upgrade the controller"
    );
    controller.stop().await;
}

#[tokio::test]
async fn the_data_directory_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let controller = Controller::start(&data).await;
    let mode = |name: &str| {
        std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("server.key"), 0o600);
    assert!(data.join("controller.db").exists());
    controller.stop().await;
}

#[tokio::test]
async fn roles_limit_calls_and_expired_or_revoked_tokens_get_nothing() {
    use fleet_controller::tokens::Role;
    use fleet_proto::controller::v1::{Action, CommandRequest, CreateJoinTokenRequest};
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let mut fleet = controller.fleet().await;
    let status = || StatusRequest {
        stage: Some(stage(&["web-1"])),
    };
    let restart = || CommandRequest {
        stage: Some(stage(&["web-1"])),
        action: Action::Restart.into(),
        targets: vec!["api".into()],
        count: String::new(),
    };
    let join = || CreateJoinTokenRequest {
        host: "web-9".into(),
        ttl_seconds: 60,
    };

    // read: status yes, a restart no (refused before any host is asked).
    let read = controller.token_with(Role::Read, None);
    assert!(fleet.status(authed(status(), &read)).await.is_ok());
    let refused = fleet.command(authed(restart(), &read)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused
            .message()
            .contains("has the role read; this needs operate"),
        "{}",
        refused.message()
    );
    // operate: a restart yes, a join token no; admin: a join token yes.
    let operate = controller.token_with(Role::Operate, None);
    assert!(fleet.command(authed(restart(), &operate)).await.is_ok());
    let refused = fleet
        .create_join_token(authed(join(), &operate))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let admin = controller.token_with(Role::Admin, None);
    assert!(
        fleet
            .create_join_token(authed(join(), &admin))
            .await
            .is_ok()
    );

    // An expired token gets nothing, not even status.
    let expired = controller.token_with(Role::Admin, Some(std::time::Duration::from_millis(1)));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let refused = loop {
        match fleet.status(authed(status(), &expired)).await {
            Err(refused) => break refused,
            Ok(_) => assert!(std::time::Instant::now() < until, "the token never expired"),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("expired"),
        "{}",
        refused.message()
    );

    // Revoked while the controller runs: refused at the next call.
    let names = fleet_controller::list_api_tokens(&fleet_controller::store::Location::in_data_dir(
        dir.path(),
    ))
    .unwrap();
    let operate_name = &names.iter().find(|t| t.role == Role::Operate).unwrap().name;
    fleet_controller::revoke_api_token(
        &fleet_controller::store::Location::in_data_dir(dir.path()),
        operate_name,
    )
    .unwrap();
    let refused = fleet.status(authed(status(), &operate)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("was revoked"),
        "{}",
        refused.message()
    );
    assert!(
        fleet_controller::revoke_api_token(
            &fleet_controller::store::Location::in_data_dir(dir.path()),
            operate_name
        )
        .is_err()
    );

    // The audit log names the token, never its id or secret.
    let audit = fleet_controller::read_audit(
        &fleet_controller::store::Location::in_data_dir(dir.path()),
        None,
    )
    .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "restart" && e.who == format!("token:{operate_name}")),
        "{audit:#?}"
    );
    controller.stop().await;
}
