//! `orch bench chat`: Orch's own overhead per chat turn.
//!
//! An `orch serve` child runs chat on a `cli` provider whose command answers at
//! once (`/bin/echo`), so what is measured is Orch: the HTTP request, the
//! durable job, the worker's claim, the process spawn and the answer's way
//! back. For reference the bench first times spawning the same command
//! directly. Then: `POST /v1/chat/completions` one at a time (latency p50/p99),
//! at a fixed concurrency (turns/s), and Orch's resident memory per running
//! turn (turns held open by a CLI that sleeps, Orch's RSS with them minus idle,
//! divided by their number; the CLIs' own memory is not Orch's).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args;
use serde_json::{Value, json};

use crate::bench::{ServeChild, percentiles};

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Turns of each timed run.
    #[arg(long, default_value_t = 2_000)]
    pub turns: usize,
    /// Concurrent callers of the throughput run (also the provider's limit).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Turns held open at once for the memory figure.
    #[arg(long, default_value_t = 64)]
    pub hold: usize,
}

pub async fn chat(args: ChatArgs) -> Result<()> {
    ensure!(
        args.turns > 0 && args.concurrency > 0 && args.hold > 0,
        "--turns, --concurrency and --hold must be at least 1"
    );
    println!(
        "== chat turn overhead: orch serve (child, embedded SQLite), provider `cli` running /bin/echo (answers at once) =="
    );
    let spawned = spawn_baseline(args.turns.min(1_000)).await?;
    println!("spawning /bin/echo directly (reference)       {}", percentiles(spawned));

    let dir = tempfile::Builder::new().prefix("orch-bench-chat-").tempdir().context("temp dir")?;
    let mut serve = start_serve(dir.path(), &args).await?;
    let result = measure(&serve, &args).await;
    serve.stop().await;
    result
}

async fn measure(serve: &ServeChild, args: &ChatArgs) -> Result<()> {
    let one = |model: &'static str| {
        let serve = Handle::of(serve);
        async move { serve.turn(model).await }
    };
    // Warm-up: connections, key cache, first process spawns; not counted.
    for _ in 0..20 {
        one("echo").await?;
    }
    let mut sequential = Vec::with_capacity(args.turns);
    for _ in 0..args.turns {
        sequential.push(one("echo").await?);
    }
    println!("POST /v1/chat/completions, one at a time      {}", percentiles(sequential));

    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let serve = Handle::of(serve);
        let next = next.clone();
        let turns = args.turns;
        callers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < turns {
                latencies.push(serve.turn("echo").await?);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = callers.join_next().await {
        latencies.extend(joined.context("caller task")??);
    }
    let took = started.elapsed();
    println!(
        "{} concurrent callers, {} turns: {:.0} turns/s  {}",
        args.concurrency,
        args.turns,
        args.turns as f64 / took.as_secs_f64(),
        percentiles(latencies)
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(serve.pid)?;
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..args.hold {
        let serve = Handle::of(serve);
        held.spawn(async move { serve.turn("hold").await });
    }
    // The holding CLI sleeps 3 s: measure while every turn is running.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let busy = rss_kib(serve.pid)?;
    while let Some(joined) = held.join_next().await {
        joined.context("holding turn")??;
    }
    println!(
        "memory: RSS idle {:.1} MiB, with {} turns running {:.1} MiB: {:.1} KiB per running turn",
        idle as f64 / 1024.0,
        args.hold,
        busy as f64 / 1024.0,
        busy.saturating_sub(idle) as f64 / args.hold as f64
    );
    println!();
    Ok(())
}

/// Times `n` spawns of `/bin/echo` from this process, waited for.
async fn spawn_baseline(n: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = tokio::process::Command::new("/bin/echo")
            .arg("ok")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .await
            .context("running /bin/echo")?;
        ensure!(status.status.success(), "/bin/echo failed");
        out.push(started.elapsed());
    }
    Ok(out)
}

/// An `orch serve` child on a free port with the bench's providers.
async fn start_serve(dir: &std::path::Path, args: &ChatArgs) -> Result<ServeChild> {
    ServeChild::start(dir, |command| {
        command
            .env("ORCH_PROVIDER_ECHO_KIND", "cli")
            .env("ORCH_PROVIDER_ECHO_COMMAND", "/bin/echo")
            .env("ORCH_PROVIDER_ECHO_ARGS", "{prompt}")
            .env("ORCH_PROVIDER_ECHO_OUTPUT_FORMAT", "text")
            .env("ORCH_PROVIDER_ECHO_CONCURRENCY", args.concurrency.to_string())
            .env("ORCH_PROVIDER_HOLD_KIND", "cli")
            .env("ORCH_PROVIDER_HOLD_COMMAND", "/bin/sh")
            .env("ORCH_PROVIDER_HOLD_ARGS", r#"["-c", "sleep 3; echo held"]"#)
            .env("ORCH_PROVIDER_HOLD_OUTPUT_FORMAT", "text")
            .env("ORCH_PROVIDER_HOLD_CONCURRENCY", args.hold.min(256).to_string())
            .env("ORCH_DEFAULT_MODEL", "echo");
    })
    .await
}

/// What a calling task needs of the child: its address and admin key.
#[derive(Clone)]
struct Handle {
    client: reqwest::Client,
    url: String,
    key: String,
}

impl Handle {
    fn of(serve: &ServeChild) -> Handle {
        Handle { client: serve.client.clone(), url: serve.url.clone(), key: serve.key.clone() }
    }

    /// One completion; fails unless the answer is the provider's.
    async fn turn(&self, model: &str) -> Result<Duration> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(&self.key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "ping"}]}))
            .send()
            .await
            .context("POST /v1/chat/completions")?;
        let status = response.status();
        let body: Value = response.json().await.context("completion body")?;
        let took = started.elapsed();
        let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
        ensure!(status.is_success() && (text == "ping" || text == "held"), "a turn failed: {status} {body}");
        Ok(took)
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    crate::bench::proc_status_kib(pid, "VmRSS")
}
