//! What `fleet deploy` runs on a host: one sh snippet per step, each built here from
//! validated values, every value passed through `quote`. Nothing else in the deploy
//! code writes shell.
//!
//! Layout under the stage's `path` (Capistrano's, plus fleet's own `.fleet`):
//! `releases/<id>/` (with `REVISION`), `shared/`, `current -> releases/<id>`,
//! `.fleet/lock` and `.fleet/releases.log`.

use std::fmt::Write as _;

// The config files a release may hold, in the CLI's own search order.
use fleet_config::CONFIG_NAMES;

use crate::ssh::quote;

mod agent;
mod lock;
pub use agent::*;
use lock::prelude;
pub use lock::*;

/// Lines of a step's stdout that carry facts for the deployer, `fleet:<key>=<value>`;
/// everything else is output for the user.
const FACT_PREFIX: &str = "fleet:";

/// Exit status of the lock step when another deploy holds the lock.
pub const LOCKED_STATUS: u32 = 75;

/// A stage's `path` as a shell word: absolute, or under the SSH user's `$HOME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePath(String);

impl RemotePath {
    /// `path` from the config: `/srv/app`, `~` or `~/app`; no `..`, no control
    /// characters.
    pub fn new(path: &str) -> Result<RemotePath, String> {
        let ok_start = path.starts_with('/') || path == "~" || path.starts_with("~/");
        if !ok_start {
            return Err(format!("path {path:?} must be absolute or start with ~/"));
        }
        if path.chars().any(char::is_control) {
            return Err(format!("path {path:?} contains a control character"));
        }
        if path.split('/').any(|part| part == "..") {
            return Err(format!("path {path:?} must not contain `..`"));
        }
        let trimmed = path.trim_end_matches('/');
        Ok(RemotePath(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        }))
    }

    fn shell(&self) -> String {
        match self.0.strip_prefix('~') {
            Some("") => "\"$HOME\"".to_string(),
            Some(rest) => format!("\"$HOME\"{}", quote(rest)),
            None => quote(&self.0),
        }
    }
}

/// A release id: `20261124T101500.123Z-abc1234`, or any name `[A-Za-z0-9._-]` found on a
/// host (never `.` or `..`).
pub fn valid_release(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A git ref as given by `ref` or `--ref`: what git accepts in a refname or revision
/// (`main`, `origin/main`, `v1.2`, `HEAD~1`, a sha), and nothing a shell would act on.
pub fn check_ref(git_ref: &str) -> Result<(), String> {
    let bad = git_ref.is_empty()
        || git_ref.starts_with('-')
        || git_ref.contains("..")
        || git_ref.contains("@{")
        || git_ref.ends_with('/')
        || git_ref.ends_with(".lock")
        || !git_ref.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'~' | b'^' | b'@')
        });
    if bad {
        Err(format!(
            "ref {git_ref:?} is not a valid git ref: letters, digits and / . _ - ~ ^ only, no `..`\nhint: name a branch, tag or commit, like \"origin/main\" or \"v1.4.0\""
        ))
    } else {
        Ok(())
    }
}

/// Facts a step printed (`fleet:key=value` lines) and the rest of its output.
pub fn facts(stdout: &str) -> (Vec<(String, String)>, String) {
    let mut facts = Vec::new();
    let mut rest = String::new();
    for line in stdout.lines() {
        match line
            .strip_prefix(FACT_PREFIX)
            .and_then(|fact| fact.split_once('='))
        {
            Some((key, value)) => facts.push((key.to_string(), value.to_string())),
            None => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    (facts, rest)
}

/// Unpacks the archive on stdin (gzip'd tar) into `releases/<id>`, writes `REVISION`
/// and links shared paths.
pub fn unpack(path: &RemotePath, release: &str, commit: &str, shared: &Shared<'_>) -> String {
    let mut s = prelude(path);
    let _ = writeln!(s, "R=\"$P/releases/\"{}", quote(release));
    s.push_str(
        "if [ -e \"$R\" ]; then echo \"release directory $R already exists\" >&2; exit 1; fi\n",
    );
    s.push_str("mkdir \"$R\"\ntar -xzf - -C \"$R\"\n");
    finish_release(&mut s, commit, shared);
    s
}

/// The clone strategy's mirror of `repo` on the host (`<path>/repo`), created or
/// updated: the start of both of its scripts.
fn update_mirror(path: &RemotePath, repo: &str) -> String {
    let mut s = prelude(path);
    let _ = write!(
        s,
        r#"command -v git >/dev/null || {{ echo "git is not installed on this host (strategy = \"clone\" needs it)" >&2; exit 1; }}
M="$P/repo"
mkdir -p "$P"
if [ -d "$M" ]; then
  git -C "$M" remote set-url origin {repo}
  git -C "$M" fetch --quiet --prune origin '+refs/heads/*:refs/heads/*' '+refs/tags/*:refs/tags/*'
else
  git clone --quiet --mirror -- {repo} "$M"
fi
"#,
        repo = quote(repo)
    );
    s
}

/// The clone strategy, first host: updates the mirror and prints the commit
/// `git_ref` names (`fleet:commit=<sha>`), so every host exports exactly that one.
pub fn resolve_ref(path: &RemotePath, repo: &str, git_ref: &str) -> String {
    let mut s = update_mirror(path, repo);
    let _ = writeln!(
        s,
        "echo \"fleet:commit=$(git -C \"$M\" rev-parse --verify --quiet {}^{{commit}})\"",
        quote(git_ref)
    );
    s
}

/// The clone strategy, every host: updates the mirror, checks that `commit` is there
/// and exports it into `releases/<id>`.
pub fn clone_release(
    path: &RemotePath,
    source: &Source<'_>,
    release: &str,
    shared: &Shared<'_>,
) -> String {
    let commit = source.commit;
    let mut s = update_mirror(path, source.repo);
    let _ = write!(
        s,
        r#"git -C "$M" cat-file -e {commit}^{{commit}} 2>/dev/null || {{ echo "commit {commit} is not in $M" >&2; exit 1; }}
R="$P/releases/"{release}
if [ -e "$R" ]; then echo "release directory $R already exists" >&2; exit 1; fi
"#,
        commit = quote(commit),
        release = quote(release)
    );
    match &source.checkout {
        None => {
            let _ = writeln!(
                s,
                "mkdir \"$R\"\ngit -C \"$M\" archive --format=tar {} | tar -xf - -C \"$R\"",
                quote(commit)
            );
        }
        // A local clone of the mirror (git hardlinks its objects, so it is cheap and
        // stays whole when the mirror prunes), then `origin` pointed at the repository
        // itself so `git pull` in a hook fetches from it.
        Some(branch) => {
            let _ = write!(
                s,
                "git clone --quiet --no-checkout \"$M\" \"$R\"\ngit -C \"$R\" remote set-url origin {repo}\n",
                repo = quote(source.repo)
            );
            match branch {
                Some(branch) => {
                    let _ = writeln!(
                        s,
                        "git -C \"$R\" checkout --quiet -B {b} {c}\ngit -C \"$R\" branch --quiet --set-upstream-to=origin/{b} {b} 2>/dev/null || true",
                        b = quote(branch),
                        c = quote(commit)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "git -C \"$R\" checkout --quiet --detach {}",
                        quote(commit)
                    );
                }
            }
        }
    }
    finish_release(&mut s, commit, shared);
    s
}

/// Where a cloned release comes from.
pub struct Source<'a> {
    pub repo: &'a str,
    pub commit: &'a str,
    /// `Some` for the checkout strategy: the branch to check out (`None`: detached).
    pub checkout: Option<Option<String>>,
}

/// Shared paths linked into every release.
pub struct Shared<'a> {
    pub dirs: &'a [String],
    pub files: &'a [String],
}

fn finish_release(s: &mut String, commit: &str, shared: &Shared<'_>) {
    let _ = writeln!(s, "printf '%s\\n' {} > \"$R/REVISION\"", quote(commit));
    // A shared path is replaced by a link inside the release; a symlink committed in
    // the repository at one of its parent directories would make that `rm -rf` and
    // `ln` reach outside the release, so the deploy refuses it.
    for path in shared.dirs.iter().chain(shared.files) {
        let mut parent = std::path::Path::new(path.as_str()).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            let d = quote(&dir.display().to_string());
            let _ = writeln!(
                s,
                "if [ -L \"$R/\"{d} ]; then echo \"shared path \"{p}\": \"{d}\" is a symlink in the release\" >&2; exit 1; fi",
                p = quote(path)
            );
            parent = dir.parent();
        }
    }
    for dir in shared.dirs {
        let d = quote(dir);
        let _ = writeln!(
            s,
            "mkdir -p \"$P/shared/\"{d}\nrm -rf \"$R/\"{d}\nmkdir -p \"$(dirname \"$R/\"{d})\"\nln -s \"$P/shared/\"{d} \"$R/\"{d}"
        );
    }
    for file in shared.files {
        let f = quote(file);
        let _ = writeln!(
            s,
            "if [ ! -f \"$P/shared/\"{f} ]; then echo \"shared file $P/shared/\"{f}\" is missing: create it on the host first (fleet deploy <stage> exec)\" >&2; exit 1; fi\nrm -rf \"$R/\"{f}\nmkdir -p \"$(dirname \"$R/\"{f})\"\nln -s \"$P/shared/\"{f} \"$R/\"{f}"
        );
    }
}

/// Removes a release that never went live.
pub fn discard(path: &RemotePath, release: &str) -> String {
    format!(
        "{}c=$(readlink \"$P/current\" 2>/dev/null || true)\nif [ \"${{c##*/}}\" != {r} ]; then rm -rf \"$P/releases/\"{r}; fi\n",
        prelude(path),
        r = quote(release)
    )
}

/// Runs a hook in `dir` (a release, or `path` itself) with the stage's env and the
/// release's facts exported.
pub fn hook(
    path: &RemotePath,
    dir: Option<&str>,
    env: &[(String, String)],
    fleet_home: Option<&str>,
    command: &str,
) -> String {
    let mut s = prelude(path);
    match dir {
        Some(release) => {
            let _ = writeln!(s, "cd \"$P/releases/\"{}", quote(release));
        }
        None => s.push_str("mkdir -p \"$P\"\ncd \"$P\"\n"),
    }
    for (key, value) in env {
        let _ = writeln!(s, "export {key}={}", quote(value));
    }
    // The host's agent, and `setup`'s `pm2` (fleet under PM2's name) first on PATH, so
    // a PM2 hook's `pm2 reload ecosystem.config.js` drives fleet.
    match fleet_home {
        Some(home) => {
            let _ = writeln!(s, "export FLEET_HOME={}", quote(home));
        }
        None => s.push_str(": \"${FLEET_HOME:=$HOME/.fleet}\"\nexport FLEET_HOME\n"),
    }
    s.push_str(
        "if [ -x \"$FLEET_HOME/bin/pm2\" ]; then PATH=\"$FLEET_HOME/bin:$PATH\"; export PATH; fi\n",
    );
    let _ = writeln!(s, "sh -c {}", quote(command));
    s
}

/// Points `current` at `releases/<id>` with one rename (a new symlink moved over the
/// old), notes in the lock that the host has switched, and names the release's config.
pub fn switch(path: &RemotePath, release: &str) -> String {
    let mut s = format!(
        "{}cd \"$P\"\n[ -d releases/{r} ] || {{ echo \"release \"{r}\" is not on this host\" >&2; exit 1; }}\nln -sfn releases/{r} .current.tmp.$$\nmv -fT .current.tmp.$$ current\necho fleet:switched=1\nif [ -f \"$L\" ]; then sed -i 's/^state=.*/state=switched/' \"$L\"; fi\nR=\"$P/releases/\"{r}\n",
        prelude(path),
        r = quote(release)
    );
    config_fact(&mut s);
    s
}

pub(super) fn config_fact(s: &mut String) {
    s.push_str("for f in");
    for name in CONFIG_NAMES {
        let _ = write!(s, " {name}");
    }
    s.push_str("; do if [ -f \"$R/$f\" ]; then echo \"fleet:config=$f\"; break; fi; done\n");
}

/// Appends a JSON line to `.fleet/releases.log`, deletes `prune`d releases and
/// releases the lock.
pub fn finish(path: &RemotePath, token: &str, record: &str, prune: &[String]) -> String {
    let mut s = prelude(path);
    let _ = writeln!(
        s,
        "printf '%s\\n' {} >> \"$P/.fleet/releases.log\"\nchmod 600 \"$P/.fleet/releases.log\"",
        quote(record)
    );
    for release in prune {
        let _ = writeln!(s, "rm -rf \"$P/releases/\"{}", quote(release));
    }
    let _ = writeln!(
        s,
        "if grep -qx {} \"$L\" 2>/dev/null; then rm -f \"$L\"; fi",
        quote(&format!("token={token}"))
    );
    s
}

/// `list`, `curr`, `prev`: `current`, each release with its `REVISION`, and the lock.
pub fn inspect(path: &RemotePath) -> String {
    format!(
        r#"{}[ -d "$P" ] || {{ echo "$P does not exist: run \`fleet deploy <stage> setup\` first" >&2; exit 1; }}
cd "$P"
echo "fleet:current=$(readlink current 2>/dev/null || true)"
for r in releases/*; do [ -d "$r" ] && echo "fleet:release=${{r#releases/}} $(head -c 64 "$r/REVISION" 2>/dev/null | tr -d '\n')"; done
if [ -f "$L" ]; then echo "fleet:lock=$(sed -n 's/^owner=//p' "$L") since $(sed -n 's/^since=//p' "$L")"; fi
true
"#,
        prelude(path)
    )
}

/// `exec <cmd>` in `current`.
pub fn exec_in_current(path: &RemotePath, env: &[(String, String)], command: &str) -> String {
    let mut s = prelude(path);
    s.push_str("cd \"$P/current\"\n");
    for (key, value) in env {
        let _ = writeln!(s, "export {key}={}", quote(value));
    }
    let _ = writeln!(s, "sh -c {}", quote(command));
    s
}

/// `setup`: directories and shared directories; prints where `path` is.
pub fn setup_dirs(path: &RemotePath, shared_dirs: &[String]) -> String {
    let mut s = prelude(path);
    s.push_str("mkdir -p \"$P/releases\" \"$P/shared\" \"$P/.fleet\"\nchmod 700 \"$P/.fleet\"\n");
    for dir in shared_dirs {
        let _ = writeln!(s, "mkdir -p \"$P/shared/\"{}", quote(dir));
    }
    s.push_str("cd \"$P\"\necho \"fleet:root=$(pwd)\"\n");
    s
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod lock_race;

#[cfg(test)]
mod tests {
    use super::lock::watchdog;
    use super::*;

    #[test]
    fn refs_with_shell_metacharacters_are_rejected() {
        for good in [
            "main",
            "origin/main",
            "v1.2.0",
            "HEAD~1",
            "abc123^",
            "feature/x_y-z",
        ] {
            assert!(check_ref(good).is_ok(), "{good}");
        }
        for bad in [
            "main; rm -rf /",
            "$(reboot)",
            "`id`",
            "a b",
            "-rf",
            "main..dev",
            "x@{1}",
            "a|b",
            "a&b",
            "a>b",
            "it's",
            "",
            "a\nb",
        ] {
            assert!(check_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_are_quoted_and_home_expanded() {
        assert_eq!(RemotePath::new("/srv/app/").unwrap().shell(), "'/srv/app'");
        assert_eq!(
            RemotePath::new("~/my app").unwrap().shell(),
            "\"$HOME\"'/my app'"
        );
        assert_eq!(RemotePath::new("~").unwrap().shell(), "\"$HOME\"");
        assert!(RemotePath::new("srv/app").is_err());
        assert!(RemotePath::new("/srv/../etc").is_err());
        assert!(RemotePath::new("/srv/a\nb").is_err());
    }

    #[test]
    fn release_names_found_on_hosts_are_checked() {
        assert!(valid_release("20261124T101500.123Z-abc1234"));
        for bad in ["", ".", "..", "-x", "a/b", "a b", "a;b"] {
            assert!(!valid_release(bad), "{bad:?}");
        }
    }

    #[test]
    fn facts_are_split_from_output() {
        let (facts, rest) = facts("hello\nfleet:current=releases/a\nfleet:release=a\nbye\n");
        assert_eq!(
            facts,
            vec![
                ("current".to_string(), "releases/a".to_string()),
                ("release".to_string(), "a".to_string())
            ]
        );
        assert_eq!(rest, "hello\nbye\n");
    }

    #[test]
    fn snippets_are_valid_sh() {
        let path = RemotePath::new("~/it's here").unwrap();
        let info = LockInfo {
            token: "t0k",
            fence: 7,
            owner: "me@box",
            pid: 1,
            since: "2026-11-24T10:00:00Z",
            reason: "deploy main; rm -rf / `x`",
            release: "r1",
        };
        let shared = Shared {
            dirs: &["logs".to_string()],
            files: &["config/.env".to_string()],
        };
        let snippets = [
            lock(&path, &info, 30),
            renew(&path, "t0k"),
            unlock(&path, "t0k"),
            force_unlock(&path),
            unpack(&path, "r1", "abc", &shared),
            clone_release(
                &path,
                &Source {
                    repo: "git@x:y.git",
                    commit: "abc",
                    checkout: None,
                },
                "r1",
                &shared,
            ),
            clone_release(
                &path,
                &Source {
                    repo: "git@x:y.git",
                    commit: "abc",
                    checkout: Some(Some("main".into())),
                },
                "r1",
                &shared,
            ),
            resolve_ref(&path, "git@x:y.git", "main"),
            discard(&path, "r1"),
            hook(
                &path,
                Some("r1"),
                &[("A".into(), "b c".into())],
                None,
                "echo 'hi'",
            ),
            hook(&path, None, &[], Some("/srv/fleet"), "pm2 reload x"),
            cli_install("/srv/fleet"),
            switch(&path, "r1"),
            finish(&path, "t0k", "{\"id\":\"r1\"}", &["r0".to_string()]),
            inspect(&path),
            exec_in_current(&path, &[], "ls"),
            setup_dirs(&path, &["logs".to_string()]),
            agent_probe("/srv/fleet"),
            agent_install("/srv/fleet"),
            agent_start("/srv/fleet", Supervision::SystemdSystem).unwrap(),
            agent_start("/srv/fleet", Supervision::SystemdUser).unwrap(),
            agent_start("/srv/fleet", Supervision::Daemon).unwrap(),
            agent_join("/srv/fleet", "https://c:7443", "tok", "h1", "PEM'x"),
            watchdog(30),
        ];
        for snippet in snippets {
            let status = std::process::Command::new("sh")
                .arg("-n")
                .arg("-c")
                .arg(&snippet)
                .status()
                .expect("sh");
            assert!(status.success(), "sh -n rejects:\n{snippet}");
        }
    }

    #[test]
    fn the_join_token_reaches_the_agent_in_its_environment_never_its_argv() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let agent = dir.path().join("bin/fleet-agent");
        std::fs::write(
            &agent,
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$0.args\"\nprintf '%s' \"$FLEET_JOIN_TOKEN\" > \"$0.env\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o700)).unwrap();
        let token = "fjt_secret'token";
        let snippet = agent_join(home, "https://c:7443", token, "h1", "PEM");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&snippet)
            .status()
            .unwrap();
        assert!(status.success());
        let args = std::fs::read_to_string(dir.path().join("bin/fleet-agent.args")).unwrap();
        assert!(!args.contains("secret"), "{args}");
        assert!(args.contains("https://c:7443"), "{args}");
        let env = std::fs::read_to_string(dir.path().join("bin/fleet-agent.env")).unwrap();
        assert_eq!(env, token);
    }

    #[test]
    fn a_symlinked_parent_of_a_shared_path_stops_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let (p, outside) = (dir.path().join("app"), dir.path().join("outside"));
        let release = p.join("releases/r1");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join(".env"), "keep me").unwrap();
        std::os::unix::fs::symlink(&outside, release.join("config")).unwrap();
        let mut script = format!(
            "set -eu\nP={}\nR={}\n",
            quote(&p.display().to_string()),
            quote(&release.display().to_string())
        );
        let files = ["config/.env".to_string()];
        finish_release(
            &mut script,
            "abc",
            &Shared {
                dirs: &[],
                files: &files,
            },
        );
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is a symlink in the release"), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(outside.join(".env")).unwrap(),
            "keep me"
        );
    }
}
