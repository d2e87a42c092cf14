//! Connection timeouts and caps on connections and streams, through a real socket.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Options, TestApp, make_key, spawn_app_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn app_with(api: impl FnOnce(&mut orch_api::ApiConfig) + Send + 'static) -> TestApp {
    spawn_app_with(Backend::Sqlite, Options { worker: false, api: Box::new(api), ..Default::default() }).await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection (or resets it); what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|_| seen)
}

#[tokio::test]
async fn a_connection_dribbling_its_headers_is_closed_by_the_header_timeout() {
    let app = app_with(|c| c.header_timeout = Duration::from_secs(1)).await;
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    // One header byte every 200 ms, for up to 5 s: the server must hang up well before.
    while started.elapsed() < Duration::from_secs(5) {
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "a connection dribbling header bytes was still open after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "closed only after {:?}", started.elapsed());
    app.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let app = app_with(|c| c.header_timeout = Duration::from_secs(1)).await;
    let mut stream = connect(&app).await;
    let closed = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "a connection that sent nothing was still open after 3 s");
    app.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = app_with(|c| c.header_timeout = Duration::from_secs(1)).await;
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let seen = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    let seen = seen.expect("an idle keep-alive connection was still open 3 s after its response");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "the request was answered first: {text}");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the idle timeout: {:?}", started.elapsed());
    app.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_get_503_in_the_error_shape() {
    let app = app_with(|c| c.max_connections = 2).await;
    let _first = connect(&app).await;
    let _second = connect(&app).await;
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connect(&app).await;
    let _ = third.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let seen = read_until_closed(&mut third, Duration::from_secs(3)).await.expect("the third connection is closed");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after: 1"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    drop((_first, _second));
    // Their places free up once the server sees them closed.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if app.get("/health").await.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "connections were not given back after closing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// Opens `GET /v1/jobs/{id}/events` with `key`; the response, its body unread.
async fn open_events(app: &TestApp, id: &str, key: &str) -> reqwest::Response {
    app.client.get(format!("{}/v1/jobs/{id}/events", app.base)).bearer_auth(key).send().await.unwrap()
}

async fn queued_job(app: &TestApp) -> String {
    app.submit_batch(json!({"plan": {"nodes": [{"id": "a", "fail": {"message": "never runs"}}]}})).await
}

#[tokio::test]
async fn the_stream_over_a_keys_cap_gets_429_and_over_the_servers_cap_503() {
    let app = app_with(|c| {
        c.max_streams_per_key = 2;
        c.max_streams = 3;
    })
    .await;
    let id = queued_job(&app).await;
    let other = make_key(app.store.as_ref(), &["admin"]).await;
    let first = open_events(&app, &id, &app.admin).await;
    let second = open_events(&app, &id, &app.admin).await;
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));

    let refused = open_events(&app, &id, &app.admin).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().get("retry-after").is_some(), "429 says when to retry");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    assert_eq!(body["error"]["details"]["limit"], 2, "{body}");

    // Another key has its own share, up to the server's total.
    let third = open_events(&app, &id, &other).await;
    assert_eq!(third.status(), StatusCode::OK);
    let busy = open_events(&app, &id, &other).await;
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(busy.headers().get("retry-after").is_some(), "503 says when to retry");
    let body: Value = busy.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_busy", "{body}");

    // A closed stream gives its place back.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let again = open_events(&app, &id, &app.admin).await;
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "a closed stream's place was not given back: {}", again.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((second, third));
    app.stop().await;
}

#[tokio::test]
async fn streamed_chat_completions_count_against_the_stream_cap() {
    let app = app_with(|c| {
        c.max_streams_per_key = 1;
    })
    .await;
    let id = queued_job(&app).await;
    let held = open_events(&app, &id, &app.admin).await;
    assert_eq!(held.status(), StatusCode::OK);
    let body = json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let refused = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&app.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // Not streamed: no stream is held, so it is not refused for the cap.
    let plain = json!({"model": "nonexistent-model", "messages": [{"role": "user", "content": "hi"}]});
    let answered = app.call(reqwest::Method::POST, "/v1/chat/completions", Some(&app.admin), Some(plain)).await;
    assert_ne!(answered.status, StatusCode::TOO_MANY_REQUESTS, "{}", answered.body);
    drop(held);
    app.stop().await;
}
