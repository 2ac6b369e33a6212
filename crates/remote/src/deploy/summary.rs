//! How a deploy ended: one `HostSummary` per host and the `Report` of the whole,
//! which the CLI draws as a table or JSON and a controller stores. Also the audit
//! record sent to the controller.

use serde::{Deserialize, Serialize};

/// How one host's deploy ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostResult {
    /// On the new release.
    Ok,
    /// The host failed; `release` says where it is now.
    Failed,
    /// Deployed, then taken back to its previous release because others failed.
    RolledBack,
    /// Not attempted: the deploy stopped before its batch.
    Skipped,
    /// Already on the requested release.
    Unchanged,
}

impl HostResult {
    /// The word in the summary table.
    pub fn label(self) -> &'static str {
        match self {
            HostResult::Ok => "ok",
            HostResult::Failed => "FAILED",
            HostResult::RolledBack => "rolled back",
            HostResult::Skipped => "skipped",
            HostResult::Unchanged => "unchanged",
        }
    }

    /// The word in each host's `releases.log`.
    pub fn record(self) -> &'static str {
        match self {
            HostResult::Ok | HostResult::Unchanged => "ok",
            HostResult::RolledBack => "rolled_back",
            HostResult::Failed | HostResult::Skipped => "failed",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostSummary {
    pub host: String,
    pub result: HostResult,
    /// The step that failed (or the last one done).
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The release `current` points at now, as far as fleet knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    pub duration_ms: u64,
    /// How long each step took, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepTime>,
}

/// One step of a host's deploy and how long it took.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepTime {
    pub step: String,
    pub ms: u64,
}

impl HostSummary {
    /// A host the deploy never got to.
    pub fn skipped(host: &str) -> HostSummary {
        HostSummary {
            host: host.to_string(),
            result: HostResult::Skipped,
            step: String::new(),
            error: Some("not attempted: the deploy stopped".to_string()),
            release: None,
            previous: None,
            duration_ms: 0,
            steps: Vec::new(),
        }
    }
}

/// The end of a `setup`, `update` or `revert`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub stage: String,
    pub action: String,
    pub release: Option<String>,
    pub commit: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub ok: bool,
    pub rolled_back: bool,
    pub duration_ms: u64,
    pub hosts: Vec<HostSummary>,
    /// Why the controller did not record the deploy, if it was asked to and did not.
    #[serde(skip)]
    pub audit_error: Option<String>,
}

impl Report {
    /// Whether every host ended on the requested release.
    pub fn all_ok(hosts: &[HostSummary]) -> bool {
        hosts
            .iter()
            .all(|s| matches!(s.result, HostResult::Ok | HostResult::Unchanged))
    }

    pub fn failed(&self) -> Vec<&HostSummary> {
        self.hosts
            .iter()
            .filter(|s| s.result == HostResult::Failed)
            .collect()
    }

    /// The result as the controller's audit log keeps it.
    pub fn audit_result(hosts: &[HostSummary], rolled_back: bool) -> String {
        if Report::all_ok(hosts) {
            return "ok".to_string();
        }
        let failed: Vec<&str> = hosts
            .iter()
            .filter(|s| s.result == HostResult::Failed)
            .map(|s| s.host.as_str())
            .collect();
        format!(
            "failed on {}{}",
            failed.join(", "),
            if rolled_back { "; rolled back" } else { "" }
        )
    }

    /// One line on what failed, for the error after the table.
    pub fn failure_message(&self) -> String {
        let failed = self.failed();
        let detail = if failed.len() > 3 {
            "see the table above".to_string()
        } else {
            failed
                .iter()
                .map(|s| {
                    let first = s.error.as_deref().unwrap_or("").lines().next();
                    format!("{} ({}: {})", s.host, s.step, first.unwrap_or(""))
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        format!(
            "{} failed on {} of {} host(s): {detail}",
            self.action,
            failed.len().max(1),
            self.hosts.len(),
        )
    }
}
