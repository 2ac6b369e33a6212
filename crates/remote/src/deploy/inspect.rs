//! The read-only and maintenance subcommands: `list`, `curr` and `prev` (each
//! host's releases, current and previous, and its lock), `exec` (a command in the
//! current release of every host) and `unlock` (remove any lock). They return what
//! they found per host; the caller draws it.

use std::collections::BTreeSet;

use super::Context;
use super::error::StepError;
use super::executor::Step;
use super::script;
use crate::ssh::ExecOutput;

/// Which releases `list` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    All,
    Current,
    Previous,
}

/// A host's releases as found on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostReleases {
    pub current: Option<String>,
    /// The newest release older than `current`.
    pub previous: Option<String>,
    /// (id, commit), oldest first.
    pub releases: Vec<(String, String)>,
    /// Who holds the lock, when it is held.
    pub lock: Option<String>,
}

impl HostReleases {
    /// The commit of release `id`, shortened.
    pub fn short_commit(&self, id: &str) -> String {
        (self.releases.iter())
            .find(|(r, _)| r == id)
            .map(|(_, c)| c.get(..7).unwrap_or(c).to_string())
            .unwrap_or_default()
    }
}

/// `list`, `curr` or `prev`: every host's releases, or why it could not be read.
#[derive(Debug)]
pub struct Releases {
    pub kind: ListKind,
    pub hosts: Vec<(String, Result<HostReleases, StepError>)>,
}

/// One host's `exec`.
#[derive(Debug)]
pub struct ExecResult {
    pub host: String,
    pub result: Result<ExecOutput, StepError>,
}

/// One host's `unlock`: whose lock was removed (`None`: it was not locked).
#[derive(Debug)]
pub struct UnlockResult {
    pub host: String,
    pub result: Result<Option<String>, StepError>,
}

impl Context {
    pub(super) async fn inspect_all(&self) -> Vec<(String, Result<HostReleases, StepError>)> {
        futures::future::join_all(self.hosts.iter().map(|host| async move {
            let result = async {
                let output = host.run(&Step::quick(script::inspect(&host.path))).await?;
                let current = (output.fact("current"))
                    .and_then(|c| c.rsplit('/').next().map(str::to_string))
                    .filter(|c| script::valid_release(c));
                let mut releases: Vec<(String, String)> = (output.all("release").iter())
                    .filter_map(|v| {
                        let (id, commit) = v.split_once(' ').unwrap_or((v, ""));
                        script::valid_release(id).then(|| (id.to_string(), commit.to_string()))
                    })
                    .collect();
                releases.sort();
                let previous = current.as_ref().and_then(|c| {
                    (releases.iter().rev())
                        .map(|(r, _)| r)
                        .find(|r| *r < c)
                        .cloned()
                });
                Ok(HostReleases {
                    current,
                    previous,
                    releases,
                    lock: output.fact("lock"),
                })
            }
            .await;
            (host.name().to_string(), result)
        }))
        .await
    }

    pub(super) async fn list(&self, kind: ListKind) -> Releases {
        Releases {
            kind,
            hosts: self.inspect_all().await,
        }
    }

    pub(super) async fn exec(&self, command: &str) -> Vec<ExecResult> {
        let env = self.hook_env("", None);
        futures::future::join_all(self.hosts.iter().map(|host| {
            let env = &env;
            async move {
                let step = Step::hook(script::exec_in_current(&host.path, env, command));
                ExecResult {
                    host: host.name().to_string(),
                    result: host.exec(&step).await.map(|output| output.raw),
                }
            }
        }))
        .await
    }

    pub(super) async fn unlock(&self) -> Vec<UnlockResult> {
        futures::future::join_all(self.hosts.iter().map(|host| async move {
            let step = Step::quick(script::force_unlock(&host.path));
            let result = host.run(&step).await.map(|output| {
                let text = String::from_utf8_lossy(&output.raw.stdout);
                text.lines()
                    .find_map(|l| l.strip_prefix("owner="))
                    .map(str::to_string)
            });
            UnlockResult {
                host: host.name().to_string(),
                result,
            }
        }))
        .await
    }
}

/// Releases present on every host of `hosts` (for a revert).
pub(super) fn common_releases<'a>(
    hosts: impl IntoIterator<Item = &'a HostReleases>,
) -> BTreeSet<String> {
    let mut common: Option<BTreeSet<String>> = None;
    for state in hosts {
        let releases: BTreeSet<String> = state.releases.iter().map(|(r, _)| r.clone()).collect();
        common = Some(match common {
            None => releases,
            Some(c) => c.intersection(&releases).cloned().collect(),
        });
    }
    common.unwrap_or_default()
}
