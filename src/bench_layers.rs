//! `orch bench layers`: the per-request cost of the request id, trace span and
//! metrics layers (`orch_api::metrics::observe`).
//!
//! The same routes over the same store are called in-process (no sockets),
//! once without the layers and once with them, in alternating rounds; the
//! median time per request of each is printed with their difference. The
//! Prometheus recorder is installed and the log filter is `info` (the request
//! span is enabled) writing to nowhere, as `orch serve` runs by default minus
//! the writing. Two requests: an unknown route (404, no store, no key) and
//! `GET /v1/models` with a key (auth from the key cache).

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Args;
use tower::{Service, ServiceExt};

#[derive(Debug, Args)]
pub struct LayersArgs {
    /// Requests per round and route.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Rounds of each variant (alternating); the median round counts.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
}

pub async fn layers(args: LayersArgs) -> Result<()> {
    ensure!(args.requests > 0 && args.rounds > 0, "--requests and --rounds must be at least 1");
    orch_api::metrics::install();
    let dir = tempfile::Builder::new().prefix("orch-bench-layers-").tempdir().context("temp dir")?;
    let url = orch_store::StoreUrl::Sqlite(dir.path().join("orch.db"));
    let store = orch_store::open(&url, &Default::default()).await?;
    let new = orch_api::auth::new_key("bench", &["admin".to_owned()]).map_err(|e| anyhow::anyhow!(e.message))?;
    store.create_key(&new.key, &new.hash).await?;
    let state = orch_api::AppState::new(store, orch_api::ApiConfig::default());
    let bare = orch_api::routes(state.clone());
    let layered = orch_api::app(state);
    println!(
        "== HTTP layers (request id, trace span, metrics): {} requests x {} rounds, in-process ==",
        args.requests, args.rounds
    );
    for (name, path, key, status) in [
        ("GET unknown route (404)", "/v1/nothing", None, StatusCode::NOT_FOUND),
        ("GET /v1/models (key)", "/v1/models", Some(new.secret.as_str()), StatusCode::OK),
    ] {
        let mut without = Vec::new();
        let mut with = Vec::new();
        for _ in 0..args.rounds {
            without.push(round(&bare, path, key, status, args.requests).await?);
            with.push(round(&layered, path, key, status, args.requests).await?);
        }
        let (a, b) = (median(&mut without), median(&mut with));
        println!("{name:<26} without {a:>7.2} µs  with {b:>7.2} µs  layers {:>+6.2} µs/request", b - a);
    }
    Ok(())
}

/// Mean microseconds per request of `n` sequential requests.
async fn round(app: &axum::Router, path: &str, key: Option<&str>, status: StatusCode, n: usize) -> Result<f64> {
    let mut app = app.clone();
    let started = Instant::now();
    for _ in 0..n {
        let mut request = Request::get(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = ServiceExt::<Request<Body>>::ready(&mut app).await?.call(request.body(Body::empty())?).await?;
        ensure!(response.status() == status, "{path} answered {}", response.status());
        // The body is read, as a server would send it.
        axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
