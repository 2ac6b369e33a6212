//! The dashboard's synchronous core: the process table with CPU and memory
//! history, the followed log pane and the status line. `Dashboard` takes messages and
//! returns effects; it never does I/O, so it is tested without a terminal. Also how
//! it is drawn (ratatui).

use super::*;

#[derive(Default)]
pub(super) struct History {
    /// Tenths of a percent, as the sparkline wants integers.
    pub(super) cpu: VecDeque<u64>,
    pub(super) memory: VecDeque<u64>,
}

impl History {
    pub(super) fn push(&mut self, process: &pb::ProcessInfo) {
        push_capped(
            &mut self.cpu,
            (process.cpu_percent * 10.0).round().max(0.0) as u64,
            HISTORY_SAMPLES,
        );
        push_capped(&mut self.memory, process.memory_bytes, HISTORY_SAMPLES);
    }
}

pub(super) fn push_capped<T>(queue: &mut VecDeque<T>, item: T, cap: usize) {
    queue.push_back(item);
    while queue.len() > cap {
        queue.pop_front();
    }
}

pub(super) struct LogLine {
    pub(super) stream: pb::LogStream,
    pub(super) text: String,
    pub(super) notice: bool,
}

#[derive(Default)]
pub(super) struct LogPane {
    /// The stream this pane shows; messages of other generations are stale.
    pub(super) generation: u64,
    pub(super) lines: VecDeque<LogLine>,
    /// Lines between the bottom of the view and the newest line; 0 follows.
    pub(super) scroll_back: usize,
    pub(super) unavailable: Option<String>,
    /// Rows of the last drawn pane, for paging.
    pub(super) page: usize,
}

impl LogPane {
    pub(super) fn max_scroll(&self) -> usize {
        self.lines.len().saturating_sub(self.page.max(1))
    }

    pub(super) fn push(&mut self, line: LogLine) {
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

pub(super) struct Status {
    pub(super) text: String,
    /// `None` while the action runs.
    pub(super) until: Option<Instant>,
}

pub(super) struct Dashboard {
    pub(super) processes: Vec<pb::ProcessInfo>,
    /// The selected instance's id: a selection follows its instance as the list changes.
    pub(super) selected: Option<u32>,
    pub(super) table: TableState,
    pub(super) history: HashMap<u32, History>,
    pub(super) list_error: Option<String>,
    pub(super) log: LogPane,
    pub(super) status: Option<Status>,
    pub(super) colour: bool,
    /// `fleet monit <stage>`: instances of several hosts (a host column), and the hosts
    /// that could not be reached, each with why.
    pub(super) stage: Option<String>,
    pub(super) unreachable: Vec<String>,
}

impl Dashboard {
    pub(super) fn new(colour: bool) -> Dashboard {
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
            stage: None,
            unreachable: Vec::new(),
        }
    }

    /// A dashboard of a stage's hosts.
    pub(super) fn of_stage(colour: bool, stage: &str) -> Dashboard {
        Dashboard {
            stage: Some(stage.to_owned()),
            ..Dashboard::new(colour)
        }
    }

    pub(super) fn selected_index(&self) -> Option<usize> {
        let id = self.selected?;
        self.processes.iter().position(|p| p.id == id)
    }

    pub(super) fn selected_process(&self) -> Option<&pb::ProcessInfo> {
        self.selected_index().map(|index| &self.processes[index])
    }

    pub(super) fn handle(&mut self, message: Message, now: Instant) -> Vec<Effect> {
        match message {
            Message::List(Ok(processes)) => self.update_list(processes),
            Message::List(Err(status)) => {
                self.list_error = Some(format!("cannot list: {}", status_text(&status)));
                Vec::new()
            }
            Message::Unreachable(hosts) => {
                self.unreachable = hosts;
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

    pub(super) fn update_list(&mut self, processes: Vec<pb::ProcessInfo>) -> Vec<Effect> {
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

    pub(super) fn select(&mut self, id: Option<u32>) -> Vec<Effect> {
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
    pub(super) fn log_target(&self, process: &pb::ProcessInfo) -> String {
        let id = process.id.to_string();
        // A stage's ids are the dashboard's own: the app's name selects on the host.
        if self.stage.is_some()
            || self
                .processes
                .iter()
                .any(|p| p.name == id || p.namespace == id)
        {
            process.name.clone()
        } else {
            id
        }
    }

    pub(super) fn log_event(&mut self, event: LogEvent) {
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
                    text: crate::output::printable(if notice {
                        &entry.notice
                    } else {
                        &entry.line
                    }),
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

    pub(super) fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
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
            KeyCode::Char('r') => {
                self.action("restarting", |id, name| Effect::Restart { id, name })
            }
            KeyCode::Char('s') => self.action("stopping", |id, name| Effect::Stop { id, name }),
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

    pub(super) fn move_selection(&mut self, step: isize) -> Vec<Effect> {
        if self.processes.is_empty() {
            return Vec::new();
        }
        let index = self
            .selected_index()
            .map_or(0, |index| index.saturating_add_signed(step))
            .min(self.processes.len() - 1);
        self.select(Some(self.processes[index].id))
    }

    pub(super) fn action(&mut self, doing: &str, effect: fn(u32, String) -> Effect) -> Vec<Effect> {
        let Some((id, name)) = self.selected_process().map(|p| (p.id, p.name.clone())) else {
            self.status = Some(Status {
                text: "no app is selected".into(),
                until: Some(Instant::now() + STATUS_TTL),
            });
            return Vec::new();
        };
        let on = match (&self.stage, self.selected_process()) {
            (Some(_), Some(p)) => format!(" on {}", p.host),
            _ => String::new(),
        };
        self.status = Some(Status {
            text: format!("{doing} {name}{on}…"),
            until: None,
        });
        vec![effect(id, name)]
    }

    // -- drawing --

    /// How an instance is named in titles: `api #3` here, `api#1 on web1` on a stage.
    pub(super) fn label(&self, p: &pb::ProcessInfo) -> String {
        match self.stage {
            Some(_) => format!("{}#{} on {}", p.name, p.instance, p.host),
            None => format!("{} #{}", p.name, p.id),
        }
    }

    pub(super) fn style(&self, colour: Color) -> Style {
        if self.colour {
            Style::new().fg(colour)
        } else {
            Style::new()
        }
    }

    pub(super) fn render(&mut self, frame: &mut Frame<'_>, now: Instant) {
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

    pub(super) fn render_table(&mut self, frame: &mut Frame<'_>, area: Rect) {
        // A stage's table names each instance's host instead of the agent's id.
        let first = if self.stage.is_some() { "host" } else { "id" };
        let header = Row::new([first, "name", "namespace", "status", "↺", "cpu", "mem"])
            .style(Style::new().add_modifier(Modifier::BOLD));
        let mut rows: Vec<Row<'_>> = self
            .processes
            .iter()
            .map(|p| {
                let status = output::status_name(p.status);
                let first = match self.stage {
                    Some(_) => p.host.clone(),
                    None => p.id.to_string(),
                };
                Row::new([
                    Cell::from(first),
                    Cell::from(p.name.clone()),
                    Cell::from(p.namespace.clone()),
                    Cell::from(status).style(self.style(status_colour(p.status))),
                    Cell::from(p.restarts.to_string()),
                    Cell::from(format!("{:.1}%", p.cpu_percent)),
                    Cell::from(output::bytes(p.memory_bytes)),
                ])
            })
            .collect();
        // Hosts out of reach come last, marked, never selectable.
        for entry in &self.unreachable {
            let (host, why) = entry.split_once(": ").unwrap_or((entry, ""));
            rows.push(Row::new([
                Cell::from(host.to_owned()),
                Cell::from(why.to_owned()).style(self.style(Color::Red)),
                Cell::from(""),
                Cell::from("unreachable").style(self.style(Color::Red)),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
            ]));
        }
        let scope = match &self.stage {
            Some(stage) => format!("{stage}: "),
            None => String::new(),
        };
        let mut title = match self.processes.len() {
            0 => format!(" fleet monit {scope}no app is running "),
            1 => format!(" fleet monit {scope}1 instance "),
            n => format!(" fleet monit {scope}{n} instances "),
        };
        if !self.unreachable.is_empty() {
            title.push_str(&format!("· {} unreachable ", self.unreachable.len()));
        }
        // Reverse video is an attribute, not a colour; the `>` marks the row anyway.
        let highlight = if self.colour {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        let widths = [
            Constraint::Length(if self.stage.is_some() { 14 } else { 4 }),
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

    pub(super) fn render_charts(&self, frame: &mut Frame<'_>, cpu: Rect, memory: Rect) {
        let selected = self.selected_process();
        let history = selected.and_then(|p| self.history.get(&p.id));
        let label = selected.map_or(String::new(), |p| self.label(p));
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

    pub(super) fn render_logs(&mut self, frame: &mut Frame<'_>, area: Rect) {
        let rows = usize::from(area.height.saturating_sub(2));
        self.log.page = rows;
        self.log.scroll_back = self.log.scroll_back.min(self.log.max_scroll());
        let mut title = match self.selected_process() {
            Some(p) => format!(" logs: {} ", self.label(p)),
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

    pub(super) fn log_line<'a>(&self, line: &'a LogLine) -> Line<'a> {
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

    pub(super) fn render_status(&self, frame: &mut Frame<'_>, area: Rect, now: Instant) {
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

pub(super) fn status_colour(status: i32) -> Color {
    match pb::ProcessStatus::try_from(status).unwrap_or(pb::ProcessStatus::Unspecified) {
        pb::ProcessStatus::Online => Color::Green,
        pb::ProcessStatus::Errored => Color::Red,
        pb::ProcessStatus::Launching
        | pb::ProcessStatus::Stopping
        | pb::ProcessStatus::WaitingRestart => Color::Yellow,
        pb::ProcessStatus::Stopped | pb::ProcessStatus::Unspecified => Color::DarkGray,
    }
}

#[cfg(test)]
mod tests;
