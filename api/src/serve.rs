//! Serving [`crate::app`] over TCP, for `orch serve`, `orch api` and the tests
//! alike: hyper driven directly (axum::serve sets no timeouts), with a deadline
//! for each request's headers that also closes idle keep-alive connections, a
//! cap on open connections, and a graceful shutdown under a deadline.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::AppState;

/// Serves the API on `listener` until `state.shutdown` fires; requests still
/// in flight then get `grace` to finish before their connections are dropped.
pub async fn serve(listener: TcpListener, state: AppState, grace: Duration) {
    let shutdown = state.shutdown.clone();
    let config = state.config.clone();
    let app = crate::app(state);
    let open = Arc::new(Semaphore::new(config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1 only, as before (axum without its http2 feature): HTTP/2 has no
    // header deadline. hyper starts this timer whenever it waits for a
    // request's head: on a new connection and after each response, so a silent,
    // dribbling or idle keep-alive connection is closed alike.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(config.header_timeout).keep_alive(true);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait for some to close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Without TCP_NODELAY a response written in pieces (an MCP answer as an SSE
        // event after its headers) waits for the client's delayed ACK: +40 ms a call.
        let _ = stream.set_nodelay(true);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, config.max_connections));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("HTTP requests still open after the shutdown grace; closing them");
        }
    }
}

/// Answers a connection over the cap with 503 in the error shape, then closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": format!("the server has {max} connections open, its limit (ORCH_MAX_CONNECTIONS); retry shortly"),
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
