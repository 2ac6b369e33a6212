//! The dashboard's JSON and Server-Sent Events API, every call behind a session:
//! `/api/events` (the overview: a snapshot, then deltas), `/api/host/{host}`,
//! `/api/app/{stage}/{app}`, `/api/deploys`, `/api/logs` (live, filtered, bounded)
//! and `POST /api/action` (restart, reload, stop, scale of an app on a stage).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleet_proto::agent::v1::{LogEntry, LogStream, ProcessInfo};
use fleet_proto::controller::v1::{Action, Stage};
use fleet_proto::ops;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::live::status_name;
use super::session::Session;
use super::{Shared, error, is_json};
use crate::fleet_service::{HostCommand, run_command, subscribe_logs};
use crate::store::AuditEntry;
use crate::tokens::Role;
use crate::{now_unix_ms, peers};

/// Events queued for one browser before the oldest work is skipped.
const EVENT_QUEUE: usize = 32;
/// Log lines go to the browser in batches: at most this many, at most this often.
const LOG_BATCH_LINES: usize = 200;
const LOG_BATCH_WAIT: Duration = Duration::from_millis(100);
/// Lines of each host's history a live log view starts with.
const LOG_HISTORY_LINES: u32 = 50;
/// A text search longer than this is refused.
const MAX_QUERY: usize = 256;
/// How many deploys the deploys page shows at most.
const MAX_DEPLOYS: u32 = 500;
/// A stream checks that its session is still valid this often.
const STREAM_RECHECK: Duration = Duration::from_secs(10);

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/events", get(events))
        .route("/api/host/{host}", get(host))
        .route("/api/app/{stage}/{app}", get(app))
        .route("/api/deploys", get(deploys))
        .route("/api/logs", get(logs))
        .route("/api/action", post(action))
}

/// The session of the request, or the 401 to answer.
async fn signed_in(dashboard: &Shared, headers: &HeaderMap) -> Result<(String, Session), Response> {
    (dashboard.session(headers).await).ok_or_else(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "not signed in (or the session ended)",
        )
    })
}

fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Sends `event`; false when the browser went away.
async fn send(tx: &mpsc::Sender<Event>, name: &str, data: &str) -> bool {
    tx.send(Event::default().event(name).data(data))
        .await
        .is_ok()
}

/// `GET /api/events`: the overview as a snapshot, then deltas.
async fn events(State(dashboard): State<Shared>, headers: HeaderMap) -> Response {
    let (id, session) = match signed_in(&dashboard, &headers).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let me = json!({"name": session.name, "role": session.role.as_str(), "can_act": session.role >= Role::Operate});
    tokio::spawn(async move {
        let (snapshot, mut deltas) = dashboard.live.subscribe();
        if !send(&tx, "me", &me.to_string()).await || !send(&tx, "snapshot", &snapshot).await {
            return;
        }
        let mut recheck = tokio::time::interval(STREAM_RECHECK);
        recheck.tick().await;
        loop {
            tokio::select! {
                delta = deltas.recv() => match delta {
                    Ok(delta) => if !send(&tx, "delta", &delta).await { return },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (snapshot, fresh) = dashboard.live.subscribe();
                        deltas = fresh;
                        if !send(&tx, "snapshot", &snapshot).await { return }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = recheck.tick() => {
                    if !still_signed_in(&dashboard, &id, &headers_of(&id, &dashboard)).await {
                        let _ = send(&tx, "end", "the session ended").await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    sse(rx)
}

/// A request's headers carrying only the session cookie, for the rechecks of a
/// stream that outlives its request.
fn headers_of(id: &str, dashboard: &Shared) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let cookie = format!("{}={id}", super::session::cookie_name(dashboard.tls));
    if let Ok(value) = cookie.parse() {
        headers.insert(axum::http::header::COOKIE, value);
    }
    headers
}

async fn still_signed_in(dashboard: &Shared, id: &str, headers: &HeaderMap) -> bool {
    (dashboard.session(headers).await).is_some_and(|(open, _)| open == id)
}

/// An instance as the host and app pages show it.
fn instance(process: &ProcessInfo, host: &str) -> Value {
    let exit = process.last_exit.as_ref().map(|exit| {
        json!({
            "code": exit.code,
            "signal": exit.signal,
            "spawn_error": exit.spawn_error,
            "unknown": exit.unknown,
            "at": exit.at_unix_ms,
            "uptime_ms": exit.uptime_ms,
        })
    });
    json!({
        "host": host,
        "id": process.id,
        "name": process.name,
        "instance": process.instance,
        "pid": process.pid,
        "status": status_name(process.status),
        "restarts": process.restarts,
        "unstable_restarts": process.unstable_restarts,
        "uptime_ms": process.uptime_ms,
        "cpu": process.cpu_percent,
        "memory": process.memory_bytes,
        "max_memory": process.max_memory_bytes,
        "exec_mode": if process.exec_mode == fleet_proto::agent::v1::ExecMode::Cluster as i32 { "cluster" } else { "fork" },
        "created_at": process.created_at_unix_ms,
        "restart_cause": process.restart_cause,
        "restart_cause_at": process.restart_cause_at_unix_ms,
        "last_exit": exit,
    })
}

/// Whether `name` is safe to use as a host, stage or app name here.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && !name.chars().any(char::is_control)
}

/// `GET /api/host/{host}`: a host's card, instances, metrics and sparklines.
async fn host(
    State(dashboard): State<Shared>,
    Path(host): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = signed_in(&dashboard, &headers).await {
        return response;
    }
    let stages = dashboard.live.stages();
    let member: Vec<&str> = (stages.iter())
        .filter(|(_, hosts)| hosts.contains(&host))
        .map(|(name, _)| name.as_str())
        .collect();
    let controller = &dashboard.controller;
    if !plain_name(&host) || (member.is_empty() && !peers::known_hosts(controller).contains(&host))
    {
        return error(StatusCode::NOT_FOUND, "no such host");
    }
    let view = (peers::views(controller, vec![host.clone()]).await)
        .pop()
        .map(|(_, view)| view)
        .unwrap_or_default();
    let release = dashboard.live.release(&host);
    let metrics = view.metrics.as_ref().map(|m| {
        json!({
            "at": m.at_unix_ms, "cpus": m.cpus, "cpu": m.cpu_percent,
            "load": [m.load1, m.load5, m.load15],
            "memory_total": m.memory_total_bytes, "memory_available": m.memory_available_bytes,
            "swap_total": m.swap_total_bytes, "swap_free": m.swap_free_bytes,
            "uptime_ms": m.uptime_ms,
            "disks": m.disks.iter().map(|d| json!({
                "mount": d.mount_point, "fs": d.fs_type, "total": d.total_bytes,
                "used": d.used_bytes, "available": d.available_bytes, "paths": d.paths,
            })).collect::<Vec<_>>(),
        })
    });
    let body = json!({
        "card": super::live::card(&host, &view, &member, release.as_ref()),
        "instances": view.processes.iter().map(|p| instance(p, &host)).collect::<Vec<_>>(),
        "metrics": metrics,
        "history": dashboard.live.history_of(&host, None),
    });
    axum::Json(body).into_response()
}

/// The hosts of a stage the controller knows.
fn stage_hosts(dashboard: &Shared, stage: &str) -> Option<Vec<String>> {
    (dashboard.live.stages().into_iter())
        .find(|(name, _)| name == stage)
        .map(|(_, hosts)| hosts)
}

/// `GET /api/app/{stage}/{app}`: an app's instances on every host of a stage.
async fn app(
    State(dashboard): State<Shared>,
    Path((stage, app)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = signed_in(&dashboard, &headers).await {
        return response;
    }
    let Some(hosts) = stage_hosts(&dashboard, &stage) else {
        return error(StatusCode::NOT_FOUND, "no such stage");
    };
    let mut instances = Vec::new();
    let mut unreachable = Vec::new();
    let mut history = serde_json::Map::new();
    for (host, view) in &peers::views(&dashboard.controller, hosts.clone()).await {
        if !view.reachable {
            unreachable
                .push(json!({"host": host, "error": view.error, "since": view.since_unix_ms}));
        }
        instances.extend(
            (view.processes.iter())
                .filter(|p| p.name == app)
                .map(|p| instance(p, host)),
        );
        history.insert(host.clone(), dashboard.live.history_of(host, Some(&app)));
    }
    axum::Json(json!({
        "stage": stage, "app": app, "hosts": hosts, "instances": instances,
        "unreachable": unreachable, "history": history,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct DeploysQuery {
    stage: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/deploys`: recorded deploys, newest first.
async fn deploys(
    State(dashboard): State<Shared>,
    Query(query): Query<DeploysQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = signed_in(&dashboard, &headers).await {
        return response;
    }
    let limit = query.limit.unwrap_or(100).min(MAX_DEPLOYS);
    let stage = query.stage.filter(|s| !s.is_empty());
    let read = (dashboard.controller.store)
        .call(move |conn| crate::deploys::recent(conn, stage.as_deref(), limit))
        .await;
    match read {
        Ok(deploys) => axum::Json(json!({ "deploys": deploys })).into_response(),
        Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
    }
}

#[derive(Deserialize, Default)]
struct LogsQuery {
    stage: Option<String>,
    host: Option<String>,
    app: Option<String>,
    stream: Option<String>,
    q: Option<String>,
}

/// Whether a line passes the stream and text filters (notices always pass).
fn wanted(entry: &LogEntry, stream: Option<LogStream>, needle: &str) -> bool {
    if !entry.notice.is_empty() {
        return true;
    }
    if stream.is_some_and(|s| entry.stream != s as i32) {
        return false;
    }
    needle.is_empty() || entry.line.to_lowercase().contains(needle)
}

fn line_json(entry: &LogEntry) -> Value {
    json!({
        "ts": entry.ts_unix_ms,
        "host": entry.host,
        "app": entry.app,
        "id": entry.id,
        "stream": if entry.stream == LogStream::Err as i32 { "err" } else { "out" },
        "line": entry.line,
        "notice": entry.notice,
        "missed": entry.missed,
    })
}

/// `GET /api/logs?stage=&host=&app=&stream=out|err&q=`: live lines of the chosen hosts
/// and app, in batches. Lines the browser cannot take as fast as they come are
/// counted and reported (`missed` events), never queued without bound.
async fn logs(
    State(dashboard): State<Shared>,
    Query(query): Query<LogsQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = signed_in(&dashboard, &headers).await {
        return response;
    }
    let stream = match query.stream.as_deref().unwrap_or("") {
        "" | "all" => None,
        "out" => Some(LogStream::Out),
        "err" => Some(LogStream::Err),
        _ => return error(StatusCode::BAD_REQUEST, "stream is out, err or all"),
    };
    let needle = query.q.unwrap_or_default().to_lowercase();
    if needle.len() > MAX_QUERY {
        return error(StatusCode::BAD_REQUEST, "the search text is too long");
    }
    let stage = query.stage.filter(|s| !s.is_empty());
    let mut hosts = match &stage {
        Some(stage) => match stage_hosts(&dashboard, stage) {
            Some(hosts) => hosts,
            None => return error(StatusCode::NOT_FOUND, "no such stage"),
        },
        None => peers::known_hosts(&dashboard.controller),
    };
    if let Some(host) = query.host.filter(|h| !h.is_empty()) {
        hosts.retain(|h| *h == host);
    }
    let targets: Vec<String> = query.app.filter(|a| plain_name(a)).into_iter().collect();
    let mut merged = subscribe_logs(
        &dashboard.controller,
        hosts,
        targets,
        LOG_HISTORY_LINES,
        true,
    )
    .await;
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        let mut batch: Vec<Value> = Vec::new();
        let mut missed: u64 = 0;
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            let wait = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                entry = merged.next() => {
                    let Some(Ok(entry)) = entry else { break };
                    if !wanted(&entry, stream, &needle) {
                        continue;
                    }
                    batch.push(line_json(&entry));
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + LOG_BATCH_WAIT);
                    if batch.len() < LOG_BATCH_LINES {
                        continue;
                    }
                }
                () = wait => {}
                () = tx.closed() => return,
            }
            flush_at = None;
            let lines = std::mem::take(&mut batch);
            let count = lines.len() as u64;
            let event = Event::default()
                .event("lines")
                .data(Value::Array(lines).to_string());
            match tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => missed += count,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
            if missed > 0 {
                let note = Event::default().event("missed").data(missed.to_string());
                if tx.try_send(note).is_ok() {
                    missed = 0;
                }
            }
        }
        let _ = send(&tx, "end", "the log stream ended").await;
    });
    sse(rx)
}

#[derive(Deserialize)]
struct ActionRequest {
    stage: String,
    app: String,
    action: String,
    #[serde(default)]
    count: String,
}

/// Why an action is refused: the HTTP status and the message (also audited).
type Refused = (StatusCode, String);

/// Checks an action from a signed-in `session`, in the order a forger meets them:
/// the CSRF token, a JSON body, the role, then the request itself. Pure: the handler
/// audits the refusal.
fn check_action(
    session: &Session,
    headers: &HeaderMap,
    request: Option<&ActionRequest>,
) -> Result<HostCommand, Refused> {
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !session.csrf_matches(csrf) {
        return Err((StatusCode::FORBIDDEN, "missing or wrong CSRF token".into()));
    }
    if !is_json(headers) {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "actions are sent as JSON".into(),
        ));
    }
    if session.role < Role::Operate {
        let why = format!(
            "token {:?} has role {}; actions need operate",
            session.name,
            session.role.as_str()
        );
        return Err((StatusCode::FORBIDDEN, why));
    }
    let Some(request) = request else {
        let why = "the body must be {stage, app, action, count}";
        return Err((StatusCode::BAD_REQUEST, why.into()));
    };
    let action = match request.action.as_str() {
        "restart" => Action::Restart,
        "reload" => Action::Reload,
        "stop" => Action::Stop,
        "scale" => Action::Scale,
        _ => {
            let why = "action is restart, reload, stop or scale";
            return Err((StatusCode::BAD_REQUEST, why.into()));
        }
    };
    if !plain_name(&request.app) || !plain_name(&request.stage) || request.count.len() > 16 {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad stage, app name or count".into(),
        ));
    }
    ops::agent_call(action, vec![request.app.clone()], &request.count)
        .map_err(|why| (StatusCode::BAD_REQUEST, why.to_string()))?;
    Ok(HostCommand {
        action,
        targets: vec![request.app.clone()],
        count: request.count.clone(),
    })
}

/// An action without a session: refused, and audited unless the address is already
/// being refused for failing too often (so a flood does not fill the audit log).
async fn refuse_anonymous(dashboard: &Shared, address: std::net::SocketAddr) -> Response {
    let controller = &dashboard.controller;
    let limited = controller.failures.check(Some(address.ip()));
    controller.failures.record(Some(address.ip()));
    if limited.is_ok() {
        dashboard
            .audit(AuditEntry {
                at_ms: now_unix_ms(),
                who: format!("dashboard:{}", address.ip()),
                action: "dashboard action".to_owned(),
                stage: String::new(),
                targets: Vec::new(),
                result: "refused: not signed in".to_owned(),
            })
            .await;
    }
    error(
        StatusCode::UNAUTHORIZED,
        "not signed in (or the session ended)",
    )
}

/// `POST /api/action`: restart, reload, stop or scale `app` on every host of `stage`,
/// for an `operate` session that sends its CSRF token; written to the audit log with
/// the token's name, refusals of a signed-in caller too.
async fn action(
    State(dashboard): State<Shared>,
    Extension(super::super::Peer(address)): Extension<super::super::Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some((_, session)) = dashboard.session(&headers).await else {
        return refuse_anonymous(&dashboard, address).await;
    };
    let request = serde_json::from_slice::<ActionRequest>(&body).ok();
    let who = format!("token:{} (dashboard)", session.name);
    let hosts = check_action(&session, &headers, request.as_ref()).and_then(|command| {
        let stage = request
            .as_ref()
            .map(|r| r.stage.clone())
            .unwrap_or_default();
        match stage_hosts(&dashboard, &stage) {
            Some(hosts) => Ok((command, Stage { name: stage, hosts })),
            None => Err((StatusCode::NOT_FOUND, format!("no stage named {stage:?}"))),
        }
    });
    let (command, stage) = match hosts {
        Ok(found) => found,
        Err((code, why)) => {
            let (verb, stage, app) = match &request {
                Some(r) => (r.action.clone(), r.stage.clone(), vec![r.app.clone()]),
                None => ("dashboard action".to_owned(), String::new(), Vec::new()),
            };
            let entry = AuditEntry {
                at_ms: now_unix_ms(),
                who,
                action: verb,
                stage,
                targets: app,
                result: format!("refused: {why}"),
            };
            dashboard.audit(entry).await;
            return error(code, why);
        }
    };
    let started = Instant::now();
    match run_command(&dashboard.controller, who, stage, command).await {
        Ok(hosts) => {
            let outcomes: Vec<Value> = (hosts.iter())
                .map(|h| json!({"host": h.host, "ok": h.ok, "error": h.error}))
                .collect();
            axum::Json(json!({
                "ok": hosts.iter().all(|h| h.ok),
                "took_ms": started.elapsed().as_millis() as u64,
                "hosts": outcomes,
            }))
            .into_response()
        }
        Err(status) => error(StatusCode::SERVICE_UNAVAILABLE, status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_keep_notices_and_match_stream_and_text_case_blind() {
        let line = |stream: LogStream, text: &str| LogEntry {
            stream: stream as i32,
            line: text.into(),
            ..LogEntry::default()
        };
        assert!(wanted(
            &line(LogStream::Err, "Boom"),
            Some(LogStream::Err),
            "boom"
        ));
        assert!(!wanted(
            &line(LogStream::Out, "Boom"),
            Some(LogStream::Err),
            ""
        ));
        assert!(!wanted(&line(LogStream::Out, "fine"), None, "boom"));
        let notice = LogEntry {
            notice: "unreachable".into(),
            ..LogEntry::default()
        };
        assert!(wanted(&notice, Some(LogStream::Err), "nothing"));
        assert!(plain_name("web") && !plain_name("") && !plain_name("a\nb"));
    }
}
