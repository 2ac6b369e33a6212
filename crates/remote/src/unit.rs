//! The agent's systemd unit, written once here for `fleet startup` (this machine) and
//! `fleet deploy <stage> setup` (every host). Pure: the caller writes the file and
//! runs `systemctl`.
//!
//! `Type=notify`: the agent says `READY=1` once it serves and has brought back the
//! saved apps, pings `WATCHDOG=1` within `WatchdogSec`, and says `STOPPING=1` when it
//! stops. `KillMode=process`: stopping the unit signals the agent alone, which stops
//! its apps itself, each within its `kill_timeout`; an agent killed otherwise leaves
//! them running for the next (`Restart=always`) to adopt from the file descriptor
//! store (`FileDescriptorStoreMax=`; `FLEET_FDSTORE` tells the agent its size, as
//! systemd 254 and later do with `FDSTORE`). `--resurrect`: after a reboot the agent
//! starts what `fleet save` saved (PM2's `startup` + `save` contract).

use std::path::Path;

/// How long systemd waits for the agent to stop its apps before killing what is left
/// (the longest `kill_timeout` anyone sets is well under it).
const STOP_TIMEOUT_SECS: u32 = 120;
/// How many descriptors systemd keeps for the agent (its log pipes, sockets and Node
/// channels, a few per instance), so an agent killed with SIGKILL adopts its apps.
const FD_STORE_MAX: u32 = 16384;
/// The agent pings every half of it; a hung agent is restarted after this long.
const WATCHDOG_SECS: u32 = 30;

/// Whose service manager runs the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/etc/systemd/system`, started at boot.
    System,
    /// `~/.config/systemd/user`, started with the user's manager (at boot only with
    /// lingering enabled).
    User,
}

/// The agent a unit runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentUnit<'a> {
    pub scope: Scope,
    /// The `fleet-agent` binary (absolute).
    pub agent: &'a Path,
    /// Its `FLEET_HOME` (absolute).
    pub home: &'a Path,
    /// `User=` of a system unit; `None` or `root` runs it as root.
    pub user: Option<&'a str>,
}

impl AgentUnit<'_> {
    /// `fleet-agent.service`, or `fleet-agent-<user>.service` for another user's
    /// system unit, so several users' agents can each have one.
    pub fn file_name(&self) -> String {
        match (self.scope, self.user) {
            (Scope::System, Some(user)) if user != "root" => format!("fleet-agent-{user}.service"),
            _ => "fleet-agent.service".to_string(),
        }
    }

    /// The unit's text, or why these paths or this user cannot go in a unit file.
    pub fn render(&self) -> Result<String, String> {
        let agent = value(self.agent)?;
        let home = value(self.home)?;
        if !self.agent.is_absolute() || !self.home.is_absolute() {
            return Err("the agent's path and FLEET_HOME must be absolute".to_string());
        }
        let user = match (self.scope, self.user) {
            (Scope::System, Some(user)) if user != "root" => {
                if !user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                    || user.starts_with('-')
                {
                    return Err(format!("{user:?} is not a user name"));
                }
                format!("User={user}\n")
            }
            _ => String::new(),
        };
        let (after, wanted_by) = match self.scope {
            Scope::System => (
                "After=network-online.target\nWants=network-online.target\n",
                "multi-user.target",
            ),
            Scope::User => ("", "default.target"),
        };
        Ok(format!(
            "# Written by fleet (`fleet startup`, `fleet deploy <stage> setup`); `fleet unstartup` removes it.
[Unit]
Description=fleet agent for {home}
{after}
[Service]
Type=notify
NotifyAccess=main
{user}Environment=\"FLEET_HOME={home}\" \"FLEET_FDSTORE={FD_STORE_MAX}\"
ExecStart=\"{agent}\" --home \"{home}\" --daemon --resurrect
KillMode=process
FileDescriptorStoreMax={FD_STORE_MAX}
TimeoutStopSec={STOP_TIMEOUT_SECS}
WatchdogSec={WATCHDOG_SECS}
Restart=always
RestartSec=1
LimitNOFILE=65536

[Install]
WantedBy={wanted_by}
"
        ))
    }
}

/// A path as a unit file takes it inside double quotes: `%` doubled (systemd's
/// specifier escape); quotes, backslashes and control characters refused.
fn value(path: &Path) -> Result<String, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    if text
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(format!(
            "{text:?} cannot go in a unit file (quotes, backslashes, control characters)"
        ));
    }
    Ok(text.replace('%', "%%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_unit_for_another_user_names_the_user_and_its_home() {
        let unit = AgentUnit {
            scope: Scope::System,
            agent: Path::new("/usr/local/bin/fleet-agent"),
            home: Path::new("/home/deploy/.fleet 100%"),
            user: Some("deploy"),
        };
        let text = unit.render().unwrap();
        assert_eq!(unit.file_name(), "fleet-agent-deploy.service");
        for line in [
            "Type=notify",
            "User=deploy",
            "Environment=\"FLEET_HOME=/home/deploy/.fleet 100%%\" \"FLEET_FDSTORE=16384\"",
            "FileDescriptorStoreMax=16384",
            "Restart=always",
            "ExecStart=\"/usr/local/bin/fleet-agent\" --home \"/home/deploy/.fleet 100%%\" --daemon --resurrect",
            "KillMode=process",
            "WantedBy=multi-user.target",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn a_user_unit_has_no_user_line_and_starts_with_the_users_manager() {
        let unit = AgentUnit {
            scope: Scope::User,
            agent: Path::new("/opt/fleet/fleet-agent"),
            home: Path::new("/home/me/.fleet"),
            user: Some("me"),
        };
        let text = unit.render().unwrap();
        assert!(!text.contains("User="), "{text}");
        assert!(text.contains("WantedBy=default.target"), "{text}");
        assert_eq!(unit.file_name(), "fleet-agent.service");
    }

    #[test]
    fn what_a_unit_file_cannot_hold_is_refused() {
        let bad = |agent: &str, home: &str, user: Option<&str>| {
            AgentUnit {
                scope: Scope::System,
                agent: Path::new(agent),
                home: Path::new(home),
                user,
            }
            .render()
            .unwrap_err()
        };
        assert!(bad("/a\"b", "/h", None).contains("cannot go in a unit file"));
        assert!(bad("/a", "/h\n", None).contains("cannot go in a unit file"));
        assert!(bad("a", "/h", None).contains("absolute"));
        assert!(bad("/a", "/h", Some("x y")).contains("not a user name"));
    }
}
