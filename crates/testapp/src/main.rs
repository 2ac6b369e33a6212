//! The `fleet-testapp` binary: flags, the listener source (before the runtime opens any
//! descriptor, see `listen`), then `fleet_testapp::run` on a single-threaded runtime.

use std::process::ExitCode;

use clap::Parser;

/// A tiny HTTP/1.1 server for fleet's tests and benchmarks.
///
/// Listens on the inherited socket at fd 3 when LISTEN_FDS (and LISTEN_PID, if set)
/// say so, else on 127.0.0.1:$PORT. Sends READY=1 to NOTIFY_SOCKET once listening.
/// Routes: GET / (instance, pid, version), GET /health (503 once --unhealthy-after-ms
/// passes), GET /slow?ms=N, GET /addr (the
/// connection's local and peer addresses). On SIGINT or
/// SIGTERM: stops accepting, finishes in-flight requests, closes keep-alive connections
/// gracefully, sends STOPPING=1 and exits 0.
#[derive(Parser, Debug)]
#[command(name = "fleet-testapp", version)]
struct Args {
    /// Ignore LISTEN_FDS and listen on PORT only (an app that only knows PORT).
    #[arg(long)]
    port_only: bool,
    /// Wait this long before listening and sending READY=1.
    #[arg(long, value_name = "MS")]
    ready_delay_ms: Option<u64>,
    /// Never send READY=1; do not listen (in PORT mode: never bind) unless --listen-anyway.
    #[arg(long)]
    never_ready: bool,
    /// With --never-ready: listen and serve anyway (/health answers 503); in PORT mode
    /// this binds, so a port check succeeds while sd_notify and /health never do.
    #[arg(long, requires = "never_ready")]
    listen_anyway: bool,
    /// Catch SIGINT and SIGTERM and carry on (only SIGKILL stops it).
    #[arg(long)]
    ignore_signals: bool,
    /// Exit with status 1 this long after starting.
    #[arg(long, value_name = "MS")]
    crash_after_ms: Option<u64>,
    /// Answer 503 on /health from this long after starting on (`/` still answers).
    #[arg(long, value_name = "MS")]
    unhealthy_after_ms: Option<u64>,
    /// With WATCHDOG_USEC: send WATCHDOG=1 for this long only, then go quiet.
    #[arg(long, value_name = "MS")]
    watchdog_for_ms: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = fleet_testapp::Options {
        port_only: args.port_only,
        ready_delay_ms: args.ready_delay_ms,
        never_ready: args.never_ready,
        listen_anyway: args.listen_anyway,
        ignore_signals: args.ignore_signals,
        crash_after_ms: args.crash_after_ms,
        unhealthy_after_ms: args.unhealthy_after_ms,
        watchdog_for_ms: args.watchdog_for_ms,
    };
    let source = match fleet_testapp::choose_source(&options) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("fleet-testapp: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleet-testapp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(fleet_testapp::run(options, source));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
