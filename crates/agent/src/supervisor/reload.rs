//! A zero-downtime reload of some instances, orchestrated over the supervisor's
//! requests: the apps are locked against a second reload, then each instance (in
//! batches of `parallel`) gets a replacement that must become ready within its
//! `listen_timeout` before the old one retires (`replace`); instances without a
//! shared port, or not online, are restarted as PM2 does. The first batch with a
//! failure stops the reload; instances not yet replaced keep serving.

use std::time::Duration;

use super::{Handle, ProcessView, Reply, Request};
use crate::core;
use crate::error::AgentError;

/// After the last replacement, time for the touched instances to settle.
const RELOAD_SETTLE: Duration = Duration::from_secs(10);
/// Beyond `listen_timeout`, how long a replacement may take before the reload gives up.
const REPLACE_SLACK: Duration = Duration::from_secs(2);

/// Unlocks the reloaded apps on every exit path, including a caller that went away
/// mid-reload.
struct ReloadUnlock {
    handle: Handle,
    names: Vec<String>,
}

impl Drop for ReloadUnlock {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let names = std::mem::take(&mut self.names);
        tokio::spawn(async move {
            let _ = handle.call(Request::ReloadUnlock { names }).await;
        });
    }
}

impl Handle {
    /// Reloads `views`, `parallel` instances at a time; returns their views once
    /// settled. The reload runs to its end even when its caller goes away (a `fleet
    /// reload` interrupted, a controller killed mid-deploy): a replacement it began is
    /// committed or aborted, never left half done, which would refuse every later
    /// reload of the app as busy.
    pub async fn reload(
        &self,
        views: Vec<ProcessView>,
        parallel: usize,
    ) -> Result<Vec<ProcessView>, AgentError> {
        let handle = self.clone();
        tokio::spawn(async move { handle.reload_to_end(views, parallel).await })
            .await
            .unwrap_or_else(|panic| {
                Err(AgentError::Internal(format!("the reload failed: {panic}")))
            })
    }

    async fn reload_to_end(
        &self,
        views: Vec<ProcessView>,
        parallel: usize,
    ) -> Result<Vec<ProcessView>, AgentError> {
        let mut names: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
        names.dedup();
        self.call(Request::ReloadLock {
            names: names.clone(),
        })
        .await?;
        let _unlock = ReloadUnlock {
            handle: self.clone(),
            names,
        };
        let ids: Vec<u32> = views.iter().map(|v| v.id).collect();
        for batch in views.chunks(parallel.max(1)) {
            let mut jobs = tokio::task::JoinSet::new();
            for view in batch {
                jobs.spawn(reload_one(self.clone(), view.clone()));
            }
            let mut failures = Vec::new();
            while let Some(result) = jobs.join_next().await {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(failure)) => failures.push(failure),
                    Err(panic) => failures.push(Failure::other(format!("internal error: {panic}"))),
                }
            }
            if !failures.is_empty() {
                let busy = failures.iter().all(|f| f.busy);
                let texts: Vec<String> = failures.into_iter().map(|f| f.text).collect();
                let message = format!(
                    "reload stopped: {}\nthe instances not yet replaced keep serving",
                    texts.join("; ")
                );
                // Only replacements already under way stopped it: the caller may retry.
                return Err(match busy {
                    true => AgentError::Busy(message),
                    false => AgentError::FailedPrecondition(message),
                });
            }
        }
        Ok(self.settled(&ids, RELOAD_SETTLE).await)
    }
}

/// Why one instance's reload failed, and whether only because it was being replaced
/// already.
struct Failure {
    busy: bool,
    text: String,
}

impl Failure {
    fn other(text: String) -> Failure {
        Failure { busy: false, text }
    }
}

impl From<String> for Failure {
    fn from(text: String) -> Failure {
        Failure::other(text)
    }
}

/// Reloads one instance: a replacement for a shared-port app, a restart otherwise.
async fn reload_one(handle: Handle, view: ProcessView) -> Result<(), Failure> {
    let label = format!("{}#{} (id {})", view.name, view.instance, view.id);
    if !view.shares_port || view.status != core::Status::Online {
        // PM2 restarts fork-mode apps on reload; a stopped instance just starts.
        let reply = handle
            .call(Request::Restart {
                targets: vec![format!("#{}", view.id)],
                apps: Vec::new(),
                update_env: None,
            })
            .await
            .map_err(|e| format!("{label}: {e}"))?;
        if let Reply::Settling { ids, within, .. } = reply {
            handle.settled(&ids, within).await;
        }
        return Ok(());
    }
    handle
        .call(Request::BeginReplace { id: view.id })
        .await
        .map_err(|e| Failure {
            busy: matches!(e, AgentError::Busy(_)),
            text: format!("{label}: {e}"),
        })?;
    let timeout = Duration::from_millis(view.listen_timeout_ms);
    let until = tokio::time::Instant::now() + timeout + REPLACE_SLACK;
    let (views, done) = handle
        .wait_for(&[view.id], until, |views| {
            views
                .first()
                .is_none_or(|v| v.replace_error.is_some() || v.status == core::Status::Online)
        })
        .await;
    let Some(now) = views.first() else {
        return Err(Failure::other(format!(
            "{label} was deleted during the reload"
        )));
    };
    if let Some(error) = &now.replace_error {
        return Err(Failure::other(format!("{label} was not replaced: {error}")));
    }
    if !done || now.ready_timed_out {
        let reason = format!(
            "the replacement was not ready within {}ms",
            timeout.as_millis()
        );
        let _ = handle
            .call(Request::AbortReplace {
                id: view.id,
                reason: reason.clone(),
            })
            .await;
        return Err(Failure::other(format!("{label}: {reason}")));
    }
    handle
        .call(Request::CommitReplace { id: view.id })
        .await
        .map_err(|e| format!("{label}: {e}"))?;
    Ok(())
}
