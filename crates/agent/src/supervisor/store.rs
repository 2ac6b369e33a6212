//! The supervisor's side of systemd's file descriptor store (`crate::fdstore`): a
//! moment after the table changes, the store is made to hold the table as a handoff
//! would carry it, with other descriptors of every pipe, socket and channel (nothing
//! stops or changes hands: this image carries on).

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::time::Instant;

use super::handoff::{
    NodeSocketCarry, PipeDoc, PortCarry, SupervisorCarry, channel_doc, instance_carry, proxy_doc,
};
use super::replace::AppPort;
use super::{Msg, Supervisor};
use crate::handoff::Outgoing;

/// How long after a change the store is brought up to date: changes in a burst (a
/// reload, a crash loop) are written once.
const STORE_SYNC_DELAY: Duration = Duration::from_millis(250);

impl Supervisor {
    pub(super) fn schedule_store_sync(&mut self) {
        if self.store.is_none() || self.store_pending || self.frozen {
            return;
        }
        self.store_pending = true;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STORE_SYNC_DELAY).await;
            let _ = tx.send(Msg::StoreSync);
        });
    }

    pub(super) fn sync_store(&mut self) {
        self.store_pending = false;
        if self.frozen {
            return;
        }
        let Some(mut store) = self.store.take() else {
            return;
        };
        let (carry, out) = self.store_carry();
        store.sync(carry, out);
        self.store = Some(store);
    }

    /// Empties the store: the apps were stopped and the agent exits.
    pub(super) fn clear_store(&mut self) {
        if let Some(mut store) = self.store.take() {
            store.clear();
        }
    }

    /// The table as `hand_over` writes it, with copies of the descriptors.
    fn store_carry(&self) -> (SupervisorCarry, Outgoing) {
        let mut out = Outgoing::default();
        let now = Instant::now();
        let mut carry = SupervisorCarry {
            next_id: self.next_id,
            next_generation: self.next_generation,
            ..SupervisorCarry::default()
        };
        for p in self.instances.values() {
            let notify = (p.probes.notify.as_ref())
                .and_then(crate::readiness::NotifySocket::copy)
                .map(|(path, fd)| (path, out.put(fd)));
            let channel = (p.probes.channel.as_ref())
                .and_then(|channel| channel.copy().ok())
                .map(|channel| channel_doc(channel, &mut out));
            carry
                .instances
                .push(instance_carry(p, now, notify, channel));
        }
        for (app, port) in &self.ports {
            if let Some(port) = copy_port(app, port, &mut out) {
                carry.ports.push(port);
            }
        }
        for (app, sockets) in &self.node_sockets {
            for (address, socket) in sockets {
                let Ok(fd) = socket.fd.try_clone() else {
                    continue;
                };
                carry.node_sockets.push(NodeSocketCarry {
                    app: app.clone(),
                    address: address.clone(),
                    fd: out.put(fd),
                    kind: socket.kind,
                    unix_path: socket.unix_path.clone(),
                });
            }
        }
        for (id, stream, fd) in self.hub.pipes_for_store() {
            carry.pipes.push(PipeDoc {
                id,
                stream,
                fd: out.put(fd),
                pending: Vec::new(),
            });
        }
        (carry, out)
    }
}

fn copy_port(app: &str, port: &AppPort, out: &mut Outgoing) -> Option<PortCarry> {
    match port {
        AppPort::Shared { port, listener } => {
            let listener = OwnedFd::from(listener.try_clone().ok()?);
            Some(PortCarry {
                app: app.to_string(),
                port: *port,
                proxy: false,
                listener: out.put(listener),
                steering: None,
            })
        }
        AppPort::Proxy { port, proxy } => {
            Some(proxy_doc(app.to_string(), *port, proxy.copy().ok()?, out))
        }
    }
}
