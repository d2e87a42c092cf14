//! Job routes: submit chat and batch jobs, read, list, cancel, result, events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use orch_planner::{Plan, PlanIssue};
use orch_store::{Idempotency, Inserted, Job, JobEvent, JobFilter, JobId, JobKind, JobStatus, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::responses::{
    BadRequest, Forbidden, IdempotencyConflict, Invalid, NotFound, NotJson, TooLarge, Unauthorized, Unavailable,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::json::ApiJson;
use crate::planning;
use crate::{ApiConfig, AppState};

/// Highest `max_attempts` a job may ask for.
pub const MAX_ATTEMPTS: u32 = 20;
/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A chat job: one turn of a conversation.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model": "auto", "task_type": "reasoning", "messages": [{"role": "user", "content": "Summarise this week's issues"}], "metadata": {"workflow": "weekly-report"}}))]
pub struct ChatJobRequest {
    /// Where the turn runs: `provider/model` (e.g. `claude/sonnet`), a provider
    /// (`claude`, `gemini`, `codex`, `qwen`, or a configured one), or `auto`
    /// (routed by task type). `GET /v1/models` lists them. Default: the
    /// configured `routing.default_model` (`auto` unless changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub model: Option<String>,
    /// For `auto`: `coding`, `reasoning`, `planning`, `fast` or `general`;
    /// inferred from the prompt when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// Most agent turns the CLI may take (1–100; Claude's `--max-turns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_turns: Option<u32>,
    /// The most this turn may cost, in US dollars (more than 0, at most
    /// 1000): Claude stops a turn that passes it (`--max-budget-usd`, cost at
    /// API rates; the provider's `limits.max_budget_usd` is the upper bound)
    /// and the job fails with `budget_exceeded`. Other CLIs report no cost
    /// and run uncapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 1000)]
    pub max_budget_usd: Option<f64>,
    /// Continue this conversation (or start it): earlier turns are given to the
    /// provider and this one is added. Same as the `X-Session-ID` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The conversation so far; the last `user` message is answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Shorthand for a single user message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Free-form object returned with the job as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Attempts before the job fails for good (1–20, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 20)]
    pub max_attempts: Option<u32>,
    /// Where to POST when the job ends (see the webhooks tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<crate::webhooks::CallbackRequest>,
    /// Title of the note in the webhook payload (default: the prompt's first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Tags of the note in the webhook payload's front matter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Vault path of the note, e.g. `Inbox/{date}-{slug}.md` (default: ORCH_WEBHOOK_OBSIDIAN_PATH, `Inbox/{date}-{slug}-{id}.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obsidian_path: Option<String>,
}

/// A batch job: a plan of steps run as a DAG, or a `request` in plain
/// language that the LLM planner turns into one.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"plan": {"nodes": [{"id": "wait", "sleep": {"ms": 200}}, {"id": "hello", "echo": "hello", "depends_on": ["wait"]}]}, "metadata": {"source": "swagger"}}))]
pub struct BatchJobRequest {
    /// The plan to run; or give `request` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Instead of `plan`: what the job should do, in plain language. A worker
    /// asks the planner model for a plan over the allowed tools, validates it
    /// (asking again with the problems, a bounded number of times), then runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// With `request`: tools (`server.tool`) the planner may use besides the
    /// servers' `autoApprove` tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// With `request`: the model that plans, as chat's `model`; default: the
    /// routing's default with task type `planning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner_model: Option<String>,
    /// With `request`: answer 200 with the plan (and its analysis) without running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Free-form object returned with the job as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Attempts before the job fails for good (1–20, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 20)]
    pub max_attempts: Option<u32>,
    /// Where to POST when the job ends (see the webhooks tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<crate::webhooks::CallbackRequest>,
    /// Title of the note in the webhook payload (default: the prompt's first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Tags of the note in the webhook payload's front matter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Vault path of the note, e.g. `Inbox/{date}-{slug}.md` (default: ORCH_WEBHOOK_OBSIDIAN_PATH, `Inbox/{date}-{slug}-{id}.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obsidian_path: Option<String>,
}

impl ChatJobRequest {
    /// The webhook fields; `key_secret` signs a callback without its own secret.
    pub fn webhook_fields(&self, key_secret: Option<String>) -> crate::webhooks::WebhookFields<'_> {
        crate::webhooks::WebhookFields {
            callback: &self.callback,
            title: &self.title,
            tags: &self.tags,
            obsidian_path: &self.obsidian_path,
            key_secret,
        }
    }
}

impl BatchJobRequest {
    /// The webhook fields; `key_secret` signs a callback without its own secret.
    pub fn webhook_fields(&self, key_secret: Option<String>) -> crate::webhooks::WebhookFields<'_> {
        crate::webhooks::WebhookFields {
            callback: &self.callback,
            title: &self.title,
            tags: &self.tags,
            obsidian_path: &self.obsidian_path,
            key_secret,
        }
    }
}

/// Options every job accepts.
pub struct JobOptions<'a> {
    pub metadata: &'a Option<Map<String, Value>>,
    pub max_attempts: Option<u32>,
    /// The key submitting the job (its id; `local` over stdio MCP): only it
    /// (and keys that read all) may see the job.
    pub owner: &'a str,
    /// The owner's quota of jobs a UTC day (0: unlimited), see [`crate::rate::jobs_per_day`].
    pub jobs_per_day: u32,
}

/// The owner a caller's jobs get: its key id, or `local` over stdio MCP.
pub fn owner_of(principal: Option<&Principal>) -> &str {
    principal.map_or(LOCAL_OWNER, |p| p.key.id.as_str())
}

/// Owner of the jobs submitted over stdio MCP (`orch mcp`), which has no key.
pub const LOCAL_OWNER: &str = "local";

/// Answer to a submission: where to follow the job.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "status": "queued", "status_url": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "result_url": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/result", "events_url": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/events"}))]
pub struct JobAccepted {
    pub id: Uuid,
    #[schema(value_type = JobStatusSchema)]
    pub status: JobStatus,
    pub status_url: String,
    pub result_url: String,
    pub events_url: String,
}

/// Where a job is: `queued` → `running` → `succeeded` | `failed` | `cancelled`
/// (a failed attempt with attempts left goes back to `queued`).
#[derive(ToSchema)]
#[schema(as = JobStatus)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum JobStatusSchema {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// What a job runs: a chat turn or a batch plan.
#[derive(ToSchema)]
#[schema(as = JobKind)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum JobKindSchema {
    Chat,
    Batch,
    Delivery,
}

/// The error of a failed attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobErrorView {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// A job's state.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "batch", "status": "running", "attempts": 1, "max_attempts": 3, "progress": {"completed": 1, "total": 2, "node": "wait", "status": "succeeded"}, "error": null, "metadata": {"source": "swagger"}, "cancel_requested": false, "created_at": "2026-11-21T09:00:00.000Z", "updated_at": "2026-11-21T09:00:00.250Z", "started_at": "2026-11-21T09:00:00.010Z", "finished_at": null}))]
pub struct JobView {
    pub id: Uuid,
    #[schema(value_type = JobKindSchema)]
    pub kind: JobKind,
    #[schema(value_type = JobStatusSchema)]
    pub status: JobStatus,
    /// Attempts started so far.
    pub attempts: u32,
    pub max_attempts: u32,
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    /// The last attempt's error; while a retry is queued it says why.
    pub error: Option<JobErrorView>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Cancellation was asked for and the worker is stopping the job.
    pub cancel_requested: bool,
    /// The worker running the job (`host-pid-suffix`), while it runs.
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the current or last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> JobView {
        JobView {
            id: job.id,
            kind: job.kind,
            status: job.status,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            progress: job.progress,
            error: job.error.map(|e| JobErrorView { code: e.code, message: e.message, retryable: e.retryable }),
            metadata: job.metadata,
            cancel_requested: job.cancel_requested,
            worker: job.worker,
            created_at: job.created_at,
            updated_at: job.updated_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A finished job's outcome.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "status": "succeeded", "result": {"output": {"hello": "hello", "wait": {"slept_ms": 200}}}, "error": null}))]
pub struct JobResult {
    pub id: Uuid,
    #[schema(value_type = JobStatusSchema)]
    pub status: JobStatus,
    /// The output of a succeeded job.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<JobErrorView>,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// queued, running, succeeded, failed or cancelled.
    pub status: Option<String>,
    /// chat, batch or delivery (deliveries are listed only when asked for).
    pub kind: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `?status=` of a listing.
pub fn status_param(text: Option<&str>) -> ApiResult<Option<JobStatus>> {
    text.map(|s| s.parse::<JobStatus>().map_err(|e| ApiError::invalid_field("status", e.to_string()))).transpose()
}

/// `?limit=` of a listing: 1–200, default 50.
pub fn page_limit(text: Option<&str>) -> ApiResult<usize> {
    match text {
        None => Ok(50),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=200).contains(l))
            .ok_or_else(|| ApiError::invalid_field("limit", format!("must be a number from 1 to 200; got {l:?}"))),
    }
}

/// `?cursor=` of a job listing: the `next_cursor` (a job id) of the page before.
pub fn job_cursor(text: Option<&str>) -> ApiResult<Option<JobId>> {
    text.map(|c| JobId::parse_str(c).map_err(|_| ApiError::invalid_field("cursor", "not a cursor from next_cursor")))
        .transpose()
}

/// The job's URLs: absolute from `ORCH_PUBLIC_URL` or the request (see
/// [`crate::links`]), relative when neither says where Orch is.
fn urls(state: &AppState, id: JobId) -> (String, String, String) {
    let base = format!("{}/v1/jobs/{id}", crate::links::base(&state.config.public_url));
    (base.clone(), format!("{base}/result"), format!("{base}/events"))
}

fn check_options(options: &JobOptions<'_>, default_attempts: u32) -> ApiResult<u32> {
    let attempts = options.max_attempts.unwrap_or(default_attempts);
    if !(1..=MAX_ATTEMPTS).contains(&attempts) {
        return Err(ApiError::invalid_field(
            "max_attempts",
            format!("must be between 1 and {MAX_ATTEMPTS}; got {attempts}"),
        ));
    }
    Ok(attempts)
}

/// 400 for a model no configured provider offers, listing those that are.
pub fn unknown_model(router: &orch_providers::Router, field: &str, model: &str) -> ApiError {
    let configured = router.model_names();
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unknown_model",
        format!("{field}: unknown model {model:?}; configured: {}", configured.join(", ")),
    )
    .with_details(json!({"field": field, "configured": configured}))
}

/// 422 for a model text that could never name a model (a leading `-`, spaces,
/// control characters): such text must never reach a CLI's command line.
pub fn check_model_shape(field: &str, text: &str) -> ApiResult<()> {
    // A bare provider name is looked up, never passed on; the model after `/` is.
    match text.split_once('/') {
        Some((_, model)) => orch_providers::check_model_name(model).map_err(|m| ApiError::invalid_field(field, m)),
        None => Ok(()),
    }
}

/// Checks `model` (None = the default) and `task_type` against the routing.
pub fn check_model(router: &orch_providers::Router, model: Option<&str>, task_type: Option<&str>) -> ApiResult<()> {
    if let Some(model) = model {
        check_model_shape("model", model)?;
        if model != "auto" && router.target(model).is_err() {
            return Err(unknown_model(router, "model", model));
        }
    }
    if let Some(task) = task_type
        && orch_providers::TaskType::parse(task).is_none()
    {
        return Err(ApiError::invalid_field(
            "task_type",
            format!("unknown task type {task:?}; allowed: {}", orch_providers::TaskType::NAMES),
        ));
    }
    Ok(())
}

/// Applies the key's provider allow-list to a chat job's `input`: a named
/// model of another provider is 403 naming `model`; otherwise the allowed
/// providers go into the input (`providers`) and the worker routes only
/// through them (`auto` walks only allowed providers, fallbacks too).
pub fn limit_providers(state: &AppState, principal: Option<&Principal>, input: &mut Value) -> ApiResult<()> {
    let Some(allowed) = principal.and_then(|p| p.key.providers.as_ref()) else { return Ok(()) };
    let model = input["model"].as_str().map_or_else(|| state.router.config().default_model.clone(), str::to_owned);
    if model != "auto"
        && let Ok(target) = state.router.target(&model)
        && let Some(principal) = principal
    {
        principal.require_provider("model", &target.provider)?;
    }
    input["providers"] = json!(allowed);
    Ok(())
}

/// 413 when the messages together exceed the configured prompt size.
pub fn check_prompt_size(config: &ApiConfig, bytes: usize) -> ApiResult<()> {
    if bytes > config.max_prompt_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "prompt_too_large",
            format!(
                "messages: the prompt is {bytes} bytes; the largest allowed is {} (ORCH_MAX_PROMPT_BYTES)",
                config.max_prompt_bytes
            ),
        )
        .with_details(json!({"field": "messages", "limit": config.max_prompt_bytes})));
    }
    Ok(())
}

/// A turn's `max_budget_usd`: more than 0 and at most 1000 dollars.
pub fn check_budget(usd: Option<f64>) -> ApiResult<()> {
    match usd {
        Some(usd) if !(usd.is_finite() && usd > 0.0 && usd <= 1000.0) => Err(ApiError::invalid_field(
            "max_budget_usd",
            format!("must be more than 0 and at most 1000 (US dollars); got {usd}"),
        )),
        _ => Ok(()),
    }
}

fn check_chat(state: &AppState, req: &ChatJobRequest) -> ApiResult<()> {
    check_model(&state.router, req.model.as_deref(), req.task_type.as_deref())?;
    if let Some(turns) = req.max_turns
        && !(1..=100).contains(&turns)
    {
        return Err(ApiError::invalid_field("max_turns", format!("must be between 1 and 100; got {turns}")));
    }
    check_budget(req.max_budget_usd)?;
    if let Some(messages) = &req.messages {
        for (i, m) in messages.iter().enumerate() {
            if !["system", "user", "assistant"].contains(&m.role.as_str()) {
                return Err(ApiError::invalid_field(
                    &format!("messages[{i}].role"),
                    format!("unknown role {:?}; allowed: system, user, assistant", m.role),
                ));
            }
        }
    }
    let has_user = req.messages.iter().flatten().any(|m| m.role == "user");
    match (&req.prompt, has_user) {
        (Some(_), true) => {
            Err(ApiError::invalid_field("prompt", "give either prompt or messages with a user message, not both"))
        }
        (None, false) => Err(ApiError::invalid_field("messages", "give a user message in messages, or a prompt")),
        (Some(p), false) if p.trim().is_empty() => Err(ApiError::invalid_field("prompt", "must not be empty")),
        _ => Ok(()),
    }
}

pub(crate) fn plan_error(issues: Vec<PlanIssue>) -> ApiError {
    let first = &issues[0];
    let message = if issues.len() == 1 {
        format!("plan.{}: {}", first.field, first.message)
    } else {
        format!("plan.{}: {} (and {} more problems in details)", first.field, first.message, issues.len() - 1)
    };
    let list: Vec<Value> =
        issues.iter().map(|i| json!({"field": format!("plan.{}", i.field), "message": i.message})).collect();
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plan", message)
        .with_details(json!({"field": format!("plan.{}", first.field), "issues": list}))
}

fn idempotency(
    headers: &HeaderMap,
    principal: &Principal,
    kind: JobKind,
    raw: &[u8],
) -> ApiResult<Option<Idempotency>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::invalid_field("Idempotency-Key", "use 1–255 visible ASCII characters"))?;
    let mut hasher = Sha256::new();
    hasher.update(kind.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(raw);
    Ok(Some(Idempotency {
        key: format!("{}:{key}", principal.key.id),
        body_hash: hex::encode(hasher.finalize()),
        expires_at: Utc::now() + chrono::Duration::from_std(IDEMPOTENCY_TTL).unwrap_or_default(),
    }))
}

/// Stores a validated job and says where to follow it; `true` when an
/// idempotency record replayed an earlier job. Shared by the REST handlers and
/// the MCP `submit_job` tool. `idempotency` runs after the options are checked,
/// so errors come in the same order on every path.
pub async fn submit_job(
    state: &AppState,
    kind: JobKind,
    input: Value,
    options: JobOptions<'_>,
    idempotency: impl FnOnce() -> ApiResult<Option<Idempotency>>,
) -> ApiResult<(JobAccepted, bool)> {
    let max_attempts = check_options(&options, state.config.default_max_attempts)?;
    let now = Utc::now();
    let mut input = input;
    // The worker builds the webhook payload's links without a request: it
    // finds the base URL the client used here.
    if let (true, Some(base), Some(fields)) =
        (state.config.public_url.is_empty(), crate::links::current(), input.as_object_mut())
    {
        fields.insert(orch_webhooks::LINKS_BASE.to_owned(), json!(base));
    }
    let job = NewJob {
        id: orch_store::new_job_id(),
        kind,
        input,
        metadata: Value::Object(options.metadata.clone().unwrap_or_default()),
        max_attempts,
        created_at: now,
        run_at: now,
        idempotency: idempotency()?,
        owner: Some(options.owner.to_owned()),
    };
    let (job, replayed) = match state.store.insert_job_within(job, options.jobs_per_day).await? {
        Inserted::Created(job) => {
            metrics::counter!("orch_jobs_total", "kind" => kind.as_str(), "status" => "queued").increment(1);
            tracing::info!(job_id = %job.id, kind = kind.as_str(), "job accepted");
            (job, false)
        }
        Inserted::Existing(job) => (job, true),
        Inserted::Conflict { job_id } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!(
                    "this Idempotency-Key was used for job {job_id} with a different body; use a new key for a new job"
                ),
            )
            .with_details(json!({"job_id": job_id})));
        }
        Inserted::OverQuota { limit, resets_at } => return Err(crate::rate::over_quota(limit, resets_at)),
    };
    let (status_url, result_url, events_url) = urls(state, job.id);
    Ok((JobAccepted { id: job.id, status: job.status, status_url, result_url, events_url }, replayed))
}

async fn submit(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    kind: JobKind,
    raw: &[u8],
    input: Value,
    options: JobOptions<'_>,
) -> ApiResult<Response> {
    let (accepted, replayed) =
        submit_job(state, kind, input, options, || idempotency(headers, principal, kind, raw)).await?;
    let status_url = accepted.status_url.clone();
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The input of a chat job: the request checked and its messages normalised
/// (system prompt first, `prompt` as the last user message).
pub fn chat_input(state: &AppState, req: &ChatJobRequest) -> ApiResult<Value> {
    check_chat(state, req)?;
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(system) = &req.system {
        messages.push(ChatMessage { role: "system".into(), content: system.clone() });
    }
    messages.extend(req.messages.iter().flatten().cloned());
    if let Some(prompt) = &req.prompt {
        messages.push(ChatMessage { role: "user".into(), content: prompt.clone() });
    }
    check_prompt_size(&state.config, messages.iter().map(|m| m.content.len()).sum())?;
    let mut input = json!({"messages": messages});
    for (name, value) in [
        ("model", json!(req.model)),
        ("task_type", json!(req.task_type)),
        ("max_turns", json!(req.max_turns)),
        ("max_budget_usd", json!(req.max_budget_usd)),
    ] {
        if !value.is_null() {
            input[name] = value;
        }
    }
    Ok(input)
}

/// The submitting key's id and name in a batch job's input (`key`), so the
/// worker's audit records of the plan's tool calls name it.
fn with_key(mut input: Value, principal: Option<&Principal>) -> Value {
    if let Some(p) = principal {
        input["key"] = json!({"id": p.key.id, "name": p.key.name});
    }
    input
}

/// The input of a batch job: the plan, validated against the tools the
/// caller may use, or the request to plan with its planner options.
pub fn batch_input(state: &AppState, principal: Option<&Principal>, req: &BatchJobRequest) -> ApiResult<Value> {
    match planning::plan_or_request(req.plan.as_ref(), req.request.as_deref())? {
        Ok(plan) => {
            planning::only_with_request("tools", req.tools.is_some())?;
            planning::only_with_request("planner_model", req.planner_model.is_some())?;
            planning::only_with_request("dry_run", req.dry_run.is_some())?;
            crate::plans::check_plan(state, principal, plan)?;
            Ok(with_key(json!({"plan": plan}), principal))
        }
        Err(request) => {
            let ask = planning::PlanningAsk {
                request,
                tools: req.tools.as_deref(),
                planner_model: req.planner_model.as_deref(),
                dry_run: req.dry_run == Some(true),
            };
            planning::planning_input(state, principal, &ask).map(|input| with_key(input, principal))
        }
    }
}

/// Submit a chat job.
///
/// Stores the job durably, then answers 202 with the URLs to follow it.
/// A repeat with the same `Idempotency-Key` and body within 24 h returns the
/// first job (header `Idempotent-Replayed: true`).
#[utoipa::path(
    post, path = "/v1/jobs/chat", tag = "jobs",
    request_body = ChatJobRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe for 24 h; 1–255 visible ASCII characters", pattern = "^[!-~]{1,255}$"),
        ("X-Session-ID" = Option<String>, Header, description = "Continue (or start) this conversation; 1–128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit", pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
    ),
    responses(
        (status = 202, description = "Stored and queued", body = JobAccepted,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = IdempotencyConflict),
        (status = 413, response = TooLarge),
        (status = 415, response = NotJson),
        (status = 422, response = Invalid),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn submit_chat(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<ChatJobRequest>,
) -> ApiResult<Response> {
    principal.require("jobs:write")?;
    let req = &body.value;
    let mut input = chat_input(&state, req)?;
    input["key_id"] = json!(principal.key.id);
    limit_providers(&state, Some(&principal), &mut input)?;
    if let Some(id) = session_of(&headers, req.session_id.as_ref())? {
        crate::sessions::attach(&state, Some(&principal), &mut input, &id).await?;
    }
    let key_secret = crate::webhooks::key_signing_secret(&headers);
    let input = crate::webhooks::attach(&state, input, req.webhook_fields(key_secret)).await?;
    let options = JobOptions {
        metadata: &req.metadata,
        max_attempts: req.max_attempts,
        owner: &principal.key.id,
        jobs_per_day: crate::rate::jobs_per_day(&state.config, Some(&principal)),
    };
    submit(&state, &principal, &headers, JobKind::Chat, &body.raw, input, options).await
}

/// The session a chat request names: the `X-Session-ID` header or the
/// `session_id` field (both only when equal).
pub fn session_of(headers: &HeaderMap, field: Option<&String>) -> ApiResult<Option<String>> {
    let header = headers.get("x-session-id").map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned());
    match (header, field) {
        (Some(h), Some(b)) if h != *b => {
            Err(ApiError::invalid_field("session_id", "differs from the X-Session-ID header; give one"))
        }
        (h, b) => Ok(h.or_else(|| b.cloned())),
    }
}

/// Submit a batch job.
///
/// The plan is validated first (422 lists every problem in `details.issues`),
/// then stored durably and queued. With `request` instead of `plan`, the job
/// first asks the planner model for a plan over the allowed tools (progress
/// events `planning` per attempt and `planned` with the plan), then runs it;
/// the result adds `planning` (attempts, duration, tokens, cached). With
/// `dry_run: true` the answer is 200 with the plan and its analysis, and
/// nothing runs.
#[utoipa::path(
    post, path = "/v1/jobs/batch", tag = "jobs",
    request_body(content = BatchJobRequest, examples(
        ("plan" = (summary = "A plan", value = json!({"plan": {"nodes": [{"id": "wait", "sleep": {"ms": 200}}, {"id": "hello", "echo": "hello", "depends_on": ["wait"]}]}, "metadata": {"source": "swagger"}}))),
        ("request" = (summary = "A request for the planner", value = json!({"request": "List this week's GitHub issues of orch/orch, summarise each, and write one report page to Notion", "tools": ["notion.create_page"], "planner_model": "auto"}))),
        ("dry_run" = (summary = "Only plan", value = json!({"request": "Echo hello and wait 100 ms, in parallel", "dry_run": true}))),
    )),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe for 24 h; 1–255 visible ASCII characters", pattern = "^[!-~]{1,255}$")),
    responses(
        (status = 200, description = "`dry_run`: the plan the planner made and its analysis; nothing runs", body = crate::plans::PlanPreview),
        (status = 202, description = "Stored and queued", body = JobAccepted,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = IdempotencyConflict),
        (status = 413, response = TooLarge),
        (status = 415, response = NotJson),
        (status = 422, description = "Invalid field, or a plan with problems (all listed in `details.issues`)", body = ErrorBody,
            example = json!({"error": {"code": "invalid_plan", "message": "plan.nodes[1].depends_on[0]: node \"b\" depends on \"fetch\", but no node has that id", "details": {"field": "plan.nodes[1].depends_on[0]", "issues": [{"field": "plan.nodes[1].depends_on[0]", "message": "node \"b\" depends on \"fetch\", but no node has that id"}]}}})),
        (status = 503, response = Unavailable),
        (status = 502, description = "With `dry_run`: the planner model failed (`planner_unavailable`)", body = ErrorBody),
        (status = 504, description = "With `dry_run`: no plan in time (`timeout`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn submit_batch(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<BatchJobRequest>,
) -> ApiResult<Response> {
    principal.require("jobs:write")?;
    let key_secret = crate::webhooks::key_signing_secret(&headers);
    let input = batch_input(&state, Some(&principal), &body.value)?;
    if body.value.dry_run == Some(true) {
        let planned = planning::plan_now(&state, Some(&principal), input, &body.value.metadata).await?;
        return Ok(Json(crate::plans::preview(&state, planned.plan, Some(planned.planning), Some(planned.job_id)))
            .into_response());
    }
    let input = crate::webhooks::attach(&state, input, body.value.webhook_fields(key_secret)).await?;
    let options = JobOptions {
        metadata: &body.value.metadata,
        max_attempts: body.value.max_attempts,
        owner: &principal.key.id,
        jobs_per_day: crate::rate::jobs_per_day(&state.config, Some(&principal)),
    };
    submit(&state, &principal, &headers, JobKind::Batch, &body.raw, input, options).await
}

fn parse_id(id: &str) -> ApiResult<JobId> {
    JobId::parse_str(id).map_err(|_| ApiError::not_found("job", id))
}

/// The job with this id if `principal` may read it (`None`: the local
/// principal of stdio MCP, which reads every job); 404 as for an unknown id
/// otherwise, and for ids that are not job ids, so a key learns nothing about
/// another key's jobs.
pub async fn load(state: &AppState, principal: Option<&Principal>, id: &str) -> ApiResult<Job> {
    let job_id = parse_id(id)?;
    state
        .store
        .get_job(job_id)
        .await?
        .filter(|job| principal.is_none_or(|p| p.may_read(job.owner.as_deref())))
        .ok_or_else(|| ApiError::not_found("job", id))
}

/// The owner `list_jobs` filters by: none for keys that read all.
pub fn owner_filter(principal: Option<&Principal>) -> Option<String> {
    principal.filter(|p| !p.reads_all()).map(|p| p.key.id.clone())
}

/// Get a job's status.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobView>> {
    principal.require("jobs:read")?;
    Ok(Json(load(&state, Some(&principal), &id).await?.into()))
}

/// Get a finished job's result.
///
/// 409 `job_not_finished` (with `Retry-After`) while the job is queued or running.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The finished job's result or error", body = JobResult),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "Not finished yet; `details.status` says where it is", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again")),
            example = json!({"error": {"code": "job_not_finished", "message": "job 019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11 is running; poll its status_url or follow its events_url", "details": {"status": "running"}}})),
    ),
    security(("bearer" = []))
)]
pub async fn get_result(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobResult>> {
    principal.require("jobs:read")?;
    let job = load(&state, Some(&principal), &id).await?;
    if !job.status.is_terminal() {
        let mut err = ApiError::new(
            StatusCode::CONFLICT,
            "job_not_finished",
            format!("job {id} is {}; poll its status_url or follow its events_url", job.status),
        )
        .with_details(json!({"status": job.status}));
        err.retry_after = Some(1);
        return Err(err);
    }
    let result = if job.status == JobStatus::Succeeded { state.store.get_result(job.id).await? } else { None };
    let view = JobView::from(job);
    Ok(Json(JobResult { id: view.id, status: view.status, result, error: view.error }))
}

/// List jobs, newest first.
///
/// A key lists the jobs it submitted; `admin` and `jobs:read_all` keys list
/// every key's. Every route of a job answers 404 to any other key, as for an
/// unknown id.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobPage),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<JobPage>> {
    principal.require("jobs:read")?;
    let status = status_param(params.status.as_deref())?;
    let kind = params
        .kind
        .as_deref()
        .map(|s| s.parse::<JobKind>().map_err(|e| ApiError::invalid_field("kind", e.to_string())))
        .transpose()?;
    let limit = page_limit(params.limit.as_deref())?;
    let before = job_cursor(params.cursor.as_deref())?;
    let owner = owner_filter(Some(&principal));
    let jobs = state.store.list_jobs(&JobFilter { owner, status, kind, before, limit }).await?;
    let next_cursor = (jobs.len() == limit).then(|| jobs.last().map(|j| j.id.to_string())).flatten();
    Ok(Json(JobPage { jobs: jobs.into_iter().map(JobView::from).collect(), next_cursor }))
}

/// Cancel a job.
///
/// A queued job is cancelled at once and never starts. A running job gets
/// `cancel_requested: true` and its worker stops it within a heartbeat; its
/// status becomes `cancelled` then. A finished job answers 409.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled, or cancellation requested", body = JobView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "The job already finished", body = ErrorBody,
            example = json!({"error": {"code": "job_finished", "message": "job 019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11 already succeeded", "details": {"status": "succeeded"}}})),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobView>> {
    principal.require("jobs:write")?;
    let job_id = parse_id(&id)?;
    let before = state
        .store
        .get_job(job_id)
        .await?
        .filter(|job| principal.may_change(job.owner.as_deref()))
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    if before.status.is_terminal() {
        return Err(ApiError::new(StatusCode::CONFLICT, "job_finished", format!("job {id} already {}", before.status))
            .with_details(json!({"status": before.status})));
    }
    // Queued before the status can change, so no cancellation goes unreported.
    state.webhooks.enqueue(&before, JobStatus::Cancelled).await?;
    let job = state.store.cancel_job(job_id).await?.ok_or_else(|| ApiError::not_found("job", &id))?;
    // A queued job ends here; a running one ends in its worker, which counts it.
    if before.status == JobStatus::Queued && job.status == JobStatus::Cancelled {
        metrics::counter!("orch_jobs_total", "kind" => job.kind.as_str(), "status" => "cancelled").increment(1);
    }
    Ok(Json(job.into()))
}

/// Follow a job's events (Server-Sent Events).
///
/// Each event has `id` (its sequence number), `event` (`queued`, `running`,
/// `progress`, `retrying`, `succeeded`, `failed`, `cancelled`) and JSON `data`.
/// The stream ends after the terminal event. Reconnect with `Last-Event-ID`
/// (or `?last_event_id=`) to resume after the last event seen.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event", maximum = 9007199254740991.0),
        ("last_event_id" = Option<u64>, Query, description = "Same, for clients that cannot set headers", maximum = 9007199254740991.0),
    ),
    responses(
        (status = 200, description = "text/event-stream of job events (the schema is one event as an SSE parser reads it)", content_type = "text/event-stream", body = JobEventSse,
            example = json!("id: 1\nevent: queued\ndata: {\"job_id\":\"019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11\",\"seq\":1,\"type\":\"queued\",\"at\":\"2026-11-21T09:00:00.000Z\",\"data\":{\"status\":\"queued\"}}\n\n")),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn job_events(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    principal.require("jobs:read")?;
    let job = load(&state, Some(&principal), &id).await?;
    let from_header = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let after = match from_header.or(query.last_event_id) {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| ApiError::invalid_field("Last-Event-ID", "must be an event id (a whole number)"))?,
    };
    let stream = event_stream(state, job.id, after);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One Server-Sent Event of `GET /v1/jobs/{id}/events`, as an SSE parser reads it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JobEventSse {
    /// The event's sequence number; send it back as `Last-Event-ID` to resume after it.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// The event's type (as `type` in `data`).
    #[schema(value_type = JobEventType)]
    event: String,
    /// A JSON object: `job_id`, `seq`, `type`, `at` and the event's own `data`.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// What a job event says.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum JobEventType {
    Queued,
    Running,
    Progress,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    last_event_id: Option<String>,
}

fn event_stream(state: AppState, job_id: JobId, after: u64) -> impl Stream<Item = Result<Event, Infallible>> {
    follow_events(state, job_id, after).map(move |event| {
        let data = json!({"job_id": job_id, "seq": event.seq, "type": event.kind, "at": event.at, "data": event.data});
        Ok(Event::default().id(event.seq.to_string()).event(event.kind.clone()).data(data.to_string()))
    })
}

/// Events read from the store per read while following.
const FOLLOW_PAGE: usize = 100;

/// A job's events after `after` as they are written, ending after the
/// terminal event (or when the job is purged, the reader goes away, or the
/// server shuts down).
///
/// It waits on a wake-up for this one job ([`orch_store::Notifier::watch`],
/// across processes on Redis), so an idle follower reads nothing; it re-reads
/// on its own only every [`orch_store::Notifier::poll`] as a safety net. The
/// stream is driven by its reader: no task or channel of its own, and it
/// holds only the events of its latest read.
pub fn follow_events(state: AppState, job_id: JobId, after: u64) -> impl Stream<Item = JobEvent> {
    struct Follow {
        state: AppState,
        watch: orch_store::Watch,
        after: u64,
        pending: std::collections::VecDeque<JobEvent>,
        done: bool,
    }
    impl Drop for Follow {
        fn drop(&mut self) {
            followers_closed();
        }
    }
    let watch = state.store.notifier().watch(job_id);
    let follow = Follow { state, watch, after, pending: Default::default(), done: false };
    futures::stream::unfold(follow, move |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            if let Some(event) = f.pending.pop_front() {
                f.after = event.seq;
                if event.is_terminal() {
                    f.done = true;
                    f.pending = Default::default();
                }
                return Some((event, f));
            }
            let poll = f.state.store.notifier().poll();
            // Listen before reading, so a change in between still wakes us.
            let changed = f.watch.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match f.state.store.events(job_id, f.after, FOLLOW_PAGE).await {
                Ok(events) if !events.is_empty() => {
                    f.pending = events.into();
                    continue;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(job = %job_id, error = %err, "reading events failed"),
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(poll) => {
                    // Nothing woke us for a while: a purged job has no more events to give.
                    if matches!(f.state.store.get_job(job_id).await, Ok(None)) {
                        return None;
                    }
                }
                _ = f.state.shutdown.cancelled() => return None,
            }
        }
    })
}

/// Followers closed since memory was last given back.
static CLOSED_FOLLOWERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Closed followers after which freed memory is given back to the system.
const TRIM_AFTER: usize = 1_000;

/// Counts a closed follower; after [`TRIM_AFTER`] of them, gives the memory
/// the allocator keeps free back to the system. glibc's malloc keeps freed
/// chunks of its per-thread arenas for reuse, so after 10,000 followers
/// closed, the process kept their memory (issue 17); `malloc_trim` returns
/// the free pages (a few ms per call, at most once per 1,000 closed followers).
fn followers_closed() {
    use std::sync::atomic::Ordering;
    if CLOSED_FOLLOWERS.fetch_add(1, Ordering::Relaxed) + 1 < TRIM_AFTER {
        return;
    }
    CLOSED_FOLLOWERS.store(0, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        // Later, so the followers closing in the same burst are freed first.
        runtime.spawn(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // SAFETY: malloc_trim only releases free memory; it is thread-safe.
            tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) });
        });
    }
}

/// A stream fed by a task through a small channel.
pub fn async_stream<T, F, Fut>(produce: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
