//! The controller's database (`controller.db`, SQLite in WAL mode): hosts, stages, the
//! append-only audit log, hashed API tokens and hashed one-time join tokens. One thread
//! owns the connection; async code sends it jobs. Heartbeats never come here: live
//! state is the registry's, in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::error::{Error, Refusal};
use crate::pki;

/// Schema migrations; entry `n` takes the database from `user_version` n to n + 1.
/// Never edit a released entry: add one.
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
];

/// SQLite waits this long for a lock another process holds (`token create` while the
/// controller runs) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if needed) and migrates the database.
pub fn open(path: &Path) -> Result<Connection, Error> {
    let context = |source| Error::Database {
        path: path.to_owned(),
        source,
    };
    // Owner-only before SQLite opens it: SQLite gives its -wal and -shm files the
    // database file's mode.
    private_file(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut conn = Connection::open(path).map_err(context)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(context)?;
    // WAL: readers never wait for the writer, and `token create` can write while the
    // controller runs. NORMAL is durable across application crashes in WAL mode.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(context)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(context)?;
    migrate(&mut conn, path)?;
    Ok(conn)
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
pub fn open_read_only(path: &Path) -> Result<Connection, Error> {
    let context = |source| Error::Database {
        path: path.to_owned(),
        source,
    };
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
    Ok(conn)
}

/// The database's schema version; an error if a newer controller wrote it.
fn schema_version(conn: &Connection, path: &Path) -> Result<i64, Error> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| Error::Database {
            path: path.to_owned(),
            source,
        })?;
    if found > known {
        return Err(Error::NewerSchema {
            path: path.to_owned(),
            found,
            known,
        });
    }
    Ok(found)
}

/// Brings the schema to the latest version, one transaction per step.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let context = |source| Error::Database {
        path: path.to_owned(),
        source,
    };
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

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle on the database thread. Cheap to clone; the thread ends with the last handle.
#[derive(Clone)]
pub struct Store {
    jobs: std::sync::mpsc::Sender<Job>,
    path: Arc<PathBuf>,
    /// How long each call waited for the database thread and ran (`/metrics`).
    latency: prometheus_client::metrics::histogram::Histogram,
}

impl Store {
    /// Opens the database and starts the thread that owns the connection.
    pub fn start(
        path: &Path,
        latency: prometheus_client::metrics::histogram::Histogram,
    ) -> Result<Store, Error> {
        let mut conn = open(path)?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("controller-db".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|source| Error::io(path, source))?;
        Ok(Store {
            jobs,
            path: Arc::new(path.to_owned()),
            latency,
        })
    }

    /// Runs `job` on the database thread and waits for its answer.
    pub async fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let (latency, queued) = (self.latency.clone(), std::time::Instant::now());
        self.jobs
            .send(Box::new(move |conn| {
                let _ = reply.send(job(conn));
                latency.observe(queued.elapsed().as_secs_f64());
            }))
            .map_err(|_| Error::StoreStopped)?;
        answer
            .await
            .map_err(|_| Error::StoreStopped)?
            .map_err(|source| Error::Database {
                path: self.path.as_ref().clone(),
                source,
            })
    }

    /// Queues a write nobody waits for (host seen, stage recorded); a failure is logged.
    pub fn write(
        &self,
        what: &'static str,
        job: impl FnOnce(&mut Connection) -> rusqlite::Result<()> + Send + 'static,
    ) {
        let path = self.path.clone();
        let (latency, queued) = (self.latency.clone(), std::time::Instant::now());
        let _ = self.jobs.send(Box::new(move |conn| {
            if let Err(error) = job(conn) {
                tracing::error!(%error, db = %path.display(), what, "database write failed");
            }
            latency.observe(queued.elapsed().as_secs_f64());
        }));
    }
}

/// Creates a one-time join token for `host`; returns it and when it expires.
pub fn create_join_token(
    conn: &Connection,
    host: &str,
    ttl: Duration,
    now_ms: u64,
) -> rusqlite::Result<(String, u64)> {
    let token = pki::new_token(pki::JOIN_TOKEN_PREFIX);
    let expires = now_ms.saturating_add(ttl.as_millis() as u64);
    conn.execute(
        "INSERT INTO join_tokens (sha256, host, expires_at) VALUES (?1, ?2, ?3)",
        params![pki::token_hash(&token), host, expires as i64],
    )?;
    Ok((token, expires))
}

/// Checks a join token without using it up: unknown, for another host, expired and
/// already used are each refused with their own message.
pub fn check_join_token(
    conn: &Connection,
    hash: &[u8],
    host: &str,
    now_ms: u64,
) -> rusqlite::Result<Result<(), Refusal>> {
    let row = conn
        .query_row(
            "SELECT host, expires_at, used_at FROM join_tokens WHERE sha256 = ?1",
            params![hash],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                ))
            },
        )
        .optional()?;
    Ok(match row {
        None => Err(Refusal::UnknownJoinToken),
        Some((token_host, _, _)) if token_host != host => Err(Refusal::JoinTokenHost {
            token_host,
            host: host.to_owned(),
        }),
        Some((_, _, Some(used))) => Err(Refusal::JoinTokenUsed(crate::format_unix_ms(used as u64))),
        Some((_, expires, None)) if (expires as u64) <= now_ms => Err(Refusal::JoinTokenExpired(
            crate::format_unix_ms(expires as u64),
        )),
        Some(_) => Ok(()),
    })
}

/// Uses up a join token; false when another `Join` got there first or it just expired.
pub fn claim_join_token(
    conn: &Connection,
    hash: &[u8],
    host: &str,
    now_ms: u64,
) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE join_tokens SET used_at = ?1
         WHERE sha256 = ?2 AND host = ?3 AND used_at IS NULL AND expires_at > ?1",
        params![now_ms as i64, hash, host],
    )?;
    Ok(changed == 1)
}

/// A host the database remembers from earlier runs.
#[derive(Debug, Clone)]
pub struct KnownHost {
    pub name: String,
    pub last_seen_ms: u64,
    pub agent_version: String,
}

pub fn known_hosts(conn: &Connection) -> rusqlite::Result<Vec<KnownHost>> {
    let mut statement =
        conn.prepare("SELECT name, last_seen, agent_version FROM hosts WHERE removed_at IS NULL")?;
    let rows = statement.query_map([], |row| {
        Ok(KnownHost {
            name: row.get(0)?,
            last_seen_ms: row.get::<_, i64>(1)? as u64,
            agent_version: row.get(2)?,
        })
    })?;
    rows.collect()
}

/// A session opened: the host exists from now on, with its agent's version and boot.
pub fn host_connected(
    conn: &Connection,
    name: &str,
    agent_version: &str,
    boot_id: &str,
    now_ms: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO hosts (name, first_seen, last_seen, agent_version, boot_id)
         VALUES (?1, ?2, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET
            last_seen = excluded.last_seen,
            agent_version = excluded.agent_version,
            boot_id = excluded.boot_id",
        params![name, now_ms as i64, agent_version, boot_id],
    )?;
    Ok(())
}

/// A session ended: the last time the host was heard from.
pub fn host_disconnected(conn: &Connection, name: &str, last_seen_ms: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE hosts SET last_seen = ?1 WHERE name = ?2",
        params![last_seen_ms as i64, name],
    )?;
    Ok(())
}

pub fn save_stage(
    conn: &Connection,
    name: &str,
    hosts: &[String],
    now_ms: u64,
) -> rusqlite::Result<()> {
    let hosts = serde_json::to_string(hosts).expect("a list of strings serializes");
    conn.execute(
        "INSERT INTO stages (name, hosts, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET hosts = excluded.hosts, updated_at = excluded.updated_at",
        params![name, hosts, now_ms as i64],
    )?;
    Ok(())
}

/// One line of the audit log.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// `token:<id>` for the CLI, `agent:<host>` for an agent.
    pub who: String,
    pub action: String,
    pub stage: String,
    pub targets: Vec<String>,
    pub result: String,
}

pub fn append_audit(conn: &Connection, entry: &AuditEntry) -> rusqlite::Result<()> {
    let targets = serde_json::to_string(&entry.targets).expect("a list of strings serializes");
    conn.execute(
        "INSERT INTO audit_log (at, who, action, stage, targets, result) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            entry.at_ms as i64,
            entry.who,
            entry.action,
            entry.stage,
            targets,
            entry.result
        ],
    )?;
    Ok(())
}

/// The last `limit` entries of the audit log (all of them for `None`), oldest first so
/// the newest ends up last, next to the prompt. Ordered by `id`, the order of appending:
/// two entries in the same millisecond keep their order.
/// Deploys in the audit log by stage, action and outcome (`ok`, `failed`,
/// `rolled_back`, as `DeployCounts::outcome` names them), for `/metrics`.
pub fn deploy_counts(conn: &Connection) -> rusqlite::Result<Vec<(String, String, String, u64)>> {
    let mut statement = conn.prepare(
        "SELECT stage, substr(action, 8),
                CASE WHEN result = 'ok' THEN 'ok'
                     WHEN result LIKE '%rolled back%' THEN 'rolled_back'
                     ELSE 'failed' END AS outcome,
                count(*)
         FROM audit_log WHERE action LIKE 'deploy %'
         GROUP BY 1, 2, 3",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get::<_, i64>(3)? as u64,
        ))
    })?;
    rows.collect()
}

pub fn audit_entries(conn: &Connection, limit: Option<u32>) -> rusqlite::Result<Vec<AuditEntry>> {
    // SQLite reads a negative LIMIT as no limit.
    let limit = limit.map_or(-1, i64::from);
    let mut statement = conn.prepare(
        "SELECT at, who, action, stage, targets, result FROM
            (SELECT * FROM audit_log ORDER BY id DESC LIMIT ?1)
         ORDER BY id",
    )?;
    let rows = statement.query_map(params![limit], |row| {
        let targets: String = row.get(4)?;
        Ok(AuditEntry {
            at_ms: row.get::<_, i64>(0)? as u64,
            who: row.get(1)?,
            action: row.get(2)?,
            stage: row.get(3)?,
            // Written by `append_audit` as a JSON list; anything else is shown as it is
            // rather than hidden, since this is the audit log.
            targets: serde_json::from_str(&targets).unwrap_or_else(|_| vec![targets]),
            result: row.get(5)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("controller.db")).unwrap();
        (dir, conn)
    }

    #[test]
    fn migrating_twice_is_a_no_op_and_a_newer_schema_is_refused() {
        let (dir, mut conn) = temp_db();
        let path = dir.path().join("controller.db");
        migrate(&mut conn, &path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            migrate(&mut conn, &path),
            Err(Error::NewerSchema { found: 99, .. })
        ));
    }

    #[test]
    fn a_join_token_works_once_for_its_host_until_it_expires() {
        let (_dir, conn) = temp_db();
        let (token, expires) =
            create_join_token(&conn, "web-1", Duration::from_secs(60), 1_000).unwrap();
        assert_eq!(expires, 61_000);
        let hash = pki::token_hash(&token);
        assert!(matches!(
            check_join_token(&conn, &hash, "web-2", 2_000).unwrap(),
            Err(Refusal::JoinTokenHost { .. })
        ));
        assert!(matches!(
            check_join_token(&conn, &hash, "web-1", 61_000).unwrap(),
            Err(Refusal::JoinTokenExpired(_))
        ));
        assert!(
            check_join_token(&conn, &hash, "web-1", 2_000)
                .unwrap()
                .is_ok()
        );
        assert!(claim_join_token(&conn, &hash, "web-1", 2_000).unwrap());
        assert!(!claim_join_token(&conn, &hash, "web-1", 2_001).unwrap());
        assert!(matches!(
            check_join_token(&conn, &hash, "web-1", 3_000).unwrap(),
            Err(Refusal::JoinTokenUsed(_))
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

    #[test]
    fn audit_entries_are_the_newest_ones_with_the_newest_last() {
        let (_dir, conn) = temp_db();
        assert!(audit_entries(&conn, Some(10)).unwrap().is_empty());
        // Two entries in the same millisecond keep the order they were appended in.
        for (at_ms, action) in [(1_000, "first"), (2_000, "second"), (2_000, "third")] {
            append_audit(&conn, &audit_entry(at_ms, action)).unwrap();
        }
        let actions = |limit| -> Vec<String> {
            audit_entries(&conn, limit)
                .unwrap()
                .into_iter()
                .map(|entry| entry.action)
                .collect()
        };
        assert_eq!(actions(None), ["first", "second", "third"]);
        assert_eq!(actions(Some(2)), ["second", "third"]);
        assert_eq!(actions(Some(1)), ["third"]);
        let entry = audit_entries(&conn, Some(1)).unwrap().remove(0);
        assert_eq!(entry.at_ms, 2_000);
        assert_eq!(entry.who, "token:1 (ops@laptop)");
        assert_eq!(entry.stage, "prod");
        assert_eq!(entry.targets, ["release=r1", "web-1"]);
        assert_eq!(entry.result, "ok");
    }

    #[test]
    fn a_read_only_connection_sees_the_writers_commits_and_cannot_write() {
        let (dir, writer) = temp_db();
        let path = dir.path().join("controller.db");
        append_audit(&writer, &audit_entry(1_000, "before")).unwrap();
        // The writer stays open, as the running controller's does; its commits are in
        // the WAL, not yet in the database file.
        let reader = open_read_only(&path).unwrap();
        append_audit(&writer, &audit_entry(2_000, "after")).unwrap();
        let actions: Vec<String> = audit_entries(&reader, None)
            .unwrap()
            .into_iter()
            .map(|entry| entry.action)
            .collect();
        assert_eq!(actions, ["before", "after"]);
        assert!(append_audit(&reader, &audit_entry(3_000, "sneaky")).is_err());
    }

    #[test]
    fn reading_a_missing_database_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        let error = open_read_only(&path).unwrap_err();
        assert!(matches!(error, Error::Invalid(_)), "{error}");
        assert!(error.to_string().contains("hint: pass --data"), "{error}");
        assert!(!path.exists(), "reading created the database");
    }

    #[test]
    fn the_audit_log_is_append_only() {
        let (_dir, conn) = temp_db();
        let entry = AuditEntry {
            at_ms: 1,
            who: "token:1".into(),
            action: "restart".into(),
            stage: "prod".into(),
            targets: vec!["api".into()],
            result: "ok".into(),
        };
        append_audit(&conn, &entry).unwrap();
        assert!(conn.execute("DELETE FROM audit_log", []).is_err());
        assert!(
            conn.execute("UPDATE audit_log SET result = 'x'", [])
                .is_err()
        );
    }

    #[test]
    fn the_database_and_its_wal_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        let conn = open(&path).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if let Ok(meta) = std::fs::metadata(&file) {
                assert_eq!(
                    meta.permissions().mode() & 0o777,
                    0o600,
                    "{}",
                    file.display()
                );
            }
        }
        assert!(crate::config::check_join_ttl(Duration::from_secs(25 * 3600)).is_err());
        assert!(crate::config::check_join_ttl(Duration::from_secs(3600)).is_ok());
    }
}
