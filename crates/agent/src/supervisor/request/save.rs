//! `Save`, `Resurrect` and `Persist`: `dump.json` (PM2's `pm2 save` and `pm2
//! resurrect`) and `state.json` (what should run, written shortly after every change
//! and read back by the next agent).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::core::Input;
use crate::error::AgentError;
use crate::store::{SavedList, SavedProcess};
use crate::supervisor::{Msg, Reply, STATE_FLUSH_DELAY, Supervisor, millis_since_epoch};

impl Supervisor {
    pub(in crate::supervisor) fn save(&mut self, force: bool) -> Result<Reply, AgentError> {
        if self.instances.is_empty() && !force {
            return Err(AgentError::FailedPrecondition(
                "nothing to save: no app is registered\nhint: `fleet save --force` writes an empty list".into(),
            ));
        }
        let dump = self.home.dump_file();
        if dump.exists() {
            std::fs::copy(&dump, self.home.dump_backup()).map_err(|e| {
                AgentError::Internal(format!("cannot back up {}: {e}", dump.display()))
            })?;
        }
        let list = SavedList::new(self.saved());
        list.write(&dump)
            .map_err(|e| AgentError::Internal(format!("cannot write {}: {e}", dump.display())))?;
        Ok(Reply::Saved {
            path: dump.display().to_string(),
            apps: list.processes.len() as u32,
        })
    }

    /// Starts the apps of the saved list that are not running.
    pub(in crate::supervisor) fn resurrect(&mut self) -> Result<Reply, AgentError> {
        let (list, notes) = self.read_dump()?;
        let mut touched = Vec::new();
        let running: Vec<String> = (self.instances.values())
            .map(|instance| instance.spec.name.clone())
            .collect();
        for saved in list.processes {
            if running.contains(&saved.spec.name) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.insert(id, saved.instance, saved.spec, saved.restarts);
            if saved.wants_running {
                self.work.push_back((id, Input::Start));
            }
            touched.push(id);
        }
        Ok(Reply::Touched(touched, notes))
    }

    /// Brings back what the state file says was running. An instance whose process
    /// outlived the previous agent has been stopped already (see `daemon`).
    pub(in crate::supervisor) fn restore(&mut self, saved: Vec<SavedProcess>) {
        for mut entry in saved {
            let id = entry.id;
            self.share_env(&mut Arc::make_mut(&mut entry.spec).inherited_env);
            self.insert(id, entry.instance, entry.spec, entry.restarts);
            if let Some(instance) = self.instances.get_mut(&id) {
                instance.created_at = UNIX_EPOCH + Duration::from_millis(entry.created_at_ms);
            }
            if entry.wants_running {
                self.work.push_back((id, Input::Start));
            }
        }
        self.drain();
    }

    pub(in crate::supervisor) fn read_dump(&self) -> Result<(SavedList, Vec<String>), AgentError> {
        let dump = self.home.dump_file();
        let backup = self.home.dump_backup();
        match SavedList::read(&dump) {
            Ok(list) => Ok((list, Vec::new())),
            Err(dump_error) => match SavedList::read(&backup) {
                Ok(list) => {
                    if dump.exists() {
                        // PM2 deletes a corrupt dump so the next save starts clean;
                        // fleet keeps it aside for inspection instead.
                        let _ = std::fs::rename(&dump, dump.with_extension("json.corrupt"));
                    }
                    Ok((
                        list,
                        vec![format!("{dump_error}; restored from {}", backup.display())],
                    ))
                }
                Err(backup_error) => Err(AgentError::FailedPrecondition(format!(
                    "nothing to resurrect: {dump_error}; {backup_error}\nhint: `fleet save` writes the list"
                ))),
            },
        }
    }

    pub(in crate::supervisor) fn saved(&self) -> Vec<SavedProcess> {
        self.instances
            .values()
            .map(|p| SavedProcess {
                id: p.id,
                instance: p.instance,
                spec: Arc::clone(&p.spec),
                wants_running: p.core.wants_running(),
                restarts: p.core.restarts,
                pid: p.pid,
                start_ticks: p.start_ticks,
                created_at_ms: millis_since_epoch(p.created_at),
            })
            .collect()
    }

    pub(in crate::supervisor) fn schedule_flush(&mut self) {
        self.schedule_store_sync();
        if self.flush_pending || self.frozen {
            return;
        }
        self.flush_pending = true;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STATE_FLUSH_DELAY).await;
            let _ = tx.send(Msg::Flush);
        });
    }

    pub(in crate::supervisor) fn write_state(&mut self) {
        if self.frozen {
            return;
        }
        let path = self.home.state_file();
        if let Err(error) = SavedList::new(self.saved()).write(&path) {
            tracing::error!(path = %path.display(), %error, "cannot write the state file");
        }
    }
}
