//! Draws a deploy's events (`fleet_remote::deploy::Event`), per host and step:
//! spinners on a terminal (indicatif), one line per event otherwise (CI logs, pipes).
//! Always on stderr, so `--json` keeps stdout for the summary.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use fleet_remote::deploy::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

/// How often a spinner turns.
const TICK: Duration = Duration::from_millis(120);

pub struct Progress {
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
}

impl Progress {
    pub fn new(hosts: Vec<String>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bars: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let width = hosts.iter().map(String::len).max().unwrap_or(4);
        let style = ProgressStyle::with_template(&format!(
            "{{spinner}} {{prefix:<{width}}} {{msg}} {{elapsed:.dim}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = hosts
            .into_iter()
            .map(|host| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(host.clone());
                bar.set_message("waiting");
                bar.enable_steady_tick(TICK);
                (host, bar)
            })
            .collect();
        Progress {
            bars: Some((multi, bars)),
        }
    }

    /// Draws every event until the deploy drops its sender.
    pub async fn draw(self, mut events: mpsc::UnboundedReceiver<Event>) -> Progress {
        while let Some(event) = events.recv().await {
            self.show(event);
        }
        self
    }

    fn show(&self, event: Event) {
        match event {
            Event::Step { host, step } => match self.bar(&host) {
                Some(bar) => bar.set_message(step),
                None => eprintln!("{host}: {step}"),
            },
            Event::Done { host, message } => match self.bar(&host) {
                Some(bar) => bar.finish_with_message(format!("✓ {message}")),
                None => eprintln!("{host}: {message}"),
            },
            Event::Failed { host, step, error } => {
                let first = error.lines().next().unwrap_or("");
                match self.bar(&host) {
                    Some(bar) => bar.finish_with_message(format!("✗ {step}: {first}")),
                    None => eprintln!("{host}: {step} failed: {first}"),
                }
            }
            Event::Output { host, line } => self.line(&format!("{host} | {line}")),
            Event::Note {
                host: Some(host),
                text,
            } => self.line(&format!("{host} | {text}")),
            Event::Note { host: None, text } => self.line(&text),
            // The note before it already names the release.
            Event::Started { .. } => {}
        }
    }

    /// A line above the spinners (hook output, notes), with no control character
    /// reaching the terminal (a note may hold several lines).
    fn line(&self, text: &str) {
        let text: Vec<String> = text.lines().map(crate::output::printable).collect();
        let text = text.join("\n");
        match &self.bars {
            Some((multi, _)) => {
                if multi.println(&text).is_err() {
                    eprintln!("{text}");
                }
            }
            None => eprintln!("{text}"),
        }
    }

    /// Stops every spinner (before the summary is printed).
    pub fn finish(&self) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.finish();
                }
            }
        }
    }

    fn bar(&self, host: &str) -> Option<&ProgressBar> {
        self.bars.as_ref().and_then(|(_, bars)| bars.get(host))
    }
}
