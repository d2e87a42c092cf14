//! What running a job means, per kind: chat turns and batch plans.
//!
//! Chat runs on the configured providers ([`crate::chat`]); batch plans run in
//! [`crate::plan`], their `llm` steps on the same providers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orch_store::{Job, JobError, JobId, JobKind, JobStatus, Store};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::plan::PlanRunner;
use crate::planning::{PlannerSettings, Planning};

/// What an executor may use while running one attempt.
#[derive(Clone)]
pub struct JobContext {
    pub store: Arc<dyn Store>,
    pub worker: String,
    pub job_id: JobId,
    /// Fires when the job is cancelled or its lease is lost.
    pub cancel: CancellationToken,
    /// Told of every progress event recorded, with the job as claimed
    /// (webhook `job.progress` deliveries).
    pub followups: Option<(Arc<dyn Followups>, Arc<Job>)>,
}

impl JobContext {
    /// Records progress; a failure to record is logged, not fatal.
    pub async fn progress(&self, progress: Value) {
        if let Err(err) = self.try_progress(&progress).await {
            tracing::warn!(job = %self.job_id, error = %err, "recording progress failed");
        }
    }

    /// Records progress once and tells the follow-ups.
    pub async fn try_progress(&self, progress: &Value) -> Result<(), orch_store::StoreError> {
        self.store.record_progress(&self.worker, self.job_id, progress.clone()).await?;
        if let Some((followups, job)) = &self.followups {
            followups.after_progress(job, progress).await;
        }
        Ok(())
    }

    /// Records progress, retrying store errors until it is written or the
    /// attempt is stopped (cancelled, lease lost or about to be); returns
    /// whether it was written. A plan's node events are its checkpoints, so
    /// they are not dropped while the store is down.
    pub async fn checkpoint(&self, progress: Value) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_progress(&progress).await {
                Ok(()) => return true,
                Err(err) => {
                    tracing::warn!(job = %self.job_id, error = %err, "recording progress failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.cancel.cancelled() => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Runs one attempt of a job of one kind.
#[async_trait]
pub trait Executor: Send + Sync {
    async fn run(&self, job: &Job, ctx: &JobContext) -> Result<Value, JobError>;
}

/// Work that must be durable before a job's terminal status is written, such
/// as queueing its webhook deliveries. It may run more than once for the same
/// job and status (a worker can die between it and the write), so it must be
/// idempotent; and the status may end up different (another worker won), so
/// what it queues must check the job again when it runs.
#[async_trait]
pub trait Followups: Send + Sync {
    async fn before_terminal(&self, job: &Job, status: JobStatus) -> Result<(), String>;

    /// After `job` (as claimed for this attempt) recorded `progress`. Best
    /// effort: the job goes on whatever happens here, so keep it quick.
    async fn after_progress(&self, _job: &Job, _progress: &Value) {}
}

/// The executor for each job kind.
pub struct Executors {
    pub chat: Box<dyn Executor>,
    pub batch: Box<dyn Executor>,
    /// Sends webhook deliveries; without it, deliveries wait for a worker that has one.
    pub delivery: Option<Box<dyn Executor>>,
    /// Called before every terminal status of a chat or batch job.
    pub followups: Option<Arc<dyn Followups>>,
}

impl Executors {
    /// Chat on `router`'s providers; plans calling `tools` (None: plans without
    /// MCP steps) with their `llm` steps on the same providers; no webhook
    /// deliveries (set `delivery` and `followups` for them).
    pub fn new(router: Arc<orch_providers::Router>, tools: Option<orch_mcp::Registry>) -> Executors {
        Executors::with_planner(
            router,
            tools,
            PlannerSettings::default(),
            crate::plan::DEFAULT_INLINE_OUTPUT_BYTES,
            orch_planner::PlanLimits::default(),
        )
    }

    /// As [`Executors::new`], with the LLM planner's settings and the size
    /// above which plan node outputs are stored apart, and the limits of one plan.
    pub fn with_planner(
        router: Arc<orch_providers::Router>,
        tools: Option<orch_mcp::Registry>,
        planner: PlannerSettings,
        inline_output_bytes: usize,
        limits: orch_planner::PlanLimits,
    ) -> Executors {
        let llm: Arc<dyn crate::llm::Llm> = Arc::new(crate::chat::RouterLlm { router: router.clone() });
        let planning = Arc::new(Planning::new(planner));
        Executors {
            chat: Box::new(crate::chat::ProviderChat { router }),
            batch: Box::new(PlanRunner { tools, llm: Some(llm), planning, inline_output_bytes, limits }),
            delivery: None,
            followups: None,
        }
    }

    pub async fn run(&self, job: &Job, ctx: &JobContext) -> Result<Value, JobError> {
        match job.kind {
            JobKind::Chat => self.chat.run(job, ctx).await,
            JobKind::Batch => self.batch.run(job, ctx).await,
            JobKind::Delivery => {
                match &self.delivery {
                    Some(delivery) => delivery.run(job, ctx).await,
                    None => Err(JobError::new("no_sender", "this worker sends no webhooks", true)
                        .retry_in(Duration::from_secs(5))),
                }
            }
        }
    }
}
