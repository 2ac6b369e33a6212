//! Starting and signalling app processes: each instance runs in its own process group
//! so a stop reaches every process it started. The supervisor decides when; this
//! module only knows how.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use fleet_config::AppSpec;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Log files are private to their owner, like every other file the agent writes.
const LOG_FILE_MODE: u32 = 0o600;
const DEV_NULL: &str = "/dev/null";

/// Where one instance's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPaths {
    pub out: Option<PathBuf>,
    pub err: Option<PathBuf>,
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
        let pick = |custom: &Option<String>, default_suffix: &str| -> Option<PathBuf> {
            let base = match custom.as_deref() {
                Some(DEV_NULL) | Some("NULL") => return None,
                Some(path) if !path.is_empty() => spec.cwd.join(path),
                _ => logs_dir.join(format!("{}-{default_suffix}.log", spec.name)),
            };
            Some(if merged {
                base
            } else {
                with_instance_suffix(&base, instance)
            })
        };
        LogPaths {
            out: pick(&spec.logs.out_file, "out"),
            err: pick(&spec.logs.error_file, "error"),
        }
    }

    pub fn files(&self) -> Vec<PathBuf> {
        self.out.iter().chain(self.err.iter()).cloned().collect()
    }
}

/// `out.log` becomes `out-3.log`, as PM2 names non-merged instance logs.
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

fn open_log(path: &Option<PathBuf>) -> std::io::Result<Stdio> {
    let Some(path) = path else {
        return Ok(Stdio::null());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)?;
    Ok(Stdio::from(file))
}

/// Starts one instance in a new process group. Output is appended to its log files.
pub fn spawn(
    spec: &AppSpec,
    env: impl IntoIterator<Item = (String, String)>,
    logs: &LogPaths,
) -> Result<tokio::process::Child, String> {
    let (program, leading) = spec
        .command
        .split_first()
        .ok_or_else(|| "the app has no command".to_string())?;
    let stdout = open_log(&logs.out).map_err(|e| format!("cannot open the out log: {e}"))?;
    let stderr = open_log(&logs.err).map_err(|e| format!("cannot open the error log: {e}"))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(leading)
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        // The supervisor owns the exit; it must not be killed when the handle drops.
        .kill_on_drop(false);
    command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("cannot execute {program}: not found"),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot execute {program}: permission denied")
        }
        _ => format!("cannot execute {program}: {e}"),
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
    }
}
