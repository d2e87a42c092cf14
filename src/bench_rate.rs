//! `orch bench rate`: what a key's request rate limit costs per request.
//!
//! 1. The store's check alone (`Store::take_request`), called back to back:
//!    on SQLite the in-process `governor` limiter, on Redis the GCRA script
//!    (one round trip to Redis per request).
//! 2. Through HTTP: an in-process API on loopback answers `GET /v1/jobs?limit=1`
//!    to two keys taking turns, one without a limit and one with a limit too
//!    high to be reached (1,000,000 a minute), so the only difference is the
//!    check and its headers. The overhead is the difference of their medians.
//!
//! A benchmark reports; it asserts nothing about speed. It fails when a
//! request is refused or answered anything but 200.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::bench::{Backend, Redis, fresh_store, percentiles};

#[derive(Debug, Args)]
pub struct RateArgs {
    /// Backends measured.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite,redis")]
    pub backends: Vec<Backend>,
    /// Store checks timed per backend (after 1,000 not timed).
    #[arg(long, default_value_t = 20_000)]
    pub calls: usize,
    /// HTTP requests timed per key and backend (after 500 per key not timed).
    #[arg(long, default_value_t = 5_000)]
    pub requests: usize,
    /// Redis to use (a unique key prefix per run) [default: a private redis-server on a free port].
    #[arg(long)]
    pub redis_url: Option<String>,
}

/// A limit no run reaches: the check runs and always allows.
const HIGH_LIMIT: u32 = 1_000_000;

pub async fn rate(args: RateArgs) -> Result<()> {
    ensure!(args.calls > 0 && args.requests > 0, "--calls and --requests must be at least 1");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    println!(
        "orch bench rate (orch {}), {}",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!("machine: {cores} cores, load average at start {load}");
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    if cfg!(debug_assertions) {
        println!("WARNING: a debug build; figures are meaningless (use cargo build --release)");
    }
    let mut redis = Redis::External(String::new());
    if args.backends.contains(&Backend::Redis) {
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
    for &backend in &args.backends {
        store_section(&args, backend, &redis).await?;
        http_section(&args, backend, &redis).await?;
    }
    Ok(())
}

/// The store's check alone, back to back on one bucket.
async fn store_section(args: &RateArgs, backend: Backend, redis: &Redis) -> Result<()> {
    let fresh = fresh_store(backend, redis).await?;
    let store = fresh.store.clone();
    for _ in 0..1_000 {
        store.take_request("bench-warmup", HIGH_LIMIT).await?;
    }
    let mut latencies = Vec::with_capacity(args.calls);
    let started = Instant::now();
    for _ in 0..args.calls {
        let at = Instant::now();
        let decision = store.take_request("bench", HIGH_LIMIT).await?;
        latencies.push(at.elapsed());
        ensure!(decision.allowed, "a check under a limit of {HIGH_LIMIT}/min was refused");
    }
    let took = started.elapsed();
    println!(
        "== {}: Store::take_request ({}), {} calls back to back ==",
        backend.name(),
        match backend {
            Backend::Sqlite => "governor, in process",
            Backend::Redis => "GCRA script, one round trip",
        },
        args.calls
    );
    println!("  {:.0} calls/s; per call {}", args.calls as f64 / took.as_secs_f64(), percentiles(latencies));
    Ok(())
}

/// `GET /v1/jobs?limit=1` for an unlimited and a limited key, taking turns.
async fn http_section(args: &RateArgs, backend: Backend, redis: &Redis) -> Result<()> {
    let fresh = fresh_store(backend, redis).await?;
    let scopes = [orch_api::auth::ADMIN.to_owned()];
    let unlimited = orch_api::auth::new_key("bench unlimited", &scopes).map_err(|e| anyhow!(e.message))?;
    let mut limited = orch_api::auth::new_key("bench limited", &scopes).map_err(|e| anyhow!(e.message))?;
    limited.key.rate_limit_per_minute = Some(HIGH_LIMIT);
    fresh.store.create_key(&unlimited.key, &unlimited.hash).await.context("storing a bench key")?;
    fresh.store.create_key(&limited.key, &limited.hash).await.context("storing a bench key")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    // The server default stays 0 (unlimited): only `limited` is checked.
    let app = orch_api::app(orch_api::AppState::new(fresh.store.clone(), orch_api::ApiConfig::default()));
    let stop = CancellationToken::new();
    let stop_server = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stop_server.cancelled().await }).await
    });
    let url = format!("http://{addr}/v1/jobs?limit=1");
    let client = |secret: &str| -> Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder().tcp_nodelay(true).timeout(Duration::from_secs(30)).build()?,
            auth: reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}"))?,
            url: url.clone(),
        })
    };
    let (off, on) = (client(&unlimited.secret)?, client(&limited.secret)?);

    let result = async {
        for _ in 0..500 {
            off.get(false).await?;
            on.get(true).await?;
        }
        let (mut off_times, mut on_times) = (Vec::with_capacity(args.requests), Vec::with_capacity(args.requests));
        for i in 0..args.requests {
            // Alternate which key goes first, so neither always follows the other.
            let (first, second) = if i % 2 == 0 { (&off, &on) } else { (&on, &off) };
            let a = first.timed(std::ptr::eq(first, &on)).await?;
            let b = second.timed(std::ptr::eq(second, &on)).await?;
            let (t_off, t_on) = if i % 2 == 0 { (a, b) } else { (b, a) };
            off_times.push(t_off);
            on_times.push(t_on);
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (m_off, m_on) = (median(&mut off_times), median(&mut on_times));
        println!(
            "== {}: GET /v1/jobs?limit=1 over HTTP (in-process API, loopback), {} requests per key, taking turns ==",
            backend.name(),
            args.requests
        );
        println!("  no limit:              {}", percentiles(off_times));
        println!("  limit {HIGH_LIMIT}/min:   {}", percentiles(on_times));
        let delta = m_on.as_secs_f64() - m_off.as_secs_f64();
        println!("  overhead (difference of the medians): {:.1} µs per request", delta * 1e6);
        println!();
        anyhow::Ok(())
    }
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    result
}

struct Client {
    http: reqwest::Client,
    auth: reqwest::header::HeaderValue,
    url: String,
}

impl Client {
    /// One request; with `limited`, checks that the rate limit headers came back.
    async fn get(&self, limited: bool) -> Result<()> {
        let response = self
            .http
            .get(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .context("request failed")?;
        let status = response.status();
        let has_headers = response.headers().contains_key("ratelimit-policy");
        let body = response.bytes().await.context("reading the response")?;
        ensure!(status == reqwest::StatusCode::OK, "answered {status}: {}", String::from_utf8_lossy(&body));
        ensure!(has_headers == limited, "RateLimit-Policy header present: {has_headers}, expected {limited}");
        Ok(())
    }

    async fn timed(&self, limited: bool) -> Result<Duration> {
        let at = Instant::now();
        self.get(limited).await?;
        Ok(at.elapsed())
    }
}
