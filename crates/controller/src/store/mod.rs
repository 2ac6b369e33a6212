//! The controller's durable state: hosts, stages, the append-only audit log, hashed API
//! and join tokens, deploys, alerts and (shared between controllers) the CA. Where it
//! lives is a `Location`: SQLite in the data directory (one controller, the default),
//! or PostgreSQL (`--store postgres://...`, which several controllers share). Both
//! backends answer the one `Db` interface, and every record function is written once
//! against it. One thread owns the connection; async code sends it jobs (`Store`).
//! Heartbeats never come here: live state is the registry's, in memory.

pub mod copy;
mod postgres;
mod records;
mod sql;
pub mod sqlite;
#[cfg(test)]
mod suite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use postgres::PgLocation;
pub use records::*;
pub use sql::{
    Backend, ColumnIndex, Db, DbError, FromValue, OptionalExtension, Result as DbResult, Row,
    ToValue, Value,
};
pub use sqlite::open_read_only;

use crate::error::Error;

/// Where the store is.
#[derive(Clone, Debug)]
pub enum Location {
    /// `controller.db` in the data directory: one controller.
    Sqlite(PathBuf),
    /// A PostgreSQL database several controllers share.
    Postgres(Box<PgLocation>),
}

impl Location {
    /// `--store` (or `FLEET_STORE`) when given, else the SQLite file in `data_dir`.
    pub fn new(store: Option<&str>, data_dir: &Path) -> Result<Location, Error> {
        match store {
            None => Ok(Location::Sqlite(data_dir.join(crate::DATABASE_FILE))),
            Some(url) => PgLocation::parse(url)
                .map(|location| Location::Postgres(Box::new(location)))
                .map_err(|e| Error::Invalid(format!("--store: {e}"))),
        }
    }

    /// The SQLite store of the data directory `dir`.
    pub fn in_data_dir(dir: &Path) -> Location {
        Location::Sqlite(dir.join(crate::DATABASE_FILE))
    }

    /// Opens the store and brings its schema up to date (blocking: call it off the
    /// async runtime, as `Store::start` does).
    pub fn open(&self) -> Result<Box<dyn Db + Send>, Error> {
        Ok(match self {
            Location::Sqlite(path) => Box::new(sqlite::open(path)?),
            Location::Postgres(location) => Box::new(postgres::open(location)?),
        })
    }

    /// Opens the store to read it while a controller runs: SQLite read-only (no
    /// migration, never the writer's lock), PostgreSQL as usual.
    pub fn open_to_read(&self) -> Result<Box<dyn Db + Send>, Error> {
        Ok(match self {
            Location::Sqlite(path) => Box::new(sqlite::open_read_only(path)?),
            Location::Postgres(location) => Box::new(postgres::open(location)?),
        })
    }

    /// Whether other controllers may share this store.
    pub fn is_shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(location) => write!(f, "{location}"),
        }
    }
}

type Job = Box<dyn FnOnce(&dyn Db, &mut Pending) + Send>;

/// A background write (`Store::write`) is kept and tried again while the store is
/// unavailable, in order, so nothing a controller saw (a host connecting, a deploy's
/// events) is lost to a database restart; this many at most, the oldest dropped.
const MAX_PENDING_WRITES: usize = 100_000;
/// How often kept writes are tried again while nothing else comes.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

type Write = Box<dyn Fn(&dyn Db) -> DbResult<()> + Send>;

/// Background writes waiting for the store to come back.
#[derive(Default)]
struct Pending {
    writes: std::collections::VecDeque<(&'static str, Write)>,
    dropped: u64,
}

impl Pending {
    fn keep(&mut self, what: &'static str, write: Write) {
        if self.writes.len() >= MAX_PENDING_WRITES {
            self.writes.pop_front();
            self.dropped += 1;
            tracing::error!(
                dropped = self.dropped,
                "the store is away too long: dropped the oldest kept write"
            );
        }
        self.writes.push_back((what, write));
    }

    /// Tries the kept writes in order; stops at the first the store still cannot take.
    fn flush(&mut self, db: &dyn Db, shown: &str) {
        let kept = self.writes.len();
        while let Some((what, write)) = self.writes.front() {
            match write(db) {
                Err(DbError::Unavailable(_)) => return,
                Err(error) => {
                    tracing::error!(%error, store = %shown, what, "store write failed");
                }
                Ok(()) => {}
            }
            self.writes.pop_front();
        }
        if kept > 0 {
            tracing::info!(kept, store = %shown, "the store is back: wrote what was kept");
        }
    }
}

/// A handle on the store's thread. Cheap to clone; the thread ends with the last handle.
#[derive(Clone)]
pub struct Store {
    jobs: std::sync::mpsc::Sender<Job>,
    shown: Arc<str>,
    backend: Backend,
    /// Whether the last call reached the store (`is_available`).
    available: Arc<std::sync::atomic::AtomicBool>,
    /// How long each call waited for the store's thread and ran (`/metrics`).
    latency: prometheus_client::metrics::histogram::Histogram,
}

impl Store {
    /// Starts the thread that owns the connection, opening (and migrating) the store
    /// there: PostgreSQL's synchronous client runs its own small runtime, which must
    /// not be inside the controller's.
    pub async fn start(
        location: Location,
        latency: prometheus_client::metrics::histogram::Histogram,
    ) -> Result<Store, Error> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (opened, ready) = tokio::sync::oneshot::channel();
        let shown: Arc<str> = location.to_string().into();
        let thread_shown = shown.clone();
        let available = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let thread_available = available.clone();
        let backend = match location {
            Location::Sqlite(_) => Backend::Sqlite,
            Location::Postgres(_) => Backend::Postgres,
        };
        std::thread::Builder::new()
            .name("controller-db".into())
            .spawn(move || {
                let db = match location.open() {
                    Ok(db) => {
                        let _ = opened.send(Ok(()));
                        db
                    }
                    Err(error) => {
                        let _ = opened.send(Err(error));
                        return;
                    }
                };
                let mut pending = Pending::default();
                loop {
                    let job = if pending.writes.is_empty() {
                        queue.recv().map_err(|_| ())
                    } else {
                        match queue.recv_timeout(RETRY_INTERVAL) {
                            Ok(job) => Ok(job),
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                pending.flush(db.as_ref(), &thread_shown);
                                thread_available.store(
                                    pending.writes.is_empty(),
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                                continue;
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(()),
                        }
                    };
                    let Ok(job) = job else { break };
                    if !pending.writes.is_empty() {
                        pending.flush(db.as_ref(), &thread_shown);
                    }
                    job(db.as_ref(), &mut pending);
                }
            })
            .map_err(|source| {
                Error::Invalid(format!("cannot start the store's thread: {source}"))
            })?;
        ready.await.map_err(|_| Error::StoreStopped)??;
        Ok(Store {
            jobs,
            shown,
            backend,
            available,
            latency,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the store answered the last call (status says `stale` when not).
    pub fn is_available(&self) -> bool {
        self.available.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note(&self, result: &DbResult<impl Sized>) {
        let reached = !matches!(result, Err(DbError::Unavailable(_)));
        self.available
            .store(reached, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs `job` on the store's thread and waits for its answer.
    pub async fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&dyn Db) -> DbResult<R> + Send + 'static,
    ) -> Result<R, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let (latency, queued) = (self.latency.clone(), std::time::Instant::now());
        self.jobs
            .send(Box::new(move |db, _| {
                let _ = reply.send(job(db));
                latency.observe(queued.elapsed().as_secs_f64());
            }))
            .map_err(|_| Error::StoreStopped)?;
        let result = answer.await.map_err(|_| Error::StoreStopped)?;
        self.note(&result);
        result.map_err(|source| Error::database(&self.shown, source))
    }

    /// Queues a write nobody waits for (host seen, stage recorded). While the store is
    /// unavailable it is kept and tried again, after the ones kept before it; another
    /// failure is logged.
    pub fn write(
        &self,
        what: &'static str,
        job: impl Fn(&dyn Db) -> DbResult<()> + Send + 'static,
    ) {
        let shown = self.shown.clone();
        let available = self.available.clone();
        let (latency, queued) = (self.latency.clone(), std::time::Instant::now());
        let _ = self.jobs.send(Box::new(move |db, pending| {
            if !pending.writes.is_empty() {
                pending.keep(what, Box::new(job));
                return;
            }
            let result = job(db);
            let reached = !matches!(result, Err(DbError::Unavailable(_)));
            available.store(reached, std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(()) => {}
                Err(DbError::Unavailable(reason)) => {
                    tracing::warn!(%reason, what, "the store is unavailable: the write is kept");
                    pending.keep(what, Box::new(job));
                }
                Err(error) => {
                    tracing::error!(%error, store = %shown, what, "store write failed");
                }
            }
            latency.observe(queued.elapsed().as_secs_f64());
        }));
    }
}
