//! `GET /health`: whether the store and queue answer, whether the store
//! takes writes, and how the MCP servers are, for load balancers and people.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use orch_mcp::ServerState;
use orch_store::JobKind;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "degraded", "version": "0.1.0", "store": {"backend": "sqlite", "ok": true, "latency_ms": 0.4, "writable": true, "error": null}, "queue": {"queued": 3, "running": 1, "succeeded": 120, "failed": 2, "cancelled": 0}, "deliveries": {"queued": 1, "running": 0, "succeeded": 240, "failed": 1, "cancelled": 0}, "workers": 1, "servers": [{"name": "everything", "state": "up"}, {"name": "github", "state": "down"}]}))]
pub struct Health {
    /// `ok`; `degraded` when an MCP server is down or degraded; `unavailable`
    /// when the store does not answer or does not take writes (only this
    /// answers 503).
    pub status: String,
    pub version: String,
    pub store: StoreHealth,
    /// Chat and batch jobs per status (webhook deliveries are counted in
    /// `deliveries`); absent when the store is unreachable.
    pub queue: Option<QueueHealth>,
    /// Webhook deliveries per status: `queued` includes those waiting to
    /// retry, `failed` those that gave up; absent when the store is unreachable.
    pub deliveries: Option<QueueHealth>,
    /// Workers that sent a heartbeat in the last minute.
    pub workers: Option<usize>,
    /// The MCP servers and their state.
    pub servers: Vec<ServerHealth>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerHealth {
    pub name: String,
    /// `up`, `degraded`, `down` or `disabled`.
    #[schema(value_type = String)]
    pub state: ServerState,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreHealth {
    /// `sqlite` or `redis`.
    pub backend: String,
    /// The store answers and takes writes.
    pub ok: bool,
    pub latency_ms: f64,
    /// Whether the last write probe (a tiny write, at most one a second)
    /// succeeded; false when the disk is full or Redis refuses writes.
    pub writable: bool,
    pub error: Option<String>,
}

/// How long a write probe's answer is reused.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The last write probe: when, and its error.
#[derive(Debug, Default)]
pub struct WriteProbe(tokio::sync::Mutex<Option<(Instant, Option<String>)>>);

impl WriteProbe {
    /// The error of a tiny write to the store (None: it was written), probed
    /// at most once per [`PROBE_EVERY`]; concurrent callers share one probe.
    async fn check(&self, store: &dyn orch_store::Store) -> Option<String> {
        let mut last = self.0.lock().await;
        if let Some((at, error)) = &*last
            && at.elapsed() < PROBE_EVERY
        {
            return error.clone();
        }
        let value = Utc::now().to_rfc3339();
        let write = store.cache_put("health:write-probe", &value, Duration::from_secs(60));
        let error = match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("writes fail: {e}")),
            Err(_) => Some("a write got no answer within 2 s".to_owned()),
        };
        *last = Some((Instant::now(), error.clone()));
        error
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueHealth {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// Service health.
///
/// 200 when the store answers and takes writes, 503 when it does not (a
/// tiny write probes it, at most once a second); an MCP server that is
/// down makes the status `degraded` but still answers 200. Needs no key.
#[utoipa::path(
    get, path = "/health", tag = "health",
    responses((status = 200, description = "The store answers and takes writes", body = Health), (status = 503, description = "Store unreachable, or its writes fail", body = Health))
)]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let started = Instant::now();
    let ping = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let error = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 2 s".to_owned()),
    };
    let answers = error.is_none();
    let write_error = if answers { state.write_probe.check(state.store.as_ref()).await } else { None };
    let writable = answers && write_error.is_none();
    let error = error.or(write_error);
    let ok = error.is_none();
    let (queue, deliveries, workers) = if answers {
        let all = state.store.count_jobs().await.ok();
        let deliveries = state.store.count_jobs_of_kind(JobKind::Delivery).await.ok();
        let since = Utc::now() - chrono::Duration::seconds(60);
        let workers = state.store.workers(since).await.ok().map(|w| w.len());
        let queue = all.zip(deliveries.as_ref()).map(|(all, d)| QueueHealth {
            queued: all.queued.saturating_sub(d.queued),
            running: all.running.saturating_sub(d.running),
            succeeded: all.succeeded.saturating_sub(d.succeeded),
            failed: all.failed.saturating_sub(d.failed),
            cancelled: all.cancelled.saturating_sub(d.cancelled),
        });
        let deliveries = deliveries.map(|c| QueueHealth {
            queued: c.queued,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
        });
        (queue, deliveries, workers)
    } else {
        (None, None, None)
    };
    let servers: Vec<ServerHealth> =
        state.registry.status().into_iter().map(|s| ServerHealth { name: s.name, state: s.state }).collect();
    let degraded = servers.iter().any(|s| matches!(s.state, ServerState::Down | ServerState::Degraded));
    let body = Health {
        status: if !ok {
            "unavailable"
        } else if degraded {
            "degraded"
        } else {
            "ok"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        store: StoreHealth { backend: state.store.backend().into(), ok, latency_ms, writable, error },
        queue,
        deliveries,
        workers,
        servers,
    };
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
