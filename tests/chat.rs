//! Chat end to end: jobs on providers whose CLI is the fake replaying real
//! Claude and Gemini captures, routing and fallback, cooldown, failures a user
//! must understand, and the OpenAI-compatible endpoints (also through the
//! official `openai` Python client).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Options, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `[providers.NAME]` table whose CLI is the fake replaying `capture`.
fn fake(name: &str, kind: &str, capture: &str) -> String {
    let fake = repo().join("providers/tests/fake-cli/fake");
    let captures = repo().join("providers/tests/fixtures/cli-captures");
    format!(
        "[{name}]\nkind = '{kind}'\ncommand = '{}'\nenv = {{ FAKE_MODE = 'replay', FAKE_CAPTURE = '{capture}', FAKE_CAPTURES = '{}' }}\n",
        fake.display(),
        captures.display()
    )
}

const CLAUDE_OK: &str = "claude-code-2.1.197/ok.stream.jsonl";
const CLAUDE_429: &str = "claude-code-2.1.197/429.stream.jsonl";
const CLAUDE_401: &str = "claude-code-2.1.197/401.stream.jsonl";
const GEMINI_OK: &str = "gemini-cli-0.61.0/ok.stream.jsonl";
const GEMINI_401: &str = "gemini-cli-0.61.0/401.stream.jsonl";

async fn app_with(providers: &str, routing: &str) -> support::TestApp {
    let router = support::router(providers, routing);
    spawn_app_with(Backend::Sqlite, Options { router: Some(router), max_body: 4 << 20, ..Default::default() }).await
}

async fn run_chat(app: &support::TestApp, body: Value) -> (Value, Value) {
    let r = app.post("/v1/jobs/chat", body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&id, WAIT).await;
    let result = app.get(&format!("/v1/jobs/{id}/result")).await.body;
    (job, result)
}

#[tokio::test]
async fn a_claude_turn_returns_text_usage_and_route() {
    let app = app_with(&fake("claude", "claude", CLAUDE_OK), "").await;
    let (job, result) = run_chat(&app, json!({"model": "claude", "prompt": "say hi"})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &result["result"];
    assert_eq!(result["text"], "FAKE-REPLY: hello from loopback");
    assert_eq!(result["routed_to"], "claude/claude-sonnet-5", "{result}");
    assert_eq!(result["provider"], "claude");
    assert_eq!(result["route_reason"], "model \"claude\" requested; ran on claude");
    assert!(result["usage"]["input_tokens"].as_u64().unwrap() > 0, "{result}");
    // The routing decision and the streamed text are on the job's event log.
    let events = app.events(job["id"].as_str().unwrap(), None).await;
    let progress: Vec<&Value> =
        events.iter().filter(|(_, kind, _)| kind == "progress").map(|(_, _, d)| &d["data"]).collect();
    assert!(progress.iter().any(|p| p["type"] == "routing" && p["chain"] == json!(["claude"])), "{progress:?}");
    assert!(
        progress.iter().any(|p| p["type"] == "text" && p["text"] == "FAKE-REPLY: hello from loopback"),
        "{progress:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn auto_falls_back_past_a_usage_limit_and_cools_the_provider_down() {
    let providers = format!("{}{}", fake("claude", "claude", CLAUDE_429), fake("gemini", "gemini", GEMINI_OK));
    let app = app_with(&providers, "[table]\nreasoning = ['claude', 'gemini']\n").await;
    let (job, result) =
        run_chat(&app, json!({"model": "auto", "task_type": "reasoning", "prompt": "why is the sky blue?"})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &result["result"];
    assert_eq!(result["text"], "FAKE-GEMINI: hello from loopback");
    assert_eq!(result["provider"], "gemini");
    let reason = result["route_reason"].as_str().unwrap();
    assert!(reason.starts_with("auto: task type reasoning (given); chain claude → gemini"), "{reason}");
    assert!(reason.contains("claude failed (usage_limit), fell back; ran on gemini"), "{reason}");
    assert_eq!(result["fallbacks"][0]["target"], "claude");
    assert_eq!(result["fallbacks"][0]["error"]["kind"]["type"], "usage_limit");

    // Claude is cooling down until its reset time, and says why.
    let providers = app.get("/v1/providers").await;
    assert_eq!(providers.status, StatusCode::OK, "{:?}", providers.body);
    let claude = providers.body.as_array().unwrap().iter().find(|p| p["name"] == "claude").unwrap().clone();
    assert!(claude["cooldown_until"].is_string(), "{claude}");
    assert_eq!(claude["last_error"]["kind"]["type"], "usage_limit", "{claude}");
    assert_eq!(claude["cli"]["status"], "found", "{claude}");
    assert_eq!(claude["limit"], 2);

    // The next turn skips it without starting the CLI: the reason says cooling down.
    let (_, result) = run_chat(&app, json!({"task_type": "reasoning", "prompt": "and at sunset?"})).await;
    assert_eq!(result["result"]["provider"], "gemini");
    assert!(
        result["result"]["fallbacks"][0]["error"]["message"].as_str().unwrap().contains("cooling down"),
        "{result}"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_provider_failing_fails_the_job_with_each_reason() {
    let providers = format!("{}{}", fake("claude", "claude", CLAUDE_401), fake("gemini", "gemini", GEMINI_401));
    let app = app_with(&providers, "[table]\ngeneral = ['claude', 'gemini']\n").await;
    let long = "Tell me about lighthouses and the people who kept them, at length. ".repeat(5);
    let (job, _) = run_chat(&app, json!({"prompt": long, "max_attempts": 3})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "providers_exhausted");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("every provider failed: claude: "), "{message}");
    assert!(message.contains("; gemini: "), "{message}");
    // Auth failures need a human: the job is not retried.
    assert_eq!(job["attempts"], 1, "{job}");
    app.stop().await;
}

#[tokio::test]
async fn a_missing_cli_fails_with_its_install_hint() {
    let app = app_with("[claude]\ncommand = '/nonexistent/bin/claude'\n", "").await;
    let (job, _) = run_chat(&app, json!({"model": "claude", "prompt": "hi"})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "not_installed");
    assert!(job["error"]["message"].as_str().unwrap().contains("npm i -g @anthropic-ai/claude-code"), "{job}");
    assert_eq!(job["attempts"], 1);
    app.stop().await;
}

#[tokio::test]
async fn bad_chat_requests_say_what_is_allowed() {
    let providers = format!("{}{}", fake("claude", "claude", CLAUDE_OK), "[claude.limits]\nconcurrency = 1\n");
    let app = app_with(&providers.replace("[claude]\n", "[claude]\nmodels = ['sonnet', 'opus']\n"), "").await;
    let r = app.post("/v1/jobs/chat", json!({"model": "claude/haiku", "prompt": "x"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["code"], "unknown_model");
    assert_eq!(r.body["error"]["details"]["field"], "model");
    assert_eq!(r.body["error"]["details"]["configured"], json!(["auto", "claude", "claude/sonnet", "claude/opus"]));

    let big = "x".repeat(600 * 1024);
    let r = app.post("/v1/jobs/chat", json!({"model": "claude", "prompt": big})).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "prompt_too_large");
    assert_eq!(r.body["error"]["details"]["field"], "messages");

    let r = app
        .post("/v1/chat/completions", json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["code"], "unknown_model");
    let tools =
        json!({"model": "claude", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]});
    let r = app.post("/v1/chat/completions", tools).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["details"]["field"], "tools[0].function");
    app.stop().await;
}

#[tokio::test]
async fn openai_compatible_completions_and_models() {
    let app = app_with(&fake("claude", "claude", CLAUDE_OK), "").await;
    let models = app.get("/v1/models").await.body;
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["auto", "claude"]);
    assert_eq!(models["object"], "list");

    let body = json!({"model": "claude", "temperature": 0.2, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "say hi"}]},
    ]});
    let r = app.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["object"], "chat.completion");
    assert_eq!(
        r.body["choices"][0]["message"],
        json!({"role": "assistant", "content": "FAKE-REPLY: hello from loopback"})
    );
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(r.body["model"], "claude/claude-sonnet-5");
    let usage = &r.body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );
    let job_id = r.headers["x-orch-job-id"].to_str().unwrap().to_owned();
    assert_eq!(r.body["orch"]["job_id"], job_id);
    // It was a real job, stored like any other.
    let job = app.get(&format!("/v1/jobs/{job_id}")).await.body;
    assert_eq!(job["metadata"], json!({"source": "openai"}));

    let mut streaming = body;
    streaming["stream"] = json!(true);
    let response = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&app.admin)
        .json(&streaming)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"), "{text}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "FAKE-REPLY: hello from loopback");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last["usage"]["completion_tokens"].is_u64(), "{last}");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_completion_is_an_http_error_naming_the_cause() {
    let app = app_with(&fake("claude", "claude", CLAUDE_429), "").await;
    let r = app
        .post("/v1/chat/completions", json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "usage_limit");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("claude"), "{:?}", r.body);
    app.stop().await;
}

#[tokio::test]
async fn a_completion_abandoned_by_its_caller_is_cancelled() {
    // The fake answers after 5 s; the caller gives up after 300 ms.
    let providers =
        fake("claude", "claude", CLAUDE_OK).replace("FAKE_MODE = 'replay'", "FAKE_MODE = 'slow', FAKE_DELAY = '5'");
    let app = app_with(&providers, "").await;
    let body = json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]});
    let sent = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&app.admin)
        .json(&body)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(sent.is_err(), "the request should have timed out");
    let jobs = app.get("/v1/jobs?kind=chat").await.body;
    let id = jobs["jobs"][0]["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    app.stop().await;
}

/// Runs tests/python/`script` with the pinned packages (`scripts/test`
/// installs them into target/pyenv) against `app`, and returns its output lines
/// once it exited successfully.
async fn run_python(app: &support::TestApp, script: &str, env: &[(&str, &str)]) -> Vec<String> {
    let python = repo().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/test` once, or python3 -m venv target/pyenv && target/pyenv/bin/pip install -r tests/python/requirements.txt",
        python.display()
    );
    let out = tokio::process::Command::new(python)
        .arg(repo().join("tests/python").join(script))
        .env("ORCH_BASE_URL", format!("{}/v1", app.base))
        .env("ORCH_API_KEY", &app.admin)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(str::to_owned).collect()
}

/// The official OpenAI Python client against Orch as its base URL, plain and
/// streaming (tests/python/openai_client.py; `scripts/test` installs the
/// client into target/pyenv).
#[tokio::test]
async fn the_openai_python_client_works_against_orch() {
    let app = app_with(&fake("claude", "claude", CLAUDE_OK), "").await;
    let lines = run_python(&app, "openai_client.py", &[]).await;
    assert_eq!(
        lines,
        [
            "models: auto,claude",
            "plain: FAKE-REPLY: hello from loopback",
            "stream: FAKE-REPLY: hello from loopback",
            "usage: yes",
            "error: 400 unknown_model",
        ]
    );
    app.stop().await;
}

/// Two workers on one Redis: a provider with `concurrency = 1` runs one turn
/// at a time across both, not one per worker.
#[tokio::test]
async fn the_concurrency_limit_holds_across_workers_on_redis() {
    let handle = support::fresh_store(Backend::Redis).await;
    let providers = fake("claude", "claude", CLAUDE_OK)
        .replace("FAKE_MODE = 'replay'", "FAKE_MODE = 'slow', FAKE_DELAY = '1'")
        + "[claude.limits]\nconcurrency = 1\n";
    let config: orch_providers::ProvidersConfig = toml::from_str(&providers).unwrap();
    let worker = |name: &str| {
        let limit = orch_worker::limit::StoreLimit::new(handle.store.clone(), name.to_owned());
        let dir = tempfile::tempdir().unwrap().keep();
        orch_providers::Router::from_config_shared(&config, Default::default(), &dir, std::sync::Arc::new(limit))
            .unwrap()
    };
    let (one, two) = (worker("w1"), worker("w2"));
    let request = orch_providers::TurnRequest { prompt: "hi".into(), ..Default::default() };
    let control = orch_providers::TurnControl::default();
    let route = one.route(Some("claude"), None, "hi").unwrap();
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(one.run(&route, &request, &control), two.run(&route, &request, &control));
    let took = started.elapsed();
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    assert!(took >= Duration::from_millis(1_900), "the two turns overlapped: {took:?}");
    // The slot is free again: a third turn starts at once.
    let started = std::time::Instant::now();
    one.run(&route, &request, &control).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1_800), "{:?}", started.elapsed());
}

#[tokio::test]
async fn usage_counts_turns_tokens_cost_and_latency_per_group() {
    let providers = format!("{}{}", fake("claude", "claude", CLAUDE_OK), fake("gemini", "gemini", GEMINI_401));
    let app = app_with(&providers, "").await;
    let reader = support::make_key(app.store.as_ref(), &["jobs:read", "jobs:write"]).await;
    for (key, model) in [(&app.admin, "claude"), (&app.admin, "claude"), (&reader, "claude"), (&reader, "gemini")] {
        let r = app
            .call(reqwest::Method::POST, "/v1/jobs/chat", Some(key), Some(json!({"model": model, "prompt": "hi"})))
            .await;
        app.wait_finished(r.body["id"].as_str().unwrap(), WAIT).await;
    }
    let report = app.get("/v1/usage").await;
    assert_eq!(report.status, StatusCode::OK, "{:?}", report.body);
    let groups = report.body["groups"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g["group"].as_str().unwrap()).collect();
    assert_eq!(names, ["claude", "gemini"]);
    let claude = &groups[0];
    assert_eq!((claude["turns"].as_u64(), claude["failed"].as_u64()), (Some(3), Some(0)));
    assert!(claude["input_tokens"].as_u64().unwrap() > 0 && claude["output_tokens"].as_u64().unwrap() > 0, "{claude}");
    assert!(claude["cost_usd"].as_f64().is_some(), "{claude}");
    assert!(claude["latency_ms"]["p50"].as_u64().unwrap() <= claude["latency_ms"]["p99"].as_u64().unwrap());
    assert_eq!((groups[1]["turns"].as_u64(), groups[1]["failed"].as_u64()), (Some(1), Some(1)));

    let by_model = app.get("/v1/usage?group_by=model").await.body;
    assert_eq!(by_model["groups"][0]["group"], "claude/claude-sonnet-5");
    // A key that is not admin sees its own turns only.
    let own = app.call(reqwest::Method::GET, "/v1/usage?group_by=key", Some(&reader), None).await.body;
    assert_eq!(own["groups"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["groups"][0]["turns"], 2);
    // A range before the turns is empty; bad input names the field.
    let empty = app.get("/v1/usage?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z").await.body;
    assert_eq!(empty["groups"], json!([]));
    let bad = app.get("/v1/usage?group_by=day").await;
    assert_eq!(
        (bad.status, bad.body["error"]["details"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("group_by"))
    );
    let bad = app.get("/v1/usage?from=yesterday").await;
    assert_eq!(bad.body["error"]["details"]["field"], "from");
    app.stop().await;
}

#[tokio::test]
async fn token_health_says_which_credentials_are_missing_or_expired() {
    let providers = format!(
        "{}{}[qwen]\ncommand = '/nonexistent/qwen'\nenv = {{ HOME = '/nonexistent' }}\n",
        fake("claude", "claude", CLAUDE_401).replace(
            "FAKE_MODE = 'replay'",
            "FAKE_MODE = 'replay', CLAUDE_CODE_OAUTH_TOKEN = 'sk-ant-oat01-secret-token'"
        ),
        fake("gemini", "gemini", GEMINI_OK)
            .replace("FAKE_MODE = 'replay'", "FAKE_MODE = 'replay', GEMINI_API_KEY = 'gemini-secret-key'"),
    );
    let app = app_with(&providers, "").await;
    let tokens = app.get("/health/tokens").await;
    assert_eq!(tokens.status, StatusCode::OK, "{:?}", tokens.body);
    let status =
        |body: &Value, name: &str| body.as_array().unwrap().iter().find(|t| t["provider"] == name).unwrap().clone();
    let claude = status(&tokens.body, "claude");
    assert_eq!((claude["status"].as_str(), claude["source"].as_str()), (Some("ok"), Some("CLAUDE_CODE_OAUTH_TOKEN")));
    assert_eq!(status(&tokens.body, "qwen")["status"], "missing");
    assert!(status(&tokens.body, "qwen")["fix"].as_str().unwrap().contains("qwen"));

    // Claude refuses the token: now it shows as expired, with how to renew it.
    let (job, _) = run_chat(&app, json!({"model": "claude", "prompt": "hi"})).await;
    assert_eq!(job["error"]["code"], "auth");
    let tokens = app.get("/health/tokens").await.body;
    let claude = status(&tokens, "claude");
    assert_eq!(claude["status"], "expired", "{claude}");
    assert!(claude["detail"].as_str().unwrap().contains("OAuth token has expired"), "{claude}");
    assert!(claude["fix"].as_str().unwrap().contains("claude setup-token"), "{claude}");
    assert_eq!(status(&tokens, "gemini")["status"], "ok");
    assert!(!tokens.to_string().contains("secret"), "a credential value was shown: {tokens}");
    app.stop().await;
}

/// Two workers on one Redis: a usage limit one worker met makes the other
/// skip the provider without starting its CLI, and an API process with no
/// worker of its own shows the cooldown and the error in `/v1/providers`.
#[tokio::test]
async fn a_cooldown_one_worker_met_makes_another_skip_the_provider() {
    let app = spawn_app_with(
        Backend::Redis,
        Options {
            worker: false,
            router: Some(support::router(&fake("claude", "claude", CLAUDE_OK), "")),
            ..Default::default()
        },
    )
    .await;
    let pids = tempfile::NamedTempFile::new().unwrap();
    let worker = |capture: &str| {
        let providers = fake("claude", "claude", capture)
            .replace("FAKE_MODE = 'replay'", &format!("FAKE_MODE = 'replay', FAKE_PIDS = '{}'", pids.path().display()));
        let router = support::router(&providers, "");
        router.providers().share_state(orch_worker::provider_state::StoreState::new(app.store.clone()));
        router
    };
    let (limited, other) = (worker(CLAUDE_429), worker(CLAUDE_OK));
    let request = orch_providers::TurnRequest { prompt: "hi".into(), ..Default::default() };
    let control = orch_providers::TurnControl::default();
    let route = limited.route(Some("claude"), None, "hi").unwrap();
    let err = limited.run(&route, &request, &control).await.unwrap_err();
    assert_eq!(err.code(), "usage_limit", "{err}");
    let started = || std::fs::read_to_string(pids.path()).unwrap().lines().count();
    assert_eq!(started(), 1);

    // The other worker never met the limit, yet refuses at once without starting the CLI.
    let err = other.run(&route, &request, &control).await.unwrap_err();
    assert!(err.message.contains("cooling down"), "{err}");
    assert_eq!(started(), 1, "the second worker started the CLI");

    let providers = app.get("/v1/providers").await.body;
    let claude = providers.as_array().unwrap().iter().find(|p| p["name"] == "claude").unwrap().clone();
    assert!(claude["cooldown_until"].is_string(), "{claude}");
    assert_eq!(claude["last_error"]["kind"]["type"], "usage_limit", "{claude}");
    assert!(claude["last_error_at"].is_string(), "{claude}");
    app.stop().await;
}

/// n8n's OpenAI Chat Model node, played by the `openai` Python client:
/// each call resends the whole conversation with an `X-Session-ID` header.
/// The provider gets the conversation as sent (no second copy from the
/// session), and the session records each question and answer once.
#[tokio::test]
async fn an_openai_client_resending_history_records_each_turn_once_in_its_session() {
    let app = spawn_app_with(Backend::Sqlite, Options::default()).await;
    let lines = run_python(&app, "openai_session.py", &[("ORCH_SESSION", "n8n-flow-1")]).await;
    assert_eq!(lines[0], "first: first question");
    // Echo answers with its prompt: the history appears once, as the client sent it.
    assert_eq!(lines[1].matches("User: first question").count(), 1, "{}", lines[1]);
    assert!(lines[1].ends_with("User: second question"), "{}", lines[1]);

    let session = app.get("/v1/sessions/n8n-flow-1").await;
    assert_eq!(session.status, StatusCode::OK, "{:?}", session.body);
    let messages = session.body["messages"].as_array().unwrap();
    let turns: Vec<(&str, &str)> =
        messages.iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
    assert_eq!(turns.len(), 4, "{turns:?}");
    assert_eq!(turns[..3], [("user", "first question"), ("assistant", "first question"), ("user", "second question")]);
    assert_eq!(turns[3].0, "assistant");
    let memory = app.get("/v1/sessions/n8n-flow-1/memory").await;
    assert_eq!(memory.status, StatusCode::OK);
    let note = memory.body.as_str().map(str::to_owned).unwrap_or_else(|| memory.body.to_string());
    assert_eq!(note.matches("second question").count(), 2, "the question and the echoed answer: {note}");

    // A different session_id field and header is refused, naming the field.
    let r = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&app.admin)
        .header("x-session-id", "a")
        .json(&json!({"model": "echo", "session_id": "b", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["field"], "session_id", "{body}");
    app.stop().await;
}

/// A `cli` provider running a script: offered functions, a fixed JSON call of
/// `function`, then (once a tool result is in the conversation) a final text;
/// without functions, "Plain answer."
fn tool_calling_cli(dir: &std::path::Path, function: &str) -> String {
    let script = dir.join("agent.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *'Tool result:'*) echo '{{\"content\": \"The echo said: ping from n8n\"}}' ;;\n  *'runs functions for you'*) echo 'Calling it.' ; echo '```json' ; echo '{{\"tool_calls\": [{{\"name\": \"{function}\", \"arguments\": {{\"message\": \"ping from n8n\"}}}}]}}' ; echo '```' ;;\n  *) echo 'Plain answer.' ;;\nesac\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "[agent]\nkind = 'cli'\ncommand = '{}'\nargs = ['{{prompt}}', '--system={{system}}']\noutput = {{ format = 'text' }}\n",
        script.display()
    )
}

fn n8n_body(name: &str) -> Value {
    let path = format!("/work/shared/fixtures/n8n-requests/{name}.request.json");
    let path = std::env::var("ORCH_N8N_FIXTURES").map(|d| format!("{d}/{name}.request.json")).unwrap_or(path);
    let mut body: Value =
        serde_json::from_str::<Value>(&std::fs::read_to_string(&path).expect("n8n fixture")).unwrap()["body"].take();
    body["model"] = json!("agent");
    body
}

/// n8n's AI Agent with Orch as its OpenAI Chat Model (Responses API off):
/// the recorded bodies get `tool_calls` (valid arguments, `call_` ids,
/// `finish_reason: tool_calls`), then after the tool result a text, streamed
/// and not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_agent_cannot_use_orch_as_its_model() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(&tool_calling_cli(dir.path(), "everything.echo"), "default_model = 'agent'\n").await;
    let r = app.post("/v1/chat/completions", n8n_body("01-agent-chat-completions-1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let choice = &r.body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{}", r.body);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
    assert_eq!((call["type"].as_str(), call["function"]["name"].as_str()), (Some("function"), Some("everything.echo")));
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"message": "ping from n8n"}));
    let r = app.post("/v1/chat/completions", n8n_body("01-agent-chat-completions-2")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop", "{}", r.body);
    assert_eq!(r.body["choices"][0]["message"]["content"], "The echo said: ping from n8n");

    // Streamed, as the Chat Trigger's agent asks.
    let body = n8n_body("05-agent-chat-completions-stream-1");
    let text = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&app.admin)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let call = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(
        (call["index"].as_u64(), call["function"]["name"].as_str()),
        (Some(0), Some("everything.echo")),
        "{text}"
    );
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"), "{text}");
    let usage = chunks.last().unwrap();
    assert!(usage["choices"].as_array().unwrap().is_empty() && usage["usage"].is_object(), "{text}");
    app.stop().await;
}

/// The typed events of a Responses API stream: `event:` names and `data:` objects.
async fn responses_stream(app: &support::TestApp, body: &Value) -> Vec<(String, Value)> {
    let text = reqwest::Client::new()
        .post(format!("{}/v1/responses", app.base))
        .bearer_auth(&app.admin)
        .json(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut events = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}\n{text}"));
            assert_eq!(data["type"], name.as_str(), "{text}");
            assert_eq!(data["sequence_number"], events.len(), "{text}");
            events.push((std::mem::take(&mut name), data));
        }
    }
    events
}

/// n8n's OpenAI Chat Model node on its defaults calls `POST /v1/responses`
/// (issue 15 defect 2): the recorded bodies of its AI Agent (a tool call,
/// then the answer after the tool result), its Basic LLM Chain (no tools) and
/// its streaming agent get answers n8n parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n8n_defaults_hit_a_404() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(&tool_calling_cli(dir.path(), "everything.echo"), "default_model = 'agent'\n").await;
    let r = app.post("/v1/responses", n8n_body("02-agent-responses-1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["object"].as_str(), r.body["status"].as_str()),
        (Some("response"), Some("completed")),
        "{}",
        r.body
    );
    assert!(r.body["id"].as_str().unwrap().starts_with("resp_") && r.body["error"].is_null(), "{}", r.body);
    let call = &r.body["output"][0];
    assert_eq!(
        (call["type"].as_str(), call["name"].as_str()),
        (Some("function_call"), Some("everything.echo")),
        "{}",
        r.body
    );
    assert!(call["call_id"].as_str().unwrap().starts_with("call_") && call["status"] == "completed", "{call}");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"message": "ping from n8n"}));
    assert_eq!(r.body["output"].as_array().unwrap().len(), 1, "{}", r.body);
    let usage = &r.body["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
    );
    assert_eq!(r.body["tools"].as_array().unwrap().len(), 21);

    let r = app.post("/v1/responses", n8n_body("02-agent-responses-2")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let message = &r.body["output"][0];
    assert_eq!(
        (message["type"].as_str(), message["role"].as_str()),
        (Some("message"), Some("assistant")),
        "{}",
        r.body
    );
    assert_eq!(message["content"][0]["type"], "output_text");
    assert_eq!(message["content"][0]["text"], "The echo said: ping from n8n");

    let r = app.post("/v1/responses", n8n_body("03-llm-chain-responses-1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["output"][0]["content"][0]["text"], "Plain answer.", "{}", r.body);
    assert_eq!(r.body["model"], "agent", "{}", r.body);

    // Streamed, as the Chat Trigger's agent asks: a call, then text.
    let names = |events: &[(String, Value)]| events.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let events = responses_stream(&app, &n8n_body("04-agent-responses-stream-1")).await;
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(events[2].1["item"]["arguments"], "");
    let done = &events[6].1["response"];
    assert_eq!(done["output"][0]["name"], "everything.echo", "{done}");
    assert_eq!(done["output"][0]["arguments"], events[4].1["arguments"]);
    assert_eq!(done["output"][0]["id"], events[3].1["item_id"]);
    let events = responses_stream(&app, &n8n_body("04-agent-responses-stream-2")).await;
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(events[4].1["delta"], "The echo said: ping from n8n");
    assert_eq!(events[8].1["response"]["output"][0]["content"][0]["text"], "The echo said: ping from n8n");
    assert!(events[8].1["response"]["usage"]["output_tokens"].is_u64());

    // Streamed without tools: the text as it comes, then the same end.
    let mut body = n8n_body("03-llm-chain-responses-1");
    body["stream"] = json!(true);
    let events = responses_stream(&app, &body).await;
    assert_eq!(events.last().unwrap().0, "response.completed", "{events:?}");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Plain answer.");
    app.stop().await;
}

/// What the Responses API refuses, in the one error shape naming the field.
#[tokio::test]
async fn bad_responses_requests_say_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let broken = "[broken]\nkind = 'cli'\ncommand = '/nonexistent/orch-test-cli'\nargs = ['{prompt}']\noutput = { format = 'text' }\n";
    let app = app_with(&format!("{}{broken}", tool_calling_cli(dir.path(), "f")), "default_model = 'agent'\n").await;
    for (body, status, field) in [
        (json!({"model": "agent", "input": "x", "previous_response_id": "resp_1"}), 422, "previous_response_id"),
        (json!({"model": "agent", "input": [{"type": "item_reference", "id": "msg_1"}]}), 422, "input[0].type"),
        (
            json!({"model": "agent", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            422,
            "input[0].content",
        ),
        (json!({"model": "agent", "input": 3}), 422, "input"),
        (json!({"model": "agent", "input": "x", "text": {"format": {"type": "json_schema"}}}), 422, "text.format"),
        (json!({"model": "agent", "input": "x", "metadata": {"a": 1}}), 422, "metadata.a"),
        (json!({"model": "agent", "input": "x", "tools": [{"type": "web_search"}]}), 422, "tools[0].type"),
        (
            json!({"model": "agent", "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}}),
            422,
            "tool_choice",
        ),
        (json!({"input": "x"}), 422, "body"),
    ] {
        let r = app.post("/v1/responses", body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_field", "{body}: {}", r.body);
        assert_eq!(r.body["error"]["details"]["field"], field, "{body}: {}", r.body);
    }
    let r = app.post("/v1/responses", json!({"model": "gpt-4o", "input": "x"})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_model")),
        "{}",
        r.body
    );
    // A failed turn: an HTTP error, or streamed, `response.failed` then an `error` event the clients raise.
    let r = app.post("/v1/responses", json!({"model": "broken", "input": "x"})).await;
    assert_eq!(r.body["error"]["code"], "not_installed", "{}", r.body);
    let events = responses_stream(&app, &json!({"model": "broken", "input": "x", "stream": true})).await;
    let kinds: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(kinds, ["response.created", "response.in_progress", "response.failed", "error"], "{events:?}");
    assert_eq!(events[2].1["response"]["status"], "failed");
    assert_eq!(events[2].1["response"]["error"]["code"], "not_installed");
    assert_eq!(
        (events[3].1["code"].as_str(), events[3].1["error"]["code"].as_str()),
        (Some("not_installed"), Some("not_installed"))
    );
    app.stop().await;
}

/// The official `openai` Python client's `responses.create` (plain, streamed,
/// with a function tool) and `responses.stream` against Orch
/// (tests/python/openai_responses.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_uses_the_responses_api() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(&tool_calling_cli(dir.path(), "everything__echo"), "default_model = 'agent'\n").await;
    let lines = run_python(&app, "openai_responses.py", &[("ORCH_MODEL", "agent")]).await;
    assert_eq!(
        lines,
        [
            "plain: completed Plain answer. usage=True metadata={'run': 'py'}",
            "stream events: response.created,response.in_progress,response.output_item.added,response.content_part.added,response.output_text.delta,response.output_text.done,response.content_part.done,response.output_item.done,response.completed",
            "stream: Plain answer. final=Plain answer. numbered=True",
            "call: function_call everything__echo {'message': 'ping from n8n'} True",
            "answer: message The echo said: ping from n8n",
            "stream call: response.function_call_arguments.done,response.output_item.done,response.completed everything__echo {'message': 'ping from n8n'}",
            "error: 400 unknown_model",
            "previous: 422 previous_response_id",
        ]
    );
    app.stop().await;
}
