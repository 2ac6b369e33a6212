//! The deploy lock on a host (`.fleet/lock`): taking it (a stale one taken over, and,
//! for a deploy run by a controller, one held under an older fencing number of the
//! stage's lock), the host-side watchdog that releases it when its deployer stops
//! renewing it, the check every changing step starts with, renewal and release.

use std::fmt::Write as _;

use super::{LOCKED_STATUS, RemotePath, Shared, config_fact, one_line, switch, unpack};
use crate::ssh::quote;

/// The lock's contents: `key=value` lines (values on one line).
pub struct LockInfo<'a> {
    pub token: &'a str,
    /// The stage lock's fencing number when a controller runs the deploy, else 0.
    /// A host remembers the highest it saw (`.fleet/fence`) and refuses a lower one; a
    /// lock held under a lower number is taken over at once (its deployer lost the
    /// stage's lease), never one taken without a number (a CLI's deploy over SSH).
    pub fence: u64,
    pub owner: &'a str,
    pub pid: u32,
    pub since: &'a str,
    pub reason: &'a str,
    pub release: &'a str,
}

/// Shell that deletes what an abandoned deploy left behind, given `$L` (the lock): its
/// release directory, unless `current` points at it. Used by the watchdog and by a
/// deploy that finds a stale lock.
const ABANDONED_CLEANUP: &str = r#"r=$(sed -n 's/^release=//p' "$L" 2>/dev/null)
case $r in ''|.|..|*/*) ;; *)
  c=$(readlink "$P/current" 2>/dev/null || true)
  if [ "${c##*/}" != "$r" ] && ! grep -q "\"id\":\"$r\",.*\"result\":\"ok\"" "$P/.fleet/releases.log" 2>/dev/null; then rm -rf "$P/releases/$r"; fi ;;
esac"#;

pub(super) fn prelude(path: &RemotePath) -> String {
    format!(
        "set -eu\numask 022\nP={}\nL=\"$P/.fleet/lock\"\n",
        path.shell()
    )
}

/// Takes the lock, after clearing a stale one, and starts the
/// host-side watchdog that releases it once the deployer stops renewing it for `ttl`
/// seconds. Prints the path, `current`, and every release present. Exits
/// `LOCKED_STATUS` with the holder's lock on stdout when the lock is held.
///
/// Everything that reads the lock and then changes it (taking over a stale lock,
/// renewing, releasing, the watchdog's cleanup) does so holding `flock` on
/// `.fleet/lock.guard`, so two deployers can never both see a lock stale and both take
/// it, and a renewal cannot land between another's check and its takeover.
pub fn lock(path: &RemotePath, info: &LockInfo<'_>, ttl_secs: u64) -> String {
    let mut s = prelude(path);
    let lines = format!(
        "token={}\nfence={}\nowner={}\npid={}\nsince={}\nreason={}\nrelease={}\nstate=building\n",
        info.token,
        info.fence,
        one_line(info.owner),
        info.pid,
        info.since,
        one_line(info.reason),
        info.release
    );
    let _ = write!(
        s,
        r#"mkdir -p "$P/releases" "$P/shared" "$P/.fleet"
chmod 700 "$P/.fleet"
command -v flock >/dev/null || {{ echo "flock(1) is missing on this host (util-linux)" >&2; exit 1; }}
exec 9>"$P/.fleet/lock.guard"
flock 9
F={fence}
if [ "$F" -gt 0 ]; then
  seen=$(cat "$P/.fleet/fence" 2>/dev/null || echo 0)
  case $seen in ''|*[!0-9]*) seen=0 ;; esac
  if [ "$seen" -gt "$F" ]; then echo "fleet:fenced=$seen"; exit {locked}; fi
  echo "$F" > "$P/.fleet/fence"
fi
if [ -f "$L" ]; then
  age=$(( $(date +%s) - $(stat -c %Y "$L") ))
  held=$(sed -n 's/^fence=//p' "$L"); case $held in ''|*[!0-9]*) held=0 ;; esac
  if [ "$age" -le {ttl} ] && ! [ "$held" -gt 0 -a "$held" -lt "$F" ]; then cat "$L"; exit {locked}; fi
  echo "fleet:stale_lock=$(sed -n 's/^owner=//p' "$L") since $(sed -n 's/^since=//p' "$L")"
  {cleanup}
  rm -f "$L"
fi
if ! (set -C; printf '%s' {lines} > "$L") 2>/dev/null; then cat "$L"; exit {locked}; fi
chmod 600 "$L"
exec 9>&-
setsid sh -c {watchdog} fleet-lock-watchdog "$P" {token} </dev/null >/dev/null 2>&1 &
cd "$P"
echo "fleet:root=$(pwd)"
echo "fleet:current=$(readlink current 2>/dev/null || true)"
for r in releases/*; do [ -d "$r" ] && echo "fleet:release=${{r#releases/}}"; done
true
"#,
        ttl = ttl_secs,
        fence = info.fence,
        locked = LOCKED_STATUS,
        cleanup = ABANDONED_CLEANUP,
        lines = quote(&lines),
        watchdog = quote(&watchdog(ttl_secs)),
        token = quote(info.token),
    );
    s
}

/// The watchdog's own script (`sh -c`, `$1` the path, `$2` the token): polls the lock
/// every second; exits when the lock is gone or someone else's; when not renewed for
/// `ttl` seconds, cleans up after the deploy and releases the lock.
pub(super) fn watchdog(ttl_secs: u64) -> String {
    format!(
        r#"P=$1
L="$P/.fleet/lock"
while sleep 1; do
  [ -f "$L" ] || exit 0
  grep -qx "token=$2" "$L" 2>/dev/null || exit 0
  age=$(( $(date +%s) - $(stat -c %Y "$L" 2>/dev/null || date +%s) ))
  [ "$age" -gt {ttl_secs} ] || continue
  exec 9>"$P/.fleet/lock.guard"
  flock 9
  grep -qx "token=$2" "$L" 2>/dev/null || exit 0
  {ABANDONED_CLEANUP}
  rm -f "$L"
  exit 0
done"#
    )
}

/// What the lock's exec does after taking the lock.
pub enum LockThen<'a> {
    Nothing,
    /// Unpack the archive on stdin, then switch to it when `switch`.
    Unpack {
        release: &'a str,
        commit: &'a str,
        shared: Shared<'a>,
        switch: bool,
    },
    /// Switch to an existing release.
    Switch {
        release: &'a str,
    },
}

/// The lock, then `then`, in one script; `fleet:step=` facts say how far it got.
pub fn lock_and(
    path: &RemotePath,
    info: &LockInfo<'_>,
    ttl_secs: u64,
    then: &LockThen<'_>,
) -> String {
    let mut s = lock(path, info, ttl_secs);
    match then {
        LockThen::Nothing => {}
        LockThen::Unpack {
            release,
            commit,
            shared,
            switch: switches,
        } => {
            // Already on it: a deploy taken up again after its controller restarted.
            let _ = writeln!(
                s,
                "if [ \"$(readlink \"$P/current\" 2>/dev/null || true)\" != {} ]; then",
                quote(&format!("releases/{release}"))
            );
            s.push_str("echo fleet:step=transfer\n");
            s.push_str(&unpack(path, release, commit, shared));
            if *switches {
                s.push_str("echo fleet:step=switch\n");
                s.push_str(&switch(path, release));
            }
            let _ = writeln!(
                s,
                "else\necho fleet:step=switch\necho fleet:switched=1\nR=\"$P/releases/\"{}",
                quote(release)
            );
            config_fact(&mut s);
            s.push_str("fi\n");
        }
        LockThen::Switch { release } => {
            s.push_str("echo fleet:step=switch\n");
            s.push_str(&switch(path, release));
        }
    }
    s
}

/// Exit status of a step that found the lock no longer its deploy's.
pub const LOST_STATUS: u32 = 76;

/// The check every step that changes the host starts with: the lock must still be
/// `token`'s, or the step changes nothing and exits `LOST_STATUS`.
pub fn still_locked(path: &RemotePath, token: &str) -> String {
    format!(
        "{}grep -qx {} \"$L\" 2>/dev/null || {{ echo \"the deploy lock on this host is no longer this deploy's\" >&2; exit {LOST_STATUS}; }}\n",
        prelude(path),
        quote(&format!("token={token}"))
    )
}

/// Renews the lock; fails when it is no longer ours.
pub fn renew(path: &RemotePath, token: &str) -> String {
    format!(
        "{}{GUARD}grep -qx {} \"$L\" && touch \"$L\"\n",
        prelude(path),
        quote(&format!("token={token}"))
    )
}

/// Releases the lock if it is still ours.
pub fn unlock(path: &RemotePath, token: &str) -> String {
    format!(
        "{}{GUARD}if grep -qx {} \"$L\" 2>/dev/null; then rm -f \"$L\"; fi\n",
        prelude(path),
        quote(&format!("token={token}"))
    )
}

/// `fleet deploy <stage> unlock`: removes any lock, printing whose it was.
pub fn force_unlock(path: &RemotePath) -> String {
    format!(
        "{}{GUARD}if [ -f \"$L\" ]; then cat \"$L\"; {ABANDONED_CLEANUP}\n rm -f \"$L\"; fi\n",
        prelude(path)
    )
}

/// Holds the lock's guard for the rest of the script (see `lock`). A host without a
/// `.fleet` directory has no lock to guard.
pub(super) const GUARD: &str =
    "if [ -d \"$P/.fleet\" ]; then exec 9>\"$P/.fleet/lock.guard\"; flock 9; fi\n";
