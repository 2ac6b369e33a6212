//! A headless Chromium driven over the DevTools protocol, for the dashboard's tests and
//! benchmark. The protocol runs over `--remote-debugging-pipe` (JSON messages ended by
//! a NUL byte, commands on the browser's fd 3 and answers on its fd 4), so no port is
//! opened and no WebSocket client is needed: the few commands used here (`Target`,
//! `Page.navigate`, `Runtime.evaluate`, `Page.captureScreenshot`) are plain JSON.
//! Chromium is Debian's `chromium` package; `Browser::find` says where it is, if
//! anywhere. The browser and its profile directory go when the `Browser` is dropped.

#![allow(unsafe_code)] // `pre_exec` is unsafe: the closure runs between fork and exec.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// How long one protocol command may take (a navigation under load included).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

pub struct Browser {
    child: Child,
    commands: File,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// The Chromium binary on this machine, if any.
    pub fn find() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            for dir in std::env::split_paths(&path) {
                let candidate = dir.join(name);
                if candidate.is_file() {
                    return Some(candidate);
                }
            }
        }
        None
    }

    /// Starts a headless Chromium with `extra` flags and attaches to its page.
    pub fn launch(binary: &Path, extra: &[String]) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("fleet-chromium-")
            .tempdir()
            .unwrap();
        let (to_browser_read, to_browser_write) = pipe();
        let (from_browser_read, from_browser_write) = pipe();
        let (read_fd, write_fd) = (to_browser_read.as_raw_fd(), from_browser_write.as_raw_fd());
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--window-size=1400,1000",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (dup, dup2).
        unsafe {
            command.pre_exec(move || {
                // Move both ends above 4 first, so neither is overwritten by the other.
                let read = nix::libc::fcntl(read_fd, nix::libc::F_DUPFD, 10);
                let write = nix::libc::fcntl(write_fd, nix::libc::F_DUPFD, 10);
                if read < 0
                    || write < 0
                    || nix::libc::dup2(read, 3) < 0
                    || nix::libc::dup2(write, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((to_browser_read, from_browser_write));
        let (tx, answers) = mpsc::channel();
        let reader = File::from(from_browser_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
            }
        });
        let mut browser = Browser {
            child,
            commands: File::from(to_browser_write),
            answers,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .expect("create a page");
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .expect("attach to the page");
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.page("Page.enable", json!({})).expect("Page.enable");
        browser
    }

    /// One command to the browser (`session` empty) or the page; its result.
    fn send(&mut self, session: &str, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !session.is_empty() {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .map_err(|e| format!("{method}: {e}"))?;
        let until = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .map_err(|_| format!("{method}: no answer within {CALL_TIMEOUT:?}"))?;
            if answer["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(answer["result"].clone());
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send("", method, params)
    }

    /// A command to the page.
    pub fn page(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let session = self.session.clone();
        self.send(&session, method, params)
    }

    /// Goes to `url` and waits for its document to load.
    pub fn navigate(&mut self, url: &str) {
        let answer = self
            .page("Page.navigate", json!({"url": url}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            answer.get("errorText").is_none(),
            "navigate to {url}: {answer}"
        );
        self.wait_for(
            "the page to load",
            Duration::from_secs(20),
            "document.readyState === 'complete'",
        );
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let answer = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(exception) = answer.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        answer["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; returns its value.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, expression: &str) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let value = self.eval(expression);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= until {
                let text = self.eval("document.body ? document.body.innerText.slice(0, 3000) : ''");
                panic!(
                    "timed out after {timeout:?} waiting for {what} ({expression}); page:\n{text}"
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Writes a PNG of the whole page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self
            .page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or(""))
            .expect("a base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("Browser.close", json!({}));
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// The base64 SHA-256 of a PEM certificate's public key, as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it (trusting that one key only).
pub fn spki_hash(cert_pem: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert_pem.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
