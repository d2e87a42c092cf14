//! The job model shared by every backend: jobs, their events, outcomes and API keys.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Job ids are UUIDv7: they sort by creation time, which gives newest-first
/// listing and cursors for free on both backends.
pub type JobId = Uuid;

/// Makes a new job id (time-ordered).
pub fn new_job_id() -> JobId {
    Uuid::now_v7()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Chat,
    Batch,
    /// A webhook delivery: one event of one job sent to one URL. Listed only
    /// when asked for by kind.
    Delivery,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Chat, JobKind::Batch, JobKind::Delivery];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Chat => "chat",
            JobKind::Batch => "batch",
            JobKind::Delivery => "delivery",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Terminal statuses never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// Error returned when a string names no known status or kind.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown value {value:?}; allowed: {allowed}")]
pub struct UnknownVariant {
    pub value: String,
    pub allowed: &'static str,
}

impl FromStr for JobStatus {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownVariant {
            value: s.to_owned(),
            allowed: "queued, running, succeeded, failed, cancelled",
        })
    }
}

impl FromStr for JobKind {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobKind::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVariant { value: s.to_owned(), allowed: "chat, batch, delivery" })
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt (or the whole job) failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// Stable machine-readable code, e.g. `step_failed`, `worker_lost`, `timeout`.
    pub code: String,
    pub message: String,
    /// Whether another attempt could succeed.
    #[serde(default)]
    pub retryable: bool,
    /// When the next attempt should start, if the executor knows better than
    /// the worker's backoff (a webhook's schedule, a `Retry-After`). Not stored.
    #[serde(skip)]
    pub retry_in: Option<std::time::Duration>,
    /// When the failure's cause is expected to end (a usage limit's reset),
    /// for a caller's `Retry-After`. Absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
}

impl JobError {
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        JobError { code: code.into(), message: message.into(), retryable, retry_in: None, retry_at: None }
    }

    /// The same error, retried after `delay` rather than the worker's backoff.
    pub fn retry_in(mut self, delay: std::time::Duration) -> Self {
        self.retry_in = Some(delay);
        self
    }
}

/// A job as submitted, before it is stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub kind: JobKind,
    /// The request body the executor needs (validated by the API).
    pub input: Value,
    /// Caller's free-form metadata, returned as given.
    pub metadata: Value,
    pub max_attempts: u32,
    pub created_at: DateTime<Utc>,
    /// When the job becomes due (normally `created_at`).
    pub run_at: DateTime<Utc>,
    pub idempotency: Option<Idempotency>,
    /// The API key that submitted it (`local` over stdio MCP); deliveries get
    /// their job's. Only this key (and admin) may see the job.
    pub owner: Option<String>,
}

impl NewJob {
    /// The job a delivery is about (its input's `job_id`), by which
    /// [`crate::Store::job_deliveries`] finds it. `None` for other kinds.
    pub fn parent(&self) -> Option<JobId> {
        if self.kind != JobKind::Delivery {
            return None;
        }
        self.input.get("job_id")?.as_str()?.parse().ok()
    }
}

/// An idempotency record: `key` is already scoped to the caller (API key id).
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    /// Hash of the request body; a repeat with another body is a conflict.
    pub body_hash: String,
    pub expires_at: DateTime<Utc>,
}

/// What `insert_job` did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// The job was stored and is queued.
    Created(Job),
    /// The idempotency key was seen before with the same body: the first job.
    Existing(Job),
    /// The idempotency key was seen before with another body.
    Conflict { job_id: JobId },
    /// The owner already submitted `limit` jobs today (UTC); nothing was
    /// stored. The count starts again at `resets_at`.
    OverQuota { limit: u32, resets_at: DateTime<Utc> },
}

/// The UTC day a daily job quota counts in (days since the Unix epoch), and
/// when the next one starts.
pub fn quota_day(now: DateTime<Utc>) -> (i64, DateTime<Utc>) {
    let day = now.timestamp().div_euclid(86_400);
    (day, DateTime::from_timestamp((day + 1) * 86_400, 0).unwrap_or(now))
}

/// What one request did to its key's request rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may go on (then it was counted).
    pub allowed: bool,
    /// Requests that may follow at once.
    pub remaining: u32,
    /// When refused: how long until one request is allowed again.
    pub retry_after: std::time::Duration,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub status: JobStatus,
    pub input: Value,
    pub metadata: Value,
    /// Attempts started so far (the running one included).
    pub attempts: u32,
    pub max_attempts: u32,
    pub progress: Option<Value>,
    /// The last attempt's error (kept while a retry is queued).
    pub error: Option<JobError>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    /// Worker holding the lease while running.
    pub worker: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// See [`NewJob::owner`]; `None` for jobs stored before owners were kept.
    #[serde(default)]
    pub owner: Option<String>,
}

impl Job {
    /// Whether an earlier attempt ran (`attempts` counts claims, the running
    /// one included), so the job's events may hold work to resume; a first
    /// attempt need not read them back.
    pub fn ran_before(&self) -> bool {
        self.attempts > 1
    }
}

/// One entry of a job's event log. `seq` starts at 1 and increases by one per
/// job; SSE uses it as the event id so clients resume with `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub seq: u64,
    pub job_id: JobId,
    /// `queued`, `running`, `progress`, `retrying`, `succeeded`, `failed`, `cancelled`.
    pub kind: String,
    pub data: Value,
    pub at: DateTime<Utc>,
}

impl JobEvent {
    /// Whether this event ends the job's stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self.kind.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// How an attempt ended, as reported by a worker.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        result: Value,
    },
    /// With `retry_at`, the job is queued again for then (the worker has
    /// already checked attempts against `max_attempts`); without, it failed.
    Failed {
        error: JobError,
        retry_at: Option<DateTime<Utc>>,
    },
    /// The attempt stopped because cancellation was requested.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub job_id: JobId,
    pub outcome: Outcome,
}

/// Filter and page of `list_jobs`: newest first, strictly older than `before`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only the jobs of this owner (see [`NewJob::owner`]); `None` for everyone's.
    pub owner: Option<String>,
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
    pub before: Option<JobId>,
    pub limit: usize,
}

/// A worker's liveness record, refreshed with every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub concurrency: u32,
    pub running: u32,
}

/// Count of jobs per status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobCounts {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl JobCounts {
    pub fn get(&self, status: JobStatus) -> u64 {
        match status {
            JobStatus::Queued => self.queued,
            JobStatus::Running => self.running,
            JobStatus::Succeeded => self.succeeded,
            JobStatus::Failed => self.failed,
            JobStatus::Cancelled => self.cancelled,
        }
    }

    pub fn set(&mut self, status: JobStatus, n: u64) {
        match status {
            JobStatus::Queued => self.queued = n,
            JobStatus::Running => self.running = n,
            JobStatus::Succeeded => self.succeeded = n,
            JobStatus::Failed => self.failed = n,
            JobStatus::Cancelled => self.cancelled = n,
        }
    }
}

/// A stored API key (never the secret; only its hash is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// First characters of the secret, to recognise a key in listings.
    pub prefix: String,
    pub scopes: Vec<String>,
    /// The MCP servers this key may see and call; `None` for all of them.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the key stops working; `None` for never.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The tools (globs over `server.tool`, e.g. `github.*`, `*.read_*`) this
    /// key may see and call; `None` for all of them.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// The chat providers this key may use; `None` for all of them.
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// When the key was last used (kept at most about once a minute).
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// After a rotation: until when the previous secret keeps working.
    #[serde(default)]
    pub rotated_until: Option<DateTime<Utc>>,
    /// Requests a minute this key may make; `None` for the server's default
    /// (`ORCH_RATE_LIMIT_PER_MINUTE`), 0 for unlimited.
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
    /// Jobs a UTC day this key may submit; `None` for the server's default
    /// (`ORCH_JOBS_PER_DAY`), 0 for unlimited.
    #[serde(default)]
    pub jobs_per_day: Option<u32>,
}

/// One audit record: a state-changing request or a tool call. Never holds a
/// secret or an argument value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing; 0 before the store assigns it. Pages go by it.
    #[serde(default)]
    pub id: u64,
    pub at: DateTime<Utc>,
    /// The key that made the request (`None` when none was given or it was refused).
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    /// `request` or `tool_call`.
    pub action: String,
    /// The HTTP method (`POST`, …), or `MCP` for an MCP tool call, or `PLAN` for a plan's tool node.
    pub method: String,
    /// The route template (`/v1/jobs/{id}`), or the MCP endpoint.
    pub route: String,
    /// What was acted on: `job`, `tool`, `server`, `key`, … with its name or id.
    pub target_kind: Option<String>,
    pub target: Option<String>,
    /// The job the action belongs to (a plan's tool node).
    pub job_id: Option<JobId>,
    /// `ok`, `error` or `denied`.
    pub outcome: String,
    /// The HTTP status answered, when there is one.
    pub status: Option<u16>,
}

/// Which audit records to list: newest first, ids below `before`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub key_id: Option<String>,
    pub action: Option<String>,
    pub target_kind: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before: Option<u64>,
}

impl AuditFilter {
    /// Whether `entry` passes every filter but the cursor.
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        eq(&self.key_id, entry.key_id.as_deref())
            && eq(&self.action, Some(&entry.action))
            && eq(&self.target_kind, entry.target_kind.as_deref())
            && eq(&self.target, entry.target.as_deref())
            && eq(&self.outcome, Some(&entry.outcome))
            && self.since.is_none_or(|t| entry.at >= t)
            && self.until.is_none_or(|t| entry.at < t)
    }
}

/// An MCP server registered through the admin API (servers of mcp-config.json
/// are not stored). `config` is the entry as the caller gave it, in the
/// mcp-config.json format, with `${VAR}`s unexpanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredServer {
    pub name: String,
    pub config: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A global webhook subscription, stored as the admin API gave it (`config`
/// holds the URL, events, headers and the signing secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredWebhook {
    pub id: String,
    pub config: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A chat session: a conversation continued across chat jobs, kept while in
/// use (each turn slides `expires_at`) and then forgotten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Chosen by the caller (`X-Session-ID`).
    pub id: String,
    /// Id of the API key that started it; other keys cannot continue or read it.
    pub owner: String,
    pub messages: Vec<SessionMessage>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One message of a session, as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionMessage {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub at: DateTime<Utc>,
    /// Assistant messages: where the turn ran (`provider/model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_to: Option<String>,
    /// The chat job that added the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
}

/// One attempt of a chat turn on one provider, as `/v1/usage` counts it:
/// recorded when the turn ends. A turn that fell back has one record per
/// provider it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub job_id: JobId,
    /// 0 for the turn's outcome (the answer, or its last failure); 1, 2, ...
    /// for the failed attempts before it. A job's records are replaced by key
    /// (job and attempt) when it runs again.
    #[serde(default)]
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The API key that asked (`local` over stdio MCP).
    pub key_id: String,
    /// The provider this attempt ran on.
    pub provider: String,
    /// The model the CLI reported, if any.
    pub model: Option<String>,
    pub ok: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// As the CLI reported it; never estimated.
    pub cost_usd: Option<f64>,
    /// Wall time of this attempt.
    pub latency_ms: u64,
}

impl UsageRecord {
    /// What the store keys the record by: the job, and the attempt after the first.
    pub fn key(&self) -> String {
        match self.attempt {
            0 => self.job_id.to_string(),
            n => format!("{}#{n}", self.job_id),
        }
    }
}

/// What every process on the store knows about a provider's recent trouble:
/// workers write it after their turns and read it before starting one, the
/// API shows it (`GET /v1/providers`, `GET /health/tokens`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderState {
    pub provider: String,
    /// No turn starts on the provider before then (set after a usage limit).
    pub cooldown_until: Option<DateTime<Utc>>,
    /// The last failed turn, as the providers crate describes it (opaque here).
    pub last_error: Option<Value>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The open authentication incident: turns refused since `since`, until a
    /// turn succeeds.
    pub auth_failure: Option<AuthFailure>,
}

/// Turns refused for the provider's credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthFailure {
    /// The first refusal of this incident (kept while it lasts).
    pub since: DateTime<Utc>,
    /// The latest refusal.
    pub at: DateTime<Utc>,
    /// The CLI said the credential expired (else: invalid).
    pub expired: bool,
    pub message: String,
}

/// A change to a provider's state, applied atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderUpdate {
    /// Cool down until at least then (a later cooldown already set is kept).
    pub cooldown_until: Option<DateTime<Utc>>,
    /// Replaces the last error (with its time).
    pub last_error: Option<(Value, DateTime<Utc>)>,
    /// A refused turn: opens an incident (`since` = its `at`) or updates the
    /// open one, whose `since` is kept. The given `since` is ignored.
    pub auth_failure: Option<AuthFailure>,
    /// A turn succeeded: the open incident, if any, ends.
    pub auth_ok: bool,
}

impl ProviderState {
    /// `update` applied to this state (the merge both backends perform).
    pub fn apply(&mut self, update: ProviderUpdate) {
        if let Some(until) = update.cooldown_until {
            self.cooldown_until = Some(self.cooldown_until.map_or(until, |t| t.max(until)));
        }
        if let Some((error, at)) = update.last_error {
            self.last_error = Some(error);
            self.last_error_at = Some(at);
        }
        if let Some(failure) = update.auth_failure {
            let since = self.auth_failure.as_ref().map_or(failure.at, |open| open.since);
            self.auth_failure = Some(AuthFailure { since, ..failure });
        }
        if update.auth_ok {
            self.auth_failure = None;
        }
    }
}
