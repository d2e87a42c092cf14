//! Orch's webhooks: when a job ends, POST a signed JSON payload to the job's
//! callback URL and to every global subscription that wants the event.
//!
//! A delivery is a job of kind `delivery` (one event of one job to one URL), so
//! it rides the durable queue, leases, recovery and retries of the store and
//! the worker on both backends. [`Webhooks::enqueue`] queues them *before* the
//! job's terminal status is written (the worker's [`orch_worker::Followups`]
//! hook, the API's cancel, recovery), each under an idempotency key made of
//! job, attempt, event and target, so a repeat after a crash queues nothing
//! new. When it runs, the [`DeliveryExecutor`] reads the job again: it sends
//! only if the job really ended with that event in that attempt, and builds the
//! payload from the stored job, so a delivery never reports an outcome that
//! was not recorded.
//!
//! `job.progress` rides the same path, coalesced: the first progress event
//! that counts ([`counts_as_progress`]) in an interval of
//! [`WebhookConfig::progress_interval`] queues one delivery per target, due at
//! the interval's end, under a key naming the interval; when it runs it sends
//! the job's progress as stored then (the latest), and only while the job is
//! still running in that attempt. A job's terminal delivery waits for a
//! progress delivery that is being sent to the same target, so progress never
//! arrives after the ending.
//!
//! Every attempt resolves the URL's host, refuses private and other internal
//! addresses ([`guard`]), and connects only to the addresses it checked.

pub mod deliver;
/// The SSRF guard, shared with MCP upstreams ([`orch_egress`]).
pub use orch_egress as guard;
pub mod payload;
pub mod sign;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use orch_store::{Idempotency, Job, JobKind, JobStatus, NewJob, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use deliver::{DeliveryExecutor, DeliveryInput, Target};
pub use guard::{Guard, UrlError};
pub use ipnet::IpNet;
pub use sign::Secret;

/// Job events a callback or subscription can ask for.
pub const JOB_EVENTS: [&str; 3] = ["job.succeeded", "job.failed", "job.cancelled"];
/// A running job made progress (coalesced; see [`counts_as_progress`]). Asked
/// for explicitly: callbacks without `events` get only [`JOB_EVENTS`].
pub const PROGRESS_EVENT: &str = "job.progress";
/// Attempts of a `job.progress` delivery: immediately, then after 5 s and
/// 30 s (times the retry scale). Progress is soon stale, and the job's
/// ending has its own delivery with the full retry schedule.
pub const PROGRESS_ATTEMPTS: u32 = 3;
/// Events only global subscriptions get: an MCP server went down; a
/// provider's credential was refused, or expires soon.
pub const SERVER_EVENTS: [&str; 3] = ["server.down", "provider.auth_expired", "provider.auth_expiring"];

/// The key of a job's input holding the base URL its submitter used, for
/// the payload's `links` when `ORCH_PUBLIC_URL` is not set.
pub const LINKS_BASE: &str = "links_base";

/// The default `obsidian.path` template: the job id keeps the notes of
/// repeated runs of one flow (same prompt, same day) apart.
pub const DEFAULT_OBSIDIAN_PATH: &str = "Inbox/{date}-{slug}-{id}.md";

/// Settings of webhook deliveries (see docs/configuration.md: `ORCH_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Networks webhooks may reach although they are internal.
    pub allow: Vec<ipnet::IpNet>,
    /// Multiplies the retry schedule (1.0 in production; tests shrink it).
    pub retry_scale: f64,
    /// Response statuses that end a delivery as failed at once.
    pub fail_statuses: Vec<u16>,
    /// Longest wait for a response.
    pub timeout: Duration,
    /// Default template of `obsidian.path`.
    pub obsidian_path: String,
    /// Prefix of the payload's `links`.
    pub public_url: String,
    /// Largest payload in bytes (n8n accepts 16 MB).
    pub max_payload: usize,
    /// How long a delivery waits for its job's terminal status to be written
    /// before it tries again later (the worker queues it just before).
    pub settle_wait: Duration,
    /// Shortest time between two `job.progress` deliveries of a job to one target.
    pub progress_interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow: Vec::new(),
            retry_scale: 1.0,
            fail_statuses: vec![404, 410],
            timeout: Duration::from_secs(15),
            obsidian_path: DEFAULT_OBSIDIAN_PATH.into(),
            public_url: String::new(),
            max_payload: 16 * 1024 * 1024 - 64 * 1024,
            settle_wait: Duration::from_secs(10),
            progress_interval: Duration::from_secs(5),
        }
    }
}

/// A job's `callback`, as stored in its input (validated by the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Callback {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `job.succeeded`, `job.failed`, `job.cancelled`, `job.progress`.
    pub events: Vec<String>,
    /// `whsec_…`; without it deliveries are not signed.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A global subscription, as stored (`StoredWebhook.config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub secret: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// Whether a progress event of a `kind` job is worth a `job.progress`
/// delivery: a batch node that ended (`succeeded`, `failed`, `skipped`), a
/// plan that was made (`planned`), a chat job's routing decision (`routing`)
/// or its provider retrying (`api_retry`). Not streamed text, nor a node that
/// started or retries: those are many and soon outdated.
pub fn counts_as_progress(kind: JobKind, progress: &Value) -> bool {
    match kind {
        JobKind::Batch => {
            progress["type"] == "planned"
                || (progress["node"].is_string()
                    && matches!(progress["status"].as_str(), Some("succeeded" | "failed" | "skipped")))
        }
        JobKind::Chat => matches!(progress["type"].as_str(), Some("routing" | "api_retry")),
        JobKind::Delivery => false,
    }
}

/// The job's callback, if it has one.
pub fn callback_of(job: &Job) -> Option<Callback> {
    serde_json::from_value(job.input.get("callback")?.clone()).ok()
}

/// Attempts of a delivery: the first, then one per step of the schedule.
pub const DELIVERY_ATTEMPTS: u32 = deliver::SCHEDULE.len() as u32 + 1;
/// Subscriptions with their ids.
pub type Subscriptions = Arc<Vec<(String, Subscription)>>;

/// How long subscriptions are cached before they are read again.
const SUBSCRIPTIONS_TTL: Duration = Duration::from_secs(1);

/// Queues and sends deliveries; shared by the API and the worker of a process.
pub struct Webhooks {
    pub store: Arc<dyn Store>,
    pub config: WebhookConfig,
    pub guard: Guard,
    /// When they were read, and the subscriptions.
    subscriptions: Mutex<Option<(Instant, Subscriptions)>>,
    refreshing: tokio::sync::Mutex<()>,
    /// Per running job, the attempt and progress interval whose deliveries
    /// this process queued already: saves the store a repeat insert per event.
    progress_queued: Mutex<std::collections::HashMap<orch_store::JobId, (u32, i64)>>,
}

impl Webhooks {
    pub fn new(store: Arc<dyn Store>, config: WebhookConfig) -> Arc<Webhooks> {
        let guard = Guard { allow: config.allow.clone(), ..Guard::new("webhooks", "ORCH_WEBHOOK_ALLOW (a CIDR list)") };
        Arc::new(Webhooks {
            store,
            config,
            guard,
            subscriptions: Mutex::new(None),
            refreshing: Default::default(),
            progress_queued: Default::default(),
        })
    }

    /// Checks a URL as a delivery would: parsed, resolved, every address allowed.
    pub async fn check_url(&self, url: &str) -> Result<(), UrlError> {
        self.guard.resolve(&guard::parse_url(url)?).await.map(drop)
    }

    /// Subscriptions by id (cached for a second).
    pub async fn subscriptions(&self) -> Result<Subscriptions, StoreError> {
        let cached = || {
            self.subscriptions
                .lock()
                .unwrap()
                .as_ref()
                .filter(|(at, _)| at.elapsed() < SUBSCRIPTIONS_TTL)
                .map(|(_, s)| s.clone())
        };
        if let Some(subs) = cached() {
            return Ok(subs);
        }
        // One read per expiry, however many finishing jobs ask at once.
        let _refreshing = self.refreshing.lock().await;
        if let Some(subs) = cached() {
            return Ok(subs);
        }
        let mut subs = Vec::new();
        for stored in self.store.list_webhooks().await? {
            match serde_json::from_value::<Subscription>(stored.config) {
                Ok(sub) => subs.push((stored.id, sub)),
                Err(err) => tracing::warn!(webhook = %stored.id, error = %err, "skipping an unreadable subscription"),
            }
        }
        let subs = Arc::new(subs);
        *self.subscriptions.lock().unwrap() = Some((Instant::now(), subs.clone()));
        Ok(subs)
    }

    /// Forgets the cached subscriptions (after a change through this process).
    pub fn subscriptions_changed(&self) {
        *self.subscriptions.lock().unwrap() = None;
    }

    /// Queues the deliveries of `job` ending with `status` in its current
    /// attempt: its callback and every subscription that wants the event.
    /// Idempotent. Returns how many targets there are.
    pub async fn enqueue(&self, job: &Job, status: JobStatus) -> Result<usize, StoreError> {
        if job.kind == JobKind::Delivery || !status.is_terminal() {
            return Ok(0);
        }
        self.progress_queued.lock().unwrap().remove(&job.id);
        let event = format!("job.{status}");
        let mut targets = Vec::new();
        if callback_of(job).is_some_and(|c| c.events.contains(&event)) {
            targets.push(Target::Callback);
        }
        for (id, sub) in self.subscriptions().await?.iter() {
            if sub.events.contains(&event) {
                targets.push(Target::Webhook { id: id.clone() });
            }
        }
        for target in &targets {
            let key = format!("delivery:{}:{}:{event}:{}", job.id, job.attempts, target.key());
            let input = DeliveryInput {
                job_id: Some(job.id),
                event: event.clone(),
                attempt: job.attempts,
                target: target.clone(),
                webhook_id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
                redelivery_of: None,
                payload: None,
            };
            self.store.insert_job(delivery_job(&input, Some(key), job.owner.clone())).await?;
        }
        Ok(targets.len())
    }

    /// Queues the `job.progress` deliveries of `job` (as claimed for its
    /// current attempt) after it recorded `progress`, coalesced: one per target
    /// and [`WebhookConfig::progress_interval`], due at the interval's end.
    /// Returns how many were queued (0 for a repeat in the same interval).
    pub async fn enqueue_progress(&self, job: &Job, progress: &Value) -> Result<usize, StoreError> {
        if !counts_as_progress(job.kind, progress) {
            return Ok(0);
        }
        let interval = (self.config.progress_interval.as_millis() as i64).max(1);
        let now = Utc::now();
        let slot = now.timestamp_millis().div_euclid(interval);
        {
            let mut queued = self.progress_queued.lock().unwrap();
            if queued.get(&job.id) == Some(&(job.attempts, slot)) {
                return Ok(0);
            }
            // Only a shortcut: entries of jobs that ended elsewhere are dropped wholesale.
            if queued.len() >= 10_000 {
                queued.clear();
            }
            queued.insert(job.id, (job.attempts, slot));
        }
        let mut targets = Vec::new();
        if callback_of(job).is_some_and(|c| c.events.iter().any(|e| e == PROGRESS_EVENT)) {
            targets.push(Target::Callback);
        }
        for (id, sub) in self.subscriptions().await?.iter() {
            if sub.events.iter().any(|e| e == PROGRESS_EVENT) {
                targets.push(Target::Webhook { id: id.clone() });
            }
        }
        let due = orch_store::from_millis((slot + 1) * interval);
        for target in &targets {
            let key = format!("delivery:{}:{}:{PROGRESS_EVENT}:{slot}:{}", job.id, job.attempts, target.key());
            let input = DeliveryInput {
                job_id: Some(job.id),
                event: PROGRESS_EVENT.to_owned(),
                attempt: job.attempts,
                target: target.clone(),
                webhook_id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
                redelivery_of: None,
                payload: None,
            };
            let new = NewJob { run_at: due, ..delivery_job(&input, Some(key), job.owner.clone()) };
            if let Err(err) = self.store.insert_job(new).await {
                // The next event in this interval tries again.
                self.progress_queued.lock().unwrap().remove(&job.id);
                return Err(err);
            }
        }
        Ok(targets.len())
    }

    /// Queues an event that is not about a job (`server.down`, `provider.*`) to every
    /// subscription that wants it, with its payload fixed now. `dedupe` names
    /// the occurrence, so API processes reporting the same one queue it once.
    pub async fn enqueue_event(&self, event: &str, payload: Value, dedupe: &str) -> Result<usize, StoreError> {
        let mut queued = 0;
        for (id, sub) in self.subscriptions().await?.iter() {
            if !sub.events.iter().any(|e| e == event) {
                continue;
            }
            let target = Target::Webhook { id: id.clone() };
            let key = format!("delivery:{event}:{dedupe}:{}", target.key());
            let input = DeliveryInput {
                job_id: None,
                event: event.to_owned(),
                attempt: 0,
                target,
                webhook_id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
                redelivery_of: None,
                payload: Some(payload.clone()),
            };
            self.store.insert_job(delivery_job(&input, Some(key), None)).await?;
            queued += 1;
        }
        Ok(queued)
    }
}

/// The queued job of a delivery; `key` makes queueing it idempotent. `owner`
/// is the owner of the job it is about (`None` for events about no job: only
/// admin sees those).
pub fn delivery_job(input: &DeliveryInput, key: Option<String>, owner: Option<String>) -> NewJob {
    let now = Utc::now();
    NewJob {
        id: orch_store::new_job_id(),
        kind: JobKind::Delivery,
        input: serde_json::to_value(input).expect("delivery inputs serialize"),
        metadata: Value::Object(Default::default()),
        max_attempts: if input.event == PROGRESS_EVENT { PROGRESS_ATTEMPTS } else { DELIVERY_ATTEMPTS },
        created_at: now,
        run_at: now,
        // The body hash is constant: a repeat is the same delivery, never a conflict.
        idempotency: key.map(|key| Idempotency {
            key,
            body_hash: "delivery".into(),
            expires_at: now + chrono::Duration::days(30),
        }),
        owner,
    }
}

#[async_trait]
impl orch_worker::provider_state::EventSink for Webhooks {
    async fn emit(&self, event: &str, payload: Value, dedupe: &str) -> Result<(), String> {
        self.enqueue_event(event, payload, dedupe).await.map(drop).map_err(|e| e.to_string())
    }
}

#[async_trait]
impl orch_worker::Followups for Webhooks {
    async fn before_terminal(&self, job: &Job, status: JobStatus) -> Result<(), String> {
        self.enqueue(job, status).await.map(drop).map_err(|e| e.to_string())
    }

    async fn after_progress(&self, job: &Job, progress: &Value) {
        if let Err(err) = self.enqueue_progress(job, progress).await {
            tracing::warn!(job = %job.id, error = %err, "queueing job.progress deliveries failed");
        }
    }
}

/// Headers a caller may not set on a delivery: the ones that frame the
/// request (a second value could smuggle a request or change how the body is
/// read) and the ones Orch sets itself (`Content-Type`, the `webhook-*`
/// signature headers), which a caller's value would replace or duplicate.
pub const RESERVED_HEADERS: [&str; 12] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "expect",
    "te",
    "trailer",
];

/// Why `name: value` cannot be an extra delivery header, or `Ok`.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("webhook-") {
        return Err(format!("{name:?} is set by Orch (the webhook-* signature headers); choose another name"));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "{name:?} frames the request or is set by Orch; these may not be set: {}, webhook-*",
            RESERVED_HEADERS.join(", ")
        ));
    }
    if reqwest::header::HeaderName::try_from(name).is_err() {
        return Err(format!("{name:?} is not a header name; use letters, digits and - (a token as RFC 9110 defines)"));
    }
    if reqwest::header::HeaderValue::try_from(value).is_err() {
        return Err("the value is not a header value; control characters (CR, LF, NUL) are not allowed".to_owned());
    }
    Ok(())
}
