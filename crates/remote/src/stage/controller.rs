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
    let mut client = FleetServiceClient::with_interceptor(channel, Bearer(value));
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
            let mut stream = self
                .client
                .logs(cpb::FleetLogsRequest {
                    stage: Some(self.stage.clone()),
                    targets: query.targets,
                    lines: query.lines,
                    follow: query.follow,
                })
                .await
                .map_err(controller_error)?
                .into_inner();
            let (tx, rx) = mpsc::channel(LOG_QUEUE);
            tokio::spawn(async move {
                loop {
                    let item = match stream.message().await {
                        Ok(Some(entry)) => Ok(entry),
                        Ok(None) => return,
                        Err(status) => Err(format!("controller: {}", status.message())),
                    };
                    let last = item.is_err();
                    if tx.send(item).await.is_err() || last {
                        return;
                    }
                }
            });
            Ok(rx)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
