//! `fleet-controller migrate`: a SQLite controller's state moved into a PostgreSQL store
//! (every table, ids kept, and the CA with its key sealed), in one transaction, into a
//! store that holds no fleet yet. The tables are named here with their columns, so a
//! column added to the schema and not here fails the shared suite's copy test.

use std::path::{Path, PathBuf};

use super::sql::{Db, DbError, Result};
use super::{Location, records};
use crate::error::Error;
use crate::{params, pki, seal};

/// Every table but the CA (which `migrate` seals on the way), with its columns.
pub const TABLES: &[(&str, &[&str])] = &[
    (
        "hosts",
        &[
            "name",
            "first_seen",
            "last_seen",
            "agent_version",
            "boot_id",
            "cert_serial",
            "cert_expires_at",
            "removed_at",
        ],
    ),
    ("stages", &["name", "hosts", "updated_at"]),
    (
        "api_tokens",
        &[
            "id",
            "sha256",
            "created_at",
            "last_used",
            "name",
            "role",
            "expires_at",
            "revoked_at",
        ],
    ),
    ("join_tokens", &["sha256", "host", "expires_at", "used_at"]),
    (
        "audit_log",
        &["id", "at", "who", "action", "stage", "targets", "result"],
    ),
    ("alert_incidents", &["key", "opened_at"]),
    (
        "alert_deliveries",
        &[
            "id",
            "created_at",
            "target",
            "payload",
            "attempts",
            "next_at",
            "done_at",
            "last_error",
        ],
    ),
    (
        "deploys",
        &[
            "id",
            "at",
            "who",
            "stage",
            "action",
            "release",
            "git_ref",
            "git_commit",
            "result",
            "rolled_back",
            "duration_ms",
            "outcomes",
        ],
    ),
    (
        "deploy_runs",
        &[
            "id",
            "stage",
            "action",
            "state",
            "who",
            "token_name",
            "machine",
            "git_ref",
            "git_commit",
            "release",
            "fence",
            "request",
            "created_at",
            "finished_at",
            "report",
            "error",
            "attempts",
            "controller",
        ],
    ),
    ("deploy_events", &["run_id", "seq", "at", "event"]),
    ("fences", &["fence", "run_id"]),
];

/// Identity columns whose sequences must start past the copied ids.
const IDENTITIES: &[(&str, &str)] = &[
    ("api_tokens", "id"),
    ("audit_log", "id"),
    ("alert_deliveries", "id"),
    ("deploys", "id"),
    ("deploy_runs", "id"),
    ("fences", "fence"),
];

/// What a store already holds, when it holds a fleet: the reason `copy` refuses it.
pub fn holds_a_fleet(db: &dyn Db) -> Result<Option<String>> {
    let mut found = Vec::new();
    for table in ["hosts", "api_tokens", "audit_log", "deploys", "ca"] {
        let count: i64 =
            db.query_row(&format!("SELECT count(*) FROM {table}"), params![], |row| {
                row.get(0)
            })?;
        if count > 0 {
            found.push(format!("{count} rows in {table}"));
        }
    }
    Ok((!found.is_empty()).then(|| found.join(", ")))
}

/// Deploy runs still running: their archives are in the old data directory, and the
/// new store's controllers could not resume them.
pub fn unfinished_runs(db: &dyn Db) -> Result<i64> {
    db.query_row(
        "SELECT count(*) FROM deploy_runs WHERE state IN ('running', 'cancelling')",
        params![],
        |row| row.get(0),
    )
}

/// Copies every table of `from` into `to` (inside the caller's transaction on `to`);
/// returns each table's row count.
pub fn copy_tables(from: &dyn Db, to: &dyn Db) -> Result<Vec<(&'static str, usize)>> {
    let mut copied = Vec::new();
    for (table, columns) in TABLES {
        let list = columns.join(", ");
        let rows = from.query(&format!("SELECT {list} FROM {table}"), params![])?;
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            placeholders.join(", ")
        );
        for row in &rows {
            to.execute(&insert, &row.0)?;
        }
        copied.push((*table, rows.len()));
    }
    for (table, column) in IDENTITIES {
        // The next id is past every copied one (PostgreSQL's sequences do not look at
        // the rows).
        to.query(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                               coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
            ),
            params![],
        )?;
    }
    Ok(copied)
}

/// Checks every copied table has as many rows in `to` as in `from`.
pub fn verify(from: &dyn Db, to: &dyn Db) -> Result<()> {
    for (table, _) in TABLES {
        let count = |db: &dyn Db| -> Result<i64> {
            db.query_row(&format!("SELECT count(*) FROM {table}"), params![], |row| {
                row.get(0)
            })
        };
        let (source, copy) = (count(from)?, count(to)?);
        if source != copy {
            return Err(DbError::Other(format!(
                "{table}: {source} rows in the source, {copy} copied"
            )));
        }
    }
    Ok(())
}

/// What `migrate` moved: each table's rows, and the seal key the CA's key was sealed
/// with (every controller of the new store needs a copy).
#[derive(Debug)]
pub struct Migrated {
    pub tables: Vec<(&'static str, usize)>,
    pub seal_key: PathBuf,
}

/// `fleet-controller migrate --from DIR --to postgres://...`: the SQLite controller's
/// state in `from_dir` (stopped: this reads its files) into `to`, which must hold no
/// fleet yet. The CA's key is sealed with `seal_key` (made when missing; default
/// `seal.key` in `from_dir`).
pub fn migrate(from_dir: &Path, to: &Location, seal_key: Option<&Path>) -> Result<Migrated, Error> {
    if !to.is_shared() {
        return Err(Error::Invalid(
            "--to takes a postgres:// URL: the store controllers share".into(),
        ));
    }
    let from = Location::Sqlite(from_dir.join(crate::DATABASE_FILE));
    let source = from.open_to_read()?;
    let source: &dyn Db = source.as_ref();
    let unfinished = unfinished_runs(source).map_err(|e| Error::database(&from, e))?;
    if unfinished > 0 {
        return Err(Error::Invalid(format!(
            "{unfinished} deploy(s) still running in {}\nhint: start that controller again and let them finish (or cancel them) first",
            from_dir.display()
        )));
    }
    let paths = pki::PkiPaths::new(from_dir);
    let read =
        |path: &Path| std::fs::read_to_string(path).map_err(|source| Error::io(path, source));
    let (ca_pem, ca_key) = (read(&paths.ca_cert)?, read(&paths.ca_key)?);
    let seal_key = seal_key.map_or_else(
        || from_dir.join(crate::config::SEAL_KEY_FILE),
        Path::to_owned,
    );
    let target = to.open()?;
    let target: &dyn Db = target.as_ref();
    let seal = seal::SealKey::load(&seal_key, true)?;
    let sealed = seal.seal(pki::SEALED_CA_KEY, ca_key.as_bytes());
    let now = crate::now_unix_ms();
    let copied = target.transaction(|tx| {
        if let Some(held) = holds_a_fleet(tx)? {
            return Ok(Err(held));
        }
        let tables = copy_tables(source, tx)?;
        verify(source, tx)?;
        records::store_ca(tx, &ca_pem, &sealed, now)?;
        records::append_audit(
            tx,
            &records::AuditEntry {
                at_ms: now,
                who: "local".into(),
                action: "store migrate".into(),
                stage: String::new(),
                targets: vec![from.to_string()],
                result: "ok".into(),
            },
        )?;
        Ok(Ok(tables))
    });
    let tables = match copied.map_err(|e| Error::database(to, e))? {
        Ok(tables) => tables,
        Err(held) => {
            return Err(Error::Invalid(format!(
                "{to} holds a fleet already ({held}): migrate never overwrites one\nhint: migrate into a new, empty database"
            )));
        }
    };
    Ok(Migrated { tables, seal_key })
}
