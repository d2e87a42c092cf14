//! Metrics and logs of the real `orch serve`: `/metrics` after a known
//! workload (a chat job on a `cli` provider with a webhook, a batch job with
//! an MCP tool call, a few HTTP requests), JSON logs to a pipe without ANSI
//! escapes and filterable by job id, and `x-request-id` echoed.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::procs::{Procs, orch};

/// One sample of a scrape: family name and labels (sorted) to value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses Prometheus' text format (the parts Orch writes: no escapes in
/// label values other than `\"` and `\\`, no timestamps).
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed: {line}"))),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad labels: {line}"));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => value.push(chars.next().map(|(_, c)| c).unwrap()),
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated value: {line}"),
                }
            };
            map.insert(key.to_owned(), value);
            rest = after[end + 1..].trim_start_matches(',');
        }
        samples.insert((name.to_owned(), map), value);
    }
    samples
}

/// The value of one series, failing with what the family does have.
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    match samples.get(&(name.to_owned(), want)) {
        Some(v) => *v,
        None => {
            let family: Vec<_> = samples.keys().filter(|(n, _)| n == name).map(|(_, l)| l).collect();
            panic!("no {name} {labels:?}; the family has {family:#?}")
        }
    }
}

/// A webhook receiver on loopback answering 204; keeps the event of each delivery.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
                seen.lock().unwrap().push(payload["event"].as_str().unwrap_or("").to_owned());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

struct Served {
    base: String,
    metrics: String,
    admin: String,
    logs: Arc<Mutex<Vec<u8>>>,
    _procs: Procs,
    _dir: tempfile::TempDir,
}

/// `orch serve` on free ports with a `cli` provider (`/bin/echo`), the test
/// MCP server as `t`, JSON logs on a pipe and `ORCH_METRICS_ADDR`.
fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("orch.toml"),
        "[providers.echo]\nkind = 'cli'\ncommand = '/bin/echo'\nargs = ['{prompt}']\noutput = { format = 'text' }\n\
         [routing]\ndefault_model = 'echo'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mcp-config.json"),
        json!({"mcpServers": {"t": {"command": support::test_server()}}}).to_string(),
    )
    .unwrap();
    let (port, metrics_port) = (orch_testkit::free_port(), orch_testkit::free_port());
    let mut child = orch(dir.path(), "sqlite://orch.db")
        .arg("serve")
        .env("ORCH_BIND", format!("127.0.0.1:{port}"))
        .env("ORCH_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("ORCH_LOG_FORMAT", "json")
        .env("ORCH_LOG", "info,orch_worker=debug,orch_providers=debug")
        .env("ORCH_WEBHOOK_ALLOW", "127.0.0.0/8")
        .env("ORCH_POLL_INTERVAL", "20ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let procs = Procs(vec![child]);
    let mut admin = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(k) = line.trim().strip_prefix("orch_") {
            admin = Some(format!("orch_{k}"));
        }
        if line.contains("POST /v1/keys") {
            break;
        }
    }
    Served {
        base: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        admin: admin.expect("first start prints an admin key"),
        logs,
        _procs: procs,
        _dir: dir,
    }
}

async fn wait_until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_json_logs_describe_a_known_workload() {
    orch_mcp::tls::install_crypto_provider();
    let (hook, received) = receiver().await;
    let app = serve();
    let client = reqwest::Client::new();
    let http = client.clone();
    let base = app.base.clone();
    wait_until("the API answering", || {
        let (http, base) = (http.clone(), base.clone());
        async move { http.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let admin = app.admin.clone();
    let post = |path: &str, body: Value| {
        client.post(format!("{}{path}", app.base)).bearer_auth(&admin).header("x-request-id", "req-submit").json(&body)
    };

    // The workload: a chat job with a callback, a batch job with one MCP call.
    let prompt = "observability-prompt-text";
    let chat = post("/v1/jobs/chat", json!({"prompt": prompt, "callback": {"url": hook}})).send().await.unwrap();
    assert_eq!(chat.status(), StatusCode::ACCEPTED);
    assert_eq!(chat.headers()["x-request-id"], "req-submit");
    let chat: Value = chat.json().await.unwrap();
    let batch = post(
        "/v1/jobs/batch",
        json!({"plan": {"nodes": [{"id": "say", "tool": "t.echo", "args": {"message": "hi"}}]}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(batch.status(), StatusCode::ACCEPTED);
    let batch: Value = batch.json().await.unwrap();
    let (chat_id, batch_id) = (chat["id"].as_str().unwrap().to_owned(), batch["id"].as_str().unwrap().to_owned());
    for id in [&chat_id, &batch_id] {
        let url = format!("{}/v1/jobs/{id}", app.base);
        let (client, admin) = (client.clone(), admin.clone());
        wait_until("the job succeeding", || {
            let (client, admin, url) = (client.clone(), admin.clone(), url.clone());
            async move {
                let job: Value = client.get(url).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
                assert!(!["failed", "cancelled"].contains(&job["status"].as_str().unwrap()), "{job}");
                job["status"] == "succeeded"
            }
        })
        .await;
    }
    let got = received.clone();
    wait_until("the webhook delivery", || {
        let got = got.clone();
        async move { got.lock().unwrap().len() == 1 }
    })
    .await;
    // A 404 and an MCP (SSE) session held open during the scrape.
    let missing = client.get(format!("{}/v1/nothing/here", app.base)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let mut sse = client.get(format!("{}/sse/t", app.base)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let first = sse.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: endpoint"), "{first:?}");

    // `/metrics` takes `metrics:read` (or admin); the metrics address takes no key.
    let reader = client.post(format!("{}/v1/keys", app.base)).bearer_auth(&admin);
    let made: Value = reader
        .json(&json!({"name": "scraper", "scopes": ["metrics:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scraper = made["secret"].as_str().unwrap();
    let jobs_key: Value = client
        .post(format!("{}/v1/keys", app.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "jobs", "scopes": ["jobs:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{}/metrics", app.base);
    assert_eq!(client.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let refused = client.get(&url).bearer_auth(jobs_key["secret"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["details"]["required_scope"], "metrics:read");
    let scraped = client.get(&url).bearer_auth(scraper).send().await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(scraped.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = scraped.text().await.unwrap();
    let open = client.get(&app.metrics).send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let open_text = open.text().await.unwrap();
    assert!(open_text.contains("orch_jobs_total{"), "{open_text}");
    drop(sse);

    let m = parse(&text);
    // Jobs: transitions by kind and status, gauges from the store, durations.
    for (kind, status, n) in [
        ("chat", "queued", 1.0),
        ("chat", "running", 1.0),
        ("chat", "succeeded", 1.0),
        ("batch", "queued", 1.0),
        ("batch", "running", 1.0),
        ("batch", "succeeded", 1.0),
        ("delivery", "running", 1.0),
        ("delivery", "succeeded", 1.0),
    ] {
        assert_eq!(value(&m, "orch_jobs_total", &[("kind", kind), ("status", status)]), n, "{kind} {status}");
    }
    for kind in ["chat", "batch", "delivery"] {
        assert_eq!(value(&m, "orch_jobs", &[("kind", kind), ("status", "succeeded")]), 1.0, "{kind}");
        assert_eq!(value(&m, "orch_jobs", &[("kind", kind), ("status", "running")]), 0.0, "{kind}");
        assert_eq!(value(&m, "orch_queue_depth", &[("kind", kind)]), 0.0, "{kind}");
        let count = [("kind", kind), ("status", "succeeded")];
        assert_eq!(value(&m, "orch_job_duration_seconds_count", &count), 1.0, "{kind}");
    }
    assert_eq!(value(&m, "orch_workers", &[]), 1.0);
    assert_eq!(value(&m, "orch_store_up", &[]), 1.0);
    // Nodes by step kind and tool; the MCP server's calls and state.
    let node = [("step", "tool"), ("tool", "t.echo"), ("status", "succeeded")];
    assert_eq!(value(&m, "orch_node_duration_seconds_count", &node), 1.0);
    let inf = [("step", "tool"), ("tool", "t.echo"), ("status", "succeeded"), ("le", "+Inf")];
    assert_eq!(value(&m, "orch_node_duration_seconds_bucket", &inf), 1.0);
    assert_eq!(value(&m, "orch_mcp_calls_total", &[("server", "t"), ("outcome", "ok")]), 1.0);
    assert_eq!(value(&m, "orch_mcp_call_duration_seconds_count", &[("server", "t"), ("outcome", "ok")]), 1.0);
    assert_eq!(value(&m, "orch_mcp_server_state", &[("server", "t"), ("state", "up")]), 1.0);
    assert_eq!(value(&m, "orch_mcp_server_state", &[("server", "t"), ("state", "down")]), 0.0);
    assert!(value(&m, "orch_mcp_server_tools", &[("server", "t")]) >= 7.0);
    assert_eq!(value(&m, "orch_mcp_sessions", &[("transport", "sse")]), 1.0);
    assert_eq!(value(&m, "orch_open_streams", &[]), 1.0);
    // The provider: one turn, its tokens (the generic CLI reports none), no errors, no cooldown.
    assert_eq!(value(&m, "orch_provider_turns_total", &[("provider", "echo"), ("outcome", "ok")]), 1.0);
    let turn = [("provider", "echo"), ("outcome", "ok")];
    assert_eq!(value(&m, "orch_provider_turn_duration_seconds_count", &turn), 1.0);
    for direction in ["input", "output"] {
        assert_eq!(value(&m, "orch_provider_tokens_total", &[("provider", "echo"), ("direction", direction)]), 0.0);
    }
    assert_eq!(value(&m, "orch_provider_cooling_down", &[("provider", "echo")]), 0.0);
    assert!(!m.keys().any(|(name, _)| name == "orch_provider_errors_total" || name == "orch_provider_cooldowns_total"));
    // The webhook.
    let delivered = [("event", "job.succeeded"), ("outcome", "delivered")];
    assert_eq!(value(&m, "orch_webhook_deliveries_total", &delivered), 1.0);
    // HTTP by route template, never the raw path.
    let requests = |method: &str, route: &str, status: &str| {
        value(&m, "orch_http_requests_total", &[("method", method), ("route", route), ("status", status)])
    };
    assert_eq!(requests("POST", "/v1/jobs/chat", "202"), 1.0);
    assert_eq!(requests("POST", "/v1/jobs/batch", "202"), 1.0);
    assert_eq!(requests("GET", "unmatched", "404"), 1.0);
    assert_eq!(requests("GET", "/metrics", "401"), 1.0);
    assert_eq!(requests("GET", "/metrics", "403"), 1.0);
    assert_eq!(requests("POST", "/v1/keys", "201"), 2.0);
    assert_eq!(requests("GET", "/sse/{server}", "200"), 1.0);
    assert!(requests("GET", "/v1/jobs/{id}", "200") >= 2.0);
    let timed = [("method", "POST"), ("route", "/v1/jobs/chat"), ("le", "+Inf")];
    assert_eq!(value(&m, "orch_http_request_duration_seconds_bucket", &timed), 1.0);
    for family in ["orch_http_request_duration_seconds", "orch_job_duration_seconds", "orch_node_duration_seconds"] {
        assert!(text.contains(&format!("# TYPE {family} histogram")), "{family} is not a histogram");
    }
    // No label carries a job id, a prompt or a key.
    for (_, labels) in m.keys() {
        for v in labels.values() {
            assert!(!v.contains(&chat_id) && !v.contains(&batch_id), "a job id is a label: {labels:?}");
            assert!(!v.contains(prompt) && !v.contains("orch_"), "a prompt or key is a label: {labels:?}");
            assert!(!v.contains("/v1/nothing"), "a raw path is a label: {labels:?}");
        }
    }

    // The logs: JSON lines, no ANSI escape, each job's lines carry its id.
    let logs = String::from_utf8(app.logs.lock().unwrap().clone()).unwrap();
    assert!(!logs.contains('\u{1b}'), "an ANSI escape in logs to a pipe:\n{logs}");
    assert!(!logs.contains(prompt), "a prompt was logged:\n{logs}");
    assert!(!logs.contains(&app.admin) && !logs.contains(scraper), "a key was logged");
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let of_job = |id: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| {
                l["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["job_id"] == id))
                    || l["fields"]["job_id"] == id
            })
            .collect()
    };
    let message = |l: &Value| l["fields"]["message"].as_str().unwrap_or("").to_owned();
    let chat_lines = of_job(&chat_id);
    let accepted = chat_lines.iter().find(|l| message(l) == "job accepted").expect("a job accepted line");
    assert_eq!(accepted["span"]["request_id"], "req-submit", "{accepted}");
    assert_eq!(accepted["span"]["route"], "/v1/jobs/chat", "{accepted}");
    let turn = chat_lines.iter().find(|l| message(l) == "turn finished").expect("a turn line");
    assert_eq!(turn["span"]["provider"], "echo", "{turn}");
    assert!(chat_lines.iter().any(|l| message(l) == "job attempt finished" && l["fields"]["status"] == "succeeded"));
    let batch_lines = of_job(&batch_id);
    let node = batch_lines.iter().find(|l| message(l) == "node finished").expect("a node line");
    assert_eq!((&node["span"]["node_id"], &node["span"]["server"]), (&json!("say"), &json!("t")), "{node}");
    assert!(chat_lines.iter().all(|l| !of_job(&batch_id).contains(l)), "a line carries both jobs");
}

/// A caller's `x-request-id` comes back; without one, Orch makes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_is_echoed_or_made() {
    let app = support::spawn_app(support::Backend::Sqlite).await;
    let sent = app.client.get(format!("{}/health", app.base)).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(sent.headers()["x-request-id"], "abc-123");
    let missing =
        app.client.get(format!("{}/v1/nothing", app.base)).header("x-request-id", "n-1").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["x-request-id"], "n-1");
    let made = app.client.get(format!("{}/health", app.base)).send().await.unwrap();
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id} is not a UUID");
    let again = app.client.get(format!("{}/health", app.base)).send().await.unwrap();
    assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), id);
    app.stop().await;
}

/// Text logs to a pipe or file are plain: the colours were on whatever stderr was.
#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let port = orch_testkit::free_port();
    let mut child = orch(dir.path(), "sqlite://orch.db")
        .arg("serve")
        .env("ORCH_BIND", format!("127.0.0.1:{port}"))
        .env("ORCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _procs = Procs(vec![child]);
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Orch API listening") {
            break;
        }
    }
    assert!(seen.contains(" INFO "), "{seen}");
    assert!(!seen.contains('\u{1b}'), "ANSI escapes in logs to a pipe:\n{seen:?}");
}
