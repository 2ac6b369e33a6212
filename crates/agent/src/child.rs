//! Waiting for an app process through a pidfd rather than tokio's child handle: the
//! agent's children stay its children across an `execve` (`fleet update`), and a new
//! agent image can only wait for them by pid. One waiter for both: every spawned
//! process is watched this way from the start.
//!
//! A pidfd turns readable when its process ends ([`ended`]); `waitid(P_PIDFD)` then
//! reaps it and gives the status ([`reap`]). The two are apart so that only the
//! supervisor's own task reaps: while it hands over to the next image nothing reaps,
//! and every exit stays for the next image to read. A process that is not this
//! agent's child (adopted after a crash) still wakes the pidfd, but its status is not
//! ours to read: [`Ended::Unknown`].

#![allow(unsafe_code)] // pidfd_open(2) and waitid(P_PIDFD) have no safe wrapper here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How a watched process ended.
#[derive(Debug)]
pub enum Ended {
    /// The status, as `wait` reports it.
    Status(ExitStatus),
    /// It ended, but it was not this process's child, so its exit code is unknown.
    Unknown,
}

/// A descriptor referring to process `pid` (`pidfd_open(2)`, Linux 5.3).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; the descriptor is new and ours.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd as i32) })
}

/// Resolves once the process of `pidfd` has ended (without reaping it), with the
/// pidfd back for `reap`.
pub async fn ended(pidfd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: an OwnedFd is open and stays the same descriptor until the AsyncFd drops.
    let fd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    fd.readable().await?.retain_ready();
    Ok(fd.into_inner())
}

/// `waitid(P_PIDFD, …, WEXITED | WNOHANG)`: how the process ended, once it has (it is
/// reaped then); `None` while it runs.
pub fn reap(pidfd: &OwnedFd) -> io::Result<Option<Ended>> {
    // SAFETY: an all-zero siginfo_t is a valid value of that plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t; the other arguments are integers.
    let result = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if result < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ECHILD) {
            return Ok(Some(Ended::Unknown));
        }
        return Err(error);
    }
    // SAFETY: waitid filled `info`; with WNOHANG and nothing to report the pid is 0.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(Ended::Status(status_from(info.si_code, status))))
}

/// A wait status as `waitpid` encodes it, from waitid's code and status.
fn status_from(code: i32, status: i32) -> ExitStatus {
    match code {
        libc::CLD_EXITED => ExitStatus::from_raw((status & 0xff) << 8),
        libc::CLD_DUMPED => ExitStatus::from_raw((status & 0x7f) | 0x80),
        _ => ExitStatus::from_raw(status & 0x7f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode_as_waitpid_would() {
        let exited = status_from(libc::CLD_EXITED, 3);
        assert_eq!(exited.code(), Some(3));
        let killed = status_from(libc::CLD_KILLED, 9);
        assert_eq!((killed.code(), killed.signal()), (None, Some(9)));
        let dumped = status_from(libc::CLD_DUMPED, 11);
        assert_eq!(dumped.signal(), Some(11));
        assert!(dumped.core_dumped());
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped through its pidfd, which is the point
    async fn a_child_is_reaped_with_its_status() {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        let pidfd = ended(pidfd).await.unwrap();
        match reap(&pidfd).unwrap() {
            Some(Ended::Status(status)) => assert_eq!(status.code(), Some(7)),
            other => panic!("our own child ended with {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_process_that_is_not_our_child_ends_with_an_unknown_status() {
        // sh starts sleep in the background, prints its pid and exits: sleep is then
        // init's (or a subreaper's) child, not ours.
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 0.2 & echo $!"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let Ok(pidfd) = pidfd_open(pid) else {
            return; // already gone on a very slow machine
        };
        let pidfd = ended(pidfd).await.unwrap();
        assert!(matches!(reap(&pidfd).unwrap(), Some(Ended::Unknown)));
    }
}
