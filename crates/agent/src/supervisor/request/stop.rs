//! `Stop`, `Delete`, `Reset`, `StopAll` and `Signal`: inputs queued for the selected
//! instances' state machines, or a signal to their main processes.

use nix::sys::signal::Signal;

use crate::core::{Input, Status};
use crate::error::AgentError;
use crate::supervisor::{Reply, Supervisor};

impl Supervisor {
    pub(in crate::supervisor) fn for_each(
        &mut self,
        targets: &[String],
        input: Input,
    ) -> Result<Reply, AgentError> {
        let ids = self.select(targets)?;
        for &id in &ids {
            if matches!(input, Input::Stop | Input::Delete) {
                // A stop wins over a reload in progress: the previous process goes back
                // in place and is stopped like any other.
                self.abort_replace(id, "stopped during the reload".into());
            }
            self.work.push_back((id, input.clone()));
        }
        Ok(Reply::Touched(ids, Vec::new()))
    }

    /// Stops every app; with `forget`, deletes them (`fleet kill`), otherwise keeps
    /// them in the state file so the next agent brings them back.
    pub(in crate::supervisor) fn stop_all(&mut self, forget: bool) -> Reply {
        if !forget {
            // Keep what should run next time before the stops change it.
            self.write_state();
            self.frozen = true;
        }
        let input = if forget { Input::Delete } else { Input::Stop };
        let ids: Vec<u32> = self.instances.keys().copied().collect();
        for &id in &ids {
            self.work.push_back((id, input.clone()));
        }
        Reply::Touched(ids, Vec::new())
    }

    /// PM2 signals the main pid only; so does fleet, so an app can handle a signal
    /// for its workers itself.
    pub(in crate::supervisor) fn signal(
        &mut self,
        targets: &[String],
        signal: Signal,
    ) -> Result<Reply, AgentError> {
        let ids = self.select(targets)?;
        let mut notes = Vec::new();
        for &id in &ids {
            let instance = &self.instances[&id];
            match instance
                .pid
                .filter(|_| instance.core.status == Status::Online)
            {
                Some(pid) => {
                    if let Err(error) =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                    {
                        notes.push(format!("{} (id {id}): {error}", instance.spec.name));
                    }
                }
                None => notes.push(format!(
                    "{} (id {id}) is {}, no signal sent",
                    instance.spec.name,
                    instance.core.status.as_str()
                )),
            }
        }
        Ok(Reply::Touched(ids, notes))
    }
}
