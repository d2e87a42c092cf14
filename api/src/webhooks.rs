//! Webhook routes and the webhook fields of job submissions: job callbacks,
//! global subscriptions (`/v1/webhooks`), the delivery log and redelivery, and
//! a test send. The sending itself is `orch_webhooks`'.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use orch_store::{Job, JobFilter, JobId, JobKind, JobStatus, StoredWebhook};
use orch_webhooks::{Callback, DeliveryInput, JOB_EVENTS, PROGRESS_EVENT, SERVER_EVENTS, Secret, Subscription};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::error::responses::{BadRequest, Forbidden, Invalid, NotFound, NotJson, Unauthorized, Unavailable};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::jobs::JobErrorView;
use crate::json::ApiJson;

/// Where to POST when the job ends (an n8n Wait node's `{{$execution.resumeUrl}}`, or any URL).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://n8n.example.com/webhook-waiting/1234?signature=abc", "events": ["succeeded", "failed"], "headers": {"X-Flow": "weekly"}, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}))]
pub struct CallbackRequest {
    /// http(s) URL, used exactly as given (query string included). Internal
    /// addresses are refused unless ORCH_WEBHOOK_ALLOW allows them.
    pub url: String,
    /// Extra request headers. Never returned by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Which events to send: the endings `succeeded`, `failed`, `cancelled`
    /// (default: all three), and `progress` while the job runs (at most one
    /// per ORCH_WEBHOOK_PROGRESS_INTERVAL, never after the ending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// `whsec_<base64>`: signs each delivery (Standard Webhooks). Default: the
    /// `webhook_secret` of the submitting API key. Never returned by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The webhook-related fields every job submission accepts.
pub struct WebhookFields<'a> {
    pub callback: &'a Option<CallbackRequest>,
    pub title: &'a Option<String>,
    pub tags: &'a Option<Vec<String>>,
    pub obsidian_path: &'a Option<String>,
    /// The submitting API key's signing secret, for a callback without `secret`.
    pub key_secret: Option<String>,
}

/// The signing secret of the API key in `Authorization: Bearer <key>` (the
/// caller was authenticated already).
pub fn key_signing_secret(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    Some(Secret::for_api_key(key))
}

/// Checks the webhook fields and adds them to a job's input. The callback URL
/// is resolved and checked against the SSRF guard here, and again at every
/// delivery attempt.
pub async fn attach(state: &AppState, mut input: Value, fields: WebhookFields<'_>) -> ApiResult<Value> {
    if let Some(title) = fields.title {
        if title.trim().is_empty() || title.len() > 500 {
            return Err(ApiError::invalid_field("title", "give 1 to 500 characters"));
        }
        input["title"] = json!(title);
    }
    if let Some(tags) = fields.tags {
        for (i, tag) in tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > 100 || tag.chars().any(|c| c.is_whitespace() || c == ',') {
                return Err(ApiError::invalid_field(
                    &format!("tags[{i}]"),
                    format!("{tag:?} is not a tag; use 1 to 100 characters without spaces or commas"),
                ));
            }
        }
        input["tags"] = json!(tags);
    }
    if let Some(path) = fields.obsidian_path {
        check_obsidian_path(path)?;
        input["obsidian_path"] = json!(path);
    }
    if let Some(callback) = fields.callback {
        let events = events_of(callback.events.as_deref(), "callback.events", true)?;
        let headers = callback.headers.clone().unwrap_or_default();
        check_headers(&headers, "callback.headers")?;
        if let Some(secret) = &callback.secret {
            Secret::parse(secret).map_err(|e| ApiError::invalid_field("callback.secret", e))?;
        }
        // Last: it resolves the host.
        check_url(state, &callback.url, "callback.url").await?;
        let secret = callback.secret.clone().or(fields.key_secret);
        let stored = Callback { url: callback.url.clone(), headers, events, secret };
        input["callback"] = serde_json::to_value(stored).map_err(ApiError::internal)?;
    }
    Ok(input)
}

fn check_obsidian_path(path: &str) -> ApiResult<()> {
    orch_webhooks::payload::check_obsidian_path(path).map_err(|e| ApiError::invalid_field("obsidian_path", e))
}

/// A subscription's events: job events, `server.down` and the provider events.
fn subscription_events(events: &[String]) -> ApiResult<Vec<String>> {
    let (server, job): (Vec<&String>, Vec<&String>) = events.iter().partition(|e| SERVER_EVENTS.contains(&e.as_str()));
    let mut out = if job.is_empty() && !server.is_empty() {
        Vec::new()
    } else {
        let job: Vec<String> = job.into_iter().cloned().collect();
        events_of(Some(&job), "events", false).map_err(|e| {
            let extra = format!(", {}", SERVER_EVENTS.join(", "));
            ApiError {
                message: e.message.replace(
                    "allowed: succeeded, failed, cancelled, progress",
                    &format!("allowed: job.succeeded, job.failed, job.cancelled, job.progress{extra}"),
                ),
                ..e
            }
        })?
    };
    for event in server {
        if !out.contains(event) {
            out.push(event.clone());
        }
    }
    Ok(out)
}

/// Event names as given (`succeeded` or `job.succeeded`), as stored (`job.succeeded`).
fn events_of(events: Option<&[String]>, field: &str, default_all: bool) -> ApiResult<Vec<String>> {
    let Some(events) = events else {
        return if default_all {
            Ok(JOB_EVENTS.iter().map(|e| e.to_string()).collect())
        } else {
            Err(ApiError::invalid_field(field, format!("give at least one of {}", JOB_EVENTS.join(", "))))
        };
    };
    if events.is_empty() {
        return Err(ApiError::invalid_field(field, format!("give at least one of {}", JOB_EVENTS.join(", "))));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let full = if event.starts_with("job.") { event.clone() } else { format!("job.{event}") };
        if !JOB_EVENTS.contains(&full.as_str()) && full != PROGRESS_EVENT {
            return Err(ApiError::invalid_field(
                &format!("{field}[{i}]"),
                format!("unknown event {event:?}; allowed: succeeded, failed, cancelled, progress"),
            ));
        }
        if !out.contains(&full) {
            out.push(full);
        }
    }
    Ok(out)
}

async fn check_url(state: &AppState, url: &str, field: &str) -> ApiResult<()> {
    state.webhooks.check_url(url).await.map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_url", format!("{field}: {e}"))
            .with_details(json!({"field": field}))
    })
}

fn check_headers(headers: &BTreeMap<String, String>, field: &str) -> ApiResult<()> {
    for (name, value) in headers {
        orch_webhooks::check_header(name, value).map_err(|e| ApiError::invalid_field(&format!("{field}.{name}"), e))?;
    }
    Ok(())
}

// --- Global subscriptions ----------------------------------------------------

/// A global subscription: every job's chosen events go to this URL.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://n8n.example.com/webhook/orch-events", "events": ["job.succeeded", "job.failed"], "description": "all results to the archive flow"}))]
pub struct WebhookRequest {
    pub url: String,
    /// `job.succeeded`, `job.failed`, `job.cancelled`, `server.down` (an MCP server lost every connection),
    /// `provider.auth_expired` (a turn was refused for the provider's credential; once per incident),
    /// `provider.auth_expiring` (a known credential expiry entered ORCH_TOKEN_WARN_DAYS; once per expiry).
    /// Provider events carry the `ProviderEventPayload` schema.
    pub events: Vec<String>,
    /// Extra request headers. Never returned by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A subscription (its secret and headers are never shown again).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "wh_019a8a5e3c1e7d3a9a570c2f7e1d4b11", "url": "https://n8n.example.com/webhook/orch-events", "events": ["job.succeeded", "job.failed"], "header_names": [], "description": "all results to the archive flow", "created_at": "2026-11-21T09:00:00Z", "updated_at": "2026-11-21T09:00:00Z"}))]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// Names of the extra headers (values are secret).
    pub header_names: Vec<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new subscription with its signing secret, shown only this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "wh_019a8a5e3c1e7d3a9a570c2f7e1d4b11", "url": "https://n8n.example.com/webhook/orch-events", "events": ["job.succeeded", "job.failed"], "header_names": [], "description": null, "created_at": "2026-11-21T09:00:00Z", "updated_at": "2026-11-21T09:00:00Z", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}))]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks). Shown only now.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

fn view(stored: StoredWebhook) -> ApiResult<WebhookView> {
    let sub: Subscription = serde_json::from_value(stored.config).map_err(ApiError::internal)?;
    Ok(WebhookView {
        id: stored.id,
        url: sub.url,
        events: sub.events,
        header_names: sub.headers.into_keys().collect(),
        description: sub.description,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
    })
}

/// Subscribe a URL to events of every job.
///
/// Deliveries are signed with the secret in the answer (shown only once).
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = WebhookRequest,
    responses(
        (status = 201, description = "Created; keep the secret", body = WebhookCreated),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 415, response = NotJson),
        (status = 422, response = Invalid), (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    principal: Principal,
    body: ApiJson<WebhookRequest>,
) -> ApiResult<(StatusCode, Json<WebhookCreated>)> {
    principal.require(crate::auth::ADMIN)?;
    let req = body.value;
    let events = subscription_events(&req.events)?;
    let headers = req.headers.unwrap_or_default();
    check_headers(&headers, "headers")?;
    check_url(&state, &req.url, "url").await?;
    let (_, secret) = Secret::generate();
    let sub = Subscription { url: req.url, events, headers, secret: secret.clone(), description: req.description };
    let now = Utc::now();
    let stored = StoredWebhook {
        id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
        config: serde_json::to_value(&sub).map_err(ApiError::internal)?,
        created_at: now,
        updated_at: now,
    };
    state.store.put_webhook(&stored).await?;
    state.webhooks.subscriptions_changed();
    Ok((StatusCode::CREATED, Json(WebhookCreated { webhook: view(stored)?, secret })))
}

/// List subscriptions.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    responses(
        (status = 200, description = "Oldest first", body = WebhookList),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    ),
    security(("bearer" = []))
)]
pub async fn list_webhooks(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<WebhookList>> {
    principal.require(crate::auth::ADMIN)?;
    let webhooks = state.store.list_webhooks().await?.into_iter().map(view).collect::<ApiResult<_>>()?;
    Ok(Json(WebhookList { webhooks }))
}

async fn find_webhook(state: &AppState, id: &str) -> ApiResult<StoredWebhook> {
    state
        .store
        .list_webhooks()
        .await?
        .into_iter()
        .find(|w| w.id == id)
        .ok_or_else(|| ApiError::not_found("webhook", id))
}

/// A subscription.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The subscription", body = WebhookView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn get_webhook(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WebhookView>> {
    principal.require(crate::auth::ADMIN)?;
    Ok(Json(view(find_webhook(&state, &id).await?)?))
}

/// Change a subscription's URL, events, headers or description.
///
/// The secret stays the same. Deliveries already queued go to the new URL.
#[utoipa::path(
    put, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Subscription id")),
    request_body = WebhookRequest,
    responses(
        (status = 200, description = "The subscription as changed", body = WebhookView),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = NotFound),
        (status = 415, response = NotJson), (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn replace_webhook(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<WebhookRequest>,
) -> ApiResult<Json<WebhookView>> {
    principal.require(crate::auth::ADMIN)?;
    let stored = find_webhook(&state, &id).await?;
    let old: Subscription = serde_json::from_value(stored.config).map_err(ApiError::internal)?;
    let req = body.value;
    let events = subscription_events(&req.events)?;
    let headers = req.headers.unwrap_or_default();
    check_headers(&headers, "headers")?;
    check_url(&state, &req.url, "url").await?;
    let sub = Subscription { url: req.url, events, headers, secret: old.secret, description: req.description };
    let changed = StoredWebhook {
        id: stored.id,
        config: serde_json::to_value(&sub).map_err(ApiError::internal)?,
        created_at: stored.created_at,
        updated_at: Utc::now(),
    };
    state.store.put_webhook(&changed).await?;
    state.webhooks.subscriptions_changed();
    Ok(Json(view(changed)?))
}

/// Delete a subscription; its queued deliveries are dropped.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    principal.require(crate::auth::ADMIN)?;
    if !state.store.delete_webhook(&id).await? {
        return Err(ApiError::not_found("webhook", &id));
    }
    state.webhooks.subscriptions_changed();
    Ok(StatusCode::NO_CONTENT)
}

// --- Deliveries --------------------------------------------------------------

/// One event of one job sent to one URL, with its attempts.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "019a8a5e-4d2f-7c10-8b8e-5a1f3c9d2e01", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "event": "job.succeeded", "target": "callback", "webhook_id": "msg_019a8a5e4d2f7c108b8e5a1f3c9d2e00", "status": "queued", "attempts": 2, "max_attempts": 11, "response_status": 409, "error": {"code": "http_409", "message": "the receiver answered 409; retrying", "retryable": true}, "skipped": null, "next_attempt_at": "2026-11-21T09:00:35Z", "redelivery_of": null, "created_at": "2026-11-21T09:00:00Z", "finished_at": null}))]
pub struct DeliveryView {
    pub id: Uuid,
    /// The job of a `job.*` event.
    pub job_id: Option<Uuid>,
    /// `job.succeeded`, `job.failed`, `job.cancelled`, `job.progress`, `server.down`.
    pub event: String,
    /// `callback` or `webhook:<subscription id>`.
    pub target: String,
    /// The `webhook-id` header: the same on every attempt.
    pub webhook_id: String,
    /// `queued` (waiting for its next attempt), `running`, `succeeded`,
    /// `failed` (gave up), `cancelled`, or `superseded`: not sent because the
    /// job ended otherwise or moved to another attempt (a worker died or was
    /// stopped after queueing it); the actual outcome has its own delivery.
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    /// The receiver's status code in the last attempt that got an answer.
    pub response_status: Option<u16>,
    /// Why the last attempt failed (`http_409`, `timeout`, `connect`, `superseded`, …).
    pub error: Option<JobErrorView>,
    /// Why a delivery ended without sending (nothing went wrong): `superseded`
    /// (status `superseded`) or `job_gone` (status `succeeded`).
    pub skipped: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub redelivery_of: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every request sent, oldest first: `at`, `response_status` (or
    /// `error`), `body_excerpt` (the start of the answer) and `duration_ms`.
    /// A 409 is retried about a second apart within one attempt, so it can
    /// hold more requests than `attempts`.
    #[schema(value_type = Vec<Object>)]
    pub log: Vec<Value>,
}

/// Where a delivery is: a job's status, and `superseded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Superseded,
}

impl DeliveryStatus {
    const NAMES: &str = "queued, running, succeeded, failed, cancelled or superseded";

    fn parse(text: &str) -> Option<DeliveryStatus> {
        Some(match text {
            "superseded" => DeliveryStatus::Superseded,
            other => DeliveryStatus::of(other.parse().ok()?, false),
        })
    }

    fn of(status: JobStatus, superseded: bool) -> DeliveryStatus {
        match status {
            JobStatus::Succeeded if superseded => DeliveryStatus::Superseded,
            JobStatus::Queued => DeliveryStatus::Queued,
            JobStatus::Running => DeliveryStatus::Running,
            JobStatus::Succeeded => DeliveryStatus::Succeeded,
            JobStatus::Failed => DeliveryStatus::Failed,
            JobStatus::Cancelled => DeliveryStatus::Cancelled,
        }
    }

    /// The stored status of deliveries with this one.
    fn stored(self) -> JobStatus {
        match self {
            DeliveryStatus::Queued => JobStatus::Queued,
            DeliveryStatus::Running => JobStatus::Running,
            DeliveryStatus::Succeeded | DeliveryStatus::Superseded => JobStatus::Succeeded,
            DeliveryStatus::Failed => JobStatus::Failed,
            DeliveryStatus::Cancelled => JobStatus::Cancelled,
        }
    }
}

fn delivery_view(job: Job, result: Option<Value>) -> Option<DeliveryView> {
    let input: DeliveryInput = serde_json::from_value(job.input).ok()?;
    let from_error = job.error.as_ref().and_then(|e| e.code.strip_prefix("http_")?.parse().ok());
    let response_status = result.as_ref().and_then(|r| r["response_status"].as_u64()).map(|s| s as u16).or(from_error);
    let skipped = result.as_ref().and_then(|r| r["skipped"].as_str()).map(str::to_owned);
    Some(DeliveryView {
        id: job.id,
        job_id: input.job_id,
        event: input.event,
        target: input.target.key(),
        webhook_id: input.webhook_id,
        status: DeliveryStatus::of(job.status, skipped.as_deref() == Some(orch_webhooks::deliver::SUPERSEDED)),
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        response_status,
        error: job.error.map(|e| JobErrorView { code: e.code, message: e.message, retryable: e.retryable }),
        skipped,
        next_attempt_at: (job.status == JobStatus::Queued).then_some(job.run_at),
        redelivery_of: input.redelivery_of,
        created_at: job.created_at,
        finished_at: job.finished_at,
        log: Vec::new(),
    })
}

/// Most requests of one delivery listed in its `log`.
const LOG_LIMIT: usize = 200;

async fn delivery_views(state: &AppState, jobs: Vec<Job>) -> ApiResult<Vec<DeliveryView>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let result = if job.status == JobStatus::Succeeded { state.store.get_result(job.id).await? } else { None };
        let events = state.store.events(job.id, 0, 10_000).await?;
        let log: Vec<Value> = events
            .into_iter()
            .filter(|e| e.kind == "progress" && e.data["type"] == "attempt")
            .map(|mut e| {
                if let Some(entry) = e.data.as_object_mut() {
                    entry.remove("type");
                }
                e.data
            })
            .collect();
        let skip = log.len().saturating_sub(LOG_LIMIT);
        out.extend(delivery_view(job, result).map(|view| DeliveryView { log: log[skip..].to_vec(), ..view }));
    }
    Ok(out)
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /v1/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// queued, running, succeeded, failed, cancelled or superseded.
    pub status: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List deliveries.
///
/// `status=failed` lists the ones that gave up; `status=queued` the ones
/// waiting to retry; `status=superseded` the ones not sent because their job
/// ended otherwise (not failures). A filtered page may hold fewer than
/// `limit` deliveries and still have a `next_cursor`.
/// A key lists the deliveries about its own jobs; `admin` and `jobs:read_all`
/// keys list all (events about no job, such as `server.down`, only they see).
#[utoipa::path(
    get, path = "/v1/deliveries", tag = "webhooks",
    params(DeliveryParams),
    responses(
        (status = 200, description = "Newest first", body = DeliveryPage),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<DeliveryParams>,
) -> ApiResult<Json<DeliveryPage>> {
    principal.require("jobs:read")?;
    let status = params
        .status
        .as_deref()
        .map(|s| {
            DeliveryStatus::parse(s).ok_or_else(|| {
                ApiError::invalid_field("status", format!("unknown status {s:?}; allowed: {}", DeliveryStatus::NAMES))
            })
        })
        .transpose()?;
    let limit = crate::jobs::page_limit(params.limit.as_deref())?;
    let mut before = crate::jobs::job_cursor(params.cursor.as_deref())?;
    let owner = crate::jobs::owner_filter(Some(&principal));
    let filter = |before| JobFilter {
        owner: owner.clone(),
        status: status.map(DeliveryStatus::stored),
        kind: Some(JobKind::Delivery),
        before,
        limit,
    };
    // `succeeded` and `superseded` share a stored status: read pages until
    // `limit` match, the deliveries end, or SCAN_PAGES were read.
    const SCAN_PAGES: usize = 20;
    let mut deliveries = Vec::new();
    for _ in 0..SCAN_PAGES {
        let jobs = state.store.list_jobs(&filter(before)).await?;
        let exhausted = jobs.len() < limit;
        let last = jobs.last().map(|j| j.id);
        for view in delivery_views(&state, jobs).await? {
            if status.is_none_or(|s| s == view.status) {
                deliveries.push(view);
                if deliveries.len() == limit {
                    break;
                }
            }
        }
        before = match deliveries.last() {
            Some(view) if deliveries.len() == limit => Some(view.id),
            _ => last.or(before),
        };
        if exhausted && deliveries.len() < limit {
            before = None;
            break;
        }
        if deliveries.len() == limit || !matches!(status, Some(DeliveryStatus::Succeeded | DeliveryStatus::Superseded))
        {
            break;
        }
    }
    let next_cursor = before.map(|id| id.to_string());
    Ok(Json(DeliveryPage { deliveries, next_cursor }))
}

/// Page of `GET /v1/jobs/{id}/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobDeliveryParams {
    /// Page size, 1–200 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A job's deliveries.
///
/// Every delivery about the job (its endings, its progress, redeliveries),
/// newest first, in pages.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Job id"), JobDeliveryParams),
    responses(
        (status = 200, description = "The job's deliveries", body = DeliveryPage),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn job_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<JobDeliveryParams>,
) -> ApiResult<Json<DeliveryPage>> {
    principal.require("jobs:read")?;
    let limit = crate::jobs::page_limit(params.limit.as_deref())?;
    let before = crate::jobs::job_cursor(params.cursor.as_deref())?;
    let job = crate::jobs::load(&state, Some(&principal), &id).await?;
    let found = state.store.job_deliveries(job.id, before, limit).await?;
    let next_cursor = (found.len() == limit).then(|| found.last().map(|j| j.id.to_string())).flatten();
    Ok(Json(DeliveryPage { deliveries: delivery_views(&state, found).await?, next_cursor }))
}

/// Send a delivery again.
///
/// Queues a new delivery of the same event with the same `webhook-id`; it is
/// sent only while the job still has that outcome.
#[utoipa::path(
    post, path = "/v1/deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id")),
    responses(
        (status = 202, description = "Queued", body = DeliveryView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<DeliveryView>)> {
    principal.require("jobs:write")?;
    let not_found = || ApiError::not_found("delivery", &id);
    let job_id = JobId::parse_str(&id).map_err(|_| not_found())?;
    let original = state
        .store
        .get_job(job_id)
        .await?
        .filter(|j| j.kind == JobKind::Delivery && principal.may_change(j.owner.as_deref()))
        .ok_or_else(not_found)?;
    let mut input: DeliveryInput = serde_json::from_value(original.input).map_err(ApiError::internal)?;
    input.redelivery_of = Some(original.id);
    let job = match state.store.insert_job(orch_webhooks::delivery_job(&input, None, original.owner)).await? {
        orch_store::Inserted::Created(job) => job,
        other => {
            return Err(ApiError::internal(format!("a delivery without idempotency key was not created: {other:?}")));
        }
    };
    let view = delivery_view(job, None).ok_or_else(|| ApiError::internal("a new delivery does not read back"))?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

// --- Test send -----------------------------------------------------------------

/// A URL to send a sample event to.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://n8n.example.com/webhook-test/orch", "event": "job.succeeded", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}))]
pub struct WebhookTestRequest {
    pub url: String,
    /// `job.succeeded` (default), `job.failed`, `job.cancelled` or `job.progress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// Queues `server.down` for the subscriptions that want it whenever an MCP
/// server of this process's registry goes down. Runs until shutdown.
pub async fn watch_servers(state: AppState) {
    let mut events = state.registry.subscribe();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = state.shutdown.cancelled() => return,
        };
        let (server, last_error) = match event {
            Ok(orch_mcp::RegistryEvent::ServerState { server, state: orch_mcp::ServerState::Down, last_error }) => {
                (server, last_error)
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let now = Utc::now();
        let payload = json!({"type": "server.down", "server": server, "state": "down", "last_error": last_error,
                             "at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                             "links": {"server": format!("{}/v1/servers/{server}", state.config.public_url.trim_end_matches('/'))}});
        // Processes sharing a store see the same outage: one delivery per server and minute.
        let dedupe = format!("{server}:{}", now.timestamp() / 60);
        if let Err(err) = state.webhooks.enqueue_event("server.down", payload, &dedupe).await {
            tracing::warn!(server = %server, error = %err, "queueing server.down deliveries failed");
        }
    }
}

/// How the receiver answered the sample event.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"ok": true, "response_status": 200, "duration_ms": 42, "response_body": "{\"message\":\"Workflow was started\"}", "error": null, "webhook_id": "msg_test_019a8a5e4d2f7c108b8e5a1f3c9d2e00", "payload": {"type": "job.succeeded", "title": "Summarise this week's issues"}}))]
pub struct WebhookTestReport {
    /// The receiver answered 2xx.
    pub ok: bool,
    pub response_status: Option<u16>,
    pub duration_ms: u64,
    /// The first KiB of the answer.
    pub response_body: String,
    /// Why there was no answer (`timeout`, `connect`, …).
    pub error: Option<String>,
    pub webhook_id: String,
    /// The payload that was sent.
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// Send a sample event to a URL and report the answer.
///
/// The payload is a made-up job ending with `event`; the same SSRF guard,
/// headers and signature as real deliveries apply. Nothing is retried.
#[utoipa::path(
    post, path = "/v1/webhooks/test", tag = "webhooks",
    request_body = WebhookTestRequest,
    responses(
        (status = 200, description = "What the receiver answered (also when it failed)", body = WebhookTestReport),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 415, response = NotJson),
        (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn test_webhook(
    State(state): State<AppState>,
    principal: Principal,
    body: ApiJson<WebhookTestRequest>,
) -> ApiResult<Json<WebhookTestReport>> {
    principal.require("jobs:write")?;
    let req = body.value;
    let event = match &req.event {
        None => "job.succeeded".to_owned(),
        Some(e) => events_of(Some(std::slice::from_ref(e)), "event", false)
            .map_err(|err| ApiError::invalid_field("event", err.message.replacen("event[0]: ", "", 1)))?
            .remove(0),
    };
    check_url(&state, &req.url, "url").await?;
    let headers = req.headers.unwrap_or_default();
    check_headers(&headers, "headers")?;
    let secret =
        req.secret.as_deref().map(Secret::parse).transpose().map_err(|e| ApiError::invalid_field("secret", e))?;
    let (job, result) = sample_job(&event);
    let options = orch_webhooks::deliver::payload_options(&state.webhooks.config);
    let payload = orch_webhooks::payload::build(&job, &event, result.as_ref(), &options);
    let body = serde_json::to_vec(&payload).map_err(ApiError::internal)?;
    let webhook_id = format!("msg_test_{}", uuid::Uuid::now_v7().simple());
    let endpoint = orch_webhooks::deliver::Endpoint { url: req.url, headers, secret };
    let sent = orch_webhooks::deliver::send(&state.webhooks, &endpoint, &webhook_id, &body).await;
    Ok(Json(WebhookTestReport {
        ok: sent.status.is_some_and(|s| (200..300).contains(&s)),
        response_status: sent.status,
        duration_ms: sent.duration.as_millis() as u64,
        response_body: sent.body,
        error: sent.error.map(|(code, message)| format!("{code}: {message}")),
        webhook_id,
        payload,
    }))
}

/// A made-up chat job that ended with `event`, for test sends and examples.
pub fn sample_job(event: &str) -> (Job, Option<Value>) {
    let created = DateTime::parse_from_rfc3339("2026-11-21T09:00:00Z").map(|t| t.to_utc()).unwrap_or_default();
    let finished = created + chrono::Duration::seconds(12);
    let status = match event {
        "job.failed" => JobStatus::Failed,
        "job.cancelled" => JobStatus::Cancelled,
        "job.progress" => JobStatus::Running,
        _ => JobStatus::Succeeded,
    };
    let running = status == JobStatus::Running;
    let job = Job {
        id: JobId::parse_str("019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11").unwrap_or_default(),
        kind: JobKind::Chat,
        status,
        input: json!({"model": "echo", "messages": [{"role": "user", "content": "Summarise this week's issues"}],
                      "title": "Weekly issues", "tags": ["orch", "weekly"]}),
        metadata: json!({"workflow": "weekly-report"}),
        attempts: 1,
        max_attempts: 3,
        progress: running.then(|| {
            json!({"type": "routing", "chain": ["claude/claude-sonnet-4-5", "gemini/gemini-2.5-pro"], "reason": "task type summarise (inferred from the prompt)"})
        }),
        error: (status == JobStatus::Failed)
            .then(|| orch_store::JobError::new("step_failed", "the provider answered 529 (overloaded)", false)),
        created_at: created,
        updated_at: finished,
        run_at: created,
        started_at: Some(created),
        finished_at: (!running).then_some(finished),
        cancel_requested: false,
        worker: None,
        lease_expires_at: None,
        owner: None,
    };
    let result = (status == JobStatus::Succeeded).then(|| {
        json!({"text": "Three issues closed, two opened.", "model": "echo", "usage": {"input_tokens": 4, "output_tokens": 6}})
    });
    (job, result)
}

/// The payload each delivery POSTs (headers `webhook-id`, `webhook-timestamp`,
/// `webhook-signature`). One example per event.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(examples(
    json!({"type": "job.succeeded", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "chat", "status": "succeeded", "created_at": "2026-11-21T09:00:00.000Z", "finished_at": "2026-11-21T09:00:12.000Z", "title": "Weekly issues", "markdown": "Three issues closed, two opened.", "frontmatter": {"title": "Weekly issues", "tags": ["orch", "weekly"], "source": "orch", "model": "echo", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "chat", "status": "succeeded", "created": "2026-11-21T09:00:00.000Z", "finished": "2026-11-21T09:00:12.000Z"}, "obsidian": {"path": "Inbox/2026-11-21-weekly-issues.md", "content": "---\ntitle: \"Weekly issues\"\ntags:\n  - \"orch\"\n  - \"weekly\"\nsource: \"orch\"\nmodel: \"echo\"\njob_id: \"019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11\"\nkind: \"chat\"\nstatus: \"succeeded\"\ncreated: \"2026-11-21T09:00:00.000Z\"\nfinished: \"2026-11-21T09:00:12.000Z\"\n---\n\n# Weekly issues\n\nThree issues closed, two opened.\n"}, "notion": {"markdown": "Three issues closed, two opened."}, "result": {"text": "Three issues closed, two opened.", "model": "echo", "usage": {"input_tokens": 4, "output_tokens": 6}}, "result_truncated": false, "usage": {"input_tokens": 4, "output_tokens": 6}, "error": null, "metadata": {"workflow": "weekly-report"}, "links": {"status": "https://orch.example.com/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "result": "https://orch.example.com/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/result", "events": "https://orch.example.com/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/events"}}),
    json!({"type": "job.failed", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "chat", "status": "failed", "created_at": "2026-11-21T09:00:00.000Z", "finished_at": "2026-11-21T09:00:12.000Z", "title": "Weekly issues", "markdown": "**Failed** (step_failed): the provider answered 529 (overloaded)", "frontmatter": {"title": "Weekly issues", "tags": ["orch", "weekly"], "source": "orch", "model": "echo", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "chat", "status": "failed", "created": "2026-11-21T09:00:00.000Z", "finished": "2026-11-21T09:00:12.000Z"}, "obsidian": {"path": "Inbox/2026-11-21-weekly-issues.md", "content": "---\n…\n---\n\n# Weekly issues\n\n**Failed** (step_failed): the provider answered 529 (overloaded)\n"}, "notion": {"markdown": "**Failed** (step_failed): the provider answered 529 (overloaded)"}, "result": null, "result_truncated": false, "usage": null, "error": {"code": "step_failed", "message": "the provider answered 529 (overloaded)"}, "metadata": {"workflow": "weekly-report"}, "links": {"status": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "result": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/result", "events": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/events"}}),
    json!({"type": "job.cancelled", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "batch", "status": "cancelled", "created_at": "2026-11-21T09:00:00.000Z", "finished_at": "2026-11-21T09:00:12.000Z", "title": "Batch job 019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "markdown": "**Cancelled.**", "frontmatter": {"title": "Batch job 019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "tags": [], "source": "orch", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "batch", "status": "cancelled", "created": "2026-11-21T09:00:00.000Z", "finished": "2026-11-21T09:00:12.000Z"}, "obsidian": {"path": "Inbox/2026-11-21-batch-job-019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11.md", "content": "---\n…\n---\n\n# Batch job 019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11\n\n**Cancelled.**\n"}, "notion": {"markdown": "**Cancelled.**"}, "result": null, "result_truncated": false, "usage": null, "error": null, "metadata": {}, "links": {"status": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "result": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/result", "events": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/events"}}),
    json!({"type": "job.progress", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b12", "kind": "batch", "status": "running", "created_at": "2026-11-21T09:00:00.000Z", "finished_at": null, "title": "Weekly digest", "markdown": "Node `fetch` succeeded (2 of 5 nodes done).", "frontmatter": {"title": "Weekly digest", "tags": [], "source": "orch", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b12", "kind": "batch", "status": "running", "created": "2026-11-21T09:00:00.000Z", "finished": "2026-11-21T09:00:05.000Z"}, "obsidian": {"path": "Inbox/2026-11-21-weekly-digest.md", "content": "---\n…\n---\n\n# Weekly digest\n\nNode `fetch` succeeded (2 of 5 nodes done).\n"}, "notion": {"markdown": "Node `fetch` succeeded (2 of 5 nodes done)."}, "result": null, "result_truncated": false, "usage": null, "error": null, "metadata": {}, "progress": {"node": "fetch", "status": "succeeded", "attempts": 1, "output": {"issues": 7}, "started_ms": 1203.5, "duration_ms": 812.4, "completed": 2, "total": 5}, "links": {"status": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b12", "result": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b12/result", "events": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b12/events"}}),
    json!({"type": "job.progress", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "chat", "status": "running", "created_at": "2026-11-21T09:00:00.000Z", "finished_at": null, "title": "Weekly issues", "markdown": "Routed to claude/claude-sonnet-4-5.", "frontmatter": {"title": "Weekly issues", "tags": ["orch", "weekly"], "source": "orch", "model": "echo", "job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "kind": "chat", "status": "running", "created": "2026-11-21T09:00:00.000Z", "finished": "2026-11-21T09:00:01.000Z"}, "obsidian": {"path": "Inbox/2026-11-21-weekly-issues.md", "content": "---\n…\n---\n\n# Weekly issues\n\nRouted to claude/claude-sonnet-4-5.\n"}, "notion": {"markdown": "Routed to claude/claude-sonnet-4-5."}, "result": null, "result_truncated": false, "usage": null, "error": null, "metadata": {"workflow": "weekly-report"}, "progress": {"type": "routing", "chain": ["claude/claude-sonnet-4-5", "gemini/gemini-2.5-pro"], "reason": "task type summarise (inferred from the prompt)"}, "links": {"status": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11", "result": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/result", "events": "/v1/jobs/019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11/events"}}),
))]
pub struct WebhookPayload {
    /// `job.succeeded`, `job.failed`, `job.cancelled` or `job.progress`.
    #[serde(rename = "type")]
    pub event: String,
    pub job_id: Uuid,
    #[schema(value_type = crate::jobs::JobKindSchema)]
    pub kind: JobKind,
    /// The job's status when the event was sent (`running` for `job.progress`).
    #[schema(value_type = crate::jobs::JobStatusSchema)]
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    /// When the job ended; `null` for `job.progress`.
    pub finished_at: Option<DateTime<Utc>>,
    pub title: String,
    /// The human result: the chat answer (`result.text`), the plan's output, or what went wrong.
    pub markdown: String,
    #[schema(value_type = Object)]
    pub frontmatter: Value,
    /// `path` (from `obsidian_path`, default ORCH_WEBHOOK_OBSIDIAN_PATH) and `content` (the note with YAML front matter).
    #[schema(value_type = Object)]
    pub obsidian: Value,
    /// `markdown` for Notion's `POST /v1/pages`.
    #[schema(value_type = Object)]
    pub notion: Value,
    /// The job's result; `null` when `result_truncated` (read it at `links.result`).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub result_truncated: bool,
    /// The chat result's token usage, where the provider reported it.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
    /// What went wrong, for `job.failed` (and a retried attempt's error in `job.progress`).
    pub error: Option<PayloadError>,
    /// The job's `metadata` as submitted.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// `job.progress` only: the job's latest progress event when sent (a batch
    /// node that ended, the plan, a chat job's routing or provider retry; see
    /// docs/webhooks.md). Endings do not carry it.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    #[schema(value_type = Object)]
    pub links: Value,
}

/// The `error` of a [`WebhookPayload`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PayloadError {
    pub code: String,
    pub message: String,
}

/// The payload of `provider.auth_expired` (a turn was refused for the
/// provider's credential: sent once per incident, which ends when a turn on
/// the provider succeeds) and `provider.auth_expiring` (the credential's known
/// expiry entered the warning window `ORCH_TOKEN_WARN_DAYS`: sent once per
/// provider and expiry). Never carries the credential.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(examples(
    json!({"type": "provider.auth_expired", "provider": "claude", "status": "expired", "expires_at": null, "days_left": null, "detail": "claude: authentication failed: OAuth token has expired. Please obtain a new token or refresh your existing token.", "fix": "run `claude setup-token`, replace CLAUDE_CODE_OAUTH_TOKEN and set token_expires_at to a year from now", "at": "2026-11-21T09:00:12.000Z"}),
    json!({"type": "provider.auth_expiring", "provider": "claude", "status": "expiring", "expires_at": "2026-11-23T09:00:00Z", "days_left": 2, "detail": "the credential of claude expires at 2026-11-23T09:00:00Z (2 days left)", "fix": "run `claude setup-token`, replace CLAUDE_CODE_OAUTH_TOKEN and set token_expires_at to a year from now", "at": "2026-11-21T09:00:00.000Z"}),
))]
pub struct ProviderEventPayload {
    /// `provider.auth_expired` or `provider.auth_expiring`.
    #[serde(rename = "type")]
    pub kind: String,
    pub provider: String,
    /// `expired` or `invalid` (the CLI refused the credential), `expiring`.
    pub status: String,
    /// When the credential expires, where known (`token_expires_at`, or the CLI's OAuth file).
    pub expires_at: Option<DateTime<Utc>>,
    /// Whole days until `expires_at` (negative once past).
    pub days_left: Option<i64>,
    /// What the CLI said, or when it expires.
    pub detail: Option<String>,
    /// How to renew the credential.
    pub fix: String,
    /// When the event happened.
    pub at: DateTime<Utc>,
}
