//! The store's shared suite: every case runs on a fresh SQLite file and on a fresh
//! database of a PostgreSQL server of the test's own (`fleet_tests::postgres`), so the
//! two backends answer alike. A case is a function of a `Db`; the record modules keep
//! theirs beside their code (`tokens::tests`, ...), this file lists them.

use std::time::Duration;

use super::*;
use crate::error::Refusal;
use crate::{params, pki};

type Case = (&'static str, fn(&dyn Db));

const CASES: &[Case] = &[
    (
        "join tokens",
        a_join_token_works_once_for_its_host_until_it_expires,
    ),
    (
        "audit order",
        audit_entries_are_the_newest_ones_with_the_newest_last,
    ),
    ("audit append-only", the_audit_log_is_append_only),
    ("hosts and stages", hosts_and_stages_are_remembered),
    ("the shared ca", the_ca_is_stored_once),
    ("a failed transaction", a_failed_transaction_leaves_nothing),
    ("copy", every_table_is_copied_with_its_ids),
    (
        "leases and holders",
        leases_end_and_a_host_moves_with_its_epoch,
    ),
    (
        "tokens",
        crate::tokens::tests::tokens_have_a_role_an_expiry_and_can_be_revoked,
    ),
    (
        "certificates",
        crate::hosts::tests::a_certificate_is_current_until_superseded_or_removed,
    ),
    (
        "deploys",
        crate::deploys::tests::deploys_come_back_newest_first_and_name_each_hosts_release,
    ),
    (
        "deploy runs",
        crate::deployer::runs::tests::one_run_per_stage_holds_the_lock_with_a_growing_fence,
    ),
];

#[test]
fn the_shared_suite_passes_on_sqlite() {
    for (name, case) in CASES {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite::open(&dir.path().join("controller.db")).unwrap();
        eprintln!("sqlite: {name}");
        case(&db);
    }
}

#[test]
fn the_shared_suite_passes_on_postgresql() {
    let Some(server) = fleet_tests::postgres::Postgres::start() else {
        return;
    };
    for (index, (name, case)) in CASES.iter().enumerate() {
        let database = format!("suite{index}");
        server.create_database(&database);
        let location = PgLocation::parse(&server.url(&database)).unwrap();
        let db = postgres::open(&location).unwrap();
        eprintln!("postgresql: {name}");
        case(&db);
    }
}

#[test]
fn migrating_twice_is_a_no_op_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    let mut db = sqlite::open(&path).unwrap();
    db.migrate_again().unwrap();
    db.set_schema_version_for_test(99).unwrap();
    assert!(matches!(
        db.migrate_again(),
        Err(crate::Error::NewerSchema { found: 99, .. })
    ));
}

#[test]
fn a_second_postgresql_store_on_the_same_database_migrates_once_and_refuses_a_newer_schema() {
    let Some(server) = fleet_tests::postgres::Postgres::start() else {
        return;
    };
    server.create_database("twice");
    let location = PgLocation::parse(&server.url("twice")).unwrap();
    // Two controllers starting at once: one migrates, the other waits and finds it done.
    let opened: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| postgres::open(&location).is_ok()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(opened, [true, true]);
    let db = postgres::open(&location).unwrap();
    db.execute("UPDATE fleet_schema SET version = 99", params![])
        .unwrap();
    assert!(matches!(
        postgres::open(&location),
        Err(crate::Error::NewerSchema { found: 99, .. })
    ));
}

fn a_join_token_works_once_for_its_host_until_it_expires(conn: &dyn Db) {
    let (token, expires) =
        create_join_token(conn, "web-1", Duration::from_secs(60), 1_000).unwrap();
    assert_eq!(expires, 61_000);
    let hash = pki::token_hash(&token);
    assert!(matches!(
        check_join_token(conn, &hash, "web-2", 2_000).unwrap(),
        Err(Refusal::JoinTokenHost { .. })
    ));
    assert!(matches!(
        check_join_token(conn, &hash, "web-1", 61_000).unwrap(),
        Err(Refusal::JoinTokenExpired(_))
    ));
    assert!(
        check_join_token(conn, &hash, "web-1", 2_000)
            .unwrap()
            .is_ok()
    );
    assert!(claim_join_token(conn, &hash, "web-1", 2_000).unwrap());
    assert!(!claim_join_token(conn, &hash, "web-1", 2_001).unwrap());
    assert!(matches!(
        check_join_token(conn, &hash, "web-1", 3_000).unwrap(),
        Err(Refusal::JoinTokenUsed(_))
    ));
    assert!(matches!(
        check_join_token(conn, &pki::token_hash("fjt_nope"), "web-1", 3_000).unwrap(),
        Err(Refusal::UnknownJoinToken)
    ));
}

fn audit_entry(at_ms: u64, action: &str) -> AuditEntry {
    AuditEntry {
        at_ms,
        who: "token:1 (ops@laptop)".into(),
        action: action.into(),
        stage: "prod".into(),
        targets: vec!["release=r1".into(), "web-1".into()],
        result: "ok".into(),
    }
}

fn audit_entries_are_the_newest_ones_with_the_newest_last(conn: &dyn Db) {
    assert!(audit_entries(conn, Some(10)).unwrap().is_empty());
    // Two entries in the same millisecond keep the order they were appended in.
    for (at_ms, action) in [(1_000, "first"), (2_000, "second"), (2_000, "third")] {
        append_audit(conn, &audit_entry(at_ms, action)).unwrap();
    }
    let actions = |limit| -> Vec<String> {
        audit_entries(conn, limit)
            .unwrap()
            .into_iter()
            .map(|entry| entry.action)
            .collect()
    };
    assert_eq!(actions(None), ["first", "second", "third"]);
    assert_eq!(actions(Some(2)), ["second", "third"]);
    assert_eq!(actions(Some(1)), ["third"]);
    let entry = audit_entries(conn, Some(1)).unwrap().remove(0);
    assert_eq!(entry.at_ms, 2_000);
    assert_eq!(entry.who, "token:1 (ops@laptop)");
    assert_eq!(entry.stage, "prod");
    assert_eq!(entry.targets, ["release=r1", "web-1"]);
    assert_eq!(entry.result, "ok");
    append_audit(
        conn,
        &AuditEntry {
            action: "deploy update".into(),
            result: "failed: rolled back".into(),
            ..audit_entry(3_000, "")
        },
    )
    .unwrap();
    assert_eq!(
        deploy_counts(conn).unwrap(),
        [(
            "prod".to_owned(),
            "update".to_owned(),
            "rolled_back".to_owned(),
            1
        )]
    );
}

fn the_audit_log_is_append_only(conn: &dyn Db) {
    append_audit(conn, &audit_entry(1, "restart")).unwrap();
    assert!(conn.execute("DELETE FROM audit_log", params![]).is_err());
    assert!(
        conn.execute("UPDATE audit_log SET result = 'x'", params![])
            .is_err()
    );
    assert_eq!(audit_entries(conn, None).unwrap().len(), 1);
}

fn hosts_and_stages_are_remembered(conn: &dyn Db) {
    host_connected(conn, "web-1", "0.1.0", "boot-a", 1_000).unwrap();
    host_connected(conn, "web-1", "0.2.0", "boot-b", 2_000).unwrap();
    host_disconnected(conn, "web-1", 3_000).unwrap();
    let known = known_hosts(conn).unwrap();
    assert_eq!(known.len(), 1);
    assert_eq!(
        (known[0].last_seen_ms, known[0].agent_version.as_str()),
        (3_000, "0.2.0")
    );
    save_stage(conn, "prod", &["web-1".into(), "web-2".into()], 1).unwrap();
    save_stage(conn, "prod", &["web-1".into()], 2).unwrap();
    assert_eq!(
        crate::deploys::stages(conn).unwrap(),
        [("prod".to_owned(), vec!["web-1".to_owned()])]
    );
}

fn the_ca_is_stored_once(conn: &dyn Db) {
    assert_eq!(stored_ca(conn).unwrap(), None);
    assert!(store_ca(conn, "CERT A", b"sealed a", 1).unwrap());
    assert!(
        !store_ca(conn, "CERT B", b"sealed b", 2).unwrap(),
        "the first one stays"
    );
    assert_eq!(
        stored_ca(conn).unwrap(),
        Some(("CERT A".to_owned(), b"sealed a".to_vec()))
    );
}

fn a_failed_transaction_leaves_nothing(conn: &dyn Db) {
    let result = conn.transaction(|tx| {
        append_audit(tx, &audit_entry(1, "inside"))?;
        tx.execute("INSERT INTO no_such_table VALUES (1)", params![])?;
        Ok(())
    });
    assert!(result.is_err());
    assert!(audit_entries(conn, None).unwrap().is_empty());
    // The connection is usable after the rollback.
    append_audit(conn, &audit_entry(2, "after")).unwrap();
    assert_eq!(audit_entries(conn, None).unwrap().len(), 1);
}

/// Fills every table from SQLite, copies into `conn` (which must be empty), and checks
/// the rows and that new ids come after the copied ones.
fn every_table_is_copied_with_its_ids(conn: &dyn Db) {
    let dir = tempfile::tempdir().unwrap();
    let source = sqlite::open(&dir.path().join("source.db")).unwrap();
    let source: &dyn Db = &source;
    host_connected(source, "web-1", "0.2.0", "boot", 1).unwrap();
    crate::hosts::record_certificate(source, "web-1", "ab12", 99, 2).unwrap();
    save_stage(source, "prod", &["web-1".into()], 3).unwrap();
    crate::tokens::create(source, "ci", crate::tokens::Role::Deploy, None, 4).unwrap();
    create_join_token(source, "web-2", Duration::from_secs(60), 5).unwrap();
    for at in 0..3 {
        append_audit(source, &audit_entry(at, "restart")).unwrap();
    }
    let run = crate::deployer::runs::NewRun {
        stage: "prod",
        action: "update",
        who: "me",
        token_name: "ci",
        machine: "laptop",
        git_ref: "main",
        commit: "abc",
        request: "{}",
        now_ms: 6,
        controller: "c1",
    };
    let (id, _) = crate::deployer::runs::begin(source, &run).unwrap().unwrap();
    crate::deployer::runs::append_event(source, id, 1, 7, "{}").unwrap();
    crate::deployer::runs::finish(source, id, "ok", Some("{}"), None, 8).unwrap();
    if conn.backend() == Backend::Sqlite {
        // `copy_tables` resets PostgreSQL's sequences; SQLite is only ever a source.
        return;
    }
    assert_eq!(copy::holds_a_fleet(conn).unwrap(), None);
    let copied = conn
        .transaction(|tx| copy::copy_tables(source, tx))
        .unwrap();
    assert!(copied.iter().any(|(t, n)| *t == "audit_log" && *n == 3));
    copy::verify(source, conn).unwrap();
    assert!(copy::holds_a_fleet(conn).unwrap().is_some());
    append_audit(conn, &audit_entry(9, "after")).unwrap();
    let ids = conn
        .query_map("SELECT id FROM audit_log ORDER BY id", params![], |row| {
            row.get::<_, i64>(0)
        })
        .unwrap();
    assert_eq!(ids, [1, 2, 3, 4]);
    let (again, _) = crate::deployer::runs::begin(conn, &run).unwrap().unwrap();
    assert!(again > id, "a new run's id follows the copied ones");
    assert_eq!(
        crate::hosts::list(conn).unwrap()[0].serial.as_deref(),
        Some("ab12")
    );
    let caller = crate::tokens::list(conn).unwrap();
    assert_eq!(caller[0].name, "ci");
}

fn leases_end_and_a_host_moves_with_its_epoch(conn: &dyn Db) {
    let member = |id: &str, at| Member {
        id: id.into(),
        url: format!("https://{id}:7443"),
        started_at_ms: at,
    };
    let (a, b) = (member("a", 1), member("b", 2));
    assert_eq!(
        renew_lease(conn, &a, 100, 10_100).unwrap(),
        std::slice::from_ref(&a)
    );
    assert_eq!(
        renew_lease(conn, &b, 200, 10_200).unwrap(),
        [a.clone(), b.clone()]
    );
    // a stops renewing: past its lease only b is alive.
    assert_eq!(
        renew_lease(conn, &b, 10_150, 20_150).unwrap(),
        std::slice::from_ref(&b)
    );
    leave(conn, "b").unwrap();
    assert_eq!(
        renew_lease(conn, &a, 10_160, 20_160).unwrap(),
        std::slice::from_ref(&a)
    );

    assert_eq!(hold_host(conn, "web-1", "a", 1).unwrap(), 1);
    assert_eq!(hold_host(conn, "web-1", "b", 2).unwrap(), 2, "moved to b");
    // a's session ending late does not take b's row away.
    release_host(conn, "web-1", "a").unwrap();
    assert_eq!(holders(conn).unwrap(), [("web-1".into(), "b".into(), 2)]);
    release_host(conn, "web-1", "b").unwrap();
    assert!(holders(conn).unwrap().is_empty());
}
