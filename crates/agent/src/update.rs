//! The daemon's side of `fleet update` (the mechanism is `handoff`'s): the `Updater`
//! the service calls, which checks the new binary and orders the handoff, and the
//! task that carries it out: the supervisor hands its table over, the document is
//! written, and the agent re-executes as the new binary.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::AgentError;
use crate::handoff::{self, Document, Record};
use crate::supervisor;

/// How long a handoff waits for a reload in progress to end before it is refused.
const BUSY_PATIENCE: Duration = Duration::from_secs(10);

/// What `Update` needs: the handoff record `Hello` reports and the way to order one.
pub struct Updater {
    record: Mutex<Record>,
    orders: mpsc::Sender<Order>,
}

struct Order {
    binary: PathBuf,
    version: String,
    accepted: oneshot::Sender<Result<(), String>>,
}

/// What an accepted update answers.
#[derive(Debug)]
pub struct Accepted {
    pub from_version: String,
    pub to_version: String,
    pub attempt: u32,
}

impl Updater {
    pub fn record(&self) -> Record {
        self.record.lock().expect("handoff record").clone()
    }

    /// Checks `binary` and orders the handoff; answers once the supervisor has handed
    /// its table over (the exec follows at once) or why it will not happen.
    pub async fn update(&self, binary: &Path) -> Result<Accepted, AgentError> {
        if !binary.is_absolute() {
            return Err(AgentError::InvalidArgument(format!(
                "the new agent must be an absolute path, not {}",
                binary.display()
            )));
        }
        let version = handoff::check(binary)
            .await
            .map_err(AgentError::FailedPrecondition)?;
        let (accepted, answer) = oneshot::channel();
        let order = Order {
            binary: binary.to_path_buf(),
            version: version.clone(),
            accepted,
        };
        let gone = || AgentError::Internal("the agent is already being replaced".into());
        self.orders.send(order).await.map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(AgentError::FailedPrecondition)?;
        Ok(Accepted {
            from_version: env!("CARGO_PKG_VERSION").into(),
            to_version: version,
            attempt: self.record().attempts + 1,
        })
    }
}

/// What the running image keeps to hand over: the API socket, the home's lock and
/// its own binary, each as another descriptor of the same open file.
pub struct Keep {
    pub listener: OwnedFd,
    pub lock: OwnedFd,
    pub own_binary: OwnedFd,
    pub args: Vec<std::ffi::OsString>,
    pub home: PathBuf,
}

/// Starts the task that carries out handoffs; `record` is what this image was told
/// at start (a fresh agent has none).
pub fn start(handle: supervisor::Handle, keep: Keep, record: Record) -> Arc<Updater> {
    let (orders, rx) = mpsc::channel(1);
    let updater = Arc::new(Updater {
        record: Mutex::new(record),
        orders,
    });
    tokio::spawn(carry_out(rx, handle, keep, updater.clone()));
    updater
}

async fn carry_out(
    mut orders: mpsc::Receiver<Order>,
    handle: supervisor::Handle,
    keep: Keep,
    updater: Arc<Updater>,
) {
    while let Some(order) = orders.recv().await {
        let (carry, mut out) = match handle.hand_over(BUSY_PATIENCE).await {
            Ok(carried) => carried,
            Err(busy) => {
                let _ = order.accepted.send(Err(busy));
                continue;
            }
        };
        let _ = order.accepted.send(Ok(()));
        // Let the answer reach the client before the exec closes its connection.
        tokio::task::yield_now().await;
        let record = updater.record();
        let mut document = Document {
            format: handoff::FORMAT,
            from_version: env!("CARGO_PKG_VERSION").into(),
            from_binary: std::fs::read_link("/proc/self/exe").unwrap_or_default(),
            fds: Vec::new(),
            fallback: handoff::Fd(-1),
            args: keep.args.clone(),
            home: keep.home.clone(),
            written_ns: 0,
            attempts: record.attempts + 1,
            handoffs: record.handoffs,
            refused: None,
            listener: handoff::Fd(-1),
            lock: handoff::Fd(-1),
            supervisor: carry,
        };
        let dup = |fd: &OwnedFd| fd.try_clone().expect("a descriptor can be duplicated");
        document.listener = out.put(dup(&keep.listener));
        document.lock = out.put(dup(&keep.lock));
        document.fallback = out.put(dup(&keep.own_binary));
        document.fds = out.numbers();
        tracing::info!(to = %order.binary.display(), version = %order.version, "handing over to the new agent");
        document.written_ns = handoff::monotonic_ns();
        let error = handoff::exec(&order.binary, &document, &out);
        // Still here: go back to this image's own binary with the same table.
        let reason = format!("cannot execute {}: {error}", order.binary.display());
        tracing::error!(%reason, "handoff failed; taking the apps back");
        document.refused = Some(reason);
        let own = PathBuf::from(format!("/proc/self/fd/{}", document.fallback.0));
        let error = handoff::exec(&own, &document, &out);
        tracing::error!(%error, "cannot re-execute this agent either; the apps keep running unsupervised");
        drop(out);
        std::process::exit(1);
    }
}
