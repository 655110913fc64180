//! The profile: who you are, your job-completion email preference (as in
//! the systems districts come from: always, on failure, never), and your
//! console password.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::Form;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Page};
use super::{ConsoleError, Session, blocking};
use crate::app::App;
use crate::users::JobEmail;

/// What the last save did, for the page it lands on.
#[derive(Deserialize, Default)]
pub(super) struct Done {
    done: Option<String>,
}

pub(super) async fn page(
    session: Session,
    done: Result<axum::extract::Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ConsoleError> {
    let said = match done.ok().and_then(|q| q.0.done).as_deref() {
        Some("saved") => Some("Saved.".to_string()),
        Some(d) => d
            .strip_prefix("password-changed-")
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| format!("Password changed. {n} other sessions and tokens of yours were ended.")),
        None => None,
    };
    let u = &session.user;
    let choices = [
        (JobEmail::Always, "always", "After every run of mine"),
        (JobEmail::OnFailure, "on-failure", "Only when a run of mine fails"),
        (JobEmail::Never, "never", "Never"),
    ];
    let body = html! {
        h1 { "Profile" }
        @if let Some(said) = &said { p.flash role="status" { (said) } }
        dl {
            dt { "User" } dd { (u.name) }
            dt { "Email" } dd { (u.email) }
            dt { "Role" } dd { (u.role.to_string()) }
            dt { "Permissions" } dd { @if u.permissions.is_empty() { "none" } @for p in &u.permissions { (format!("{p:?}").to_lowercase()) " " } }
        }
        form method="post" action=(session.link("/profile")) {
            input type="hidden" name="csrf" value=(session.csrf);
            fieldset {
                legend { "Job-completion email" }
                @for (value, name, label) in choices {
                    label { input type="radio" name="job_email" value=(name) checked[u.job_email == value]; (label) }
                }
            }
            button type="submit" name="save" value="email" { "Save email preference" }
        }
        form method="post" action=(session.link("/profile")) aria-label="Change password" {
            input type="hidden" name="csrf" value=(session.csrf);
            fieldset {
                legend { "Console password" }
                label { "Current password"
                    input type="password" name="current" autocomplete="current-password";
                }
                label { "New password (at least " (crate::users::MIN_PASSWORD_CHARS) " characters)"
                    input type="password" name="password" autocomplete="new-password" minlength=(crate::users::MIN_PASSWORD_CHARS);
                }
            }
            button type="submit" name="save" value="password" { "Change password" }
        }
    };
    Ok(layout::page(&session, Page::new("Profile").section("profile"), body).into_response())
}

#[derive(Deserialize)]
pub(super) struct ProfileForm {
    csrf: String,
    job_email: Option<String>,
    current: Option<String>,
    password: Option<String>,
}

pub(super) async fn save(
    State(app): State<Arc<App>>,
    session: Session,
    Form(form): Form<ProfileForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let user = session.user.clone();
    let keep = session.token_hash();
    let ended = blocking(move || {
        let mut ended = None;
        if let Some(p) = form.password.filter(|p| !p.is_empty()) {
            let current = form.current.unwrap_or_default();
            ended = Some(app.users().change_own_password(&user, &current, &p, Some(&keep))?);
        }
        if let Some(e) = form.job_email {
            let preference = e.parse::<JobEmail>().map_err(crate::app::Error::Invalid)?;
            app.users().set_job_email(&user, preference)?;
        }
        Ok(ended)
    })
    .await?;
    let saved = match ended {
        Some(n) => format!("password-changed-{n}"),
        None => "saved".into(),
    };
    Ok(Redirect::to(&session.link(&format!("/profile?done={saved}"))).into_response())
}
