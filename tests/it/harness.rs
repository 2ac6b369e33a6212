//! The test harness: a private `FLEET_HOME` and work directory per test, the real
//! `fleet` binary (which starts the real `fleet-agent`), polling with deadlines
//! instead of sleeps, and cleanup that kills the agent and its apps on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// No CLI call in these tests should take longer; a hung call fails the test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The directory holding the workspace's binaries (`target/debug`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/it-<hash> -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for bin in ["fleet", "fleet-agent"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run `cargo build --workspace` before the tests",
            dir.join(bin).display()
        );
    }
    dir
}

pub struct Fleet {
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
    bin: PathBuf,
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet {
            home: tempfile::Builder::new()
                .prefix("fleet-home-")
                .tempdir()
                .unwrap(),
            work: tempfile::Builder::new()
                .prefix("fleet-work-")
                .tempdir()
                .unwrap(),
            bin: bin_dir(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin.join("fleet"));
        command
            .args(args)
            .current_dir(self.work.path())
            .env("FLEET_HOME", self.home.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        command
    }

    /// Runs `fleet` and returns its output, failing the test if it hangs.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(self.command(args))
    }

    pub fn run_with(&self, mut command: Command) -> Output {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fleet");
        wait_output(child, COMMAND_TIMEOUT)
    }

    /// Runs `fleet` and asserts it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "fleet {args:?} failed ({:?}):\nstdout: {}\nstderr: {}\nagent.log (end):\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            tail(&self.agent_log(), 40)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `fleet`, asserts the exit code, returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "fleet {args:?}:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    pub fn list(&self) -> Vec<Value> {
        let out = self.ok(&["list", "--json"]);
        match serde_json::from_str(&out) {
            Ok(Value::Array(items)) => items,
            other => panic!("list --json is not an array: {other:?}\n{out}"),
        }
    }

    pub fn describe(&self, target: &str) -> Vec<Value> {
        let out = self.ok(&["describe", target, "--json"]);
        match serde_json::from_str(&out) {
            Ok(Value::Array(items)) => items,
            other => panic!("describe --json is not an array: {other:?}\n{out}"),
        }
    }

    /// Polls `list --json` until `done` holds, failing after `timeout`.
    pub fn wait_list(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let until = Instant::now() + timeout;
        loop {
            let list = self.list();
            if done(&list) {
                return list;
            }
            assert!(
                Instant::now() < until,
                "timed out after {timeout:?} waiting for {what}; list: {list:#?}\nagent.log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Writes an executable file into the work directory.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    pub fn file(&self, name: &str, body: &str) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// The workspace's tiny HTTP server (`crates/testapp`).
    pub fn testapp(&self) -> PathBuf {
        let path = self.bin.join("fleet-testapp");
        assert!(
            path.is_file(),
            "{} is missing: run `cargo build --workspace`",
            path.display()
        );
        path
    }

    /// The agent's log, for failure messages.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("agent.log")).unwrap_or_default()
    }

    pub fn agent_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.home.path().join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // `fleet kill` stops every app and the agent; if that fails, SIGKILL the agent
        // and every app group it recorded, so no test leaves processes behind.
        let _ = self
            .command(&["kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|child| wait_output(child, Duration::from_secs(20)));
        // Pids are reused (pid_max is 32,768 on many machines, and the suite starts
        // tens of thousands of processes): a recorded pid is signalled only while it
        // still names the process recorded, or another test's process would die.
        if let Some(pid) = self.agent_pid()
            && !dead(pid)
            && agent_of(pid, self.home.path())
        {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        if let Ok(state) = std::fs::read_to_string(self.home.path().join("state.json"))
            && let Ok(value) = serde_json::from_str::<Value>(&state)
        {
            for process in value["processes"].as_array().into_iter().flatten() {
                if let Some(pid) = process["pid"].as_i64()
                    && process["start_ticks"].as_u64().is_some()
                    && start_ticks(pid as i32) == process["start_ticks"].as_u64()
                {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` is the agent of `home` (started with `--home HOME`), not a process
/// that was given its pid after it ended.
fn agent_of(pid: i32, home: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let home = home.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == home)
}

/// The start time of `pid` in clock ticks after boot (`/proc/PID/stat`'s 22nd field),
/// what the agent records beside each pid.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let until = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("wait for fleet") {
            Some(_) => return child.wait_with_output().expect("read fleet output"),
            None if Instant::now() >= until => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("read fleet output");
                panic!(
                    "fleet did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

pub fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// Whether a process exists (zombies count; see `is_zombie`).
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// Gone or only a zombie waiting for its new parent to reap it.
pub fn dead(pid: i32) -> bool {
    !alive(pid) || is_zombie(pid)
}

/// Polls `cond` until it holds, failing after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_until_or(what, timeout, cond, String::new)
}

/// `wait_until`, with what `context` says then in the failure (a log, a state).
pub fn wait_until_or(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let until = Instant::now() + timeout;
    let mut context = Some(context);
    while !cond() {
        if Instant::now() >= until {
            let context = context.take().map(|c| c()).unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}\n{context}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Reads a file the app writes, once it has at least `lines` lines.
pub fn wait_lines(path: &Path, lines: usize, timeout: Duration) -> Vec<String> {
    let mut content = Vec::new();
    wait_until(
        &format!("{lines} lines in {}", path.display()),
        timeout,
        || {
            content = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            content.len() >= lines
        },
    );
    content
}

pub fn by_name<'a>(list: &'a [Value], name: &str) -> Vec<&'a Value> {
    list.iter().filter(|p| p["name"] == name).collect()
}

pub fn status_of(list: &[Value], name: &str) -> Vec<String> {
    by_name(list, name)
        .iter()
        .map(|p| p["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn all_status(list: &[Value], status: &str) -> bool {
    !list.is_empty() && list.iter().all(|p| p["status"] == status)
}

/// A long-running app: a shell script that waits for signals.
pub const SLEEPER: &str = "#!/bin/sh\nwhile true; do sleep 1; done\n";

/// A free TCP port on loopback for an app to bind (the kernel's pick; closed again
/// at once). Tests only ever talk to loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs git in `dir` as a test user (no signing), failing the test when git fails.
pub fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args(["-c", "user.name=fleet test", "-c", "user.email=test@fleet"])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
