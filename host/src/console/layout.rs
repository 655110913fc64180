//! The frame every page shares: the head with the assets, the navigation
//! (only what the user may use), the flash line, and the security headers.

use axum::http::{HeaderValue, header};
use axum::response::Response;
use maud::{DOCTYPE, Markup, html};

use super::Session;
use super::assets;
use crate::users::Role;

/// A page's title and where it sits in the navigation.
pub(super) struct Page<'a> {
    title: &'a str,
    section: &'a str,
    scripts: bool,
}

impl<'a> Page<'a> {
    /// A page with a title, outside the navigation, without script.
    pub(super) fn new(title: &'a str) -> Self {
        Page { title, section: "", scripts: false }
    }

    /// Marks which navigation entry is current.
    pub(super) fn section(mut self, section: &'a str) -> Self {
        self.section = section;
        self
    }

    /// Loads the console's script (live updates, dialogs).
    pub(super) fn scripted(mut self) -> Self {
        self.scripts = true;
        self
    }
}

fn head(base: &str, page: &Page<'_>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (page.title) " · Schoolbell" }
            link rel="stylesheet" href={ (base) (assets::PICO.path) };
            link rel="stylesheet" href={ (base) (assets::CSS.path) };
            @if page.scripts { script src={ (base) (assets::JS.path) } defer {} }
        }
    }
}

/// A page for a signed-in user.
pub(super) fn page(session: &Session, page: Page<'_>, body: Markup) -> Markup {
    let base = &session.base;
    let owner = session.user.role == Role::Owner;
    let mut nav = vec![("runs", "All System Tasks", "/"), ("tasks", "Tasks", "/tasks"), ("rules", "Rules", "/rules")];
    nav.push(("plugins", "Plugins", "/plugins"));
    if owner {
        nav.push(("outbox", "Outbox", "/outbox"));
        nav.push(("users", "Users", "/users"));
    }
    nav.push(("profile", "Profile", "/profile"));
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(base, &page))
            body {
                header.container-fluid {
                    nav aria-label="Main" {
                        ul { li { a.brand href={ (base) "/" } { strong { "Schoolbell" } } } }
                        ul {
                            @for (id, label, path) in &nav {
                                li { a href={ (base) (path) } aria-current=[(*id == page.section).then_some("page")] { (label) } }
                            }
                            li {
                                form.sign-out method="post" action={ (base) "/logout" } {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    button.secondary.outline type="submit" { "Sign out " (session.user.name) }
                                }
                            }
                        }
                    }
                }
                main.container-fluid id="main" { (body) }
            }
        }
    }
}

/// A page for nobody yet (sign-in, errors before sign-in).
pub(super) fn bare(base: &str, page: Page<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(base, &page))
            body { main.container id="main" { (body) } }
        }
    }
}

/// [`secure`] as a middleware.
pub(super) async fn secure_headers(response: Response) -> Response {
    secure(response)
}

/// The headers every console response carries: no inline script or style
/// can run, the page cannot be framed, and nothing is sniffed.
pub(super) fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
               form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
