//! Prometheus series shared by the controller's `/metrics` (every host) and each
//! agent's own (`metrics_listen`: its host): hosts (`fleet_host_*`) and instances
//! (`fleet_process_*`), encoded with `prometheus-client` straight from the protocol's
//! types. Names follow Prometheus' conventions: a `fleet_` prefix, base units in the name
//! (`_bytes`, `_seconds`, `_ratio` of one CPU), `_total` on counters. Label values are
//! escaped here (`\\`, `"`, newline): the crate writes them as given.

use std::borrow::Cow;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::agent::v1::{HostMetrics, ProcessInfo, ProcessStatus};

/// `\`, `"` and newlines escaped, as the text format wants label values.
pub fn escape(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// One metric family: its descriptor, then a series per label set.
pub fn family<L: EncodeLabelSet, V: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

pub fn status_name(status: i32) -> &'static str {
    match ProcessStatus::try_from(status).unwrap_or(ProcessStatus::Unspecified) {
        ProcessStatus::Launching => "launching",
        ProcessStatus::Online => "online",
        ProcessStatus::Stopping => "stopping",
        ProcessStatus::Stopped => "stopped",
        ProcessStatus::Errored => "errored",
        ProcessStatus::WaitingRestart => "waiting-restart",
        _ => "unknown",
    }
}

/// A host's view for the scrape: its name, whether reachable, when last seen, its
/// metrics and instances.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub reachable: bool,
    pub last_seen_ms: u64,
    pub metrics: Option<HostMetrics>,
    pub processes: Vec<ProcessInfo>,
}

type HostGauge = (&'static str, &'static str, fn(&HostMetrics) -> f64);

/// Host-wide gauges from the agents' host metrics.
const HOST_GAUGES: &[HostGauge] = &[
    ("fleet_host_cpus", "Online CPUs", |m| f64::from(m.cpus)),
    (
        "fleet_host_cpu_usage_ratio",
        "Busy share of all the host's CPUs over the agent's last interval (0 to 1)",
        |m| m.cpu_percent / 100.0,
    ),
    ("fleet_host_load1", "Load average over 1 minute", |m| {
        m.load1
    }),
    ("fleet_host_load5", "Load average over 5 minutes", |m| {
        m.load5
    }),
    ("fleet_host_load15", "Load average over 15 minutes", |m| {
        m.load15
    }),
    ("fleet_host_memory_total_bytes", "Memory of the host", |m| {
        m.memory_total_bytes as f64
    }),
    (
        "fleet_host_memory_available_bytes",
        "Memory that can be allocated without swapping (MemAvailable)",
        |m| m.memory_available_bytes as f64,
    ),
    (
        "fleet_host_swap_total_bytes",
        "Swap space of the host",
        |m| m.swap_total_bytes as f64,
    ),
    ("fleet_host_swap_free_bytes", "Unused swap space", |m| {
        m.swap_free_bytes as f64
    }),
    (
        "fleet_host_uptime_seconds",
        "Time since the host booted",
        |m| m.uptime_ms as f64 / 1000.0,
    ),
];

pub fn encode_hosts(
    encoder: &mut DescriptorEncoder<'_>,
    hosts: &[Host],
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        "fleet_host_up",
        "1 if the host's agent has a session with the controller",
        MetricType::Gauge,
        hosts.iter().map(|h| {
            (
                [("host", escape(&h.name))],
                ConstGauge::new(i64::from(h.reachable)),
            )
        }),
    )?;
    family(
        encoder,
        "fleet_host_last_seen_timestamp_seconds",
        "When the host's agent was last heard from (unix time)",
        MetricType::Gauge,
        (hosts.iter().filter(|h| h.last_seen_ms > 0)).map(|h| {
            (
                [("host", escape(&h.name))],
                ConstGauge::new(h.last_seen_ms as f64 / 1000.0),
            )
        }),
    )?;
    let measured: Vec<(&str, &HostMetrics)> = (hosts.iter())
        .filter_map(|h| h.metrics.as_ref().map(|m| (h.name.as_str(), m)))
        .collect();
    for (name, help, value) in HOST_GAUGES {
        family(
            encoder,
            name,
            help,
            MetricType::Gauge,
            measured
                .iter()
                .map(|(host, m)| ([("host", escape(host))], ConstGauge::new(value(m)))),
        )?;
    }
    let disks = || {
        measured.iter().flat_map(|(host, m)| {
            m.disks.iter().map(move |d| {
                let labels = [
                    ("host", escape(host)),
                    ("mountpoint", escape(&d.mount_point)),
                    ("fstype", escape(&d.fs_type)),
                ];
                (labels, d)
            })
        })
    };
    family(
        encoder,
        "fleet_host_filesystem_size_bytes",
        "Size of a filesystem holding FLEET_HOME or an app's working directory",
        MetricType::Gauge,
        disks().map(|(labels, d)| (labels, ConstGauge::new(d.total_bytes as f64))),
    )?;
    family(
        encoder,
        "fleet_host_filesystem_avail_bytes",
        "Space an unprivileged writer can still use on that filesystem",
        MetricType::Gauge,
        disks().map(|(labels, d)| (labels, ConstGauge::new(d.available_bytes as f64))),
    )
}

pub fn encode_processes(
    encoder: &mut DescriptorEncoder<'_>,
    hosts: &[Host],
) -> Result<(), std::fmt::Error> {
    let instances = || {
        hosts.iter().flat_map(|h| {
            h.processes.iter().map(move |p| {
                let labels = [
                    ("host", escape(&h.name)),
                    ("app", escape(&p.name)),
                    ("namespace", escape(&p.namespace)),
                    ("instance", Cow::Owned(p.instance.to_string())),
                ];
                (labels, p)
            })
        })
    };
    family(
        encoder,
        "fleet_process_status",
        "1 for the instance's current status (PM2's names), as the `status` label",
        MetricType::Gauge,
        instances().map(|([host, app, namespace, instance], p)| {
            let labels = [
                host,
                app,
                namespace,
                instance,
                ("status", Cow::Borrowed(status_name(p.status))),
            ];
            (labels, ConstGauge::new(1i64))
        }),
    )?;
    family(
        encoder,
        "fleet_process_restarts",
        "Restarts of the instance since it was started (PM2's ↺)",
        MetricType::Counter,
        instances().map(|(labels, p)| (labels, ConstCounter::new(u64::from(p.restarts)))),
    )?;
    family(
        encoder,
        "fleet_process_cpu_usage_ratio",
        "CPU of the instance's whole process tree (1 = one CPU)",
        MetricType::Gauge,
        instances().map(|(labels, p)| (labels, ConstGauge::new(p.cpu_percent / 100.0))),
    )?;
    family(
        encoder,
        "fleet_process_memory_bytes",
        "Resident memory of the instance's whole process tree",
        MetricType::Gauge,
        instances().map(|(labels, p)| (labels, ConstGauge::new(p.memory_bytes as f64))),
    )?;
    family(
        encoder,
        "fleet_process_uptime_seconds",
        "Time since the instance last went online",
        MetricType::Gauge,
        instances().filter_map(|(labels, p)| {
            (p.uptime_ms).map(|ms| (labels, ConstGauge::new(ms as f64 / 1000.0)))
        }),
    )
}

/// The registry's text: OpenMetrics, or Prometheus' classic text format (0.0.4) for a
/// scraper that did not ask for OpenMetrics.
pub fn render(
    registry: &prometheus_client::registry::Registry,
    openmetrics: bool,
) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(if openmetrics { text } else { classic(&text) })
}

/// OpenMetrics text as Prometheus' classic format: a counter's `HELP` and `TYPE` name
/// its samples' `_total` name, and the `# EOF` and `# UNIT` lines go.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = (openmetrics.lines())
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let openmetrics = "# HELP x_restarts Restarts.\n# TYPE x_restarts counter\nx_restarts_total{a=\"b\"} 7\n# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
        assert_eq!(
            classic(openmetrics),
            "# HELP x_restarts_total Restarts.\n# TYPE x_restarts_total counter\nx_restarts_total{a=\"b\"} 7\n# HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
