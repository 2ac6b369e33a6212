//! Running an app as another user (PM2's `uid`/`user` and `gid`): the account is
//! resolved on this host before the fork, and the child drops to it (supplementary
//! groups, group, then user) just before `exec`. Only an agent running as root can
//! switch; asking a non-root agent for another user is a clear error, never a silent
//! run as the agent's own user.
//!
//! What the agent does for the app stays the agent's: it writes the app's log and pid
//! files from its side of the pipes, binds shared sockets, and signals the process
//! group, so none of that needs the app's user to have access to `FLEET_HOME`.

#![allow(unsafe_code)] // `pre_exec` is unsafe: the closure runs between fork and exec.

use std::collections::BTreeMap;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

/// The account an app runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, as `initgroups(3)` would set them.
    pub groups: Vec<Gid>,
    pub name: String,
    pub home: PathBuf,
}

/// Resolves `user`/`group` on this host. `Ok(None)` when the app runs as the agent's
/// own account (nothing set, or the agent's own user and group).
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<RunAs>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let me = Uid::effective();
    let account = match user {
        Some(user) => find_user(user)?,
        None => User::from_uid(me)
            .ok()
            .flatten()
            .ok_or_else(|| format!("uid {me}: the agent's own user has no passwd entry"))?,
    };
    let gid = match group {
        Some(group) => find_group(group)?,
        None => account.gid,
    };
    if account.uid == me && gid == Gid::effective() {
        return Ok(None);
    }
    if !me.is_root() {
        let agent = User::from_uid(me)
            .ok()
            .flatten()
            .map_or_else(|| me.to_string(), |u| u.name);
        return Err(format!(
            "uid/gid: the agent runs as {agent}, not root, so it cannot start an app as \
             {}:{gid}; run the agent as root, or as that user, or remove uid/gid",
            account.name
        ));
    }
    let name = std::ffi::CString::new(account.name.clone())
        .map_err(|_| format!("user {:?}: not a valid name", account.name))?;
    let mut groups = getgrouplist(&name, gid)
        .map_err(|e| format!("user {}: cannot list its groups: {e}", account.name))?;
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    Ok(Some(RunAs {
        uid: account.uid,
        gid,
        groups,
        name: account.name,
        home: account.dir,
    }))
}

fn find_user(user: &str) -> Result<User, String> {
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    };
    found
        .map_err(|e| format!("user {user}: cannot look it up: {e}"))?
        .ok_or_else(|| format!("user {user}: no such user on this host (see `getent passwd`)"))
}

fn find_group(group: &str) -> Result<Gid, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    Group::from_name(group)
        .map_err(|e| format!("group {group}: cannot look it up: {e}"))?
        .map(|g| g.gid)
        .ok_or_else(|| format!("group {group}: no such group on this host (see `getent group`)"))
}

impl RunAs {
    /// What a login as the user would set, as PM2 sets `HOME` (and `USER`/`LOGNAME`,
    /// which programs read for the same reason).
    pub fn set_env(&self, env: &mut BTreeMap<String, String>) {
        env.insert("HOME".into(), self.home.display().to_string());
        env.insert("USER".into(), self.name.clone());
        env.insert("LOGNAME".into(), self.name.clone());
    }

    /// Makes `command`'s child drop to this account just before `exec`.
    pub fn apply(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: the closure only makes three system calls on data prepared before
        // the fork (no allocation, no locks), which is what may run after `fork` in a
        // multi-threaded program. Order matters: groups and group need root, so the
        // user goes last.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_account_needs_no_switch() {
        let me = Uid::effective().to_string();
        assert_eq!(resolve(None, None), Ok(None));
        assert_eq!(resolve(Some(&me), None), Ok(None));
    }

    #[test]
    fn unknown_accounts_are_named() {
        let error = resolve(Some("no-such-user-here"), None).unwrap_err();
        assert!(
            error.contains("user no-such-user-here: no such user"),
            "{error}"
        );
        let error = resolve(None, Some("no-such-group-here")).unwrap_err();
        assert!(
            error.contains("group no-such-group-here: no such group"),
            "{error}"
        );
    }

    #[test]
    fn root_resolves_another_account_with_its_groups() {
        if !Uid::effective().is_root() {
            let error = resolve(Some("0"), None).unwrap_err();
            assert!(error.contains("not root"), "{error}");
            return;
        }
        let nobody = resolve(Some("nobody"), None).unwrap().unwrap();
        assert_eq!(nobody.uid, Uid::from_raw(65534));
        assert!(nobody.groups.contains(&nobody.gid));
        let mut env = BTreeMap::new();
        nobody.set_env(&mut env);
        assert_eq!(env["USER"], "nobody");
    }
}
