//! Webhooks over real HTTP: a receiver on loopback, the real API and worker,
//! SQLite and Redis. Receivers run on 127.0.0.1, so these apps allow
//! 127.0.0.0/8 (ORCH_WEBHOOK_ALLOW) and shrink the retry schedule 100 times
//! (ORCH_WEBHOOK_RETRY_SCALE=0.01: 50 ms, 300 ms, 1.2 s, …); the SSRF test
//! runs without the allow list.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use orch_webhooks::WebhookConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Options, TestApp, spawn_app_on, spawn_app_with};
use tokio_util::sync::CancellationToken;

const SCALE: f64 = 0.01;

fn hooks() -> WebhookConfig {
    WebhookConfig { allow: vec!["127.0.0.0/8".parse().unwrap()], retry_scale: SCALE, ..Default::default() }
}

fn options() -> Options {
    Options { webhooks: hooks(), ..Default::default() }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    /// Path and query exactly as sent.
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> String {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    /// Statuses to answer, in order; 200 once used up.
    script: Arc<Mutex<VecDeque<u16>>>,
    log: Arc<Mutex<Vec<Received>>>,
}

/// An HTTP receiver that answers from a script and records every request.
struct Receiver {
    addr: SocketAddr,
    state: ReceiverState,
    stop: CancellationToken,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        Receiver::on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), script)
    }

    fn on(listener: tokio::net::TcpListener, script: &[u16]) -> Receiver {
        let state = ReceiverState::default();
        state.script.lock().unwrap().extend(script);
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(receive).with_state(state.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await.unwrap();
        });
        Receiver { addr, state, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived; returns them.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} requests within {timeout:?}", got.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Answers the next scripted status; `SLOW` answers 200 after a second; a
/// 302 points elsewhere on this receiver; a 429 says `Retry-After: 1`.
async fn receive(
    State(state): State<ReceiverState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    state.log.lock().unwrap().push(Received { at: Instant::now(), uri: uri.to_string(), headers, body });
    match status {
        SLOW => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            AxumStatus::OK.into_response()
        }
        302 => (AxumStatus::FOUND, [("location", "/followed")]).into_response(),
        429 => (AxumStatus::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response(),
        other => AxumStatus::from_u16(other).unwrap().into_response(),
    }
}

const SLOW: u16 = 0;

/// Submits a chat job with `callback`; returns its id.
async fn chat_with_callback(app: &TestApp, callback: Value) -> String {
    let r = app.post("/v1/jobs/chat", json!({"prompt": "Summarise the week\nsecond line", "callback": callback})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

/// Polls the job's deliveries until `done` holds for them.
async fn wait_deliveries(app: &TestApp, job: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = app.get(&format!("/v1/jobs/{job}/deliveries")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let list = r.body["deliveries"].as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "deliveries of {job} not there within {timeout:?}: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn finished(list: &[Value]) -> bool {
    !list.is_empty()
        && list.iter().all(|d| ["succeeded", "failed", "superseded"].contains(&d["status"].as_str().unwrap()))
}

async fn a_failing_receiver_is_retried_on_schedule_with_one_webhook_id(backend: Backend) {
    let receiver = Receiver::start(&[503, 500, 503]).await;
    let app = spawn_app_with(backend, options()).await;
    let job = chat_with_callback(&app, json!({"url": receiver.url("/hook")})).await;
    let got = receiver.wait_for(4, Duration::from_secs(20)).await;
    let ids: Vec<String> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids[0].starts_with("msg_"), "{ids:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "one webhook-id across attempts: {ids:?}");
    // Waits after failed attempts 1, 2, 3: 5 s, 30 s, 2 min, scaled, ±10 % jitter (plus
    // slack for a busy machine, well short of the next step's 6 s).
    for (i, step) in [5.0, 30.0, 120.0].into_iter().enumerate() {
        let gap = got[i + 1].at.duration_since(got[i].at).as_secs_f64();
        let expected = step * SCALE;
        assert!(gap >= expected * 0.9 - 0.005 && gap <= expected * 1.1 + 1.5, "gap {i}: {gap}s, expected ~{expected}s");
    }
    let payload = got[3].json();
    assert_eq!(payload["type"], "job.succeeded");
    assert_eq!(payload["job_id"], job.as_str());
    assert_eq!(payload["result"]["text"], "Summarise the week\nsecond line");
    assert_eq!(payload["markdown"], "Summarise the week\nsecond line");
    assert_eq!(payload["title"], "Summarise the week");
    assert!(
        payload["obsidian"]["path"].as_str().unwrap().ends_with(&format!("-summarise-the-week-{job}.md")),
        "{payload}"
    );
    assert!(payload["obsidian"]["content"].as_str().unwrap().starts_with("---\ntitle: \"Summarise the week\"\n"));
    assert_eq!(payload["links"]["result"], format!("{}/v1/jobs/{job}/result", app.base));
    let list = wait_deliveries(&app, &job, Duration::from_secs(5), finished).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let d = &list[0];
    assert_eq!(
        (d["status"].as_str(), d["attempts"].as_u64(), d["response_status"].as_u64()),
        (Some("succeeded"), Some(4), Some(200))
    );
    assert_eq!((d["event"].as_str(), d["target"].as_str()), (Some("job.succeeded"), Some("callback")));
    assert_eq!(d["webhook_id"], ids[0].as_str());
    // Deliveries are jobs, listed only when asked for.
    let jobs = app.get("/v1/jobs").await.body;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    let deliveries = app.get("/v1/jobs?kind=delivery").await.body;
    assert_eq!(deliveries["jobs"][0]["id"], d["id"]);
    app.stop().await;
}

async fn a_409_is_retried_until_the_wait_node_is_ready(backend: Backend) {
    let receiver = Receiver::start(&[409]).await;
    let app = spawn_app_with(backend, options()).await;
    let job = chat_with_callback(&app, json!({"url": receiver.url("/webhook-waiting/7")})).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    let list = wait_deliveries(&app, &job, Duration::from_secs(5), finished).await;
    assert_eq!((list[0]["status"].as_str(), list[0]["attempts"].as_u64()), (Some("succeeded"), Some(2)));
    app.stop().await;
}

async fn retry_after_is_honoured(backend: Backend) {
    let receiver = Receiver::start(&[429]).await;
    let app = spawn_app_with(backend, options()).await;
    chat_with_callback(&app, json!({"url": receiver.url("/busy")})).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    // The scaled schedule would wait 50 ms; the receiver asked for 1 s.
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_secs(1) && gap < Duration::from_secs(3), "{gap:?}");
    app.stop().await;
}

async fn not_found_ends_the_delivery_as_failed(backend: Backend) {
    let receiver = Receiver::start(&[404]).await;
    let app = spawn_app_with(backend, options()).await;
    let job = chat_with_callback(&app, json!({"url": receiver.url("/gone")})).await;
    let list = wait_deliveries(&app, &job, Duration::from_secs(10), finished).await;
    let d = &list[0];
    assert_eq!((d["status"].as_str(), d["attempts"].as_u64()), (Some("failed"), Some(1)), "{d}");
    assert_eq!((d["error"]["code"].as_str(), d["response_status"].as_u64()), (Some("http_404"), Some(404)));
    // Listed among failed deliveries, and sent once more on request.
    let failed = app.get("/v1/deliveries?status=failed").await.body;
    assert_eq!(failed["deliveries"][0]["id"], d["id"], "{failed}");
    let r = app.post(&format!("/v1/deliveries/{}/redeliver", d["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["redelivery_of"], d["id"]);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got.len(), 2);
    app.stop().await;
}

async fn a_resume_url_is_delivered_with_its_query_intact(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, options()).await;
    let path = "/webhook-waiting/019a8a5e?signature=Zm9v%2Bbar%3D&x=1&x=2";
    chat_with_callback(&app, json!({"url": receiver.url(path)})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].uri, path);
    app.stop().await;
}

/// The venv scripts/test makes with the `standardwebhooks` package from PyPI.
fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, or `python3 -m venv target/pyenv && target/pyenv/bin/pip install -r tests/python/requirements.txt`",
        python.display()
    );
    python
}

/// Verifies a request with the Python reference implementation; returns the payload it parsed.
fn verify_with_python(secret: &str, request: &Received) -> Value {
    use std::io::Write;
    let script = "import sys, json\nfrom standardwebhooks.webhooks import Webhook\n\
                  h = {'webhook-id': sys.argv[2], 'webhook-timestamp': sys.argv[3], 'webhook-signature': sys.argv[4]}\n\
                  print(json.dumps(Webhook(sys.argv[1]).verify(sys.stdin.buffer.read(), h)))";
    let mut child = std::process::Command::new(python())
        .args(["-c", script, secret])
        .args(["webhook-id", "webhook-timestamp", "webhook-signature"].map(|h| request.header(h)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&request.body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "standardwebhooks rejected it: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn signatures_verify_with_the_standardwebhooks_package(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, options()).await;
    // A callback with its own secret.
    let (_, secret) = orch_webhooks::Secret::generate();
    let job = chat_with_callback(&app, json!({"url": receiver.url("/cb"), "secret": secret})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].header("webhook-signature").starts_with("v1,"));
    let parsed = verify_with_python(&secret, &got[0]);
    assert_eq!(parsed["job_id"], job.as_str());
    // A callback without a secret is signed with the submitting key's, shown when the key was made.
    let made = app.post("/v1/keys", json!({"name": "n8n", "scopes": ["jobs:write", "jobs:read"]})).await;
    let (key, key_whsec) = (made.body["secret"].as_str().unwrap(), made.body["webhook_secret"].as_str().unwrap());
    let body = json!({"prompt": "signed by key", "callback": {"url": receiver.url("/by-key")}});
    let r = app.call(reqwest::Method::POST, "/v1/jobs/chat", Some(key), Some(body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(verify_with_python(key_whsec, &got[1])["markdown"], "signed by key");
    let _ = receiver.state.log.lock().unwrap().pop();
    // A global subscription, whose secret is shown once.
    let created = app.post("/v1/webhooks", json!({"url": receiver.url("/all"), "events": ["job.failed"]})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let sub_secret = created.body["secret"].as_str().unwrap().to_owned();
    let listed = app.get("/v1/webhooks").await;
    assert!(!listed.body.to_string().contains(&sub_secret), "{}", listed.body);
    assert_eq!(listed.body["webhooks"][0]["events"], json!(["job.failed"]));
    let failing = app.submit_plan(json!({"nodes": [{"id": "x", "fail": {"message": "boom"}}]})).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let parsed = verify_with_python(&sub_secret, &got[1]);
    assert_eq!((parsed["type"].as_str(), parsed["job_id"].as_str()), (Some("job.failed"), Some(failing.as_str())));
    assert_eq!(parsed["error"]["code"], "step_failed");
    // A tampered body fails the same check.
    let mut forged = got[1].clone();
    forged.body = Bytes::from(String::from_utf8(forged.body.to_vec()).unwrap().replace("failed", "succeeded"));
    assert!(std::panic::catch_unwind(|| verify_with_python(&sub_secret, &forged)).is_err());
    // Changed to other events; the secret stays.
    let id = created.body["id"].as_str().unwrap();
    let changed = json!({"url": receiver.url("/all-changed"), "events": ["succeeded"]});
    let r = app.call(reqwest::Method::PUT, &format!("/v1/webhooks/{id}"), Some(&app.admin), Some(changed)).await;
    assert_eq!((r.status, r.body["events"].clone()), (StatusCode::OK, json!(["job.succeeded"])), "{}", r.body);
    app.submit_plan(json!({"nodes": [{"id": "ok", "echo": "fine"}]})).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got[2].uri, "/all-changed");
    assert_eq!(verify_with_python(&sub_secret, &got[2])["type"], "job.succeeded");
    let r = app.call(reqwest::Method::DELETE, &format!("/v1/webhooks/{id}"), Some(&app.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("/v1/webhooks/{id}")).await.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_with_the_field_named() {
    // No allow list: production defaults.
    let app = spawn_app_with(Backend::Sqlite, Options::default()).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://localhost:5678/webhook-waiting/1",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.7/",
        "http://192.168.1.10/",
        "http://100.64.0.1/",
        "http://[fe80::1]/",
        "http://2130706433/",
        "http://0.0.0.0:80/",
    ] {
        let r = app.post("/v1/jobs/chat", json!({"prompt": "hi", "callback": {"url": url}})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {}", r.body);
        assert_eq!(r.body["error"]["details"]["field"], "callback.url", "{url}");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("ORCH_WEBHOOK_ALLOW"), "{}", r.body);
        let r = app.post("/v1/webhooks", json!({"url": url, "events": ["job.succeeded"]})).await;
        assert_eq!(
            (r.status, r.body["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("url")),
            "{url}"
        );
        let r = app.post("/v1/webhooks/test", json!({"url": url})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}");
    }
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "callback.url"),
        (json!({"url": "https://8.8.8.8/x", "events": ["succeeded", "progres"]}), "callback.events[1]"),
        (json!({"url": "https://8.8.8.8/x", "events": ["done"]}), "callback.events[0]"),
        (json!({"url": "https://8.8.8.8/x", "secret": "hunter2"}), "callback.secret"),
        (json!({"url": "https://8.8.8.8/x", "headers": {"webhook-id": "x"}}), "callback.headers.webhook-id"),
    ] {
        let r = app.post("/v1/jobs/chat", json!({"prompt": "hi", "callback": body})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["details"]["field"], field, "{}", r.body);
        assert!(!r.body.to_string().contains("hunter2"), "{}", r.body);
    }
    app.stop().await;
}

/// Issue 13 defect 7: vault paths that climb out of the vault or carry
/// control characters, and headers that frame the request or that Orch sets,
/// are refused with the field named wherever they enter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obsidian_paths_and_callback_headers_with_dangerous_values_are_refused() {
    let app = spawn_app_with(Backend::Sqlite, options()).await;
    let hook = "https://8.8.8.8/hook";
    for path in [
        "Inbox/a\u{0}.md",
        "Inbox/a\r\nX-Evil: 1.md",
        "..\\..\\win.ini",
        "%2e%2e/%2e%2e/x.md",
        "%252e%252e/x.md",
        "C:/Windows/x.md",
        "/etc/x.md",
        "\\\\server\\share\\x.md",
        "Inbox/.. /x.md",
        &"a".repeat(400),
    ] {
        for (route, body) in [
            ("/v1/jobs/chat", json!({"prompt": "hi", "obsidian_path": path})),
            ("/v1/jobs/batch", json!({"plan": {"nodes": [{"id": "a", "echo": "hi"}]}, "obsidian_path": path})),
        ] {
            let r = app.post(route, body).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{route} {path:?}: {}", r.body);
            assert_eq!(r.body["error"]["details"]["field"], "obsidian_path", "{route} {path:?}: {}", r.body);
        }
    }
    let created = app.post("/v1/webhooks", json!({"url": hook, "events": ["job.succeeded"]})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    for name in [
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "TE",
        "Trailer",
        "Host",
        "Content-Length",
        "Content-Type",
        "webhook-signature",
    ] {
        let headers = json!({name: "x"});
        for (route, body, field) in [
            (
                "/v1/jobs/chat",
                json!({"prompt": "hi", "callback": {"url": hook, "headers": headers}}),
                "callback.headers",
            ),
            (
                "/v1/jobs/batch",
                json!({"plan": {"nodes": [{"id": "a", "echo": "hi"}]}, "callback": {"url": hook, "headers": headers}}),
                "callback.headers",
            ),
            ("/v1/webhooks", json!({"url": hook, "events": ["job.succeeded"], "headers": headers}), "headers"),
        ] {
            let r = app.post(route, body).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{route} {name}: {}", r.body);
            assert_eq!(r.body["error"]["details"]["field"], format!("{field}.{name}"), "{}", r.body);
        }
        let body = json!({"url": hook, "events": ["job.succeeded"], "headers": headers});
        let r = app.call(reqwest::Method::PUT, &format!("/v1/webhooks/{id}"), Some(&app.admin), Some(body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "PUT {name}: {}", r.body);
        assert_eq!(r.body["error"]["details"]["field"], format!("headers.{name}"), "{}", r.body);
    }
    // Ordinary values still pass, and a path without .md gets it.
    let receiver = Receiver::start(&[]).await;
    let callback = json!({"url": receiver.url("/cb"), "headers": {"Authorization": "Bearer x", "X-Flow": "weekly"}});
    let r = app
        .post(
            "/v1/jobs/chat",
            json!({"prompt": "hi", "obsidian_path": "Notes/{kind}/100% {slug}", "callback": callback}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["obsidian"]["path"], "Notes/chat/100% hi.md");
    assert_eq!(got[0].header("x-flow"), "weekly");
    app.stop().await;
}

async fn callback_secrets_and_headers_are_never_returned(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, options()).await;
    let (_, secret) = orch_webhooks::Secret::generate();
    let header_value = "Bearer n8n-header-secret-42";
    let callback = json!({"url": receiver.url("/cb?signature=query-secret"), "secret": secret, "headers": {"Authorization": header_value}});
    let r = app.post("/v1/jobs/batch", json!({"plan": {"nodes": [{"id": "a", "echo": "hi"}]}, "callback": callback, "title": "Report", "tags": ["weekly"]})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = r.body["id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("authorization"), header_value, "the receiver gets its header");
    let payload = got[0].json();
    assert_eq!(
        (payload["title"].as_str(), payload["frontmatter"]["tags"].clone()),
        (Some("Report"), json!(["weekly"]))
    );
    assert!(!got[0].body.windows(secret.len()).any(|w| w == secret.as_bytes()), "the payload holds no secret");
    wait_deliveries(&app, &job, Duration::from_secs(5), finished).await;
    for path in [
        format!("/v1/jobs/{job}"),
        "/v1/jobs".to_owned(),
        format!("/v1/jobs/{job}/result"),
        format!("/v1/jobs/{job}/deliveries"),
        "/v1/deliveries".to_owned(),
    ] {
        let text = app.get(&path).await.body.to_string();
        for leak in [secret.as_str(), header_value, "query-secret"] {
            assert!(!text.contains(leak), "{path} shows {leak}: {text}");
        }
    }
    app.stop().await;
}

/// The receiver is down while Orch stops and starts again on the same store;
/// the delivery survives and arrives once the receiver is back.
async fn a_delivery_survives_a_restart_while_the_receiver_is_down(backend: Backend) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // nobody listens: connection refused
    let app = spawn_app_with(backend, options()).await;
    let job = chat_with_callback(&app, json!({"url": format!("http://{addr}/hook")})).await;
    let list = wait_deliveries(&app, &job, Duration::from_secs(10), |l| {
        l.first().is_some_and(|d| d["attempts"].as_u64() >= Some(2))
    })
    .await;
    assert_eq!(list[0]["error"]["code"], "connect", "{list:?}");
    let (handle, admin) = app.stop_keeping_store().await;
    let receiver = Receiver::on(tokio::net::TcpListener::bind(addr).await.unwrap(), &[]);
    let app = spawn_app_on(handle, admin, options()).await;
    let got = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].json()["job_id"], job.as_str());
    let list = wait_deliveries(&app, &job, Duration::from_secs(5), finished).await;
    assert_eq!(list[0]["status"], "succeeded");
    assert!(list[0]["attempts"].as_u64() >= Some(3), "{list:?}");
    app.stop().await;
}

/// Cancelling a queued job queues its delivery in the API before the status
/// changes: a worker started later sends it.
async fn cancelling_a_queued_job_is_delivered(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, Options { worker: false, ..options() }).await;
    let job = chat_with_callback(&app, json!({"url": receiver.url("/cb"), "events": ["cancelled"]})).await;
    let r = app.post(&format!("/v1/jobs/{job}/cancel"), json!({})).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    let (handle, admin) = app.stop_keeping_store().await;
    let app = spawn_app_on(handle, admin, options()).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        (got[0].json()["type"].as_str(), got[0].json()["markdown"].as_str()),
        (Some("job.cancelled"), Some("**Cancelled.**"))
    );
    app.stop().await;
}

/// A worker dies holding the job's last attempt: recovery ends it `failed`
/// (`worker_lost`), and the delivery queued just before that is sent.
async fn a_job_lost_with_its_worker_is_delivered_as_failed(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, Options { worker: false, ..options() }).await;
    let r = app
        .post("/v1/jobs/chat", json!({"prompt": "hi", "max_attempts": 1, "callback": {"url": receiver.url("/cb")}}))
        .await;
    let job = r.body["id"].as_str().unwrap().to_owned();
    let claimed = app.store.claim("ghost-worker", 1, Duration::from_millis(300)).await.unwrap();
    assert_eq!(claimed[0].id.to_string(), job);
    let (handle, admin) = app.stop_keeping_store().await;
    let app = spawn_app_on(handle, admin, options()).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let payload = got[0].json();
    assert_eq!(
        (payload["type"].as_str(), payload["error"]["code"].as_str()),
        (Some("job.failed"), Some("worker_lost"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    app.stop().await;
}

/// A delivery queued for an outcome that was never recorded (the worker died
/// between queueing and writing it) ends `superseded`, not `failed` (no false
/// alert under `?status=failed`); the job's real outcome, in its next attempt,
/// is delivered once.
async fn a_superseded_delivery_is_not_listed_as_failed(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let mut hooks = hooks();
    hooks.settle_wait = Duration::from_millis(200);
    let app = spawn_app_with(backend, Options { worker: false, webhooks: hooks.clone(), ..Default::default() }).await;
    let r = app.post("/v1/jobs/chat", json!({"prompt": "hi", "callback": {"url": receiver.url("/cb")}})).await;
    let job = r.body["id"].as_str().unwrap().to_owned();
    let claimed = app.store.claim("ghost-worker", 1, Duration::from_millis(300)).await.unwrap();
    // What the dead worker queued before it could record `succeeded`.
    let webhooks = orch_webhooks::Webhooks::new(app.store.clone(), hooks.clone());
    assert_eq!(webhooks.enqueue(&claimed[0], orch_store::JobStatus::Succeeded).await.unwrap(), 1);
    let (handle, admin) = app.stop_keeping_store().await;
    let app = spawn_app_on(handle, admin, Options { webhooks: hooks, ..Default::default() }).await;
    let list = wait_deliveries(&app, &job, Duration::from_secs(15), |l| l.len() == 2 && finished(l)).await;
    let by_status = |s: &str| list.iter().filter(|d| d["status"] == s).count();
    assert_eq!((by_status("succeeded"), by_status("superseded"), by_status("failed")), (1, 1, 0), "{list:?}");
    assert!(list.iter().any(|d| d["skipped"] == "superseded" && d["error"].is_null()), "{list:?}");
    let failed = app.get("/v1/deliveries?status=failed").await;
    assert_eq!(failed.body["deliveries"], json!([]), "{}", failed.body);
    let superseded = app.get("/v1/deliveries?status=superseded").await;
    assert_eq!(superseded.body["deliveries"].as_array().map(Vec::len), Some(1), "{}", superseded.body);
    let succeeded = app.get("/v1/deliveries?status=succeeded").await;
    assert_eq!(succeeded.body["deliveries"].as_array().map(Vec::len), Some(1), "{}", succeeded.body);
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1, "sent once");
    assert_eq!(got[0].json()["job_id"], job.as_str());
    app.stop().await;
}

/// A receiver slower than the timeout is retried; a redirect ends the
/// delivery as failed and is not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_retried_and_redirects_not_followed() {
    let receiver = Receiver::start(&[SLOW, 302]).await;
    let webhooks = WebhookConfig { timeout: Duration::from_millis(300), ..hooks() };
    let app = spawn_app_with(Backend::Sqlite, Options { webhooks, ..Default::default() }).await;
    let job = chat_with_callback(&app, json!({"url": receiver.url("/hook")})).await;
    let list = wait_deliveries(&app, &job, Duration::from_secs(10), finished).await;
    let d = &list[0];
    assert_eq!(
        (d["status"].as_str(), d["attempts"].as_u64(), d["error"]["code"].as_str()),
        (Some("failed"), Some(2), Some("http_302")),
        "{d}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let uris: Vec<String> = receiver.received().into_iter().map(|r| r.uri).collect();
    assert_eq!(uris, ["/hook", "/hook"]);
    app.stop().await;
}

/// A host name is resolved, checked, and connected to at the address checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_delivered_when_its_addresses_are_allowed() {
    let receiver = Receiver::start(&[]).await;
    let webhooks = WebhookConfig { allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()], ..hooks() };
    let app = spawn_app_with(Backend::Sqlite, Options { webhooks, ..Default::default() }).await;
    let url = format!("http://localhost:{}/named?x=1", receiver.addr.port());
    chat_with_callback(&app, json!({"url": url})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].uri, "/named?x=1");
    assert_eq!(got[0].header("host"), format!("localhost:{}", receiver.addr.port()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_endpoint_reports_the_receivers_answer() {
    let receiver = Receiver::start(&[418]).await;
    let app = spawn_app_with(Backend::Sqlite, options()).await;
    let (_, secret) = orch_webhooks::Secret::generate();
    let r =
        app.post("/v1/webhooks/test", json!({"url": receiver.url("/t"), "event": "failed", "secret": secret})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((r.body["ok"].as_bool(), r.body["response_status"].as_u64()), (Some(false), Some(418)));
    assert_eq!(r.body["payload"]["type"], "job.failed");
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    verify_with_python(&secret, &got[0]);
    let r = app.post("/v1/webhooks/test", json!({"url": receiver.url("/t")})).await;
    assert_eq!((r.body["ok"].as_bool(), r.body["response_status"].as_u64()), (Some(true), Some(200)));
    let r = app.post("/v1/webhooks/test", json!({"url": receiver.url("/t"), "event": "finished"})).await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("event"))
    );
    app.stop().await;
}

/// A subscription to `server.down` hears of an MCP server that lost its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_going_down_is_delivered_to_subscribers() {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(Backend::Sqlite, options()).await;
    let created = app.post("/v1/webhooks", json!({"url": receiver.url("/ops"), "events": ["server.down"]})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["events"], json!(["server.down"]));
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let closed = format!("http://127.0.0.1:{}/mcp", orch_testkit::free_port());
    let r = app.post("/v1/servers", json!({"name": "gone", "config": {"url": closed, "timeout": 2}})).await;
    assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::CREATED, Some("down")), "{}", r.body);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let payload = verify_with_python(&secret, &got[0]);
    assert_eq!(
        (payload["type"].as_str(), payload["server"].as_str()),
        (Some("server.down"), Some("gone")),
        "{payload}"
    );
    let list = app.get("/v1/deliveries").await.body;
    assert_eq!(
        (list["deliveries"][0]["event"].as_str(), &list["deliveries"][0]["job_id"]),
        (Some("server.down"), &Value::Null),
        "{list}"
    );
    // Job events and unknown ones are told apart.
    let r = app.post("/v1/webhooks", json!({"url": receiver.url("/ops"), "events": ["server.up"]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("server.down"), "{}", r.body);
    app.stop().await;
}

/// The real binary: `orch serve` is killed (SIGKILL) while its delivery waits
/// for a receiver that is down, started again on the same SQLite file, and
/// delivers once the receiver is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orch_serve_killed_and_restarted_still_delivers() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let receiver_port = orch_testkit::free_port();
    let port = orch_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let serve = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ORCH_BIND", format!("127.0.0.1:{port}"))
            .env("ORCH_LOG", "warn")
            .env("ORCH_LEASE", "1s")
            .env("ORCH_WEBHOOK_ALLOW", "127.0.0.0/8")
            .env("ORCH_WEBHOOK_RETRY_SCALE", "0.01")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    orch_mcp::tls::install_crypto_provider();
    let client = reqwest::Client::new();
    let wait_up = || async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(format!("{base}/health")).send().await.ok().map(|r| r.status()) != Some(StatusCode::OK) {
            assert!(Instant::now() < deadline, "orch serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut first = Killed(serve());
    let key = BufReader::new(first.0.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| l.trim().strip_prefix("orch_").map(|k| format!("orch_{k}")))
        .expect("the first start prints a key");
    wait_up().await;
    let callback = json!({"url": format!("http://127.0.0.1:{receiver_port}/webhook-waiting/9?signature=s%2B1")});
    let r = client
        .post(format!("{base}/v1/jobs/chat"))
        .bearer_auth(&key)
        .json(&json!({"prompt": "hi", "callback": callback}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let job = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // Attempts fail against the closed port; then the process dies without a word.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: Value = client
            .get(format!("{base}/v1/jobs/{job}/deliveries"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list["deliveries"][0]["attempts"].as_u64() >= Some(2) {
            assert_eq!(list["deliveries"][0]["error"]["code"], "connect", "{list}");
            assert!(!list.to_string().contains("s%2B1"), "the URL's query is not shown: {list}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempts: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first); // SIGKILL
    let receiver = Receiver::on(tokio::net::TcpListener::bind(("127.0.0.1", receiver_port)).await.unwrap(), &[]);
    let _second = Killed(serve());
    wait_up().await;
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].uri, "/webhook-waiting/9?signature=s%2B1");
    assert_eq!(got[0].json()["job_id"], job.as_str());
}

/// A child process killed (SIGKILL) when dropped, however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// --- job.progress ---

/// Interval of progress deliveries in these tests.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(300);

fn progress_options() -> Options {
    Options { webhooks: WebhookConfig { progress_interval: PROGRESS_INTERVAL, ..hooks() }, ..Default::default() }
}

/// A plan of three nodes of `ms` each, one after the other, then an echo.
fn slow_plan(ms: u64) -> Value {
    json!({"nodes": [
        {"id": "a", "sleep": {"ms": ms}},
        {"id": "b", "sleep": {"ms": ms}, "depends_on": ["a"]},
        {"id": "c", "sleep": {"ms": ms}, "depends_on": ["b"]},
        {"id": "done", "echo": "finished", "depends_on": ["c"]},
    ], "output": "{{nodes.done.output}}"})
}

/// The receiver's requests once every delivery of `job` has ended, and a
/// moment more for anything late.
async fn all_received(app: &TestApp, receiver: &Receiver, job: &str) -> (Vec<Received>, Vec<Value>) {
    let list = wait_deliveries(app, job, Duration::from_secs(20), |l| {
        l.iter().any(|d| d["event"] != "job.progress") && finished(l)
    })
    .await;
    tokio::time::sleep(PROGRESS_INTERVAL * 2).await;
    (receiver.received(), list)
}

fn types(got: &[Received]) -> Vec<String> {
    got.iter().map(|r| r.json()["type"].as_str().unwrap().to_owned()).collect()
}

/// A batch job whose callback asks for progress: progress payloads (status
/// running, the latest node event), then exactly one ending, last.
async fn a_batch_job_delivers_progress_then_its_ending_last(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, progress_options()).await;
    let callback = json!({"url": receiver.url("/cb"), "events": ["progress", "succeeded"]});
    let r = app.post("/v1/jobs/batch", json!({"plan": slow_plan(500), "callback": callback, "title": "Digest"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = r.body["id"].as_str().unwrap().to_owned();
    let (got, list) = all_received(&app, &receiver, &job).await;
    let types = types(&got);
    assert_eq!(types.last().map(String::as_str), Some("job.succeeded"), "{types:?}");
    assert_eq!(types.iter().filter(|t| *t == "job.succeeded").count(), 1, "{types:?}");
    let progress: Vec<Value> = got.iter().map(Received::json).filter(|p| p["type"] == "job.progress").collect();
    // Nodes end at ~0.5, 1.0 and 1.5 s, each in its own 0.3 s window, sent at
    // the window's end: at least the first two while the job runs.
    assert!(progress.len() >= 2, "{types:?}");
    for p in &progress {
        assert_eq!((p["status"].as_str(), p["job_id"].as_str()), (Some("running"), Some(job.as_str())), "{p}");
        assert!(p["finished_at"].is_null() && p["result"].is_null(), "{p}");
        // The job's latest progress when sent: a node that ended, or the next one starting.
        assert!(["a", "b", "c", "done"].contains(&p["progress"]["node"].as_str().unwrap()), "{p}");
        assert!(["succeeded", "started"].contains(&p["progress"]["status"].as_str().unwrap()), "{p}");
        assert!(p["markdown"].as_str().unwrap().starts_with("Node `"), "{p}");
        assert_eq!(p["title"], "Digest");
    }
    // Later payloads report at least as many nodes done.
    let done: Vec<u64> = progress.iter().filter_map(|p| p["progress"]["completed"].as_u64()).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    // Every progress delivery was sent or skipped as superseded; none failed.
    for d in list.iter().filter(|d| d["event"] == "job.progress") {
        assert!(d["status"] == "succeeded" || d["status"] == "superseded", "{d}");
        assert_eq!(d["max_attempts"], orch_webhooks::PROGRESS_ATTEMPTS, "{d}");
        assert!(d["response_status"] == 200 || d["skipped"] == "superseded", "{d}");
    }
    let sent = list.iter().filter(|d| d["event"] == "job.progress" && d["response_status"] == 200).count();
    assert_eq!(sent, progress.len(), "{list:?}");
    app.stop().await;
}

/// A fake `claude` that streams `n` pieces of text `gap` apart, with an API
/// retry every fifth, then answers (lines of the real captures).
fn streaming_claude(n: usize, gap: Duration) -> Arc<orch_providers::Router> {
    let captures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("providers/tests/fixtures/cli-captures/claude-code-2.1.197");
    let dir = tempfile::tempdir().unwrap().keep();
    let script = dir.join("claude");
    let ok = captures.join("ok.stream.jsonl");
    let retries = captures.join("500.stream.jsonl");
    std::fs::write(
        &script,
        format!(
            "#!/usr/bin/env bash\ncat >/dev/null\nsed -n 1p '{ok}'\nfor i in $(seq 1 {n}); do\n  sed -n 2p '{ok}'\n  [ $((i % 5)) -eq 0 ] && sed -n 2p '{retries}'\n  sleep {gap}\ndone\nsed -n '3,$p' '{ok}'\n",
            ok = ok.display(),
            retries = retries.display(),
            gap = gap.as_secs_f64(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    support::router(&format!("[claude]\nkind = 'claude'\ncommand = '{}'\n", script.display()), "")
}

/// A chat job streaming 80 pieces of text and 16 API retries over ~1.6 s
/// yields a few progress deliveries (at most one per 0.3 s window), not one
/// per event.
async fn a_streaming_chat_job_is_coalesced_into_few_progress_deliveries(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let options = Options { router: Some(streaming_claude(80, Duration::from_millis(20))), ..progress_options() };
    let app = spawn_app_with(backend, options).await;
    let callback = json!({"url": receiver.url("/cb"), "events": ["progress", "succeeded", "failed"]});
    let r = app.post("/v1/jobs/chat", json!({"model": "claude", "prompt": "stream it", "callback": callback})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = r.body["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (got, _) = all_received(&app, &receiver, &job).await;
    let events = app.events(&job, None).await;
    let recorded = events.iter().filter(|(_, kind, _)| kind == "progress").count();
    assert!(recorded >= 80, "{recorded} progress events recorded");
    let types = types(&got);
    assert_eq!(types.last().map(String::as_str), Some("job.succeeded"), "{types:?}");
    let progress = types.iter().filter(|t| *t == "job.progress").count();
    let windows = (started.elapsed().as_secs_f64() / PROGRESS_INTERVAL.as_secs_f64()).ceil() as usize;
    assert!(progress >= 1 && progress <= windows, "{progress} progress deliveries in {windows} windows: {types:?}");
    assert!(progress <= 8, "{progress} progress deliveries for ~1.6 s of streaming");
    let first = got.iter().map(Received::json).find(|p| p["type"] == "job.progress").unwrap();
    assert_eq!((first["kind"].as_str(), first["status"].as_str()), (Some("chat"), Some("running")), "{first}");
    assert!(first["progress"]["type"].is_string(), "{first}");
    app.stop().await;
}

/// A subscription to `job.progress` alone gets every job's progress and no endings.
async fn a_subscription_gets_progress_of_every_job(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, progress_options()).await;
    let created = app.post("/v1/webhooks", json!({"url": receiver.url("/progress"), "events": ["job.progress"]})).await;
    assert_eq!(
        (created.status, &created.body["events"]),
        (StatusCode::CREATED, &json!(["job.progress"])),
        "{}",
        created.body
    );
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let job = app.submit_plan(slow_plan(500)).await;
    let list = wait_deliveries(&app, &job, Duration::from_secs(20), |l| l.len() >= 2 && finished(l)).await;
    app.wait_finished(&job, Duration::from_secs(10)).await;
    tokio::time::sleep(PROGRESS_INTERVAL * 3).await;
    let got = receiver.received();
    assert!(got.len() >= 2, "{list:?}");
    for r in &got {
        let p = verify_with_python(&secret, r);
        assert_eq!((p["type"].as_str(), p["job_id"].as_str()), (Some("job.progress"), Some(job.as_str())), "{p}");
    }
    let list = app.get(&format!("/v1/jobs/{job}/deliveries")).await.body;
    for d in list["deliveries"].as_array().unwrap() {
        assert!(d["target"].as_str().unwrap().starts_with("webhook:"), "{d}");
        assert_eq!(d["event"], "job.progress", "{d}");
    }
    app.stop().await;
}

/// Progress queued for a job that has ended since is not sent: it ends as
/// skipped (superseded), not failed, and the ending stays the last thing sent.
async fn progress_of_a_finished_job_is_not_delivered(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, progress_options()).await;
    let callback = json!({"url": receiver.url("/cb"), "events": ["progress", "succeeded"]});
    let r =
        app.post("/v1/jobs/batch", json!({"plan": {"nodes": [{"id": "a", "echo": 1}]}, "callback": callback})).await;
    let job = r.body["id"].as_str().unwrap().to_owned();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let list = wait_deliveries(&app, &job, Duration::from_secs(10), finished).await;
    let ended = app.store.get_job(job.parse().unwrap()).await.unwrap().unwrap();
    // What a worker queued while the job ran, coming due only now.
    let input = orch_webhooks::DeliveryInput {
        job_id: Some(ended.id),
        event: "job.progress".into(),
        attempt: ended.attempts,
        target: orch_webhooks::Target::Callback,
        webhook_id: "msg_late".into(),
        redelivery_of: None,
        payload: None,
    };
    app.store.insert_job(orch_webhooks::delivery_job(&input, None, None)).await.unwrap();
    let after =
        wait_deliveries(&app, &job, Duration::from_secs(10), |l| l.len() == list.len() + 1 && finished(l)).await;
    let late = after.iter().find(|d| d["webhook_id"] == "msg_late").unwrap();
    assert_eq!((late["status"].as_str(), late["skipped"].as_str()), (Some("superseded"), Some("superseded")), "{late}");
    assert!(late["response_status"].is_null() && late["error"].is_null(), "{late}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let types = types(&receiver.received());
    assert_eq!(types.last().map(String::as_str), Some("job.succeeded"), "{types:?}");
    assert!(!types.is_empty() && types.iter().filter(|t| *t == "job.succeeded").count() == 1, "{types:?}");
    app.stop().await;
}

/// A job's deliveries are listed exactly, in pages, however many other
/// deliveries the store holds; /health counts them apart from jobs.
async fn a_jobs_deliveries_are_listed_exactly_among_thousands(backend: Backend) {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(backend, options()).await;
    let job = chat_with_callback(&app, json!({"url": receiver.url("/cb")})).await;
    wait_deliveries(&app, &job, Duration::from_secs(10), finished).await;
    let job_id: orch_store::JobId = job.parse().unwrap();
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    let delivery = |about: Option<orch_store::JobId>| {
        let input = orch_webhooks::DeliveryInput {
            job_id: about,
            event: "job.succeeded".into(),
            attempt: 1,
            target: orch_webhooks::Target::Callback,
            webhook_id: "msg_filler".into(),
            redelivery_of: None,
            payload: None,
        };
        // Not due for a day: they stay queued.
        orch_store::NewJob { run_at: later, ..orch_webhooks::delivery_job(&input, None, None) }
    };
    let other = orch_store::new_job_id();
    app.store.insert_jobs((0..2_100).map(|_| delivery(Some(other))).collect()).await.unwrap();
    app.store.insert_jobs(vec![delivery(Some(job_id)), delivery(Some(job_id))]).await.unwrap();
    app.store.insert_jobs((0..300).map(|_| delivery(Some(other))).collect()).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs/{job}/deliveries?limit=2&cursor={c}"),
            None => format!("/v1/jobs/{job}/deliveries?limit=2"),
        };
        let page = app.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for d in page.body["deliveries"].as_array().unwrap() {
            assert_eq!(d["job_id"], job.as_str(), "{d}");
            seen.push(d["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    let r = app.get(&format!("/v1/jobs/{job}/deliveries?limit=0")).await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")),
        "{}",
        r.body
    );
    let health = app.get("/health").await.body;
    assert_eq!(health["queue"]["succeeded"], 1, "{health}");
    assert_eq!(health["queue"]["queued"], 0, "{health}");
    assert_eq!(health["deliveries"]["queued"], 2_402, "{health}");
    assert_eq!(health["deliveries"]["succeeded"], 1, "{health}");
    app.stop().await;
}

on_both_backends!(
    a_batch_job_delivers_progress_then_its_ending_last,
    a_streaming_chat_job_is_coalesced_into_few_progress_deliveries,
    a_subscription_gets_progress_of_every_job,
    progress_of_a_finished_job_is_not_delivered,
    a_jobs_deliveries_are_listed_exactly_among_thousands,
    a_failing_receiver_is_retried_on_schedule_with_one_webhook_id,
    a_409_is_retried_until_the_wait_node_is_ready,
    not_found_ends_the_delivery_as_failed,
    retry_after_is_honoured,
    a_resume_url_is_delivered_with_its_query_intact,
    signatures_verify_with_the_standardwebhooks_package,
    callback_secrets_and_headers_are_never_returned,
    a_delivery_survives_a_restart_while_the_receiver_is_down,
    cancelling_a_queued_job_is_delivered,
    a_job_lost_with_its_worker_is_delivered_as_failed,
    a_superseded_delivery_is_not_listed_as_failed,
);

/// A `[providers.NAME]` table whose CLI is the fake replaying `capture`, plus `extra` settings.
fn fake_provider(name: &str, capture: &str, extra: &str) -> String {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    format!(
        "[{name}]\ncommand = '{}'\n{extra}env = {{ FAKE_MODE = 'replay', FAKE_CAPTURE = '{capture}', FAKE_CAPTURES = '{}', CLAUDE_CODE_OAUTH_TOKEN = 'sk-ant-oat01-never-shown' }}\n",
        repo.join("providers/tests/fake-cli/fake").display(),
        repo.join("providers/tests/fixtures/cli-captures").display()
    )
}

/// Claude refuses its token on every turn: subscribers to
/// `provider.auth_expired` hear of it once for the incident, not once per
/// refused turn, and `/health/tokens` says it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_is_delivered_once_as_provider_auth_expired() {
    let receiver = Receiver::start(&[]).await;
    let router = support::router(&fake_provider("claude", "claude-code-2.1.197/401.stream.jsonl", ""), "");
    let app = spawn_app_with(Backend::Sqlite, Options { router: Some(router), ..options() }).await;
    let created =
        app.post("/v1/webhooks", json!({"url": receiver.url("/ops"), "events": ["provider.auth_expired"]})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let r = app.post("/v1/jobs/chat", json!({"model": "claude", "prompt": "hi"})).await;
        let job = app.wait_finished(r.body["id"].as_str().unwrap(), Duration::from_secs(30)).await;
        assert_eq!(job["error"]["code"], "auth", "{job}");
    }
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 1, "one delivery per incident, not per refused turn");
    let payload = verify_with_python(&secret, &got[0]);
    assert_eq!(
        (payload["type"].as_str(), payload["provider"].as_str(), payload["status"].as_str()),
        (Some("provider.auth_expired"), Some("claude"), Some("expired")),
        "{payload}"
    );
    assert!(payload["detail"].as_str().unwrap().contains("OAuth token has expired"), "{payload}");
    assert!(payload["fix"].as_str().unwrap().contains("claude setup-token"), "{payload}");
    assert!(!got[0].body.windows(16).any(|w| w == b"sk-ant-oat01-nev"), "the token was sent");
    let tokens = app.get("/health/tokens").await.body;
    assert_eq!(tokens[0]["status"], "expired", "{tokens}");
    app.stop().await;
}

/// A credential configured to expire in two days: the periodic check queues
/// `provider.auth_expiring` once per provider and expiry, however often it
/// runs, and `/health/tokens` counts the days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_expiring_soon_is_delivered_once_as_provider_auth_expiring() {
    let receiver = Receiver::start(&[]).await;
    let expires = chrono::Utc::now() + chrono::TimeDelta::hours(49);
    let expires_text = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let setting = format!("token_expires_at = '{expires_text}'\n");
    let router = support::router(&fake_provider("claude", "claude-code-2.1.197/ok.stream.jsonl", &setting), "");
    let app = spawn_app_with(Backend::Sqlite, Options { router: Some(router.clone()), ..options() }).await;
    let created =
        app.post("/v1/webhooks", json!({"url": receiver.url("/ops"), "events": ["provider.auth_expiring"]})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let webhooks = orch_webhooks::Webhooks::new(app.store.clone(), hooks());
    for _ in 0..3 {
        orch_worker::provider_state::check_expiry(router.providers(), webhooks.as_ref(), 7).await;
    }
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 1, "one delivery per expiry");
    let payload = got[0].json();
    assert_eq!(
        (payload["type"].as_str(), payload["status"].as_str(), payload["days_left"].as_i64()),
        (Some("provider.auth_expiring"), Some("expiring"), Some(2)),
        "{payload}"
    );
    assert_eq!(payload["expires_at"].as_str(), Some(expires_text.as_str()), "{payload}");
    // Outside a 1-day window nothing is queued.
    let other = orch_webhooks::Webhooks::new(app.store.clone(), hooks());
    assert_eq!(orch_worker::provider_state::check_expiry(router.providers(), other.as_ref(), 1).await, 0);

    let tokens = app.get("/health/tokens").await.body;
    let claude = &tokens[0];
    assert_eq!(
        (claude["status"].as_str(), claude["days_left"].as_i64(), claude["expires_from"].as_str()),
        (Some("expiring"), Some(2), Some("token_expires_at")),
        "{claude}"
    );
    assert!(claude["fix"].as_str().unwrap().contains("claude setup-token"), "{claude}");
    app.stop().await;
}

/// n8n answers a resume URL with 409 until its execution is waiting. A flow
/// that reaches its Wait node 7 s after submitting is resumed within about a
/// second of that (not at the schedule's next step, 5 s + 30 s later), and
/// the delivery's log shows every 409 with the start of n8n's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_that_reaches_its_wait_late_waits_for_the_retry_schedule() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Instant::now();
    let ready_at = started + Duration::from_secs(7);
    let log: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let seen = log.clone();
    let app = axum::Router::new().fallback(move || {
        let seen = seen.clone();
        async move {
            use axum::response::IntoResponse;
            let status = if Instant::now() < ready_at { 409 } else { 200 };
            seen.lock().unwrap().push((Instant::now(), status));
            let body =
                if status == 409 { r#"{"code":409,"message":"The execution is running already"}"# } else { "{}" };
            (AxumStatus::from_u16(status).unwrap(), body).into_response()
        }
    });
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await.unwrap();
    });
    // The production schedule: 5 s, 30 s, ...
    let hooks = WebhookConfig { retry_scale: 1.0, ..hooks() };
    let app = spawn_app_with(Backend::Sqlite, Options { webhooks: hooks, ..Default::default() }).await;
    let job = chat_with_callback(&app, json!({"url": format!("http://{addr}/webhook-waiting/42")})).await;
    let list = wait_deliveries(&app, &job, Duration::from_secs(20), finished).await;
    let done = Instant::now();
    assert_eq!(list[0]["status"], "succeeded", "{list:?}");
    assert!(
        done.duration_since(ready_at) < Duration::from_secs(3),
        "resumed {:?} after n8n was ready",
        done.duration_since(ready_at)
    );
    let sent = log.lock().unwrap().clone();
    assert!(sent.iter().filter(|(_, s)| *s == 409).count() >= 4, "{sent:?}");
    let entries = list[0]["log"].as_array().unwrap();
    assert_eq!(entries.len(), sent.len(), "every request is in the log: {entries:?}");
    assert!(entries.iter().all(|e| e["at"].is_string()), "{entries:?}");
    let statuses: Vec<u64> = entries.iter().map(|e| e["response_status"].as_u64().unwrap()).collect();
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 409), "{statuses:?}");
    assert!(entries[0]["body_excerpt"].as_str().unwrap().contains("running already"), "{entries:?}");
    stop.cancel();
    app.stop().await;
}

/// n8n's HTTP Request node refuses relative URLs. Without ORCH_PUBLIC_URL the
/// job's URLs, `Location` and the webhook payload's links (built later by the
/// worker) are absolute, from the address the client used (a proxy's
/// `X-Forwarded-*` included); a hostile `Host` adds nothing to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_n8n_cannot_follow() {
    let receiver = Receiver::start(&[]).await;
    let app = spawn_app_with(Backend::Sqlite, options()).await;
    let client = reqwest::Client::new();
    let body = json!({"prompt": "links please", "callback": {"url": receiver.url("/hook")}});
    let submit = |headers: &[(&str, &str)]| {
        let mut req = client.post(format!("{}/v1/jobs/chat", app.base)).bearer_auth(&app.admin).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    // Directly: the address the client used.
    let r = submit(&[]).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = r.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(location, format!("{}/v1/jobs/{id}", app.base));
    assert_eq!(accepted["result_url"], format!("{}/v1/jobs/{id}/result", app.base));
    let followed = client.get(&location).bearer_auth(&app.admin).send().await.unwrap();
    assert_eq!(followed.status(), StatusCode::OK);
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    let links = got[0].json()["links"].clone();
    assert_eq!(links["status"], format!("{}/v1/jobs/{id}", app.base), "{links}");
    assert_eq!(links["events"], format!("{}/v1/jobs/{id}/events", app.base), "{links}");
    // Behind a proxy.
    let r = submit(&[("x-forwarded-proto", "https"), ("x-forwarded-host", "orch.example.com")]).await.unwrap();
    let accepted: Value = r.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(accepted["status_url"], format!("https://orch.example.com/v1/jobs/{id}"));
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    let payload = got.iter().map(Received::json).find(|p| p["job_id"] == id).unwrap();
    assert_eq!(payload["links"]["result"], format!("https://orch.example.com/v1/jobs/{id}/result"));
    // Hostile values are not used.
    for (name, value) in [
        ("x-forwarded-host", "evil.com/phish?"),
        ("x-forwarded-host", "a@evil.com"),
        ("x-forwarded-proto", "javascript"),
    ] {
        let r = submit(&[(name, value)]).await.unwrap();
        let accepted: Value = r.json().await.unwrap();
        let url = accepted["status_url"].as_str().unwrap();
        assert!(!url.contains("evil") && !url.contains("javascript") && !url.contains('@'), "{url}");
    }
    app.stop().await;

    // ORCH_PUBLIC_URL wins.
    let public = "https://public.example".to_owned();
    let hooks = WebhookConfig { public_url: public.clone(), ..hooks() };
    let app =
        spawn_app_with(Backend::Sqlite, Options { public_url: public, webhooks: hooks, ..Default::default() }).await;
    let r = app.post("/v1/jobs/chat", json!({"prompt": "x"})).await;
    assert!(r.body["status_url"].as_str().unwrap().starts_with("https://public.example/v1/jobs/"), "{}", r.body);
    app.stop().await;
}
