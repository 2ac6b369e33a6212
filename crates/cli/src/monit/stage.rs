//! `fleet monit <stage>`'s sources: every host's instances polled through the stage's
//! route (the controller, or SSH to each host), the selected instance's log followed
//! on its own host, and actions taken on that host only. Instances get dashboard ids
//! of their own (ids are per host), mapped back here to the host and the agent's id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleet_proto::agent::v1 as pb;
use fleet_proto::controller::v1::Action;
use fleet_remote::ssh::SshChoices;
use fleet_remote::stage::{LogsQuery, Stage, StageApi};
use tokio::sync::mpsc;

use super::{LIST_INTERVAL, LOG_HISTORY_LINES, LOG_RETRY_DELAY, LogEvent, Message};

/// A host that does not answer a poll within this is shown unreachable, so one host
/// never holds up the view of the others for long.
const HOST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A stage, its route, and the dashboard's ids of its instances.
pub(super) struct StageSource {
    stage: Stage,
    ssh: SshChoices,
    /// The route the poller uses; taken by it once.
    api: Mutex<Option<Box<dyn StageApi>>>,
    ids: Mutex<Ids>,
}

#[derive(Default)]
struct Ids {
    by_instance: HashMap<(String, u32), u32>,
    by_id: HashMap<u32, (String, u32)>,
}

impl StageSource {
    pub(super) fn new(stage: Stage, ssh: SshChoices, api: Box<dyn StageApi>) -> StageSource {
        StageSource {
            stage,
            ssh,
            api: Mutex::new(Some(api)),
            ids: Mutex::default(),
        }
    }

    /// The dashboard's id for the agent's instance `id` on `host`: the same one each
    /// time, so selection and history follow the instance.
    fn dashboard_id(&self, host: &str, id: u32) -> u32 {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let key = (host.to_owned(), id);
        if let Some(known) = ids.by_instance.get(&key) {
            return *known;
        }
        let next = ids.by_id.len() as u32;
        ids.by_instance.insert(key.clone(), next);
        ids.by_id.insert(next, key);
        next
    }

    /// The host and agent id of a dashboard id.
    fn instance(&self, id: u32) -> Option<(String, u32)> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.by_id.get(&id).cloned()
    }

    /// The stage narrowed to one of its hosts (its own settings kept).
    async fn one_host(&self, host: &str) -> Result<Box<dyn StageApi>, String> {
        let mut one = self.stage.clone();
        one.config.host = vec![host.to_owned()];
        one.connect(&self.ssh).await.map_err(|e| e.to_string())
    }
}

/// Every host's instances, once a second; unreachable hosts listed with why.
pub(super) async fn poll(source: Arc<StageSource>, sender: mpsc::Sender<Message>) {
    let taken = source.api.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(mut api) = taken else { return };
    api.set_status_timeout(HOST_TIMEOUT);
    let mut interval = tokio::time::interval(LIST_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let messages = match api.status().await {
            Ok(outcomes) => {
                let mut processes = Vec::new();
                let mut unreachable = Vec::new();
                for outcome in outcomes {
                    match outcome.result {
                        Ok(list) => processes.extend(list.into_iter().map(|mut p| {
                            p.id = source.dashboard_id(&outcome.host, p.id);
                            p.host.clone_from(&outcome.host);
                            p
                        })),
                        Err(why) => unreachable.push(format!("{}: {why}", outcome.host)),
                    }
                }
                [
                    Message::Unreachable(unreachable),
                    Message::List(Ok(processes)),
                ]
            }
            Err(error) => [
                Message::Unreachable(Vec::new()),
                Message::List(Err(tonic::Status::unavailable(error.to_string()))),
            ],
        };
        for message in messages {
            if sender.send(message).await.is_err() {
                return;
            }
        }
    }
}

/// Follows the log of dashboard instance `id` (app `name`) on its host.
pub(super) async fn follow_logs(
    source: Arc<StageSource>,
    sender: mpsc::Sender<Message>,
    generation: u64,
    id: u32,
    name: String,
) {
    let send = |event| sender.send(Message::Log { generation, event });
    let Some((host, agent_id)) = source.instance(id) else {
        return;
    };
    loop {
        let stream = match source.one_host(&host).await {
            Ok(mut api) => {
                let query = LogsQuery {
                    targets: vec![name.clone()],
                    lines: LOG_HISTORY_LINES,
                    follow: true,
                };
                api.logs(query).await.map_err(|e| e.to_string())
            }
            Err(error) => Err(error),
        };
        let event = match stream {
            Err(error) => LogEvent::Unavailable(error),
            Ok(mut lines) => {
                if send(LogEvent::Connected).await.is_err() {
                    return;
                }
                let mut ended = LogEvent::Ended;
                while let Some(item) = lines.recv().await {
                    let entry: pb::LogEntry = match item {
                        Ok(entry) => entry,
                        Err(error) => {
                            ended = LogEvent::Unavailable(error);
                            break;
                        }
                    };
                    let ours = entry.id == agent_id || !entry.notice.is_empty();
                    if ours && send(LogEvent::Entry(entry)).await.is_err() {
                        return;
                    }
                }
                ended
            }
        };
        if send(event).await.is_err() {
            return;
        }
        tokio::time::sleep(LOG_RETRY_DELAY).await;
    }
}

/// Restarts (or stops) app `name` on the host of dashboard instance `id`.
pub(super) async fn act(
    source: Arc<StageSource>,
    sender: mpsc::Sender<Message>,
    id: u32,
    name: String,
    restart: bool,
) {
    let (action, verb, done) = match restart {
        true => (Action::Restart, "restart", "restarted"),
        false => (Action::Stop, "stop", "stopped"),
    };
    let text = match source.instance(id) {
        None => format!("{verb} {name} failed: the instance is gone"),
        Some((host, _)) => match source.one_host(&host).await {
            Err(error) => format!("{verb} {name} on {host} failed: {error}"),
            Ok(mut api) => match api.command(action, vec![name.clone()], String::new()).await {
                Err(error) => format!("{verb} {name} on {host} failed: {error}"),
                Ok(outcomes) => match outcomes.into_iter().next().map(|o| o.result) {
                    Some(Ok(_)) => format!("{name} {done} on {host}"),
                    Some(Err(error)) => format!("{verb} {name} on {host} failed: {error}"),
                    None => format!("{verb} {name} on {host}: no answer"),
                },
            },
        },
    };
    let _ = sender.send(Message::ActionDone(text)).await;
}
