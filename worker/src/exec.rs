//! What running a job means, per kind: chat turns and batch plans.
//!
//! Chat runs on the configured providers (see [`crate::chat`]). Until the MCP
//! plan steps land, batch plans run the built-in test steps of
//! `orch_planner`; the scheduling (dependencies, bounded parallelism,
//! progress) is already real.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_planner::{Plan, Step};
use orch_store::{Job, JobError, JobId, JobKind, JobStatus, Store};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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

/// Work that must be durable before a job's terminal status is written, such
/// as queueing its webhook deliveries. It may run more than once for the same
/// job and status (a worker can die between it and the write), so it must be
/// idempotent; and the status may end up different (another worker won), so
/// what it queues must check the job again when it runs.
#[async_trait]
pub trait Followups: Send + Sync {
    async fn before_terminal(&self, job: &Job, status: JobStatus) -> Result<(), String>;
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
    /// Chat on `router`'s providers; plans of the built-in test steps; no
    /// webhook deliveries (set `delivery` and `followups` for them).
    pub fn new(router: Arc<orch_providers::Router>) -> Executors {
        Executors {
            chat: Box::new(crate::chat::ProviderChat { router }),
            batch: Box::new(PlanRunner),
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

fn bad_input(message: impl Into<String>) -> JobError {
    JobError::new("invalid_input", message, false)
}

/// Runs a batch plan: each node starts as soon as its dependencies succeeded,
/// with at most `max_parallel` nodes at once.
pub struct PlanRunner;

#[async_trait]
impl Executor for PlanRunner {
    async fn run(&self, job: &Job, ctx: &JobContext) -> Result<Value, JobError> {
        let plan: Plan = serde_json::from_value(job.input["plan"].clone())
            .map_err(|e| bad_input(format!("stored plan does not parse: {e}")))?;
        run_plan(&plan, job.attempts, ctx).await
    }
}

#[derive(Debug)]
struct NodeRun {
    output: Value,
    duration_ms: u128,
}

async fn run_plan(plan: &Plan, attempt: u32, ctx: &JobContext) -> Result<Value, JobError> {
    let total = plan.nodes.len();
    let index: HashMap<&str, usize> = plan.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let mut waiting_on: Vec<usize> = plan.nodes.iter().map(|n| n.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); total];
    for (i, node) in plan.nodes.iter().enumerate() {
        for dep in &node.depends_on {
            dependents[index[dep.as_str()]].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..total).filter(|&i| waiting_on[i] == 0).rev().collect();
    let mut outputs: Vec<Option<NodeRun>> = (0..total).map(|_| None).collect();
    let mut tasks: JoinSet<(usize, Result<NodeRun, JobError>)> = JoinSet::new();
    let max_parallel = plan.max_parallel().max(1);
    let mut done = 0;

    while done < total {
        while tasks.len() < max_parallel {
            let Some(i) = ready.pop() else { break };
            let node = plan.nodes[i].clone();
            tasks.spawn(async move {
                let started = Instant::now();
                let result = run_step(&node, attempt).await;
                (i, result.map(|output| NodeRun { output, duration_ms: started.elapsed().as_millis() }))
            });
        }
        let Some(joined) = tasks.join_next().await else {
            return Err(JobError::new("plan_stuck", "no node can start; the plan has a cycle", false));
        };
        let (i, result) = joined.map_err(|e| JobError::new("internal", format!("node task failed: {e}"), true))?;
        let node_id = &plan.nodes[i].id;
        let run = result.map_err(|e| JobError { message: format!("node {node_id:?} failed: {}", e.message), ..e })?;
        done += 1;
        ctx.progress(json!({
            "completed": done,
            "total": total,
            "node": node_id,
            "status": "succeeded",
            "duration_ms": run.duration_ms,
        }))
        .await;
        outputs[i] = Some(run);
        for &next in &dependents[i] {
            waiting_on[next] -= 1;
            if waiting_on[next] == 0 {
                ready.push(next);
            }
        }
    }

    let mut nodes = serde_json::Map::new();
    for (node, run) in plan.nodes.iter().zip(outputs) {
        let run = run.expect("every node ran");
        nodes.insert(
            node.id.clone(),
            json!({"status": "succeeded", "output": run.output, "duration_ms": run.duration_ms}),
        );
    }
    let output = match &plan.output {
        Some(output) => output.clone(),
        None => Value::Object(nodes.iter().map(|(id, n)| (id.clone(), n["output"].clone())).collect()),
    };
    Ok(json!({"output": output, "nodes": nodes}))
}

async fn run_step(node: &orch_planner::Node, attempt: u32) -> Result<Value, JobError> {
    match node.step() {
        Some(Step::Sleep(s)) => {
            tokio::time::sleep(Duration::from_millis(s.ms)).await;
            Ok(json!({"slept_ms": s.ms}))
        }
        Some(Step::Echo(v)) => Ok(v.clone()),
        Some(Step::Fail(f)) => match f.times {
            Some(times) if attempt > times => Ok(json!({"failed_attempts": times})),
            _ => Err(JobError::new("step_failed", f.message.clone(), f.retryable)),
        },
        None => Err(bad_input(format!("node {:?} has no single step", node.id))),
    }
}
