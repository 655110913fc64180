//! The plugins, the outbox and the users: what the account owner runs.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{self, Page};
use super::{ConsoleError, Session, blocking, local};
use crate::app::App;

pub(super) async fn plugins(State(app): State<Arc<App>>, session: Session) -> Result<Response, ConsoleError> {
    let user = session.user.clone();
    let plugins = blocking(move || Ok(app.plugins().list(&user)?)).await?;
    let body = html! {
        h1 { "Plugins" }
        div.table-scroll { table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Version" } th scope="col" { "World" } th scope="col" { "WIT" }
                th scope="col" { "Hash" } th scope="col" { "Asks for" } th scope="col" { "Granted" } } }
            tbody {
                @for p in &plugins {
                    tr {
                        td { (p.name) br; small { (p.description) } }
                        td { (p.version) }
                        td { (p.kind.to_string()) }
                        td { (p.wit_version) }
                        td { code title=(p.hash) { (p.hash.get(..12).unwrap_or(&p.hash)) } }
                        td { @for c in &p.capabilities { (c.to_string()) br; } }
                        td { @for c in &p.granted { (c.to_string()) br; } }
                    }
                }
            }
        } }
    };
    Ok(layout::page(&session, Page::new("Plugins").section("plugins"), body).into_response())
}

pub(super) async fn outbox(State(app): State<Arc<App>>, session: Session) -> Result<Response, ConsoleError> {
    let (a, user) = (app.clone(), session.user.clone());
    let entries = blocking(move || Ok(a.outbox().list(&user, None, 200)?)).await?;
    let body = html! {
        h1 { "Outbox" }
        p { "The newest 200 emails: pending, sent and failed." }
        div.table-scroll { table {
            thead { tr { th scope="col" { "#" } th scope="col" { "Status" } th scope="col" { "To" } th scope="col" { "Subject" }
                th scope="col" { "Task" } th scope="col" { "Queued" } th scope="col" { "Attempts" } th scope="col" { "Last error" } } }
            tbody {
                @for (id, e) in &entries {
                    tr {
                        td { (id) }
                        td { (e.status.to_string()) }
                        td { (e.to) }
                        td { (e.subject) }
                        td { (e.task) " " small { "run " (e.run) } }
                        td { (local(&app, Some(e.created))) }
                        td { (e.attempts) }
                        td { @if let Some(err) = &e.last_error { (err) } }
                    }
                }
            }
        } }
    };
    Ok(layout::page(&session, Page::new("Outbox").section("outbox"), body).into_response())
}

pub(super) async fn users(State(app): State<Arc<App>>, session: Session) -> Result<Response, ConsoleError> {
    let user = session.user.clone();
    let users = blocking(move || Ok(app.users().list(&user)?)).await?;
    let body = html! {
        h1 { "Users" }
        div.table-scroll { table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Email" } th scope="col" { "Role" } th scope="col" { "Permissions" } th scope="col" { "Job email" } } }
            tbody {
                @for u in &users {
                    tr {
                        td { (u.name) }
                        td { (u.email) }
                        td { (u.role.to_string()) }
                        td { @for p in &u.permissions { (format!("{p:?}").to_lowercase()) " " } }
                        td { (format!("{:?}", u.job_email)) }
                    }
                }
            }
        } }
    };
    Ok(layout::page(&session, Page::new("Users").section("users"), body).into_response())
}
