//! Starting and signalling app processes: each instance runs in its own process group
//! so a stop reaches every process it started. The supervisor decides when; this
//! module only knows how.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use command_fds::{CommandFdExt, FdMapping};
use fleet_config::AppSpec;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const DEV_NULL: &str = "/dev/null";

/// Where one instance's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPaths {
    pub out: Option<PathBuf>,
    pub err: Option<PathBuf>,
    /// `log_file`: both streams in one file.
    pub combined: Option<PathBuf>,
}

impl LogPaths {
    /// PM2's naming: `<logs>/<name>-out.log` and `<name>-error.log`, suffixed with
    /// `-<instance>` unless merged (merged by default only for a single instance);
    /// `/dev/null` or `NULL` means no file; relative custom paths are relative to `cwd`.
    pub fn for_instance(
        spec: &AppSpec,
        instance: u32,
        instances: u32,
        logs_dir: &Path,
    ) -> LogPaths {
        let merged = spec.logs.merge_logs.unwrap_or(instances <= 1);
        let pick = |custom: &Option<String>, default_name: String| -> Option<PathBuf> {
            let base = match custom.as_deref() {
                Some(DEV_NULL) | Some("NULL") => return None,
                Some(path) if !path.is_empty() => spec.cwd.join(path),
                _ => logs_dir.join(default_name),
            };
            Some(if merged {
                base
            } else {
                with_instance_suffix(&base, instance)
            })
        };
        // PM2's rule: the name as a file name, so no name reaches outside `logs/`.
        let name = fleet_config::file_name_of(&spec.name);
        LogPaths {
            out: pick(&spec.logs.out_file, format!("{name}-out.log")),
            err: pick(&spec.logs.error_file, format!("{name}-error.log")),
            // PM2 writes no combined file unless `log_file` is set; `true` means the
            // default `<name>.log`.
            combined: match &spec.logs.log_file {
                None => None,
                custom => pick(custom, format!("{name}.log")),
            },
        }
    }

    pub fn files(&self) -> Vec<PathBuf> {
        self.out
            .iter()
            .chain(self.err.iter())
            .chain(self.combined.iter())
            .cloned()
            .collect()
    }
}

/// `out.log` becomes `out-3.log`, as PM2 names non-merged instance logs.
/// PM2's `pid_file` of one instance: the instance number before `.pid` when the app
/// has several, as for its log files.
pub fn pid_path(spec: &AppSpec, instance: u32, instances: u32) -> Option<PathBuf> {
    let path = spec.pid_file.as_ref()?;
    Some(if instances > 1 {
        with_instance_suffix(path, instance)
    } else {
        path.clone()
    })
}

/// Writes `pid` to the pid file (owner-only); a failure is logged, not fatal.
pub fn write_pid(path: &Path, pid: i32) {
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| crate::store::write_atomic(path, format!("{pid}\n").as_bytes()));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot write the pid file");
    }
}

/// Removes the pid file if it still names `pid` (a reload's new process rewrote it).
pub fn remove_pid(path: &Path, pid: i32) {
    let ours = std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid.to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

fn with_instance_suffix(path: &Path, instance: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{instance}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{instance}"),
    };
    path.with_file_name(name)
}

/// The variables of the app's `env_file`s, read now so a changed file takes effect at
/// the next start; a later file wins. A missing file is skipped (PM2 never reads it,
/// so a file PM2 users keep optional must not stop the app); an unreadable one fails
/// the start with its path in the message.
pub fn env_from_files(spec: &AppSpec) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for path in &spec.env_files {
        match fleet_config::envfile::read(path)? {
            Some(file) => env.extend(file.vars),
            None => {
                tracing::info!(app = %spec.name, path = %path.display(), "env_file not found; skipped")
            }
        }
    }
    Ok(env)
}

/// The first inherited descriptor in the systemd socket-activation protocol
/// (`SD_LISTEN_FDS_START`).
const LISTEN_FD: i32 = 3;
/// `LISTEN_PID` must be the pid of the program itself, which only exists after the
/// fork; a shell sets it and replaces itself with the program (same pid).
const LISTEN_PID_SHIM: &str = "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"";

/// A started process: its pid, a pidfd to wait for it by (`child`), and the read ends
/// of its output pipes.
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Starts one instance in a new process group. Its stdout and stderr are pipes the
/// agent reads (see `logs`) when `capture_out`/`capture_err`, otherwise /dev/null.
/// With `listener`, the app's shared socket becomes its fd 3 (`LISTEN_FDS=1`).
/// The process is waited for through its pidfd, never through a `Child` (see `child`).
pub fn spawn(
    spec: &AppSpec,
    env: BTreeMap<String, String>,
    capture_out: bool,
    capture_err: bool,
    listener: Option<OwnedFd>,
    node_channel: Option<OwnedFd>,
    run_as: Option<&crate::account::RunAs>,
) -> Result<Spawned, String> {
    use std::os::unix::process::CommandExt;
    let (program, leading) = spec
        .command
        .split_first()
        .ok_or_else(|| "the app has no command".to_string())?;
    // Resolving the program here (with the app's PATH) lets the standard library use
    // posix_spawn instead of fork+exec: a bare name with a changed PATH forces the
    // slow path, which made starting 100 apps measurably slower.
    let resolved = resolve_program(program, env.get("PATH").map(String::as_str), &spec.cwd)
        .ok_or_else(|| format!("cannot execute {program}: not found"))?;
    let pipe = |capture: bool| {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut command = match &listener {
        None => {
            let mut command = std::process::Command::new(&resolved);
            command.arg0(program);
            command
        }
        Some(_) => {
            let mut command = std::process::Command::new("/bin/sh");
            command.arg("-c").arg(LISTEN_PID_SHIM).arg(&resolved);
            command
        }
    };
    let mut mappings = Vec::new();
    if let Some(fd) = listener {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: LISTEN_FD,
        });
    }
    if let Some(fd) = node_channel {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: crate::node::CHANNEL_FD,
        });
    }
    if !mappings.is_empty() {
        command
            .fd_mappings(mappings)
            .map_err(|e| format!("cannot pass the listening socket or the IPC channel: {e}"))?;
    }
    command
        .args(leading)
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(pipe(capture_out))
        .stderr(pipe(capture_err))
        .process_group(0);
    if let Some(run_as) = run_as {
        run_as.apply(&mut command);
    }
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("cannot execute {program}: not found"),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot execute {program}: permission denied")
        }
        _ => format!("cannot execute {program}: {e}"),
    })?;
    let pid = child.id() as i32;
    // Nobody has waited yet, so the pid still names this process even if it exited.
    let pidfd = crate::child::pidfd_open(pid).map_err(|e| {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        format!("cannot watch process {pid}: {e}")
    })?;
    // Dropping a std `Child` neither kills nor waits: the pidfd owns the exit.
    Ok(Spawned {
        pid,
        pidfd,
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
    })
}

/// Larger pipes for a process's output, so a chatty app is handed off less often.
/// Best effort: a smaller pipe only means more hand-offs.
pub fn enlarge_pipe(pipe: &OwnedFd) {
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsFd::as_fd(pipe),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(crate::logs::PIPE_CAPACITY as i32),
    );
}

/// `program` as a path: relative to `cwd` when it has a slash, else searched in `path`.
fn resolve_program(program: &str, path: Option<&str>, cwd: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(cwd.join(program));
    }
    let path = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Sends `signal` to every process of the group; an empty group is not an error.
pub fn signal_group(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => tracing::warn!(pgid, %signal, %error, "cannot signal process group"),
    }
}

/// Whether any process (zombies included) is still in the group.
pub fn group_alive(pgid: i32) -> bool {
    // Signal 0 checks existence and permission without delivering anything.
    !matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH))
}

/// Parses a canonical signal name as `fleet_config::parse_signal` produces it.
pub fn signal_from_name(name: &str) -> Option<Signal> {
    name.parse::<Signal>().ok()
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`),
/// used to tell a process from a later one that reused its pid.
pub fn start_ticks(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|stat| stat.starttime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_suffix_goes_before_the_extension() {
        assert_eq!(
            with_instance_suffix(Path::new("/x/out.log"), 3),
            PathBuf::from("/x/out-3.log")
        );
        assert_eq!(
            with_instance_suffix(Path::new("/x/out"), 0),
            PathBuf::from("/x/out-0")
        );
    }

    #[test]
    fn log_paths_follow_pm2_naming() {
        let mut spec = AppSpec::with_defaults("api".into(), "api.js".into(), "/srv/app".into());
        let logs = Path::new("/home/.fleet/logs");
        let one = LogPaths::for_instance(&spec, 0, 1, logs);
        assert_eq!(one.out, Some(logs.join("api-out.log")));
        assert_eq!(one.err, Some(logs.join("api-error.log")));
        let two = LogPaths::for_instance(&spec, 1, 2, logs);
        assert_eq!(two.out, Some(logs.join("api-out-1.log")));
        spec.logs.merge_logs = Some(true);
        spec.logs.out_file = Some("logs/o.log".into());
        spec.logs.error_file = Some("NULL".into());
        let merged = LogPaths::for_instance(&spec, 1, 2, logs);
        assert_eq!(merged.out, Some(PathBuf::from("/srv/app/logs/o.log")));
        assert_eq!(merged.err, None);
        assert_eq!(merged.combined, None);
        spec.logs.log_file = Some(String::new());
        let combined = LogPaths::for_instance(&spec, 1, 2, logs);
        assert_eq!(combined.combined, Some(logs.join("api.log")));
    }

    #[test]
    fn programs_resolve_against_path_and_cwd() {
        let sh = resolve_program("sh", Some("/nonexistent:/bin:/usr/bin"), Path::new("/"));
        assert!(sh.is_some_and(|p| p.ends_with("sh")));
        assert_eq!(
            resolve_program("./run", None, Path::new("/srv")),
            Some(PathBuf::from("/srv/./run"))
        );
        assert_eq!(
            resolve_program("no-such-program-here", Some("/bin"), Path::new("/")),
            None
        );
    }
}
