//! Files under `FLEET_HOME`: their names, the state file the agent rewrites on every
//! change (so a restarted agent brings its apps back), and the `dump.json` that `save`
//! writes. Every file is written atomically (temp file, fsync, rename) and readable by
//! its owner only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_config::AppSpec;
use serde::{Deserialize, Serialize};

/// Version of `state.json` and `dump.json`; a newer file is refused, never misread.
pub const FORMAT_VERSION: u32 = 1;
const PRIVATE_FILE_MODE: u32 = 0o600;
const PRIVATE_DIR_MODE: u32 = 0o700;

/// The layout of one agent's home.
#[derive(Clone, Debug)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// Creates the home (mode 0700) and its `logs/` directory.
    pub fn create(&self) -> std::io::Result<()> {
        for dir in [self.root.clone(), self.logs_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(&dir)?;
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("agent.pid")
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn dump_file(&self) -> PathBuf {
        self.root.join("dump.json")
    }
    pub fn dump_backup(&self) -> PathBuf {
        self.root.join("dump.json.bak")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn agent_log(&self) -> PathBuf {
        self.root.join("agent.log")
    }
}

/// One instance as the state file and the dump keep it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedProcess {
    pub id: u32,
    pub instance: u32,
    /// Shared with the supervisor's table: writing the state file copies no spec.
    pub spec: Arc<AppSpec>,
    /// Whether it should be running (online, launching or waiting to restart).
    pub wants_running: bool,
    pub restarts: u32,
    /// The running process when the file was written, so a restarted agent can find
    /// and stop an orphan instead of starting a second copy.
    pub pid: Option<i32>,
    pub start_ticks: Option<u64>,
    pub created_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedList {
    pub version: u32,
    pub processes: Vec<SavedProcess>,
}

impl SavedList {
    pub fn new(processes: Vec<SavedProcess>) -> SavedList {
        SavedList {
            version: FORMAT_VERSION,
            processes,
        }
    }

    pub fn read(path: &Path) -> Result<SavedList, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let list: SavedList =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if list.version > FORMAT_VERSION {
            return Err(format!(
                "{}: written by a newer fleet (format {}, this agent reads {})",
                path.display(),
                list.version,
                FORMAT_VERSION
            ));
        }
        Ok(list)
    }

    /// Streams the list into the file (through a small buffer: with 100 apps the JSON is
    /// hundreds of KB the agent need not hold at once), atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic_with(path, |file| {
            let mut writer = std::io::BufWriter::new(file);
            serde_json::to_writer(&mut writer, self).map_err(std::io::Error::other)?;
            writer.flush()
        })
    }
}

/// Writes `bytes` to `path` so a reader sees the old or the new content, never a mix,
/// even if the agent dies halfway.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |mut file| file.write_all(bytes))
}

/// `write_atomic` with the content written by `write` into the new file.
fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&tmp)?;
    let written = write(&file).and_then(|()| file.sync_all());
    if let Err(error) = written {
        let _ = fs::remove_file(&tmp);
        return Err(error);
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump.json");
        fs::write(&path, r#"{"version": 99, "processes": []}"#).unwrap();
        assert!(SavedList::read(&path).unwrap_err().contains("newer fleet"));
    }
}
