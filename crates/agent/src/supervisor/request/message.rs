//! `SendMessage`: a message to the selected instances' Node IPC channel, which their
//! `process.on('message')` receives (PM2's `sendDataToProcessId`). Instances without
//! a channel (not Node, or not running) are named in the notes.

use crate::error::AgentError;
use crate::supervisor::{Reply, Supervisor};

impl Supervisor {
    pub(in crate::supervisor) fn send_message(
        &mut self,
        targets: &[String],
        message: serde_json::Value,
    ) -> Result<Reply, AgentError> {
        let ids = self.select(targets)?;
        let mut delivered = Vec::new();
        let mut notes = Vec::new();
        for id in ids {
            let instance = &self.instances[&id];
            match (instance.pid, instance.probes.channel.as_ref()) {
                (Some(_), Some(channel)) => {
                    channel.send(message.clone());
                    delivered.push(id);
                }
                (None, _) => notes.push(format!(
                    "{} (id {id}) is {}: no message sent",
                    instance.spec.name,
                    instance.core.status.as_str()
                )),
                (Some(_), None) => notes.push(format!(
                    "{} (id {id}) has no IPC channel: only Node apps receive messages",
                    instance.spec.name
                )),
            }
        }
        Ok(Reply::Touched(delivered, notes))
    }
}
