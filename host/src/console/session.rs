//! Signing in and out, the session cookie, and anti-forgery tokens.
//!
//! A session is an API token the browser keeps in a cookie (HttpOnly,
//! SameSite=Strict, Secure over TLS): the same expiry, the same revocation
//! and the same user lookup as a bearer token. Every form that changes
//! something carries a token MACed from the session under the server's
//! key, and a request whose `Origin` is another site is refused.

use std::sync::Arc;

use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use maud::html;
use serde::Deserialize;

use super::layout::{self, Page};
use super::{ConsoleError, back_to, blocking};
use crate::app::App;
use crate::users::User;

/// The session cookie's name.
const COOKIE: &str = "sb_session";
/// Its name when it is `Secure`: a `__Host-` cookie is bound to this
/// origin, so no sibling site (and no plain-HTTP page) can set or shadow it.
const HOST_COOKIE: &str = "__Host-sb_session";

/// The session cookie holding `value`, as this service sets it.
fn session_cookie(api: &crate::config::ApiConfig, value: String) -> Cookie<'static> {
    let secure = api.tls_cert.is_some() || api.secure_cookies;
    // A `__Host-` cookie must have the path `/`.
    let (name, path) = if secure { (HOST_COOKIE, "/".to_string()) } else { (COOKIE, format!("{}/", api.base_path)) };
    Cookie::build((name, value)).http_only(true).same_site(SameSite::Strict).secure(secure).path(path).build()
}

/// A signed-in person.
#[derive(Clone)]
pub struct Session {
    /// Who.
    pub user: User,
    /// Their session token (the cookie's value).
    token: String,
    /// The anti-forgery token their forms carry.
    pub csrf: String,
    /// Where the console lives: `[api] base_path`.
    pub base: String,
}

impl Session {
    /// Checks a submitted anti-forgery token.
    pub fn check_csrf(&self, app: &App, submitted: &str) -> Result<(), ConsoleError> {
        let tag = hex::decode(submitted.trim()).unwrap_or_default();
        if crate::secrets::verify_mac(&app.console_key(), self.token.as_bytes(), &tag) {
            return Ok(());
        }
        Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "this form is out of date or did not come from the console; reload the page and try again",
        ))
    }

    /// The hash of this session's token, as the store keys it.
    pub fn token_hash(&self) -> String {
        crate::users::token_hash(&self.token)
    }

    /// The session as it stands now: its user read again (a demoted
    /// user's view narrows), or none once it was revoked, expired, or its
    /// user removed. The live grid asks at each update.
    pub fn again(&self, app: &App, from: &str) -> Option<Session> {
        let user = app.authenticate_console(&self.token, from).ok()?;
        Some(Session { user, token: self.token.clone(), csrf: self.csrf.clone(), base: self.base.clone() })
    }

    /// A path inside the console.
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn csrf_for(app: &App, token: &str) -> String {
    hex::encode(crate::secrets::mac(&app.console_key(), token.as_bytes()))
}

/// Whether a request comes from another site: its `Origin` (sent with
/// every cross-site form post) names a host other than this one.
fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    origin == "null" || !origin_host.eq_ignore_ascii_case(host)
}

impl FromRequestParts<Arc<App>> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let base = app.config().api.base_path.clone();
        let sign_in = || {
            let here = format!("{base}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()));
            let next = if parts.method == axum::http::Method::GET { here.as_str() } else { "" };
            let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
            Redirect::to(&format!("{base}/login?{query}")).into_response()
        };
        if parts.method != axum::http::Method::GET && cross_site(&parts.headers) {
            return Err(
                ConsoleError::new(StatusCode::FORBIDDEN, "a request from another site was refused").into_response()
            );
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(token) = jar.get(HOST_COOKIE).or_else(|| jar.get(COOKIE)).map(|c| c.value().to_string()) else {
            return Err(sign_in());
        };
        let (app2, token2) = (app.clone(), token.clone());
        let from = crate::api::client_address(parts);
        let user = tokio::task::spawn_blocking(move || app2.authenticate_console(&token2, &from)).await;
        match user {
            Ok(Ok(user)) => Ok(Session { user, csrf: csrf_for(app, &token), token, base }),
            _ => Err(sign_in()),
        }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct Next {
    next: Option<String>,
}

pub(super) async fn sign_in_page(State(app): State<Arc<App>>, Query(q): Query<Next>) -> Response {
    sign_in_form(&app, q.next.as_deref(), None, StatusCode::OK)
}

fn sign_in_form(app: &App, next: Option<&str>, error: Option<&str>, status: StatusCode) -> Response {
    let base = app.config().api.base_path.clone();
    let next = back_to(&base, next);
    let body = html! {
        article.sign-in {
            h1 { "Sign in to Schoolbell" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action={ (base) "/login" } {
                input type="hidden" name="next" value=(next);
                label { "User name" input name="username" autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
            p.hint { "The account owner sets passwords with " code { "schoolbell user passwd NAME" } "." }
        }
    };
    (status, layout::bare(&base, Page::new("Sign in"), body)).into_response()
}

#[derive(Deserialize)]
pub(super) struct SignIn {
    username: String,
    password: String,
    next: Option<String>,
}

pub(super) async fn sign_in(
    State(app): State<Arc<App>>,
    crate::api::ClientAddress(from): crate::api::ClientAddress,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<SignIn>,
) -> Response {
    if cross_site(&headers) {
        return ConsoleError::new(StatusCode::FORBIDDEN, "a request from another site was refused").into_response();
    }
    let a = app.clone();
    let (name, password) = (form.username.clone(), form.password);
    let result = blocking(move || Ok(a.users().sign_in(&name, &password, &from)?)).await;
    match result {
        Ok((_, token)) => {
            let api = &app.config().api;
            let cookie = session_cookie(api, token);
            (jar.add(cookie), Redirect::to(&back_to(&api.base_path, form.next.as_deref()))).into_response()
        }
        Err(e) => {
            let status = if e.status == StatusCode::TOO_MANY_REQUESTS { e.status } else { StatusCode::UNAUTHORIZED };
            sign_in_form(&app, form.next.as_deref(), Some(&e.message), status)
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Csrf {
    csrf: String,
}

pub(super) async fn sign_out(
    State(app): State<Arc<App>>,
    session: Session,
    jar: CookieJar,
    Form(form): Form<Csrf>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&app, &form.csrf)?;
    let base = session.base.clone();
    let a = app.clone();
    blocking(move || Ok(a.users().sign_out(&session.user, &session.token)?)).await?;
    let gone = session_cookie(&app.config().api, String::new());
    Ok((jar.remove(gone), Redirect::to(&format!("{base}/login"))).into_response())
}
