//! Orch as an MCP server: `/mcp` (every server's tools, namespaced with
//! function-safe names (see [`names`]), plus Orch's
//! own), `/mcp/{server}` (one server, streamable HTTP), `/sse/{server}` (one
//! server, legacy SSE), and [`serve_stdio`] for `orch mcp`.
//!
//! The HTTP endpoints need a bearer key with `tools:call` (or `admin`);
//! Orch's own tools also check `jobs:write` / `jobs:read`. Upstream calls go
//! through the registry, so its timeouts, pooling and cancellation apply.

mod direct;
mod handler;
mod names;
mod sse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use rmcp::ServiceExt;
use rmcp::transport::common::http_header::HEADER_SESSION_ID;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

pub use self::handler::{OrchMcp, Scope};
use crate::AppState;
use crate::auth::{Principal, TOOLS_CALL};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;

type HttpService = StreamableHttpService<OrchMcp, LocalSessionManager>;

/// One streamable-HTTP endpoint: rmcp's service, its sessions, and what Orch
/// sees of them (see [`direct`]).
#[derive(Clone)]
struct HttpEndpoint {
    service: HttpService,
    sessions: Arc<LocalSessionManager>,
    activity: Arc<direct::Activity>,
}

/// Per-app state of the MCP endpoints: one streamable-HTTP endpoint (with its
/// sessions) per scope, made on first use, and the open SSE sessions.
#[derive(Default)]
struct Endpoints {
    http: Mutex<HashMap<Scope, HttpEndpoint>>,
    sse: sse::Sessions,
}

impl Endpoints {
    fn http(&self, state: &AppState, scope: Scope) -> HttpEndpoint {
        let mut endpoints = self.http.lock().unwrap_or_else(|p| p.into_inner());
        endpoints
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
                // rmcp's idle timer counts only what its session worker sees, which
                // misses the calls `direct` answers; `direct::reap` closes idle sessions.
                let mut sessions = LocalSessionManager::default();
                sessions.session_config.keep_alive = None;
                let sessions = Arc::new(sessions);
                let activity = Arc::new(direct::Activity::default());
                tokio::spawn(direct::reap(
                    sessions.clone(),
                    activity.clone(),
                    state.config.mcp_session_idle,
                    state.shutdown.child_token(),
                ));
                let handler_state = state.clone();
                let service = StreamableHttpService::new(
                    move || Ok(OrchMcp::new(handler_state.clone(), scope.clone())),
                    sessions.clone(),
                    config,
                );
                HttpEndpoint { service, sessions, activity }
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
    serve_http(&state, &endpoints, Scope::Aggregate, principal, request).await
}

async fn one_server(
    State(state): State<AppState>,
    Extension(endpoints): Extension<Arc<Endpoints>>,
    principal: Principal,
    ApiPath(server): ApiPath<String>,
    request: Request,
) -> ApiResult<Response> {
    authorize(&principal)?;
    principal.require_server(&server)?;
    known_server(&state, &server)?;
    serve_http(&state, &endpoints, Scope::Server(server), principal, request).await
}

/// Serves one request of a streamable-HTTP endpoint: a plain `tools/call` (or
/// its cancellation) of a live session in [`direct`], everything else in rmcp.
async fn serve_http(
    state: &AppState,
    endpoints: &Endpoints,
    scope: Scope,
    principal: Principal,
    mut request: Request,
) -> ApiResult<Response> {
    let endpoint = endpoints.http(state, scope.clone());
    let session = request.headers().get(HEADER_SESSION_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // A session belongs to the key that opened it: to any other key it does
    // not exist. A DELETE of an unknown session answers the same.
    if let Some(session) = &session {
        let unknown = request.method() == Method::DELETE
            && !endpoint.sessions.has_session(&session.as_str().into()).await.unwrap_or(false);
        if unknown || endpoint.activity.owned_by_other(session, &principal.key.id) {
            return Ok(session_not_found());
        }
    }
    // A POST's body is read here, so a body that is not JSON gets the API's
    // error shape (rmcp answers 415 in plain text even for malformed JSON).
    // Use is counted once the request is served: below, or by `direct`.
    if request.method() == Method::POST {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, state.config.max_body).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the server accepts (ORCH_MAX_BODY), or could not be read",
            )
        })?;
        check_json(&parts.headers, &body)?;
        if let Some(session) = &session {
            match direct::classify(&parts.headers, &body) {
                direct::Message::Call(call)
                    if endpoint.sessions.has_session(&session.as_str().into()).await.unwrap_or(false) =>
                {
                    let handler = OrchMcp::new(state.clone(), scope);
                    let activity = endpoint.activity.clone();
                    return Ok(direct::call(handler, activity, session.clone(), call, principal).await);
                }
                direct::Message::Cancelled { id } if endpoint.activity.cancel(session, &id) => {
                    return Ok(StatusCode::ACCEPTED.into_response());
                }
                _ => {}
            }
        }
        request = Request::from_parts(parts, axum::body::Body::from(body));
    }
    let deletes = request.method() == Method::DELETE;
    let key_id = principal.key.id.clone();
    // rmcp hands the request's parts to the handler, which reads the key's scopes from them.
    request.extensions_mut().insert(principal);
    let mut response = endpoint.service.handle(request).await.map(axum::body::Body::new);
    if !response.status().is_success() {
        return Ok(error_shape(response).await);
    }
    let created = response.headers().get(HEADER_SESSION_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let (None, Some(created), true) = (&session, &created, response.status().is_success()) {
        endpoint.activity.opened_by(created, &key_id);
    }
    let Some(session) = session.or(created) else { return Ok(response.into_response()) };
    if deletes {
        endpoint.activity.forget(&session);
    }
    // A GET stream, or a request's answer streamed while its handler runs,
    // keeps the session in use until it ends.
    let streams = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if streams {
        let open = endpoint.activity.stream_opened(&session);
        response = response.map(|body| direct::hold_while_open(body, open));
    } else {
        endpoint.activity.touch(&session);
    }
    Ok(response.into_response())
}

/// What the transport answers for a session it does not know (rmcp's own
/// answer put in the error shape by [`error_shape`], so another key's session
/// reads exactly like an unknown one).
fn session_not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not Found: Session not found").into_response()
}

/// A POST body must be JSON (by its Content-Type) and parse: 415 or 400 in the
/// API's error shape, as for any JSON body of the REST API.
fn check_json(headers: &axum::http::HeaderMap, body: &[u8]) -> ApiResult<()> {
    if !crate::json::is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with the header Content-Type: application/json",
        ));
    }
    // Into a Value, not IgnoredAny: only a Value is held to serde_json's
    // nesting limit, which the transport's own parse then hits (as 415).
    serde_json::from_slice::<serde_json::Value>(body).map_err(|err| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {err}"))
    })?;
    Ok(())
}

/// rmcp's refusals are plain text ("Not Acceptable: Client must accept ...");
/// they are given the API's error shape, their text as the message.
async fn error_shape(response: Response) -> Response {
    let is_json = crate::json::is_json(response.headers());
    if is_json || response.status().is_success() {
        return response;
    }
    let status = response.status();
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => {
            return ApiError::internal(format!("MCP transport: {status} {text}")).into_response();
        }
        _ => "bad_request",
    };
    let message = if text.trim().is_empty() { status.to_string() } else { text };
    ApiError::new(status, code, message).into_response()
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
