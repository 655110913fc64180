//! The HTTP JSON API: the same operations as the CLI, with the same
//! permission checks (the application core does them), behind bearer tokens. The
//! server serves its own OpenAPI document at `/api/v1/openapi.json`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use crate::app::{self, App};
use crate::runs::{RunStatus, TaskMessage};
use crate::store::RunId;
use crate::tasks::{Task, TaskSpec};
use crate::users::User;

/// An API error: a status and a message that says what to fix.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<app::Error> for ApiError {
    fn from(e: app::Error) -> Self {
        let status = match &e {
            app::Error::NotFound(_) => StatusCode::NOT_FOUND,
            app::Error::Forbidden(_) => StatusCode::FORBIDDEN,
            app::Error::Conflict(_) => StatusCode::CONFLICT,
            app::Error::Invalid(_) => StatusCode::BAD_REQUEST,
            app::Error::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            app::Error::Store(_) | app::Error::Failed(_) => {
                // The details (paths, store internals) are for the operator's log.
                tracing::error!(error = %e, "A request failed inside the server.");
                return ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server failed to do this; its log says why, and the request may be retried".into(),
                );
            }
        };
        ApiError(status, e.to_string())
    }
}

/// A failure inside the server: logged whole, answered without details.
fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "A request failed inside the server.");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the server failed to do this; its log says why".into())
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// The authenticated caller.
pub struct Caller(pub User);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<App>) -> Result<Self, Self::Rejection> {
        let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_string());
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            unauthorized("send `Authorization: Bearer TOKEN`; create a token with `schoolbell user token NAME`")
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
        let app = state.clone();
        let token = token.trim().to_string();
        let from = client_address(parts);
        let user = tokio::task::spawn_blocking(move || app.authenticate(&token, &from))
            .await
            .map_err(internal)?
            .map_err(|e| match e {
                crate::users::Error::Throttled(_) => ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
                e => unauthorized(&e.to_string()),
            })?;
        Ok(Caller(user))
    }
}

/// The client's address (see [`client_address`]), as an extractor.
pub struct ClientAddress(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(parts)))
    }
}

/// The client's address, as the listener saw it (a proxy in front is one
/// client: put the limits there too).
pub(crate) fn client_address(parts: &Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

/// The most items one page of a list holds.
pub const MAX_PAGE: usize = 1_000;

/// A list's page size: `default` when none is asked for; 1 to
/// [`MAX_PAGE`] when one is (0 is not "all").
fn page(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n @ 1..=MAX_PAGE) => Ok(n),
        Some(n) => Err(bad(format!("limit {n} is not a page size: ask for 1 to {MAX_PAGE}, and page on"))),
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// The router over a scheduler.
pub fn router(scheduler: Arc<App>) -> Router {
    let api = scheduler.config().api.clone();
    let (console, live) = crate::console::router(&scheduler);
    let routes = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/tasks", get(list_tasks).post(add_task))
        .route("/api/v1/tasks/{name}", get(show_task).delete(remove_task))
        .route("/api/v1/tasks/{name}/enable", post(enable_task))
        .route("/api/v1/tasks/{name}/disable", post(disable_task))
        .route("/api/v1/tasks/{name}/run-now", post(run_now))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(show_run).delete(delete_run))
        .route("/api/v1/runs/{id}/cancel", post(cancel_run))
        .route("/api/v1/runs/{id}/messages", get(run_messages))
        .route("/api/v1/tasks/{name}/test-import", post(test_import))
        .route("/api/v1/runs/{id}/plan", get(import_plan))
        .route("/api/v1/runs/{id}/commit", post(import_commit))
        .route("/api/v1/runs/{id}/confirm", post(import_confirm))
        .route("/api/v1/runs/{id}/request", post(import_request))
        .route("/api/v1/runs/{id}/code", post(import_code))
        .route("/api/v1/runs/{id}/approve", post(import_approve))
        .route("/api/v1/schedule/next", get(schedule_next))
        .route("/api/v1/rules", get(list_rules))
        .route("/api/v1/rules/{name}", get(show_rule).put(save_rule))
        .route("/api/v1/rules/{name}/test", post(test_rule))
        .route("/api/v1/rules/{name}/versions", get(rule_versions))
        .route("/api/v1/outbox", get(outbox))
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/users", get(list_users))
        .route("/api/v1/users/{name}", axum::routing::put(put_user).delete(remove_user))
        .route("/api/v1/tokens", get(list_tokens))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/users/{name}/tokens", post(issue_token))
        .route("/api/v1/secrets", get(list_secrets))
        .route("/api/v1/sources", get(list_sources))
        .route("/api/v1/sources/{name}", get(show_source).put(add_source).delete(remove_source))
        .route("/api/v1/sources/{name}/test", post(test_source))
        .route("/api/v1/sources/{name}/accept", post(accept_source))
        .route("/api/v1/plugins", get(list_plugins))
        .route("/api/v1/plugins/{name}", get(show_plugin).delete(remove_plugin))
        .route("/api/v1/plugins/{name}/grant", post(grant_plugin))
        .route("/api/v1/plugins/{name}/revoke", post(revoke_plugin))
        .route("/api/v1/collections/{name}", get(collection_page))
        .merge(console)
        .fallback(not_found)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            std::time::Duration::from_secs(api.request_timeout_secs),
        ))
        // A scrape is a request like any other: it counts toward the limit.
        .route("/metrics", get(metrics))
        .layer(tower::limit::ConcurrencyLimitLayer::new(api.max_concurrent_requests.max(1)))
        // The console's live streams outlive any request timeout; they
        // have their own limit.
        .merge(live)
        // What a load balancer polls: no user token, nothing private, and
        // outside the request limit so a busy API still answers.
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::map_response(private_answers(api.tls_cert.is_some())))
        .with_state(scheduler);
    if api.base_path.is_empty() {
        return routes;
    }
    // Behind a proxy that forwards `/base/...` unchanged: the base is taken
    // off before routing, so every route (the console's `/` among them)
    // answers under it exactly as at the root, and nothing answers outside it.
    let base = api.base_path.clone();
    let strip = move |mut request: axum::extract::Request| {
        let uri = request.uri();
        let rest = match uri.path().strip_prefix(base.as_str()) {
            Some("") => "/",
            Some(rest) if rest.starts_with('/') => rest,
            _ => "/outside-the-base-path",
        };
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        if let Ok(inner) = format!("{rest}{query}").parse() {
            *request.uri_mut() = inner;
        }
        request
    };
    Router::new().fallback_service(tower::ServiceBuilder::new().map_request(strip).service(routes))
}

/// Adds what every answer needs on a shared office computer and over TLS:
/// `Cache-Control: no-store` (pages and answers carry student data, and
/// Back after sign-out must not show them from the cache) unless the
/// answer says otherwise (the console's fingerprinted assets do), and
/// HSTS when the API serves TLS itself.
fn private_answers(tls: bool) -> impl Fn(Response) -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move |mut answer: Response| {
        let headers = answer.headers_mut();
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
        }
        if tls {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, axum::http::HeaderValue::from_static("max-age=31536000"));
        }
        std::future::ready(answer)
    }
}

/// 200 while the process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the store, the scheduler loop and the SMTP server (if set) are
/// well; 503 naming the part that is not.
async fn readyz(State(s): State<Arc<App>>) -> Response {
    let readiness = match tokio::task::spawn_blocking(move || s.health().ready()).await {
        Ok(r) => r,
        Err(e) => return internal(e).into_response(),
    };
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(readiness)).into_response()
}

/// The metrics in Prometheus' text format, behind the metrics token
/// (`[metrics] token_file`, or `[api] metrics_token`): without one set,
/// nobody reads them (which plugins and rules run, and how often, maps the
/// district's work).
async fn metrics(State(s): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    let Some(token) = s.metrics_token() else {
        return ApiError(
            StatusCode::FORBIDDEN,
            "metrics are off until [metrics] token_file names the token a scraper sends as its bearer".into(),
        )
        .into_response();
    };
    let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compared as MACs, in constant time.
    let expected = crate::secrets::mac(b"metrics", token.as_bytes());
    let matches = sent.is_some_and(|sent| crate::secrets::verify_mac(b"metrics", sent.trim().as_bytes(), &expected));
    if !matches {
        return ApiError(StatusCode::UNAUTHORIZED, "send `Authorization: Bearer` with the metrics token".into())
            .into_response();
    }
    let text = tokio::task::spawn_blocking(move || {
        if let Err(e) = s.health().observe() {
            tracing::warn!("Metrics: the gauges could not be read: {e}");
        }
        crate::metrics::render()
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// No such address: JSON under the API, a page elsewhere.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().contains("/api/") {
        return ApiError(StatusCode::NOT_FOUND, "no such endpoint; see /api/v1/openapi.json".into()).into_response();
    }
    crate::console::not_found().into_response()
}

async fn list_tasks(State(s): State<Arc<App>>, Caller(u): Caller) -> Result<Json<Vec<Task>>, ApiError> {
    blocking(move || Ok(Json(s.tasks().list(&u)?))).await
}

async fn add_task(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    body: Result<Json<TaskSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let Json(spec) = body.map_err(|e| bad(format!("the task is not valid JSON for a task: {}", e.body_text())))?;
    blocking(move || {
        let task = s.tasks().add(&u, spec)?;
        Ok((StatusCode::CREATED, Json(crate::tasks::task_view(&task, 5))))
    })
    .await
}

async fn show_task(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(crate::tasks::task_view(&s.tasks().show(&u, &name)?, 5)))).await
}

async fn remove_task(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        s.tasks().remove(&u, &name, app::History::Forget)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn enable_task(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(crate::tasks::task_view(&s.tasks().set_enabled(&u, &name, true)?, 5)))).await
}

async fn disable_task(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(crate::tasks::task_view(&s.tasks().set_enabled(&u, &name, false)?, 5)))).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    at: Option<String>,
    #[serde(default)]
    high_priority: bool,
    #[serde(default)]
    keep: bool,
}

async fn run_now(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    // No body: at once, as before.
    let body: SubmitBody = if body.iter().all(u8::is_ascii_whitespace) {
        SubmitBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the body must be {{\"at\": ..., \"high_priority\": ..., \"keep\": ...}}: {e}")))?
    };
    blocking(move || {
        let tasks = s.tasks();
        let at = match &body.at {
            Some(text) => Some(
                crate::schedule::parse_local(text, tasks.show(&u, &name)?.tz()).map_err(|e| bad(format!("at: {e}")))?,
            ),
            None => None,
        };
        let submit = app::Submit { at, high_priority: body.high_priority, keep: body.keep };
        Ok((StatusCode::ACCEPTED, Json(json!(tasks.submit(&u, &name, &submit)?))))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    status: Option<String>,
    task: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let status = q.status.as_deref().map(str::parse::<RunStatus>).transpose().map_err(bad)?;
    let limit = page(q.limit, 100)?;
    blocking(move || Ok(Json(json!(s.runs().list(&u, status, q.task.as_deref(), limit)?)))).await
}

fn run_id(raw: &str) -> Result<RunId, ApiError> {
    raw.parse().map_err(|_| bad(format!("`{raw}` is not a run id (a whole number)")))
}

/// One operation on a run by id, answered with the run as JSON.
async fn on_run(
    s: Arc<App>,
    u: User,
    raw: String,
    op: fn(&App, &User, RunId) -> app::Result<crate::runs::Run>,
) -> Result<Json<Json_>, ApiError> {
    let id = run_id(&raw)?;
    blocking(move || Ok(Json(json!(op(&s, &u, id)?)))).await
}

async fn show_run(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    on_run(s, u, id, |a, u, id| a.runs().show(u, id)).await
}

async fn cancel_run(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    on_run(s, u, id, |a, u, id| a.runs().cancel(u, id)).await
}

async fn delete_run(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = run_id(&id)?;
    blocking(move || {
        s.runs().delete(&u, id)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    status: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
    format: Option<String>,
}

async fn run_messages(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
    q: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = run_id(&id)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(bad(format!("format `{other}` is not known; use json or csv"))),
    };
    // The CSV is an export of the run's messages (bounded by its rows);
    // the JSON is a page.
    let limit = if csv && q.limit.is_none() { usize::MAX } else { page(q.limit, MAX_PAGE)? };
    blocking(move || {
        let (messages, next) = s.runs().messages(&u, id, q.status.as_deref(), q.after, limit)?;
        Ok(if csv {
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], crate::runs::messages_csv(&messages)).into_response()
        } else {
            Json(json!({ "messages": messages, "next": next })).into_response()
        })
    })
    .await
}

async fn test_import(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    blocking(move || Ok((StatusCode::ACCEPTED, Json(json!(s.tasks().test_import(&u, &name)?))))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<usize>,
}

async fn import_plan(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
    q: Result<Query<PlanQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let id = run_id(&id)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    blocking(move || {
        let plan = s.imports().plan(&u, id)?;
        let rows: Vec<_> = plan
            .rows
            .iter()
            .filter(|r| q.kind.as_deref().is_none_or(|k| r.status() == k))
            .take(page(q.limit, MAX_PAGE)?)
            .collect();
        Ok(Json(json!({ "summary": plan.summary(), "counts": plan.counts, "hold": plan.hold, "existing": plan.existing, "rows": rows })))
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Decision {
    comment: Option<String>,
    code: Option<String>,
    /// The decider's own password, entered again (confirm, approve).
    password: Option<String>,
}

/// An optional JSON body: empty means no comment and no code.
fn decision(body: &[u8]) -> Result<Decision, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Decision::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body must be {{\"comment\": ..., \"code\": ..., \"password\": ...}}: {e}")))
}

async fn import_commit(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    on_run(s, u, id, |a, u, id| a.imports().commit(u, id)).await
}

async fn import_confirm(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Json_>, ApiError> {
    let id = run_id(&id)?;
    let d = decision(&body)?;
    blocking(move || {
        let proof = app::Proof::Password(d.password.as_deref().unwrap_or(""));
        Ok(Json(json!(s.imports().confirm(&u, id, d.comment, proof)?)))
    })
    .await
}

async fn import_request(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Json_>, ApiError> {
    let id = run_id(&id)?;
    let d = decision(&body)?;
    blocking(move || Ok(Json(json!(s.imports().request(&u, id, d.comment.as_deref().unwrap_or(""))?)))).await
}

async fn import_code(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let id = run_id(&id)?;
    blocking(move || Ok(Json(json!({ "code": s.imports().code(&u, id)? })))).await
}

async fn import_approve(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Json_>, ApiError> {
    let id = run_id(&id)?;
    let d = decision(&body)?;
    blocking(move || {
        let proof = app::Proof::Password(d.password.as_deref().unwrap_or(""));
        Ok(Json(json!(s.imports().approve(&u, id, d.code.as_deref(), proof)?)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextQuery {
    schedule: String,
    tz: Option<String>,
    from: Option<String>,
    count: Option<usize>,
}

async fn schedule_next(
    State(s): State<Arc<App>>,
    Caller(_): Caller,
    q: Result<Query<NextQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(q) = q.map_err(|e| bad(format!("{}; pass ?schedule=...&tz=...", e.body_text())))?;
    let zone = q.tz.unwrap_or_else(|| s.zone().to_string());
    crate::schedule::preview(&q.schedule, &zone, q.from.as_deref(), q.count.unwrap_or(5), s.now())
        .map(Json)
        .map_err(|e| bad(e.to_string()))
}

async fn list_rules(State(s): State<Arc<App>>, Caller(u): Caller) -> Json<Json_> {
    Json(json!(s.rules().list(&u)))
}

async fn show_rule(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || {
        let (info, source) = s.rules().show(&u, &name)?;
        Ok(Json(json!({ "name": info.name, "hash": info.hash, "source": source })))
    })
    .await
}

async fn rule_versions(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.rules().history(&u, &name)?)))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSource {
    source: String,
}

async fn save_rule(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    body: Result<Json<RuleSource>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Json(body) = body.map_err(|e| bad(format!("{}; send {{\"source\": \"...\"}}", e.body_text())))?;
    blocking(move || Ok(Json(json!(s.rules().save(&u, &name, &format!("{name}.rhai"), &body.source)?)))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTest {
    /// A draft to test instead of the saved rule.
    source: Option<String>,
    sample: Json_,
    #[serde(default)]
    params: serde_json::Map<String, Json_>,
}

/// The rule workbench: a rule (the saved one, or a draft) over sample
/// rows, with the values that decided each. Nothing is saved.
async fn test_rule(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    body: Result<Json<RuleTest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Json(body) = body.map_err(|e| bad(e.body_text()))?;
    blocking(move || {
        let rows = crate::records::records_from_json(&body.sample).map_err(|e| bad(format!("sample: {e}")))?;
        let params = crate::records::record_from_json(&body.params).map_err(|e| bad(format!("params: {e}")))?;
        let shown = format!("{name}.rhai (draft)");
        let draft = match &body.source {
            Some(source) => app::Draft::Source { shown: &shown, source },
            None => app::Draft::Saved,
        };
        Ok(Json(json!(s.rules().test(&u, &name, draft, &rows, &params)?)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxQuery {
    status: Option<String>,
    limit: Option<usize>,
}

async fn outbox(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    q: Result<Query<OutboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let status = q.status.as_deref().map(str::parse).transpose().map_err(bad)?;
    blocking(move || {
        let entries = s.outbox().list(&u, status, page(q.limit, 50)?)?;
        let list: Vec<Json_> = entries.iter().map(|(id, e)| json!({ "id": id, "entry": e })).collect();
        Ok(Json(json!(list)))
    })
    .await
}

async fn hosts(State(s): State<Arc<App>>, Caller(u): Caller) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.storage().hosts(&u)?)))).await
}

/// A user as the API takes it: the name comes from the path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    role: crate::users::Role,
    #[serde(default)]
    email: String,
    #[serde(default)]
    permissions: Vec<crate::users::Permission>,
    #[serde(default)]
    job_email: crate::users::JobEmail,
}

async fn list_users(State(s): State<Arc<App>>, Caller(u): Caller) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.users().list(&u)?)))).await
}

async fn put_user(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    body: Result<Json<UserBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Json(b) = body.map_err(|e| bad(format!("{}; send {{\"role\": \"staff\", ...}}", e.body_text())))?;
    blocking(move || {
        let user = User { name, email: b.email, role: b.role, permissions: b.permissions, job_email: b.job_email };
        s.users().put(&u, &user)?;
        Ok(Json(json!(user)))
    })
    .await
}

async fn issue_token(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    blocking(move || Ok((StatusCode::CREATED, Json(json!({ "token": s.users().issue_token(&u, &name)? }))))).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemoveUserQuery {
    /// Hand the user's tasks to this user instead of disabling them.
    to: Option<String>,
}

async fn remove_user(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    q: Result<Query<RemoveUserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    blocking(move || Ok(Json(json!(s.users().remove(&u, &name, q.to.as_deref())?)))).await
}

async fn list_tokens(State(s): State<Arc<App>>, Caller(u): Caller) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.users().tokens(&u)?)))).await
}

async fn revoke_token(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.users().revoke_token(&u, &id)?)))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn audit_log(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    blocking(move || {
        let entries = s.audit_log().list(&u, q.after, page(q.limit, 100)?)?;
        let list: Vec<Json_> = entries.iter().map(|(n, e)| json!({ "seq": n, "entry": e })).collect();
        Ok(Json(json!(list)))
    })
    .await
}

async fn list_secrets(State(s): State<Arc<App>>, Caller(u): Caller) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.users().secret_names(&u)?)))).await
}

async fn list_sources(State(s): State<Arc<App>>, Caller(u): Caller) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.sources().list(&u)?)))).await
}

async fn show_source(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.sources().show(&u, &name)?)))).await
}

async fn add_source(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    body: Result<Json<crate::sources::Location>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let Json(location) = body.map_err(|e| {
        bad(format!("{}; send {{\"folder\": {{\"folder\": \"batch\"}}}} or {{\"sftp\": {{...}}}}", e.body_text()))
    })?;
    blocking(move || Ok((StatusCode::CREATED, Json(json!(s.sources().add(&u, &name, location)?))))).await
}

async fn remove_source(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        s.sources().remove(&u, &name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PrefixQuery {
    prefix: Option<String>,
}

async fn test_source(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    q: Result<Query<PrefixQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    blocking(move || Ok(Json(json!(s.sources().test(&u, &name, q.prefix.as_deref().unwrap_or(""))?)))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    host_key: String,
}

async fn accept_source(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    body: Result<Json<AcceptBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Json(b) = body.map_err(|e| bad(format!("{}; send {{\"host_key\": \"SHA256:...\"}}", e.body_text())))?;
    blocking(move || Ok(Json(json!(s.sources().accept(&u, &name, &b.host_key)?)))).await
}

async fn list_plugins(State(s): State<Arc<App>>, Caller(u): Caller) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.plugins().list(&u)?)))).await
}

async fn show_plugin(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.plugins().inspect(&u, &name)?)))).await
}

async fn remove_plugin(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    blocking(move || Ok(Json(json!(s.plugins().remove(&u, &name)?)))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapabilityBody {
    capability: String,
}

fn capability(
    body: Result<Json<CapabilityBody>, axum::extract::rejection::JsonRejection>,
) -> Result<crate::plugins::Capability, ApiError> {
    let Json(b) = body.map_err(|e| bad(format!("{}; send {{\"capability\": \"read:students\"}}", e.body_text())))?;
    b.capability.parse().map_err(|e: String| bad(e))
}

async fn grant_plugin(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    body: Result<Json<CapabilityBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Json_>, ApiError> {
    let cap = capability(body)?;
    blocking(move || Ok(Json(json!(s.plugins().grant(&u, &name, cap)?)))).await
}

async fn revoke_plugin(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    body: Result<Json<CapabilityBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Json_>, ApiError> {
    let cap = capability(body)?;
    blocking(move || Ok(Json(json!(s.plugins().revoke(&u, &name, &cap)?)))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
}

async fn collection_page(
    State(s): State<Arc<App>>,
    Caller(u): Caller,
    Path(name): Path<String>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    blocking(move || {
        let page = s.collections().page(&u, &name, page(q.limit, 50)?)?;
        let records: Vec<Json_> = page.records.iter().map(crate::records::record_to_json).collect();
        Ok(Json(json!({ "records": records, "total": page.total })))
    })
    .await
}

async fn openapi() -> Json<Json_> {
    Json(openapi_document())
}

/// The OpenAPI 3.1 description of this API.
pub fn openapi_document() -> Json_ {
    let error = json!({ "description": "what went wrong and what to fix", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let ok = |d: &str, schema: &str| json!({ "description": d, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
    let name = json!([{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }]);
    let id = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }]);
    let errors = |extra: Json_| {
        let mut r = json!({ "400": error, "401": error, "403": error, "404": error, "409": error });
        if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
            r.extend(extra.clone());
        }
        r
    };
    let ready = json!({ "description": "every part and how it is", "content": { "application/json": { "schema": {
        "type": "object", "required": ["ready", "parts"], "properties": {
            "ready": { "type": "boolean" },
            "parts": { "type": "array", "items": { "type": "object", "required": ["name", "ok", "detail"], "properties": {
                "name": { "type": "string" }, "ok": { "type": "boolean" }, "detail": { "type": "string" } } } } } } } } });
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": { "title": "Schoolbell", "version": env!("CARGO_PKG_VERSION"), "description": "Timed tasks and background runs. Authenticate with `Authorization: Bearer TOKEN` (`schoolbell user token NAME`)." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Decision": { "type": "object", "properties": { "comment": { "type": "string" }, "code": { "type": "string" }, "password": { "type": "string", "description": "the decider's own password, entered again (confirm; approve without a code)" } } },
                "Submit": { "type": "object", "additionalProperties": false, "properties": {
                    "at": { "type": "string", "description": "when to start: YYYY-MM-DD HH:MM in the task's zone, or RFC 3339; none: at once" },
                    "high_priority": { "type": "boolean", "description": "ahead of normal-priority runs (the set-priority permission)" },
                    "keep": { "type": "boolean", "description": "kept until deleted by hand" } } },
                "TaskView": { "type": "object", "properties": { "task": { "type": "object" }, "next": { "type": "array", "items": { "$ref": "#/components/schemas/Fire" } } } },
                "Fire": { "type": "object", "properties": { "local": { "type": "string" }, "utc": { "type": "string", "format": "date-time" } } },
                "Messages": { "type": "object", "properties": { "messages": { "type": "array", "items": { "$ref": "#/components/schemas/TaskMessage" } },
                    "next": { "type": ["integer", "null"] } } }
            }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/api/v1/tasks": {
                "get": { "summary": "List the tasks you may see", "responses": { "200": { "description": "tasks" } } },
                "post": { "summary": "Add a task", "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/TaskSpec" } } } }, "responses": errors(json!({ "201": ok("the task and its next fire times", "TaskView") })) }
            },
            "/api/v1/tasks/{name}": {
                "parameters": name,
                "get": { "summary": "A task and its next five fire times", "responses": errors(json!({ "200": ok("the task", "TaskView") })) },
                "delete": { "summary": "Remove a task", "responses": errors(json!({ "204": { "description": "removed" } })) }
            },
            "/api/v1/tasks/{name}/enable": { "parameters": name, "post": { "summary": "Enable a task", "responses": errors(json!({ "200": ok("the task", "TaskView") })) } },
            "/api/v1/tasks/{name}/disable": { "parameters": name, "post": { "summary": "Disable a task", "responses": errors(json!({ "200": ok("the task", "TaskView") })) } },
            "/api/v1/tasks/{name}/run-now": { "parameters": name, "post": { "summary": "Queue a run now, or submit it to the batch queue for later", "requestBody": { "required": false, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Submit" } } } }, "responses": errors(json!({ "202": ok("the queued run", "Run") })) } },
            "/api/v1/runs": { "get": { "summary": "Runs you may see, newest first", "parameters": [
                { "name": "status", "in": "query", "schema": { "type": "string" } }, { "name": "task", "in": "query", "schema": { "type": "string" } }, { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }
            ], "responses": errors(json!({ "200": { "description": "runs" } })) } },
            "/api/v1/runs/{id}": {
                "parameters": id,
                "get": { "summary": "One run", "responses": errors(json!({ "200": ok("the run", "Run") })) },
                "delete": { "summary": "Delete a finished or cancelled run", "responses": errors(json!({ "204": { "description": "deleted" } })) }
            },
            "/api/v1/runs/{id}/cancel": { "parameters": id, "post": { "summary": "Cancel a run", "responses": errors(json!({ "200": ok("the run", "Run") })) } },
            "/api/v1/runs/{id}/messages": { "parameters": id, "get": { "summary": "A run's messages (the Task Messages tab)", "parameters": [
                { "name": "status", "in": "query", "schema": { "type": "string" } }, { "name": "after", "in": "query", "schema": { "type": "integer" } },
                { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }, { "name": "format", "in": "query", "schema": { "enum": ["json", "csv"] } }
            ], "responses": errors(json!({ "200": ok("a page of messages, or CSV", "Messages") })) } },
            "/api/v1/tasks/{name}/test-import": { "parameters": name, "post": { "summary": "Queue a test import (dry run): plan and report, write nothing", "responses": errors(json!({ "202": ok("the queued run", "Run") })) } },
            "/api/v1/runs/{id}/plan": { "parameters": id, "get": { "summary": "An import run's plan: what each row does, by change type (first 10,000 rows)", "parameters": [
                { "name": "type", "in": "query", "schema": { "enum": ["new", "updated", "existing", "ended", "removed", "multiple", "duplicate", "inactivated", "error"] } }, { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }
            ], "responses": errors(json!({ "200": { "description": "the plan" } })) } },
            "/api/v1/runs/{id}/commit": { "parameters": id, "post": { "summary": "Commit a test import's plan exactly as planned (409 if the file, rule or plugin changed, or if the guard holds it)", "responses": errors(json!({ "200": ok("the run", "Run") })) } },
            "/api/v1/runs/{id}/confirm": { "parameters": id, "post": { "summary": "Confirm an import held for confirmation, and commit it", "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Decision" } } } }, "responses": errors(json!({ "200": ok("the run", "Run") })) } },
            "/api/v1/runs/{id}/request": { "parameters": id, "post": { "summary": "File an authorization request, with a comment", "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Decision" } } } }, "responses": errors(json!({ "200": ok("the run", "Run") })) } },
            "/api/v1/runs/{id}/code": { "parameters": id, "post": { "summary": "Issue a one-time approval code (authorize permission)", "responses": errors(json!({ "200": { "description": "{\"code\": ...}" } })) } },
            "/api/v1/runs/{id}/approve": { "parameters": id, "post": { "summary": "Approve a held import: authorize permission, or a one-time code", "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Decision" } } } }, "responses": errors(json!({ "200": ok("the run", "Run") })) } },
            "/api/v1/schedule/next": { "get": { "summary": "Preview a schedule's next fire times", "parameters": [
                { "name": "schedule", "in": "query", "required": true, "schema": { "type": "string" } }, { "name": "tz", "in": "query", "schema": { "type": "string" } },
                { "name": "from", "in": "query", "schema": { "type": "string" } }, { "name": "count", "in": "query", "schema": { "type": "integer" } }
            ], "responses": { "200": { "description": "fire times in the zone and in UTC" }, "400": error, "401": error } } },
            "/api/v1/rules": { "get": { "summary": "The loaded admin rules (name, file, hash)", "responses": errors(json!({ "200": { "description": "rules" } })) } },
            "/api/v1/rules/{name}": {
                "parameters": name,
                "get": { "summary": "A rule's source", "responses": errors(json!({ "200": { "description": "{name, hash, source}" } })) },
                "put": { "summary": "Save a rule (account owner); refused with its line if it does not compile; runs use it from now on", "requestBody": { "content": { "application/json": { "schema": { "type": "object", "required": ["source"], "properties": { "source": { "type": "string" } } } } } }, "responses": errors(json!({ "200": { "description": "{name, file, hash}" } })) }
            },
            "/api/v1/rules/{name}/test": { "parameters": name, "post": { "summary": "Test the rule (or a draft `source`) over sample rows; saves nothing", "requestBody": { "content": { "application/json": { "schema": { "type": "object", "required": ["sample"], "properties": {
                "source": { "type": "string" }, "sample": { "type": "array", "items": { "type": "object" } }, "params": { "type": "object" } } } } } },
                "responses": errors(json!({ "200": { "description": "{matched, rows: [{row, matched, reason} | {row, error}]}" } })) } },
            "/api/v1/rules/{name}/versions": { "parameters": name, "get": { "summary": "The rule's saved versions, oldest first: who saved each, when, and its source", "responses": errors(json!({ "200": { "description": "[{name, version, hash, saved_by, saved_at, source}]" } })) } },
            "/api/v1/outbox": { "get": { "summary": "Outbox entries you may see (owner: all; staff: their tasks'), newest last", "parameters": [
                { "name": "status", "in": "query", "schema": { "enum": ["pending", "sent", "failed"] } }, { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }
            ], "responses": errors(json!({ "200": { "description": "[{id, entry}]" } })) } },
            "/api/v1/hosts": { "get": { "summary": "The hosts serving from the store, each with its id, machine, pid, start, last heartbeat and the runs it holds (account owner)", "responses": errors(json!({ "200": { "description": "[{id, name, pid, started_at, heartbeat_at, runs_held}]" } })) } },
            "/api/v1/users": { "get": { "summary": "Users (account owner)", "responses": errors(json!({ "200": { "description": "[user]" } })) } },
            "/api/v1/users/{name}": { "parameters": name, "put": { "summary": "Add or replace a user (account owner)", "requestBody": { "content": { "application/json": { "schema": { "type": "object", "required": ["role"], "properties": {
                "role": { "enum": ["owner", "staff"] }, "email": { "type": "string" }, "permissions": { "type": "array", "items": { "enum": ["autopilot", "authorize"] } }, "job_email": { "enum": ["always", "on-failure", "never"] } } } } } },
                "responses": errors(json!({ "200": { "description": "the user" } })) },
                "delete": { "summary": "Remove a user, their tokens and sessions; their tasks are disabled, or handed to `to` (account owner)", "parameters": [{ "name": "to", "in": "query", "schema": { "type": "string" } }], "responses": errors(json!({ "200": { "description": "{tasks, handed_to, runs, cancelled}" } })) } },
            "/api/v1/users/{name}/tokens": { "parameters": name, "post": { "summary": "Issue an API token, shown once (account owner)", "responses": errors(json!({ "201": { "description": "{token}" } })) } },
            "/api/v1/tokens": { "get": { "summary": "API tokens: id, user, issued, last used; never the token (account owner)", "responses": errors(json!({ "200": { "description": "[token]" } })) } },
            "/api/v1/tokens/{id}": { "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }], "delete": { "summary": "Revoke a token (account owner)", "responses": errors(json!({ "200": ok("the revoked token", "Token") })) } },
            "/api/v1/audit": { "get": { "summary": "The audit log, oldest first (account owner)", "parameters": [{ "name": "after", "in": "query", "schema": { "type": "integer" } }, { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }], "responses": errors(json!({ "200": { "description": "[{seq, entry: AuditEntry}]" } })) } },
            "/api/v1/secrets": { "get": { "summary": "The stored secrets' names, never their values (account owner)", "responses": errors(json!({ "200": { "description": "[name]" } })) } },
            "/api/v1/sources": { "get": { "summary": "Import sources (account owner)", "responses": errors(json!({ "200": { "description": "[source]" } })) } },
            "/api/v1/sources/{name}": {
                "parameters": name,
                "get": { "summary": "One source (account owner)", "responses": errors(json!({ "200": ok("the source", "Source") })) },
                "put": { "summary": "Define a source: a folder under [sandbox.folders], or an SFTP server (account owner)", "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Location" } } } }, "responses": errors(json!({ "201": ok("the source", "Source") })) },
                "delete": { "summary": "Remove a source no task uses (account owner)", "responses": errors(json!({ "204": { "description": "removed" } })) }
            },
            "/api/v1/sources/{name}/test": { "parameters": name, "post": { "summary": "Test connection: reach a source, log in, list the folder, check files can be renamed there; the failing step in one line (account owner)", "parameters": [{ "name": "prefix", "in": "query", "schema": { "type": "string" } }], "responses": errors(json!({ "200": ok("what was reached", "Reached") })) } },
            "/api/v1/sources/{name}/accept": { "parameters": name, "post": { "summary": "Accept an SFTP server's host key, or pin an FTPS server's certificate, as the test showed it (account owner)", "requestBody": { "content": { "application/json": { "schema": { "type": "object", "required": ["host_key"], "properties": { "host_key": { "type": "string" } } } } } }, "responses": errors(json!({ "200": ok("the source", "Source") })) } },
            "/api/v1/plugins": { "get": { "summary": "Installed plugins", "responses": errors(json!({ "200": { "description": "[plugin]" } })) } },
            "/api/v1/plugins/{name}": {
                "parameters": name,
                "get": { "summary": "One plugin: parameters, capabilities, grants", "responses": errors(json!({ "200": { "description": "the plugin" } })) },
                "delete": { "summary": "Remove a plugin (account owner)", "responses": errors(json!({ "200": { "description": "the removed plugin" } })) }
            },
            "/api/v1/plugins/{name}/grant": { "parameters": name, "post": { "summary": "Grant a capability the plugin declared (account owner)", "requestBody": { "content": { "application/json": { "schema": { "type": "object", "required": ["capability"], "properties": { "capability": { "type": "string" } } } } } }, "responses": errors(json!({ "200": { "description": "the plugin" } })) } },
            "/api/v1/plugins/{name}/revoke": { "parameters": name, "post": { "summary": "Revoke a capability (account owner)", "requestBody": { "content": { "application/json": { "schema": { "type": "object", "required": ["capability"], "properties": { "capability": { "type": "string" } } } } } }, "responses": errors(json!({ "200": { "description": "the plugin" } })) } },
            "/api/v1/collections/{name}": { "parameters": name, "get": { "summary": "The first records of a collection (account owner)", "parameters": [{ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }], "responses": errors(json!({ "200": { "description": "{records, total}" } })) } },
            "/api/v1/openapi.json": { "get": { "summary": "This document", "security": [], "responses": { "200": { "description": "OpenAPI 3.1" } } } },
            "/healthz": { "get": { "summary": "200 while the process is up (no token)", "security": [], "responses": { "200": { "description": "`ok`", "content": { "text/plain": { "schema": { "type": "string" } } } } } } },
            "/readyz": { "get": { "summary": "Whether the store, the scheduler loop and the SMTP server (if set) are well (no token)", "security": [],
                "responses": { "200": ready.clone(), "503": ready } } },
            "/metrics": { "get": { "summary": "Prometheus metrics; with `[api] metrics_token` set, that token as the bearer", "security": [{}, { "bearer": [] }],
                "responses": { "200": { "description": "the Prometheus text format", "content": { "text/plain": { "schema": { "type": "string" } } } }, "401": error } } }
        }
    });
    // The request and response bodies' schemas come from the types
    // themselves (their doc comments included), so they cannot drift.
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.extend(type_schemas());
    }
    doc
}

/// JSON Schemas of the types the API reads and writes, by name, with
/// references into `#/components/schemas/`.
fn type_schemas() -> serde_json::Map<String, Json_> {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
    });
    let mut generator = schemars::SchemaGenerator::new(settings);
    generator.subschema_for::<TaskSpec>();
    generator.subschema_for::<crate::runs::Run>();
    generator.subschema_for::<TaskMessage>();
    generator.subschema_for::<crate::sources::Source>();
    generator.subschema_for::<crate::imports::Reached>();
    generator.subschema_for::<crate::users::Token>();
    generator.subschema_for::<crate::audit::AuditEntry>();
    generator.take_definitions(true).into_iter().collect()
}
