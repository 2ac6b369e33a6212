//! One log file and its rotation. Rotation renames the file aside and opens a new one,
//! never copy-then-truncate (pm2-logrotate loses the lines written between the copy and
//! the truncate, and can fill a disk when the truncate fails: logrotate#165, #169).
//! Rotated files are named as pm2-logrotate names them, `<stem>__<date>.log`, kept up
//! to `retain`, optionally gzipped on a background thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fleet_config::Rotation;

/// Log files are private to their owner, like every other file the agent writes.
const LOG_FILE_MODE: u32 = 0o600;
/// pm2-logrotate's `dateFormat` default, `YYYY-MM-DD_HH-mm-ss`, in strftime form.
const ROTATED_DATE_FORMAT: &str = "%Y-%m-%d_%H-%M-%S";

pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    /// One compression at a time per log: concurrent gzip and prune threads would
    /// count a rotation twice (plain and gzipped) and prune the wrong one.
    compressing: std::sync::Arc<std::sync::Mutex<()>>,
}

impl LogFile {
    /// Opens (creating it and its directories) `path` for appending.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<LogFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
            compressing: std::sync::Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole lines; rotates first when the file has reached `max_size`, so a
    /// rotated file never ends in the middle of a line.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.rotation.max_size_bytes > 0 && self.size >= self.rotation.max_size_bytes {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Renames the file aside and opens a new one; prunes old ones beyond `retain`.
    /// Returns the rotated file's path (compressed later, on another thread).
    pub fn rotate(&mut self) -> io::Result<Option<PathBuf>> {
        if self.size == 0 {
            return Ok(None);
        }
        let rotated = self.rotated_name();
        fs::rename(&self.path, &rotated)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        if self.rotation.compress {
            let plain = rotated.clone();
            let retain = self.rotation.retain;
            let path = self.path.clone();
            let lock = self.compressing.clone();
            std::thread::spawn(move || {
                let _one_at_a_time = lock.lock();
                if let Err(error) = gzip(&plain) {
                    tracing::warn!(file = %plain.display(), %error, "cannot compress a rotated log");
                }
                prune(&path, retain);
            });
        } else {
            prune(&self.path, self.rotation.retain);
        }
        Ok(Some(rotated))
    }

    /// Opens the path again: an external tool may have moved or deleted the file.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }

    /// Empties the file (`fleet flush`). Writes are in append mode, so the next one
    /// lands at the new end.
    pub fn truncate(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.size = 0;
        Ok(())
    }

    fn rotated_name(&self) -> PathBuf {
        let (stem, ext) = split_name(&self.path);
        let date = jiff::Zoned::now().strftime(ROTATED_DATE_FORMAT).to_string();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // Several rotations in one second (a fast writer, a small max_size) get a
        // counter above every earlier one, even pruned ones' successors, so names keep
        // sorting in rotation order.
        let last = rotations(&self.path)
            .into_iter()
            .filter(|((d, _), _)| *d == date)
            .map(|((_, n), _)| n)
            .max();
        match last {
            None => dir.join(format!("{stem}__{date}{ext}")),
            Some(n) => dir.join(format!("{stem}__{date}.{}{ext}", n + 1)),
        }
    }
}

/// `api-out.log` -> (`api-out`, `.log`); a name without extension keeps an empty one.
fn split_name(path: &Path) -> (String, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rfind('.') {
        Some(dot) if dot > 0 => (name[..dot].to_string(), name[dot..].to_string()),
        _ => (name, String::new()),
    }
}

fn with_gz(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".gz");
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)
}

/// The rotated files of `path`, oldest rotation first. The order comes from the names
/// (`<stem>__<date>[.<n>]<ext>[.gz]`), never from mtimes: compression rewrites files
/// in the background and out of order.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    rotations(path)
        .into_iter()
        .flat_map(|(_, files)| files)
        .collect()
}

/// Rotations of `path` by key, oldest first; a rotation may briefly exist both plain
/// and gzipped while it is being compressed.
fn rotations(path: &Path) -> Vec<((String, u32), Vec<PathBuf>)> {
    let (stem, ext) = split_name(path);
    let prefix = format!("{stem}__");
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut by_key: std::collections::BTreeMap<(String, u32), Vec<PathBuf>> =
        std::collections::BTreeMap::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        if rest.ends_with(".tmp") {
            // A compression in progress (or cut short by a crash).
            continue;
        }
        let rest = rest.strip_suffix(".gz").unwrap_or(rest);
        let rest = rest.strip_suffix(ext.as_str()).unwrap_or(rest);
        let (date, n) = match rest.rsplit_once('.') {
            Some((date, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                (date.to_string(), n.parse().unwrap_or(0))
            }
            _ => (rest.to_string(), 0),
        };
        by_key.entry((date, n)).or_default().push(entry.path());
    }
    by_key.into_iter().collect()
}

/// Deletes the oldest rotations beyond `retain`.
fn prune(path: &Path, retain: u32) {
    let rotations = rotations(path);
    let excess = rotations.len().saturating_sub(retain as usize);
    for (_, files) in &rotations[..excess] {
        for old in files {
            if let Err(error) = fs::remove_file(old)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(file = %old.display(), %error, "cannot delete an old rotated log");
            }
        }
    }
}

/// Compresses into a temporary name and renames it into place, so a `.gz` file is
/// always whole; the plain file goes only after that.
fn gzip(path: &Path) -> io::Result<()> {
    let target = with_gz(path);
    let mut temporary = target.clone().into_os_string();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut input = File::open(path)?;
    let output = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(LOG_FILE_MODE)
        .open(&temporary)?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    fs::rename(&temporary, &target)?;
    fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(max: u64, retain: u32, compress: bool) -> Rotation {
        Rotation {
            max_size_bytes: max,
            retain,
            compress,
            interval: None,
        }
    }

    #[test]
    fn rotates_by_size_on_line_boundaries_and_keeps_retain_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-out.log");
        let mut file = LogFile::open(&path, rotation(100, 3, false)).unwrap();
        let mut written = 0;
        for i in 0..100 {
            let line = format!("line {i:04} of the test\n");
            file.write(line.as_bytes()).unwrap();
            written += 1;
        }
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 3, "{rotated:?}");
        // Every file holds whole lines only.
        for f in rotated.iter().chain([&path]) {
            let text = fs::read_to_string(f).unwrap();
            assert!(text.ends_with('\n'));
            assert!(text.lines().all(|l| l.starts_with("line ")));
        }
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.contains(&format!("line {:04}", written - 1)));
    }

    #[test]
    fn compressed_rotation_produces_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut file = LogFile::open(&path, rotation(0, 5, true)).unwrap();
        file.write(b"hello\n").unwrap();
        let rotated = file.rotate().unwrap().unwrap();
        let gz = with_gz(&rotated);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !gz.exists() || rotated.exists() {
            assert!(std::time::Instant::now() < deadline, "no gzip produced");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(File::open(&gz).unwrap()),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "hello\n");
    }

    #[test]
    fn reopen_recreates_a_deleted_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/x.log");
        let mut file = LogFile::open(&path, Rotation::default()).unwrap();
        fs::remove_file(&path).unwrap();
        file.reopen().unwrap();
        file.write(b"back\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "back\n");
        file.truncate().unwrap();
        file.write(b"x\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "x\n");
    }
}
