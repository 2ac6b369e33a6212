//! Where and how to connect to one host: the stage's SSH settings, its `ssh_options`
//! (`-o` style) and `~/.ssh/config`, merged with ssh_config(5)'s rule that the first
//! obtained value wins. Connecting is left to `connect`.
//!
//! Only the keywords fleet acts on are read: Host, Match (`all`, `host`,
//! `originalhost`), Include, HostName, User, Port, IdentityFile, IdentitiesOnly,
//! ProxyJump, ProxyCommand, HostKeyAlias, HashKnownHosts, UserKnownHostsFile,
//! GlobalKnownHostsFile, StrictHostKeyChecking, ConnectTimeout, ServerAliveInterval
//! and ServerAliveCountMax. An option that changes how a connection is secured and
//! that fleet does not implement (`SECURITY_OPTIONS`) is an error for the hosts it
//! applies to, never silently ignored; other unknown options are. The `russh-config`
//! crate was not used: it splits lines on single spaces (no tabs, no `Key=value`),
//! rejects options before the first `Host`, reads `Match` blocks as part of the
//! previous `Host`, has no `Include` and reads `StrictHostKeyChecking accept-new` as `yes`.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod resolve;

pub use resolve::{Resolved, Role, resolve};

/// OpenSSH's default port.
pub const DEFAULT_PORT: u16 = 22;
/// Keepalive period when nothing sets `ServerAliveInterval`: fleet's choice (OpenSSH
/// sends none), so a dead host is noticed within a minute (15 s x 3).
const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// OpenSSH's `ServerAliveCountMax` default.
const DEFAULT_KEEPALIVE_MAX: usize = 3;
/// Nested `Include`s followed, as OpenSSH's `READCONF_MAX_DEPTH`.
const MAX_INCLUDE_DEPTH: usize = 16;

/// What to do with a host key that is not in known_hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// Refuse unknown keys (fleet's default; OpenSSH's `ask` reads as this, as
    /// there is nobody to ask).
    Yes,
    /// Learn unknown keys into known_hosts; still refuse changed keys.
    AcceptNew,
    /// Accept unknown keys (learned) and changed keys (not learned, with a warning).
    /// Only when the user wrote it.
    No,
}

/// One host as the user named it: `[user@]host[:port]`, `[user@][v6addr]:port` or
/// `ssh://[user@]host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl Destination {
    pub fn parse(spec: &str) -> Result<Destination, String> {
        let spec = spec.trim();
        let rest = spec.strip_prefix("ssh://").unwrap_or(spec);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("`{spec}`: missing `]`"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("`{spec}`: expected `:port` after `]`")),
                },
            }
        } else if rest.matches(':').count() == 1 {
            let (host, port) = rest.split_once(':').unwrap_or((rest, ""));
            (host, Some(port))
        } else {
            // No colon, or a bare IPv6 address.
            (rest, None)
        };
        if host.is_empty() {
            return Err(format!("`{spec}`: no host name"));
        }
        if host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{spec}`: not a host name"));
        }
        if user.is_some_and(|u| u.is_empty() || u.chars().any(char::is_control)) {
            return Err(format!("`{spec}`: empty or bad user name"));
        }
        let port = match port {
            None => None,
            Some(port) => Some(parse_port(port).map_err(|e| format!("`{spec}`: {e}"))?),
        };
        Ok(Destination {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        })
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("bad port `{text}`")),
    }
}

/// Values gathered for one host; each is set once, by the first source that has it.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    hostname: Option<String>,
    user: Option<String>,
    port: Option<u16>,
    /// Accumulated from every source, in order, as OpenSSH does.
    identity_files: Vec<String>,
    identities_only: Option<bool>,
    /// ProxyJump and ProxyCommand: whichever comes first wins, as in OpenSSH.
    proxy_jump: Option<String>,
    proxy_command: Option<String>,
    host_key_alias: Option<String>,
    hash_known_hosts: Option<bool>,
    /// Security options that apply and that fleet cannot honour, with where.
    unsupported: Vec<String>,
    user_known_hosts: Option<Vec<String>>,
    global_known_hosts: Option<Vec<String>>,
    strict: Option<StrictHostKeyChecking>,
    connect_timeout: Option<Duration>,
    keepalive_interval: Option<Option<Duration>>,
    keepalive_max: Option<usize>,
}

/// Whether `Layer::apply` knew the keyword.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Known,
    Unknown,
    /// A security option fleet does not implement, set to something that matters.
    Unsupported,
}

/// Options that change how a connection is secured, which fleet's SSH client does not
/// implement: each is refused for the hosts it applies to, unless set to the value
/// that asks for nothing (`none`, `no`), or to what fleet does anyway.
fn unsupported_security(keyword: &str, args: &[String]) -> bool {
    let value = args
        .first()
        .map(|v| v.to_ascii_lowercase())
        .unwrap_or_default();
    let off = matches!(value.as_str(), "no" | "false" | "off" | "none" | "");
    match keyword {
        "knownhostscommand"
        | "certificatefile"
        | "pkcs11provider"
        | "securitykeyprovider"
        | "revokedhostkeys"
        | "hostkeyalgorithms"
        | "kexalgorithms"
        | "ciphers"
        | "macs"
        | "pubkeyacceptedalgorithms"
        | "pubkeyacceptedkeytypes"
        | "casignaturealgorithms"
        | "hostbasedacceptedalgorithms"
        | "requiredrsasize" => !off,
        "verifyhostkeydns"
        | "hostbasedauthentication"
        | "canonicalizehostname"
        | "gssapiauthentication"
        | "gssapidelegatecredentials" => !off,
        // fleet uses the agent at SSH_AUTH_SOCK, or none.
        "identityagent" => !off && value != "ssh_auth_sock" && value != "$ssh_auth_sock",
        _ => false,
    }
}

/// What follows a line's keyword (and its `=`): ProxyCommand's command, whole.
fn raw_value(line: &str) -> &str {
    let line = line.trim();
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let rest = line[end..].trim_start();
    rest.strip_prefix('=').unwrap_or(rest).trim()
}

impl Layer {
    /// Applies one `Keyword args...` line (`raw`: what follows the keyword); an error
    /// names a bad value.
    fn apply(&mut self, keyword: &str, args: &[String], raw: &str) -> Result<Applied, String> {
        let one = || -> Result<&str, String> {
            match args {
                [value] if !value.is_empty() => Ok(value.as_str()),
                [] | [_] => Err(format!("{keyword} needs a value")),
                _ => Err(format!("{keyword} takes one value")),
            }
        };
        let yes_no = |value: &str| match value.to_ascii_lowercase().as_str() {
            "yes" | "true" => Ok(true),
            "no" | "false" => Ok(false),
            _ => Err(format!("{keyword}: expected yes or no, got `{value}`")),
        };
        let seconds = |value: &str| {
            value
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| format!("{keyword}: expected seconds, got `{value}`"))
        };
        match keyword.to_ascii_lowercase().as_str() {
            "hostname" => set(&mut self.hostname, one()?.to_string()),
            "user" => set(&mut self.user, one()?.to_string()),
            "port" => set(&mut self.port, parse_port(one()?)?),
            "identityfile" => {
                let file = one()?;
                if !file.eq_ignore_ascii_case("none") {
                    self.identity_files.push(file.to_string());
                }
            }
            "identitiesonly" => set(&mut self.identities_only, yes_no(one()?)?),
            "proxyjump" => {
                let jump = one()?.to_string();
                if self.proxy_command.is_none() {
                    set(&mut self.proxy_jump, jump);
                }
            }
            "proxycommand" => {
                if raw.is_empty() {
                    return Err(format!("{keyword} needs a value"));
                }
                if self.proxy_jump.is_none() {
                    set(&mut self.proxy_command, raw.to_string());
                }
            }
            "hostkeyalias" => set(&mut self.host_key_alias, one()?.to_string()),
            "hashknownhosts" => set(&mut self.hash_known_hosts, yes_no(one()?)?),
            "userknownhostsfile" if !args.is_empty() => {
                set(&mut self.user_known_hosts, args.to_vec())
            }
            "globalknownhostsfile" if !args.is_empty() => {
                set(&mut self.global_known_hosts, args.to_vec())
            }
            "stricthostkeychecking" => {
                let value = one()?;
                let mode = match value.to_ascii_lowercase().as_str() {
                    "yes" | "true" | "ask" => StrictHostKeyChecking::Yes,
                    "accept-new" => StrictHostKeyChecking::AcceptNew,
                    "no" | "false" | "off" => StrictHostKeyChecking::No,
                    _ => {
                        return Err(format!(
                            "StrictHostKeyChecking: expected yes, accept-new or no, got `{value}`"
                        ));
                    }
                };
                set(&mut self.strict, mode);
            }
            "connecttimeout" => {
                let timeout = seconds(one()?)?;
                if !timeout.is_zero() {
                    set(&mut self.connect_timeout, timeout);
                }
            }
            "serveraliveinterval" => {
                let interval = seconds(one()?)?;
                set(
                    &mut self.keepalive_interval,
                    (!interval.is_zero()).then_some(interval),
                );
            }
            "serveralivecountmax" => {
                let value = one()?;
                let max = value
                    .parse::<usize>()
                    .map_err(|_| format!("{keyword}: expected a count, got `{value}`"))?;
                set(&mut self.keepalive_max, max.max(1));
            }
            "userknownhostsfile" | "globalknownhostsfile" => {
                return Err(format!("{keyword} needs a value"));
            }
            other if unsupported_security(other, args) => return Ok(Applied::Unsupported),
            _ => return Ok(Applied::Unknown),
        }
        Ok(Applied::Known)
    }
}

fn set<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// Splits a config line into its keyword and arguments: whitespace separated, an
/// optional `=` after the keyword, double or single quotes group, and an unquoted
/// `#` starts a comment. `None` for blank and comment lines; a quote left open is an
/// error, as it is to ssh.
fn tokenize(line: &str) -> Option<Result<(String, Vec<String>), String>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let keyword = line[..end].to_string();
    let mut rest = line[end..].trim_start();
    if let Some(after) = rest.strip_prefix('=') {
        rest = after.trim_start();
    }
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_token = false;
    let mut quote: Option<char> = None;
    for c in rest.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => current.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_token = true;
            }
            None if c.is_whitespace() => {
                if in_token {
                    args.push(std::mem::take(&mut current));
                    in_token = false;
                }
            }
            None if c == '#' && !in_token => break,
            None => {
                current.push(c);
                in_token = true;
            }
        }
    }
    if quote.is_some() {
        return Some(Err(format!("{keyword}: a quote is left open")));
    }
    if in_token {
        args.push(current);
    }
    Some(Ok((keyword, args)))
}

/// Parses `ssh_options` (each `Key=value` or `Key value`) into a layer, with one
/// warning per option fleet ignores; a security option it cannot honour is kept in
/// the layer and refused when a host is resolved.
pub fn parse_ssh_options(options: &[String], warnings: &mut Vec<String>) -> Layer {
    let mut layer = Layer::default();
    for option in options {
        let (keyword, args) = match tokenize(option) {
            None => continue,
            Some(Ok(line)) => line,
            Some(Err(message)) => {
                warnings.push(format!("ignored ssh option: {message}"));
                continue;
            }
        };
        match layer.apply(&keyword, &args, raw_value(option)) {
            Ok(Applied::Known) => {}
            Ok(Applied::Unsupported) => layer
                .unsupported
                .push(format!("`{keyword}` (the stage's ssh_options)")),
            // fleet never prompts, so batch mode is what it always does.
            Ok(Applied::Unknown) if keyword.eq_ignore_ascii_case("batchmode") => {}
            Ok(Applied::Unknown) => warnings.push(format!(
                "ignored ssh option `{keyword}`: fleet's ssh client does not support it"
            )),
            Err(message) => warnings.push(format!("ignored ssh option: {message}")),
        }
    }
    layer
}

/// Where a config line came from, for warnings.
#[derive(Clone, Debug)]
struct Origin {
    file: PathBuf,
    line: usize,
}

#[derive(Clone, Debug)]
enum Item {
    Host(Vec<String>),
    /// `None`: criteria fleet cannot evaluate; the block never applies.
    Match(Option<Vec<MatchCriterion>>),
    Option {
        keyword: String,
        args: Vec<String>,
        raw: String,
        /// `file:line`, for errors.
        at: String,
    },
    /// An included file's items, evaluated in the includer's context.
    Include(Vec<Item>),
}

#[derive(Clone, Debug)]
enum MatchCriterion {
    All,
    Host { negated: bool, patterns: String },
    OriginalHost { negated: bool, patterns: String },
}

/// A parsed `~/.ssh/config` (with its `Include`s).
#[derive(Clone, Debug, Default)]
pub struct SshConfig {
    items: Vec<Item>,
}

impl SshConfig {
    /// Reads `path`; a missing file is an empty config. Problems become warnings.
    pub fn load(path: &Path, warnings: &mut Vec<String>) -> SshConfig {
        let ssh_dir = path.parent().unwrap_or(Path::new("."));
        SshConfig {
            items: read_config_file(path, ssh_dir, 0, warnings),
        }
    }

    #[cfg(test)]
    pub fn parse(text: &str, warnings: &mut Vec<String>) -> SshConfig {
        let origin = PathBuf::from("config");
        SshConfig {
            items: parse_config(text, &origin, Path::new("."), 0, warnings),
        }
    }

    /// Applies the lines that match `alias` (the host as the user wrote it).
    fn apply(&self, alias: &str, layer: &mut Layer) {
        apply_items(&self.items, alias, true, layer);
    }
}

fn read_config_file(
    path: &Path,
    ssh_dir: &Path,
    depth: usize,
    warnings: &mut Vec<String>,
) -> Vec<Item> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_config(&text, path, ssh_dir, depth, warnings),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            warnings.push(format!("cannot read {}: {error}", path.display()));
            Vec::new()
        }
    }
}

fn parse_config(
    text: &str,
    file: &Path,
    ssh_dir: &Path,
    depth: usize,
    warnings: &mut Vec<String>,
) -> Vec<Item> {
    let mut items = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            line: index + 1,
        };
        let at = || format!("{}:{}", origin.file.display(), origin.line);
        let (keyword, args) = match tokenize(line) {
            None => continue,
            Some(Ok(line)) => line,
            Some(Err(message)) => {
                warnings.push(format!("{}: {message}; the line is ignored", at()));
                // A block whose header cannot be read matches nothing, so its lines
                // never fall into the block before it.
                let keyword = line
                    .trim()
                    .split([' ', '\t', '='])
                    .next()
                    .unwrap_or_default();
                if keyword.eq_ignore_ascii_case("host") || keyword.eq_ignore_ascii_case("match") {
                    items.push(Item::Match(None));
                }
                continue;
            }
        };
        match keyword.to_ascii_lowercase().as_str() {
            "host" => items.push(Item::Host(args)),
            "match" => {
                let criteria = parse_match(&args);
                if criteria.is_none() {
                    warnings.push(format!(
                        "{}: `Match {}` is not supported by fleet; its options are ignored",
                        at(),
                        args.join(" ")
                    ));
                }
                items.push(Item::Match(criteria));
            }
            "include" => {
                if depth >= MAX_INCLUDE_DEPTH {
                    warnings.push(format!("{}: too many nested Include", at()));
                    continue;
                }
                let mut included = Vec::new();
                for pattern in &args {
                    for path in expand_include(pattern, ssh_dir) {
                        included.extend(read_config_file(&path, ssh_dir, depth + 1, warnings));
                    }
                }
                items.push(Item::Include(included));
            }
            _ => {
                // Check values once, here, so a bad one is reported once.
                let raw = raw_value(line).to_string();
                if let Err(message) = Layer::default().apply(&keyword, &args, &raw) {
                    warnings.push(format!("{}: {message}; ignored", at()));
                    continue;
                }
                items.push(Item::Option {
                    keyword,
                    args,
                    raw,
                    at: at(),
                });
            }
        }
    }
    items
}

fn parse_match(args: &[String]) -> Option<Vec<MatchCriterion>> {
    let mut criteria = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (negated, name) = match arg.strip_prefix('!') {
            Some(name) => (true, name),
            None => (false, arg.as_str()),
        };
        match name.to_ascii_lowercase().as_str() {
            "all" if !negated => criteria.push(MatchCriterion::All),
            "host" => criteria.push(MatchCriterion::Host {
                negated,
                patterns: args.next()?.clone(),
            }),
            "originalhost" => criteria.push(MatchCriterion::OriginalHost {
                negated,
                patterns: args.next()?.clone(),
            }),
            _ => return None,
        }
    }
    (!criteria.is_empty()).then_some(criteria)
}

/// `Include` paths: `~` expanded, relative ones under `~/.ssh`, and `*`/`?` in the
/// file name expanded (sorted, as glob(3) does).
fn expand_include(pattern: &str, ssh_dir: &Path) -> Vec<PathBuf> {
    let path = expand_tilde(pattern);
    let path = if path.is_absolute() {
        path
    } else {
        ssh_dir.join(path)
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![path];
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| wildcard_match(&name, &entry.file_name().to_string_lossy()))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

fn apply_items(items: &[Item], alias: &str, mut active: bool, layer: &mut Layer) {
    for item in items {
        match item {
            Item::Host(patterns) => active = host_matches(alias, patterns),
            Item::Match(criteria) => {
                active = criteria.as_ref().is_some_and(|criteria| {
                    criteria.iter().all(|criterion| match criterion {
                        MatchCriterion::All => true,
                        MatchCriterion::Host { negated, patterns } => {
                            let host = layer.hostname.as_deref().unwrap_or(alias);
                            pattern_list_matches(&host.to_ascii_lowercase(), patterns) != *negated
                        }
                        MatchCriterion::OriginalHost { negated, patterns } => {
                            pattern_list_matches(&alias.to_ascii_lowercase(), patterns) != *negated
                        }
                    })
                });
            }
            Item::Option {
                keyword,
                args,
                raw,
                at,
            } => {
                if active && layer.apply(keyword, args, raw) == Ok(Applied::Unsupported) {
                    layer.unsupported.push(format!("`{keyword}` ({at})"));
                }
            }
            // The included file starts in the includer's state and leaves it as it was.
            Item::Include(included) => apply_items(included, alias, active, layer),
        }
    }
}

/// A `Host` line: matches when any pattern matches and no negated one does.
fn host_matches(alias: &str, patterns: &[String]) -> bool {
    let alias = alias.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard_match(negated, &alias) => return false,
            Some(_) => {}
            None => matched |= wildcard_match(&pattern, &alias),
        }
    }
    matched
}

/// A comma-separated pattern list (known_hosts, `Match host`): true when a
/// pattern matches and no negated one does. `name` must be lower case.
pub fn pattern_list_matches(name: &str, list: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        let pattern = pattern.trim().to_ascii_lowercase();
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard_match(negated, name) => return false,
            Some(_) => {}
            None => matched |= wildcard_match(&pattern, name),
        }
    }
    matched
}

/// `*` matches any run of characters, `?` exactly one.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

fn home_dir() -> PathBuf {
    std::env::home_dir().unwrap_or_else(|| PathBuf::from("/"))
}

fn expand_tilde(path: &str) -> PathBuf {
    if path == "~" {
        home_dir()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home_dir().join(rest)
    } else {
        PathBuf::from(path)
    }
}

/// The local user's name: `$USER`, else the password database.
pub fn local_user() -> String {
    if let Some(user) = std::env::var_os("USER").filter(|u| !u.is_empty()) {
        return user.to_string_lossy().into_owned();
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| "root".to_string())
}

/// Expands ssh_config `%x` tokens; unknown ones are kept as written.
fn expand_percent(text: &str, tokens: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(token) => match tokens.iter().find(|(t, _)| *t == token) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push('%');
                    out.push(token);
                }
            },
            None => out.push('%'),
        }
    }
    out
}
