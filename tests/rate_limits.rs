//! Per-key request rate limits and daily job quotas through the HTTP API: 429
//! with `Retry-After` and the `RateLimit` headers, on every front (REST,
//! OpenAI-compatible, `/mcp`, `/sse`), on both stores, and shared by two API
//! processes on one Redis.

mod support;

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Options, Reply, StoreHandle, TestApp, fresh_store, spawn_app_on, spawn_app_with};

async fn app(backend: Backend, api: impl FnOnce(&mut orch_api::ApiConfig) + Send + 'static) -> TestApp {
    spawn_app_with(backend, Options { worker: false, api: Box::new(api), ..Default::default() }).await
}

/// A key made through `POST /v1/keys` with `fields` added; its secret and view.
async fn key_with(app: &TestApp, fields: Value) -> (String, Value) {
    let mut body = json!({"name": "limited", "scopes": ["jobs:read", "jobs:write", "tools:call"]});
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    let reply = app.post("/v1/keys", body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    (reply.body["secret"].as_str().unwrap().to_owned(), reply.body)
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

fn assert_429(reply: &Reply, code: &str) -> u64 {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{:?}", reply.body);
    let retry: u64 = header(reply, "retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    retry
}

async fn chat(app: &TestApp, key: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = app
        .client
        .post(format!("{}/v1/jobs/chat", app.base))
        .bearer_auth(key)
        .json(&json!({"prompt": "hello", "model": "echo"}));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.json().await.unwrap_or(Value::Null);
    Reply { status, headers, body }
}

async fn requests_over_the_rate_limit_get_429_with_retry_after(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (key, view) = key_with(&app, json!({"rate_limit_per_minute": 3})).await;
    assert_eq!(view["rate_limit_per_minute"], 3);
    for left in (0..3).rev() {
        let reply = app.call(Method::GET, "/v1/jobs", Some(&key), None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(header(&reply, "ratelimit-policy"), Some("\"requests\";q=3;w=60"));
        let expected = format!("\"requests\";r={left};t={}", (3 - left) * 20);
        assert_eq!(header(&reply, "ratelimit"), Some(expected.as_str()));
    }
    let refused = app.call(Method::GET, "/v1/jobs", Some(&key), None).await;
    let retry = assert_429(&refused, "rate_limited");
    assert!((19..=20).contains(&retry), "one request comes back every 20 s, not after {retry} s");
    assert_eq!(refused.body["error"]["details"]["limit"], 3);
    assert_eq!(header(&refused, "ratelimit"), Some(format!("\"requests\";r=0;t={retry}").as_str()));
    assert_eq!(header(&refused, "ratelimit-policy"), Some("\"requests\";q=3;w=60"));
    // Other keys (the admin here, unlimited) are not affected and get no headers.
    let admin = app.get("/v1/jobs").await;
    assert_eq!(admin.status, StatusCode::OK);
    assert!(header(&admin, "ratelimit").is_none());
    // Unauthenticated routes are not limited.
    assert!(header(&app.call(Method::GET, "/health", None, None).await, "ratelimit").is_none());
}

#[tokio::test]
async fn requests_over_the_rate_limit_get_429_with_retry_after_on_sqlite() {
    requests_over_the_rate_limit_get_429_with_retry_after(Backend::Sqlite).await;
}

#[tokio::test]
async fn requests_over_the_rate_limit_get_429_with_retry_after_on_redis() {
    requests_over_the_rate_limit_get_429_with_retry_after(Backend::Redis).await;
}

#[tokio::test]
async fn the_server_default_applies_to_keys_without_a_limit_and_zero_is_unlimited() {
    let app = app(Backend::Sqlite, |c| c.rate_limit_per_minute = 2).await;
    let (defaulted, view) = key_with(&app, json!({})).await;
    assert_eq!(view["rate_limit_per_minute"], Value::Null);
    let (unlimited, _) = key_with(&app, json!({"rate_limit_per_minute": 0})).await;
    for _ in 0..2 {
        assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&defaulted), None).await.status, StatusCode::OK);
    }
    assert_429(&app.call(Method::GET, "/v1/jobs", Some(&defaulted), None).await, "rate_limited");
    for _ in 0..10 {
        let reply = app.call(Method::GET, "/v1/jobs", Some(&unlimited), None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(header(&reply, "ratelimit").is_none());
    }
}

#[tokio::test]
async fn the_rate_limit_covers_the_openai_mcp_and_sse_routes() {
    let app = app(Backend::Sqlite, |_| {}).await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let routes: [(Method, &str, Option<Value>); 6] = [
        (Method::GET, "/v1/models", None),
        (
            Method::POST,
            "/v1/chat/completions",
            Some(json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})),
        ),
        (Method::POST, "/mcp", Some(initialize.clone())),
        (Method::POST, "/mcp/anything", Some(initialize)),
        (Method::GET, "/sse/anything", None),
        (Method::GET, "/v1/tools", None),
    ];
    for (method, path, body) in routes {
        let (key, _) = key_with(&app, json!({"rate_limit_per_minute": 1})).await;
        assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&key), None).await.status, StatusCode::OK);
        let reply = app.call(method.clone(), path, Some(&key), body).await;
        assert_429(&reply, "rate_limited");
        assert_eq!(header(&reply, "ratelimit-policy"), Some("\"requests\";q=1;w=60"), "{method} {path}");
    }
}

async fn the_daily_job_quota_holds_under_concurrent_submits(backend: Backend) {
    let app = Arc::new(app(backend, |_| {}).await);
    let (key, view) = key_with(&app, json!({"jobs_per_day": 5})).await;
    assert_eq!(view["jobs_per_day"], 5);
    let submits: Vec<_> = (0..20)
        .map(|_| {
            let (app, key) = (app.clone(), key.clone());
            tokio::spawn(async move { chat(&app, &key, &[]).await })
        })
        .collect();
    let mut accepted = 0;
    for submit in submits {
        let reply = submit.await.unwrap();
        if reply.status == StatusCode::ACCEPTED {
            accepted += 1;
            continue;
        }
        let retry = assert_429(&reply, "job_quota_exceeded");
        assert!(retry <= 86_400, "the count starts again at UTC midnight, not in {retry} s");
        assert_eq!(reply.body["error"]["details"]["limit"], 5);
        assert_eq!(header(&reply, "ratelimit-policy"), Some("\"jobs\";q=5;w=86400"));
        assert_eq!(header(&reply, "ratelimit"), Some(format!("\"jobs\";r=0;t={retry}").as_str()));
    }
    assert_eq!(accepted, 5, "a quota of 5 jobs a day let {accepted} through");
    let listed = app.call(Method::GET, "/v1/jobs?limit=100", Some(&key), None).await;
    assert_eq!(listed.body["jobs"].as_array().unwrap().len(), 5);
    // Other keys still submit.
    assert_eq!(chat(&app, &app.admin, &[]).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_daily_job_quota_holds_under_concurrent_submits_on_sqlite() {
    the_daily_job_quota_holds_under_concurrent_submits(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_daily_job_quota_holds_under_concurrent_submits_on_redis() {
    the_daily_job_quota_holds_under_concurrent_submits(Backend::Redis).await;
}

#[tokio::test]
async fn idempotent_replays_are_not_counted_against_the_daily_quota() {
    let app = app(Backend::Sqlite, |c| c.jobs_per_day = 1).await;
    let (key, _) = key_with(&app, json!({})).await;
    let first = chat(&app, &key, &[("Idempotency-Key", "order-7")]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    for _ in 0..3 {
        let replay = chat(&app, &key, &[("Idempotency-Key", "order-7")]).await;
        assert_eq!(replay.status, StatusCode::ACCEPTED, "{:?}", replay.body);
        assert_eq!(replay.body["id"], first.body["id"]);
    }
    assert_429(&chat(&app, &key, &[("Idempotency-Key", "order-8")]).await, "job_quota_exceeded");
    assert_429(&chat(&app, &key, &[]).await, "job_quota_exceeded");
}

#[tokio::test]
async fn two_api_processes_on_one_redis_share_the_limits() {
    let handle = fresh_store(Backend::Redis).await;
    let admin = support::make_key(handle.store.as_ref(), &["admin"]).await;
    // The second API has its own connection to the same Redis and nothing else in common.
    let second = StoreHandle {
        url: handle.url.clone(),
        store: orch_store::open(&handle.url, &Default::default()).await.unwrap(),
        redis: None,
        dir: tempfile::tempdir().unwrap(),
    };
    let options = || Options { worker: false, ..Default::default() };
    let a = spawn_app_on(handle, admin.clone(), options()).await;
    let b = spawn_app_on(second, admin, options()).await;
    let (key, _) = key_with(&a, json!({"rate_limit_per_minute": 4, "jobs_per_day": 2})).await;
    for app in [&a, &b, &a, &b] {
        assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&key), None).await.status, StatusCode::OK);
    }
    assert_429(&b.call(Method::GET, "/v1/jobs", Some(&key), None).await, "rate_limited");
    assert_429(&a.call(Method::GET, "/v1/jobs", Some(&key), None).await, "rate_limited");

    let (key, _) = key_with(&a, json!({"jobs_per_day": 2})).await;
    assert_eq!(chat(&a, &key, &[]).await.status, StatusCode::ACCEPTED);
    assert_eq!(chat(&b, &key, &[]).await.status, StatusCode::ACCEPTED);
    assert_429(
        &a.call(Method::POST, "/v1/jobs/chat", Some(&key), Some(json!({"prompt": "x"}))).await,
        "job_quota_exceeded",
    );
    assert_429(&chat(&b, &key, &[]).await, "job_quota_exceeded");
}

#[tokio::test]
async fn key_limits_are_set_changed_and_checked_through_the_api() {
    let app = app(Backend::Sqlite, |_| {}).await;
    let (_, view) = key_with(&app, json!({"rate_limit_per_minute": 120, "jobs_per_day": 0})).await;
    let id = view["id"].as_str().unwrap();
    assert_eq!((view["rate_limit_per_minute"].clone(), view["jobs_per_day"].clone()), (json!(120), json!(0)));
    let path = format!("/v1/keys/{id}");
    let changed = app
        .call(Method::PATCH, &path, Some(&app.admin), Some(json!({"rate_limit_per_minute": null, "jobs_per_day": 50})))
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    assert_eq!(
        (changed.body["rate_limit_per_minute"].clone(), changed.body["jobs_per_day"].clone()),
        (Value::Null, json!(50))
    );
    let listed = app.get("/v1/keys").await;
    let listed = listed.body["keys"].as_array().unwrap().iter().find(|k| k["id"] == id).unwrap().clone();
    assert_eq!(listed["jobs_per_day"], 50);
    for (body, field) in [
        (json!({"rate_limit_per_minute": 1_000_001}), "rate_limit_per_minute"),
        (json!({"jobs_per_day": -1}), "jobs_per_day"),
    ] {
        let reply = app.call(Method::PATCH, &path, Some(&app.admin), Some(body)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", reply.body);
        assert!(reply.body["error"]["message"].as_str().unwrap().contains(field), "{:?}", reply.body);
    }
    let mut body = json!({"name": "x", "scopes": ["jobs:read"], "jobs_per_day": 2_000_000});
    let reply = app.post("/v1/keys", body.take()).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["error"]["details"]["field"], "jobs_per_day");
}
