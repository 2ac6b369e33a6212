//! What a deploy tells its watcher while it runs, as a stream of events: the CLI draws
//! them as spinners or lines, and a controller can forward them. The library never
//! prints. Also the interrupt a watcher uses to stop a deploy cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

/// One thing that happened during a deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// Where a deploy sends its events. Sending never blocks; a watcher that went away
/// is not an error.
#[derive(Clone, Debug)]
pub struct Events(Option<mpsc::UnboundedSender<Event>>);

impl Events {
    /// Events and the stream to read them from.
    pub fn channel() -> (Events, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Events(Some(tx)), rx)
    }

    /// Events nobody reads.
    pub fn discard() -> Events {
        Events(None)
    }

    fn send(&self, event: Event) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event);
        }
    }

    pub fn step(&self, host: &str, step: &str) {
        self.send(Event::Step {
            host: host.to_string(),
            step: step.to_string(),
        });
    }

    pub fn done(&self, host: &str, message: &str) {
        self.send(Event::Done {
            host: host.to_string(),
            message: message.to_string(),
        });
    }

    pub fn failed(&self, host: &str, step: &str, error: &str) {
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
