//! Chat jobs on the configured providers: the conversation rendered into one
//! turn, routed (with fallback) by [`orch_providers::Router`], progress
//! (API retries, streamed text) recorded as job events.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use orch_providers::{Exhausted, ProgressEvent, Routed, Router, TaskType, TurnControl, TurnRequest};
use orch_store::{Job, JobError, SessionMessage, UsageRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exec::{Executor, JobContext};
use crate::llm::{Llm, LlmAnswer, LlmRequest};

/// A chat job's stored input (written by the API, which validated it).
#[derive(Debug, Deserialize)]
pub struct ChatInput {
    pub model: Option<String>,
    pub task_type: Option<String>,
    pub messages: Vec<Message>,
    pub max_turns: Option<u32>,
    /// The most the turn may cost, in US dollars (Claude's `--max-budget-usd`).
    #[serde(default)]
    pub max_budget_usd: Option<f64>,
    /// The conversation this turn continues (set by the API from `X-Session-ID`).
    pub session: Option<SessionRef>,
    /// The API key that asked, for `/v1/usage`.
    pub key_id: Option<String>,
    /// The providers that key may use (absent: every provider).
    #[serde(default)]
    pub providers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct SessionRef {
    pub id: String,
    pub owner: String,
    pub ttl_secs: u64,
    /// The request carries the whole conversation (an OpenAI client resending
    /// it): the provider gets it as sent, and the session records only the
    /// user messages after its last assistant message, then the answer.
    #[serde(default)]
    pub client_history: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The system prompt and the prompt of one turn. A single user message is
/// the prompt as is; a longer conversation becomes a transcript that asks for
/// an answer to its last user message. `tool` messages (function results the
/// API rendered, see the API's `tool_calls` module) read as `Tool result`
/// turns; a conversation may end with them.
pub fn render(messages: &[Message]) -> Result<(Option<String>, String), String> {
    let system: Vec<&str> = messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let turns: Vec<&Message> = messages.iter().filter(|m| m.role != "system").collect();
    if turns.last().is_none_or(|m| m.role != "user" && m.role != "tool") {
        return Err("the conversation must end with a user message".into());
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    if let [only] = turns.as_slice()
        && only.role == "user"
    {
        return Ok((system, only.content.clone()));
    }
    let mut prompt = String::from("The conversation so far; answer the last user message.\n");
    for m in turns {
        let who = match m.role.as_str() {
            "assistant" => "Assistant",
            "tool" => "Tool result",
            _ => "User",
        };
        prompt.push_str(&format!("\n{who}: {}\n", m.content));
    }
    Ok((system, prompt))
}

fn bad_input(message: impl Into<String>) -> JobError {
    JobError::new("invalid_input", message, false)
}

/// Counts the turn for `/v1/usage`, each attempt on its own provider: a
/// failed attempt that fell back is a failure of its provider, the answer a
/// success of the one that gave it. Providers skipped (cooling down, refused
/// credential) ran nothing and are not booked, unless nothing ran at all:
/// then the failed request is booked once, on the first target.
/// A failure to record is logged, not fatal.
async fn record_usage(
    ctx: &JobContext,
    key_id: Option<&str>,
    result: &Result<Routed, Exhausted>,
    latency: std::time::Duration,
) {
    let now = Utc::now();
    let total_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    let key_id = key_id.unwrap_or("unknown");
    let booked = |provider: &str, model: Option<String>, ok: bool, latency_ms: u64| UsageRecord {
        job_id: ctx.job_id,
        attempt: 0,
        at: now,
        key_id: key_id.to_owned(),
        provider: provider.to_owned(),
        model,
        ok,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: None,
        latency_ms,
    };
    let failed = match result {
        Ok(routed) => &routed.failed,
        Err(exhausted) => &exhausted.failed,
    };
    let mut records: Vec<UsageRecord> = failed
        .iter()
        .filter(|f| !f.skipped)
        .map(|f| booked(f.provider(), f.model().map(str::to_owned), false, f.elapsed_ms))
        .collect();
    match result {
        Ok(routed) => {
            let spent: u64 = records.iter().map(|r| r.latency_ms).sum();
            records.push(UsageRecord {
                input_tokens: routed.output.usage.input_tokens,
                output_tokens: routed.output.usage.output_tokens,
                cost_usd: routed.output.cost_usd,
                ..booked(
                    &routed.target.provider,
                    routed.output.model.clone().or(routed.target.model.clone()),
                    true,
                    total_ms.saturating_sub(spent),
                )
            });
        }
        Err(exhausted) if records.is_empty() => {
            if let Some(first) = exhausted.failed.first() {
                records.push(booked(first.provider(), first.model().map(str::to_owned), false, total_ms));
            }
        }
        Err(_) => {}
    }
    // The outcome is attempt 0 (what a job had before attempts were booked); the failures before it 1, 2, ...
    let last = records.len().saturating_sub(1);
    for (i, mut record) in records.into_iter().enumerate() {
        record.attempt = if i == last { 0 } else { i as u32 + 1 };
        if let Err(err) = ctx.store.record_usage(&record).await {
            tracing::warn!(job = %ctx.job_id, error = %err, "recording usage failed");
        }
    }
}

fn store_error(err: orch_store::StoreError) -> JobError {
    JobError::new("store_unavailable", format!("session: {err}"), true)
}

fn job_error(err: &Exhausted) -> JobError {
    JobError { retry_at: err.retry_at, ..JobError::new(err.code(), err.message.clone(), err.retryable()) }
}

/// Where a turn ran: `provider/model` with the model the CLI reported, else the target's.
fn routed_to(routed: &Routed) -> String {
    match routed.output.model.as_ref().or(routed.target.model.as_ref()) {
        Some(model) => format!("{}/{model}", routed.target.provider),
        None => routed.target.provider.clone(),
    }
}

/// Runs chat jobs on the router's providers.
pub struct ProviderChat {
    pub router: Arc<Router>,
}

#[async_trait]
impl Executor for ProviderChat {
    async fn run(&self, job: &Job, ctx: &JobContext) -> Result<Value, JobError> {
        let input: ChatInput = serde_json::from_value(job.input.clone())
            .map_err(|e| bad_input(format!("stored chat input does not parse: {e}")))?;
        // A session's earlier turns come first, after the job's system prompt.
        let mut messages: Vec<Message> = input.messages.iter().filter(|m| m.role == "system").cloned().collect();
        let client_history = input.session.as_ref().is_some_and(|s| s.client_history);
        if let Some(session) = &input.session
            && !client_history
            && let Some(stored) = ctx.store.get_session(&session.id).await.map_err(store_error)?
        {
            messages.extend(stored.messages.into_iter().map(|m| Message { role: m.role, content: m.content }));
        }
        let turns: Vec<&Message> = input.messages.iter().filter(|m| m.role != "system").collect();
        messages.extend(turns.iter().map(|m| (*m).clone()));
        // What the session records of the request: all of it, or what follows the resent history.
        let asked: Vec<&Message> = if client_history {
            let after = turns.iter().rposition(|m| m.role == "assistant").map_or(0, |i| i + 1);
            turns[after..].to_vec()
        } else {
            turns
        };
        let (system, prompt) = render(&messages).map_err(bad_input)?;
        let task_type = match input.task_type.as_deref() {
            Some(name) => Some(
                TaskType::parse(name)
                    .ok_or_else(|| bad_input(format!("task_type {name:?} is not one of {}", TaskType::NAMES)))?,
            ),
            None => None,
        };
        let last_user = input.messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
        let mut route =
            self.router.route(input.model.as_deref(), task_type, last_user).map_err(|e| bad_input(e.message))?;
        if let Some(allowed) = &input.providers {
            route.chain.retain(|t| allowed.contains(&t.provider));
            if route.chain.is_empty() && input.model.as_deref().is_none_or(|m| m == "auto") {
                // `auto` chose none of the key's providers: use those, in the order given.
                route.chain = allowed
                    .iter()
                    .filter(|p| self.router.providers().get(p).is_some())
                    .map(|p| orch_providers::Target { provider: p.clone(), model: None })
                    .collect();
            }
            if route.chain.is_empty() {
                return Err(JobError::new(
                    "provider_not_allowed",
                    format!("no provider of the route is one this key may use ({})", allowed.join(", ")),
                    false,
                ));
            }
            route.reason.push_str(&format!("; limited to the key's providers {}", allowed.join(", ")));
        }
        ctx.progress(json!({
            "type": "routing",
            "chain": route.chain.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "reason": route.reason,
        }))
        .await;

        let (tx, mut rx) = mpsc::unbounded_channel::<ProgressEvent>();
        let reporter = ctx.clone();
        let forward = tokio::spawn(tracing::Instrument::in_current_span(async move {
            while let Some(event) = rx.recv().await {
                reporter.progress(serde_json::to_value(&event).unwrap_or(Value::Null)).await;
            }
        }));
        let control = TurnControl { cancel: ctx.cancel.clone(), progress: Some(tx), ..Default::default() };
        let request = TurnRequest {
            prompt,
            system,
            max_turns: input.max_turns,
            max_budget_usd: input.max_budget_usd,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let result = self.router.run(&route, &request, &control).await;
        drop(control);
        // Every progress event is recorded before the outcome.
        let _ = forward.await;
        record_usage(ctx, input.key_id.as_deref(), &result, started.elapsed()).await;
        let routed = result.map_err(|e| job_error(&e))?;
        let output = &routed.output;
        if let Some(session) = &input.session {
            // The caller's messages are stamped with when they were sent (the
            // job's creation), the answer with when it came.
            let mut turn: Vec<SessionMessage> = asked
                .iter()
                .map(|m| SessionMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                    at: job.created_at,
                    routed_to: None,
                    job_id: Some(ctx.job_id),
                })
                .collect();
            turn.push(SessionMessage {
                role: "assistant".into(),
                content: output.text.clone(),
                at: Utc::now(),
                routed_to: Some(routed_to(&routed)),
                job_id: Some(ctx.job_id),
            });
            let ttl = std::time::Duration::from_secs(session.ttl_secs);
            ctx.store.append_session(&session.id, &session.owner, turn, ttl).await.map_err(store_error)?;
        }
        Ok(json!({
            "session_id": input.session.as_ref().map(|s| &s.id),
            "text": output.text,
            "routed_to": routed_to(&routed),
            "route_reason": routed.reason,
            "provider": routed.target.provider,
            "model": output.model,
            "task_type": routed.task_type,
            "usage": output.usage,
            "cost_usd": output.cost_usd,
            "duration_ms": output.duration.as_millis() as u64,
            "num_turns": output.num_turns,
            "fallbacks": routed.failed,
        }))
    }
}

/// Plan steps and the planner on the same providers, routing and limits as chat.
pub struct RouterLlm {
    pub router: Arc<Router>,
}

#[async_trait]
impl Llm for RouterLlm {
    async fn complete(&self, request: LlmRequest, cancel: &CancellationToken) -> Result<LlmAnswer, JobError> {
        let task_type = match request.task_type.as_deref() {
            Some(name) => Some(
                TaskType::parse(name)
                    .ok_or_else(|| bad_input(format!("task_type {name:?} is not one of {}", TaskType::NAMES)))?,
            ),
            None => None,
        };
        let route = self
            .router
            .route(request.model.as_deref(), task_type, &request.prompt)
            .map_err(|e| bad_input(e.message))?;
        let turn = TurnRequest { prompt: request.prompt, system: request.system, ..Default::default() };
        let control = TurnControl { cancel: cancel.clone(), ..Default::default() };
        let routed = self.router.run(&route, &turn, &control).await.map_err(|e| job_error(&e))?;
        Ok(LlmAnswer {
            text: routed.output.text.clone(),
            routed_to: routed_to(&routed),
            usage: json!({
                "input_tokens": routed.output.usage.input_tokens,
                "output_tokens": routed.output.usage.output_tokens,
                "cost_usd": routed.output.cost_usd,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn rendering() {
        assert_eq!(render(&[m("user", "hi")]).unwrap(), (None, "hi".to_owned()));
        let (system, prompt) =
            render(&[m("system", "be brief"), m("user", "a"), m("assistant", "b"), m("user", "c")]).unwrap();
        assert_eq!(system.as_deref(), Some("be brief"));
        assert!(prompt.ends_with("\nUser: a\n\nAssistant: b\n\nUser: c\n"), "{prompt}");
        assert!(render(&[m("user", "a"), m("assistant", "b")]).is_err());
        assert!(render(&[m("system", "s")]).is_err());
        let (_, prompt) = render(&[m("user", "a"), m("assistant", "[Called function `f`]"), m("tool", "42")]).unwrap();
        assert!(prompt.ends_with("\nAssistant: [Called function `f`]\n\nTool result: 42\n"), "{prompt}");
    }
}
