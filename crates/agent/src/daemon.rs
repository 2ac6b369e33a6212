//! The agent daemon: takes the home's lock, binds `agent.sock`, brings back the apps
//! of the previous run, samples metrics and serves the gRPC API until shutdown.
//! `run` takes its listener and shutdown future as arguments so tests can run an
//! agent in-process on a temp dir.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::agent::v1::agent_service_server::AgentServiceServer;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::wrappers::UnixListenerStream;

use crate::logs::LogHub;
use crate::metrics::Sampler;
use crate::operations::Operations;
use crate::process;
use crate::service::Service;
use crate::store::{Home, SavedList, SavedProcess};
use crate::supervisor::{self, Reply, Request};

/// PM2 refreshes its process list metrics about once a second (`pm2 monit`); so does
/// the agent, only while something runs.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// The host is sampled every this many instance samples (5 s).
const HOST_METRICS_EVERY: u64 = 5;
/// How long a starting agent waits for a previous one to release the home's lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// The socket and the pid file are private to the agent's user.
const SOCKET_MODE: u32 = 0o600;

/// The home's exclusive lock, held for the agent's whole life. Dropping it unlocks.
pub struct HomeLock {
    lock: Flock<File>,
}

impl HomeLock {
    /// Another descriptor of the locked file: the lock belongs to the open file, so
    /// it holds across an exec as long as one descriptor is carried (`fleet update`).
    pub fn fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        Ok(std::os::fd::OwnedFd::from(self.lock.try_clone()?))
    }

    /// The lock a previous agent image handed over (already held by this open file).
    pub fn adopt(fd: std::os::fd::OwnedFd) -> anyhow::Result<HomeLock> {
        let lock = Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock).map_err(
            |(_, errno)| anyhow::anyhow!("the handed-over home lock is not held: {errno}"),
        )?;
        Ok(HomeLock { lock })
    }
}

/// How the agent starts: fresh (bringing back the previous run's apps), or taking
/// over from a previous image of itself (`fleet update`).
pub enum Start {
    /// `stored`: what systemd passed from the service's file descriptor store
    /// (`crate::fdstore`): the apps a killed agent left running, to adopt.
    Fresh {
        resurrect: bool,
        stored: crate::fdstore::Received,
    },
    TakeOver(Box<TakeOver>),
}

/// What a previous image handed over, checked (`handoff::receive`).
pub struct TakeOver {
    pub document: crate::handoff::Document,
    pub fds: crate::handoff::Incoming,
}

/// The lock and the socket a previous image handed over.
pub fn adopt(take_over: &mut TakeOver) -> anyhow::Result<(HomeLock, UnixListener)> {
    let lock = HomeLock::adopt(take_over.fds.take(take_over.document.lock)?)?;
    let listener =
        std::os::unix::net::UnixListener::from(take_over.fds.take(take_over.document.listener)?);
    listener.set_nonblocking(true)?;
    Ok((lock, UnixListener::from_std(listener)?))
}

/// Takes the home's lock (one agent per `FLEET_HOME`) and binds its socket.
pub fn bind(home: &Home) -> anyhow::Result<(HomeLock, UnixListener)> {
    home.create()?;
    let pid_file = home.pid_file();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(SOCKET_MODE)
        .open(&pid_file)?;
    // An agent that was just told to exit may still hold the lock for a moment
    // (`fleet kill && fleet start`): wait for it briefly before giving up.
    let until = std::time::Instant::now() + LOCK_WAIT;
    let mut file = file;
    let mut lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                // The holder serves: this agent is one too many, and says so at once
                // (an exiting holder no longer accepts, and is waited for).
                let serving = std::os::unix::net::UnixStream::connect(home.socket()).is_ok();
                if serving || std::time::Instant::now() >= until {
                    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
                    anyhow::bail!(
                        "an agent is already running for {} (pid {})",
                        home.root.display(),
                        pid.trim()
                    );
                }
                file = returned;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, errno)) => anyhow::bail!("cannot lock {}: {errno}", pid_file.display()),
        }
    };
    lock.set_len(0)?;
    write!(lock, "{}", std::process::id())?;
    let socket = home.socket();
    // We hold the lock, so a socket file left here belongs to a dead agent.
    let _ = std::fs::remove_file(&socket);
    // Bind with a restrictive umask so the socket is never reachable by others, not
    // even between bind and chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = UnixListener::bind(&socket);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok((HomeLock { lock }, listener))
}

/// Serves the agent until `shutdown` resolves or a client calls `Kill`. On shutdown
/// the apps are stopped but stay in the state file, so the next agent starts them.
/// With `resurrect` (the systemd unit's `--resurrect`), the first start after a reboot
/// brings back what `fleet save` saved instead of what ran before the reboot.
pub async fn run(
    home: Home,
    (lock, listener): (HomeLock, UnixListener),
    hub: LogHub,
    shutdown: impl Future<Output = ()> + Send + 'static,
    start: Start,
) -> anyhow::Result<()> {
    let keep = crate::update::Keep {
        listener: std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?,
        lock: lock.fd()?,
        own_binary: crate::handoff::open_self()?,
        args: own_args(),
        home: home.root.clone(),
    };
    let (handle, record) = match start {
        Start::Fresh { resurrect, stored } => (
            start_fresh(&home, &hub, resurrect, stored).await,
            Default::default(),
        ),
        Start::TakeOver(take_over) => take_over_from(&home, &hub, *take_over),
    };
    let updater = crate::update::start(handle.clone(), keep, record);
    tokio::spawn(sample_metrics(handle.clone(), home.root.clone()));
    tokio::spawn(reopen_logs_on_sigusr2(hub.clone()));

    let (operations, service, kill) = api(&home, &handle, hub, Some(updater));
    serve_metrics(&home, &operations).await;
    match crate::link::LinkConfig::load(&home) {
        Ok(Some(config)) => {
            tokio::spawn(crate::link::run(
                home.clone(),
                config,
                operations,
                handle.clone(),
            ));
        }
        Ok(None) => {}
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "cannot read the controller settings; not connecting")
        }
    }
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = {
        let killed = killed.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = kill.notified() => killed.store(true, std::sync::atomic::Ordering::SeqCst),
            }
        }
    };
    tracing::info!(home = %home.root.display(), pid = std::process::id(), "agent serving");
    // A round trip through the supervisor: the saved apps are on their way back.
    let _ = handle.leaders().await;
    crate::sd_notify::notify("READY=1");
    if let Some(period) = crate::sd_notify::watchdog_period() {
        tokio::spawn(ping_watchdog(handle.clone(), period));
    }
    tonic::transport::Server::builder()
        .add_service(AgentServiceServer::from_arc(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await?;

    crate::sd_notify::notify("STOPPING=1");
    if !killed.load(std::sync::atomic::Ordering::SeqCst)
        && let Ok(Reply::Settling { ids, within, .. }) =
            handle.call(Request::StopAll { forget: false }).await
    {
        tracing::info!(apps = ids.len(), "stopping apps before exit");
        handle.settled(&ids, within).await;
    }
    // The batched state write may still be pending; the next agent reads this file.
    let _ = handle.call(Request::Persist).await;
    let _ = std::fs::remove_file(home.socket());
    tracing::info!("agent stopped");
    drop(lock);
    Ok(())
}

/// The apps of the previous run (or, first after a reboot with `resurrect`, of the
/// last `fleet save`), with whatever the previous agent left running stopped first.
async fn start_fresh(
    home: &Home,
    hub: &LogHub,
    resurrect: bool,
    stored: crate::fdstore::Received,
) -> supervisor::Handle {
    let rebooted = crate::sd_notify::first_start_since_boot(&home.root);
    let store = match crate::fdstore::capacity() {
        Some(capacity) => {
            let (store, found) = stored.open(capacity);
            match found {
                Ok((document, fds)) if !rebooted => {
                    return adopt_stored(home, hub, store, document, fds).await;
                }
                Ok(_) => {}
                Err(reason) if store_was_used(&reason) => {
                    tracing::warn!(%reason, "cannot adopt what systemd's file descriptor store holds; starting the apps again");
                }
                Err(_) => {}
            }
            Some(store)
        }
        None => None,
    };
    let mut saved = if rebooted && resurrect {
        load_dump(home)
    } else {
        load_state(home)
    };
    if rebooted {
        // Pids of another boot name nothing of ours.
        for entry in &mut saved {
            entry.pid = None;
            entry.start_ticks = None;
        }
    }
    terminate_orphans(&saved).await;
    supervisor::start(home.clone(), hub.clone(), saved, store)
}

/// Whether a refusal is worth a warning (a store that held something of fleet's).
fn store_was_used(reason: &str) -> bool {
    !reason.contains("holds no fleet document")
}

/// The apps a killed agent left running, adopted from systemd's file descriptor
/// store: same pids, same sockets, the pipes read on from where it stopped. What the
/// state file names beyond them (started after the store's last update) is stopped.
async fn adopt_stored(
    home: &Home,
    hub: &LogHub,
    store: crate::fdstore::Store,
    document: crate::fdstore::StoreDoc,
    mut fds: crate::handoff::Incoming,
) -> supervisor::Handle {
    let adopted: std::collections::HashSet<(i32, Option<u64>)> = (document.supervisor.instances)
        .iter()
        .filter_map(|p| Some((p.pid?, p.start_ticks)))
        .collect();
    let others: Vec<SavedProcess> = (load_state(home).into_iter())
        .filter(|s| {
            s.pid
                .is_some_and(|pid| !adopted.contains(&(pid, s.start_ticks)))
        })
        .collect();
    terminate_orphans(&others).await;
    let (taken, _) = written_at(document.written_ns);
    let instances = document.supervisor.instances.len();
    let handle = supervisor::take_over(
        home.clone(),
        hub.clone(),
        document.supervisor,
        &mut fds,
        taken,
        Some(store),
    );
    fds.close_rest();
    tracing::warn!(
        "fleet-agent {} adopted {instances} instances from systemd's file descriptor store, left by fleet-agent {} (it ended without stopping them); their exit codes can no longer be known",
        env!("CARGO_PKG_VERSION"),
        document.version
    );
    handle
}

/// When a document written at `written_ns` (CLOCK_MONOTONIC) was written, on this
/// image's clock, and how long ago in nanoseconds.
fn written_at(written_ns: u64) -> (Instant, u64) {
    let gap_ns = crate::handoff::monotonic_ns().saturating_sub(written_ns);
    let taken = Instant::now()
        .checked_sub(Duration::from_nanos(gap_ns))
        .unwrap_or_else(Instant::now);
    (taken, gap_ns)
}

/// The table a previous image of this agent handed over, and what `Hello` reports.
fn take_over_from(
    home: &Home,
    hub: &LogHub,
    take_over: TakeOver,
) -> (supervisor::Handle, crate::handoff::Record) {
    let TakeOver { document, mut fds } = take_over;
    let (taken, gap_ns) = written_at(document.written_ns);
    let apps = document.supervisor.instances.len();
    let handle = supervisor::take_over(
        home.clone(),
        hub.clone(),
        document.supervisor,
        &mut fds,
        taken,
        crate::fdstore::capacity().map(crate::fdstore::Store::new),
    );
    fds.close_rest();
    let me = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    let record = crate::handoff::Record {
        attempts: document.attempts,
        handoffs: document.handoffs + u32::from(document.refused.is_none()),
        error: document.refused.clone(),
    };
    match &document.refused {
        None => tracing::info!(
            "fleet-agent {} ({}) took over from fleet-agent {} ({}) in {} ms, keeping {apps} instances",
            env!("CARGO_PKG_VERSION"),
            me.display(),
            document.from_version,
            document.from_binary.display(),
            gap_ns / 1_000_000
        ),
        Some(reason) => {
            tracing::error!(%reason, "the new agent refused to take over; this one carries on")
        }
    }
    (handle, record)
}

/// This process's arguments, without a `--handoff N` of its own start.
fn own_args() -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    let mut skip = false;
    for arg in std::env::args_os().skip(1) {
        if skip {
            skip = false;
        } else if arg == "--handoff" {
            skip = true;
        } else if !arg.to_string_lossy().starts_with("--handoff=") {
            args.push(arg);
        }
    }
    args
}

/// The agent's operations and their gRPC face over `handle`, and what a client's
/// `Kill` notifies. One construction for the daemon and the runtime.
pub(crate) fn api(
    home: &Home,
    handle: &supervisor::Handle,
    hub: LogHub,
    updater: Option<Arc<crate::update::Updater>>,
) -> (Operations, Arc<Service>, Arc<Notify>) {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let kill = Arc::new(Notify::new());
    let operations = Operations::new(handle.clone(), hub, host.clone());
    let service = Arc::new(Service::new(
        operations.clone(),
        home.root.display().to_string(),
        host,
        kill.clone(),
        updater,
    ));
    (operations, service, kill)
}

/// `WATCHDOG=1` every half period, each only after the supervisor answered: a hung
/// supervisor stops the pings and systemd restarts the agent.
async fn ping_watchdog(handle: supervisor::Handle, period: Duration) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = handle.closed() => return,
        }
        let _ = handle.leaders().await;
        crate::sd_notify::notify("WATCHDOG=1");
    }
}

/// What `fleet save` saved (its backup when the dump is unreadable), for the first
/// start after a reboot; nothing saved means no app.
fn load_dump(home: &Home) -> Vec<SavedProcess> {
    for path in [home.dump_file(), home.dump_backup()] {
        if !path.exists() {
            continue;
        }
        match SavedList::read(&path) {
            Ok(list) => {
                tracing::info!(path = %path.display(), apps = list.processes.len(), "first start since boot: resurrecting the saved list");
                return list.processes;
            }
            Err(error) => {
                tracing::error!(%error, path = %path.display(), "cannot read the saved list")
            }
        }
    }
    tracing::info!(
        "first start since boot: nothing was saved (`fleet save`), no app to bring back"
    );
    Vec::new()
}

fn load_state(home: &Home) -> Vec<SavedProcess> {
    let path = home.state_file();
    if !path.exists() {
        return Vec::new();
    }
    match SavedList::read(&path) {
        Ok(list) => list.processes,
        Err(error) => {
            // Keep the unreadable file for inspection; starting empty beats not starting.
            let aside = path.with_extension("json.corrupt");
            let _ = std::fs::rename(&path, &aside);
            tracing::error!(%error, kept = %aside.display(), "cannot read the state file; starting with no apps");
            Vec::new()
        }
    }
}

/// Stops the process groups a killed agent left behind, so restoring the apps never
/// runs two copies. A pid counts only if its start time matches the saved one.
async fn terminate_orphans(saved: &[SavedProcess]) {
    let mut waits = Vec::new();
    for entry in saved {
        let (Some(pid), Some(ticks)) = (entry.pid, entry.start_ticks) else {
            continue;
        };
        if process::start_ticks(pid) != Some(ticks) {
            continue;
        }
        tracing::warn!(app = %entry.spec.name, pid, "stopping an instance the previous agent left running");
        let signal = process::signal_from_name(&entry.spec.kill_signal).unwrap_or(Signal::SIGINT);
        process::signal_group(pid, signal);
        let timeout = Duration::from_millis(entry.spec.kill_timeout_ms);
        waits.push(tokio::spawn(async move {
            let until = Instant::now() + timeout;
            while process::group_alive(pid) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            process::signal_group(pid, Signal::SIGKILL);
        }));
    }
    for wait in waits {
        let _ = wait.await;
    }
}

/// `agent.toml`'s `metrics_listen`: Prometheus' `/metrics` for this host. A bad file or
/// an address that cannot be bound is logged, and the agent runs on without it.
async fn serve_metrics(home: &Home, operations: &Operations) {
    let settings = match crate::settings::load(&home.root) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(%error, "ignored the agent's settings");
            return;
        }
    };
    let Some(address) = settings.metrics_listen else {
        return;
    };
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => {
            if !address.ip().is_loopback() {
                tracing::warn!(%address, "serving /metrics beyond this machine: anyone who reaches it sees the apps' names and usage");
            }
            tracing::info!(%address, "serving /metrics");
            tokio::spawn(crate::prometheus::serve(listener, operations.clone()));
        }
        Err(error) => tracing::error!(%address, %error, "cannot serve /metrics"),
    }
}

/// PM2's daemon reopens its logs on SIGUSR2 (for logrotate's postrotate); so does fleet's.
async fn reopen_logs_on_sigusr2(hub: LogHub) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
        return;
    };
    while usr2.recv().await.is_some() {
        let files = hub.reopen_all();
        tracing::info!(files, "reopened log files (SIGUSR2)");
    }
}

/// Samples every instance's process tree each `METRICS_INTERVAL`, and the host (its
/// CPU, load, memory and the filesystems of `home` and the apps' working directories)
/// every `HOST_METRICS_EVERY` of those.
pub(crate) async fn sample_metrics(handle: supervisor::Handle, home: PathBuf) {
    let mut sampler = Sampler::new();
    let mut host = Some(crate::hostmetrics::HostSampler::default());
    let mut tick = tokio::time::interval(METRICS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = handle.closed() => return,
        }
        let leaders = handle.leaders().await;
        if ticks.is_multiple_of(HOST_METRICS_EVERY)
            && let Some(mut sampling) = host.take()
        {
            let mut paths = vec![home.clone()];
            paths.extend(
                (leaders.iter())
                    .filter_map(|(_, pid)| std::fs::read_link(format!("/proc/{pid}/cwd")).ok()),
            );
            let now = crate::operations::now_ms();
            let (returned, metrics) = tokio::task::spawn_blocking(move || {
                let metrics = sampling.sample(&paths, now);
                (sampling, metrics)
            })
            .await
            .expect("the host sampler does not panic");
            host = Some(returned);
            handle.report_host(metrics);
        }
        ticks += 1;
        if leaders.is_empty() {
            continue;
        }
        let pids: Vec<i32> = leaders.iter().map(|(_, pid)| *pid).collect();
        let (returned, usage) = tokio::task::spawn_blocking(move || {
            let usage = sampler.sample(&pids);
            (sampler, usage)
        })
        .await
        .expect("the metrics sampler does not panic");
        sampler = returned;
        let by_id = leaders
            .into_iter()
            .filter_map(|(id, pid)| usage.get(&pid).map(|u| (id, *u)))
            .collect();
        handle.report_usage(by_id);
    }
}
