//! A client for the legacy HTTP+SSE transport (MCP 2024-11-05), which rmcp
//! dropped: `GET <url>` opens an event stream whose first `endpoint` event names
//! the URL to POST JSON-RPC messages to; every answer comes back on the stream
//! as a `message` event. Plugged into rmcp as a [`Transport`].

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use rmcp::RoleClient;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use sse_stream::SseStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What went wrong opening or using an SSE connection.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("GET {url} failed: {source}")]
    Get { url: String, source: reqwest::Error },
    #[error("GET {url} answered {status}; expected 200 with an event stream")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("the event stream of {url} ended before its `endpoint` event")]
    NoEndpoint { url: String },
    #[error("no `endpoint` event from {url} within {}s", .timeout.as_secs())]
    EndpointTimeout { url: String, timeout: Duration },
    #[error(
        "`endpoint` event `{endpoint}` from {url} is not a URL on the same origin; refusing to send messages there"
    )]
    BadEndpoint { url: String, endpoint: String },
    #[error("POST {endpoint} failed: {source}")]
    Post { endpoint: String, source: reqwest::Error },
    #[error("POST {endpoint} answered {status}")]
    PostStatus { endpoint: String, status: reqwest::StatusCode },
}

/// An open SSE session: the reader task feeds `incoming`; `send` POSTs.
pub struct SseClientTransport {
    incoming: mpsc::Receiver<ServerJsonRpcMessage>,
    post: Arc<PostTarget>,
    reader: JoinHandle<()>,
}

struct PostTarget {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    headers: HeaderMap,
}

impl SseClientTransport {
    /// Opens the stream and waits (up to `timeout`) for the `endpoint` event.
    /// `headers` go on the GET and on every POST.
    pub async fn connect(
        client: reqwest::Client,
        url: &str,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Self, SseError> {
        let get = |source| SseError::Get { url: url.to_string(), source };
        let base = reqwest::Url::parse(url).map_err(|_| SseError::NoEndpoint { url: url.into() })?;
        let opening = async {
            let response = client
                .get(base.clone())
                .headers(headers.clone())
                .header(ACCEPT, "text/event-stream")
                .send()
                .await
                .map_err(get)?;
            if !response.status().is_success() {
                return Err(SseError::Status { url: url.into(), status: response.status() });
            }
            let mut events = SseStream::from_bytes_stream(response.bytes_stream());
            while let Some(event) = events.next().await {
                // A broken stream before the endpoint is the same failure as no endpoint.
                let Ok(event) = event else { break };
                if event.event.as_deref() == Some("endpoint") {
                    let endpoint = event.data.unwrap_or_default();
                    let resolved = base
                        .join(endpoint.trim())
                        .ok()
                        .filter(|e| e.origin() == base.origin())
                        .ok_or_else(|| SseError::BadEndpoint { url: url.into(), endpoint: endpoint.clone() })?;
                    return Ok((resolved, events));
                }
            }
            Err(SseError::NoEndpoint { url: url.into() })
        };
        let (endpoint, mut events) = tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| SseError::EndpointTimeout { url: url.into(), timeout })??;

        let (tx, incoming) = mpsc::channel(64);
        let source = url.to_string();
        let reader = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(url = %source, %error, "SSE stream broke");
                        break;
                    }
                };
                // Events without a name are `message`s too (the SSE default).
                if !matches!(event.event.as_deref(), None | Some("message")) {
                    continue;
                }
                let Some(data) = event.data else { continue };
                match serde_json::from_str::<ServerJsonRpcMessage>(&data) {
                    Ok(message) => {
                        if tx.send(message).await.is_err() {
                            break;
                        }
                    }
                    Err(error) => tracing::warn!(url = %source, %error, "ignoring an SSE message that is not JSON-RPC"),
                }
            }
            // Dropping `tx` ends `receive`, which tells rmcp the connection closed.
        });
        Ok(SseClientTransport { incoming, post: Arc::new(PostTarget { client, endpoint, headers }), reader })
    }

    /// Where messages are POSTed (from the `endpoint` event).
    pub fn endpoint(&self) -> &reqwest::Url {
        &self.post.endpoint
    }
}

impl Drop for SseClientTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Transport<RoleClient> for SseClientTransport {
    type Error = SseError;

    fn name() -> Cow<'static, str> {
        "sse".into()
    }

    fn send(&mut self, item: ClientJsonRpcMessage) -> impl Future<Output = Result<(), SseError>> + Send + 'static {
        let post = self.post.clone();
        async move {
            let endpoint = post.endpoint.to_string();
            let response = post
                .client
                .post(post.endpoint.clone())
                .headers(post.headers.clone())
                .header(CONTENT_TYPE, "application/json")
                .json(&item)
                .send()
                .await
                .map_err(|source| SseError::Post { endpoint: endpoint.clone(), source })?;
            if !response.status().is_success() {
                return Err(SseError::PostStatus { endpoint, status: response.status() });
            }
            Ok(())
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ServerJsonRpcMessage>> + Send {
        self.incoming.recv()
    }

    async fn close(&mut self) -> Result<(), SseError> {
        self.reader.abort();
        self.incoming.close();
        Ok(())
    }
}
