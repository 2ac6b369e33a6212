//! Log capture: every instance's stdout and stderr arrive through pipes the agent owns.
//! A pump task per stream reads them in large chunks, cuts whole lines (splitting a line
//! over `MAX_LINE` bytes instead of dropping it), writes them to the instance's files and
//! only then reads more, so a slow disk slows the app down instead of growing memory.
//! Recent lines stay in a small ring per instance for `fleet logs --lines`, and followers
//! (`fleet logs -f`, `monit`) get chunks from a broadcast channel that never blocks the
//! pumps: a follower that falls behind is told how much it missed.

mod file;
mod format;
pub mod gaps;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use fleet_config::Rotation;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use file::{LogFile, rotated_files};
pub use format::{DateFormat, LineFormat};

/// Capacity asked for each app pipe, and the bytes read at once. Linux pipes hold
/// 64 KiB by default, so a flooding app blocked on every hand-off to the writer;
/// 1 MiB (the unprivileged maximum) cut the hand-offs 16-fold (`bench/logs`).
pub const PIPE_CAPACITY: usize = 1024 * 1024;
const READ_CHUNK: usize = PIPE_CAPACITY;
/// The first read buffer of a stream: enough for a few lines; it doubles while reads
/// fill it, so a flooding app reaches `READ_CHUNK` within a dozen reads.
const INITIAL_READ: usize = 1024;
/// A line longer than this is split into several (never dropped, never held forever).
pub const MAX_LINE: usize = 16 * 1024;
/// Recent output kept per instance for `fleet logs --lines N`; bounded in bytes so 100
/// chatty apps cost at most a few MB of agent memory.
const RING_BYTES: usize = 32 * 1024;
/// Chunks a follower may lag behind before it is told it missed some.
const FOLLOW_BUFFER: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }
}

/// Whole lines captured together from one stream of one instance.
#[derive(Debug)]
pub struct Chunk {
    /// Capture order across every instance.
    pub seq: u64,
    /// Lines of this instance's stream captured before this chunk (`gaps`: a
    /// follower that fell behind counts what it missed by these).
    pub first_line: u64,
    pub ts_ms: u64,
    pub id: u32,
    pub app: Arc<str>,
    pub namespace: Arc<str>,
    pub instance: u32,
    pub stream: Stream,
    /// Lines as the app wrote them, each ending with `\n`.
    pub data: Box<[u8]>,
}

impl Chunk {
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.data
            .strip_suffix(b"\n")
            .unwrap_or(&self.data)
            .split(|b| *b == b'\n')
    }
}

/// Lines from the rings, each with its chunk and its index in it, in capture order.
pub type History = Vec<(Arc<Chunk>, usize, String)>;

/// One log file, shared by every instance that writes to it (merged logs).
pub type SharedFile = Arc<Mutex<LogFile>>;

/// Where one instance's output goes and how it is written.
pub struct InstanceLogs {
    pub id: u32,
    pub app: Arc<str>,
    pub namespace: Arc<str>,
    pub instance: u32,
    pub out: Option<SharedFile>,
    pub err: Option<SharedFile>,
    pub combined: Option<SharedFile>,
    pub format: LineFormat,
}

impl InstanceLogs {
    fn files(&self, stream: Stream) -> Vec<SharedFile> {
        let own = match stream {
            Stream::Out => &self.out,
            Stream::Err => &self.err,
        };
        own.iter().chain(self.combined.iter()).cloned().collect()
    }

    /// Whether anything reads this stream; otherwise the app's output goes to /dev/null.
    pub fn captures(&self, stream: Stream) -> bool {
        !self.files(stream).is_empty()
    }
}

#[derive(Default)]
struct Ring {
    chunks: VecDeque<Arc<Chunk>>,
    bytes: usize,
    /// Lines captured so far, out and err.
    lines: [u64; 2],
}

struct Inner {
    files: Mutex<HashMap<PathBuf, SharedFile>>,
    rings: Mutex<HashMap<u32, Ring>>,
    follow: broadcast::Sender<Arc<Chunk>>,
    seq: AtomicU64,
    /// Set once, when the pumps hand their pipes over to the next agent image.
    stop: watch::Sender<bool>,
    pumps: Mutex<Vec<JoinHandle<Option<PipeCarry>>>>,
    /// Under systemd with a file descriptor store: another descriptor of each pipe
    /// being pumped, for the store (`crate::fdstore`), by capture.
    spares: Mutex<Option<HashMap<u64, SparePipe>>>,
    next_spare: AtomicU64,
}

/// Another descriptor of a pumped pipe, with its instance and stream.
type SparePipe = (u32, Stream, OwnedFd);

/// Removes a pump's spare descriptor when the pump ends.
struct Spare {
    hub: Arc<Inner>,
    key: u64,
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some(spares) = self.hub.spares.lock().expect("spare pipes").as_mut() {
            spares.remove(&self.key);
        }
    }
}

/// A log pipe handed from one agent image to the next (`fleet update`): its read end
/// and the start of a line the app has not finished writing. What is still in the
/// pipe stays there for the next image to read, so no line is lost or doubled.
#[derive(Debug)]
pub struct PipeCarry {
    pub id: u32,
    pub stream: Stream,
    pub fd: OwnedFd,
    pub pending: Vec<u8>,
}

/// The agent's log plumbing; cheap to clone.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<Inner>,
}

impl Default for LogHub {
    fn default() -> Self {
        LogHub::new()
    }
}

impl LogHub {
    pub fn new() -> LogHub {
        let (follow, _) = broadcast::channel(FOLLOW_BUFFER);
        LogHub {
            inner: Arc::new(Inner {
                files: Mutex::new(HashMap::new()),
                rings: Mutex::new(HashMap::new()),
                follow,
                seq: AtomicU64::new(0),
                stop: watch::channel(false).0,
                pumps: Mutex::new(Vec::new()),
                spares: Mutex::new(None),
                next_spare: AtomicU64::new(0),
            }),
        }
    }

    /// The shared writer of `path`, opened on first use.
    pub fn file(&self, path: &Path, rotation: &Rotation) -> io::Result<SharedFile> {
        let mut files = self.inner.files.lock().expect("log file map");
        if let Some(file) = files.get(path) {
            return Ok(file.clone());
        }
        let file = Arc::new(Mutex::new(LogFile::open(path, rotation.clone())?));
        files.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }

    /// Closes files no instance writes to any more.
    pub fn release_unused(&self) {
        self.inner
            .files
            .lock()
            .expect("log file map")
            .retain(|_, file| Arc::strong_count(file) > 1);
    }

    /// Forgets an instance's recent lines (it was deleted).
    pub fn forget(&self, id: u32) {
        self.inner.rings.lock().expect("log rings").remove(&id);
    }

    /// Starts pumping one of an instance's pipes into its files, after `pending` (the
    /// unfinished line a previous agent image read). The pump ends at EOF, after the
    /// last byte the app (or any child holding the pipe) wrote has been written.
    pub fn capture(
        &self,
        logs: Arc<InstanceLogs>,
        stream: Stream,
        pipe: OwnedFd,
        pending: Vec<u8>,
    ) {
        let spare = self.keep_spare(logs.id, stream, &pipe);
        let reader = match pipe::Receiver::from_owned_fd(pipe) {
            Ok(reader) => reader,
            Err(error) => {
                tracing::error!(app = %logs.app, id = logs.id, %error, "cannot read an output pipe");
                return;
            }
        };
        let pumped = pump(
            self.inner.clone(),
            logs,
            stream,
            reader,
            pending,
            self.inner.stop.subscribe(),
        );
        let task = tokio::spawn(async move {
            let _spare = spare;
            pumped.await
        });
        let mut pumps = self.inner.pumps.lock().expect("pump list");
        pumps.retain(|pump| !pump.is_finished());
        pumps.push(task);
    }

    /// From now on keeps another descriptor of every pipe pumped, for systemd's file
    /// descriptor store (`pipes_for_store`).
    pub fn keep_pipes_for_store(&self) {
        let mut spares = self.inner.spares.lock().expect("spare pipes");
        spares.get_or_insert_with(HashMap::new);
    }

    fn keep_spare(&self, id: u32, stream: Stream, pipe: &OwnedFd) -> Option<Spare> {
        let mut spares = self.inner.spares.lock().expect("spare pipes");
        let spares = spares.as_mut()?;
        let fd = pipe.try_clone().ok()?;
        let key = self.inner.next_spare.fetch_add(1, Ordering::Relaxed);
        spares.insert(key, (id, stream, fd));
        Some(Spare {
            hub: self.inner.clone(),
            key,
        })
    }

    /// Another descriptor of each pipe being pumped, with its instance and stream.
    pub fn pipes_for_store(&self) -> Vec<(u32, Stream, OwnedFd)> {
        let spares = self.inner.spares.lock().expect("spare pipes");
        (spares.iter().flatten())
            .filter_map(|(_, (id, stream, fd))| Some((*id, *stream, fd.try_clone().ok()?)))
            .collect()
    }

    /// Stops every pump between two reads and returns their pipes, for the next
    /// agent image (`fleet update`). Each pump finishes the lines it has read first.
    pub async fn hand_over(&self) -> Vec<PipeCarry> {
        self.inner.stop.send_replace(true);
        let pumps = std::mem::take(&mut *self.inner.pumps.lock().expect("pump list"));
        let mut carried = Vec::new();
        for pump in pumps {
            if let Ok(Some(pipe)) = pump.await {
                carried.push(pipe);
            }
        }
        carried
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Chunk>> {
        self.inner.follow.subscribe()
    }

    /// `history`, and the lines captured so far of each instance's stream as of its
    /// sequence number: a follower that subscribed before this counts what it misses
    /// from there (`gaps`).
    pub fn history_and_marks(
        &self,
        matches: &dyn Fn(&Chunk) -> bool,
        lines: usize,
        stream: Option<Stream>,
        since_ms: Option<u64>,
    ) -> (History, u64, gaps::Marks) {
        let rings = self.inner.rings.lock().expect("log rings");
        let marks = (rings.iter())
            .flat_map(|(id, ring)| {
                [
                    (*id, Stream::Out, ring.lines[0]),
                    (*id, Stream::Err, ring.lines[1]),
                ]
            })
            .filter(|(_, _, lines)| *lines > 0)
            .map(|(id, stream, lines)| ((id, stream), lines))
            .collect();
        let (history, last_seq) = self.history_locked(&rings, matches, lines, stream, since_ms);
        (history, last_seq, marks)
    }

    /// The last `lines` lines of each instance `matches` selects (optionally of one
    /// stream and no older than `since_ms`), in capture order, and the sequence number
    /// up to which they go (a follower skips what it already got here).
    pub fn history(
        &self,
        matches: &dyn Fn(&Chunk) -> bool,
        lines: usize,
        stream: Option<Stream>,
        since_ms: Option<u64>,
    ) -> (History, u64) {
        let rings = self.inner.rings.lock().expect("log rings");
        self.history_locked(&rings, matches, lines, stream, since_ms)
    }

    fn history_locked(
        &self,
        rings: &HashMap<u32, Ring>,
        matches: &dyn Fn(&Chunk) -> bool,
        lines: usize,
        stream: Option<Stream>,
        since_ms: Option<u64>,
    ) -> (History, u64) {
        // Read under the rings' lock: sequence numbers are handed out under it too.
        let last_seq = self.inner.seq.load(Ordering::SeqCst);
        let mut picked: Vec<(u64, usize, Arc<Chunk>, String)> = Vec::new();
        for ring in rings.values() {
            let mut taken = Vec::new();
            'chunks: for chunk in ring.chunks.iter().rev() {
                if !matches(chunk)
                    || stream.is_some_and(|s| s != chunk.stream)
                    || since_ms.is_some_and(|since| chunk.ts_ms < since)
                {
                    continue;
                }
                let chunk_lines: Vec<&[u8]> = chunk.lines().collect();
                for (n, line) in chunk_lines.iter().enumerate().rev() {
                    if taken.len() >= lines {
                        break 'chunks;
                    }
                    taken.push((
                        chunk.seq,
                        n,
                        chunk.clone(),
                        String::from_utf8_lossy(line).into_owned(),
                    ));
                }
            }
            picked.extend(taken);
        }
        picked.sort_by_key(|(seq, n, _, _)| (*seq, *n));
        (
            picked.into_iter().map(|(_, n, c, l)| (c, n, l)).collect(),
            last_seq,
        )
    }

    /// Empties the given files (or every open file). Returns the paths emptied.
    pub fn flush(&self, paths: Option<&[PathBuf]>) -> Vec<PathBuf> {
        let files = self.inner.files.lock().expect("log file map");
        let mut flushed = Vec::new();
        let wanted: Vec<PathBuf> = match paths {
            Some(paths) => paths.to_vec(),
            None => files.keys().cloned().collect(),
        };
        for path in wanted {
            let result = match files.get(&path) {
                Some(file) => file.lock().expect("log file").truncate(),
                None if path.exists() => std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(0)),
                None => continue,
            };
            match result {
                Ok(()) => flushed.push(path),
                Err(error) => tracing::warn!(file = %path.display(), %error, "cannot flush a log"),
            }
        }
        flushed
    }

    /// Reopens every file (after an external tool moved or deleted them).
    pub fn reopen_all(&self) -> usize {
        let files = self.inner.files.lock().expect("log file map");
        let mut reopened = 0;
        for (path, file) in files.iter() {
            match file.lock().expect("log file").reopen() {
                Ok(()) => reopened += 1,
                Err(error) => tracing::warn!(file = %path.display(), %error, "cannot reopen a log"),
            }
        }
        reopened
    }

    /// Rotates the given files now (rotation by time).
    pub fn rotate(&self, paths: &[PathBuf]) {
        let files = self.inner.files.lock().expect("log file map");
        for path in paths {
            if let Some(file) = files.get(path)
                && let Err(error) = file.lock().expect("log file").rotate()
            {
                tracing::warn!(file = %path.display(), %error, "cannot rotate a log");
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Moves the complete lines at the front of `pending` out, splitting any line longer
/// than `MAX_LINE`. With `eof`, an unterminated last line counts as complete.
fn take_lines(pending: &mut Vec<u8>, eof: bool) -> Vec<u8> {
    let end = match memchr::memrchr(b'\n', pending) {
        Some(last) => last + 1,
        None => 0,
    };
    let mut out = Vec::with_capacity(end + 16);
    let mut rest = &pending[..end];
    while !rest.is_empty() {
        let len = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i);
        push_split(&mut out, &rest[..len]);
        rest = &rest[(len + 1).min(rest.len())..];
    }
    // The unterminated tail: split off full-size pieces now, keep the remainder unless
    // the stream ended.
    let mut tail = &pending[end..];
    while tail.len() > MAX_LINE {
        push_split(&mut out, &tail[..MAX_LINE]);
        tail = &tail[MAX_LINE..];
    }
    let remainder = if eof {
        if !tail.is_empty() {
            push_split(&mut out, tail);
        }
        Vec::new()
    } else {
        tail.to_vec()
    };
    *pending = remainder;
    out
}

/// Whether no line of `data` (the unterminated tail included) is longer than `MAX_LINE`.
fn lines_fit(data: &[u8]) -> bool {
    let mut start = 0;
    for newline in memchr::memchr_iter(b'\n', data) {
        if newline - start > MAX_LINE {
            return false;
        }
        start = newline + 1;
    }
    data.len() - start <= MAX_LINE
}

fn push_split(out: &mut Vec<u8>, line: &[u8]) {
    if line.is_empty() {
        out.push(b'\n');
        return;
    }
    for piece in line.chunks(MAX_LINE) {
        out.extend_from_slice(piece);
        out.push(b'\n');
    }
}

async fn pump(
    hub: Arc<Inner>,
    logs: Arc<InstanceLogs>,
    stream: Stream,
    mut reader: pipe::Receiver,
    mut pending: Vec<u8>,
    mut stop: watch::Receiver<bool>,
) -> Option<PipeCarry> {
    let files = logs.files(stream);
    // Most apps write little: the buffer starts small and uninitialised (nothing is
    // resident until bytes arrive) and doubles, up to `READ_CHUNK`, only while reads
    // fill it. 100 apps with 1 MiB each cost the agent megabytes it never used.
    let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_READ);
    let mut warned = false;
    loop {
        buf.clear();
        // Stopped only here, between reads (`read_buf` is cancel-safe): what was read
        // is always written before the pipe changes hands.
        let read = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => {
                let fd = reader.into_nonblocking_fd().ok()?;
                return Some(PipeCarry { id: logs.id, stream, fd, pending });
            }
            read = reader.read_buf(&mut buf) => read,
        };
        let (n, eof) = match read {
            Ok(0) | Err(_) => (0, true),
            Ok(n) => (n, false),
        };
        if n == buf.capacity() && buf.capacity() < READ_CHUNK {
            buf.reserve_exact(buf.capacity());
        }
        let data = &buf[..n];
        let lines = if pending.is_empty() && !eof && lines_fit(data) {
            // The common case: whole lines of normal length, cut with one copy.
            let end = memchr::memrchr(b'\n', data).map_or(0, |i| i + 1);
            pending.extend_from_slice(&data[end..]);
            data[..end].to_vec()
        } else {
            pending.extend_from_slice(data);
            take_lines(&mut pending, eof)
        };
        if !lines.is_empty() {
            let count = memchr::memchr_iter(b'\n', &lines).count() as u64;
            let (seq, first_line) = number(&hub, logs.id, stream, count);
            let chunk = Arc::new(Chunk {
                seq,
                first_line,
                ts_ms: now_ms(),
                id: logs.id,
                app: logs.app.clone(),
                namespace: logs.namespace.clone(),
                instance: logs.instance,
                stream,
                data: lines.into_boxed_slice(),
            });
            let formatted = (!logs.format.is_raw()).then(|| {
                let stamp = logs.format.stamp(&jiff::Zoned::now());
                let mut out = Vec::with_capacity(chunk.data.len() * 2);
                for line in chunk.lines() {
                    logs.format
                        .write_line(&mut out, line, &stamp, stream.as_str());
                }
                out
            });
            // Files first: a line is on disk before anyone is shown it.
            let write_chunk = chunk.clone();
            let write_files = files.clone();
            let result = tokio::task::spawn_blocking(move || {
                let bytes = formatted.as_deref().unwrap_or(&write_chunk.data);
                for file in &write_files {
                    file.lock().expect("log file").write(bytes)?;
                }
                Ok::<(), io::Error>(())
            })
            .await;
            if let Ok(Err(error)) = result
                && !warned
            {
                warned = true;
                tracing::error!(app = %logs.app, id = logs.id, %error, "cannot write a log file; lines are kept in memory only for `fleet logs`");
            }
            remember(&hub, &chunk);
            if hub.follow.receiver_count() > 0 {
                let _ = hub.follow.send(chunk);
            }
        }
        if eof {
            return None;
        }
    }
}

/// What a chunk costs a ring beyond its bytes: the `Chunk` itself, its `Arc` counts and
/// the allocator's headers. Counted, so a ring of short lines holds `RING_BYTES` of
/// memory, not `RING_BYTES` of text plus several times that in bookkeeping (the soak
/// bench showed slowly filling rings of one-line chunks as growth for minutes).
const CHUNK_OVERHEAD: usize = std::mem::size_of::<Chunk>() + 48;

fn ring_cost(chunk: &Chunk) -> usize {
    chunk.data.len() + CHUNK_OVERHEAD
}

/// A chunk's sequence number and first line, handed out together under the rings'
/// lock, so `marks` and `history` see counts that match their sequence number.
fn number(hub: &Inner, id: u32, stream: Stream, lines: u64) -> (u64, u64) {
    let mut rings = hub.rings.lock().expect("log rings");
    let counter = &mut rings.entry(id).or_default().lines[stream as usize];
    let first_line = *counter;
    *counter += lines;
    (hub.seq.fetch_add(1, Ordering::SeqCst) + 1, first_line)
}

fn remember(hub: &Inner, chunk: &Arc<Chunk>) {
    // A big chunk is kept only by its last lines: the ring is for recent history.
    let chunk = if chunk.data.len() > RING_BYTES {
        let tail = &chunk.data[chunk.data.len() - RING_BYTES..];
        let start = memchr::memchr(b'\n', tail).map_or(0, |i| i + 1);
        let skipped =
            memchr::memchr_iter(b'\n', &chunk.data[..chunk.data.len() - tail.len() + start])
                .count();
        Arc::new(Chunk {
            seq: chunk.seq,
            first_line: chunk.first_line + skipped as u64,
            ts_ms: chunk.ts_ms,
            id: chunk.id,
            app: chunk.app.clone(),
            namespace: chunk.namespace.clone(),
            instance: chunk.instance,
            stream: chunk.stream,
            data: tail[start..].into(),
        })
    } else {
        chunk.clone()
    };
    let chunk = &chunk;
    let mut rings = hub.rings.lock().expect("log rings");
    let ring = rings.entry(chunk.id).or_default();
    ring.bytes += ring_cost(chunk);
    ring.chunks.push_back(chunk.clone());
    while ring.bytes > RING_BYTES && ring.chunks.len() > 1 {
        if let Some(old) = ring.chunks.pop_front() {
            ring.bytes -= ring_cost(&old);
        }
    }
}

#[cfg(test)]
mod tests;
