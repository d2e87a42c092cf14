//! Runs batch plans: a DAG of MCP tool calls, LLM completions, maps and
//! values inside one job attempt.
//!
//! A node starts as soon as the nodes it depends on have finished, not level
//! by level; at most `max_parallel` steps run at once (map items count one
//! each, the map node itself none, so a map can never starve its own items).
//! Every node reports `started`, `retrying`, `succeeded`, `failed`,
//! `cancelled` or `skipped` as a progress event on the job's event log. The
//! event of a finished node carries its output, which makes the event log
//! the checkpoint journal: a later attempt of the job (after a retry, or on
//! another worker after this one died) reads it back and does not run those
//! nodes again. Events are written in order by one writer task, in batches,
//! so the store's latency is not on the scheduling path.
//!
//! An output larger than [`PlanRunner::inline_output_bytes`] (as JSON text)
//! is kept once in the store ([`Store::put_output`]) and the event and the
//! result carry a reference to it instead (see [`output_ref`]); the nodes
//! after it and the plan's `output` template still get the whole value.
//!
//! What one job may make the worker hold is bounded by [`PlanRunner::limits`]:
//! a map's resolved list has at most `max_items` items (checked when the map
//! starts, whatever the list came from), and the node outputs (map items
//! included) the job holds add up to at most `max_output_bytes` as JSON text;
//! the node that would cross a limit fails with `limit_exceeded`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use orch_mcp::{CallOptions, Error as McpError, Registry};
use orch_planner::reference::{self, Root, Scope};
use orch_planner::{OnError, Plan, PlanLimits, Step, StepTemplate};
use orch_store::{Job, JobError, JobId, Store};
use rand::Rng;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::exec::{Executor, JobContext};
use crate::llm::{Llm, LlmRequest};
use crate::planning::Planning;

/// The `_meta` key of the idempotency key sent with every tool call:
/// `<job id>:<node id>` (`:<item index>` in a map), the same in every attempt.
pub const IDEMPOTENCY_META_KEY: &str = "orch/idempotency-key";

/// First backoff between attempts of a node; doubles per attempt (±20 %).
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Default of [`PlanRunner::inline_output_bytes`]: 64 KiB.
pub const DEFAULT_INLINE_OUTPUT_BYTES: usize = 64 * 1024;

/// Runs batch plans with the MCP servers of `tools` and the completions of `llm`.
/// Without them, `tool` and `llm` nodes fail with a message saying so.
/// A job with a `request` instead of a plan is planned first ([`crate::planning`]).
#[derive(Clone)]
pub struct PlanRunner {
    pub tools: Option<Registry>,
    pub llm: Option<Arc<dyn Llm>>,
    /// The LLM planner's settings and plan cache.
    pub planning: Arc<Planning>,
    /// Node outputs longer than this as JSON text are stored once and
    /// referenced from events and the result.
    pub inline_output_bytes: usize,
    /// Most items of a map and most bytes of node outputs one job holds.
    pub limits: PlanLimits,
}

impl Default for PlanRunner {
    fn default() -> Self {
        PlanRunner {
            tools: None,
            llm: None,
            planning: Arc::default(),
            inline_output_bytes: DEFAULT_INLINE_OUTPUT_BYTES,
            limits: PlanLimits::default(),
        }
    }
}

#[async_trait]
impl Executor for PlanRunner {
    async fn run(&self, job: &Job, ctx: &JobContext) -> Result<Value, JobError> {
        let (plan, planning) = if job.input.get("request").is_some() {
            let planned = crate::planning::plan_job(self, job, ctx).await?;
            if planned.dry_run {
                return Ok(json!({"plan": planned.plan, "planning": planned.info}));
            }
            (planned.plan, Some(planned.info))
        } else {
            let plan: Plan = serde_json::from_value(job.input["plan"].clone())
                .map_err(|e| bad_input(format!("stored plan does not parse: {e}")))?;
            (plan, None)
        };
        let issues = orch_planner::validate_with(&plan, None, &self.limits);
        if let Some(first) = issues.first() {
            return Err(bad_input(format!("stored plan is invalid: {}: {}", first.field, first.message)));
        }
        let done = if job.ran_before() { checkpoints(ctx).await? } else { HashMap::new() };
        let key = job.input.get("key").map(|k| {
            let text = |f: &str| k[f].as_str().unwrap_or_default().to_owned();
            (text("id"), text("name"))
        });
        let mut result = run_plan(self, Arc::new(plan), job.attempts, ctx, done, key).await?;
        if let (Some(info), Some(map)) = (planning, result.as_object_mut()) {
            map.insert("planning".into(), info);
        }
        Ok(result)
    }
}

fn bad_input(message: impl Into<String>) -> JobError {
    JobError::new("invalid_input", message, false)
}

/// How a node ended, as the result and the checkpoint journal record it.
#[derive(Debug, Clone)]
struct NodeRecord {
    status: &'static str,
    output: Option<Arc<Value>>,
    error: Option<JobError>,
    attempts: u32,
    /// Milliseconds from the start of this attempt of the job.
    started_ms: Option<f64>,
    duration_ms: Option<f64>,
    /// Restored from a checkpoint of an earlier attempt.
    resumed: bool,
    /// The reference shown instead of `output` when it was stored apart.
    stored: Option<Value>,
}

impl NodeRecord {
    fn skipped() -> NodeRecord {
        NodeRecord {
            status: "skipped",
            output: None,
            error: None,
            attempts: 0,
            started_ms: None,
            duration_ms: None,
            resumed: false,
            stored: None,
        }
    }

    /// The output as events and the result show it: the value, or the
    /// reference to where it was stored.
    fn shown_output(&self) -> Option<Value> {
        self.stored.clone().or_else(|| self.output.as_ref().map(|o| (**o).clone()))
    }

    fn to_json(&self) -> Value {
        let mut out = json!({"status": self.status, "attempts": self.attempts});
        let map = out.as_object_mut().expect("an object");
        if let Some(output) = self.shown_output() {
            map.insert("output".into(), output);
        }
        if let Some(error) = &self.error {
            map.insert("error".into(), json!(error));
        }
        if let Some(ms) = self.started_ms {
            map.insert("started_ms".into(), json!(round(ms)));
        }
        if let Some(ms) = self.duration_ms {
            map.insert("duration_ms".into(), json!(round(ms)));
        }
        if self.resumed {
            map.insert("resumed".into(), json!(true));
        }
        out
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Finished nodes of earlier attempts, read back from the job's progress events.
async fn checkpoints(ctx: &JobContext) -> Result<HashMap<String, NodeRecord>, JobError> {
    let mut done = HashMap::new();
    let mut after = 0;
    loop {
        let events = ctx.store.events(ctx.job_id, after, 1000).await.map_err(|e| {
            JobError::new("store_unavailable", format!("reading the job's checkpoints failed: {e}"), true)
        })?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        for event in &events {
            let data = &event.data;
            let (Some(node), Some(status)) = (data["node"].as_str(), data["status"].as_str()) else { continue };
            let finished = status == "succeeded" || (status == "failed" && data.get("output").is_some());
            if !finished {
                continue;
            }
            let shown = data.get("output").cloned().unwrap_or(Value::Null);
            let (output, stored) = match is_output_ref(&shown) {
                false => (shown, None),
                // Kept apart: read it back; if it is gone or not the one the
                // event names, the node runs again.
                true => match stored_output(ctx.store.as_ref(), ctx.job_id, node, &shown).await? {
                    Some(output) => (output, Some(shown)),
                    None => {
                        done.remove(node);
                        continue;
                    }
                },
            };
            done.insert(
                node.to_owned(),
                NodeRecord {
                    status: if status == "succeeded" { "succeeded" } else { "failed" },
                    output: Some(Arc::new(output)),
                    error: data.get("error").and_then(|e| serde_json::from_value(e.clone()).ok()),
                    attempts: data["attempts"].as_u64().unwrap_or(1) as u32,
                    started_ms: None,
                    duration_ms: data["duration_ms"].as_f64(),
                    resumed: true,
                    stored,
                },
            );
        }
    }
    Ok(done)
}

/// What every node task shares.
struct Shared {
    plan: Arc<Plan>,
    runner: PlanRunner,
    job_id: JobId,
    /// The job's attempt (the built-in `fail` step counts them).
    attempt: u32,
    input: Value,
    permits: Semaphore,
    /// The events sent so far, and where to; one lock so the count is each
    /// event's place in the writer's order.
    events: std::sync::Mutex<(usize, mpsc::UnboundedSender<Value>)>,
    started: Instant,
    /// Where the audit records of the plan's tool calls go, and the key that submitted the job.
    store: Arc<dyn orch_store::Store>,
    key: Option<(String, String)>,
    /// Bytes (as JSON text) of the node outputs and map items this attempt holds.
    held: AtomicUsize,
}

impl Shared {
    /// Queues an event for the writer; returns how many events are queued
    /// with it (the writer's `durable` count once it is written).
    fn event(&self, node: &str, status: &str, extra: Value) -> usize {
        let mut event = json!({"node": node, "status": status});
        if let (Some(map), Value::Object(extra)) = (event.as_object_mut(), extra) {
            map.extend(extra);
        }
        let mut events = self.events.lock().unwrap();
        events.0 += 1;
        let _ = events.1.send(event);
        events.0
    }

    /// Records a tool call of the plan in the audit log (without its
    /// arguments), in the background.
    fn audit_tool_call(&self, tool: &str, outcome: &str) {
        let entry = orch_store::AuditEntry {
            id: 0,
            at: chrono::Utc::now(),
            key_id: self.key.as_ref().map(|k| k.0.clone()),
            key_name: self.key.as_ref().map(|k| k.1.clone()),
            action: "tool_call".into(),
            method: "PLAN".into(),
            route: "plan".into(),
            target_kind: Some("tool".into()),
            target: Some(tool.to_owned()),
            job_id: Some(self.job_id),
            outcome: outcome.into(),
            status: None,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(err) = store.append_audit(&[entry]).await {
                tracing::warn!(error = %err, "recording a plan's tool call in the audit log failed");
            }
        });
    }

    /// Counts `value` among the outputs the job holds; fails when they would
    /// pass `max_output_bytes`.
    fn hold(&self, value: &Value) -> Result<(), JobError> {
        let bytes = json_len(value);
        let max = self.runner.limits.max_output_bytes;
        let total = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > max {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return Err(JobError::new(
                "limit_exceeded",
                format!(
                    "the job's node outputs would take {total} bytes; one job holds at most {max} (ORCH_PLAN_MAX_OUTPUT_BYTES)"
                ),
                false,
            ));
        }
        Ok(())
    }

    fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}

/// References resolve against the outputs of finished nodes, the plan's
/// input and, in a map, the item.
struct Values<'a> {
    outputs: &'a HashMap<String, Arc<Value>>,
    input: &'a Value,
    item: Option<&'a Value>,
}

impl Scope for Values<'_> {
    fn root(&self, root: &Root) -> Option<&Value> {
        match root {
            Root::Node(id) => self.outputs.get(id).map(|v| &**v),
            Root::Input => Some(self.input),
            Root::Item => self.item,
        }
    }
}

type NodeResult = (usize, f64, Result<(Value, u32), (JobError, u32)>);

async fn run_plan(
    runner: &PlanRunner,
    plan: Arc<Plan>,
    attempt: u32,
    ctx: &JobContext,
    mut records: HashMap<String, NodeRecord>,
    key: Option<(String, String)>,
) -> Result<Value, JobError> {
    let total = plan.nodes.len();
    let deps = orch_planner::dependencies(&plan);
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); total];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let finished = |i: usize, records: &HashMap<String, NodeRecord>| records.contains_key(&plan.nodes[i].id);
    let mut waiting: Vec<usize> =
        deps.iter().map(|ds| ds.iter().filter(|&&d| !finished(d, &records)).count()).collect();
    let mut ready: Vec<usize> = (0..total).filter(|&i| waiting[i] == 0 && !finished(i, &records)).rev().collect();
    let mut outputs: HashMap<String, Arc<Value>> =
        records.iter().filter_map(|(id, r)| Some((id.clone(), r.output.clone()?))).collect();
    let mut done = records.len();

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (durable_tx, mut durable) = watch::channel(0usize);
    let writer = tokio::spawn(write_events(ctx.clone(), events_rx, durable_tx));
    // Finished nodes whose event is not written yet, with its place: a node
    // counts as finished (its dependents start) only once its checkpoint is
    // durable, so a later attempt never runs it again.
    let mut unwritten: Vec<(usize, usize)> = Vec::new();
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        runner: runner.clone(),
        job_id: ctx.job_id,
        attempt,
        input: plan.input_value(),
        permits: Semaphore::new(plan.max_parallel().max(1)),
        events: std::sync::Mutex::new((0, events_tx)),
        started: Instant::now(),
        store: ctx.store.clone(),
        key,
        held: AtomicUsize::new(outputs.values().map(|o| json_len(o)).sum()),
    });
    if done > 0 {
        shared.event("", "resumed", json!({"completed": done, "total": total, "resumed": done}));
    }
    // Stops every running node: on a failure with `on_error: fail`, or when the job is cancelled.
    let stop = ctx.cancel.child_token();
    let mut failure: Option<JobError> = None;
    let mut tasks: JoinSet<NodeResult> = JoinSet::new();

    while done < total {
        // Nodes whose checkpoint is now durable release their dependents.
        let written = *durable.borrow_and_update();
        unwritten.retain(|&(place, i)| {
            if place > written {
                return true;
            }
            for &next in &dependents[i] {
                waiting[next] -= 1;
                if waiting[next] == 0 {
                    ready.push(next);
                }
            }
            false
        });
        if failure.is_none() {
            for i in ready.drain(..).rev() {
                let needed: HashMap<String, Arc<Value>> = deps[i]
                    .iter()
                    .filter_map(|&d| {
                        let id = &plan.nodes[d].id;
                        Some((id.clone(), outputs.get(id)?.clone()))
                    })
                    .collect();
                let (shared, stop) = (shared.clone(), stop.clone());
                let span = node_span(&shared, i);
                tasks.spawn(tracing::Instrument::instrument(
                    async move {
                        let start = shared.elapsed_ms();
                        let result = run_node(&shared, i, &needed, &stop).await;
                        let ms = shared.elapsed_ms() - start;
                        match &result {
                            Ok(_) => tracing::debug!(ms, "node finished"),
                            Err((error, _)) => tracing::debug!(ms, error = %error.code, "node finished"),
                        }
                        (i, start, result)
                    },
                    span,
                ));
            }
        }
        if tasks.is_empty() && unwritten.is_empty() {
            break;
        }
        let joined = tokio::select! {
            changed = durable.changed(), if !unwritten.is_empty() => {
                if changed.is_err() {
                    // The writer stopped: the attempt was stopped with it.
                    failure.get_or_insert_with(stopped);
                    stop.cancel();
                    unwritten.clear();
                }
                continue;
            }
            joined = tasks.join_next(), if !tasks.is_empty() => joined,
            () = ctx.cancel.cancelled(), if failure.is_none() => {
                failure = Some(JobError::new("cancelled", "the job was cancelled", false));
                stop.cancel();
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (i, start, result) =
            joined.map_err(|e| JobError::new("internal", format!("node task failed: {e}"), true))?;
        let node = &plan.nodes[i];
        let end = shared.elapsed_ms();
        done += 1;
        let mut record = NodeRecord {
            status: "succeeded",
            output: None,
            error: None,
            attempts: 0,
            started_ms: Some(start),
            duration_ms: Some(end - start),
            resumed: false,
            stored: None,
        };
        match result {
            Ok((output, attempts)) => {
                record.output = Some(Arc::new(output));
                record.attempts = attempts;
            }
            Err((error, attempts)) => {
                record.attempts = attempts;
                record.status = "failed";
                let stopped = stop.is_cancelled() && error.code == "cancelled";
                match node.on_error() {
                    _ if stopped => record.status = "cancelled",
                    OnError::Fail => {
                        if failure.is_none() {
                            failure = Some(JobError {
                                message: format!("node {:?} failed: {}", node.id, error.message),
                                ..error.clone()
                            });
                            stop.cancel();
                        }
                    }
                    OnError::Continue => record.output = Some(Arc::new(Value::Null)),
                    OnError::Fallback(value) => record.output = Some(Arc::new(value.clone())),
                }
                record.error = Some(error);
            }
        }
        observe_node(node, &record);
        if let Some(output) = &record.output {
            record.stored = store_large_output(ctx, &node.id, output, runner.inline_output_bytes).await;
        }
        let mut event = record.to_json();
        event["completed"] = json!(done);
        event["total"] = json!(total);
        let place = shared.event(&node.id, record.status, event);
        if let Some(output) = &record.output {
            outputs.insert(node.id.clone(), output.clone());
            unwritten.push((place, i));
        }
        records.insert(node.id.clone(), record);
    }
    for node in &plan.nodes {
        if !records.contains_key(&node.id) {
            shared.event(&node.id, "skipped", json!({"total": total}));
            records.insert(node.id.clone(), NodeRecord::skipped());
        }
    }
    let elapsed = shared.elapsed_ms();
    drop(shared);
    let written = writer.await.unwrap_or(false);
    if let Some(failure) = failure {
        return Err(failure);
    }
    if !written {
        // Not every checkpoint is durable: never report success as if it were.
        return Err(JobError::new("store_unavailable", "the plan's node events could not be recorded", true));
    }

    let scope = Values { outputs: &outputs, input: &plan.input_value(), item: None };
    let output = match &plan.output {
        Some(template) => reference::render(template, &scope)
            .map_err(|e| JobError::new("invalid_reference", format!("plan output: {e}"), false))?,
        // Every node's output, as the nodes' records show it (large ones by reference).
        None => Value::Object(
            plan.nodes.iter().map(|n| (n.id.clone(), records[&n.id].shown_output().unwrap_or(Value::Null))).collect(),
        ),
    };
    let nodes: Map<String, Value> = plan.nodes.iter().map(|n| (n.id.clone(), records[&n.id].to_json())).collect();
    Ok(json!({"output": output, "nodes": nodes, "duration_ms": round(elapsed)}))
}

/// The reference to a node output stored apart: where to get it, its size
/// and its SHA-256 (of the JSON text).
fn output_ref(job: JobId, node: &str, text: &str) -> Value {
    json!({
        "$ref": format!("/v1/jobs/{job}/outputs/{node}"),
        "bytes": text.len(),
        "sha256": hex::encode(Sha256::digest(text.as_bytes())),
    })
}

fn is_output_ref(value: &Value) -> bool {
    value.as_object().is_some_and(|o| {
        o.len() == 3
            && o.get("$ref").and_then(Value::as_str).is_some_and(|r| r.starts_with("/v1/jobs/"))
            && o.contains_key("sha256")
    })
}

/// Stores `output` apart when its JSON text is longer than `limit`; returns
/// the reference then. When the store refuses, the output stays inline: a
/// large event is better than a lost output.
async fn store_large_output(ctx: &JobContext, node: &str, output: &Value, limit: usize) -> Option<Value> {
    let text = serde_json::to_string(output).ok()?;
    if text.len() <= limit {
        return None;
    }
    match ctx.store.put_output(ctx.job_id, node, &text).await {
        Ok(true) => Some(output_ref(ctx.job_id, node, &text)),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(job = %ctx.job_id, node, error = %e, "storing a large node output failed; keeping it inline");
            None
        }
    }
}

/// The stored output a checkpoint's reference names, if it is still there
/// and its digest matches.
async fn stored_output(
    store: &dyn Store,
    job: JobId,
    node: &str,
    reference: &Value,
) -> Result<Option<Value>, JobError> {
    let text = store.get_output(job, node).await.map_err(|e| {
        JobError::new("store_unavailable", format!("reading the output of node {node:?} failed: {e}"), true)
    })?;
    Ok(text.filter(|t| output_ref(job, node, t) == *reference).and_then(|t| serde_json::from_str(&t).ok()))
}

/// Writes progress events in order; whatever queued up meanwhile goes in one
/// burst (the store groups it into one commit).
/// A write that fails is retried (in order, after the rest of its burst)
/// until it is written or the attempt is stopped; `durable` counts the events
/// written so far. Returns whether every event was written.
async fn write_events(ctx: JobContext, mut rx: mpsc::UnboundedReceiver<Value>, durable: watch::Sender<usize>) -> bool {
    let mut batch = Vec::new();
    let mut written = 0;
    while rx.recv_many(&mut batch, 256).await > 0 {
        let n = batch.len();
        let results = futures::future::join_all(batch.iter().map(|event| ctx.try_progress(event))).await;
        for (event, result) in batch.drain(..).zip(results) {
            if result.is_err() && !ctx.checkpoint(event).await {
                return false;
            }
        }
        written += n;
        durable.send_replace(written);
    }
    true
}

/// Runs one node to its end: `Ok((output, attempts))` or `Err((error, attempts))`.
async fn run_node(
    shared: &Shared,
    i: usize,
    outputs: &HashMap<String, Arc<Value>>,
    stop: &CancellationToken,
) -> Result<(Value, u32), (JobError, u32)> {
    let node = &shared.plan.nodes[i];
    let step = node.step().ok_or_else(|| (bad_input(format!("node {:?} has no single step", node.id)), 0))?;
    let scope = Values { outputs, input: &shared.input, item: None };
    if let Step::Map(map) = step {
        let over = reference::render(&map.over, &scope).map_err(|e| (reference_error(e), 0))?;
        let Value::Array(items) = over else {
            let e = format!("map.over is {}, not a list", reference::kind(&over));
            return Err((reference_error(e), 0));
        };
        let max = shared.runner.limits.max_items;
        if items.len() > max {
            let e = format!("map.over has {} items; a map runs over at most {max} (ORCH_PLAN_MAX_ITEMS)", items.len());
            return Err((JobError::new("limit_exceeded", e, false), 0));
        }
        shared.event(&node.id, "started", json!({"items": items.len()}));
        let concurrency = map.concurrency().max(1);
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut next = 0;
        let mut out = Vec::with_capacity(items.len());
        let mut tries = 1;
        loop {
            while in_flight.len() < concurrency && next < items.len() {
                in_flight.push_back(run_item(shared, i, &map.node, outputs, stop, next, &items[next]));
                next += 1;
            }
            // The first failing item ends the map; dropping the rest stops them.
            match in_flight.next().await {
                None => break,
                Some(result) => {
                    let (value, n) = result?;
                    tries = tries.max(n);
                    shared.hold(&value).map_err(|e| (e, n))?;
                    out.push(value);
                }
            }
        }
        return Ok((Value::Array(out), tries));
    }
    let key = format!("{}:{}", shared.job_id, node.id);
    let (value, n) =
        attempts(shared, i, None, stop, |cancel| run_simple(shared, &step, &scope, node.timeout, key.clone(), cancel))
            .await?;
    shared.hold(&value).map_err(|e| (e, n))?;
    Ok((value, n))
}

/// The span of a node's run, a child of the job's: its id, its step kind,
/// and for a tool step the tool and its server.
fn node_span(shared: &Shared, i: usize) -> tracing::Span {
    let node = &shared.plan.nodes[i];
    let (step, tool) = step_labels(node);
    let server = tool.and_then(|name| shared.runner.tools.as_ref()?.resolve(name).ok()).map(|(server, _)| server);
    tracing::info_span!("node", node_id = %node.id, step, tool, server)
}

/// The step kind of a node (`tool`, `llm`, `map`, `value`, `sleep`, `echo`,
/// `fail`) and its tool for a tool step.
fn step_labels(node: &orch_planner::Node) -> (&'static str, Option<&str>) {
    match node.step() {
        Some(Step::Tool { name, .. }) => ("tool", Some(name)),
        Some(Step::Llm(_)) => ("llm", None),
        Some(Step::Map(_)) => ("map", None),
        Some(Step::Value(_)) => ("value", None),
        Some(Step::Sleep(_)) => ("sleep", None),
        Some(Step::Echo(_)) => ("echo", None),
        Some(Step::Fail(_)) => ("fail", None),
        None => ("none", None),
    }
}

/// `orch_node_duration_seconds` of a finished node. The tool is a label only
/// when its server answered the call (a plan may name any tool, and a server
/// that is down checks none; labels stay bounded by what the servers list).
fn observe_node(node: &orch_planner::Node, record: &NodeRecord) {
    let (step, tool) = step_labels(node);
    let known =
        record.error.as_ref().is_none_or(|e| ["tool_error", "upstream_error", "timeout"].contains(&e.code.as_str()));
    let tool = tool.filter(|_| known).unwrap_or("").to_owned();
    let seconds = record.duration_ms.unwrap_or(0.0) / 1000.0;
    metrics::histogram!("orch_node_duration_seconds", "step" => step, "tool" => tool, "status" => record.status)
        .record(seconds);
}

/// The length of `value` as JSON text, without writing it out.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
async fn run_item(
    shared: &Shared,
    i: usize,
    template: &StepTemplate,
    outputs: &HashMap<String, Arc<Value>>,
    stop: &CancellationToken,
    k: usize,
    item: &Value,
) -> Result<(Value, u32), (JobError, u32)> {
    let node = &shared.plan.nodes[i];
    let scope = Values { outputs, input: &shared.input, item: Some(item) };
    let key = format!("{}:{}:{k}", shared.job_id, node.id);
    attempts(shared, i, Some(k), stop, |cancel| {
        run_template(shared, template, &scope, node.timeout, key.clone(), cancel)
    })
    .await
}

fn reference_error(message: String) -> JobError {
    JobError::new("invalid_reference", message, false)
}

/// Runs `step` with the node's timeout and retries, holding one of the
/// plan's `max_parallel` permits per attempt.
async fn attempts<F, Fut>(
    shared: &Shared,
    i: usize,
    item: Option<usize>,
    stop: &CancellationToken,
    step: F,
) -> Result<(Value, u32), (JobError, u32)>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = Result<Value, JobError>>,
{
    let node = &shared.plan.nodes[i];
    let max = 1 + node.retries.unwrap_or(0);
    let timeout = node.timeout.map(Duration::from_secs_f64);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = {
            let permit = tokio::select! {
                permit = shared.permits.acquire() => permit.map_err(|_| (stopped(), attempt))?,
                () = stop.cancelled() => return Err((stopped(), attempt)),
            };
            if attempt == 1 && item.is_none() {
                shared.event(&node.id, "started", json!({}));
            }
            let cancel = stop.child_token();
            let run = step(cancel.clone());
            tokio::pin!(run);
            let result = match timeout {
                None => run.await,
                Some(limit) => tokio::select! {
                    result = &mut run => result,
                    () = tokio::time::sleep(limit) => {
                        // The step sees the token (MCP cancellation, process kill) and ends soon.
                        cancel.cancel();
                        let _ = run.await;
                        Err(JobError::new("timeout", format!("the step did not finish within its timeout of {}s", limit.as_secs_f64()), true))
                    }
                },
            };
            drop(permit);
            result
        };
        match result {
            Ok(value) => return Ok((value, attempt)),
            Err(_) if stop.is_cancelled() => return Err((stopped(), attempt)),
            Err(error) if error.retryable && attempt < max => {
                let exp = (attempt - 1).min(16);
                let delay =
                    RETRY_BASE.saturating_mul(1 << exp).min(RETRY_MAX).mul_f64(rand::rng().random_range(0.8..1.2));
                let mut data = json!({"attempt": attempt, "error": error, "retry_in_ms": delay.as_millis() as u64});
                if let Some(k) = item {
                    data["item"] = json!(k);
                }
                shared.event(&node.id, "retrying", data);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return Err((stopped(), attempt)),
                }
            }
            Err(mut error) => {
                if let Some(k) = item {
                    error.message = format!("item {k}: {}", error.message);
                }
                return Err((error, attempt));
            }
        }
    }
}

fn stopped() -> JobError {
    JobError::new("cancelled", "the plan stopped before this step finished", false)
}

async fn run_template(
    shared: &Shared,
    template: &StepTemplate,
    scope: &Values<'_>,
    timeout: Option<f64>,
    key: String,
    cancel: CancellationToken,
) -> Result<Value, JobError> {
    let step = template.step().ok_or_else(|| bad_input("the map template has no single step"))?;
    run_simple(shared, &step, scope, timeout, key, cancel).await
}

/// One attempt of a step that is not a map.
async fn run_simple(
    shared: &Shared,
    step: &Step<'_>,
    scope: &Values<'_>,
    timeout: Option<f64>,
    key: String,
    cancel: CancellationToken,
) -> Result<Value, JobError> {
    match step {
        Step::Tool { name, args } => {
            let registry =
                shared.runner.tools.as_ref().ok_or_else(|| bad_input("this worker has no MCP servers configured"))?;
            let args = match args {
                Some(args) => reference::render(args, scope).map_err(reference_error)?,
                None => Value::Object(Map::new()),
            };
            let Value::Object(args) = args else { return Err(bad_input("tool args must be an object")) };
            let mut meta = Map::new();
            meta.insert(IDEMPOTENCY_META_KEY.into(), Value::String(key));
            let options =
                CallOptions { timeout: timeout.map(Duration::from_secs_f64), cancel: Some(cancel), meta: Some(meta) };
            let result = registry.call(name, Some(args), options).await;
            let ok = matches!(&result, Ok(r) if r.is_error != Some(true));
            shared.audit_tool_call(name, if ok { "ok" } else { "error" });
            let result = result.map_err(tool_error)?;
            let text = result.content.iter().find_map(|c| c.as_text().map(|t| t.text.clone()));
            if result.is_error == Some(true) {
                return Err(JobError::new(
                    "tool_error",
                    format!("tool {name} reported an error: {}", text.unwrap_or_default()),
                    true,
                ));
            }
            let content = serde_json::to_value(&result.content).unwrap_or(Value::Null);
            Ok(tool_output(result.structured_content, content, text))
        }
        Step::Llm(llm) => {
            let model = shared.runner.llm.as_ref().ok_or_else(|| bad_input("this worker has no LLM configured"))?;
            let mut prompt = reference::render_text(&llm.prompt, scope).map_err(reference_error)?;
            let system =
                llm.system.as_ref().map(|s| reference::render_text(s, scope)).transpose().map_err(reference_error)?;
            if let Some(schema) = &llm.schema {
                prompt.push_str(&format!(
                    "\n\nAnswer with JSON only, no prose and no code fence, matching this JSON Schema:\n{schema}"
                ));
            }
            let request = LlmRequest { model: llm.model.clone(), task_type: None, system, prompt };
            let answer = model.complete(request, &cancel).await?;
            match &llm.schema {
                None => Ok(Value::String(answer.text)),
                Some(schema) => parse_answer(&answer.text, schema),
            }
        }
        Step::Value(v) | Step::Echo(v) => reference::render(v, scope).map_err(reference_error),
        Step::Sleep(s) => {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(s.ms)) => Ok(json!({"slept_ms": s.ms})),
                () = cancel.cancelled() => Err(JobError::new("cancelled", "sleep cancelled", false)),
            }
        }
        Step::Fail(f) => match f.times {
            Some(times) if shared.attempt > times => Ok(json!({"failed_attempts": times})),
            _ => Err(JobError::new("step_failed", f.message.clone(), f.retryable)),
        },
        Step::Map(_) => Err(bad_input("a map cannot contain a map")),
    }
}

/// A tool's output: its structured content; else its one text block, parsed
/// when it is a JSON object or list; else its content blocks.
fn tool_output(structured: Option<Value>, content: Value, text: Option<String>) -> Value {
    if let Some(structured) = structured {
        return structured;
    }
    if content.as_array().is_some_and(|c| c.len() == 1)
        && let Some(text) = text
    {
        let trimmed = text.trim_start();
        if (trimmed.starts_with('{') || trimmed.starts_with('['))
            && let Ok(value) = serde_json::from_str::<Value>(&text)
        {
            return value;
        }
        return Value::String(text);
    }
    content
}

/// The JSON in an LLM answer (prose or a code fence around it is tolerated),
/// checked against the node's schema. A mismatch is retryable: models vary.
fn parse_answer(text: &str, schema: &Value) -> Result<Value, JobError> {
    let start = text.find(['{', '[']);
    let end = text.rfind(['}', ']']);
    let value = match (start, end) {
        (Some(s), Some(e)) if s < e => serde_json::from_str::<Value>(&text[s..=e]).ok(),
        _ => None,
    }
    .ok_or_else(|| JobError::new("llm_invalid_answer", "the answer holds no JSON value", true))?;
    if let Ok(validator) = jsonschema::validator_for(schema) {
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            return Err(JobError::new(
                "llm_invalid_answer",
                format!("the answer does not match the schema: {}", errors.join("; ")),
                true,
            ));
        }
    }
    Ok(value)
}

fn tool_error(error: McpError) -> JobError {
    let (code, retryable) = match &error {
        McpError::Timeout { .. } => ("timeout", true),
        McpError::Down { .. } | McpError::Connect { .. } | McpError::ConnectionLost { .. } => {
            ("server_unavailable", true)
        }
        McpError::Cancelled { .. } => ("cancelled", false),
        McpError::Upstream { .. } | McpError::Refused { .. } => ("upstream_error", false),
        McpError::Shutdown => ("shutting_down", true),
        McpError::UnknownServer { .. }
        | McpError::UnknownTool { .. }
        | McpError::UnknownPrompt { .. }
        | McpError::BadToolName { .. }
        | McpError::Disabled { .. }
        | McpError::Options { .. } => ("unknown_tool", false),
    };
    JobError::new(code, error.to_string(), retryable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_outputs() {
        let one = |text: &str| json!([{"type": "text", "text": text}]);
        assert_eq!(tool_output(Some(json!({"t": 1})), one("ignored"), Some("ignored".into())), json!({"t": 1}));
        assert_eq!(tool_output(None, one("{\"a\": [1]}"), Some("{\"a\": [1]}".into())), json!({"a": [1]}));
        assert_eq!(tool_output(None, one("[1, 2]"), Some("[1, 2]".into())), json!([1, 2]));
        // Only objects and lists are parsed: "42" stays text.
        assert_eq!(tool_output(None, one("42"), Some("42".into())), json!("42"));
        assert_eq!(tool_output(None, one("{not json"), Some("{not json".into())), json!("{not json"));
        let two = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
        assert_eq!(tool_output(None, two.clone(), Some("a".into())), two);
    }

    #[test]
    fn llm_answers_are_parsed_and_checked() {
        let schema = json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}});
        assert_eq!(parse_answer("{\"n\": 1}", &schema).unwrap(), json!({"n": 1}));
        assert_eq!(parse_answer("Sure!\n```json\n{\"n\": 2}\n```\nDone.", &schema).unwrap(), json!({"n": 2}));
        let e = parse_answer("no json here", &schema).unwrap_err();
        assert_eq!((e.code.as_str(), e.retryable), ("llm_invalid_answer", true));
        let e = parse_answer("{\"n\": \"two\"}", &schema).unwrap_err();
        assert!(e.message.contains("\"two\" is not of type \"integer\""), "{}", e.message);
    }

    #[test]
    fn tool_errors_are_classified() {
        let timeout = McpError::Timeout { server: "s".into(), tool: "t".into(), timeout: Duration::from_secs(1) };
        assert_eq!((tool_error(timeout).code.as_str(), true), ("timeout", true));
        let unknown = tool_error(McpError::UnknownTool { server: "s".into(), tool: "t".into() });
        assert_eq!((unknown.code.as_str(), unknown.retryable), ("unknown_tool", false));
        let lost = tool_error(McpError::ConnectionLost { server: "s".into(), tool: "t".into() });
        assert!(lost.retryable);
    }
}
