//! The legacy HTTP+SSE transport (MCP 2024-11-05), which rmcp no longer
//! serves: `GET /sse/{server}` opens an event stream whose first `endpoint`
//! event names `/sse/{server}/messages?session_id=…`; JSON-RPC messages POSTed
//! there get 202 and their answers go out on the stream. A session lives as
//! long as its stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use orch_mcp::model::ClientJsonRpcMessage;
use rmcp::ServiceExt;
use rmcp::transport::sink_stream::SinkStreamTransport;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::handler::{OrchMcp, Scope};
use super::{Endpoints, authorize, known_server};
use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};

/// Open SSE sessions by id.
#[derive(Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

struct Session {
    server: String,
    /// Only the key that opened the stream may post to it.
    key_id: String,
    incoming: mpsc::Sender<ClientJsonRpcMessage>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the session and stops its MCP service when the stream is dropped
/// (the client went away, or the server shuts down).
struct Closer {
    sessions: Arc<Endpoints>,
    id: String,
    _stop: DropGuard,
}

impl Drop for Closer {
    fn drop(&mut self) {
        metrics::gauge!("orch_mcp_sessions", "transport" => "sse").decrement(1);
        self.sessions.sse.lock().remove(&self.id);
    }
}

/// `GET /sse/{server}`.
pub(super) async fn open(
    State(state): State<AppState>,
    endpoints: axum::Extension<Arc<Endpoints>>,
    principal: Principal,
    ApiPath(server): ApiPath<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    authorize(&principal)?;
    principal.require_server(&server)?;
    known_server(&state, &server)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (incoming_tx, incoming_rx) = mpsc::channel::<ClientJsonRpcMessage>(64);
    let (outgoing_tx, outgoing_rx) = futures::channel::mpsc::channel(64);
    let transport = SinkStreamTransport::new(outgoing_tx, tokio_stream::wrappers::ReceiverStream::new(incoming_rx));
    let stop = state.shutdown.child_token();
    let handler = OrchMcp::for_key(state.clone(), Scope::Server(server.clone()), principal.clone());
    spawn_session(handler, transport, stop.clone(), server.clone());
    endpoints
        .sse
        .lock()
        .insert(id.clone(), Session { server: server.clone(), key_id: principal.key.id, incoming: incoming_tx });

    metrics::gauge!("orch_mcp_sessions", "transport" => "sse").increment(1);
    let closer = Closer { sessions: endpoints.0.clone(), id: id.clone(), _stop: stop.clone().drop_guard() };
    // Relative, so it works behind any host name; clients resolve it against the stream's URL.
    let endpoint = Event::default().event("endpoint").data(format!("/sse/{server}/messages?session_id={id}"));
    let messages = outgoing_rx.map(move |message: orch_mcp::model::ServerJsonRpcMessage| {
        let _session = &closer;
        let data = serde_json::to_string(&message).unwrap_or_default();
        Ok(Event::default().event("message").data(data))
    });
    let stream = futures::stream::once(async move { Ok(endpoint) })
        .chain(messages)
        .take_until(async move { stop.cancelled().await });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn spawn_session(
    handler: OrchMcp,
    transport: SinkStreamTransport<
        futures::channel::mpsc::Sender<orch_mcp::model::ServerJsonRpcMessage>,
        tokio_stream::wrappers::ReceiverStream<ClientJsonRpcMessage>,
    >,
    stop: CancellationToken,
    server: String,
) {
    tokio::spawn(async move {
        let running = tokio::select! {
            () = stop.cancelled() => return,
            running = handler.serve_with_ct(transport, stop.clone()) => running,
        };
        match running {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(err) => tracing::debug!(server, error = %err, "SSE session ended before initialisation"),
        }
        // The service ended (the client closed the session): end the stream too.
        stop.cancel();
    });
}

#[derive(Debug, Deserialize)]
pub(super) struct MessageQuery {
    session_id: Option<String>,
}

/// `POST /sse/{server}/messages?session_id=…`.
pub(super) async fn message(
    endpoints: axum::Extension<Arc<Endpoints>>,
    principal: Principal,
    ApiPath(server): ApiPath<String>,
    ApiQuery(query): ApiQuery<MessageQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&principal)?;
    let id = query.session_id.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_session_id",
            "add ?session_id= from the `endpoint` event of GET /sse/{server}",
        )
    })?;
    let gone = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_session",
            format!("no open SSE session {id} for server {server}; open one with GET /sse/{server}"),
        )
    };
    let incoming = {
        let sessions = endpoints.sse.lock();
        // Another key's session reads as an unknown one.
        let session =
            sessions.get(&id).filter(|s| s.server == server && s.key_id == principal.key.id).ok_or_else(gone)?;
        session.incoming.clone()
    };
    let message: ClientJsonRpcMessage = serde_json::from_slice(&body).map_err(|err| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_jsonrpc", format!("the body is not a JSON-RPC message: {err}"))
    })?;
    incoming.send(message).await.map_err(|_| gone())?;
    Ok(StatusCode::ACCEPTED.into_response())
}
