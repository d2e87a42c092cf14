//! rmcp's streamable-HTTP client over reqwest, with one correction: a server
//! that rejects a request of a session it forgot may answer 400 (the Python
//! and TypeScript SDKs do, with a JSON-RPC error whose `id` is null) instead of
//! the spec's 404. rmcp re-initialises only on 404; on such a 400 it hands the
//! uncorrelated error to the session, which matches no pending request, and the
//! call waits out its whole timeout. Here that answer counts as an expired
//! session, so rmcp re-initialises and retries the request once.
//!
//! Also, reqwest's errors print without their causes ("error sending request"
//! for a refused certificate) and rmcp keeps only the text: they are passed on
//! with the causes written out.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::Sse;

#[derive(Clone)]
pub(crate) struct SessionHttpClient(pub reqwest::Client);

/// Whether an answer to `message`, sent within a session, rejects the session
/// rather than answering the message: an error that names no request of ours,
/// or a bare HTTP 400.
fn rejects_session(
    message: &ClientJsonRpcMessage,
    answer: &Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>,
) -> bool {
    match answer {
        Ok(StreamableHttpPostResponse::Json(ServerJsonRpcMessage::Error(error), _)) => {
            matches!(message, ClientJsonRpcMessage::Request(request) if error.id.as_ref() != Some(&request.id))
        }
        Err(StreamableHttpError::UnexpectedServerResponse(text)) => text.starts_with("HTTP 400"),
        _ => false,
    }
}

/// The message to check the answer against: requests sent within a session
/// (only those; notifications are not cloned).
fn kept(message: &ClientJsonRpcMessage, session_id: &Option<Arc<str>>) -> Option<ClientJsonRpcMessage> {
    (session_id.is_some() && matches!(message, ClientJsonRpcMessage::Request(_))).then(|| message.clone())
}

fn correct(
    kept: Option<ClientJsonRpcMessage>,
    answer: Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>,
) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
    match kept {
        Some(message) if rejects_session(&message, &answer) => {
            tracing::debug!("the server rejected the session; re-initialising");
            Err(StreamableHttpError::SessionExpired)
        }
        _ => answer,
    }
}

/// A reqwest error as text with its causes (`...: invalid peer certificate: UnknownIssuer`).
fn explain<T>(
    result: Result<T, StreamableHttpError<reqwest::Error>>,
) -> Result<T, StreamableHttpError<reqwest::Error>> {
    result.map_err(|error| match error {
        StreamableHttpError::Client(error) => {
            StreamableHttpError::Io(std::io::Error::other(crate::error::chain(&error)))
        }
        other => other,
    })
}

impl StreamableHttpClient for SessionHttpClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
        let kept = kept(&message, &session_id);
        let answer = self.0.post_message(uri, message, session_id, auth_header, custom_headers).await;
        explain(correct(kept, answer))
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
        let kept = kept(&message, &session_id);
        let answer = self
            .0
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await;
        explain(correct(kept, answer))
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<reqwest::Error>> {
        explain(self.0.delete_session(uri, session_id, auth_header, custom_headers).await)
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<reqwest::Error>> {
        explain(self.0.get_stream(uri, session_id, last_event_id, auth_header, custom_headers).await)
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<reqwest::Error>> {
        explain(
            self.0
                .get_stream_with_max_sse_event_size(
                    uri,
                    session_id,
                    last_event_id,
                    auth_header,
                    custom_headers,
                    max_sse_event_size,
                )
                .await,
        )
    }
}
