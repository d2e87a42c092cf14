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
        let source = without_query(&base);
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
                    // serde's message quotes what it read (`invalid type: string "…"`):
                    // only its class and position are logged, never the upstream's text.
                    Err(error) => tracing::warn!(
                        url = %source,
                        error = %Classified(&error),
                        bytes = data.len(),
                        "ignoring an SSE message that is not JSON-RPC"
                    ),
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

/// A JSON error as its class and position only (`data error at line 1 column
/// 9`): serde's own text can quote the input.
struct Classified<'a>(&'a serde_json::Error);

impl std::fmt::Display for Classified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let class = match self.0.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        };
        write!(f, "{class} error at line {} column {}", self.0.line(), self.0.column())
    }
}

/// The URL for logs: no user info or query, where credentials may be.
fn without_query(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Log lines written while the test runs.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Regression (issue 13): a message on the stream that is not JSON-RPC was
    /// logged with serde's error, which quotes what the upstream sent
    /// (`invalid type: string "…"`). The log now has the error's class and
    /// position, and the URL without its query.
    #[tokio::test]
    async fn messages_that_are_not_json_rpc_are_logged_without_upstream_text() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        // The test runtime has one thread, so the reader task logs here too.
        let _guard = tracing::subscriber::set_default(subscriber);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";
            let events = "event: endpoint\ndata: /messages\n\n\
                          event: message\ndata: \"upstream-secret-1\"\n\n\
                          data: {\"jsonrpc\": \"2.0\", \"method\": 7, \"note\": \"upstream-secret-2\"}\n\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(events.as_bytes()).await.unwrap();
            // Keep the stream open until the client goes.
            let _ = socket.read(&mut request).await;
        });

        let url = format!("http://127.0.0.1:{port}/sse?token=query-secret");
        crate::tls::install_crypto_provider();
        let mut transport =
            SseClientTransport::connect(reqwest::Client::new(), &url, HeaderMap::new(), Duration::from_secs(5))
                .await
                .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            if text.matches("not JSON-RPC").count() >= 2 || tokio::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        transport.close().await.unwrap();
        assert_eq!(text.matches("ignoring an SSE message that is not JSON-RPC").count(), 2, "{text}");
        assert!(text.contains("data error at line "), "{text}");
        assert!(text.contains(&format!("http://127.0.0.1:{port}/sse")), "{text}");
        for secret in ["upstream-secret", "query-secret", "invalid type"] {
            assert!(!text.contains(secret), "{secret} in the log: {text}");
        }
    }
}
