//! The controller's HTTP face: `--http ADDR` serves HTTPS with the controller's own
//! certificate (the CLI's `fleet controller trust` pins the same CA), `--http-plain
//! ADDR` plain HTTP and only on a loopback address (behind a local proxy). It serves
//! Prometheus' `/metrics` to a token of role `metrics` or above, and the web dashboard
//! (`dashboard`) to a signed-in browser.
//!
//! Every connection is counted with the gRPC ones (`limits::Connections`: per address,
//! unauthenticated ones capped and closed after a grace time), requests have a header
//! deadline and a bounded size, and a failed token counts against its address like a
//! failed gRPC call.

mod dashboard;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::error::Error;
use crate::server::Controller;
use crate::tokens::Role;

/// A request's headers must arrive within this; a TLS handshake too.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// The most a request's head may hold.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Where the HTTP face listens, and whether with TLS.
pub struct HttpListener {
    pub listener: TcpListener,
    pub tls: bool,
}

impl HttpListener {
    /// Checks the pairing the flags allow: plain HTTP only on a loopback address.
    pub fn new(listener: TcpListener, tls: bool) -> Result<HttpListener, String> {
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        if !tls && !address.ip().is_loopback() {
            return Err(format!(
                "--http-plain {address}: plain HTTP is served only on a loopback address (127.0.0.1, ::1)\nhint: use --http {address} for HTTPS with the controller's certificate"
            ));
        }
        Ok(HttpListener { listener, tls })
    }
}

/// The peer of the connection a request came on.
#[derive(Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

type Shared = Arc<Controller>;

/// Serves the HTTP face until the task is dropped.
pub(crate) async fn serve(controller: Arc<Controller>, http: HttpListener) -> Result<(), Error> {
    let tls = match http.tls {
        true => Some(tls_acceptor(&controller)?),
        false => None,
    };
    let dashboard = Arc::new(dashboard::Dashboard::new(controller.clone(), http.tls));
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(controller.clone())
        .merge(dashboard::router(dashboard.clone()))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn(dashboard::security_headers));
    let live = tokio::spawn(dashboard.live.clone().run(controller.clone()));
    let _live = crate::server::AbortOnDrop(live);
    loop {
        let Ok((stream, address)) = http.listener.accept().await else {
            continue;
        };
        let Some(counted) = controller.connections.admit(stream) else {
            continue;
        };
        let service = TowerToHyperService::new(router.clone().layer(Extension(Peer(address))));
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .max_buf_size(MAX_HEAD_BYTES);
            let served = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_DEADLINE, acceptor.accept(counted)).await {
                        Ok(Ok(stream)) => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                        _ => return,
                    }
                }
                None => {
                    builder
                        .serve_connection(TokioIo::new(counted), service)
                        .await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%address, %error, "http connection ended");
            }
        });
    }
}

/// TLS with the controller's server certificate (and its CA, as the gRPC face sends).
fn tls_acceptor(controller: &Controller) -> Result<tokio_rustls::TlsAcceptor, Error> {
    let pki = &controller.pki;
    let chain = format!("{}{}", pki.server_cert_pem, pki.ca_pem);
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Invalid(format!("the server certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes())
        .map_err(|e| Error::Invalid(format!("the server key: {e}")))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|e| Error::Invalid(format!("the server certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A refusal as HTTP: 401 with a challenge, 403, 429 with when to retry, else 500.
pub(crate) fn refused(status: tonic::Status) -> Response {
    let (code, extra) = match status.code() {
        tonic::Code::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            Some((header::WWW_AUTHENTICATE, "Bearer")),
        ),
        tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, None),
        tonic::Code::ResourceExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            Some((header::RETRY_AFTER, "2")),
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    let mut response = (code, format!("{}\n", status.message())).into_response();
    if let Some((name, value)) = extra {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `GET /metrics`: Prometheus' scrape, for a token of role `metrics` or above.
/// Served as OpenMetrics when the scraper's `Accept` asks for it (Prometheus does),
/// else in Prometheus' classic text format.
async fn scrape(
    State(controller): State<Shared>,
    Extension(Peer(address)): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let authorization = (headers.get(header::AUTHORIZATION)).and_then(|v| v.to_str().ok());
    if let Err(status) = controller
        .authorize(authorization, Some(address), Role::Metrics)
        .await
    {
        return refused(status);
    }
    let openmetrics = (headers.get(header::ACCEPT))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let registry = metrics::registry(&controller);
    match tokio::task::spawn_blocking(move || metrics::render(&registry, openmetrics)).await {
        Ok(Ok(text)) => {
            let mut response = text.into_response();
            let headers = response.headers_mut();
            let kind = match openmetrics {
                true => "application/openmetrics-text; version=1.0.0; charset=utf-8",
                false => "text/plain; version=0.0.4; charset=utf-8",
            };
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}
