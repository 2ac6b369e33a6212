//! `Handle`: the cheap, clonable way to talk to the supervisor task: a request and
//! its reply, waits until instances settle or meet a condition, change
//! notifications, and the metrics sampler's calls (per instance and for the host).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{Msg, ProcessView, Reply, Request};
use crate::error::AgentError;
use crate::metrics::TreeUsage;

/// A cheap, clonable way to talk to the supervisor task.
#[derive(Clone)]
pub struct Handle {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) changed: watch::Receiver<u64>,
    pub(super) node_messages: tokio::sync::broadcast::Sender<(u32, serde_json::Value)>,
    /// The host's metrics as last sampled (`daemon::sample_metrics`), for `List` and
    /// the controller link.
    pub(super) host: std::sync::Arc<std::sync::Mutex<Option<fleet_proto::agent::v1::HostMetrics>>>,
}

impl Handle {
    pub async fn call(&self, request: Request) -> Result<Reply, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Request(request, reply))
            .map_err(|_| AgentError::Internal("the supervisor has stopped".into()))?;
        rx.await
            .map_err(|_| AgentError::Internal("the supervisor has stopped".into()))?
    }

    /// Waits until every instance in `ids` has settled (is neither launching nor
    /// stopping) or is gone, then returns their views. Gives up at `deadline`
    /// and returns them as they are.
    pub async fn settled(&self, ids: &[u32], deadline: Duration) -> Vec<ProcessView> {
        let mut changed = self.changed.clone();
        let until = Instant::now() + deadline;
        loop {
            changed.mark_unchanged();
            let views = self.views(ids).await;
            if views.iter().all(|v| v.status.is_settled()) {
                return views;
            }
            if tokio::time::timeout_at(until, changed.changed())
                .await
                .is_err()
            {
                return views;
            }
        }
    }

    /// The views of `ids` (gone ones left out).
    pub async fn views_of(&self, ids: &[u32]) -> Vec<ProcessView> {
        self.views(ids).await
    }

    async fn views(&self, ids: &[u32]) -> Vec<ProcessView> {
        // By id, not by `#id` targets: an id that is gone is simply absent (a target
        // matching nothing is an error, which made a stop look settled too early).
        let ids = ids.to_vec();
        match self.call(Request::Views { ids }).await {
            Ok(Reply::Views(views)) => views,
            _ => Vec::new(),
        }
    }

    /// Waits until `done` holds for the views of `ids` (gone ones left out), or until
    /// `until`; returns the last views and whether `done` held.
    pub async fn wait_for(
        &self,
        ids: &[u32],
        until: Instant,
        done: impl Fn(&[ProcessView]) -> bool,
    ) -> (Vec<ProcessView>, bool) {
        let mut changed = self.changed.clone();
        loop {
            changed.mark_unchanged();
            let views = self.views(ids).await;
            if done(&views) {
                return (views, true);
            }
            if tokio::time::timeout_at(until, changed.changed())
                .await
                .is_err()
            {
                return (views, false);
            }
        }
    }

    /// What Node apps send over their IPC channel (not the protocol's own messages),
    /// with the instance's id, from now on.
    pub fn node_messages(&self) -> tokio::sync::broadcast::Receiver<(u32, serde_json::Value)> {
        self.node_messages.subscribe()
    }

    /// A receiver that changes whenever any instance does (the controller link sends
    /// deltas on it).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// The leader pid of every running instance, for the metrics sampler.
    pub async fn leaders(&self) -> Vec<(u32, i32)> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Leaders(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Every process the agent started and still waits for (a reaper must leave them
    /// to their waiters).
    pub async fn children(&self) -> Vec<i32> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Children(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    pub fn report_usage(&self, usage: HashMap<u32, TreeUsage>) {
        let _ = self.tx.send(Msg::Usage(usage));
    }

    /// Keeps the host's latest metrics.
    pub fn report_host(&self, metrics: fleet_proto::agent::v1::HostMetrics) {
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = Some(metrics);
    }

    /// The host's latest metrics, if sampled yet.
    pub fn host_metrics(&self) -> Option<fleet_proto::agent::v1::HostMetrics> {
        self.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `fleet update`: the process table for the next agent image, once nothing is in
    /// a state that cannot cross (a reload); waits up to `patience` for that. After
    /// `Ok` the supervisor has stopped: the caller must exec.
    pub async fn hand_over(
        &self,
        patience: Duration,
    ) -> Result<(super::SupervisorCarry, crate::handoff::Outgoing), String> {
        let until = Instant::now() + patience;
        let mut changed = self.changed.clone();
        loop {
            changed.mark_unchanged();
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Msg::HandOver(reply))
                .map_err(|_| "the supervisor has stopped".to_string())?;
            match rx.await {
                Ok(Ok(carried)) => return Ok(carried),
                Ok(Err(busy)) if Instant::now() < until => {
                    // Busy: try again at the next change, or a little later.
                    let _ = tokio::time::timeout_at(
                        until.min(Instant::now() + Duration::from_millis(200)),
                        changed.changed(),
                    )
                    .await;
                    tracing::debug!(%busy, "handoff waits");
                }
                Ok(Err(busy)) => return Err(format!("{busy}; try again once it is over")),
                Err(_) => return Err("the supervisor has stopped".into()),
            }
        }
    }

    /// Resolves once the supervisor task has ended.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}
