//! The MCP server behind every exposed endpoint: upstream tools, resources
//! and prompts from the registry (all of them namespaced, or one server's
//! unprefixed), Orch's own tools and resources, and `tools/list_changed`
//! forwarding (only for servers the session's key may use).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use orch_mcp::RegistryEvent;
use orch_mcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode, GetPromptRequestParams,
    GetPromptResponse, Implementation, JsonObject, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig, Tool,
};
use orch_store::{JobKind, JobStatus};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::names::ToolNames;
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::jobs::{self, BatchJobRequest, ChatJobRequest, JobOptions, JobView};

/// Which tools an endpoint shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every server's tools as `server<sep>tool`, plus Orch's own tools (`/mcp`, `orch mcp`).
    Aggregate,
    /// One server's tools under their own names (`/mcp/{server}`, `/sse/{server}`).
    Server(String),
}

/// One MCP session's handler. rmcp makes one per session and drops it when
/// the session ends, which stops its list_changed forwarder.
pub struct OrchMcp {
    state: AppState,
    scope: Scope,
    forwarder: Mutex<Option<DropGuard>>,
    /// The key of a session whose messages carry no request parts (`/sse`):
    /// the key that opened it (its messages must come with the same key).
    session_key: Option<Principal>,
}

impl OrchMcp {
    pub fn new(state: AppState, scope: Scope) -> OrchMcp {
        OrchMcp { state, scope, forwarder: Mutex::default(), session_key: None }
    }

    /// A handler for a session opened with `principal` (SSE).
    pub fn for_key(state: AppState, scope: Scope, principal: Principal) -> OrchMcp {
        OrchMcp { session_key: Some(principal), ..OrchMcp::new(state, scope) }
    }

    /// The caller: from the request's parts, else the session's key.
    fn principal(&self, extensions: &rmcp::model::Extensions) -> Option<Principal> {
        principal(extensions).or_else(|| self.session_key.clone())
    }

    /// Whether this endpoint shows `server`'s tools, resources and prompts to this key.
    fn shows(&self, server: &str, principal: Option<&Principal>) -> bool {
        let in_scope = match &self.scope {
            Scope::Aggregate => true,
            Scope::Server(name) => name == server,
        };
        in_scope && principal.is_none_or(|p| p.may_use_server(server))
    }

    /// The function-safe names of every upstream tool in this endpoint's
    /// scope (whichever key asks, so a name never depends on the key).
    fn tool_names(&self, entries: &[orch_mcp::ToolEntry]) -> ToolNames {
        let in_scope = entries.iter().filter(|e| self.shows(&e.server, None));
        let pairs = in_scope.map(|e| (e.server.as_str(), e.tool.name.as_ref()));
        ToolNames::new(pairs, self.scope == Scope::Aggregate, &OWN_TOOLS)
    }

    /// The upstream tools this endpoint shows to this key, under their function-safe names.
    fn upstream_tools(&self, principal: Option<&Principal>) -> Vec<Tool> {
        let entries = self.state.registry.tools();
        let names = self.tool_names(&entries);
        entries
            .into_iter()
            .filter(|entry| self.shows(&entry.server, principal))
            .filter(|entry| principal.is_none_or(|p| p.may_use_tool(&entry.server, &entry.tool.name)))
            .map(|entry| {
                let mut tool = entry.tool;
                if let Some(name) = names.listed(&entry.server, &tool.name) {
                    tool.name = name.to_owned().into();
                }
                tool
            })
            .collect()
    }

    /// The server and tool a `tools/call` names: a listed (function-safe)
    /// name, or on the aggregate the registry's `server.tool`.
    fn target(&self, name: &str) -> Option<(String, String)> {
        let names = self.tool_names(&self.state.registry.tools());
        if let Some((server, tool)) = names.target(name) {
            return Some((server.to_owned(), tool.to_owned()));
        }
        match &self.scope {
            Scope::Aggregate => self.state.registry.resolve(name).ok().map(|(s, t)| (s.to_owned(), t.to_owned())),
            Scope::Server(server) => Some((server.clone(), name.to_owned())),
        }
    }

    /// A `tools/call` on this endpoint: one of Orch's own tools on the
    /// aggregate, else the upstream's. Cancelling `cancel` (the client's
    /// `notifications/cancelled`) abandons the call and cancels it upstream.
    pub(super) async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
        principal: Option<&Principal>,
        cancel: CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        let audit = |tool: &str, outcome: &str| {
            let call = crate::audit::ToolCall {
                key: principal.map(|p| (p.key.id.as_str(), p.key.name.as_str())),
                method: "MCP",
                route: match &self.scope {
                    Scope::Aggregate => "/mcp",
                    Scope::Server(_) => "/mcp/{server}",
                },
                tool,
                job_id: None,
                outcome,
            };
            self.state.audit.record(call.entry());
        };
        if self.scope == Scope::Aggregate && OWN_TOOLS.contains(&name) {
            let result = self.call_own(name, arguments.unwrap_or_default(), principal).await;
            audit(&format!("orch.{name}"), if result.is_error == Some(true) { "error" } else { "ok" });
            return Ok(result);
        }
        let target = self.target(name);
        let shown = target.as_ref().map_or_else(|| name.to_owned(), |(s, t)| format!("{s}.{t}"));
        if let (Some((server, tool)), Some(principal)) = (&target, principal)
            && let Err(err) = principal.require_tool(server, tool)
        {
            audit(&shown, "denied");
            return Err(ErrorData::invalid_params(err.message, err.details));
        }
        // The client's `notifications/cancelled` cancels `cancel`; the registry
        // then abandons the call and cancels it upstream too.
        let options = orch_mcp::CallOptions { cancel: Some(cancel), ..Default::default() };
        let result = match &target {
            Some((server, tool)) => self.state.registry.call_tool(server, tool, arguments, options).await,
            // Not a tool of this endpoint: the registry says why.
            None => self.state.registry.call(name, arguments, options).await,
        };
        audit(&shown, if matches!(&result, Ok(r) if r.is_error != Some(true)) { "ok" } else { "error" });
        match result {
            Ok(result) => Ok(result),
            // A name the client should not have sent is a protocol error ...
            Err(
                err @ (orch_mcp::Error::UnknownServer { .. }
                | orch_mcp::Error::UnknownTool { .. }
                | orch_mcp::Error::BadToolName { .. }),
            ) => Err(ErrorData::invalid_params(err.to_string(), None)),
            // ... while a failing server is a tool error the model gets to read.
            Err(err) => Ok(CallToolResult::error(vec![ContentBlock::text(err.to_string())])),
        }
    }

    async fn call_own(&self, name: &str, arguments: JsonObject, principal: Option<&Principal>) -> CallToolResult {
        let outcome = match name {
            SUBMIT_JOB => self.submit_job(arguments, principal).await,
            GET_JOB => self.get_job(arguments, principal).await,
            CHAT => self.chat(arguments, principal).await,
            GET_SESSION => match (require(principal, "jobs:read"), string_arg(&arguments, "id")) {
                (Ok(()), Ok(id)) => crate::sessions::load(&self.state, principal, &id).await.map(crate::sessions::view),
                (Err(err), _) | (_, Err(err)) => Err(err),
            },
            EXPORT_SESSION_MEMORY => match (require(principal, "jobs:read"), string_arg(&arguments, "id")) {
                (Ok(()), Ok(id)) => {
                    let summarize = arguments.get("summarize").and_then(Value::as_bool).unwrap_or(false);
                    let provider = arguments.get("provider").and_then(Value::as_str);
                    crate::sessions::memory(&self.state, principal, &id, summarize, provider).await
                }
                (Err(err), _) | (_, Err(err)) => Err(err),
            },
            BATCH_EXECUTE => self.batch_execute(arguments, principal).await,
            LIST_PROVIDERS => match require(principal, "jobs:read") {
                Ok(()) => Ok(json!({"providers": crate::providers::provider_views(&self.state).await})),
                Err(err) => Err(err),
            },
            _ => Ok(list_servers(&self.state, principal)),
        };
        match outcome {
            Ok(value) => CallToolResult::structured(value),
            Err(err) => CallToolResult::error(vec![ContentBlock::text(error_text(&err))]),
        }
    }

    async fn submit_job(&self, mut arguments: JsonObject, principal: Option<&Principal>) -> Result<Value, ApiError> {
        require(principal, "jobs:write")?;
        let kind = match arguments.remove("kind") {
            Some(Value::String(kind)) if kind == "chat" => JobKind::Chat,
            Some(Value::String(kind)) if kind == "batch" => JobKind::Batch,
            other => {
                return Err(ApiError::invalid_field(
                    "kind",
                    format!("must be \"chat\" or \"batch\"; got {}", other.unwrap_or(Value::Null)),
                ));
            }
        };
        // Parsed exactly as the REST bodies are, so errors name the same fields.
        let raw = serde_json::to_vec(&arguments).map_err(ApiError::internal)?;
        let (input, metadata, max_attempts) = match kind {
            JobKind::Chat => {
                let req: ChatJobRequest = crate::json::parse(&raw)?;
                let mut input = jobs::chat_input(&self.state, &req)?;
                input["key_id"] = json!(jobs::owner_of(principal));
                jobs::limit_providers(&self.state, principal, &mut input)?;
                let input = crate::webhooks::attach(&self.state, input, req.webhook_fields(None)).await?;
                (input, req.metadata, req.max_attempts)
            }
            JobKind::Batch | JobKind::Delivery => {
                let req: BatchJobRequest = crate::json::parse(&raw)?;
                let input = jobs::batch_input(&self.state, principal, &req)?;
                let input = crate::webhooks::attach(&self.state, input, req.webhook_fields(None)).await?;
                (input, req.metadata, req.max_attempts)
            }
        };
        let options = JobOptions {
            metadata: &metadata,
            max_attempts,
            owner: jobs::owner_of(principal),
            jobs_per_day: crate::rate::jobs_per_day(&self.state.config, principal),
        };
        // MCP has no Idempotency-Key header; a retried tool call makes a new job.
        let (accepted, _) = jobs::submit_job(&self.state, kind, input, options, || Ok(None)).await?;
        Ok(json!(accepted))
    }

    /// One chat turn as a job, waited for: the answer and where it ran.
    async fn chat(&self, arguments: JsonObject, principal: Option<&Principal>) -> Result<Value, ApiError> {
        require(principal, "jobs:write")?;
        let raw = serde_json::to_vec(&arguments).map_err(ApiError::internal)?;
        let req: ChatJobRequest = crate::json::parse(&raw)?;
        let mut input = jobs::chat_input(&self.state, &req)?;
        input["key_id"] = json!(jobs::owner_of(principal));
        jobs::limit_providers(&self.state, principal, &mut input)?;
        if let Some(session) = &req.session_id {
            crate::sessions::attach(&self.state, principal, &mut input, session).await?;
        }
        let options = JobOptions {
            metadata: &req.metadata,
            max_attempts: req.max_attempts,
            owner: jobs::owner_of(principal),
            jobs_per_day: crate::rate::jobs_per_day(&self.state.config, principal),
        };
        let mut chat = crate::openai::WaitedChat::start(&self.state, input, options).await?;
        chat.wait().await?;
        let id = chat.id;
        let job = jobs::load(&self.state, principal, &id.to_string()).await?;
        if job.status != JobStatus::Succeeded {
            let error = job
                .error
                .map_or_else(|| format!("the turn ended {}", job.status), |e| format!("{}: {}", e.code, e.message));
            return Err(ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "chat_failed", error)
                .with_details(json!({"job_id": id})));
        }
        let result = self.state.store.get_result(id).await?.unwrap_or(Value::Null);
        Ok(json!({
            "text": result["text"],
            "session_id": result["session_id"],
            "routed_to": result["routed_to"],
            "route_reason": result["route_reason"],
            "usage": result["usage"],
            "job_id": id,
        }))
    }

    /// A batch job from a plan or a request: its id, or with `wait` its
    /// outcome (the job with its result); with `dry_run` only the plan.
    async fn batch_execute(&self, mut arguments: JsonObject, principal: Option<&Principal>) -> Result<Value, ApiError> {
        require(principal, "jobs:write")?;
        let wait = match arguments.remove("wait") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(wait)) => wait,
            Some(other) => return Err(ApiError::invalid_field("wait", format!("must be true or false; got {other}"))),
        };
        let raw = serde_json::to_vec(&arguments).map_err(ApiError::internal)?;
        let req: BatchJobRequest = crate::json::parse(&raw)?;
        let input = jobs::batch_input(&self.state, principal, &req)?;
        if req.dry_run == Some(true) {
            let planned = crate::planning::plan_now(&self.state, principal, input, &req.metadata).await?;
            return Ok(json!(crate::plans::preview(
                &self.state,
                planned.plan,
                Some(planned.planning),
                Some(planned.job_id)
            )));
        }
        let options = JobOptions {
            metadata: &req.metadata,
            max_attempts: req.max_attempts,
            owner: jobs::owner_of(principal),
            jobs_per_day: crate::rate::jobs_per_day(&self.state.config, principal),
        };
        let (accepted, _) = jobs::submit_job(&self.state, JobKind::Batch, input, options, || Ok(None)).await?;
        if !wait {
            return Ok(json!(accepted));
        }
        let id = accepted.id;
        // A batch job that outlasts the wait keeps running; the caller follows it with get_job.
        let _ = tokio::time::timeout(self.state.config.chat_wait, async {
            let mut events = std::pin::pin!(jobs::follow_events(self.state.clone(), id, 0));
            while let Some(event) = futures::StreamExt::next(&mut events).await {
                if event.is_terminal() {
                    return;
                }
            }
        })
        .await;
        job_json(&self.state, principal, &id.to_string()).await
    }

    async fn get_job(&self, arguments: JsonObject, principal: Option<&Principal>) -> Result<Value, ApiError> {
        require(principal, "jobs:read")?;
        let id = arguments
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid_field("id", "give the job id that submit_job returned"))?;
        job_json(&self.state, principal, id).await
    }

    /// Sends the client `notifications/tools/list_changed` when the tools of
    /// a server it sees change: on `/mcp` any server the key may use, on
    /// `/mcp/{server}` that one.
    fn start_forwarding(&self, peer: rmcp::Peer<RoleServer>, principal: Option<Principal>) {
        let stop = CancellationToken::new();
        let mut events = self.state.registry.subscribe();
        let scope = self.scope.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = stopped.cancelled() => return,
                    event = events.recv() => event,
                };
                let relevant = match event {
                    Ok(RegistryEvent::ToolsChanged { server }) => match &scope {
                        Scope::Aggregate => principal.as_ref().is_none_or(|p| p.may_use_server(&server)),
                        Scope::Server(name) => *name == server,
                    },
                    Ok(RegistryEvent::ServerState { .. }) => false,
                    // Missed events may have been tool changes: say so, to be safe.
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                };
                if relevant && peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        });
        *self.forwarder.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop.drop_guard());
    }
}

const SUBMIT_JOB: &str = "submit_job";
const GET_JOB: &str = "get_job";
const LIST_SERVERS: &str = "list_servers";
const CHAT: &str = "chat";
const LIST_PROVIDERS: &str = "list_providers";
const GET_SESSION: &str = "get_session";
const EXPORT_SESSION_MEMORY: &str = "export_session_memory";
const BATCH_EXECUTE: &str = "batch_execute";
const OWN_TOOLS: [&str; 8] =
    [SUBMIT_JOB, GET_JOB, LIST_SERVERS, CHAT, LIST_PROVIDERS, GET_SESSION, EXPORT_SESSION_MEMORY, BATCH_EXECUTE];

/// A required string argument of one of Orch's own tools.
fn string_arg(arguments: &JsonObject, name: &str) -> Result<String, ApiError> {
    arguments
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid_field(name, "required: a string"))
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => unreachable!("schemas are object literals"),
    }
}

fn own_tools() -> Vec<Tool> {
    vec![
        Tool::new(
            SUBMIT_JOB,
            "Queue an Orch job and return its id and URLs. `kind` is \"chat\" (with `prompt` or `messages`, \
             as POST /v1/jobs/chat) or \"batch\" (with `plan`, as POST /v1/jobs/batch). Follow it with get_job.",
            schema(json!({
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": ["chat", "batch"]},
                    "prompt": {"type": "string", "description": "chat: a single user message"},
                    "messages": {
                        "type": "array",
                        "description": "chat: the conversation so far",
                        "items": {
                            "type": "object",
                            "properties": {
                                "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                                "content": {"type": "string"}
                            },
                            "required": ["role", "content"]
                        }
                    },
                    "system": {"type": "string", "description": "chat: system prompt"},
                    "model": {"type": "string", "description": "chat: model to run the turn on"},
                    "plan": {"type": "object", "description": "batch: a plan of nodes, as in POST /v1/jobs/batch"},
                    "request": {"type": "string", "description": "batch: instead of plan, what to do in plain language (see batch_execute)"},
                    "metadata": {"type": "object", "description": "returned with the job as given"},
                    "max_attempts": {"type": "integer", "minimum": 1, "maximum": jobs::MAX_ATTEMPTS}
                },
                "required": ["kind"]
            })),
        ),
        Tool::new(
            GET_JOB,
            "A job's status (queued, running, succeeded, failed, cancelled), progress and error; \
             with its result once it succeeded.",
            schema(json!({
                "type": "object",
                "properties": {"id": {"type": "string", "description": "the id submit_job returned"}},
                "required": ["id"]
            })),
        ),
        Tool::new(
            LIST_SERVERS,
            "The MCP servers Orch is connected to: state, tool count, latency and last error.",
            schema(json!({"type": "object", "properties": {}})),
        ),
        Tool::new(
            CHAT,
            "Ask a subscription-backed CLI agent (Claude Code, Gemini CLI, Codex, Qwen Code) and wait for the \
             answer. `model` is auto (routed by task type), a provider, or provider/model; list_providers shows \
             what is configured. Returns the text, where it ran and why.",
            schema(json!({
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "description": "the question or task"},
                    "messages": {
                        "type": "array",
                        "description": "instead of prompt: the conversation so far, ending with a user message",
                        "items": {
                            "type": "object",
                            "properties": {
                                "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                                "content": {"type": "string"}
                            },
                            "required": ["role", "content"]
                        }
                    },
                    "system": {"type": "string"},
                    "model": {"type": "string", "description": "auto, a provider, or provider/model"},
                    "task_type": {"type": "string", "enum": ["coding", "reasoning", "planning", "fast", "general"]},
                    "session_id": {"type": "string", "description": "continue (or start) this conversation"}
                }
            })),
        ),
        Tool::new(
            GET_SESSION,
            "A chat session's messages (with times and where each answer ran).",
            schema(json!({
                "type": "object",
                "properties": {"id": {"type": "string", "description": "the session id"}},
                "required": ["id"]
            })),
        ),
        Tool::new(
            EXPORT_SESSION_MEMORY,
            "A chat session as an Obsidian-ready markdown note (YAML front matter, transcript), optionally with \
             an LLM summary of topics, decisions and action items. Returns {markdown, filename, summary, session}.",
            schema(json!({
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "the session id"},
                    "summarize": {"type": "boolean", "description": "add an LLM summary (runs a chat turn)"},
                    "provider": {"type": "string", "description": "model of the summary, as in chat"}
                },
                "required": ["id"]
            })),
        ),
        Tool::new(
            BATCH_EXECUTE,
            "Run a batch job: a `plan` (a DAG of MCP tool calls and LLM steps, as POST /v1/jobs/batch), or a \
             `request` in plain language that Orch's planner turns into a plan over the servers' autoApprove \
             tools and those named in `tools`. With `wait` the job's outcome and result, else its id (follow \
             it with get_job); with `dry_run` only the plan.",
            schema(json!({
                "type": "object",
                "properties": {
                    "plan": {"type": "object", "description": "a plan of nodes, as in POST /v1/jobs/batch"},
                    "request": {"type": "string", "description": "instead of plan: what to do, in plain language"},
                    "tools": {"type": "array", "items": {"type": "string"}, "description": "request: tools (server.tool) the planner may use besides the autoApprove ones"},
                    "planner_model": {"type": "string", "description": "request: the model that plans (auto, a provider, or provider/model)"},
                    "dry_run": {"type": "boolean", "description": "request: answer the plan without running it"},
                    "wait": {"type": "boolean", "description": "wait for the job to finish and answer its result"},
                    "metadata": {"type": "object", "description": "returned with the job as given"},
                    "max_attempts": {"type": "integer", "minimum": 1, "maximum": jobs::MAX_ATTEMPTS}
                }
            })),
        ),
        Tool::new(
            LIST_PROVIDERS,
            "The chat providers: CLI found (version), credentials present, turns in use and limit, cooldown \
             after a usage limit, last error, and how to fix what is missing.",
            schema(json!({"type": "object", "properties": {}})),
        ),
    ]
}

/// 403 unless the key has `scope`; calls over stdio have no key and run as
/// whoever started `orch mcp`.
fn require(principal: Option<&Principal>, scope: &str) -> Result<(), ApiError> {
    principal.map_or(Ok(()), |p| p.require(scope))
}

/// 403 unless the key may use `server` (keys can be limited to some servers).
fn require_server(principal: Option<&Principal>, server: &str) -> Result<(), ApiError> {
    principal.map_or(Ok(()), |p| p.require_server(server))
}

/// The key the HTTP layer authenticated, which it put in the request's extensions.
fn principal(extensions: &rmcp::model::Extensions) -> Option<Principal> {
    extensions.get::<axum::http::request::Parts>().and_then(|parts| parts.extensions.get::<Principal>()).cloned()
}

/// The API's error body, so MCP clients read the same messages as REST callers.
fn error_text(err: &ApiError) -> String {
    let mut error = json!({"code": err.code, "message": err.message});
    if let Some(details) = &err.details {
        error["details"] = details.clone();
    }
    json!({ "error": error }).to_string()
}

async fn job_json(state: &AppState, principal: Option<&Principal>, id: &str) -> Result<Value, ApiError> {
    let job = jobs::load(state, principal, id).await?;
    let result = if job.status == JobStatus::Succeeded { state.store.get_result(job.id).await? } else { None };
    let mut value = json!(JobView::from(job));
    if let Some(result) = result {
        value["result"] = result;
    }
    Ok(value)
}

fn list_servers(state: &AppState, principal: Option<&Principal>) -> Value {
    let servers: Vec<Value> = state
        .registry
        .status()
        .into_iter()
        .filter(|s| principal.is_none_or(|p| p.may_use_server(&s.name)))
        .map(|s| {
            json!({
                "name": s.name,
                "transport": s.transport,
                "state": s.state,
                "tools": s.tools,
                "latency_ms": s.latency.map(|l| l.as_secs_f64() * 1000.0),
                "last_error": s.last_error,
                "connections": s.connections.len(),
                "restarts": s.restarts,
            })
        })
        .collect();
    json!({ "servers": servers })
}

const JOB_URI: &str = "job://";
const PROVIDER_URI: &str = "provider://";
const SESSION_URI: &str = "session://";
const OWN_URIS: [&str; 3] = [JOB_URI, PROVIDER_URI, SESSION_URI];

/// Reads one of Orch's own resources: `job://{id}`, `provider://list`,
/// `provider://{name}`, `session://{id}`.
async fn own_resource(state: &AppState, uri: &str, principal: Option<&Principal>) -> Result<Value, ApiError> {
    require(principal, "jobs:read")?;
    if let Some(id) = uri.strip_prefix(JOB_URI) {
        return job_json(state, principal, id).await;
    }
    if let Some(name) = uri.strip_prefix(PROVIDER_URI) {
        let views = crate::providers::provider_views(state).await;
        if name == "list" {
            return Ok(json!({ "providers": views }));
        }
        return views
            .into_iter()
            .find(|v| v.name == name)
            .map(|v| json!(v))
            .ok_or_else(|| ApiError::not_found("provider", name));
    }
    if let Some(id) = uri.strip_prefix(SESSION_URI) {
        return crate::sessions::load(state, principal, id).await.map(crate::sessions::view);
    }
    Err(ApiError::not_found("resource", uri))
}

impl ServerHandler for OrchMcp {
    fn get_info(&self) -> ServerConfig {
        let tools = ServerCapabilities::builder().enable_tools().enable_tool_list_changed();
        let instructions = match &self.scope {
            Scope::Aggregate => {
                "Tools of every MCP server Orch is connected to, named <server>__<tool> (function-safe: other \
                 characters are _, and a name over 64 characters or shared ends in a short hash; <server>.<tool> \
                 is accepted too), plus Orch's \
                 own: submit_job, batch_execute, get_job, list_servers, chat, list_providers, get_session, \
                 export_session_memory. Resources: job://{id}, provider://list, provider://{name}, session://{id}, \
                 and each server's as <server>+<uri>. Prompts: <server><separator><prompt>."
                    .to_owned()
            }
            Scope::Server(server) => {
                format!("The tools, resources and prompts of the MCP server `{server}`, through Orch.")
            }
        };
        let capabilities = tools.enable_resources().enable_prompts().build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("orch", env!("CARGO_PKG_VERSION")))
            .with_instructions(instructions)
    }

    // 2026-07-28 serves HTTP statelessly and sends list_changed only inside
    // `subscriptions/listen`; the session-based revisions let us push it to
    // every connected client, which is what the gateway promises. Clients that
    // prefer 2026-07-28 fall back to `initialize`.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::LATEST_WITH_INITIALIZE))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // The key that initialised the session decides what it hears of.
        let principal = self.principal(&context.extensions);
        self.start_forwarding(context.peer, principal);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let principal = self.principal(&context.extensions);
        let mut tools = self.upstream_tools(principal.as_ref());
        if self.scope == Scope::Aggregate {
            tools.extend(own_tools());
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let principal = self.principal(&context.extensions);
        // rmcp runs the call outside the HTTP request's task: links are built from its headers here.
        let base =
            context.extensions.get::<axum::http::request::Parts>().and_then(|p| crate::links::base_url(&p.headers));
        let call = self.call(&request.name, request.arguments, principal.as_ref(), context.ct);
        Ok(crate::links::scope(base, call).await?.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let principal = self.principal(&context.extensions);
        let resources = self
            .state
            .registry
            .resources()
            .into_iter()
            .filter(|entry| self.shows(&entry.server, principal.as_ref()))
            .map(|entry| {
                let mut resource = entry.resource;
                if self.scope == Scope::Aggregate {
                    resource.uri = namespaced_uri(&entry.server, &resource.uri);
                }
                resource
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let principal = self.principal(&context.extensions);
        let mut templates = match self.scope {
            Scope::Aggregate => own_resource_templates(),
            Scope::Server(_) => Vec::new(),
        };
        let upstream = self.state.registry.resource_templates().into_iter();
        templates.extend(upstream.filter(|entry| self.shows(&entry.server, principal.as_ref())).map(|entry| {
            let mut template = entry.template;
            if self.scope == Scope::Aggregate {
                template.uri_template = namespaced_uri(&entry.server, &template.uri_template);
            }
            template
        }));
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let principal = self.principal(&context.extensions);
        let uri = request.uri.as_str();
        let (server, upstream_uri) = match &self.scope {
            Scope::Server(server) => (server.as_str(), uri),
            Scope::Aggregate if OWN_URIS.iter().any(|prefix| uri.starts_with(prefix)) => {
                let value = own_resource(&self.state, uri, principal.as_ref())
                    .await
                    .map_err(|err| ErrorData::resource_not_found(err.message, err.details))?;
                let contents = ResourceContents::TextResourceContents {
                    uri: request.uri.clone(),
                    mime_type: Some("application/json".into()),
                    text: value.to_string(),
                    meta: None,
                };
                return Ok(ReadResourceResult::new(vec![contents]).into());
            }
            Scope::Aggregate => split_uri(uri).ok_or_else(|| {
                ErrorData::resource_not_found(
                    format!(
                        "no resource {uri}: on /mcp a server's resources are `<server>{URI_SEPARATOR}<uri>` \
                         (resources/list shows them), Orch's own are job://, provider:// and session://"
                    ),
                    None,
                )
            })?,
        };
        require_server(principal.as_ref(), server)
            .map_err(|err| ErrorData::invalid_params(err.message, err.details))?;
        let mut result =
            self.state.registry.read_resource(server, upstream_uri, Some(context.ct)).await.map_err(upstream_error)?;
        if self.scope == Scope::Aggregate {
            for contents in &mut result.contents {
                if let ResourceContents::TextResourceContents { uri, .. }
                | ResourceContents::BlobResourceContents { uri, .. } = contents
                {
                    *uri = namespaced_uri(server, uri);
                }
            }
        }
        Ok(result.into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let principal = self.principal(&context.extensions);
        let prompts = self
            .state
            .registry
            .prompts()
            .into_iter()
            .filter(|entry| self.shows(&entry.server, principal.as_ref()))
            .map(|entry| {
                let mut prompt = entry.prompt;
                if self.scope == Scope::Aggregate {
                    prompt.name = entry.name;
                }
                prompt
            })
            .collect();
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let principal = self.principal(&context.extensions);
        let (server, prompt) = match &self.scope {
            Scope::Server(server) => (server.as_str(), request.name.as_str()),
            Scope::Aggregate => self.state.registry.resolve(&request.name).map_err(|_| {
                let separator = &self.state.registry.options().separator;
                ErrorData::invalid_params(
                    format!("no prompt named `{}`: prompt names are `<server>{separator}<prompt>`", request.name),
                    None,
                )
            })?,
        };
        require_server(principal.as_ref(), server)
            .map_err(|err| ErrorData::invalid_params(err.message, err.details))?;
        let result = self
            .state
            .registry
            .get_prompt(server, prompt, request.arguments, Some(context.ct))
            .await
            .map_err(upstream_error)?;
        Ok(result.into())
    }
}

/// Between the server and the upstream URI of a resource on `/mcp`:
/// `everything+demo://resource/static/document/architecture.md`. Server names
/// never contain it, and it is valid in a URI scheme, so the result stays a URI.
const URI_SEPARATOR: char = '+';

fn namespaced_uri(server: &str, uri: &str) -> String {
    format!("{server}{URI_SEPARATOR}{uri}")
}

/// The server and its own URI of a namespaced resource URI.
fn split_uri(uri: &str) -> Option<(&str, &str)> {
    uri.split_once(URI_SEPARATOR)
        .filter(|(server, rest)| orch_mcp::config::validate_name(server).is_ok() && !rest.is_empty())
}

/// A failed upstream `resources/read` or `prompts/get` as the client's error:
/// the server's own JSON-RPC code when it refused, else an internal error
/// naming the server and the cause.
fn upstream_error(error: orch_mcp::Error) -> ErrorData {
    match error {
        orch_mcp::Error::Refused { code, .. } => ErrorData::new(ErrorCode(code), error.to_string(), None),
        orch_mcp::Error::UnknownServer { .. } | orch_mcp::Error::UnknownPrompt { .. } => {
            ErrorData::invalid_params(error.to_string(), None)
        }
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

fn own_resource_templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(format!("{JOB_URI}{{id}}"), "job")
            .with_description("An Orch job: status, progress, error, and its result once it succeeded")
            .with_mime_type("application/json"),
        ResourceTemplate::new(format!("{PROVIDER_URI}{{name}}"), "provider")
            .with_description(
                "A chat provider (provider://list for all): CLI version, credentials present, load, cooldown, \
                 last error",
            )
            .with_mime_type("application/json"),
        ResourceTemplate::new(format!("{SESSION_URI}{{id}}"), "session")
            .with_description("A chat session's messages")
            .with_mime_type("application/json"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris_on_the_aggregate_carry_their_server() {
        let check = |uri: &str, expected: Option<(&str, &str)>| assert_eq!(split_uri(uri), expected, "{uri}");
        check(
            "everything+demo://resource/static/document/a.md",
            Some(("everything", "demo://resource/static/document/a.md")),
        );
        check("my_fs+file:///tmp/a+b.txt", Some(("my_fs", "file:///tmp/a+b.txt")));
        check("gh+git+https://example.com/x", Some(("gh", "git+https://example.com/x")));
        // Not namespaced: no server before a `+`, or something that is no server name.
        check("demo://resource/static/document/a.md", None);
        check("file:///tmp/a+b.txt", None);
        check("+demo://x", None);
        check("fs+", None);
        assert_eq!(namespaced_uri("fs", "file:///tmp/x"), "fs+file:///tmp/x");
        assert_eq!(split_uri(&namespaced_uri("fs", "git+ssh://h/r")), Some(("fs", "git+ssh://h/r")));
    }
}
