//! Helpers: start the binary with a clean environment and wait for its stdout lines,
//! a small blocking HTTP/1.1 client, and deadlines everywhere so a hung test fails
//! instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Upper bound for anything a test waits for (a start, a response, an exit).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Environment variables a test run might inherit that would change the app's behaviour.
const CLEARED_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "PORT",
    "FLEET_APP_INSTANCE",
    "NODE_APP_INSTANCE",
    "VERSION",
];

/// A running `fleet-testapp`, killed (SIGKILL) and reaped on drop.
pub struct App {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    pub lines: Vec<String>,
    errors: Vec<String>,
}

pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleet-testapp"));
    command.args(args);
    for name in CLEARED_ENV {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command
}

impl App {
    /// Starts the binary with `PORT=0` (unless `env` sets PORT) and the given flags.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> App {
        let mut command = command(args, env);
        if !env.iter().any(|(k, _)| *k == "PORT") {
            command.env("PORT", "0");
        }
        App::spawn_command(command)
    }

    pub fn spawn_command(mut command: Command) -> App {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn fleet-testapp");
        let stdout = forward_lines(child.stdout.take().unwrap());
        let stderr = forward_lines(child.stderr.take().unwrap());
        App {
            child,
            stdout,
            stderr,
            lines: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        self.wait_line(prefix, DEADLINE).unwrap_or_else(|| {
            panic!(
                "no stdout line starting with {prefix:?}; got {:?}",
                self.lines
            )
        })
    }

    pub fn wait_line(&mut self, prefix: &str, within: Duration) -> Option<String> {
        if let Some(line) = self.lines.iter().find(|l| l.starts_with(prefix)) {
            return Some(line.clone());
        }
        let until = Instant::now() + within;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits for `listening on <addr> (<how>)` and returns the address.
    pub fn listening(&mut self, how: &str) -> SocketAddr {
        let line = self.expect_line("listening on ");
        let rest = line.strip_prefix("listening on ").unwrap();
        let (addr, source) = rest.split_once(' ').unwrap();
        assert_eq!(source, format!("({how})"), "{line}");
        addr.parse().unwrap()
    }

    /// Waits for a stderr line containing `text` and returns all of stderr so far.
    pub fn expect_stderr(&mut self, text: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            if self.errors.iter().any(|l| l.contains(text)) {
                return self.errors.join("\n");
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.errors.push(line),
                Err(_) => panic!("no stderr line containing {text:?}; got {:?}", self.errors),
            }
        }
    }

    /// What stderr said so far, for failure messages.
    pub fn stderr(&mut self) -> String {
        self.errors.extend(self.stderr.try_iter());
        self.errors.join("\n")
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("kill");
    }

    /// Waits for the process to exit, failing the test after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "fleet-testapp did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `recv` on a datagram socket, retrying when a signal interrupts it (a socket with a
/// receive timeout is not restarted after a signal handler, see socket(7)).
pub fn recv(socket: &std::os::unix::net::UnixDatagram) -> std::io::Result<Vec<u8>> {
    let mut buf = [0u8; 256];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Runs the binary with `fd` mapped to fd 3 by the socket-activation protocol
/// (`LISTEN_FDS=1`, `LISTEN_PID` = the app's own pid), the way fleet's agent starts a
/// cluster-mode instance. bash does the mapping and `exec`s, which keeps its pid.
pub fn spawn_inherited(
    listener: &std::net::TcpListener,
    args: &[&str],
    env: &[(&str, &str)],
) -> App {
    // A descriptor without CLOEXEC, numbered high so that no other test's child (which
    // inherits it too, for the instant it is open) sees it at fd 3.
    let fd =
        nix::fcntl::fcntl(listener, nix::fcntl::FcntlArg::F_DUPFD(100)).expect("dup the listener");
    let mut shell = Command::new("bash"); // dash takes only one-digit descriptors
    shell
        .arg("-c")
        .arg(format!("export LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES=http; exec \"$0\" \"$@\" 3<&{fd} {fd}<&-"))
        .arg(env!("CARGO_BIN_EXE_fleet-testapp"))
        .args(args);
    for name in CLEARED_ENV {
        shell.env_remove(name);
    }
    shell.envs(env.iter().copied());
    let app = App::spawn_command(shell);
    let _ = nix::unistd::close(fd);
    app
}

/// One parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A blocking keep-alive client on one connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.set_write_timeout(Some(DEADLINE))?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, path: &str, extra_headers: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra_headers}\r\n");
        self.stream
            .write_all(request.as_bytes())
            .expect("send request");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send(path, "");
        self.read_response().expect("a response")
    }

    /// Reads one whole response (head and Content-Length body).
    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("utf-8 head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_string(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .expect("Content-Length");
        while self.buf.len() < head_end + len {
            self.fill()?;
        }
        let body = String::from_utf8(self.buf[head_end..head_end + len].to_vec()).unwrap();
        self.buf.drain(..head_end + len);
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// True when the server closed the connection without sending another byte.
    pub fn closed_without_response(&mut self) -> bool {
        matches!(self.fill(), Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof)
            && self.buf.is_empty()
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
