//! `watch`: notices changes under an app's watched paths and reports each burst of them
//! once, after it has settled. Restarting the app (PM2's `restartProcessName` after
//! `watch_delay`) is the supervisor's business, not this module's.
//!
//! Ignore rules, which fix PM2's `ignore_watch` surprises (#2629: globs matched
//! nothing, only plain names worked; #3318, #5057: changes under ignored directories,
//! and dot-files once the user had a list of their own, still restarted the app):
//! * each `ignore` entry is a glob matched against the path relative to the watched root,
//!   against every directory on the way there, and against each path component alone,
//!   so `node_modules` or `logs` ignores that directory anywhere, `*.log` ignores log
//!   files anywhere, `build/**` (or just `build`) ignores a subtree, and `src/gen`
//!   ignores that one directory; an entry starting with `/` is matched against the
//!   absolute path instead;
//! * dot-files and dot-directories (`.git`) and `node_modules` are always ignored, as in
//!   PM2's default `/[\/\\]\.|node_modules/`, and still are when the user has a list of
//!   their own (in PM2 a user list replaces the default). They count from the watched
//!   root down, so a root inside one (`/srv/app/node_modules/my-lib`) is watched: that
//!   is the way to watch a dependency (#1373, #3074).
//!
//! Files the app writes itself (logs, caches, uploads, a pid file) under a watched path
//! restart it on every write, in a loop. Nothing here can tell them from a deploy: they
//! belong in the user's `ignore_watch`, or outside the watched paths.
//!
//! Ignored directories are never watched at all: inotify needs one watch per directory,
//! and a `node_modules` tree alone can exceed `fs.inotify.max_user_watches`.

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use notify::event::{ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// During a continuous stream of changes (a file written every 100 ms, say) the quiet
/// period never comes, and a pure debounce would never restart. So a burst is cut after
/// this many `delay`s: a constantly written file delays a restart by seconds, not
/// forever. Ten is a judgement, not a measurement: 5 s at the 500 ms default delay,
/// enough for most `git pull`s to land in one restart.
pub const MAX_WAIT_FACTOR: u32 = 10;

/// `touch` only changes a file's times, which inotify reports like a `chmod`. chokidar
/// (PM2) restarts on a new modification time but not on a permission change, and
/// `touch app.js` is a common way to ask for a restart; so a metadata change counts
/// when the file's modification time is this recent.
const TOUCH_WINDOW: Duration = Duration::from_secs(2);

/// Directory names ignored under every root, whatever the user's list: PM2's default
/// ignore, `/[\/\\]\.|node_modules/`, less the dot rule, which is checked by hand.
const ALWAYS_IGNORED: &[&str] = &["node_modules"];

/// What to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// Absolute paths, watched recursively; a file is watched by itself.
    pub paths: Vec<PathBuf>,
    /// `ignore_watch` globs; see the module comment.
    pub ignore: Vec<String>,
    /// `watch_delay`: a burst ends after this long without a change.
    pub delay: Duration,
}

/// Stops watching when dropped.
#[derive(Debug)]
pub struct WatchHandle {
    messages: Sender<Message>,
    stopped: Arc<AtomicBool>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // The thread may have ended already; nothing to do then.
        let _ = self.messages.send(Message::Stop);
    }
}

enum Message {
    Event(notify::Result<Event>),
    Stop,
}

/// Watches `paths` recursively; a burst of changes (events closer together than
/// `delay`) calls `changed` once, with the changed paths, after the burst has been
/// quiet for `delay` (or has lasted `MAX_WAIT_FACTOR` times `delay`). Paths matching an
/// ignore pattern never count. Dropping the handle stops watching.
///
/// `changed` runs on a thread of its own (`fleet-watch`), not on a tokio runtime: it
/// should hand the news on (an unbounded channel send) rather than do the restart. A
/// call already under way when the handle is dropped still completes.
///
/// Setting up walks the watched trees (ignored directories excepted) on the calling
/// thread. A path that does not exist, a bad pattern or the host's inotify limits
/// are errors, returned as short lower-case text.
pub fn spawn_watch(
    spec: WatchSpec,
    changed: impl Fn(Vec<PathBuf>) + Send + 'static,
) -> Result<WatchHandle, String> {
    let mut roots = Vec::with_capacity(spec.paths.len());
    for path in &spec.paths {
        // The root itself is followed if it is a symbolic link: the user named it.
        let metadata = std::fs::metadata(path)
            .map_err(|error| format!("cannot watch {}: {}", path.display(), io_text(&error)))?;
        roots.push(Root {
            path: path.clone(),
            is_dir: metadata.is_dir(),
        });
    }
    let filter = Filter::new(roots, &spec.ignore)?;

    let (messages, inbox) = mpsc::channel();
    let events = messages.clone();
    let watcher = notify::recommended_watcher(move |event| {
        let _ = events.send(Message::Event(event));
    })
    .map_err(|error| format!("cannot start watching: {}", notify_text(&error)))?;
    let mut watched = Watched { watcher, filter };
    watched.watch_roots()?;

    let stopped = Arc::new(AtomicBool::new(false));
    let thread_stopped = Arc::clone(&stopped);
    let delay = spec.delay;
    std::thread::Builder::new()
        .name("fleet-watch".to_string())
        .spawn(move || run(watched, inbox, delay, &thread_stopped, changed))
        .map_err(|error| format!("cannot start watching: {}", io_text(&error)))?;
    Ok(WatchHandle { messages, stopped })
}

/// The watch thread: collects changes into bursts and reports each one once.
fn run(
    mut watched: Watched,
    inbox: Receiver<Message>,
    delay: Duration,
    stopped: &AtomicBool,
    changed: impl Fn(Vec<PathBuf>),
) {
    let cap = delay.saturating_mul(MAX_WAIT_FACTOR);
    let mut pending = BTreeSet::new();
    // The first and the latest change of the burst under way.
    let mut burst: Option<(Instant, Instant)> = None;
    loop {
        let message = match burst {
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some((first, latest)) => {
                let due = (latest + delay).min(first + cap);
                // Checked before receiving: a flood of events would otherwise keep
                // `recv_timeout` from ever timing out.
                match due.checked_duration_since(Instant::now()) {
                    Some(wait) if !wait.is_zero() => inbox.recv_timeout(wait),
                    _ => Err(RecvTimeoutError::Timeout),
                }
            }
        };
        match message {
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                burst = None;
                let paths: Vec<PathBuf> = std::mem::take(&mut pending).into_iter().collect();
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                changed(paths);
            }
            Ok(Message::Event(Err(error))) => {
                tracing::warn!("watch: {}; hint: {}", notify_text(&error), hint(&error));
            }
            Ok(Message::Event(Ok(event))) => {
                let paths = watched.changes(&event);
                if !paths.is_empty() {
                    let now = Instant::now();
                    burst = Some((burst.map_or(now, |(first, _)| first), now));
                    pending.extend(paths);
                }
            }
        }
    }
}

/// The watcher and what it is told to watch.
struct Watched {
    watcher: RecommendedWatcher,
    filter: Filter,
}

impl Watched {
    fn watch_roots(&mut self) -> Result<(), String> {
        for index in 0..self.filter.roots.len() {
            let root = &self.filter.roots[index];
            let path = root.path.clone();
            if root.is_dir {
                self.watch_tree(&path)?;
            } else {
                // A file is watched through its directory: editors save by writing a
                // new file and renaming it over the old one, which would leave a
                // watch on the file itself watching a deleted inode.
                let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                self.watch_one(&parent)?;
            }
        }
        Ok(())
    }

    /// Watches `dir` and every directory under it that is not ignored.
    fn watch_tree(&mut self, dir: &Path) -> Result<(), String> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            self.watch_one(&dir)?;
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Gone again, or unreadable: nothing under it to watch.
                Err(_) => continue,
            };
            for entry in entries.flatten() {
                // `file_type` does not follow symbolic links, so a link cannot lead the
                // walk round in a loop or out of the tree.
                let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
                let path = entry.path();
                if is_dir && self.filter.counts(&path) {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    fn watch_one(&mut self, dir: &Path) -> Result<(), String> {
        match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => Ok(()),
            // Removed between the listing and the watch: not an error.
            Err(error) if matches!(error.kind, notify::ErrorKind::PathNotFound) => Ok(()),
            Err(error) => Err(format!(
                "cannot watch {}: {}\nhint: {}",
                dir.display(),
                notify_text(&error),
                hint(&error)
            )),
        }
    }

    /// The paths of `event` that count as changes; watches directories that arrived.
    fn changes(&mut self, event: &Event) -> Vec<PathBuf> {
        if event.need_rescan() {
            // The kernel's queue overflowed: changes were lost, directories may have
            // arrived unseen. Restart, and watch whatever is there now.
            if let Err(error) = self.watch_roots() {
                tracing::warn!("watch: {error}");
            }
            return self.filter.roots.iter().map(|r| r.path.clone()).collect();
        }
        let adds_directories = matches!(
            event.kind,
            EventKind::Any
                | EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Name(
                    RenameMode::To | RenameMode::Both | RenameMode::Any
                ))
        );
        let mut changes = Vec::new();
        for path in &event.paths {
            if !self.filter.counts(path) || !is_change(&event.kind, path) {
                continue;
            }
            if adds_directories && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                // A directory made or moved in: the watches are per directory.
                // Whatever is written in it before the watch is in place belongs to
                // this burst, which restarts the app anyway.
                if let Err(error) = self.watch_tree(path) {
                    tracing::warn!("watch: {error}");
                }
            }
            changes.push(path.clone());
        }
        changes
    }
}

/// Whether an event of `kind` on `path` is a change: content, creation, removal or
/// renaming. Opening, reading and closing are not, nor is a permission change.
fn is_change(kind: &EventKind, path: &Path) -> bool {
    match kind {
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => touched(path),
        EventKind::Any | EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) => true,
    }
}

/// Whether `path` was modified within `TOUCH_WINDOW`: a `touch`, not a `chmod`.
fn touched(path: &Path) -> bool {
    let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    // A modification time in the future is recent enough.
    SystemTime::now()
        .duration_since(modified)
        .map_or(true, |age| age <= TOUCH_WINDOW)
}

/// A watched path and whether it is a directory.
#[derive(Clone, Debug)]
struct Root {
    path: PathBuf,
    is_dir: bool,
}

/// Decides which paths count, from the roots and the ignore patterns.
#[derive(Debug)]
struct Filter {
    roots: Vec<Root>,
    /// Patterns matched against relative paths, their ancestors and their components.
    relative: GlobSet,
    /// Patterns starting with `/`, matched against absolute paths and their ancestors.
    absolute: GlobSet,
}

impl Filter {
    fn new(roots: Vec<Root>, ignore: &[String]) -> Result<Filter, String> {
        let mut relative = GlobSetBuilder::new();
        let mut absolute = GlobSetBuilder::new();
        let user = ignore.iter().map(String::as_str);
        for entry in ALWAYS_IGNORED.iter().copied().chain(user) {
            let mut pattern = entry.trim();
            // `./logs/` is how many PM2 configs spell `logs`.
            while let Some(rest) = pattern.strip_prefix("./") {
                pattern = rest;
            }
            let pattern = pattern.trim_end_matches('/');
            if pattern.is_empty() {
                continue;
            }
            let set = if pattern.starts_with('/') {
                &mut absolute
            } else {
                &mut relative
            };
            // `build/**` means the directory too, not only what is in it; otherwise
            // making `build` itself would count.
            let whole = pattern.strip_suffix("/**").filter(|dir| !dir.is_empty());
            for glob in std::iter::once(pattern).chain(whole) {
                // `*` stays within one component, as in `.gitignore`; patterns that
                // should match at any depth are matched against each component.
                let glob = GlobBuilder::new(glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|error| {
                        format!("bad ignore_watch pattern \"{entry}\": {}", error.kind())
                    })?;
                set.add(glob);
            }
        }
        let build = |set: GlobSetBuilder| {
            set.build()
                .map_err(|error| format!("bad ignore_watch pattern: {}", error.kind()))
        };
        Ok(Filter {
            roots,
            relative: build(relative)?,
            absolute: build(absolute)?,
        })
    }

    /// Whether a change at `path` counts: it is under a root and not ignored.
    fn counts(&self, path: &Path) -> bool {
        // With nested roots, the innermost decides, so that a root inside an ignored
        // directory is still watched.
        let root = self
            .roots
            .iter()
            .filter(|root| {
                if root.is_dir {
                    path.starts_with(&root.path)
                } else {
                    path == root.path
                }
            })
            .max_by_key(|root| root.path.components().count());
        let Some(root) = root else {
            return false;
        };
        let Ok(relative) = path.strip_prefix(&root.path) else {
            return false;
        };
        !self.ignored(path, relative)
    }

    fn ignored(&self, path: &Path, relative: &Path) -> bool {
        let mut ancestor = PathBuf::new();
        for component in relative.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            if name.as_encoded_bytes().first() == Some(&b'.') {
                return true;
            }
            ancestor.push(name);
            if self.relative.is_match(&ancestor) || self.relative.is_match(Path::new(name)) {
                return true;
            }
        }
        !self.absolute.is_empty() && path.ancestors().any(|a| self.absolute.is_match(a))
    }
}

fn hint(error: &notify::Error) -> &'static str {
    match error.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "raise fs.inotify.max_user_watches (sysctl), or ignore_watch big directories"
        }
        _ => "check that the watched paths exist and are readable",
    }
}

fn notify_text(error: &notify::Error) -> String {
    match &error.kind {
        notify::ErrorKind::Io(error) => io_text(error),
        notify::ErrorKind::MaxFilesWatch => "the inotify watch limit is reached".to_string(),
        notify::ErrorKind::PathNotFound => "no such file or directory".to_string(),
        notify::ErrorKind::Generic(text) => text.clone(),
        other => format!("{other:?}"),
    }
}

/// `io::Error`'s text without the "(os error 2)" suffix.
fn io_text(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_lowercase(),
        None => text.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Mutex;

    use super::*;

    /// How long a test waits for something that should happen.
    const DEADLINE: Duration = Duration::from_secs(10);
    const DELAY: Duration = Duration::from_millis(300);

    type Calls = Arc<Mutex<Vec<Vec<PathBuf>>>>;

    fn watch(root: &Path, ignore: &[&str]) -> (WatchHandle, Calls) {
        let calls: Calls = Arc::default();
        let sink = Arc::clone(&calls);
        let spec = WatchSpec {
            paths: vec![root.to_path_buf()],
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            delay: DELAY,
        };
        let handle = spawn_watch(spec, move |paths| sink.lock().unwrap().push(paths)).unwrap();
        (handle, calls)
    }

    fn count(calls: &Calls) -> usize {
        calls.lock().unwrap().len()
    }

    /// Polls until `calls` holds `n` calls, or the deadline passes.
    fn wait_for(calls: &Calls, n: usize) -> bool {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if count(calls) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits long enough for a burst to have been reported, if there was one.
    fn settle() {
        std::thread::sleep(DELAY * 4);
    }

    fn filter(ignore: &[&str]) -> Filter {
        let roots = vec![
            Root {
                path: PathBuf::from("/srv/app"),
                is_dir: true,
            },
            Root {
                path: PathBuf::from("/srv/app/node_modules/my-lib"),
                is_dir: true,
            },
            Root {
                path: PathBuf::from("/etc/app.conf"),
                is_dir: false,
            },
        ];
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        Filter::new(roots, &ignore).unwrap()
    }

    #[test]
    fn ignore_patterns_match_relative_paths_directories_and_components() {
        let filter = filter(&["*.log", "build/**", "./tmp/", "src/gen", "/srv/app/data"]);
        let counts = |p: &str| filter.counts(Path::new(p));
        assert!(counts("/srv/app/index.js"));
        assert!(counts("/srv/app/src/lib/util.js"));
        // Outside every root.
        assert!(!counts("/srv/other/index.js"));
        assert!(!counts("/etc/other.conf"));
        assert!(counts("/etc/app.conf"));
        // `*.log` anywhere, but `*` does not stand for a directory on its own.
        assert!(!counts("/srv/app/out.log"));
        assert!(!counts("/srv/app/logs/deep/err.log"));
        assert!(counts("/srv/app/logs/deep/err.txt"));
        // A subtree, the directory itself included.
        assert!(!counts("/srv/app/build"));
        assert!(!counts("/srv/app/build/a/b.js"));
        assert!(counts("/srv/app/src/build.js"));
        // `./tmp/` is `tmp`, a directory name anywhere.
        assert!(!counts("/srv/app/tmp/x"));
        assert!(!counts("/srv/app/src/tmp/x"));
        // A path with a slash names one directory.
        assert!(!counts("/srv/app/src/gen/x.js"));
        assert!(counts("/srv/app/lib/src/gen/x.js"));
        // Absolute.
        assert!(!counts("/srv/app/data/db.json"));
        // Always: dot-files, dot-directories, node_modules.
        assert!(!counts("/srv/app/.env"));
        assert!(!counts("/srv/app/.git/HEAD"));
        assert!(!counts("/srv/app/src/.cache/x"));
        assert!(!counts("/srv/app/node_modules/left-pad/index.js"));
        // ... but a root inside node_modules is watched.
        assert!(counts("/srv/app/node_modules/my-lib/index.js"));
    }

    #[test]
    fn a_bad_pattern_is_refused() {
        let error = Filter::new(Vec::new(), &["src/[oops".to_string()]).unwrap_err();
        assert!(
            error.starts_with("bad ignore_watch pattern \"src/[oops\": "),
            "{error}"
        );
    }

    #[test]
    fn a_missing_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let spec = WatchSpec {
            paths: vec![missing.clone()],
            ignore: Vec::new(),
            delay: DELAY,
        };
        let error = spawn_watch(spec, |_| {}).err().unwrap();
        assert_eq!(
            error,
            format!(
                "cannot watch {}: no such file or directory",
                missing.display()
            )
        );
    }

    #[test]
    fn a_burst_of_edits_restarts_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("index.js");
        fs::write(&file, "0").unwrap();
        let (_handle, calls) = watch(dir.path(), &[]);
        for i in 1..=5 {
            fs::write(&file, i.to_string()).unwrap();
            // A burst, not a race: 5 x 20 ms stays well inside the 300 ms delay.
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(wait_for(&calls, 1), "no restart");
        std::thread::sleep(DELAY * 3);
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0], vec![file]);
    }

    #[test]
    fn a_file_written_without_pause_still_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        let (_handle, calls) = watch(dir.path(), &[]);
        // Writes every 50 ms never leave the 300 ms quiet period; the cap at
        // MAX_WAIT_FACTOR x 300 ms = 3 s must cut the burst while they go on.
        let started = Instant::now();
        let mut i = 0;
        while count(&calls) == 0 && started.elapsed() < DEADLINE {
            i += 1;
            fs::write(&file, i.to_string()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(count(&calls), 1, "no restart during the stream");
        assert!(started.elapsed() >= DELAY * MAX_WAIT_FACTOR);
    }

    #[test]
    fn ignored_paths_do_not_restart() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["node_modules/left-pad", ".git", "logs"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let (_handle, calls) = watch(dir.path(), &["*.log"]);
        fs::write(dir.path().join("node_modules/left-pad/index.js"), "x").unwrap();
        fs::create_dir(dir.path().join("node_modules/new-dep")).unwrap();
        fs::write(dir.path().join(".git/HEAD"), "x").unwrap();
        fs::write(dir.path().join(".env"), "x").unwrap();
        fs::write(dir.path().join("logs/out.log"), "x").unwrap();
        fs::write(dir.path().join("app.log"), "x").unwrap();
        settle();
        assert_eq!(count(&calls), 0, "{:?}", calls.lock().unwrap());

        // The watcher was listening all along: a file that counts is reported alone.
        let file = dir.path().join("logs/notes.txt");
        fs::write(&file, "x").unwrap();
        assert!(wait_for(&calls, 1), "no restart");
        assert_eq!(calls.lock().unwrap()[0], vec![file]);
    }

    #[test]
    fn changes_in_nested_and_new_directories_restart() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("src/lib");
        fs::create_dir_all(&nested).unwrap();
        let (_handle, calls) = watch(dir.path(), &[]);

        let file = nested.join("util.js");
        fs::write(&file, "x").unwrap();
        assert!(wait_for(&calls, 1), "no restart for a nested file");
        assert_eq!(calls.lock().unwrap()[0], vec![file]);

        // A directory made after the start is reported, then watched in its turn.
        let fresh = dir.path().join("src/fresh");
        fs::create_dir(&fresh).unwrap();
        assert!(wait_for(&calls, 2), "no restart for a new directory");
        let file = fresh.join("deep.js");
        fs::write(&file, "x").unwrap();
        assert!(wait_for(&calls, 3), "no restart inside a new directory");
        assert_eq!(calls.lock().unwrap()[2], vec![file]);
    }

    #[test]
    fn a_touch_restarts_but_a_chmod_does_not() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("index.js");
        fs::write(&file, "x").unwrap();
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let (_handle, calls) = watch(dir.path(), &[]);

        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        settle();
        assert_eq!(count(&calls), 0);

        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        assert!(wait_for(&calls, 1), "no restart for a touch");
    }

    #[test]
    fn dropping_the_handle_stops_watching() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("index.js");
        let (handle, calls) = watch(dir.path(), &[]);
        fs::write(&file, "1").unwrap();
        assert!(wait_for(&calls, 1), "no restart");

        drop(handle);
        fs::write(&file, "2").unwrap();
        settle();
        assert_eq!(count(&calls), 1);
    }
}
