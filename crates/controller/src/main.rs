//! The `fleet-controller` binary: argument parsing and logging, then
//! `fleet_controller::serve`, or one of the offline commands (tokens, the audit log).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::io::Read as _;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_controller::ControllerConfig;
use fleet_controller::config::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_JOIN_TOKEN_TTL, DEFAULT_LISTEN, DEFAULT_UNREACHABLE_AFTER,
};
use fleet_controller::store::AuditEntry;

#[derive(Parser)]
#[command(
    name = "fleet-controller",
    version,
    about = "fleet's controller: agents dial in over mTLS, the CLI commands a stage's hosts"
)]
struct Args {
    /// Address to serve agents and the CLI on (TLS).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Also serve HTTPS on this address (Prometheus' /metrics), with the controller's
    /// certificate [default: off].
    #[arg(long, value_name = "ADDR", conflicts_with = "http_plain")]
    http: Option<String>,
    /// Serve plain HTTP instead, on a loopback address only (behind a local proxy).
    #[arg(long, value_name = "ADDR")]
    http_plain: Option<String>,
    /// Data directory: CA, server certificate, database. Default ~/.fleet-controller.
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// The controller's config file (TOML): its `[alerts]` say what to watch and whom to
    /// tell (webhooks, email).
    #[arg(
        long,
        global = true,
        env = "FLEET_CONTROLLER_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Another name or address for the server certificate (repeatable).
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
    /// How often agents send heartbeats [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    heartbeat: Option<Duration>,
    /// Silence after which a host counts as unreachable [default: 15s].
    #[arg(long, value_parser = parse_duration)]
    unreachable_after: Option<Duration>,
    /// How long an agent certificate is valid [default: 90d].
    #[arg(long, value_parser = parse_duration)]
    agent_cert_lifetime: Option<Duration>,
    /// Agents renew their certificate over their session once it expires within
    /// this [default: 30d].
    #[arg(long, value_parser = parse_duration)]
    agent_cert_renew_before: Option<Duration>,
    /// The SSH key the deploys this controller runs use (OpenSSH format, no
    /// passphrase) [default: deploy_key in the data directory, made on first start].
    #[arg(long, global = true, value_name = "FILE")]
    deploy_key: Option<PathBuf>,
    /// The store several controllers share, a PostgreSQL URL:
    /// postgres://USER@HOST/DB[?sslmode=verify-full&sslrootcert=FILE]. Its password
    /// comes from FLEET_STORE_PASSWORD (never the command line), or the whole URL from
    /// FLEET_STORE [default: controller.db in the data directory, for one controller].
    #[arg(long, global = true, value_name = "URL")]
    store: Option<String>,
    /// The URL agents and the other controllers of the store reach this one at
    /// (https://name:port) [default: https:// and the --listen address].
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// The key the shared store's CA key is sealed with; every controller of a store
    /// needs the same one [default: seal.key in the data directory, made by the first].
    #[arg(long, global = true, env = "FLEET_SEAL_KEY", value_name = "FILE")]
    seal_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// API tokens for the CLI (`FLEET_TOKEN`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Hosts and their certificates.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Print a one-time token a host's agent trades for its certificate.
    JoinToken {
        host: String,
        /// How long the token stays valid, e.g. 30m [default: 1h].
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Alerts of the config file (`--config`).
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// The SSH key of the deploys the controller runs.
    SshKey {
        #[command(subcommand)]
        command: SshKeyCommand,
    },
    /// The host keys the controller trusts for its deploys.
    KnownHosts {
        #[command(subcommand)]
        command: KnownHostsCommand,
    },
    /// Move this data directory's SQLite state (CA, hosts, tokens, stages, deploys,
    /// audit log) into an empty PostgreSQL store. Stop the controller first.
    Migrate {
        /// The data directory of the SQLite controller.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL store (its password in FLEET_STORE_PASSWORD) [default: --store
        /// or FLEET_STORE].
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
    /// Print the audit log, newest last: commands, deploys, tokens. Safe while the
    /// controller runs (the database is opened read-only).
    Audit {
        /// One JSON array of entries instead of a table.
        #[arg(long)]
        json: bool,
        /// How many of the newest entries to print; 0 prints them all.
        #[arg(long, default_value_t = DEFAULT_AUDIT_LIMIT, value_name = "N")]
        limit: u32,
    },
}

/// `audit` prints this many entries unless told otherwise: a screenful or two, and the
/// newest are what an operator looks for first.
const DEFAULT_AUDIT_LIMIT: u32 = 100;

#[derive(Subcommand)]
enum SshKeyCommand {
    /// Print the public key to authorize on the hosts (their `authorized_keys`).
    Show,
}

#[derive(Subcommand)]
enum KnownHostsCommand {
    /// Trust the host keys in known_hosts lines from FILE or stdin (`ssh-keyscan HOST |
    /// fleet-controller known-hosts add`), after checking every line; prints each
    /// host's fingerprint to compare with the host's own.
    Add { file: Option<PathBuf> },
    /// Every trusted host key: hosts and fingerprint.
    List,
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Send a test message to every target of `[alerts]` now; exit 1 if one fails.
    Test,
}

#[derive(Subcommand)]
enum HostCommand {
    /// Every host: its certificate's serial and expiry, last seen, removed.
    List,
    /// Revoke a host: its certificate stops working at once (a running controller
    /// closes its session); joining again needs a new join token.
    Remove { name: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new API token; only its hash is stored.
    Create {
        /// What the audit log calls it and `revoke` takes, e.g. ci-deploy.
        #[arg(long)]
        name: String,
        /// metrics (only /metrics, for Prometheus), read (status, logs), operate (also
        /// start/stop/restart/reload/scale),
        /// deploy (also record deploys), admin (also join tokens and hosts).
        #[arg(long)]
        role: String,
        /// How long it stays valid, e.g. 30d or 12h [default: until revoked].
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
    },
    /// Every token: name, role, created, last used, expiry (never a secret).
    List,
    /// Stop a token from working, at once (a running controller checks every call).
    Revoke { name: String },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // The contract's exit codes: 2 for bad usage, 1 for a failed operation.
            let usage = matches!(
                error.downcast_ref(),
                Some(fleet_controller::Error::Invalid(_))
            );
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(mut args: Args) -> anyhow::Result<()> {
    let data = match args.data.take() {
        Some(data) => data,
        None => std::env::home_dir()
            .context("cannot find the home directory; pass --data")?
            .join(".fleet-controller"),
    };
    let store = store_location(args.store.as_deref(), &data)?;
    match args.command.take() {
        Some(Command::Token { command }) => token_command(&store, command),
        Some(Command::Host { command }) => host_command(&store, command),
        Some(Command::Migrate { from, to }) => {
            let to = match to {
                Some(url) => store_location(Some(&url), &data)?,
                None => store,
            };
            migrate_command(&from, &to, args.seal_key.as_deref())
        }
        Some(Command::Alerts {
            command: AlertsCommand::Test,
        }) => {
            let Some(file) = &args.config else {
                anyhow::bail!(
                    "`alerts test` needs the config file\nhint: --config FILE (or FLEET_CONTROLLER_CONFIG)"
                );
            };
            let alerts = fleet_controller::alerts::config::load(file)
                .map_err(anyhow::Error::msg)?
                .filter(|alerts| !alerts.targets.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!("{}: [alerts] names no webhook or email", file.display())
                })?;
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let all = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(fleet_controller::alerts::send_test(&store, &alerts))?;
            if !all {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::JoinToken { host, ttl }) => {
            let ttl = ttl.unwrap_or(DEFAULT_JOIN_TOKEN_TTL);
            let (token, expires) = fleet_controller::create_join_token(&store, &host, ttl)?;
            let until = jiff::Timestamp::from_second((expires / 1000) as i64)
                .map(|at| at.to_string())
                .unwrap_or_default();
            eprintln!(
                "join token for {host}, valid once until {until}; on the host run: fleet-agent join <url> (it reads the token on stdin)"
            );
            println!("{token}");
            Ok(())
        }
        Some(Command::SshKey { command }) => {
            ssh_key_command(&data, args.deploy_key.as_deref(), command)
        }
        Some(Command::KnownHosts { command }) => {
            known_hosts_command(&data, args.deploy_key.as_deref(), command)
        }
        Some(Command::Audit { json, limit }) => audit_command(&store, json, limit),
        None => serve(args, data, store),
    }
}

/// `ssh-key show`: the deploy key's public half (made now if it was never made).
fn ssh_key_command(
    data: &std::path::Path,
    key: Option<&std::path::Path>,
    command: SshKeyCommand,
) -> anyhow::Result<()> {
    let SshKeyCommand::Show = command;
    fleet_controller::prepare_data_dir(data)?;
    let files = fleet_controller::deployer::keys::Files::new(data, key);
    files.prepare()?;
    println!("{}", files.public_key()?.trim_end());
    Ok(())
}

/// `known-hosts add [FILE]`, `known-hosts list`.
fn known_hosts_command(
    data: &std::path::Path,
    key: Option<&std::path::Path>,
    command: KnownHostsCommand,
) -> anyhow::Result<()> {
    fleet_controller::prepare_data_dir(data)?;
    let files = fleet_controller::deployer::keys::Files::new(data, key);
    let entries = match command {
        KnownHostsCommand::Add { file } => {
            let text = match &file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => std::io::read_to_string(std::io::stdin().take(1 << 20))?,
            };
            files.add_known_hosts(&text)?
        }
        KnownHostsCommand::List => files.known_hosts()?,
    };
    for (hosts, fingerprint) in entries {
        println!("{}  {fingerprint}", escape_controls(&hosts));
    }
    Ok(())
}

/// `audit --json`: one array, each entry's time both as RFC 3339 (UTC, to the second)
/// and in unix milliseconds.
fn audit_json(entries: &[AuditEntry]) -> serde_json::Value {
    entries
        .iter()
        .map(|entry| {
            serde_json::json!({
                "at": fleet_controller::format_unix_ms(entry.at_ms),
                "at_ms": entry.at_ms,
                "who": entry.who,
                "action": entry.action,
                "stage": entry.stage,
                "targets": entry.targets,
                "result": entry.result,
            })
        })
        .collect()
}

/// `audit`: aligned columns, the result last since it can be long. Fields come from
/// clients, so control characters are shown escaped rather than sent to the terminal.
fn audit_table(entries: &[AuditEntry]) -> String {
    const HEADER: [&str; 6] = ["time", "who", "action", "stage", "targets", "result"];
    let or_dash = |text: String| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            text
        }
    };
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|entry| {
            [
                fleet_controller::format_unix_ms(entry.at_ms),
                entry.who.clone(),
                entry.action.clone(),
                or_dash(entry.stage.clone()),
                or_dash(entry.targets.join(",")),
                entry.result.clone(),
            ]
            .map(|field| escape_controls(&field))
        })
        .collect();
    let mut widths = HEADER.map(|title| title.chars().count());
    for row in &rows {
        for (width, field) in widths.iter_mut().zip(row) {
            *width = (*width).max(field.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(HEADER.map(str::to_owned)).chain(rows) {
        let mut line = String::new();
        for (index, field) in row.iter().enumerate() {
            line.push_str(field);
            if index + 1 < row.len() {
                let pad = widths[index] - field.chars().count();
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn init_logging() {
    let level = std::env::var("FLEET_LOG")
        .ok()
        .and_then(|level| level.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .init();
}

/// The controller itself: the config from the flags, then `serve` until SIGTERM.
fn serve(
    args: Args,
    data: PathBuf,
    store: fleet_controller::store::Location,
) -> anyhow::Result<()> {
    init_logging();
    let mut config = ControllerConfig::new(data);
    config.deploy_key = args.deploy_key;
    config.seal_key = args.seal_key;
    if let Some(url) = &args.advertise {
        fleet_proto::ops::check_controller_url(url)
            .map_err(|e| fleet_controller::Error::Invalid(format!("--advertise: {e}")))?;
    }
    config.advertise = args.advertise;
    if let fleet_controller::store::Location::Postgres(location) = store {
        config.store = Some(*location);
    }
    if let Some(file) = &args.config {
        config.alerts = fleet_controller::alerts::config::load(file).map_err(anyhow::Error::msg)?;
    }
    config.sans = args.sans;
    config.heartbeat_interval = args.heartbeat.unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
    config.unreachable_after = args.unreachable_after.unwrap_or(DEFAULT_UNREACHABLE_AFTER);
    if let Some(lifetime) = args.agent_cert_lifetime {
        fleet_controller::config::check_agent_cert_lifetime(lifetime)
            .map_err(fleet_controller::Error::Invalid)?;
        config.agent_cert_lifetime = lifetime;
    }
    if let Some(before) = args.agent_cert_renew_before {
        config.agent_cert_renew_before = before;
    }
    // A listen address given by name belongs in the certificate too.
    if let Some((host, _port)) = args.listen.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_err() && !host.is_empty() {
            config.sans.push(host.to_owned());
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let http = match (args.http, args.http_plain) {
                (Some(address), _) => Some((address, true)),
                (None, Some(address)) => Some((address, false)),
                (None, None) => None,
            };
            let http = match http {
                Some((address, tls)) => {
                    let listener = tokio::net::TcpListener::bind(&address)
                        .await
                        .with_context(|| format!("cannot listen on {address}"))?;
                    let http = fleet_controller::http::HttpListener::new(listener, tls)
                        .map_err(anyhow::Error::msg)?;
                    Some(http)
                }
                None => None,
            };
            fleet_controller::serve_with(config, listener, http, shutdown_signal()).await?;
            Ok(())
        })
}

/// `fleet-controller audit`: the newest `limit` entries (0: all), as a table or JSON.
fn audit_command(
    store: &fleet_controller::store::Location,
    json: bool,
    limit: u32,
) -> anyhow::Result<()> {
    let entries = fleet_controller::read_audit(store, (limit > 0).then_some(limit))?;
    if json {
        println!("{}", audit_json(&entries));
    } else if entries.is_empty() {
        eprintln!("the audit log is empty");
    } else {
        print!("{}", audit_table(&entries));
    }
    Ok(())
}

/// `fleet-controller migrate`: the SQLite state of `from` into the store `to`.
fn migrate_command(
    from: &std::path::Path,
    to: &fleet_controller::store::Location,
    seal_key: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let migrated = fleet_controller::store::copy::migrate(from, to, seal_key)?;
    for (table, rows) in &migrated.tables {
        println!("{table:<18} {rows:>8} rows");
    }
    eprintln!(
        "moved {} into {to}; the CA's key is sealed with {}: give every controller of this store a copy (--seal-key)",
        from.display(),
        migrated.seal_key.display()
    );
    Ok(())
}

/// Where the state lives: `--store`, else `FLEET_STORE`, else SQLite in the data
/// directory. A password is refused on the command line (every local user can read
/// it there): it comes from `FLEET_STORE_PASSWORD` or with `FLEET_STORE`.
fn store_location(
    flag: Option<&str>,
    data: &std::path::Path,
) -> anyhow::Result<fleet_controller::store::Location> {
    use fleet_controller::store::Location;
    let from_env = std::env::var("FLEET_STORE").ok().filter(|v| !v.is_empty());
    let location = Location::new(flag.or(from_env.as_deref()), data)?;
    let Location::Postgres(mut pg) = location else {
        return Ok(location);
    };
    if flag.is_some() && pg.has_password() {
        return Err(fleet_controller::Error::Invalid(
            "a password in a URL on the command line is visible to every local user\nhint: put it in FLEET_STORE_PASSWORD, or the whole URL in FLEET_STORE"
                .into(),
        )
        .into());
    }
    if let Ok(password) = std::env::var("FLEET_STORE_PASSWORD") {
        pg = Box::new(pg.or_password(&password));
    }
    Ok(Location::Postgres(pg))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn token_command(
    data: &fleet_controller::store::Location,
    command: TokenCommand,
) -> anyhow::Result<()> {
    use fleet_controller::tokens::Role;
    match command {
        TokenCommand::Create {
            name,
            role,
            expires,
        } => {
            let role = Role::parse(&role).map_err(fleet_controller::Error::Invalid)?;
            let token = fleet_controller::create_api_token(data, &name, role, expires)?;
            eprintln!(
                "created API token {name} ({}); it is shown once, keep it in FLEET_TOKEN",
                role.as_str()
            );
            println!("{token}");
        }
        TokenCommand::List => {
            let tokens = fleet_controller::list_api_tokens(data)?;
            if tokens.is_empty() {
                eprintln!("no API token\nhint: `fleet-controller token create --name N --role R`");
            }
            let when = |ms: Option<u64>| {
                ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms as i64).ok())
                    .map_or("-".to_string(), |t| {
                        t.strftime("%Y-%m-%d %H:%M").to_string()
                    })
            };
            println!(
                "{:<24} {:<8} {:<17} {:<17} {:<17} REVOKED",
                "NAME", "ROLE", "CREATED", "LAST USED", "EXPIRES"
            );
            for t in tokens {
                println!(
                    "{:<24} {:<8} {:<17} {:<17} {:<17} {}",
                    t.name,
                    t.role.as_str(),
                    when(Some(t.created_ms)),
                    when(t.last_used_ms),
                    when(t.expires_ms),
                    when(t.revoked_ms)
                );
            }
        }
        TokenCommand::Revoke { name } => {
            fleet_controller::revoke_api_token(data, &name)?;
            eprintln!("revoked API token {name}");
        }
    }
    Ok(())
}

fn host_command(
    data: &fleet_controller::store::Location,
    command: HostCommand,
) -> anyhow::Result<()> {
    match command {
        HostCommand::List => {
            let hosts = fleet_controller::list_hosts(data)?;
            if hosts.is_empty() {
                eprintln!("no host yet\nhint: `fleet-controller join-token <host>`");
            }
            let when = |ms: Option<u64>| {
                ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms as i64).ok())
                    .map_or("-".to_string(), |t| {
                        t.strftime("%Y-%m-%d %H:%M").to_string()
                    })
            };
            println!(
                "{:<24} {:<34} {:<17} {:<17} REMOVED",
                "NAME", "CERTIFICATE SERIAL", "EXPIRES", "LAST SEEN"
            );
            for h in hosts {
                println!(
                    "{:<24} {:<34} {:<17} {:<17} {}",
                    h.name,
                    h.serial.as_deref().unwrap_or("-"),
                    when(h.expires_ms),
                    when(Some(h.last_seen_ms).filter(|ms| *ms > 0)),
                    when(h.removed_ms)
                );
            }
        }
        HostCommand::Remove { name } => {
            fleet_controller::remove_host(data, &name)?;
            eprintln!("removed {name}: its certificate no longer works");
        }
    }
    Ok(())
}

/// `5s`, `1h`, `500ms`, `1h30m`, `30d` (jiff's friendly format; a day is 24 hours).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |error: &dyn std::fmt::Display| {
        format!("{text:?} is not a duration like 15s, 1h, 30d or 500ms ({error})")
    };
    let span: jiff::Span = text.parse().map_err(|e| bad(&e))?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| bad(&e))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_days_as_24_hours() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("\"soon\""));
    }
}
