//! The router without a network: routing, bearer-key auth and the mapping of
//! errors to statuses and the one error body, driven with
//! `tower::ServiceExt::oneshot` over a fresh SQLite store.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use orch_api::{ApiConfig, AppState};
use orch_store::{Store, StoreOptions, StoreUrl};
use serde_json::Value;
use tower::ServiceExt;

struct Fixture {
    router: Router,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::Sqlite(dir.path().join("orch.db"));
    let store = orch_store::open(&url, &StoreOptions::default()).await.expect("store opens");
    let config = ApiConfig { max_body: 1024, ..Default::default() };
    let router = orch_api::app(AppState::new(store.clone(), config));
    Fixture { router, store, _dir: dir }
}

impl Fixture {
    /// A key with these scopes, made in the store; its secret.
    async fn key(&self, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let new = orch_api::auth::new_key("test", &scopes).unwrap();
        self.store.create_key(&new.key, &new.hash).await.unwrap();
        new.secret
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = self.router.clone().oneshot(request).await.expect("the router answers");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (parts.status, parts.headers, body)
    }

    async fn call(&self, method: Method, uri: &str, key: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_owned())),
            None => request.body(Body::empty()),
        };
        let (status, _, body) = self.send(request.unwrap()).await;
        (status, body)
    }
}

/// Asserts the one error shape with this status and code; returns the message.
fn check_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) -> String {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no message in {body}"));
    assert!(!message.is_empty());
    message.to_owned()
}

#[tokio::test]
async fn routing_reaches_each_kind_of_route_and_names_what_is_not_there() {
    let app = fixture().await;
    let admin = app.key(&["admin"]).await;

    let (status, body) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["info"]["title"], "Orch");

    for (method, uri, expected) in [
        (Method::GET, "/v1/jobs", StatusCode::OK),
        (Method::GET, "/v1/tools", StatusCode::OK),
        (Method::GET, "/v1/servers", StatusCode::OK),
        (Method::GET, "/v1/keys", StatusCode::OK),
        (Method::GET, "/tools", StatusCode::OK),
        (Method::GET, "/servers", StatusCode::OK),
        (Method::GET, "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", StatusCode::NOT_FOUND),
        (Method::GET, "/batch/status/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", StatusCode::NOT_FOUND),
        (Method::GET, "/tools/nope", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = app.call(method.clone(), uri, Some(&admin), None).await;
        assert_eq!(status, expected, "{method} {uri}: {body}");
    }

    let missing = app.call(Method::GET, "/v2/jobs", Some(&admin), None).await;
    let message = check_error(&missing, StatusCode::NOT_FOUND, "not_found");
    assert!(message.contains("GET /v2/jobs") && message.contains("/docs"), "{message}");
    let wrong = app.call(Method::DELETE, "/v1/jobs", Some(&admin), None).await;
    let message = check_error(&wrong, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(message.contains("DELETE") && message.contains("/v1/jobs"), "{message}");
}

#[tokio::test]
async fn auth_needs_a_known_bearer_key_with_the_route_s_scope() {
    let app = fixture().await;
    let reader = app.key(&["jobs:read"]).await;

    let message =
        check_error(&app.call(Method::GET, "/v1/jobs", None, None).await, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("Authorization: Bearer"), "{message}");
    let basic =
        Request::get("/v1/jobs").header(header::AUTHORIZATION, "Basic dXNlcjpwdw==").body(Body::empty()).unwrap();
    let (status, _, body) = app.send(basic).await;
    check_error(&(status, body), StatusCode::UNAUTHORIZED, "unauthorized");
    let unknown = app.call(Method::GET, "/v1/jobs", Some("orch_not-a-key"), None).await;
    check_error(&unknown, StatusCode::UNAUTHORIZED, "unauthorized");

    let (status, body) = app.call(Method::GET, "/v1/jobs", Some(&reader), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (method, uri, body, scope) in [
        (Method::POST, "/v1/jobs/batch", Some(r#"{"plan": {"nodes": [{"id": "a", "value": 1}]}}"#), "jobs:write"),
        (Method::POST, "/batch/execute", Some(r#"{"plan": {"nodes": [{"id": "a", "value": 1}]}}"#), "jobs:write"),
        (Method::GET, "/v1/tools", None, "tools:call"),
        (Method::GET, "/tools", None, "tools:call"),
        (Method::GET, "/v1/keys", None, "admin"),
        (Method::POST, "/servers/reload", None, "admin"),
    ] {
        let answer = app.call(method.clone(), uri, Some(&reader), body).await;
        check_error(&answer, StatusCode::FORBIDDEN, "missing_scope");
        assert_eq!(answer.1["error"]["details"]["required_scope"], scope, "{method} {uri}");
    }

    // A revoked key is refused like an unknown one.
    let writer = app.key(&["jobs:write"]).await;
    let id = app.store.list_keys().await.unwrap().into_iter().find(|k| k.scopes == ["jobs:write"]).unwrap().id;
    assert!(app.store.revoke_key(&id).await.unwrap());
    let revoked = app.call(Method::GET, "/v1/jobs", Some(&writer), None).await;
    check_error(&revoked, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn errors_map_to_their_status_and_one_body_naming_the_field() {
    let app = fixture().await;
    let admin = app.key(&["admin"]).await;

    // Body checks, in the order a request meets them.
    let text = Request::post("/v1/jobs/batch")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, body) = app.send(text).await;
    check_error(&(status, body), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let broken = app.call(Method::POST, "/v1/jobs/batch", Some(&admin), Some("{\"plan\": ")).await;
    assert_eq!(broken.0, StatusCode::BAD_REQUEST, "{}", broken.1);
    let too_big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(2048));
    let large = app.call(Method::POST, "/v1/jobs/chat", Some(&admin), Some(&too_big)).await;
    check_error(&large, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let sleepy = r#"{"plan": {"nodes": [{"id": "a", "sleep": {"ms": "soon"}}]}}"#;
    let typed = app.call(Method::POST, "/v1/jobs/batch", Some(&admin), Some(sleepy)).await;
    let message = check_error(&typed, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert!(message.starts_with("plan.nodes[0].sleep.ms: "), "{message}");
    assert_eq!(typed.1["error"]["details"]["field"], "plan.nodes[0].sleep.ms");
    let dangling = r#"{"plan": {"nodes": [{"id": "a", "value": 1, "depends_on": ["b"]}]}}"#;
    let plan = app.call(Method::POST, "/v1/jobs/batch", Some(&admin), Some(dangling)).await;
    check_error(&plan, StatusCode::UNPROCESSABLE_ENTITY, "invalid_plan");
    assert_eq!(plan.1["error"]["details"]["issues"][0]["field"], "plan.nodes[0].depends_on[0]", "{}", plan.1);

    // Ids: not an id and unknown read alike; an unfinished job's result is 409 with Retry-After.
    check_error(&app.call(Method::GET, "/v1/jobs/42", Some(&admin), None).await, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = app
        .call(Method::POST, "/v1/jobs/batch", Some(&admin), Some(r#"{"plan": {"nodes": [{"id": "a", "value": 1}]}}"#))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap();
    let request = Request::get(format!("/v1/jobs/{id}/result"))
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = app.send(request).await;
    check_error(&(status, body.clone()), StatusCode::CONFLICT, "job_not_finished");
    assert_eq!(body["error"]["details"]["status"], "queued");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let cancelled = app.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), Some(&admin), None).await;
    assert_eq!(cancelled.1["status"], "cancelled", "{}", cancelled.1);
    let again = app.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), Some(&admin), None).await;
    check_error(&again, StatusCode::CONFLICT, "job_finished");

    // A query parameter out of range names itself.
    let limit = app.call(Method::GET, "/v1/jobs?limit=0", Some(&admin), None).await;
    check_error(&limit, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(limit.1["error"]["details"]["field"], "limit", "{}", limit.1);
}

/// Regression (issue 13, defect 9): query and path parameters axum could not
/// read were answered in plain text (`Failed to deserialize query string`).
/// Every such refusal is now the one error shape naming the parameter.
#[tokio::test]
async fn query_errors_answer_plain_text() {
    let app = fixture().await;
    let admin = app.key(&["admin"]).await;
    for (uri, field) in [
        ("/v1/sessions/s1/memory?summarize=null", "summarize"),
        ("/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/events?last_event_id=null&last_event_id=null", "last_event_id"),
        ("/v1/jobs?limit=x", "limit"),
        ("/v1/jobs?status=nope", "status"),
        ("/v1/audit?since=yesterday", "since"),
        ("/v1/deliveries?limit=-1", "limit"),
        ("/v1/plans?format=svg", "format"),
    ] {
        let method = if uri.starts_with("/v1/plans") { Method::POST } else { Method::GET };
        let body = (method == Method::POST).then_some(r#"{"plan": {"nodes": [{"id": "a", "value": 1}]}}"#);
        let answer = app.call(method, uri, Some(&admin), body).await;
        check_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(answer.1["error"]["details"]["field"], field, "{uri}: {}", answer.1);
    }
    // A path parameter that is not UTF-8 once decoded names nothing: 404, same shape.
    let answer = app.call(Method::GET, "/v1/jobs/%FF%FE", Some(&admin), None).await;
    check_error(&answer, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(answer.1["error"]["details"]["field"], "id", "{}", answer.1);
}

/// Regression (issue 13, defect 9): too-deep JSON on `/mcp` was answered 415
/// in plain text by the MCP transport. A body that is not JSON is now 400
/// `malformed_json` (415 without a JSON Content-Type), and the transport's own
/// refusals (406 without the Accept it needs, an unknown session) carry the
/// one error shape too.
#[tokio::test]
async fn too_deep_json_on_mcp_answers_415_plain_text() {
    let app = fixture().await;
    let admin = app.key(&["admin"]).await;
    let mcp = |body: String, content_type: &str, accept: &str, session: Option<&str>| {
        let mut request = Request::post("/mcp")
            .header(header::HOST, "localhost")
            .header(header::AUTHORIZATION, format!("Bearer {admin}"))
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, accept);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.body(Body::from(body)).unwrap()
    };
    let both = "application/json, text/event-stream";
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let (status, headers, body) = app.send(mcp(deep.clone(), "application/json", both, None)).await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let message = check_error(&(status, body), StatusCode::BAD_REQUEST, "malformed_json");
    assert!(message.contains("recursion limit"), "{message}");
    let (status, _, body) = app.send(mcp(deep, "application/json", both, Some("0123456789abcdef"))).await;
    check_error(&(status, body), StatusCode::BAD_REQUEST, "malformed_json");
    let (status, _, body) = app.send(mcp("{}".into(), "text/plain", both, None)).await;
    check_error(&(status, body), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let (status, _, body) = app.send(mcp(initialize.clone(), "application/json", "application/json", None)).await;
    check_error(&(status, body), StatusCode::NOT_ACCEPTABLE, "not_acceptable");
    let list = r#"{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}"#.to_owned();
    let (status, _, body) = app.send(mcp(list, "application/json", both, Some("0123456789abcdef"))).await;
    check_error(&(status, body), StatusCode::NOT_FOUND, "not_found");
    // A good request still opens a session.
    let (status, headers, _) = app.send(mcp(initialize, "application/json", both, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("mcp-session-id"));
}
