//! The seed documents' routes (`/tools`, `/batch/*`, `/servers`, `/health`)
//! over real HTTP against the project's test MCP server: each answers what the
//! `/v1` route it aliases answers, under the same scopes, and the batch routes
//! add `task_id`.

mod support;

use std::time::{Duration, Instant};

use orch_api::servers::McpSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Options, Reply, TestApp, spawn_app_with, test_server};

const WAIT: Duration = Duration::from_secs(30);

/// The app with the test server as `test`; a worker when `worker`.
async fn app(worker: bool) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcp-config.json");
    let servers = json!({"mcpServers": {"test": {"command": test_server(), "timeout": 30}}});
    std::fs::write(&file, servers.to_string()).unwrap();
    let mcp = McpSettings { file: Some(file), allow_api_stdio: false };
    (spawn_app_with(Backend::Sqlite, Options { worker, mcp, ..Default::default() }).await, dir)
}

async fn key(app: &TestApp, body: Value) -> String {
    let r = app.post("/v1/keys", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["secret"].as_str().unwrap().to_owned()
}

fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
}

fn tool_names(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let tools = reply.body["tools"].as_array().unwrap_or_else(|| panic!("no tools in {}", reply.body));
    tools.iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_tool_routes_list_and_call_tools_as_v1_does() {
    let (app, _dir) = app(false).await;

    let all = tool_names(&app.get("/tools").await);
    assert!(all.contains(&"test.echo".to_owned()), "{all:?}");
    assert_eq!(all, tool_names(&app.get("/v1/tools").await));
    assert_eq!(tool_names(&app.get("/tools/test").await), tool_names(&app.get("/v1/tools?server=test").await));
    assert_eq!(tool_names(&app.get("/tools/test?q=returns%20message").await), ["test.echo"]);
    assert_error(&app.get("/tools/nope").await, StatusCode::NOT_FOUND, "not_found");

    let r = app.post("/tools/test.echo", json!({"arguments": {"message": "hi"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((&r.body["server"], &r.body["tool"]), (&json!("test"), &json!("echo")));
    assert_eq!(r.body["content"][0]["text"], "hi", "{}", r.body);
    let v1 = app.post("/v1/tools/test/echo", json!({"arguments": {"message": "hi"}})).await;
    assert_eq!(r.body["content"], v1.body["content"]);

    let bad = app.post("/tools/test.echo", json!({"arguments": {"message": 7}})).await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_arguments");
    assert_eq!(bad.body["error"]["details"]["violations"][0]["path"], "arguments.message", "{}", bad.body);
    assert_error(&app.post("/tools/test.nope", json!({})).await, StatusCode::NOT_FOUND, "not_found");
    let unnamed = app.post("/tools/echo", json!({})).await;
    assert_error(&unnamed, StatusCode::NOT_FOUND, "not_found");
    assert!(unnamed.body["error"]["message"].as_str().unwrap().contains("{server}.{tool}"), "{}", unnamed.body);

    // The same scopes and server limits as /v1.
    let jobs_only = key(&app, json!({"name": "jobs", "scopes": ["jobs:read", "jobs:write"]})).await;
    for (method, path) in [(Method::GET, "/tools"), (Method::GET, "/tools/test"), (Method::POST, "/tools/test.echo")] {
        let body = (method == Method::POST).then(|| json!({"arguments": {"message": "hi"}}));
        assert_error(&app.call(method, path, Some(&jobs_only), body).await, StatusCode::FORBIDDEN, "missing_scope");
    }
    assert_eq!(app.call(Method::GET, "/tools", None, None).await.status, StatusCode::UNAUTHORIZED);
    let elsewhere = key(&app, json!({"name": "other", "scopes": ["tools:call"], "servers": ["other"]})).await;
    assert!(tool_names(&app.call(Method::GET, "/tools", Some(&elsewhere), None).await).is_empty());
    let call = app.call(Method::POST, "/tools/test.echo", Some(&elsewhere), Some(json!({"arguments": {}}))).await;
    assert_eq!(call.status, StatusCode::FORBIDDEN, "{}", call.body);

    // Audited as the /v1 call is: a tool call naming server.tool.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = app.get("/v1/audit?action=tool_call&target=test.echo").await.body;
        let seen = records["records"].as_array().unwrap().iter().any(|r| {
            r["route"] == "/tools/{name}"
                && r["target"] == "test.echo"
                && r["target_kind"] == "tool"
                && r["outcome"] == "ok"
        });
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "no audit record of POST /tools/test.echo: {records}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_batch_routes_run_follow_and_cancel_a_job_as_v1_does() {
    let (app, _dir) = app(true).await;
    let plan = json!({"plan": {"nodes": [
        {"id": "a", "tool": "test.echo", "args": {"message": "hello"}},
        {"id": "b", "value": {"said": "{{nodes.a.output}}"}}]}});

    let r = app.post("/batch/execute", plan.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let task = r.body["task_id"].as_str().unwrap_or_else(|| panic!("no task_id in {}", r.body)).to_owned();
    assert_eq!(r.body["id"], task.as_str());
    assert_eq!(r.body["status"], "queued");
    assert!(r.headers["location"].to_str().unwrap().ends_with(&format!("/v1/jobs/{task}")), "{:?}", r.headers);

    let status = app.get(&format!("/batch/status/{task}")).await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    assert_eq!(
        (&status.body["task_id"], &status.body["id"], &status.body["kind"]),
        (&json!(task), &json!(task), &json!("batch"))
    );
    app.wait_finished(&task, WAIT).await;
    let result = app.get(&format!("/batch/result/{task}")).await;
    assert_eq!(result.status, StatusCode::OK, "{}", result.body);
    assert_eq!(result.body["task_id"], task.as_str());
    assert_eq!(result.body["status"], "succeeded", "{}", result.body);
    assert_eq!(result.body["result"]["output"]["b"]["said"], "hello", "{}", result.body);
    let mut v1 = app.get(&format!("/v1/jobs/{task}/result")).await.body;
    v1["task_id"] = json!(task);
    assert_eq!(result.body, v1);

    // Idempotency-Key works as on /v1: the same job again, with its task_id.
    let mut replays = Vec::new();
    for _ in 0..2 {
        let r = app
            .client
            .post(format!("{}/batch/execute", app.base))
            .bearer_auth(&app.admin)
            .header("Idempotency-Key", "seed-1")
            .json(&plan)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        replays.push(r.json::<Value>().await.unwrap()["task_id"].clone());
    }
    assert_eq!(replays[0], replays[1]);

    // Cancel: a long job is cancelled, then a second cancel is 409.
    let r = app.post("/batch/execute", json!({"plan": {"nodes": [{"id": "s", "sleep": {"ms": 20000}}]}})).await;
    let long = r.body["task_id"].as_str().unwrap().to_owned();
    let early = app.get(&format!("/batch/result/{long}")).await;
    assert_error(&early, StatusCode::CONFLICT, "job_not_finished");
    let cancel = app.call(Method::DELETE, &format!("/batch/cancel/{long}"), Some(&app.admin), None).await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.body);
    assert_eq!(cancel.body["task_id"], long.as_str());
    let job = app.wait_finished(&long, WAIT).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let again = app.call(Method::DELETE, &format!("/batch/cancel/{long}"), Some(&app.admin), None).await;
    assert_error(&again, StatusCode::CONFLICT, "job_finished");

    // The same checks and scopes as /v1.
    let bad = app.post("/batch/execute", json!({"plan": {"nodes": [{"id": "a", "tool": "test.nope"}]}})).await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_plan");
    let reader = key(&app, json!({"name": "reader", "scopes": ["jobs:read"]})).await;
    let denied = app.call(Method::POST, "/batch/execute", Some(&reader), Some(plan)).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "missing_scope");
    let denied = app.call(Method::DELETE, &format!("/batch/cancel/{task}"), Some(&reader), None).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "missing_scope");
    // Another key's job is unknown to it, as on /v1.
    let other = key(&app, json!({"name": "other", "scopes": ["jobs:read"]})).await;
    let hidden = app.call(Method::GET, &format!("/batch/status/{task}"), Some(&other), None).await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.get("/batch/status/not-a-job").await, StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_server_routes_and_health_answer_as_v1_does() {
    let (app, _dir) = app(false).await;
    let servers = app.get("/servers").await;
    assert_eq!(servers.status, StatusCode::OK, "{}", servers.body);
    let v1 = app.get("/v1/servers").await.body;
    let names = |body: &Value| -> Vec<Value> {
        body["servers"].as_array().unwrap().iter().map(|s| s["name"].clone()).collect()
    };
    assert_eq!(names(&servers.body), vec![json!("test")]);
    assert_eq!(names(&servers.body), names(&v1));

    let reload = app.post("/servers/reload", json!({})).await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.body);
    assert_eq!(reload.body["unchanged"], json!(["test"]), "{}", reload.body);
    let caller = key(&app, json!({"name": "caller", "scopes": ["tools:call"]})).await;
    assert_eq!(app.call(Method::GET, "/servers", Some(&caller), None).await.status, StatusCode::OK);
    let denied = app.call(Method::POST, "/servers/reload", Some(&caller), None).await;
    assert_error(&denied, StatusCode::FORBIDDEN, "missing_scope");

    let health = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_routes_are_documented_under_their_own_tag() {
    let doc: Value = serde_json::from_str(&orch_api::openapi_json()).unwrap();
    let tags: Vec<&str> = doc["tags"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(tags.contains(&"seed"), "{tags:?}");
    for (path, method) in [
        ("/tools", "get"),
        ("/tools/{server}", "get"),
        ("/tools/{server}.{tool}", "post"),
        ("/batch/execute", "post"),
        ("/batch/status/{id}", "get"),
        ("/batch/result/{id}", "get"),
        ("/batch/cancel/{id}", "delete"),
        ("/servers", "get"),
        ("/servers/reload", "post"),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["tags"], json!(["seed"]), "{method} {path}: {operation}");
    }
    let accepted = &doc["paths"]["/batch/execute"]["post"]["responses"]["202"]["content"]["application/json"]["schema"];
    assert_eq!(accepted["$ref"], "#/components/schemas/TaskAccepted", "{accepted}");
}
