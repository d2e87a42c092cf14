//! Orch's worker: claims due jobs from a [`Store`], runs them under a
//! concurrency limit, and records how each attempt ended.
//!
//! One worker process runs these loops:
//! - the claim loop takes up to `claim_batch` due jobs whenever there is room,
//!   and sleeps on the in-process notifier (or `poll_interval`) when idle;
//! - the completion flusher writes finished attempts in batches, so a busy
//!   worker costs the store one round trip per batch rather than per job;
//! - the cancel listener stops a running job as soon as its cancellation is
//!   requested, told by the store's notifier (in this process, or over Redis
//!   pub/sub from another) without reading the store;
//! - the heartbeat extends the leases of running jobs and stops the ones whose
//!   cancellation was requested (the safety net under the listener) or whose
//!   lease was lost; a watchdog stops, without an outcome, the ones whose lease
//!   could not be renewed in time;
//! - maintenance requeues jobs whose worker died (expired lease) and purges
//!   finished jobs past the retention.
//!
//! Jobs are at-least-once: a job whose worker dies is run again by another
//! worker; the store only accepts the outcome of the lease holder, so a caller
//! sees exactly one result.

pub mod chat;
pub mod exec;
pub mod limit;
pub mod llm;
pub mod plan;
pub mod planning;
pub mod provider_state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use orch_store::{CancelSignal, Completion, Job, JobError, JobId, JobKind, JobStatus, Outcome, Store, WorkerInfo};
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use exec::{Executor, Executors, Followups, JobContext};
pub use plan::PlanRunner;
pub use planning::{PlannerSettings, Planning};

/// How a worker behaves; every field is a user setting (see docs/configuration.md).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique per process; leases are held in this name.
    pub id: String,
    /// Most jobs running at once in this process.
    pub concurrency: usize,
    /// Most jobs claimed in one store round trip.
    pub claim_batch: usize,
    /// How long a claimed job stays ours without a heartbeat.
    pub lease: Duration,
    /// How often an idle worker looks for due jobs queued by other processes.
    pub poll_interval: Duration,
    /// Backoff of the first retry; doubles per attempt, with ±20 % jitter.
    pub retry_base: Duration,
    /// Longest backoff between attempts.
    pub retry_max: Duration,
    /// Longest one attempt may run before it fails with `timeout`.
    pub job_timeout: Duration,
    /// Finished jobs older than this are deleted.
    pub retention: Duration,
    /// Audit records older than this are deleted (`ORCH_AUDIT_RETENTION`).
    pub audit_retention: Duration,
    /// How often finished jobs past the retention are looked for.
    pub purge_interval: Duration,
    /// On shutdown, how long running jobs may take to finish.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    pub fn new(id: String) -> WorkerConfig {
        WorkerConfig {
            id,
            concurrency: 256,
            claim_batch: 500,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            job_timeout: Duration::from_secs(3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention: Duration::from_secs(30 * 24 * 3600),
            purge_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A name for this process's worker: host, pid and a random suffix.
pub fn worker_id() -> String {
    let host = hostname();
    let suffix: u32 = rand::rng().random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Backoff before attempt `attempts + 1`: `base * 2^(attempts-1)`, capped, ±20 %.
pub fn retry_delay(config: &WorkerConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let raw = config.retry_base.saturating_mul(1u32 << exp).min(config.retry_max);
    let jitter: f64 = rand::rng().random_range(0.8..1.2);
    raw.mul_f64(jitter)
}

/// The outcome to record for an attempt that returned `result`. An error's
/// own `retry_in` wins over the backoff.
pub fn outcome_of(config: &WorkerConfig, job: &Job, result: Result<serde_json::Value, JobError>) -> Outcome {
    match result {
        Ok(result) => Outcome::Succeeded { result },
        Err(error) if error.retryable && job.attempts < job.max_attempts => {
            let delay = error.retry_in.unwrap_or_else(|| retry_delay(config, job.attempts));
            let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            Outcome::Failed { error, retry_at: Some(retry_at) }
        }
        Err(error) => Outcome::Failed { error, retry_at: None },
    }
}

/// One running attempt.
struct Attempt {
    /// Stops the attempt.
    cancel: CancellationToken,
    /// When the last lease renewal that succeeded was sent (the claim at
    /// first): the store's lease runs at least `lease` from then.
    renewed: Instant,
    /// Stopped without an outcome (lease about to expire, or shutdown grace
    /// over): the store hands the job to another attempt.
    abandoned: bool,
}

/// Jobs this process is running, with the token that stops each.
#[derive(Default)]
struct Running {
    jobs: Mutex<HashMap<JobId, Attempt>>,
    /// Fires when a job finishes (room for another).
    freed: Notify,
    /// Cancellations heard for jobs not (yet) in `jobs`, with when: a cancel
    /// can overtake the claim that started the job. Locked after `jobs`.
    cancelled_early: Mutex<Vec<(JobId, Instant)>>,
}

/// How long an early cancellation is kept for a claim still on its way.
const EARLY_CANCEL_KEPT: Duration = Duration::from_secs(10);
/// Most early cancellations kept.
const EARLY_CANCEL_MAX: usize = 1000;

impl Running {
    fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    fn ids(&self) -> Vec<JobId> {
        self.jobs.lock().unwrap().keys().copied().collect()
    }

    /// Starts tracking an attempt; stops it at once when its cancellation
    /// was heard before it started.
    fn insert(&self, id: JobId, attempt: Attempt) {
        let mut jobs = self.jobs.lock().unwrap();
        let mut early = self.cancelled_early.lock().unwrap();
        if let Some(i) = early.iter().position(|(early_id, _)| *early_id == id) {
            early.swap_remove(i);
            attempt.cancel.cancel();
        }
        jobs.insert(id, attempt);
    }

    /// Stops an attempt whose cancellation was requested (it records
    /// `cancelled`); remembers it for a while when it has not started yet.
    fn cancel(&self, id: JobId) {
        let jobs = self.jobs.lock().unwrap();
        match jobs.get(&id) {
            Some(attempt) => {
                if !attempt.cancel.is_cancelled() {
                    tracing::info!(job = %id, "stopping job: cancelled");
                }
                attempt.cancel.cancel();
            }
            None => {
                let mut early = self.cancelled_early.lock().unwrap();
                early.retain(|(_, at)| at.elapsed() < EARLY_CANCEL_KEPT);
                if early.len() < EARLY_CANCEL_MAX {
                    early.push((id, Instant::now()));
                }
            }
        }
    }

    /// Stops an attempt without recording an outcome for it.
    fn abandon(&self, id: JobId) {
        if let Some(attempt) = self.jobs.lock().unwrap().get_mut(&id) {
            attempt.abandoned = true;
            attempt.cancel.cancel();
        }
    }

    fn is_abandoned(&self, id: JobId) -> bool {
        self.jobs.lock().unwrap().get(&id).is_some_and(|a| a.abandoned)
    }

    /// Waits until no attempt runs, or `limit` has passed.
    async fn wait_idle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.len() == 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline, freed).await;
        }
    }

    /// Forgets a finished attempt and makes room for another.
    fn remove(&self, id: JobId) {
        self.jobs.lock().unwrap().remove(&id);
        self.freed.notify_waiters();
    }
}

/// How long before its lease expires (as this process counts it from the
/// last renewal that succeeded) an attempt whose lease could not be renewed
/// is stopped: a quarter of the lease, so that it is gone before another
/// worker may take the job.
fn lease_margin(lease: Duration) -> Duration {
    lease / 4
}

/// Runs the worker until `shutdown` fires, then lets running jobs finish for
/// up to `shutdown_grace`. Jobs still running after that are stopped (their
/// CLIs killed, their tool calls dropped) and handed back to the queue at
/// once, without waiting for their lease to expire; then it returns.
pub async fn run(store: Arc<dyn Store>, executors: Arc<Executors>, config: WorkerConfig, shutdown: CancellationToken) {
    let config = Arc::new(config);
    let running = Arc::new(Running::default());
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Completion>();
    let started_at = Utc::now();
    let stop_background = CancellationToken::new();
    // Asks the heartbeat to look at once (cancellations may have been missed).
    let recheck = Arc::new(Notify::new());

    let flusher = tokio::spawn(flush_completions(store.clone(), config.clone(), running.clone(), done_rx));
    let heartbeat = tokio::spawn(heartbeat_loop(
        store.clone(),
        config.clone(),
        running.clone(),
        started_at,
        recheck.clone(),
        stop_background.clone(),
    ));
    let listener = tokio::spawn(cancel_listener(
        store.notifier().cancels(),
        config.clone(),
        running.clone(),
        recheck.clone(),
        stop_background.clone(),
    ));
    let watchdog = tokio::spawn(lease_watchdog(config.clone(), running.clone(), stop_background.clone()));
    let maintenance = tokio::spawn(maintenance_loop(
        store.clone(),
        config.clone(),
        executors.followups.clone(),
        stop_background.clone(),
    ));
    tracing::info!(worker = %config.id, concurrency = config.concurrency, backend = store.backend(), "worker started");

    claim_loop(&store, &executors, &config, &running, &done_tx, &shutdown).await;

    tracing::info!(worker = %config.id, running = running.len(), "worker stopping; waiting for running jobs");
    running.wait_idle(config.shutdown_grace).await;
    let left = running.ids();
    if !left.is_empty() {
        tracing::warn!(worker = %config.id, left = left.len(), "shutdown grace over; stopping these jobs and handing them back to the queue");
        for id in &left {
            running.abandon(*id);
        }
        // Each attempt gets ABANDON_GRACE to wind down, then is dropped.
        running.wait_idle(ABANDON_GRACE + Duration::from_millis(500)).await;
    }
    drop(done_tx);
    stop_background.cancel();
    let _ = flusher.await;
    let _ = heartbeat.await;
    let _ = listener.await;
    let _ = watchdog.await;
    let _ = maintenance.await;
    if !left.is_empty() {
        hand_back(store.as_ref(), &config, executors.followups.as_deref(), &left, started_at).await;
    }
    tracing::info!(worker = %config.id, "worker stopped");
}

async fn claim_loop(
    store: &Arc<dyn Store>,
    executors: &Arc<Executors>,
    config: &Arc<WorkerConfig>,
    running: &Arc<Running>,
    done_tx: &mpsc::UnboundedSender<Completion>,
    shutdown: &CancellationToken,
) {
    let mut store_backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        // Listen before looking, so a job finishing in between still wakes us.
        let freed = running.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let room = config.concurrency.saturating_sub(running.len());
        if room == 0 {
            tokio::select! {
                _ = freed => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        // Register interest before claiming so a job queued in between wakes us.
        let queued = store.notifier().jobs().notified();
        let jobs = match store.claim(&config.id, room.min(config.claim_batch), config.lease).await {
            Ok(jobs) => {
                store_backoff = Duration::from_millis(100);
                jobs
            }
            Err(err) => {
                tracing::warn!(worker = %config.id, error = %err, "claiming jobs failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(store_backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if jobs.is_empty() {
            tokio::select! {
                _ = queued => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        for job in jobs {
            start_job(store, executors, config, running, done_tx, job);
        }
    }
}

/// How long a cancelled attempt may take to wind down before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// How long an abandoned attempt may take to wind down before it is dropped
/// (which kills its CLIs and drops its tool calls).
const ABANDON_GRACE: Duration = Duration::from_millis(200);

/// This worker as its heartbeats describe it, with `running` jobs.
fn worker_info(config: &WorkerConfig, started_at: chrono::DateTime<Utc>, running: usize) -> WorkerInfo {
    WorkerInfo {
        id: config.id.clone(),
        hostname: hostname(),
        pid: std::process::id(),
        started_at,
        last_seen: Utc::now(),
        concurrency: config.concurrency as u32,
        running: running as u32,
    }
}

/// Hands jobs this worker stopped back to the queue now: their leases end at
/// once and they are recovered like the jobs of a worker that died (the
/// attempt counts). Retries store errors for a while; what is left then goes
/// back when its lease expires.
async fn hand_back(
    store: &dyn Store,
    config: &WorkerConfig,
    followups: Option<&dyn Followups>,
    ids: &[JobId],
    started_at: chrono::DateTime<Utc>,
) {
    let info = worker_info(config, started_at, 0);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = async {
            store.release(&info, ids).await.map_err(|e| e.to_string())?;
            // A millisecond later the released leases are expired.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now = Utc::now();
            if let Some(followups) = followups {
                before_recovery(store, followups, now, ids.len().max(1000)).await?;
            }
            store.recover_expired(now, ids.len().max(1000)).await.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(_) => {
                tracing::info!(worker = %config.id, jobs = ids.len(), "handed the stopped jobs back to the queue");
                return;
            }
            Err(err) if tokio::time::Instant::now() >= give_up => {
                tracing::warn!(worker = %config.id, error = %err, "handing the stopped jobs back failed; they go back when their lease expires");
                return;
            }
            Err(err) => {
                tracing::warn!(worker = %config.id, error = %err, "handing the stopped jobs back failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn start_job(
    store: &Arc<dyn Store>,
    executors: &Arc<Executors>,
    config: &Arc<WorkerConfig>,
    running: &Arc<Running>,
    done_tx: &mpsc::UnboundedSender<Completion>,
    job: Job,
) {
    let cancel = CancellationToken::new();
    // The lease runs from the claim, which was sent before now.
    let attempt = Attempt { cancel: cancel.clone(), renewed: Instant::now(), abandoned: false };
    running.insert(job.id, attempt);
    let followups = match (&executors.followups, job.kind) {
        (Some(followups), JobKind::Chat | JobKind::Batch) => Some((followups.clone(), Arc::new(job.clone()))),
        _ => None,
    };
    let ctx = JobContext {
        store: store.clone(),
        worker: config.id.clone(),
        job_id: job.id,
        cancel: cancel.clone(),
        followups,
    };
    let executors = executors.clone();
    let config = config.clone();
    let done_tx = done_tx.clone();
    let running = running.clone();
    // Every line logged while the attempt runs (its nodes, turns and tool
    // calls included) carries the job's id.
    let span = tracing::info_span!("job", job_id = %job.id, kind = job.kind.as_str(), attempt = job.attempts);
    let task = async move {
        let started = Instant::now();
        let kind = job.kind.as_str();
        metrics::counter!("orch_jobs_total", "kind" => kind, "status" => "running").increment(1);
        tracing::debug!("job attempt started");
        let attempt = tokio::time::timeout(config.job_timeout, executors.run(&job, &ctx));
        tokio::pin!(attempt);
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                if running.is_abandoned(job.id) {
                    // No outcome: the store gives the job to another attempt.
                    // Dropping the attempt kills its CLIs and drops its tool calls.
                    let _ = tokio::time::timeout(ABANDON_GRACE, attempt).await;
                    running.remove(job.id);
                    return;
                }
                // The executor sees the token too: a moment to stop its steps and record so.
                let _ = tokio::time::timeout(CANCEL_GRACE, attempt).await;
                Outcome::Cancelled
            }
            result = &mut attempt => match result {
                Ok(result) => outcome_of(&config, &job, result),
                Err(_) => outcome_of(&config, &job, Err(JobError::new(
                    "timeout",
                    format!("the attempt ran longer than the job timeout of {}s", config.job_timeout.as_secs()),
                    true,
                ))),
            },
        };
        if running.is_abandoned(job.id) {
            running.remove(job.id);
            return;
        }
        let status = outcome_label(&outcome);
        let seconds = started.elapsed().as_secs_f64();
        metrics::counter!("orch_jobs_total", "kind" => kind, "status" => status).increment(1);
        metrics::histogram!("orch_job_duration_seconds", "kind" => kind, "status" => status).record(seconds);
        match &outcome {
            Outcome::Failed { error, .. } => {
                tracing::info!(status, seconds, error = %error.code, "job attempt finished")
            }
            _ => tracing::info!(status, seconds, "job attempt finished"),
        }
        if let (Some(followups), Some(status)) = (&executors.followups, terminal_status(&job, &outcome)) {
            before_terminal(followups.as_ref(), &job, status).await;
        }
        // The flusher removes the job from `running` once the outcome is stored.
        let _ = done_tx.send(Completion { job_id: job.id, outcome });
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
}

/// The status an attempt's outcome gives its job, as a metrics label:
/// `succeeded`, `failed`, `cancelled`, or `retrying` (queued again for a later attempt).
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Failed { retry_at: None, .. } => "failed",
        Outcome::Failed { retry_at: Some(_), .. } => "retrying",
        Outcome::Cancelled => "cancelled",
    }
}

/// The terminal status `outcome` gives a job that has follow-ups (not a delivery).
fn terminal_status(job: &Job, outcome: &Outcome) -> Option<JobStatus> {
    if job.kind == JobKind::Delivery {
        return None;
    }
    match outcome {
        Outcome::Succeeded { .. } => Some(JobStatus::Succeeded),
        Outcome::Failed { retry_at: None, .. } => Some(JobStatus::Failed),
        Outcome::Failed { retry_at: Some(_), .. } => None,
        Outcome::Cancelled => Some(JobStatus::Cancelled),
    }
}

/// Runs the follow-ups of a terminal status, retrying store errors like the
/// flusher does: the status is never written without them.
async fn before_terminal(followups: &dyn Followups, job: &Job, status: JobStatus) {
    let mut backoff = Duration::from_millis(100);
    while let Err(err) = followups.before_terminal(job, status).await {
        tracing::warn!(job = %job.id, error = %err, "queueing the job's webhook deliveries failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Writes outcomes in batches. A store error is retried until it succeeds:
/// an outcome is never dropped while the process lives.
async fn flush_completions(
    store: Arc<dyn Store>,
    config: Arc<WorkerConfig>,
    running: Arc<Running>,
    mut done_rx: mpsc::UnboundedReceiver<Completion>,
) {
    let mut batch = Vec::with_capacity(config.claim_batch);
    while let Some(first) = done_rx.recv().await {
        batch.push(first);
        while batch.len() < config.claim_batch.max(1) {
            match done_rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let ids: Vec<JobId> = batch.iter().map(|c| c.job_id).collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.complete(&config.id, batch.clone()).await {
                Ok(applied) => {
                    for (id, ok) in ids.iter().zip(applied) {
                        if !ok {
                            tracing::info!(job = %id, "outcome not recorded: the job's lease was lost to another worker");
                        }
                    }
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, jobs = ids.len(), "recording outcomes failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
        {
            let mut jobs = running.jobs.lock().unwrap();
            for id in &ids {
                jobs.remove(id);
            }
        }
        running.freed.notify_waiters();
    }
}

async fn heartbeat_loop(
    store: Arc<dyn Store>,
    config: Arc<WorkerConfig>,
    running: Arc<Running>,
    started_at: chrono::DateTime<Utc>,
    recheck: Arc<Notify>,
    stop: CancellationToken,
) {
    let interval = (config.lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = recheck.notified() => {}
            _ = stop.cancelled() => return,
        }
        let ids = running.ids();
        let sent = Instant::now();
        let info = worker_info(&config, started_at, ids.len());
        match store.heartbeat(&info, &ids, config.lease).await {
            Ok(stop_ids) => {
                let mut jobs = running.jobs.lock().unwrap();
                for id in &ids {
                    if let Some(attempt) = jobs.get_mut(id)
                        && !stop_ids.contains(id)
                    {
                        attempt.renewed = attempt.renewed.max(sent);
                    }
                }
                for id in stop_ids {
                    if let Some(attempt) = jobs.get(&id) {
                        tracing::info!(job = %id, "stopping job: cancelled, or its lease moved to another worker");
                        attempt.cancel.cancel();
                    }
                }
            }
            Err(err) => tracing::warn!(worker = %config.id, error = %err, "heartbeat failed"),
        }
    }
}

/// Stops running jobs whose cancellation the store's notifier reports for
/// this worker, at once; when signals may have been lost, has the heartbeat
/// look in the store.
async fn cancel_listener(
    mut cancels: mpsc::UnboundedReceiver<CancelSignal>,
    config: Arc<WorkerConfig>,
    running: Arc<Running>,
    recheck: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let signal = tokio::select! {
            signal = cancels.recv() => signal,
            _ = stop.cancelled() => return,
        };
        match signal {
            Some(CancelSignal::Job { worker, job }) if worker == config.id => running.cancel(job),
            Some(CancelSignal::Job { .. }) => {}
            Some(CancelSignal::Missed) => recheck.notify_one(),
            None => return,
        }
    }
}

/// Stops the attempts whose lease this process could not renew before the
/// store may give their job to another worker (see [`lease_margin`]).
async fn lease_watchdog(config: Arc<WorkerConfig>, running: Arc<Running>, stop: CancellationToken) {
    let keep = config.lease.saturating_sub(lease_margin(config.lease));
    let mut tick = tokio::time::interval((config.lease / 20).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let mut jobs = running.jobs.lock().unwrap();
        for (id, attempt) in jobs.iter_mut() {
            if !attempt.abandoned && attempt.renewed.elapsed() >= keep {
                tracing::warn!(job = %id, worker = %config.id, "stopping job: its lease could not be renewed and is about to expire; another attempt will run it");
                attempt.abandoned = true;
                attempt.cancel.cancel();
            }
        }
    }
}

async fn maintenance_loop(
    store: Arc<dyn Store>,
    config: Arc<WorkerConfig>,
    followups: Option<Arc<dyn Followups>>,
    stop: CancellationToken,
) {
    const RECOVER_EVERY: Duration = Duration::from_secs(1);
    const CHUNK: usize = 1000;
    let mut recover = tokio::time::interval(RECOVER_EVERY.min(config.lease / 2));
    let mut purge = tokio::time::interval(config.purge_interval);
    loop {
        tokio::select! {
            _ = recover.tick() => {
                let now = Utc::now();
                if let Some(followups) = &followups
                    && let Err(err) = before_recovery(store.as_ref(), followups.as_ref(), now, CHUNK).await
                {
                    tracing::warn!(error = %err, "queueing deliveries of expired jobs failed; recovering later");
                    continue;
                }
                match store.recover_expired(now, CHUNK).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(jobs = n, "recovered jobs whose worker stopped heartbeating"),
                    Err(err) => tracing::warn!(error = %err, "recovering expired leases failed"),
                }
            }
            _ = purge.tick() => purge_old(store.as_ref(), &config, CHUNK).await,
            _ = stop.cancelled() => return,
        }
    }
}

/// Recovery ends some expired jobs for good (cancellation requested, or no
/// attempts left); their follow-ups are queued before the store moves them.
async fn before_recovery(
    store: &dyn Store,
    followups: &dyn Followups,
    now: chrono::DateTime<Utc>,
    limit: usize,
) -> Result<(), String> {
    for job in store.expired_jobs(now, limit).await.map_err(|e| e.to_string())? {
        let status = if job.cancel_requested {
            JobStatus::Cancelled
        } else if job.attempts >= job.max_attempts {
            JobStatus::Failed
        } else {
            continue;
        };
        if job.kind != JobKind::Delivery {
            followups.before_terminal(&job, status).await?;
        }
    }
    Ok(())
}

async fn purge_old(store: &dyn Store, config: &WorkerConfig, chunk: usize) {
    let before = Utc::now() - chrono::Duration::from_std(config.retention).unwrap_or_default();
    let mut total = 0;
    loop {
        match store.purge(before, chunk).await {
            Ok(n) => {
                total += n;
                if (n as usize) < chunk {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "purging old jobs failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(jobs = total, "purged finished jobs past the retention");
    }
    let before = Utc::now() - chrono::Duration::from_std(config.audit_retention).unwrap_or_default();
    match store.purge_audit(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(records = n, "purged audit records past the retention"),
        Err(err) => tracing::warn!(error = %err, "purging old audit records failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_errors_own_retry_delay_wins_over_the_backoff() {
        let config = WorkerConfig::new("w".into());
        let now = Utc::now();
        let job = Job {
            id: orch_store::new_job_id(),
            kind: JobKind::Delivery,
            status: JobStatus::Running,
            input: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            attempts: 1,
            max_attempts: 11,
            progress: None,
            error: None,
            created_at: now,
            updated_at: now,
            run_at: now,
            started_at: Some(now),
            finished_at: None,
            cancel_requested: false,
            worker: Some("w".into()),
            lease_expires_at: None,
            owner: None,
        };
        let error = JobError::new("http_503", "busy", true).retry_in(Duration::from_secs(3600));
        let Outcome::Failed { retry_at: Some(at), .. } = outcome_of(&config, &job, Err(error)) else {
            panic!("expected a retry")
        };
        let wait = (at - Utc::now()).num_seconds();
        assert!((3590..=3600).contains(&wait), "{wait}");
        // Out of attempts, it is final whatever the error asks.
        let last = Job { attempts: 11, ..job };
        let error = JobError::new("http_503", "busy", true).retry_in(Duration::from_secs(5));
        assert!(matches!(outcome_of(&config, &last, Err(error)), Outcome::Failed { retry_at: None, .. }));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut config = WorkerConfig::new("w".into());
        config.retry_base = Duration::from_secs(1);
        config.retry_max = Duration::from_secs(10);
        for (attempts, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (40, 10.0)] {
            let d = retry_delay(&config, attempts).as_secs_f64();
            assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9, "attempt {attempts}: {d}");
        }
    }
}
