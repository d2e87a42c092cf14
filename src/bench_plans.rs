//! `orch bench plans`: the batch executor's figures, measured in-process over
//! a fresh SQLite store (progress events and checkpoints are really written):
//! 1. validation and analysis of a 1,000-node plan;
//! 2. scheduling efficiency: random DAGs of 200 `sleep` nodes of known
//!    durations, width at most 20, reported as makespan ÷ critical path;
//! 3. overhead per node: no-op nodes one at a time (`value`, and the test MCP
//!    server's `echo` when its binary sits beside `orch`);
//! 4. speed-up of a seed-like plan (three independent 1 s fetches, a merge,
//!    a short write) over the same steps one after another.
//!
//! Like `orch bench queue`, it reports and asserts nothing about speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::Args;
use orch_planner::Plan;
use orch_planner::analysis::{Estimates, analyse};
use orch_store::{JobKind, NewJob, Store, StoreOptions, StoreUrl};
use orch_worker::{Executor, JobContext, PlanRunner};
use rand::Rng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct PlansArgs {
    /// Random DAGs in the scheduling run.
    #[arg(long, default_value_t = 5)]
    pub dags: usize,
    /// Nodes of each no-op chain in the overhead run.
    #[arg(long, default_value_t = 1000)]
    pub chain: usize,
}

pub async fn plans(args: PlansArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = orch_store::open(&StoreUrl::Sqlite(dir.path().join("bench.db")), &StoreOptions::default()).await?;
    println!(
        "orch bench plans ({} build, {} cores)",
        profile(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // 1. Validation and analysis.
    let big = layered(1000, 20, |_| json!({"tool": "t.echo", "args": {"message": "x"}}), &mut rand::rng());
    let catalogue = orch_planner::Catalogue {
        tools: [("t.echo".to_owned(), json!({"type": "object", "properties": {"message": {"type": "string"}}}))].into(),
    };
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let issues = orch_planner::validate(&big, Some(&catalogue));
        let analysis = analyse(&big, &Estimates::default());
        took.push(started.elapsed());
        if !issues.is_empty() || analysis.levels.is_empty() {
            bail!("the 1000-node plan did not validate: {issues:?}");
        }
    }
    took.sort();
    println!("\n1000-node plan: validate + analyse in {:.2} ms (median of 5; target < 20 ms)", ms(took[2]));

    // 2. Scheduling efficiency.
    println!("\nrandom DAGs of 200 sleep nodes (20–120 ms), levels of at most 20 nodes:");
    println!(
        "{:>4} {:>12} {:>8} {:>14} {:>12} {:>8}",
        "dag", "max_parallel", "width", "critical (ms)", "makespan", "ratio"
    );
    let mut worst: f64 = 0.0;
    for d in 0..args.dags {
        let mut rng = rand::rng();
        let mut plan = layered(200, 20, |rng| json!({"sleep": {"ms": rng.random_range(20..=120)}}), &mut rng);
        let analysis = analyse(&plan, &Estimates::default());
        for max_parallel in [20u32, 256] {
            plan.max_parallel = Some(max_parallel);
            let critical = analysis.critical_path.iter().map(|id| analysis.node_estimates_ms[id]).sum::<f64>();
            let makespan = run(&store, &PlanRunner::default(), &plan).await?;
            let ratio = ms(makespan) / critical;
            worst = worst.max(ratio);
            println!(
                "{d:>4} {max_parallel:>12} {:>8} {critical:>14.0} {:>12.1} {ratio:>8.3}",
                analysis.width,
                ms(makespan)
            );
        }
    }
    println!("worst makespan ÷ critical path: {worst:.3} (target ≤ 1.05 with max_parallel ≥ width)");

    // 3. Overhead per node.
    let chain = chain_plan(args.chain, |_| json!({"value": 1}));
    let took = run(&store, &PlanRunner::default(), &chain).await?;
    println!(
        "\noverhead: a chain of {} `value` nodes in {:.1} ms: {:.3} ms per node (target < 0.5 ms)",
        args.chain,
        ms(took),
        ms(took) / args.chain as f64
    );
    let registry = test_server_registry().await;
    match &registry {
        Some(registry) => {
            let runner = PlanRunner { tools: Some(registry.clone()), ..Default::default() };
            let chain = chain_plan(args.chain, |i| json!({"tool": "test.echo", "args": {"message": format!("{i}")}}));
            let took = run(&store, &runner, &chain).await?;
            println!(
                "overhead: a chain of {} `test.echo` MCP calls (stdio) in {:.1} ms: {:.3} ms per node, the call included",
                args.chain,
                ms(took),
                ms(took) / args.chain as f64
            );
        }
        None => println!("(orch-mcp-test-server is not beside orch: the MCP no-op chain is left out)"),
    }

    // 4. Seed-like plan.
    let seed = |max_parallel: u32| -> Plan {
        serde_json::from_value(json!({"max_parallel": max_parallel, "nodes": [
            {"id": "issues", "sleep": {"ms": 1000}},
            {"id": "prs", "sleep": {"ms": 1000}},
            {"id": "commits", "sleep": {"ms": 1000}},
            {"id": "merge", "value": ["{{nodes.issues.output}}", "{{nodes.prs.output}}", "{{nodes.commits.output}}"]},
            {"id": "write", "sleep": {"ms": 100}, "depends_on": ["merge"]}
        ]}))
        .expect("the seed plan parses")
    };
    let parallel = run(&store, &PlanRunner::default(), &seed(8)).await?;
    let serial = run(&store, &PlanRunner::default(), &seed(1)).await?;
    println!(
        "\nseed-like plan (3 × 1 s fetch → merge → 0.1 s write): {:.0} ms as a DAG, {:.0} ms one after another: {:.2}× (target ≥ 2.5×)",
        ms(parallel),
        ms(serial),
        ms(serial) / ms(parallel)
    );
    if let Some(registry) = registry {
        registry.shutdown(Duration::from_secs(2)).await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}

/// `n` nodes in levels of at most `width`; each depends on 1–3 nodes of the level before.
fn layered(
    n: usize,
    width: usize,
    mut step: impl FnMut(&mut rand::rngs::ThreadRng) -> Value,
    rng: &mut rand::rngs::ThreadRng,
) -> Plan {
    let mut nodes = Vec::with_capacity(n);
    let mut previous: Vec<String> = Vec::new();
    let mut i = 0;
    while i < n {
        let size = rng.random_range(width / 2..=width).min(n - i);
        let mut level = Vec::with_capacity(size);
        for _ in 0..size {
            let id = format!("n{i}");
            let mut node = step(rng);
            if !previous.is_empty() {
                let deps: Vec<&String> =
                    (0..rng.random_range(1..=3)).map(|_| &previous[rng.random_range(0..previous.len())]).collect();
                let mut deps: Vec<&String> = deps;
                deps.dedup();
                node["depends_on"] = json!(deps);
            }
            node["id"] = json!(id);
            nodes.push(node);
            level.push(id);
            i += 1;
        }
        previous = level;
    }
    serde_json::from_value(json!({"nodes": nodes})).expect("a generated plan parses")
}

fn chain_plan(n: usize, step: impl Fn(usize) -> Value) -> Plan {
    let nodes: Vec<Value> = (0..n)
        .map(|i| {
            let mut node = step(i);
            node["id"] = json!(format!("n{i}"));
            // Chains of at most MAX_DEPTH nodes, run one node at a time.
            if i % orch_planner::MAX_DEPTH != 0 {
                node["depends_on"] = json!([format!("n{}", i - 1)]);
            }
            node
        })
        .collect();
    serde_json::from_value(json!({"nodes": nodes, "max_parallel": 1})).expect("a chain parses")
}

/// Runs `plan` as a claimed job of the store, as a worker would; returns its wall time.
async fn run(store: &Arc<dyn Store>, runner: &PlanRunner, plan: &Plan) -> Result<Duration> {
    let now = Utc::now();
    let new = NewJob {
        id: orch_store::new_job_id(),
        kind: JobKind::Batch,
        input: json!({"plan": plan}),
        metadata: json!({}),
        max_attempts: 1,
        created_at: now,
        run_at: now,
        idempotency: None,
        owner: None,
    };
    store.insert_job(new).await?;
    let job = store.claim("bench", 1, Duration::from_secs(600)).await?.pop().context("the job was not claimed")?;
    let ctx = JobContext {
        store: store.clone(),
        worker: "bench".into(),
        job_id: job.id,
        cancel: CancellationToken::new(),
        followups: None,
    };
    let started = Instant::now();
    let result = runner.run(&job, &ctx).await;
    let took = started.elapsed();
    if let Err(e) = result {
        bail!("the plan failed: {}", e.message);
    }
    Ok(took)
}

/// A registry with the test MCP server as `test`, when its binary is beside `orch`.
async fn test_server_registry() -> Option<orch_mcp::Registry> {
    let path = std::env::current_exe().ok()?.parent()?.join("orch-mcp-test-server");
    if !path.exists() {
        return None;
    }
    let text = json!({"mcpServers": {"test": {"command": path}}}).to_string();
    let parsed = orch_mcp::config::parse(&text, |_| None).ok()?;
    let (registry, _) = orch_mcp::Registry::start(parsed.config, orch_mcp::RegistryOptions::default()).await.ok()?;
    Some(registry)
}
