//! Resolving one host: the destination, the stage's settings, `ssh_options` and
//! `~/.ssh/config` merged in ssh's order into everything needed to connect
//! (`Resolved`), with `%` tokens and `~` expanded and ProxyJump hops checked.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::ssh::SshSettings;

/// Everything needed to connect to one host.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// What to connect to and look up in known_hosts.
    pub hostname: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    pub identities_only: bool,
    /// Jump hosts, first to last (`ProxyJump a,b`).
    pub jumps: Vec<String>,
    /// `ProxyCommand`, its `%` tokens expanded: run with `sh -c`, its stdin and
    /// stdout are the connection.
    pub proxy_command: Option<String>,
    /// The name known_hosts files know the host by (`HostKeyAlias`, else `hostname`).
    pub host_key_name: String,
    /// Learned keys are written hashed (`HashKnownHosts yes`).
    pub hash_known_hosts: bool,
    /// `--accept-changed-host-key` names this host.
    pub accept_changed_host_key: bool,
    /// The first one learns new keys.
    pub user_known_hosts: Vec<PathBuf>,
    pub global_known_hosts: Vec<PathBuf>,
    pub strict: StrictHostKeyChecking,
    pub connect_timeout: Duration,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_max: usize,
}

impl Resolved {
    /// Identifies a connection: two names for the same login share it.
    pub fn route(&self, via: Option<&str>) -> String {
        let mut address = format!("{}@[{}]:{}", self.user, self.hostname, self.port);
        if let Some(command) = &self.proxy_command {
            address = format!("{address} through `{command}`");
        }
        match via {
            Some(via) => format!("{address} via {via}"),
            None => address,
        }
    }
}

/// Which host is being resolved.
pub enum Role {
    /// A host the caller asked for: the stage's settings apply in full.
    Target,
    /// A jump host. `jumps` are the hops before it (`None` for the first hop,
    /// whose own ProxyJump from the config applies). Only the stage's key, known
    /// hosts and timeouts apply to it; user and port come from the jump spec and the
    /// config, as `ssh -J` does.
    Jump { jumps: Option<Vec<String>> },
}

/// Merges the sources for `spec` in ssh's order: the destination itself, the
/// stage's explicit settings, `ssh_options`, then `~/.ssh/config`.
pub fn resolve(
    spec: &str,
    role: Role,
    settings: &SshSettings,
    options: &Layer,
    config: &SshConfig,
) -> Result<Resolved, String> {
    let destination = Destination::parse(spec)?;
    let layer = merged_layer(spec, &destination, role, settings, options, config);
    finish(layer, &destination, settings)
}

/// The destination's own user and port, then the stage's settings, the `-o`
/// options and the config file, each only where nothing earlier set a value.
fn merged_layer(
    spec: &str,
    destination: &Destination,
    role: Role,
    settings: &SshSettings,
    options: &Layer,
    config: &SshConfig,
) -> Layer {
    let mut layer = Layer {
        user: destination.user.clone(),
        port: destination.port,
        ..Layer::default()
    };
    let target = matches!(role, Role::Target);
    if let Some(known_hosts) = &settings.known_hosts {
        layer.user_known_hosts = Some(vec![known_hosts.display().to_string()]);
    }
    if target {
        if layer.user.is_none() {
            layer.user = settings.user.clone().filter(|u| !u.is_empty());
        }
        layer.port = layer.port.or(settings.port);
        if let Some(jump) = &settings.proxy_jump {
            set(&mut layer.proxy_jump, jump.clone());
        }
    }
    if let Role::Jump { jumps: Some(jumps) } = &role {
        set(
            &mut layer.proxy_jump,
            if jumps.is_empty() {
                "none".to_string()
            } else {
                jumps.join(",")
            },
        );
    }
    let key = match role {
        Role::Target => settings.host_keys.get(spec).or(settings.key.as_ref()),
        Role::Jump { .. } => settings.key.as_ref(),
    };
    if let Some(key) = key {
        layer.identity_files.push(key.display().to_string());
    }
    // `-o` options: for a jump host, only what is not about the target's address.
    let mut from_options = options.clone();
    if !target {
        from_options.hostname = None;
        from_options.user = None;
        from_options.port = None;
        from_options.proxy_jump = None;
        from_options.proxy_command = None;
        from_options.host_key_alias = None;
    }
    merge(&mut layer, from_options);
    config.apply(&destination.host, &mut layer);
    layer
}

/// The merged layer with defaults filled in and `%` tokens and `~` expanded.
fn finish(
    layer: Layer,
    destination: &Destination,
    settings: &SshSettings,
) -> Result<Resolved, String> {
    if !layer.unsupported.is_empty() {
        return Err(format!(
            "{} applies to this host, and fleet's SSH client does not implement it; ignoring it could weaken the connection\nhint: remove it for this host (a `Host` block of its own), or reach the host with OpenSSH",
            layer.unsupported.join(", ")
        ));
    }
    let alias = destination.host.clone();
    let hostname = layer
        .hostname
        .as_deref()
        .map(|h| expand_percent(h, &[('h', &alias)]))
        .unwrap_or_else(|| alias.clone())
        .to_ascii_lowercase();
    if hostname.is_empty()
        || hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("HostName `{hostname}` is not a host name"));
    }
    let port = layer.port.unwrap_or(DEFAULT_PORT);
    let user = layer.user.clone().unwrap_or_else(local_user);
    let port_text = port.to_string();
    let local = local_user();
    let home = home_dir().display().to_string();
    let tokens = [
        ('h', hostname.as_str()),
        ('n', alias.as_str()),
        ('p', port_text.as_str()),
        ('r', user.as_str()),
        ('u', local.as_str()),
        ('d', home.as_str()),
    ];
    let path = |raw: &str| expand_tilde(&expand_percent(raw, &tokens));
    let jumps = match layer.proxy_jump.as_deref() {
        None => Vec::new(),
        Some(jump) if jump.eq_ignore_ascii_case("none") => Vec::new(),
        Some(jump) => jump
            .split(',')
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .map(str::to_string)
            .collect(),
    };
    for hop in &jumps {
        Destination::parse(hop).map_err(|e| format!("bad ProxyJump: {e}"))?;
    }
    let proxy_command = match layer.proxy_command.as_deref() {
        None => None,
        Some(command) if command.eq_ignore_ascii_case("none") => None,
        Some(command) => Some(proxy_command(command, &tokens)?),
    };
    let host_key_name = match &layer.host_key_alias {
        Some(alias) => expand_percent(alias, &tokens).to_ascii_lowercase(),
        None => hostname.clone(),
    };
    // `UserKnownHostsFile none`: no user file (nothing known, nothing learned).
    let known_hosts = |configured: &Option<Vec<String>>, defaults: [PathBuf; 2]| match configured {
        Some(files) => files
            .iter()
            .filter(|f| !f.eq_ignore_ascii_case("none"))
            .map(|f| path(f))
            .collect(),
        None => defaults.to_vec(),
    };
    let user_known_hosts = known_hosts(
        &layer.user_known_hosts,
        [
            home_dir().join(".ssh/known_hosts"),
            home_dir().join(".ssh/known_hosts2"),
        ],
    );
    let global_known_hosts = known_hosts(
        &layer.global_known_hosts,
        [
            PathBuf::from("/etc/ssh/ssh_known_hosts"),
            PathBuf::from("/etc/ssh/ssh_known_hosts2"),
        ],
    );
    let mut strict = layer.strict.unwrap_or(StrictHostKeyChecking::Yes);
    if settings.accept_new_host_keys && strict == StrictHostKeyChecking::Yes {
        strict = StrictHostKeyChecking::AcceptNew;
    }
    let mut seen = BTreeSet::new();
    let identity_files = layer
        .identity_files
        .iter()
        .map(|f| path(f))
        .filter(|f| seen.insert(f.clone()))
        .collect();
    let accept_changed_host_key = (settings.accept_changed_host_keys.iter())
        .any(|named| named.eq_ignore_ascii_case(&alias) || named.eq_ignore_ascii_case(&hostname));
    Ok(Resolved {
        hostname,
        port,
        user,
        identity_files,
        identities_only: layer.identities_only.unwrap_or(false),
        jumps,
        proxy_command,
        host_key_name,
        hash_known_hosts: layer.hash_known_hosts.unwrap_or(false),
        accept_changed_host_key,
        user_known_hosts,
        global_known_hosts,
        strict,
        connect_timeout: layer.connect_timeout.unwrap_or(settings.connect_timeout),
        keepalive_interval: layer
            .keepalive_interval
            .unwrap_or(Some(DEFAULT_KEEPALIVE_INTERVAL)),
        keepalive_max: layer.keepalive_max.unwrap_or(DEFAULT_KEEPALIVE_MAX),
    })
}

/// `ProxyCommand` with its tokens expanded. A token's value goes into a shell command:
/// one with anything but letters, digits and `.-_:@[]` is refused (a host name from a
/// config file must not become shell code), as OpenSSH refuses such host names.
fn proxy_command(command: &str, tokens: &[(char, &str)]) -> Result<String, String> {
    for (token, value) in tokens {
        let used = command.contains(&format!("%{token}"));
        let safe = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:@[]/".contains(c));
        if used && !safe {
            return Err(format!(
                "ProxyCommand: %{token} would put {value:?} in a shell command; refused"
            ));
        }
    }
    Ok(expand_percent(command, tokens))
}

/// Adds `later`'s values where `layer` has none yet.
fn merge(layer: &mut Layer, later: Layer) {
    set_opt(&mut layer.hostname, later.hostname);
    set_opt(&mut layer.user, later.user);
    set_opt(&mut layer.port, later.port);
    layer.identity_files.extend(later.identity_files);
    set_opt(&mut layer.identities_only, later.identities_only);
    // ProxyJump and ProxyCommand: the first one set wins.
    if layer.proxy_command.is_none() {
        set_opt(&mut layer.proxy_jump, later.proxy_jump);
    }
    if layer.proxy_jump.is_none() {
        set_opt(&mut layer.proxy_command, later.proxy_command);
    }
    set_opt(&mut layer.host_key_alias, later.host_key_alias);
    set_opt(&mut layer.hash_known_hosts, later.hash_known_hosts);
    layer.unsupported.extend(later.unsupported);
    set_opt(&mut layer.user_known_hosts, later.user_known_hosts);
    set_opt(&mut layer.global_known_hosts, later.global_known_hosts);
    set_opt(&mut layer.strict, later.strict);
    set_opt(&mut layer.connect_timeout, later.connect_timeout);
    set_opt(&mut layer.keepalive_interval, later.keepalive_interval);
    set_opt(&mut layer.keepalive_max, later.keepalive_max);
}

fn set_opt<T>(slot: &mut Option<T>, value: Option<T>) {
    if slot.is_none() {
        *slot = value;
    }
}
