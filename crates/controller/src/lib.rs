//! fleet's controller: the central service agents dial into (one mTLS session each)
//! and the CLI asks about a stage's hosts. It keeps hosts' live state in memory and
//! hosts, stages, tokens and the audit log in its store (SQLite, or PostgreSQL shared
//! by several controllers); it never forks an app. `serve` takes its listener and a shutdown future so tests
//! run a controller in-process.

mod agent_link;
pub mod alerts;
pub mod alloc;
mod auth;
pub mod config;
pub mod deployer;
pub mod deploys;
mod error;
mod fleet_service;
pub mod hosts;
pub mod http;
pub mod limits;
mod logdrops;
mod peers;
pub mod pki;
pub mod registry;
pub mod seal;
mod server;
pub mod store;
pub mod tokens;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

pub use config::ControllerConfig;
pub use error::{Error, Refusal};
pub use server::{serve, serve_with};

/// The database's file name in the data directory.
pub const DATABASE_FILE: &str = "controller.db";
/// The data directory holds the CA's key: owner only.
const DATA_DIR_MODE: u32 = 0o700;
/// Host names become certificate common names and SQL keys; DNS's limit is plenty.
const MAX_HOST_LEN: usize = 253;

/// Creates the data directory (mode 0700) if it does not exist, and locks a directory
/// that already exists down to its owner too.
pub fn prepare_data_dir(path: &Path) -> Result<(), Error> {
    if path.is_dir() {
        return std::fs::set_permissions(path, std::fs::Permissions::from_mode(DATA_DIR_MODE))
            .map_err(|source| Error::io(path, source));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DATA_DIR_MODE)
        .create(path)
        .map_err(|source| Error::io(path, source))?;
    // The umask still applies to the mode given to `create`; make it exact.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(DATA_DIR_MODE))
        .map_err(|source| Error::io(path, source))
}

/// Opens the store for one of the offline commands (`token`, `host`, `join-token`),
/// creating the data directory of a SQLite store first.
fn open_store(location: &store::Location) -> Result<Box<dyn store::Db + Send>, Error> {
    if let store::Location::Sqlite(path) = location
        && let Some(dir) = path.parent()
    {
        prepare_data_dir(dir)?;
    }
    location.open()
}

/// `fleet-controller token create`: a new API token named `name` with `role`, valid
/// for `ttl` when given; stored hashed. Returns the token, shown once, never stored.
pub fn create_api_token(
    location: &store::Location,
    name: &str,
    role: tokens::Role,
    ttl: Option<Duration>,
) -> Result<String, Error> {
    tokens::check_name(name).map_err(Error::Invalid)?;
    let db = open_store(location)?;
    let now = now_unix_ms();
    let expires = ttl.map(|ttl| now.saturating_add(ttl.as_millis() as u64));
    let token = tokens::create(db.as_ref(), name, role, expires, now).map_err(Error::Invalid)?;
    audit_local(
        db.as_ref(),
        location,
        "token create",
        vec![format!("token:{name} ({})", role.as_str())],
    )?;
    Ok(token)
}

/// `fleet-controller token list`: every API token (never a secret).
pub fn list_api_tokens(location: &store::Location) -> Result<Vec<tokens::TokenInfo>, Error> {
    let db = open_store(location)?;
    tokens::list(db.as_ref()).map_err(|source| Error::database(location, source))
}

/// `fleet-controller token revoke NAME`: the token stops working at once, for a
/// running controller too (every call looks it up).
pub fn revoke_api_token(location: &store::Location, name: &str) -> Result<(), Error> {
    let db = open_store(location)?;
    let revoked = tokens::revoke(db.as_ref(), name, now_unix_ms())
        .map_err(|source| Error::database(location, source))?;
    if !revoked {
        return Err(Error::Invalid(format!(
            "no token named {name} that is not revoked already\nhint: `fleet-controller token list`"
        )));
    }
    audit_local(
        db.as_ref(),
        location,
        "token revoke",
        vec![format!("token:{name}")],
    )
}

/// `fleet-controller host list`: every host with its certificate (serial, expiry).
pub fn list_hosts(location: &store::Location) -> Result<Vec<hosts::HostRecord>, Error> {
    let db = open_store(location)?;
    hosts::list(db.as_ref()).map_err(|source| Error::database(location, source))
}

/// `fleet-controller host remove NAME`: the host's certificate stops working; a
/// running controller closes its session within `server::SWEEP_INTERVAL`.
pub fn remove_host(location: &store::Location, name: &str) -> Result<(), Error> {
    validate_host(name).map_err(Error::Invalid)?;
    let db = open_store(location)?;
    let removed = hosts::remove(db.as_ref(), name, now_unix_ms())
        .map_err(|source| Error::database(location, source))?;
    if !removed {
        return Err(Error::Invalid(format!(
            "no host named {name} that is not removed already\nhint: `fleet-controller host list`"
        )));
    }
    audit_local(db.as_ref(), location, "host remove", vec![name.to_owned()])
}

/// `fleet-controller join-token <host>`: a one-time token `host` trades for its
/// certificate. Returns the token and when it expires (unix ms).
pub fn create_join_token(
    location: &store::Location,
    host: &str,
    ttl: Duration,
) -> Result<(String, u64), Error> {
    validate_host(host).map_err(Error::Invalid)?;
    config::check_join_ttl(ttl).map_err(Error::Invalid)?;
    let db = open_store(location)?;
    let created = store::create_join_token(db.as_ref(), host, ttl, now_unix_ms())
        .map_err(|source| Error::database(location, source))?;
    audit_local(db.as_ref(), location, "join-token", vec![host.to_owned()])?;
    Ok(created)
}

/// `fleet-controller audit`: the last `limit` entries of the audit log (all for `None`),
/// newest last. Reads a SQLite store read-only, so it works while the controller runs.
pub fn read_audit(
    location: &store::Location,
    limit: Option<u32>,
) -> Result<Vec<store::AuditEntry>, Error> {
    let db = location.open_to_read()?;
    store::audit_entries(db.as_ref(), limit).map_err(|source| Error::database(location, source))
}

/// Audits what was done on the controller's machine, with its store directly.
fn audit_local(
    db: &dyn store::Db,
    location: &store::Location,
    action: &str,
    targets: Vec<String>,
) -> Result<(), Error> {
    let entry = store::AuditEntry {
        at_ms: now_unix_ms(),
        who: "local".to_owned(),
        action: action.to_owned(),
        stage: String::new(),
        targets,
        result: "ok".to_owned(),
    };
    store::append_audit(db, &entry).map_err(|source| Error::database(location, source))
}

/// A host name as fleet accepts it: what a DNS name or an inventory alias uses.
pub fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host name is empty".to_owned());
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!(
            "the host name is longer than {MAX_HOST_LEN} characters"
        ));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "the host name {host:?} contains {bad:?}\nhint: use letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A unix time in ms as users read it: RFC 3339, UTC, to the second.
pub fn format_unix_ms(ms: u64) -> String {
    jiff::Timestamp::from_second((ms / 1000) as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{ms} ms after the epoch"))
}
