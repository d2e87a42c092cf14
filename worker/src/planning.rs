//! The LLM planner's IO: turns a batch job's plain-language `request` into a
//! plan by asking the [`Llm`] (the provider router, task type `planning`),
//! validating the answer against the allowed tools and asking again with the
//! problems until a plan is valid or the attempts run out. Prompts and
//! answer reading are orch-planner's ([`orch_planner::prompt`]).
//!
//! Planning runs inside the batch job's attempt, so the HTTP request stays
//! fast and the planning obeys worker and provider limits. Each attempt is a
//! `planning` progress event; the plan is a `planned` event, which is also
//! its checkpoint: a retried job attempt reuses it instead of planning again
//! (its finished nodes belong to that plan). Valid plans are cached in the
//! store ([`Store::cache_put`]), so every worker on it shares them, by
//! (normalised request, tool fingerprint, planner model).

use std::time::{Duration, Instant};

use orch_planner::Plan;
use orch_planner::prompt::{self, ToolInfo};
use orch_store::{Job, JobError, Store};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::exec::JobContext;
use crate::llm::LlmRequest;
use crate::plan::PlanRunner;

/// How the planner works.
#[derive(Debug, Clone)]
pub struct PlannerSettings {
    /// Answers asked for before the job fails (the first and the repairs).
    pub max_attempts: u32,
    /// How long a valid plan is reused for the same request, tools and model.
    pub cache_ttl: Duration,
    /// Most tools shown in a prompt (the most relevant to the request).
    pub max_tools: usize,
}

impl Default for PlannerSettings {
    fn default() -> Self {
        PlannerSettings { max_attempts: 3, cache_ttl: Duration::from_secs(3600), max_tools: 40 }
    }
}

/// The planner's settings; its plan cache is in the store.
#[derive(Debug, Default)]
pub struct Planning {
    pub settings: PlannerSettings,
}

impl Planning {
    pub fn new(settings: PlannerSettings) -> Planning {
        Planning { settings }
    }

    /// A cached plan; a store that does not answer is a miss.
    async fn cached(&self, store: &dyn Store, key: &str) -> Option<Plan> {
        if self.settings.cache_ttl.is_zero() {
            return None;
        }
        match store.cache_get(&cache_entry(key)).await {
            Ok(text) => text.and_then(|t| serde_json::from_str(&t).ok()),
            Err(e) => {
                tracing::warn!(error = %e, "reading the plan cache failed; planning anew");
                None
            }
        }
    }

    async fn remember(&self, store: &dyn Store, key: &str, plan: &Plan) {
        let ttl = self.settings.cache_ttl;
        if ttl.is_zero() {
            return;
        }
        let Ok(text) = serde_json::to_string(plan) else { return };
        if let Err(e) = store.cache_put(&cache_entry(key), &text, ttl).await {
            tracing::warn!(error = %e, "caching a plan failed");
        }
    }
}

/// The store's cache key of a plan: the key's digest, so its length does
/// not grow with the request.
fn cache_entry(key: &str) -> String {
    format!("plan:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// What the API stored for a planned batch job.
#[derive(Debug, Deserialize)]
struct PlanningInput {
    request: String,
    #[serde(default)]
    planner: PlannerInput,
}

#[derive(Debug, Default, Deserialize)]
struct PlannerInput {
    /// The tools the caller allowed (autoApprove ones and those it named), `server.tool`.
    #[serde(default)]
    tools: Vec<String>,
    model: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// A plan for a job's request and how it was made (`planning` in the result).
pub struct Planned {
    pub plan: Plan,
    pub info: Value,
    /// Only the plan was asked for.
    pub dry_run: bool,
}

fn failed(message: String) -> JobError {
    JobError::new("planning_failed", message, false)
}

/// The plan of a planned batch job: from this job's `planned` checkpoint, the
/// cache, or the model.
pub async fn plan_job(runner: &PlanRunner, job: &Job, ctx: &JobContext) -> Result<Planned, JobError> {
    let input: PlanningInput = serde_json::from_value(job.input.clone())
        .map_err(|e| JobError::new("invalid_input", format!("stored planning input does not parse: {e}"), false))?;
    let dry_run = input.planner.dry_run;
    let earlier = if job.ran_before() { checkpoint(ctx).await? } else { None };
    if let Some((plan, mut info)) = earlier {
        info["resumed"] = json!(true);
        return Ok(Planned { plan, info, dry_run });
    }
    let tools: Vec<ToolInfo> = runner
        .tools
        .iter()
        .flat_map(|registry| registry.tools())
        .filter(|t| input.planner.tools.contains(&t.name))
        .map(|t| ToolInfo {
            name: t.name,
            description: t.tool.description.as_deref().unwrap_or_default().to_owned(),
            input_schema: Value::Object((*t.tool.input_schema).clone()),
        })
        .collect();
    let planning = &runner.planning;
    let model = input.planner.model.as_deref();
    let key = prompt::cache_key(&input.request, &tools, model);
    let started = Instant::now();
    let (plan, info) = match planning.cached(ctx.store.as_ref(), &key).await {
        Some(plan) => (plan, json!({"cached": true, "attempts": 0, "tools_allowed": tools.len()})),
        None => {
            let (plan, mut info) = ask(runner, &input, &tools, ctx).await?;
            planning.remember(ctx.store.as_ref(), &key, &plan).await;
            info["cached"] = json!(false);
            (plan, info)
        }
    };
    let mut info = info;
    info["duration_ms"] = json!(started.elapsed().as_secs_f64() * 1000.0);
    // The checkpoint a retry resumes from: durable before any node runs.
    if !ctx.checkpoint(json!({"type": "planned", "plan": plan, "planning": info})).await {
        return Err(JobError::new("store_unavailable", "the planned plan could not be recorded", true));
    }
    Ok(Planned { plan, info, dry_run })
}

/// Asks the model until it gives a valid plan or the attempts run out.
async fn ask(
    runner: &PlanRunner,
    input: &PlanningInput,
    tools: &[ToolInfo],
    ctx: &JobContext,
) -> Result<(Plan, Value), JobError> {
    let llm = runner.llm.as_ref().ok_or_else(|| {
        failed("this worker has no LLM configured, so it cannot plan a request; give a plan instead".into())
    })?;
    let settings = &runner.planning.settings;
    let offer = prompt::offer(&input.request, tools, settings.max_tools);
    let catalogue = prompt::catalogue(tools);
    let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
    let mut last: Option<(String, Vec<orch_planner::PlanIssue>)> = None;
    let attempts = settings.max_attempts.max(1);
    for attempt in 1..=attempts {
        let text = match &last {
            None => prompt::prompt(&input.request, &offer),
            Some((answer, issues)) => prompt::repair_prompt(&input.request, &offer, answer, issues),
        };
        let request = LlmRequest {
            model: input.planner.model.clone(),
            task_type: Some("planning".into()),
            system: None,
            prompt: text,
        };
        let answer = llm.complete(request, &ctx.cancel).await?;
        input_tokens += answer.usage["input_tokens"].as_u64().unwrap_or(0);
        output_tokens += answer.usage["output_tokens"].as_u64().unwrap_or(0);
        let checked = prompt::read_answer(&answer.text).and_then(|plan| {
            let issues = orch_planner::validate_with(&plan, Some(&catalogue), &runner.limits);
            if issues.is_empty() { Ok(plan) } else { Err(issues) }
        });
        let issues_json = |issues: &[orch_planner::PlanIssue]| json!(issues);
        match checked {
            Ok(plan) => {
                ctx.progress(
                    json!({"type": "planning", "attempt": attempt, "valid": true, "routed_to": answer.routed_to}),
                )
                .await;
                let info = json!({
                    "attempts": attempt,
                    "routed_to": answer.routed_to,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                    "tools_offered": offer.tools.len(),
                    "tools_allowed": tools.len(),
                });
                return Ok((plan, info));
            }
            Err(issues) => {
                ctx.progress(json!({
                    "type": "planning", "attempt": attempt, "valid": false,
                    "routed_to": answer.routed_to, "issues": issues_json(&issues),
                }))
                .await;
                last = Some((answer.text, issues));
            }
        }
    }
    let issues = last.map(|(_, issues)| issues).unwrap_or_default();
    let listed: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.field, i.message)).collect();
    ctx.progress(json!({"type": "planning_failed", "attempts": attempts, "issues": issues})).await;
    Err(failed(format!(
        "the planner gave no valid plan in {attempts} attempts; the last answer's problems: {}",
        listed.join("; ")
    )))
}

/// The plan an earlier attempt of this job made, from its `planned` event.
async fn checkpoint(ctx: &JobContext) -> Result<Option<(Plan, Value)>, JobError> {
    let mut after = 0;
    loop {
        let events = ctx.store.events(ctx.job_id, after, 1000).await.map_err(|e| {
            JobError::new("store_unavailable", format!("reading the job's checkpoints failed: {e}"), true)
        })?;
        let Some(last) = events.last() else { return Ok(None) };
        after = last.seq;
        for event in &events {
            if event.kind == "progress"
                && event.data["type"] == "planned"
                && let Ok(plan) = serde_json::from_value::<Plan>(event.data["plan"].clone())
            {
                return Ok(Some((plan, event.data["planning"].clone())));
            }
        }
    }
}
