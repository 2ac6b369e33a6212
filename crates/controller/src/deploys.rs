//! Deploys as the controller keeps them (`deploys` table): who, stage, action, release,
//! ref and commit, the result, whether it rolled back, and each host's outcome with its
//! step timings, as the CLI's deploy report sends them (`RecordDeploy`). The audit log
//! keeps its own line for each; this is the detail the dashboard's deploys page shows.

use crate::params;
use crate::store::{Db, DbResult};
use serde::Serialize;

/// The most a deploy's host outcomes may hold, as JSON.
pub const MAX_OUTCOMES_BYTES: usize = 256 * 1024;

/// One recorded deploy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Deploy {
    pub id: i64,
    pub at_ms: u64,
    pub who: String,
    pub stage: String,
    pub action: String,
    pub release: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    pub result: String,
    pub rolled_back: bool,
    pub duration_ms: u64,
    /// Each host's outcome: `host`, `result`, `step`, `error`, `release`,
    /// `duration_ms`, `steps` (`step`, `ms`).
    pub hosts: serde_json::Value,
}

/// Appends `deploy` (its `id` is ignored) and returns its id.
pub fn record(conn: &dyn Db, deploy: &Deploy) -> DbResult<i64> {
    conn.query_row(
        "INSERT INTO deploys (at, who, stage, action, release, git_ref, git_commit, result,
                              rolled_back, duration_ms, outcomes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
        params![
            deploy.at_ms as i64,
            deploy.who,
            deploy.stage,
            deploy.action,
            deploy.release,
            deploy.git_ref,
            deploy.commit,
            deploy.result,
            deploy.rolled_back,
            deploy.duration_ms as i64,
            deploy.hosts.to_string(),
        ],
        |row| row.get(0),
    )
}

/// The newest `limit` deploys, newest first; of one stage when `stage` is given.
pub fn recent(conn: &dyn Db, stage: Option<&str>, limit: u32) -> DbResult<Vec<Deploy>> {
    conn.query_map(
        "SELECT id, at, who, stage, action, release, git_ref, git_commit, result,
                rolled_back, duration_ms, outcomes
         FROM deploys WHERE CAST(?1 AS TEXT) IS NULL OR stage = ?1 ORDER BY id DESC LIMIT ?2",
        params![stage, limit],
        |row| {
            let outcomes: String = row.get(11)?;
            Ok(Deploy {
                id: row.get(0)?,
                at_ms: row.get::<_, i64>(1)? as u64,
                who: row.get(2)?,
                stage: row.get(3)?,
                action: row.get(4)?,
                release: row.get(5)?,
                git_ref: row.get(6)?,
                commit: row.get(7)?,
                result: row.get(8)?,
                rolled_back: row.get(9)?,
                duration_ms: row.get::<_, i64>(10)? as u64,
                hosts: serde_json::from_str(&outcomes).unwrap_or(serde_json::Value::Null),
            })
        },
    )
}

/// The release each host is on as far as the recorded deploys tell (the newest deploy
/// that names a release for it), from the last `limit` deploys.
pub fn releases(conn: &dyn Db, limit: u32) -> DbResult<Vec<(String, String)>> {
    let mut seen = std::collections::BTreeMap::new();
    for deploy in recent(conn, None, limit)? {
        let Some(hosts) = deploy.hosts.as_array() else {
            continue;
        };
        for outcome in hosts {
            let (Some(host), Some(release)) = (
                outcome.get("host").and_then(|v| v.as_str()),
                outcome.get("release").and_then(|v| v.as_str()),
            ) else {
                continue;
            };
            seen.entry(host.to_owned())
                .or_insert_with(|| release.to_owned());
        }
    }
    Ok(seen.into_iter().collect())
}

/// The id of the newest deploy, 0 when none.
pub fn last_id(conn: &dyn Db) -> DbResult<i64> {
    conn.query_row(
        "SELECT coalesce(max(id), 0) FROM deploys",
        params![],
        |row| row.get(0),
    )
}

/// Every stage the CLI has named to this controller, with its hosts.
pub fn stages(conn: &dyn Db) -> DbResult<Vec<(String, Vec<String>)>> {
    conn.query_map(
        "SELECT name, hosts FROM stages ORDER BY name",
        params![],
        |row| {
            let hosts: String = row.get(1)?;
            Ok((
                row.get(0)?,
                serde_json::from_str(&hosts).unwrap_or_default(),
            ))
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn deploy(stage: &str, hosts: serde_json::Value) -> Deploy {
        Deploy {
            id: 0,
            at_ms: 1,
            who: "token:ci (me@laptop)".into(),
            stage: stage.into(),
            action: "update".into(),
            release: "r1".into(),
            git_ref: "main".into(),
            commit: "abc1234".into(),
            result: "ok".into(),
            rolled_back: false,
            duration_ms: 1200,
            hosts,
        }
    }

    /// A case of the store's shared suite (`store::suite`), run on both backends.
    pub(crate) fn deploys_come_back_newest_first_and_name_each_hosts_release(conn: &dyn Db) {
        let first =
            serde_json::json!([{"host": "a", "release": "r1"}, {"host": "b", "release": "r1"}]);
        let second = serde_json::json!([{"host": "a", "release": "r2", "steps": [{"step": "upload", "ms": 12}]}]);
        record(conn, &deploy("prod", first)).unwrap();
        let id = record(conn, &deploy("prod", second.clone())).unwrap();
        record(conn, &deploy("staging", serde_json::json!([]))).unwrap();
        let prod = recent(conn, Some("prod"), 10).unwrap();
        assert_eq!(prod.len(), 2);
        assert_eq!((prod[0].id, &prod[0].hosts), (id, &second));
        assert_eq!(recent(conn, None, 1).unwrap()[0].stage, "staging");
        assert_eq!(
            releases(conn, 10).unwrap(),
            vec![("a".into(), "r2".into()), ("b".into(), "r1".into())]
        );
    }
}
