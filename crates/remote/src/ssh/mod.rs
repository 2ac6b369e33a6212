//! fleet's SSH transport, for stages without a controller (issue 5): reaches each
//! host's agent through a direct-streamlocal channel to `<fleet_home>/agent.sock`
//! (nothing needs to be open but sshd) and runs remote commands, over one reused
//! connection per host, with a cap on concurrent handshakes. Host keys are checked
//! strictly against known_hosts by default. What to run on the hosts is the caller's
//! to decide (`stage`, `deploy`).
//!
//! The agent never opens an SSH connection; only the CLI (and later the controller)
//! does.

mod auth;
mod connect;
pub mod keys;
mod known_hosts;
mod options;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint, Uri};

use connect::{Connection, HandshakeGauge};
use options::{Layer, Role, SshConfig};

/// Handshakes in flight at once: Kamal's cap on concurrent SSH starts (PR #399,
/// after connection storms above ~15 hosts in #326). Each host is one connection,
/// so a single sshd never sees more than one of them (its MaxStartups is 10:30:100).
pub const DEFAULT_MAX_HANDSHAKES: usize = 30;
/// Ansible's ConnectTimeout (10 s); applies to each of TCP connect, handshake and
/// authentication.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to ask a host for its FLEET_HOME.
const FLEET_HOME_QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Extra seconds the remote `timeout` gives a command beyond the caller's timeout,
/// so the caller's own timeout fires first and reports it.
const REMOTE_TIMEOUT_GRACE_SECS: u64 = 1;
/// Seconds between the remote `timeout`'s SIGTERM and its SIGKILL.
const REMOTE_KILL_AFTER_SECS: u64 = 5;
/// How long `Pool::close` waits for the sessions to end (a disconnect is one packet).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const CLOSE_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Jump hosts followed from one target (ProxyJump chains and configs that loop).
const MAX_JUMP_DEPTH: usize = 8;

/// What the operator chose for this run: `--accept-new-host-keys`,
/// `--accept-changed-host-key HOST` (repeatable), and whether warnings are printed
/// as they happen (the CLI) or only collected.
#[derive(Clone, Debug, Default)]
pub struct SshChoices {
    pub accept_new_host_keys: bool,
    pub accept_changed_host_keys: Vec<String>,
    pub print_warnings: bool,
    /// A known_hosts file and an ssh_config file that replace the user's (a controller
    /// running a deploy uses its own, never the account's `~/.ssh`).
    pub known_hosts: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
}

/// A stage's SSH settings (`DeployStage`'s keys plus the CLI's flags).
#[derive(Clone, Debug)]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key: Option<PathBuf>,
    /// Per-host `key` overrides (`DeployStage.hosts`), keyed by the host exactly as
    /// passed to `Pool`; they replace `key` for that host.
    pub host_keys: HashMap<String, PathBuf>,
    /// PM2 style `"StrictHostKeyChecking=no"`. Supported: StrictHostKeyChecking
    /// (`yes`, `accept-new`, `no`), UserKnownHostsFile, GlobalKnownHostsFile,
    /// ConnectTimeout, ServerAliveInterval, ServerAliveCountMax, IdentityFile,
    /// IdentitiesOnly, Port, User, HostName, ProxyJump. Others are ignored with a
    /// warning (`Pool::warnings`).
    pub ssh_options: Vec<String>,
    /// `[user@]host[:port]`, or several, comma-separated.
    pub proxy_jump: Option<String>,
    /// Default: UserKnownHostsFile, else `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Default: `~/.ssh/config` when it exists.
    pub ssh_config: Option<PathBuf>,
    /// `--accept-new-host-keys`: learn unknown keys, still refuse changed ones.
    pub accept_new_host_keys: bool,
    /// `--accept-changed-host-key HOST`: these hosts (as named in the stage, or their
    /// HostName) may offer a key other than the one known, for this run. Without it a
    /// changed key is always refused, `StrictHostKeyChecking=no` or not.
    pub accept_changed_host_keys: Vec<String>,
    /// Print each warning on stderr when it happens (the CLI), besides keeping it for
    /// `Pool::take_warnings`.
    pub print_warnings: bool,
    pub connect_timeout: Duration,
}

impl Default for SshSettings {
    fn default() -> SshSettings {
        SshSettings {
            user: None,
            port: None,
            key: None,
            host_keys: HashMap::new(),
            ssh_options: Vec::new(),
            proxy_jump: None,
            known_hosts: None,
            ssh_config: None,
            accept_new_host_keys: false,
            accept_changed_host_keys: Vec::new(),
            print_warnings: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// What a remote command did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `None` when the command died of a signal or the server did not say.
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    /// Output beyond 16 MiB per stream was dropped.
    pub truncated: bool,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }
}

/// Why talking to a host over SSH failed. `host` is the host as the caller named it
/// (or `jump host NAME`). Messages never contain key material.
#[derive(Clone, Debug)]
pub enum SshError {
    /// The host's settings cannot work (bad destination, ProxyJump loop).
    Config {
        host: String,
        message: String,
    },
    Connect {
        host: String,
        source: String,
    },
    UnknownHostKey {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    ChangedHostKey {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    RevokedHostKey {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    Auth {
        host: String,
        user: String,
        tried: Vec<String>,
    },
    Channel {
        host: String,
        message: String,
    },
    Timeout {
        host: String,
        step: &'static str,
        after: Duration,
    },
}

impl SshError {
    /// The host the error is about.
    pub fn host(&self) -> &str {
        match self {
            SshError::Config { host, .. }
            | SshError::Connect { host, .. }
            | SshError::UnknownHostKey { host, .. }
            | SshError::ChangedHostKey { host, .. }
            | SshError::RevokedHostKey { host, .. }
            | SshError::Auth { host, .. }
            | SshError::Channel { host, .. }
            | SshError::Timeout { host, .. } => host,
        }
    }
}

impl fmt::Display for SshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshError::Config { host, message } => write!(f, "{host}: {message}"),
            SshError::Connect { host, source } => write!(f, "cannot connect to {host}: {source}"),
            SshError::UnknownHostKey {
                host,
                fingerprint,
                known_hosts,
            } => write!(
                f,
                "{host} has an unknown host key: {fingerprint}\nhint: verify the fingerprint, then run with --accept-new-host-keys or add it to {} with ssh-keyscan",
                known_hosts.display()
            ),
            SshError::ChangedHostKey {
                host,
                fingerprint,
                known_hosts,
                line,
            } => write!(
                f,
                "the host key of {host} has changed: it offers {fingerprint}, {}:{line} holds another\nhint: someone may be intercepting the connection; if the host was reinstalled, verify the new fingerprint, then delete that line or pass `--accept-changed-host-key {host}` for one run",
                known_hosts.display()
            ),
            SshError::RevokedHostKey {
                host,
                fingerprint,
                known_hosts,
                line,
            } => write!(
                f,
                "{host} offers a revoked host key: {fingerprint} (@revoked at {}:{line})",
                known_hosts.display()
            ),
            SshError::Auth { host, user, tried } => {
                write!(f, "authentication as {user} on {host} failed")?;
                if tried.is_empty() {
                    write!(f, ": no key to try")?;
                } else {
                    write!(f, " (tried {})", tried.join(", "))?;
                }
                write!(
                    f,
                    "\nhint: authorize your public key on the host, set `key` in the deploy stage, or add the key to ssh-agent"
                )
            }
            SshError::Channel { host, message } => write!(f, "{host}: {message}"),
            SshError::Timeout { host, step, after } => {
                write!(f, "{host}: {step} timed out after {}s", after.as_secs_f32())?;
                if matches!(*step, "connect" | "ssh handshake" | "authentication") {
                    write!(
                        f,
                        "\nhint: check the host is up; raise ConnectTimeout in ssh_options for slow links"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SshError {}

/// Quotes one argument for a POSIX shell: `it's` becomes `'it'\''s'`.
pub fn quote(argument: &str) -> String {
    format!("'{}'", argument.replace('\'', r"'\''"))
}

/// The one constructor of what fleet runs on a host: the command line that runs a sh
/// snippet of `script_len` bytes read from stdin, under `timeout` (closing an SSH
/// channel does not stop a command without a PTY, and sshd refuses the `signal`
/// request for root logins). The snippet itself travels on the channel's stdin, never
/// on a command line, where `ps` would show it (secrets included) to every user of the
/// host; what follows it on stdin is the snippet's own input. `dd bs=1` reads exactly
/// the snippet, no byte of that input. Needs coreutils' or busybox's `timeout` and `dd`.
pub fn remote_command(script_len: usize, timeout: Duration) -> String {
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    format!(
        "exec timeout -k {REMOTE_KILL_AFTER_SECS} {} sh -c 'S=$(dd bs=1 count={script_len} 2>/dev/null) && eval \"$S\"'",
        seconds.max(1) + REMOTE_TIMEOUT_GRACE_SECS,
    )
}

/// What goes on the channel's stdin for `remote_command`: the snippet, then its input.
pub fn remote_stdin(script: &str, input: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(script.len() + input.len());
    bytes.extend_from_slice(script.as_bytes());
    bytes.extend_from_slice(input);
    bytes
}

type SharedResult<T> = Shared<BoxFuture<'static, Result<T, SshError>>>;

/// Values made once per key by whoever asks first; concurrent askers share the
/// attempt, and a failed one is forgotten so the next call tries again. The map's
/// lock is never held across an await.
struct Slots<T: Clone> {
    slots: Mutex<HashMap<String, (u64, SharedResult<T>)>>,
    next_id: AtomicU64,
}

impl<T: Clone + Send + Sync + 'static> Slots<T> {
    fn new() -> Slots<T> {
        Slots {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    async fn get_or_make<F>(
        &self,
        key: &str,
        usable: impl Fn(&T) -> bool,
        make: F,
    ) -> Result<T, SshError>
    where
        F: FnOnce() -> BoxFuture<'static, Result<T, SshError>>,
    {
        let (id, future) = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let reuse = match slots.get(key) {
                Some((id, future)) => match future.peek() {
                    None => Some((*id, future.clone())),
                    Some(Ok(value)) if usable(value) => return Ok(value.clone()),
                    Some(_) => None,
                },
                None => None,
            };
            match reuse {
                Some(found) => found,
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let future = make().shared();
                    slots.insert(key.to_string(), (id, future.clone()));
                    (id, future)
                }
            }
        };
        let result = future.await;
        if result.is_err() {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.get(key).is_some_and(|(current, _)| *current == id) {
                slots.remove(key);
            }
        }
        result
    }

    fn ready(&self) -> Vec<T> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter_map(|(_, future)| future.peek().and_then(|r| r.as_ref().ok()).cloned())
            .collect()
    }
}

/// SSH connections to a stage's hosts: one per host, reused by every call, and
/// handshakes capped. Connections (and jump hosts' connections) live as long as the
/// pool or a channel made from it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SshSettings,
    options: Layer,
    config: SshConfig,
    handshakes: HandshakeLimit,
    connections: Slots<Arc<Connection>>,
    fleet_homes: Slots<String>,
    agents: Slots<Channel>,
    /// Problems met on the way (ignored options, accepted changed keys).
    warnings: Arc<Warnings>,
}

/// Problems met on the way, each kept once; printed on stderr as they happen when
/// the settings ask (`SshSettings::print_warnings`).
#[derive(Debug, Default)]
pub struct Warnings {
    list: Mutex<Vec<String>>,
    print: bool,
}

impl Warnings {
    pub fn push(&self, warning: String) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if list.contains(&warning) {
            return;
        }
        if self.print {
            eprintln!("warning: {}", crate::ssh::printable(&warning));
        }
        list.push(warning);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.list.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// `text` with control characters shown escaped: a host name or config line must not
/// move the operator's cursor or recolour the terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().collect::<Vec<char>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A cap on SSH handshakes in flight, shared by every pool made with it (a stage's
/// hosts may need several pools: one per user, port and key).
#[derive(Clone)]
pub struct HandshakeLimit(Arc<(Semaphore, HandshakeGauge)>);

impl HandshakeLimit {
    pub fn new(max_handshakes: usize) -> HandshakeLimit {
        HandshakeLimit(Arc::new((
            Semaphore::new(max_handshakes.max(1)),
            HandshakeGauge::default(),
        )))
    }
}

impl Pool {
    /// A pool with a handshake cap of its own.
    pub fn new(settings: SshSettings, max_handshakes: usize) -> Pool {
        Pool::with_limit(settings, HandshakeLimit::new(max_handshakes))
    }

    /// A pool whose handshakes count against `limit`.
    pub fn with_limit(settings: SshSettings, limit: HandshakeLimit) -> Pool {
        let mut parsed = Vec::new();
        let warnings = &mut parsed;
        let options = options::parse_ssh_options(&settings.ssh_options, warnings);
        let config_path = settings
            .ssh_config
            .clone()
            .or_else(|| std::env::home_dir().map(|home| home.join(".ssh/config")));
        let config = match config_path {
            Some(path) => SshConfig::load(&path, warnings),
            None => SshConfig::default(),
        };
        let warnings = Warnings {
            list: Mutex::new(Vec::new()),
            print: settings.print_warnings,
        };
        for warning in parsed {
            warnings.push(warning);
        }
        Pool {
            inner: Arc::new(Inner {
                settings,
                options,
                config,
                handshakes: limit,
                connections: Slots::new(),
                fleet_homes: Slots::new(),
                agents: Slots::new(),
                warnings: Arc::new(warnings),
            }),
        }
    }

    /// Warnings to show the user once: ignored ssh options, config lines fleet
    /// cannot use, host keys accepted because `StrictHostKeyChecking=no`.
    pub fn take_warnings(&self) -> Vec<String> {
        self.inner.warnings.take()
    }

    /// Connects (or reuses the connection) to `host` and returns a tonic Channel
    /// whose transport is a direct-streamlocal channel to `<fleet_home>/agent.sock`
    /// on that host. `host` is `[user@]name[:port]`, `name` possibly an ssh_config
    /// alias. `fleet_home`: absolute; if None, the host is asked once for
    /// `${FLEET_HOME:-$HOME/.fleet}` (in a non-login shell: set in sshd's
    /// environment or `~/.ssh/environment`, not `.profile`).
    pub async fn agent_channel(
        &self,
        host: &str,
        fleet_home: Option<&str>,
    ) -> Result<Channel, SshError> {
        let (route, connection) = self.inner.connection(host, Role::Target, 0).await?;
        let home = match fleet_home {
            Some(home) => home.to_string(),
            None => self.inner.fleet_home(&route, &connection).await?,
        };
        if !home.starts_with('/') {
            return Err(SshError::Config {
                host: host.to_string(),
                message: format!("fleet_home `{home}` is not an absolute path"),
            });
        }
        let socket = format!("{}/agent.sock", home.trim_end_matches('/'));
        let weak = Arc::downgrade(&self.inner);
        let host = host.to_string();
        let key = format!("{route}\n{socket}");
        self.inner
            .agents
            .get_or_make(
                &key,
                |_| true,
                move || agent_channel(weak, host, socket, connection).boxed(),
            )
            .await
    }

    /// Connects to `host` (host key checked, authenticated) unless connected already;
    /// later calls reuse the connection.
    pub async fn connect(&self, host: &str) -> Result<(), SshError> {
        self.inner
            .connection(host, Role::Target, 0)
            .await
            .map(|_| ())
    }

    /// The host's `${FLEET_HOME:-$HOME/.fleet}`, asked once per connection.
    pub async fn fleet_home(&self, host: &str) -> Result<String, SshError> {
        let (route, connection) = self.inner.connection(host, Role::Target, 0).await?;
        self.inner.fleet_home(&route, &connection).await
    }

    /// Runs `command` (a sh snippet) on `host` under `timeout -k 5 <timeout+1>`;
    /// returns its output and exit status, or `Timeout` once `timeout` passes.
    pub async fn exec(
        &self,
        host: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        let (_, connection) = self.inner.connection(host, Role::Target, 0).await?;
        let stdin = remote_stdin(command, &[]);
        connection
            .exec_with_input(
                &remote_command(command.len(), timeout),
                Some(&stdin),
                timeout,
            )
            .await
    }

    /// `exec` with `input` as the command's stdin (an archive for `tar -x`).
    pub async fn exec_with_input(
        &self,
        host: &str,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        let (_, connection) = self.inner.connection(host, Role::Target, 0).await?;
        let stdin = remote_stdin(command, input);
        connection
            .exec_with_input(
                &remote_command(command.len(), timeout),
                Some(&stdin),
                timeout,
            )
            .await
    }

    /// Ends every connection politely and waits (briefly) until they are gone, so
    /// the hosts' sshd and agents see the end now rather than at a TCP timeout. The
    /// pool stays usable: later calls reconnect.
    pub async fn close(&self) {
        let connections = self.inner.connections.ready();
        for connection in &connections {
            let _ = connection
                .handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        while connections.iter().any(|c| !c.is_closed()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(CLOSE_POLL_INTERVAL).await;
        }
    }

    #[cfg(test)]
    fn peak_handshakes(&self) -> usize {
        self.inner.handshakes.0.1.peak.load(Ordering::SeqCst)
    }
}

impl Inner {
    /// The connection for `spec`, made (with its jump hosts) on first use and
    /// remade when it has died.
    fn connection<'a>(
        self: &'a Arc<Inner>,
        spec: &'a str,
        role: Role,
        depth: usize,
    ) -> BoxFuture<'a, Result<(String, Arc<Connection>), SshError>> {
        async move {
            let label = match role {
                Role::Target => spec.to_string(),
                Role::Jump { .. } => format!("jump host {spec}"),
            };
            if depth > MAX_JUMP_DEPTH {
                return Err(SshError::Config {
                    host: label,
                    message: "too many jump hosts (a ProxyJump loop?)".to_string(),
                });
            }
            let role_was_jump = matches!(role, Role::Jump { .. });
            let mut resolved =
                options::resolve(spec, role, &self.settings, &self.options, &self.config).map_err(
                    |message| SshError::Config {
                        host: label.clone(),
                        message,
                    },
                )?;
            // `Host *` with a ProxyJump also matches the jump host: it does not jump
            // through itself.
            if role_was_jump && resolved.jumps.last().map(String::as_str) == Some(spec) {
                resolved.jumps.pop();
            }
            // The jump host's connection first, without holding a handshake permit.
            let via = match resolved.jumps.split_last() {
                None => None,
                Some((last, before)) => {
                    let role = Role::Jump {
                        jumps: (!before.is_empty()).then(|| before.to_vec()),
                    };
                    Some(self.connection(last, role, depth + 1).await?)
                }
            };
            let route = resolved.route(via.as_ref().map(|(route, _)| route.as_str()));
            let inner = Arc::clone(self);
            let connection = self
                .connections
                .get_or_make(
                    &route,
                    |connection| !connection.is_closed(),
                    move || {
                        async move {
                            let via = via.map(|(_, connection)| connection);
                            let connection = connect::establish(
                                &resolved,
                                label,
                                via,
                                &inner.handshakes.0.0,
                                &inner.handshakes.0.1,
                                Arc::clone(&inner.warnings),
                            )
                            .await?;
                            Ok(Arc::new(connection))
                        }
                        .boxed()
                    },
                )
                .await?;
            Ok((route, connection))
        }
        .boxed()
    }

    /// The host's `${FLEET_HOME:-$HOME/.fleet}`, asked once per connection route.
    async fn fleet_home(
        &self,
        route: &str,
        connection: &Arc<Connection>,
    ) -> Result<String, SshError> {
        let connection = Arc::clone(connection);
        self.fleet_homes
            .get_or_make(
                route,
                |_| true,
                move || {
                    async move {
                        let script = r#"printf '%s' "${FLEET_HOME:-$HOME/.fleet}""#;
                        let command = remote_command(script.len(), FLEET_HOME_QUERY_TIMEOUT);
                        let stdin = remote_stdin(script, &[]);
                        let output = connection
                            .exec_with_input(&command, Some(&stdin), FLEET_HOME_QUERY_TIMEOUT)
                            .await?;
                        let home = String::from_utf8_lossy(&output.stdout).trim().to_string();
                        if !output.success() || home.is_empty() {
                            return Err(SshError::Channel {
                                host: connection.label.clone(),
                                message: format!(
                                    "cannot read FLEET_HOME on the host: {}\nhint: set fleet_home in the deploy stage",
                                    String::from_utf8_lossy(&output.stderr).trim()
                                ),
                            });
                        }
                        Ok(home)
                    }
                    .boxed()
                },
            )
            .await
    }
}

/// Builds a tonic channel over direct-streamlocal. The first stream is opened here,
/// so errors name the cause; tonic's reconnects open new ones through the pool
/// (reconnecting SSH if needed) while the pool lives.
async fn agent_channel(
    pool: Weak<Inner>,
    host: String,
    socket: String,
    connection: Arc<Connection>,
) -> Result<Channel, SshError> {
    let first = connection.open_socket(&socket).await?;
    let first = Arc::new(Mutex::new(Some(first)));
    let label = connection.label.clone();
    let reconnect = (host, socket.clone());
    let connector = tower::service_fn(move |_: Uri| {
        let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
        let pool = pool.clone();
        let (host, socket) = reconnect.clone();
        async move {
            let stream = match first {
                Some(stream) => stream,
                None => {
                    let pool = pool
                        .upgrade()
                        .ok_or_else(|| std::io::Error::other("the ssh pool is closed"))?;
                    let (_, connection) = pool
                        .connection(&host, Role::Target, 0)
                        .await
                        .map_err(std::io::Error::other)?;
                    connection
                        .open_socket(&socket)
                        .await
                        .map_err(std::io::Error::other)?
                }
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The URI is required by the API but unused: the connector opens the channel.
    let endpoint = Endpoint::try_from("http://agent.sock").map_err(|error| SshError::Channel {
        host: label.clone(),
        message: error.to_string(),
    })?;
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|error| SshError::Channel {
            host: label,
            message: format!("cannot talk to the agent at {socket}: {error}"),
        })
}
