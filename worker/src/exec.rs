//! What running a job means, per kind: chat turns and batch plans.
//!
//! Until the provider issue lands, chat runs on the built-in `echo` model.
//! Batch plans run in [`crate::plan`].

use std::sync::Arc;

use async_trait::async_trait;
use orch_store::{Job, JobError, JobId, JobKind, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::plan::PlanRunner;

/// What an executor may use while running one attempt.
#[derive(Clone)]
pub struct JobContext {
    pub store: Arc<dyn Store>,
    pub worker: String,
    pub job_id: JobId,
    /// Fires when the job is cancelled or its lease is lost.
    pub cancel: CancellationToken,
}

impl JobContext {
    /// Records progress; a failure to record is logged, not fatal.
    pub async fn progress(&self, progress: Value) {
        if let Err(err) = self.store.record_progress(&self.worker, self.job_id, progress).await {
            tracing::warn!(job = %self.job_id, error = %err, "recording progress failed");
        }
    }
}

/// Runs one attempt of a job of one kind.
#[async_trait]
pub trait Executor: Send + Sync {
    async fn run(&self, job: &Job, ctx: &JobContext) -> Result<Value, JobError>;
}

/// The executor for each job kind.
pub struct Executors {
    pub chat: Box<dyn Executor>,
    pub batch: Box<dyn Executor>,
}

impl Executors {
    /// The built-in executors: echo chat, and plans without MCP servers or LLM.
    pub fn builtin() -> Executors {
        Executors { chat: Box::new(EchoChat), batch: Box::new(PlanRunner::default()) }
    }

    pub async fn run(&self, job: &Job, ctx: &JobContext) -> Result<Value, JobError> {
        match job.kind {
            JobKind::Chat => self.chat.run(job, ctx).await,
            JobKind::Batch => self.batch.run(job, ctx).await,
        }
    }
}

fn bad_input(message: impl Into<String>) -> JobError {
    JobError::new("invalid_input", message, false)
}

/// Chat on the built-in `echo` model: answers with the last user message.
pub struct EchoChat;

#[async_trait]
impl Executor for EchoChat {
    async fn run(&self, job: &Job, _ctx: &JobContext) -> Result<Value, JobError> {
        let input = &job.input;
        let last_user = input["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .or_else(|| input["prompt"].as_str())
            .ok_or_else(|| bad_input("chat input has neither a user message nor a prompt"))?;
        let model = input["model"].as_str().unwrap_or("echo");
        let words = last_user.split_whitespace().count();
        Ok(json!({
            "text": last_user,
            "model": model,
            "usage": {"input_tokens": words, "output_tokens": words},
        }))
    }
}
