//! The supervisor's requests, one file each as pueue's message handlers are: this
//! file dispatches, `start` creates and configures instances, `stop` stops, deletes,
//! resets and signals them, `list` selects and shows them, `save` persists and
//! restores the process list, `replace` locks reloads and steps replacements, and
//! `message` writes to Node apps' IPC channels.

mod list;
mod message;
mod replace;
mod save;
mod start;
mod stop;

use super::{Reply, Request, Supervisor};
use crate::core::Input;
use crate::error::AgentError;

impl Supervisor {
    pub(super) fn on_request(&mut self, request: Request) -> Result<Reply, AgentError> {
        match request {
            Request::Start {
                targets,
                apps,
                force,
                from_config,
                update_env,
            } => self.start_request(targets, apps, force, from_config, update_env),
            Request::Restart {
                targets,
                apps,
                update_env,
            } => self.restart_request(targets, apps, update_env),
            Request::Stop { targets } => self.for_each(&targets, Input::Stop),
            Request::Delete { targets } => self.for_each(&targets, Input::Delete),
            Request::Reset { targets } => self.for_each(&targets, Input::Reset),
            Request::Signal { targets, signal } => self.signal(&targets, signal),
            Request::StopAll { forget } => Ok(self.stop_all(forget)),
            Request::List { targets, details } => self.list(&targets, details),
            Request::Views { ids } => Ok(self.views(&ids)),
            Request::Save { force } => self.save(force),
            Request::Resurrect => self.resurrect(),
            Request::Persist => {
                self.write_state();
                self.clear_store();
                Ok(Reply::Touched(Vec::new(), Vec::new()))
            }
            Request::Apply { apps, update_env } => self.apply(apps, update_env),
            Request::RefreshEnv { targets, env } => {
                let ids = self.select(&targets)?;
                self.refresh_env(&ids, Some(&env));
                Ok(Reply::Touched(ids, Vec::new()))
            }
            Request::ReloadLock { names } => self.reload_lock(names),
            Request::ReloadUnlock { names } => Ok(self.reload_unlock(names)),
            Request::BeginReplace { id } => self.begin_replace(id),
            Request::CommitReplace { id } => {
                self.commit_replace(id);
                Ok(Reply::Touched(vec![id], Vec::new()))
            }
            Request::AbortReplace { id, reason } => {
                self.abort_replace(id, reason);
                Ok(Reply::Touched(vec![id], Vec::new()))
            }
            Request::Scale { name, to } => self.scale(&name, to),
            Request::SendMessage { targets, message } => self.send_message(&targets, message),
        }
    }
}
