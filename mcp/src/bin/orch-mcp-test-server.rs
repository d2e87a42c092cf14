//! A small stdio MCP server for tests, with behaviours the reference servers
//! lack: `sleep` (counts cancellations), `fail_n_times`, `stats` (concurrency
//! seen by the server), `add_tool` (sends `tools/list_changed`), `pid`, `exit`.
//! It lists tools two per page, so clients must follow `nextCursor`.
//!
//! Flags: `--persona github` serves a GitHub stand-in instead (`list_issues`
//! over fixed issues of a few repos, after `--latency-ms`, default 300), and
//! `--persona notion` a Notion stand-in (`create_page`, and `list_pages` to
//! see what it received); both keep `stats`. `--journal PATH` appends one
//! JSON line per call (`{"tool", "args"}`), which outlives the process.
//! More flags: `--tools N` adds N echo tools (`tool_0`, ...; registry-size
//! benchmarks); `--http ADDR` serves streamable HTTP at `http://ADDR/mcp`
//! instead of stdio, one shared state for every session, with the tool
//! `expire_session`: later requests of the calling session are answered
//! `--expired-status` (404 as the spec says, or 400 as some servers do).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, ServiceExt};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

const PAGE_SIZE: usize = 2;

#[derive(Default)]
struct State {
    active: u64,
    max_active: u64,
    cancelled: u64,
    calls: u64,
    failures: HashMap<String, u64>,
    added: Vec<String>,
    /// Pages received by the Notion stand-in.
    pages: Vec<Value>,
}

#[derive(Clone, Copy, Default, PartialEq)]
enum Persona {
    #[default]
    Test,
    Github,
    Notion,
}

#[derive(Clone, Default)]
struct TestServer {
    state: Arc<Mutex<State>>,
    persona: Persona,
    journal: Option<PathBuf>,
    latency: Duration,
    /// `--tools N`.
    extra_tools: usize,
    /// HTTP mode: ids of sessions `expire_session` ended.
    expired: Option<Arc<Mutex<HashSet<String>>>>,
}

/// Issues of the GitHub stand-in, in the shape GitHub's REST API gives them.
const ISSUES: &str = include_str!("../../tests/fixtures/github-issues.json");

fn schema(properties: Value, required: &[&str]) -> Arc<serde_json::Map<String, Value>> {
    let Value::Object(map) = json!({"type": "object", "properties": properties, "required": required}) else {
        unreachable!("a json! object literal is an object")
    };
    Arc::new(map)
}

fn persona_tools(persona: Persona, added: &[String], extra: usize, http: bool) -> Vec<Tool> {
    let stats = Tool::new("stats", "Calls in flight, most at once, cancellations seen", schema(json!({}), &[]));
    match persona {
        Persona::Test => tools(added, extra, http),
        Persona::Github => vec![
            Tool::new(
                "list_issues",
                "List issues in a GitHub repository, newest first; `since` keeps those updated at or after an ISO 8601 time",
                schema(
                    json!({
                        "owner": {"type": "string", "description": "Repository owner"},
                        "repo": {"type": "string", "description": "Repository name"},
                        "state": {"type": "string", "enum": ["open", "closed", "all"], "description": "Default: open"},
                        "since": {"type": "string", "description": "ISO 8601 timestamp"}
                    }),
                    &["owner", "repo"],
                ),
            ),
            stats,
        ],
        Persona::Notion => vec![
            Tool::new(
                "create_page",
                "Create a Notion page under `parent` with a title and Markdown content",
                schema(
                    json!({
                        "parent": {"type": "string", "description": "Parent page id"},
                        "title": {"type": "string"},
                        "markdown": {"type": "string", "description": "Page content as Markdown"}
                    }),
                    &["parent", "title", "markdown"],
                ),
            ),
            Tool::new("list_pages", "The pages created so far", schema(json!({}), &[])),
            stats,
        ],
    }
}

fn tools(added: &[String], extra: usize, http: bool) -> Vec<Tool> {
    let mut tools = vec![
        Tool::new(
            "echo",
            "Returns `message`",
            schema(
                json!({"message": {"type": "string"}, "repeat": {"type": "integer", "minimum": 1, "description": "Times over (default 1)"}}),
                &["message"],
            ),
        ),
        Tool::new(
            "sleep",
            "Waits `ms` milliseconds; counts the calls cancelled meanwhile",
            schema(json!({"ms": {"type": "integer"}}), &["ms"]),
        ),
        Tool::new(
            "fail_n_times",
            "Fails the first `n` calls with the same `key`, then succeeds",
            schema(json!({"key": {"type": "string"}, "n": {"type": "integer"}}), &["key", "n"]),
        ),
        Tool::new("stats", "Calls in flight, most at once, cancellations seen", schema(json!({}), &[])),
        Tool::new(
            "add_tool",
            "Adds an echo tool called `name` and notifies tools/list_changed",
            schema(json!({"name": {"type": "string"}}), &["name"]),
        ),
        Tool::new("pid", "This server's process id", schema(json!({}), &[])),
        Tool::new("exit", "Exits the process with `code`", schema(json!({"code": {"type": "integer"}}), &[])),
    ];
    for name in added {
        tools.push(Tool::new(name.clone(), "Added by add_tool; returns `message`", schema(json!({}), &[])));
    }
    if http {
        tools.push(Tool::new(
            "expire_session",
            "Answers later requests of this session as an expired session",
            schema(json!({}), &[]),
        ));
    }
    for i in 0..extra {
        tools.push(Tool::new(format!("tool_{i}"), "Returns `message` (from --tools)", schema(json!({}), &[])));
    }
    tools
}

fn text(s: impl Into<String>) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(s)]).into()
}

impl TestServer {
    fn arg<'a>(request: &'a CallToolRequestParams, name: &str) -> Option<&'a Value> {
        request.arguments.as_ref().and_then(|a| a.get(name))
    }

    async fn run(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let bad = |m: &str| ErrorData::invalid_params(m.to_string(), None);
        match (self.persona, request.name.as_ref()) {
            (Persona::Github, "list_issues") => return self.list_issues(&request).await,
            (Persona::Notion, "create_page") => {
                let field = |name: &str| Self::arg(&request, name).and_then(Value::as_str).ok_or_else(|| bad(name));
                let (parent, title, markdown) = (field("parent")?, field("title")?, field("markdown")?);
                let mut state = self.state.lock().unwrap();
                let id = format!("{:032x}", state.pages.len() + 1);
                let page = json!({
                    "object": "page",
                    "id": id,
                    "url": format!("https://www.notion.so/{id}"),
                    "parent": {"page_id": parent},
                    "title": title,
                    "markdown": markdown,
                });
                state.pages.push(page.clone());
                return Ok(text(json!({"object": "page", "id": id, "url": page["url"]}).to_string()));
            }
            (Persona::Notion, "list_pages") => {
                return Ok(text(json!({"pages": self.state.lock().unwrap().pages}).to_string()));
            }
            (Persona::Test, _) | (_, "stats") => {}
            (_, other) => return Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
        match request.name.as_ref() {
            "echo" => {
                let message = Self::arg(&request, "message").and_then(Value::as_str).ok_or_else(|| bad("message"))?;
                let repeat = Self::arg(&request, "repeat").and_then(Value::as_u64).unwrap_or(1);
                Ok(text(message.repeat(repeat as usize)))
            }
            "sleep" => {
                let ms = Self::arg(&request, "ms").and_then(Value::as_u64).ok_or_else(|| bad("ms"))?;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(text(format!("slept {ms} ms"))),
                    () = context.ct.cancelled() => {
                        self.state.lock().unwrap().cancelled += 1;
                        Err(ErrorData::internal_error("cancelled", None))
                    }
                }
            }
            "fail_n_times" => {
                let key = Self::arg(&request, "key").and_then(Value::as_str).ok_or_else(|| bad("key"))?;
                let n = Self::arg(&request, "n").and_then(Value::as_u64).ok_or_else(|| bad("n"))?;
                let mut state = self.state.lock().unwrap();
                let seen = state.failures.entry(key.to_string()).or_default();
                *seen += 1;
                if *seen <= n {
                    Ok(CallToolResult::error(vec![ContentBlock::text(format!("failure {seen} of {n}"))]).into())
                } else {
                    Ok(text(format!("succeeded after {n} failures")))
                }
            }
            "stats" => {
                let state = self.state.lock().unwrap();
                // This call itself is in flight; do not count it.
                Ok(text(
                    json!({
                        "active": state.active - 1,
                        "max_active": state.max_active,
                        "cancelled": state.cancelled,
                        "calls": state.calls,
                    })
                    .to_string(),
                ))
            }
            "add_tool" => {
                let name = Self::arg(&request, "name").and_then(Value::as_str).ok_or_else(|| bad("name"))?;
                self.state.lock().unwrap().added.push(name.to_string());
                let _ = context.peer.notify_tool_list_changed().await;
                Ok(text(format!("added {name}")))
            }
            "pid" => Ok(text(std::process::id().to_string())),
            "exit" => {
                let code = Self::arg(&request, "code").and_then(Value::as_i64).unwrap_or(1);
                std::process::exit(code as i32)
            }
            "expire_session" => {
                let expired = self.expired.as_ref().ok_or_else(|| bad("expire_session needs --http"))?;
                let session = context
                    .extensions
                    .get::<http::request::Parts>()
                    .and_then(|parts| parts.headers.get("mcp-session-id"))
                    .and_then(|id| id.to_str().ok())
                    .ok_or_else(|| bad("no session id on this request"))?;
                expired.lock().unwrap().insert(session.to_string());
                Ok(text("expired"))
            }
            other if self.state.lock().unwrap().added.iter().any(|a| a == other) => Ok(text(other)),
            other
                if other
                    .strip_prefix("tool_")
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| i < self.extra_tools) =>
            {
                Ok(text(Self::arg(&request, "message").and_then(Value::as_str).unwrap_or(other)))
            }
            other => Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
    }
}

impl TestServer {
    async fn list_issues(&self, request: &CallToolRequestParams) -> Result<CallToolResponse, ErrorData> {
        let field = |name: &str| Self::arg(request, name).and_then(Value::as_str);
        let (Some(owner), Some(repo)) = (field("owner"), field("repo")) else {
            return Err(ErrorData::invalid_params("owner and repo are required", None));
        };
        let state = field("state").unwrap_or("open");
        if !["open", "closed", "all"].contains(&state) {
            return Err(ErrorData::invalid_params(format!("state {state:?}: allowed: open, closed, all"), None));
        }
        tokio::time::sleep(self.latency).await;
        let all: Value = serde_json::from_str(ISSUES).expect("the fixture is JSON");
        let Some(issues) = all[format!("{owner}/{repo}")].as_array() else {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "failed to list issues: GET https://api.github.com/repos/{owner}/{repo}/issues: 404 Not Found"
            ))])
            .into());
        };
        // ISO 8601 UTC times of one format compare as text.
        let since = field("since").unwrap_or("");
        let found: Vec<&Value> = issues
            .iter()
            .filter(|i| state == "all" || i["state"] == state)
            .filter(|i| i["updated_at"].as_str().unwrap_or("") >= since)
            .collect();
        Ok(text(serde_json::to_string(&found).expect("JSON")))
    }
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let all =
            persona_tools(self.persona, &self.state.lock().unwrap().added, self.extra_tools, self.expired.is_some());
        let start: usize = request.and_then(|r| r.cursor).and_then(|c| c.parse().ok()).unwrap_or(0);
        let end = (start + PAGE_SIZE).min(all.len());
        let mut page = ListToolsResult::with_all_items(all[start.min(end)..end].to_vec());
        page.next_cursor = (end < all.len()).then(|| end.to_string());
        Ok(page)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        {
            let mut state = self.state.lock().unwrap();
            state.active += 1;
            state.calls += 1;
            state.max_active = state.max_active.max(state.active);
        }
        if let Some(path) = &self.journal {
            let line = json!({"tool": request.name, "args": request.arguments}).to_string() + "\n";
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                return Err(ErrorData::internal_error(format!("journal {}: {e}", path.display()), None));
            }
        }
        let result = self.run(request, context).await;
        self.state.lock().unwrap().active -= 1;
        result
    }
}

/// The command line: `[--persona test|github|notion] [--journal PATH]
/// [--latency-ms N] [--tools N] [--http ADDR [--expired-status 404|400]]`.
struct Options {
    server: TestServer,
    http: Option<SocketAddr>,
    expired_status: http::StatusCode,
}

fn options() -> Result<Options, String> {
    let server = TestServer { latency: Duration::from_millis(300), ..TestServer::default() };
    let mut options = Options { server, http: None, expired_status: http::StatusCode::NOT_FOUND };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--persona" => {
                options.server.persona = match value.as_str() {
                    "test" => Persona::Test,
                    "github" => Persona::Github,
                    "notion" => Persona::Notion,
                    other => return Err(format!("--persona {other:?}: allowed: test, github, notion")),
                }
            }
            "--journal" => options.server.journal = Some(PathBuf::from(value)),
            "--latency-ms" => {
                let ms = value.parse().map_err(|_| format!("--latency-ms: not a number: {value}"))?;
                options.server.latency = Duration::from_millis(ms);
            }
            "--tools" => {
                options.server.extra_tools = value.parse().map_err(|_| format!("--tools: not a number: {value}"))?
            }
            "--http" => options.http = Some(value.parse().map_err(|_| format!("--http: not an address: {value}"))?),
            "--expired-status" => {
                options.expired_status = value
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
                    .ok_or_else(|| format!("--expired-status: not a status: {value}"))?
            }
            other => {
                return Err(format!(
                    "unknown flag {other}; allowed: --persona, --journal, --latency-ms, --tools, --http, --expired-status"
                ));
            }
        }
    }
    Ok(options)
}

/// Streamable HTTP at `/mcp`. Requests of expired sessions get `status` with
/// the JSON-RPC error body the TypeScript and Python SDKs send (id null).
async fn serve_http(addr: SocketAddr, server: TestServer, status: http::StatusCode) -> std::io::Result<()> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

    let expired = server.expired.clone().unwrap_or_default();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().disable_allowed_hosts(),
    );
    let reject = axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
        let expired = expired.clone();
        async move {
            let session = request.headers().get("mcp-session-id").and_then(|v| v.to_str().ok());
            if session.is_some_and(|id| expired.lock().unwrap().contains(id)) {
                let body = json!({"jsonrpc": "2.0", "error": {"code": -32000, "message": "Bad Request: No valid session ID provided"}, "id": null});
                return (status, axum::Json(body)).into_response();
            }
            next.run(request).await
        }
    });
    let app = axum::Router::new().route_service("/mcp", service).layer(reject);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let server = options.server;
    if let Some(addr) = options.http {
        let server = TestServer { expired: Some(Arc::default()), ..server };
        serve_http(addr, server, options.expired_status).await?;
        return Ok(());
    }
    let service = server.serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
