//! The console's static files, inside the binary: Pico CSS (from npm, see
//! `build.rs`) and the console's own stylesheet and script.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file.
pub(super) struct Asset {
    /// Its address under the console's base path.
    pub(super) path: &'static str,
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! version {
    () => {
        env!("CARGO_PKG_VERSION")
    };
}

/// Pico CSS: classless-friendly styles with light and dark schemes.
pub(super) const PICO: Asset = Asset {
    path: concat!("/assets/pico.min.css?v=", version!()),
    name: "pico.min.css",
    content_type: "text/css; charset=utf-8",
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/pico.min.css")),
};

/// The console's own styles.
pub(super) const CSS: Asset = Asset {
    path: concat!("/assets/console.css?v=", version!()),
    name: "console.css",
    content_type: "text/css; charset=utf-8",
    bytes: include_bytes!("../../console/console.css"),
};

/// The console's script: live updates and dialogs.
pub(super) const JS: Asset = Asset {
    path: concat!("/assets/console.js?v=", version!()),
    name: "console.js",
    content_type: "text/javascript; charset=utf-8",
    bytes: include_bytes!("../../console/console.js"),
};

/// Every embedded file.
pub(super) const ALL: [&Asset; 3] = [&PICO, &CSS, &JS];

/// Serves an embedded file by name.
pub(super) async fn serve(Path(name): Path<String>) -> Response {
    match ALL.iter().find(|a| a.name == name) {
        Some(a) => ([(header::CONTENT_TYPE, a.content_type), (header::CACHE_CONTROL, "public, max-age=3600")], a.bytes)
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// The bytes a page loads: (CSS, JS).
pub fn weight(scripted: bool) -> (usize, usize) {
    (PICO.bytes.len() + CSS.bytes.len(), if scripted { JS.bytes.len() } else { 0 })
}
