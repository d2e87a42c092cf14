//! Access control: key expiry and rotation, last use, tool and provider
//! allow-lists (REST, `/mcp`, `/sse`, plans, chat), and the audit log.

mod support;

use std::time::Duration;

use orch_api::servers::McpSettings;
use orch_mcp::model::CallToolRequestParams;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use support::{Backend, Options, Reply, TestApp, spawn_app_with, test_server};

fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
}

/// The app with the test MCP server twice, as `github` and `memory` (both
/// with `echo` autoApproved).
async fn app(worker: bool) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcp-config.json");
    let entry = json!({"command": test_server(), "timeout": 30, "autoApprove": ["echo"]});
    std::fs::write(&file, json!({"mcpServers": {"github": entry, "memory": entry}}).to_string()).unwrap();
    let mcp = McpSettings { file: Some(file), allow_api_stdio: false };
    (spawn_app_with(Backend::Sqlite, Options { worker, mcp, ..Default::default() }).await, dir)
}

/// Creates a key through the API; returns its id and secret.
async fn create_key(app: &TestApp, body: Value) -> (String, String) {
    let r = app.post("/v1/keys", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    (r.body["id"].as_str().unwrap().to_owned(), r.body["secret"].as_str().unwrap().to_owned())
}

async fn call_tool(app: &TestApp, key: &str, server: &str, tool: &str, arguments: Value) -> Reply {
    app.call(Method::POST, &format!("/v1/tools/{server}/{tool}"), Some(key), Some(json!({"arguments": arguments})))
        .await
}

type Client = rmcp::service::RunningService<rmcp::RoleClient, ()>;

async fn http_client(app: &TestApp, path: &str, key: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}{path}", app.base)).auth_header(key);
    ().serve(StreamableHttpClientTransport::with_client(reqwest::Client::new(), config)).await.unwrap()
}

async fn sse_client(app: &TestApp, server: &str, key: &str) -> Client {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
    let url = format!("{}/sse/{server}", app.base);
    let transport =
        orch_mcp::sse::SseClientTransport::connect(reqwest::Client::new(), &url, headers, Duration::from_secs(10))
            .await
            .unwrap();
    ().serve(transport).await.unwrap()
}

async fn tool_names(client: &Client) -> Vec<String> {
    let mut names: Vec<String> =
        client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.into_owned()).collect();
    names.sort();
    names
}

/// A `tools/call`: the text answered, or the protocol error's text.
async fn mcp_call(client: &Client, name: &str, arguments: Value) -> Result<String, String> {
    let Value::Object(arguments) = arguments else { panic!("arguments must be an object") };
    match client.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments)).await {
        Ok(result) => {
            Ok(serde_json::to_value(&result).unwrap()["content"][0]["text"].as_str().unwrap_or_default().to_owned())
        }
        Err(err) => Err(err.to_string()),
    }
}

#[tokio::test]
async fn an_expired_key_gets_401_saying_so_with_the_time() {
    let app = spawn_app_with(Backend::Sqlite, Options { worker: false, ..Default::default() }).await;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (id, secret) =
        create_key(&app, json!({"name": "short", "scopes": ["jobs:read"], "expires_at": soon.to_rfc3339()})).await;
    assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&secret), None).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = app.call(Method::GET, "/v1/jobs", Some(&secret), None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "key_expired");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("expired at"), "{}", r.body);
    assert_eq!(r.body["error"]["details"]["key_id"], id.as_str());
    let at = chrono::DateTime::parse_from_rfc3339(r.body["error"]["details"]["expired_at"].as_str().unwrap()).unwrap();
    assert!((at.timestamp() - soon.timestamp()).abs() <= 1, "{at} vs {soon}");

    // An expiry in the past is refused; an admin can lift the expiry.
    let past =
        app.post("/v1/keys", json!({"name": "x", "scopes": ["jobs:read"], "expires_at": "2020-01-01T00:00:00Z"}));
    let past = past.await;
    assert_error(&past, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(past.body["error"]["details"]["field"], "expires_at");
    let lifted =
        app.call(Method::PATCH, &format!("/v1/keys/{id}"), Some(&app.admin), Some(json!({"expires_at": null}))).await;
    assert_eq!(lifted.status, StatusCode::OK, "{}", lifted.body);
    assert_eq!(lifted.body["expires_at"], Value::Null);
    assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&secret), None).await.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_keys_old_secret_works_during_the_overlap_and_not_after() {
    let app = spawn_app_with(Backend::Sqlite, Options { worker: false, ..Default::default() }).await;
    let (id, old) = create_key(&app, json!({"name": "rotating", "scopes": ["jobs:read"]})).await;
    let r = app
        .call(Method::POST, &format!("/v1/keys/{id}/rotate"), Some(&app.admin), Some(json!({"overlap_seconds": 2})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let new = r.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(r.body["id"], id.as_str());
    assert!(new.starts_with(r.body["prefix"].as_str().unwrap()));
    assert!(r.body["rotated_until"].is_string(), "{}", r.body);
    for secret in [&old, &new] {
        assert_eq!(app.call(Method::GET, "/v1/jobs", Some(secret), None).await.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = app.call(Method::GET, "/v1/jobs", Some(&old), None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "key_rotated");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("rotated"), "{}", r.body);
    assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&new), None).await.status, StatusCode::OK);
    let listed = app.get("/v1/keys").await.body.to_string();
    assert!(!listed.contains(&new) && !listed.contains(&old), "a listing never shows a secret");

    let bad = app
        .call(Method::POST, &format!("/v1/keys/{id}/rotate"), Some(&app.admin), Some(json!({"overlap_seconds": -1})))
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let ghost = app.call(Method::POST, "/v1/keys/key_nope/rotate", Some(&app.admin), None).await;
    assert_error(&ghost, StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn a_used_key_shows_when_it_was_last_used() {
    let app = spawn_app_with(Backend::Sqlite, Options { worker: false, ..Default::default() }).await;
    let (id, secret) = create_key(&app, json!({"name": "used", "scopes": ["jobs:read"]})).await;
    let key = |keys: &Value| keys["keys"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap().clone();
    assert_eq!(key(&app.get("/v1/keys").await.body)["last_used_at"], Value::Null);
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&secret), None).await.status, StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let used = key(&app.get("/v1/keys").await.body)["last_used_at"].clone();
        if let Some(at) = used.as_str() {
            assert!(chrono::DateTime::parse_from_rfc3339(at).unwrap() >= before, "{at}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "last_used_at was not set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_github_tools_cannot_call_memory_tools_on_rest_mcp_sse_or_in_a_plan() {
    let (app, _dir) = app(false).await;
    let body = json!({"name": "github only", "scopes": ["tools:call", "jobs:write"], "tools": ["github.*"]});
    let (_, key) = create_key(&app, body).await;

    // REST.
    let tools = app.call(Method::GET, "/v1/tools", Some(&key), None).await;
    let servers: Vec<&str> =
        tools.body["tools"].as_array().unwrap().iter().map(|t| t["server"].as_str().unwrap()).collect();
    assert!(!servers.is_empty() && servers.iter().all(|s| *s == "github"), "{}", tools.body);
    assert_eq!(call_tool(&app, &key, "github", "echo", json!({"message": "ok"})).await.status, StatusCode::OK);
    let r = call_tool(&app, &key, "memory", "echo", json!({"message": "no"})).await;
    assert_error(&r, StatusCode::FORBIDDEN, "tool_not_allowed");
    assert_eq!(r.body["error"]["details"]["tool"], "memory.echo");
    assert_eq!(r.body["error"]["details"]["allowed_tools"], json!(["github.*"]));
    assert_error(
        &app.call(Method::GET, "/v1/tools/memory/echo", Some(&key), None).await,
        StatusCode::FORBIDDEN,
        "tool_not_allowed",
    );

    // /mcp: only github's tools (and Orch's own) are listed and callable.
    let client = http_client(&app, "/mcp", &key).await;
    let names = tool_names(&client).await;
    assert!(names.contains(&"github__echo".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("memory__")), "{names:?}");
    assert_eq!(mcp_call(&client, "github.echo", json!({"message": "hi"})).await.unwrap(), "hi");
    let err = mcp_call(&client, "memory.echo", json!({"message": "no"})).await.unwrap_err();
    assert!(err.contains("memory.echo"), "{err}");
    client.cancel().await.unwrap();

    // /mcp/memory and /sse/memory: the server is reachable, none of its tools.
    let client = http_client(&app, "/mcp/memory", &key).await;
    assert_eq!(tool_names(&client).await, Vec::<String>::new());
    assert!(mcp_call(&client, "echo", json!({"message": "no"})).await.is_err());
    client.cancel().await.unwrap();
    let client = sse_client(&app, "memory", &key).await;
    assert_eq!(tool_names(&client).await, Vec::<String>::new());
    let err = mcp_call(&client, "echo", json!({"message": "no"})).await.unwrap_err();
    assert!(err.contains("memory.echo"), "{err}");
    client.cancel().await.unwrap();
    let client = sse_client(&app, "github", &key).await;
    assert_eq!(mcp_call(&client, "echo", json!({"message": "sse"})).await.unwrap(), "sse");
    client.cancel().await.unwrap();

    // A plan.
    let plan = |tool: &str| json!({"plan": {"nodes": [{"id": "a", "tool": tool, "args": {"message": "x"}}]}});
    let r = app.call(Method::POST, "/v1/jobs/batch", Some(&key), Some(plan("memory.echo"))).await;
    assert_error(&r, StatusCode::FORBIDDEN, "tool_not_allowed");
    assert_eq!(r.body["error"]["details"]["field"], "plan.nodes[0].tool");
    assert!(r.body["error"]["message"].as_str().unwrap().starts_with("plan.nodes[0].tool: "), "{}", r.body);
    let r = app.call(Method::POST, "/v1/plans", Some(&key), Some(plan("memory.echo"))).await;
    assert_error(&r, StatusCode::FORBIDDEN, "tool_not_allowed");
    let r = app.call(Method::POST, "/v1/jobs/batch", Some(&key), Some(plan("github.echo"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);

    // Bad globs are refused naming the entry.
    let bad =
        app.post("/v1/keys", json!({"name": "x", "scopes": ["tools:call"], "tools": ["github.*", "no dots"]})).await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(bad.body["error"]["details"]["field"], "tools[1]");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_globs_match_any_characters_in_server_and_tool_names() {
    let (app, _dir) = app(false).await;
    let (id, key) = create_key(&app, json!({"name": "readers", "scopes": ["tools:call"], "tools": ["*.ech*"]})).await;
    for server in ["github", "memory"] {
        assert_eq!(call_tool(&app, &key, server, "echo", json!({"message": "ok"})).await.status, StatusCode::OK);
        let r = call_tool(&app, &key, server, "stats", json!({})).await;
        assert_error(&r, StatusCode::FORBIDDEN, "tool_not_allowed");
    }
    // Changing the list applies at once in this process.
    let r = app
        .call(Method::PATCH, &format!("/v1/keys/{id}"), Some(&app.admin), Some(json!({"tools": ["memory.stats"]})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["tools"], json!(["memory.stats"]));
    assert_eq!(call_tool(&app, &key, "memory", "stats", json!({})).await.status, StatusCode::OK);
    let r = call_tool(&app, &key, "github", "echo", json!({"message": "no"})).await;
    assert_error(&r, StatusCode::FORBIDDEN, "tool_not_allowed");
    app.stop().await;
}

#[tokio::test]
async fn a_key_limited_to_some_providers_gets_403_naming_model_for_another() {
    let router = support::router(
        "[echo]\nkind = 'cli'\ncommand = '/bin/echo'\nargs = ['{prompt}']\noutput = { format = 'text' }\n\
         [alpha]\nkind = 'cli'\ncommand = '/bin/echo'\nargs = ['alpha']\noutput = { format = 'text' }\n",
        "default_model = 'auto'\n",
    );
    let app =
        spawn_app_with(Backend::Sqlite, Options { router: Some(router), worker: true, ..Default::default() }).await;
    let (_, key) =
        create_key(&app, json!({"name": "echo only", "scopes": ["jobs:read", "jobs:write"], "providers": ["echo"]}))
            .await;
    for (path, body) in [
        ("/v1/jobs/chat", json!({"prompt": "hi", "model": "alpha"})),
        ("/v1/chat/completions", json!({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]})),
    ] {
        let r = app.call(Method::POST, path, Some(&key), Some(body)).await;
        assert_error(&r, StatusCode::FORBIDDEN, "provider_not_allowed");
        assert_eq!(r.body["error"]["details"]["field"], "model", "{path}");
        assert_eq!(r.body["error"]["details"]["allowed_providers"], json!(["echo"]), "{path}");
    }
    // `auto` walks only the allowed providers.
    let r =
        app.call(Method::POST, "/v1/jobs/chat", Some(&key), Some(json!({"prompt": "hello", "model": "auto"}))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = app.get(&format!("/v1/jobs/{id}/result")).await.body;
    assert_eq!(result["result"]["routed_to"], "echo", "{result}");

    let bad = app.post("/v1/keys", json!({"name": "x", "scopes": ["jobs:write"], "providers": ["echo", "nope"]})).await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(bad.body["error"]["details"]["field"], "providers[1]");
    app.stop().await;
}

/// Every audit record (newest first), as the admin API lists them.
async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/audit?{query}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["records"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_a_tool_call_without_its_arguments() {
    let (app, _dir) = app(true).await;
    let secret_arg = "do-not-log-this-argument-value";
    let (id, key) =
        create_key(&app, json!({"name": "caller", "scopes": ["tools:call", "jobs:write", "jobs:read"]})).await;
    assert_eq!(call_tool(&app, &key, "github", "echo", json!({"message": secret_arg})).await.status, StatusCode::OK);
    let client = http_client(&app, "/mcp", &key).await;
    assert_eq!(mcp_call(&client, "memory.echo", json!({"message": secret_arg})).await.unwrap(), secret_arg);
    client.cancel().await.unwrap();
    let plan = json!({"plan": {"nodes": [{"id": "a", "tool": "github.echo", "args": {"message": secret_arg}}]}});
    let r = app.call(Method::POST, "/v1/jobs/batch", Some(&key), Some(plan)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job_id = r.body["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&job_id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let calls = loop {
        let calls = audit(&app, &format!("action=tool_call&key_id={id}")).await;
        if calls.len() >= 3 || std::time::Instant::now() > deadline {
            break calls;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|c| (c["method"].as_str().unwrap(), c["target"].as_str().unwrap(), c["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("PLAN", "github.echo", "ok"), ("MCP", "memory.echo", "ok"), ("POST", "github.echo", "ok")]);
    assert!(calls.iter().all(|c| c["key_id"] == id.as_str() && c["key_name"] == "caller"), "{calls:?}");
    assert_eq!(calls[0]["job_id"], job_id.as_str());
    // The batch submission itself is a state-changing request, with its job as target.
    let submitted = audit(&app, "action=request&target_kind=job").await;
    assert!(
        submitted.iter().any(|r| r["target"] == job_id.as_str() && r["route"] == "/v1/jobs/batch"),
        "{submitted:?}"
    );
    // Never an argument value, never a secret.
    let all = app.get("/v1/audit?limit=1000").await.body.to_string();
    assert!(!all.contains(secret_arg), "{all}");
    assert!(!all.contains(&key) && !all.contains(&app.admin), "{all}");
    app.stop().await;
}

#[tokio::test]
async fn audit_lists_state_changes_newest_first_in_pages_for_admins_only() {
    let app = spawn_app_with(Backend::Sqlite, Options { worker: false, ..Default::default() }).await;
    let (id, key) = create_key(&app, json!({"name": "reader", "scopes": ["jobs:read"]})).await;
    // Reads are not recorded; refusals are.
    assert_eq!(app.call(Method::GET, "/v1/jobs", Some(&key), None).await.status, StatusCode::OK);
    let denied = app.call(Method::POST, "/v1/jobs/chat", Some(&key), Some(json!({"prompt": "hi"}))).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    for i in 0..4 {
        app.post("/v1/keys", json!({"name": format!("k{i}"), "scopes": ["jobs:read"]})).await;
    }
    app.call(Method::DELETE, &format!("/v1/keys/{id}"), Some(&app.admin), None).await;

    let r = app.get("/v1/audit?limit=2").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let first = r.body["records"].as_array().unwrap().clone();
    assert_eq!(first[0]["method"], "DELETE");
    assert_eq!((first[0]["target_kind"].as_str(), first[0]["target"].as_str()), (Some("key"), Some(id.as_str())));
    assert_eq!(first[0]["route"], "/v1/keys/{id}");
    let cursor = r.body["next_cursor"].as_str().unwrap().to_owned();
    let mut all = first;
    let mut cursor = Some(cursor);
    while let Some(c) = cursor {
        let page = app.get(&format!("/v1/audit?limit=2&cursor={c}")).await.body;
        all.extend(page["records"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(all.len(), 7, "{all:?}");
    assert!(all.windows(2).all(|w| w[0]["id"].as_u64() > w[1]["id"].as_u64()));
    let refused = &all[5];
    assert_eq!((refused["route"].as_str(), refused["outcome"].as_str()), (Some("/v1/jobs/chat"), Some("denied")));
    assert_eq!((refused["key_id"].as_str(), refused["status"].as_u64()), (Some(id.as_str()), Some(403)));
    assert_eq!(audit(&app, "outcome=denied").await.len(), 1);

    let (_, reader) = create_key(&app, json!({"name": "r2", "scopes": ["jobs:read"]})).await;
    assert_error(
        &app.call(Method::GET, "/v1/audit", Some(&reader), None).await,
        StatusCode::FORBIDDEN,
        "missing_scope",
    );
    let bad = app.get("/v1/audit?outcome=maybe").await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(bad.body["error"]["details"]["field"], "outcome");
    let bad = app.get("/v1/audit?cursor=abc").await;
    assert_eq!(bad.body["error"]["details"]["field"], "cursor");
    app.stop().await;
}
