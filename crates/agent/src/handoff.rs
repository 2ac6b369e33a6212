//! `fleet update`: the running agent re-executes itself (`execve`) as another
//! `fleet-agent` binary, which takes over without restarting any app. A re-exec keeps
//! the agent's pid, so the apps stay its children (their exit codes stay readable and
//! their zombies its to reap) and a systemd unit keeps its main pid.
//!
//! What crosses the exec: every descriptor the apps' supervision needs (the API socket,
//! the home's lock, log pipes with their unfinished lines, Node IPC channels, sd_notify
//! sockets, listening sockets, the steering program) with their close-on-exec flag
//! cleared, and a JSON document in a memfd that says what each one is, along with the
//! supervisor's state (`supervisor::SupervisorCarry`). Timers travel as how long is
//! left. The new image checks the document before it changes anything; if it refuses
//! (another document format, a broken document), it re-executes the previous binary
//! (kept open as `/proc/self/exe` since it started, so a binary replaced on disk does
//! not matter) with the same document and its reason, and that image carries on and
//! reports the refusal in `Hello`.
//!
//! Before any of this the old image runs the new binary with `--handoff-check`, which
//! must answer with the formats it reads: a binary that does not run, or cannot take
//! this agent's state, is refused while nothing has changed.

#![allow(unsafe_code)] // Descriptors inherited across execve are adopted by number.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use serde::{Deserialize, Serialize};

use crate::supervisor::SupervisorCarry;

/// The document's format. A new image reads the formats it lists in its check.
pub const FORMAT: u32 = 1;
/// A document larger than this is refused (a supervisor of 1,000 apps writes well
/// under a megabyte).
pub(crate) const MAX_DOCUMENT: u64 = 64 * 1024 * 1024;
/// How long the new binary has to answer `--handoff-check`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A descriptor in the document: its number in the new image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fd(pub RawFd);

/// The descriptors an image hands over, collected while the document is written.
#[derive(Default, Debug)]
pub struct Outgoing {
    fds: Vec<OwnedFd>,
}

impl Outgoing {
    pub fn put(&mut self, fd: OwnedFd) -> Fd {
        let number = Fd(fd.as_raw_fd());
        self.fds.push(fd);
        number
    }

    pub fn numbers(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }
}

/// The descriptors a new image received: each listed one may be taken once. A
/// document names each by a number: across an exec the descriptor's own, from
/// systemd's store (`crate::fdstore`) the number it had when the document was written.
#[derive(Debug)]
pub struct Incoming {
    /// Document number to the descriptor open in this process, owned here until taken.
    listed: HashMap<RawFd, RawFd>,
    taken: HashSet<RawFd>,
}

impl Incoming {
    /// Descriptors received under other numbers than the document's.
    pub fn mapped(fds: HashMap<RawFd, OwnedFd>) -> Incoming {
        Incoming {
            listed: (fds.into_iter())
                .map(|(number, fd)| (number, fd.into_raw_fd()))
                .collect(),
            taken: HashSet::new(),
        }
    }

    pub fn take(&mut self, fd: Fd) -> std::io::Result<OwnedFd> {
        let open = self.listed.get(&fd.0).copied();
        let Some(open) = open.filter(|_| self.taken.insert(fd.0)) else {
            return Err(std::io::Error::other(format!(
                "descriptor {} is not in the handoff or was taken twice",
                fd.0
            )));
        };
        // SAFETY: `open` was left open across execve by the previous image (and
        // `receive` found it open) or came from an `OwnedFd` (`mapped`); it is owned
        // by this struct alone and handed out once.
        let owned = unsafe { OwnedFd::from_raw_fd(open) };
        fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        Ok(owned)
    }

    /// Closes what was listed and not taken (the previous image handed over more than
    /// this one uses: an app deleted meanwhile).
    pub fn close_rest(self) {
        for (number, open) in &self.listed {
            if !self.taken.contains(number) {
                // SAFETY: listed, open and never taken, so owned by no one else.
                drop(unsafe { OwnedFd::from_raw_fd(*open) });
            }
        }
    }
}

/// What the old image writes and the new one reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Document {
    pub format: u32,
    /// The version of the image that wrote it, and its binary.
    pub from_version: String,
    pub from_binary: PathBuf,
    /// Every descriptor carried, each once.
    pub fds: Vec<RawFd>,
    /// The previous image's binary, to go back to if this one refuses.
    pub fallback: Fd,
    /// The agent's arguments (without any `--handoff`), and the home it serves: a
    /// new image started for another home refuses.
    pub args: Vec<OsString>,
    pub home: PathBuf,
    /// CLOCK_MONOTONIC when the document was written, in nanoseconds.
    pub written_ns: u64,
    /// Handoffs this agent process has seen and how many succeeded (for `Hello`).
    pub attempts: u32,
    pub handoffs: u32,
    /// Set by an image that refused the document, with its reason.
    pub refused: Option<String>,
    pub listener: Fd,
    pub lock: Fd,
    pub supervisor: SupervisorCarry,
}

/// The agent's handoff counters, as `Hello` reports them.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub attempts: u32,
    pub handoffs: u32,
    pub error: Option<String>,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `tokio::time::Instant` reads, the same
/// in both images.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// This image's own binary, opened once at start: what a refusing new image goes
/// back to, even after the file on disk was replaced.
pub fn open_self() -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open("/proc/self/exe")?))
}

/// What `--handoff-check` answers: this binary's version and the formats it reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckAnswer {
    pub version: String,
    pub formats: Vec<u32>,
}

/// `fleet-agent --handoff-check`: the answer, printed as one JSON line.
pub fn check_answer() -> String {
    serde_json::to_string(&CheckAnswer {
        version: env!("CARGO_PKG_VERSION").into(),
        formats: vec![FORMAT],
    })
    .expect("a plain struct serializes")
}

/// Runs `binary --handoff-check` and returns its version if it can take this image's
/// state; otherwise why not, in words for the user.
pub async fn check(binary: &Path) -> Result<String, String> {
    let output = tokio::process::Command::new(binary)
        .arg("--handoff-check")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(CHECK_TIMEOUT, output).await {
        Err(_) => {
            return Err(format!(
                "{} did not answer within {CHECK_TIMEOUT:?}",
                binary.display()
            ));
        }
        Ok(Err(error)) => return Err(format!("cannot run {}: {error}", binary.display())),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let said = said.lines().next().unwrap_or("").trim();
        return Err(format!(
            "{} cannot take over ({}{}); is it a fleet-agent that supports `fleet update`?",
            binary.display(),
            output.status,
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ));
    }
    let answer: CheckAnswer = serde_json::from_slice(&output.stdout).map_err(|_| {
        format!(
            "{} is not a fleet-agent that supports updates in place",
            binary.display()
        )
    })?;
    if !answer.formats.contains(&FORMAT) {
        return Err(format!(
            "fleet-agent {} cannot take over: it reads handoff formats {:?}, this agent writes {FORMAT}",
            answer.version, answer.formats
        ));
    }
    Ok(answer.version)
}

/// Writes the document and re-executes as `binary` (a path, or `/proc/self/fd/N`).
/// Returns only if the exec failed, with the descriptors still open for a retry.
pub fn exec(binary: &Path, document: &Document, fds: &Outgoing) -> std::io::Error {
    let memfd = match serde_json::to_vec(document).map_err(std::io::Error::other) {
        Ok(json) => match write_memfd(&json) {
            Ok(memfd) => memfd,
            Err(error) => return error,
        },
        Err(error) => return error,
    };
    for fd in fds
        .fds
        .iter()
        .map(AsRawFd::as_raw_fd)
        .chain([memfd.as_raw_fd()])
    {
        // SAFETY: the descriptor is open (owned by `fds` or `memfd`) for this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Err(error) = fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())) {
            return error.into();
        }
    }
    let error = exec_raw(binary, &document.args, memfd.as_raw_fd());
    // Still here: close-on-exec again so nothing leaks into apps started later.
    for fd in fds.numbers() {
        // SAFETY: as above.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    error
}

/// `execv(binary, [binary, args..., --handoff, memfd])`, leaving signal dispositions
/// alone: std's `Command::exec` resets SIGPIPE to its default first, and the other
/// threads still running until the exec would then die of a write to a closed socket
/// (SIGPIPE is process-wide). Returns only on failure.
fn exec_raw(binary: &Path, args: &[OsString], memfd: RawFd) -> std::io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |bytes: &[u8]| CString::new(bytes).map_err(std::io::Error::other);
    let mut argv = Vec::with_capacity(args.len() + 3);
    let program = match c(binary.as_os_str().as_bytes()) {
        Ok(program) => program,
        Err(error) => return error,
    };
    argv.push(program.clone());
    for arg in args.iter().map(|a| a.as_bytes()).chain([&b"--handoff"[..]]) {
        match c(arg) {
            Ok(arg) => argv.push(arg),
            Err(error) => return error,
        }
    }
    match c(memfd.to_string().as_bytes()) {
        Ok(fd) => argv.push(fd),
        Err(error) => return error,
    }
    match nix::unistd::execv(&program, &argv) {
        Err(errno) => errno.into(),
    }
}

/// A memfd holding `json`, at its start.
pub(crate) fn write_memfd(json: &[u8]) -> std::io::Result<OwnedFd> {
    let memfd =
        nix::sys::memfd::memfd_create(c"fleet-handoff", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(json)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// Reads the document at descriptor `fd` (the new image's first step). On success the
/// document and its descriptors; otherwise the raw document (when it was JSON at all)
/// and why it is refused, for [`refuse`].
pub fn receive(fd: RawFd) -> Result<(Document, Incoming), Refusal> {
    let mut text = String::new();
    // SAFETY: `--handoff N` names the memfd the previous image left open for us.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let read = file.take(MAX_DOCUMENT).read_to_string(&mut text);
    if let Err(error) = read {
        return Err(Refusal::unreadable(format!(
            "cannot read the handoff document: {error}"
        )));
    }
    let raw: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Refusal::unreadable(format!("the handoff document is not JSON: {e}")))?;
    let refuse = |reason: String| Refusal {
        raw: Some(raw.clone()),
        reason,
    };
    let format = raw.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        return Err(refuse(format!(
            "fleet-agent {} reads handoff format {FORMAT}, not {}",
            env!("CARGO_PKG_VERSION"),
            format.map_or("unknown".into(), |f| f.to_string())
        )));
    }
    let document: Document = serde_json::from_value(raw.clone())
        .map_err(|e| refuse(format!("the handoff document does not parse: {e}")))?;
    let mut listed = HashMap::new();
    for &fd in &document.fds {
        if listed.insert(fd, fd).is_some() {
            return Err(refuse(format!("descriptor {fd} is listed twice")));
        }
        // SAFETY: only a flag query; the number may not be open, which is what we check.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if fcntl(borrowed, FcntlArg::F_GETFD).is_err() {
            return Err(refuse(format!("descriptor {fd} was not handed over")));
        }
    }
    Ok((
        document,
        Incoming {
            listed,
            taken: HashSet::new(),
        },
    ))
}

/// A document this image will not take, and why.
#[derive(Debug)]
pub struct Refusal {
    raw: Option<serde_json::Value>,
    pub reason: String,
}

impl Refusal {
    fn unreadable(reason: String) -> Refusal {
        Refusal { raw: None, reason }
    }

    /// A document that parsed but could not be taken over (a descriptor missing).
    pub fn of(document: &Document, reason: String) -> Refusal {
        Refusal {
            raw: serde_json::to_value(document).ok(),
            reason,
        }
    }

    /// Hands the document back to the previous image's binary with the reason.
    /// Returns only if that is impossible (the apps then outlive the agent).
    pub fn hand_back(self) -> String {
        let Some(mut raw) = self.raw else {
            return self.reason;
        };
        if raw.get("refused").is_some_and(|r| !r.is_null()) {
            // Already handed back once: the previous binary refuses it too. Going
            // back again would loop.
            return format!("{}; the previous agent refused it as well", self.reason);
        }
        let fallback = raw.get("fallback").and_then(serde_json::Value::as_i64);
        let args: Vec<OsString> = raw
            .get("args")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        let Some(fallback) = fallback else {
            return format!("{}; and the document names no previous binary", self.reason);
        };
        raw["refused"] = serde_json::Value::String(self.reason.clone());
        // Descriptors this image already took are close-on-exec again: clear it on
        // every listed one, so the previous binary finds them all.
        let listed = raw.get("fds").and_then(serde_json::Value::as_array);
        for fd in listed
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_i64)
        {
            let Ok(fd) = RawFd::try_from(fd) else {
                continue;
            };
            // SAFETY: a flag change on a listed descriptor; a closed number only fails.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::empty()));
        }
        let json = serde_json::to_vec(&raw).unwrap_or_default();
        let memfd = match write_memfd(&json) {
            Ok(memfd) => memfd,
            Err(error) => return format!("{}; and cannot hand back: {error}", self.reason),
        };
        let memfd = memfd.into_raw_fd();
        // SAFETY: a flag change on the memfd we just created.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(memfd) };
        let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::empty()));
        let binary = PathBuf::from(format!("/proc/self/fd/{fallback}"));
        let error = exec_raw(&binary, &args, memfd);
        format!(
            "{}; and cannot go back to the previous binary: {error}",
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_answer_lists_this_format() {
        let answer: CheckAnswer = serde_json::from_str(&check_answer()).unwrap();
        assert_eq!(answer.formats, vec![FORMAT]);
        assert_eq!(answer.version, env!("CARGO_PKG_VERSION"));
    }

    fn memfd_with(text: &str) -> RawFd {
        let memfd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let mut file = std::fs::File::from(memfd);
        file.write_all(text.as_bytes()).unwrap();
        file.rewind().unwrap();
        file.into_raw_fd()
    }

    #[test]
    fn documents_of_another_format_or_broken_are_refused_with_a_reason() {
        let refusal = receive(memfd_with("not json")).unwrap_err();
        assert!(refusal.reason.contains("not JSON"), "{}", refusal.reason);
        let refusal = receive(memfd_with(r#"{"format": 99, "fallback": 3}"#)).unwrap_err();
        assert!(refusal.reason.contains("not 99"), "{}", refusal.reason);
        let refusal = receive(memfd_with(r#"{"format": 1}"#)).unwrap_err();
        assert!(
            refusal.reason.contains("does not parse"),
            "{}",
            refusal.reason
        );
    }

    #[test]
    fn a_descriptor_is_taken_once_and_only_if_listed() {
        let (read, _write) = nix::unistd::pipe().unwrap();
        let number = read.into_raw_fd();
        let mut incoming = Incoming {
            listed: HashMap::from([(number, number)]),
            taken: HashSet::new(),
        };
        assert!(incoming.take(Fd(number + 1000)).is_err());
        let fd = incoming.take(Fd(number)).unwrap();
        assert!(incoming.take(Fd(number)).is_err());
        let flags = fcntl(&fd, FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
    }
}
