//! `orch bench wakeups`: how fast a change reaches whoever waits for it, in one
//! process and across processes (issue 17 §1).
//!
//! Setups, each started fresh as child processes of this executable:
//! `orch serve` on its embedded SQLite, `orch serve` on Redis, and `orch api` +
//! `orch worker` on Redis (the split deployment). In each: one one-node batch
//! job at a time, submit → start and submit → terminal, followed by Server-Sent
//! Events and by polling `GET /v1/jobs/{id}` every millisecond; the delay of
//! each streamed delta through `POST /v1/chat/completions` (`stream: true`) from
//! a provider that prints the time into each delta; and on Redis the store's
//! commands per second while 1,000 followers wait on jobs where nothing happens.
//! Then the API process's memory with 10,000 idle followers and after they
//! closed, and BullMQ's add → finished on the same Redis for comparison
//! (needs `node` and `npm`; installs `bullmq@5` into a cache directory).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::bench::{percentiles, proc_status_kib};

#[derive(Debug, Args)]
pub struct WakeupsArgs {
    /// Jobs of each latency run (one at a time).
    #[arg(long, default_value_t = 200)]
    pub jobs: usize,
    /// Streamed chat turns (10 deltas each, 50 ms apart).
    #[arg(long, default_value_t = 20)]
    pub chat_turns: usize,
    /// Idle followers while the store's commands are counted.
    #[arg(long, default_value_t = 1_000)]
    pub idle: usize,
    /// Idle followers of the memory figure (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    pub memory_followers: usize,
    /// Skip BullMQ's figure.
    #[arg(long)]
    pub skip_bullmq: bool,
    /// Only the memory figure (no latency runs, no BullMQ).
    #[arg(long)]
    pub memory_only: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    ServeSqlite,
    ServeRedis,
    Split,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::ServeSqlite => "orch serve (SQLite)",
            Setup::ServeRedis => "orch serve (Redis)",
            Setup::Split => "api + worker (Redis)",
        }
    }
}

/// What one setup measured.
#[derive(Default)]
struct Figures {
    start_sse: Vec<Duration>,
    end_sse: Vec<Duration>,
    end_polled: Vec<Duration>,
    deltas: Vec<Duration>,
    /// Store commands/s without and with the idle followers.
    idle_ops: Option<(f64, f64)>,
}

pub async fn wakeups(args: WakeupsArgs) -> Result<()> {
    ensure!(args.jobs > 0 && args.chat_turns > 0, "--jobs and --chat-turns must be at least 1");
    if cfg!(debug_assertions) {
        println!("WARNING: a debug build; use cargo build --release for figures worth keeping");
    }
    println!(
        "== wake-ups: {} jobs one at a time, {} streamed chat turns, {} idle followers per setup ==",
        args.jobs, args.chat_turns, args.idle
    );
    let redis = tokio::task::spawn_blocking(orch_testkit::RedisServer::start).await?;
    let dir = tempfile::Builder::new().prefix("orch-bench-wakeups-").tempdir().context("temp dir")?;
    let script = write_stream_script(dir.path())?;
    let mut all = Vec::new();
    let setups: &[Setup] = if args.memory_only { &[] } else { &[Setup::ServeSqlite, Setup::ServeRedis, Setup::Split] };
    for &setup in setups {
        let prefix = format!("bench{}", all.len());
        let run_dir = dir.path().join(&prefix);
        std::fs::create_dir_all(&run_dir)?;
        let mut deployment = Deployment::start(setup, &run_dir, &redis, &prefix, &script).await?;
        let figures = measure(&deployment, &redis, &args).await;
        deployment.stop().await;
        let figures = figures.with_context(|| setup.name())?;
        println!(
            "{:<22} submit→start SSE {}\n{:<22} submit→end SSE   {}\n{:<22} submit→end polled {}\n{:<22} chat delta       {}",
            setup.name(),
            percentiles(figures.start_sse.clone()),
            "",
            percentiles(figures.end_sse.clone()),
            "",
            percentiles(figures.end_polled.clone()),
            "",
            percentiles(figures.deltas.clone()),
        );
        all.push((setup, figures));
    }
    let bullmq = if args.skip_bullmq || args.memory_only {
        Err("skipped".to_owned())
    } else {
        bullmq(dir.path(), &redis, args.jobs).await.map_err(|e| format!("{e:#}"))
    };
    let memory = if args.memory_followers > 0 {
        let run_dir = dir.path().join("memory");
        std::fs::create_dir_all(&run_dir)?;
        let mut deployment = Deployment::start(Setup::Split, &run_dir, &redis, "benchmem", &script).await?;
        let figures = memory(&deployment, args.memory_followers).await;
        deployment.stop().await;
        Some(figures?)
    } else {
        None
    };

    println!();
    if !all.is_empty() {
        table(&all, &bullmq, args.idle);
    }
    if let Some((idle, with, after)) = memory {
        println!(
            "api process RSS: idle {:.1} MiB, with {} idle SSE followers {:.1} MiB ({:.1} KiB each), 5 s after they closed {:.1} MiB",
            idle as f64 / 1024.0,
            args.memory_followers,
            with as f64 / 1024.0,
            with.saturating_sub(idle) as f64 / args.memory_followers as f64,
            after as f64 / 1024.0
        );
    }
    Ok(())
}

/// The figures of every setup side by side, with BullMQ's beside the terminal rows.
fn table(all: &[(Setup, Figures)], bullmq: &Result<Vec<Duration>, String>, idle: usize) {
    let bull = bullmq.as_ref().map(|l| p50_p99(l)).unwrap_or_else(|why| format!("not measured: {why}"));
    println!(
        "| figure (p50 / p99) | {} | BullMQ 5, worker in another process, same Redis |",
        all.iter().map(|(s, _)| s.name()).collect::<Vec<_>>().join(" | ")
    );
    println!("| --- |{} --- |", " --- |".repeat(all.len()));
    let row = |name: &str, pick: &dyn Fn(&Figures) -> String, bull: &str| {
        println!("| {name} | {} | {bull} |", all.iter().map(|(_, f)| pick(f)).collect::<Vec<_>>().join(" | "));
    };
    row("submit → start, SSE", &|f| p50_p99(&f.start_sse), "-");
    row("submit → terminal, polled every 1 ms", &|f| p50_p99(&f.end_polled), "-");
    row("submit → terminal, SSE (BullMQ: add → finished, waitUntilFinished)", &|f| p50_p99(&f.end_sse), &bull);
    row("chat delta, streamed `/v1/chat/completions`", &|f| p50_p99(&f.deltas), "-");
    row(
        &format!("store commands/s: idle → with {} idle followers (per follower)", idle),
        &|f| match f.idle_ops {
            Some((base, with)) => {
                format!("{base:.0} → {with:.0} ({:.3})", (with - base).max(0.0) / idle as f64)
            }
            None => "n/a (SQLite)".into(),
        },
        "-",
    );
}

fn p50_p99(latencies: &[Duration]) -> String {
    if latencies.is_empty() {
        return "-".into();
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1000.0
    };
    format!("{:.2} / {:.2} ms", at(0.5), at(0.99))
}

/// A provider command (Claude's stream-json shape) whose 10 deltas carry the
/// time they were printed, in ns since the epoch.
fn write_stream_script(dir: &Path) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("stream-provider");
    std::fs::write(
        &path,
        r#"#!/bin/sh
for i in 1 2 3 4 5 6 7 8 9 10; do
  printf '{"type":"assistant","message":{"content":[{"type":"text","text":"%s "}]}}\n' "$(date +%s%N)"
  sleep 0.05
done
printf '{"type":"result","subtype":"success","is_error":false,"result":"done","usage":{"input_tokens":1,"output_tokens":10}}\n'
"#,
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The child processes of one setup.
struct Deployment {
    children: Vec<tokio::process::Child>,
    api_pid: u32,
    url: String,
    key: String,
    client: reqwest::Client,
}

impl Deployment {
    async fn start(
        setup: Setup,
        dir: &Path,
        redis: &orch_testkit::RedisServer,
        prefix: &str,
        script: &Path,
    ) -> Result<Deployment> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let port = orch_testkit::free_port();
        let exe = std::env::current_exe().context("finding the orch executable")?;
        let command = |what: &str| {
            let mut command = tokio::process::Command::new(&exe);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("ORCH_") {
                    command.env_remove(name);
                }
            }
            command
                .arg(what)
                .current_dir(dir)
                .env("ORCH_DATA_DIR", dir)
                .env("ORCH_LOG", "warn")
                .env("ORCH_MAX_CONNECTIONS", "30000")
                .env("ORCH_MAX_STREAMS", "30000")
                .env("ORCH_MAX_STREAMS_PER_KEY", "30000")
                .env("ORCH_PROVIDER_STREAM_KIND", "claude")
                .env("ORCH_PROVIDER_STREAM_COMMAND", script)
                .env("ORCH_DEFAULT_MODEL", "stream")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if setup != Setup::ServeSqlite {
                command.env("ORCH_STORE", redis.url()).env("ORCH_REDIS_PREFIX", prefix);
            }
            command
        };
        let mut first = command(if setup == Setup::Split { "api" } else { "serve" });
        first.env("ORCH_BIND", format!("127.0.0.1:{port}")).stdout(Stdio::piped());
        let mut api = first.spawn().context("starting orch")?;
        let api_pid = api.id().context("child pid")?;
        let mut lines = BufReader::new(api.stdout.take().context("child stdout")?).lines();
        let key = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(key) = line.split_whitespace().find(|w| w.starts_with("orch_")) {
                    return anyhow::Ok(key.to_owned());
                }
            }
            bail!("orch exited before printing its admin key")
        })
        .await
        .context("orch printed no admin key within 30 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut children = vec![api];
        if setup == Setup::Split {
            children.push(command("worker").spawn().context("starting orch worker")?);
        }
        let client = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(64).build()?;
        let deployment = Deployment { children, api_pid, url: format!("http://127.0.0.1:{port}"), key, client };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health: Value = match deployment.client.get(format!("{}/health", deployment.url)).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if health["workers"].as_u64() >= Some(1) {
                break;
            }
            ensure!(Instant::now() < deadline, "no worker seen within 30 s: {health}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(deployment)
    }

    async fn stop(&mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(20), child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }

    async fn submit(&self, plan: Value) -> Result<String> {
        let response = self
            .client
            .post(format!("{}/v1/jobs/batch", self.url))
            .bearer_auth(&self.key)
            .json(&json!({ "plan": plan }))
            .send()
            .await?;
        ensure!(response.status() == 202, "submit: {}", response.status());
        let body: Value = response.json().await?;
        body["id"].as_str().map(str::to_owned).context("submit answered no id")
    }

    async fn events(&self, id: &str) -> Result<reqwest::Response> {
        let response =
            self.client.get(format!("{}/v1/jobs/{id}/events", self.url)).bearer_auth(&self.key).send().await?;
        ensure!(response.status() == 200, "events: {}", response.status());
        Ok(response)
    }
}

const ONE_NODE: fn() -> Value = || json!({"nodes": [{"id": "a", "echo": "hi"}]});

async fn measure(d: &Deployment, redis: &orch_testkit::RedisServer, args: &WakeupsArgs) -> Result<Figures> {
    let mut f = Figures::default();
    // Warm-up: connections, key cache; not counted.
    for _ in 0..10 {
        let id = d.submit(ONE_NODE()).await?;
        follow(d, &id, Instant::now()).await?;
    }
    for _ in 0..args.jobs {
        let started = Instant::now();
        let id = d.submit(ONE_NODE()).await?;
        let (start, end) = follow(d, &id, started).await?;
        f.start_sse.push(start);
        f.end_sse.push(end);
    }
    for _ in 0..args.jobs {
        let started = Instant::now();
        let id = d.submit(ONE_NODE()).await?;
        loop {
            let job: Value =
                d.client.get(format!("{}/v1/jobs/{id}", d.url)).bearer_auth(&d.key).send().await?.json().await?;
            if matches!(job["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                ensure!(job["status"] == "succeeded", "job {id} ended {}", job["status"]);
                f.end_polled.push(started.elapsed());
                break;
            }
            ensure!(started.elapsed() < Duration::from_secs(60), "job {id} did not end within 60 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for _ in 0..args.chat_turns {
        f.deltas.extend(chat_deltas(d).await?);
    }
    if args.idle > 0 && is_redis(d).await {
        f.idle_ops = Some(idle_ops(d, redis, args.idle).await?);
    }
    Ok(f)
}

async fn is_redis(d: &Deployment) -> bool {
    match d.client.get(format!("{}/health", d.url)).send().await {
        Ok(r) => r.json::<Value>().await.map(|h| h["store"]["backend"] == "redis").unwrap_or(false),
        Err(_) => false,
    }
}

/// Follows a job to its end: from `started`, when `running` and the terminal event arrived.
async fn follow(d: &Deployment, id: &str, started: Instant) -> Result<(Duration, Duration)> {
    let mut body = d.events(id).await?.bytes_stream();
    let mut text = String::new();
    let mut start = None;
    let deadline = started + Duration::from_secs(60);
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next())
            .await
            .with_context(|| format!("job {id} did not end within 60 s"))?
            .with_context(|| format!("the event stream of {id} ended early"))??;
        text.push_str(&String::from_utf8_lossy(&chunk));
        if start.is_none() && text.contains("event: running\n") {
            start = Some(started.elapsed());
        }
        if text.contains("event: succeeded\n") {
            let end = started.elapsed();
            return Ok((start.unwrap_or(end), end));
        }
        if text.contains("event: failed\n") || text.contains("event: cancelled\n") {
            bail!("job {id} did not succeed: {text}");
        }
    }
}

/// One streamed completion; the delay of each delta from its printing.
async fn chat_deltas(d: &Deployment) -> Result<Vec<Duration>> {
    let response = d
        .client
        .post(format!("{}/v1/chat/completions", d.url))
        .bearer_auth(&d.key)
        .json(&json!({"model": "stream", "stream": true, "messages": [{"role": "user", "content": "go"}]}))
        .send()
        .await?;
    ensure!(response.status() == 200, "chat: {}", response.status());
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            if data == "[DONE]" {
                ensure!(out.len() >= 10, "only {} timed deltas arrived", out.len());
                return Ok(out);
            }
            let Ok(value) = serde_json::from_str::<Value>(data) else { continue };
            let content = value["choices"][0]["delta"]["content"].as_str().unwrap_or_default();
            for stamp in content.split_whitespace().filter_map(|w| w.parse::<u128>().ok()) {
                out.push(Duration::from_nanos(now.saturating_sub(stamp) as u64));
            }
        }
    }
    bail!("the chat stream ended without [DONE]")
}

/// Redis commands per second without and with `n` idle followers (of jobs
/// that sleep or wait in the queue and so write nothing).
async fn idle_ops(d: &Deployment, redis: &orch_testkit::RedisServer, n: usize) -> Result<(f64, f64)> {
    const WINDOW: Duration = Duration::from_secs(5);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(d.submit(json!({"nodes": [{"id": "a", "sleep": {"ms": 600_000}}]})).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = || async {
        let before = commands(redis)?;
        tokio::time::sleep(WINDOW).await;
        anyhow::Ok((commands(redis)? - before) as f64 / WINDOW.as_secs_f64())
    };
    let base = rate().await?;
    let mut followers = Vec::with_capacity(n);
    for id in &ids {
        let mut body = d.events(id).await?.bytes_stream();
        body.next().await.context("no first event")??;
        followers.push(body);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = rate().await?;
    drop(followers);
    for id in &ids {
        let _ = d.client.post(format!("{}/v1/jobs/{id}/cancel", d.url)).bearer_auth(&d.key).send().await;
    }
    Ok((base, with))
}

/// `total_commands_processed` of the Redis server.
fn commands(redis: &orch_testkit::RedisServer) -> Result<u64> {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port()))?;
    s.write_all(b"INFO stats\r\n")?;
    for line in std::io::BufReader::new(s).lines() {
        if let Some(n) = line?.strip_prefix("total_commands_processed:") {
            return Ok(n.trim().parse()?);
        }
    }
    bail!("no total_commands_processed in INFO stats")
}

/// The API process's RSS (KiB): idle, with `n` idle followers, and 5 s after they closed.
async fn memory(d: &Deployment, n: usize) -> Result<(u64, u64, u64)> {
    println!("memory: submitting {n} jobs that wait, then following each ...");
    let mut ids = Vec::with_capacity(n);
    let plan = json!({"nodes": [{"id": "a", "sleep": {"ms": 600_000}}]});
    let mut submits = futures::stream::iter(0..n).map(|_| d.submit(plan.clone())).buffer_unordered(32);
    while let Some(id) = submits.next().await {
        ids.push(id?);
    }
    drop(submits);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = proc_status_kib(d.api_pid, "VmRSS")?;
    // Separate connections, as separate clients would have.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut opens = futures::stream::iter(ids.iter())
        .map(|id| {
            let client = client.clone();
            async move {
                let response = client.get(format!("{}/v1/jobs/{id}/events", d.url)).bearer_auth(&d.key).send().await?;
                ensure!(response.status() == 200, "events: {}", response.status());
                let mut body = response.bytes_stream();
                body.next().await.context("no first event")??;
                anyhow::Ok(body)
            }
        })
        .buffer_unordered(64);
    let mut followers = Vec::with_capacity(n);
    while let Some(body) = opens.next().await {
        followers.push(body?);
    }
    drop(opens);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with = proc_status_kib(d.api_pid, "VmRSS")?;
    drop(followers);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = proc_status_kib(d.api_pid, "VmRSS")?;
    Ok((idle, with, after))
}

/// BullMQ's add → finished, one job at a time, its worker in another process,
/// on the same Redis. Installs bullmq@5 with npm into a cache directory.
async fn bullmq(dir: &Path, redis: &orch_testkit::RedisServer, jobs: usize) -> Result<Vec<Duration>> {
    let cache = std::env::temp_dir().join("orch-bench-bullmq");
    std::fs::create_dir_all(&cache)?;
    if !cache.join("node_modules/bullmq").exists() {
        println!("installing bullmq@5 with npm into {} ...", cache.display());
        let status = tokio::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "bullmq@5"])
            .current_dir(&cache)
            .stdout(Stdio::null())
            .status()
            .await
            .context("running npm (is Node.js installed?)")?;
        ensure!(status.success(), "npm install bullmq@5 failed ({status})");
    }
    let worker = dir.join("bullmq-worker.cjs");
    let producer = dir.join("bullmq-producer.cjs");
    let modules = cache.join("node_modules");
    let connection = format!("{{ host: '127.0.0.1', port: {} }}", redis.port());
    std::fs::write(
        &worker,
        format!(
            "const {{ Worker }} = require('bullmq');\n\
             const w = new Worker('orch-bench', async () => ({{ ok: 1 }}), {{ connection: {connection} }});\n\
             w.on('ready', () => console.log('ready'));\n"
        ),
    )?;
    std::fs::write(
        &producer,
        format!(
            "const {{ Queue, QueueEvents }} = require('bullmq');\n\
             (async () => {{\n\
               const queue = new Queue('orch-bench', {{ connection: {connection} }});\n\
               const events = new QueueEvents('orch-bench', {{ connection: {connection} }});\n\
               await events.waitUntilReady();\n\
               const out = [];\n\
               for (let i = 0; i < {total}; i++) {{\n\
                 const t0 = process.hrtime.bigint();\n\
                 // Kept a while: waitUntilFinished reads the finished job, and a job\n\
                 // removed on completion fails it with \"Missing key\" when it ends first.\n\
                 const job = await queue.add('x', {{ i }}, {{ removeOnComplete: {{ count: 1000 }} }});\n\
                 await job.waitUntilFinished(events);\n\
                 if (i >= 10) out.push(Number(process.hrtime.bigint() - t0) / 1e6);\n\
               }}\n\
               console.log(JSON.stringify(out));\n\
               await events.close(); await queue.close();\n\
             }})().catch(e => {{ console.error(e); process.exit(1); }});\n",
            total = jobs + 10
        ),
    )?;
    let mut worker_child = tokio::process::Command::new("node")
        .arg(&worker)
        .env("NODE_PATH", &modules)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting node")?;
    {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut lines = BufReader::new(worker_child.stdout.take().context("worker stdout")?).lines();
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the BullMQ worker was not ready within 30 s")??;
    }
    let output = tokio::process::Command::new("node")
        .arg(&producer)
        .env("NODE_PATH", &modules)
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the BullMQ producer")?;
    let _ = worker_child.start_kill();
    let _ = worker_child.wait().await;
    ensure!(output.status.success(), "the BullMQ producer failed ({})", output.status);
    let ms: Vec<f64> = serde_json::from_slice(&output.stdout).context("BullMQ producer output")?;
    Ok(ms.into_iter().map(|ms| Duration::from_secs_f64(ms / 1000.0)).collect())
}
