//! Prometheus metrics: the process's recorder, `GET /metrics` (a key with
//! `metrics:read`), the same text on `ORCH_METRICS_ADDR` without a key, and
//! the HTTP layers that count requests and open a span per request.
//!
//! Crates count what they see through the `metrics` facade (a no-op until a
//! recorder is installed); this module installs the Prometheus recorder and,
//! at each scrape, reads the few gauges that are cheaper to ask for than to
//! track (jobs by status from the store, MCP servers' state, open streams).
//! No label holds a secret, a prompt or an unbounded value: routes are the
//! matched templates (`/v1/jobs/{id}`), never raw paths, and job ids are never
//! labels. The families are listed in docs/observability.md.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use orch_mcp::ServerState;
use orch_store::{JobKind, JobStatus};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiResult;

/// The scope that reads `GET /metrics` (`admin` reads it too).
pub const METRICS_READ: &str = "metrics:read";

/// Upper bounds (seconds) of the latency histograms: 1 ms to 1 h, for HTTP
/// requests as for hour-long jobs.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Longest a scrape waits for the store's job counts.
const STORE_WAIT: Duration = Duration::from_secs(2);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's Prometheus recorder (once; later calls return the
/// same handle) and starts its upkeep on the current Tokio runtime.
pub fn install() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows only the scrape-time gauges");
        }
        describe();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let upkeep = handle.clone();
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(UPKEEP_EVERY).await;
                    upkeep.run_upkeep();
                }
            });
        }
        handle
    })
}

/// HELP lines of the families counted through the facade.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("orch_http_requests_total", "HTTP requests answered, by method, route template and status");
    describe_histogram!("orch_http_request_duration_seconds", "Time to answer an HTTP request (headers), by route");
    describe_counter!("orch_jobs_total", "Job transitions this process made, by kind and the status entered");
    describe_histogram!("orch_job_duration_seconds", "Duration of job attempts, by kind and outcome");
    describe_histogram!("orch_node_duration_seconds", "Duration of plan nodes, by step kind, tool and status");
    describe_counter!("orch_provider_turns_total", "Chat turns run on a provider's CLI, by provider and outcome");
    describe_histogram!("orch_provider_turn_duration_seconds", "Duration of chat turns, by provider and outcome");
    describe_counter!("orch_provider_tokens_total", "Tokens the CLIs reported, by provider and direction");
    describe_counter!("orch_provider_errors_total", "Failed chat turns, by provider and error code");
    describe_counter!("orch_provider_cooldowns_total", "Cooldowns a provider entered (usage limit or outage)");
    describe_counter!("orch_mcp_calls_total", "MCP tool calls sent upstream, by server and outcome");
    describe_histogram!("orch_mcp_call_duration_seconds", "Duration of MCP tool calls, by server and outcome");
    describe_counter!("orch_webhook_deliveries_total", "Webhook delivery attempts, by event and outcome");
    describe_histogram!("orch_webhook_delivery_duration_seconds", "Duration of delivered webhook requests, by event");
    describe_gauge!("orch_mcp_sessions", "Open MCP client sessions, by transport");
    describe_gauge!("orch_jobs", "Jobs in the store now, by kind and status (read at scrape)");
    describe_gauge!("orch_queue_depth", "Jobs waiting to run (queued, due or delayed), by kind (read at scrape)");
    describe_gauge!("orch_workers", "Workers that heartbeated within the last minute (read at scrape)");
    describe_gauge!("orch_store_up", "1 when the store answered the scrape's count, else 0");
    describe_gauge!("orch_open_streams", "Event streams (SSE) open on this API process");
    describe_gauge!("orch_mcp_server_state", "1 for the MCP server's current state (up, degraded, down, disabled)");
    describe_gauge!("orch_mcp_server_ping_seconds", "Round trip of the MCP server's last successful ping");
    describe_gauge!("orch_mcp_server_tools", "Tools the MCP server lists");
    describe_gauge!("orch_provider_cooling_down", "1 while the provider is in a cooldown, else 0");
}

/// The text of a scrape: reads the scrape-time gauges, then renders everything.
pub async fn render(state: &AppState) -> String {
    let handle = install();
    observe_now(state).await;
    handle.render()
}

async fn observe_now(state: &AppState) {
    let mut store_up = true;
    for kind in [JobKind::Chat, JobKind::Batch, JobKind::Delivery] {
        match tokio::time::timeout(STORE_WAIT, state.store.count_jobs_of_kind(kind)).await {
            Ok(Ok(counts)) => {
                for status in JobStatus::ALL {
                    metrics::gauge!("orch_jobs", "kind" => kind.as_str(), "status" => status.as_str())
                        .set(counts.get(status) as f64);
                }
                metrics::gauge!("orch_queue_depth", "kind" => kind.as_str()).set(counts.queued as f64);
            }
            _ => store_up = false,
        }
    }
    let since = chrono::Utc::now() - chrono::Duration::seconds(60);
    match tokio::time::timeout(STORE_WAIT, state.store.workers(since)).await {
        Ok(Ok(workers)) => metrics::gauge!("orch_workers").set(workers.len() as f64),
        _ => store_up = false,
    }
    metrics::gauge!("orch_store_up").set(if store_up { 1.0 } else { 0.0 });
    metrics::gauge!("orch_open_streams").set(state.streams.total() as f64);
    for server in state.registry.status() {
        for (name, s) in [
            ("up", ServerState::Up),
            ("degraded", ServerState::Degraded),
            ("down", ServerState::Down),
            ("disabled", ServerState::Disabled),
        ] {
            let value = if server.state == s { 1.0 } else { 0.0 };
            metrics::gauge!("orch_mcp_server_state", "server" => server.name.clone(), "state" => name).set(value);
        }
        if let Some(latency) = server.latency {
            metrics::gauge!("orch_mcp_server_ping_seconds", "server" => server.name.clone()).set(latency.as_secs_f64());
        }
        metrics::gauge!("orch_mcp_server_tools", "server" => server.name.clone()).set(server.tools as f64);
    }
    let now = chrono::Utc::now();
    for provider in state.router.providers().iter() {
        let cooling = provider.status().cooldown_until.is_some_and(|until| until > now);
        metrics::gauge!("orch_provider_cooling_down", "provider" => provider.name().to_owned()).set(if cooling {
            1.0
        } else {
            0.0
        });
    }
}

/// Prometheus' text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters, gauges and histograms of this process in Prometheus text format;
/// the families are listed in docs/observability.md. Needs `metrics:read` or
/// `admin`; `ORCH_METRICS_ADDR` serves the same text without a key.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text exposition format (version 0.0.4)", content_type = "text/plain", body = String),
        (status = 401, response = crate::error::responses::Unauthorized),
        (status = 403, response = crate::error::responses::Forbidden),
    ),
    security(("bearer" = []))
)]
pub async fn metrics_route(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    principal.require(METRICS_READ)?;
    Ok(text(render(&state).await))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT))], body).into_response()
}

/// The router of `ORCH_METRICS_ADDR`: `GET /metrics` without a key, for a
/// scraper on a private network; nothing else.
pub fn scrape_app(state: AppState) -> Router {
    async fn scrape(State(state): State<AppState>) -> Response {
        text(render(&state).await)
    }
    async fn elsewhere() -> Response {
        (StatusCode::NOT_FOUND, "only /metrics is served on this address\n").into_response()
    }
    Router::new().route("/metrics", get(scrape)).fallback(elsewhere).with_state(state)
}

/// Serves [`scrape_app`] on `listener` until `state.shutdown` fires.
pub async fn serve_scrape(listener: tokio::net::TcpListener, state: AppState) {
    let shutdown = state.shutdown.clone();
    let app = scrape_app(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

/// The request id header: a caller's is kept, else one is made (a UUID).
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The layers every route gets: a request id (the caller's `x-request-id`, or
/// a new UUID) echoed in the response, a span per request carrying it with the
/// method and route template, and the request counters.
pub fn observe(router: Router) -> Router {
    router
        .layer(axum::middleware::from_fn(count))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
                    let id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", method = %request.method(), route, request_id = id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
}

/// Counts a request by method, route template and status, and times it until
/// its response headers (a stream's body may last hours).
async fn count(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("orch_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("orch_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The standard methods by name; any other is `other` (bounded labels).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
