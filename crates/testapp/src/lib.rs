//! fleet-testapp: a tiny HTTP/1.1 server that plays a well-behaved (or, on request, a
//! misbehaving) app for fleet's cluster-mode tests and benchmarks (issue 4). `main`
//! parses flags; this crate owns the run: listener, readiness, serving and the drain.

pub mod http;
pub mod listen;
pub mod server;

use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::server::Identity;

/// What the flags ask for; see `fleet-testapp --help`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub port_only: bool,
    pub ready_delay_ms: Option<u64>,
    pub never_ready: bool,
    pub listen_anyway: bool,
    pub ignore_signals: bool,
    pub crash_after_ms: Option<u64>,
    pub unhealthy_after_ms: Option<u64>,
    pub watchdog_for_ms: Option<u64>,
}

/// Where the listener will come from, decided before the runtime starts (see
/// [`listen::adopt_inherited_listener`]).
pub enum Source {
    Inherited(StdTcpListener),
    Port(u16),
}

/// Picks the listener source from the environment: the inherited fd 3 unless
/// `--port-only`, else `PORT`. Must run before any other descriptor is opened.
pub fn choose_source(options: &Options) -> Result<Source, String> {
    let offered = listen::socket_activation_offered(
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::process::id(),
    );
    if offered && !options.port_only {
        return listen::adopt_inherited_listener()
            .map(Source::Inherited)
            .map_err(|e| e.to_string());
    }
    let hint = if options.port_only {
        " (--port-only ignores LISTEN_FDS)"
    } else {
        ""
    };
    match std::env::var("PORT") {
        Ok(v) => v
            .trim()
            .parse::<u16>()
            .map(Source::Port)
            .map_err(|_| format!("PORT={v:?} is not a port number")),
        Err(_) => Err(format!(
            "no inherited socket (LISTEN_FDS) and PORT is not set{hint}"
        )),
    }
}

/// The whole run after the source is known. Returns the exit code: 0 after a drain.
pub async fn run(options: Options, source: Source) -> i32 {
    // Handlers first: a signal that came before them would kill the process the
    // default way, and an app that ignores signals must not die on an early one.
    let signals = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fleet-testapp: cannot handle signals: {e}");
            return 1;
        }
    };
    let shutdown = shutdown_signal(signals, options.ignore_signals);
    tokio::pin!(shutdown);

    if let Some(ms) = options.crash_after_ms {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            eprintln!("fleet-testapp: crashing after {ms} ms (--crash-after-ms)");
            std::process::exit(1);
        });
    }
    if let Some(ms) = options.ready_delay_ms {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            () = &mut shutdown => return 0,
        }
    }

    let listens = !options.never_ready || options.listen_anyway;
    if !listens {
        // Never binds, never notifies: neither a port check nor sd_notify succeeds.
        shutdown.await;
        return 0;
    }
    let (listener, kind) = match source {
        Source::Inherited(std) => match TcpListener::from_std(std) {
            Ok(l) => (l, server::Listener::Shared),
            Err(e) => {
                eprintln!("fleet-testapp: cannot use the inherited socket: {e}");
                return 1;
            }
        },
        Source::Port(port) => match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => (l, server::Listener::Private),
            Err(e) => {
                eprintln!("fleet-testapp: cannot listen on 127.0.0.1:{port}: {e}");
                return 1;
            }
        },
    };
    let how = match kind {
        server::Listener::Shared => "inherited",
        server::Listener::Private => "PORT",
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr} ({how})"),
        Err(_) => println!("listening on fd {} ({how})", listen::LISTEN_FDS_START),
    }
    if !options.never_ready {
        send_notify("READY=1");
    }

    let identity = Identity {
        instance: std::env::var("FLEET_APP_INSTANCE")
            .or_else(|_| std::env::var("NODE_APP_INSTANCE"))
            .unwrap_or_else(|_| "-".to_string()),
        pid: std::process::id(),
        version: std::env::var("VERSION").unwrap_or_else(|_| "v1".to_string()),
        healthy: Arc::new(AtomicBool::new(!options.never_ready)),
    };
    if let Some(ms) = options.unhealthy_after_ms {
        let healthy = Arc::clone(&identity.healthy);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            println!("unhealthy from now on (--unhealthy-after-ms)");
            healthy.store(false, Ordering::Relaxed);
        });
    }
    ping_watchdog(options.watchdog_for_ms);
    server::serve(listener, kind, identity, shutdown).await;
    println!("stopped");
    0
}

/// With `WATCHDOG_USEC` set (`watchdog`), sends `WATCHDOG=1` every half period, for
/// `for_ms` if given (then it goes quiet, to play a hung app), else for ever.
fn ping_watchdog(for_ms: Option<u64>) {
    let Some(period_us) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&us| us > 0)
    else {
        return;
    };
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let every = Duration::from_micros(period_us / 2);
        loop {
            if for_ms.is_some_and(|ms| started.elapsed() >= Duration::from_millis(ms)) {
                println!("watchdog pings stopped (--watchdog-for-ms)");
                return;
            }
            send_notify("WATCHDOG=1");
            tokio::time::sleep(every).await;
        }
    });
}

/// Completes on the first SIGINT or SIGTERM, after announcing the drain (stdout and
/// `STOPPING=1`). With `ignore`, both signals are caught and logged and it never
/// completes, to play an app that only SIGKILL stops (kill_timeout tests).
async fn shutdown_signal((mut term, mut int): (Signal, Signal), ignore: bool) {
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if ignore {
            eprintln!("fleet-testapp: ignoring {name} (--ignore-signals)");
            continue;
        }
        println!("draining on {name}");
        send_notify("STOPPING=1");
        return;
    }
}

fn send_notify(message: &str) {
    if let Ok(path) = std::env::var("NOTIFY_SOCKET")
        && let Err(e) = listen::notify(&path, message)
    {
        eprintln!("fleet-testapp: cannot send {message} to NOTIFY_SOCKET {path}: {e}");
    }
}
