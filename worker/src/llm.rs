//! The seam between plan execution and chat providers: one LLM completion.
//!
//! Batch plans' `llm` nodes and the planner ask an [`Llm`] for an answer; the
//! binary wires in the provider router (orch-providers) so plan steps run on
//! the same CLIs, limits, routing and fallback as chat jobs.

use async_trait::async_trait;
use orch_store::JobError;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One completion request, as a plan step or the planner states it.
#[derive(Clone, Debug, Default)]
pub struct LlmRequest {
    /// As in chat: `provider/model`, a provider name, `auto`, or None for the default.
    pub model: Option<String>,
    /// `coding | reasoning | planning | fast | general`, used when `model` is `auto`.
    pub task_type: Option<String>,
    pub system: Option<String>,
    pub prompt: String,
}

/// A completion's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmAnswer {
    pub text: String,
    /// Where the request ran, `provider/model` (or just `provider`).
    pub routed_to: String,
    /// Token counts and cost as reported, e.g. `{"input_tokens": 12, "output_tokens": 40}`.
    pub usage: Value,
}

/// Runs completions. Errors carry `retryable` as the provider classified them.
#[async_trait]
pub trait Llm: Send + Sync {
    async fn complete(&self, request: LlmRequest, cancel: &CancellationToken) -> Result<LlmAnswer, JobError>;
}
