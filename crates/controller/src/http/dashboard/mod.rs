//! The web dashboard on the controller's HTTP face: a page and its script, embedded
//! in the binary (`assets/`), and a JSON API under `/api/` behind a session cookie.
//!
//! - Sign in: `POST /api/login` with an API token (`read` or above); the answer sets
//!   the session cookie (`session`). Failed sign-ins count against the address like a
//!   failed gRPC call (`limits::Failures`) and go in the audit log.
//! - Every `/api/` call checks the session and, at most every `RECHECK`, that its token
//!   is still valid (a revoked token ends its sessions).
//! - Actions (`POST /api/action`) need `operate`, a JSON body and the session's CSRF
//!   token in `X-CSRF-Token`; refusals of a signed-in caller go in the audit log.
//! - Every answer carries a strict Content-Security-Policy (scripts and styles only
//!   from this origin, no inline code, no framing) and `nosniff`; log lines reach the
//!   page as JSON and are shown as text.

mod api;
mod live;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::now_unix_ms;
use crate::server::Controller;
use crate::store::{self, AuditEntry};
use crate::tokens::{self, Role, Verdict};
pub use live::Live;
use session::{Session, Sessions};

/// The most a request body may hold (a sign-in or an action is a few hundred bytes).
const MAX_BODY_BYTES: usize = 16 * 1024;
/// A session's token is checked against the store again after this long (as often
/// as the gRPC face refreshes its valid tokens).
const RECHECK: Duration = crate::server::SWEEP_INTERVAL;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the dashboard's handlers share.
pub struct Dashboard {
    pub controller: Arc<Controller>,
    pub sessions: Sessions,
    pub live: Arc<Live>,
    pub tls: bool,
    /// When each session's token was last checked, by session id.
    checked: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

type Shared = Arc<Dashboard>;

impl Dashboard {
    pub fn new(controller: Arc<Controller>, tls: bool) -> Dashboard {
        Dashboard {
            controller,
            sessions: Sessions::default(),
            live: Arc::new(Live::new()),
            tls,
            checked: Default::default(),
        }
    }

    /// Appends to the audit log, logging (not failing) when the store refuses.
    async fn audit(&self, entry: AuditEntry) {
        let written = (self.controller.store)
            .call(move |conn| store::append_audit(conn, &entry))
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, "cannot write the dashboard's audit entry");
        }
    }

    /// The session a request's cookie names, if it is open and its token still valid.
    async fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let cookies = (headers.get_all(header::COOKIE).iter())
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        let id = session::session_id(&cookies, self.tls)?.to_owned();
        let now = Instant::now();
        let session = self.sessions.get(&id, now)?;
        let due = crate::registry::lock(&self.checked)
            .get(&id)
            .is_none_or(|at| now.duration_since(*at) >= RECHECK);
        if due {
            let hash = session.token_hash.clone();
            let verdict = (self.controller.store)
                .call(move |conn| tokens::verify(conn, &hash, now_unix_ms()))
                .await
                .ok()?;
            if !matches!(verdict, Verdict::Valid(_)) {
                self.sessions.close_token(&session.token_hash);
                return None;
            }
            let mut checked = crate::registry::lock(&self.checked);
            checked.retain(|_, at| now.duration_since(*at) < session::SESSION_TTL);
            checked.insert(id.clone(), now);
        }
        Some((id, session))
    }
}

/// The dashboard's routes, to merge into the HTTP face's router.
pub fn router(dashboard: Shared) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/app.css",
            get(|| async { page(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/session", get(whoami))
        .merge(api::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(dashboard)
}

/// Headers every answer of the HTTP face carries.
pub async fn security_headers(request: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn page(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// A JSON error: `{"error": message}` with `code`.
pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        axum::Json(serde_json::json!({"error": message.into()})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// Whether the body was sent as JSON (a cross-site form cannot send that without the
/// browser asking first, and this origin answers no such question).
fn is_json(headers: &HeaderMap) -> bool {
    (headers.get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

async fn login(
    State(dashboard): State<Shared>,
    Extension(super::Peer(address)): Extension<super::Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !is_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sign in with a JSON body",
        );
    }
    let Ok(Login { token }) = serde_json::from_slice::<Login>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"token\": \"...\"}",
        );
    };
    let authorization = format!("Bearer {}", token.trim());
    let who = format!("dashboard:{}", address.ip());
    let audit = |result: String, name: Option<&str>| AuditEntry {
        at_ms: now_unix_ms(),
        who: name.map_or(who.clone(), |name| {
            format!("token:{name} (dashboard {})", address.ip())
        }),
        action: "login".to_owned(),
        stage: String::new(),
        targets: Vec::new(),
        result,
    };
    let controller = &dashboard.controller;
    let caller = match controller
        .authorize(Some(&authorization), Some(address), Role::Read)
        .await
    {
        Ok(caller) => caller,
        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
            return super::refused(status);
        }
        Err(status) => {
            dashboard
                .audit(audit(format!("failed: {}", status.message()), None))
                .await;
            return super::refused(status);
        }
    };
    let hash = crate::pki::token_hash(token.trim());
    let id = dashboard
        .sessions
        .open(hash, caller.name.clone(), caller.role, Instant::now());
    dashboard
        .audit(audit("ok".to_owned(), Some(&caller.name)))
        .await;
    let session = dashboard.sessions.get(&id, Instant::now());
    let mut response = axum::Json(serde_json::json!({
        "name": caller.name,
        "role": caller.role.as_str(),
        "csrf": session.map(|s| s.csrf).unwrap_or_default(),
    }))
    .into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::set_cookie(&id, dashboard.tls)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(State(dashboard): State<Shared>, headers: HeaderMap) -> Response {
    if let Some((id, session)) = dashboard.session(&headers).await {
        if !session.csrf_matches(headers.get("x-csrf-token").and_then(|v| v.to_str().ok())) {
            return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
        }
        dashboard.sessions.close(&id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::clear_cookie(dashboard.tls)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /api/session`: who is signed in, with the CSRF token for actions.
async fn whoami(State(dashboard): State<Shared>, headers: HeaderMap) -> Response {
    match dashboard.session(&headers).await {
        Some((_, session)) => axum::Json(serde_json::json!({
            "name": session.name,
            "role": session.role.as_str(),
            "csrf": session.csrf,
            "can_act": session.role >= Role::Operate,
        }))
        .into_response(),
        None => error(StatusCode::UNAUTHORIZED, "not signed in"),
    }
}
