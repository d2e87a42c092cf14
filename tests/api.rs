//! The HTTP edge: auth, scopes, the error shape, and the OpenAPI document.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Options, spawn_app_with};

async fn app() -> support::TestApp {
    spawn_app_with(Backend::Sqlite, Options { worker: false, ..Default::default() }).await
}

fn assert_error(reply: &support::Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{:?}", reply.body);
    assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{:?}", reply.body);
}

#[tokio::test]
async fn keys_and_scopes_guard_every_route() {
    let app = app().await;
    let r = app.call(Method::GET, "/v1/jobs", None, None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = app.call(Method::GET, "/v1/jobs", Some("orch_not-a-real-key"), None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    let reader = support::make_key(app.store.as_ref(), &["jobs:read"]).await;
    assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&reader), None).await.status, StatusCode::OK);
    let r = app.call(Method::POST, "/v1/jobs/chat", Some(&reader), Some(json!({"prompt": "hi"}))).await;
    assert_error(&r, StatusCode::FORBIDDEN, "missing_scope");
    assert_eq!(r.body["error"]["details"]["required_scope"], "jobs:write");
    let r = app.call(Method::GET, "/v1/keys", Some(&reader), None).await;
    assert_error(&r, StatusCode::FORBIDDEN, "missing_scope");

    // Public routes.
    assert_eq!(app.call(Method::GET, "/health", None, None).await.status, StatusCode::OK);
    assert_eq!(app.call(Method::GET, "/openapi.json", None, None).await.status, StatusCode::OK);
    let docs = app.client.get(format!("{}/docs/", app.base)).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger-ui"));
}

#[tokio::test]
async fn admin_creates_lists_and_revokes_keys() {
    let app = app().await;
    let r = app.post("/v1/keys", json!({"name": "n8n", "scopes": ["jobs:read", "jobs:write"]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(r.body["prefix"].as_str().unwrap()));
    let sub = app.call(Method::POST, "/v1/jobs/chat", Some(&secret), Some(json!({"prompt": "hi"}))).await;
    assert_eq!(sub.status, StatusCode::ACCEPTED);

    let list = app.get("/v1/keys").await;
    let text = list.body.to_string();
    assert!(!text.contains(&secret), "a listing must never show a secret");
    assert!(list.body["keys"].as_array().unwrap().iter().any(|k| k["id"] == id.as_str()));

    let bad = app.post("/v1/keys", json!({"name": "x", "scopes": ["root"]})).await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(bad.body["error"]["details"]["field"], "scopes[0]");

    let del = app.call(Method::DELETE, &format!("/v1/keys/{id}"), Some(&app.admin), None).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let after = app.call(Method::GET, "/v1/jobs", Some(&secret), None).await;
    assert_error(&after, StatusCode::UNAUTHORIZED, "unauthorized");
    let again = app.call(Method::DELETE, &format!("/v1/keys/{id}"), Some(&app.admin), None).await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");
}

async fn raw(app: &support::TestApp, method: Method, path: &str, content_type: &str, body: &str) -> support::Reply {
    let resp = app
        .client
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    support::Reply { status, headers, body }
}

/// (body, status, code, field named in details)
fn bad_bodies() -> Vec<(&'static str, &'static str, StatusCode, &'static str, Option<&'static str>)> {
    vec![
        ("/v1/jobs/chat", "{\"prompt\": ", StatusCode::BAD_REQUEST, "malformed_json", None),
        (
            "/v1/jobs/chat",
            "{\"prompt\": \"x\", \"temperature\": 2}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("temperature"),
        ),
        ("/v1/jobs/chat", "{\"prompt\": 5}", StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", Some("prompt")),
        (
            "/v1/jobs/chat",
            "{\"model\": \"gpt-9\", \"prompt\": \"x\"}",
            StatusCode::BAD_REQUEST,
            "unknown_model",
            Some("model"),
        ),
        (
            "/v1/jobs/chat",
            "{\"model\": \"echo\", \"task_type\": \"poetry\", \"prompt\": \"x\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("task_type"),
        ),
        (
            "/v1/jobs/chat",
            "{\"prompt\": \"x\", \"max_turns\": 0}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("max_turns"),
        ),
        (
            "/v1/jobs/chat",
            "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("messages[0].role"),
        ),
        ("/v1/jobs/chat", "{}", StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", Some("messages")),
        (
            "/v1/jobs/chat",
            "{\"prompt\": \"x\", \"max_attempts\": 0}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("max_attempts"),
        ),
        (
            "/v1/jobs/batch",
            "{\"plan\": {\"nodes\": [{\"id\": \"a\", \"sleep\": {\"ms\": \"soon\"}}]}}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("plan.nodes[0].sleep.ms"),
        ),
        (
            "/v1/jobs/batch",
            "{\"plan\": {\"nodes\": [{\"id\": \"a\", \"echo\": 1, \"depends_on\": [\"b\"]}]}}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
            Some("plan.nodes[0].depends_on[0]"),
        ),
    ]
}

#[tokio::test]
async fn bad_input_gets_one_error_shape_naming_the_field() {
    let app = app().await;
    for (path, body, status, code, field) in bad_bodies() {
        let r = raw(&app, Method::POST, path, "application/json", body).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{body}: {:?}", r.body);
        if let Some(field) = field {
            assert_eq!(r.body["error"]["details"]["field"], field, "{body}: {:?}", r.body);
            assert!(r.body["error"]["message"].as_str().unwrap().starts_with(field), "{body}: {:?}", r.body);
        }
    }
    let page = app.get("/v1/jobs").await.body;
    assert_eq!(page["jobs"], json!([]), "no rejected body may create a job");
}

#[tokio::test]
async fn transport_errors_use_the_error_shape() {
    let app = app().await;
    let r = raw(&app, Method::POST, "/v1/jobs/chat", "text/plain", "{\"prompt\": \"x\"}").await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(100 * 1024));
    let r = raw(&app, Method::POST, "/v1/jobs/chat", "application/json", &big).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let r = app.get("/v1/jobs/0190aaaa-0000-7000-8000-000000000000").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app.get("/v1/jobs/not-an-id").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app.get("/v1/nothing-here").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = app.call(Method::DELETE, "/v1/jobs/chat", Some(&app.admin), None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn served_openapi_matches_the_checked_in_file() {
    let app = app().await;
    let served = app.call(Method::GET, "/openapi.json", None, None).await.body;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let file = std::fs::read_to_string(path).expect("openapi/openapi.json is checked in");
    let checked_in: Value = serde_json::from_str(&file).unwrap();
    assert!(
        served == checked_in && file == orch_api::openapi_json(),
        "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json`"
    );
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/v1/jobs/chat",
        "/v1/jobs/batch",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/result",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/cancel",
        "/v1/keys",
        "/v1/keys/{id}",
        "/health",
    ] {
        assert!(served["paths"][path].is_object(), "{path} missing from the document");
    }
    assert_eq!(served["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let statuses = &served["components"]["schemas"]["JobStatus"]["enum"];
    let expected: Vec<&str> = orch_store::JobStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(statuses, &json!(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_answers_503_and_accepts_nothing() {
    let mut app = spawn_app_with(Backend::Redis, Options { worker: false, ..Default::default() }).await;
    let ok = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(ok.status, StatusCode::OK);
    // Redis goes away.
    drop(app.handle.redis.take());
    let health = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", health.body);
    assert_eq!(health.body["status"], "unavailable");
    assert_eq!(health.body["store"]["ok"], false);
    assert!(health.body["store"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{:?}", health.body);
    let submit = app.post("/v1/jobs/chat", json!({"prompt": "lost?"})).await;
    // The key was never seen before, so its lookup meets the outage: a store
    // failure must read as 503, never as a bad key, and nothing is accepted.
    assert_error(&submit, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_eq!(submit.headers["retry-after"], "1");
}
