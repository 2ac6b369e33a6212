//! Agents' certificates: each host has one current certificate, recorded by serial when
//! it is issued (`Join`, a renewal over the session). A session is accepted only from
//! that certificate: a rejoin (`fleet-agent join --rejoin`) or a renewal supersedes the
//! previous one, `fleet-controller host remove` revokes the host's. A running
//! controller also closes open sessions whose certificate stopped being current
//! (`sweep`).
//!
//! Certificates issued before serials were recorded are taken as current at their
//! host's first session after the upgrade (there is nothing else to compare them to).

use crate::params;
use crate::store::{Db, DbResult, OptionalExtension};

/// What the database says of a host's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Never joined or connected.
    Unknown,
    /// Joined (or connected) before serials were recorded.
    Unrecorded,
    Current {
        serial: String,
    },
    Removed {
        at_ms: u64,
    },
}

pub fn standing(conn: &dyn Db, host: &str) -> DbResult<Standing> {
    let row = conn
        .query_row(
            "SELECT cert_serial, removed_at FROM hosts WHERE name = ?1",
            params![host],
            |row| {
                Ok((
                    row.get::<_, Option<String>>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                ))
            },
        )
        .optional()?;
    Ok(match row {
        None => Standing::Unknown,
        Some((_, Some(at))) => Standing::Removed { at_ms: at as u64 },
        Some((None, None)) => Standing::Unrecorded,
        Some((Some(serial), None)) => Standing::Current { serial },
    })
}

/// Records `serial` as the host's only valid certificate (a join, rejoin or renewal);
/// a removed host is back.
pub fn record_certificate(
    conn: &dyn Db,
    host: &str,
    serial: &str,
    expires_ms: u64,
    now_ms: u64,
) -> DbResult<()> {
    conn.execute(
        "INSERT INTO hosts (name, first_seen, last_seen, cert_serial, cert_expires_at)
         VALUES (?1, ?2, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET
            cert_serial = excluded.cert_serial,
            cert_expires_at = excluded.cert_expires_at,
            removed_at = NULL",
        params![host, now_ms as i64, serial, expires_ms as i64],
    )?;
    Ok(())
}

/// `host remove`: the host's certificate stops working. False if no such host.
pub fn remove(conn: &dyn Db, host: &str, now_ms: u64) -> DbResult<bool> {
    let changed = conn.execute(
        "UPDATE hosts SET removed_at = ?2, cert_serial = NULL
         WHERE name = ?1 AND removed_at IS NULL",
        params![host, now_ms as i64],
    )?;
    Ok(changed == 1)
}

/// A host as `host list` shows it.
#[derive(Clone, Debug)]
pub struct HostRecord {
    pub name: String,
    pub serial: Option<String>,
    pub expires_ms: Option<u64>,
    pub last_seen_ms: u64,
    pub agent_version: String,
    pub removed_ms: Option<u64>,
}

pub fn list(conn: &dyn Db) -> DbResult<Vec<HostRecord>> {
    conn.query_map(
        "SELECT name, cert_serial, cert_expires_at, last_seen, agent_version, removed_at
         FROM hosts ORDER BY name",
        params![],
        |row| {
            Ok(HostRecord {
                name: row.get(0)?,
                serial: row.get(1)?,
                expires_ms: row.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                last_seen_ms: row.get::<_, i64>(3)? as u64,
                agent_version: row.get(4)?,
                removed_ms: row.get::<_, Option<i64>>(5)?.map(|v| v as u64),
            })
        },
    )
}

/// Every host's current serial (`None`: removed), for the sweep over open sessions.
pub fn current_serials(
    conn: &dyn Db,
) -> DbResult<std::collections::HashMap<String, Option<String>>> {
    let rows = conn.query_map(
        "SELECT name, cert_serial, removed_at FROM hosts WHERE cert_serial IS NOT NULL OR removed_at IS NOT NULL",
        params![],
        |row| {
        let serial: Option<String> = row.get(1)?;
        let removed: Option<i64> = row.get(2)?;
        Ok((
            row.get::<_, String>(0)?,
            serial.filter(|_| removed.is_none()),
        ))
    })?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A case of the store's shared suite (`store::suite`), run on both backends.
    pub(crate) fn a_certificate_is_current_until_superseded_or_removed(conn: &dyn Db) {
        assert_eq!(standing(conn, "web-1").unwrap(), Standing::Unknown);
        record_certificate(conn, "web-1", "aa", 10, 1).unwrap();
        let current = |s: &str| Standing::Current { serial: s.into() };
        assert_eq!(standing(conn, "web-1").unwrap(), current("aa"));
        record_certificate(conn, "web-1", "bb", 10, 2).unwrap();
        assert_eq!(standing(conn, "web-1").unwrap(), current("bb"));
        assert!(remove(conn, "web-1", 3).unwrap());
        assert!(!remove(conn, "web-1", 4).unwrap(), "removed once");
        assert_eq!(
            standing(conn, "web-1").unwrap(),
            Standing::Removed { at_ms: 3 }
        );
        assert_eq!(current_serials(conn).unwrap()["web-1"], None);
        record_certificate(conn, "web-1", "cc", 10, 5).unwrap();
        assert_eq!(standing(conn, "web-1").unwrap(), current("cc"));
        let listed = list(conn).unwrap();
        assert_eq!(listed[0].serial.as_deref(), Some("cc"));
        assert_eq!(listed[0].removed_ms, None);
    }
}
