//! `/metrics`: every host and instance the registry holds, the deploys in the audit
//! log, and the controller's own sessions and latencies, in Prometheus' (OpenMetrics)
//! text format through `prometheus-client`. Host and instance series are encoded at
//! each scrape straight from the registry (a `Collector`), so nothing is kept twice
//! and a host that leaves the fleet leaves the scrape.
//!
//! Names follow Prometheus' conventions: a `fleet_` prefix, base units in the name
//! (`_bytes`, `_seconds`, `_ratio` of one CPU), `_total` on counters, and one series
//! per label set. Label values are escaped here (`\`, `"`, newline): the crate writes
//! them as given.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use fleet_proto::metrics::render;
use fleet_proto::metrics::{Host, encode_hosts, encode_processes, escape, family};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::registry::lock;
use crate::server::Controller;

/// Latency buckets: 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

type RpcFamily = Family<[(&'static str, String); 1], Histogram, fn() -> Histogram>;

/// What the controller measures about itself: each RPC's latency by method, and the
/// store's (queue wait plus the query).
#[derive(Clone)]
pub struct Telemetry {
    rpc: RpcFamily,
    pub store: Histogram,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            rpc: Family::new_with_constructor(latency_histogram),
            store: latency_histogram(),
        }
    }
}

/// The gRPC methods the controller serves: any other path is counted as `other`, so
/// a client cannot grow the label set.
const METHODS: &[&str] = &[
    "AgentLink/Join",
    "AgentLink/Session",
    "FleetService/Hello",
    "FleetService/Status",
    "FleetService/Command",
    "FleetService/Logs",
    "FleetService/CreateJoinToken",
    "FleetService/RecordDeploy",
];

impl Telemetry {
    /// One RPC on `path` (`/fleet.controller.v1.FleetService/Status`) took `took`.
    pub fn rpc(&self, path: &str, took: Duration) {
        let method = path
            .strip_prefix("/fleet.controller.v1.")
            .filter(|method| METHODS.contains(method))
            .unwrap_or("other");
        (self.rpc.get_or_create(&[("method", method.to_owned())])).observe(took.as_secs_f64());
    }
}

/// Deploys recorded in the audit log, by stage, action and outcome: loaded at start,
/// counted up as `RecordDeploy` writes more.
#[derive(Default)]
pub struct DeployCounts(Mutex<BTreeMap<(String, String, String), u64>>);

impl DeployCounts {
    /// The outcome of a deploy from its audit result (`ok`, `failed on web2`,
    /// `failed on web2; rolled back`).
    pub fn outcome(result: &str) -> &'static str {
        if result == "ok" {
            "ok"
        } else if result.contains("rolled back") {
            "rolled_back"
        } else {
            "failed"
        }
    }

    pub fn load(&self, counts: Vec<(String, String, String, u64)>) {
        let mut map = lock(&self.0);
        for (stage, action, outcome, count) in counts {
            *map.entry((stage, action, outcome)).or_default() += count;
        }
    }

    pub fn count(&self, stage: &str, action: &str, result: &str) {
        let key = (
            stage.to_owned(),
            action.to_owned(),
            Self::outcome(result).to_owned(),
        );
        *lock(&self.0).entry(key).or_default() += 1;
    }
}

/// The registry behind `/metrics`: the telemetry's histograms and a collector over
/// the controller's hosts.
pub(crate) fn registry(controller: &Arc<Controller>) -> Registry {
    let mut registry = Registry::default();
    let telemetry = &controller.telemetry;
    registry.register(
        "fleet_controller_rpc_duration_seconds",
        "Time to answer a gRPC call (to its first message for a stream), by method",
        telemetry.rpc.clone(),
    );
    registry.register(
        "fleet_controller_store_duration_seconds",
        "Time a database call waited for and took",
        telemetry.store.clone(),
    );
    registry.register_collector(Box::new(FleetCollector {
        controller: Arc::downgrade(controller),
    }));
    registry
}

#[derive(Debug)]
struct FleetCollector {
    controller: Weak<Controller>,
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(controller) = self.controller.upgrade() else {
            return Ok(());
        };
        // On a shared store each host is reported by one controller: its holder.
        let hosts: Vec<Host> = (crate::peers::own_views(&controller).into_iter())
            .map(|(name, view)| Host {
                name,
                reachable: view.reachable,
                last_seen_ms: view.last_seen_unix_ms,
                metrics: view.metrics,
                processes: view.processes,
            })
            .collect();
        encode_hosts(&mut encoder, &hosts)?;
        encode_processes(&mut encoder, &hosts)?;
        let deploys = lock(&controller.deploys.0).clone();
        family(
            &mut encoder,
            "fleet_deploys",
            "Deploys recorded in the audit log, by stage, action and outcome (ok, failed, rolled_back)",
            MetricType::Counter,
            deploys.iter().map(|((stage, action, outcome), count)| {
                let labels = [
                    ("stage", escape(stage)),
                    ("action", escape(action)),
                    ("outcome", Cow::Borrowed(outcome.as_str())),
                ];
                (labels, ConstCounter::new(*count))
            }),
        )?;
        let sessions = hosts.iter().filter(|h| h.reachable).count();
        family(
            &mut encoder,
            "fleet_controller_sessions",
            "Agents with an open session to this controller",
            MetricType::Gauge,
            [([("controller", "self")], ConstGauge::new(sessions as i64))],
        )?;
        family(
            &mut encoder,
            "fleet_controller_hosts",
            "Hosts this controller reports (joined, not removed; on a shared store, not those a live peer holds)",
            MetricType::Gauge,
            [(
                [("controller", "self")],
                ConstGauge::new(hosts.len() as i64),
            )],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_outcomes_come_from_the_audit_result() {
        assert_eq!(DeployCounts::outcome("ok"), "ok");
        assert_eq!(DeployCounts::outcome("failed on web2"), "failed");
        assert_eq!(
            DeployCounts::outcome("failed on web2; rolled back"),
            "rolled_back"
        );
    }

    #[test]
    fn unknown_rpc_paths_share_one_label() {
        let telemetry = Telemetry::default();
        telemetry.rpc(
            "/fleet.controller.v1.FleetService/Status",
            Duration::from_millis(3),
        );
        for n in 0..100 {
            telemetry.rpc(&format!("/x.y/Guess{n}"), Duration::from_millis(1));
        }
        let mut registry = Registry::default();
        registry.register("rpc", "h", telemetry.rpc.clone());
        let text = render(&registry, true).unwrap();
        assert!(text.contains("method=\"FleetService/Status\""), "{text}");
        assert!(text.contains("rpc_count{method=\"other\"} 100"), "{text}");
        assert_eq!(text.matches("_count{").count(), 2, "{text}");
    }
}
