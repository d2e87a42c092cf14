//! The LLM planner end to end: batch jobs with a plain-language `request`,
//! planned by a provider whose CLI prints recorded answers in order
//! (`tests/fake-planner/answers`, which also keeps each prompt it got), then
//! run against the project's test MCP server. Covers the repair loop (invalid
//! JSON, a tool that is not allowed, a cycle), answers wrapped in prose, giving
//! up, dry runs and previews, the plan cache, which tools are offered, and
//! `batch_execute` over MCP.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use orch_api::servers::McpSettings;
use orch_mcp::model::{CallToolRequestParams, CallToolResult};
use reqwest::StatusCode;
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use support::{Backend, Options, TestApp, spawn_app_with, test_server};

const WAIT: Duration = Duration::from_secs(30);

/// Two independent tool calls and a merge: what a good planner answers.
const GOOD: &str = r#"{"nodes": [
  {"id": "hello", "tool": "test.echo", "args": {"message": "hello"}},
  {"id": "nap", "tool": "test.sleep", "args": {"ms": 50}},
  {"id": "merge", "value": {"said": "{{nodes.hello.output}}", "slept": "{{nodes.nap.output}}"}}
], "output": "{{nodes.merge.output}}"}"#;

const REQUEST: &str = "Say hello with the echo tool and, meanwhile, sleep 50 ms; then merge both.";

struct App {
    app: TestApp,
    /// The fake planner's answers, prompts and call counter.
    fake: tempfile::TempDir,
    _config: tempfile::TempDir,
}

impl std::ops::Deref for App {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// The app with the test server as `test` (echo and sleep autoApproved) and
/// the fake planner as the only provider, answering `answers` in order.
async fn app(backend: Backend, answers: &[&str]) -> App {
    let fake = tempfile::tempdir().unwrap();
    for (i, answer) in answers.iter().enumerate() {
        std::fs::write(fake.path().join(format!("answer.{}", i + 1)), answer).unwrap();
    }
    let config = tempfile::tempdir().unwrap();
    let app = spawn_app_with(backend, options(fake.path(), config.path())).await;
    App { app, fake, _config: config }
}

/// The app's providers and MCP servers: the fake planner answering from `fake`.
fn options(fake: &Path, config: &Path) -> Options {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-planner/answers");
    let providers = format!(
        "[planner]\nkind = 'cli'\ncommand = '{}'\nenv = {{ FAKE_PLANNER_DIR = '{}' }}\noutput = {{ format = 'text' }}\n",
        script.display(),
        fake.display()
    );
    let router = support::router(&providers, "default_model = 'planner'\n");
    let file = config.join("mcp-config.json");
    let servers = json!({"test": {"command": test_server(), "timeout": 30, "autoApprove": ["echo", "sleep"]}});
    std::fs::write(&file, json!({"mcpServers": servers}).to_string()).unwrap();
    let mcp = McpSettings { file: Some(file), allow_api_stdio: false };
    Options { mcp, router: Some(router), ..Default::default() }
}

impl App {
    /// How often the planner model was called.
    fn calls(&self) -> u32 {
        std::fs::read_to_string(self.fake.path().join("calls")).map_or(0, |s| s.trim().parse().unwrap())
    }

    /// The prompt of the planner's `n`th call.
    fn prompt(&self, n: u32) -> String {
        read(&self.fake.path().join(format!("prompt.{n}")))
    }

    /// Submits, waits for the end; returns the job and its result body.
    async fn run(&self, body: Value) -> (Value, Value) {
        let id = self.submit_batch(body).await;
        let job = self.wait_finished(&id, WAIT).await;
        let result = self.get(&format!("/v1/jobs/{id}/result")).await.body;
        (job, result)
    }

    /// The `data` of the job's progress events of this `type`.
    async fn progress(&self, id: &str, kind: &str) -> Vec<Value> {
        let events = self.events(id, None).await;
        events
            .into_iter()
            .filter(|(_, k, d)| k == "progress" && d["data"]["type"] == kind)
            .map(|(_, _, d)| d["data"].clone())
            .collect()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn good_output() -> Value {
    json!({"said": "hello", "slept": "slept 50 ms"})
}

async fn a_request_is_planned_then_run(backend: Backend) {
    let app = app(backend, &[GOOD]).await;
    let (job, result) = app.run(json!({"request": REQUEST})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &result["result"];
    assert_eq!(result["output"], good_output(), "{result}");
    assert_eq!(result["nodes"]["hello"]["status"], "succeeded");
    let planning = &result["planning"];
    assert_eq!(planning["attempts"], 1, "{planning}");
    assert_eq!(planning["cached"], false);
    assert_eq!(planning["routed_to"], "planner");
    assert!(planning["duration_ms"].as_f64().unwrap() > 0.0, "{planning}");
    assert!(planning["usage"]["input_tokens"].is_u64(), "{planning}");
    assert_eq!(planning["tools_allowed"], 2, "only the autoApprove tools: {planning}");
    assert_eq!(app.calls(), 1);

    // The prompt holds the request, the allowed tools with their schemas, the
    // format and the call for parallelism; no tool that is neither
    // autoApproved nor named.
    let prompt = app.prompt(1);
    assert!(prompt.contains(REQUEST), "{prompt}");
    assert!(prompt.contains("- test.echo: Returns `message`; args {"), "{prompt}");
    assert!(prompt.contains("- test.sleep: Waits `ms` milliseconds"), "{prompt}");
    assert!(prompt.contains("\"required\":[\"ms\"]"), "{prompt}");
    assert!(prompt.contains("Maximise parallelism"), "{prompt}");
    for hidden in ["fail_n_times", "test.exit", "test.pid", "add_tool"] {
        assert!(!prompt.contains(hidden), "{hidden} was offered:\n{prompt}");
    }

    // The plan is on the event log, and the job has a graph.
    let id = job["id"].as_str().unwrap();
    let planned = app.progress(id, "planned").await;
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0]["plan"]["nodes"][2]["id"], "merge");
    let graph = app.get(&format!("/v1/jobs/{id}/graph")).await;
    assert_eq!(graph.status, StatusCode::OK, "{}", graph.body);
    assert_eq!(graph.body["nodes"]["merge"]["status"], "succeeded", "{}", graph.body);
    app.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_is_shown_only_the_tools_the_key_may_use() {
    const ECHO_ONLY: &str = r#"{"nodes": [{"id": "hello", "tool": "test.echo", "args": {"message": "hello"}}]}"#;
    let app = app(Backend::Sqlite, &[ECHO_ONLY]).await;
    let body = json!({"name": "echo only", "scopes": ["jobs:read", "jobs:write"], "tools": ["test.echo"]});
    let created = app.post("/v1/keys", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.body["secret"].as_str().unwrap();
    let submit = |body: Value| app.call(reqwest::Method::POST, "/v1/jobs/batch", Some(key), Some(body));
    // Naming a tool beyond the key's is refused, naming the entry.
    let r = submit(json!({"request": REQUEST, "tools": ["test.sleep"]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "tools[0]");
    let r = submit(json!({"request": REQUEST})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = app.wait_finished(r.body["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // test.sleep is autoApproved, but this key may not use it: not offered.
    let prompt = app.prompt(1);
    assert!(prompt.contains("- test.echo: "), "{prompt}");
    assert!(!prompt.contains("test.sleep"), "test.sleep was offered:\n{prompt}");
    app.app.stop().await;
}

/// Runs `answers` through the planner; the job must succeed with the good
/// output after `attempts` calls. Returns the app to look at the prompts.
async fn repaired(answers: &[&str], attempts: u32) -> App {
    let app = app(Backend::Sqlite, answers).await;
    let (job, result) = app.run(json!({"request": REQUEST})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(result["result"]["output"], good_output(), "{result}");
    assert_eq!(result["result"]["planning"]["attempts"], attempts);
    assert_eq!(app.calls(), attempts);
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_asked_for_again() {
    let app = repaired(&[r#"{"nodes": [{"id": "hello", "tool": "test.echo""#, GOOD], 2).await;
    let prompt = app.prompt(2);
    assert!(prompt.starts_with(&app.prompt(1)), "the repair prompt repeats the first");
    assert!(prompt.contains("Your previous answer was:\n{\"nodes\": [{\"id\": \"hello\""), "{prompt}");
    assert!(prompt.contains("- answer: no JSON object found in the answer"), "{prompt}");
    app.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_not_allowed_is_corrected() {
    let wrong = GOOD.replace("test.sleep", "test.fail_n_times");
    let app = repaired(&[&wrong, GOOD], 2).await;
    let prompt = app.prompt(2);
    assert!(prompt.contains("- nodes[1].tool: node \"nap\": unknown tool \"test.fail_n_times\""), "{prompt}");
    app.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_is_corrected() {
    let cycle = r#"{"nodes": [
      {"id": "a", "value": "{{nodes.b.output}}"},
      {"id": "b", "value": "{{nodes.a.output}}"}
    ]}"#;
    let app = repaired(&[cycle, GOOD], 2).await;
    let prompt = app.prompt(2);
    assert!(prompt.contains("- nodes: dependency cycle: "), "{prompt}");
    app.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prose_around_the_json_is_read() {
    let prose =
        format!("Sure! Here is a plan that runs both at once:\n\n```json\n{GOOD}\n```\n\nThe merge waits for both.");
    repaired(&[&prose], 1).await.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_fails_with_the_last_problems_when_every_answer_is_bad() {
    let wrong = GOOD.replace("test.sleep", "test.nope");
    let app = app(Backend::Sqlite, &["no plan today", &wrong]).await;
    let (job, _) = app.run(json!({"request": REQUEST})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "planning_failed", "{job}");
    assert_eq!(job["error"]["retryable"], false);
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("no valid plan in 3 attempts"), "{message}");
    assert!(message.contains("nodes[1].tool: node \"nap\": unknown tool \"test.nope\""), "{message}");
    assert_eq!(app.calls(), 3, "the default is 3 attempts");
    let id = job["id"].as_str().unwrap();
    let attempts = app.progress(id, "planning").await;
    assert_eq!(attempts.iter().map(|a| a["valid"].clone()).collect::<Vec<_>>(), [false, false, false]);

    // A preview says the same with the problems as data.
    let r = app.post("/v1/plans", json!({"request": REQUEST})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "planning_failed");
    assert_eq!(r.body["error"]["details"]["attempts"], 3);
    assert_eq!(r.body["error"]["details"]["issues"][0]["field"], "nodes[1].tool", "{}", r.body);
    app.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_preview_return_the_plan_and_the_cache_answers_again() {
    let app = app(Backend::Sqlite, &[GOOD]).await;
    let r = app.post("/v1/jobs/batch", json!({"request": REQUEST, "dry_run": true})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["valid"], true);
    assert_eq!(r.body["plan"]["nodes"][0]["tool"], "test.echo", "{}", r.body);
    assert_eq!(r.body["analysis"]["levels"], json!([["hello", "nap"], ["merge"]]), "{}", r.body);
    assert_eq!(r.body["planning"]["attempts"], 1);
    assert!(r.body["mermaid"].as_str().unwrap().starts_with("flowchart"));
    // Nothing ran: the dry run's job only planned.
    let job = r.body["job_id"].as_str().unwrap();
    let result = app.get(&format!("/v1/jobs/{job}/result")).await.body;
    assert!(result["result"].get("nodes").is_none(), "{result}");
    assert_eq!(app.calls(), 1);

    // The same request (up to case and spaces), tools and model: from the cache.
    let again = format!("  {}  ", REQUEST.to_uppercase().replace(' ', "   "));
    let r = app.post("/v1/plans", json!({"request": again})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["planning"]["cached"], true, "{}", r.body);
    let (job, result) = app.run(json!({"request": REQUEST})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(result["result"]["output"], good_output());
    assert_eq!(result["result"]["planning"]["cached"], true);
    assert_eq!(app.calls(), 1, "the planner was not asked again");

    // Other tools are another catalogue: planned again, with the named tool offered.
    let (job, result) = app.run(json!({"request": REQUEST, "tools": ["test.fail_n_times"]})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(result["result"]["planning"]["cached"], false);
    assert_eq!(result["result"]["planning"]["tools_allowed"], 3);
    assert_eq!(app.calls(), 2);
    assert!(app.prompt(2).contains("- test.fail_n_times: Fails the first `n` calls"), "{}", app.prompt(2));
    app.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_name_the_field() {
    let app = app(Backend::Sqlite, &[GOOD]).await;
    let plan = json!({"nodes": [{"id": "a", "value": 1}]});
    for (body, field, words) in [
        (json!({"plan": plan, "request": REQUEST}), "request", "not both"),
        (json!({"metadata": {}}), "plan", "give a plan, or a request"),
        (json!({"request": "  "}), "request", "must not be empty"),
        (json!({"request": REQUEST, "tools": ["test.echo", "test.nope"]}), "tools[1]", "unknown tool \"test.nope\""),
        (json!({"plan": plan, "tools": ["test.echo"]}), "tools", "use it with request"),
        (json!({"plan": plan, "dry_run": true}), "dry_run", "use it with request"),
    ] {
        let r = app.post("/v1/jobs/batch", body.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["details"]["field"], field, "{body}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().contains(words), "{body}: {}", r.body);
    }
    let r = app.post("/v1/jobs/batch", json!({"request": REQUEST, "planner_model": "nope"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "planner_model", "{}", r.body);
    let r = app.post("/v1/plans", json!({"plan": plan, "request": REQUEST})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(app.calls(), 0);
    app.app.stop().await;
}

fn structured(result: &CallToolResult) -> Value {
    let text = serde_json::to_value(result).unwrap()["content"][0]["text"].clone();
    assert_ne!(result.is_error, Some(true), "tool failed: {text}");
    result.structured_content.clone().expect("structured content")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_execute_over_mcp() {
    let app = app(Backend::Sqlite, &[GOOD]).await;
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", app.base)).auth_header(&app.admin);
    let client = ().serve(StreamableHttpClientTransport::with_client(reqwest::Client::new(), config)).await.unwrap();
    let call = |arguments: Value| {
        let Value::Object(arguments) = arguments else { panic!("an object") };
        client.call_tool(CallToolRequestParams::new("batch_execute").with_arguments(arguments))
    };

    // A request, waited for: the job and its result.
    let job = structured(&call(json!({"request": REQUEST, "wait": true})).await.unwrap());
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["output"], good_output(), "{job}");
    assert_eq!(job["result"]["planning"]["attempts"], 1);

    // A plan, not waited for: the job's id.
    let plan = json!({"nodes": [{"id": "a", "tool": "test.echo", "args": {"message": "direct"}}]});
    let accepted = structured(&call(json!({"plan": plan})).await.unwrap());
    let id = accepted["id"].as_str().expect("a job id");
    let job = app.wait_finished(id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // A dry run: the plan (from the cache now).
    let preview = structured(&call(json!({"request": REQUEST, "dry_run": true})).await.unwrap());
    assert_eq!(preview["plan"]["nodes"][1]["id"], "nap", "{preview}");
    assert_eq!(preview["planning"]["cached"], true, "{preview}");

    // Mistakes come back as tool errors naming the field.
    let bad = call(json!({"request": REQUEST, "wait": "yes"})).await.unwrap();
    assert_eq!(bad.is_error, Some(true));
    let bad = call(json!({})).await.unwrap();
    assert_eq!(bad.is_error, Some(true));
    assert!(serde_json::to_string(&bad).unwrap().contains("give a plan, or a request"));
    assert_eq!(app.calls(), 1);
    client.cancel().await.unwrap();
    app.app.stop().await;
}

/// The plan cache lives in the store: after a restart on the same store (a
/// new worker, as another process would be), the request is not planned again.
async fn the_plan_cache_is_shared_through_the_store(backend: Backend) {
    let app = app(backend, &[GOOD]).await;
    let (job, _) = app.run(json!({"request": REQUEST})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(app.calls(), 1);
    let App { app, fake, _config: config } = app;
    let (handle, admin) = app.stop_keeping_store().await;
    let again = support::spawn_app_on(handle, admin, options(fake.path(), config.path())).await;
    let app = App { app: again, fake, _config: config };
    let (job, result) = app.run(json!({"request": REQUEST})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(result["result"]["planning"]["cached"], true, "{result}");
    assert_eq!(result["result"]["output"], good_output());
    assert_eq!(app.calls(), 1, "the new worker asked the planner again");
    app.app.stop().await;
}

on_both_backends!(a_request_is_planned_then_run, the_plan_cache_is_shared_through_the_store);
