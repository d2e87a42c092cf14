//! The dashboard at `/ui`: a static shell of plain ES modules, CSS and SVG
//! (`api/ui/`), compiled into the binary with `include_bytes!`. No build step,
//! no CDN. The shell needs no key; every piece of data it shows comes from the
//! `/v1` API with the key the person signed in with (kept in the tab's
//! `sessionStorage`). Its responses carry a strict Content-Security-Policy:
//! scripts and styles only from this origin, no inline script, no frames.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;

/// The policy of every dashboard response. `connect-src 'self'` lets the
/// modules call the API of the same origin and nothing else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its name under `/ui/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_bytes!(concat!("../ui/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("lib.js", JS),
    asset!("md.js", JS),
    asset!("dag.js", JS),
    asset!("jobs.js", JS),
    asset!("playground.js", JS),
    asset!("overview.js", JS),
    asset!("admin.js", JS),
];

/// The routes of the dashboard (no key needed: it is only the shell).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route("/ui/{*file}", get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }))
}

/// A strong validator of an asset: it changes whenever the binary's copy does.
fn etag(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..12]))
}

fn serve(file: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dashboard file /ui/{file}; the dashboard starts at /ui/"),
        )
        .into_response();
    };
    let tag = etag(asset.body);
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == tag);
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidated on every load (cheap: a 304), so a new binary's files are never mixed with old ones.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, tag);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_an_asset_imports_is_embedded() {
        // A module imported by another but missing from ASSETS would 404 only in the browser.
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js") || a.name.ends_with(".html")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for part in text.split("/ui/").skip(1) {
                let name: String =
                    part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-').collect();
                if name.contains('.') {
                    assert!(
                        ASSETS.iter().any(|a| a.name == name),
                        "{} refers to /ui/{name}, which is not embedded",
                        asset.name
                    );
                }
            }
            for part in text.split("from './").skip(1).chain(text.split("import('./").skip(1)) {
                let name: String = part.chars().take_while(|c| *c != '\'').collect();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports ./{name}, which is not embedded",
                    asset.name
                );
            }
        }
    }
}
