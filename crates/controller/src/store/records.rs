//! The controller's own records, written once against `Db`: one-time join tokens, the
//! hosts it knows, stages, the append-only audit log, and the CA shared through the
//! store. Tokens, certificates, deploys and alerts have their own modules.

use std::time::Duration;

use crate::error::Refusal;
use crate::params;
use crate::pki;
use crate::store::{Db, DbResult, OptionalExtension};

/// Creates a one-time join token for `host`; returns it and when it expires.
pub fn create_join_token(
    conn: &dyn Db,
    host: &str,
    ttl: Duration,
    now_ms: u64,
) -> DbResult<(String, u64)> {
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
    conn: &dyn Db,
    hash: &[u8],
    host: &str,
    now_ms: u64,
) -> DbResult<Result<(), Refusal>> {
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
pub fn claim_join_token(conn: &dyn Db, hash: &[u8], host: &str, now_ms: u64) -> DbResult<bool> {
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

pub fn known_hosts(conn: &dyn Db) -> DbResult<Vec<KnownHost>> {
    conn.query_map(
        "SELECT name, last_seen, agent_version FROM hosts WHERE removed_at IS NULL",
        params![],
        |row| {
            Ok(KnownHost {
                name: row.get(0)?,
                last_seen_ms: row.get::<_, i64>(1)? as u64,
                agent_version: row.get(2)?,
            })
        },
    )
}

/// A session opened: the host exists from now on, with its agent's version and boot.
pub fn host_connected(
    conn: &dyn Db,
    name: &str,
    agent_version: &str,
    boot_id: &str,
    now_ms: u64,
) -> DbResult<()> {
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
pub fn host_disconnected(conn: &dyn Db, name: &str, last_seen_ms: u64) -> DbResult<()> {
    conn.execute(
        "UPDATE hosts SET last_seen = ?1 WHERE name = ?2",
        params![last_seen_ms as i64, name],
    )?;
    Ok(())
}

pub fn save_stage(conn: &dyn Db, name: &str, hosts: &[String], now_ms: u64) -> DbResult<()> {
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

pub fn append_audit(conn: &dyn Db, entry: &AuditEntry) -> DbResult<()> {
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

/// Deploys in the audit log by stage, action and outcome (`ok`, `failed`,
/// `rolled_back`, as `DeployCounts::outcome` names them), for `/metrics`.
pub fn deploy_counts(conn: &dyn Db) -> DbResult<Vec<(String, String, String, u64)>> {
    conn.query_map(
        "SELECT stage, substr(action, 8),
                CASE WHEN result = 'ok' THEN 'ok'
                     WHEN result LIKE '%rolled back%' THEN 'rolled_back'
                     ELSE 'failed' END AS outcome,
                count(*)
         FROM audit_log WHERE action LIKE 'deploy %'
         GROUP BY 1, 2, 3",
        params![],
        |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get::<_, i64>(3)? as u64,
            ))
        },
    )
}

/// The last `limit` entries of the audit log (all of them for `None`), oldest first so
/// the newest ends up last, next to the prompt. Ordered by `id`, the order of appending:
/// two entries in the same millisecond keep their order.
pub fn audit_entries(conn: &dyn Db, limit: Option<u32>) -> DbResult<Vec<AuditEntry>> {
    let limit = limit.map_or(conn.no_limit(), i64::from);
    conn.query_map(
        "SELECT at, who, action, stage, targets, result FROM
            (SELECT * FROM audit_log ORDER BY id DESC LIMIT ?1) AS newest
         ORDER BY id",
        params![limit],
        |row| {
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
        },
    )
}

/// The CA as the store keeps it (PostgreSQL's controllers share one): its certificate
/// and its key sealed with the controllers' seal key (`pki::seal`).
pub fn stored_ca(conn: &dyn Db) -> DbResult<Option<(String, Vec<u8>)>> {
    conn.query_row(
        "SELECT cert_pem, sealed_key FROM ca WHERE id = 1",
        params![],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
}

/// Stores the CA unless one is there already; false when another controller stored
/// one first (then that one is the fleet's).
pub fn store_ca(conn: &dyn Db, cert_pem: &str, sealed_key: &[u8], now_ms: u64) -> DbResult<bool> {
    let inserted = conn.execute(
        "INSERT INTO ca (id, cert_pem, sealed_key, created_at) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO NOTHING",
        params![cert_pem, sealed_key, now_ms as i64],
    )?;
    Ok(inserted == 1)
}

/// A controller of the store, alive while its lease runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub url: String,
    pub started_at_ms: u64,
}

/// Rows of controllers whose lease ended this long ago are removed (a controller that
/// died keeps its row a while, for whoever reads the table).
const DEAD_MEMBER_KEPT_MS: u64 = 3_600_000;

/// Renews controller `id`'s lease until `until_ms` (joining the store the first time)
/// and returns the live members, oldest first.
pub fn renew_lease(
    conn: &dyn Db,
    me: &Member,
    now_ms: u64,
    until_ms: u64,
) -> DbResult<Vec<Member>> {
    conn.execute(
        "INSERT INTO controllers (id, url, started_at, lease_until) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET url = excluded.url, lease_until = excluded.lease_until",
        params![me.id, me.url, me.started_at_ms as i64, until_ms as i64],
    )?;
    conn.execute(
        "DELETE FROM controllers WHERE lease_until < ?1",
        params![now_ms.saturating_sub(DEAD_MEMBER_KEPT_MS) as i64],
    )?;
    conn.query_map(
        "SELECT id, url, started_at FROM controllers WHERE lease_until > ?1
         ORDER BY started_at, id",
        params![now_ms as i64],
        |row| {
            Ok(Member {
                id: row.get(0)?,
                url: row.get(1)?,
                started_at_ms: row.get::<_, i64>(2)? as u64,
            })
        },
    )
}

/// A controller stopping leaves at once (its lease would end by itself).
pub fn leave(conn: &dyn Db, id: &str) -> DbResult<()> {
    conn.execute("DELETE FROM controllers WHERE id = ?1", params![id])?;
    Ok(())
}

/// Controller `controller` now holds `host`'s session: the row moves to it with the
/// next epoch, returned.
pub fn hold_host(conn: &dyn Db, host: &str, controller: &str, now_ms: u64) -> DbResult<u64> {
    conn.query_row(
        "INSERT INTO host_sessions (host, controller, epoch, since) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT (host) DO UPDATE SET controller = excluded.controller,
             epoch = host_sessions.epoch + 1, since = excluded.since
         RETURNING epoch",
        params![host, controller, now_ms as i64],
        |row| row.get::<_, i64>(0),
    )
    .map(|epoch| epoch as u64)
}

/// `host`'s session ended here: the row goes, unless the host moved to another
/// controller since (a late disconnect never takes the new holder's row).
pub fn release_host(conn: &dyn Db, host: &str, controller: &str) -> DbResult<()> {
    conn.execute(
        "DELETE FROM host_sessions WHERE host = ?1 AND controller = ?2",
        params![host, controller],
    )?;
    Ok(())
}

/// Which controller holds each host's session, by the store.
pub fn holders(conn: &dyn Db) -> DbResult<Vec<(String, String, u64)>> {
    conn.query_map(
        "SELECT host, controller, epoch FROM host_sessions ORDER BY host",
        params![],
        |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64)),
    )
}
