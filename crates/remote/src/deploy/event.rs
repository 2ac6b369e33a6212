//! What a deploy tells its watcher while it runs, as a stream of events: the CLI draws
//! them as spinners or lines, and a controller can forward them. The library never
//! prints. Also the interrupt a watcher uses to stop a deploy cleanly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::summary::StepTime;

use tokio::sync::mpsc;

/// One thing that happened during a deploy. As JSON (`kind` and the fields) it is
/// what a controller running the deploy stores and streams to `fleet deploy`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// `host` started `step`.
    Step { host: String, step: String },
    /// `host` is finished, well.
    Done { host: String, message: String },
    /// `host` failed at `step`.
    Failed {
        host: String,
        step: String,
        error: String,
    },
    /// A line a hook printed on `host`.
    Output { host: String, line: String },
    /// A note about the deploy, or about one host when `host` is set.
    Note { host: Option<String>, text: String },
    /// An update knows its release and commit (a controller records them, so a resumed
    /// run ships the same).
    Started { release: String, commit: String },
}

/// Where a deploy sends its events. Sending never blocks; a watcher that went away
/// is not an error. Each host's steps are also timed here, for the report.
#[derive(Clone, Debug)]
pub struct Events {
    tx: Option<mpsc::UnboundedSender<Event>>,
    clock: Arc<Mutex<StepClock>>,
}

/// When each host's steps started, in order; a step ends when the next one starts or
/// the host finishes.
#[derive(Debug, Default)]
struct StepClock {
    hosts: HashMap<String, HostSteps>,
}

#[derive(Debug, Default)]
struct HostSteps {
    done: Vec<StepTime>,
    current: Option<(String, Instant)>,
}

impl HostSteps {
    fn close(&mut self, now: Instant) {
        if let Some((step, started)) = self.current.take() {
            let ms = now.duration_since(started).as_millis() as u64;
            self.done.push(StepTime { step, ms });
        }
    }
}

/// The most steps kept per host: a deploy has a dozen; a runaway loop cannot grow it.
const MAX_TIMED_STEPS: usize = 64;

impl Events {
    /// Events and the stream to read them from.
    pub fn channel() -> (Events, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let events = Events {
            tx: Some(tx),
            clock: Arc::default(),
        };
        (events, rx)
    }

    /// Events nobody reads.
    pub fn discard() -> Events {
        Events {
            tx: None,
            clock: Arc::default(),
        }
    }

    /// An event from elsewhere (a controller running the deploy), passed on as is.
    pub fn emit(&self, event: Event) {
        self.send(event);
    }

    fn send(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, StepClock> {
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long each of `host`'s steps took, in order (the one running counts up to
    /// now).
    pub fn step_times(&self, host: &str) -> Vec<StepTime> {
        let mut clock = self.clock();
        let Some(steps) = clock.hosts.get_mut(host) else {
            return Vec::new();
        };
        steps.close(Instant::now());
        steps.done.clone()
    }

    pub fn step(&self, host: &str, step: &str) {
        {
            let now = Instant::now();
            let mut clock = self.clock();
            let steps = clock.hosts.entry(host.to_string()).or_default();
            steps.close(now);
            if steps.done.len() < MAX_TIMED_STEPS {
                steps.current = Some((step.to_string(), now));
            }
        }
        self.send(Event::Step {
            host: host.to_string(),
            step: step.to_string(),
        });
    }

    pub fn done(&self, host: &str, message: &str) {
        self.finish(host);
        self.send(Event::Done {
            host: host.to_string(),
            message: message.to_string(),
        });
    }

    /// The host's running step ends now.
    fn finish(&self, host: &str) {
        if let Some(steps) = self.clock().hosts.get_mut(host) {
            steps.close(Instant::now());
        }
    }

    pub fn failed(&self, host: &str, step: &str, error: &str) {
        self.finish(host);
        self.send(Event::Failed {
            host: host.to_string(),
            step: step.to_string(),
            error: error.to_string(),
        });
    }

    pub fn output(&self, host: &str, line: &str) {
        self.send(Event::Output {
            host: host.to_string(),
            line: line.to_string(),
        });
    }

    pub fn started(&self, release: &str, commit: &str) {
        self.send(Event::Started {
            release: release.to_string(),
            commit: commit.to_string(),
        });
    }

    pub fn note(&self, text: impl Into<String>) {
        self.send(Event::Note {
            host: None,
            text: text.into(),
        });
    }

    pub fn host_note(&self, host: &str, text: impl Into<String>) {
        self.send(Event::Note {
            host: Some(host.to_string()),
            text: text.into(),
        });
    }
}

/// Set once to stop a deploy: the steps in progress finish, no new one starts, and
/// hosts go back and unlock.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    pub fn interrupt(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
