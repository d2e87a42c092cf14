//! One chat turn: what goes in, what comes out, and what is reported meanwhile.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A chat turn as a provider runs it. The caller renders any conversation
/// history into `prompt`; sessions live above this crate.
#[derive(Clone, Debug, Default)]
pub struct TurnRequest {
    pub prompt: String,
    /// The provider's model name (no `provider/` prefix); None = the configured default.
    pub model: Option<String>,
    pub system: Option<String>,
    pub max_turns: Option<u32>,
    /// The CLI's own tools the job allows (Claude: `Bash`, `Read`, ...). Empty = none.
    pub allowed_tools: Vec<String>,
    /// An MCP configuration file for the CLI (Claude's `--mcp-config`).
    pub mcp_config: Option<PathBuf>,
    /// Stop the turn once its cost passes this many US dollars (Claude's
    /// `--max-budget-usd`, with the provider's `limits.max_budget_usd` as the
    /// upper bound). CLIs that report no cost cannot be capped.
    pub max_budget_usd: Option<f64>,
}

/// What a successful turn produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TurnOutput {
    /// The provider's configured name (`claude`, or a custom name).
    pub provider: String,
    pub text: String,
    pub usage: Usage,
    /// Cost as the CLI reported it (Claude's `total_cost_usd`); never estimated here.
    pub cost_usd: Option<f64>,
    /// Wall time of the turn as Orch measured it, slot wait excluded.
    pub duration: Duration,
    /// The model the CLI says it used, or the one requested.
    pub model: Option<String>,
    pub session_id: Option<String>,
    pub num_turns: Option<u32>,
}

/// Token counts as the CLI reported them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: Option<u64>,
    pub cache_creation_tokens: Option<u64>,
}

/// What a running turn reports before it ends, for job progress and streaming.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// The CLI is retrying its model API (Claude's `api_retry` events).
    ApiRetry { attempt: u32, max_retries: Option<u32>, delay_ms: u64, status: Option<u16>, error: Option<String> },
    /// A piece of the answer as the CLI streamed it.
    Text { text: String },
    /// Who answers now: sent as each attempt of a chain starts (with the
    /// model asked for or configured, if any) and again when the CLI names
    /// the model it runs, so a stream can say `provider/model` before the answer ends.
    Model { provider: String, model: Option<String> },
}

/// How the caller steers a running turn: cancellation and progress.
#[derive(Clone, Debug, Default)]
pub struct TurnControl {
    /// Fires to stop the turn; its whole process group is killed.
    pub cancel: CancellationToken,
    /// Receives progress events; a closed receiver is ignored.
    pub progress: Option<mpsc::UnboundedSender<ProgressEvent>>,
    /// Another target follows in the chain (the router sets it): the turn is
    /// given up at the first sign of an outage (the CLI retrying its model
    /// API, or staying silent past `limits.silent_secs`) instead of waiting
    /// out the CLI's own retries.
    pub fallback: bool,
}

impl TurnControl {
    pub(crate) fn report(&self, event: ProgressEvent) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(event);
        }
    }
}
