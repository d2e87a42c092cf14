//! Plain `tools/call` requests on the streamable-HTTP endpoints, answered in
//! the request's own task.
//!
//! rmcp serves a session's request by passing it to the session's worker task,
//! on to the MCP service loop, to a handler task, and the answer back the same
//! way as an SSE stream. On two cores those hand-offs between threads cost
//! about as much as the upstream call itself. A POST that is nothing but a
//! `tools/call` of a live session (no `_meta` but a progress token, since Orch
//! forwards no upstream progress on either path; a protocol revision with
//! sessions) is therefore answered here, as one `application/json` body, which
//! the transport allows for any request.
//! Everything else (initialize, lists, resources, notifications, GET streams,
//! DELETE) goes to rmcp. A `notifications/cancelled` naming a call in flight
//! here is taken here too, and so is the session's end (DELETE, or reaped),
//! which cancels its calls.
//!
//! Because rmcp's session worker no longer sees every request, its own idle
//! timer would close sessions that are in use; it is off, and [`Activity`]
//! closes the sessions nothing touched for `ORCH_MCP_SESSION_IDLE` instead
//! (an open stream or a call in flight counts as use).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use orch_mcp::model::{
    ClientJsonRpcMessage, ClientNotification, ClientRequest, GetMeta, JsonObject, ProtocolVersion, RequestId,
    ServerJsonRpcMessage, ServerResult,
};
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tokio_util::sync::CancellationToken;

use super::handler::OrchMcp;
use crate::auth::Principal;

/// What a POST to a session carries, as far as this module cares.
pub(super) enum Message {
    /// A `tools/call` this module answers.
    Call(Call),
    /// A client's `notifications/cancelled` for request `id`.
    Cancelled { id: RequestId },
    /// Anything else, for rmcp.
    Other,
}

/// A plain `tools/call` request.
pub(super) struct Call {
    id: RequestId,
    name: String,
    arguments: Option<JsonObject>,
}

/// Reads a POST body, given its headers. Only what rmcp would accept the same
/// way is taken; the rest is [`Message::Other`], and rmcp answers it, errors included.
pub(super) fn classify(headers: &HeaderMap, body: &[u8]) -> Message {
    if !is_json(headers) || !accepts_both(headers) || !has_sessions(headers) {
        return Message::Other;
    }
    match serde_json::from_slice::<ClientJsonRpcMessage>(body) {
        // rmcp moves `_meta` out of the params on parsing. Its clients send a
        // progress token with every request; Orch forwards no upstream progress
        // (on either path), so a token alone is no reason to stream.
        Ok(ClientJsonRpcMessage::Request(request))
            if request.request.get_meta().keys().all(|key| key == "progressToken") =>
        {
            match request.request {
                ClientRequest::CallToolRequest(call) => {
                    let params = call.params;
                    let plain = params.meta.as_ref().is_none_or(|meta| meta.is_empty())
                        && params.input_responses.is_none()
                        && params.request_state.is_none();
                    if !plain {
                        return Message::Other;
                    }
                    Message::Call(Call { id: request.id, name: params.name.into_owned(), arguments: params.arguments })
                }
                _ => Message::Other,
            }
        }
        Ok(ClientJsonRpcMessage::Notification(notification)) => match notification.notification {
            ClientNotification::CancelledNotification(cancelled) => match cancelled.params.request_id {
                Some(id) => Message::Cancelled { id },
                None => Message::Other,
            },
            _ => Message::Other,
        },
        _ => Message::Other,
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|value| {
        let essence = value.split(';').next().unwrap_or_default().trim();
        essence.eq_ignore_ascii_case("application/json")
    })
}

/// The client accepts JSON and SSE answers, as the transport requires (rmcp
/// answers 406 otherwise). Weighted values are left to rmcp.
fn accepts_both(headers: &HeaderMap) -> bool {
    let mut json = false;
    let mut sse = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { return false };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let essence = parts.next().unwrap_or_default().trim();
            if parts.next().is_some() {
                return false;
            }
            json |= essence.eq_ignore_ascii_case("application/json");
            sse |= essence.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && sse
}

/// The request names no protocol revision, or one with sessions (2026-07-28
/// has none, and its own header rules, which rmcp checks).
fn has_sessions(headers: &HeaderMap) -> bool {
    match headers.get("mcp-protocol-version") {
        None => true,
        Some(value) => value.to_str().is_ok_and(|version| {
            ProtocolVersion::known_up_to(&ProtocolVersion::LATEST_WITH_INITIALIZE)
                .iter()
                .any(|known| known.as_str() == version)
        }),
    }
}

/// A call still running after this long is answered as an SSE stream instead,
/// so that keep-alive comments can flow until the answer does.
const STREAM_AFTER: Duration = Duration::from_secs(1);
/// Between keep-alive comments of such a stream (rmcp's own interval).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Runs a [`Message::Call`] of `session` and answers it: as one JSON body when
/// it ends within [`STREAM_AFTER`], else as an SSE stream that carries
/// keep-alive comments and then the answer, so that proxies and clients do
/// not take a long call for a dead connection.
///
/// The call runs in a task of its own. A client that hangs up does not cancel
/// it (the transport says a disconnect is no cancellation, as rmcp's sessions
/// have it); `notifications/cancelled` for its id, or the session's end, does,
/// and then no answer is sent, as JSON-RPC's cancellation asks.
pub(super) async fn call(
    handler: OrchMcp,
    activity: Arc<Activity>,
    session: String,
    call: Call,
    principal: Principal,
) -> Response {
    let Call { id, name, arguments } = call;
    let in_flight = activity.call_started(session, &id);
    let mut answer = tokio::spawn(async move {
        let cancel = in_flight.cancel.clone();
        let outcome = handler.call(&name, arguments, Some(&principal), cancel.clone()).await;
        drop(in_flight);
        if cancel.is_cancelled() {
            return None;
        }
        let message = match outcome {
            Ok(result) => ServerJsonRpcMessage::response(ServerResult::CallToolResult(result), id),
            Err(error) => ServerJsonRpcMessage::error(error, Some(id)),
        };
        Some(serde_json::to_vec(&message).map_err(|err| format!("encoding the answer failed: {err}")))
    });
    let sse = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
    tokio::select! {
        joined = &mut answer => match joined {
            Ok(Some(Ok(body))) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            // Cancelled: a stream that ends without an answer.
            Ok(None) => (sse, Body::empty()).into_response(),
            Ok(Some(Err(err))) => (StatusCode::INTERNAL_SERVER_ERROR, err).into_response(),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("the tool call's task failed: {err}")).into_response(),
        },
        () = tokio::time::sleep(STREAM_AFTER) => {
            let events = futures::stream::unfold(Some(answer), |answer| async move {
                let mut answer = answer?;
                let event = tokio::select! {
                    joined = &mut answer => match joined {
                        Ok(Some(Ok(json))) => [b"event: message\ndata: ".as_slice(), &json, b"\n\n"].concat(),
                        Ok(None) => return None,
                        Ok(Some(Err(err))) => format!(": {err}\n\n").into_bytes(),
                        Err(err) => format!(": the tool call's task failed: {err}\n\n").into_bytes(),
                    },
                    () = tokio::time::sleep(KEEP_ALIVE) => {
                        return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(answer)));
                    }
                };
                Some((Ok::<_, std::convert::Infallible>(Bytes::from(event)), None))
            });
            (sse, Body::from_stream(events)).into_response()
        }
    }
}

/// What Orch saw of one endpoint's sessions: when each was last used, its open
/// streams and the calls [`call`] is running for it.
#[derive(Default)]
pub(super) struct Activity {
    sessions: Mutex<HashMap<String, Seen>>,
    /// Numbers the calls, so a call ending forgets only itself when a client
    /// reused a request id.
    serial: AtomicU64,
}

struct Seen {
    last: Instant,
    streams: usize,
    calls: HashMap<RequestId, (u64, CancellationToken)>,
    /// Id of the API key that opened the session; no other key may use it.
    owner: Option<String>,
}

impl Drop for Seen {
    /// A session that ended takes its calls with it.
    fn drop(&mut self) {
        metrics::gauge!("orch_mcp_sessions", "transport" => "streamable_http").decrement(1);
        for (_, cancel) in self.calls.values() {
            cancel.cancel();
        }
    }
}

impl Seen {
    fn new() -> Seen {
        metrics::gauge!("orch_mcp_sessions", "transport" => "streamable_http").increment(1);
        Seen { last: Instant::now(), streams: 0, calls: HashMap::new(), owner: None }
    }
}

impl Activity {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Seen>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seen<'a>(sessions: &'a mut HashMap<String, Seen>, session: &str) -> &'a mut Seen {
        if !sessions.contains_key(session) {
            sessions.insert(session.to_owned(), Seen::new());
        }
        let seen = sessions.get_mut(session).expect("inserted above");
        seen.last = Instant::now();
        seen
    }

    /// The session was opened by the key `owner` (its id), the only key that
    /// may use it from now on.
    pub(super) fn opened_by(&self, session: &str, owner: &str) {
        Self::seen(&mut self.lock(), session).owner = Some(owner.to_owned());
    }

    /// Whether another key than `key` opened the session.
    pub(super) fn owned_by_other(&self, session: &str, key: &str) -> bool {
        self.lock().get(session).and_then(|seen| seen.owner.as_deref()).is_some_and(|owner| owner != key)
    }

    /// The session was used now.
    pub(super) fn touch(&self, session: &str) {
        Self::seen(&mut self.lock(), session);
    }

    fn call_started(self: &Arc<Self>, session: String, id: &RequestId) -> InFlight {
        let cancel = CancellationToken::new();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        Self::seen(&mut self.lock(), &session).calls.insert(id.clone(), (serial, cancel.clone()));
        InFlight { activity: self.clone(), session, id: id.clone(), serial, cancel }
    }

    /// The session was closed (DELETE): its calls are cancelled.
    pub(super) fn forget(&self, session: &str) {
        let gone = self.lock().remove(session);
        drop(gone);
    }

    /// Cancels `session`'s call `id` if [`call`] is running it.
    pub(super) fn cancel(&self, session: &str, id: &RequestId) -> bool {
        let mut sessions = self.lock();
        let Some(seen) = sessions.get_mut(session) else { return false };
        let Some((_, token)) = seen.calls.get(id) else { return false };
        token.cancel();
        seen.last = Instant::now();
        true
    }

    /// Counts an open stream of `session` (a GET stream, or the SSE answer
    /// to a request rmcp serves) until the returned guard drops.
    pub(super) fn stream_opened(self: &Arc<Self>, session: &str) -> StreamOpen {
        Self::seen(&mut self.lock(), session).streams += 1;
        StreamOpen { activity: self.clone(), session: session.to_owned() }
    }

    /// Forgets sessions that are gone (`live` no longer has them), starts
    /// counting ones not seen yet, and takes out those unused for `idle`.
    fn sweep(&self, live: &HashSet<String>, idle: Duration) -> Vec<String> {
        let mut sessions = self.lock();
        // Dropping a session's entry cancels its calls (see `Seen`).
        sessions.retain(|id, _| live.contains(id));
        for id in live {
            if !sessions.contains_key(id) {
                sessions.insert(id.clone(), Seen::new());
            }
        }
        let stale: Vec<String> = sessions
            .iter()
            .filter(|(_, seen)| seen.streams == 0 && seen.calls.is_empty() && seen.last.elapsed() >= idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &stale {
            sessions.remove(id);
        }
        stale
    }
}

/// A call [`call`] is running; dropping it (the call ended, or the client went
/// away and axum dropped the request's future) forgets it.
struct InFlight {
    activity: Arc<Activity>,
    session: String,
    id: RequestId,
    serial: u64,
    cancel: CancellationToken,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(seen) = self.activity.lock().get_mut(&self.session) {
            if seen.calls.get(&self.id).is_some_and(|(serial, _)| *serial == self.serial) {
                seen.calls.remove(&self.id);
            }
            seen.last = Instant::now();
        }
    }
}

/// An open stream; see [`Activity::stream_opened`].
pub(super) struct StreamOpen {
    activity: Arc<Activity>,
    session: String,
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        if let Some(seen) = self.activity.lock().get_mut(&self.session) {
            seen.streams = seen.streams.saturating_sub(1);
            seen.last = Instant::now();
        }
    }
}

/// `body`, holding `guard` until the body is dropped.
pub(super) fn hold_while_open(body: Body, guard: StreamOpen) -> Body {
    Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _ = &guard;
        chunk
    }))
}

/// Closes the endpoint's sessions unused for `idle`, checking every quarter
/// of it (at most every 30 s), until `stop`.
pub(super) async fn reap(
    manager: Arc<LocalSessionManager>,
    activity: Arc<Activity>,
    idle: Duration,
    stop: CancellationToken,
) {
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let live: HashSet<String> = manager.sessions.read().await.keys().map(|id| id.to_string()).collect();
        for id in activity.sweep(&live, idle) {
            tracing::debug!(session = %id, idle_secs = idle.as_secs(), "closing an idle MCP session");
            if let Err(err) = manager.close_session(&id.as_str().into()).await {
                tracing::warn!(session = %id, error = %err, "closing an idle MCP session failed");
            }
        }
    }
}
