//! Sending one delivery: which job and event, to which URL, with which
//! signature; how a response is judged; when to try again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_store::{Job, JobError, JobId, JobStatus};
use orch_worker::{Executor, JobContext};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::payload::{self, PayloadOptions};
use crate::{PROGRESS_EVENT, Secret, Webhooks, callback_of, guard};

/// Waits after failed attempts 1, 2, …: the first attempt is immediate.
pub const SCHEDULE: [Duration; 10] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(2 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(12 * 3600),
    Duration::from_secs(24 * 3600),
];

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The wait after failed attempt `attempt` (1-based), times `scale`, ±10 %.
pub fn retry_delay(attempt: u32, scale: f64) -> Duration {
    let step = SCHEDULE[(attempt.max(1) as usize - 1).min(SCHEDULE.len() - 1)];
    step.mul_f64(scale * rand::rng().random_range(0.9..1.1))
}

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Target {
    /// The job's own `callback`.
    Callback,
    /// A global subscription.
    Webhook { id: String },
}

impl Target {
    pub fn key(&self) -> String {
        match self {
            Target::Callback => "callback".into(),
            Target::Webhook { id } => format!("webhook:{id}"),
        }
    }
}

/// The input of a delivery job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInput {
    /// The job of a `job.*` event; its payload is built from the stored job when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// `job.succeeded`, …, `job.progress`, `server.down`
    pub event: String,
    /// The job's attempt that ended with the event.
    pub attempt: u32,
    pub target: Target,
    /// `webhook-id`: the same for every attempt (and redelivery).
    pub webhook_id: String,
    /// The delivery this one repeats (`POST /v1/deliveries/{id}/redeliver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery_of: Option<JobId>,
    /// The payload of an event that is not about a job (`server.down`), fixed when queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// A URL to POST to, with its extra headers and signing secret.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub secret: Option<Secret>,
}

/// How one attempt went.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// Why there was no response, or why the URL was refused.
    pub error: Option<(String, String)>,
    pub duration: Duration,
    /// The start of the response body, for `POST /v1/webhooks/test`.
    pub body: String,
}

/// Sends `body` once: resolves and checks the host, connects only to the
/// addresses checked, follows no redirect.
pub async fn send(webhooks: &Webhooks, endpoint: &Endpoint, webhook_id: &str, body: &[u8]) -> Attempt {
    let started = Instant::now();
    let failed = |code: &str, message: String| Attempt {
        status: None,
        retry_after: None,
        error: Some((code.to_owned(), message)),
        duration: started.elapsed(),
        body: String::new(),
    };
    let url = match guard::parse_url(&endpoint.url) {
        Ok(url) => url,
        Err(err) => return failed("invalid_url", err.to_string()),
    };
    let addrs = match webhooks.guard.resolve(&url).await {
        Ok(addrs) => addrs,
        Err(err) if err.is_transient() => return failed("dns", err.to_string()),
        Err(err) => return failed("refused_address", err.to_string()),
    };
    // reqwest has no TLS provider of its own here (see orch_mcp::tls); idempotent.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(webhooks.config.timeout)
        .no_proxy()
        .user_agent(concat!("Orch-Webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(url::Host::Domain(domain)) = url.host() {
        builder = builder.resolve_to_addrs(domain, &addrs);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(err) => return failed("internal", format!("cannot build the HTTP client: {err}")),
    };
    let timestamp = chrono::Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    for (name, value) in &endpoint.headers {
        // Checked at submission; a header stored before that check is dropped.
        if crate::check_header(name, value).is_err() {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            headers.insert(name, value);
        }
    }
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    };
    set("webhook-id", webhook_id.to_owned());
    set("webhook-timestamp", timestamp.to_string());
    if let Some(secret) = &endpoint.secret {
        set("webhook-signature", secret.sign(webhook_id, timestamp, body));
    }
    // `url` is the caller's text as parsed; query strings (n8n's `?signature=`) stay as given.
    let response = client.post(url).headers(headers).body(body.to_vec()).send().await.map_err(|e| e.without_url());
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            let mut text = response.text().await.unwrap_or_default();
            if text.len() > 1024 {
                let mut end = 1024;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            Attempt { status: Some(status), retry_after, error: None, duration: started.elapsed(), body: text }
        }
        Err(err) if err.is_timeout() => {
            failed("timeout", format!("no response within {}s", webhooks.config.timeout.as_secs_f64()))
        }
        Err(err) if err.is_connect() => failed("connect", format!("cannot connect: {}", source_chain(&err))),
        Err(err) => failed("request", source_chain(&err)),
    }
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs delivery jobs.
pub struct DeliveryExecutor(pub Arc<Webhooks>);

/// A delivery that ends without sending.
fn dropped(code: &str, message: String) -> JobError {
    JobError::new(code, message, false)
}

/// Why a delivery ended without sending because its job ended otherwise or
/// moved to another attempt; the API lists it with status `superseded`.
pub const SUPERSEDED: &str = "superseded";

/// A delivery that ends without sending, as intended: its result says why
/// (`skipped`), and it is not a failure.
fn skipped(code: &str, message: String) -> Value {
    json!({"skipped": code, "message": message})
}

/// Longest a job's terminal delivery waits for a progress delivery being sent
/// to the same target, beyond the response timeout.
const PROGRESS_DRAIN_MARGIN: Duration = Duration::from_secs(2);

impl DeliveryExecutor {
    /// The job, once its outcome for this delivery is recorded.
    async fn settled_job(&self, job_id: JobId, input: &DeliveryInput, ctx: &JobContext) -> Result<Job, JobError> {
        let store = &self.0.store;
        let deadline = Instant::now() + self.0.config.settle_wait;
        let watch = store.notifier().watch(job_id);
        loop {
            let wake = watch.changed();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let job = store
                .get_job(job_id)
                .await
                .map_err(|e| JobError::new("store", e.to_string(), true))?
                .ok_or_else(|| dropped("job_gone", format!("job {job_id} no longer exists")))?;
            let event_status = format!("job.{}", job.status);
            if job.attempts > input.attempt || (job.status.is_terminal() && event_status != input.event) {
                return Err(dropped(
                    SUPERSEDED,
                    format!(
                        "job {} did not end with {} in attempt {} (now {}, attempt {}); its actual outcome has its own delivery",
                        job.id, input.event, input.attempt, job.status, job.attempts
                    ),
                ));
            }
            if job.status.is_terminal() {
                return Ok(job);
            }
            if Instant::now() >= deadline {
                return Err(JobError::new(
                    "job_not_finished",
                    format!("job {} is still {}; trying again when it has ended", job.id, job.status),
                    true,
                )
                .retry_in(self.0.config.settle_wait));
            }
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = ctx.cancel.cancelled() => return Err(JobError::new("cancelled", "stopped", true)),
            }
        }
    }

    /// Sends `job.progress`: the job's progress as stored now, only while
    /// the job is still running the attempt that made it.
    async fn send_progress(
        &self,
        delivery: &Job,
        job_id: JobId,
        input: &DeliveryInput,
        ctx: &JobContext,
    ) -> Result<Value, JobError> {
        let store_error = |e: orch_store::StoreError| JobError::new("store", e.to_string(), true);
        let Some(job) = self.0.store.get_job(job_id).await.map_err(store_error)? else {
            return Ok(skipped("job_gone", format!("job {job_id} no longer exists")));
        };
        if job.status != JobStatus::Running || job.attempts != input.attempt {
            return Ok(skipped(
                SUPERSEDED,
                format!(
                    "job {} is {} (attempt {}) since this progress of attempt {}; its ending has its own delivery",
                    job.id, job.status, job.attempts, input.attempt
                ),
            ));
        }
        let endpoint = self.endpoint(input, Some(&job)).await?;
        let body = serde_json::to_vec(&payload::build(&job, &input.event, None, &self.payload_options()))
            .expect("payloads serialize");
        let attempt = self.send_logged(&endpoint, &input.webhook_id, &body, delivery.attempts, ctx).await;
        judge(&self.0.config, delivery.attempts, &attempt)
    }

    /// Waits while a `job.progress` delivery of the job to the same target is
    /// being sent, so that the ending arrives after it. A progress delivery
    /// that has not started yet will see the job ended and not send.
    async fn drain_progress(&self, job: &Job, input: &DeliveryInput, ctx: &JobContext) -> Result<(), JobError> {
        let wanted = match &input.target {
            Target::Callback => callback_of(job).is_some_and(|c| c.events.iter().any(|e| e == PROGRESS_EVENT)),
            Target::Webhook { id } => {
                let subs = self.0.subscriptions().await.map_err(|e| JobError::new("store", e.to_string(), true))?;
                subs.iter().any(|(sid, sub)| sid == id && sub.events.iter().any(|e| e == PROGRESS_EVENT))
            }
        };
        if !wanted {
            return Ok(());
        }
        let deadline = Instant::now() + self.0.config.timeout + PROGRESS_DRAIN_MARGIN;
        loop {
            let deliveries = self
                .0
                .store
                .job_deliveries(job.id, None, 100)
                .await
                .map_err(|e| JobError::new("store", e.to_string(), true))?;
            let sending = deliveries.iter().any(|d| {
                d.status == JobStatus::Running
                    && d.input["event"] == PROGRESS_EVENT
                    && serde_json::from_value::<Target>(d.input["target"].clone()).is_ok_and(|t| t == input.target)
            });
            if !sending || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = ctx.cancel.cancelled() => return Err(JobError::new("cancelled", "stopped", true)),
            }
        }
    }

    async fn endpoint(&self, input: &DeliveryInput, job: Option<&Job>) -> Result<Endpoint, JobError> {
        let secret = |text: &str| {
            Secret::parse(text).map_err(|e| dropped("invalid_secret", format!("the signing secret is unusable: {e}")))
        };
        match &input.target {
            Target::Callback => {
                let callback = job
                    .and_then(callback_of)
                    .ok_or_else(|| dropped("no_callback", "the delivery's job has no callback".to_owned()))?;
                let secret = callback.secret.as_deref().map(secret).transpose()?;
                Ok(Endpoint { url: callback.url, headers: callback.headers, secret })
            }
            Target::Webhook { id } => {
                let subs = self.0.subscriptions().await.map_err(|e| JobError::new("store", e.to_string(), true))?;
                let (_, sub) = subs
                    .iter()
                    .find(|(sid, _)| sid == id)
                    .ok_or_else(|| dropped("webhook_deleted", format!("subscription {id} was deleted")))?;
                Ok(Endpoint { url: sub.url.clone(), headers: sub.headers.clone(), secret: Some(secret(&sub.secret)?) })
            }
        }
    }
}

#[async_trait]
impl Executor for DeliveryExecutor {
    async fn run(&self, delivery: &Job, ctx: &JobContext) -> Result<Value, JobError> {
        let result = self.deliver(delivery, ctx).await;
        observe(delivery, &result);
        result
    }
}

/// Counts a delivery attempt by event and outcome: `delivered`, `skipped`
/// (superseded), `retrying` (the attempt failed and asks for another) or
/// `failed` (no retry: refused address, a status that ends it, out of attempts).
fn observe(delivery: &Job, result: &Result<Value, JobError>) {
    let event = delivery.input.get("event").and_then(Value::as_str).unwrap_or("");
    let event = crate::JOB_EVENTS
        .iter()
        .chain(crate::SERVER_EVENTS.iter())
        .chain(std::iter::once(&crate::PROGRESS_EVENT))
        .find(|known| **known == event)
        .copied()
        .unwrap_or("other");
    let outcome = match result {
        Ok(value) if value.get("skipped").is_some() => "skipped",
        Ok(_) => "delivered",
        Err(e) if e.retryable && delivery.attempts < delivery.max_attempts => "retrying",
        Err(_) => "failed",
    };
    metrics::counter!("orch_webhook_deliveries_total", "event" => event, "outcome" => outcome).increment(1);
    if let Ok(value) = result
        && let Some(ms) = value.get("duration_ms").and_then(Value::as_u64)
    {
        metrics::histogram!("orch_webhook_delivery_duration_seconds", "event" => event).record(ms as f64 / 1000.0);
    }
}

impl DeliveryExecutor {
    async fn deliver(&self, delivery: &Job, ctx: &JobContext) -> Result<Value, JobError> {
        let input: DeliveryInput = serde_json::from_value(delivery.input.clone())
            .map_err(|e| dropped("invalid_input", format!("stored delivery does not parse: {e}")))?;
        let Some(job_id) = input.job_id else {
            let payload =
                input.payload.as_ref().ok_or_else(|| dropped("invalid_input", "no job and no payload".into()))?;
            let endpoint = self.endpoint(&input, None).await?;
            let body = serde_json::to_vec(payload).expect("payloads serialize");
            let attempt = self.send_logged(&endpoint, &input.webhook_id, &body, delivery.attempts, ctx).await;
            return judge(&self.0.config, delivery.attempts, &attempt);
        };
        if input.event == PROGRESS_EVENT {
            return self.send_progress(delivery, job_id, &input, ctx).await;
        }
        let job = match self.settled_job(job_id, &input, ctx).await {
            Ok(job) => job,
            // Nothing went wrong: the job's actual outcome has its own delivery.
            Err(e) if e.code == SUPERSEDED => return Ok(skipped(SUPERSEDED, e.message)),
            Err(e) => return Err(e),
        };
        let endpoint = self.endpoint(&input, Some(&job)).await?;
        self.drain_progress(&job, &input, ctx).await?;
        let result = match job.status {
            JobStatus::Succeeded => {
                self.0.store.get_result(job.id).await.map_err(|e| JobError::new("store", e.to_string(), true))?
            }
            _ => None,
        };
        let body = serde_json::to_vec(&payload::build(&job, &input.event, result.as_ref(), &self.payload_options()))
            .expect("payloads serialize");
        let attempt = self.send_logged(&endpoint, &input.webhook_id, &body, delivery.attempts, ctx).await;
        judge(&self.0.config, delivery.attempts, &attempt)
    }
}

/// First wait between quick retries of a 409.
const CONFLICT_FIRST_WAIT: Duration = Duration::from_secs(1);
/// Longest wait between quick retries of a 409.
const CONFLICT_MAX_WAIT: Duration = Duration::from_secs(5);
/// Longest a delivery keeps retrying a 409 quickly in one attempt; the rest
/// of the schedule's wait is waited as usual.
const CONFLICT_WINDOW: Duration = Duration::from_secs(120);

/// The waits between quick retries of a 409 that fit in `window` (the wait
/// the normal schedule would make): about a second apart, growing by half
/// each time up to [`CONFLICT_MAX_WAIT`].
pub fn conflict_waits(window: Duration) -> Vec<Duration> {
    let mut waits = Vec::new();
    let mut wait = CONFLICT_FIRST_WAIT;
    let mut total = Duration::ZERO;
    while total + wait <= window {
        waits.push(wait);
        total += wait;
        wait = wait.mul_f64(1.5).min(CONFLICT_MAX_WAIT);
    }
    waits
}

impl DeliveryExecutor {
    /// Sends `body`, recording each attempt in the delivery's log (its
    /// events). A 409 is what n8n answers a resume URL while the execution is
    /// not waiting yet: it is retried at once about a second apart, backing
    /// off, within the wait the schedule would have made, so a flow that
    /// reaches its Wait node late is resumed within a second or so.
    async fn send_logged(
        &self,
        endpoint: &Endpoint,
        webhook_id: &str,
        body: &[u8],
        attempt: u32,
        ctx: &JobContext,
    ) -> Attempt {
        let mut waits = None::<(Duration, std::vec::IntoIter<Duration>)>;
        let mut waited = Duration::ZERO;
        loop {
            let mut sent = send(&self.0, endpoint, webhook_id, body).await;
            ctx.progress(attempt_entry(&sent)).await;
            if sent.status != Some(409) || sent.retry_after.is_some() {
                return sent;
            }
            let (window, waits) = waits.get_or_insert_with(|| {
                let window = retry_delay(attempt, self.0.config.retry_scale);
                (window, conflict_waits(window.min(CONFLICT_WINDOW)).into_iter())
            });
            let Some(wait) = waits.next() else {
                if waited > Duration::ZERO {
                    // The schedule's next attempt stays where it was.
                    sent.retry_after = Some(window.saturating_sub(waited));
                }
                return sent;
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => waited += wait,
                _ = ctx.cancel.cancelled() => return sent,
            }
        }
    }
}

/// One attempt as the delivery log shows it: when, the status or error, and
/// the start of the receiver's answer.
fn attempt_entry(sent: &Attempt) -> Value {
    let mut excerpt = sent.body.clone();
    if excerpt.len() > 300 {
        let mut end = 300;
        while !excerpt.is_char_boundary(end) {
            end -= 1;
        }
        excerpt.truncate(end);
    }
    json!({
        "type": "attempt",
        "at": chrono::Utc::now(),
        "response_status": sent.status,
        "error": sent.error.as_ref().map(|(code, message)| json!({"code": code, "message": message})),
        "body_excerpt": excerpt,
        "duration_ms": sent.duration.as_millis() as u64,
    })
}

impl DeliveryExecutor {
    fn payload_options(&self) -> PayloadOptions {
        payload_options(&self.0.config)
    }
}

pub fn payload_options(config: &crate::WebhookConfig) -> PayloadOptions {
    PayloadOptions {
        obsidian_path: config.obsidian_path.clone(),
        public_url: config.public_url.clone(),
        max_bytes: config.max_payload,
    }
}

/// The outcome of attempt number `attempt` of a delivery.
pub fn judge(config: &crate::WebhookConfig, attempt: u32, sent: &Attempt) -> Result<Value, JobError> {
    let later = |code: String, message: String| {
        let delay = sent.retry_after.unwrap_or_else(|| retry_delay(attempt, config.retry_scale));
        JobError::new(code, message, true).retry_in(delay)
    };
    match (sent.status, &sent.error) {
        (Some(status), _) if (200..300).contains(&status) => {
            Ok(json!({"response_status": status, "duration_ms": sent.duration.as_millis() as u64}))
        }
        (Some(status), _) if config.fail_statuses.contains(&status) => {
            Err(JobError::new(format!("http_{status}"), format!("the receiver answered {status}; not retried"), false))
        }
        (Some(status), _) if matches!(status, 408 | 409 | 425 | 429) || status >= 500 => {
            Err(later(format!("http_{status}"), format!("the receiver answered {status}; retrying")))
        }
        (Some(status), _) => Err(JobError::new(
            format!("http_{status}"),
            format!("the receiver answered {status}, which is neither success nor worth retrying"),
            false,
        )),
        (None, Some((code, message))) if code == "refused_address" || code == "invalid_url" => {
            Err(JobError::new(code.clone(), message.clone(), false))
        }
        (None, Some((code, message))) => Err(later(code.clone(), message.clone())),
        (None, None) => Err(later("request".into(), "no response".into())),
    }
}

/// The URL without its query string, which may hold a secret (n8n's `signature`).
pub fn redact_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(status: Option<u16>, error: Option<&str>) -> Attempt {
        Attempt {
            status,
            retry_after: None,
            error: error.map(|e| (e.to_owned(), "x".to_owned())),
            duration: Duration::ZERO,
            body: String::new(),
        }
    }

    /// (response, retried?) per the issue: 2xx done; 404/410 final; 409, 429, 5xx,
    /// timeouts and connection errors retried.
    #[test]
    fn responses_are_judged() {
        let config = crate::WebhookConfig::default();
        for (status, error, expected) in [
            (Some(200), None, "ok"),
            (Some(204), None, "ok"),
            (Some(404), None, "final"),
            (Some(410), None, "final"),
            (Some(400), None, "final"),
            (Some(409), None, "retry"),
            (Some(429), None, "retry"),
            (Some(500), None, "retry"),
            (Some(503), None, "retry"),
            (Some(302), None, "final"),
            (None, Some("timeout"), "retry"),
            (None, Some("connect"), "retry"),
            (None, Some("refused_address"), "final"),
        ] {
            let got = match judge(&config, 1, &attempt(status, error)) {
                Ok(_) => "ok",
                Err(e) if e.retryable => "retry",
                Err(_) => "final",
            };
            assert_eq!(got, expected, "{status:?} {error:?}");
        }
    }

    #[test]
    fn the_schedule_is_scaled_and_jittered() {
        for (attempt, base) in [(1, 5.0), (2, 30.0), (3, 120.0), (10, 86400.0), (11, 86400.0)] {
            let d = retry_delay(attempt, 1.0).as_secs_f64();
            assert!(d >= base * 0.9 - 1e-6 && d <= base * 1.1 + 1e-6, "attempt {attempt}: {d}");
        }
        let d = retry_delay(1, 0.01).as_secs_f64();
        assert!((0.045..=0.055).contains(&d), "{d}");
    }

    #[test]
    fn conflicts_are_retried_about_a_second_apart_within_the_schedule() {
        let waits = conflict_waits(Duration::from_secs(30));
        assert_eq!(waits[0], Duration::from_secs(1));
        assert!(waits.windows(2).all(|w| w[1] >= w[0] && w[1] <= CONFLICT_MAX_WAIT), "{waits:?}");
        assert!(waits.iter().sum::<Duration>() <= Duration::from_secs(30));
        assert!(conflict_waits(Duration::from_millis(50)).is_empty());
    }

    #[test]
    fn retry_after_wins() {
        let config = crate::WebhookConfig::default();
        let sent = Attempt { retry_after: Some(Duration::from_secs(7)), ..attempt(Some(429), None) };
        assert_eq!(judge(&config, 1, &sent).unwrap_err().retry_in, Some(Duration::from_secs(7)));
    }
}
