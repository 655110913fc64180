//! A run's page: its summary, and its Task Messages tab with a status
//! filter (only the statuses the run produced), paging by cursor and the
//! CSV export.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::layout::{self, Page};
use super::{ConsoleError, Session, blocking, local};
use crate::app::App;
use crate::runs::{RunStatus, TaskMessage};

/// Messages per page.
const PAGE_MESSAGES: usize = 100;

/// What the message tab shows.
#[derive(Deserialize, Default)]
pub(super) struct MessagesQuery {
    tab: Option<String>,
    status: Option<String>,
    after: Option<u64>,
}

fn status_filter(status: &Option<String>) -> Option<String> {
    status.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

pub(super) async fn page(
    State(app): State<Arc<App>>,
    session: Session,
    Path(id): Path<u64>,
    Query(q): Query<MessagesQuery>,
) -> Result<Response, ConsoleError> {
    let messages_tab = q.tab.as_deref() == Some("messages");
    let status = status_filter(&q.status);
    let (a, user, st) = (app.clone(), session.user.clone(), status.clone());
    let (run, plugin, statuses, messages, rows) = blocking(move || {
        let runs = a.runs();
        let run = runs.show(&user, id)?;
        let plugin = a.plugins().inspect(&user, &run.plugin).ok();
        let statuses = runs.message_statuses(&user, id)?;
        let messages =
            if messages_tab { Some(runs.messages(&user, id, st.as_deref(), q.after, PAGE_MESSAGES)?) } else { None };
        let lines: Vec<u64> = messages.iter().flat_map(|(m, _)| m.iter().filter_map(|m| m.row)).collect();
        let rows = runs.message_rows(&user, id, &lines)?;
        Ok((run, plugin, statuses, messages, rows))
    })
    .await?;
    let base = session.link(&format!("/runs/{id}"));
    // Test imports and held imports keep their plan for a decision.
    let has_plan =
        run.dry_run || matches!(run.status, RunStatus::AwaitingConfirmation | RunStatus::AwaitingAuthorization);
    let header_failure =
        run.error.as_deref().and_then(|e| e.split_once("File import has failed: ")).map(|(_, why)| why);
    let body = html! {
        p { a href=(session.link("/")) { "← All System Tasks" } }
        h1 { (run.task) " " small { "run " (run.id) } }
        @if let Some(why) = header_failure {
            div.banner.failure role="alert" { strong { "File import has failed" } ": " (why) }
        }
        nav.tabs aria-label="Run" {
            ul {
                li { a href=(base) aria-current=[(!messages_tab).then_some("page")] { "Summary" } }
                @if has_plan { li { a href={ (base) "/plan" } { "Import plan" } } }
                li { a href={ (base) "?tab=messages" } aria-current=[messages_tab.then_some("page")] { "Task Messages (" (run.message_count) ")" } }
            }
        }
        @if let Some((messages, next)) = &messages {
            form method="get" action=(base) aria-label="Filter messages" {
                input type="hidden" name="tab" value="messages";
                label for="m-status" { "Status" }
                select id="m-status" name="status" {
                    option value="" { "any" }
                    @for s in &statuses { option value=(s) selected[status.as_deref() == Some(s.as_str())] { (s) } }
                }
                button type="submit" { "Show" }
                " "
                a href={ (base) "/messages.csv" @if let Some(s) = &status { "?status=" (url(s)) } } download { "Export CSV" }
            }
            (messages_table(messages, &rows))
            nav.pager aria-label="Pages" {
                @if q.after.is_some() { a href={ (base) "?tab=messages" @if let Some(s) = &status { "&status=" (url(s)) } } { "First page" } " " }
                @if let Some(n) = next {
                    a rel="next" href={ (base) "?tab=messages" @if let Some(s) = &status { "&status=" (url(s)) } "&after=" (n) } { "Next page" }
                }
            }
        } @else {
            dl.summary {
                dt { "Status" } dd { span class={ "status status-" (run.status.as_str()) } { (run.status.as_str()) } }
                @if let Some(e) = &run.error { dt { "Error" } dd.error { (e) } }
                dt { "Outcome" }
                dd {
                    @if run.summary.is_empty() { "none yet" }
                    ul.counts { @for (k, v) in &run.summary { li { (k) ": " strong { (v) } } } }
                }
                dt { "Progress" }
                dd {
                    @if let Some(t) = run.progress_total { progress value=(run.progress_done) max=(t.max(1)) aria-label="Progress" {} " " }
                    (run.progress_done) @if let Some(t) = run.progress_total { " / " (t) }
                }
                dt { "Started by" } dd { (run.owner) " (" (run.trigger.to_string()) ")" @if run.dry_run { ", a test import" } }
                @if let Some(by) = &run.cancel_requested_by { dt { "Cancelled by" } dd { (by) } }
                dt { "Queued" } dd { (local(&app, Some(run.queued_at))) }
                dt { "Started" } dd { (local(&app, run.started_at)) }
                dt { "Finished" } dd { (local(&app, run.finished_at)) }
                dt { "Plugin" }
                dd {
                    (run.plugin)
                    @if let Some(p) = &plugin { " " (p.version) " (WIT " (p.wit_version) ", " (p.kind.to_string()) ")" }
                    @else { " (no longer installed)" }
                }
                @if !run.audit.is_empty() {
                    dt { "Decisions" }
                    dd { ul { @for a in &run.audit {
                        li { (local(&app, Some(a.at))) " " (a.user) " " (a.action) @if let Some(c) = &a.comment { ": “" (c) "”" } }
                    } } }
                }
            }
        }
    };
    Ok(layout::page(&session, Page::new(&format!("Run {id}")).section("runs"), body).into_response())
}

fn url(s: &str) -> String {
    serde_urlencoded::to_string([("", s)]).unwrap_or_default().trim_start_matches('=').to_string()
}

/// The messages, and after them the file's own columns for the rows they
/// are about (as the mapping read them, masked where sensitive).
fn messages_table(
    messages: &[TaskMessage],
    rows: &std::collections::BTreeMap<u64, crate::records::Record>,
) -> maud::Markup {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows.values() {
        for field in row.keys() {
            if !columns.contains(&field.as_str()) {
                columns.push(field);
            }
        }
    }
    html! {
        div.table-scroll {
            table.messages {
                thead { tr {
                    th scope="col" { "Row" } th scope="col" { "Status" } th scope="col" { "Field" } th scope="col" { "Message" }
                    @for c in &columns { th scope="col" .file-column { (c) } }
                } }
                tbody {
                    @if messages.is_empty() { tr { td colspan=(4 + columns.len()) { "No messages." } } }
                    @for m in messages {
                        @let row = m.row.and_then(|r| rows.get(&r));
                        tr {
                            td { @if let Some(r) = m.row { (r) } }
                            td { span class={ "message-status status-" (m.status) } { (m.status) } }
                            td { @if let Some(f) = &m.field { (f) } }
                            td { (m.message) }
                            @for c in &columns { td.file-column { @if let Some(v) = row.and_then(|r| r.get(*c)) { (v.to_key_text()) } } }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct CsvQuery {
    status: Option<String>,
}

/// Every message of a run (or of one status) as CSV, as the API exports it.
pub(super) async fn messages_csv(
    State(app): State<Arc<App>>,
    session: Session,
    Path(id): Path<u64>,
    Query(q): Query<CsvQuery>,
) -> Result<Response, ConsoleError> {
    let status = status_filter(&q.status);
    let user = session.user.clone();
    let csv = blocking(move || {
        let (messages, _) = app.runs().messages(&user, id, status.as_deref(), None, usize::MAX)?;
        Ok(crate::runs::messages_csv(&messages))
    })
    .await?;
    let disposition = format!("attachment; filename=\"run-{id}-messages.csv\"");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        csv,
    )
        .into_response())
}
