//! The dashboard's live state: once a second the registry is read into one "card" per
//! host (reachability and since when, release, CPU, memory, apps with their status),
//! compared with the cards sent before, and only the changed ones are broadcast to
//! every open dashboard as a delta. A dashboard that connects gets a snapshot first,
//! then the deltas after it (`seq` orders them). Numbers are rounded (whole percents,
//! MiB) so a host whose figures barely move costs nothing.
//!
//! It also keeps the sparklines' history: CPU and memory of every host and every app
//! of every host, one point a minute for the last hour, in memory and bounded by the
//! number of hosts and apps.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::agent::v1::ProcessInfo;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::registry::{HostView, lock};
use crate::server::Controller;

/// How often the cards are recomputed.
pub const TICK: Duration = Duration::from_secs(1);
/// Stages and releases are read from the store every this many ticks.
const STORE_EVERY: u32 = 2;
/// One sparkline point per this long, and this many points (the last hour).
pub const HISTORY_STEP: Duration = Duration::from_secs(60);
pub const HISTORY_POINTS: usize = 60;
/// Deltas buffered for a slow dashboard before it is sent a fresh snapshot instead.
const BROADCAST_DEPTH: usize = 64;
const MIB: f64 = 1024.0 * 1024.0;

/// Shared by every dashboard of one controller.
pub struct Live {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<str>>,
}

struct State {
    seq: u64,
    /// Each host's card as last sent, serialized.
    cards: BTreeMap<String, Arc<str>>,
    stages: Vec<(String, Vec<String>)>,
    releases: HashMap<String, String>,
    /// The newest deploy `releases` was read after (-1 before the first read).
    last_deploy: i64,
    history: History,
}

impl Live {
    pub fn new() -> Live {
        let state = State {
            seq: 0,
            cards: BTreeMap::new(),
            stages: Vec::new(),
            releases: HashMap::new(),
            last_deploy: -1,
            history: History::default(),
        };
        Live {
            state: Mutex::new(state),
            tx: broadcast::channel(BROADCAST_DEPTH).0,
        }
    }

    /// The whole overview now and the deltas after it.
    pub fn subscribe(&self) -> (String, broadcast::Receiver<Arc<str>>) {
        let state = lock(&self.state);
        let rx = self.tx.subscribe();
        let cards: Vec<&str> = state.cards.values().map(|c| &**c).collect();
        let snapshot = format!(
            r#"{{"seq":{},"now":{},"stages":{},"hosts":[{}],"history":{}}}"#,
            state.seq,
            crate::now_unix_ms(),
            stages_json(&state.stages),
            cards.join(","),
            state.history.hosts_json(),
        );
        (snapshot, rx)
    }

    /// The stages as last read from the store.
    pub fn stages(&self) -> Vec<(String, Vec<String>)> {
        lock(&self.state).stages.clone()
    }

    pub fn release(&self, host: &str) -> Option<String> {
        lock(&self.state).releases.get(host).cloned()
    }

    /// The sparklines of `host` and each of its apps (`app` only, when given).
    pub fn history_of(&self, host: &str, app: Option<&str>) -> Value {
        lock(&self.state).history.of_host(host, app)
    }

    /// Keeps the cards and the history current until the task is dropped.
    pub async fn run(self: Arc<Self>, controller: Arc<Controller>) {
        let mut ticks = 0u32;
        let mut last_sample: Option<Instant> = None;
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if ticks.is_multiple_of(STORE_EVERY) {
                self.refresh_from_store(&controller).await;
            }
            ticks = ticks.wrapping_add(1);
            let sample = last_sample.is_none_or(|at| at.elapsed() >= HISTORY_STEP);
            if sample {
                last_sample = Some(Instant::now());
            }
            // Nobody watching: cards wait for the next tick after someone subscribes
            // (the snapshot is then at most a tick old and the deltas bring it current).
            if self.tx.receiver_count() == 0 && !sample {
                continue;
            }
            // Every host of the registry and of the stages, those held by a peer
            // sharing the store as that peer sees them.
            let hosts = self.hosts(&controller);
            let views = crate::peers::views(&controller, hosts).await;
            self.tick(views, sample);
        }
    }

    /// The hosts this controller knows of and those the stages name, sorted.
    fn hosts(&self, controller: &Controller) -> Vec<String> {
        let mut hosts = crate::peers::known_hosts(controller);
        let state = lock(&self.state);
        hosts.extend((state.stages.iter()).flat_map(|(_, hosts)| hosts.iter().cloned()));
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }

    /// Reads the stages, and the releases when a deploy was recorded since.
    async fn refresh_from_store(&self, controller: &Controller) {
        let known = lock(&self.state).last_deploy;
        let read = controller
            .store
            .call(move |conn| {
                let stages = crate::deploys::stages(conn)?;
                let last = crate::deploys::last_id(conn)?;
                let releases = match last == known {
                    true => None,
                    false => Some(crate::deploys::releases(conn, 500)?),
                };
                Ok((stages, last, releases))
            })
            .await;
        match read {
            Ok((stages, last, releases)) => {
                let mut state = lock(&self.state);
                state.stages = stages;
                state.last_deploy = last;
                if let Some(releases) = releases {
                    state.releases = releases.into_iter().collect();
                }
            }
            Err(error) => tracing::warn!(%error, "the dashboard cannot read stages"),
        }
    }

    /// One recomputation: changed cards, gone hosts and (when `sample`) a sparkline
    /// point are broadcast as one delta.
    fn tick(&self, views: Vec<(String, HostView)>, sample: bool) {
        let (stages, releases) = {
            let state = lock(&self.state);
            (state.stages.clone(), state.releases.clone())
        };
        let mut in_stages: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (stage, hosts) in &stages {
            for host in hosts {
                in_stages.entry(host).or_default().push(stage);
            }
        }
        let mut state = lock(&self.state);
        let mut changed = Vec::new();
        for (host, view) in &views {
            let member = in_stages.get(host.as_str()).cloned().unwrap_or_default();
            let card: Arc<str> = card(host, view, &member, releases.get(host))
                .to_string()
                .into();
            if state.cards.get(host) != Some(&card) {
                state.cards.insert(host.clone(), card.clone());
                changed.push(card);
            }
        }
        let present: HashSet<&str> = views.iter().map(|(h, _)| h.as_str()).collect();
        let gone: Vec<String> = (state.cards.keys())
            .filter(|h| !present.contains(h.as_str()))
            .cloned()
            .collect();
        for host in &gone {
            state.cards.remove(host);
        }
        let spark = sample.then(|| state.history.sample(crate::now_unix_ms(), &views));
        if changed.is_empty() && gone.is_empty() && spark.is_none() {
            return;
        }
        state.seq += 1;
        let cards: Vec<&str> = changed.iter().map(|c| &**c).collect();
        let delta = format!(
            r#"{{"seq":{},"now":{},"stages":{},"hosts":[{}],"gone":{},"spark":{}}}"#,
            state.seq,
            crate::now_unix_ms(),
            stages_json(&stages),
            cards.join(","),
            json!(gone),
            spark.unwrap_or(Value::Null),
        );
        let _ = self.tx.send(delta.into());
    }
}

fn stages_json(stages: &[(String, Vec<String>)]) -> Value {
    Value::Array(
        (stages.iter())
            .map(|(name, hosts)| json!({"name": name, "hosts": hosts}))
            .collect(),
    )
}

/// A status as the dashboard names it: PM2's words, as `/metrics` labels them.
pub use fleet_proto::metrics::status_name;

/// Which of two statuses an app's summary shows: the one that needs attention.
fn severity(status: &str) -> u8 {
    match status {
        "errored" => 5,
        "waiting-restart" => 4,
        "launching" | "stopping" => 3,
        "stopped" => 2,
        "unknown" => 1,
        _ => 0,
    }
}

/// One app on one host, its instances summed.
#[derive(Default)]
struct AppSum {
    status: &'static str,
    online: u32,
    instances: u32,
    cpu: f64,
    memory: u64,
    restarts: u32,
}

fn apps_of(processes: &[ProcessInfo]) -> BTreeMap<&str, AppSum> {
    let mut apps: BTreeMap<&str, AppSum> = BTreeMap::new();
    for process in processes {
        let sum = apps.entry(process.name.as_str()).or_default();
        let status = status_name(process.status);
        if sum.instances == 0 || severity(status) > severity(sum.status) {
            sum.status = status;
        }
        sum.instances += 1;
        sum.online += u32::from(status == "online");
        sum.cpu += process.cpu_percent;
        sum.memory += process.memory_bytes;
        sum.restarts += process.restarts;
    }
    apps
}

/// A host's card: what the overview shows of it.
pub fn card(host: &str, view: &HostView, stages: &[&str], release: Option<&String>) -> Value {
    let apps: Vec<Value> = (apps_of(&view.processes).into_iter())
        .map(|(name, app)| {
            json!({
                "name": name,
                "status": app.status,
                "online": app.online,
                "instances": app.instances,
                "cpu": app.cpu.round(),
                "mem_mib": (app.memory as f64 / MIB).round(),
                "restarts": app.restarts,
            })
        })
        .collect();
    let metrics = view.metrics.as_ref();
    let disk = metrics
        .into_iter()
        .flat_map(|m| &m.disks)
        .filter(|d| d.total_bytes > 0)
        .map(|d| (d.used_bytes as f64 * 100.0 / d.total_bytes as f64).round())
        .fold(None, |worst: Option<f64>, p| {
            Some(worst.map_or(p, |w| w.max(p)))
        });
    json!({
        "name": host,
        "stages": stages,
        "reachable": view.reachable,
        "since": view.since_unix_ms,
        "error": view.error,
        "agent": view.agent_version,
        "release": release,
        "cpus": metrics.map(|m| m.cpus),
        "cpu": metrics.map(|m| m.cpu_percent.round()),
        "load1": metrics.map(|m| (m.load1 * 10.0).round() / 10.0),
        "mem_used_mib": metrics.map(|m| (m.memory_total_bytes.saturating_sub(m.memory_available_bytes) as f64 / MIB).round()),
        "mem_total_mib": metrics.map(|m| (m.memory_total_bytes as f64 / MIB).round()),
        "disk_pct": disk,
        "apps": apps,
    })
}

/// Sparkline history: one time axis, and per series (a host, or an app on a host) CPU
/// percent and memory MiB, aligned with it (`NaN` where the series had no value).
#[derive(Default)]
struct History {
    times: VecDeque<u64>,
    hosts: HashMap<String, Series>,
    /// By (host, app).
    apps: HashMap<(String, String), Series>,
}

#[derive(Default, Clone)]
struct Series {
    cpu: VecDeque<f32>,
    mem: VecDeque<f32>,
}

impl Series {
    fn push(&mut self, point: Option<(f32, f32)>, len: usize) {
        while self.cpu.len() + 1 < len {
            self.cpu.push_back(f32::NAN);
            self.mem.push_back(f32::NAN);
        }
        let (cpu, mem) = point.unwrap_or((f32::NAN, f32::NAN));
        self.cpu.push_back(cpu);
        self.mem.push_back(mem);
        while self.cpu.len() > len {
            self.cpu.pop_front();
            self.mem.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.cpu.iter().all(|v| v.is_nan())
    }

    fn json(&self) -> Value {
        let values = |v: &VecDeque<f32>| -> Value {
            Value::Array(
                v.iter()
                    .map(|x| match x.is_nan() {
                        true => Value::Null,
                        false => json!(x),
                    })
                    .collect(),
            )
        };
        json!({"cpu": values(&self.cpu), "mem": values(&self.mem)})
    }
}

impl History {
    /// Adds one point to every series; returns the new host points for the delta.
    fn sample(&mut self, at_ms: u64, views: &[(String, HostView)]) -> Value {
        self.times.push_back(at_ms);
        while self.times.len() > HISTORY_POINTS {
            self.times.pop_front();
        }
        let len = self.times.len();
        let mut hosts: HashMap<String, (f32, f32)> = HashMap::new();
        let mut apps: HashMap<(String, String), (f32, f32)> = HashMap::new();
        for (host, view) in views {
            if let Some(m) = view.metrics.as_ref().filter(|_| view.reachable) {
                let used = m
                    .memory_total_bytes
                    .saturating_sub(m.memory_available_bytes);
                hosts.insert(
                    host.clone(),
                    (
                        m.cpu_percent.round() as f32,
                        (used as f64 / MIB).round() as f32,
                    ),
                );
            }
            for (name, app) in apps_of(&view.processes) {
                let point = (
                    app.cpu.round() as f32,
                    (app.memory as f64 / MIB).round() as f32,
                );
                apps.insert((host.clone(), name.to_owned()), point);
            }
        }
        let mut points = serde_json::Map::new();
        for (host, point) in &hosts {
            points.insert(host.clone(), json!([point.0, point.1]));
            self.hosts.entry(host.clone()).or_default();
        }
        for key in apps.keys() {
            self.apps.entry(key.clone()).or_default();
        }
        for (host, series) in self.hosts.iter_mut() {
            series.push(hosts.get(host).copied(), len);
        }
        for (key, series) in self.apps.iter_mut() {
            series.push(apps.get(key).copied(), len);
        }
        self.hosts.retain(|_, s| !s.is_empty());
        self.apps.retain(|_, s| !s.is_empty());
        json!({"t": at_ms, "hosts": points})
    }

    /// Every host's series, for the overview's snapshot.
    fn hosts_json(&self) -> Value {
        let hosts: serde_json::Map<String, Value> = (self.hosts.iter())
            .map(|(host, series)| (host.clone(), series.json()))
            .collect();
        json!({"step_ms": HISTORY_STEP.as_millis() as u64, "t": self.times, "hosts": hosts})
    }

    /// One host's series and its apps' (or one app's).
    fn of_host(&self, host: &str, app: Option<&str>) -> Value {
        let apps: serde_json::Map<String, Value> = (self.apps.iter())
            .filter(|((h, a), _)| h == host && app.is_none_or(|app| app == a))
            .map(|((_, a), series)| (a.clone(), series.json()))
            .collect();
        json!({
            "step_ms": HISTORY_STEP.as_millis() as u64,
            "t": self.times,
            "host": self.hosts.get(host).map(Series::json),
            "apps": apps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::agent::v1::{HostMetrics, ProcessStatus};

    fn process(name: &str, status: ProcessStatus, memory: u64) -> ProcessInfo {
        ProcessInfo {
            name: name.into(),
            status: status as i32,
            memory_bytes: memory,
            cpu_percent: 12.4,
            restarts: 2,
            ..ProcessInfo::default()
        }
    }

    fn view(processes: Vec<ProcessInfo>) -> HostView {
        HostView {
            reachable: true,
            since_unix_ms: 5,
            processes,
            metrics: Some(HostMetrics {
                cpus: 2,
                cpu_percent: 33.3,
                memory_total_bytes: 4 << 30,
                memory_available_bytes: 1 << 30,
                ..HostMetrics::default()
            }),
            ..HostView::default()
        }
    }

    #[test]
    fn a_card_sums_each_apps_instances_and_shows_the_worst_status() {
        let view = view(vec![
            process("web", ProcessStatus::Online, 10 << 20),
            process("web", ProcessStatus::Errored, 0),
            process("worker", ProcessStatus::Online, 5 << 20),
        ]);
        let release = "r1".to_owned();
        let card = card("h1", &view, &["prod"], Some(&release));
        assert_eq!(card["reachable"], true);
        assert_eq!(card["release"], "r1");
        assert_eq!(card["mem_used_mib"], 3072.0);
        assert_eq!(card["cpu"], 33.0);
        let web = &card["apps"][0];
        assert_eq!(
            (
                &web["name"],
                &web["status"],
                &web["online"],
                &web["instances"]
            ),
            (&json!("web"), &json!("errored"), &json!(1), &json!(2))
        );
        assert_eq!(
            (&web["mem_mib"], &web["restarts"]),
            (&json!(10.0), &json!(4))
        );
        assert_eq!(card["apps"][1]["status"], "online");
    }

    #[test]
    fn history_is_bounded_and_aligned_with_its_time_axis() {
        let mut history = History::default();
        let one = vec![(
            "h1".to_owned(),
            view(vec![process("web", ProcessStatus::Online, 1 << 20)]),
        )];
        let two = {
            let mut two = one.clone();
            two.push(("h2".to_owned(), view(vec![])));
            two
        };
        history.sample(1, &one);
        for i in 0..HISTORY_POINTS as u64 + 5 {
            history.sample(2 + i, &two);
        }
        assert_eq!(history.times.len(), HISTORY_POINTS);
        for series in history.hosts.values().chain(history.apps.values()) {
            assert_eq!(series.cpu.len(), HISTORY_POINTS);
            assert_eq!(series.mem.len(), HISTORY_POINTS);
        }
        let h1 = history.of_host("h1", None);
        assert_eq!(h1["apps"]["web"]["mem"][0], 1.0);
        assert_eq!(h1["host"]["cpu"][HISTORY_POINTS - 1], 33.0);
        // A host that stops reporting keeps its points until they age out.
        for i in 0..HISTORY_POINTS as u64 {
            history.sample(100 + i, &[]);
        }
        assert!(history.hosts.is_empty() && history.apps.is_empty());
    }
}
