//! Caps on open streams (server-sent events): job events, streamed chat
//! completions, `/sse/{server}` and the GET streams of `/mcp`. Each one holds
//! memory and a connection for as long as the client likes, so a key may hold
//! [`crate::ApiConfig::max_streams_per_key`] of them (more is 429) and the
//! server [`crate::ApiConfig::max_streams`] (more is 503).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::AppState;
use crate::error::ApiError;

/// Seconds a refused stream is told to wait.
const STREAM_RETRY_AFTER: u64 = 5;

/// The streams open now, in total and per key (by the hash of its secret).
#[derive(Debug, Default)]
pub struct Streams {
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_key: HashMap<String, usize>,
}

/// One open stream; dropping it (the response body ends) frees its place.
#[derive(Debug)]
pub struct StreamPermit {
    streams: Arc<Streams>,
    key: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().expect("stream counts");
        open.total -= 1;
        if let Some(n) = open.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.per_key.remove(&self.key);
            }
        }
    }
}

impl Streams {
    /// A place for one more stream of `key`, or the error saying which cap is reached.
    pub fn acquire(
        self: &Arc<Self>,
        key: &str,
        max_per_key: usize,
        max_total: usize,
    ) -> Result<StreamPermit, ApiError> {
        let mut open = self.open.lock().expect("stream counts");
        let mine = open.per_key.get(key).copied().unwrap_or(0);
        if mine >= max_per_key {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "this key has {mine} streams open, its limit (ORCH_MAX_STREAMS_PER_KEY); close one or retry later"
                ),
            )
            .with_details(serde_json::json!({"open_streams": mine, "limit": max_per_key}));
            e.retry_after = Some(STREAM_RETRY_AFTER);
            return Err(e);
        }
        if open.total >= max_total {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                format!("the server has {} streams open, its limit (ORCH_MAX_STREAMS); retry later", open.total),
            )
            .with_details(serde_json::json!({"limit": max_total}));
            e.retry_after = Some(STREAM_RETRY_AFTER);
            return Err(e);
        }
        open.total += 1;
        *open.per_key.entry(key.to_owned()).or_default() += 1;
        Ok(StreamPermit { streams: self.clone(), key: key.to_owned() })
    }

    /// Streams open now.
    pub fn total(&self) -> usize {
        self.open.lock().expect("stream counts").total
    }
}

/// Whether a request asks for a stream, judged by its method and path.
fn is_stream_route(method: &Method, path: &str) -> bool {
    if method != Method::GET {
        return false;
    }
    let job_events = path
        .strip_prefix("/v1/jobs/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    job_events || path.starts_with("/sse/") || path == "/mcp" || path.starts_with("/mcp/")
}

/// Middleware: counts each stream against the caps before its handler runs,
/// and holds its place until the response body ends.
pub async fn limit_streams(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let (request, streaming) = if is_stream_route(&parts.method, parts.uri.path()) {
        (Request::from_parts(parts, body), true)
    } else if parts.method == Method::POST && parts.uri.path() == "/v1/chat/completions" {
        // `"stream": true` is in the body; the handler reads it whole anyway.
        let bytes = match axum::body::to_bytes(body, state.config.max_body).await {
            Ok(bytes) => bytes,
            Err(_) => return ApiError::body_too_large().into_response(),
        };
        // Only the flag is read: the messages are not copied into a JSON tree
        // here, the handler parses the body as usual.
        #[derive(serde::Deserialize)]
        struct StreamFlag {
            #[serde(default)]
            stream: bool,
        }
        let streaming = serde_json::from_slice::<StreamFlag>(&bytes).is_ok_and(|flag| flag.stream);
        (Request::from_parts(parts, Body::from(bytes)), streaming)
    } else {
        (Request::from_parts(parts, body), false)
    };
    if !streaming {
        return next.run(request).await;
    }
    // Keyed by the secret's hash: an unknown key is refused by the handler with 401.
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(crate::auth::hash_secret)
        .unwrap_or_default();
    let permit = match state.streams.acquire(&key, state.config.max_streams_per_key, state.config.max_streams) {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_routes_are_the_get_streams() {
        let check = |method: Method, path: &str, expected: bool| {
            assert_eq!(is_stream_route(&method, path), expected, "{method} {path}");
        };
        check(Method::GET, "/v1/jobs/0193/events", true);
        check(Method::GET, "/v1/jobs/0193", false);
        check(Method::GET, "/v1/jobs//events", false);
        check(Method::GET, "/sse/fs", true);
        check(Method::GET, "/mcp", true);
        check(Method::GET, "/mcp/fs", true);
        check(Method::POST, "/mcp", false);
        check(Method::GET, "/mcpx", false);
    }

    #[test]
    fn a_key_over_its_stream_cap_gets_429_and_the_server_over_its_cap_503() {
        let streams = Arc::new(Streams::default());
        let a = streams.acquire("a", 1, 2).unwrap();
        assert_eq!(streams.acquire("a", 1, 2).unwrap_err().status, StatusCode::TOO_MANY_REQUESTS);
        let _b = streams.acquire("b", 1, 2).unwrap();
        assert_eq!(streams.acquire("c", 1, 2).unwrap_err().status, StatusCode::SERVICE_UNAVAILABLE);
        drop(a);
        assert_eq!(streams.total(), 1);
        streams.acquire("a", 1, 2).unwrap();
    }
}
