//! `ReloadLock` and `ReloadUnlock`: one reload of an app at a time. The replacement
//! steps themselves (`BeginReplace`, `CommitReplace`, `AbortReplace`) live in
//! `supervisor/replace`, beside the process start they share.

use crate::error::AgentError;
use crate::supervisor::{Reply, Supervisor};

impl Supervisor {
    /// Marks apps as being reloaded; refused if one already is.
    pub(in crate::supervisor) fn reload_lock(
        &mut self,
        names: Vec<String>,
    ) -> Result<Reply, AgentError> {
        if let Some(busy) = names.iter().find(|n| self.reloading.contains(*n)) {
            return Err(AgentError::Busy(format!(
                "a reload of {busy} is already running\nhint: wait for it to finish"
            )));
        }
        self.reloading.extend(names);
        Ok(Reply::Touched(Vec::new(), Vec::new()))
    }

    pub(in crate::supervisor) fn reload_unlock(&mut self, names: Vec<String>) -> Reply {
        for name in names {
            self.reloading.remove(&name);
        }
        Reply::Touched(Vec::new(), Vec::new())
    }
}
