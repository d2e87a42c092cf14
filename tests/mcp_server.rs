//! Orch as an MCP server, driven by real clients against the project's
//! `orch-mcp-test-server` behind the registry: rmcp's streamable-HTTP client on
//! `/mcp` and `/mcp/{server}`, orch-mcp's SSE client on `/sse/{server}`, and
//! `orch mcp` spawned over stdio. Tool lists, upstream calls, Orch's own tools,
//! auth, cancellation forwarded upstream, and `tools/list_changed` forwarding
//! (only to sessions whose key may use the server).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use orch_api::servers::McpSettings;
use orch_mcp::model::{CallToolRequestParams, CallToolResult, ReadResourceRequestParams, ResourceContents};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use support::{Backend, Options, TestApp, make_key, spawn_app_with, test_server};
use tokio::sync::mpsc;

/// Orch's own tools on `/mcp`, sorted.
const OWN_TOOLS: [&str; 8] = [
    "batch_execute",
    "chat",
    "export_session_memory",
    "get_job",
    "get_session",
    "list_providers",
    "list_servers",
    "submit_job",
];
/// The app (with a worker) and an mcp-config.json with the test server as `t`.
async fn app(backend: Backend) -> (TestApp, tempfile::TempDir, PathBuf) {
    app_with(backend, Options::default()).await
}

async fn app_with(backend: Backend, options: Options) -> (TestApp, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcp-config.json");
    let config = json!({"mcpServers": {"t": {"command": test_server(), "timeout": 30}}});
    std::fs::write(&file, config.to_string()).unwrap();
    let mcp = McpSettings { file: Some(file.clone()), allow_api_stdio: false };
    (spawn_app_with(backend, Options { mcp, ..options }).await, dir, file)
}

/// A client that reports each `notifications/tools/list_changed`.
struct Watcher {
    changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Watcher {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }
}

type Client = RunningService<RoleClient, Watcher>;

async fn connect<T, E, A>(transport: T) -> (Client, mpsc::UnboundedReceiver<()>)
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let (changed, rx) = mpsc::unbounded_channel();
    let client = tokio::time::timeout(Duration::from_secs(30), Watcher { changed }.serve(transport))
        .await
        .expect("the MCP handshake finishes within 30s")
        .expect("the MCP handshake succeeds");
    (client, rx)
}

async fn http_client(app: &TestApp, path: &str, key: &str) -> (Client, mpsc::UnboundedReceiver<()>) {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}{path}", app.base)).auth_header(key);
    connect(StreamableHttpClientTransport::with_client(reqwest::Client::new(), config)).await
}

async fn names(client: &Client) -> Vec<String> {
    let mut names: Vec<String> =
        client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.into_owned()).collect();
    names.sort();
    names
}

async fn call(client: &Client, name: &str, arguments: Value) -> CallToolResult {
    let Value::Object(arguments) = arguments else { panic!("arguments must be an object") };
    client.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments)).await.unwrap()
}

fn text(result: &CallToolResult) -> String {
    serde_json::to_value(result).unwrap()["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

/// The JSON a tool answered (Orch's own tools answer structured content).
fn structured(result: &CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "tool failed: {}", text(result));
    result.structured_content.clone().expect("structured content")
}

/// Submits a chat job with `submit_job`, then polls `get_job` until it succeeded.
async fn run_job(client: &Client) -> Value {
    let accepted = structured(&call(client, "submit_job", json!({"kind": "chat", "prompt": "hello over MCP"})).await);
    let id = accepted["id"].as_str().expect("a job id").to_owned();
    assert!(accepted["status_url"].as_str().unwrap().ends_with(&format!("/v1/jobs/{id}")), "{accepted}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = structured(&call(client, "get_job", json!({"id": id})).await);
        if job["status"] == "succeeded" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not succeed within 30s: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const UPSTREAM: [&str; 7] = ["add_tool", "echo", "exit", "fail_n_times", "pid", "sleep", "stats"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_serves_namespaced_tools_and_orchs_own() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let key = make_key(app.store.as_ref(), &["tools:call", "jobs:read", "jobs:write"]).await;
    let (client, _) = http_client(&app, "/mcp", &key).await;

    let mut expected: Vec<String> = UPSTREAM.iter().map(|t| format!("t__{t}")).collect();
    expected.extend(OWN_TOOLS.map(String::from));
    expected.sort();
    assert_eq!(names(&client).await, expected);

    assert_eq!(text(&call(&client, "t__echo", json!({"message": "through /mcp"})).await), "through /mcp");
    let servers = structured(&call(&client, "list_servers", json!({})).await);
    assert_eq!(servers["servers"][0]["name"], "t");
    assert_eq!(servers["servers"][0]["tools"], 7);

    let job = run_job(&client).await;
    assert_eq!(job["kind"], "chat");
    assert!(job["result"].to_string().contains("hello over MCP"), "{job}");

    // `chat` waits for the turn (the test app's provider is /bin/echo) and says where it ran.
    let answer = structured(&call(&client, "chat", json!({"prompt": "echo me over MCP"})).await);
    assert_eq!(answer["text"], "echo me over MCP", "{answer}");
    assert_eq!(answer["routed_to"], "echo");
    let providers = structured(&call(&client, "list_providers", json!({})).await);
    assert_eq!(providers["providers"][0]["name"], "echo", "{providers}");
    assert_eq!(providers["providers"][0]["cli"]["status"], "found", "{providers}");
    // Sessions over MCP: a continued chat, then the session and its note.
    call(&client, "chat", json!({"prompt": "first", "session_id": "mcp-1"})).await;
    let again = structured(&call(&client, "chat", json!({"prompt": "second", "session_id": "mcp-1"})).await);
    assert!(again["text"].as_str().unwrap().contains("User: first"), "{again}");
    let session = structured(&call(&client, "get_session", json!({"id": "mcp-1"})).await);
    assert_eq!(session["message_count"], 4, "{session}");
    let memory = structured(&call(&client, "export_session_memory", json!({"id": "mcp-1"})).await);
    assert!(memory["markdown"].as_str().unwrap().starts_with("---\ntitle: \"Session mcp-1\""), "{memory}");
    let read = |uri: &str| {
        let uri = uri.to_owned();
        let client = &client;
        async move {
            let read = client.read_resource(ReadResourceRequestParams::new(uri)).await.unwrap();
            let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
                panic!("text contents")
            };
            serde_json::from_str::<Value>(text).unwrap()
        }
    };
    assert_eq!(read("session://mcp-1").await["message_count"], 4);
    assert_eq!(read("provider://list").await["providers"][0]["name"], "echo");
    assert_eq!(read("provider://echo").await["cli"]["status"], "found");
    assert!(client.read_resource(ReadResourceRequestParams::new("provider://nope")).await.is_err());
    let missing = call(&client, "get_session", json!({"id": "nope"})).await;
    assert_eq!(missing.is_error, Some(true));

    let bad = call(&client, "chat", json!({"model": "nope", "prompt": "x"})).await;
    assert_eq!(bad.is_error, Some(true));
    let error: Value = serde_json::from_str(&text(&bad)).unwrap();
    assert_eq!(error["error"]["code"], "unknown_model");
    assert_eq!(error["error"]["details"]["configured"], json!(["auto", "echo"]));

    // The job is a resource too.
    let uri = format!("job://{}", job["id"].as_str().unwrap());
    let read = client.read_resource(ReadResourceRequestParams::new(uri)).await.unwrap();
    let ResourceContents::TextResourceContents { text: contents, .. } = &read.contents[0] else {
        panic!("text contents")
    };
    assert_eq!(serde_json::from_str::<Value>(contents).unwrap()["status"], "succeeded");

    // Bad input is a tool error with the API's message, naming the field.
    let bad = call(&client, "submit_job", json!({"kind": "batch", "plan": {"nodes": []}, "extra": 1})).await;
    assert_eq!(bad.is_error, Some(true));
    let error: Value = serde_json::from_str(&text(&bad)).unwrap();
    assert_eq!(error["error"]["code"], "invalid_field", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().starts_with("extra: unknown field"), "{error}");

    // An unknown upstream tool is a protocol error.
    let unknown = CallToolRequestParams::new("t.nope").with_arguments(Default::default());
    assert!(client.call_tool(unknown).await.is_err());
    client.cancel().await.unwrap();
    app.stop().await;
}

/// Issue 13 defect 7 over MCP: `submit_job` refuses the same vault paths and
/// callback headers as the REST API, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obsidian_paths_and_callback_headers_with_dangerous_values_are_refused_by_submit_job() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let (client, _) = http_client(&app, "/mcp", &app.admin).await;
    for (arguments, field) in [
        (json!({"kind": "chat", "prompt": "hi", "obsidian_path": "..\\..\\win.ini"}), "obsidian_path"),
        (json!({"kind": "chat", "prompt": "hi", "obsidian_path": "%2e%2e/%2e%2e/x.md"}), "obsidian_path"),
        (
            json!({"kind": "chat", "prompt": "hi", "callback": {"url": "https://8.8.8.8/x", "headers": {"Transfer-Encoding": "chunked"}}}),
            "callback.headers.Transfer-Encoding",
        ),
    ] {
        let bad = call(&client, "submit_job", arguments.clone()).await;
        assert_eq!(bad.is_error, Some(true), "{arguments}");
        let error: Value = serde_json::from_str(&text(&bad)).unwrap();
        assert_eq!(error["error"]["details"]["field"], field, "{error}");
    }
    client.cancel().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_endpoint_serves_its_tools_unprefixed() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let (client, _) = http_client(&app, "/mcp/t", &app.admin).await;
    assert_eq!(names(&client).await, UPSTREAM);
    assert_eq!(text(&call(&client, "echo", json!({"message": "through /mcp/t"})).await), "through /mcp/t");
    let failed = call(&client, "fail_n_times", json!({"key": "k", "n": 1})).await;
    assert_eq!((failed.is_error, text(&failed)), (Some(true), "failure 1 of 1".to_owned()));
    client.cancel().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_endpoint_serves_one_server() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {}", app.admin)).unwrap());
    let url = format!("{}/sse/t", app.base);
    let transport =
        orch_mcp::sse::SseClientTransport::connect(reqwest::Client::new(), &url, headers, Duration::from_secs(10))
            .await
            .expect("the SSE stream opens with an endpoint event");
    assert_eq!(transport.endpoint().path(), "/sse/t/messages");
    let (client, _) = connect(transport).await;
    assert_eq!(names(&client).await, UPSTREAM);
    assert_eq!(text(&call(&client, "echo", json!({"message": "through SSE"})).await), "through SSE");
    client.cancel().await.unwrap();

    let gone = app.call(Method::POST, "/sse/t/messages?session_id=nope", Some(&app.admin), Some(json!({}))).await;
    assert_eq!((gone.status, gone.body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_session")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_need_a_key_with_tools_call() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}});
    for path in ["/mcp", "/mcp/t", "/sse/t", "/sse/t/messages?session_id=x"] {
        let method = if path == "/sse/t" { Method::GET } else { Method::POST };
        let reply = app.call(method, path, None, Some(initialize.clone())).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(reply.body["error"]["code"], "unauthorized", "{path}");
    }
    let reader = make_key(app.store.as_ref(), &["jobs:read"]).await;
    let reply = app.call(Method::POST, "/mcp", Some(&reader), Some(initialize.clone())).await;
    assert_eq!((reply.status, reply.body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("missing_scope")));

    // A key limited to other servers cannot reach this one.
    let mut limited = orch_api::auth::new_key("limited", &["tools:call".into()]).unwrap();
    limited.key.servers = Some(vec!["other".into()]);
    app.store.create_key(&limited.key, &limited.hash).await.unwrap();
    let reply = app.call(Method::POST, "/mcp/t", Some(&limited.secret), Some(initialize.clone())).await;
    assert_eq!(reply.body["error"]["code"], "server_not_allowed", "{}", reply.body);
    let (client, _) = http_client(&app, "/mcp", &limited.secret).await;
    assert_eq!(names(&client).await, OWN_TOOLS);
    client.cancel().await.unwrap();

    let reply = app.call(Method::POST, "/mcp/ghost", Some(&app.admin), Some(initialize)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hear_when_a_servers_tools_change() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let (aggregate, mut aggregate_changed) = http_client(&app, "/mcp", &app.admin).await;
    let (single, mut single_changed) = http_client(&app, "/mcp/t", &app.admin).await;

    // The test server adds a tool and sends list_changed upstream; the
    // registry relists and every connected client is told.
    assert_eq!(text(&call(&aggregate, "t.add_tool", json!({"name": "extra"})).await), "added extra");
    for changed in [&mut aggregate_changed, &mut single_changed] {
        tokio::time::timeout(Duration::from_secs(10), changed.recv())
            .await
            .expect("notifications/tools/list_changed within 10s");
    }
    assert!(names(&aggregate).await.contains(&"t__extra".to_owned()));
    assert!(names(&single).await.contains(&"extra".to_owned()));
    aggregate.cancel().await.unwrap();
    single.cancel().await.unwrap();
    app.stop().await;
}

/// Whether a `notifications/tools/list_changed` arrives within 10 s.
async fn heard(changed: &mut mpsc::UnboundedReceiver<()>) -> bool {
    tokio::time::timeout(Duration::from_secs(10), changed.recv()).await.is_ok()
}

/// A session only hears of changes in servers its key may use: a key limited
/// to `a` is not told when `b`'s tools change, an unlimited key is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changed_reaches_only_sessions_whose_key_may_use_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcp-config.json");
    let entry = json!({"command": test_server(), "timeout": 30});
    std::fs::write(&file, json!({"mcpServers": {"a": entry, "b": entry}}).to_string()).unwrap();
    let mcp = McpSettings { file: Some(file), allow_api_stdio: false };
    let app = spawn_app_with(Backend::Sqlite, Options { worker: false, mcp, ..Default::default() }).await;
    let mut limited = orch_api::auth::new_key("only a", &["tools:call".into()]).unwrap();
    limited.key.servers = Some(vec!["a".into()]);
    app.store.create_key(&limited.key, &limited.hash).await.unwrap();
    let (only_a, mut only_a_changed) = http_client(&app, "/mcp", &limited.secret).await;
    let (everyone, mut everyone_changed) = http_client(&app, "/mcp", &app.admin).await;

    assert_eq!(text(&call(&everyone, "b.add_tool", json!({"name": "from_b"})).await), "added from_b");
    assert!(heard(&mut everyone_changed).await, "the unlimited session hears of b's change");
    // Sent to both sessions at once: by now the limited one would have it too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(only_a_changed.try_recv().is_err(), "a session limited to `a` was told of `b`'s change");
    assert!(!names(&only_a).await.iter().any(|n| n.starts_with("b__")));

    assert_eq!(text(&call(&only_a, "a.add_tool", json!({"name": "from_a"})).await), "added from_a");
    assert!(heard(&mut only_a_changed).await, "the limited session hears of a's change");
    assert!(heard(&mut everyone_changed).await, "so does the unlimited one");
    assert!(names(&only_a).await.contains(&"a__from_a".to_owned()));
    only_a.cancel().await.unwrap();
    everyone.cancel().await.unwrap();
    app.stop().await;
}

/// `orch mcp` over stdio, beside an app whose worker runs the jobs it submits
/// (both on one Redis, as separate processes would be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orch_mcp_serves_over_stdio() {
    let (app, dir, config) = app(Backend::Redis).await;
    let orch_store::StoreUrl::Redis(store) = &app.handle.url else { unreachable!("a Redis app") };
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orch"));
    command
        .arg("mcp")
        .current_dir(dir.path())
        .env("ORCH_STORE", store)
        .env("ORCH_MCP_CONFIG", &config)
        .env("ORCH_LOG", "warn");
    let (client, _) = connect(TokioChildProcess::new(command).unwrap()).await;

    let listed = names(&client).await;
    assert!(listed.contains(&"t__echo".to_owned()) && listed.contains(&"submit_job".to_owned()), "{listed:?}");
    assert_eq!(text(&call(&client, "t.echo", json!({"message": "through stdio"})).await), "through stdio");
    let job = run_job(&client).await;
    assert_eq!(job["status"], "succeeded");
    client.cancel().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_cancelled_upstream() {
    use orch_mcp::model::{CallToolRequest, ClientRequest};
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let (client, _) = http_client(&app, "/mcp", &app.admin).await;
    let Value::Object(arguments) = json!({"ms": 20_000}) else { unreachable!() };
    let sleep = CallToolRequest::new(CallToolRequestParams::new("t.sleep").with_arguments(arguments));
    let handle = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(sleep),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.cancel(Some("changed my mind".into())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats: Value = serde_json::from_str(&text(&call(&client, "t.stats", json!({})).await)).unwrap();
        if stats["cancelled"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the test server never saw the cancellation: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.cancel().await.unwrap();
    app.stop().await;
}

/// A streamable-HTTP session spoken by hand, to see the answers' HTTP shape.
#[derive(Clone)]
struct RawSession {
    http: reqwest::Client,
    url: String,
    key: String,
    id: String,
}

impl RawSession {
    async fn open(app: &TestApp, path: &str) -> RawSession {
        let url = format!("{}{path}", app.base);
        let mut session = RawSession { http: app.client.clone(), url, key: app.admin.clone(), id: String::new() };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
        let response = session.post(&init).await;
        assert_eq!(response.status(), StatusCode::OK);
        session.id = response.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let ready = session.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert_eq!(ready.status(), StatusCode::ACCEPTED);
        session
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(body);
        if !self.id.is_empty() {
            request = request.header("mcp-session-id", &self.id);
        }
        request.send().await.unwrap()
    }

    /// POSTs a request and returns the content type and the JSON-RPC answer
    /// to it (the body, or the SSE `data` line with its id).
    async fn request(&self, body: &Value) -> (String, Value) {
        let response = self.post(body).await;
        assert_eq!(response.status(), StatusCode::OK, "{body}");
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        let text = response.text().await.unwrap();
        let answer = if kind.starts_with("application/json") {
            serde_json::from_str(&text).unwrap()
        } else {
            text.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .find(|message| message["id"] == body["id"])
                .unwrap_or_else(|| panic!("no answer to {body} in {text}"))
        };
        (kind, answer)
    }

    async fn echo(&self, id: u64, message: &str) -> reqwest::Response {
        self.post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": message}}}))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tool_call_is_answered_as_json_and_the_rest_as_a_stream() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let session = RawSession::open(&app, "/mcp/t").await;

    // A bare call, and one with the progress token rmcp's clients always send.
    for (id, meta) in [(1, None), (2, Some(json!({"progressToken": 7})))] {
        let mut params = json!({"name": "echo", "arguments": {"message": format!("call {id}")}});
        if let Some(meta) = meta {
            params["_meta"] = meta;
        }
        let (kind, answer) =
            session.request(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})).await;
        assert_eq!(kind, "application/json");
        assert_eq!(answer["result"]["content"][0]["text"], format!("call {id}"), "{answer}");
        assert_eq!(answer["id"], id);
    }
    // Other `_meta` (a trace context) and other methods are rmcp's, as an SSE stream.
    let traced = json!({"jsonrpc": "2.0", "id": "t-3", "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "traced"}, "_meta": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}});
    let (kind, answer) = session.request(&traced).await;
    assert_eq!(kind, "text/event-stream");
    assert_eq!(answer["result"]["content"][0]["text"], "traced");
    let (kind, answer) = session.request(&json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"})).await;
    assert_eq!(kind, "text/event-stream");
    assert!(answer["result"]["tools"].as_array().unwrap().iter().any(|t| t["name"] == "echo"));

    // Errors keep their JSON-RPC shape: an unknown tool is invalid params.
    let (_, answer) = session
        .request(
            &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}),
        )
        .await;
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert_eq!(answer["id"], 5);

    // Only a session rmcp knows gets an answer; a made-up one is 404, as the spec says.
    let stranger = RawSession { id: "not-a-session".into(), ..RawSession::open(&app, "/mcp/t").await };
    assert_eq!(stranger.echo(6, "x").await.status(), StatusCode::NOT_FOUND);
    // The key still counts: one without tools:call is refused before anything runs.
    let reader = make_key(app.store.as_ref(), &["jobs:read"]).await;
    let refused = RawSession { key: reader, ..RawSession::open(&app, "/mcp/t").await };
    assert_eq!(refused.echo(7, "x").await.status(), StatusCode::FORBIDDEN);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_use_stay_and_idle_ones_are_closed() {
    let idle = Duration::from_secs(1);
    let (app, _dir, _) =
        app_with(Backend::Sqlite, Options { mcp_session_idle: Some(idle), ..Default::default() }).await;
    let busy = RawSession::open(&app, "/mcp/t").await;
    let listening = RawSession::open(&app, "/mcp/t").await;
    let quiet = RawSession::open(&app, "/mcp/t").await;
    // `listening` holds its GET stream open (for list_changed) and sends nothing else.
    let stream = app
        .client
        .get(&listening.url)
        .bearer_auth(&listening.key)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &listening.id)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);

    // `slow` makes one call that rmcp serves (its `_meta` is more than a
    // progress token), lasting three idle periods, and nothing else.
    let slow = RawSession::open(&app, "/mcp/t").await;
    let traced = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "sleep", "arguments": {"ms": 3_000}, "_meta": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}});
    let slow_call = tokio::spawn(async move { slow.request(&traced).await });

    // `busy` only makes tool calls, which rmcp's session never sees, for three idle periods.
    let until = Instant::now() + idle * 3;
    let mut id = 1;
    while Instant::now() < until {
        assert_eq!(busy.echo(id, "still here").await.status(), StatusCode::OK);
        id += 1;
        tokio::time::sleep(idle / 4).await;
    }
    assert_eq!(busy.echo(id, "still here").await.status(), StatusCode::OK, "a session in use was closed");
    assert_eq!(listening.echo(1, "listening").await.status(), StatusCode::OK, "a listening session was closed");
    assert_eq!(quiet.echo(1, "hello?").await.status(), StatusCode::NOT_FOUND, "an idle session was kept");
    let (kind, answer) = slow_call.await.unwrap();
    assert_eq!(kind, "text/event-stream");
    assert_eq!(answer["result"]["content"][0]["text"], "slept 3000 ms", "{answer}");

    // Once its stream is gone, the listener goes idle too.
    // (Each call would count as use, so one look after more than the idle time.)
    drop(stream);
    tokio::time::sleep(idle * 3).await;
    let status = listening.echo(2, "listening").await.status();
    assert_eq!(status, StatusCode::NOT_FOUND, "a session idle since its stream closed was kept");
    app.stop().await;
}

fn sleep_call(id: impl Into<Value>, ms: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id.into(), "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": ms}}})
}

/// The test server's `stats` (calls in flight besides this one, cancellations seen).
async fn upstream_stats(session: &RawSession) -> Value {
    let (_, answer) = session
        .request(&json!({"jsonrpc": "2.0", "id": "stats", "method": "tools/call", "params": {"name": "stats", "arguments": {}}}))
        .await;
    serde_json::from_str(answer["result"]["content"][0]["text"].as_str().unwrap()).unwrap()
}

/// Polls `stats` until `done` holds, for at most 10 s.
async fn wait_stats(session: &RawSession, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = upstream_stats(session).await;
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_call_is_streamed_and_outlives_a_client_that_hangs_up() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let session = RawSession::open(&app, "/mcp/t").await;
    // Still running after a second: the answer comes as an SSE event instead.
    let started = Instant::now();
    let (kind, answer) = session.request(&sleep_call(1, 1_500)).await;
    assert_eq!(kind, "text/event-stream");
    assert_eq!(answer["result"]["content"][0]["text"], "slept 1500 ms", "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(1_500));

    // A disconnect is no cancellation: the call goes on upstream and ends on its own.
    let response = session.post(&sleep_call(2, 2_500)).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    drop(response);
    let stats = upstream_stats(&session).await;
    assert_eq!((stats["active"].as_u64(), stats["cancelled"].as_u64()), (Some(1), Some(0)), "{stats}");
    let stats = wait_stats(&session, "the abandoned call never ended", |s| s["active"] == 0).await;
    assert_eq!(stats["cancelled"], 0, "the call was cancelled when its client hung up: {stats}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_call_or_closing_its_session_stops_it_upstream() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let session = RawSession::open(&app, "/mcp/t").await;
    let watcher = RawSession::open(&app, "/mcp/t").await;

    // notifications/cancelled names the call by its (string) id; no answer follows.
    let caller = session.clone();
    let pending = tokio::spawn(async move {
        let response = caller.post(&sleep_call("c-1", 20_000)).await;
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        (kind, response.text().await.unwrap())
    });
    wait_stats(&watcher, "the call never started", |s| s["active"] == 1).await;
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c-1", "reason": "test"}});
    assert_eq!(session.post(&cancel).await.status(), StatusCode::ACCEPTED);
    let (kind, body) = tokio::time::timeout(Duration::from_secs(10), pending).await.unwrap().unwrap();
    assert_eq!(kind, "text/event-stream");
    assert!(!body.contains("c-1"), "a cancelled call was answered: {body}");
    wait_stats(&watcher, "the cancellation never reached the server", |s| s["cancelled"] == 1).await;

    // Closing the session (DELETE) stops its calls too.
    let caller = session.clone();
    let pending = tokio::spawn(async move { caller.post(&sleep_call(2, 20_000)).await.text().await });
    wait_stats(&watcher, "the second call never started", |s| s["active"] == 1).await;
    let closed = app
        .client
        .delete(&session.url)
        .bearer_auth(&session.key)
        .header("mcp-session-id", &session.id)
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "DELETE answered {}", closed.status());
    wait_stats(&watcher, "closing the session did not stop its call", |s| s["cancelled"] == 2).await;
    tokio::time::timeout(Duration::from_secs(10), pending).await.unwrap().unwrap().unwrap();
    assert_eq!(session.echo(3, "gone?").await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

/// Every chat front (REST, OpenAI-compatible, MCP `chat` and `submit_job`)
/// against every provider kind, whose CLI is the fake recording its argv and
/// stdin: caller text never stands where a CLI reads an option, and the
/// prompt reaches the CLI intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_that_looks_like_a_flag_stays_a_prompt_on_every_front() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fake = repo.join("providers/tests/fake-cli/fake");
    let captures = repo.join("providers/tests/fixtures/cli-captures");
    let records = tempfile::tempdir().unwrap();
    let table = |name: &str, kind: &str, capture: &str, extra: &str| {
        format!(
            "[{name}]\nkind = '{kind}'\ncommand = '{}'\n{extra}env = {{ FAKE_MODE = 'record', FAKE_CAPTURE = '{capture}', \
             FAKE_CAPTURES = '{}', FAKE_RECORD_DIR = '{}' }}\n",
            fake.display(),
            captures.display(),
            records.path().display()
        )
    };
    let claude = "claude-code-2.1.197/ok.stream.jsonl";
    let providers = [
        table("claude", "claude", claude, ""),
        table("gemini", "gemini", "gemini-cli-0.61.0/ok.stream.jsonl", ""),
        table("codex", "codex", claude, ""),
        table("qwen", "qwen", claude, ""),
        table(
            "mine",
            "cli",
            claude,
            "args = ['ask', '--model={model}', '--', '{prompt}']\noutput = { format = 'text' }\n",
        ),
    ]
    .concat();
    let router = support::router(&providers, "");
    let (app, _dir, _) = app_with(Backend::Sqlite, Options { router: Some(router), ..Default::default() }).await;
    let key = make_key(app.store.as_ref(), &["tools:call", "jobs:read", "jobs:write"]).await;
    let (client, _) = http_client(&app, "/mcp", &key).await;

    let read_records = || -> Vec<(Vec<String>, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(records.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "argv") {
                let argv = std::fs::read_to_string(&path).unwrap();
                let stdin = std::fs::read_to_string(path.with_extension("stdin")).unwrap_or_default();
                out.push((argv.split_terminator('\0').map(str::to_owned).collect(), stdin));
                std::fs::remove_file(&path).unwrap();
            }
        }
        out
    };
    let prompts = ["--yolo", "-y --help", "-m x", "-p", "--help\nsecond line -y"];
    for kind in ["claude", "gemini", "codex", "qwen", "mine"] {
        // Orch's own arguments for this kind, with a prompt no argument contains.
        let r = app.post("/v1/jobs/chat", json!({"prompt": "neutral words", "model": kind})).await;
        app.wait_finished(r.body["id"].as_str().unwrap(), Duration::from_secs(30)).await;
        let own: Vec<String> = read_records().remove(0).0.into_iter().filter(|a| !a.contains("neutral")).collect();
        for prompt in prompts {
            // REST, then OpenAI, then MCP `chat` and `submit_job`; each runs the CLI once.
            let r = app.post("/v1/jobs/chat", json!({"prompt": prompt, "model": kind})).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
            app.wait_finished(r.body["id"].as_str().unwrap(), Duration::from_secs(30)).await;
            let body = json!({"model": kind, "messages": [{"role": "user", "content": prompt}]});
            let _ = app.post("/v1/chat/completions", body).await;
            let _ = call(&client, "chat", json!({"prompt": prompt, "model": kind})).await;
            let accepted = call(&client, "submit_job", json!({"kind": "chat", "prompt": prompt, "model": kind})).await;
            let id = structured(&accepted)["id"].as_str().unwrap().to_owned();
            app.wait_finished(&id, Duration::from_secs(30)).await;
            let seen = read_records();
            assert!(seen.len() >= 4, "{kind} {prompt:?}: each front ran the CLI ({})", seen.len());
            for (argv, stdin) in seen {
                let mut after_double_dash = false;
                let mut in_argv = false;
                for arg in &argv {
                    if after_double_dash {
                        in_argv |= arg.contains(prompt);
                        continue;
                    }
                    after_double_dash = arg == "--";
                    if own.contains(arg) {
                        continue;
                    }
                    if arg.contains(prompt) {
                        let name = arg.split_once('=').map(|(n, _)| n);
                        assert!(
                            matches!(name, Some("--prompt" | "--system-prompt")),
                            "{kind}: caller text {prompt:?} where an option is read: {argv:?}"
                        );
                        in_argv = true;
                    }
                }
                assert!(
                    in_argv || stdin.contains(prompt),
                    "{kind}: the prompt {prompt:?} reaches the CLI intact (argv {argv:?}, stdin {stdin:?})"
                );
            }
        }
        for model in ["--yolo", "-y", "--help", "-m x", "-p"] {
            let named = format!("{kind}/{model}");
            let r = app.post("/v1/jobs/chat", json!({"prompt": "hi", "model": named})).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{named}: {:?}", r.body);
            assert_eq!(r.body["error"]["details"]["field"], "model", "{:?}", r.body);
            let body = json!({"model": named, "messages": [{"role": "user", "content": "hi"}]});
            let r = app.post("/v1/chat/completions", body).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{named}: {:?}", r.body);
            assert_eq!(r.body["error"]["details"]["field"], "model", "{:?}", r.body);
            for (tool, args) in [
                ("chat", json!({"prompt": "hi", "model": named})),
                ("submit_job", json!({"kind": "chat", "prompt": "hi", "model": named})),
            ] {
                let result = call(&client, tool, args).await;
                assert_eq!(result.is_error, Some(true), "{tool} {named}");
                assert!(text(&result).contains("model:"), "{tool}: {}", text(&result));
            }
            assert!(read_records().is_empty(), "{named}: no CLI ran");
        }
    }
}

/// OpenAI's and Anthropic's rule for function names, which MCP clients such
/// as n8n's AI Agent hand the listed tool names to.
fn function_safe(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every tool name `/mcp` and `/mcp/{server}` list is a function name models
/// accept (issue 15 defect 3): `server__tool`, with dots made `_`, and a long
/// name or two names alike once made safe cut and told apart by a hash; each
/// is callable by the listed name, and `server.tool` still works on `/mcp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_names_with_dots() {
    let (app, _dir, _) = app(Backend::Sqlite).await;
    let (aggregate, _) = http_client(&app, "/mcp", &app.admin).await;
    let (single, _) = http_client(&app, "/mcp/t", &app.admin).await;
    let long = format!("very.long.{}", "x".repeat(70));
    let added = ["name.with.dots", "name_with_dots", long.as_str()];
    for name in added {
        assert_eq!(text(&call(&aggregate, "t__add_tool", json!({"name": name})).await), format!("added {name}"));
    }
    // The registry relists after the server's list_changed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while names(&aggregate).await.len() < UPSTREAM.len() + added.len() + OWN_TOOLS.len() {
        assert!(Instant::now() < deadline, "the added tools were not listed: {:?}", names(&aggregate).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (client, prefix) in [(&aggregate, "t__"), (&single, "")] {
        let listed = names(client).await;
        assert!(listed.iter().all(|n| function_safe(n)), "{listed:?}");
        assert!(listed.contains(&format!("{prefix}echo")), "{listed:?}");
        let alike: Vec<&String> =
            listed.iter().filter(|n| n.starts_with(&format!("{prefix}name_with_dots_"))).collect();
        assert_eq!(alike.len(), 2, "{listed:?}");
        assert_eq!(alike[0].len(), format!("{prefix}name_with_dots_").len() + 8, "{listed:?}");
        let cut: Vec<&String> = listed.iter().filter(|n| n.starts_with(&format!("{prefix}very_long_x"))).collect();
        assert_eq!(cut.len(), 1, "{listed:?}");
        assert_eq!(cut[0].len(), 64, "{listed:?}");
        // Each added tool answers its own (upstream) name when called by the listed one.
        let mut answered: Vec<String> = Vec::new();
        for name in alike.iter().chain(&cut) {
            answered.push(text(&call(client, name, json!({})).await));
        }
        answered.sort();
        let mut expected: Vec<String> = added.iter().map(|a| a.to_string()).collect();
        expected.sort();
        assert_eq!(answered, expected, "{prefix}");
        assert_eq!(text(&call(client, &format!("{prefix}echo"), json!({"message": "listed"})).await), "listed");
    }
    assert_eq!(text(&call(&aggregate, "t.echo", json!({"message": "dotted"})).await), "dotted");
    assert_eq!(text(&call(&aggregate, "t.name.with.dots", json!({})).await), "name.with.dots");
    aggregate.cancel().await.unwrap();
    single.cancel().await.unwrap();
    app.stop().await;
}
