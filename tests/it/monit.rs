//! `fleet monit` end to end: the real dashboard in a detached tmux pane (a tmux server
//! of its own per test), driven with `send-keys` and read back with `capture-pane`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Starting the agent, the first list (polled once a second) and the first frames.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(15);
/// The pane's size: wide enough for every column, tall enough for the log pane.
const WIDTH: &str = "160";
const HEIGHT: &str = "48";

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// One detached tmux session running `fleet monit`, on a private tmux server that is
/// killed on drop, so a failing test leaves neither a server nor a dashboard behind.
pub(crate) struct Monit {
    socket: String,
    session: String,
    exit_file: PathBuf,
    /// The server's socket file, which tmux leaves behind when its server exits.
    socket_path: Option<PathBuf>,
}

impl Monit {
    fn start(fleet: &Fleet) -> Monit {
        Monit::start_with(fleet, &["monit"])
    }

    /// `fleet ARGS` in the pane, run in the fleet's work directory (its fleet.toml).
    pub(crate) fn start_with(fleet: &Fleet, args: &[&str]) -> Monit {
        let name = format!(
            "fleet-monit-{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::SeqCst)
        );
        let exit_file = fleet.path("monit.exit");
        let probe = fleet.command(args);
        let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
        let command = format!(
            "cd {} && env FLEET_HOME={} NO_COLOR=1 {} {}; echo $? > {}",
            quote(&fleet.work.path().display().to_string()),
            quote(&fleet.home.path().display().to_string()),
            quote(&probe.get_program().to_string_lossy()),
            args.join(" "),
            quote(&exit_file.display().to_string()),
        );
        let mut monit = Monit {
            socket: name.clone(),
            session: name,
            exit_file,
            socket_path: None,
        };
        let output = monit.tmux(&[
            "new-session",
            "-d",
            "-s",
            &monit.session,
            "-x",
            WIDTH,
            "-y",
            HEIGHT,
            &command,
        ]);
        assert!(
            output.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let output = monit.tmux(&["display-message", "-p", "#{socket_path}"]);
        let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
        monit.socket_path = Some(PathBuf::from(path)).filter(|p| p.is_absolute());
        monit
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            // A private server with no user configuration.
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux ({e})\nhint: apt-get install tmux"))
    }

    fn screen(&self) -> String {
        let output = self.tmux(&["capture-pane", "-p", "-t", &self.session]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let output = self.tmux(&["send-keys", "-t", &self.session, keys]);
        assert!(
            output.status.success(),
            "tmux send-keys {keys} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn running(&self) -> bool {
        self.tmux(&["has-session", "-t", &self.session])
            .status
            .success()
    }

    /// Polls the pane until `done` holds; on timeout fails with the last screen.
    pub(crate) fn wait_screen(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < until,
                "timed out after {SCREEN_TIMEOUT:?} waiting for {what}; the pane:\n{screen}"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends `q` and asserts the dashboard ended (the session closes with its
    /// command) with exit code 0.
    pub(crate) fn quit(&self) {
        self.keys("q");
        wait_until("monit to quit on q", SCREEN_TIMEOUT, || !self.running());
        let code = std::fs::read_to_string(&self.exit_file).unwrap_or_default();
        assert_eq!(code.trim(), "0", "fleet monit's exit code");
    }
}

impl Drop for Monit {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The process table's row of `name`: `│  <id>  <name> ...`, or `│> ...` when selected.
fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|line| {
        let mut words = line.trim_start_matches(['│', '>', ' ']).split_whitespace();
        words.next().is_some_and(|id| id.parse::<u32>().is_ok()) && words.next() == Some(name)
    })
}

#[test]
fn monit_draws_the_process_table_and_quits_on_q() {
    let fleet = Fleet::new();
    fleet.script("api.sh", SLEEPER);
    fleet.ok(&["start", "api.sh"]);

    let monit = Monit::start(&fleet);
    let screen = monit.wait_screen("api online in the table", |screen| {
        row(screen, "api").is_some_and(|row| row.contains("online"))
    });
    // The selected row is marked without colour, and the keys are explained.
    assert!(
        row(&screen, "api").is_some_and(|row| row.contains("> 0")),
        "{screen}"
    );
    assert!(screen.contains("q quit"), "{screen}");
    monit.quit();
    // Quitting leaves the app alone.
    assert_eq!(status_of(&fleet.list(), "api"), ["online"]);
}

#[test]
fn monit_keys_restart_and_stop_the_selected_app_and_its_log_is_shown() {
    let fleet = Fleet::new();
    fleet.script(
        "app.sh",
        "#!/bin/sh\necho \"hello from $(basename \"$0\")\"\nwhile true; do sleep 1; done\n",
    );
    fleet.ok(&["start", "app.sh", "--name", "api"]);
    fleet.ok(&["start", "app.sh", "--name", "worker"]);

    let monit = Monit::start(&fleet);
    monit.wait_screen("both apps online and api's log", |screen| {
        row(screen, "api").is_some_and(|row| row.contains("online"))
            && row(screen, "worker").is_some_and(|row| row.contains("online"))
            && screen.contains("hello from app.sh")
    });

    // `r` restarts the selected app (the first row) and only that one.
    monit.keys("r");
    let list = fleet.wait_list("api restarted once", SCREEN_TIMEOUT, |l| {
        by_name(l, "api")[0]["restarts"] == 1 && status_of(l, "api") == ["online"]
    });
    assert_eq!(by_name(&list, "worker")[0]["restarts"], 0);
    monit.wait_screen("the restart reported", |screen| {
        screen.contains("api restarted")
    });

    // `j` selects the next row; `s` stops it.
    monit.keys("j");
    monit.keys("s");
    let list = fleet.wait_list("worker stopped", SCREEN_TIMEOUT, |l| {
        status_of(l, "worker") == ["stopped"]
    });
    assert_eq!(status_of(&list, "api"), ["online"]);
    monit.wait_screen("worker stopped in the table", |screen| {
        row(screen, "worker").is_some_and(|row| row.contains("> 1") && row.contains("stopped"))
    });

    monit.quit();
}
