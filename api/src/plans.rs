//! Plan routes: validate and analyse a plan without running it
//! (`POST /v1/plans`), and draw a batch job's graph with node states
//! (`GET /v1/jobs/{id}/graph`), as JSON, Mermaid or Graphviz DOT.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use orch_planner::analysis::{self, Analysis, Estimates, NodeState};
use orch_planner::{Catalogue, Plan};
use orch_store::{JobKind, JobStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::error::responses::{BadRequest, Forbidden, NotFound, NotJson, Unauthorized};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::jobs;
use crate::json::ApiJson;
use crate::planning;

/// The tools the caller's plans may use: every listed tool of the servers
/// the key may use, with its input schema.
pub fn catalogue(state: &AppState, principal: Option<&Principal>) -> Catalogue {
    let tools = state
        .registry
        .tools()
        .into_iter()
        .filter(|t| principal.is_none_or(|p| p.may_use_tool(&t.server, &t.tool.name)))
        .map(|t| (t.name, Value::Object((*t.tool.input_schema).clone())))
        .collect();
    Catalogue { tools }
}

/// Validates a plan against the caller's tools; 422 lists every problem. A
/// tool node (or map template) naming a tool that exists but the key may not
/// use answers 403 `tool_not_allowed` naming `plan.nodes[i].tool`.
pub fn check_plan(state: &AppState, principal: Option<&Principal>, plan: &Plan) -> ApiResult<()> {
    if let Some(principal) = principal {
        for (i, node) in plan.nodes.iter().enumerate() {
            let named = [
                (format!("plan.nodes[{i}].tool"), node.tool.as_deref()),
                (format!("plan.nodes[{i}].map.node.tool"), node.map.as_ref().and_then(|m| m.node.tool.as_deref())),
            ];
            for (field, name) in named {
                let Some(name) = name else { continue };
                let Ok((server, tool)) = state.registry.resolve(name) else { continue };
                if let Err(mut err) = principal.require_tool(server, tool) {
                    err.message = format!("{field}: {}", err.message);
                    if let Some(details) = err.details.as_mut() {
                        details["field"] = serde_json::json!(field);
                    }
                    return Err(err);
                }
            }
        }
    }
    let issues = orch_planner::validate_with(plan, Some(&catalogue(state, principal)), &state.config.plan_limits);
    if issues.is_empty() { Ok(()) } else { Err(jobs::plan_error(issues)) }
}

/// A plan to check, or a request for the planner to turn into one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({"plan": {"nodes": [
        {"id": "a", "sleep": {"ms": 100}},
        {"id": "b", "sleep": {"ms": 200}},
        {"id": "merge", "value": ["{{nodes.a.output}}", "{{nodes.b.output}}"]}
    ]}}),
    json!({"request": "Fetch this week's GitHub issues of orch/orch and write a summary page to Notion", "tools": ["notion.create_page"]})
))]
pub struct PlanRequest {
    /// The plan to check; or give `request` instead.
    #[serde(default)]
    pub plan: Option<Plan>,
    /// Instead of `plan`: what to do, in plain language; the planner answers a
    /// plan over the allowed tools (the servers' `autoApprove` tools and `tools`).
    #[serde(default)]
    pub request: Option<String>,
    /// With `request`: tools (`server.tool`) the planner may use besides the `autoApprove` ones.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// With `request`: the model that plans, as chat's `model`.
    #[serde(default)]
    pub planner_model: Option<String>,
}

/// The answer for a valid plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanPreview {
    /// Always true (an invalid plan answers 422).
    pub valid: bool,
    /// The plan the planner made (for a `request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// How the plan was made: `attempts`, `duration_ms`, `usage` (tokens),
    /// `cached`, `routed_to`, `tools_offered`, `tools_allowed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub planning: Option<Value>,
    /// The job that planned (for a `request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<uuid::Uuid>,
    pub analysis: Analysis,
    /// The graph as a Mermaid flowchart.
    pub mermaid: String,
}

/// The preview of a valid plan; with `planning`, a plan the planner made.
pub fn preview(state: &AppState, plan: Plan, planning: Option<Value>, job_id: Option<uuid::Uuid>) -> PlanPreview {
    let estimates = Estimates { tools: state.registry.tool_latencies(), ..Estimates::default() };
    let analysis = analysis::analyse(&plan, &estimates);
    let mermaid = analysis::mermaid(&plan, None);
    let plan = planning.is_some().then_some(plan);
    PlanPreview { valid: true, plan, planning, job_id, analysis, mermaid }
}

/// How to answer.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GraphFormat {
    #[default]
    Json,
    Mermaid,
    Dot,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatQuery {
    /// `json` (default), `mermaid` (text/vnd.mermaid) or `dot` (text/vnd.graphviz).
    pub format: Option<GraphFormat>,
}

fn text(content_type: &'static str, body: String) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Validate and analyse a plan.
///
/// Checks the plan as `POST /v1/jobs/batch` would (ids, references,
/// dependencies and cycles, tools and their arguments against each tool's
/// input schema, limits) and, when valid, answers its topological levels,
/// width, critical path and estimated duration (from the tools' recorded
/// latencies), with the graph as Mermaid, or only the graph with
/// `?format=mermaid|dot`. Nothing runs.
///
/// With `request` instead of `plan`, the planner first turns the request into
/// a plan (synchronously, in a worker, as a batch job that only plans) and the
/// answer adds the `plan`, how it was made (`planning`) and the `job_id`.
#[utoipa::path(
    post, path = "/v1/plans", tag = "plans",
    request_body = PlanRequest,
    params(FormatQuery),
    responses(
        (status = 200, description = "The plan is valid: its analysis (or its graph as text with `?format=`)",
            content((PlanPreview = "application/json", example = json!({"valid": true, "analysis": {"levels": [["a", "b"], ["merge"]], "width": 2, "depth": 2, "critical_path": ["b", "merge"], "estimated_ms": 200.0, "total_work_ms": 300.0, "node_estimates_ms": {"a": 100.0, "b": 200.0, "merge": 0.0}}, "mermaid": "flowchart TD\n    n0[\"a<br/>sleep 100ms\"]\n    n1[\"b<br/>sleep 200ms\"]\n    n2[\"merge<br/>value\"]\n    n0 --> n2\n    n1 --> n2\n"})), (String = "text/vnd.mermaid"), (String = "text/vnd.graphviz"))),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 415, response = NotJson),
        (status = 422, description = "The plan has problems, all listed in `details.issues` with their fields; or (`planning_failed`) the planner gave no valid plan in its attempts, the last answer's problems in `details.issues`", body = ErrorBody,
            example = json!({"error": {"code": "invalid_plan", "message": "plan.nodes[1].tool: node \"b\": unknown tool \"test.nope\"; GET /v1/tools lists the tools (`server.tool`)", "details": {"field": "plan.nodes[1].tool", "issues": [{"field": "plan.nodes[1].tool", "message": "node \"b\": unknown tool \"test.nope\"; GET /v1/tools lists the tools (`server.tool`)"}]}}})),
        (status = 502, description = "The planner model failed (`planner_unavailable`)", body = ErrorBody),
        (status = 504, description = "No plan in time (`timeout`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn preview_plan(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<FormatQuery>,
    body: ApiJson<PlanRequest>,
) -> ApiResult<Response> {
    principal.require("jobs:write")?;
    let req = &body.value;
    let (plan, planned) = match planning::plan_or_request(req.plan.as_ref(), req.request.as_deref())? {
        Ok(plan) => {
            planning::only_with_request("tools", req.tools.is_some())?;
            planning::only_with_request("planner_model", req.planner_model.is_some())?;
            check_plan(&state, Some(&principal), plan)?;
            (plan.clone(), None)
        }
        Err(request) => {
            let ask = planning::PlanningAsk {
                request,
                tools: req.tools.as_deref(),
                planner_model: req.planner_model.as_deref(),
                dry_run: true,
            };
            let input = planning::planning_input(&state, Some(&principal), &ask)?;
            let planned = planning::plan_now(&state, Some(&principal), input, &None).await?;
            (planned.plan, Some((planned.planning, planned.job_id)))
        }
    };
    Ok(match query.format.unwrap_or_default() {
        GraphFormat::Mermaid => text("text/vnd.mermaid; charset=utf-8", analysis::mermaid(&plan, None)),
        GraphFormat::Dot => text("text/vnd.graphviz; charset=utf-8", analysis::dot(&plan, None)),
        GraphFormat::Json => {
            let (planning, job_id) = planned.unzip();
            Json(preview(&state, plan, planning, job_id)).into_response()
        }
    })
}

/// A batch job's graph and where each node is.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"job": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "status": "running", "nodes": {"a": {"status": "succeeded", "duration_ms": 101.2}, "b": {"status": "running"}, "merge": {"status": "pending"}}, "edges": [["a", "merge"], ["b", "merge"]]}))]
pub struct JobGraph {
    pub job: String,
    /// The job's status.
    pub status: String,
    /// Each node's state: `pending`, `running`, `succeeded`, `failed`, `cancelled`, `skipped`.
    pub nodes: HashMap<String, NodeState>,
    /// Dependencies as `[from, to]`.
    pub edges: Vec<(String, String)>,
}

/// Node states from the job's progress events (the last word per node wins).
fn node_states(plan: &Plan, events: &[orch_store::JobEvent]) -> HashMap<String, NodeState> {
    let mut states: HashMap<String, NodeState> =
        plan.nodes.iter().map(|n| (n.id.clone(), NodeState { status: "pending".into(), duration_ms: None })).collect();
    for event in events.iter().filter(|e| e.kind == "progress") {
        let (Some(node), Some(status)) = (event.data["node"].as_str(), event.data["status"].as_str()) else { continue };
        let Some(state) = states.get_mut(node) else { continue };
        state.status = match status {
            "started" | "retrying" => "running".into(),
            other => other.into(),
        };
        state.duration_ms = event.data["duration_ms"].as_f64();
    }
    states
}

/// Draw a batch job's graph.
///
/// The job's plan with each node's state and duration so far (from the job's
/// progress events), as JSON, or with `?format=mermaid|dot` as a coloured graph.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/graph", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), FormatQuery),
    responses(
        (status = 200, description = "The graph (JSON), or with `?format=mermaid|dot` its text",
            content((JobGraph = "application/json"), (String = "text/vnd.mermaid"), (String = "text/vnd.graphviz"))),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "The job is a chat job: it has no graph", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn job_graph(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FormatQuery>,
) -> ApiResult<Response> {
    principal.require("jobs:read")?;
    let job = jobs::load(&state, Some(&principal), &id).await?;
    if job.kind != JobKind::Batch {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_batch_job",
            format!("job {id} is a chat job; only batch jobs have a graph"),
        ));
    }
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |e: &orch_store::JobEvent| e.seq);
        let page = state.store.events(job.id, after, 1000).await?;
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    // A planned job's plan is in its `planned` event (no nodes while it is planning).
    let stored = match job.input.get("plan") {
        Some(plan) => Some(plan.clone()),
        None => {
            events.iter().find(|e| e.kind == "progress" && e.data["type"] == "planned").map(|e| e.data["plan"].clone())
        }
    };
    let plan: Plan = match stored {
        Some(plan) => serde_json::from_value(plan).map_err(ApiError::internal)?,
        None => Plan { nodes: Vec::new(), max_parallel: None, output: None, input: None },
    };
    let mut states = node_states(&plan, &events);
    if job.status == JobStatus::Cancelled {
        for state in states.values_mut().filter(|s| s.status == "pending") {
            state.status = "skipped".into();
        }
    }
    Ok(match query.format.unwrap_or_default() {
        GraphFormat::Mermaid => text("text/vnd.mermaid; charset=utf-8", analysis::mermaid(&plan, Some(&states))),
        GraphFormat::Dot => text("text/vnd.graphviz; charset=utf-8", analysis::dot(&plan, Some(&states))),
        GraphFormat::Json => {
            let deps = orch_planner::dependencies(&plan);
            let edges = deps
                .iter()
                .enumerate()
                .flat_map(|(i, ds)| ds.iter().map(move |&d| (d, i)))
                .map(|(d, i)| (plan.nodes[d].id.clone(), plan.nodes[i].id.clone()))
                .collect();
            Json(JobGraph { job: job.id.to_string(), status: job.status.to_string(), nodes: states, edges })
                .into_response()
        }
    })
}

/// Get one node's output of a batch job.
///
/// The whole output of node `node`, as JSON. Outputs larger than the
/// worker's `ORCH_PLAN_INLINE_OUTPUT_BYTES` are stored once and shown in
/// events and the result as `{"$ref": "/v1/jobs/{id}/outputs/{node}", "bytes",
/// "sha256"}` (SHA-256 of this body); smaller ones are answered from the
/// node's last progress event. Available as soon as the node finished.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/outputs/{node}", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), ("node" = String, Path, description = "Node id")),
    responses(
        (status = 200, description = "The node's output", content_type = "application/json", body = Value),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, description = "No such job, or the node has no output (yet)", body = ErrorBody,
            example = json!({"error": {"code": "no_output", "message": "node \"fetch\" of job 019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11 has no output (yet)"}})),
    ),
    security(("bearer" = []))
)]
pub async fn node_output(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, node)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    principal.require("jobs:read")?;
    let job = jobs::load(&state, Some(&principal), &id).await?;
    let no_output =
        || ApiError::new(StatusCode::NOT_FOUND, "no_output", format!("node {node:?} of job {id} has no output (yet)"));
    if job.kind != JobKind::Batch {
        return Err(no_output());
    }
    let json = |text: String| ([(header::CONTENT_TYPE, "application/json")], text).into_response();
    if let Some(text) = state.store.get_output(job.id, &node).await? {
        return Ok(json(text));
    }
    // Small outputs travel in the node's events: the last finished one wins.
    let mut output = None;
    let mut after = 0;
    loop {
        let page = state.store.events(job.id, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in page.iter().filter(|e| e.kind == "progress" && e.data["node"] == node.as_str()) {
            if let Some(value) = event.data.get("output")
                && ["succeeded", "failed"].contains(&event.data["status"].as_str().unwrap_or(""))
            {
                output = Some(value.clone());
            }
        }
    }
    let output = output.ok_or_else(no_output)?;
    Ok(json(serde_json::to_string(&output).map_err(ApiError::internal)?))
}
