//! An import's plan (a test import, or one the guard holds): the rows by
//! change type, each record's field-by-field before and after, the share
//! of records changed against the task's thresholds, and the decisions
//! the run allows: Ok (commit), Cancel, confirm, request authorization
//! with a comment, approve, issue a one-time code, release with a code.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::{Form, Query};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Page};
use super::{ConsoleError, Session, blocking, local};
use crate::app::{self, App, Proof};
use crate::imports::{Guard, ImportPlan, RowOutcome, RowReport};
use crate::runs::{Run, RunStatus};
use crate::users::Permission;

/// The change types, in the order the checkboxes list them.
const TYPES: [&str; 11] = [
    "new",
    "updated",
    "existing",
    "ended",
    "removed",
    "inactivated",
    "multiple",
    "duplicate",
    "possible-duplicate",
    "conflict",
    "error",
];

/// Rows listed at most; the page says when there are more.
const LISTED: usize = 10_000;

#[derive(Deserialize, Default)]
pub(super) struct PlanQuery {
    #[serde(default, rename = "type")]
    types: Vec<String>,
}

pub(super) async fn page(
    State(app): State<Arc<App>>,
    session: Session,
    Path(id): Path<u64>,
    Query(q): Query<PlanQuery>,
) -> Result<Response, ConsoleError> {
    render(app, session, id, q.types, None).await
}

/// The plan page; `issued` is a one-time code just issued, shown once to
/// its issuer in this answer and kept nowhere in plain.
async fn render(
    app: Arc<App>,
    session: Session,
    id: u64,
    types: Vec<String>,
    issued: Option<String>,
) -> Result<Response, ConsoleError> {
    let (a, user) = (app.clone(), session.user.clone());
    let (run, plan, guard) = blocking(move || {
        let run = a.runs().show(&user, id)?;
        let plan = a.imports().plan(&user, id)?;
        let guard = a.tasks().show(&user, &run.task).ok().and_then(|t| t.import).map(|i| i.guard).unwrap_or_default();
        Ok((run, plan, guard))
    })
    .await?;
    let shown: Vec<&str> = if types.is_empty() {
        TYPES.to_vec()
    } else {
        TYPES.iter().copied().filter(|t| types.iter().any(|x| x == t)).collect()
    };
    let matching: Vec<&RowReport> = plan.rows.iter().filter(|r| shown.contains(&r.status())).collect();
    let body = html! {
        p { a href=(session.link(&format!("/runs/{id}"))) { "← Run " (id) } }
        h1 { "Import plan: " (run.task) }
        p { (plan.summary()) }
        (gauge(&plan, &guard))
        (decisions(&session, &run, &plan, issued.as_deref()))
        form method="get" action=(session.link(&format!("/runs/{id}/plan"))) aria-label="Show change types" {
            fieldset.change-types {
                legend { "Show Change Types" }
                @for t in TYPES {
                    label { input type="checkbox" name="type" value=(t) checked[shown.contains(&t)]; (t) " (" (plan.counts.get(t).copied().unwrap_or(0)) ")" }
                }
            }
            button.secondary type="submit" { "Show" }
        }
        @if matching.len() > LISTED {
            p role="status" { "Only the first " (LISTED) " of " (matching.len()) " rows are listed here; the Task Messages tab has every row." }
        }
        div.plan-rows {
            @for r in matching.iter().take(LISTED) { (row(r)) }
            @if matching.is_empty() { p { "No rows of these types." } }
        }
        @if !run.audit.is_empty() {
            h2 { "Audit trail" }
            ul.audit { @for a in &run.audit {
                li { (local(&app, Some(a.at))) " · " strong { (a.user) } " · " (a.action) @if let Some(c) = &a.comment { " · “" (c) "”" } }
            } }
        }
    };
    Ok(layout::page(&session, Page::new(&format!("Plan of run {id}")).section("runs").scripted(), body).into_response())
}

fn gauge(plan: &ImportPlan, guard: &Guard) -> Markup {
    let max = (guard.authorize_percent * 1.5).max(plan.changed_percent).max(1.0);
    html! {
        div.gauge {
            label for="changed" {
                "Existing records changed or added: " strong { (format!("{:.1}%", plan.changed_percent)) }
                " of " (plan.existing) " (confirm at " (guard.confirm_percent) "%, authorize at " (guard.authorize_percent) "%)"
            }
            meter id="changed" min="0" max=(max) low=(guard.confirm_percent) high=(guard.authorize_percent) optimum="0" value=(plan.changed_percent) {
                (format!("{:.1}%", plan.changed_percent))
            }
        }
    }
}

fn row(r: &RowReport) -> Markup {
    let key = match &r.outcome {
        RowOutcome::New { key }
        | RowOutcome::Updated { key, .. }
        | RowOutcome::Ended { key, .. }
        | RowOutcome::Removed { key }
        | RowOutcome::Existing { key }
        | RowOutcome::Duplicate { key, .. }
        | RowOutcome::Inactivated { key }
        | RowOutcome::Conflict { key, .. }
        | RowOutcome::PossibleDuplicate { key, .. } => key.clone(),
        RowOutcome::Multiple { candidates, .. } => candidates.join(", "),
        RowOutcome::Error { .. } => String::new(),
    };
    let line = if r.line > 0 { format!("row {}", r.line) } else { "not in the file".to_string() };
    html! {
        details class={ "plan-row change-" (r.status()) } {
            summary { (line) " · " span.change { (r.status()) } @if !key.is_empty() { " · " (key) } }
            @match &r.outcome {
                RowOutcome::Updated { changes, matched_on, .. } | RowOutcome::Ended { changes, matched_on, .. } => {
                    p { "Matched on " (matched_on) "." }
                    table.diff {
                        thead { tr { th scope="col" { "Field" } th scope="col" { "Before" } th scope="col" { "After" } } }
                        tbody { @for (field, before, after) in changes { tr { td { (field) } td { (before.to_string()) } td { (after.to_string()) } } } }
                    }
                },
                RowOutcome::Multiple { candidates, matched_on } => {
                    p { "Several records matched on " (matched_on) "; the row is not applied. Candidates:" }
                    ul { @for c in candidates { li { (c) } } }
                },
                RowOutcome::PossibleDuplicate { others, matched_on, .. } => {
                    p { "A new record that shares " (matched_on) " with: " (others.join(", ")) ". Someone should look at it." }
                },
                RowOutcome::Conflict { matched_on, field, file_value, .. } => {
                    p { "Matched by " (matched_on) ", but the file's " (field) " is " (file_value) ": not applied." }
                },
                RowOutcome::Duplicate { first_line, .. } => { p { "Row " (first_line) " already set this record." } },
                RowOutcome::Error { field, message } => { p { @if let Some(f) = field { (f) ": " } (message) } },
                _ => { p { (r.messages().into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; ")) } },
            }
        }
    }
}

fn decisions(session: &Session, run: &Run, plan: &ImportPlan, issued: Option<&str>) -> Markup {
    let form = |action: &str, inner: Markup| {
        html! {
            form.inline method="post" action=(session.link(&format!("/runs/{}/decide", run.id))) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="action" value=(action);
                (inner)
            }
        }
    };
    let requested = run.audit.iter().any(|a| a.action == "requested-authorization");
    let authorizer = session.user.has(Permission::Authorize);
    html! {
        section.decisions aria-label="Decision" {
            p { "Status: " span class={ "status status-" (run.status.as_str()) } { (run.status.as_str()) } }
            @if let Some(code) = issued {
                p.banner role="status" { "One-time approval code: " strong.code { (code) } ". Give it to whoever requested the import; it is shown only now." }
            }
            @if plan.already_imported.is_some() {
                p { "This file was already imported: nothing to decide." }
            } @else {
                @match run.status {
                    RunStatus::Succeeded if run.dry_run => {
                        (form("commit", html! { button type="submit" { "Ok: import exactly this plan" } }))
                        " "
                        (form("discard", html! { button.secondary type="submit" { "Cancel" } }))
                    },
                    RunStatus::AwaitingConfirmation => {
                        button type="button" data-dialog="confirm-dialog" { "Confirm…" }
                        " "
                        (form("discard", html! { button.secondary type="submit" { "Cancel" } }))
                        dialog id="confirm-dialog" aria-labelledby="confirm-title" {
                            article {
                                h2 id="confirm-title" { "Import these changes?" }
                                p { (plan.summary()) }
                                (form("confirm", html! {
                                    label for="confirm-comment" { "Comment (optional)" }
                                    input id="confirm-comment" name="comment";
                                    // The decision is the signed-in person's own: they
                                    // enter the password they set themselves.
                                    label for="confirm-password" { "Your password" }
                                    input id="confirm-password" name="password" type="password" autocomplete="current-password" required;
                                    footer {
                                        button.secondary type="button" data-close { "No Thanks" }
                                        " "
                                        button type="submit" { "Yes, import" }
                                    }
                                }))
                            }
                        }
                    },
                    RunStatus::AwaitingAuthorization => {
                        @if !requested {
                            (form("request", html! {
                                label for="request-comment" { "Why are these changes wanted? (required)" }
                                textarea id="request-comment" name="comment" required rows="2" {}
                                button type="submit" { "Request authorization" }
                            }))
                        } @else {
                            p { "Authorization was requested. Someone with the authorize permission approves it, or gives the requester a one-time code." }
                            @if authorizer {
                                (form("approve", html! {
                                    label for="approve-password" { "Your password" }
                                    input id="approve-password" name="password" type="password" autocomplete="current-password" required;
                                    button type="submit" { "Approve" }
                                }))
                                " "
                                (form("code", html! { button.secondary type="submit" { "Issue a one-time code" } }))
                            }
                            (form("release", html! {
                                label for="code" { "Approval code" }
                                input id="code" name="code" autocomplete="off" required;
                                button type="submit" { "Release with the code" }
                            }))
                        }
                        " "
                        (form("discard", html! { button.secondary type="submit" { "Cancel" } }))
                    },
                    _ => {},
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Decision {
    csrf: String,
    action: String,
    comment: Option<String>,
    code: Option<String>,
    password: Option<String>,
}

pub(super) async fn decide(
    State(app): State<Arc<App>>,
    session: Session,
    Path(id): Path<u64>,
    Form(form): Form<Decision>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let (a, user) = (app.clone(), session.user.clone());
    let plan = session.link(&format!("/runs/{id}/plan"));
    let issued = blocking(move || {
        let imports = a.imports();
        let comment = form.comment.map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
        match form.action.as_str() {
            // Over the guard, Ok holds the run for confirmation or
            // authorization: the plan page then shows what it waits for.
            "commit" => match imports.commit(&user, id) {
                Ok(_) | Err(app::Error::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            },
            "discard" => {
                a.runs().cancel(&user, id)?;
            }
            "confirm" => {
                imports.confirm(&user, id, comment, Proof::Password(form.password.as_deref().unwrap_or("")))?;
            }
            "request" => {
                imports.request(&user, id, comment.as_deref().unwrap_or(""))?;
            }
            "approve" => {
                imports.approve(&user, id, None, Proof::Password(form.password.as_deref().unwrap_or("")))?;
            }
            "code" => return Ok(Some(imports.code(&user, id)?)),
            "release" => {
                imports.approve(&user, id, form.code.as_deref(), Proof::Password(""))?;
            }
            other => {
                return Err(ConsoleError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    format!("`{other}` is not a decision"),
                ));
            }
        }
        Ok(None)
    })
    .await?;
    match issued {
        Some(code) => render(app, session, id, Vec::new(), Some(code)).await,
        None => Ok(Redirect::to(&plan).into_response()),
    }
}
