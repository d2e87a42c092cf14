//! Orch's providers: one chat turn on a subscription-backed command-line agent.
//!
//! A [`Provider`] is a configured CLI (`claude`, `gemini`, `codex`, `qwen`, or a
//! `cli` described only by [`ProviderConfig`]). [`Provider::run`] takes a
//! [`TurnRequest`] and returns a [`TurnOutput`] (text, usage, cost as the CLI
//! reported it, model, session id) or a [`TurnError`] whose [`ErrorKind`] tells a
//! router what to do: fall back on a usage limit, auth failure or timeout,
//! retry later on an upstream failure, give up on a cancelled turn.
//!
//! Each turn runs the CLI as its own process group, under the provider's
//! per-worker concurrency limit (plus an optional [`SharedLimit`] across
//! workers), timeout, output cap and cooldown; the group is killed on timeout,
//! on cancellation and when the turn's future is dropped, so no process
//! outlives its turn. Progress (Claude's API retries, streamed text) arrives on
//! the [`TurnControl`] channel while the turn runs.
//!
//! A provider with `warm = N` keeps CLIs started ahead of their turn (see
//! the `warm` module): Claude Code and Qwen Code wait for their prompt on
//! stdin, so a turn skips their start-up.
//!
//! This crate knows nothing of HTTP, jobs or sessions: callers render the
//! conversation into the prompt and map errors to their own responses.

mod adapters;
mod config;
mod doctor;
mod error;
mod process;
mod provider;
mod router;
mod turn;
mod warm;

pub use config::{
    ConfigError, EnvMap, Limits, MODEL_NAME_MAX, OutputConfig, OutputFormat, ProviderConfig, ProviderKind,
    ProvidersConfig, check_model_name,
};
pub use doctor::{Billing, CliStatus, Credentials, Diagnosis, Expiry, Health, billing, check, expiry, health};
pub use error::{ErrorKind, TurnError};
pub use provider::{
    NoSharedLimit, Provider, ProviderStatus, Providers, SharedLimit, SharedPermit, SharedSnapshot, SharedState,
};
pub use router::{Exhausted, FailedAttempt, Route, RouteError, Routed, Router, RoutingConfig, Rule, Target, TaskType};
pub use turn::{ProgressEvent, TurnControl, TurnOutput, TurnRequest, Usage};
pub use warm::WarmStats;
