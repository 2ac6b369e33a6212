//! The deployer's tables: runs (what each needs to resume: the request, the release
//! and commit once known, the fencing number), their events in order, the one lock per
//! stage and the fencing numbers. Plain functions on a connection, called through the
//! store's thread.

use crate::params;
use crate::store::{Db, DbError, DbResult, OptionalExtension};
use serde::Serialize;

/// A run about to start: who asked for what.
pub struct NewRun<'a> {
    pub stage: &'a str,
    pub action: &'a str,
    pub who: &'a str,
    pub token_name: &'a str,
    pub machine: &'a str,
    pub git_ref: &'a str,
    pub commit: &'a str,
    /// The submission as JSON (`Request`), what a resumed run starts again from.
    pub request: &'a str,
    pub now_ms: u64,
    /// The controller running it (`peers`' id).
    pub controller: &'a str,
}

/// Who holds a stage's lock.
#[derive(Debug, PartialEq, Eq)]
pub struct Holder {
    pub run_id: u64,
    pub token_name: String,
    pub machine: String,
    pub git_ref: String,
}

/// Takes `run.stage`'s lock and records the run, in one transaction: its id and
/// fencing number, or who holds the lock.
///
/// Two controllers taking the same free stage at once (PostgreSQL reads committed
/// rows, so both may find it free): the second insert breaks the stage's key, its
/// transaction rolls back, and it is told who holds the lock.
pub fn begin(conn: &dyn Db, run: &NewRun<'_>) -> DbResult<Result<(u64, u64), Holder>> {
    match begin_once(conn, run) {
        Err(DbError::Constraint(error)) => match holder(conn, run.stage)? {
            Some(holder) => Ok(Err(holder)),
            None => Err(DbError::Constraint(error)),
        },
        other => other,
    }
}

/// Who holds `stage`'s lock, if anyone.
pub fn holder(conn: &dyn Db, stage: &str) -> DbResult<Option<Holder>> {
    conn.query_row(
        "SELECT run_id, token_name, machine, git_ref FROM stage_locks WHERE stage = ?1",
        params![stage],
        |row| {
            Ok(Holder {
                run_id: row.get::<_, i64>(0)? as u64,
                token_name: row.get(1)?,
                machine: row.get(2)?,
                git_ref: row.get(3)?,
            })
        },
    )
    .optional()
}

fn begin_once(conn: &dyn Db, run: &NewRun<'_>) -> DbResult<Result<(u64, u64), Holder>> {
    conn.transaction(|tx| {
        if let Some(holder) = holder(tx, run.stage)? {
            return Ok(Err(holder));
        }
        let id = tx.query_row(
            "INSERT INTO deploy_runs (stage, action, state, who, token_name, machine, git_ref,
                                      git_commit, request, created_at, controller)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
            params![
                run.stage,
                run.action,
                run.who,
                run.token_name,
                run.machine,
                run.git_ref,
                run.commit,
                run.request,
                run.now_ms as i64,
                run.controller
            ],
            |row| row.get::<_, i64>(0),
        )? as u64;
        let fence = new_fence(tx, id)?;
        tx.execute(
            "INSERT INTO stage_locks (stage, run_id, fence, token_name, machine, git_ref, taken_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run.stage,
                id as i64,
                fence as i64,
                run.token_name,
                run.machine,
                run.git_ref,
                run.now_ms as i64
            ],
        )?;
        Ok(Ok((id, fence)))
    })
}

/// A new fencing number for run `id`, written on the run and its stage lock.
fn new_fence(conn: &dyn Db, id: u64) -> DbResult<u64> {
    let fence = conn.query_row(
        "INSERT INTO fences (run_id) VALUES (?1) RETURNING fence",
        params![id as i64],
        |row| row.get::<_, i64>(0),
    )? as u64;
    conn.execute(
        "UPDATE deploy_runs SET fence = ?1 WHERE id = ?2",
        params![fence as i64, id as i64],
    )?;
    conn.execute(
        "UPDATE stage_locks SET fence = ?1 WHERE run_id = ?2",
        params![fence as i64, id as i64],
    )?;
    Ok(fence)
}

/// A run cut short by a controller restart, as it is taken up again.
pub struct Unfinished {
    pub id: u64,
    pub stage: String,
    pub request: String,
    pub release: String,
    pub commit: String,
    pub fence: u64,
    /// Its cancel was asked for before the controller stopped.
    pub cancelling: bool,
}

/// Every run still `running` or `cancelling` (the controller stopped during it), each given a new
/// fencing number (any host lock of its earlier attempt is then taken over at once,
/// and that attempt, were it somehow alive, can no longer change a host).
pub fn resume_all(conn: &dyn Db) -> DbResult<Vec<Unfinished>> {
    resume_where(conn, "", None)
}

/// Run `id`, still unfinished and now run by `controller`, taken up again as
/// `resume_all` takes each (another controller's, whose lease ended).
pub fn resume_one(conn: &dyn Db, id: u64, controller: &str) -> DbResult<Option<Unfinished>> {
    Ok(resume_where(conn, " AND id = ?1", Some((id, controller)))?.pop())
}

fn resume_where(
    conn: &dyn Db,
    filter: &str,
    one: Option<(u64, &str)>,
) -> DbResult<Vec<Unfinished>> {
    let sql = format!(
        "SELECT id, stage, request, release, git_commit, state = 'cancelling' FROM deploy_runs
         WHERE state IN ('running', 'cancelling'){filter} ORDER BY id"
    );
    let selected: Vec<crate::store::Value> = one
        .map(|(id, _)| vec![crate::store::Value::Int(id as i64)])
        .unwrap_or_default();
    conn.transaction(|tx| {
        if let Some((id, controller)) = one {
            tx.execute(
                "UPDATE deploy_runs SET controller = ?1 WHERE id = ?2",
                params![controller, id as i64],
            )?;
        }
        let mut runs = tx.query_map(&sql, &selected, |row| {
            Ok(Unfinished {
                id: row.get::<_, i64>(0)? as u64,
                stage: row.get(1)?,
                request: row.get(2)?,
                release: row.get(3)?,
                commit: row.get(4)?,
                fence: 0,
                cancelling: row.get(5)?,
            })
        })?;
        for run in &mut runs {
            run.fence = new_fence(tx, run.id)?;
            tx.execute(
                "UPDATE deploy_runs SET attempts = attempts + 1 WHERE id = ?1",
                params![run.id as i64],
            )?;
        }
        Ok(runs)
    })
}

/// The stage's unfinished run, if any.
pub fn running(conn: &dyn Db, stage: &str) -> DbResult<Option<u64>> {
    conn.query_row(
        "SELECT id FROM deploy_runs WHERE stage = ?1 AND state IN ('running', 'cancelling')
         ORDER BY id DESC LIMIT 1",
        params![stage],
        |row| row.get::<_, i64>(0),
    )
    .optional()
    .map(|id| id.map(|id| id as u64))
}

/// Runs `controller` runs whose cancel was asked for (through another controller).
pub fn cancelling(conn: &dyn Db, controller: &str) -> DbResult<Vec<u64>> {
    conn.query_map(
        "SELECT id FROM deploy_runs WHERE state = 'cancelling' AND controller = ?1",
        params![controller],
        |row| Ok(row.get::<_, i64>(0)? as u64),
    )
}

/// Unfinished runs with the controller running each.
pub fn unfinished(conn: &dyn Db) -> DbResult<Vec<(u64, String)>> {
    conn.query_map(
        "SELECT id, controller FROM deploy_runs WHERE state IN ('running', 'cancelling')
         ORDER BY id",
        params![],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)),
    )
}

/// Makes `to` the controller of run `id` if `from` still is: true for the one
/// controller whose claim won.
pub fn claim(conn: &dyn Db, id: u64, from: &str, to: &str) -> DbResult<bool> {
    let changed = conn.execute(
        "UPDATE deploy_runs SET controller = ?1
         WHERE id = ?2 AND controller = ?3 AND state IN ('running', 'cancelling')",
        params![to, id as i64, from],
    )?;
    Ok(changed == 1)
}

/// One chunk of run `id`'s archive, kept in a shared store for whoever takes it over.
pub fn put_archive_chunk(conn: &dyn Db, id: u64, seq: u64, chunk: &[u8]) -> DbResult<()> {
    conn.execute(
        "INSERT INTO deploy_archives (run_id, seq, chunk) VALUES (?1, ?2, ?3)
         ON CONFLICT (run_id, seq) DO UPDATE SET chunk = excluded.chunk",
        params![id as i64, seq as i64, chunk],
    )?;
    Ok(())
}

/// Chunk `seq` of run `id`'s archive, if kept.
pub fn archive_chunk(conn: &dyn Db, id: u64, seq: u64) -> DbResult<Option<Vec<u8>>> {
    conn.query_row(
        "SELECT chunk FROM deploy_archives WHERE run_id = ?1 AND seq = ?2",
        params![id as i64, seq as i64],
        |row| row.get(0),
    )
    .optional()
}

/// Run `id` ended: its kept archive goes.
pub fn drop_archive(conn: &dyn Db, id: u64) -> DbResult<()> {
    conn.execute(
        "DELETE FROM deploy_archives WHERE run_id = ?1",
        params![id as i64],
    )?;
    Ok(())
}

/// A cancel asked for: kept so a controller that stops before the run ends cancels
/// it again when it takes it up.
pub fn mark_cancelling(conn: &dyn Db, id: u64) -> DbResult<()> {
    conn.execute(
        "UPDATE deploy_runs SET state = 'cancelling' WHERE id = ?1 AND state = 'running'",
        params![id as i64],
    )?;
    Ok(())
}

/// The release and commit an update settled on (a resumed run ships the same).
pub fn set_release(conn: &dyn Db, id: u64, release: &str, commit: &str) -> DbResult<()> {
    conn.execute(
        "UPDATE deploy_runs SET release = ?1, git_commit = ?2 WHERE id = ?3",
        params![release, commit, id as i64],
    )?;
    Ok(())
}

pub fn append_event(conn: &dyn Db, id: u64, seq: u64, at_ms: u64, event: &str) -> DbResult<()> {
    conn.execute(
        "INSERT INTO deploy_events (run_id, seq, at, event) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        params![id as i64, seq as i64, at_ms as i64, event],
    )?;
    Ok(())
}

/// Ends run `id` as `state` and releases its stage lock.
pub fn finish(
    conn: &dyn Db,
    id: u64,
    state: &str,
    report: Option<&str>,
    error: Option<&str>,
    now_ms: u64,
) -> DbResult<()> {
    conn.transaction(|tx| {
        tx.execute(
            "UPDATE deploy_runs SET state = ?1, report = ?2, error = ?3, finished_at = ?4 WHERE id = ?5",
            params![state, report, error, now_ms as i64, id as i64],
        )?;
        tx.execute(
            "DELETE FROM stage_locks WHERE run_id = ?1",
            params![id as i64],
        )?;
        Ok(())
    })
}

/// A run's events from `after` on, in order.
pub fn events(conn: &dyn Db, id: u64, after: u64) -> DbResult<Vec<(u64, String)>> {
    conn.query_map(
        "SELECT seq, event FROM deploy_events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
        params![id as i64, after as i64],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)),
    )
}

/// One run as history shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: u64,
    pub stage: String,
    pub action: String,
    pub state: String,
    pub who: String,
    pub token_name: String,
    pub machine: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    pub release: String,
    pub created_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub attempts: u32,
    pub error: Option<String>,
    /// Each host's outcome, from the report.
    pub hosts: serde_json::Value,
}

/// Runs newest first, of `stage` when given; `id` alone when given.
pub fn history(
    conn: &dyn Db,
    stage: Option<&str>,
    id: Option<u64>,
    limit: u32,
) -> DbResult<Vec<RunRecord>> {
    conn.query_map(
        "SELECT id, stage, action, state, who, token_name, machine, git_ref, git_commit, release,
                created_at, finished_at, attempts, error, report
         FROM deploy_runs WHERE (CAST(?1 AS TEXT) IS NULL OR stage = ?1) AND (CAST(?2 AS BIGINT) IS NULL OR id = ?2)
         ORDER BY id DESC LIMIT ?3",
        params![stage, id.map(|i| i as i64), limit],
        |row| {
        let created = row.get::<_, i64>(10)? as u64;
        let finished = row.get::<_, Option<i64>>(11)?.map(|f| f as u64);
        let report: Option<String> = row.get(14)?;
        let hosts = (report.as_deref())
            .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
            .map(|r| r["hosts"].clone())
            .unwrap_or(serde_json::Value::Array(Vec::new()));
        Ok(RunRecord {
            id: row.get::<_, i64>(0)? as u64,
            stage: row.get(1)?,
            action: row.get(2)?,
            state: row.get(3)?,
            who: row.get(4)?,
            token_name: row.get(5)?,
            machine: row.get(6)?,
            git_ref: row.get(7)?,
            commit: row.get(8)?,
            release: row.get(9)?,
            created_unix_ms: created,
            finished_unix_ms: finished,
            duration_ms: finished.map(|f| f.saturating_sub(created)),
            attempts: row.get(12)?,
            error: row.get(13)?,
            hosts,
        })
    })
}

/// The report of a finished run, or its error.
pub fn outcome(conn: &dyn Db, id: u64) -> DbResult<Option<(Option<String>, Option<String>)>> {
    conn.query_row(
        "SELECT report, error FROM deploy_runs
         WHERE id = ?1 AND state NOT IN ('running', 'cancelling')",
        params![id as i64],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
}

/// The stage's running deploy, else its latest.
pub fn latest(conn: &dyn Db, stage: &str) -> DbResult<Option<u64>> {
    conn.query_row(
        "SELECT id FROM deploy_runs WHERE stage = ?1
         ORDER BY state IN ('running', 'cancelling') DESC, id DESC LIMIT 1",
        params![stage],
        |row| row.get::<_, i64>(0),
    )
    .optional()
    .map(|id| id.map(|id| id as u64))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn run<'a>(stage: &'a str, token: &'a str) -> NewRun<'a> {
        NewRun {
            stage,
            action: "update",
            who: "token:ci (me@laptop)",
            token_name: token,
            machine: "laptop",
            git_ref: "main",
            commit: "abc",
            request: "{}",
            now_ms: 1,
            controller: "c1",
        }
    }

    /// A case of the store's shared suite (`store::suite`), run on both backends.
    pub(crate) fn one_run_per_stage_holds_the_lock_with_a_growing_fence(conn: &dyn Db) {
        let (first, fence) = begin(conn, &run("prod", "ci")).unwrap().unwrap();
        let refused = begin(conn, &run("prod", "other")).unwrap().unwrap_err();
        assert_eq!((refused.run_id, refused.token_name.as_str()), (first, "ci"));
        let (_, staging_fence) = begin(conn, &run("staging", "ci")).unwrap().unwrap();
        assert!(staging_fence > fence);
        append_event(conn, first, 1, 5, "{\"kind\":\"note\"}").unwrap();
        append_event(conn, first, 2, 6, "{\"kind\":\"done\"}").unwrap();
        assert_eq!(
            events(conn, first, 1).unwrap(),
            vec![(2, "{\"kind\":\"done\"}".to_owned())]
        );
        assert_eq!(running(conn, "prod").unwrap(), Some(first));
        assert!(cancelling(conn, "c1").unwrap().is_empty());
        mark_cancelling(conn, first).unwrap();
        // The controller running it finds the cancel asked through another.
        assert_eq!(cancelling(conn, "c1").unwrap(), [first]);
        assert!(cancelling(conn, "c2").unwrap().is_empty());
        // Another controller claims it only while its runner is still the one named.
        assert!(!claim(conn, first, "c2", "c3").unwrap());
        // A restart: both runs come back with new, higher fences; the cancel is kept.
        let resumed = resume_all(conn).unwrap();
        assert_eq!(resumed.len(), 2);
        assert_eq!(
            resumed.iter().map(|r| r.cancelling).collect::<Vec<_>>(),
            vec![true, false]
        );
        assert!(resumed.iter().all(|r| r.fence > staging_fence));
        finish(
            conn,
            first,
            "ok",
            Some("{\"hosts\":[{\"host\":\"a\"}]}"),
            None,
            9,
        )
        .unwrap();
        assert!(
            begin(conn, &run("prod", "other")).unwrap().is_ok(),
            "the lock is free"
        );
        let history = history(conn, Some("prod"), None, 10).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(
            (
                history[1].state.as_str(),
                history[1].duration_ms,
                history[1].attempts
            ),
            ("ok", Some(8), 2)
        );
        assert_eq!(history[1].hosts[0]["host"], "a");
        assert_eq!(latest(conn, "prod").unwrap(), Some(history[0].id));
        assert!(outcome(conn, first).unwrap().is_some());
        assert!(
            outcome(conn, history[0].id).unwrap().is_none(),
            "still running"
        );
    }
}
