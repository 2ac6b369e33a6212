//! A stage reached through the controller: one TLS connection with a bearer token; the
//! controller fans out to the hosts' agents over their sessions.

use std::time::Duration;

use fleet_proto::controller::v1 as cpb;
use fleet_proto::controller::v1::fleet_service_client::FleetServiceClient;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{HostOutcome, LOG_QUEUE, LogItem, LogsQuery, StageApi, StageError};
use crate::stage::ControllerSettings;

/// TCP connect and TLS handshake with one controller: short, since the next URL of a
/// list (controllers sharing a store) is tried when one does not answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The most URLs one setting may list.
const MAX_CONTROLLER_URLS: usize = 16;

/// The URLs of a controller setting: one, or several sharing a store, comma-separated
/// (`FLEET_CONTROLLER=https://a:7443,https://b:7443`), each checked.
pub fn controller_urls(setting: &str) -> Result<Vec<String>, StageError> {
    let urls: Vec<String> = setting
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(StageError::Config("the controller URL is empty".into()));
    }
    if urls.len() > MAX_CONTROLLER_URLS {
        return Err(StageError::Config(format!(
            "more than {MAX_CONTROLLER_URLS} controller URLs"
        )));
    }
    for url in &urls {
        fleet_proto::ops::check_controller_url(url).map_err(StageError::Config)?;
    }
    Ok(urls)
}

/// A client of the controller's fleet API, carrying the bearer token.
pub type ControllerClient =
    FleetServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Connects to the controller and says hello (the controller refuses another major
/// version). With several URLs, each in order until one answers; the error names
/// every one that did not.
pub async fn connect_controller(
    settings: &ControllerSettings,
) -> Result<ControllerClient, StageError> {
    connect_controller_at(settings)
        .await
        .map(|(client, _)| client)
}

/// `connect_controller`, also saying which URL answered.
pub async fn connect_controller_at(
    settings: &ControllerSettings,
) -> Result<(ControllerClient, String), StageError> {
    let urls = controller_urls(&settings.url)?;
    let mut failures = Vec::new();
    for url in &urls {
        match connect_one(settings, url).await {
            Ok(client) => return Ok((client, url.clone())),
            Err(StageError::ControllerUnreachable { url, reason }) if urls.len() > 1 => {
                failures.push(format!("{url}: {reason}"));
            }
            Err(error) => return Err(error),
        }
    }
    Err(StageError::ControllerUnreachable {
        url: settings.url.clone(),
        reason: failures.join("; "),
    })
}

async fn connect_one(
    settings: &ControllerSettings,
    url: &str,
) -> Result<ControllerClient, StageError> {
    let tls = match super::trust::resolve(url, settings.ca.as_deref())? {
        super::trust::Trust::Pem(pem) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
        super::trust::Trust::System => ClientTlsConfig::new().with_enabled_roots(),
    };
    let channel = Endpoint::from_shared(url.to_owned())
        .map_err(|e| StageError::Config(format!("bad controller url {url}: {e}")))?
        .tls_config(tls)
        .map_err(|e| StageError::Config(format!("bad TLS settings: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| StageError::ControllerUnreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let value = format!("Bearer {}", settings.token).parse().map_err(|_| {
        StageError::Config("FLEET_TOKEN has characters a header cannot carry".to_string())
    })?;
    let mut client = FleetServiceClient::with_interceptor(channel, Bearer(value))
        .max_decoding_message_size(fleet_proto::ops::MAX_CONTROLLER_ANSWER_BYTES);
    client
        .hello(cpb::FleetHello {
            protocol_major: cpb::PROTOCOL_MAJOR,
            protocol_minor: cpb::PROTOCOL_MINOR,
            client_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(controller_error)?;
    Ok(client)
}

fn controller_error(status: tonic::Status) -> StageError {
    StageError::Controller(status.message().to_string())
}

pub(super) struct ControllerStage {
    pub(super) client: ControllerClient,
    pub(super) stage: cpb::Stage,
    /// Every controller URL: a follower whose controller dies follows through another.
    pub(super) settings: ControllerSettings,
}

/// How long a follower tries the controllers again after its own went away.
const REFOLLOW_FOR: Duration = Duration::from_secs(60);
/// The history asked for again after a reconnect, per instance: what the follower
/// missed meanwhile, as far as the agents' rings hold it (the rest is a notice).
const REFOLLOW_LINES: u32 = 1000;

async fn open_logs(
    client: &mut ControllerClient,
    stage: &cpb::Stage,
    query: &LogsQuery,
    lines: u32,
) -> Result<tonic::Streaming<fleet_proto::agent::v1::LogEntry>, tonic::Status> {
    Ok(client
        .logs(cpb::FleetLogsRequest {
            stage: Some(stage.clone()),
            targets: query.targets.clone(),
            lines,
            follow: query.follow,
        })
        .await?
        .into_inner())
}

fn notice(text: String) -> fleet_proto::agent::v1::LogEntry {
    fleet_proto::agent::v1::LogEntry {
        ts_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        notice: text,
        ..Default::default()
    }
}

/// Whether a stream's end is the controller going away (follow through another), not a
/// refusal that another controller would repeat.
fn went_away(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
    )
}

/// Passes `stream`'s lines on; when following and the controller goes away, follows
/// again through the first controller of `settings` that answers, asking for history
/// and printing only what was not printed (`resume::Printed`).
async fn follow_logs(
    mut stream: tonic::Streaming<fleet_proto::agent::v1::LogEntry>,
    settings: ControllerSettings,
    stage: cpb::Stage,
    query: LogsQuery,
    tx: mpsc::Sender<LogItem>,
) {
    let mut printed = super::resume::Printed::default();
    loop {
        let status = match stream.message().await {
            Ok(Some(entry)) => {
                let gap = match printed.admit(&entry) {
                    super::resume::Decision::Skip => continue,
                    super::resume::Decision::Print => None,
                    super::resume::Decision::Gap(missed) => Some(notice(format!(
                        "{missed} lines of {}#{} on {} were not shown while following through another controller (they are in the log files)",
                        entry.app, entry.instance, entry.host
                    ))),
                };
                if let Some(gap) = gap
                    && tx.send(Ok(gap)).await.is_err()
                {
                    return;
                }
                if tx.send(Ok(entry)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => return,
            Err(status) => status,
        };
        if !query.follow || !went_away(&status) {
            let _ = tx
                .send(Err(format!("controller: {}", status.message())))
                .await;
            return;
        }
        let said = format!(
            "the controller went away ({}); following through another",
            status.message()
        );
        if tx.send(Ok(notice(said))).await.is_err() {
            return;
        }
        let until = tokio::time::Instant::now() + REFOLLOW_FOR;
        stream = loop {
            let again = async {
                let mut client = connect_controller(&settings)
                    .await
                    .map_err(|e| e.to_string())?;
                open_logs(&mut client, &stage, &query, REFOLLOW_LINES.max(query.lines))
                    .await
                    .map_err(|s| s.message().to_owned())
            };
            match again.await {
                Ok(stream) => break stream,
                Err(error) if tokio::time::Instant::now() >= until => {
                    let _ = tx
                        .send(Err(format!("no controller to follow through: {error}")))
                        .await;
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        printed.reconnected();
    }
}

impl StageApi for ControllerStage {
    fn status(&mut self) -> BoxFuture<'_, Result<Vec<HostOutcome>, StageError>> {
        async move {
            let response = self
                .client
                .status(cpb::StatusRequest {
                    stage: Some(self.stage.clone()),
                })
                .await
                .map_err(controller_error)?
                .into_inner();
            let stale = response.stale;
            Ok(response
                .hosts
                .into_iter()
                .map(|h| HostOutcome {
                    stale,
                    result: if h.reachable {
                        Ok(h.processes)
                    } else {
                        Err(h.error)
                    },
                    last_seen_unix_ms: (h.last_seen_unix_ms > 0).then_some(h.last_seen_unix_ms),
                    metrics: h.metrics,
                    host: h.host,
                })
                .collect())
        }
        .boxed()
    }

    fn command(
        &mut self,
        action: cpb::Action,
        targets: Vec<String>,
        count: String,
    ) -> BoxFuture<'_, Result<Vec<HostOutcome>, StageError>> {
        async move {
            let response = self
                .client
                .command(cpb::CommandRequest {
                    stage: Some(self.stage.clone()),
                    action: action as i32,
                    targets,
                    count,
                })
                .await
                .map_err(controller_error)?
                .into_inner();
            Ok(response
                .hosts
                .into_iter()
                .map(|h| HostOutcome {
                    result: if h.ok { Ok(h.processes) } else { Err(h.error) },
                    host: h.host,
                    last_seen_unix_ms: None,
                    metrics: None,
                    stale: false,
                })
                .collect())
        }
        .boxed()
    }

    fn logs(
        &mut self,
        query: LogsQuery,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<LogItem>, StageError>> {
        async move {
            let stream = open_logs(&mut self.client, &self.stage, &query, query.lines)
                .await
                .map_err(controller_error)?;
            let (tx, rx) = mpsc::channel(LOG_QUEUE);
            let (settings, stage) = (self.settings.clone(), self.stage.clone());
            tokio::spawn(follow_logs(stream, settings, stage, query, tx));
            Ok(rx)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any setting: an error or at most the bound of https URLs, never a panic.
        #[test]
        fn any_controller_setting_is_read_without_panic(text in "\\PC{0,500}") {
            if let Ok(urls) = controller_urls(&text) {
                proptest::prop_assert!(!urls.is_empty() && urls.len() <= MAX_CONTROLLER_URLS);
                proptest::prop_assert!(urls.iter().all(|u| u.starts_with("https://")));
            }
        }
    }

    #[test]
    fn a_controller_setting_lists_one_or_several_https_urls() {
        assert_eq!(
            controller_urls("https://a:7443").unwrap(),
            ["https://a:7443"]
        );
        assert_eq!(
            controller_urls(" https://a:7443 , https://b:7443,").unwrap(),
            ["https://a:7443", "https://b:7443"]
        );
        assert!(controller_urls("https://a:7443,http://b:7443").is_err());
        assert!(controller_urls(" , ").is_err());
        let many = vec!["https://a:7443"; 17].join(",");
        assert!(controller_urls(&many).is_err());
    }
}
