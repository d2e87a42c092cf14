//! Orch as an MCP server: `/mcp` (every server's tools, namespaced, plus Orch's
//! own), `/mcp/{server}` (one server, streamable HTTP), `/sse/{server}` (one
//! server, legacy SSE), and [`serve_stdio`] for `orch mcp`.
//!
//! The HTTP endpoints need a bearer key with `tools:call` (or `admin`);
//! Orch's own tools also check `jobs:write` / `jobs:read`. Upstream calls go
//! through the registry, so its timeouts, pooling and cancellation apply.

mod handler;
mod sse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

pub use self::handler::{OrchMcp, Scope};
use crate::AppState;
use crate::auth::{Principal, TOOLS_CALL};
use crate::error::{ApiError, ApiResult};

type HttpService = StreamableHttpService<OrchMcp, LocalSessionManager>;

/// Per-app state of the MCP endpoints: one streamable-HTTP service (with its
/// sessions) per scope, made on first use, and the open SSE sessions.
#[derive(Default)]
struct Endpoints {
    http: Mutex<HashMap<Scope, HttpService>>,
    sse: sse::Sessions,
}

impl Endpoints {
    fn http(&self, state: &AppState, scope: Scope) -> HttpService {
        let mut services = self.http.lock().unwrap_or_else(|p| p.into_inner());
        services
            .entry(scope.clone())
            .or_insert_with(|| {
                let config = StreamableHttpServerConfig::default()
                    .with_cancellation_token(state.shutdown.child_token())
                    .with_max_request_body_bytes(state.config.max_body)
                    // rmcp accepts only loopback Host headers by default, against DNS
                    // rebinding from browsers. Every request here carries a bearer key,
                    // which a rebinding page cannot send, and Orch runs behind real
                    // host names.
                    .disable_allowed_hosts();
                let state = state.clone();
                StreamableHttpService::new(
                    move || Ok(OrchMcp::new(state.clone(), scope.clone())),
                    Arc::new(LocalSessionManager::default()),
                    config,
                )
            })
            .clone()
    }
}

/// The MCP endpoints, merged into [`crate::app`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/mcp", any(aggregate))
        .route("/mcp/{server}", any(one_server))
        .route("/sse/{server}", get(sse::open))
        .route("/sse/{server}/messages", post(sse::message))
        .layer(Extension(Arc::new(Endpoints::default())))
}

/// The MCP endpoints need `tools:call` (or `admin`).
fn authorize(principal: &Principal) -> ApiResult<()> {
    principal.require(TOOLS_CALL)
}

fn known_server(state: &AppState, server: &str) -> ApiResult<()> {
    state.registry.server_status(server).map(|_| ()).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no MCP server named {server:?}; GET /v1/servers lists them"),
        )
    })
}

async fn aggregate(
    State(state): State<AppState>,
    Extension(endpoints): Extension<Arc<Endpoints>>,
    principal: Principal,
    request: Request,
) -> ApiResult<Response> {
    authorize(&principal)?;
    Ok(serve_http(endpoints.http(&state, Scope::Aggregate), principal, request).await)
}

async fn one_server(
    State(state): State<AppState>,
    Extension(endpoints): Extension<Arc<Endpoints>>,
    principal: Principal,
    Path(server): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    authorize(&principal)?;
    principal.require_server(&server)?;
    known_server(&state, &server)?;
    Ok(serve_http(endpoints.http(&state, Scope::Server(server)), principal, request).await)
}

async fn serve_http(service: HttpService, principal: Principal, mut request: Request) -> Response {
    // rmcp hands the request's parts to the handler, which reads the key's scopes from them.
    request.extensions_mut().insert(principal);
    service.handle(request).await.map(axum::body::Body::new).into_response()
}

/// Why `orch mcp` stopped.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("the MCP client did not initialise the session: {0}")]
    Initialize(Box<rmcp::service::ServerInitializeError>),
    #[error("the MCP session task failed: {0}")]
    Session(#[from] tokio::task::JoinError),
}

/// Serves the aggregate (upstream tools plus Orch's own) over stdin/stdout
/// until the client closes stdin. No key: whoever runs the process is trusted.
pub async fn serve_stdio(state: AppState) -> Result<(), StdioError> {
    let running = OrchMcp::new(state, Scope::Aggregate)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| StdioError::Initialize(Box::new(e)))?;
    running.waiting().await?;
    Ok(())
}
