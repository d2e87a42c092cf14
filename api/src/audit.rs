//! The audit log: every state-changing request (POST, PUT, PATCH, DELETE)
//! and every tool call is recorded with the key, route, target, time and
//! outcome; never a secret, a body or an argument value. Records are queued
//! and written in batches ([`orch_store::AuditLog`]). `GET /v1/audit` (admin)
//! lists them newest first with filters and a cursor.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{MatchedPath, RawPathParams};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use orch_store::{ApiKey, AuditEntry, AuditFilter, JobId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{ADMIN, Principal};
use crate::error::responses::{Forbidden, Invalid, Unauthorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;

/// Who made a request, filled in by the [`Principal`] extractor for the audit middleware.
#[derive(Clone, Default)]
pub struct Caller(Arc<Mutex<Option<(String, String)>>>);

impl Caller {
    pub fn set(&self, key: &ApiKey) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((key.id.clone(), key.name.clone()));
    }

    fn get(&self) -> (Option<String>, Option<String>) {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some((id, name)) => (Some(id), Some(name)),
            None => (None, None),
        }
    }
}

/// `ok` below 400, `denied` for 401 and 403, else `error`.
pub fn outcome(status: u16) -> &'static str {
    match status {
        0..=399 => "ok",
        401 | 403 => "denied",
        _ => "error",
    }
}

/// Records one tool call made outside a REST route (MCP `tools/call`, a plan's tool node).
pub struct ToolCall<'a> {
    pub key: Option<(&'a str, &'a str)>,
    /// `MCP` or `PLAN`.
    pub method: &'a str,
    /// The endpoint (`/mcp`, `/mcp/{server}`, `/sse/{server}`) or `plan`.
    pub route: &'a str,
    /// `server.tool`.
    pub tool: &'a str,
    pub job_id: Option<JobId>,
    pub outcome: &'a str,
}

impl ToolCall<'_> {
    pub fn entry(self) -> AuditEntry {
        AuditEntry {
            id: 0,
            at: Utc::now(),
            key_id: self.key.map(|k| k.0.to_owned()),
            key_name: self.key.map(|k| k.1.to_owned()),
            action: "tool_call".into(),
            method: self.method.into(),
            route: self.route.into(),
            target_kind: Some("tool".into()),
            target: Some(self.tool.into()),
            job_id: self.job_id,
            outcome: self.outcome.into(),
            status: None,
        }
    }
}

/// The kind of thing a route acts on, by its first segment after `/v1/`.
fn target_kind(route: &str) -> Option<&'static str> {
    // `/v1/...`, and the seed routes' `/tools`, `/batch`, `/servers`.
    let segment = route.trim_start_matches("/v1/").trim_start_matches('/').split('/').next().unwrap_or_default();
    Some(match segment {
        "jobs" | "batch" => "job",
        "keys" => "key",
        "servers" => "server",
        "tools" => "tool",
        "webhooks" => "webhook",
        "deliveries" => "delivery",
        "sessions" => "session",
        "plans" => "plan",
        "chat" => "chat",
        _ => return None,
    })
}

/// Records each state-changing request once it is answered. MCP endpoints
/// are left to the MCP handler, which records each `tools/call`.
pub async fn middleware(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = matched.as_ref().map_or_else(|| request.uri().path().to_owned(), |m| m.as_str().to_owned());
    let changes = matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    if !changes || route.starts_with("/mcp") || route.starts_with("/sse") || route.starts_with("/messages") {
        return next.run(request).await;
    }
    let caller = Caller::default();
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    let values: Vec<String> = params.map(|p| p.iter().map(|(_, v)| v.to_owned()).collect()).unwrap_or_default();
    // The seed route's one parameter is already `server.tool`.
    let tool_call = route == "/v1/tools/{server}/{tool}" || route == "/tools/{name}";
    let mut target = if values.is_empty() { None } else { Some(values.join(if tool_call { "." } else { "/" })) };
    // A created resource's id, from its Location (a job's status URL).
    if target.is_none()
        && let Some(location) = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok())
    {
        target = location.rsplit('/').next().filter(|s| !s.is_empty()).map(str::to_owned);
    }
    let status = response.status().as_u16();
    let (key_id, key_name) = caller.get();
    state.audit.record(AuditEntry {
        id: 0,
        at: Utc::now(),
        key_id,
        key_name,
        action: if tool_call { "tool_call" } else { "request" }.into(),
        method: method.as_str().to_owned(),
        target_kind: target_kind(&route).map(str::to_owned),
        route,
        target,
        job_id: None,
        outcome: outcome(status).into(),
        status: Some(status),
    });
    response
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditParams {
    /// Only records of this key id.
    pub key_id: Option<String>,
    /// `request` or `tool_call`.
    pub action: Option<String>,
    /// `job`, `tool`, `server`, `key`, `webhook`, `delivery`, `session`, `plan`, `chat`.
    pub target_kind: Option<String>,
    /// The job id, `server.tool`, server name or key id acted on.
    pub target: Option<String>,
    /// `ok`, `denied` or `error`.
    pub outcome: Option<String>,
    /// From this time (RFC 3339, inclusive).
    pub since: Option<String>,
    /// Before this time (RFC 3339, exclusive).
    pub until: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Records per page, 1–1000 (default 100).
    pub limit: Option<String>,
}

/// One page of audit records, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"records": [{"id": 42, "at": "2026-11-21T09:00:00Z", "key_id": "key_3f2a9c01b7de", "key_name": "n8n production", "action": "tool_call", "method": "POST", "route": "/v1/tools/{server}/{tool}", "target_kind": "tool", "target": "github.search_issues", "job_id": null, "outcome": "ok", "status": 200}], "next_cursor": "42"}))]
pub struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

fn parse_time(field: &str, text: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        ApiError::invalid_field(field, format!("{text:?} is not an RFC 3339 time like 2026-11-21T09:00:00Z"))
    })
}

fn one_of(field: &str, value: Option<String>, allowed: &[&str]) -> ApiResult<Option<String>> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(ApiError::invalid_field(field, format!("{v:?} is not allowed; allowed: {}", allowed.join(", "))))
        }
        v => Ok(v),
    }
}

/// The audit log (admin).
///
/// State-changing requests and tool calls, newest first: who (key id and
/// name), what (`method`, `route`, `target`), when and the outcome. Never
/// secrets or argument values. Records older than `ORCH_AUDIT_RETENTION`
/// are deleted.
#[utoipa::path(
    get, path = "/v1/audit", tag = "keys",
    params(AuditParams),
    responses(
        (status = 200, description = "One page of records", body = AuditPage),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn list_audit(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    principal.require(ADMIN)?;
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(text) => text.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
            ApiError::invalid_field("limit", format!("{text:?} is not a whole number from 1 to 1000"))
        })?,
    };
    let before = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::invalid_field("cursor", format!("{text:?} is not a cursor; pass the `next_cursor` of a page"))
        })?),
    };
    let filter = AuditFilter {
        key_id: params.key_id,
        action: one_of("action", params.action, &["request", "tool_call"])?,
        target_kind: params.target_kind,
        target: params.target,
        outcome: one_of("outcome", params.outcome, &["ok", "denied", "error"])?,
        since: params.since.as_deref().map(|t| parse_time("since", t)).transpose()?,
        until: params.until.as_deref().map(|t| parse_time("until", t)).transpose()?,
        before,
    };
    state.audit.flush().await;
    let records = state.store.list_audit(&filter, limit).await?;
    let next_cursor = (records.len() == limit).then(|| records.last().map(|r| r.id.to_string())).flatten();
    Ok(Json(AuditPage { records, next_cursor }))
}
