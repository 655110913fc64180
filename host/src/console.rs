//! The web console: the same operations as the API, as pages a person
//! uses, served by `schoolbell serve` at `/` (or under `[api] base_path`).
//!
//! Pages are maud templates rendered by this server (checked at compile
//! time, escaped by default) and plain links and forms, so filters live in
//! the address and back and forward work without script. One first-party
//! script adds the live grid (server-sent events) and the dialogs; Pico
//! CSS from npm is embedded at build time. Every handler calls the same
//! application services as the API: the permission checks are theirs.

mod admin;
mod assets;
mod grid;
mod layout;
mod plan_page;
mod profile;
mod rules_page;
mod run_page;
mod session;
mod tasks_page;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::html;

use crate::api::ApiError;
use crate::app::{self, App};

pub use assets::weight;
pub use session::Session;

/// A refusal or failure, shown as a page with the service's own message.
#[derive(Debug)]
pub struct ConsoleError {
    status: StatusCode,
    message: String,
}

impl ConsoleError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ConsoleError { status, message: message.into() }
    }
}

impl From<app::Error> for ConsoleError {
    fn from(e: app::Error) -> Self {
        // The API's mapping: the same statuses, the same generic 5xx text.
        let ApiError(status, message) = ApiError::from(e);
        ConsoleError { status, message }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = html! {
            article.refusal {
                h1 { (self.status.canonical_reason().unwrap_or("Refused")) }
                p role="alert" { (self.message) }
                p { a href={ (BASE.get().map_or("", String::as_str)) "/" } { "Back to the console" } }
            }
        };
        let page = layout::bare(&BASE.get().cloned().unwrap_or_default(), layout::Page::new("Refused"), body);
        layout::secure((self.status, page).into_response())
    }
}

/// The page for an address the console does not have.
pub fn not_found() -> ConsoleError {
    ConsoleError::new(StatusCode::NOT_FOUND, "there is no such page in the console")
}

/// The base path, for error pages that have no session to read it from.
static BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ConsoleError::new(StatusCode::INTERNAL_SERVER_ERROR, "the server failed to do this"))?
}

/// A time as the district reads it: in its zone, to the minute.
fn local(app: &App, t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else { return String::new() };
    match app.zone().parse::<chrono_tz::Tz>() {
        Ok(zone) => t.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string(),
        Err(_) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

/// A path back into the console from a form's `back` field or sign-in's
/// `next`: only a path under the base, never another site.
///
/// A browser drops tabs and newlines from a URL and reads `\\` as `/`, so
/// `/\t/evil.example` and `/\\evil.example` are other sites to it: any
/// whitespace, control character or backslash is refused, and so is a path
/// that starts `//` (another host) or parses with a scheme or an authority.
fn back_to(base: &str, back: Option<&str>) -> String {
    let on_this_site = |b: &str| {
        b.starts_with(&format!("{base}/"))
            && !b.starts_with("//")
            && !b[base.len()..].starts_with("//")
            && !b.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\')
            && b.parse::<axum::http::Uri>().is_ok_and(|u| u.scheme().is_none() && u.authority().is_none())
    };
    match back {
        Some(b) if on_this_site(b) => b.to_string(),
        _ => format!("{base}/"),
    }
}

/// The console's routes (under the base path), and its live streams apart:
/// those outlive the API's request timeout.
pub fn router(app: &App) -> (Router<Arc<App>>, Router<Arc<App>>) {
    let _ = BASE.set(app.config().api.base_path.clone());
    let pages = Router::new()
        .route("/", get(grid::page))
        .route("/login", get(session::sign_in_page).post(session::sign_in))
        .route("/logout", post(session::sign_out))
        .route("/assets/{name}", get(assets::serve))
        .route("/runs/cancel-matching", post(grid::cancel_matching))
        .route("/runs/{id}", get(run_page::page))
        .route("/runs/{id}/plan", get(plan_page::page))
        .route("/runs/{id}/decide", post(plan_page::decide))
        .route("/runs/{id}/messages.csv", get(run_page::messages_csv))
        .route("/runs/{id}/cancel", post(grid::cancel))
        .route("/runs/{id}/delete", post(grid::delete))
        .route("/views", post(grid::save_view))
        .route("/views/delete", post(grid::remove_view))
        .route("/tasks", get(tasks_page::list).post(tasks_page::save))
        .route("/tasks/new", get(tasks_page::new))
        .route("/tasks/preview", post(tasks_page::preview))
        .route("/tasks/{name}", get(tasks_page::edit).post(tasks_page::save))
        .route("/tasks/{name}/submit", post(tasks_page::submit))
        .route("/tasks/{name}/{action}", post(tasks_page::act))
        .route("/rules", get(rules_page::list))
        .route("/rules/{name}", get(rules_page::edit).post(rules_page::save))
        .route("/profile", get(profile::page).post(profile::save))
        .route(
            "/plugins",
            get(admin::plugins).post(admin::upload).layer(axum::extract::DefaultBodyLimit::max(admin::UPLOAD_LIMIT)),
        )
        .route("/plugins/{name}/{action}", post(admin::capability))
        .route("/outbox", get(admin::outbox))
        .route("/users", get(admin::users).post(admin::save_user))
        .layer(axum::middleware::map_response(layout::secure_headers))
        // Pico's stylesheet is most of a page's weight; gzip takes it to a sixth.
        .layer(tower_http::compression::CompressionLayer::new());
    let live = Router::new().route("/runs/events", get(grid::events));
    (pages, live)
}
