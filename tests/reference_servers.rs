//! The reference MCP servers together behind Orch: `server-everything`,
//! `server-memory` and `server-filesystem` (npm, pinned in mcp/tests/servers)
//! from one mcp-config.json. Discovery and namespacing across them, calls
//! through REST, `/mcp` and `/mcp/{server}` (rmcp as the client), schema
//! violations stopped before the server, resources and prompts forwarded, and
//! the official Python `mcp` client on every endpoint.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use orch_api::servers::McpSettings;
use orch_mcp::model::{
    CallToolRequestParams, CallToolResult, ErrorCode, GetPromptRequestParams, GetPromptResult,
    ReadResourceRequestParams, ReadResourceResult, ResourceContents,
};
use orch_testkit::everything::{entry, node, reference_entry};
use reqwest::{Method, StatusCode};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use support::{Backend, Options, Reply, TestApp, spawn_app_with};

/// The app with everything, memory (its graph in the temp dir) and
/// filesystem (allowed to write only in `<temp>/allowed`).
struct Setup {
    app: TestApp,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn allowed(&self) -> PathBuf {
        self.dir.path().join("allowed")
    }
}

async fn setup(backend: Backend) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let servers = json!({
        "everything": {"command": node(), "args": [entry(), "stdio"], "timeout": 30},
        "memory": {
            "command": node(),
            "args": [reference_entry("memory")],
            "env": {"MEMORY_FILE_PATH": dir.path().join("memory.jsonl")},
            "timeout": 30
        },
        "filesystem": {"command": node(), "args": [reference_entry("filesystem"), allowed], "timeout": 30},
    });
    let config = dir.path().join("mcp-config.json");
    std::fs::write(&config, json!({"mcpServers": servers}).to_string()).unwrap();
    let mcp = McpSettings { file: Some(config.clone()), allow_api_stdio: false };
    let app = spawn_app_with(backend, Options { worker: false, mcp, ..Default::default() }).await;
    Setup { app, dir, config }
}

async fn rest_call(app: &TestApp, server: &str, tool: &str, arguments: Value) -> Reply {
    let path = format!("/v1/tools/{server}/{tool}");
    app.call(Method::POST, &path, Some(&app.admin), Some(json!({"arguments": arguments}))).await
}

fn ok(reply: Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

/// The entity names in memory's `read_graph` answer (its structured content).
fn entity_names(graph: &Value) -> Vec<String> {
    let entities = graph["entities"].as_array().unwrap_or_else(|| panic!("no entities in {graph}"));
    let mut names: Vec<String> = entities.iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

const MEMORY_TOOLS: [&str; 9] = [
    "add_observations",
    "create_entities",
    "create_relations",
    "delete_entities",
    "delete_observations",
    "delete_relations",
    "open_nodes",
    "read_graph",
    "search_nodes",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_reference_servers_are_discovered_namespaced_and_called_over_rest() {
    let setup = setup(Backend::Sqlite).await;
    let app = &setup.app;

    let servers = ok(app.get("/v1/servers").await);
    for name in ["everything", "filesystem", "memory"] {
        let server = servers["servers"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap();
        assert_eq!(server["state"], "up", "{server}");
        assert!(server["tools"].as_u64().unwrap() > 0, "{server}");
    }
    // Every tool is `<server>.<tool>`, each server's under its own name.
    let tools = ok(app.get("/v1/tools").await);
    for tool in tools["tools"].as_array().unwrap() {
        assert_eq!(tool["name"], format!("{}.{}", tool["server"].as_str().unwrap(), tool["tool"].as_str().unwrap()));
    }
    let names: Vec<&str> = tools["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for name in ["everything.echo", "memory.create_entities", "filesystem.write_file", "filesystem.read_text_file"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let memory = ok(app.get("/v1/tools?server=memory").await);
    let mut of_memory: Vec<&str> =
        memory["tools"].as_array().unwrap().iter().map(|t| t["tool"].as_str().unwrap()).collect();
    of_memory.sort();
    assert_eq!(of_memory, MEMORY_TOOLS);

    // memory: what one call creates, the next reads.
    let entities = json!({"entities": [
        {"name": "Orch", "entityType": "service", "observations": ["is an MCP gateway"]},
        {"name": "Redis", "entityType": "store", "observations": []},
    ]});
    ok(rest_call(app, "memory", "create_entities", entities).await);
    let graph = ok(rest_call(app, "memory", "read_graph", json!({})).await);
    assert_eq!(entity_names(&graph["structured_content"]), ["Orch", "Redis"]);

    // A schema violation is a 422 naming each field, and never reaches memory.
    let bad = rest_call(app, "memory", "create_entities", json!({"entities": [{"name": "Ghost"}]})).await;
    assert_eq!(
        (bad.status, bad.body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_arguments"))
    );
    let violations = bad.body["error"]["details"]["violations"].as_array().unwrap();
    assert_eq!(violations.len(), 2, "{}", bad.body);
    assert!(violations.iter().all(|v| v["path"] == "arguments.entities[0]"), "{}", bad.body);
    let messages = violations.iter().map(|v| v["message"].as_str().unwrap()).collect::<Vec<_>>().join(" ");
    assert!(messages.contains("\"entityType\"") && messages.contains("\"observations\""), "{}", bad.body);
    let graph = ok(rest_call(app, "memory", "read_graph", json!({})).await);
    assert_eq!(entity_names(&graph["structured_content"]), ["Orch", "Redis"]);

    // filesystem: write then read inside its allowed directory.
    let note = setup.allowed().join("note.txt");
    let wrote =
        ok(rest_call(app, "filesystem", "write_file", json!({"path": note, "content": "written via REST"})).await);
    assert!(wrote["content"][0]["text"].as_str().unwrap().starts_with("Successfully wrote"), "{wrote}");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "written via REST");
    let read = ok(rest_call(app, "filesystem", "read_text_file", json!({"path": note})).await);
    assert_eq!(read["content"][0]["text"], "written via REST");

    // Outside its roots: the server refuses, and the caller reads why.
    let outside = setup.dir.path().join("outside.txt");
    std::fs::write(&outside, "secret").unwrap();
    let refused = rest_call(app, "filesystem", "read_text_file", json!({"path": outside})).await;
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (StatusCode::BAD_GATEWAY, Some("tool_error")));
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("tool `read_text_file` on MCP server `filesystem` reported an error: ")
            && message.contains("Access denied - path outside allowed directories"),
        "{message}"
    );
    assert!(!refused.body.to_string().contains("secret\""), "{}", refused.body);

    // A missing argument is caught by Orch: no file appears.
    let bad = rest_call(app, "filesystem", "write_file", json!({"path": setup.allowed().join("empty.txt")})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.body["error"]["details"]["violations"][0]["path"], "arguments", "{}", bad.body);
    assert!(!setup.allowed().join("empty.txt").exists());
    setup.app.stop().await;
}

type Client = RunningService<RoleClient, ()>;

async fn client(app: &TestApp, path: &str, key: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}{path}", app.base)).auth_header(key);
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    tokio::time::timeout(Duration::from_secs(30), ().serve(transport))
        .await
        .expect("the MCP handshake finishes within 30s")
        .expect("the MCP handshake succeeds")
}

async fn call(client: &Client, name: &str, arguments: Value) -> CallToolResult {
    let Value::Object(arguments) = arguments else { panic!("arguments must be an object") };
    client.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments)).await.unwrap()
}

fn text(result: &CallToolResult) -> String {
    serde_json::to_value(result).unwrap()["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

fn ok_structured(result: &CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "tool failed: {}", text(result));
    result.structured_content.clone().expect("structured content")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_servers_over_mcp_and_mcp_server() {
    let setup = setup(Backend::Sqlite).await;
    let app = &setup.app;
    let aggregate = client(app, "/mcp", &app.admin).await;
    let memory = client(app, "/mcp/memory", &app.admin).await;
    let filesystem = client(app, "/mcp/filesystem", &app.admin).await;

    let listed: Vec<String> = aggregate.list_all_tools().await.unwrap().into_iter().map(|t| t.name.into()).collect();
    for name in ["everything__echo", "memory__read_graph", "filesystem__list_allowed_directories", "submit_job"] {
        assert!(listed.contains(&name.to_owned()), "{name} missing from {listed:?}");
    }
    let mut of_memory: Vec<String> =
        memory.list_all_tools().await.unwrap().into_iter().map(|t| t.name.into()).collect();
    of_memory.sort();
    assert_eq!(of_memory, MEMORY_TOOLS);

    // One upstream behind both endpoints: created through /mcp, read through /mcp/memory.
    let entities = json!({"entities": [{"name": "Cline", "entityType": "client", "observations": ["speaks SSE"]}]});
    ok_structured(&call(&aggregate, "memory.create_entities", entities).await);
    let graph = ok_structured(&call(&memory, "read_graph", json!({})).await);
    assert_eq!(entity_names(&graph), ["Cline"]);

    // Written through /mcp/filesystem, read back through /mcp.
    let note = setup.allowed().join("mcp.txt");
    ok_structured(&call(&filesystem, "write_file", json!({"path": note, "content": "over MCP"})).await);
    let read = call(&aggregate, "filesystem.read_text_file", json!({"path": note})).await;
    assert_eq!(ok_structured(&read)["content"], "over MCP");

    // Outside the roots: a tool error the model can read, on both endpoints.
    for (client, name) in [(&filesystem, "read_text_file"), (&aggregate, "filesystem.read_text_file")] {
        let refused = call(client, name, json!({"path": "/etc/hostname"})).await;
        assert_eq!(refused.is_error, Some(true), "{name}");
        assert!(text(&refused).contains("Access denied - path outside allowed directories"), "{}", text(&refused));
    }
    for client in [aggregate, memory, filesystem] {
        client.cancel().await.unwrap();
    }
    setup.app.stop().await;
}

fn only_text(result: &ReadResourceResult) -> (&str, &str) {
    assert_eq!(result.contents.len(), 1, "{result:?}");
    match &result.contents[0] {
        ResourceContents::TextResourceContents { uri, text, .. } => (uri, text),
        other => panic!("text contents expected, got {other:?}"),
    }
}

async fn read(client: &Client, uri: &str) -> Result<ReadResourceResult, rmcp::ServiceError> {
    client.read_resource(ReadResourceRequestParams::new(uri)).await
}

fn error_code(error: rmcp::ServiceError) -> (ErrorCode, String) {
    match error {
        rmcp::ServiceError::McpError(error) => (error.code, error.message.into_owned()),
        other => panic!("an MCP error expected, got {other}"),
    }
}

fn prompt_text(prompt: &GetPromptResult) -> &str {
    let text = prompt.messages.first().and_then(|m| m.content.as_text());
    &text.unwrap_or_else(|| panic!("a text message expected: {prompt:?}")).text
}

const ARCHITECTURE: &str = "demo://resource/static/document/architecture.md";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_prompts_are_forwarded() {
    let setup = setup(Backend::Sqlite).await;
    let app = &setup.app;
    let everything = client(app, "/mcp/everything", &app.admin).await;

    // One server's endpoint: its own URIs and names.
    let resources = everything.list_all_resources().await.unwrap();
    assert!(resources.iter().any(|r| r.uri == ARCHITECTURE), "{resources:?}");
    let architecture = read(&everything, ARCHITECTURE).await.unwrap();
    let (uri, text) = only_text(&architecture);
    assert_eq!(uri, ARCHITECTURE);
    assert!(text.contains("Architecture"), "{text}");
    let templates = everything.list_all_resource_templates().await.unwrap();
    let mut uri_templates: Vec<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    uri_templates.sort();
    assert_eq!(
        uri_templates,
        ["demo://resource/dynamic/blob/{resourceId}", "demo://resource/dynamic/text/{resourceId}"]
    );
    // A URI only a template matches is read upstream too.
    let dynamic = read(&everything, "demo://resource/dynamic/text/7").await.unwrap();
    assert!(only_text(&dynamic).1.contains('7'), "{dynamic:?}");
    // The server's own error, with its code, naming the server.
    let (code, message) = error_code(read(&everything, "demo://resource/dynamic/text/0").await.unwrap_err());
    assert!(message.starts_with("MCP server `everything` refused `resources/read`: "), "{code:?} {message}");
    let (code, message) = error_code(read(&everything, "demo://nope").await.unwrap_err());
    assert_eq!(code, ErrorCode::INVALID_PARAMS, "the server's own code: {message}");
    assert!(message.ends_with("Resource demo://nope not found"), "{message}");

    let prompts = everything.list_all_prompts().await.unwrap();
    let names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"simple-prompt") && names.contains(&"args-prompt"), "{names:?}");
    let Value::Object(arguments) = json!({"city": "Lisbon", "state": "PT"}) else { unreachable!() };
    let prompt =
        everything.get_prompt(GetPromptRequestParams::new("args-prompt").with_arguments(arguments)).await.unwrap();
    assert_eq!(prompt_text(&prompt), "What's weather in Lisbon, PT?");
    // A required argument missing: the server says so.
    let (code, message) =
        error_code(everything.get_prompt(GetPromptRequestParams::new("args-prompt")).await.unwrap_err());
    assert_eq!(code, ErrorCode::INVALID_PARAMS, "{message}");
    let (code, _) = error_code(everything.get_prompt(GetPromptRequestParams::new("nope")).await.unwrap_err());
    assert_eq!(code, ErrorCode::INVALID_PARAMS);

    // memory's graph as a resource, read on its own endpoint.
    let memory = client(app, "/mcp/memory", &app.admin).await;
    ok_structured(
        &call(
            &memory,
            "create_entities",
            json!({"entities": [{"name": "n8n", "entityType": "app", "observations": []}]}),
        )
        .await,
    );
    let graph = read(&memory, "memory://knowledge-graph").await.unwrap();
    assert!(only_text(&graph).1.contains("n8n"), "{graph:?}");
    assert!(memory.list_all_prompts().await.unwrap().is_empty());

    // /mcp: every server's, namespaced `<server>+<uri>` and `<server>.<prompt>`.
    let aggregate = client(app, "/mcp", &app.admin).await;
    let resources = aggregate.list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    let namespaced = format!("everything+{ARCHITECTURE}");
    assert!(uris.contains(&namespaced.as_str()) && uris.contains(&"memory+memory://knowledge-graph"), "{uris:?}");
    let architecture = read(&aggregate, &namespaced).await.unwrap();
    assert_eq!(only_text(&architecture).0, namespaced);
    let templates = aggregate.list_all_resource_templates().await.unwrap();
    let uri_templates: Vec<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    for template in ["job://{id}", "session://{id}", "everything+demo://resource/dynamic/text/{resourceId}"] {
        assert!(uri_templates.contains(&template), "{template} missing from {uri_templates:?}");
    }
    let graph = read(&aggregate, "memory+memory://knowledge-graph").await.unwrap();
    assert_eq!(only_text(&graph).0, "memory+memory://knowledge-graph");
    let (code, message) = error_code(read(&aggregate, ARCHITECTURE).await.unwrap_err());
    assert_eq!(code, ErrorCode::RESOURCE_NOT_FOUND);
    assert!(message.contains("`<server>+<uri>`"), "{message}");
    let prompts = aggregate.list_all_prompts().await.unwrap();
    assert!(prompts.iter().any(|p| p.name == "everything.simple-prompt"), "{prompts:?}");
    let prompt = aggregate.get_prompt(GetPromptRequestParams::new("everything.simple-prompt")).await.unwrap();
    assert_eq!(prompt_text(&prompt), "This is a simple prompt without arguments.");

    // A key limited to memory sees and reads only memory's.
    let mut limited = orch_api::auth::new_key("memory only", &["tools:call".into()]).unwrap();
    limited.key.servers = Some(vec!["memory".into()]);
    app.store.create_key(&limited.key, &limited.hash).await.unwrap();
    let narrow = client(app, "/mcp", &limited.secret).await;
    let uris: Vec<String> = narrow.list_all_resources().await.unwrap().into_iter().map(|r| r.uri.clone()).collect();
    assert_eq!(uris, ["memory+memory://knowledge-graph"]);
    assert!(narrow.list_all_prompts().await.unwrap().is_empty());
    let (code, message) = error_code(read(&narrow, &namespaced).await.unwrap_err());
    assert_eq!(code, ErrorCode::INVALID_PARAMS);
    assert!(message.contains("may use only the MCP servers [\"memory\"]"), "{message}");
    let refused = narrow.get_prompt(GetPromptRequestParams::new("everything.simple-prompt")).await.unwrap_err();
    assert_eq!(error_code(refused).0, ErrorCode::INVALID_PARAMS);

    for client in [everything, memory, aggregate, narrow] {
        client.cancel().await.unwrap();
    }
    setup.app.stop().await;
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The official Python SDK (`mcp` on PyPI, tests/python/mcp_client.py) on
/// `/mcp`, `/mcp/everything`, `/sse/everything` and `orch mcp`. Redis, so the
/// `orch mcp` child shares the app's store as a separate process would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_mcp_sdk_works_against_every_endpoint() {
    let python = repo().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/test` once, or python3 -m venv target/pyenv && target/pyenv/bin/pip install -r tests/python/requirements.txt",
        python.display()
    );
    let setup = setup(Backend::Redis).await;
    let app = &setup.app;
    let orch_store::StoreUrl::Redis(store) = &app.handle.url else { unreachable!("a Redis app") };
    let key = support::make_key(app.store.as_ref(), &["tools:call"]).await;
    let out = tokio::process::Command::new(python)
        .arg(repo().join("tests/python/mcp_client.py"))
        .current_dir(setup.dir.path())
        .env("ORCH_BASE_URL", &app.base)
        .env("ORCH_API_KEY", &key)
        .env("ORCH_BIN", env!("CARGO_BIN_EXE_orch"))
        .env("ORCH_STORE", store)
        .env("ORCH_MCP_CONFIG", &setup.config)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("the Python client finishes").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    for endpoint in ["mcp", "mcp_server", "sse", "stdio"] {
        let seen = &report[endpoint];
        assert_eq!(seen["server"], "orch", "{endpoint}: {seen}");
        assert_eq!(seen["echo_is_error"], false, "{endpoint}: {seen}");
        assert_eq!(seen["echo"], json!(["Echo: from python"]), "{endpoint}: {seen}");
        assert!(seen["protocol"].as_str().is_some_and(|p| p.starts_with("20")), "{endpoint}: {seen}");
    }
    for endpoint in ["mcp", "stdio"] {
        let tools = report[endpoint]["tools"].as_array().unwrap();
        for name in ["everything__echo", "memory__read_graph", "filesystem__write_file", "submit_job"] {
            assert!(tools.contains(&json!(name)), "{endpoint} lacks {name}: {tools:?}");
        }
    }
    for endpoint in ["mcp_server", "sse"] {
        let tools = report[endpoint]["tools"].as_array().unwrap();
        assert!(tools.contains(&json!("echo")) && !tools.contains(&json!("submit_job")), "{endpoint}: {tools:?}");
    }
    let refused = &report["no_key"];
    // The SDK probes `server/discover` first, then tries `initialize`: both refused.
    let statuses = refused["statuses"].as_array().unwrap();
    assert!(!statuses.is_empty() && statuses.iter().all(|s| s == 401), "{refused}");
    assert!(refused["error"].as_str().is_some_and(|e| e.starts_with("MCPError: ")), "{refused}");
    setup.app.stop().await;
}
