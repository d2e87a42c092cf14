//! Batch jobs from a plain-language `request`: checking what the caller
//! asked for (the request, the tools it allows, the planner model) into the
//! job's stored input, and planning synchronously for `dry_run` and
//! `POST /v1/plans`. The planning itself runs in a worker (orch-worker's
//! `planning`), like every model call: a synchronous preview is a job that
//! only plans, waited for here.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use orch_planner::Plan;
use orch_store::{JobKind, JobStatus};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{self, JobOptions};

/// What a caller gives instead of a plan.
pub struct PlanningAsk<'a> {
    pub request: &'a str,
    /// Tools (`server.tool`) allowed beyond the autoApprove ones.
    pub tools: Option<&'a [String]>,
    pub planner_model: Option<&'a str>,
    pub dry_run: bool,
}

/// 422 unless exactly one of `plan` and `request` is given.
pub fn plan_or_request<'a>(plan: Option<&'a Plan>, request: Option<&'a str>) -> ApiResult<Result<&'a Plan, &'a str>> {
    match (plan, request) {
        (Some(plan), None) => Ok(Ok(plan)),
        (None, Some(request)) => Ok(Err(request)),
        (Some(_), Some(_)) => Err(ApiError::invalid_field(
            "request",
            "give either a plan or a request (plain language for the planner), not both",
        )),
        (None, None) => Err(ApiError::invalid_field(
            "plan",
            "give a plan, or a request in plain language for the planner to turn into one",
        )),
    }
}

/// 422 naming `field` when a planner option comes with a plan.
pub fn only_with_request(field: &str, given: bool) -> ApiResult<()> {
    if given {
        return Err(ApiError::invalid_field(field, "is an option of the planner: use it with request, not with plan"));
    }
    Ok(())
}

/// The stored input of a batch job to be planned: the request and the tools
/// the planner may use (the caller's servers' autoApprove tools plus those it
/// named), checked.
pub fn planning_input(state: &AppState, principal: Option<&Principal>, ask: &PlanningAsk<'_>) -> ApiResult<Value> {
    if ask.request.trim().is_empty() {
        return Err(ApiError::invalid_field("request", "must not be empty: say what the job should do"));
    }
    if ask.request.len() > state.config.max_prompt_bytes {
        return Err(ApiError::invalid_field(
            "request",
            format!(
                "is {} bytes; the largest allowed is {} (ORCH_MAX_PROMPT_BYTES)",
                ask.request.len(),
                state.config.max_prompt_bytes
            ),
        ));
    }
    if let Some(model) = ask.planner_model
        && model != "auto"
        && state.router.target(model).is_err()
    {
        return Err(jobs::unknown_model(&state.router, "planner_model", model));
    }
    let usable: Vec<orch_mcp::ToolEntry> = state
        .registry
        .tools()
        .into_iter()
        .filter(|t| principal.is_none_or(|p| p.may_use_tool(&t.server, &t.tool.name)))
        .collect();
    let mut allowed: BTreeSet<String> = usable.iter().filter(|t| t.auto_approved).map(|t| t.name.clone()).collect();
    for (i, name) in ask.tools.unwrap_or_default().iter().enumerate() {
        if !usable.iter().any(|t| t.name == *name) {
            return Err(ApiError::invalid_field(
                &format!("tools[{i}]"),
                format!("unknown tool {name:?}; GET /v1/tools lists the tools you may use (`server.tool`)"),
            ));
        }
        allowed.insert(name.clone());
    }
    let mut planner = json!({"tools": allowed});
    if let Some(model) = ask.planner_model {
        planner["model"] = json!(model);
    }
    if ask.dry_run {
        planner["dry_run"] = json!(true);
    }
    Ok(json!({"request": ask.request, "planner": planner}))
}

/// A plan the planner made, waited for.
pub struct Planned {
    pub plan: Plan,
    /// Attempts, duration, tokens, whether it came from the cache.
    pub planning: Value,
    /// The job that planned.
    pub job_id: Uuid,
}

/// Plans now: stores a dry-run batch job for `input` (from [`planning_input`]
/// with `dry_run`), waits for it, and answers its plan. 422 `planning_failed`
/// with the last answer's problems when no attempt gave a valid plan.
pub async fn plan_now(
    state: &AppState,
    principal: Option<&Principal>,
    input: Value,
    metadata: &Option<Map<String, Value>>,
) -> ApiResult<Planned> {
    let metadata = Some(
        metadata.clone().unwrap_or_else(|| json!({"source": "plan_preview"}).as_object().cloned().unwrap_or_default()),
    );
    let options = JobOptions {
        metadata: &metadata,
        max_attempts: None,
        owner: jobs::owner_of(principal),
        jobs_per_day: crate::rate::jobs_per_day(&state.config, principal),
    };
    let (accepted, _) = jobs::submit_job(state, JobKind::Batch, input, options, || Ok(None)).await?;
    let id = accepted.id;
    let waited = tokio::time::timeout(state.config.chat_wait, async {
        let mut events = std::pin::pin!(jobs::follow_events(state.clone(), id, 0));
        let mut last_failure = Value::Null;
        while let Some(event) = futures::StreamExt::next(&mut events).await {
            if event.kind == "progress" && event.data["type"] == "planning_failed" {
                last_failure = event.data.clone();
            }
            if event.is_terminal() {
                return Some(last_failure);
            }
        }
        None
    })
    .await;
    let Ok(Some(failure)) = waited else {
        let _ = state.store.cancel_job(id).await;
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no plan within {} s; job {id} is cancelled", state.config.chat_wait.as_secs()),
        ));
    };
    let job = jobs::load(state, principal, &id.to_string()).await?;
    if job.status != JobStatus::Succeeded {
        let error = job
            .error
            .map_or_else(|| (String::new(), format!("planning ended {}", job.status)), |e| (e.code, e.message));
        if error.0 == "planning_failed" {
            let mut details = json!({"job_id": id, "attempts": failure["attempts"]});
            if let Some(issues) = failure.get("issues") {
                details["issues"] = issues.clone();
            }
            return Err(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "planning_failed", error.1).with_details(details)
            );
        }
        return Err(ApiError::new(StatusCode::BAD_GATEWAY, "planner_unavailable", format!("{}: {}", error.0, error.1))
            .with_details(json!({"job_id": id})));
    }
    let result = state.store.get_result(id).await?.unwrap_or(Value::Null);
    let plan: Plan = serde_json::from_value(result["plan"].clone()).map_err(ApiError::internal)?;
    Ok(Planned { plan, planning: result["planning"].clone(), job_id: id })
}
