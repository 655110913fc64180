//! All System Tasks: the runs grid, its filters (in the address), saved
//! views, live updates, cancel, delete and the bulk cancel.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::Form;
use axum_extra::extract::Query;
use chrono::{NaiveDate, TimeZone};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::layout::{self, Page};
use super::{ConsoleError, Session, back_to, blocking, local};
use crate::app::App;
use crate::app::{Count, PageAt, RunPage, Sort};
use crate::runs::{Run, RunQuery, RunStatus, TimeColumn, Trigger};
use crate::views::{COLUMNS, SavedView};

/// Rows per page.
const PAGE_ROWS: usize = 50;

/// The grid's address: filters, sort, page and columns.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub(super) struct GridQuery {
    #[serde(default)]
    status: Vec<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    owner: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    trigger: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    task: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    from: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    sort: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    order: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    columns: Option<String>,
    #[serde(default, skip_serializing)]
    before: Option<u64>,
    #[serde(default, skip_serializing)]
    offset: Option<usize>,
}

fn is_blank(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(|s| s.trim().is_empty())
}

fn blank_none(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

impl GridQuery {
    /// The filters as the runs service reads them; a bad value is one clear line.
    fn query(&self, app: &App) -> Result<RunQuery, ConsoleError> {
        let bad = |m: String| ConsoleError::new(StatusCode::BAD_REQUEST, m);
        let zone: chrono_tz::Tz = app.zone().parse().unwrap_or(chrono_tz::UTC);
        let day = |field: &str, v: &Option<String>| -> Result<Option<chrono::DateTime<chrono::Utc>>, ConsoleError> {
            let Some(v) = blank_none(v) else { return Ok(None) };
            let date = NaiveDate::parse_from_str(&v, "%Y-%m-%d")
                .map_err(|_| bad(format!("filter `{field}`: `{v}` is not a date like 2026-09-01")))?;
            let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
            Ok(zone.from_local_datetime(&midnight).earliest().map(|t| t.with_timezone(&chrono::Utc)))
        };
        let mut statuses = Vec::new();
        for s in self.status.iter().filter(|s| !s.trim().is_empty()) {
            statuses.push(s.parse::<RunStatus>().map_err(bad)?);
        }
        // "To" names the last day shown, inclusive.
        let to = day("to", &self.to)?.map(|t| t + chrono::Duration::days(1));
        Ok(RunQuery {
            statuses,
            kind: blank_none(&self.kind),
            owner: blank_none(&self.owner),
            trigger: blank_none(&self.trigger).map(|t| t.parse::<Trigger>()).transpose().map_err(bad)?,
            task: blank_none(&self.task),
            from: day("from", &self.from)?,
            to,
        })
    }

    fn sort(&self) -> Result<Sort, ConsoleError> {
        let column = match blank_none(&self.sort) {
            Some(c) => c.parse::<TimeColumn>().map_err(|m| ConsoleError::new(StatusCode::BAD_REQUEST, m))?,
            None => TimeColumn::Queued,
        };
        Ok(Sort { column, ascending: self.order.as_deref() == Some("asc") })
    }

    fn at(&self) -> PageAt {
        match (self.before, self.offset) {
            (Some(b), _) => PageAt::Before(b),
            (_, Some(o)) if o > 0 => PageAt::Offset(o),
            _ => PageAt::Start,
        }
    }

    fn columns(&self) -> Vec<String> {
        let picked: Vec<String> = blank_none(&self.columns)
            .map(|c| {
                c.split(',').map(str::trim).filter(|c| COLUMNS.contains(c)).map(str::to_string).collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if picked.is_empty() { COLUMNS.iter().map(|c| c.to_string()).collect() } else { picked }
    }

    /// The address of these filters (no page).
    fn encoded(&self) -> String {
        filters_address(self)
    }
}

/// The filters, sort and columns as a query string (repeated `status`).
fn filters_address(q: &GridQuery) -> String {
    let mut pairs: Vec<(String, String)> = q.status.iter().map(|s| ("status".to_string(), s.clone())).collect();
    let mut single = |k: &str, v: &Option<String>| {
        if let Some(v) = blank_none(v) {
            pairs.push((k.to_string(), v));
        }
    };
    single("kind", &q.kind);
    single("owner", &q.owner);
    single("trigger", &q.trigger);
    single("task", &q.task);
    single("from", &q.from);
    single("to", &q.to);
    single("sort", &q.sort);
    single("order", &q.order);
    single("columns", &q.columns);
    serde_urlencoded::to_string(&pairs).unwrap_or_default()
}

/// The grid's start page.
pub(super) async fn page(
    State(app): State<Arc<App>>,
    session: Session,
    q: Result<Query<GridQuery>, axum_extra::extract::QueryRejection>,
) -> Result<Response, ConsoleError> {
    let Query(q) = q.map_err(|e| ConsoleError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let query = q.query(&app)?;
    let sort = q.sort()?;
    let (a, user, rq) = (app.clone(), session.user.clone(), query.clone());
    let at = q.at();
    let (page, views, cancelable) = blocking(move || {
        let runs = a.runs();
        let page = runs.page(&user, &rq, sort, at, PAGE_ROWS)?;
        let cancelable = if rq.is_empty() { 0 } else { runs.cancelable(&user, &rq)?.len() };
        Ok((page, a.users().views(&user)?, cancelable))
    })
    .await?;
    let encoded = q.encoded();
    let body = html! {
        h1 { "All System Tasks" }
        (filters(&session, &q))
        (views_bar(&session, &q, &views, &encoded))
        @if cancelable > 0 {
            (bulk_cancel(&session, &q, &query, cancelable, &encoded))
        }
        div id="grid" data-live={ (session.link("/runs/events")) "?" (encoded)
            @if let Some(b) = q.before { "&before=" (b) } @if let Some(o) = q.offset { "&offset=" (o) } } {
            (grid(&app, &session, &q, &page, &encoded))
        }
    };
    Ok(layout::page(&session, Page::new("All System Tasks").section("runs").scripted(), body).into_response())
}

fn filters(session: &Session, q: &GridQuery) -> Markup {
    let selected = |v: &Option<String>, x: &str| v.as_deref() == Some(x);
    html! {
        details.filters open[!q.encoded().is_empty()] {
            summary { "Filters" }
            form method="get" action=(session.link("/")) aria-label="Filter runs" {
                fieldset.grid-filters {
                    div {
                        label for="f-status" { "Status" }
                        select id="f-status" name="status" multiple size="4" {
                            @for s in RunStatus::ALL {
                                option value=(s.as_str()) selected[q.status.iter().any(|x| x == s.as_str())] { (s.as_str()) }
                            }
                        }
                    }
                    div {
                        label for="f-kind" { "Kind" }
                        select id="f-kind" name="kind" {
                            option value="" { "any" }
                            @for k in crate::app::Kinds::ALL { option value=(k) selected[selected(&q.kind, k)] { (k) } }
                        }
                    }
                    div { label for="f-owner" { "Owner" } input id="f-owner" name="owner" value=[q.owner.as_deref()] placeholder="any"; }
                    div { label for="f-task" { "Task" } input id="f-task" name="task" value=[q.task.as_deref()] placeholder="any"; }
                    div {
                        label for="f-trigger" { "Trigger" }
                        select id="f-trigger" name="trigger" {
                            option value="" { "any" }
                            @for t in ["user", "schedule", "workflow"] { option value=(t) selected[selected(&q.trigger, t)] { (t) } }
                        }
                    }
                    div { label for="f-from" { "Queued from" } input id="f-from" type="date" name="from" value=[q.from.as_deref()]; }
                    div { label for="f-to" { "Queued to" } input id="f-to" type="date" name="to" value=[q.to.as_deref()]; }
                    div {
                        label for="f-sort" { "Sort by" }
                        select id="f-sort" name="sort" {
                            @for c in ["queued", "started", "finished"] { option value=(c) selected[selected(&q.sort, c)] { (c) } }
                        }
                    }
                    div {
                        label for="f-order" { "Order" }
                        select id="f-order" name="order" {
                            option value="desc" { "newest first" }
                            option value="asc" selected[selected(&q.order, "asc")] { "oldest first" }
                        }
                    }
                    @if let Some(c) = blank_none(&q.columns) { input type="hidden" name="columns" value=(c); }
                }
                button type="submit" { "Apply" }
                " "
                a href=(session.link("/")) { "Clear filters" }
            }
        }
    }
}

fn views_bar(session: &Session, q: &GridQuery, views: &[SavedView], encoded: &str) -> Markup {
    let columns = q.columns().join(", ");
    html! {
        details.views {
            summary { "Views" }
            @if !views.is_empty() {
                ul.saved-views {
                    @for v in views {
                        li {
                            a href=(view_link(session, v)) { (v.name) }
                            form.inline method="post" action=(session.link("/views/delete")) {
                                input type="hidden" name="csrf" value=(session.csrf);
                                input type="hidden" name="name" value=(v.name);
                                button.secondary.outline.small type="submit" aria-label={ "Remove view " (v.name) } { "Remove" }
                            }
                        }
                    }
                }
            }
            form method="post" action=(session.link("/views")) aria-label="Save this view" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="query" value=(strip_columns(encoded));
                label for="v-columns" { "Columns, in order (from: " (COLUMNS.join(", ")) ")" }
                input id="v-columns" name="columns" value=(columns) required;
                label for="v-name" { "Save these filters and columns as" }
                input id="v-name" name="name" required maxlength="60" placeholder="e.g. Failed imports";
                button type="submit" { "Save view" }
            }
        }
    }
}

/// A saved view's address: its filters, then its columns.
fn view_link(session: &Session, view: &SavedView) -> String {
    let sep = if view.query.is_empty() { "" } else { "&" };
    format!("{}?{}{sep}columns={}", session.link("/"), view.query, view.columns.join(","))
}

fn strip_columns(encoded: &str) -> String {
    encoded.split('&').filter(|p| !p.starts_with("columns=") && !p.is_empty()).collect::<Vec<_>>().join("&")
}

fn describe(query: &RunQuery) -> String {
    let mut parts = Vec::new();
    if !query.statuses.is_empty() {
        parts.push(format!("status {}", query.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" or ")));
    }
    if let Some(k) = &query.kind {
        parts.push(format!("kind {k}"));
    }
    if let Some(o) = &query.owner {
        parts.push(format!("owner {o}"));
    }
    if let Some(t) = &query.task {
        parts.push(format!("task {t}"));
    }
    if let Some(t) = &query.trigger {
        parts.push(format!("trigger {t}"));
    }
    if let Some(f) = &query.from {
        parts.push(format!("queued from {}", f.format("%Y-%m-%d %H:%M UTC")));
    }
    if let Some(t) = &query.to {
        parts.push(format!("queued before {}", t.format("%Y-%m-%d %H:%M UTC")));
    }
    parts.join(", ")
}

fn bulk_cancel(session: &Session, q: &GridQuery, query: &RunQuery, count: usize, encoded: &str) -> Markup {
    html! {
        p.bulk {
            button.secondary type="button" data-dialog="bulk-cancel" { "Cancel all " (count) " matching runs…" }
        }
        dialog id="bulk-cancel" aria-labelledby="bulk-cancel-title" {
            article {
                h2 id="bulk-cancel-title" { "Cancel " (count) " runs?" }
                p { "Every run you may cancel that matches " strong.filter-text { (describe(query)) } " and has not finished: " strong { (count) } "." }
                form method="post" action=(session.link("/runs/cancel-matching")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="expected" value=(count);
                    input type="hidden" name="back" value={ (session.link("/")) "?" (encoded) };
                    @for s in &q.status { input type="hidden" name="status" value=(s); }
                    @for (k, v) in [("kind", &q.kind), ("owner", &q.owner), ("trigger", &q.trigger), ("task", &q.task), ("from", &q.from), ("to", &q.to)] {
                        @if let Some(v) = blank_none(v) { input type="hidden" name=(k) value=(v); }
                    }
                    footer {
                        button.secondary type="button" data-close { "No Thanks" }
                        " "
                        button type="submit" { "Yes, cancel " (count) }
                    }
                }
            }
        }
    }
}

fn grid(app: &App, session: &Session, q: &GridQuery, page: &RunPage, encoded: &str) -> Markup {
    let columns = q.columns();
    let count = match page.count {
        Count::Exact(1) => "1 run".to_string(),
        Count::Exact(n) => format!("{n} runs"),
        Count::AtLeast(n) => format!("many runs: {n} among the newest 10,000 (older runs are not counted)"),
    };
    let now = app.now();
    let sep = if encoded.is_empty() { "" } else { "&" };
    html! {
        p.count aria-live="polite" { (count) }
        div.table-scroll {
            table.runs {
                thead { tr {
                    @for c in &columns { th scope="col" { (c) } }
                    th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody {
                    @if page.runs.is_empty() { tr { td colspan=(columns.len() + 1) { "No runs match." } } }
                    @for (run, kind) in &page.runs {
                        tr data-href=(session.link(&format!("/runs/{}", run.id))) {
                            @for c in &columns { td { (cell(app, session, run, kind, c, now)) } }
                            td.actions { (actions(session, run, encoded)) }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if !matches!(q.at(), PageAt::Start) { a href={ (session.link("/")) "?" (encoded) } { "First page" } " " }
            @match page.next {
                Some(PageAt::Before(id)) => a href={ (session.link("/")) "?" (encoded) (sep) "before=" (id) } rel="next" { "Next page" },
                Some(PageAt::Offset(o)) => a href={ (session.link("/")) "?" (encoded) (sep) "offset=" (o) } rel="next" { "Next page" },
                _ => {},
            }
        }
    }
}

fn cell(
    app: &App,
    session: &Session,
    run: &Run,
    kind: &str,
    column: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Markup {
    match column {
        "task" => {
            html! { a href=(session.link(&format!("/runs/{}", run.id))) { (run.task) } " " small.id { "#" (run.id) } }
        }
        "kind" => html! { (kind) },
        "status" => html! {
            span class={ "status status-" (run.status.as_str()) } { (run.status.as_str()) }
            @if let Some(at) = run.waits_until(now) { br; small.starts { "starts " (local(app, Some(at))) } }
        },
        "progress" => {
            let label = match run.progress_total {
                Some(t) => format!("{} / {t}", run.progress_done),
                None if run.progress_done > 0 => run.progress_done.to_string(),
                None => String::new(),
            };
            html! {
                @if let Some(t) = run.progress_total {
                    progress value=(run.progress_done) max=(t.max(1)) aria-label={ "Progress of run " (run.id) } {}
                }
                span.progress-count { (label) }
                @for (k, v) in run.summary.iter().filter(|(_, v)| **v > 0).take(4) { " " small.summary { (k) " " (v) } }
            }
        }
        "owner" => html! { (run.owner) },
        "trigger" => html! { (run.trigger.to_string()) },
        "queued" => html! { (local(app, Some(run.queued_at))) },
        "started" => html! { (local(app, run.started_at)) },
        "finished" => html! { (local(app, run.finished_at)) },
        "duration" => {
            let end = run.finished_at.or(run.started_at.map(|_| now));
            match (run.started_at, end) {
                (Some(s), Some(e)) => html! { (duration(e - s)) },
                _ => html! {},
            }
        }
        _ => html! {},
    }
}

fn duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    }
}

fn actions(session: &Session, run: &Run, encoded: &str) -> Markup {
    let back = format!("{}?{encoded}", session.link("/"));
    let finished = run.status.is_finished();
    html! {
        @if !finished {
            button.icon.secondary.outline type="button" id={ "cancel-" (run.id) } data-dialog={ "cancel-dialog-" (run.id) }
                aria-label={ "Cancel run " (run.id) " of " (run.task) } title="Cancel" { "✕" }
            dialog id={ "cancel-dialog-" (run.id) } aria-labelledby={ "cancel-title-" (run.id) } {
                article {
                    h2 id={ "cancel-title-" (run.id) } { "Cancel this task?" }
                    p { (run.task) " (run " (run.id) ", " (run.status.as_str()) ")" }
                    form method="post" action=(session.link(&format!("/runs/{}/cancel", run.id))) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="back" value=(back);
                        footer {
                            button.secondary type="button" data-close { "No Thanks" }
                            " "
                            button type="submit" { "Yes" }
                        }
                    }
                }
            }
        }
        form.inline method="post" action=(session.link(&format!("/runs/{}/delete", run.id))) {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="back" value=(back);
            button.icon.secondary.outline type="submit" id={ "delete-" (run.id) } disabled[!finished]
                aria-label={ "Delete run " (run.id) " of " (run.task) }
                title=(if finished { "Delete" } else { "Only finished or cancelled runs can be deleted" }) { "🗑" }
        }
    }
}

/// The grid's live stream: the grid again, rendered by the server,
/// whenever a run changes (at most a few times a second).
pub(super) async fn events(
    State(app): State<Arc<App>>,
    crate::api::ClientAddress(from): crate::api::ClientAddress,
    session: Session,
    q: Result<Query<GridQuery>, axum_extra::extract::QueryRejection>,
) -> Result<Response, ConsoleError> {
    let Query(q) = q.map_err(|e| ConsoleError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let query = q.query(&app)?;
    let sort = q.sort()?;
    let slot = app.live_slot(&session.user.name).ok_or_else(|| {
        ConsoleError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "you have as many live views open as [console] streams_per_user allows; close one, or reload later",
        )
    })?;
    let permit = app.live_streams().try_acquire_owned().map_err(|_| {
        ConsoleError::new(StatusCode::SERVICE_UNAVAILABLE, "too many live views are open; reload later")
    })?;
    let mut changes = app.watch_runs();
    let stream = async_stream(move |tx| async move {
        let _held = (permit, slot);
        // The first render brings a grid that was paused (a hidden tab) up to date.
        let mut first = true;
        loop {
            if !first {
                if changes.changed().await.is_err() {
                    return;
                }
                // Runs change in bursts (progress of many rows): one render per burst.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            first = false;
            changes.borrow_and_update();
            // The session as it stands now: a revoked, expired or removed
            // user's stream ends; a demoted user's view narrows.
            let (a, from) = (app.clone(), from.clone());
            let current = session.clone();
            let again = tokio::task::spawn_blocking(move || current.again(&a, &from)).await;
            let Ok(Some(now)) = again else { return };
            let s = Arc::new(now);
            let (a, rq, qq) = (app.clone(), query.clone(), q.clone());
            let html = blocking(move || {
                let page = a.runs().page(&s.user, &rq, sort, qq.at(), PAGE_ROWS)?;
                Ok(grid(&a, &s, &qq, &page, &qq.encoded()).into_string())
            })
            .await;
            let Ok(html) = html else { return };
            if tx.send(Ok(Event::default().event("grid").data(html))).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// A stream fed by a task through a channel, ending when either side goes.
fn async_stream<F, Fut>(f: F) -> tokio_stream::wrappers::ReceiverStream<Result<Event, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, std::convert::Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[derive(Deserialize)]
pub(super) struct Action {
    csrf: String,
    back: Option<String>,
}

pub(super) async fn cancel(
    State(app): State<Arc<App>>,
    session: Session,
    Path(id): Path<u64>,
    Form(form): Form<Action>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let (a, user) = (app.clone(), session.user.clone());
    blocking(move || Ok(a.runs().cancel(&user, id)?)).await?;
    Ok(Redirect::to(&back_to(&session.base, form.back.as_deref())).into_response())
}

pub(super) async fn delete(
    State(app): State<Arc<App>>,
    session: Session,
    Path(id): Path<u64>,
    Form(form): Form<Action>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let (a, user) = (app.clone(), session.user.clone());
    blocking(move || Ok(a.runs().delete(&user, id)?)).await?;
    Ok(Redirect::to(&back_to(&session.base, form.back.as_deref())).into_response())
}

#[derive(Deserialize)]
pub(super) struct BulkCancel {
    csrf: String,
    back: Option<String>,
    expected: usize,
    #[serde(flatten)]
    filters: GridQuery,
}

pub(super) async fn cancel_matching(
    State(app): State<Arc<App>>,
    session: Session,
    Form(form): Form<BulkCancel>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let query = form.filters.query(&app)?;
    let (a, user) = (app.clone(), session.user.clone());
    blocking(move || Ok(a.runs().cancel_matching(&user, &query, form.expected)?)).await?;
    Ok(Redirect::to(&back_to(&session.base, form.back.as_deref())).into_response())
}

#[derive(Deserialize)]
pub(super) struct ViewForm {
    csrf: String,
    name: String,
    query: String,
    columns: String,
}

pub(super) async fn save_view(
    State(app): State<Arc<App>>,
    session: Session,
    Form(form): Form<ViewForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let columns: Vec<String> =
        form.columns.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_string).collect();
    let view = SavedView { name: form.name.trim().to_string(), query: strip_columns(&form.query), columns };
    let target = view_link(&session, &view);
    let (a, user) = (app.clone(), session.user.clone());
    blocking(move || Ok(a.users().save_view(&user, view)?)).await?;
    Ok(Redirect::to(&target).into_response())
}

#[derive(Deserialize)]
pub(super) struct RemoveView {
    csrf: String,
    name: String,
}

pub(super) async fn remove_view(
    State(app): State<Arc<App>>,
    session: Session,
    Form(form): Form<RemoveView>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let (a, user) = (app.clone(), session.user.clone());
    blocking(move || Ok(a.users().remove_view(&user, &form.name)?)).await?;
    Ok(Redirect::to(&session.link("/")).into_response())
}
