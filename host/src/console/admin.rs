//! The plugins, the outbox and the users: what the account owner runs.

use std::sync::Arc;

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::Form;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Page};
use super::{ConsoleError, Session, blocking, local};
use crate::app::App;
use crate::plugins::Capability;
use crate::users::{JobEmail, Permission, Role, User};

/// A small form posting one action with the anti-forgery token.
fn action_form(session: &Session, path: &str, fields: &[(&str, &str)], label: &str, aria: &str) -> Markup {
    html! {
        form.inline method="post" action=(session.link(path)) {
            input type="hidden" name="csrf" value=(session.csrf);
            @for (k, v) in fields { input type="hidden" name=(k) value=(v); }
            button.secondary.outline type="submit" aria-label=(aria) { (label) }
        }
    }
}

pub(super) async fn plugins(State(app): State<Arc<App>>, session: Session) -> Result<Response, ConsoleError> {
    let user = session.user.clone();
    let owner = user.role == Role::Owner;
    let plugins = blocking(move || Ok(app.plugins().list(&user)?)).await?;
    let body = html! {
        h1 { "Plugins" }
        @if owner {
            form method="post" action=(session.link("/plugins")) enctype="multipart/form-data" aria-label="Install a plugin" {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="component" { "Install a plugin (a WebAssembly component, .wasm)" }
                input id="component" type="file" name="component" accept=".wasm" required;
                button type="submit" { "Install" }
            }
        }
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
                        td { @for c in &p.capabilities {
                            (c.to_string())
                            @if owner && !p.granted.contains(c) {
                                " " (action_form(&session, &format!("/plugins/{}/grant", p.name), &[("capability", &c.to_string())], "Grant", &format!("Grant {c} to {}", p.name)))
                            }
                            br;
                        } }
                        td { @for c in &p.granted {
                            (c.to_string())
                            @if owner {
                                " " (action_form(&session, &format!("/plugins/{}/revoke", p.name), &[("capability", &c.to_string())], "Revoke", &format!("Revoke {c} from {}", p.name)))
                            }
                            br;
                        } }
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
        details {
            summary { "Add or change a user" }
            form method="post" action=(session.link("/users")) {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="u-name" { "User name" } input id="u-name" name="name" required;
                label for="u-email" { "Email" } input id="u-email" type="email" name="email";
                label for="u-role" { "Role" }
                select id="u-role" name="role" { option value="staff" { "staff" } option value="owner" { "owner" } }
                fieldset {
                    legend { "Permissions" }
                    label { input type="checkbox" name="permissions" value="autopilot"; "autopilot: sees scheduled runs" }
                    label { input type="checkbox" name="permissions" value="authorize"; "authorize: approves held imports" }
                }
                label for="u-job" { "Job-completion email" }
                select id="u-job" name="job_email" {
                    option value="on-failure" { "on failure" } option value="always" { "always" } option value="never" { "never" }
                }
                button type="submit" { "Save user" }
            }
        }
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

#[derive(Deserialize)]
pub(super) struct CapabilityForm {
    csrf: String,
    capability: String,
}

/// Grants or revokes one capability (the account owner, checked by the service).
pub(super) async fn capability(
    State(app): State<Arc<App>>,
    session: Session,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CapabilityForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let capability: Capability =
        form.capability.parse().map_err(|e: String| ConsoleError::new(StatusCode::BAD_REQUEST, e))?;
    let user = session.user.clone();
    blocking(move || {
        match action.as_str() {
            "grant" => app.plugins().grant(&user, &name, capability)?,
            "revoke" => app.plugins().revoke(&user, &name, &capability)?,
            _ => return Err(ConsoleError::new(StatusCode::NOT_FOUND, "grant or revoke")),
        };
        Ok(())
    })
    .await?;
    Ok(Redirect::to(&session.link("/plugins")).into_response())
}

/// The largest component accepted by upload.
pub(super) const UPLOAD_LIMIT: usize = 64 << 20;

/// Installs an uploaded component (the account owner, checked by the service).
pub(super) async fn upload(
    State(app): State<Arc<App>>,
    session: Session,
    mut multipart: Multipart,
) -> Result<Response, ConsoleError> {
    let bad = |m: String| ConsoleError::new(StatusCode::BAD_REQUEST, m);
    let (mut csrf, mut bytes) = (String::new(), None);
    while let Some(field) = multipart.next_field().await.map_err(|e| bad(format!("the upload is malformed: {e}")))? {
        match field.name() {
            Some("csrf") => csrf = field.text().await.map_err(|e| bad(e.to_string()))?,
            Some("component") => {
                bytes = Some(field.bytes().await.map_err(|e| bad(format!("the component did not arrive whole: {e}")))?)
            }
            _ => {}
        }
    }
    session.check_csrf(&app, &csrf)?;
    let bytes = bytes.ok_or_else(|| bad("pick a component file (.wasm) to install".into()))?;
    let user = session.user.clone();
    blocking(move || Ok(app.plugins().install_bytes(&user, &bytes)?)).await?;
    Ok(Redirect::to(&session.link("/plugins")).into_response())
}

#[derive(Deserialize)]
pub(super) struct UserForm {
    csrf: String,
    name: String,
    email: String,
    role: String,
    #[serde(default)]
    permissions: Vec<String>,
    job_email: String,
}

/// Adds or changes a user (the account owner, checked by the service).
pub(super) async fn save_user(
    State(app): State<Arc<App>>,
    session: Session,
    Form(form): Form<UserForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let bad = |m: String| ConsoleError::new(StatusCode::BAD_REQUEST, m);
    let user = User {
        name: form.name.trim().to_string(),
        email: form.email.trim().to_string(),
        role: form.role.parse::<Role>().map_err(bad)?,
        permissions: form.permissions.iter().map(|p| p.parse::<Permission>()).collect::<Result<_, _>>().map_err(bad)?,
        job_email: form.job_email.parse::<JobEmail>().map_err(bad)?,
    };
    let by = session.user.clone();
    blocking(move || Ok(app.users().put(&by, &user)?)).await?;
    Ok(Redirect::to(&session.link("/users")).into_response())
}
