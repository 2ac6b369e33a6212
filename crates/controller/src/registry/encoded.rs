//! Hosts as `Status` sends them, encoded: a reachable host's processes, version and
//! metrics are encoded when its agent reports them (`HostState::encoded`) and copied at
//! every call, so answering for 10,000 hosts costs a copy of each, not an
//! encoding of every process (`fleet_proto::status`).

use bytes::Bytes;
use fleet_proto::controller::v1::HostStatus;
use fleet_proto::status::{Moment, encode_host, encode_reported};

use super::{HostState, HostView, Registry, lock};

/// One host's encoded `HostStatus`, and whether it is reachable from here.
#[derive(Debug, Clone)]
pub struct EncodedStatus {
    pub reachable: bool,
    pub bytes: Bytes,
}

impl Registry {
    /// `host` as `Status` shows it (what `view` holds), encoded.
    pub fn encoded_status(&self, host: &str) -> EncodedStatus {
        let Some(slot) = self.slot(host) else {
            let never = Moment {
                error: "never connected",
                ..Moment::default()
            };
            return EncodedStatus {
                reachable: false,
                bytes: encode_host(host, never, &[]),
            };
        };
        let mut state = lock(&slot);
        if self.is_reachable(&state) {
            return EncodedStatus {
                reachable: true,
                bytes: reachable(host, &mut state),
            };
        }
        let error = self.unreachable_because(&state).unwrap_or_default();
        let version = encode_reported(std::iter::empty(), &state.agent_version, None);
        let now = Moment {
            reachable: false,
            error: &error,
            last_seen_unix_ms: state.last_seen_unix_ms,
            since_unix_ms: state.last_seen_unix_ms,
        };
        EncodedStatus {
            reachable: false,
            bytes: encode_host(host, now, &version),
        }
    }

    /// `host`, encoded, if it is reachable from here; nothing is formatted for a host
    /// that is not (a controller asking its peers names thousands of those).
    pub fn encoded_if_reachable(&self, host: &str) -> Option<Bytes> {
        let slot = self.slot(host)?;
        let mut state = lock(&slot);
        self.is_reachable(&state)
            .then(|| reachable(host, &mut state))
    }
}

impl HostState {
    /// Encodes what the agent reported, now: its heartbeats move CPU and memory figures
    /// every few seconds, and a `Status` must still find every host encoded. A few
    /// microseconds per report, under the host's own lock.
    pub(super) fn reencode(&mut self) {
        self.encoded = Some(encode_reported(
            self.processes.values(),
            &self.agent_version,
            self.metrics.as_ref(),
        ));
    }
}

/// A reachable host, encoded: its reported part as last encoded (encoded now if a new
/// session has reported nothing yet).
fn reachable(host: &str, state: &mut HostState) -> Bytes {
    if state.encoded.is_none() {
        state.reencode();
    }
    let reported = state.encoded.clone().unwrap_or_default();
    let now = Moment {
        reachable: true,
        error: "",
        last_seen_unix_ms: state.last_seen_unix_ms,
        since_unix_ms: state.connected_unix_ms,
    };
    encode_host(host, now, &reported)
}

/// A host as a peer holding it sent it: what the dashboard shows of a host held here.
impl From<HostStatus> for HostView {
    fn from(status: HostStatus) -> HostView {
        HostView {
            reachable: status.reachable,
            error: status.error,
            last_seen_unix_ms: status.last_seen_unix_ms,
            since_unix_ms: status.since_unix_ms,
            processes: status.processes,
            agent_version: status.agent_version,
            metrics: status.metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fleet_proto::agent::v1::{HostMetrics, ProcessInfo};
    use fleet_proto::controller::v1::{AgentHello, Delta, HostStatus, Snapshot};
    use prost::Message;
    use tokio::sync::mpsc;

    use super::*;

    /// What `view` shows, as `Status` sent it before hosts were encoded ahead.
    fn viewed(registry: &Registry, host: &str) -> HostStatus {
        let view = registry.view(host);
        HostStatus {
            host: host.to_owned(),
            reachable: view.reachable,
            error: view.error,
            last_seen_unix_ms: view.last_seen_unix_ms,
            processes: view.processes,
            agent_version: view.agent_version,
            metrics: view.metrics,
            since_unix_ms: view.since_unix_ms,
        }
    }

    fn decoded(registry: &Registry, host: &str) -> HostStatus {
        HostStatus::decode(registry.encoded_status(host).bytes).unwrap()
    }

    fn process(id: u32, name: &str) -> ProcessInfo {
        ProcessInfo {
            id,
            name: name.to_owned(),
            status: fleet_proto::agent::v1::ProcessStatus::Online.into(),
            ..ProcessInfo::default()
        }
    }

    #[tokio::test]
    async fn the_encoded_host_follows_every_change_the_view_shows() {
        let registry = Registry::new(Duration::from_secs(60), Vec::new());
        assert_eq!(decoded(&registry, "h1"), viewed(&registry, "h1"));
        let (tx, _rx) = mpsc::channel(4);
        let hello = AgentHello {
            host: "h1".into(),
            agent_version: "1.0.0".into(),
            boot_id: "b".into(),
            ..AgentHello::default()
        };
        let handle = registry.connect(&hello, "serial", tx);
        let check = || {
            let (encoded, view) = (decoded(&registry, "h1"), viewed(&registry, "h1"));
            assert_eq!(encoded, view);
            let if_reachable = registry.encoded_if_reachable("h1");
            assert_eq!(if_reachable.is_some(), view.reachable);
            encoded
        };
        check();
        handle.snapshot(Snapshot {
            seq: 1,
            processes: vec![process(0, "api"), process(1, "worker")],
        });
        assert_eq!(check().processes.len(), 2);
        handle.delta(Delta {
            seq: 2,
            changed: vec![ProcessInfo {
                restarts: 4,
                ..process(1, "worker")
            }],
            removed: vec![0],
        });
        // Encoded as the delta came, not at the next Status.
        let slot = registry.slot("h1").unwrap();
        assert!(lock(&slot).encoded.is_some());
        assert_eq!(check().processes[0].restarts, 4);
        handle.host_metrics(HostMetrics {
            cpu_percent: 50.0,
            ..HostMetrics::default()
        });
        assert!(check().metrics.is_some());
        handle.disconnect("gone");
        let encoded = check();
        assert!(!encoded.reachable);
        assert!(encoded.error.contains("gone"), "{}", encoded.error);
    }
}
