//! Under systemd, the agent keeps what its apps' supervision needs in the service's
//! file descriptor store (`FDSTORE=1`, `FileDescriptorStoreMax=` in the unit): log
//! pipes, listening and cluster sockets, Node IPC channels, sd_notify sockets, the
//! steering program, and a JSON document (in a memfd) saying what each one is, in
//! `fleet update`'s format (`supervisor::SupervisorCarry`). An agent killed with
//! SIGKILL is started again by systemd with the whole store (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`) and adopts the apps still running in its unit's cgroup (same
//! pids, same sockets; what the apps wrote meanwhile waits in the pipes) instead of
//! starting them again.
//!
//! The store mirrors the supervisor a moment after each change (`Store::sync`):
//! objects already stored keep their name (`fleet.N`), new ones are pushed, gone ones
//! removed (`FDSTOREREMOVE=1`), and each document is pushed as `fleet-state.SEQ`
//! before the previous one is removed, so the store always holds a whole document.
//! A document may lag the table by that moment: an instance it names whose process
//! is no longer the one it names counts as ended, and is restarted by its policy.
//!
//! Whether an object is already stored is asked of the kernel (`kcmp(KCMP_FILE)`)
//! against a descriptor the store keeps of each, as systemd itself tells duplicates.
//!
//! Off unless the service says how many descriptors it may keep: systemd 254 and
//! later set `FDSTORE`, fleet's unit sets `FLEET_FDSTORE` for older ones.

#![allow(unsafe_code)] // Descriptors systemd passes are adopted by number; kcmp(2).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use serde::{Deserialize, Serialize};

use crate::handoff::{Fd, Incoming, Outgoing};
use crate::supervisor::SupervisorCarry;

/// The document's format (the supervisor's part is `fleet update`'s).
pub const FORMAT: u32 = 1;
/// Names of stored objects; the document is `STATE` followed by its sequence number.
const OBJECT: &str = "fleet.";
const STATE: &str = "fleet-state.";
/// systemd passes stored descriptors from 3 on (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// How many descriptors the service may store, when the agent runs under systemd
/// with a store.
pub fn capacity() -> Option<usize> {
    if !crate::sd_notify::listening() {
        return None;
    }
    ["FDSTORE", "FLEET_FDSTORE"]
        .iter()
        .filter_map(|name| std::env::var(name).ok()?.parse::<usize>().ok())
        .find(|&n| n > 0)
}

/// The document a store holds beside the objects it names.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreDoc {
    pub format: u32,
    /// The version of the agent that wrote it.
    pub version: String,
    /// CLOCK_MONOTONIC when it was written, in nanoseconds.
    pub written_ns: u64,
    /// Each number the supervisor's part uses, and the stored object's name.
    pub names: BTreeMap<RawFd, String>,
    pub supervisor: SupervisorCarry,
}

/// What systemd passed at start (`LISTEN_FDS`), by name.
#[derive(Debug, Default)]
pub struct Received {
    fds: Vec<(String, OwnedFd)>,
}

impl Received {
    /// Takes the descriptors systemd passed to this process, once, and removes the
    /// variables that describe them (an exec later must not read them again). Call
    /// before any thread starts.
    pub fn take() -> Received {
        let mine = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            == Some(std::process::id());
        let count: RawFd = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: called from `main` before the runtime starts any thread.
            unsafe { std::env::remove_var(name) };
        }
        if !mine || !(1..=65536).contains(&count) {
            return Received::default();
        }
        let mut names = names.split(':');
        let mut fds = Vec::new();
        for number in LISTEN_FDS_START..LISTEN_FDS_START + count {
            let name = names.next().unwrap_or("unknown").to_string();
            // SAFETY: only a flag query; the number may not be open.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(number) };
            if fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).is_err() {
                continue;
            }
            // SAFETY: systemd passed this descriptor to this process (LISTEN_PID) and
            // nothing else in it took it: this runs before anything opens files.
            fds.push((name, unsafe { OwnedFd::from_raw_fd(number) }));
        }
        Received { fds }
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The newest whole document and its objects, and the store as systemd holds it
    /// (so that what the document does not use is removed at the first sync). `Err`
    /// says why nothing can be adopted; the store is still returned.
    pub fn open(self, capacity: usize) -> (Store, Result<(StoreDoc, Incoming), String>) {
        let mut store = Store::new(capacity);
        let mut objects: HashMap<String, OwnedFd> = HashMap::new();
        let mut newest: Option<(u64, OwnedFd)> = None;
        for (name, fd) in self.fds {
            if let Some(seq) = name.strip_prefix(STATE).and_then(|s| s.parse::<u64>().ok()) {
                store.stale_states.push(name);
                if newest.as_ref().is_none_or(|(n, _)| seq > *n) {
                    newest = Some((seq, fd));
                }
                continue;
            }
            if let Some(n) = name
                .strip_prefix(OBJECT)
                .and_then(|n| n.parse::<u64>().ok())
            {
                store.next = store.next.max(n + 1);
            }
            match (fd.try_clone(), key(&fd)) {
                (Ok(kept), Ok(key)) => store.entries.push(Entry {
                    name: name.clone(),
                    key,
                    fd: kept,
                }),
                _ => store.stale_names.push(name.clone()),
            }
            objects.insert(name, fd);
        }
        let Some((seq, memfd)) = newest else {
            return (store, Err("the store holds no fleet document".into()));
        };
        store.seq = seq;
        let doc = match read_doc(memfd) {
            Ok(doc) => doc,
            Err(reason) => return (store, Err(reason)),
        };
        let mut mapped = HashMap::new();
        for (number, name) in &doc.names {
            if let Some(fd) = objects.remove(name) {
                mapped.insert(*number, fd);
            }
        }
        (store, Ok((doc, Incoming::mapped(mapped))))
    }
}

fn read_doc(memfd: OwnedFd) -> Result<StoreDoc, String> {
    let mut text = String::new();
    let mut file = std::fs::File::from(memfd);
    let read = (&mut file)
        .take(crate::handoff::MAX_DOCUMENT)
        .read_to_string(&mut text);
    read.map_err(|e| format!("cannot read the stored document: {e}"))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("the stored document is not JSON: {e}"))?;
    let format = raw.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        return Err(format!(
            "fleet-agent {} reads stored format {FORMAT}, not {}",
            env!("CARGO_PKG_VERSION"),
            format.map_or("unknown".into(), |f| f.to_string())
        ));
    }
    serde_json::from_value(raw).map_err(|e| format!("the stored document does not parse: {e}"))
}

/// One object in systemd's store, and this process's own descriptor of it (to tell
/// whether a descriptor is of the same object).
#[derive(Debug)]
struct Entry {
    name: String,
    key: (u64, u64),
    fd: OwnedFd,
}

/// This agent's picture of its store.
#[derive(Debug)]
pub struct Store {
    capacity: usize,
    next: u64,
    seq: u64,
    entries: Vec<Entry>,
    /// Names to remove at the next sync (received, not understood).
    stale_names: Vec<String>,
    stale_states: Vec<String>,
    /// Set once the store refused or failed: further syncs would only log.
    failed: bool,
}

/// The store between two agent images (`fleet update`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StoreCarry {
    pub capacity: usize,
    pub next: u64,
    pub seq: u64,
    pub entries: Vec<(String, Fd)>,
}

impl Store {
    pub fn new(capacity: usize) -> Store {
        Store {
            capacity,
            next: 0,
            seq: 0,
            entries: Vec::new(),
            stale_names: Vec::new(),
            stale_states: Vec::new(),
            failed: false,
        }
    }

    /// Makes systemd's store hold exactly `objects` (descriptors the supervisor's
    /// part names by their numbers) and a document of `supervisor`.
    pub fn sync(&mut self, supervisor: SupervisorCarry, objects: Outgoing) {
        if self.failed {
            return;
        }
        if let Err(error) = self.try_sync(supervisor, objects) {
            tracing::error!(%error, "cannot update systemd's file descriptor store; an agent killed now would restart its apps");
            self.failed = true;
        }
    }

    fn try_sync(&mut self, supervisor: SupervisorCarry, objects: Outgoing) -> std::io::Result<()> {
        let mut names = BTreeMap::new();
        let mut kept = vec![false; self.entries.len()];
        let mut added = Vec::new();
        for fd in objects.into_fds() {
            let number = fd.as_raw_fd();
            let key = key(&fd)?;
            let found = (self.entries.iter()).position(|e| e.key == key && same_file(&e.fd, &fd));
            if let Some(i) = found {
                kept[i] = true;
                names.insert(number, self.entries[i].name.clone());
                continue;
            }
            if self.entries.len() + added.len() + 1 >= self.capacity {
                tracing::warn!(
                    capacity = self.capacity,
                    "systemd's file descriptor store is full; raise FileDescriptorStoreMax"
                );
                continue;
            }
            let name = format!("{OBJECT}{}", self.next);
            self.next += 1;
            push(&name, &fd)?;
            names.insert(number, name.clone());
            added.push(Entry { name, key, fd });
        }
        let doc = StoreDoc {
            format: FORMAT,
            version: env!("CARGO_PKG_VERSION").into(),
            written_ns: crate::handoff::monotonic_ns(),
            names,
            supervisor,
        };
        let json = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
        let memfd = crate::handoff::write_memfd(&json)?;
        let previous = (self.seq > 0).then(|| format!("{STATE}{}", self.seq));
        self.seq += 1;
        push(&format!("{STATE}{}", self.seq), &memfd)?;
        drop(memfd);
        let mut gone: Vec<String> = std::mem::take(&mut self.stale_names);
        gone.extend(std::mem::take(&mut self.stale_states));
        gone.extend(previous);
        let entries = std::mem::take(&mut self.entries);
        for (entry, kept) in entries.into_iter().zip(kept) {
            if kept {
                self.entries.push(entry);
            } else {
                gone.push(entry.name);
            }
        }
        self.entries.extend(added);
        // The newest document was pushed under its own name before this.
        let current = format!("{STATE}{}", self.seq);
        for name in gone.iter().filter(|n| **n != current) {
            remove(name)?;
        }
        Ok(())
    }

    /// Empties systemd's store: the agent stopped its apps and exits.
    pub fn clear(&mut self) {
        let mut names: Vec<String> = self.entries.drain(..).map(|e| e.name).collect();
        names.append(&mut self.stale_names);
        names.append(&mut self.stale_states);
        if self.seq > 0 {
            names.push(format!("{STATE}{}", self.seq));
        }
        for name in names {
            if let Err(error) = remove(&name) {
                tracing::warn!(%error, name, "cannot empty systemd's file descriptor store");
                return;
            }
        }
    }

    pub fn hand_over(self, out: &mut Outgoing) -> StoreCarry {
        StoreCarry {
            capacity: self.capacity,
            next: self.next,
            seq: self.seq,
            entries: (self.entries.into_iter())
                .map(|e| (e.name, out.put(e.fd)))
                .collect(),
        }
    }

    pub fn take_over(carry: StoreCarry, fds: &mut Incoming) -> Store {
        let mut store = Store::new(carry.capacity);
        store.next = carry.next;
        store.seq = carry.seq;
        for (name, fd) in carry.entries {
            match fds.take(fd).and_then(|fd| Ok((key(&fd)?, fd))) {
                Ok((key, fd)) => store.entries.push(Entry { name, key, fd }),
                Err(_) => store.stale_names.push(name),
            }
        }
        store
    }
}

/// The object a descriptor is of, as far as `fstat` tells (anonymous inodes, such as
/// BPF objects, all share one).
fn key(fd: &OwnedFd) -> std::io::Result<(u64, u64)> {
    let file = std::mem::ManuallyDrop::new(
        // SAFETY: borrowed for one fstat; ManuallyDrop never closes it.
        unsafe { std::fs::File::from_raw_fd(fd.as_raw_fd()) },
    );
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether two descriptors with the same `key` are of one open file. Without kcmp(2)
/// (a kernel built without it) the key decides.
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(nix::unistd::getpid().as_raw());
    // SAFETY: kcmp(2) only compares; both descriptors are open in this process.
    let result = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(a.as_raw_fd()),
            libc::c_long::from(b.as_raw_fd()),
        )
    };
    match result {
        0 => true,
        r if r > 0 => false,
        _ => true,
    }
}

fn push(name: &str, fd: &OwnedFd) -> std::io::Result<()> {
    crate::sd_notify::send(
        &format!("FDSTORE=1\nFDPOLL=0\nFDNAME={name}"),
        &[fd.as_raw_fd()],
    )
}

fn remove(name: &str) -> std::io::Result<()> {
    crate::sd_notify::send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kcmp_tells_a_duplicate_from_another_object() {
        let (a, _a_w) = nix::unistd::pipe().unwrap();
        let (b, _b_w) = nix::unistd::pipe().unwrap();
        let a2 = a.try_clone().unwrap();
        assert!(same_file(&a, &a2));
        assert_ne!(key(&a).unwrap(), key(&b).unwrap());
        // Two pidfds of one process share an inode (anonymous, or pidfs'): kcmp still
        // tells the two open files apart.
        let me = nix::unistd::getpid().as_raw();
        let p1 = crate::child::pidfd_open(me).unwrap();
        let p2 = crate::child::pidfd_open(me).unwrap();
        assert_eq!(key(&p1).unwrap(), key(&p2).unwrap());
        assert!(!same_file(&p1, &p2));
        assert!(same_file(&p1, &p1.try_clone().unwrap()));
    }

    #[test]
    fn a_document_round_trips_and_a_foreign_format_is_refused() {
        let doc = StoreDoc {
            format: FORMAT,
            version: "0".into(),
            written_ns: 1,
            names: BTreeMap::from([(7, "fleet.0".to_string())]),
            supervisor: SupervisorCarry::default(),
        };
        let json = serde_json::to_vec(&doc).unwrap();
        let back = read_doc(crate::handoff::write_memfd(&json).unwrap()).unwrap();
        assert_eq!(back.names[&7], "fleet.0");
        let other = br#"{"format": 99}"#;
        let refused = read_doc(crate::handoff::write_memfd(other).unwrap()).unwrap_err();
        assert!(refused.contains("not 99"), "{refused}");
    }
}
