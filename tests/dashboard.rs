//! The dashboard's routes: the static shell at `/ui` needs no key and is
//! served with its content types and a strict Content-Security-Policy; every
//! piece of data it shows needs the key (`/v1/me`, `/v1/jobs/{id}/input`).

mod support;

use reqwest::{Method, StatusCode, header};
use serde_json::json;
use support::{Backend, Options, spawn_app_with};

/// Receivers run on 127.0.0.1, so the apps that take callbacks allow loopback.
fn allowing_loopback() -> Options {
    Options {
        worker: false,
        webhooks: orch_webhooks::WebhookConfig { allow: vec!["127.0.0.0/8".parse().unwrap()], ..Default::default() },
        ..Default::default()
    }
}

async fn app() -> support::TestApp {
    spawn_app_with(Backend::Sqlite, Options { worker: false, ..Default::default() }).await
}

async fn get(app: &support::TestApp, path: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_shell_and_its_assets_are_served_without_a_key_with_types_and_csp() {
    let app = app().await;
    let cases = [
        ("/ui/", "text/html; charset=utf-8", "<script type=\"module\" src=\"/ui/app.js\">"),
        ("/ui/index.html", "text/html; charset=utf-8", "<div id=\"app\">"),
        ("/ui/app.js", "text/javascript; charset=utf-8", "import"),
        ("/ui/jobs.js", "text/javascript; charset=utf-8", "export async function jobs"),
        ("/ui/dag.js", "text/javascript; charset=utf-8", "export function drawDag"),
        ("/ui/app.css", "text/css; charset=utf-8", ":root"),
        ("/ui/icon.svg", "image/svg+xml", "<svg"),
    ];
    for (path, content_type, needle) in cases {
        let res = get(&app, path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], content_type, "{path}");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
        let body = res.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
}

#[tokio::test]
async fn the_shell_has_no_inline_script_or_style() {
    // The CSP forbids them, so one would silently not run.
    let app = app().await;
    let html = get(&app, "/ui/").await.text().await.unwrap();
    for tag in html.split("<script").skip(1) {
        assert!(tag.split('>').next().unwrap().contains("src="), "an inline <script>: {tag}");
        assert!(tag.split_once('>').unwrap().1.starts_with("</script>"), "a script with a body: {tag}");
    }
    assert!(!html.contains("<style") && !html.contains("style="), "inline style");
    let handler = html.split(" on").skip(1).find(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(handler.is_none(), "an inline event handler: on{handler:?}");
}

#[tokio::test]
async fn ui_redirects_to_its_slash_and_unknown_files_are_404() {
    let app = app().await;
    let res = get(&app, "/ui").await;
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers()[header::LOCATION], "/ui/");
    for path in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/%2e%2e/Cargo.toml", "/ui/jobs.js/x"] {
        let res = get(&app, path).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}

#[tokio::test]
async fn an_unchanged_asset_answers_304_to_its_etag() {
    let app = app().await;
    let first = get(&app, "/ui/app.js").await;
    let tag = first.headers()[header::ETAG].clone();
    let again =
        app.client.get(format!("{}/ui/app.js", app.base)).header(header::IF_NONE_MATCH, tag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn every_data_call_of_the_dashboard_needs_the_key() {
    let app = app().await;
    let id = app.submit_plan(json!({"nodes": [{"id": "a", "echo": "hi"}]})).await;
    for path in ["/v1/me", &format!("/v1/jobs/{id}/input"), "/v1/jobs", &format!("/v1/jobs/{id}/graph")] {
        let r = app.call(Method::GET, path, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.body["error"]["code"], "unauthorized", "{path}");
    }
}

#[tokio::test]
async fn me_names_the_calling_key_and_its_scopes_never_its_secret() {
    let app = app().await;
    let reader = support::make_key(app.store.as_ref(), &["jobs:read"]).await;
    let r = app.call(Method::GET, "/v1/me", Some(&reader), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["scopes"], json!(["jobs:read"]));
    assert!(r.body["id"].as_str().unwrap().starts_with("key_"));
    assert!(reader.starts_with(r.body["prefix"].as_str().unwrap()));
    assert!(!r.body.to_string().contains(&reader), "the secret is never answered");
}

#[tokio::test]
async fn a_jobs_input_is_answered_to_its_reader_only() {
    let app = app().await;
    let id = app.submit_plan(json!({"nodes": [{"id": "a", "echo": "hi"}]})).await;
    let r = app.get(&format!("/v1/jobs/{id}/input")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["plan"]["nodes"][0]["id"], "a");
    assert!(r.body["key"]["id"].is_string(), "{:?}", r.body);
    assert!(r.body.get(orch_webhooks::LINKS_BASE).is_none(), "bookkeeping is left out: {:?}", r.body);
    // Another key that does not read every job gets 404, as for an unknown job.
    let other = support::make_key(app.store.as_ref(), &["jobs:read"]).await;
    let r = app.call(Method::GET, &format!("/v1/jobs/{id}/input"), Some(&other), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let writer_only = support::make_key(app.store.as_ref(), &["tools:call"]).await;
    let r = app.call(Method::GET, &format!("/v1/jobs/{id}/input"), Some(&writer_only), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_jobs_input_never_shows_its_callback_secret_or_header_values() {
    let app = spawn_app_with(Backend::Sqlite, allowing_loopback()).await;
    let secret = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LW9mLWF0LWxlYXN0LTI0LWJ5dGVz";
    let body = json!({
        "plan": {"nodes": [{"id": "a", "echo": "hi"}]},
        "callback": {"url": "http://127.0.0.1:9/hook", "secret": secret, "headers": {"X-Token": "t0p-s3cret"}},
    });
    let r = app.post("/v1/jobs/batch", body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap();
    let input = app.get(&format!("/v1/jobs/{id}/input")).await.body;
    let text = input.to_string();
    assert!(!text.contains(secret) && !text.contains("t0p-s3cret"), "a secret in {text}");
    assert_eq!(input["callback"]["url"], "http://127.0.0.1:9/hook");
    assert_eq!(input["callback"]["headers"]["X-Token"], "<redacted>");
}
