//! Deploy stages (`[deploy.<stage>]`, an ecosystem's `deploy`): PM2's keys plus fleet's
//! release settings, validated into `DeployStage`. Running a deploy is left to the CLI's
//! deploy code; this module only says what a stage asks for.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::reader::{self, Ctx, Field, MapReader};
use crate::tree::{Located, Node};

/// Releases kept on each host after a deploy (fleet's own; PM2 keeps one checkout).
pub const DEFAULT_KEEP_RELEASES: u32 = 5;
/// How long a host's deploy lock outlives its deployer's last heartbeat (30 s).
pub const DEFAULT_LOCK_TTL_MS: u64 = 30_000;

/// One deploy stage: where to deploy, what, and how carefully.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployStage {
    /// SSH user; `None` lets ssh decide (its config, then the local user).
    pub user: Option<String>,
    /// One or more hosts; never empty.
    pub host: Vec<String>,
    pub port: Option<u16>,
    /// Identity file on this machine, `~` expanded and made absolute.
    pub key: Option<String>,
    /// Each becomes `-o <option>`.
    pub ssh_options: Vec<String>,
    /// Git URL; required with the `clone` strategy.
    pub repo: Option<String>,
    /// PM2's `ref` (`origin/main`); `None` deploys the local `HEAD` (archive) or the
    /// remote default branch (clone).
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The app's directory on each host (absolute, or `~/...` on the remote side).
    pub path: String,
    /// Exported before `post_deploy`, and the lowest-priority app env for `--env <stage>`.
    pub env: BTreeMap<String, String>,
    pub pre_setup: Option<String>,
    pub post_setup: Option<String>,
    /// Runs on this machine before anything is sent.
    pub pre_deploy_local: Option<String>,
    pub pre_deploy: Option<String>,
    pub post_deploy: Option<String>,
    /// PM2's `fetch: "fast"` (shallow clone and fetch).
    pub fetch: Option<String>,
    /// ssh `-A`.
    pub forward_agent: bool,
    /// ssh `-t`.
    pub needs_tty: bool,
    pub keep_releases: u32,
    /// A deploy renews its lock on each host every few seconds; a lock not renewed for
    /// this long (the deployer died or lost the host) is released by the host itself.
    #[serde(default = "default_lock_ttl")]
    pub lock_ttl_ms: u64,
    /// Directories under `shared/` linked into every release (`logs`, `node_modules`).
    pub shared_dirs: Vec<String>,
    pub shared_files: Vec<String>,
    /// ssh `-J`.
    pub proxy_jump: Option<String>,
    /// `FLEET_HOME` of the agent on the hosts (absolute); `None` means the SSH user's
    /// `$FLEET_HOME`, else `~/.fleet`, asked from the host.
    #[serde(default)]
    pub fleet_home: Option<String>,
    pub strategy: DeployStrategy,
    /// Hosts deployed at once.
    pub batch: Batch,
    /// Deploy the first host alone and stop if it fails.
    pub canary: bool,
    /// Host failures tolerated before the deploy stops and rolls back.
    pub max_fail: u32,
    /// Per-host settings that differ from the stage's, keyed by an entry of `host`.
    pub hosts: BTreeMap<String, HostOverride>,
}

/// Settings for one host that override the stage's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostOverride {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key: Option<String>,
    pub path: Option<String>,
}

/// How a release reaches a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployStrategy {
    /// `git archive` of `ref` made here and uploaded: hosts need no repository access.
    #[default]
    Archive,
    /// Each host keeps a mirror of `repo` and exports the commit into the release.
    Clone,
    /// Each host clones `repo` and the release is a git checkout (the branch checked
    /// out, `origin` the repository), as PM2's deploy leaves its `source/`: hooks can
    /// run `git pull`, `git reset --hard` or `git submodule update`. The default for a
    /// PM2 ecosystem file's deploy section.
    Checkout,
}

/// The commands a PM2 deploy hook runs to (re)start its apps.
const PM2_START_COMMANDS: &[&str] = &[
    "start",
    "startOrRestart",
    "startOrReload",
    "startOrGracefulReload",
    "reload",
    "gracefulReload",
    "restart",
];

impl DeployStage {
    /// Whether `post_deploy` (re)starts the apps itself with `pm2` (PM2's own
    /// `npm install && pm2 reload ecosystem.config.js --env production`): then fleet
    /// leaves that to the hook, which runs after the build it needs.
    pub fn post_deploy_starts_apps(&self) -> bool {
        self.post_deploy.as_deref().is_some_and(runs_pm2_start)
    }

    /// Whether any hook that runs on the hosts calls `pm2`: `setup` then installs
    /// fleet's `pm2` there.
    pub fn hooks_call_pm2(&self) -> bool {
        [
            &self.pre_setup,
            &self.post_setup,
            &self.pre_deploy,
            &self.post_deploy,
        ]
        .into_iter()
        .flatten()
        .any(|hook| pm2_commands(hook).next().is_some())
    }
}

/// Whether a shell command line runs `pm2 <start command>` in any of its parts.
pub fn runs_pm2_start(line: &str) -> bool {
    pm2_commands(line).any(|command| PM2_START_COMMANDS.contains(&command))
}

/// The `pm2` subcommands a shell command line runs (`pm2 reload x && pm2 save` runs
/// `reload` and `save`); `""` for a bare `pm2`.
fn pm2_commands(line: &str) -> impl Iterator<Item = &str> {
    line.split(['&', '|', ';', '\n', '(', ')'])
        .filter_map(|part| {
            let words: Vec<&str> = part.split_whitespace().collect();
            // The command word, after `VAR=x` assignments and wrappers (`sudo`, `npx`).
            let assignment = |w: &str| w.contains('=') && !w.starts_with('-');
            let wrapper =
                |w: &str| matches!(w, "sudo" | "env" | "npx" | "exec" | "command" | "nohup");
            let at = words.iter().position(|w| !assignment(w) && !wrapper(w))?;
            if words[at] != "pm2" && !words[at].ends_with("/pm2") {
                return None;
            }
            let command = words[at + 1..].iter().find(|w| !w.starts_with('-'));
            Some(command.copied().unwrap_or(""))
        })
}

/// Hosts deployed at once: a count or a percentage of the stage's hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batch {
    Count(u32),
    /// 1 to 100.
    Percent(u8),
}

impl Default for Batch {
    /// One host at a time, as PM2 deploys (strictly sequential).
    fn default() -> Batch {
        Batch::Count(1)
    }
}

impl Batch {
    /// Hosts per batch for a stage of `hosts` hosts; at least 1.
    pub fn size(self, hosts: usize) -> usize {
        let size = match self {
            Batch::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Batch::Percent(p) => (hosts * usize::from(p)).div_ceil(100),
        };
        size.clamp(1, hosts.max(1))
    }
}

/// Where and as whom to reach one host, overrides applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployTarget {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key: Option<String>,
    pub path: String,
}

impl DeployStage {
    /// Every host with its effective user, port, key and path, in `host` order.
    pub fn targets(&self) -> Vec<DeployTarget> {
        self.host
            .iter()
            .map(|host| {
                let over = self.hosts.get(host).cloned().unwrap_or_default();
                DeployTarget {
                    host: host.clone(),
                    user: over.user.or_else(|| self.user.clone()),
                    port: over.port.or(self.port),
                    key: over.key.or_else(|| self.key.clone()),
                    path: over.path.unwrap_or_else(|| self.path.clone()),
                }
            })
            .collect()
    }
}

/// Reads the whole `deploy` section.
pub(crate) fn read_deploy(
    ctx: &mut Ctx<'_>,
    field: &Field<'_>,
    base_dir: &Path,
    home: Option<&str>,
) -> BTreeMap<String, DeployStage> {
    let mut stages = BTreeMap::new();
    let Node::Map(entries) = &field.value.value else {
        ctx.wrong_type(field, "a map of deploy stages");
        return stages;
    };
    for (name, stage) in entries {
        let path = reader::join_key(&field.path, &name.value);
        if let Err(message) = crate::app::check_name(&name.value) {
            ctx.error(name.line, &path, format!("bad stage name: {message}"));
            continue;
        }
        if let Some(stage) = read_stage(ctx, &path, name.line, stage, base_dir, home) {
            stages.insert(name.value.clone(), stage);
        }
    }
    stages
}

fn read_stage(
    ctx: &mut Ctx<'_>,
    path: &str,
    line: Option<u32>,
    node: &Located<Node>,
    base_dir: &Path,
    home: Option<&str>,
) -> Option<DeployStage> {
    let Node::Map(entries) = &node.value else {
        let got = ctx.type_name(&node.value);
        let expected = if ctx.syntax == reader::Syntax::Toml {
            "a table"
        } else {
            "an object"
        };
        ctx.error(line, path, format!("expected {expected}, got {got}"));
        return None;
    };
    let errors_before = ctx.errors.len();
    let mut r = MapReader::new(path, entries);

    let user = r
        .take(ctx, &["user"])
        .and_then(|f| non_empty_string(ctx, &f));
    let host = read_host_list(ctx, &mut r, path, line, errors_before);
    let port = r
        .take(ctx, &["port"])
        .and_then(|f| reader::as_port(ctx, &f));
    let key = r
        .take(ctx, &["key"])
        .and_then(|f| non_empty_string(ctx, &f))
        .map(|key| local_path(&key, base_dir, home));
    let ssh_options = r
        .take(ctx, &["ssh_options"])
        .and_then(|f| reader::as_string_list(ctx, &f, false))
        .unwrap_or_default();
    let repo_field = r.take(ctx, &["repo"]);
    let repo = repo_field.as_ref().and_then(|f| read_repo(ctx, f));
    let git_ref = r
        .take(ctx, &["ref"])
        .and_then(|f| non_empty_string(ctx, &f));
    let remote_path = read_remote_path(ctx, &mut r, path, line);
    let env = r
        .take(ctx, &["env"])
        .and_then(|f| reader::as_env(ctx, &f))
        .unwrap_or_default();
    let pre_setup = string(ctx, &mut r, "pre_setup");
    let post_setup = string(ctx, &mut r, "post_setup");
    let pre_deploy_local = string(ctx, &mut r, "pre_deploy_local");
    let pre_deploy = string(ctx, &mut r, "pre_deploy");
    let post_deploy = string(ctx, &mut r, "post_deploy");
    let fetch = string(ctx, &mut r, "fetch");
    let proxy_jump = string(ctx, &mut r, "proxy_jump");
    let fleet_home = read_fleet_home(ctx, &mut r);
    let forward_agent = bool_or(ctx, &mut r, "forward_agent", false);
    let needs_tty = bool_or(ctx, &mut r, "needs_tty", false);
    let canary = bool_or(ctx, &mut r, "canary", false);
    let keep_releases = read_keep_releases(ctx, &mut r);
    let lock_ttl_ms = read_lock_ttl(ctx, &mut r);
    let shared_dirs = shared_paths(ctx, &mut r, "shared_dirs");
    let shared_files = shared_paths(ctx, &mut r, "shared_files");
    // PM2's own deploy leaves a git checkout its hooks may rely on.
    let pm2_file = ctx.syntax != reader::Syntax::Toml && repo_field.is_some();
    let strategy = read_strategy(ctx, &mut r, pm2_file);
    if strategy != DeployStrategy::Archive && repo_field.is_none() {
        ctx.error_hint(
            line,
            path,
            "missing `repo`: the clone strategy needs a repository",
            "set `repo` to a git URL the hosts can reach, or use strategy \"archive\"",
        );
    }
    let batch = r
        .take(ctx, &["batch"])
        .and_then(|f| read_batch(ctx, &f))
        .unwrap_or_default();
    let max_fail = r
        .take(ctx, &["max_fail"])
        .and_then(|f| reader::as_u32(ctx, &f))
        .unwrap_or(0);
    let hosts = match r.take(ctx, &["hosts"]) {
        Some(f) => read_host_overrides(ctx, &f, &host, base_dir, home),
        None => BTreeMap::new(),
    };
    r.finish(ctx);

    if ctx.errors.len() > errors_before {
        return None;
    }
    Some(DeployStage {
        user,
        host,
        port,
        key,
        ssh_options,
        repo,
        git_ref,
        path: remote_path?,
        env,
        pre_setup,
        post_setup,
        pre_deploy_local,
        pre_deploy,
        post_deploy,
        fetch,
        forward_agent,
        needs_tty,
        keep_releases,
        lock_ttl_ms,
        shared_dirs,
        shared_files,
        proxy_jump,
        fleet_home,
        strategy,
        batch,
        canary,
        max_fail,
        hosts,
    })
}

/// `host`: one name or a list, none empty.
fn read_host_list(
    ctx: &mut Ctx<'_>,
    r: &mut MapReader<'_>,
    path: &str,
    line: Option<u32>,
    errors_before: usize,
) -> Vec<String> {
    match r.take(ctx, &["host"]) {
        Some(f) => {
            let hosts = reader::as_string_list(ctx, &f, false).unwrap_or_default();
            if hosts.is_empty() && ctx.errors.len() == errors_before {
                ctx.error(f.line, &f.path, "no hosts given");
            }
            if hosts.iter().any(|h| h.trim().is_empty()) {
                ctx.error(f.line, &f.path, "a host cannot be empty");
            }
            hosts
        }
        None => {
            ctx.error_hint(
                line,
                path,
                "missing `host`",
                "set `host` to a host name or a list of them",
            );
            Vec::new()
        }
    }
}

/// `path`: the app's directory on the hosts, absolute or under `~`.
fn read_remote_path(
    ctx: &mut Ctx<'_>,
    r: &mut MapReader<'_>,
    path: &str,
    line: Option<u32>,
) -> Option<String> {
    match r.take(ctx, &["path"]) {
        Some(f) => non_empty_string(ctx, &f).and_then(|p| {
            if p.starts_with('/') || p == "~" || p.starts_with("~/") {
                Some(p)
            } else {
                ctx.error_hint(
                    f.line,
                    &f.path,
                    format!("path must be absolute, got {p:?}"),
                    "it is a directory on the remote hosts, like \"/var/www/app\"",
                );
                None
            }
        }),
        None => {
            ctx.error_hint(
                line,
                path,
                "missing `path`",
                "set `path` to the app's directory on the hosts, like \"/var/www/app\"",
            );
            None
        }
    }
}

/// `fleet_home`: an absolute path on the hosts, safe to quote.
fn read_fleet_home(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>) -> Option<String> {
    r.take(ctx, &["fleet_home"]).and_then(|f| {
        let home = reader::as_string(ctx, &f)?;
        if home.starts_with('/') && !home.contains('\'') && !home.contains('\n') {
            Some(home)
        } else {
            ctx.error(
                f.line,
                &f.path,
                format!("{home:?} must be an absolute path on the hosts"),
            );
            None
        }
    })
}

/// `keep_releases`: at least 1 (the current release).
fn read_keep_releases(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>) -> u32 {
    r.take(ctx, &["keep_releases"])
        .and_then(|f| reader::as_ranged(ctx, &f, 1, i64::from(u32::MAX)))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(DEFAULT_KEEP_RELEASES)
}

/// `lock_ttl`: at least 2 s, since the lock is renewed every second.
fn read_lock_ttl(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>) -> u64 {
    r.take(ctx, &["lock_ttl"])
        .and_then(|f| {
            let ms = reader::as_duration_ms(ctx, &f)?;
            if ms < 2_000 {
                ctx.error(
                    f.line,
                    &f.path,
                    "must be at least 2s (the lock is renewed every second)",
                );
                return None;
            }
            Some(ms)
        })
        .unwrap_or(DEFAULT_LOCK_TTL_MS)
}

/// `repo`: it reaches git on the hosts, so never as an option, never with a line break.
fn read_repo(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<String> {
    let repo = non_empty_string(ctx, f)?;
    if repo.starts_with('-') || repo.chars().any(char::is_control) {
        ctx.error(f.line, &f.path, format!("{repo:?} is not a repository URL"));
        return None;
    }
    Some(repo)
}

/// `strategy`: "archive" (the default), "clone" or "checkout" (the default of a PM2
/// file's deploy section with a `repo`).
fn read_strategy(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>, pm2_file: bool) -> DeployStrategy {
    let default = if pm2_file {
        DeployStrategy::Checkout
    } else {
        DeployStrategy::Archive
    };
    match r.take(ctx, &["strategy"]) {
        Some(f) => match reader::as_string(ctx, &f).as_deref() {
            Some("archive") => DeployStrategy::Archive,
            Some("clone") => DeployStrategy::Clone,
            Some("checkout") => DeployStrategy::Checkout,
            Some(other) => {
                ctx.error(
                    f.line,
                    &f.path,
                    format!("expected \"archive\", \"clone\" or \"checkout\", got {other:?}"),
                );
                default
            }
            None => default,
        },
        None => default,
    }
}

fn default_lock_ttl() -> u64 {
    DEFAULT_LOCK_TTL_MS
}

fn string(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>, name: &'static str) -> Option<String> {
    r.take(ctx, &[name])
        .and_then(|f| reader::as_string(ctx, &f))
}

fn bool_or(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>, name: &'static str, default: bool) -> bool {
    r.take(ctx, &[name])
        .and_then(|f| reader::as_bool(ctx, &f))
        .unwrap_or(default)
}

fn non_empty_string(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<String> {
    let value = reader::as_string(ctx, field)?;
    if value.trim().is_empty() {
        ctx.error(field.line, &field.path, "must not be empty");
        return None;
    }
    Some(value)
}

/// Shared paths live under the release; an absolute path or `..` would escape it.
fn shared_paths(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>, name: &'static str) -> Vec<String> {
    let Some(f) = r.take(ctx, &[name]) else {
        return Vec::new();
    };
    let paths = reader::as_string_list(ctx, &f, false).unwrap_or_default();
    for p in &paths {
        if p.is_empty() || p.starts_with('/') || p.split('/').any(|part| part == "..") {
            ctx.error_hint(
                f.line,
                &f.path,
                format!("{p:?} is not a path inside the release"),
                "write a relative path such as \"logs\" or \"config/.env\"",
            );
        }
    }
    paths
}

/// `2` or `"2"` is a count, `"25%"` a percentage.
fn read_batch(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<Batch> {
    const EXPECTED: &str = "expected a number of hosts or a percentage like \"25%\"";
    let text = match &field.value.value {
        Node::Int(_) | Node::Float(_) => reader::scalar_text(&field.value.value),
        Node::Str(s) => s.trim().to_string(),
        other => {
            let got = ctx.type_name(other);
            ctx.error(field.line, &field.path, format!("{EXPECTED}, got {got}"));
            return None;
        }
    };
    let batch = match text.strip_suffix('%') {
        Some(percent) => percent
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=100).contains(p))
            .map(Batch::Percent),
        None => text
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .map(Batch::Count),
    };
    if batch.is_none() {
        ctx.error(
            field.line,
            &field.path,
            format!("{EXPECTED} (1% to 100%), got {text:?}"),
        );
    }
    batch
}

fn read_host_overrides(
    ctx: &mut Ctx<'_>,
    field: &Field<'_>,
    hosts: &[String],
    base_dir: &Path,
    home: Option<&str>,
) -> BTreeMap<String, HostOverride> {
    let mut overrides = BTreeMap::new();
    let Node::Map(entries) = &field.value.value else {
        ctx.wrong_type(field, "a map from host to its settings");
        return overrides;
    };
    for (host, node) in entries {
        let path = reader::join_key(&field.path, &host.value);
        if !hosts.contains(&host.value) {
            ctx.error_hint(
                host.line,
                &path,
                format!("{:?} is not one of this stage's hosts", host.value),
                "add it to `host`, or fix the spelling",
            );
            continue;
        }
        let Node::Map(settings) = &node.value else {
            let got = ctx.type_name(&node.value);
            ctx.error(
                node.line,
                &path,
                format!("expected user, port, key or path settings, got {got}"),
            );
            continue;
        };
        let mut r = MapReader::new(&path, settings);
        let over = HostOverride {
            user: r
                .take(ctx, &["user"])
                .and_then(|f| non_empty_string(ctx, &f)),
            port: r
                .take(ctx, &["port"])
                .and_then(|f| reader::as_port(ctx, &f)),
            key: r
                .take(ctx, &["key"])
                .and_then(|f| non_empty_string(ctx, &f))
                .map(|key| local_path(&key, base_dir, home)),
            path: r
                .take(ctx, &["path"])
                .and_then(|f| non_empty_string(ctx, &f)),
        };
        r.finish(ctx);
        overrides.insert(host.value.clone(), over);
    }
    overrides
}

/// A path on this machine: `~` expanded (as PM2 does for `key`), relative to the config file.
fn local_path(path: &str, base_dir: &Path, home: Option<&str>) -> String {
    let expanded = match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ if path == "~" && home.is_some() => home.map(Into::into).unwrap_or_default(),
        _ => base_dir.join(path),
    };
    expanded.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes() {
        assert_eq!(Batch::Count(2).size(5), 2);
        assert_eq!(Batch::Count(10).size(3), 3);
        assert_eq!(Batch::Percent(25).size(10), 3);
        assert_eq!(Batch::Percent(1).size(3), 1);
        assert_eq!(Batch::Percent(100).size(4), 4);
        assert_eq!(Batch::default().size(0), 1);
    }

    #[test]
    fn local_paths() {
        let base = Path::new("/proj");
        assert_eq!(
            local_path("~/.ssh/id", base, Some("/home/me")),
            "/home/me/.ssh/id"
        );
        assert_eq!(
            local_path("keys/deploy", base, Some("/home/me")),
            "/proj/keys/deploy"
        );
        assert_eq!(local_path("/etc/key", base, None), "/etc/key");
    }
}
