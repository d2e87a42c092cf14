//! Tool routes: list and search the tools of every MCP server, read a tool's
//! schema, and call a tool, its arguments checked against the tool's
//! `inputSchema` before anything is sent upstream.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use orch_mcp::{CallOptions, Error as McpError, ToolEntry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{self, Principal};
use crate::error::responses::{BadRequest, Forbidden, NotFound, NotJson, Unauthorized};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::json::ApiJson;

/// A tool as listed.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "everything.echo", "server": "everything", "tool": "echo", "title": null, "description": "Echoes back the input", "auto_approved": false}))]
pub struct ToolSummary {
    /// `server<separator>tool`, as exposed on `/mcp`.
    pub name: String,
    pub server: String,
    /// The server's own name for it (the `{tool}` of the routes).
    pub tool: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// In the server's `autoApprove`: plans made by the planner may use it unasked.
    pub auto_approved: bool,
}

/// A tool with its schemas.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "everything.echo", "server": "everything", "tool": "echo", "title": null, "description": "Echoes back the input", "auto_approved": false, "input_schema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}, "output_schema": null, "annotations": null}))]
pub struct ToolDetail {
    #[serde(flatten)]
    pub summary: ToolSummary,
    /// JSON Schema of the arguments.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    #[schema(value_type = Option<Object>)]
    pub output_schema: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub annotations: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList {
    pub tools: Vec<ToolSummary>,
}

/// Filters of `GET /v1/tools`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ToolQuery {
    /// Only this server's tools.
    pub server: Option<String>,
    /// Words that must all appear (any case) in the tool's name, title or description.
    pub q: Option<String>,
}

/// Calling a tool.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"arguments": {"message": "hello"}}))]
pub struct CallRequest {
    /// The tool's arguments; checked against its `inputSchema`. Default `{}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: Map<String, Value>,
}

/// A tool's answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"server": "everything", "tool": "echo", "content": [{"type": "text", "text": "Echo: hello"}], "structured_content": null, "latency_ms": 2.4}))]
pub struct CallResponse {
    pub server: String,
    pub tool: String,
    /// MCP content blocks (`text`, `image`, `resource`, …).
    #[schema(value_type = Vec<Object>)]
    pub content: Value,
    #[schema(value_type = Option<Object>)]
    pub structured_content: Option<Value>,
    pub latency_ms: f64,
}

fn summary(entry: &ToolEntry) -> ToolSummary {
    ToolSummary {
        name: entry.name.clone(),
        server: entry.server.clone(),
        tool: entry.tool.name.to_string(),
        title: entry.tool.title.clone(),
        description: entry.tool.description.as_ref().map(|d| d.to_string()),
        auto_approved: entry.auto_approved,
    }
}

/// Whether every word of `query` appears in the tool's name, title or description.
pub fn matches(entry: &ToolEntry, query: &str) -> bool {
    let text = format!(
        "{} {} {}",
        entry.name,
        entry.tool.title.as_deref().unwrap_or_default(),
        entry.tool.description.as_deref().unwrap_or_default()
    )
    .to_lowercase();
    query.split_whitespace().all(|word| text.contains(&word.to_lowercase()))
}

/// One violation of a tool's input schema.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Violation {
    /// Where in the body: `arguments`, `arguments.message`, `arguments.items[2]`.
    pub path: String,
    pub message: String,
}

/// Every way `arguments` break `schema`, in the validator's order. `None` when
/// the schema itself cannot be compiled (the server's bug: the call goes ahead
/// and the server judges the arguments).
pub fn violations(schema: &Value, arguments: &Value) -> Option<Vec<Violation>> {
    let validator = jsonschema::validator_for(schema).ok()?;
    Some(
        validator
            .iter_errors(arguments)
            .map(|e| Violation { path: field_path(e.instance_path().as_str()), message: e.to_string() })
            .collect(),
    )
}

/// `/items/2/name` → `arguments.items[2].name`.
fn field_path(pointer: &str) -> String {
    let mut path = String::from("arguments");
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
        } else {
            path.push('.');
            path.push_str(&segment);
        }
    }
    path
}

fn find_tool(state: &AppState, server: &str, tool: &str) -> ApiResult<ToolEntry> {
    if let Some(entry) = state.registry.tools().into_iter().find(|t| t.server == server && t.tool.name == tool) {
        return Ok(entry);
    }
    let error = match state.registry.server_status(server) {
        Err(_) => McpError::UnknownServer { server: server.into() },
        Ok(_) => McpError::UnknownTool { server: server.into(), tool: tool.into() },
    };
    Err(mcp_error(error, tool))
}

/// An upstream error as the API's error, always naming the server.
pub fn mcp_error(error: McpError, tool: &str) -> ApiError {
    let (status, code) = match &error {
        McpError::UnknownServer { .. }
        | McpError::UnknownTool { .. }
        | McpError::UnknownPrompt { .. }
        | McpError::BadToolName { .. } => (StatusCode::NOT_FOUND, "not_found"),
        McpError::Disabled { .. } => (StatusCode::CONFLICT, "server_disabled"),
        McpError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "tool_timeout"),
        McpError::Down { .. } | McpError::Connect { .. } => (StatusCode::BAD_GATEWAY, "server_unavailable"),
        McpError::ConnectionLost { .. } => (StatusCode::BAD_GATEWAY, "connection_lost"),
        McpError::Upstream { .. } | McpError::Refused { .. } | McpError::Cancelled { .. } => {
            (StatusCode::BAD_GATEWAY, "upstream_error")
        }
        McpError::Options { .. } | McpError::Shutdown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
    };
    let server = error.server().map(str::to_owned);
    ApiError::new(status, code, error.to_string()).with_details(json!({"server": server, "tool": tool}))
}

/// List tools.
///
/// Every tool of every server that is up (or has listed its tools), optionally
/// of one server and matching a text search. A key limited to some servers
/// sees only their tools.
#[utoipa::path(
    get, path = "/v1/tools", tag = "tools",
    params(ToolQuery),
    responses((status = 200, body = ToolList), (status = 401, response = Unauthorized), (status = 403, response = Forbidden)),
    security(("bearer" = []))
)]
pub async fn list_tools(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ToolQuery>,
) -> ApiResult<Json<ToolList>> {
    principal.require(auth::TOOLS_CALL)?;
    if let Some(server) = &query.server {
        principal.require_server(server)?;
    }
    let tools = state
        .registry
        .tools()
        .iter()
        .filter(|t| principal.may_use_tool(&t.server, &t.tool.name))
        .filter(|t| query.server.as_ref().is_none_or(|s| *s == t.server))
        .filter(|t| query.q.as_deref().is_none_or(|q| matches(t, q)))
        .map(summary)
        .collect();
    Ok(Json(ToolList { tools }))
}

/// A tool and its input schema.
#[utoipa::path(
    get, path = "/v1/tools/{server}/{tool}", tag = "tools",
    params(("server" = String, Path, description = "Server name, e.g. everything"), ("tool" = String, Path, description = "The server's name for the tool, e.g. echo")),
    responses((status = 200, body = ToolDetail), (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound)),
    security(("bearer" = []))
)]
pub async fn get_tool(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((server, tool)): ApiPath<(String, String)>,
) -> ApiResult<Json<ToolDetail>> {
    principal.require(auth::TOOLS_CALL)?;
    principal.require_tool(&server, &tool)?;
    let entry = find_tool(&state, &server, &tool)?;
    Ok(Json(ToolDetail {
        summary: summary(&entry),
        input_schema: Value::Object((*entry.tool.input_schema).clone()),
        output_schema: entry.tool.output_schema.as_ref().map(|s| Value::Object((**s).clone())),
        annotations: entry.tool.annotations.as_ref().and_then(|a| serde_json::to_value(a).ok()),
    }))
}

/// Call a tool.
///
/// The arguments are checked against the tool's `inputSchema` first: a
/// mismatch answers 422 with every violation in `details.violations`, and
/// nothing is sent. The call then runs with the server's `timeout`. A tool
/// that reports an error (`isError`) answers 502 with its content; an
/// unreachable server 502; a call past the timeout 504 (and is cancelled upstream).
#[utoipa::path(
    post, path = "/v1/tools/{server}/{tool}", tag = "tools",
    params(("server" = String, Path, description = "Server name, e.g. everything"), ("tool" = String, Path, description = "The server's name for the tool, e.g. echo")),
    request_body = CallRequest,
    responses(
        (status = 200, description = "The tool's answer", body = CallResponse),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = NotFound),
        (status = 409, description = "The server is disabled", body = ErrorBody),
        (status = 415, response = NotJson),
        (status = 422, description = "The arguments do not match the tool's input schema; `details.violations` lists each", body = ErrorBody,
            example = json!({"error": {"code": "invalid_arguments", "message": "2 arguments do not match the input schema of everything.add: arguments: \"b\" is a required property; arguments.a: \"one\" is not of type \"number\"", "details": {"server": "everything", "tool": "add", "violations": [{"path": "arguments", "message": "\"b\" is a required property"}, {"path": "arguments.a", "message": "\"one\" is not of type \"number\""}]}}})),
        (status = 502, description = "The tool reported an error, or the server failed; the message names the server", body = ErrorBody,
            example = json!({"error": {"code": "tool_error", "message": "tool `fail` on MCP server `everything` reported an error: boom", "details": {"server": "everything", "tool": "fail", "content": [{"type": "text", "text": "boom"}]}}})),
        (status = 504, description = "No answer within the server's timeout; the call was cancelled upstream", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn call_tool(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((server, tool)): ApiPath<(String, String)>,
    body: ApiJson<CallRequest>,
) -> ApiResult<Json<CallResponse>> {
    principal.require(auth::TOOLS_CALL)?;
    principal.require_tool(&server, &tool)?;
    let arguments = body.value.arguments;
    match find_tool(&state, &server, &tool) {
        Ok(entry) => {
            let schema = Value::Object((*entry.tool.input_schema).clone());
            let found = violations(&schema, &Value::Object(arguments.clone())).unwrap_or_default();
            if !found.is_empty() {
                let listed: Vec<String> = found.iter().map(|v| format!("{}: {}", v.path, v.message)).collect();
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_arguments",
                    format!(
                        "{} argument error(s) against the input schema of {}: {}; GET /v1/tools/{server}/{tool} shows the schema",
                        found.len(),
                        entry.name,
                        listed.join("; ")
                    ),
                )
                .with_details(json!({"server": server, "tool": tool, "violations": found})));
            }
        }
        Err(e) => {
            // A server that has not listed tools (down, disabled) answers with
            // its own error from the call below.
            let unlisted = state.registry.server_status(&server).is_ok_and(|s| s.tools == 0);
            if !unlisted {
                return Err(e);
            }
        }
    }
    let started = Instant::now();
    let result = state
        .registry
        .call_tool(&server, &tool, Some(arguments), CallOptions::default())
        .await
        .map_err(|e| mcp_error(e, &tool))?;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let content = serde_json::to_value(&result.content).map_err(ApiError::internal)?;
    if result.is_error == Some(true) {
        let text = result.content.iter().find_map(|c| c.as_text().map(|t| t.text.clone())).unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "tool_error",
            format!("tool `{tool}` on MCP server `{server}` reported an error: {text}"),
        )
        .with_details(json!({"server": server, "tool": tool, "content": content})));
    }
    Ok(Json(CallResponse { server, tool, content, structured_content: result.structured_content, latency_ms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schema: Value, arguments: Value, expected: &[(&str, &str)]) {
        let found = violations(&schema, &arguments).expect("the schema compiles");
        let found: Vec<(&str, &str)> = found.iter().map(|v| (v.path.as_str(), v.message.as_str())).collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn every_violation_is_listed_with_its_path() {
        let schema = json!({"type": "object", "properties": {
            "a": {"type": "number"}, "items": {"type": "array", "items": {"type": "string"}}}, "required": ["a", "b"]});
        check(schema.clone(), json!({"a": 1, "b": 2}), &[]);
        check(
            schema,
            json!({"a": "one", "items": ["x", 3]}),
            &[
                ("arguments", "\"b\" is a required property"),
                ("arguments.a", "\"one\" is not of type \"number\""),
                ("arguments.items[1]", "3 is not of type \"string\""),
            ],
        );
    }

    #[test]
    fn pointers_become_field_paths() {
        assert_eq!(field_path(""), "arguments");
        assert_eq!(field_path("/a~1b/0/c~0d"), "arguments.a/b[0].c~d");
    }
}
