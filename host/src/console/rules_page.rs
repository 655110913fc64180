//! Rules: each rule's editor, its compile error at its line and column,
//! a test over pasted sample rows with parameters (match or no match per
//! row, with the values that decided), and save, refused while the rule
//! does not compile.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::Form;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Page};
use super::{ConsoleError, Session, blocking};
use crate::app::{App, Draft, RuleTest};
use crate::users::Role;

pub(super) async fn list(State(app): State<Arc<App>>, session: Session) -> Result<Response, ConsoleError> {
    let rules = app.rules().list(&session.user);
    let body = html! {
        h1 { "Rules" }
        p { "The rules imports match with and notifiers select with. Runs started after a save use the new version." }
        ul { @for r in &rules { li { a href=(session.link(&format!("/rules/{}", r.name))) { (r.name) } " " small { code { (r.hash.get(..12).unwrap_or(&r.hash)) } } } } }
    };
    Ok(layout::page(&session, Page::new("Rules").section("rules"), body).into_response())
}

/// What the editor shows besides the source.
#[derive(Default)]
struct Outcome {
    compile: Option<(usize, usize, String)>,
    test: Option<Result<RuleTest, String>>,
    saved: bool,
}

/// Sample rows taken from a collection (`?collection=students&limit=5`).
#[derive(Deserialize, Default)]
pub(super) struct PickQuery {
    collection: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn edit(
    State(app): State<Arc<App>>,
    session: Session,
    Path(name): Path<String>,
    Query(q): Query<PickQuery>,
) -> Result<Response, ConsoleError> {
    let (a, user, n) = (app.clone(), session.user.clone(), name.clone());
    let (source, sample) = blocking(move || {
        let (_, source) = a.rules().show(&user, &n)?;
        let sample = match q.collection.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            // Reading records in bulk is the account owner's: the service checks.
            Some(c) => {
                let page = a.collections().page(&user, c, q.limit.unwrap_or(5).clamp(1, 100))?;
                let rows: Vec<serde_json::Value> = page.records.iter().map(crate::records::record_to_json).collect();
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            }
            None => "[\n  {}\n]".to_string(),
        };
        Ok((source, sample))
    })
    .await?;
    Ok(editor(&session, &name, &source, &sample, "{}", Outcome::default()).into_response())
}

fn editor(session: &Session, name: &str, source: &str, sample: &str, params: &str, outcome: Outcome) -> Response {
    let owner = session.user.role == Role::Owner;
    let body = html! {
        p { a href=(session.link("/rules")) { "← Rules" } }
        h1 { "Rule " (name) }
        @if outcome.saved { p role="status" { "Saved. Runs started from now on use this version." } }
        @if let Some((line, column, message)) = &outcome.compile {
            div.banner.failure role="alert" {
                strong { "Does not compile" }
                @if *line > 0 { ": line " (line) ", column " (column) }
                ": " (message)
                @if let Some(text) = source.lines().nth(line.saturating_sub(1)).filter(|_| *line > 0) {
                    pre.excerpt { (line) " | " (text) "\n" (" ".repeat(line.to_string().len() + 3 + column.saturating_sub(1))) "^" }
                }
            }
        }
        @if owner {
            form.pick method="get" action=(session.link(&format!("/rules/{name}"))) aria-label="Sample rows from a collection" {
                label for="r-collection" { "Take sample rows from the collection" }
                input id="r-collection" name="collection" placeholder="students";
                label for="r-limit" { "How many" }
                input id="r-limit" type="number" name="limit" min="1" max="100" value="5";
                button.secondary type="submit" { "Take them" }
            }
        }
        form method="post" action=(session.link(&format!("/rules/{name}"))) {
            input type="hidden" name="csrf" value=(session.csrf);
            label for="r-source" { "Source (rhai)" }
            textarea id="r-source" name="source" rows="18" spellcheck="false" .code { (source) }
            label for="r-sample" { "Sample rows (a JSON array of objects)" }
            textarea id="r-sample" name="sample" rows="5" spellcheck="false" .code { (sample) }
            label for="r-params" { "Parameters (a JSON object)" }
            textarea id="r-params" name="params" rows="2" spellcheck="false" .code { (params) }
            // Testing runs the author's code over data, as saving does: the owner's.
            @if owner {
                button.secondary type="submit" name="action" value="test" { "Test" }
                " "
                button type="submit" name="action" value="save" { "Save" }
            }
        }
        @if let Some(test) = &outcome.test { (verdicts(test)) }
    };
    layout::page(session, Page::new(&format!("Rule {name}")).section("rules"), body).into_response()
}

fn verdicts(test: &Result<RuleTest, String>) -> Markup {
    match test {
        Err(e) => html! { p.error role="alert" { (e) } },
        Ok(t) => html! {
            table.verdicts {
                caption { (t.matched) " of " (t.rows.len()) " rows match" }
                thead { tr { th scope="col" { "Row" } th scope="col" { "Verdict" } th scope="col" { "Deciding values" } } }
                tbody {
                    @for r in &t.rows {
                        tr {
                            td { (r.row) }
                            td { @match (r.matched, &r.error) {
                                (_, Some(e)) => span.error { "failed: " (e) },
                                (Some(true), _) => strong { "match" },
                                _ => "no match",
                            } }
                            td { @if let Some(reason) = &r.reason { (reason) } }
                        }
                    }
                }
            }
            @if let Some(stopped) = &t.stopped { p.error role="alert" { (stopped) } }
            @if !t.printed.lines.is_empty() {
                h3 { "Printed" }
                pre.code { @for line in &t.printed.lines { (line) "\n" } }
                @if t.printed.dropped > 0 { p { (t.printed.dropped) " more lines not kept" } }
            }
        },
    }
}

#[derive(Deserialize)]
pub(super) struct RuleForm {
    csrf: String,
    action: String,
    source: String,
    sample: String,
    params: String,
}

pub(super) async fn save(
    State(app): State<Arc<App>>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<RuleForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let (a, user, n) = (app.clone(), session.user.clone(), name.clone());
    let (source, sample, params, action) = (form.source.clone(), form.sample.clone(), form.params.clone(), form.action);
    let outcome = blocking(move || {
        let rules = a.rules();
        let mut outcome = Outcome { compile: rules.compile_error(&n, &source), ..Outcome::default() };
        if outcome.compile.is_some() {
            // Nothing is tested or saved while the rule does not compile.
            return Ok(outcome);
        }
        if action == "save" {
            rules.save(&user, &n, &format!("{n}.rhai"), &source)?;
            outcome.saved = true;
        }
        let parsed = serde_json::from_str::<serde_json::Value>(&sample)
            .map_err(|e| format!("sample rows: not JSON: {e}"))
            .and_then(|v| crate::records::records_from_json(&v).map_err(|e| format!("sample rows: {e}")));
        let params = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(if params.trim().is_empty() {
            "{}"
        } else {
            &params
        })
        .map_err(|e| format!("parameters: not a JSON object: {e}"))
        .and_then(|m| crate::records::record_from_json(&m).map_err(|e| format!("parameters: {e}")));
        outcome.test = Some(match (parsed, params) {
            (Ok(rows), Ok(params)) => {
                let shown = format!("{n}.rhai (draft)");
                rules
                    .test(&user, &n, Draft::Source { shown: &shown, source: &source }, &rows, &params)
                    .map_err(|e| e.to_string())
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        });
        Ok(outcome)
    })
    .await?;
    if outcome.saved && outcome.test.as_ref().is_some_and(|t| t.as_ref().is_ok_and(|t| t.rows.is_empty())) {
        return Ok(Redirect::to(&session.link(&format!("/rules/{name}"))).into_response());
    }
    Ok(editor(&session, &name, &form.source, &form.sample, &form.params, outcome))
}
