//! `fleet-runtime`, a container's entry point (PM2's `pm2-runtime`): the agent in the
//! foreground with the same supervisor, its apps as its children. Their output goes to
//! its own stdout and stderr, each line prefixed with app and instance (or raw, or JSON
//! lines); its socket serves `fleet list`, `logs` and `reload` inside the container.
//!
//! As PID 1 (or as a child subreaper elsewhere) it reaps every orphan that ends up
//! with it, leaving its own children to their waiters. SIGTERM or SIGINT stops every
//! app within its `kill_timeout`, then it exits 0. When every instance has ended on
//! its own it exits too: 1 if any ended `errored`, else 0 (pm2-runtime's rule).

use std::sync::Arc;
use std::time::Duration;

use fleet_config::AppSpec;
use fleet_proto::agent::v1::agent_service_server::AgentServiceServer;
use std::io::Write;
use std::sync::mpsc::Sender;
use tokio::net::UnixListener;
use tokio::sync::{Notify, broadcast};
use tokio_stream::wrappers::UnixListenerStream;

use crate::core::Status;
use crate::logs::{Chunk, LogHub, Stream};
use crate::operations::Operations;
use crate::store::Home;
use crate::supervisor::{self, Reply, Request};

/// How often the runtime checks whether every instance has ended.
const CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How often orphans are looked for besides each SIGCHLD.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// How app output lines are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `api:0 | line`
    Prefixed,
    /// The line as the app wrote it.
    Raw,
    /// `{"ts":…,"app":…,"instance":…,"stream":"out","line":…}`
    Json,
}

/// Runs `apps` until a stop signal, a `fleet kill`, or every instance's end; returns
/// the exit code.
pub async fn run(
    home: Home,
    listener: UnixListener,
    hub: LogHub,
    apps: Vec<AppSpec>,
    output: Output,
) -> anyhow::Result<i32> {
    become_subreaper();
    let (lines, writer) = writer();
    let printer = tokio::spawn(print(hub.subscribe(), output, lines));
    let handle = supervisor::start(home.clone(), hub.clone(), Vec::new(), None);
    tokio::spawn(crate::daemon::sample_metrics(
        handle.clone(),
        home.root.clone(),
    ));
    tokio::spawn(reap_orphans(handle.clone()));
    let (operations, service, kill) = crate::daemon::api(&home, &handle, hub, None);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::from_arc(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = server_stopped.await;
            }),
    );
    let started = operations
        .operate(Request::Start {
            targets: Vec::new(),
            apps,
            force: false,
            from_config: true,
            update_env: None,
        })
        .await;
    let code = match started {
        Err(error) => {
            eprintln!("fleet-runtime: {error}");
            2
        }
        Ok(_) => wait_for_the_end(&operations, &kill).await,
    };
    if let Ok(Reply::Settling { ids, within, .. }) =
        handle.call(Request::StopAll { forget: false }).await
    {
        handle.settled(&ids, within).await;
    }
    let _ = handle.call(Request::Persist).await;
    let _ = stop_server.send(());
    let _ = server.await;
    let _ = std::fs::remove_file(home.socket());
    // The last lines: give the printer a moment to take what the pumps sent, then let
    // the writer finish everything it was given.
    tokio::time::sleep(Duration::from_millis(100)).await;
    printer.abort();
    let _ = printer.await;
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(code)
}

/// Until SIGTERM/SIGINT or `fleet kill` (0), or every instance ended (1 if any errored).
async fn wait_for_the_end(operations: &Operations, kill: &Notify) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("fleet-runtime: cannot watch SIGTERM and SIGINT");
        return 1;
    };
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = term.recv() => return 0,
            _ = int.recv() => return 0,
            () = kill.notified() => return 0,
            _ = tick.tick() => {}
        }
        let Ok(views) = operations.views(Vec::new(), false).await else {
            continue;
        };
        let statuses: Vec<Status> = views.iter().map(|v| v.status).collect();
        if let Some(code) = exit_code(&statuses) {
            eprintln!("fleet-runtime: every app has ended; exiting {code}");
            return code;
        }
    }
}

/// pm2-runtime's rule: nothing left running or about to run means the end; 1 when any
/// instance ended `errored`. `None` while something runs (or nothing was started).
pub fn exit_code(statuses: &[Status]) -> Option<i32> {
    if statuses.is_empty()
        || statuses
            .iter()
            .any(|s| !matches!(s, Status::Stopped | Status::Errored))
    {
        return None;
    }
    Some(i32::from(statuses.contains(&Status::Errored)))
}

/// A thread that writes what it is sent to stdout or stderr (blocking writes stay off
/// the runtime's workers); it ends once every sender is gone.
fn writer() -> (Sender<(Stream, Vec<u8>)>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<(Stream, Vec<u8>)>();
    let thread = std::thread::spawn(move || {
        for (stream, text) in rx {
            let written = match stream {
                Stream::Out => std::io::stdout().lock().write_all(&text),
                Stream::Err => std::io::stderr().lock().write_all(&text),
            };
            if written.is_err() {
                return;
            }
        }
    });
    (tx, thread)
}

/// Formats every captured line for the writer, stdout's for stdout, stderr's for stderr.
async fn print(
    mut chunks: broadcast::Receiver<Arc<Chunk>>,
    output: Output,
    lines: Sender<(Stream, Vec<u8>)>,
) {
    loop {
        let chunk = match chunks.recv().await {
            Ok(chunk) => chunk,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let note = format!(
                    "fleet-runtime: {n} chunks of output skipped here (the log files have them)\n"
                );
                let _ = lines.send((Stream::Err, note.into_bytes()));
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let mut text = Vec::with_capacity(chunk.data.len() + 32);
        for line in chunk.lines() {
            format_line(&mut text, &chunk, line, output);
        }
        if lines.send((chunk.stream, text)).is_err() {
            return;
        }
    }
}

/// One line (ending with `\n`) as `output` prints it.
pub fn format_line(text: &mut Vec<u8>, chunk: &Chunk, line: &[u8], output: Output) {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    match output {
        Output::Raw => text.extend_from_slice(body),
        Output::Prefixed => {
            text.extend_from_slice(format!("{}:{} | ", chunk.app, chunk.instance).as_bytes());
            text.extend_from_slice(body);
        }
        Output::Json => {
            let value = serde_json::json!({
                "ts": chunk.ts_ms,
                "app": &*chunk.app,
                "instance": chunk.instance,
                "id": chunk.id,
                "stream": chunk.stream.as_str(),
                "line": String::from_utf8_lossy(body),
            });
            text.extend_from_slice(value.to_string().as_bytes());
        }
    }
    text.push(b'\n');
}

/// Outside PID 1, orphans of the apps come to the runtime as they would to an init.
fn become_subreaper() {
    if std::process::id() != 1
        && let Err(error) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!(%error, "cannot become a child subreaper; orphans go to init");
    }
}

/// Reaps the zombies among this process's children that it did not start itself (the
/// grandchildren apps abandon); its own children are left to the supervisor's waits.
async fn reap_orphans(handle: supervisor::Handle) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut child) = signal(SignalKind::child()) else {
        return;
    };
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tokio::select! {
            _ = child.recv() => {}
            _ = tick.tick() => {}
            _ = handle.closed() => return,
        }
        let zombies = zombie_children();
        if zombies.is_empty() {
            continue;
        }
        let ours = handle.children().await;
        for pid in zombies.into_iter().filter(|pid| !ours.contains(pid)) {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// Zombie processes whose parent is this process.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| p.stat().ok())
        .filter(|stat| stat.ppid == me && stat.state == 'Z')
        .map(|stat| stat.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_ends_when_every_instance_has_and_says_how() {
        use Status::*;
        assert_eq!(exit_code(&[]), None);
        assert_eq!(exit_code(&[Online, Stopped]), None);
        assert_eq!(exit_code(&[WaitingRestart]), None);
        assert_eq!(exit_code(&[Stopped, Stopped]), Some(0));
        assert_eq!(exit_code(&[Stopped, Errored]), Some(1));
    }

    #[test]
    fn lines_are_whole_and_prefixed_raw_or_json() {
        let chunk = Chunk {
            seq: 1,
            first_line: 0,
            ts_ms: 7,
            id: 3,
            app: "api".into(),
            namespace: "default".into(),
            instance: 1,
            stream: Stream::Out,
            data: b"hello\n".to_vec().into_boxed_slice(),
        };
        let render = |output| {
            let mut text = Vec::new();
            format_line(&mut text, &chunk, b"hello\n", output);
            String::from_utf8(text).unwrap()
        };
        assert_eq!(render(Output::Prefixed), "api:1 | hello\n");
        assert_eq!(render(Output::Raw), "hello\n");
        let json: serde_json::Value = serde_json::from_str(&render(Output::Json)).unwrap();
        assert_eq!(json["app"], "api");
        assert_eq!(json["line"], "hello");
    }
}
