//! The agent's own `/metrics` (`metrics_listen` in `agent.toml`; off by default, on
//! loopback when given a bare port): this host and its instances, the same series the
//! controller serves for every host (`fleet_proto::metrics`), and the agent process
//! itself (`process_*`, as Prometheus' client libraries name them). Plain HTTP/1 with
//! hyper: a header deadline, a bounded head, `GET /metrics` and nothing else.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleet_proto::agent::v1 as pb;
use fleet_proto::metrics::{Host, encode_hosts, encode_processes, family};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::operations::Operations;

/// A request's head must arrive within this, and hold at most this much.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Scrapes answered at once; more wait (a scrape lists every instance).
const MAX_CONCURRENT: usize = 4;

/// Serves `/metrics` on `listener` for as long as the agent runs.
pub async fn serve(listener: TcpListener, operations: Operations) {
    let turns = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (operations, turns) = (operations.clone(), turns.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (operations, turns) = (operations.clone(), turns.clone());
                async move { Ok::<_, Infallible>(answer(request, &operations, &turns).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "metrics connection ended");
            }
        });
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    operations: &Operations,
    turns: &tokio::sync::Semaphore,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let openmetrics = (request.headers().get(header::ACCEPT))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let Ok(_turn) = turns.acquire().await else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
    };
    let list = operations.list(pb::ListRequest::default()).await;
    let Ok(list) = list else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is not answering\n",
        );
    };
    let host = Host {
        name: operations.host().to_owned(),
        reachable: true,
        last_seen_ms: crate::operations::now_ms(),
        metrics: list.host,
        processes: list.processes,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector { host }));
    let Ok(text) = fleet_proto::metrics::render(&registry, openmetrics) else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        );
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let kind = match openmetrics {
        true => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        false => "text/plain; version=0.0.4; charset=utf-8",
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    response
}

/// One scrape's data: this host as the agent sees it now.
#[derive(Debug)]
struct AgentCollector {
    host: Host,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let hosts = std::slice::from_ref(&self.host);
        encode_hosts(&mut encoder, hosts)?;
        encode_processes(&mut encoder, hosts)?;
        encode_self(&mut encoder)
    }
}

/// The agent process itself: memory, CPU, start time, open descriptors, version.
fn encode_self(encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let none: [(&str, &str); 0] = [];
    family(
        encoder,
        "fleet_agent_info",
        "The agent's version",
        MetricType::Gauge,
        [(
            [("version", env!("CARGO_PKG_VERSION"))],
            ConstGauge::new(1i64),
        )],
    )?;
    let Ok(me) = procfs::process::Process::myself() else {
        return Ok(());
    };
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    if let Ok(stat) = me.stat() {
        let cpu = (stat.utime + stat.stime) as f64 / ticks;
        family(
            encoder,
            "process_cpu_seconds",
            "CPU time of the agent process",
            MetricType::Counter,
            [(none, ConstCounter::new(cpu))],
        )?;
        family(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory of the agent process",
            MetricType::Gauge,
            [(none, ConstGauge::new((stat.rss * page) as f64))],
        )?;
        if let Ok(boot) = procfs::boot_time_secs() {
            let started = boot as f64 + stat.starttime as f64 / ticks;
            family(
                encoder,
                "process_start_time_seconds",
                "When the agent process started (unix time)",
                MetricType::Gauge,
                [(none, ConstGauge::new(started))],
            )?;
        }
    }
    if let Ok(fds) = me.fd_count() {
        family(
            encoder,
            "process_open_fds",
            "Open descriptors of the agent process",
            MetricType::Gauge,
            [(none, ConstGauge::new(fds as i64))],
        )?;
    }
    Ok(())
}
