//! Where the listening socket comes from, and readiness: a socket inherited by the
//! systemd socket-activation protocol (fd 3, `LISTEN_FDS`/`LISTEN_PID`, as fleet's
//! `exec_mode = "cluster"` passes it), or `127.0.0.1:$PORT` (`exec_mode = "proxy"`, or
//! an app that only knows `PORT`); and `sd_notify` messages to `NOTIFY_SOCKET`.

use std::io;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;

/// `SD_LISTEN_FDS_START` in sd_listen_fds(3): the first inherited descriptor.
pub const LISTEN_FDS_START: i32 = 3;

/// Whether the environment hands this process an inherited socket: `LISTEN_FDS` is a
/// number >= 1 and `LISTEN_PID` is unset or this process's pid. A missing `LISTEN_PID`
/// is accepted, as the `listenfd` crate does, for managers that cannot set it.
pub fn socket_activation_offered(
    listen_fds: Option<&str>,
    listen_pid: Option<&str>,
    pid: u32,
) -> bool {
    let fds = listen_fds
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let pid_matches = listen_pid.is_none_or(|v| v.trim().parse::<u32>().ok() == Some(pid));
    fds >= 1 && pid_matches
}

/// Adopts fd 3 as a TCP listener, after checking that it is one. Call this before
/// anything else opens a descriptor (the tokio runtime does), so that when fd 3 was not
/// really inherited, it cannot be one of ours by then.
#[allow(unsafe_code)] // There is no safe way to adopt an inherited descriptor.
pub fn adopt_inherited_listener() -> io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the socket-activation protocol gives this process fd 3 (LISTEN_FDS >= 1 and
    // LISTEN_PID matched, checked by the caller), and nothing in this process has opened
    // or adopted it: this runs once, first thing in `main`, before any other descriptor is
    // created. If fd 3 is not a socket, ownership is released again below without
    // closing it.
    let listener = unsafe { TcpListener::from_raw_fd(LISTEN_FDS_START) };
    match listener.local_addr() {
        Ok(_) => {
            listener.set_nonblocking(true)?;
            Ok(listener)
        }
        Err(e) => {
            let _ = listener.into_raw_fd(); // not ours to close: it is not a TCP listener
            Err(io::Error::new(
                e.kind(),
                format!("fd {LISTEN_FDS_START} is not a TCP listening socket: {e}"),
            ))
        }
    }
}

/// Sends one sd_notify message (`READY=1`, `STOPPING=1`) to the datagram socket at
/// `path`; a leading `@` names an abstract socket, as in sd_notify(3).
pub fn notify(path: &str, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        socket.send_to(message.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_activation_needs_fds_and_a_matching_or_missing_pid() {
        assert!(socket_activation_offered(Some("1"), Some("42"), 42));
        assert!(socket_activation_offered(Some("2"), None, 42));
        assert!(!socket_activation_offered(Some("1"), Some("43"), 42));
        assert!(!socket_activation_offered(Some("0"), None, 42));
        assert!(!socket_activation_offered(Some("x"), None, 42));
        assert!(!socket_activation_offered(None, Some("42"), 42));
        assert!(!socket_activation_offered(Some("1"), Some("nope"), 42));
    }

    #[test]
    fn notify_reaches_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        notify(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fleet-testapp-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        notify(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
