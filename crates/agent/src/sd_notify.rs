//! The agent as a systemd `Type=notify` service: `READY=1` once it serves and has
//! brought back its apps, `WATCHDOG=1` every half `WatchdogSec` while its supervisor
//! answers, `STOPPING=1` when it begins to stop. Outside systemd (`NOTIFY_SOCKET`
//! unset) every call does nothing.
//!
//! Also the boot check behind `--resurrect`: `FLEET_HOME/boot_id` remembers the boot the
//! agent last started in, so an agent started by its unit after a reboot knows to
//! bring back what `fleet save` saved (PM2's `startup` + `save`).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// Sends one sd_notify message (`READY=1`, ...) when the agent runs under systemd.
pub fn notify(message: &str) {
    if let Err(error) = send(message, &[]) {
        tracing::warn!(%error, message, "cannot notify systemd");
    }
}

/// Whether the agent runs under a service manager that listens (`NOTIFY_SOCKET`).
pub fn listening() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|p| !p.is_empty())
}

/// Sends one sd_notify message with `fds` attached (`FDSTORE=1`); does nothing
/// outside systemd.
pub fn send(message: &str, fds: &[RawFd]) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let address = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(Path::new(&path))?,
    };
    let socket = UnixDatagram::unbound()?;
    let data = [std::io::IoSlice::new(message.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg(
        socket.as_raw_fd(),
        &data,
        control,
        MsgFlags::empty(),
        Some(&address),
    )?;
    Ok(())
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this process).
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_me = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    (usec > 0 && for_me).then(|| Duration::from_micros(usec))
}

/// Variables systemd sets for the agent's own service, which no app may inherit.
pub const SERVICE_VARIABLES: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "SYSTEMD_EXEC_PID",
    "FDSTORE",
    "FLEET_FDSTORE",
];

/// Whether this is the first agent start since the machine booted, and records the
/// current boot. Unknown boots (no `/proc/sys/kernel/random/boot_id`) count as the
/// same one.
pub fn first_start_since_boot(home: &Path) -> bool {
    let Ok(now) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
        return false;
    };
    let path = home.join("boot_id");
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    if before.trim() == now.trim() {
        return false;
    }
    if let Err(error) = crate::store::write_atomic(&path, now.trim().as_bytes()) {
        tracing::warn!(%error, "cannot record the boot id");
    }
    // No record yet: an agent never started here before, not a reboot.
    !before.trim().is_empty()
}
