//! Snippets that install, start and join the host's agent (and the `fleet` CLI that
//! hooks reach as `pm2`) for `fleet deploy <stage> setup`.

use std::fmt::Write as _;

use crate::ssh::quote;

/// Where the agent binary goes and whether the one there already matches: prints the
/// installed binary's sha256 (empty when absent), the CLI's and whether `pm2` links to
/// it, whether systemd runs, and the agent running from `home` if any.
pub fn agent_probe(home: &str) -> String {
    format!(
        r#"set -eu
H={home}
B="$H/bin/fleet-agent"
echo "fleet:sha256=$( (sha256sum "$B" 2>/dev/null || true) | cut -d' ' -f1)"
echo "fleet:cli_sha256=$( (sha256sum "$H/bin/fleet" 2>/dev/null || true) | cut -d' ' -f1)"
if [ -L "$H/bin/pm2" ]; then echo fleet:pm2=yes; fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then echo fleet:systemd=yes; else echo fleet:systemd=no; fi
pid=$(cat "$H/agent.pid" 2>/dev/null | tr -dc 0-9 || true)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "fleet:running=$pid $(readlink /proc/$pid/exe 2>/dev/null || true)"; fi
echo "fleet:uid=$(id -u)"
true
"#,
        home = quote(home)
    )
}

/// Installs the agent binary from stdin (written aside, then renamed into place).
pub fn agent_install(home: &str) -> String {
    binary_install(home, "fleet-agent")
}

/// Installs the `fleet` CLI from stdin, and `pm2` as a link to it (PM2's command
/// lines in deploy hooks run fleet's; hooks find it first on PATH).
pub fn cli_install(home: &str) -> String {
    let mut s = binary_install(home, "fleet");
    s.push_str("ln -sfn fleet \"$H/bin/pm2\"\n");
    s
}

fn binary_install(home: &str, name: &str) -> String {
    format!(
        "set -eu\nH={}\nmkdir -p \"$H/bin\"\nchmod 700 \"$H\"\ncat > \"$H/bin/.{name}.new\"\nchmod 755 \"$H/bin/.{name}.new\"\nmv -f \"$H/bin/.{name}.new\" \"$H/bin/{name}\"\n",
        quote(home)
    )
}

/// What keeps the agent running on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Supervision {
    /// A system unit (root on a host where systemd runs).
    SystemdSystem,
    /// A user unit (another user on a host where systemd runs).
    SystemdUser,
    /// A detached daemon (no systemd).
    Daemon,
}

/// Starts the agent: a systemd unit where systemd runs (a system unit for root, a user
/// unit otherwise; the text is `unit::AgentUnit`'s, as `fleet startup` writes it), else
/// a detached daemon; waits for its socket. Fails when the home cannot go in a unit.
pub fn agent_start(home: &str, supervision: Supervision) -> Result<String, String> {
    let mut s = format!("set -eu\nH={}\nB=\"$H/bin/fleet-agent\"\n", quote(home));
    if supervision != Supervision::Daemon {
        let root = supervision == Supervision::SystemdSystem;
        let (dir, ctl) = if root {
            ("/etc/systemd/system", "systemctl")
        } else {
            ("$HOME/.config/systemd/user", "systemctl --user")
        };
        let agent = std::path::Path::new(home).join("bin/fleet-agent");
        let unit = crate::unit::AgentUnit {
            scope: if root {
                crate::unit::Scope::System
            } else {
                crate::unit::Scope::User
            },
            agent: &agent,
            home: std::path::Path::new(home),
            user: None,
        };
        let text = unit.render()?;
        // A quoted delimiter: the text goes in as written, no shell expansion.
        let _ = write!(
            s,
            "U=\"{dir}/{name}\"\nmkdir -p \"$(dirname \"$U\")\"\ncat > \"$U.new\" <<'FLEET_UNIT'\n{text}FLEET_UNIT\nmv -f \"$U.new\" \"$U\"\n{ctl} daemon-reload\n{ctl} enable --now {name} >/dev/null 2>&1\n",
            name = unit.file_name(),
        );
    } else {
        s.push_str(
            "FLEET_HOME=\"$H\" setsid \"$B\" --home \"$H\" --daemon </dev/null >>\"$H/agent.out\" 2>&1 &\n",
        );
    }
    s.push_str(
        "i=0\nwhile [ ! -S \"$H/agent.sock\" ]; do i=$((i+1)); if [ $i -gt 100 ]; then echo \"the agent did not open $H/agent.sock within 10s (see $H/agent.log)\" >&2; exit 1; fi; sleep 0.1; done\n",
    );
    Ok(s)
}

/// The controller URL the host's agent joined, if any.
pub fn agent_controller_url(home: &str) -> String {
    format!("cat {}/controller/url 2>/dev/null || true", quote(home))
}

/// Writes the controller's CA for the agent's `join`, then joins. The token goes in
/// the agent's environment, set by the shell reading this script from stdin: never in
/// an argv on the host.
pub fn agent_join(home: &str, url: &str, token: &str, host: &str, ca_pem: &str) -> String {
    format!(
        "set -eu\nH={home}\nprintf '%s' {ca} > \"$H/controller-ca.pem\"\nchmod 600 \"$H/controller-ca.pem\"\nFLEET_JOIN_TOKEN={token} \"$H/bin/fleet-agent\" --home \"$H\" join {url} --host {host} --ca \"$H/controller-ca.pem\" >/dev/null\n",
        home = quote(home),
        ca = quote(ca_pem),
        url = quote(url),
        token = quote(token),
        host = quote(host),
    )
}
