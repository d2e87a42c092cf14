//! `orch bench`: benchmarks that print measured figures.
//!
//! `orch bench queue` measures, on this machine:
//! 1. the drain rate of each store backend: N no-op batch jobs are queued in a
//!    fresh store, then one in-process worker (default settings) runs them all;
//! 2. HTTP submission through the real router served on loopback: closed-loop
//!    throughput with many keep-alive clients, then latency at a fixed,
//!    open-loop request rate (latency counted from the scheduled send time);
//! 3. the peak memory (VmHWM) of an `orch serve` child process draining a
//!    backlog from the embedded store.
//!
//! A benchmark reports; it asserts nothing about speed. It does fail when the
//! system misbehaves (a job not succeeding, a submission not answered 202).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use orch_store::{
    ApiKey, Completion, Inserted, Job, JobCounts, JobEvent, JobFilter, JobId, JobKind, NewJob, Notifier, Outcome,
    Store, StoreOptions, StoreUrl, WorkerInfo,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Queue drain rate per backend, HTTP submission rate and latency, peak memory.
    Queue(QueueArgs),
    /// Orch's own overhead per chat turn: latency, turns/s, memory per running turn.
    Chat(crate::bench_chat::ChatArgs),
    /// Batch plans: validation speed, scheduling efficiency, per-node overhead, speed-up.
    Plans(crate::bench_plans::PlansArgs),
    /// MCP gateway: added latency, calls/s, memory per pooled connection, tools/list of 1,000 tools.
    Gateway(crate::bench_gateway::GatewayArgs),
    /// Request rate limits: the cost of a key's limit per request (store check alone, and over HTTP).
    Rate(crate::bench_rate::RateArgs),
    /// Wake-ups: submit → start/end (SSE and polled), chat delta delay, idle followers' store cost and memory; serve vs api + worker, and BullMQ.
    Wakeups(crate::bench_wakeups::WakeupsArgs),
    /// Per-request cost of the request id, trace span and metrics layers.
    Layers(crate::bench_layers::LayersArgs),
    /// The real chat CLIs (pinned npm install) on a fake model API: time to answer cold vs warm, bare vs through Orch, memory per warm CLI.
    Clis(crate::bench_clis::ClisArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sqlite,
    Redis,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Redis => "redis",
        }
    }
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Backends whose drain rate is measured.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite,redis")]
    pub backends: Vec<Backend>,
    /// Backlog sizes: jobs queued before the worker starts.
    #[arg(long, value_delimiter = ',', default_value = "1000,50000")]
    pub sizes: Vec<usize>,
    /// Drain runs per backend and size (each on a fresh store); the median rate is compared.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Drain runs per backend of each backlog below 10,000 jobs instead of --runs: such a
    /// drain lasts tens of milliseconds, so one run's rate is the noisiest figure here.
    #[arg(long, default_value_t = 9)]
    pub small_runs: usize,
    /// Worker concurrency [default: the worker's default, 256].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Redis to use (a unique key prefix per run) [default: a private redis-server on a free port].
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Backend behind the HTTP API during the HTTP runs.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub http_backend: Backend,
    /// Requests of the throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub http_requests: usize,
    /// Concurrent clients (keep-alive connections) of the throughput run.
    #[arg(long, default_value_t = 64)]
    pub http_concurrency: usize,
    /// Requests per second of the fixed-rate latency run.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Length of the fixed-rate latency run, in seconds: at 1,000 req/s a 5 s run holds
    /// 5,000 requests, so a single disk stall of 50 ms alone can decide its p99.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Skip the HTTP runs.
    #[arg(long)]
    pub skip_http: bool,
    /// Skip the `orch serve` peak-memory run.
    #[arg(long)]
    pub skip_serve: bool,
    /// Jobs queued for the `orch serve` peak-memory run.
    #[arg(long, default_value_t = 50_000)]
    pub serve_jobs: usize,
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Queue(args) => queue(args).await,
        BenchCommand::Chat(args) => crate::bench_chat::chat(args).await,
        BenchCommand::Plans(args) => crate::bench_plans::plans(args).await,
        BenchCommand::Gateway(args) => crate::bench_gateway::gateway(args).await,
        BenchCommand::Wakeups(args) => crate::bench_wakeups::wakeups(args).await,
        BenchCommand::Layers(args) => crate::bench_layers::layers(args).await,
        BenchCommand::Rate(args) => crate::bench_rate::rate(args).await,
        BenchCommand::Clis(args) => crate::bench_clis::clis(args).await,
    }
}

/// Jobs per `insert_jobs` call when loading a backlog.
const INSERT_CHUNK: usize = 5_000;
/// Backlogs below this many jobs are drained `--small-runs` times.
const SMALL_BACKLOG: usize = 10_000;
/// The fixed-rate run counts requests slower than this (the p99 target).
const SLOW_REQUEST: Duration = Duration::from_millis(5);
/// How often the drain loop looks at the job counts.
// Counting is a scan on SQLite; polling often would compete with the worker.
const POLL: Duration = Duration::from_millis(250);
/// A drain with no job finishing for this long is reported as stuck.
const STALL: Duration = Duration::from_secs(60);

async fn queue(args: QueueArgs) -> Result<()> {
    ensure!(!args.sizes.is_empty() && args.sizes.iter().all(|&n| n > 0), "--sizes: give positive backlog sizes");
    ensure!(args.runs > 0 && args.small_runs > 0, "--runs and --small-runs must be at least 1");
    ensure!(args.concurrency != Some(0), "--concurrency must be at least 1");
    ensure!(args.http_concurrency > 0 && args.rate > 0, "--http-concurrency and --rate must be at least 1");
    header(&args);

    let needs_redis =
        args.backends.contains(&Backend::Redis) || (!args.skip_http && args.http_backend == Backend::Redis);
    let mut redis = Redis::External(String::new());
    if needs_redis {
        redis = match &args.redis_url {
            Some(url) => Redis::External(url.clone()),
            None => Redis::Private(
                tokio::task::spawn_blocking(orch_testkit::RedisServer::start)
                    .await
                    .context("starting a private redis-server")?,
            ),
        };
        println!("redis: {}", redis.describe());
    }
    println!();

    if !args.backends.is_empty() {
        drain_section(&args, &redis).await?;
    }
    if !args.skip_http {
        http_section(&args, &redis).await?;
    }
    if !args.skip_serve {
        serve_section(&args).await?;
    }
    Ok(())
}

fn header(args: &QueueArgs) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
    let command: Vec<String> = std::env::args().collect();
    let defaults = orch_worker::WorkerConfig::new(String::new());
    println!("orch bench queue (orch {}), {}", env!("CARGO_PKG_VERSION"), Utc::now().format("%Y-%m-%d %H:%M UTC"));
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    println!("machine: {cores} cores ({cpu}), Linux {kernel}, load average at start {load}");
    println!("command: {}", command.join(" "));
    println!(
        "worker:  concurrency {}, claim_batch {}, poll_interval {} ms",
        args.concurrency.unwrap_or(defaults.concurrency),
        defaults.claim_batch,
        defaults.poll_interval.as_millis()
    );
    if cfg!(debug_assertions) {
        println!("WARNING: a debug build; figures are meaningless (use cargo build --release)");
    }
}

pub(crate) enum Redis {
    Private(orch_testkit::RedisServer),
    External(String),
}

impl Redis {
    pub(crate) fn url(&self) -> String {
        match self {
            Redis::Private(server) => server.url(),
            Redis::External(url) => url.clone(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Redis::Private(server) => format!("private redis-server on 127.0.0.1:{} (no persistence)", server.port()),
            Redis::External(url) => orch_store::redact_url(url),
        }
    }
}

/// A fresh, empty store of one backend; the temp dir lives as long as the store is used.
pub(crate) struct FreshStore {
    pub(crate) store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    /// The SQLite file.
    file: Option<PathBuf>,
    redis_prefix: Option<String>,
}

impl FreshStore {
    /// Copies SQLite's write-ahead log into the database file, so a drain
    /// starts on a settled store, as a worker started after the backlog built
    /// up would, instead of paying for checkpointing the enqueue's writes; and
    /// after a drain, so its writes are done before the next run starts.
    async fn settle(&self) -> Result<()> {
        let Some(file) = self.file.clone() else { return Ok(()) };
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(&file)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        })
        .await?
        .context("checkpointing the queued backlog")
    }
}

pub(crate) async fn fresh_store(backend: Backend, redis: &Redis) -> Result<FreshStore> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::Builder::new().prefix("orch-bench-").tempdir().context("temp dir")?;
            let file = dir.path().join("orch.db");
            let url = StoreUrl::Sqlite(file.clone());
            let store = orch_store::open(&url, &StoreOptions::default()).await.context("opening the sqlite store")?;
            Ok(FreshStore { store, _dir: Some(dir), file: Some(file), redis_prefix: None })
        }
        Backend::Redis => {
            let prefix = format!("orch-bench-{}", uuid::Uuid::now_v7().simple());
            let options = StoreOptions { redis_prefix: prefix.clone() };
            let store = orch_store::open(&StoreUrl::Redis(redis.url()), &options)
                .await
                .with_context(|| format!("opening the redis store at {}", redis.describe()))?;
            Ok(FreshStore { store, _dir: None, file: None, redis_prefix: Some(prefix) })
        }
    }
}

fn noop_job() -> NewJob {
    let now = Utc::now();
    NewJob {
        id: orch_store::new_job_id(),
        kind: JobKind::Batch,
        input: json!({"plan": {"nodes": []}}),
        metadata: json!({}),
        max_attempts: 3,
        created_at: now,
        run_at: now,
        idempotency: None,
        owner: None,
    }
}

/// Queues `n` no-op jobs in chunks; returns the time it took.
async fn load_backlog(store: &dyn Store, n: usize) -> Result<Duration> {
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let chunk = left.min(INSERT_CHUNK);
        let jobs: Vec<NewJob> = (0..chunk).map(|_| noop_job()).collect();
        store.insert_jobs(jobs).await.context("insert_jobs")?;
        left -= chunk;
    }
    let took = started.elapsed();
    let counts = store.count_jobs().await.context("count_jobs")?;
    ensure!(
        counts.queued == n as u64 && counts.running == 0 && counts.succeeded == 0,
        "after queueing {n} jobs in an empty store the counts are {}",
        show_counts(&counts)
    );
    Ok(took)
}

// ---------------------------------------------------------------------------
// 1. Drain rate

struct DrainRow {
    backend: Backend,
    backlog: usize,
    enqueue: Duration,
    drain: Duration,
    stats: CallStats,
    /// Cores busy on average during the drain: this process, and the whole machine.
    cpu_self: f64,
    cpu_all: f64,
    /// Cores the private redis-server was busy on average (redis rows only).
    cpu_redis: Option<f64>,
}

impl DrainRow {
    fn rate(&self) -> f64 {
        self.backlog as f64 / self.drain.as_secs_f64()
    }
}

async fn drain_section(args: &QueueArgs, redis: &Redis) -> Result<()> {
    println!("== Drain: N queued no-op batch jobs, one in-process worker, fresh store per run ==");
    println!(
        "{:<8} {:>8} {:>10} {:>9} {:>10}   {:>7} {:>9} {:>10} {:>11} {:>9} {:>9} {:>8}",
        "backend",
        "backlog",
        "enqueue/s",
        "seconds",
        "jobs/s",
        "claims",
        "ms/claim",
        "completes",
        "ms/complete",
        "cpu orch",
        "cpu redis",
        "cpu all"
    );
    let mut rows: Vec<DrainRow> = Vec::new();
    // Sizes take turns (1,000, 50,000, 1,000, ...), so a slow spell of the
    // machine falls on both sides of the ratio instead of on one size's runs.
    let rounds = args.sizes.iter().map(|&n| runs_of(args, n)).max().unwrap_or(0);
    for &backend in &args.backends {
        for round in 0..rounds {
            for &n in args.sizes.iter().filter(|&&n| round < runs_of(args, n)) {
                let row = drain_once(backend, n, args.concurrency, redis).await?;
                let s = &row.stats;
                println!(
                    "{:<8} {:>8} {:>10.0} {:>9.3} {:>10.0}   {:>7} {:>9.2} {:>10} {:>11.2} {:>9.2} {:>9} {:>8.2}",
                    backend.name(),
                    n,
                    n as f64 / row.enqueue.as_secs_f64(),
                    row.drain.as_secs_f64(),
                    row.rate(),
                    s.claims,
                    s.claim_ms(),
                    s.completes,
                    s.complete_ms(),
                    row.cpu_self,
                    row.cpu_redis.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
                    row.cpu_all
                );
                rows.push(row);
            }
        }
    }
    let smallest = *args.sizes.iter().min().unwrap();
    let largest = *args.sizes.iter().max().unwrap();
    if smallest != largest {
        for &backend in &args.backends {
            let median_rate = |size: usize| {
                median(rows.iter().filter(|r| r.backend == backend && r.backlog == size).map(DrainRow::rate).collect())
            };
            let (small, large) = (median_rate(smallest), median_rate(largest));
            println!(
                "{:<8} rate({largest})/rate({smallest}) = {:.2}{}",
                backend.name(),
                large / small,
                if runs_of(args, smallest) > 1 || runs_of(args, largest) > 1 { " (medians)" } else { "" }
            );
        }
    }
    println!(
        "(seconds: worker start until the last completion is stored; enqueue/s: insert_jobs in chunks of {INSERT_CHUNK};"
    );
    println!(" sqlite: the queued backlog is checkpointed into the database file before the worker starts;");
    println!(" ms/claim, ms/complete: mean store round trip of the worker's claim and complete calls;");
    println!(" cpu orch / redis / all: cores busy on average while draining: this process (worker and store client),");
    println!(" the private redis-server (INFO cpu), the whole machine including anything else running)");
    println!();
    Ok(())
}

/// Drain runs of a backlog of `n` jobs.
fn runs_of(args: &QueueArgs, n: usize) -> usize {
    if n < SMALL_BACKLOG { args.small_runs } else { args.runs }
}

async fn drain_once(backend: Backend, n: usize, concurrency: Option<usize>, redis: &Redis) -> Result<DrainRow> {
    let fresh = fresh_store(backend, redis).await?;
    let enqueue = load_backlog(fresh.store.as_ref(), n).await?;
    fresh.settle().await?;

    let observed = Arc::new(Observed::new(fresh.store.clone(), n as u64));
    let store: Arc<dyn Store> = observed.clone();
    let mut config = orch_worker::WorkerConfig::new(format!("bench-{}", orch_worker::worker_id()));
    if let Some(c) = concurrency {
        config.concurrency = c;
    }
    let shutdown = CancellationToken::new();
    let redis_port = match (backend, redis) {
        (Backend::Redis, Redis::Private(server)) => Some(server.port()),
        _ => None,
    };
    let redis_cpu_before = match redis_port {
        Some(port) => redis_cpu_seconds(port).await,
        None => None,
    };
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    let mut worker = tokio::spawn(orch_worker::run(
        store.clone(),
        Arc::new(orch_worker::Executors::new(Arc::new(orch_api::default_router()), None)),
        config,
        shutdown.clone(),
    ));

    let result = wait_drained(&observed, n, &mut worker).await;
    let wall = started.elapsed();
    let (cpu_self, cpu_all) = cpu_before.cores_since(wall);
    let cpu_redis = match (redis_port, redis_cpu_before) {
        (Some(port), Some(before)) => redis_cpu_seconds(port).await.map(|after| (after - before) / wall.as_secs_f64()),
        _ => None,
    };
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(40), &mut worker).await;
    let counts = result.with_context(|| format!("{} backend, backlog {n}", backend.name()))?;
    ensure!(stopped.is_ok(), "{} backend: the worker did not stop within 40 s of shutdown", backend.name());
    // The moment the last completion was stored; the poll only noticed it.
    let done_at = observed.done_at.lock().unwrap().unwrap_or_else(Instant::now);
    let drain = done_at.saturating_duration_since(started);

    ensure!(
        counts.succeeded == n as u64 && counts.queued + counts.running + counts.failed + counts.cancelled == 0,
        "{} backend, backlog {n}: not every job succeeded: {}",
        backend.name(),
        show_counts(&counts)
    );
    if let Some(prefix) = &fresh.redis_prefix {
        purge_all(fresh.store.as_ref(), n).await.with_context(|| format!("purging redis keys under {prefix}"))?;
    }
    // The store's own last checkpoint would otherwise run in the background,
    // writing the drain's log into the file while the next run measures.
    fresh.settle().await?;
    let stats = observed.stats();
    Ok(DrainRow { backend, backlog: n, enqueue, drain, stats, cpu_self, cpu_all, cpu_redis })
}

/// Polls the counts (and wakes early when the last completion is stored) until
/// every job succeeded; fails when a job fails, the worker stops, or nothing moves.
async fn wait_drained(observed: &Observed, n: usize, worker: &mut tokio::task::JoinHandle<()>) -> Result<JobCounts> {
    let mut last_progress = (0u64, Instant::now());
    loop {
        let done = observed.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        let counts = observed.inner.count_jobs().await.context("count_jobs")?;
        if counts.succeeded >= n as u64 {
            return Ok(counts);
        }
        if counts.failed + counts.cancelled > 0 {
            bail!("jobs ended without succeeding: {}", show_counts(&counts));
        }
        if worker.is_finished() {
            bail!("the worker stopped before the backlog was drained: {}", show_counts(&counts));
        }
        if counts.succeeded != last_progress.0 {
            last_progress = (counts.succeeded, Instant::now());
        } else if last_progress.1.elapsed() > STALL {
            bail!("no job finished for {} s: {}", STALL.as_secs(), show_counts(&counts));
        }
        tokio::select! {
            _ = done => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Deletes the finished jobs of a bench run from a shared Redis.
async fn purge_all(store: &dyn Store, n: usize) -> Result<()> {
    let before = Utc::now() + chrono::Duration::hours(1);
    let mut purged = 0u64;
    loop {
        let k = store.purge(before, 10_000).await?;
        purged += k;
        if k == 0 {
            break;
        }
    }
    ensure!(purged == n as u64, "purged {purged} jobs of {n}");
    Ok(())
}

fn show_counts(c: &JobCounts) -> String {
    format!(
        "queued {}, running {}, succeeded {}, failed {}, cancelled {}",
        c.queued, c.running, c.succeeded, c.failed, c.cancelled
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// CPU time used so far by this process and by the whole machine, in clock
/// ticks (USER_HZ, 100 on Linux), from /proc; zero where /proc is unreadable.
struct CpuTimes {
    own: u64,
    busy: u64,
}

impl CpuTimes {
    const TICKS_PER_SECOND: f64 = 100.0;

    fn now() -> CpuTimes {
        // /proc/self/stat: utime and stime are the 12th and 13th fields after the ")" closing the name.
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.split_whitespace().map(|f| f.parse::<u64>().ok()).collect::<Vec<_>>();
                Some(rest.get(11)?.unwrap_or(0) + rest.get(12)?.unwrap_or(0))
            })
            .unwrap_or(0);
        // /proc/stat "cpu" line: user nice system idle iowait irq softirq steal ...
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let fields: Vec<u64> =
                    s.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
                let total: u64 = fields.iter().take(8).sum();
                Some(total - fields.get(3).copied().unwrap_or(0) - fields.get(4).copied().unwrap_or(0))
            })
            .unwrap_or(0);
        CpuTimes { own, busy }
    }

    /// Average busy cores since `self` over `wall`: (this process, whole machine).
    fn cores_since(&self, wall: Duration) -> (f64, f64) {
        let now = CpuTimes::now();
        let secs = wall.as_secs_f64().max(1e-9) * Self::TICKS_PER_SECOND;
        (now.own.saturating_sub(self.own) as f64 / secs, now.busy.saturating_sub(self.busy) as f64 / secs)
    }
}

/// CPU seconds (user + system, all threads) a redis-server on loopback has
/// used, from `INFO cpu` spoken over a plain socket; None when it does not answer.
async fn redis_cpu_seconds(port: u16) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        conn.write_all(b"INFO cpu\r\n").await.ok()?;
        // A bulk string: "$<len>\r\n<len bytes>\r\n".
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let k = conn.read(&mut buf).await.ok()?;
            if k == 0 {
                return None;
            }
            reply.extend_from_slice(&buf[..k]);
            let text = String::from_utf8_lossy(&reply);
            if let Some((head, body)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
                let len: usize = head.parse().ok()?;
                if body.len() >= len {
                    let field = |name: &str| {
                        body.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok())
                    };
                    return Some(field("used_cpu_sys:")? + field("used_cpu_user:")?);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}

#[derive(Debug, Default, Clone, Copy)]
struct CallStats {
    claims: u64,
    claim_total: Duration,
    completes: u64,
    complete_total: Duration,
}

impl CallStats {
    fn claim_ms(&self) -> f64 {
        mean_ms(self.claim_total, self.claims)
    }
    fn complete_ms(&self) -> f64 {
        mean_ms(self.complete_total, self.completes)
    }
}

fn mean_ms(total: Duration, calls: u64) -> f64 {
    if calls == 0 { 0.0 } else { total.as_secs_f64() * 1000.0 / calls as f64 }
}

/// The store as the worker sees it, passing every call through; it notes when
/// the `target`-th success is stored and times the worker's hot calls.
struct Observed {
    inner: Arc<dyn Store>,
    target: u64,
    succeeded: AtomicU64,
    done_at: Mutex<Option<Instant>>,
    done: Notify,
    stats: Mutex<CallStats>,
}

impl Observed {
    fn new(inner: Arc<dyn Store>, target: u64) -> Observed {
        Observed {
            inner,
            target,
            succeeded: AtomicU64::new(0),
            done_at: Mutex::new(None),
            done: Notify::new(),
            stats: Mutex::new(CallStats::default()),
        }
    }

    fn stats(&self) -> CallStats {
        *self.stats.lock().unwrap()
    }
}

#[async_trait]
impl Store for Observed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn notifier(&self) -> &Notifier {
        self.inner.notifier()
    }
    async fn ping(&self) -> orch_store::Result<()> {
        self.inner.ping().await
    }
    async fn insert_job_within(&self, job: NewJob, jobs_per_day: u32) -> orch_store::Result<Inserted> {
        self.inner.insert_job_within(job, jobs_per_day).await
    }
    async fn take_request(&self, bucket: &str, per_minute: u32) -> orch_store::Result<orch_store::RateDecision> {
        self.inner.take_request(bucket, per_minute).await
    }
    async fn insert_jobs(&self, jobs: Vec<NewJob>) -> orch_store::Result<()> {
        self.inner.insert_jobs(jobs).await
    }
    async fn get_job(&self, id: JobId) -> orch_store::Result<Option<Job>> {
        self.inner.get_job(id).await
    }
    async fn get_result(&self, id: JobId) -> orch_store::Result<Option<Value>> {
        self.inner.get_result(id).await
    }
    async fn list_jobs(&self, filter: &JobFilter) -> orch_store::Result<Vec<Job>> {
        self.inner.list_jobs(filter).await
    }
    async fn count_jobs(&self) -> orch_store::Result<JobCounts> {
        self.inner.count_jobs().await
    }
    async fn count_jobs_of_kind(&self, kind: JobKind) -> orch_store::Result<JobCounts> {
        self.inner.count_jobs_of_kind(kind).await
    }
    async fn job_deliveries(&self, parent: JobId, before: Option<JobId>, limit: usize) -> orch_store::Result<Vec<Job>> {
        self.inner.job_deliveries(parent, before, limit).await
    }
    async fn cancel_job(&self, id: JobId) -> orch_store::Result<Option<Job>> {
        self.inner.cancel_job(id).await
    }
    async fn claim(&self, worker: &str, limit: usize, lease: Duration) -> orch_store::Result<Vec<Job>> {
        let started = Instant::now();
        let out = self.inner.claim(worker, limit, lease).await;
        let mut stats = self.stats.lock().unwrap();
        stats.claims += 1;
        stats.claim_total += started.elapsed();
        out
    }
    async fn heartbeat(&self, worker: &WorkerInfo, jobs: &[JobId], lease: Duration) -> orch_store::Result<Vec<JobId>> {
        self.inner.heartbeat(worker, jobs, lease).await
    }
    async fn complete(&self, worker: &str, completions: Vec<Completion>) -> orch_store::Result<Vec<bool>> {
        let succeeded: Vec<bool> = completions.iter().map(|c| matches!(c.outcome, Outcome::Succeeded { .. })).collect();
        let started = Instant::now();
        let out = self.inner.complete(worker, completions).await;
        let now = Instant::now();
        {
            let mut stats = self.stats.lock().unwrap();
            stats.completes += 1;
            stats.complete_total += now - started;
        }
        if let Ok(applied) = &out {
            let k = applied.iter().zip(&succeeded).filter(|(a, s)| **a && **s).count() as u64;
            let before = self.succeeded.fetch_add(k, Ordering::SeqCst);
            if before < self.target && before + k >= self.target {
                *self.done_at.lock().unwrap() = Some(now);
                self.done.notify_waiters();
            }
        }
        out
    }
    async fn record_progress(&self, worker: &str, id: JobId, progress: Value) -> orch_store::Result<()> {
        self.inner.record_progress(worker, id, progress).await
    }
    async fn recover_expired(&self, now: DateTime<Utc>, limit: usize) -> orch_store::Result<u64> {
        self.inner.recover_expired(now, limit).await
    }
    async fn events(&self, id: JobId, after: u64, limit: usize) -> orch_store::Result<Vec<JobEvent>> {
        self.inner.events(id, after, limit).await
    }
    async fn workers(&self, since: DateTime<Utc>) -> orch_store::Result<Vec<WorkerInfo>> {
        self.inner.workers(since).await
    }
    async fn purge(&self, before: DateTime<Utc>, limit: usize) -> orch_store::Result<u64> {
        self.inner.purge(before, limit).await
    }
    async fn create_key(&self, key: &ApiKey, secret_hash: &str) -> orch_store::Result<()> {
        self.inner.create_key(key, secret_hash).await
    }
    async fn create_first_key(&self, key: &ApiKey, secret_hash: &str) -> orch_store::Result<bool> {
        self.inner.create_first_key(key, secret_hash).await
    }
    async fn key_by_hash(&self, secret_hash: &str) -> orch_store::Result<Option<ApiKey>> {
        self.inner.key_by_hash(secret_hash).await
    }
    async fn list_keys(&self) -> orch_store::Result<Vec<ApiKey>> {
        self.inner.list_keys().await
    }
    async fn revoke_key(&self, id: &str) -> orch_store::Result<bool> {
        self.inner.revoke_key(id).await
    }
    async fn key_by_previous_hash(&self, secret_hash: &str) -> orch_store::Result<Option<ApiKey>> {
        self.inner.key_by_previous_hash(secret_hash).await
    }
    async fn rotate_key(
        &self,
        id: &str,
        prefix: &str,
        secret_hash: &str,
        until: chrono::DateTime<chrono::Utc>,
    ) -> orch_store::Result<bool> {
        self.inner.rotate_key(id, prefix, secret_hash, until).await
    }
    async fn update_key(&self, key: &ApiKey) -> orch_store::Result<bool> {
        self.inner.update_key(key).await
    }
    async fn touch_key(&self, id: &str, at: chrono::DateTime<chrono::Utc>) -> orch_store::Result<()> {
        self.inner.touch_key(id, at).await
    }
    async fn append_audit(&self, entries: &[orch_store::AuditEntry]) -> orch_store::Result<()> {
        self.inner.append_audit(entries).await
    }
    async fn list_audit(
        &self,
        filter: &orch_store::AuditFilter,
        limit: usize,
    ) -> orch_store::Result<Vec<orch_store::AuditEntry>> {
        self.inner.list_audit(filter, limit).await
    }
    async fn purge_audit(&self, before: chrono::DateTime<chrono::Utc>) -> orch_store::Result<u64> {
        self.inner.purge_audit(before).await
    }
    async fn list_servers(&self) -> orch_store::Result<Vec<orch_store::StoredServer>> {
        self.inner.list_servers().await
    }
    async fn put_server(&self, server: &orch_store::StoredServer) -> orch_store::Result<bool> {
        self.inner.put_server(server).await
    }
    async fn delete_server(&self, name: &str) -> orch_store::Result<bool> {
        self.inner.delete_server(name).await
    }
    async fn expired_jobs(&self, now: chrono::DateTime<chrono::Utc>, limit: usize) -> orch_store::Result<Vec<Job>> {
        self.inner.expired_jobs(now, limit).await
    }
    async fn list_webhooks(&self) -> orch_store::Result<Vec<orch_store::StoredWebhook>> {
        self.inner.list_webhooks().await
    }
    async fn put_webhook(&self, webhook: &orch_store::StoredWebhook) -> orch_store::Result<bool> {
        self.inner.put_webhook(webhook).await
    }
    async fn delete_webhook(&self, id: &str) -> orch_store::Result<bool> {
        self.inner.delete_webhook(id).await
    }
    async fn get_session(&self, id: &str) -> orch_store::Result<Option<orch_store::Session>> {
        self.inner.get_session(id).await
    }
    async fn append_session(
        &self,
        id: &str,
        owner: &str,
        messages: Vec<orch_store::SessionMessage>,
        ttl: Duration,
    ) -> orch_store::Result<orch_store::Session> {
        self.inner.append_session(id, owner, messages, ttl).await
    }
    async fn list_sessions(
        &self,
        owner: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> orch_store::Result<Vec<orch_store::Session>> {
        self.inner.list_sessions(owner, offset, limit).await
    }
    async fn delete_session(&self, id: &str) -> orch_store::Result<bool> {
        self.inner.delete_session(id).await
    }
    async fn try_acquire_slot(&self, name: &str, holder: &str, limit: u32, hold: Duration) -> orch_store::Result<bool> {
        self.inner.try_acquire_slot(name, holder, limit, hold).await
    }
    async fn release_slot(&self, name: &str, holder: &str) -> orch_store::Result<()> {
        self.inner.release_slot(name, holder).await
    }
    async fn record_usage(&self, record: &orch_store::UsageRecord) -> orch_store::Result<()> {
        self.inner.record_usage(record).await
    }
    async fn update_provider_state(
        &self,
        provider: &str,
        update: orch_store::ProviderUpdate,
    ) -> orch_store::Result<orch_store::ProviderState> {
        self.inner.update_provider_state(provider, update).await
    }
    async fn provider_state(&self, provider: &str) -> orch_store::Result<orch_store::ProviderState> {
        self.inner.provider_state(provider).await
    }
    async fn provider_states(&self) -> orch_store::Result<Vec<orch_store::ProviderState>> {
        self.inner.provider_states().await
    }
    async fn usage(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> orch_store::Result<Vec<orch_store::UsageRecord>> {
        self.inner.usage(from, to, limit).await
    }
    async fn put_output(&self, id: JobId, node: &str, output: &str) -> orch_store::Result<bool> {
        self.inner.put_output(id, node, output).await
    }
    async fn get_output(&self, id: JobId, node: &str) -> orch_store::Result<Option<String>> {
        self.inner.get_output(id, node).await
    }
    async fn cache_put(&self, key: &str, value: &str, ttl: Duration) -> orch_store::Result<()> {
        self.inner.cache_put(key, value, ttl).await
    }
    async fn cache_get(&self, key: &str) -> orch_store::Result<Option<String>> {
        self.inner.cache_get(key).await
    }
}

// ---------------------------------------------------------------------------
// 2. HTTP submission

/// A tiny valid plan: one echo node.
const BATCH_BODY: &str = r#"{"plan":{"nodes":[{"id":"hello","echo":"hi"}]}}"#;

struct HttpTarget {
    client: reqwest::Client,
    url: String,
    auth: reqwest::header::HeaderValue,
}

impl HttpTarget {
    /// One submission; Ok only on 202 (the body is read so the connection is reused).
    async fn submit(&self) -> Result<(), String> {
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(BATCH_BODY)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("reading the response failed: {e}"))?;
        if status != reqwest::StatusCode::ACCEPTED {
            return Err(format!("answered {status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(())
    }
}

async fn http_section(args: &QueueArgs, redis: &Redis) -> Result<()> {
    println!(
        "== HTTP submission: POST /v1/jobs/batch (one-node plan), in-process API on {}, no worker ==",
        args.http_backend.name()
    );
    let fresh = fresh_store(args.http_backend, redis).await?;
    let key = orch_api::auth::new_key("bench", &[orch_api::auth::ADMIN.to_owned()]).map_err(|e| anyhow!(e.message))?;
    fresh.store.create_key(&key.key, &key.hash).await.context("storing the bench key")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let app = orch_api::app(orch_api::AppState::new(fresh.store.clone(), orch_api::ApiConfig::default()));
    let stop = CancellationToken::new();
    let stop_server = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stop_server.cancelled().await }).await
    });

    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    let target = Arc::new(HttpTarget {
        client,
        url: format!("http://{addr}/v1/jobs/batch"),
        auth: reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.secret))?,
    });

    let result = async {
        throughput(&target, args).await?;
        fixed_rate(&target, args).await?;
        let counts = fresh.store.count_jobs().await?;
        let sent = (warmup(args) + args.http_requests + args.rate as usize * args.seconds as usize) as u64;
        ensure!(
            counts.queued == sent,
            "the store holds {} queued jobs after {sent} accepted submissions",
            counts.queued
        );
        anyhow::Ok(())
    }
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    result?;
    if let (Redis::External(_), Some(prefix)) = (redis, &fresh.redis_prefix) {
        println!("(the queued jobs of this run stay in Redis under the key prefix {prefix})");
    }
    println!();
    Ok(())
}

fn warmup(args: &QueueArgs) -> usize {
    (args.http_concurrency * 4).min(1_000)
}

/// Closed loop: `http_concurrency` clients, each sending its next request as
/// soon as the previous one is answered.
async fn throughput(target: &Arc<HttpTarget>, args: &QueueArgs) -> Result<()> {
    // Open the connections and fill the key cache first; not counted.
    closed_loop(target, warmup(args), args.http_concurrency).await?;
    let started = Instant::now();
    let latencies = closed_loop(target, args.http_requests, args.http_concurrency).await?;
    let took = started.elapsed();
    println!(
        "throughput   {} requests, {} concurrent clients: {:.2} s, {:.0} req/s (after {} warm-up requests)",
        args.http_requests,
        args.http_concurrency,
        took.as_secs_f64(),
        args.http_requests as f64 / took.as_secs_f64(),
        warmup(args)
    );
    println!("             latency {}", percentiles(latencies));
    Ok(())
}

async fn closed_loop(target: &Arc<HttpTarget>, requests: usize, clients: usize) -> Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.min(requests.max(1)) {
        let target = target.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let started = Instant::now();
                target.submit().await?;
                latencies.push(started.elapsed());
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut all = Vec::with_capacity(requests);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("client task")? {
            Ok(latencies) => all.extend(latencies),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        bail!("a submission was not accepted: {e}");
    }
    Ok(all)
}

/// Open loop: requests start on a fixed schedule whether or not earlier ones
/// were answered; latency counts from the scheduled time (so a stalled server
/// or a late client shows, rather than hides, the delay).
async fn fixed_rate(target: &Arc<HttpTarget>, args: &QueueArgs) -> Result<()> {
    let total = args.rate as usize * args.seconds as usize;
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..total {
        let scheduled = interval.tick().await.into_std();
        let target = target.clone();
        tasks.spawn(async move {
            target.submit().await?;
            Ok::<_, String>(scheduled.elapsed())
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("request task")? {
            Ok(latency) => latencies.push(latency),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let took = started.elapsed();
    if let Some(e) = first_error {
        bail!("{errors} of {total} submissions were not accepted; the first: {e}");
    }
    println!(
        "fixed rate   {} req/s for {} s, open loop: {total} requests in {:.2} s ({:.0} req/s achieved)",
        args.rate,
        args.seconds,
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    let slow = latencies.iter().filter(|l| **l > SLOW_REQUEST).count();
    println!("             latency {}  (from scheduled send time)", percentiles(latencies));
    println!(
        "             over {} ms: {slow} requests ({:.2}%)",
        SLOW_REQUEST.as_millis(),
        slow as f64 * 100.0 / total as f64
    );
    Ok(())
}

pub(crate) fn percentiles(mut latencies: Vec<Duration>) -> String {
    if latencies.is_empty() {
        return "(no samples)".into();
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_secs_f64() * 1000.0
    };
    let mut out = String::new();
    for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)] {
        let _ = write!(out, "{name} {:.2} ms  ", at(q));
    }
    let _ = write!(out, "max {:.2} ms", latencies.last().unwrap().as_secs_f64() * 1000.0);
    out
}

// ---------------------------------------------------------------------------
// 3. Peak memory of `orch serve`

async fn serve_section(args: &QueueArgs) -> Result<()> {
    let n = args.serve_jobs;
    println!("== orch serve (child process, embedded SQLite store) draining {n} queued no-op jobs ==");
    let dir = tempfile::Builder::new().prefix("orch-bench-serve-").tempdir().context("temp dir")?;
    {
        let store = orch_store::open(&StoreUrl::Sqlite(dir.path().join("orch.db")), &StoreOptions::default())
            .await
            .context("opening the sqlite store")?;
        load_backlog(store.as_ref(), n).await?;
        // Every insert was committed before it returned; dropping the store
        // lets its writer thread finish and close the database.
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let port = orch_testkit::free_port();
    let (exe, mut command) = serve_command(dir.path(), port)?;
    command.stdout(Stdio::null());
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("starting {} serve", exe.display()))?;
    let pid = child.id().context("child pid")?;

    let outcome = watch_serve(&mut child, pid, port, n, started).await;
    let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
    if tokio::time::timeout(Duration::from_secs(40), child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let (ready, drained, peak_kib, counts) = outcome?;
    ensure!(
        counts.succeeded == n as u64 && counts.failed + counts.cancelled + counts.queued + counts.running == 0,
        "orch serve: not every job succeeded: {}",
        show_counts(&counts)
    );
    println!(
        "drained {n} jobs in {:.2} s after spawn ({:.0} jobs/s incl. start-up; /health answered after {:.2} s)",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        ready.as_secs_f64()
    );
    println!("peak memory (VmHWM) {:.1} MiB", peak_kib as f64 / 1024.0);
    println!();
    Ok(())
}

/// `orch serve` of this executable for a benchmark: data in `dir`, API on
/// `port`, warnings only, and nothing else of this shell's settings (no
/// `ORCH_*` variables, no orch.toml from the working directory). The caller
/// adds its own settings and stdout, then spawns it.
pub(crate) fn serve_command(dir: &Path, port: u16) -> Result<(std::path::PathBuf, tokio::process::Command)> {
    let exe = std::env::current_exe().context("finding the orch executable")?;
    let mut command = tokio::process::Command::new(&exe);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ORCH_") {
            command.env_remove(name);
        }
    }
    command
        .arg("serve")
        .current_dir(dir)
        .env("ORCH_DATA_DIR", dir)
        .env("ORCH_BIND", format!("127.0.0.1:{port}"))
        .env("ORCH_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    Ok((exe, command))
}

/// Polls `/health` until `n` jobs succeeded; returns when /health first
/// answered, when the drain was seen complete, VmHWM in KiB, and the counts.
async fn watch_serve(
    child: &mut tokio::process::Child,
    pid: u32,
    port: u16,
    n: usize,
    started: Instant,
) -> Result<(Duration, Duration, u64, JobCounts)> {
    const TIMEOUT: Duration = Duration::from_secs(120);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let url = format!("http://127.0.0.1:{port}/health");
    let mut ready = None;
    let mut last = None;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("orch serve exited early ({status})");
        }
        if started.elapsed() > TIMEOUT {
            let seen = last.as_ref().map(show_counts).unwrap_or_else(|| "/health never answered".into());
            bail!("orch serve did not drain {n} jobs within {} s: {seen}", TIMEOUT.as_secs());
        }
        if let Ok(response) = client.get(&url).send().await
            && let Ok(health) = response.json::<Value>().await
        {
            ready.get_or_insert_with(|| started.elapsed());
            let queue = &health["queue"];
            let get = |k: &str| queue[k].as_u64().unwrap_or(0);
            let counts = JobCounts {
                queued: get("queued"),
                running: get("running"),
                succeeded: get("succeeded"),
                failed: get("failed"),
                cancelled: get("cancelled"),
            };
            if counts.failed + counts.cancelled > 0 {
                bail!("orch serve: jobs ended without succeeding: {}", show_counts(&counts));
            }
            if counts.succeeded >= n as u64 {
                let drained = started.elapsed();
                let peak = vm_hwm_kib(pid)?;
                return Ok((ready.unwrap_or(drained), drained, peak, counts));
            }
            last = Some(counts);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// A size field (`VmHWM`, `VmRSS`, ...) of `/proc/PID/status`, in KiB.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(Path::new(&path)).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// An `orch serve` child of this executable for a benchmark (see
/// [`serve_command`]), with its admin key, once `/health` answers.
pub(crate) struct ServeChild {
    child: Option<tokio::process::Child>,
    pub pid: u32,
    pub url: String,
    pub key: String,
    pub client: reqwest::Client,
}

impl ServeChild {
    /// `customize` adds settings to the command before it is spawned.
    pub async fn start(dir: &Path, customize: impl FnOnce(&mut tokio::process::Command)) -> Result<ServeChild> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let port = orch_testkit::free_port();
        let (exe, mut command) = serve_command(dir, port)?;
        command.stdout(Stdio::piped());
        customize(&mut command);
        let mut child = command.spawn().with_context(|| format!("starting {} serve", exe.display()))?;
        let pid = child.id().context("child pid")?;
        let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        let key = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(key) = line.split_whitespace().find(|w| w.starts_with("orch_")) {
                    return anyhow::Ok(key.to_owned());
                }
            }
            bail!("orch serve exited before printing its admin key")
        })
        .await
        .context("orch serve printed no admin key within 30 s")??;
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = reqwest::Client::builder().tcp_nodelay(true).timeout(Duration::from_secs(60)).build()?;
        let serve = ServeChild { child: Some(child), pid, url: format!("http://127.0.0.1:{port}"), key, client };
        let deadline = Instant::now() + Duration::from_secs(30);
        while serve.client.get(format!("{}/health", serve.url)).send().await.is_err() {
            ensure!(Instant::now() < deadline, "orch serve did not answer /health within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(serve)
    }

    /// Waits (up to 120 s) until each named MCP server is up with exactly
    /// that many connections.
    pub async fn wait_servers(&self, want: &[(&str, usize)]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        for (name, connections) in want {
            loop {
                let response =
                    self.client.get(format!("{}/v1/servers/{name}", self.url)).bearer_auth(&self.key).send().await?;
                let status: Value = response.json().await?;
                if status["state"] == "up" && status["connections"] == *connections {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "MCP server {name} did not come up with {connections} connections within 120 s: {status}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 40 s.
    pub async fn stop(&mut self) {
        let _ = tokio::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().await;
        if let Some(mut child) = self.child.take()
            && tokio::time::timeout(Duration::from_secs(40), child.wait()).await.is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}
