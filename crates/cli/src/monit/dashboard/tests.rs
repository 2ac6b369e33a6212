//! Tests of `monit`.

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
        vec![Effect::Restart {
            id: 1,
            name: "worker".into()
        }]
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
    assert_eq!(
        crate::output::printable("a\tb\x1b[2Jc"),
        "a    b\u{fffd}[2Jc"
    );
}
