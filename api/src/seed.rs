//! The routes of the seed documents (MCP Orch's README and PRD), served as
//! aliases: each calls the `/v1` handler it names, under the same scopes, and
//! answers what that handler answers; the batch routes add `task_id` (the job
//! id) for callers written against the seeds.
//!
//! | seed route | same as |
//! | --- | --- |
//! | `GET /tools` | `GET /v1/tools` |
//! | `GET /tools/{server}` | `GET /v1/tools?server={server}` (404 for an unknown server) |
//! | `POST /tools/{server}.{tool}` | `POST /v1/tools/{server}/{tool}` |
//! | `POST /batch/execute` | `POST /v1/jobs/batch` |
//! | `GET /batch/status/{id}` | `GET /v1/jobs/{id}` |
//! | `GET /batch/result/{id}` | `GET /v1/jobs/{id}/result` |
//! | `DELETE /batch/cancel/{id}` | `POST /v1/jobs/{id}/cancel` |
//! | `GET /servers` | `GET /v1/servers` |
//! | `POST /servers/reload` | `POST /v1/servers/reload` |
//!
//! `GET /health` needs no alias: it is the same route.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::error::responses::{BadRequest, Forbidden, IdempotencyConflict, NotFound, NotJson, TooLarge, Unauthorized};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::jobs::{BatchJobRequest, JobAccepted, JobResult, JobView};
use crate::json::ApiJson;
use crate::servers::{ReloadView, ServerList};
use crate::tools::{CallRequest, CallResponse, ToolList, ToolQuery};

/// Filter of `GET /tools/{server}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ServerToolQuery {
    /// Words that must all appear (any case) in the tool's name, title or description.
    pub q: Option<String>,
}

/// A batch job accepted: the `/v1` answer plus `task_id`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"task_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "status": "queued", "status_url": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "result_url": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/result", "events_url": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/events"}))]
pub struct TaskAccepted {
    /// The job id, as the seed documents name it.
    pub task_id: Uuid,
    #[serde(flatten)]
    pub job: JobAccepted,
}

/// A job's state: the `/v1` answer plus `task_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// The job id, as the seed documents name it.
    pub task_id: Uuid,
    #[serde(flatten)]
    pub job: JobView,
}

/// A finished job's outcome: the `/v1` answer plus `task_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskResult {
    /// The job id, as the seed documents name it.
    pub task_id: Uuid,
    #[serde(flatten)]
    pub result: JobResult,
}

/// List tools (seed alias of `GET /v1/tools`).
#[utoipa::path(
    get, path = "/tools", tag = "seed",
    params(ToolQuery),
    responses((status = 200, body = ToolList), (status = 401, response = Unauthorized), (status = 403, response = Forbidden)),
    security(("bearer" = []))
)]
pub async fn list_tools(
    state: State<AppState>,
    principal: Principal,
    query: ApiQuery<ToolQuery>,
) -> ApiResult<Json<ToolList>> {
    crate::tools::list_tools(state, principal, query).await
}

/// List one server's tools (seed alias of `GET /v1/tools?server=`).
///
/// 404 when no server has this name.
#[utoipa::path(
    get, path = "/tools/{server}", tag = "seed",
    params(("server" = String, Path, description = "Server name, e.g. everything"), ServerToolQuery),
    responses((status = 200, body = ToolList), (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound)),
    security(("bearer" = []))
)]
pub async fn server_tools(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(server): ApiPath<String>,
    ApiQuery(query): ApiQuery<ServerToolQuery>,
) -> ApiResult<Json<ToolList>> {
    let query = ToolQuery { server: Some(server.clone()), q: query.q };
    let list = crate::tools::list_tools(State(state.clone()), principal, ApiQuery(query)).await?;
    if list.tools.is_empty() && state.registry.server_status(&server).is_err() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no MCP server named `{server}`; GET /servers lists them"),
        ));
    }
    Ok(list)
}

/// Call a tool by its `server.tool` name (seed alias of `POST /v1/tools/{server}/{tool}`).
///
/// The server is what comes before the first `.` (server names have none);
/// the body, checks and answers are those of `POST /v1/tools/{server}/{tool}`.
#[utoipa::path(
    post, path = "/tools/{server}.{tool}", tag = "seed",
    params(("server" = String, Path, description = "Server name, e.g. everything"), ("tool" = String, Path, description = "The server's name for the tool, e.g. echo")),
    request_body = CallRequest,
    responses(
        (status = 200, description = "The tool's answer", body = CallResponse),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = NotFound),
        (status = 409, description = "The server is disabled", body = ErrorBody),
        (status = 415, response = NotJson),
        (status = 422, description = "The arguments do not match the tool's input schema; `details.violations` lists each", body = ErrorBody),
        (status = 502, description = "The tool reported an error, or the server failed; the message names the server", body = ErrorBody),
        (status = 504, description = "No answer within the server's timeout; the call was cancelled upstream", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn call_tool(
    state: State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
    body: ApiJson<CallRequest>,
) -> ApiResult<Json<CallResponse>> {
    let (server, tool) = split_tool_name(&name)?;
    crate::tools::call_tool(state, principal, ApiPath((server.to_owned(), tool.to_owned())), body).await
}

/// `server.tool` → (`server`, `tool`), split at the first `.`.
fn split_tool_name(name: &str) -> ApiResult<(&str, &str)> {
    match name.split_once('.') {
        Some((server, tool)) if !server.is_empty() && !tool.is_empty() => Ok((server, tool)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("`{name}` names no tool: call POST /tools/{{server}}.{{tool}}, e.g. /tools/everything.echo"),
        )),
    }
}

/// Submit a batch job (seed alias of `POST /v1/jobs/batch`).
///
/// The body and answers are those of `POST /v1/jobs/batch`; the 202 adds
/// `task_id`, the job id, which `/batch/status/{id}`, `/batch/result/{id}`
/// and `/batch/cancel/{id}` take.
#[utoipa::path(
    post, path = "/batch/execute", tag = "seed",
    request_body = BatchJobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe for 24 h; 1–255 visible ASCII characters", pattern = "^[!-~]{1,255}$")),
    responses(
        (status = 200, description = "`dry_run`: the plan the planner made and its analysis; nothing runs", body = crate::plans::PlanPreview),
        (status = 202, description = "Stored and queued", body = TaskAccepted,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 409, response = IdempotencyConflict),
        (status = 413, response = TooLarge), (status = 415, response = NotJson),
        (status = 422, description = "Invalid field, or a plan with problems (all listed in `details.issues`)", body = ErrorBody),
        (status = 502, description = "With `dry_run`: the planner model failed (`planner_unavailable`)", body = ErrorBody),
        (status = 503, response = crate::error::responses::Unavailable),
        (status = 504, description = "With `dry_run`: no plan in time (`timeout`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn batch_execute(
    state: State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<BatchJobRequest>,
) -> ApiResult<Response> {
    let response = crate::jobs::submit_batch(state, principal, headers, body).await?;
    if response.status() != StatusCode::ACCEPTED {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    // The answer is a small JobAccepted written by this process.
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(ApiError::internal)?;
    let mut accepted: Value = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
    if let Some(object) = accepted.as_object_mut()
        && let Some(id) = object.get("id").cloned()
    {
        object.insert("task_id".into(), id);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&accepted).map_err(ApiError::internal)?;
    Ok(Response::from_parts(parts, Body::from(body)).into_response())
}

/// Get a job's status (seed alias of `GET /v1/jobs/{id}`).
#[utoipa::path(
    get, path = "/batch/status/{id}", tag = "seed",
    params(("id" = String, Path, description = "The job id (`task_id`)")),
    responses(
        (status = 200, description = "The job", body = TaskView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn batch_status(
    state: State<AppState>,
    principal: Principal,
    id: ApiPath<String>,
) -> ApiResult<Json<TaskView>> {
    let Json(job) = crate::jobs::get_job(state, principal, id).await?;
    Ok(Json(TaskView { task_id: job.id, job }))
}

/// Get a finished job's result (seed alias of `GET /v1/jobs/{id}/result`).
///
/// 409 `job_not_finished` (with `Retry-After`) while the job is queued or running.
#[utoipa::path(
    get, path = "/batch/result/{id}", tag = "seed",
    params(("id" = String, Path, description = "The job id (`task_id`)")),
    responses(
        (status = 200, description = "The finished job's result or error", body = TaskResult),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "Not finished yet; `details.status` says where it is", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again"))),
    ),
    security(("bearer" = []))
)]
pub async fn batch_result(
    state: State<AppState>,
    principal: Principal,
    id: ApiPath<String>,
) -> ApiResult<Json<TaskResult>> {
    let Json(result) = crate::jobs::get_result(state, principal, id).await?;
    Ok(Json(TaskResult { task_id: result.id, result }))
}

/// Cancel a job (seed alias of `POST /v1/jobs/{id}/cancel`).
#[utoipa::path(
    delete, path = "/batch/cancel/{id}", tag = "seed",
    params(("id" = String, Path, description = "The job id (`task_id`)")),
    responses(
        (status = 200, description = "Cancelled, or cancellation requested", body = TaskView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "The job already finished", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn batch_cancel(
    state: State<AppState>,
    principal: Principal,
    id: ApiPath<String>,
) -> ApiResult<Json<TaskView>> {
    let Json(job) = crate::jobs::cancel_job(state, principal, id).await?;
    Ok(Json(TaskView { task_id: job.id, job }))
}

/// MCP servers and their state (seed alias of `GET /v1/servers`).
#[utoipa::path(
    get, path = "/servers", tag = "seed",
    responses((status = 200, body = ServerList), (status = 401, response = Unauthorized), (status = 403, response = Forbidden)),
    security(("bearer" = []))
)]
pub async fn list_servers(state: State<AppState>, principal: Principal) -> ApiResult<Json<ServerList>> {
    crate::servers::list_servers(state, principal).await
}

/// Re-read mcp-config.json and the stored servers (seed alias of `POST /v1/servers/reload`; admin).
#[utoipa::path(
    post, path = "/servers/reload", tag = "seed",
    responses((status = 200, body = ReloadView), (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 503, response = crate::error::responses::Unavailable)),
    security(("bearer" = []))
)]
pub async fn reload_servers(state: State<AppState>, principal: Principal) -> ApiResult<Json<ReloadView>> {
    crate::servers::reload_servers(state, principal).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_name_splits_at_its_first_dot() {
        assert_eq!(split_tool_name("everything.echo").unwrap(), ("everything", "echo"));
        assert_eq!(split_tool_name("fs.read.file").unwrap(), ("fs", "read.file"));
        for name in ["echo", ".echo", "everything.", ""] {
            assert_eq!(split_tool_name(name).unwrap_err().status, StatusCode::NOT_FOUND, "{name}");
        }
    }
}
