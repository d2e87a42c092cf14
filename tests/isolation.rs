//! What one API key may see of another's: jobs (every route and MCP tool or
//! resource), deliveries, sessions, usage, idempotency records and `/mcp`
//! sessions. Another key's things read exactly like unknown ones (404).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use orch_api::servers::McpSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Options, TestApp, spawn_app_with, test_server};

const WAIT: Duration = Duration::from_secs(20);

/// A key with `scopes` stored straight in the store: (secret, key id).
async fn key(app: &TestApp, scopes: &[&str]) -> (String, String) {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let new = orch_api::auth::new_key("test", &scopes).unwrap();
    app.store.create_key(&new.key, &new.hash).await.unwrap();
    (new.secret, new.key.id)
}

/// The app with the test MCP server as `t`.
async fn app(backend: Backend) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("mcp-config.json");
    let config = json!({"mcpServers": {"t": {"command": test_server(), "timeout": 30}}});
    std::fs::write(&file, config.to_string()).unwrap();
    let mcp = McpSettings { file: Some(file), allow_api_stdio: false };
    (spawn_app_with(backend, Options { mcp, ..Default::default() }).await, dir)
}

/// A streamable-HTTP MCP session spoken by hand as `key`.
struct Mcp {
    http: reqwest::Client,
    url: String,
    key: String,
    id: String,
}

impl Mcp {
    async fn open(app: &TestApp, path: &str, key: &str) -> Mcp {
        let mut mcp =
            Mcp { http: app.client.clone(), url: format!("{}{path}", app.base), key: key.into(), id: "".into() };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
        let response = mcp.send(Method::POST, Some(&init)).await;
        assert_eq!(response.status(), StatusCode::OK);
        mcp.id = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let ready =
            mcp.send(Method::POST, Some(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))).await;
        assert_eq!(ready.status(), StatusCode::ACCEPTED);
        mcp
    }

    /// The same session id presented with another key.
    fn as_key(&self, key: &str) -> Mcp {
        Mcp { http: self.http.clone(), url: self.url.clone(), key: key.into(), id: self.id.clone() }
    }

    async fn send(&self, method: Method, body: Option<&Value>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, &self.url)
            .bearer_auth(&self.key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(body) = body {
            request = request.json(body);
        }
        if !self.id.is_empty() {
            request = request.header("mcp-session-id", &self.id);
        }
        request.send().await.unwrap()
    }

    /// The JSON-RPC answer to `method` with `params`.
    async fn request(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params});
        let response = self.send(Method::POST, Some(&body)).await;
        assert_eq!(response.status(), StatusCode::OK, "{body}");
        let text = response.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|_| {
            text.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .find(|message| message["id"] == 9)
                .unwrap_or_else(|| panic!("no answer in {text}"))
        })
    }

    async fn tool(&self, name: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": name, "arguments": arguments})).await
    }
}

/// `(status, error body)` with the job id replaced, to compare with an unknown id's.
fn shape(reply: &support::Reply, id: &str) -> (StatusCode, String) {
    (reply.status, reply.body.to_string().replace(id, "<id>"))
}

/// Regression (issue 13, defect 2): a `jobs:read` key limited to one server read
/// an admin job's output from another server through every job route and MCP.
/// Now every per-job route and MCP tool/resource answers another key 404, the
/// same as for an unknown id, and listings hold only the key's own jobs.
async fn any_key_reads_every_keys_jobs(backend: Backend) {
    let (app, _dir) = app(backend).await;
    let (a, a_id) = key(&app, &["jobs:read", "jobs:write", "tools:call"]).await;
    let (b, _) = key(&app, &["jobs:read", "jobs:write", "tools:call"]).await;
    let (all, _) = key(&app, &["jobs:read", "jobs:read_all", "jobs:write"]).await;

    // A's batch job calls a tool and keeps its output; its chat job runs too.
    let plan = json!({"plan": {"nodes": [{"id": "said", "tool": "t.echo", "args": {"message": "A's secret"}}]}});
    let batch = app.call(Method::POST, "/v1/jobs/batch", Some(&a), Some(plan)).await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{:?}", batch.body);
    let batch = batch.body["id"].as_str().unwrap().to_owned();
    let chat = app.call(Method::POST, "/v1/jobs/chat", Some(&a), Some(json!({"prompt": "A's chat"}))).await;
    let chat = chat.body["id"].as_str().unwrap().to_owned();
    for id in [&batch, &chat] {
        assert_eq!(app.wait_finished(id, WAIT).await["status"], "succeeded");
    }
    // A queued job of A's, for cancel, and a delivery about A's job, for redeliver.
    let queued = app
        .call(
            Method::POST,
            "/v1/jobs/batch",
            Some(&a),
            Some(json!({"plan": {"nodes": [{"id": "w", "sleep": {"ms": 60000}}]}})),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let input = orch_webhooks::DeliveryInput {
        job_id: Some(batch.parse().unwrap()),
        event: "job.succeeded".into(),
        attempt: 1,
        target: orch_webhooks::Target::Callback,
        webhook_id: "msg_a".into(),
        redelivery_of: None,
        payload: None,
    };
    let delivery = orch_webhooks::delivery_job(&input, None, Some(a_id.clone()));
    let delivery_id = delivery.id.to_string();
    app.store.insert_job(delivery).await.unwrap();

    let unknown = orch_store::new_job_id().to_string();
    let routes = |id: &str| {
        vec![
            (Method::GET, format!("/v1/jobs/{id}")),
            (Method::GET, format!("/v1/jobs/{id}/result")),
            (Method::GET, format!("/v1/jobs/{id}/events")),
            (Method::GET, format!("/v1/jobs/{id}/graph")),
            (Method::GET, format!("/v1/jobs/{id}/outputs/said")),
            (Method::GET, format!("/v1/jobs/{id}/deliveries")),
        ]
    };
    for (method, path) in routes(&batch) {
        let own = app.call(method.clone(), &path, Some(&a), None).await;
        assert_eq!(own.status, StatusCode::OK, "{method} {path} as its owner: {:?}", own.body);
        assert_eq!(app.call(method.clone(), &path, Some(&all), None).await.status, StatusCode::OK, "{path}");
        let theirs = app.call(method.clone(), &path, Some(&b), None).await;
        let none = app.call(method.clone(), &path.replace(&batch, &unknown), Some(&b), None).await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{method} {path} as another key: {:?}", theirs.body);
        assert_eq!(shape(&theirs, &batch), shape(&none, &unknown), "{method} {path}");
    }
    // Changing: another key's cancel and redeliver are 404 too (read_all only reads).
    for key in [&b, &all] {
        let cancel = app.call(Method::POST, &format!("/v1/jobs/{queued}/cancel"), Some(key), None).await;
        assert_eq!((cancel.status, cancel.body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let redeliver =
            app.call(Method::POST, &format!("/v1/deliveries/{delivery_id}/redeliver"), Some(key), None).await;
        assert_eq!(redeliver.status, StatusCode::NOT_FOUND, "{:?}", redeliver.body);
    }
    let untouched = app.get(&format!("/v1/jobs/{queued}")).await.body;
    assert!(untouched["status"] != "cancelled" && untouched["cancel_requested"] == false, "{untouched}");
    let redeliver = app.call(Method::POST, &format!("/v1/deliveries/{delivery_id}/redeliver"), Some(&a), None).await;
    assert_eq!(redeliver.status, StatusCode::ACCEPTED, "{:?}", redeliver.body);
    let cancel = app.call(Method::POST, &format!("/v1/jobs/{queued}/cancel"), Some(&a), None).await;
    assert_eq!(cancel.status, StatusCode::OK, "{:?}", cancel.body);

    // Listings: B sees none of A's jobs or deliveries; A, admin and read_all see them.
    let ids = |reply: support::Reply, field: &str| -> Vec<String> {
        reply.body[field].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
    };
    assert!(ids(app.call(Method::GET, "/v1/jobs", Some(&b), None).await, "jobs").is_empty());
    assert!(ids(app.call(Method::GET, "/v1/deliveries", Some(&b), None).await, "deliveries").is_empty());
    for key in [&a, &app.admin, &all] {
        let listed = ids(app.call(Method::GET, "/v1/jobs", Some(key), None).await, "jobs");
        assert!([&batch, &chat, &queued].iter().all(|id| listed.contains(id)), "{listed:?}");
        let deliveries = ids(app.call(Method::GET, "/v1/deliveries", Some(key), None).await, "deliveries");
        assert!(deliveries.contains(&delivery_id), "{deliveries:?}");
    }
    // Paging one key's jobs: a page of 1, then the rest after its cursor.
    let first = app.call(Method::GET, "/v1/jobs?limit=1", Some(&a), None).await.body;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let rest = ids(app.call(Method::GET, &format!("/v1/jobs?cursor={cursor}"), Some(&a), None).await, "jobs");
    assert_eq!(rest.len(), 2, "{rest:?}");

    // Usage: B's report has none of A's turns.
    let usage = app.call(Method::GET, "/v1/usage?group_by=key", Some(&b), None).await;
    assert_eq!(usage.status, StatusCode::OK, "{:?}", usage.body);
    assert!(!usage.body.to_string().contains(&a_id), "{:?}", usage.body);

    // MCP: get_job and the job:// resource are not found for B, found for A.
    let mcp_b = Mcp::open(&app, "/mcp", &b).await;
    for id in [&batch, &chat] {
        let answer = mcp_b.tool("get_job", json!({"id": id})).await;
        assert_eq!(answer["result"]["isError"], true, "{answer}");
        let text = answer["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("not_found") && !text.contains("secret"), "{text}");
        let read = mcp_b.request("resources/read", json!({"uri": format!("job://{id}")})).await;
        assert!(read["error"].is_object() && !read.to_string().contains("secret"), "{read}");
    }
    let listed = mcp_b.request("resources/list", json!({})).await;
    assert!(!listed.to_string().contains(&batch), "{listed}");
    let mcp_a = Mcp::open(&app, "/mcp", &a).await;
    let own = mcp_a.tool("get_job", json!({"id": batch})).await;
    assert_eq!(own["result"]["structuredContent"]["status"], "succeeded", "{own}");
    let read = mcp_a.request("resources/read", json!({"uri": format!("job://{batch}")})).await;
    assert!(read["result"]["contents"][0]["text"].as_str().unwrap().contains("succeeded"), "{read}");

    // A job submitted over MCP belongs to the key that submitted it.
    let submitted = mcp_a.tool("submit_job", json!({"kind": "chat", "prompt": "over MCP"})).await;
    let id = submitted["result"]["structuredContent"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.call(Method::GET, &format!("/v1/jobs/{id}"), Some(&a), None).await.status, StatusCode::OK);
    assert_eq!(app.call(Method::GET, &format!("/v1/jobs/{id}"), Some(&b), None).await.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

/// An `Idempotency-Key` is remembered per key: key B reusing key A's key (and
/// body) gets a job of its own, not A's.
async fn idempotency_keys_are_per_api_key(backend: Backend) {
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    let (a, _) = key(&app, &["jobs:read", "jobs:write"]).await;
    let (b, _) = key(&app, &["jobs:read", "jobs:write"]).await;
    let post = |key: String| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(format!("{}/v1/jobs/chat", app.base))
                .bearer_auth(key)
                .header("Idempotency-Key", "order-7")
                .json(&json!({"prompt": "same body"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let replayed = response.headers().contains_key("idempotent-replayed");
            (response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned(), replayed)
        }
    };
    let (first, _) = post(a.clone()).await;
    let (again, replayed) = post(a.clone()).await;
    assert_eq!((again.as_str(), replayed), (first.as_str(), true));
    let (of_b, replayed) = post(b.clone()).await;
    assert!(of_b != first && !replayed, "B got A's job {first}");
    assert_eq!(app.call(Method::GET, &format!("/v1/jobs/{of_b}"), Some(&b), None).await.status, StatusCode::OK);
    app.stop().await;
}

on_both_backends!(any_key_reads_every_keys_jobs, idempotency_keys_are_per_api_key);

/// Regression (issue 13, defect 6): another key presenting the admin's
/// `Mcp-Session-Id` got 200. Now the session does not exist for it: POST
/// (the direct tools/call path and rmcp's), GET and DELETE answer 404 as for an
/// unknown session, on `/mcp` and `/mcp/{server}`, and the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sessions_are_not_tied_to_their_key() {
    let (app, _dir) = app(Backend::Sqlite).await;
    let (other, _) = key(&app, &["tools:call", "jobs:read"]).await;
    for path in ["/mcp", "/mcp/t"] {
        let admin = Mcp::open(&app, path, &app.admin).await;
        let stranger = admin.as_key(&other);
        let mut unknown = admin.as_key(&other);
        unknown.id = "0123456789abcdef".into();
        let echo = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": if path == "/mcp" { "t.echo" } else { "echo" }, "arguments": {"message": "hi"}}});
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        for (method, body) in
            [(Method::POST, Some(&echo)), (Method::POST, Some(&list)), (Method::GET, None), (Method::DELETE, None)]
        {
            let theirs = stranger.send(method.clone(), body).await;
            let none = unknown.send(method.clone(), body).await;
            assert_eq!(theirs.status(), StatusCode::NOT_FOUND, "{method} {path} with another key's session");
            assert_eq!(none.status(), StatusCode::NOT_FOUND, "{method} {path} with an unknown session");
            assert_eq!(theirs.text().await.unwrap(), none.text().await.unwrap());
        }
        // The owner's session is untouched.
        let answer = admin.request("tools/call", echo["params"].clone()).await;
        assert_eq!(answer["result"]["content"][0]["text"], "hi", "{answer}");
        assert_eq!(admin.send(Method::DELETE, None).await.status(), StatusCode::ACCEPTED);
    }
    app.stop().await;
}

/// Regression (issue 13, defect 8): another key's chat session answered 403
/// where an unknown one answers 404, and `..` / `-rf` were accepted as a
/// session id and a server name. Another key's session now reads as unknown,
/// and ids and names must start with a letter or digit (the error says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_leaks_sessions_of_other_keys_and_ids_that_look_like_paths_or_flags() {
    let app = spawn_app_with(Backend::Sqlite, Options::default()).await;
    let (a, _) = key(&app, &["jobs:read", "jobs:write"]).await;
    let (b, _) = key(&app, &["jobs:read", "jobs:write", "tools:call"]).await;
    let started = app
        .call(Method::POST, "/v1/jobs/chat", Some(&a), Some(json!({"prompt": "hi", "session_id": "weekly-42"})))
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    app.wait_finished(started.body["id"].as_str().unwrap(), WAIT).await;
    for (method, suffix) in [(Method::GET, ""), (Method::GET, "/memory"), (Method::DELETE, "")] {
        let theirs = app.call(method.clone(), &format!("/v1/sessions/weekly-42{suffix}"), Some(&b), None).await;
        let none = app.call(method.clone(), &format!("/v1/sessions/weekly-43{suffix}"), Some(&b), None).await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{method} {suffix}: {:?}", theirs.body);
        assert_eq!(theirs.body.to_string().replace("42", "43"), none.body.to_string());
    }
    assert_eq!(app.call(Method::GET, "/v1/sessions/weekly-42", Some(&a), None).await.status, StatusCode::OK);

    for id in ["..", "-rf", ".hidden", "_x"] {
        let by_field =
            app.call(Method::POST, "/v1/jobs/chat", Some(&a), Some(json!({"prompt": "x", "session_id": id}))).await;
        assert_eq!(by_field.status, StatusCode::UNPROCESSABLE_ENTITY, "{id}");
        assert_eq!(by_field.body["error"]["details"]["field"], "session_id");
        let message = by_field.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("A-Z a-z 0-9 . _ : -") && message.contains("starting with a letter or digit"),
            "{message}"
        );
        let by_header = app
            .client
            .post(format!("{}/v1/jobs/chat", app.base))
            .bearer_auth(&a)
            .header("X-Session-ID", id)
            .json(&json!({"prompt": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(by_header.status(), StatusCode::UNPROCESSABLE_ENTITY, "{id}");
    }
    let by_path = app.call(Method::GET, "/v1/sessions/-rf", Some(&a), None).await;
    assert_eq!(by_path.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", by_path.body);

    for name in ["-rf", "_x"] {
        let put = app.post("/v1/servers", json!({"name": name, "config": {"url": "http://127.0.0.1:9/mcp"}})).await;
        assert_eq!(put.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {:?}", put.body);
        let message = put.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("letters, digits, `_` or `-`, starting with a letter or digit"), "{message}");
    }
    app.stop().await;
}
