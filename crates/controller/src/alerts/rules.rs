//! The alert rules, pure: fed what the registry holds every second (and each recorded
//! deploy), they say which incidents open and which clear. An incident fires once
//! when it opens and once more, as resolved, when it clears; nothing in between.
//!
//! Rules: an instance `errored`; a crash loop (at least N restarts within M); a host
//! unreachable for longer than T; an instance's memory above a threshold for longer
//! than T; a deploy that failed or was rolled back (resolved by the next good deploy of
//! that stage).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// What the rules look for, with their thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleConfig {
    pub errored: bool,
    /// At least this many restarts within this long.
    pub crash_loop: Option<(u32, Duration)>,
    pub host_unreachable: Option<Duration>,
    /// Resident memory of an instance's tree above this for this long.
    pub memory: Option<(u64, Duration)>,
    pub deploy_failed: bool,
}

/// One instance as the rules see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    pub app: String,
    pub instance: u32,
    pub errored: bool,
    pub restarts: u32,
    pub memory_bytes: u64,
}

/// One host as the rules see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub host: String,
    pub reachable: bool,
    pub instances: Vec<Instance>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Errored,
    CrashLoop,
    HostUnreachable,
    Memory,
    DeployFailed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Errored => "app_errored",
            Kind::CrashLoop => "crash_loop",
            Kind::HostUnreachable => "host_unreachable",
            Kind::Memory => "memory_high",
            Kind::DeployFailed => "deploy_failed",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        [
            Kind::Errored,
            Kind::CrashLoop,
            Kind::HostUnreachable,
            Kind::Memory,
            Kind::DeployFailed,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// What an incident is about: the rule, and the host and app (or the stage and the
/// deploy action, for a deploy) it concerns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    /// The host; for a deploy, the stage.
    pub host: String,
    /// The app; for a deploy, its action (`update`, `revert`); empty for a host.
    pub app: String,
    pub instance: u32,
}

impl Key {
    /// The key as stored: `kind host app instance`, space separated (none of host,
    /// app and action names holds a space).
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            self.kind.as_str(),
            self.host,
            self.app,
            self.instance
        )
    }

    pub fn decode(text: &str) -> Option<Key> {
        let mut parts = text.split(' ');
        let kind = Kind::parse(parts.next()?)?;
        let host = parts.next()?.to_owned();
        let app = parts.next()?.to_owned();
        let instance = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Key {
            kind,
            host,
            app,
            instance,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

/// An incident opening or clearing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub key: Key,
    pub state: State,
    pub at_ms: u64,
    /// One line for people: what happened, where.
    pub summary: String,
}

/// The rules' memory: open incidents, conditions waiting out their duration, and each
/// instance's recent restart counts.
#[derive(Debug)]
pub struct Rules {
    config: RuleConfig,
    open: BTreeMap<Key, u64>,
    /// A condition that holds, and since when (for rules with a duration).
    since: BTreeMap<Key, u64>,
    /// Restart counts seen per instance, oldest first, within the crash-loop window.
    restarts: BTreeMap<(String, String, u32), VecDeque<(u64, u32)>>,
    /// When the rules began: a host is not unreachable for longer than the controller
    /// has been watching it.
    started_ms: u64,
}

impl Rules {
    /// Rules that begin at `now_ms` with the incidents still open from before.
    pub fn new(config: RuleConfig, now_ms: u64, open: Vec<(Key, u64)>) -> Rules {
        Rules {
            config,
            open: open.into_iter().collect(),
            since: BTreeMap::new(),
            restarts: BTreeMap::new(),
            started_ms: now_ms,
        }
    }

    pub fn open(&self) -> impl Iterator<Item = (&Key, &u64)> {
        self.open.iter()
    }

    /// Every host and instance as they are now: the incidents that open and clear.
    pub fn evaluate(&mut self, now_ms: u64, hosts: &[Observation]) -> Vec<Alert> {
        // Incidents that should be open now, with their summary.
        let mut holding: BTreeMap<Key, String> = BTreeMap::new();
        // Timed conditions that hold, long enough or not yet.
        let mut timing: BTreeSet<Key> = BTreeSet::new();
        let mut seen_instances = BTreeSet::new();
        for host in hosts {
            if let Some(after) = self.config.host_unreachable
                && !host.reachable
            {
                let key = key(Kind::HostUnreachable, &host.host, "", 0);
                timing.insert(key.clone());
                let since = *self
                    .since
                    .entry(key.clone())
                    .or_insert(now_ms.max(self.started_ms));
                if now_ms.saturating_sub(since) >= after.as_millis() as u64 {
                    let text = format!(
                        "{} has been unreachable for {}",
                        host.host,
                        human(now_ms - since)
                    );
                    holding.insert(key, text);
                }
            }
            if !host.reachable {
                // Nothing new is known of its instances: what was open stays open.
                let kept: Vec<Key> = (self.open.keys())
                    .filter(|k| {
                        k.host == host.host
                            && k.kind != Kind::HostUnreachable
                            && k.kind != Kind::DeployFailed
                    })
                    .cloned()
                    .collect();
                for key in kept {
                    seen_instances.insert((key.host.clone(), key.app.clone(), key.instance));
                    holding.insert(key, String::new());
                }
                continue;
            }
            for instance in &host.instances {
                let id = (host.host.clone(), instance.app.clone(), instance.instance);
                seen_instances.insert(id.clone());
                self.instance(now_ms, &host.host, instance, &mut holding, &mut timing);
            }
        }
        self.restarts.retain(|id, _| seen_instances.contains(id));
        let mut alerts = Vec::new();
        // Conditions no longer holding forget when they began.
        self.since.retain(|key, _| timing.contains(key));
        let opened: Vec<(Key, String)> = (holding.iter())
            .filter(|(key, _)| !self.open.contains_key(*key) && key.kind != Kind::DeployFailed)
            .map(|(key, text)| (key.clone(), text.clone()))
            .collect();
        for (key, summary) in opened {
            self.open.insert(key.clone(), now_ms);
            alerts.push(Alert {
                key,
                state: State::Firing,
                at_ms: now_ms,
                summary,
            });
        }
        let cleared: Vec<Key> = (self.open.keys())
            .filter(|key| key.kind != Kind::DeployFailed && !holding.contains_key(*key))
            .cloned()
            .collect();
        for key in cleared {
            self.open.remove(&key);
            let summary = resolved_summary(&key);
            alerts.push(Alert {
                key,
                state: State::Resolved,
                at_ms: now_ms,
                summary,
            });
        }
        alerts
    }

    /// The instance's conditions, into `holding` when they hold (and long enough).
    fn instance(
        &mut self,
        now_ms: u64,
        host: &str,
        i: &Instance,
        holding: &mut BTreeMap<Key, String>,
        timing: &mut BTreeSet<Key>,
    ) {
        if self.config.errored && i.errored {
            let text = format!(
                "{}#{} on {host} is errored: fleet stopped restarting it",
                i.app, i.instance
            );
            holding.insert(key(Kind::Errored, host, &i.app, i.instance), text);
        }
        if let Some((count, within)) = self.config.crash_loop {
            let samples = (self.restarts)
                .entry((host.to_owned(), i.app.clone(), i.instance))
                .or_default();
            if samples.back().is_none_or(|(_, last)| *last != i.restarts) {
                if samples.back().is_some_and(|(_, last)| *last > i.restarts) {
                    samples.clear(); // the count began again (a reset or a new instance)
                }
                samples.push_back((now_ms, i.restarts));
            }
            let window = within.as_millis() as u64;
            // Keep one sample at or before the window's start as the baseline.
            while samples.len() > 1 && samples[1].0 <= now_ms.saturating_sub(window) {
                samples.pop_front();
            }
            let baseline = samples.front().map_or(i.restarts, |(_, n)| *n);
            let recent = i.restarts.saturating_sub(baseline);
            if recent >= count {
                let text = format!(
                    "{}#{} on {host} restarted {recent} times within {}",
                    i.app,
                    i.instance,
                    human(window)
                );
                holding.insert(key(Kind::CrashLoop, host, &i.app, i.instance), text);
            }
        }
        if let Some((above, after)) = self.config.memory {
            let key = key(Kind::Memory, host, &i.app, i.instance);
            if i.memory_bytes > above {
                timing.insert(key.clone());
                let since = *self.since.entry(key.clone()).or_insert(now_ms);
                if now_ms - since >= after.as_millis() as u64 {
                    let text = format!(
                        "{}#{} on {host} has used {} MB (over {} MB) for {}",
                        i.app,
                        i.instance,
                        i.memory_bytes >> 20,
                        above >> 20,
                        human(now_ms - since)
                    );
                    holding.insert(key, text);
                }
            }
        }
    }

    /// A deploy was recorded: a failed or rolled-back one opens an incident for its
    /// stage and action; a good one clears it.
    pub fn deploy(
        &mut self,
        now_ms: u64,
        stage: &str,
        action: &str,
        ok: bool,
        result: &str,
    ) -> Vec<Alert> {
        if !self.config.deploy_failed {
            return Vec::new();
        }
        let key = key(Kind::DeployFailed, stage, action, 0);
        match (ok, self.open.contains_key(&key)) {
            (false, false) => {
                self.open.insert(key.clone(), now_ms);
                let summary = format!("deploy {action} of {stage}: {result}");
                vec![Alert {
                    key,
                    state: State::Firing,
                    at_ms: now_ms,
                    summary,
                }]
            }
            (true, true) => {
                self.open.remove(&key);
                let summary = resolved_summary(&key);
                vec![Alert {
                    key,
                    state: State::Resolved,
                    at_ms: now_ms,
                    summary,
                }]
            }
            _ => Vec::new(),
        }
    }
}

fn key(kind: Kind, host: &str, app: &str, instance: u32) -> Key {
    Key {
        kind,
        host: host.to_owned(),
        app: app.to_owned(),
        instance,
    }
}

fn resolved_summary(key: &Key) -> String {
    match key.kind {
        Kind::Errored => format!(
            "{}#{} on {} is no longer errored",
            key.app, key.instance, key.host
        ),
        Kind::CrashLoop => format!(
            "{}#{} on {} stopped restarting",
            key.app, key.instance, key.host
        ),
        Kind::HostUnreachable => format!("{} is reachable again", key.host),
        Kind::Memory => format!(
            "{}#{} on {} is back under its memory threshold",
            key.app, key.instance, key.host
        ),
        Kind::DeployFailed => format!("deploy {} of {} succeeded", key.app, key.host),
    }
}

/// `95 s` as `1m35s`, for summaries.
fn human(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

#[cfg(test)]
mod tests;
