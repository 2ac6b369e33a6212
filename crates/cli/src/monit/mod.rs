//! `fleet monit`: the live terminal dashboard (ratatui over crossterm). Owns the
//! terminal while it runs (alternate screen and raw mode, restored on exit, on error
//! and on panic) and the dashboard's state; the data comes from the agent, polled
//! through `List` and streamed through `Logs`.
//!
//! One task per source (list poller, log stream, a thread reading keys) feeds one
//! channel; `Dashboard` is the synchronous core that turns those messages into state
//! and effects (follow another log, restart, stop, quit), and the loop around it does
//! the I/O and draws.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IsTerminal, Stdout};
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let result = dashboard_loop(&mut screen.terminal, client, colour).await;
    // Restore before main prints any error, so the message lands on the normal screen.
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
    Restart(String),
    Stop(String),
}

struct Shell {
    client: Client,
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
                        self.log_task = Some(tokio::spawn(follow_logs(
                            self.client.clone(),
                            self.sender.clone(),
                            generation,
                            id,
                            target,
                        )));
                    }
                }
                Effect::Restart(name) => {
                    let mut client = self.client.clone();
                    let sender = self.sender.clone();
                    tokio::spawn(async move {
                        let result = client
                            .restart(pb::RestartRequest {
                                targets: vec![name.clone()],
                                ..Default::default()
                            })
                            .await;
                        let text = action_result(&name, "restarted", "restart", result);
                        let _ = sender.send(Message::ActionDone(text)).await;
                    });
                }
                Effect::Stop(name) => {
                    let mut client = self.client.clone();
                    let sender = self.sender.clone();
                    tokio::spawn(async move {
                        let result = client
                            .stop(pb::TargetRequest {
                                targets: vec![name.clone()],
                            })
                            .await;
                        let text = action_result(&name, "stopped", "stop", result);
                        let _ = sender.send(Message::ActionDone(text)).await;
                    });
                }
            }
        }
        None
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
    client: Client,
    colour: bool,
) -> Result<(), Failure> {
    let (sender, mut receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let poller = tokio::spawn(poll_list(client.clone(), sender.clone()));
    spawn_input_thread(sender.clone());
    let signals = tokio::spawn(wait_for_signal(sender.clone()));
    let mut shell = Shell {
        client,
        sender,
        log_task: None,
    };
    let mut dashboard = Dashboard::new(colour);
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

#[derive(Default)]
struct History {
    /// Tenths of a percent, as the sparkline wants integers.
    cpu: VecDeque<u64>,
    memory: VecDeque<u64>,
}

impl History {
    fn push(&mut self, process: &pb::ProcessInfo) {
        push_capped(
            &mut self.cpu,
            (process.cpu_percent * 10.0).round().max(0.0) as u64,
            HISTORY_SAMPLES,
        );
        push_capped(&mut self.memory, process.memory_bytes, HISTORY_SAMPLES);
    }
}

fn push_capped<T>(queue: &mut VecDeque<T>, item: T, cap: usize) {
    queue.push_back(item);
    while queue.len() > cap {
        queue.pop_front();
    }
}

struct LogLine {
    stream: pb::LogStream,
    text: String,
    notice: bool,
}

#[derive(Default)]
struct LogPane {
    /// The stream this pane shows; messages of other generations are stale.
    generation: u64,
    lines: VecDeque<LogLine>,
    /// Lines between the bottom of the view and the newest line; 0 follows.
    scroll_back: usize,
    unavailable: Option<String>,
    /// Rows of the last drawn pane, for paging.
    page: usize,
}

impl LogPane {
    fn max_scroll(&self) -> usize {
        self.lines.len().saturating_sub(self.page.max(1))
    }

    fn push(&mut self, line: LogLine) {
        self.lines.push_back(line);
        if self.lines.len() > LOG_LINES_KEPT {
            self.lines.pop_front();
        }
        // Scrolled up, the view stays on the lines the user is reading.
        if self.scroll_back > 0 {
            self.scroll_back = (self.scroll_back + 1).min(self.max_scroll());
        }
    }
}

struct Status {
    text: String,
    /// `None` while the action runs.
    until: Option<Instant>,
}

struct Dashboard {
    processes: Vec<pb::ProcessInfo>,
    /// The selected instance's id: a selection follows its instance as the list changes.
    selected: Option<u32>,
    table: TableState,
    history: HashMap<u32, History>,
    list_error: Option<String>,
    log: LogPane,
    status: Option<Status>,
    colour: bool,
}

impl Dashboard {
    fn new(colour: bool) -> Dashboard {
        Dashboard {
            processes: Vec::new(),
            selected: None,
            table: TableState::default(),
            history: HashMap::new(),
            list_error: None,
            log: LogPane {
                page: 10,
                ..LogPane::default()
            },
            status: None,
            colour,
        }
    }

    fn selected_index(&self) -> Option<usize> {
        let id = self.selected?;
        self.processes.iter().position(|p| p.id == id)
    }

    fn selected_process(&self) -> Option<&pb::ProcessInfo> {
        self.selected_index().map(|index| &self.processes[index])
    }

    fn handle(&mut self, message: Message, now: Instant) -> Vec<Effect> {
        match message {
            Message::List(Ok(processes)) => self.update_list(processes),
            Message::List(Err(status)) => {
                self.list_error = Some(format!("cannot list: {}", status_text(&status)));
                Vec::new()
            }
            Message::Log { generation, event } => {
                if generation == self.log.generation {
                    self.log_event(event);
                }
                Vec::new()
            }
            Message::Input(Event::Key(key)) => self.key(key),
            Message::Input(_) => Vec::new(),
            Message::InputFailed(error) => vec![Effect::Fail(format!("cannot read keys: {error}"))],
            Message::Signal => vec![Effect::Quit],
            Message::ActionDone(text) => {
                self.status = Some(Status {
                    text,
                    until: Some(now + STATUS_TTL),
                });
                Vec::new()
            }
        }
    }

    fn update_list(&mut self, processes: Vec<pb::ProcessInfo>) -> Vec<Effect> {
        self.list_error = None;
        let old_index = self.selected_index().unwrap_or(0);
        for process in &processes {
            self.history.entry(process.id).or_default().push(process);
        }
        self.history
            .retain(|id, _| processes.iter().any(|p| p.id == *id));
        self.processes = processes;
        if self.selected_index().is_some() {
            return Vec::new();
        }
        // The selected instance is gone (or nothing was selected): take its row's place.
        let index = old_index.min(self.processes.len().saturating_sub(1));
        self.select(self.processes.get(index).map(|p| p.id))
    }

    fn select(&mut self, id: Option<u32>) -> Vec<Effect> {
        if id == self.selected && self.log.generation > 0 {
            return Vec::new();
        }
        self.selected = id;
        self.log = LogPane {
            generation: self.log.generation + 1,
            page: self.log.page,
            ..LogPane::default()
        };
        let follow = self.selected_process().map(|p| (p.id, self.log_target(p)));
        vec![Effect::FollowLogs {
            generation: self.log.generation,
            follow,
        }]
    }

    /// A numeric target is a name first, then a namespace, then an id: the id selects
    /// one instance unless an app or namespace is called that, then the app's name does
    /// (and the log task keeps only this instance's lines).
    fn log_target(&self, process: &pb::ProcessInfo) -> String {
        let id = process.id.to_string();
        if self
            .processes
            .iter()
            .any(|p| p.name == id || p.namespace == id)
        {
            process.name.clone()
        } else {
            id
        }
    }

    fn log_event(&mut self, event: LogEvent) {
        match event {
            LogEvent::Connected => {
                // A new stream starts with its history again: replace, don't repeat.
                self.log.lines.clear();
                self.log.scroll_back = 0;
                self.log.unavailable = None;
            }
            LogEvent::Entry(entry) => {
                let notice = !entry.notice.is_empty();
                self.log.push(LogLine {
                    stream: pb::LogStream::try_from(entry.stream)
                        .unwrap_or(pb::LogStream::Unspecified),
                    text: printable(if notice { &entry.notice } else { &entry.line }),
                    notice,
                });
            }
            LogEvent::Ended => self.log.push(LogLine {
                stream: pb::LogStream::Unspecified,
                text: "the log stream ended; reconnecting".into(),
                notice: true,
            }),
            LogEvent::Unavailable(message) => self.log.unavailable = Some(message),
        }
    }

    fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.kind != KeyEventKind::Press {
            return Vec::new();
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => vec![Effect::Quit],
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                vec![Effect::Quit]
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Char('r') => self.action("restarting", Effect::Restart),
            KeyCode::Char('s') => self.action("stopping", Effect::Stop),
            KeyCode::PageUp => {
                self.log.scroll_back =
                    (self.log.scroll_back + self.log.page.max(1)).min(self.log.max_scroll());
                Vec::new()
            }
            KeyCode::PageDown => {
                self.log.scroll_back = self.log.scroll_back.saturating_sub(self.log.page.max(1));
                Vec::new()
            }
            KeyCode::Home => {
                self.log.scroll_back = self.log.max_scroll();
                Vec::new()
            }
            KeyCode::End => {
                self.log.scroll_back = 0;
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn move_selection(&mut self, step: isize) -> Vec<Effect> {
        if self.processes.is_empty() {
            return Vec::new();
        }
        let index = self
            .selected_index()
            .map_or(0, |index| index.saturating_add_signed(step))
            .min(self.processes.len() - 1);
        self.select(Some(self.processes[index].id))
    }

    fn action(&mut self, doing: &str, effect: fn(String) -> Effect) -> Vec<Effect> {
        let Some(name) = self.selected_process().map(|p| p.name.clone()) else {
            self.status = Some(Status {
                text: "no app is selected".into(),
                until: Some(Instant::now() + STATUS_TTL),
            });
            return Vec::new();
        };
        self.status = Some(Status {
            text: format!("{doing} {name}…"),
            until: None,
        });
        vec![effect(name)]
    }

    // -- drawing --

    fn style(&self, colour: Color) -> Style {
        if self.colour {
            Style::new().fg(colour)
        } else {
            Style::new()
        }
    }

    fn render(&mut self, frame: &mut Frame<'_>, now: Instant) {
        let area = frame.area();
        let rows = u16::try_from(self.processes.len().max(1))
            .unwrap_or(u16::MAX)
            .saturating_add(TABLE_CHROME_ROWS);
        let top_height = rows.clamp(TOP_MIN_ROWS, (area.height / 2).max(TOP_MIN_ROWS));
        let [top, logs, status, help] = Layout::vertical([
            Constraint::Length(top_height),
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(area);
        // The table takes about 60% of the width, but never less than its columns need.
        let share = u32::from(top.width) * u32::from(TABLE_WIDTH_PERCENT) / 100;
        let table_width = u16::try_from(share)
            .unwrap_or(top.width)
            .max(TABLE_MIN_WIDTH.min(top.width));
        let [table, charts] =
            Layout::horizontal([Constraint::Length(table_width), Constraint::Fill(1)]).areas(top);
        let [cpu, memory] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(charts);
        self.render_table(frame, table);
        self.render_charts(frame, cpu, memory);
        self.render_logs(frame, logs);
        self.render_status(frame, status, now);
        frame.render_widget(
            Paragraph::new(KEY_HELP).style(self.style(Color::DarkGray)),
            help,
        );
    }

    fn render_table(&mut self, frame: &mut Frame<'_>, area: Rect) {
        let header = Row::new(["id", "name", "namespace", "status", "↺", "cpu", "mem"])
            .style(Style::new().add_modifier(Modifier::BOLD));
        let rows: Vec<Row<'_>> = self
            .processes
            .iter()
            .map(|p| {
                let status = output::status_name(p.status);
                Row::new([
                    Cell::from(p.id.to_string()),
                    Cell::from(p.name.clone()),
                    Cell::from(p.namespace.clone()),
                    Cell::from(status).style(self.style(status_colour(p.status))),
                    Cell::from(p.restarts.to_string()),
                    Cell::from(format!("{:.1}%", p.cpu_percent)),
                    Cell::from(output::bytes(p.memory_bytes)),
                ])
            })
            .collect();
        let title = match self.processes.len() {
            0 => " fleet monit: no app is running ".to_string(),
            1 => " fleet monit: 1 instance ".to_string(),
            n => format!(" fleet monit: {n} instances "),
        };
        // Reverse video is an attribute, not a colour; the `>` marks the row anyway.
        let highlight = if self.colour {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        let widths = [
            Constraint::Length(4),
            Constraint::Fill(2),
            Constraint::Fill(1),
            Constraint::Length(15), // "waiting-restart"
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(9),
        ];
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::new().borders(Borders::ALL).title(title))
            .row_highlight_style(highlight)
            .highlight_symbol("> ")
            .highlight_spacing(HighlightSpacing::Always);
        self.table.select(self.selected_index());
        frame.render_stateful_widget(table, area, &mut self.table);
    }

    fn render_charts(&self, frame: &mut Frame<'_>, cpu: Rect, memory: Rect) {
        let selected = self.selected_process();
        let history = selected.and_then(|p| self.history.get(&p.id));
        let label = selected.map_or(String::new(), |p| format!("{} #{}", p.name, p.id));
        let last = |area: Rect, samples: Option<&VecDeque<u64>>| -> Vec<u64> {
            let width = usize::from(area.width.saturating_sub(2));
            samples.map_or(Vec::new(), |samples| {
                samples
                    .iter()
                    .skip(samples.len().saturating_sub(width))
                    .copied()
                    .collect()
            })
        };

        let cpu_samples = last(cpu, history.map(|h| &h.cpu));
        let cpu_peak = history
            .and_then(|h| h.cpu.iter().max().copied())
            .unwrap_or(0);
        let cpu_title = match selected {
            Some(p) => format!(
                " cpu {:.1}% (peak {:.1}%) · {label} ",
                p.cpu_percent,
                cpu_peak as f64 / 10.0
            ),
            None => " cpu ".to_string(),
        };
        frame.render_widget(
            Sparkline::default()
                .block(Block::new().borders(Borders::ALL).title(cpu_title))
                .data(&cpu_samples)
                .max(cpu_peak.max(CPU_SCALE_FLOOR))
                .style(self.style(Color::Cyan)),
            cpu,
        );

        let memory_samples = last(memory, history.map(|h| &h.memory));
        let memory_peak = history
            .and_then(|h| h.memory.iter().max().copied())
            .unwrap_or(0);
        let memory_title = match selected {
            Some(p) => format!(
                " mem {} (peak {}) · {label} ",
                output::bytes(p.memory_bytes),
                output::bytes(memory_peak)
            ),
            None => " mem ".to_string(),
        };
        frame.render_widget(
            Sparkline::default()
                .block(Block::new().borders(Borders::ALL).title(memory_title))
                .data(&memory_samples)
                .max(memory_peak.max(1))
                .style(self.style(Color::Magenta)),
            memory,
        );
    }

    fn render_logs(&mut self, frame: &mut Frame<'_>, area: Rect) {
        let rows = usize::from(area.height.saturating_sub(2));
        self.log.page = rows;
        self.log.scroll_back = self.log.scroll_back.min(self.log.max_scroll());
        let mut title = match self.selected_process() {
            Some(p) => format!(" logs: {} #{} ", p.name, p.id),
            None => " logs ".to_string(),
        };
        if self.log.scroll_back > 0 {
            title.push_str(&format!(
                "· {} lines up, End to follow ",
                self.log.scroll_back
            ));
        }

        let mut lines: Vec<Line<'_>> = Vec::new();
        if let Some(message) = &self.log.unavailable {
            lines.push(Line::styled(
                format!("logs unavailable: {message}"),
                self.style(Color::Yellow),
            ));
        } else if self.log.lines.is_empty() && self.selected.is_some() {
            lines.push(Line::styled(
                "no log lines yet",
                self.style(Color::DarkGray),
            ));
        }
        let room = rows.saturating_sub(lines.len());
        let end = self.log.lines.len() - self.log.scroll_back;
        let start = end.saturating_sub(room);
        let shown: Vec<Line<'_>> = self
            .log
            .lines
            .range(start..end)
            .map(|line| self.log_line(line))
            .collect();
        // The note about the stream goes under the newest lines, where the eye is.
        lines.splice(0..0, shown);

        frame.render_widget(
            Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title(title)),
            area,
        );
    }

    fn log_line<'a>(&self, line: &'a LogLine) -> Line<'a> {
        if line.notice {
            return Line::styled(
                format!("-- {}", line.text),
                self.style(Color::Yellow).add_modifier(Modifier::ITALIC),
            );
        }
        // The stream is written out: red alone would not tell stderr apart.
        let (tag, style) = match line.stream {
            pb::LogStream::Err => ("err │ ", self.style(Color::Red)),
            _ => ("out │ ", Style::new()),
        };
        Line::from(vec![
            Span::styled(tag, self.style(Color::DarkGray)),
            Span::styled(line.text.as_str(), style),
        ])
    }

    fn render_status(&self, frame: &mut Frame<'_>, area: Rect, now: Instant) {
        let mut parts = Vec::new();
        if let Some(status) = &self.status
            && status.until.is_none_or(|until| now < until)
        {
            parts.push(Span::raw(status.text.clone()));
        }
        if let Some(error) = &self.list_error {
            parts.push(Span::styled(error.clone(), self.style(Color::Red)));
        }
        let mut line = Vec::new();
        for (index, part) in parts.into_iter().enumerate() {
            if index > 0 {
                line.push(Span::raw(" · "));
            }
            line.push(part);
        }
        frame.render_widget(Paragraph::new(Line::from(line)), area);
    }
}

fn status_colour(status: i32) -> Color {
    match pb::ProcessStatus::try_from(status).unwrap_or(pb::ProcessStatus::Unspecified) {
        pb::ProcessStatus::Online => Color::Green,
        pb::ProcessStatus::Errored => Color::Red,
        pb::ProcessStatus::Launching
        | pb::ProcessStatus::Stopping
        | pb::ProcessStatus::WaitingRestart => Color::Yellow,
        pb::ProcessStatus::Stopped | pb::ProcessStatus::Unspecified => Color::DarkGray,
    }
}

/// An app's bytes must not drive the terminal: tabs become spaces and other control
/// characters a visible replacement.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("    "),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn process(id: u32, name: &str, status: pb::ProcessStatus) -> pb::ProcessInfo {
        pb::ProcessInfo {
            id,
            name: name.into(),
            namespace: "default".into(),
            status: status as i32,
            cpu_percent: 1.5,
            memory_bytes: 3 * 1024 * 1024,
            ..Default::default()
        }
    }

    fn key(code: KeyCode) -> Message {
        Message::Input(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)))
    }

    fn entry(id: u32, line: &str) -> LogEvent {
        LogEvent::Entry(pb::LogEntry {
            id,
            line: line.into(),
            stream: pb::LogStream::Out as i32,
            ..Default::default()
        })
    }

    fn screen(dashboard: &mut Dashboard) -> String {
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal
            .draw(|frame| dashboard.render(frame, Instant::now()))
            .unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn first_list_selects_the_first_instance_and_follows_its_log() {
        let mut dashboard = Dashboard::new(false);
        let effects = dashboard.handle(
            Message::List(Ok(vec![
                process(0, "api", pb::ProcessStatus::Online),
                process(1, "worker", pb::ProcessStatus::Online),
            ])),
            Instant::now(),
        );
        assert_eq!(
            effects,
            vec![Effect::FollowLogs {
                generation: 1,
                follow: Some((0, "0".into()))
            }]
        );
        let effects = dashboard.handle(key(KeyCode::Char('j')), Instant::now());
        assert_eq!(
            effects,
            vec![Effect::FollowLogs {
                generation: 2,
                follow: Some((1, "1".into()))
            }]
        );
        assert_eq!(
            dashboard.handle(key(KeyCode::Char('r')), Instant::now()),
            vec![Effect::Restart("worker".into())]
        );
        assert_eq!(
            dashboard.handle(key(KeyCode::Char('q')), Instant::now()),
            vec![Effect::Quit]
        );
    }

    #[test]
    fn selection_follows_its_instance_and_moves_on_when_it_is_gone() {
        let mut dashboard = Dashboard::new(false);
        let list = vec![
            process(0, "api", pb::ProcessStatus::Online),
            process(1, "worker", pb::ProcessStatus::Online),
            process(2, "cron", pb::ProcessStatus::Online),
        ];
        dashboard.handle(Message::List(Ok(list.clone())), Instant::now());
        dashboard.handle(key(KeyCode::Down), Instant::now());
        assert_eq!(dashboard.selected, Some(1));
        // The same list again changes nothing.
        assert!(
            dashboard
                .handle(Message::List(Ok(list.clone())), Instant::now())
                .is_empty()
        );
        // Instance 1 deleted: its row goes to instance 2.
        let effects = dashboard.handle(
            Message::List(Ok(vec![list[0].clone(), list[2].clone()])),
            Instant::now(),
        );
        assert_eq!(dashboard.selected, Some(2));
        assert!(matches!(
            effects.as_slice(),
            [Effect::FollowLogs {
                follow: Some((2, _)),
                ..
            }]
        ));
        assert!(!dashboard.history.contains_key(&1));
    }

    #[test]
    fn a_numeric_app_name_makes_the_log_target_the_name() {
        let mut dashboard = Dashboard::new(false);
        let effects = dashboard.handle(
            Message::List(Ok(vec![
                process(0, "api", pb::ProcessStatus::Online),
                process(1, "0", pb::ProcessStatus::Online),
            ])),
            Instant::now(),
        );
        assert!(matches!(
            effects.as_slice(),
            [Effect::FollowLogs { follow: Some((0, target)), .. }] if target == "api"
        ));
    }

    #[test]
    fn log_keeps_a_bounded_scrollback_and_ignores_stale_streams() {
        let mut dashboard = Dashboard::new(false);
        dashboard.handle(
            Message::List(Ok(vec![process(0, "api", pb::ProcessStatus::Online)])),
            Instant::now(),
        );
        let generation = dashboard.log.generation;
        for n in 0..LOG_LINES_KEPT + 50 {
            dashboard.handle(
                Message::Log {
                    generation,
                    event: entry(0, &format!("line {n}")),
                },
                Instant::now(),
            );
        }
        dashboard.handle(
            Message::Log {
                generation: generation - 1,
                event: entry(0, "stale"),
            },
            Instant::now(),
        );
        assert_eq!(dashboard.log.lines.len(), LOG_LINES_KEPT);
        assert_eq!(dashboard.log.lines.front().unwrap().text, "line 50");
        assert!(dashboard.log.lines.iter().all(|l| l.text != "stale"));

        dashboard.log.page = 10;
        dashboard.handle(key(KeyCode::PageUp), Instant::now());
        assert_eq!(dashboard.log.scroll_back, 10);
        // New lines do not move a scrolled view.
        dashboard.handle(
            Message::Log {
                generation,
                event: entry(0, "newer"),
            },
            Instant::now(),
        );
        assert_eq!(dashboard.log.scroll_back, 11);
        dashboard.handle(key(KeyCode::End), Instant::now());
        assert_eq!(dashboard.log.scroll_back, 0);
    }

    #[test]
    fn draws_status_as_text_and_marks_the_selected_row_without_colour() {
        let mut dashboard = Dashboard::new(false);
        dashboard.handle(
            Message::List(Ok(vec![
                process(0, "api", pb::ProcessStatus::Online),
                process(1, "worker", pb::ProcessStatus::Errored),
            ])),
            Instant::now(),
        );
        let generation = dashboard.log.generation;
        dashboard.handle(
            Message::Log {
                generation,
                event: LogEvent::Unavailable("logs: not yet".into()),
            },
            Instant::now(),
        );
        let text = screen(&mut dashboard);
        assert!(text.contains("> 0"), "{text}");
        assert!(text.contains("online"), "{text}");
        assert!(text.contains("errored"), "{text}");
        assert!(text.contains("logs unavailable: logs: not yet"), "{text}");
        assert!(text.contains("q quit"), "{text}");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(printable("a\tb\x1b[2Jc"), "a    b\u{fffd}[2Jc");
    }
}
