//! Delivering alerts: each alert becomes one row per target in the store's outbox
//! (`alert_deliveries`) before anything is sent, so a delivery survives a controller
//! restart; a worker sends what is due, retries failures with exponential backoff (1 s
//! doubling to 5 min) for up to a day, and writes every outcome to the audit log.
//! Webhooks are POSTed over HTTPS (hyper's HTTP/1 client on rustls, the system's roots
//! or the target's `ca_file`); email goes through lettre's SMTP client.

use std::sync::Arc;
use std::time::Duration;

use crate::params;
use crate::store::{Db, DbResult, OptionalExtension};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::config::{Format, Target};
use super::rules::{Alert, Key};

/// One attempt may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Retries back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A delivery still failing after this is given up (and audited).
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Deliveries attempted per round.
const BATCH: u32 = 16;

/// An alert as stored and sent.
pub fn payload(alert: &Alert) -> Value {
    let key = &alert.key;
    let deploy = key.kind == super::rules::Kind::DeployFailed;
    let at = jiff::Timestamp::from_millisecond(alert.at_ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut value = json!({
        "source": "fleet",
        "alert": key.kind.as_str(),
        "state": alert.state.as_str(),
        "summary": alert.summary,
        "at": at,
        "at_ms": alert.at_ms,
        "key": key.encode(),
    });
    if deploy {
        value["stage"] = json!(key.host);
        value["action"] = json!(key.app);
    } else {
        value["host"] = json!(key.host);
        if !key.app.is_empty() {
            value["app"] = json!(key.app);
            value["instance"] = json!(key.instance);
        }
    }
    value
}

/// Queues `alert` for every target (`alert_deliveries`), due now.
pub fn enqueue(conn: &dyn Db, targets: &[String], alert: &Value, now_ms: u64) -> DbResult<()> {
    let payload = alert.to_string();
    for target in targets {
        conn.execute(
            "INSERT INTO alert_deliveries (created_at, target, payload, attempts, next_at)
             VALUES (?1, ?2, ?3, 0, ?1)",
            params![now_ms as i64, target, payload],
        )?;
    }
    Ok(())
}

/// A delivery waiting to be sent.
#[derive(Debug)]
pub struct Due {
    pub id: i64,
    pub created_ms: u64,
    pub target: String,
    pub payload: Value,
    pub attempts: u32,
}

pub fn due(conn: &dyn Db, now_ms: u64) -> DbResult<Vec<Due>> {
    conn.query_map(
        "SELECT id, created_at, target, payload, attempts FROM alert_deliveries
         WHERE done_at IS NULL AND next_at <= ?1 ORDER BY next_at, id LIMIT ?2",
        params![now_ms as i64, BATCH],
        |row| {
            let payload: String = row.get(3)?;
            Ok(Due {
                id: row.get(0)?,
                created_ms: row.get::<_, i64>(1)? as u64,
                target: row.get(2)?,
                payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
                attempts: row.get(4)?,
            })
        },
    )
}

/// When the next delivery is due, if any is waiting.
pub fn next_due(conn: &dyn Db) -> DbResult<Option<u64>> {
    conn.query_row(
        "SELECT min(next_at) FROM alert_deliveries WHERE done_at IS NULL",
        params![],
        |row| row.get::<_, Option<i64>>(0),
    )
    .optional()
    .map(|at| at.flatten().map(|at| at as u64))
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retry { after: Duration, error: String },
    GaveUp(String),
}

/// Records an attempt's outcome on its row.
pub fn record(conn: &dyn Db, due: &Due, outcome: &Outcome, now_ms: u64) -> DbResult<()> {
    let attempts = due.attempts + 1;
    match outcome {
        Outcome::Delivered => conn.execute(
            "UPDATE alert_deliveries SET attempts = ?2, done_at = ?3, last_error = NULL WHERE id = ?1",
            params![due.id, attempts, now_ms as i64],
        ),
        Outcome::Retry { after, error } => conn.execute(
            "UPDATE alert_deliveries SET attempts = ?2, next_at = ?3, last_error = ?4 WHERE id = ?1",
            params![due.id, attempts, (now_ms + after.as_millis() as u64) as i64, error],
        ),
        Outcome::GaveUp(error) => conn.execute(
            "UPDATE alert_deliveries SET attempts = ?2, done_at = ?3, last_error = ?4 WHERE id = ?1",
            params![due.id, attempts, now_ms as i64, error],
        ),
    }
    .map(|_| ())
}

/// The outcome of a failed attempt: retry after a doubling pause, or give up once the
/// delivery is a day old.
pub fn after_failure(due: &Due, error: String, now_ms: u64) -> Outcome {
    if now_ms.saturating_sub(due.created_ms) >= GIVE_UP_AFTER.as_millis() as u64 {
        return Outcome::GaveUp(error);
    }
    let after = Duration::from_secs(1u64 << due.attempts.min(9)).min(MAX_BACKOFF);
    Outcome::Retry { after, error }
}

/// Sends one payload to one target.
pub async fn send(target: &Target, payload: &Value) -> Result<(), String> {
    tokio::time::timeout(ATTEMPT_TIMEOUT, async {
        match target {
            Target::Webhook {
                url,
                format,
                ca_pem,
                ..
            } => {
                let body = match format {
                    Format::Json => payload.to_string(),
                    Format::Slack => json!({ "text": text(payload) }).to_string(),
                };
                post(url, body, ca_pem.as_deref()).await
            }
            Target::Email { .. } => email(target, payload).await,
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())))
}

/// One line for chat and mail subjects: `[FIRING] app_errored: api#0 on web1 ...`.
pub fn text(payload: &Value) -> String {
    let state = payload["state"].as_str().unwrap_or("?").to_uppercase();
    let alert = payload["alert"].as_str().unwrap_or("?");
    let summary = payload["summary"].as_str().unwrap_or("");
    format!("[{state}] {alert}: {summary}")
}

/// TLS to a target: its own CA when configured, else the system's roots.
fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let certificate = certificate.map_err(|e| format!("ca_file: {e}"))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("ca_file: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for certificate in found.certs {
                let _ = roots.add(certificate);
            }
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// POSTs `body` as JSON to `url`; a 2xx answer is a delivery.
async fn post(url: &http::Uri, body: String, ca_pem: Option<&str>) -> Result<(), String> {
    let host = url.host().ok_or("the URL has no host")?.to_owned();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let request = http::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            url.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("fleet-controller/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let status = if https {
        let name =
            rustls::pki_types::ServerName::try_from(bare.clone()).map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(tls_config(ca_pem)?);
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        exchange(TokioIo::new(stream), request).await?
    } else {
        exchange(TokioIo::new(tcp), request).await?
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {status}"))
    }
}

async fn exchange<T>(io: T, request: http::Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status())
}

/// Sends the alert as a plain-text mail.
async fn email(target: &Target, payload: &Value) -> Result<(), String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let Target::Email {
        host,
        port,
        implicit_tls,
        loopback,
        from,
        to,
        credentials,
        ca_pem,
        ..
    } = target
    else {
        return Err("not an email target".into());
    };
    let mut message = Message::builder()
        .from(from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(text(payload));
    for address in to {
        message = message.to(address.parse().map_err(|e| format!("to {address}: {e}"))?);
    }
    let body = format!(
        "{}\n\n{}\n\n-- \nfleet-controller\n",
        payload["summary"].as_str().unwrap_or(""),
        serde_json::to_string_pretty(payload).unwrap_or_default()
    );
    let message = message.body(body).map_err(|e| e.to_string())?;
    let parameters = || {
        let mut builder = TlsParameters::builder(host.clone());
        if let Some(pem) = ca_pem {
            let certificate =
                Certificate::from_pem(pem.as_bytes()).map_err(|e| format!("ca_file: {e}"))?;
            builder = builder.add_root_certificate(certificate);
        }
        builder.build_rustls().map_err(|e| e.to_string())
    };
    let tls = match (implicit_tls, loopback) {
        (true, _) => Tls::Wrapper(parameters()?),
        (false, false) => Tls::Required(parameters()?),
        // A relay on this machine: STARTTLS when it offers it.
        (false, true) => Tls::None,
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        .port(*port)
        .tls(tls)
        .timeout(Some(ATTEMPT_TIMEOUT));
    if let Some((user, password)) = credentials {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Which target a stored delivery goes to, by name; `None` if it is no longer configured.
pub fn target<'a>(targets: &'a [Target], name: &str) -> Option<&'a Target> {
    targets.iter().find(|t| t.name() == name)
}

/// The incident key a payload is about, for the audit log.
pub fn key_of(payload: &Value) -> Option<Key> {
    payload["key"].as_str().and_then(Key::decode)
}
