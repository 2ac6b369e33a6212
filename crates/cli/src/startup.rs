//! `fleet startup` and `fleet unstartup` (PM2's): the agent of this `FLEET_HOME` as a
//! systemd service, so a reboot brings it back with what `fleet save` saved. The unit's
//! text is `fleet_remote::unit`'s, the one `fleet deploy <stage> setup` installs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use fleet_remote::unit::{AgentUnit, Scope};

use crate::Failure;

/// What `fleet startup` was asked.
pub struct Startup {
    pub platform: Option<String>,
    pub user_unit: bool,
    pub print: bool,
    /// `User=` of a system unit (default: `SUDO_USER` under sudo, else the caller).
    pub run_as: Option<String>,
}

/// The unit for this machine and where it goes.
struct Planned {
    text: String,
    path: PathBuf,
    name: String,
    scope: Scope,
    user: String,
    home: PathBuf,
}

pub fn startup(args: Startup) -> anyhow::Result<()> {
    let planned = plan(&args)?;
    let platform = args.platform.as_deref().unwrap_or("systemd");
    if platform != "systemd" {
        println!("# {}\n{}", planned.path.display(), planned.text);
        return Err(Failure::usage(format!(
            "fleet startup {platform}: not supported; fleet writes systemd units (the one above is what to adapt)"
        ))
        .into());
    }
    if args.print {
        println!("# {}\n{}", planned.path.display(), planned.text);
        return Ok(());
    }
    if !Path::new("/run/systemd/system").is_dir() {
        return Err(Failure::usage(
            "systemd is not running here: `fleet startup --print` shows the unit to adapt to this machine's init system",
        )
        .into());
    }
    if planned.scope == Scope::System && !nix::unistd::Uid::effective().is_root() {
        return Err(Failure::usage(format!(
            "a system unit needs root: sudo env PATH=\"$PATH\" FLEET_HOME={} fleet startup\nhint: or `fleet startup --user` for a unit of your own",
            planned.home.display()
        ))
        .into());
    }
    install(&planned)
}

fn plan(args: &Startup) -> anyhow::Result<Planned> {
    let scope = if args.user_unit {
        Scope::User
    } else {
        Scope::System
    };
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .context("the current user has no passwd entry")?;
    let user = match (scope, &args.run_as) {
        (Scope::User, _) => me.name.clone(),
        (Scope::System, Some(user)) => user.clone(),
        (Scope::System, None) => std::env::var("SUDO_USER")
            .ok()
            .filter(|u| me.uid.is_root() && !u.is_empty())
            .unwrap_or_else(|| me.name.clone()),
    };
    let home = match std::env::var_os("FLEET_HOME").filter(|h| !h.is_empty()) {
        Some(home) => std::path::absolute(PathBuf::from(home))?,
        None => nix::unistd::User::from_name(&user)
            .ok()
            .flatten()
            .map(|u| u.dir.join(".fleet"))
            .with_context(|| format!("no user {user} on this machine"))?,
    };
    let agent = crate::client::agent_binary();
    let agent = agent
        .canonicalize()
        .with_context(|| format!("cannot find {}: install it beside fleet", agent.display()))?;
    let unit = AgentUnit {
        scope,
        agent: &agent,
        home: &home,
        user: Some(&user),
    };
    let text = unit.render().map_err(Failure::usage)?;
    let name = unit.file_name();
    let dir = match scope {
        Scope::System => PathBuf::from("/etc/systemd/system"),
        Scope::User => user_unit_dir(&me.dir),
    };
    Ok(Planned {
        path: dir.join(&name),
        text,
        name,
        scope,
        user,
        home,
    })
}

fn user_unit_dir(home_dir: &Path) -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map_or_else(|| home_dir.join(".config"), PathBuf::from)
        .join("systemd/user")
}

fn install(planned: &Planned) -> anyhow::Result<()> {
    let dir = planned.path.parent().context("a unit directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary = planned.path.with_extension("service.new");
    std::fs::write(&temporary, &planned.text)
        .and_then(|()| std::fs::rename(&temporary, &planned.path))
        .with_context(|| format!("cannot write {}", planned.path.display()))?;
    println!("wrote {}", planned.path.display());
    systemctl(planned.scope, &["daemon-reload"])?;
    systemctl(planned.scope, &["enable", &planned.name])?;
    let socket = planned.home.join("agent.sock");
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        let pid = std::fs::read_to_string(planned.home.join("agent.pid")).unwrap_or_default();
        println!(
            "enabled {}; the agent running now (pid {}) was not started by systemd: \
             `fleet save && fleet kill && {} start {}` hands it over",
            planned.name,
            pid.trim(),
            ctl(planned.scope),
            planned.name
        );
    } else {
        systemctl(planned.scope, &["start", &planned.name])?;
        println!("enabled and started {}", planned.name);
    }
    if planned.scope == Scope::User && !lingering(&planned.user) {
        println!(
            "note: without lingering your units start only when you log in; for boot: sudo loginctl enable-linger {}",
            planned.user
        );
    }
    println!("at boot the agent brings back what `fleet save` saved");
    Ok(())
}

pub fn unstartup(user_unit: bool, run_as: Option<String>) -> anyhow::Result<()> {
    let planned = plan(&Startup {
        platform: None,
        user_unit,
        print: false,
        run_as,
    })?;
    if !planned.path.exists() {
        return Err(Failure::failed(format!("no unit at {}", planned.path.display())).into());
    }
    systemctl(planned.scope, &["disable", &planned.name])?;
    std::fs::remove_file(&planned.path)
        .with_context(|| format!("cannot remove {}", planned.path.display()))?;
    systemctl(planned.scope, &["daemon-reload"])?;
    println!(
        "removed {}; a running agent keeps running until `fleet kill`",
        planned.path.display()
    );
    Ok(())
}

fn ctl(scope: Scope) -> &'static str {
    match scope {
        Scope::System => "systemctl",
        Scope::User => "systemctl --user",
    }
}

fn systemctl(scope: Scope, args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new("systemctl");
    if scope == Scope::User {
        command.arg("--user");
    }
    let output = command
        .args(args)
        .output()
        .context("cannot run systemctl")?;
    if !output.status.success() {
        anyhow::bail!(
            "{} {}: {}",
            ctl(scope),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn lingering(user: &str) -> bool {
    Command::new("loginctl")
        .args(["show-user", user, "--property=Linger"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "Linger=yes")
}
