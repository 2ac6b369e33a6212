//! The SQLite backend (`controller.db` in the data directory, WAL mode): one controller's
//! embedded default, so a first controller needs no database server. Its schema
//! migrations, opening owner-only, and `Db` over a rusqlite connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::sql::{Backend, Db, DbError, Result, Row, Value};
use crate::error::Error;

/// Schema migrations; entry `n` takes the database from `user_version` n to n + 1.
/// Never edit a released entry: add one. `postgres::SCHEMA` is the same schema in
/// PostgreSQL's words; a change here is made there too (the shared suite runs on both).
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        agent_version TEXT NOT NULL DEFAULT '',
        boot_id TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE stages (
        name TEXT PRIMARY KEY,
        hosts TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        stage TEXT NOT NULL DEFAULT '',
        targets TEXT NOT NULL DEFAULT '[]',
        result TEXT NOT NULL
    );
    -- The audit log is append-only, whoever holds the database.
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        sha256 BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        last_used INTEGER
    );
    CREATE TABLE join_tokens (
        sha256 BLOB PRIMARY KEY,
        host TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
    );
    ",
    // 2: API tokens get a name, a role, an expiry and revocation.
    "
    ALTER TABLE api_tokens ADD COLUMN name TEXT;
    ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
    ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
    ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;
    UPDATE api_tokens SET name = 'token-' || id;
    CREATE UNIQUE INDEX api_tokens_by_name ON api_tokens (name);
    ",
    // 3: each host's current certificate (`hosts`), and removed hosts.
    "
    ALTER TABLE hosts ADD COLUMN cert_serial TEXT;
    ALTER TABLE hosts ADD COLUMN cert_expires_at INTEGER;
    ALTER TABLE hosts ADD COLUMN removed_at INTEGER;
    ",
    // 4: alerts: incidents open now, and deliveries (pending ones survive a restart).
    "
    CREATE TABLE alert_incidents (
        key TEXT PRIMARY KEY,
        opened_at INTEGER NOT NULL
    );
    CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL,
        target TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        done_at INTEGER,
        last_error TEXT
    );
    CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE done_at IS NULL;
    ",
    // 5: deploys with their ref, commit and each host's outcome and step timings
    // (`deploys`), beside their line in the audit log.
    "
    CREATE TABLE deploys (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        who TEXT NOT NULL,
        stage TEXT NOT NULL,
        action TEXT NOT NULL,
        release TEXT NOT NULL DEFAULT '',
        git_ref TEXT NOT NULL DEFAULT '',
        git_commit TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL,
        rolled_back INTEGER NOT NULL DEFAULT 0,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        outcomes TEXT NOT NULL DEFAULT '[]'
    );
    ",
    // 6: deploys the controller runs (`deployer`): each run with what it needs to
    // resume, its events as they happen, the one lock per stage, and fencing numbers
    // (never reused: AUTOINCREMENT).
    "
    CREATE TABLE deploy_runs (
        id INTEGER PRIMARY KEY,
        stage TEXT NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        who TEXT NOT NULL,
        token_name TEXT NOT NULL,
        machine TEXT NOT NULL,
        git_ref TEXT NOT NULL DEFAULT '',
        git_commit TEXT NOT NULL DEFAULT '',
        release TEXT NOT NULL DEFAULT '',
        fence INTEGER NOT NULL DEFAULT 0,
        request TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        report TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX deploy_runs_by_stage ON deploy_runs (stage, id);
    CREATE TABLE deploy_events (
        run_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE stage_locks (
        stage TEXT PRIMARY KEY,
        run_id INTEGER NOT NULL,
        fence INTEGER NOT NULL,
        token_name TEXT NOT NULL,
        machine TEXT NOT NULL,
        git_ref TEXT NOT NULL,
        taken_at INTEGER NOT NULL
    );
    CREATE TABLE fences (
        fence INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL
    );
    ",
    // 7: the CA kept in the store (PostgreSQL's controllers share it; a SQLite
    // controller keeps its CA in files and leaves this empty).
    "
    CREATE TABLE ca (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cert_pem TEXT NOT NULL,
        sealed_key BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    ",
    // 8: controllers sharing a store (each with a lease it renews) and which one holds
    // each host's session (the epoch grows at every move).
    "
    CREATE TABLE controllers (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        lease_until INTEGER NOT NULL
    );
    CREATE TABLE host_sessions (
        host TEXT PRIMARY KEY,
        controller TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        since INTEGER NOT NULL
    );
    ",
    // 9: which controller runs each deploy (another takes it over when that one's lease
    // ends), and the archives of running deploys, for that one to ship.
    "
    ALTER TABLE deploy_runs ADD COLUMN controller TEXT NOT NULL DEFAULT '';
    CREATE TABLE deploy_archives (
        run_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        chunk BLOB NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    ",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// SQLite waits this long for a lock another process holds (`token create` while the
/// controller runs) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection: every statement the record functions use.
const STATEMENT_CACHE: usize = 128;

/// A SQLite connection as a `Db`.
pub struct SqliteDb {
    conn: Connection,
    path: PathBuf,
}

/// Opens (creating if needed) and migrates the database.
pub fn open(path: &Path) -> Result<SqliteDb, Error> {
    let context = |source: rusqlite::Error| Error::database(path.display(), convert(source));
    // Owner-only before SQLite opens it: SQLite gives its -wal and -shm files the
    // database file's mode.
    private_file(path).map_err(|source| Error::io(path, source))?;
    let mut conn = Connection::open(path).map_err(context)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(context)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // WAL: readers never wait for the writer, and `token create` can write while the
    // controller runs. NORMAL is durable across application crashes in WAL mode.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(context)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(context)?;
    migrate(&mut conn, path)?;
    Ok(SqliteDb {
        conn,
        path: path.to_owned(),
    })
}

/// Creates `path` with mode 0600 if it is missing, and sets 0600 on it (and on the
/// -wal and -shm files beside it) if it exists.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Opens the database for reading only, as `fleet-controller audit` does while the
/// controller runs: no migration (that is the controller's job) and no write, so it
/// never takes the writer's lock. In WAL mode a reader sees the last committed writes
/// and never waits for the writer.
pub fn open_read_only(path: &Path) -> Result<SqliteDb, Error> {
    let context = |source: rusqlite::Error| Error::database(path.display(), convert(source));
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "no controller database at {}\nhint: pass --data with the controller's data directory",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(context)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(context)?;
    schema_version(&conn, path)?;
    Ok(SqliteDb {
        conn,
        path: path.to_owned(),
    })
}

/// The database's schema version; an error if a newer controller wrote it.
fn schema_version(conn: &Connection, path: &Path) -> Result<i64, Error> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| Error::database(path.display(), convert(source)))?;
    if found > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            store: path.display().to_string(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Brings the schema to the latest version, one transaction per step.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let context = |source: rusqlite::Error| Error::database(path.display(), convert(source));
    let found = schema_version(conn, path)?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(context)?;
        tx.execute_batch(migration).map_err(context)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(context)?;
        tx.commit().map_err(context)?;
    }
    Ok(())
}

impl SqliteDb {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version found in the file (tests set it to check refusals).
    pub fn set_schema_version_for_test(&self, version: i64) -> Result<()> {
        self.conn
            .pragma_update(None, "user_version", version)
            .map_err(convert)
    }

    /// Runs the migrations again (a no-op when current; refused when newer).
    pub fn migrate_again(&mut self) -> Result<(), Error> {
        migrate(&mut self.conn, &self.path)
    }
}

impl Db for SqliteDb {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let mut statement = self.conn.prepare_cached(sql).map_err(convert)?;
        let changed = statement
            .execute(rusqlite::params_from_iter(params.iter().map(to_sql)))
            .map_err(convert)?;
        Ok(changed as u64)
    }

    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut statement = self.conn.prepare_cached(sql).map_err(convert)?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params.iter().map(to_sql)))
            .map_err(convert)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(convert)? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(from_sql(row.get_ref(index).map_err(convert)?)?);
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn execute_batch(&self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(convert)
    }

    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
}

fn to_sql(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(v) => rusqlite::types::Value::Integer(*v),
        Value::Text(v) => rusqlite::types::Value::Text(v.clone()),
        Value::Bytes(v) => rusqlite::types::Value::Blob(v.clone()),
    }
}

fn from_sql(value: ValueRef<'_>) -> Result<Value> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Text(v) => {
            Value::Text(String::from_utf8(v.to_vec()).map_err(|e| DbError::Other(e.to_string()))?)
        }
        ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
        // No column the controller writes is a float; read one as what it is not.
        ValueRef::Real(v) => return Err(DbError::Other(format!("unexpected real value {v}"))),
    })
}

/// rusqlite's error, sorted into `DbError`.
pub fn convert(error: rusqlite::Error) -> DbError {
    match &error {
        rusqlite::Error::QueryReturnedNoRows => DbError::NoRows,
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            rusqlite::ErrorCode::ConstraintViolation => DbError::Constraint(error.to_string()),
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                DbError::Unavailable(error.to_string())
            }
            _ => DbError::Other(error.to_string()),
        },
        _ => DbError::Other(error.to_string()),
    }
}
