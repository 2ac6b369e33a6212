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
