//! The MCP gateway over REST, against real MCP servers: the reference
//! `@modelcontextprotocol/server-everything` (stdio and streamable HTTP) and
//! the project's `orch-mcp-test-server`. Tools, schema checks, calls, limited
//! keys, servers registered through the API (kept across a restart on both
//! backends), read-only file servers, reloads, tests, and secrets.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orch_api::servers::McpSettings;
use orch_testkit::everything::{HttpServer, entry, node};
use orch_testkit::free_port;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Options, Reply, TestApp, spawn_app_on, spawn_app_with, test_server};

const FILE_SECRET: &str = "file-secret-7f3a";
const HEADER_SECRET: &str = "header-secret-91bc";

/// Writes an mcp-config.json with these servers into `dir`.
fn write_config(dir: &Path, servers: Value) -> PathBuf {
    let path = dir.join("mcp-config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json!({"mcpServers": servers})).unwrap()).unwrap();
    path
}

fn test_entry(timeout: u64) -> Value {
    json!({"command": test_server(), "timeout": timeout, "env": {"SECRET_TOKEN": FILE_SECRET}})
}

async fn app_with_file(backend: Backend, servers: Value, watch: Option<Duration>) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), servers);
    let mcp = McpSettings { file: Some(file), allow_api_stdio: false };
    (spawn_app_with(backend, Options { worker: false, mcp, watch, ..Default::default() }).await, dir)
}

fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
}

/// Fails when a response shows a secret.
fn assert_no_secrets(reply: &Reply) {
    let text = reply.body.to_string();
    for secret in [FILE_SECRET, HEADER_SECRET] {
        assert!(!text.contains(secret), "a response shows the secret {secret}: {text}");
    }
}

fn names(reply: &Reply, list: &str, field: &str) -> Vec<String> {
    let items = reply.body[list].as_array().unwrap_or_else(|| panic!("no {list} in {}", reply.body));
    items.iter().map(|t| t[field].as_str().unwrap().to_owned()).collect()
}

fn server<'a>(list: &'a Reply, name: &str) -> &'a Value {
    let servers = list.body["servers"].as_array().unwrap();
    servers.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no server {name} in {}", list.body))
}

async fn call(app: &TestApp, key: &str, server: &str, tool: &str, arguments: Value) -> Reply {
    let path = format!("/v1/tools/{server}/{tool}");
    app.call(Method::POST, &path, Some(key), Some(json!({"arguments": arguments}))).await
}

fn text(reply: &Reply) -> String {
    reply.body["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {}", reply.body)).to_owned()
}

async fn pid(app: &TestApp, server: &str) -> String {
    let r = call(app, &app.admin, server, "pid", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    text(&r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_listed_searched_described_and_called() {
    let servers = json!({
        "everything": {"command": node(), "args": [entry(), "stdio"], "timeout": 30},
        "test": test_entry(30),
        "slow": {"command": test_server(), "timeout": 1},
    });
    let (app, _dir) = app_with_file(Backend::Sqlite, servers, None).await;
    let key = &app.admin;

    let all = app.get("/v1/tools").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let all = names(&all, "tools", "name");
    for name in ["everything.echo", "everything.get-sum", "test.echo", "test.sleep", "slow.sleep"] {
        assert!(all.contains(&name.to_owned()), "{name} missing from {all:?}");
    }
    let of_test = app.get("/v1/tools?server=test").await;
    assert_eq!(names(&of_test, "tools", "tool"), ["echo", "sleep", "fail_n_times", "stats", "add_tool", "pid", "exit"]);
    assert!(of_test.body["tools"].as_array().unwrap().iter().all(|t| t["server"] == "test"));
    let found = app.get("/v1/tools?q=CANCELLATIONS%20seen").await;
    assert_eq!(names(&found, "tools", "name"), ["slow.stats", "test.stats"]);

    let schema = app.get("/v1/tools/test/echo").await;
    assert_eq!(schema.status, StatusCode::OK, "{}", schema.body);
    assert_eq!(schema.body["input_schema"]["required"], json!(["message"]));
    assert_eq!(schema.body["name"], "test.echo");
    assert_error(&app.get("/v1/tools/test/nope").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.get("/v1/tools/nope/echo").await, StatusCode::NOT_FOUND, "not_found");

    let r = call(&app, key, "test", "echo", json!({"message": "hi there"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(text(&r), "hi there");
    let r = call(&app, key, "everything", "get-sum", json!({"a": 2, "b": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(text(&r).contains('5'), "{}", r.body);

    // Every violation, with its path; nothing reaches the server.
    let r = call(&app, key, "test", "fail_n_times", json!({"n": "two"})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_arguments");
    let violations = r.body["error"]["details"]["violations"].as_array().unwrap();
    let paths: Vec<&str> = violations.iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["arguments", "arguments.n"], "{}", r.body);
    assert!(violations[0]["message"].as_str().unwrap().contains("\"key\""), "{}", r.body);
    assert!(violations[1]["message"].as_str().unwrap().contains("integer"), "{}", r.body);
    let stats = call(&app, key, "test", "stats", json!({})).await;
    assert_eq!(serde_json::from_str::<Value>(&text(&stats)).unwrap()["calls"], 2, "echo and stats only");

    let health = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    assert_eq!(names(&health, "servers", "name"), ["everything", "slow", "test"]);
    assert!(health.body["servers"].as_array().unwrap().iter().all(|s| s["state"] == "up"), "{}", health.body);
    // The tool's own error, and a call past the server's timeout, name the server.
    let r = call(&app, key, "test", "fail_n_times", json!({"key": "k", "n": 1})).await;
    assert_error(&r, StatusCode::BAD_GATEWAY, "tool_error");
    assert_eq!(r.body["error"]["details"]["server"], "test");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("failure 1 of 1"), "{}", r.body);
    let r = call(&app, key, "slow", "sleep", json!({"ms": 5000})).await;
    assert_error(&r, StatusCode::GATEWAY_TIMEOUT, "tool_timeout");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("`slow`"), "{}", r.body);

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_key_sees_and_calls_only_its_servers() {
    let (app, _dir) = app_with_file(Backend::Sqlite, json!({"a": test_entry(30), "b": test_entry(30)}), None).await;
    let created = app.post("/v1/keys", json!({"name": "only a", "scopes": ["tools:call"], "servers": ["a"]})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["servers"], json!(["a"]));
    let limited = created.body["secret"].as_str().unwrap();

    let tools = app.call(Method::GET, "/v1/tools", Some(limited), None).await;
    assert!(names(&tools, "tools", "server").iter().all(|s| s == "a"), "{}", tools.body);
    let servers = app.call(Method::GET, "/v1/servers", Some(limited), None).await;
    assert_eq!(names(&servers, "servers", "name"), ["a"]);
    assert_eq!(call(&app, limited, "a", "echo", json!({"message": "ok"})).await.status, StatusCode::OK);
    for r in [
        call(&app, limited, "b", "echo", json!({"message": "no"})).await,
        app.call(Method::GET, "/v1/tools/b/echo", Some(limited), None).await,
        app.call(Method::GET, "/v1/tools?server=b", Some(limited), None).await,
        app.call(Method::GET, "/v1/servers/b", Some(limited), None).await,
    ] {
        assert_error(&r, StatusCode::FORBIDDEN, "server_not_allowed");
    }
    // Server changes are for admins; tools need `tools:call`.
    let r = app.call(Method::POST, "/v1/servers/reload", Some(limited), None).await;
    assert_error(&r, StatusCode::FORBIDDEN, "missing_scope");
    let reader = support::make_key(app.store.as_ref(), &["jobs:read"]).await;
    let r = app.call(Method::GET, "/v1/tools", Some(&reader), None).await;
    assert_error(&r, StatusCode::FORBIDDEN, "missing_scope");
    assert_eq!(r.body["error"]["details"]["required_scope"], "tools:call");
    app.stop().await;
}

async fn servers_registered_through_the_api_persist(backend: Backend) {
    let upstream = HttpServer::start("streamableHttp");
    let upstream_url = format!("http://127.0.0.1:{}/mcp", upstream.port);
    let (app, dir) = app_with_file(backend, json!({"test": test_entry(30)}), None).await;

    let remote = json!({"transportType": "streamable-http", "url": upstream_url, "timeout": 20,
        "headers": {"X-Api-Key": HEADER_SECRET}});
    let r = app.post("/v1/servers", json!({"name": "remote", "config": remote})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!((r.body["state"].as_str(), r.body["source"].as_str()), (Some("up"), Some("api")), "{}", r.body);
    assert_eq!(r.body["config"]["headers"]["X-Api-Key"], "<redacted>");
    assert_no_secrets(&r);
    let sum = call(&app, &app.admin, "remote", "get-sum", json!({"a": 20, "b": 22})).await;
    assert!(text(&sum).contains("42"), "{}", sum.body);

    // Rules of the API: names unique, the file's servers read-only, no stdio.
    let r = app.post("/v1/servers", json!({"name": "remote", "config": {"url": upstream_url}})).await;
    assert_error(&r, StatusCode::CONFLICT, "server_exists");
    let file = dir.path().join("mcp-config.json").display().to_string();
    for r in [
        app.post("/v1/servers", json!({"name": "test", "config": {"url": upstream_url}})).await,
        app.call(Method::PUT, "/v1/servers/test", Some(&app.admin), Some(json!({"config": {"url": upstream_url}})))
            .await,
        app.call(Method::DELETE, "/v1/servers/test", Some(&app.admin), None).await,
    ] {
        assert_error(&r, StatusCode::CONFLICT, "server_read_only");
        assert!(r.body["error"]["message"].as_str().unwrap().contains(&file), "{}", r.body);
    }
    let r = app.post("/v1/servers", json!({"name": "local", "config": {"command": node()}})).await;
    assert_error(&r, StatusCode::FORBIDDEN, "stdio_not_allowed");
    let r = app.post("/v1/servers", json!({"name": "bad", "config": {"url": "ftp://example.com"}})).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_server");
    assert_eq!(r.body["error"]["details"], json!({"server": "bad", "field": "config.url"}));

    // Test: the file's server answers; a server nobody listens for fails, in the body.
    let r = app.post("/v1/servers/test/test", json!({})).await;
    assert_eq!((r.status, &r.body["ok"]), (StatusCode::OK, &json!(true)), "{}", r.body);
    assert!(r.body["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(r.body["tools"].as_array().unwrap().contains(&json!("echo")), "{}", r.body);
    let closed = format!("http://127.0.0.1:{}/mcp", free_port());
    let r = app.post("/v1/servers", json!({"name": "gone", "config": {"url": closed, "timeout": 2}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["state"], "down", "{}", r.body);
    let r = app.post("/v1/servers/gone/test", json!({})).await;
    assert_eq!(r.body["ok"], false, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("`gone`"), "{}", r.body);
    let health = app.call(Method::GET, "/health", None, None).await;
    assert_eq!((health.status, health.body["status"].as_str()), (StatusCode::OK, Some("degraded")), "{}", health.body);

    // A restart finds the API's servers in the store and connects them again.
    let (handle, admin) = app.stop_keeping_store().await;
    let mcp = McpSettings { file: Some(dir.path().join("mcp-config.json")), allow_api_stdio: false };
    let app = spawn_app_on(handle, admin, Options { worker: false, mcp, ..Default::default() }).await;
    let list = app.get("/v1/servers").await;
    assert_no_secrets(&list);
    assert_eq!(names(&list, "servers", "name"), ["gone", "remote", "test"]);
    assert_eq!(
        (server(&list, "remote")["state"].as_str(), server(&list, "remote")["source"].as_str()),
        (Some("up"), Some("api"))
    );
    assert_eq!(server(&list, "test")["source"], "file");
    assert_eq!(server(&list, "test")["config"]["env"]["SECRET_TOKEN"], "<redacted>");
    assert_eq!(call(&app, &app.admin, "remote", "echo", json!({"message": "back"})).await.status, StatusCode::OK);

    let changed = json!({"config": {"url": upstream_url, "timeout": 40, "headers": {"X-Api-Key": HEADER_SECRET}}});
    let r = app.call(Method::PUT, "/v1/servers/remote", Some(&app.admin), Some(changed)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["config"]["timeout"], 40);
    assert_no_secrets(&r);
    let r = app.call(Method::DELETE, "/v1/servers/remote", Some(&app.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_error(&app.get("/v1/servers/remote").await, StatusCode::NOT_FOUND, "not_found");
    assert!(!names(&app.get("/v1/tools").await, "tools", "server").contains(&"remote".to_owned()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reconnects_only_the_changed_server() {
    let (app, dir) = app_with_file(Backend::Sqlite, json!({"a": test_entry(30), "b": test_entry(30)}), None).await;
    let (a, b) = (pid(&app, "a").await, pid(&app, "b").await);
    write_config(dir.path(), json!({"a": test_entry(30), "b": test_entry(31), "bad": {"url": "ftp://x"}}));
    let r = app.post("/v1/servers/reload", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((&r.body["changed"], &r.body["unchanged"]), (&json!(["b"]), &json!(["a"])), "{}", r.body);
    assert_eq!(r.body["invalid"][0]["server"], "bad");
    assert_eq!(r.body["invalid"][0]["field"], "url");
    assert_eq!(pid(&app, "a").await, a, "an unchanged server keeps its connection");
    assert_ne!(pid(&app, "b").await, b, "a changed server reconnects");
    let list = app.get("/v1/servers").await;
    assert_eq!(list.body["invalid"][0]["source"], "file", "{}", list.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_file_applies_without_a_restart() {
    let servers = json!({"a": test_entry(30), "b": test_entry(30)});
    let (app, dir) = app_with_file(Backend::Sqlite, servers, Some(Duration::from_millis(100))).await;
    let (a, b) = (pid(&app, "a").await, pid(&app, "b").await);
    write_config(dir.path(), json!({"a": test_entry(30), "b": test_entry(31), "c": test_entry(30)}));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = app.get("/v1/servers").await;
        let known = names(&list, "servers", "name");
        if known.contains(&"c".to_owned()) && server(&list, "b")["config"]["timeout"] == 31 {
            break;
        }
        assert!(Instant::now() < deadline, "the edit was not applied: {}", list.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pid(&app, "a").await, a);
    assert_ne!(pid(&app, "b").await, b);
    assert_eq!(call(&app, &app.admin, "c", "echo", json!({"message": "new"})).await.status, StatusCode::OK);
    app.stop().await;
}

/// A stand-in upstream on loopback: answers every request with `status` and
/// a JSON `body`, except as an MCP server when `mcp` (initialize, tools/list
/// with one tool, `leak`; then `tools/call` gets `status` and `body`).
/// Counts the requests that reach it.
async fn stand_in(status: StatusCode, body: Value, mcp: bool) -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let handler = move |method: axum::http::Method, request: axum::body::Bytes| {
        let (counter, body) = (counter.clone(), body.clone());
        async move {
            use axum::response::IntoResponse;
            counter.fetch_add(1, Ordering::SeqCst);
            let message: Value = serde_json::from_slice(&request).unwrap_or(Value::Null);
            let id = message["id"].clone();
            let answer =
                |result: Value| axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response();
            match (mcp, method.as_str(), message["method"].as_str()) {
                (true, "GET" | "DELETE", _) => StatusCode::METHOD_NOT_ALLOWED.into_response(),
                (true, _, Some("initialize")) => answer(json!({"protocolVersion": "2025-03-26",
                    "capabilities": {"tools": {}}, "serverInfo": {"name": "stand-in", "version": "1"}})),
                (true, _, Some(m)) if m.starts_with("notifications/") => StatusCode::ACCEPTED.into_response(),
                (true, _, Some("tools/list")) => {
                    answer(json!({"tools": [{"name": "leak", "inputSchema": {"type": "object"}}]}))
                }
                (true, _, Some("ping")) => answer(json!({})),
                _ => (status, axum::Json(body)).into_response(),
            }
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

/// Issue 13, defect 3 (first half): an admin could register any private or
/// metadata address as an MCP server, and Orch connected. Now each is refused
/// at registration naming the field and the setting, and a server that got into
/// the store unchecked is refused at connect, before anything reaches it.
async fn mcp_server_urls_have_no_egress_guard(backend: Backend) {
    let (port, hits) = stand_in(StatusCode::OK, json!({}), true).await;
    let handle = support::fresh_store(backend).await;
    let admin = support::make_key(handle.store.as_ref(), &["admin"]).await;
    let now = chrono::Utc::now();
    for (name, url) in
        [("stored-ip", format!("http://127.0.0.1:{port}/mcp")), ("stored-name", format!("http://localhost:{port}/mcp"))]
    {
        let stored = orch_store::StoredServer {
            name: name.into(),
            config: json!({"url": url, "timeout": 2}),
            created_at: now,
            updated_at: now,
        };
        assert!(handle.store.put_server(&stored).await.unwrap());
    }
    let options = Options { worker: false, mcp_allow: vec![], ..Default::default() };
    let app = spawn_app_on(handle, admin, options).await;

    let forms = [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:8080/mcp",
        "http://0x7f000001/mcp",
        "http://2130706433/mcp",
        "http://0177.0.0.1/mcp",
        "http://127.1/mcp",
        "http://localhost./mcp",
        "http://localhost:8080/mcp",
        "http://[::1]/mcp",
        "http://0.0.0.0:8080/mcp",
        "http://[::]/mcp",
        "http://10.0.0.1/mcp",
        "http://172.16.5.4/mcp",
        "http://192.168.1.1/mcp",
        "http://[fc00::1]/mcp",
        "http://[fe80::1]/mcp",
        "http://100.64.0.1/mcp",
        "http://[64:ff9b::a9fe:a9fe]/mcp",
        "https://127.0.0.1/mcp",
    ];
    for (i, url) in forms.iter().enumerate() {
        let name = format!("internal-{i}");
        let path = format!("/v1/servers/{name}");
        let put = |config: Value| app.call(Method::PUT, &path, Some(&app.admin), Some(config));
        for r in [
            app.post("/v1/servers", json!({"name": name, "config": {"url": url}})).await,
            put(json!({"config": {"url": url, "transportType": "sse"}})).await,
            put(json!({"config": {"url": url, "transportType": "streamable-http"}})).await,
        ] {
            assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_server");
            assert_eq!(r.body["error"]["details"], json!({"server": name, "field": "config.url"}), "{url}");
            let message = r.body["error"]["message"].as_str().unwrap();
            assert!(message.contains("`config.url`") && message.contains("ORCH_MCP_ALLOW"), "{url}: {message}");
        }
    }
    let list = app.get("/v1/servers").await;
    assert_eq!(names(&list, "servers", "name"), ["stored-ip", "stored-name"]);

    // In the store unchecked: refused at every connect, the stand-in never reached.
    for name in ["stored-ip", "stored-name"] {
        let s = server(&list, name);
        assert_eq!(s["state"], "down", "{s}");
        let error = s["last_error"].as_str().unwrap();
        assert!(error.contains("egress refused: the host resolves to a loopback address"), "{name}: {error}");
        let r = app.post(&format!("/v1/servers/{name}/test"), json!({})).await;
        assert_eq!(r.body["ok"], false, "{}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains("ORCH_MCP_ALLOW"), "{}", r.body);
    }
    let r = app.call(Method::POST, "/v1/servers/reload", Some(&app.admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a refused server was contacted");
    app.stop().await;
}

const UPSTREAM_MARKER: &str = "sk-live-UPSTREAM-7c41d";

/// Issue 13, defect 3 (second half): what an upstream answered (a JSON body
/// with a secret) came back in `/test`, `last_error` and tool-call failures,
/// which a `tools:call` key reads, along with Rust type names.
async fn the_upstreams_reply_is_echoed(backend: Backend) {
    let leak = json!({"error": "bad token", "token": UPSTREAM_MARKER});
    let (refusing, _) = stand_in(StatusCode::UNAUTHORIZED, leak.clone(), false).await;
    let (failing, _) = stand_in(StatusCode::BAD_GATEWAY, leak.clone(), false).await;
    let (not_mcp, _) = stand_in(StatusCode::OK, leak.clone(), false).await;
    let (calls_fail, _) = stand_in(StatusCode::UNAUTHORIZED, leak.clone(), true).await;
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    let url = |port: u16| format!("http://127.0.0.1:{port}/mcp");
    let servers = [
        ("refusing", json!({"url": url(refusing), "timeout": 5}), "upstream refused: HTTP 401"),
        (
            "refusing-sse",
            json!({"url": url(refusing), "transportType": "sse", "timeout": 5}),
            "upstream refused: HTTP 401",
        ),
        ("failing", json!({"url": url(failing), "timeout": 5}), "upstream failed: HTTP 502"),
        ("not-mcp", json!({"url": url(not_mcp), "timeout": 5}), "not an MCP server"),
    ];
    for (name, config, _) in &servers {
        let r = app.post("/v1/servers", json!({"name": name, "config": config})).await;
        assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::CREATED, Some("down")), "{}", r.body);
    }
    let r =
        app.post("/v1/servers", json!({"name": "calls-fail", "config": {"url": url(calls_fail), "timeout": 5}})).await;
    assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::CREATED, Some("up")), "{}", r.body);

    let caller = support::make_key(app.store.as_ref(), &["tools:call"]).await;
    let clean = |what: &str, reply: &Reply| {
        let text = reply.body.to_string();
        for leaked in [UPSTREAM_MARKER, "bad token", "orch_mcp::", "Watched<", "rmcp::"] {
            assert!(!text.contains(leaked), "{what} shows {leaked:?}: {text}");
        }
    };
    let list = app.call(Method::GET, "/v1/servers", Some(&caller), None).await;
    clean("GET /v1/servers", &list);
    for (name, _, class) in &servers {
        let r = app.call(Method::GET, &format!("/v1/servers/{name}"), Some(&caller), None).await;
        clean(name, &r);
        let error = r.body["last_error"].as_str().unwrap_or_else(|| panic!("{name}: no last_error: {}", r.body));
        assert!(error.contains(class), "{name}: {error}");
        let r = call(&app, &caller, name, "anything", json!({})).await;
        assert!(r.status.is_client_error() || r.status.is_server_error(), "{name}: {}", r.body);
        clean(&format!("a call to {name}"), &r);
        // Admins see the same classes, never the body or type names.
        let r = app.post(&format!("/v1/servers/{name}/test"), json!({})).await;
        assert_eq!(r.body["ok"], false, "{}", r.body);
        clean(&format!("testing {name}"), &r);
        assert!(r.body["error"].as_str().unwrap().contains(class), "{name}: {}", r.body);
    }
    let r = call(&app, &caller, "calls-fail", "leak", json!({})).await;
    assert!(r.status.is_client_error() || r.status.is_server_error(), "{}", r.body);
    clean("a failing tool call", &r);
    let r = app.call(Method::GET, "/v1/servers/calls-fail", Some(&caller), None).await;
    clean("the server after a failing call", &r);
    app.stop().await;
}

on_both_backends!(
    servers_registered_through_the_api_persist,
    mcp_server_urls_have_no_egress_guard,
    the_upstreams_reply_is_echoed,
);
