//! `fleet monit`: the live terminal dashboard (ratatui over crossterm). Owns the
//! terminal while it runs (alternate screen and raw mode, restored on exit, on error
//! and on panic) and the dashboard's state; the data comes from the agent, polled
//! through `List` and streamed through `Logs`, or with `fleet monit <stage>` from every
//! host of the stage (`stage`: through the controller or over SSH).
//!
//! One task per source (list poller, log stream, a thread reading keys) feeds one
//! channel; `Dashboard` is the synchronous core that turns those messages into state
//! and effects (follow another log, restart, stop, quit), and the loop around it does
//! the I/O and draws.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IsTerminal, Stdout};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use fleet_proto::agent::v1 as pb;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, HighlightSpacing, Paragraph, Row, Sparkline, Table, TableState,
};
use ratatui::{Frame, Terminal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Failure;
use crate::client::{self, Client};
use crate::output;

/// PM2's monit refreshes its process list once a second.
const LIST_INTERVAL: Duration = Duration::from_secs(1);
/// At most ten frames a second: smooth enough for a dashboard, cheap when logs flood.
const FRAME_INTERVAL: Duration = Duration::from_millis(100);
/// A minute of CPU and memory samples at one list per second.
const HISTORY_SAMPLES: usize = 60;
/// Scrollback of the log pane, for the selected instance only.
const LOG_LINES_KEPT: usize = 1000;
/// Lines of history asked for whenever the log stream (re)starts.
const LOG_HISTORY_LINES: u32 = 100;
/// A log stream that ended or failed with a transient error is retried after this.
const LOG_RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long the result of an action stays in the status line.
const STATUS_TTL: Duration = Duration::from_secs(5);
/// Messages in flight to the UI loop. A full channel only slows the log stream, and
/// the agent drops lines for a slow follower (with a notice) rather than slow an app.
const CHANNEL_CAPACITY: usize = 1024;
/// How often the key-reading thread checks that the dashboard is still running.
const INPUT_POLL: Duration = Duration::from_millis(100);
/// The CPU chart's scale never shrinks below 100% (stored in tenths of a percent), so
/// an idle app looks idle instead of a full-height chart of noise.
const CPU_SCALE_FLOOR: u64 = 1000;
/// Rows of the process table's box beyond its process rows: two borders and a header.
const TABLE_CHROME_ROWS: u16 = 3;
/// The process table's share of the width, and the width its fixed columns, the
/// selection marker and a few characters of name and namespace need.
const TABLE_WIDTH_PERCENT: u16 = 62;
const TABLE_MIN_WIDTH: u16 = 64;
/// The top part never gets shorter than two charts of four rows each need.
const TOP_MIN_ROWS: u16 = 12;
const KEY_HELP: &str =
    "↑/↓ j/k select · r restart · s stop · PgUp/PgDn scroll log · End follow · q quit";

/// `fleet monit`. Fails (exit 1) before touching the terminal when the agent cannot
/// be reached.
pub async fn run(home: &Path) -> Result<(), Failure> {
    if !io::stdout().is_terminal() {
        return Err(Failure::usage(
            "`fleet monit` needs a terminal\nhint: `fleet list --json` prints the same data for scripts",
        ));
    }
    let client = client::connect(home, true)
        .await?
        .ok_or_else(|| Failure::failed("the agent is not running"))?;
    let colour = std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let mut screen =
        Screen::enter().map_err(|e| Failure::failed(format!("cannot set up the terminal: {e}")))?;
    let result = dashboard_loop(
        &mut screen.terminal,
        Source::Local(client),
        Dashboard::new(colour),
    )
    .await;
    // Restore before main prints any error, so the message lands on the normal screen.
    drop(screen);
    result
}

/// `fleet monit <stage>`: the same dashboard over every host of the stage. Fails with
/// exit code 1 before touching the terminal when the route to the stage (its
/// controller, or its SSH settings) cannot be set up.
pub async fn run_stage(
    stage: fleet_remote::stage::Stage,
    ssh: fleet_remote::ssh::SshChoices,
) -> Result<(), Failure> {
    if !io::stdout().is_terminal() {
        return Err(Failure::usage(format!(
            "`fleet monit {}` needs a terminal\nhint: `fleet status {} --json` prints the same data for scripts",
            stage.name, stage.name
        )));
    }
    // Warnings (a new host key) would land under the dashboard: collect them instead.
    let ssh = fleet_remote::ssh::SshChoices {
        print_warnings: false,
        ..ssh
    };
    let api = stage.connect(&ssh).await?;
    let colour = std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let dashboard = Dashboard::of_stage(colour, &stage.name);
    let source = Source::Stage(Arc::new(stage::StageSource::new(stage, ssh, api)));
    let mut screen =
        Screen::enter().map_err(|e| Failure::failed(format!("cannot set up the terminal: {e}")))?;
    let result = dashboard_loop(&mut screen.terminal, source, dashboard).await;
    drop(screen);
    result
}

// ---------------------------------------------------------------------------------
// The terminal

/// Whether this process has the terminal in raw mode on the alternate screen; makes
/// `restore_terminal` idempotent between the panic hook, `Drop` and normal exit.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// The terminal in dashboard mode; dropping it (also while unwinding) restores it.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> io::Result<Screen> {
        // A panic prints its message after the hook restored the terminal; otherwise
        // the message would go to the alternate screen and vanish with it.
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        TERMINAL_TAKEN.store(true, Ordering::SeqCst);
        let entered = terminal::enable_raw_mode()
            .and_then(|()| execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide))
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match entered {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(error) => {
                restore_terminal();
                Err(error)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        // Best effort: there is nowhere better to report a terminal that cannot be reset.
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
    }
}

// ---------------------------------------------------------------------------------
// The async shell: sources, effects, drawing

/// What the sources send to the UI loop.
#[derive(Debug)]
enum Message {
    List(Result<Vec<pb::ProcessInfo>, tonic::Status>),
    /// A stage's hosts that could not be reached, as `host: why`, before each `List`.
    Unreachable(Vec<String>),
    /// From the log stream started for `generation` (older streams' leftovers are ignored).
    Log {
        generation: u64,
        event: LogEvent,
    },
    Input(Event),
    InputFailed(String),
    /// SIGTERM or SIGHUP: leave as `q` does, restoring the terminal.
    Signal,
    /// An action finished: the text for the status line.
    ActionDone(String),
}

#[derive(Debug)]
enum LogEvent {
    /// A (re)connected stream: it starts with its history again.
    Connected,
    Entry(pb::LogEntry),
    /// The stream ended (the agent closed it); it is retried.
    Ended,
    Unavailable(String),
}

/// What the dashboard asks its shell to do.
#[derive(Debug, PartialEq)]
enum Effect {
    Quit,
    Fail(String),
    /// Stop the current log stream and, with a target, follow instance `id` through it.
    FollowLogs {
        generation: u64,
        follow: Option<(u32, String)>,
    },
    /// Restart or stop the app of instance `id` (on its host, on a stage).
    Restart {
        id: u32,
        name: String,
    },
    Stop {
        id: u32,
        name: String,
    },
}

/// Where the dashboard's data comes from.
#[derive(Clone)]
enum Source {
    Local(Client),
    Stage(Arc<stage::StageSource>),
}

struct Shell {
    source: Source,
    sender: mpsc::Sender<Message>,
    log_task: Option<JoinHandle<()>>,
}

impl Shell {
    /// Carries out effects; `Some` ends the dashboard with that result.
    fn apply(&mut self, effects: Vec<Effect>) -> Option<Result<(), Failure>> {
        for effect in effects {
            match effect {
                Effect::Quit => return Some(Ok(())),
                Effect::Fail(message) => return Some(Err(Failure::failed(message))),
                Effect::FollowLogs { generation, follow } => {
                    if let Some(task) = self.log_task.take() {
                        task.abort();
                    }
                    if let Some((id, target)) = follow {
                        let sender = self.sender.clone();
                        self.log_task = Some(match &self.source {
                            Source::Local(client) => tokio::spawn(follow_logs(
                                client.clone(),
                                sender,
                                generation,
                                id,
                                target,
                            )),
                            Source::Stage(stage) => tokio::spawn(stage::follow_logs(
                                stage.clone(),
                                sender,
                                generation,
                                id,
                                target,
                            )),
                        });
                    }
                }
                Effect::Restart { id, name } => self.act(id, name, true),
                Effect::Stop { id, name } => self.act(id, name, false),
            }
        }
        None
    }

    /// Restarts (or stops) an app: here, every instance of it; on a stage, the app on
    /// the selected instance's host.
    fn act(&self, id: u32, name: String, restart: bool) {
        let sender = self.sender.clone();
        match &self.source {
            Source::Stage(stage) => {
                tokio::spawn(stage::act(stage.clone(), sender, id, name, restart));
            }
            Source::Local(client) => {
                let mut client = client.clone();
                tokio::spawn(async move {
                    let text = if restart {
                        let result = client
                            .restart(pb::RestartRequest {
                                targets: vec![name.clone()],
                                ..Default::default()
                            })
                            .await;
                        action_result(&name, "restarted", "restart", result)
                    } else {
                        let result = client
                            .stop(pb::TargetRequest {
                                targets: vec![name.clone()],
                            })
                            .await;
                        action_result(&name, "stopped", "stop", result)
                    };
                    let _ = sender.send(Message::ActionDone(text)).await;
                });
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if let Some(task) = self.log_task.take() {
            task.abort();
        }
    }
}

fn action_result(
    name: &str,
    done: &str,
    verb: &str,
    result: Result<tonic::Response<pb::OperationResponse>, tonic::Status>,
) -> String {
    match result {
        // A warning ("app api is already stopped") says more than "done".
        Ok(response) => match response.into_inner().warnings.first() {
            Some(warning) => warning.clone(),
            None => format!("{name} {done}"),
        },
        Err(status) => format!("{verb} {name} failed: {}", status_text(&status)),
    }
}

fn status_text(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    }
}

async fn dashboard_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    source: Source,
    mut dashboard: Dashboard,
) -> Result<(), Failure> {
    let (sender, mut receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let poller = match &source {
        Source::Local(client) => tokio::spawn(poll_list(client.clone(), sender.clone())),
        Source::Stage(stage) => tokio::spawn(stage::poll(stage.clone(), sender.clone())),
    };
    spawn_input_thread(sender.clone());
    let signals = tokio::spawn(wait_for_signal(sender.clone()));
    let mut shell = Shell {
        source,
        sender,
        log_task: None,
    };
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    let result = loop {
        let next_frame = last_draw.map_or_else(Instant::now, |at| at + FRAME_INTERVAL);
        tokio::select! {
            message = receiver.recv() => {
                // The shell holds a sender, so the channel never closes under us.
                let Some(message) = message else { break Ok(()) };
                let effects = dashboard.handle(message, Instant::now());
                if let Some(result) = shell.apply(effects) {
                    break result;
                }
                dirty = true;
            }
            () = tokio::time::sleep_until(next_frame), if dirty => {}
        }
        // A panic on another thread or task has already restored the terminal through
        // the hook; drawing on would scribble over the user's shell.
        if !TERMINAL_TAKEN.load(Ordering::SeqCst) {
            break Err(Failure::failed(
                "the dashboard stopped after an internal error (see above)",
            ));
        }
        if dirty && last_draw.is_none_or(|at| at.elapsed() >= FRAME_INTERVAL) {
            let now = Instant::now();
            if let Err(error) = terminal.draw(|frame| dashboard.render(frame, now)) {
                break Err(Failure::failed(format!("cannot draw: {error}")));
            }
            last_draw = Some(now);
            dirty = false;
        }
    };
    poller.abort();
    signals.abort();
    result
}

/// A terminal left in raw mode is unusable, so a polite kill ends the dashboard the
/// way `q` does. (Ctrl-C arrives as a key: raw mode turns off the terminal's signals.)
async fn wait_for_signal(sender: mpsc::Sender<Message>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = hangup.recv() => {}
    }
    let _ = sender.send(Message::Signal).await;
}

async fn poll_list(mut client: Client, sender: mpsc::Sender<Message>) {
    let mut interval = tokio::time::interval(LIST_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let result = client
            .list(pb::ListRequest {
                targets: Vec::new(),
                details: false,
            })
            .await
            .map(|response| response.into_inner().processes);
        if sender.send(Message::List(result)).await.is_err() {
            return;
        }
    }
}

/// Follows one instance's log; `target` selects it on the agent, `id` filters what
/// comes back (a target naming several instances still shows only this one).
async fn follow_logs(
    mut client: Client,
    sender: mpsc::Sender<Message>,
    generation: u64,
    id: u32,
    target: String,
) {
    let send = |event| sender.send(Message::Log { generation, event });
    loop {
        let request = pb::LogsRequest {
            targets: vec![target.clone()],
            lines: LOG_HISTORY_LINES,
            follow: true,
            ..Default::default()
        };
        let ended = match client.logs(request).await {
            Err(status) => Err(status),
            Ok(response) => {
                if send(LogEvent::Connected).await.is_err() {
                    return;
                }
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(entry)) => {
                            if (entry.id == id || !entry.notice.is_empty())
                                && send(LogEvent::Entry(entry)).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                }
            }
        };
        let event = match &ended {
            Ok(()) => LogEvent::Ended,
            Err(status) => LogEvent::Unavailable(status_text(status)),
        };
        if send(event).await.is_err() {
            return;
        }
        // Retrying cannot help an agent without the call or an instance that is gone.
        if let Err(status) = &ended
            && matches!(
                status.code(),
                tonic::Code::Unimplemented | tonic::Code::NotFound | tonic::Code::InvalidArgument
            )
        {
            return;
        }
        tokio::time::sleep(LOG_RETRY_DELAY).await;
    }
}

/// Reads keys on a plain thread (crossterm's reads block); it ends soon after the
/// dashboard drops its receiver.
fn spawn_input_thread(sender: mpsc::Sender<Message>) {
    std::thread::spawn(move || {
        while !sender.is_closed() {
            let event = match event::poll(INPUT_POLL) {
                Ok(false) => continue,
                Ok(true) => event::read(),
                Err(error) => Err(error),
            };
            let message = match event {
                Ok(event) => Message::Input(event),
                Err(error) => Message::InputFailed(error.to_string()),
            };
            let failed = matches!(message, Message::InputFailed(_));
            if sender.blocking_send(message).is_err() || failed {
                return;
            }
        }
    });
}

// ---------------------------------------------------------------------------------
// The dashboard: state in, effects out, and how it looks

mod dashboard;
mod stage;

use dashboard::*;
