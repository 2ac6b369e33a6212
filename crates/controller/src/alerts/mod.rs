//! Alerts: the controller watches what it already holds (every host's session and
//! instances, each recorded deploy) through `rules`, and tells people through the
//! targets of its config file's `[alerts]` (`config`). Each incident fires once and
//! resolves once; open incidents and pending deliveries live in the store, so a
//! restarted controller neither repeats an alert nor loses one (`deliver`). Every
//! alert and every delivery outcome is in the audit log, as `alerts`.

pub mod config;
pub mod deliver;
pub mod rules;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::params;
use crate::store::{Db, DbResult};
use serde_json::Value;

use crate::registry::lock;
use crate::server::Controller;
use crate::store::{self, AuditEntry};
use config::{Alerts, Target};
use rules::{Alert, Instance, Key, Observation, Rules, State};

/// How often the rules look at the registry.
const EVALUATE_EVERY: Duration = Duration::from_secs(1);
/// The delivery worker looks for due deliveries at least this often.
const DELIVER_EVERY: Duration = Duration::from_secs(5);

/// The alerting half of a running controller.
pub struct AlertEngine {
    rules: Mutex<Rules>,
    targets: Vec<Target>,
    wake: tokio::sync::Notify,
}

/// The incidents open when the controller last stopped.
pub fn open_incidents(conn: &dyn Db) -> DbResult<Vec<(Key, u64)>> {
    let rows = conn.query_map(
        "SELECT key, opened_at FROM alert_incidents",
        params![],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
    )?;
    let mut open = Vec::new();
    for (key, at) in rows {
        if let Some(key) = Key::decode(&key) {
            open.push((key, at as u64));
        }
    }
    Ok(open)
}

impl AlertEngine {
    pub fn new(alerts: Alerts, open: Vec<(Key, u64)>, now_ms: u64) -> AlertEngine {
        AlertEngine {
            rules: Mutex::new(Rules::new(alerts.rules, now_ms, open)),
            targets: alerts.targets,
            wake: tokio::sync::Notify::new(),
        }
    }

    /// A deploy was recorded (`RecordDeploy`).
    pub(crate) async fn deploy(
        &self,
        controller: &Controller,
        stage: &str,
        action: &str,
        result: &str,
    ) {
        let alerts =
            lock(&self.rules).deploy(crate::now_unix_ms(), stage, action, result == "ok", result);
        self.raise(controller, alerts).await;
    }

    /// Persists `alerts` (incidents, one delivery per target, audit entries) and wakes
    /// the delivery worker.
    async fn raise(&self, controller: &Controller, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        let targets: Vec<String> = self.targets.iter().map(|t| t.name().to_owned()).collect();
        let written = controller
            .store
            .call(move |conn| {
                conn.transaction(|tx| {
                    for alert in &alerts {
                        persist(tx, alert, &targets)?;
                    }
                    Ok(())
                })
            })
            .await;
        match written {
            Ok(()) => self.wake.notify_one(),
            Err(error) => tracing::error!(%error, "cannot record alerts"),
        }
    }
}

/// One alert into the store: its incident opened or closed, a delivery per target,
/// and an audit entry.
fn persist(conn: &dyn Db, alert: &Alert, targets: &[String]) -> DbResult<()> {
    let key = alert.key.encode();
    match alert.state {
        State::Firing => conn.execute(
            "INSERT INTO alert_incidents (key, opened_at) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET opened_at = excluded.opened_at",
            params![key, alert.at_ms as i64],
        )?,
        State::Resolved => {
            conn.execute("DELETE FROM alert_incidents WHERE key = ?1", params![key])?
        }
    };
    deliver::enqueue(conn, targets, &deliver::payload(alert), alert.at_ms)?;
    let deploy = alert.key.kind == rules::Kind::DeployFailed;
    store::append_audit(
        conn,
        &AuditEntry {
            at_ms: alert.at_ms,
            who: "alerts".into(),
            action: format!("alert {}", alert.key.kind.as_str()),
            stage: if deploy {
                alert.key.host.clone()
            } else {
                String::new()
            },
            targets: subject(&alert.key),
            result: format!("{}: {}", alert.state.as_str(), alert.summary),
        },
    )
}

/// The host and app an incident is about, for the audit log.
fn subject(key: &Key) -> Vec<String> {
    match (key.kind, key.app.is_empty()) {
        (rules::Kind::DeployFailed, _) => vec![key.app.clone()],
        (_, true) => vec![key.host.clone()],
        (_, false) => vec![key.host.clone(), format!("{}#{}", key.app, key.instance)],
    }
}

/// What the rules see of the registry now: the hosts this controller watches
/// (`peers::own_views`).
fn observe(controller: &Controller) -> Vec<Observation> {
    (crate::peers::own_views(controller).into_iter())
        .map(|(host, view)| {
            let instances = (view.processes.iter())
                .map(|p| Instance {
                    app: p.name.clone(),
                    instance: p.instance,
                    errored: p.status == fleet_proto::agent::v1::ProcessStatus::Errored as i32,
                    restarts: p.restarts,
                    memory_bytes: p.memory_bytes,
                })
                .collect();
            Observation {
                host,
                reachable: view.reachable,
                instances,
            }
        })
        .collect()
}

/// Evaluates the rules every second, for as long as the controller runs.
pub(crate) async fn evaluate(controller: Arc<Controller>, engine: Arc<AlertEngine>) {
    let mut tick = tokio::time::interval(EVALUATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let hosts = observe(&controller);
        let alerts = lock(&engine.rules).evaluate(crate::now_unix_ms(), &hosts);
        engine.raise(&controller, alerts).await;
    }
}

/// Sends due deliveries, for as long as the controller runs.
pub(crate) async fn deliver(controller: Arc<Controller>, engine: Arc<AlertEngine>) {
    loop {
        let now = crate::now_unix_ms();
        let due = match controller
            .store
            .call(move |conn| deliver::due(conn, now))
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "cannot read pending alert deliveries");
                Vec::new()
            }
        };
        let mut attempts = tokio::task::JoinSet::new();
        for due in due {
            let target = deliver::target(&engine.targets, &due.target).cloned();
            attempts.spawn(async move {
                let outcome = match &target {
                    None => deliver::Outcome::GaveUp("the target is no longer configured".into()),
                    Some(target) => match deliver::send(target, &due.payload).await {
                        Ok(()) => deliver::Outcome::Delivered,
                        Err(error) => deliver::after_failure(&due, error, crate::now_unix_ms()),
                    },
                };
                (due, outcome)
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = attempts.join_next().await {
            if let Ok(done) = done {
                outcomes.push(done);
            }
        }
        let more = !outcomes.is_empty();
        if more {
            let now = crate::now_unix_ms();
            let recorded = controller
                .store
                .call(move |conn| {
                    for (due, outcome) in &outcomes {
                        deliver::record(conn, due, outcome, now)?;
                        store::append_audit(conn, &delivery_audit(due, outcome, now))?;
                    }
                    Ok(())
                })
                .await;
            if let Err(error) = recorded {
                tracing::error!(%error, "cannot record alert deliveries");
            }
        }
        let next = (controller.store)
            .call(|conn| deliver::next_due(conn))
            .await
            .ok()
            .flatten();
        let wait = match next {
            Some(at) => {
                Duration::from_millis(at.saturating_sub(crate::now_unix_ms())).min(DELIVER_EVERY)
            }
            None => DELIVER_EVERY,
        };
        if more && wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = engine.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A delivery attempt's audit entry.
fn delivery_audit(due: &deliver::Due, outcome: &deliver::Outcome, now_ms: u64) -> AuditEntry {
    let attempts = due.attempts + 1;
    let result = match outcome {
        deliver::Outcome::Delivered => format!("delivered (attempt {attempts})"),
        deliver::Outcome::Retry { after, error } => {
            format!(
                "failed (attempt {attempts}): {error}; retry in {}s",
                after.as_secs()
            )
        }
        deliver::Outcome::GaveUp(error) => format!("gave up after {attempts} attempts: {error}"),
    };
    let mut targets = vec![due.target.clone()];
    targets.extend(deliver::key_of(&due.payload).map(|k| k.encode()));
    AuditEntry {
        at_ms: now_ms,
        who: "alerts".into(),
        action: "alert delivery".into(),
        stage: String::new(),
        targets,
        result,
    }
}

/// `fleet-controller alerts test`: a test message to every target, now, each outcome
/// printed and audited. Returns whether all were delivered.
pub async fn send_test(
    location: &crate::store::Location,
    alerts: &Alerts,
) -> Result<bool, crate::Error> {
    let host = nix_hostname();
    let payload: Value = serde_json::json!({
        "source": "fleet",
        "alert": "test",
        "state": "firing",
        "summary": format!("a test alert from fleet-controller on {host}"),
        "at_ms": crate::now_unix_ms(),
    });
    let mut all = true;
    let mut entries = Vec::new();
    for target in &alerts.targets {
        let outcome = deliver::send(target, &payload).await;
        match &outcome {
            Ok(()) => println!("{}: delivered", target.name()),
            Err(error) => {
                all = false;
                println!("{}: failed: {error}", target.name());
            }
        }
        entries.push(AuditEntry {
            at_ms: crate::now_unix_ms(),
            who: "alerts test".into(),
            action: "alert delivery".into(),
            stage: String::new(),
            targets: vec![target.name().to_owned(), "test".into()],
            result: outcome.map_or_else(|e| format!("failed: {e}"), |()| "delivered".into()),
        });
    }
    // The store's clients block (PostgreSQL's runs its own runtime): off this one.
    let location = location.clone();
    tokio::task::spawn_blocking(move || {
        let db = location.open()?;
        for entry in &entries {
            store::append_audit(db.as_ref(), entry)
                .map_err(|source| crate::Error::database(&location, source))?;
        }
        Ok::<_, crate::Error>(())
    })
    .await
    .expect("auditing does not panic")?;
    Ok(all)
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this host".into())
}
