//! `StatusResponse` written by hand (`build.rs` maps the message here), so a
//! controller answering for thousands of hosts can send each host as bytes it encoded
//! once, when the host last changed, instead of encoding every host at every call.
//! On the wire it is the message `controller.proto` declares: a client decodes
//! `hosts` as from any other server.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

use crate::agent::v1::{HostMetrics, ProcessInfo};
use crate::controller::v1::HostStatus;

/// Every instance on every host of a stage, and the hosts that cannot be reached.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct StatusResponse {
    /// The hosts, decoded (what a client reads; a server may fill it too).
    pub hosts: Vec<HostStatus>,
    /// 1.6: the controller's store is unavailable: this is the controller's memory,
    /// which may be out of date (it refuses every write meanwhile).
    pub stale: bool,
    /// Hosts a server encoded already, one encoded `HostStatus` each, sent before
    /// `hosts` as the same repeated field. Never filled by decoding.
    pub encoded: Vec<Bytes>,
}

const HOSTS: u32 = 1;
const STALE: u32 = 2;

impl prost::Message for StatusResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for host in &self.encoded {
            encoding::encode_key(HOSTS, WireType::LengthDelimited, buf);
            encoding::encode_varint(host.len() as u64, buf);
            buf.put_slice(host);
        }
        for host in &self.hosts {
            encoding::message::encode(HOSTS, host, buf);
        }
        if self.stale {
            encoding::bool::encode(STALE, &self.stale, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            HOSTS => encoding::message::merge_repeated(wire_type, &mut self.hosts, buf, ctx),
            STALE => encoding::bool::merge(wire_type, &mut self.stale, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let key = encoding::key_len(HOSTS);
        let encoded: usize = (self.encoded.iter())
            .map(|host| key + encoding::encoded_len_varint(host.len() as u64) + host.len())
            .sum();
        let stale = if self.stale {
            encoding::bool::encoded_len(STALE, &self.stale)
        } else {
            0
        };
        encoded + encoding::message::encoded_len_repeated(HOSTS, &self.hosts) + stale
    }

    fn clear(&mut self) {
        self.hosts.clear();
        self.stale = false;
        self.encoded.clear();
    }
}

/// A `HostStatus`'s processes, agent version and metrics, encoded: what changes only
/// when the agent reports something, kept to be sent again behind `encode_host`'s
/// fields.
pub fn encode_reported<'a>(
    processes: impl Iterator<Item = &'a ProcessInfo>,
    agent_version: &str,
    metrics: Option<&HostMetrics>,
) -> Bytes {
    let mut buf = Vec::new();
    for process in processes {
        encoding::message::encode(5, process, &mut buf);
    }
    if !agent_version.is_empty() {
        encoding::string::encode(6, &agent_version.to_owned(), &mut buf);
    }
    if let Some(metrics) = metrics {
        encoding::message::encode(7, metrics, &mut buf);
    }
    buf.into()
}

/// What changes of a host with time, not with what its agent reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moment<'a> {
    pub reachable: bool,
    pub error: &'a str,
    pub last_seen_unix_ms: u64,
    pub since_unix_ms: u64,
}

/// A whole encoded `HostStatus`: `host` and `now`'s fields around `reported`
/// (`encode_reported`'s bytes, or what an unreachable host shows of itself). The same
/// bytes as encoding a `HostStatus` with these fields (they go in field order).
pub fn encode_host(host: &str, now: Moment<'_>, reported: &[u8]) -> Bytes {
    let Moment {
        reachable,
        error,
        last_seen_unix_ms,
        since_unix_ms,
    } = now;
    let mut buf = Vec::with_capacity(host.len() + error.len() + 24 + reported.len());
    if !host.is_empty() {
        encoding::encode_key(1, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(host.len() as u64, &mut buf);
        buf.put_slice(host.as_bytes());
    }
    if reachable {
        encoding::bool::encode(2, &reachable, &mut buf);
    }
    if !error.is_empty() {
        encoding::encode_key(3, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(error.len() as u64, &mut buf);
        buf.put_slice(error.as_bytes());
    }
    if last_seen_unix_ms != 0 {
        encoding::uint64::encode(4, &last_seen_unix_ms, &mut buf);
    }
    buf.put_slice(reported);
    if since_unix_ms != 0 {
        encoding::uint64::encode(8, &since_unix_ms, &mut buf);
    }
    buf.into()
}

/// The first fields of an encoded `HostStatus`: what a controller merging its peers'
/// answers needs, read without decoding the processes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HostStatusHead {
    #[prost(string, tag = "1")]
    pub host: String,
    #[prost(bool, tag = "2")]
    pub reachable: bool,
}

/// An encoded `HostStatus`, decoded whole.
pub fn decode_host(encoded: Bytes) -> Result<HostStatus, prost::DecodeError> {
    <HostStatus as prost::Message>::decode(encoded)
}

impl HostStatusHead {
    /// The head of an encoded `HostStatus` (the rest skipped, not decoded).
    pub fn of(encoded: &[u8]) -> Result<HostStatusHead, prost::DecodeError> {
        <HostStatusHead as prost::Message>::decode(encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn host(name: &str, processes: u32) -> HostStatus {
        HostStatus {
            host: name.to_owned(),
            reachable: processes > 0,
            error: if processes > 0 { "" } else { "gone" }.to_owned(),
            last_seen_unix_ms: 1_700_000_000_000,
            processes: (0..processes)
                .map(|id| ProcessInfo {
                    id,
                    name: format!("app-{id}"),
                    pid: Some(1000 + id),
                    ..ProcessInfo::default()
                })
                .collect(),
            agent_version: "1.2.3".to_owned(),
            metrics: Some(HostMetrics {
                cpu_percent: 12.5,
                ..HostMetrics::default()
            }),
            since_unix_ms: if processes > 1 { 1_600_000_000_000 } else { 0 },
        }
    }

    #[test]
    fn encoded_hosts_decode_as_hosts_in_order() {
        let hosts: Vec<HostStatus> = (0..5).map(|i| host(&format!("h{i}"), i)).collect();
        let plain = StatusResponse {
            hosts: hosts.clone(),
            stale: true,
            encoded: Vec::new(),
        };
        let encoded = StatusResponse {
            encoded: hosts.iter().map(|h| h.encode_to_vec().into()).collect(),
            stale: true,
            hosts: Vec::new(),
        };
        let (a, b) = (plain.encode_to_vec(), encoded.encode_to_vec());
        assert_eq!(a, b, "the same bytes either way");
        assert_eq!(encoded.encoded_len(), b.len());
        let decoded = StatusResponse::decode(b.as_slice()).unwrap();
        assert_eq!(decoded.hosts, hosts);
        assert!(decoded.stale);
        assert!(decoded.encoded.is_empty());
    }

    #[test]
    fn a_host_encoded_in_two_parts_is_the_host_encoded_whole() {
        for status in [host("web-1", 3), host("", 0), host("down", 0)] {
            let reported = encode_reported(
                status.processes.iter(),
                &status.agent_version,
                status.metrics.as_ref(),
            );
            let now = Moment {
                reachable: status.reachable,
                error: &status.error,
                last_seen_unix_ms: status.last_seen_unix_ms,
                since_unix_ms: status.since_unix_ms,
            };
            let parts = encode_host(&status.host, now, &reported);
            assert_eq!(parts.as_ref(), status.encode_to_vec().as_slice());
        }
    }

    #[test]
    fn the_head_reads_name_and_reachability_only() {
        let bytes = host("web-1", 3).encode_to_vec();
        let head = HostStatusHead::of(&bytes).unwrap();
        assert_eq!(head.host, "web-1");
        assert!(head.reachable);
    }

    #[test]
    fn unknown_fields_and_truncation_never_panic() {
        let mut bytes = StatusResponse {
            hosts: vec![host("a", 2)],
            stale: true,
            encoded: Vec::new(),
        }
        .encode_to_vec();
        // An unknown field 9 (varint) a newer controller might send.
        bytes.extend_from_slice(&[9 << 3, 1]);
        let decoded = StatusResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.hosts.len(), 1);
        for cut in 0..bytes.len() {
            let _ = StatusResponse::decode(&bytes[..cut]);
        }
    }
}
