//! The MCP gateway over REST, against real MCP servers: the reference
//! `@modelcontextprotocol/server-everything` (stdio and streamable HTTP) and
//! the project's `orch-mcp-test-server`. Tools, schema checks, calls, limited
//! keys, servers registered through the API (kept across a restart on both
//! backends), read-only file servers, reloads, tests, and secrets.

mod support;

use std::path::{Path, PathBuf};
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

on_both_backends!(servers_registered_through_the_api_persist);
