//! `fleet-controller audit` reads the audit log while the controller runs: a deploy
//! recorded through `RecordDeploy` shows up in the binary's table and JSON.

use fleet_proto::controller::v1::DeployRecord;

use crate::harness::{Controller, authed};

fn audit(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-controller"))
        .arg("audit")
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "audit {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn audit_prints_a_recorded_deploy_while_the_controller_runs() {
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path()).await;
    let token = controller.api_token();
    controller
        .fleet()
        .await
        .record_deploy(authed(
            DeployRecord {
                stage: "prod".to_owned(),
                action: "update".to_owned(),
                release: "20250101T000000Z".to_owned(),
                hosts: vec!["web-1".to_owned(), "web-2".to_owned()],
                result: "failed: web-2\n\x1b[31mhook\x1b[0m".to_owned(),
                who: "ops@laptop".to_owned(),
                git_ref: "main".to_owned(),
                commit: "0123456789abcdef".to_owned(),
                rolled_back: true,
                duration_ms: 4321,
                outcomes_json: r#"[{"host":"web-1","result":"rolled_back","release":"r0","steps":[{"step":"upload","ms":12}]}]"#.to_owned(),
            },
            &token,
        ))
        .await
        .unwrap();
    // The detail the dashboard's deploys page shows.
    let conn = fleet_controller::store::open_read_only(&dir.path().join("controller.db")).unwrap();
    let deploys = fleet_controller::deploys::recent(&conn, Some("prod"), 10).unwrap();
    assert_eq!(deploys.len(), 1);
    let deploy = &deploys[0];
    assert_eq!(
        (
            deploy.git_ref.as_str(),
            deploy.commit.as_str(),
            deploy.rolled_back,
            deploy.duration_ms
        ),
        ("main", "0123456789abcdef", true, 4321)
    );
    assert_eq!(deploy.hosts[0]["steps"][0]["ms"], 12);
    assert!(deploy.who.ends_with("(ops@laptop)"), "{}", deploy.who);
    let bad = controller
        .fleet()
        .await
        .record_deploy(authed(
            DeployRecord {
                stage: "prod".to_owned(),
                action: "update".to_owned(),
                outcomes_json: "{not json".to_owned(),
                ..DeployRecord::default()
            },
            &token,
        ))
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

    let output = audit(&controller.data, &["--json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        entries.len(),
        2,
        "token create, then the deploy: {entries:#?}"
    );
    assert_eq!(entries[0]["action"], "token create");
    let deploy = &entries[1];
    assert_eq!(deploy["action"], "deploy update");
    assert_eq!(deploy["stage"], "prod");
    assert_eq!(
        deploy["targets"],
        serde_json::json!(["release=20250101T000000Z", "web-1", "web-2"])
    );
    assert_eq!(deploy["result"], "failed: web-2\n\x1b[31mhook\x1b[0m");
    assert!(
        deploy["who"]
            .as_str()
            .is_some_and(|who| who.starts_with("token:") && who.ends_with("(ops@laptop)")),
        "{deploy}"
    );
    let at = deploy["at"].as_str().unwrap();
    assert!(
        at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {at}"
    );

    // The table: a header, one aligned line per entry, the client's escape codes shown
    // escaped, not sent to the terminal.
    let table = String::from_utf8(audit(&controller.data, &["--limit", "1"]).stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("time "), "{table}");
    for (column, value) in [
        ("time", at),
        ("who", "token:"),
        ("action", "deploy update "),
        ("stage", "prod "),
        ("targets", "release=20250101T000000Z,web-1,web-2 "),
        ("result", "failed: web-2\\n\\u{1b}[31mhook\\u{1b}[0m"),
    ] {
        let at = lines[0].find(column).unwrap();
        assert!(lines[1][at..].starts_with(value), "{column}:\n{table}");
    }
    assert!(!table.contains('\x1b'), "{table}");
    controller.stop().await;
}
