//! What an app takes from the host it runs on: `.env` files (`env_file`) and the user
//! and group it runs as (PM2's `uid`/`user` and `gid`). The agent reads the files and
//! switches users; here the values are checked, and a local load also looks at the
//! files so a typo in a path is seen before the app starts.

use std::path::{Path, PathBuf};

use crate::envfile;
use crate::reader::{self, Ctx, Field, MapReader};
use crate::resolve::absolute;
use crate::spec::AppSpec;

use super::fields::expand_home;

/// Longest user or group name `useradd` accepts.
const MAX_ACCOUNT_NAME: usize = 32;

pub(super) struct Host {
    env_files: Vec<PathBuf>,
    user: Option<String>,
    group: Option<String>,
}

/// Reads `env_file` (already taken, since `env_*` keys are stages), `uid`/`user` and
/// `gid`. With `check_files`, each env file is read now: a missing one is a warning
/// (PM2 itself never reads it, so a file that works under PM2 must still load), lines
/// dotenv would skip are warnings, and an unreadable one is an error.
pub(super) fn read_host(
    ctx: &mut Ctx<'_>,
    r: &mut MapReader<'_>,
    env_file: Option<Field<'_>>,
    cwd: &Path,
    home: Option<&str>,
    check_files: bool,
) -> Host {
    let mut env_files = Vec::new();
    if let Some(f) = &env_file
        && let Some(paths) = reader::as_string_list(ctx, f, false)
    {
        for path in paths.iter().filter(|p| !p.trim().is_empty()) {
            let path = absolute(&cwd.join(expand_home(path, home)));
            if check_files {
                check_env_file(ctx, f, &path);
            }
            env_files.push(path);
        }
    }
    let user = r
        .take(ctx, &["uid", "user"])
        .and_then(|f| account(ctx, &f, "user"));
    let group = r
        .take(ctx, &["gid"])
        .and_then(|f| account(ctx, &f, "group"));
    Host {
        env_files,
        user,
        group,
    }
}

impl Host {
    pub(super) fn apply(self, spec: &mut AppSpec) {
        spec.env_files = self.env_files;
        spec.user = self.user;
        spec.group = self.group;
    }
}

fn check_env_file(ctx: &mut Ctx<'_>, f: &Field<'_>, path: &Path) {
    match envfile::read(path) {
        Ok(None) => {
            let message = format!(
                "{} does not exist (yet); the app starts without it",
                path.display()
            );
            ctx.warn(f.line, &f.path, &message);
        }
        Ok(Some(parsed)) => {
            for line in parsed.skipped_lines.iter().take(3) {
                let message = format!(
                    "{}:{line} is not a KEY=value line; it is skipped, as dotenv skips it",
                    path.display()
                );
                ctx.warn(f.line, &f.path, &message);
            }
        }
        Err(message) => ctx.error(f.line, &f.path, message),
    }
}

/// A user or group: a number, or a name as `useradd` takes it. The agent resolves it
/// on its host, where the account has to exist.
fn account(ctx: &mut Ctx<'_>, f: &Field<'_>, what: &str) -> Option<String> {
    let value = reader::as_string(ctx, f)?;
    let value = value.trim().to_string();
    let numeric = !value.is_empty() && value.chars().all(|c| c.is_ascii_digit());
    if numeric {
        if value.parse::<u32>().is_ok_and(|id| id != u32::MAX) {
            return Some(value);
        }
        ctx.error(f.line, &f.path, format!("{value} is not a valid {what} id"));
        return None;
    }
    if valid_account_name(&value) {
        return Some(value);
    }
    ctx.error(
        f.line,
        &f.path,
        format!(
            "{value:?} is not a {what} name: letters, digits, `_`, `-` and `.`, \
             not starting with `-`, at most {MAX_ACCOUNT_NAME} characters"
        ),
    );
    None
}

/// POSIX portable names (`[A-Za-z0-9._-]`, no leading `-`) plus Samba's trailing `$`.
pub(crate) fn valid_account_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= MAX_ACCOUNT_NAME
        && !body.starts_with('-')
        && !body.chars().all(|c| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
