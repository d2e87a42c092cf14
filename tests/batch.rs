//! Batch plans end to end: submitted over HTTP, run by the worker as a DAG of
//! calls to real MCP servers (the project's `orch-mcp-test-server` and the
//! reference `server-everything`), followed through the job, its result,
//! its events and its graph. LLM nodes run on a fake model (model APIs are
//! the one thing these tests fake).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_api::servers::McpSettings;
use orch_store::JobError;
use orch_testkit::everything::{entry, node};
use orch_worker::llm::{Llm, LlmAnswer, LlmRequest};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Options, TestApp, spawn_app_with, test_server};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct App {
    app: TestApp,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for App {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// The app with the test server as `test` (and server-everything as `everything`).
async fn app_with(backend: Backend, everything: bool, llm: Option<Arc<dyn Llm>>) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = json!({"test": {"command": test_server(), "timeout": 30}});
    if everything {
        servers["everything"] = json!({"command": node(), "args": [entry(), "stdio"], "timeout": 30});
    }
    let file = dir.path().join("mcp-config.json");
    std::fs::write(&file, json!({"mcpServers": servers}).to_string()).unwrap();
    let mcp = McpSettings { file: Some(file), allow_api_stdio: false };
    let app = spawn_app_with(backend, Options { mcp, llm, ..Default::default() }).await;
    App { app, _dir: dir }
}

async fn app(backend: Backend) -> App {
    app_with(backend, false, None).await
}

impl App {
    async fn run(&self, plan: Value) -> (Value, Value) {
        self.run_batch(json!({"plan": plan})).await
    }

    /// Submits, waits for the end; returns the job and its result body.
    async fn run_batch(&self, body: Value) -> (Value, Value) {
        let id = self.submit_batch(body).await;
        let job = self.wait_finished(&id, WAIT).await;
        let result = self.get(&format!("/v1/jobs/{id}/result")).await.body;
        (job, result)
    }

    /// The test server's counters, read through the REST tool route.
    async fn stats(&self) -> Value {
        let r = self.post("/v1/tools/test/stats", json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        serde_json::from_str(r.body["content"][0]["text"].as_str().unwrap()).unwrap()
    }

    async fn text(&self, path: &str) -> (StatusCode, String, String) {
        let resp = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.admin).send().await.unwrap();
        let status = resp.status();
        let kind = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        (status, kind, resp.text().await.unwrap())
    }
}

fn node_of<'a>(result: &'a Value, id: &str) -> &'a Value {
    &result["result"]["nodes"][id]
}

async fn parallel_branches_overlap(backend: Backend) {
    let app = app(backend).await;
    let started = Instant::now();
    let (job, result) = app
        .run(json!({"max_parallel": 3, "nodes": [
            {"id": "a", "tool": "test.sleep", "args": {"ms": 500}},
            {"id": "b", "tool": "test.sleep", "args": {"ms": 500}},
            {"id": "c", "tool": "test.sleep", "args": {"ms": 500}},
            {"id": "seen", "tool": "test.stats", "depends_on": ["a", "b", "c"]}
        ]}))
        .await;
    let took = started.elapsed();
    assert_eq!(job["status"], "succeeded", "{job}");
    // The server itself saw the three calls at once.
    assert_eq!(result["result"]["output"]["seen"]["max_active"], 3, "{result}");
    assert!(took < Duration::from_millis(1400), "three 500 ms branches side by side took {took:?}");
    let starts: Vec<f64> =
        ["a", "b", "c"].iter().map(|n| node_of(&result, n)["started_ms"].as_f64().unwrap()).collect();
    let ends: Vec<f64> = ["a", "b", "c"]
        .iter()
        .zip(&starts)
        .map(|(n, s)| s + node_of(&result, n)["duration_ms"].as_f64().unwrap())
        .collect();
    let last_start = starts.iter().copied().fold(0.0, f64::max);
    let first_end = ends.iter().copied().fold(f64::MAX, f64::min);
    assert!(last_start < first_end, "branches did not overlap: starts {starts:?}, ends {ends:?}");
    app.app.stop().await;
}

async fn diamond_passes_outputs_along(backend: Backend) {
    let app = app_with(backend, true, None).await;
    let (job, result) = app
        .run(json!({"nodes": [
            {"id": "top", "tool": "test.echo", "args": {"message": "hello"}},
            {"id": "left", "tool": "everything.echo", "args": {"message": "{{nodes.top.output}} left"}},
            {"id": "right", "tool": "test.echo", "args": {"message": "{{nodes.top.output}} right"}},
            {"id": "bottom", "value": {"l": "{{nodes.left.output}}", "r": "{{nodes.right.output}}"}}
        ], "output": "{{nodes.bottom.output}}"}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(result["result"]["output"], json!({"l": "Echo: hello left", "r": "hello right"}));
    let end = |n: &str| {
        node_of(&result, n)["started_ms"].as_f64().unwrap() + node_of(&result, n)["duration_ms"].as_f64().unwrap()
    };
    let start = |n: &str| node_of(&result, n)["started_ms"].as_f64().unwrap();
    assert!(start("left") >= end("top") && start("right") >= end("top"), "{result}");
    assert!(start("bottom") >= end("left").max(end("right")), "{result}");
    app.app.stop().await;
}

async fn map_fans_out_within_its_concurrency(backend: Backend) {
    let app = app(backend).await;
    let started = Instant::now();
    let (job, result) = app
        .run(json!({"max_parallel": 8, "nodes": [
            {"id": "list", "value": [200, 200, 200, 200, 200, 200]},
            {"id": "each", "map": {"over": "{{nodes.list.output}}", "concurrency": 2,
                "node": {"tool": "test.sleep", "args": {"ms": "{{item}}"}}}},
            {"id": "seen", "tool": "test.stats", "depends_on": ["each"]}
        ]}))
        .await;
    let took = started.elapsed();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(result["result"]["output"]["each"], json!(vec!["slept 200 ms"; 6]));
    assert_eq!(result["result"]["output"]["seen"]["max_active"], 2, "{result}");
    // Six 200 ms items two at a time: three rounds.
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    app.app.stop().await;
}

async fn failing_nodes_follow_on_error(backend: Backend) {
    let app = app(backend).await;
    let (job, result) = app
        .run(json!({"nodes": [
            {"id": "cont", "tool": "test.fail_n_times", "args": {"key": "c", "n": 9}, "on_error": "continue"},
            {"id": "fb", "tool": "test.fail_n_times", "args": {"key": "f", "n": 9}, "on_error": {"fallback": {"x": 1}}},
            {"id": "after", "value": {"c": "{{nodes.cont.output}}", "f": "{{nodes.fb.output.x}}"}}
        ], "output": "{{nodes.after.output}}"}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(result["result"]["output"], json!({"c": null, "f": 1}));
    assert_eq!(node_of(&result, "cont")["status"], "failed");
    assert_eq!(node_of(&result, "cont")["error"]["code"], "tool_error");
    assert!(node_of(&result, "fb")["error"]["message"].as_str().unwrap().contains("failure 1 of 9"), "{result}");

    // `fail` (the default): the job fails naming the node, a running sibling
    // is stopped and what depended on the failure never starts.
    let started = Instant::now();
    let id = app
        .submit_batch(json!({"max_attempts": 1, "plan": {"nodes": [
            {"id": "boom", "tool": "test.fail_n_times", "args": {"key": "b", "n": 9}},
            {"id": "slow", "tool": "test.sleep", "args": {"ms": 10000}},
            {"id": "later", "value": 1, "depends_on": ["boom"]}
        ]}}))
        .await;
    let job = app.wait_finished(&id, WAIT).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the sibling was not stopped: {:?}", started.elapsed());
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "tool_error");
    assert!(job["error"]["message"].as_str().unwrap().starts_with("node \"boom\" failed: "), "{job}");
    let graph = app.get(&format!("/v1/jobs/{id}/graph")).await.body;
    assert_eq!(graph["nodes"]["boom"]["status"], "failed", "{graph}");
    assert_eq!(graph["nodes"]["slow"]["status"], "cancelled", "{graph}");
    assert_eq!(graph["nodes"]["later"]["status"], "skipped", "{graph}");
    app.app.stop().await;
}

async fn retries_and_timeouts(backend: Backend) {
    let app = app(backend).await;
    let (job, result) = app
        .run(json!({"nodes": [
            {"id": "flaky", "tool": "test.fail_n_times", "args": {"key": "r", "n": 2}, "retries": 2}
        ]}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(node_of(&result, "flaky")["attempts"], 3);
    assert_eq!(result["result"]["output"]["flaky"], "succeeded after 2 failures");
    let events = app.events(job["id"].as_str().unwrap(), None).await;
    let retried = events.iter().filter(|(_, k, e)| k == "progress" && e["data"]["status"] == "retrying").count();
    assert_eq!(retried, 2);

    // Too few retries: the node fails with the tool's last error.
    let (job, _) = app
        .run_batch(json!({"max_attempts": 1, "plan": {"nodes": [
            {"id": "flaky", "tool": "test.fail_n_times", "args": {"key": "r2", "n": 3}, "retries": 1}
        ]}}))
        .await;
    assert_eq!(job["status"], "failed");
    assert!(job["error"]["message"].as_str().unwrap().contains("failure 2 of 3"), "{job}");

    // A node timeout cancels the call upstream.
    let started = Instant::now();
    let (job, result) = app
        .run(json!({"nodes": [
            {"id": "stuck", "tool": "test.sleep", "args": {"ms": 20000}, "timeout": 0.3, "on_error": "continue"}
        ]}))
        .await;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(node_of(&result, "stuck")["error"]["code"], "timeout", "{result}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.stats().await["cancelled"] != 1 {
        assert!(Instant::now() < deadline, "the server never saw the cancellation: {}", app.stats().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.app.stop().await;
}

async fn cancelling_stops_running_nodes_and_skips_the_rest(backend: Backend) {
    let app = app(backend).await;
    let id = app
        .submit_plan(json!({"nodes": [
            {"id": "first", "tool": "test.sleep", "args": {"ms": 100}},
            {"id": "long", "tool": "test.sleep", "args": {"ms": 20000}, "depends_on": ["first"]},
            {"id": "never", "value": "{{nodes.long.output}}"}
        ]}))
        .await;
    app.wait_for(&id, WAIT, |j| j["progress"]["node"] == "long" && j["progress"]["status"] == "started").await;
    let started = Instant::now();
    let r = app.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert!(r.status.is_success(), "{}", r.body);
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let graph = app.get(&format!("/v1/jobs/{id}/graph")).await.body;
    assert_eq!(graph["nodes"]["first"]["status"], "succeeded", "{graph}");
    assert_eq!(graph["nodes"]["long"]["status"], "cancelled", "{graph}");
    assert_eq!(graph["nodes"]["never"]["status"], "skipped", "{graph}");
    assert_eq!(app.stats().await["cancelled"], 1);
    app.app.stop().await;
}

async fn references_reach_into_nested_outputs(backend: Backend) {
    let app = app_with(backend, true, None).await;
    let (job, result) = app
        .run(json!({
            "input": {"city": "Chicago", "doc": {"items": [{"title": "first"}, {"title": "second"}]}},
            "nodes": [
                {"id": "weather", "tool": "everything.get-structured-content", "args": {"location": "{{input.city}}"}},
                {"id": "json", "tool": "test.echo", "args": {"message": "{\"items\": [{\"title\": \"first\"}, {\"title\": \"second\"}]}"}},
                {"id": "sum", "tool": "everything.get-sum", "args": {"a": "{{nodes.weather.output.temperature}}", "b": 1}}
            ],
            "output": {
                "conditions": "{{nodes.weather.output.conditions}}",
                "second": "{{nodes.json.output.items[1].title}}",
                "line": "{{input.city}}: {{nodes.weather.output.temperature}} degrees",
                "sum": "{{nodes.sum.output}}"
            }
        }))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        result["result"]["output"],
        json!({"conditions": "Light rain / drizzle", "second": "second", "line": "Chicago: 36 degrees", "sum": "The sum of 36 and 1 is 37."})
    );

    // A reference that does not resolve at run time fails the node, saying what was there.
    let (job, _) = app
        .run_batch(json!({"max_attempts": 1, "plan": {"nodes": [
            {"id": "json", "tool": "test.echo", "args": {"message": "{\"items\": []}"}},
            {"id": "title", "value": "{{nodes.json.output.items[0].title}}"}
        ]}}))
        .await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "invalid_reference");
    assert!(
        job["error"]["message"].as_str().unwrap().contains("nodes.json.output.items is a list of 0 items"),
        "{job}"
    );
    app.app.stop().await;
}

async fn bad_plans_are_rejected_naming_node_and_field(backend: Backend) {
    let app = app_with(backend, true, None).await;
    let cases = [
        (
            json!({"nodes": [{"id": "a", "tool": "test.nope"}]}),
            "plan.nodes[0].tool",
            "node \"a\": unknown tool \"test.nope\"",
        ),
        (
            json!({"nodes": [{"id": "a", "tool": "everything.get-sum", "args": {"a": "one", "b": 2}}]}),
            "plan.nodes[0].args.a",
            "node \"a\": does not match the input schema of everything.get-sum: \"one\" is not of type \"number\"",
        ),
        (
            json!({"nodes": [{"id": "a", "tool": "test.echo", "args": {}}]}),
            "plan.nodes[0].args",
            "\"message\" is a required property",
        ),
        (
            json!({"nodes": [
                {"id": "a", "value": "{{nodes.c.output}}"},
                {"id": "b", "value": "{{nodes.a.output}}"},
                {"id": "c", "tool": "test.echo", "args": {"message": "{{nodes.b.output}}"}}
            ]}),
            "plan.nodes",
            "dependency cycle: ",
        ),
        (
            json!({"nodes": [{"id": "a", "tool": "test.echo", "args": {"message": "{{nodes.ghost.output.x}}"}}]}),
            "plan.nodes[0].args.message",
            "node \"a\": {{nodes.ghost.output.x}} names node \"ghost\", but no node has that id",
        ),
        (
            json!({"nodes": [{"id": "a", "value": "{{input.repo}}"}]}),
            "plan.nodes[0].value",
            "{{input.repo}} does not resolve in the plan's `input`",
        ),
    ];
    for (plan, field, message) in cases {
        for path in ["/v1/jobs/batch", "/v1/plans"] {
            let r = app.post(path, json!({"plan": plan})).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {plan}: {}", r.body);
            assert_eq!(r.body["error"]["code"], "invalid_plan", "{}", r.body);
            assert_eq!(r.body["error"]["details"]["field"], field, "{}", r.body);
            let text = r.body["error"]["message"].as_str().unwrap();
            assert!(text.contains(message), "{path}: {text:?} lacks {message:?}");
        }
    }
    let r = app.post("/v1/plans", json!({"plan": {"nodes": [
        {"id": "a", "value": "{{nodes.c.output}}"}, {"id": "b", "value": "{{nodes.a.output}}"}, {"id": "c", "value": "{{nodes.b.output}}"}
    ]}})).await;
    let text = r.body["error"]["message"].as_str().unwrap();
    assert!(["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"].iter().any(|p| text.ends_with(p)), "{text}");
    app.app.stop().await;
}

async fn plans_are_analysed_and_drawn(backend: Backend) {
    let app = app(backend).await;
    let plan = json!({"max_parallel": 4, "nodes": [
        {"id": "a", "sleep": {"ms": 100}},
        {"id": "b", "sleep": {"ms": 300}},
        {"id": "c", "tool": "test.echo", "args": {"message": "x"}, "depends_on": ["a"]},
        {"id": "merge", "value": ["{{nodes.b.output}}", "{{nodes.c.output}}"]}
    ]});
    let r = app.post("/v1/plans", json!({"plan": plan})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let analysis = &r.body["analysis"];
    assert_eq!(analysis["levels"], json!([["a", "b"], ["c"], ["merge"]]));
    assert_eq!(analysis["width"], 2);
    assert_eq!(analysis["depth"], 3);
    // No latency recorded for test.echo yet: the default second makes a -> c the longest.
    assert_eq!(analysis["critical_path"], json!(["a", "c", "merge"]));
    assert_eq!(analysis["estimated_ms"], 1100.0);
    assert!(r.body["mermaid"].as_str().unwrap().starts_with("flowchart TD\n"));

    let (status, kind, body) = app.text_post("/v1/plans?format=mermaid", json!({"plan": plan})).await;
    assert_eq!((status, kind.as_str()), (StatusCode::OK, "text/vnd.mermaid; charset=utf-8"));
    assert!(body.contains("n0 --> n2") && body.contains("n2 --> n3") && body.contains("n1 --> n3"), "{body}");
    let (status, kind, body) = app.text_post("/v1/plans?format=dot", json!({"plan": plan})).await;
    assert_eq!((status, kind.as_str()), (StatusCode::OK, "text/vnd.graphviz; charset=utf-8"));
    assert!(body.starts_with("digraph plan {") && body.contains("\"a\" -> \"c\";"), "{body}");

    // After a run, the latency of test.echo is known, and the job's graph shows states.
    let (job, _) = app.run(plan.clone()).await;
    let id = job["id"].as_str().unwrap();
    let r = app.post("/v1/plans", json!({"plan": plan})).await;
    assert!(r.body["analysis"]["node_estimates_ms"]["c"].as_f64().unwrap() < 1000.0, "{}", r.body);
    assert_eq!(r.body["analysis"]["critical_path"], json!(["b", "merge"]));
    let graph = app.get(&format!("/v1/jobs/{id}/graph")).await.body;
    assert_eq!(graph["status"], "succeeded");
    assert_eq!(graph["nodes"]["b"]["status"], "succeeded");
    assert!(graph["nodes"]["b"]["duration_ms"].as_f64().unwrap() >= 300.0, "{graph}");
    assert!(graph["edges"].as_array().unwrap().contains(&json!(["c", "merge"])), "{graph}");
    let (_, kind, body) = app.text(&format!("/v1/jobs/{id}/graph?format=mermaid")).await;
    assert_eq!(kind, "text/vnd.mermaid; charset=utf-8");
    assert!(body.contains("class n3 succeeded"), "{body}");
    let _ = app.text(&format!("/v1/jobs/{id}/graph?format=dot")).await;
    app.app.stop().await;
}

async fn retried_job_skips_finished_nodes(backend: Backend) {
    let app = app(backend).await;
    // Attempt 1: `first` runs, `gate` fails (retryably), the job is retried.
    // Attempt 2: `first` comes from its checkpoint; `gate` passes; `count`
    // sees how many tool calls the server got.
    let (job, result) = app
        .run_batch(json!({"max_attempts": 2, "plan": {"nodes": [
            {"id": "first", "tool": "test.echo", "args": {"message": "once"}},
            {"id": "gate", "fail": {"times": 1}, "depends_on": ["first"]},
            {"id": "count", "tool": "test.stats", "depends_on": ["gate"]}
        ]}}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);
    assert_eq!(node_of(&result, "first")["resumed"], true, "{result}");
    assert_eq!(result["result"]["output"]["first"], "once");
    // `first` once, `count` itself once: `first` was not run again.
    assert_eq!(result["result"]["output"]["count"]["calls"], 2, "{result}");
    app.app.stop().await;
}

/// An output above the inline limit (64 KiB by default) is stored once: the
/// events and the result carry a reference, `/v1/jobs/{id}/outputs/{node}`
/// answers the whole value, and later nodes (also in a later attempt, from
/// the checkpoint) and the plan's `output` get the whole value.
async fn large_outputs_are_stored_once_and_referenced(backend: Backend) {
    use sha2::Digest;
    let app = app(backend).await;
    let big = "0123456789".repeat(10_000);
    // Attempt 1: `big` and `small` run, `gate` fails; attempt 2 resumes them
    // from their checkpoints and `copy` echoes `big` back.
    let (job, result) = app
        .run_batch(json!({"max_attempts": 2, "plan": {"nodes": [
            {"id": "big", "tool": "test.echo", "args": {"message": "0123456789", "repeat": 10_000}},
            {"id": "small", "tool": "test.echo", "args": {"message": "tiny"}},
            {"id": "gate", "fail": {"times": 1}, "depends_on": ["big", "small"]},
            {"id": "copy", "tool": "test.echo", "args": {"message": "{{nodes.big.output}}"}, "depends_on": ["gate"]},
            {"id": "calls", "tool": "test.stats", "depends_on": ["copy"]}
        ], "output": {"whole": "{{nodes.big.output}}", "small": "{{nodes.small.output}}", "calls": "{{nodes.calls.output.calls}}"}}}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let id = job["id"].as_str().unwrap();
    let text = serde_json::to_string(&big).unwrap();
    let reference = json!({
        "$ref": format!("/v1/jobs/{id}/outputs/big"),
        "bytes": text.len(),
        "sha256": hex::encode(sha2::Sha256::digest(text.as_bytes())),
    });
    let nodes = &result["result"]["nodes"];
    assert_eq!(nodes["big"]["output"], reference);
    assert_eq!(nodes["big"]["resumed"], true);
    assert_eq!(nodes["small"]["output"], "tiny", "small outputs stay inline");
    assert_eq!(nodes["copy"]["output"]["$ref"], format!("/v1/jobs/{id}/outputs/copy"));
    let output = &result["result"]["output"];
    assert_eq!(output["whole"].as_str().map(str::len), Some(big.len()), "the output template gets the whole value");
    assert_eq!(output["whole"], big.as_str());
    // `big`, `small`, `copy` and this stats call: nothing ran twice.
    assert_eq!(output["calls"], 4, "{output}");

    // The events carry the reference, not the value, once per finished node.
    let events = app.events(id, None).await;
    let big_events: Vec<&Value> = events
        .iter()
        .map(|(_, _, e)| &e["data"])
        .filter(|d| d["node"] == "big" && d["status"] == "succeeded")
        .collect();
    assert_eq!(big_events.len(), 1);
    assert_eq!(big_events[0]["output"], reference);
    let event_bytes: usize = events.iter().map(|(_, _, e)| e.to_string().len()).sum();
    assert!(event_bytes < 20_000, "the events hold {event_bytes} bytes");

    // The endpoint answers the whole value: the stored one, or the event's for small outputs.
    for (node, expected) in [("big", json!(big)), ("copy", json!(big)), ("small", json!("tiny"))] {
        let r = app
            .client
            .get(format!("{}/v1/jobs/{id}/outputs/{node}", app.base))
            .bearer_auth(&app.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = r.text().await.unwrap();
        if node == "big" {
            assert_eq!(hex::encode(sha2::Sha256::digest(body.as_bytes())), reference["sha256"].as_str().unwrap());
        }
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), expected, "{node}");
    }
    let r = app.get(&format!("/v1/jobs/{id}/outputs/ghost")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"]["code"], "no_output", "{}", r.body);
    let r = app.call(reqwest::Method::GET, &format!("/v1/jobs/{id}/outputs/big"), None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.app.stop().await;
}

/// A child process killed (SIGKILL) when dropped, however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The split deployment as real processes: `orch api` and two `orch worker`s
/// in turn on one store (a SQLite file, or Redis). The first worker is
/// SIGKILLed while the plan's long node runs; the second recovers the job
/// after its lease expires and finishes it without calling the finished
/// nodes again (the test server's journal, a file, counts the calls of both
/// workers' servers).
async fn a_worker_killed_mid_plan_is_replaced_without_rerunning_finished_nodes(backend: Backend) {
    let handle = support::fresh_store(backend).await;
    let admin = support::make_key(handle.store.as_ref(), &["admin"]).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("calls.jsonl");
    let config = dir.path().join("mcp-config.json");
    let servers = json!({"test": {"command": test_server(), "args": ["--journal", journal], "timeout": 30}});
    std::fs::write(&config, json!({"mcpServers": servers}).to_string()).unwrap();
    let store = match &handle.url {
        orch_store::StoreUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
        orch_store::StoreUrl::Redis(url) => url.clone(),
    };
    let port = orch_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let orch = |command: &str, log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        Killed(
            std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
                .arg(command)
                .current_dir(dir.path())
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("ORCH_STORE", &store)
                .env("ORCH_MCP_CONFIG", &config)
                .env("ORCH_BIND", format!("127.0.0.1:{port}"))
                .env("ORCH_LOG", "warn")
                .env("ORCH_LEASE", "1s")
                .env("ORCH_POLL_INTERVAL", "20ms")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let _api = orch("api", "api.log");
    orch_mcp::tls::install_crypto_provider();
    let app = TestApp {
        base: base.clone(),
        admin,
        client: reqwest::Client::new(),
        store: handle.store.clone(),
        handle,
        shutdown: Default::default(),
        worker: None,
        registry: orch_mcp::Registry::new(Default::default()).unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.client.get(format!("{base}/health")).send().await.ok().map(|r| r.status()) != Some(StatusCode::OK) {
        assert!(Instant::now() < deadline, "orch api did not start: {}", read(&dir.path().join("api.log")));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = orch("worker", "worker-1.log");
    let id = app
        .submit_plan(json!({"nodes": [
            {"id": "one", "tool": "test.echo", "args": {"message": "one"}},
            {"id": "two", "tool": "test.echo", "args": {"message": "two"}},
            {"id": "long", "tool": "test.sleep", "args": {"ms": 2000}, "depends_on": ["one", "two"]},
            {"id": "after", "tool": "test.echo", "args": {"message": "{{nodes.long.output}}, then done"}}
        ]}))
        .await;
    // Progress events are written in order: `one` and `two` succeeded before `long` started.
    app.wait_for(&id, WAIT, |j| j["progress"]["node"] == "long" && j["progress"]["status"] == "started").await;
    drop(first); // SIGKILL, mid-sleep
    let _second = orch("worker", "worker-2.log");
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}\n{}", read(&dir.path().join("worker-2.log")));
    assert_eq!(job["attempts"], 2, "{job}");
    let result = app.get(&format!("/v1/jobs/{id}/result")).await.body;
    let nodes = &result["result"]["nodes"];
    assert_eq!((&nodes["one"]["resumed"], &nodes["two"]["resumed"]), (&json!(true), &json!(true)), "{nodes}");
    assert_eq!(nodes["long"].get("resumed"), None, "{nodes}");
    assert_eq!(result["result"]["output"]["after"], "slept 2000 ms, then done", "{result}");

    let calls: Vec<Value> = read(&journal).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let count = |tool: &str, message: Option<&str>| {
        calls.iter().filter(|c| c["tool"] == tool && message.is_none_or(|m| c["args"]["message"] == m)).count()
    };
    assert_eq!(count("echo", Some("one")), 1, "{calls:?}");
    assert_eq!(count("echo", Some("two")), 1, "{calls:?}");
    // Killed mid-call, so run again by the second worker.
    assert_eq!(count("sleep", None), 2, "{calls:?}");
    assert_eq!(count("echo", Some("slept 2000 ms, then done")), 1, "{calls:?}");
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// A model that answers from a script and remembers the prompts.
#[derive(Default)]
struct FakeLlm {
    prompts: Mutex<Vec<LlmRequest>>,
}

#[async_trait]
impl Llm for FakeLlm {
    async fn complete(&self, request: LlmRequest, _cancel: &CancellationToken) -> Result<LlmAnswer, JobError> {
        let text = if request.prompt.contains("JSON Schema") {
            "Here you go:\n```json\n{\"title\": \"Weekly report\", \"count\": 2}\n```".to_owned()
        } else {
            format!("summary of: {}", request.prompt)
        };
        self.prompts.lock().unwrap().push(request);
        Ok(LlmAnswer { text, routed_to: "fake/model".into(), usage: json!({"input_tokens": 3, "output_tokens": 5}) })
    }
}

async fn llm_nodes_use_the_model(backend: Backend) {
    let llm = Arc::new(FakeLlm::default());
    let app = app_with(backend, false, Some(llm.clone())).await;
    let (job, result) = app
        .run(json!({"nodes": [
            {"id": "issues", "tool": "test.echo", "args": {"message": "[\"bug 1\", \"bug 2\"]"}},
            {"id": "sum", "llm": {"model": "fake/model", "system": "Be brief.", "prompt": "Summarise {{nodes.issues.output}}"}},
            {"id": "report", "llm": {"prompt": "Report on {{nodes.sum.output}}",
                "schema": {"type": "object", "required": ["title", "count"], "properties": {"count": {"type": "integer"}}}}}
        ], "output": {"sum": "{{nodes.sum.output}}", "title": "{{nodes.report.output.title}}"}}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        result["result"]["output"],
        json!({"sum": "summary of: Summarise [\"bug 1\",\"bug 2\"]", "title": "Weekly report"})
    );
    let prompts = llm.prompts.lock().unwrap().clone();
    assert_eq!(prompts[0].model.as_deref(), Some("fake/model"));
    assert_eq!(prompts[0].system.as_deref(), Some("Be brief."));
    assert!(prompts[1].prompt.starts_with("Report on summary of: "), "{:?}", prompts[1]);
    app.app.stop().await;
}

impl App {
    async fn text_post(&self, path: &str, body: Value) -> (StatusCode, String, String) {
        let resp =
            self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        let status = resp.status();
        let kind = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        (status, kind, resp.text().await.unwrap())
    }
}

/// Issue 13, defect 4: a literal list over the map limit was refused, but the
/// same list through a reference ran (1,000,000 items held in memory). The
/// limit now holds for the list the map resolves, and the node outputs one
/// job holds are bounded.
async fn the_map_limit_is_bypassed_by_a_reference(backend: Backend) {
    let limits = orch_planner::PlanLimits { max_output_bytes: 200_000, ..Default::default() };
    let app = spawn_app_with(backend, Options { plan_limits: limits, ..Default::default() }).await;
    let max = orch_planner::MAX_MAP_ITEMS;
    let xs: Vec<usize> = (0..=max).collect();

    // Plan input is in the body: refused at submission, naming the field.
    for over in ["{{input.xs}}", "{{ input.xs }}"] {
        let r = app
            .post(
                "/v1/jobs/batch",
                json!({"plan": {"input": {"xs": xs}, "nodes": [
                    {"id": "each", "map": {"over": over, "node": {"echo": "{{item}}"}}}
                ]}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{over}: {}", r.body);
        assert_eq!(r.body["error"]["details"]["field"], "plan.nodes[0].map.over", "{}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("at most {max} items (ORCH_PLAN_MAX_ITEMS)")), "{message}");
        assert!(message.contains(&format!("has {}", max + 1)), "{message}");
    }

    // A list known only when the map starts: the map fails, the job fails cleanly.
    let id = app
        .submit_batch(json!({"max_attempts": 1, "plan": {"input": {"xs": xs}, "nodes": [
            {"id": "list", "value": "{{input.xs}}"},
            {"id": "each", "map": {"over": "{{nodes.list.output}}", "node": {"echo": "{{item}}"}}}
        ]}}))
        .await;
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "limit_exceeded", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("map.over has {} items", max + 1)), "{message}");
    assert!(message.contains(&format!("at most {max} (ORCH_PLAN_MAX_ITEMS)")), "{message}");
    let graph = app.get(&format!("/v1/jobs/{id}/graph")).await.body;
    assert_eq!(graph["nodes"]["list"]["status"], "succeeded", "{graph}");
    assert_eq!(graph["nodes"]["each"]["status"], "failed", "{graph}");

    // Outputs one job holds are bounded: 2,000 items of ~120 bytes pass 200,000 bytes.
    let id = app
        .submit_batch(json!({"max_attempts": 1, "plan": {"input": {"xs": &xs[..2000]}, "nodes": [
            {"id": "list", "value": "{{input.xs}}"},
            {"id": "each", "map": {"over": "{{nodes.list.output}}", "concurrency": 8,
                "node": {"echo": format!("{{{{item}}}} {}", "x".repeat(110))}}}
        ]}}))
        .await;
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "limit_exceeded", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("at most 200000 (ORCH_PLAN_MAX_OUTPUT_BYTES)"), "{message}");

    // Nothing else broke: lists within the limits still run, through a reference too.
    let id = app
        .submit_batch(json!({"plan": {"input": {"xs": &xs[..max]}, "nodes": [
            {"id": "list", "value": "{{input.xs}}"},
            {"id": "each", "map": {"over": "{{nodes.list.output}}", "concurrency": 64, "node": {"value": "{{item}}"}}},
            {"id": "direct", "map": {"over": "{{input.xs}}", "concurrency": 64, "node": {"value": "{{item}}"}}}
        ], "output": {"n": "{{nodes.each.output[9999]}}", "d": "{{nodes.direct.output[0]}}"}}}))
        .await;
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = app.get(&format!("/v1/jobs/{id}/result")).await.body;
    assert_eq!(result["result"]["output"], json!({"n": max - 1, "d": 0}), "{result}");
    app.stop().await;
}

on_both_backends!(
    parallel_branches_overlap,
    diamond_passes_outputs_along,
    map_fans_out_within_its_concurrency,
    failing_nodes_follow_on_error,
    retries_and_timeouts,
    cancelling_stops_running_nodes_and_skips_the_rest,
    references_reach_into_nested_outputs,
    bad_plans_are_rejected_naming_node_and_field,
    plans_are_analysed_and_drawn,
    retried_job_skips_finished_nodes,
    llm_nodes_use_the_model,
    a_worker_killed_mid_plan_is_replaced_without_rerunning_finished_nodes,
    large_outputs_are_stored_once_and_referenced,
    the_map_limit_is_bypassed_by_a_reference,
);

/// A plan typed into n8n's HTTP Request node in expression mode: n8n
/// evaluates every `{{...}}` before Orch sees the body, so the plan uses
/// `${...}`, which n8n leaves alone. The references must resolve and order
/// the nodes as `{{...}}` does.
#[tokio::test]
async fn n8n_eats_plan_references() {
    let app = app(Backend::Sqlite).await;
    let (job, result) = app
        .run(json!({
            "input": {"xs": ["a", "b"]},
            "nodes": [
                {"id": "first", "tool": "test.sleep", "args": {"ms": 300}},
                {"id": "second", "tool": "test.echo", "args": {"message": "after ${nodes.first.output}"}},
                {"id": "each", "map": {"over": "${input.xs}", "node": {"tool": "test.echo", "args": {"message": "item ${item}"}}}},
                {"id": "old", "value": "{{nodes.second.output}} / ${HOME}"}
            ],
            "output": {"second": "${nodes.second.output}", "each": "${ nodes.each.output }", "old": "{{nodes.old.output}}"}
        }))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let output = &result["result"]["output"];
    let second = output["second"].as_str().unwrap();
    assert!(second.starts_with("after ") && second.len() > "after ".len(), "{output}");
    assert_eq!(output["each"], json!(["item a", "item b"]), "{output}");
    // The old form still works; a `${...}` that names no plan value is text.
    assert_eq!(output["old"], json!(format!("{second} / ${{HOME}}")), "{output}");
    let end = node_of(&result, "first")["started_ms"].as_f64().unwrap()
        + node_of(&result, "first")["duration_ms"].as_f64().unwrap();
    assert!(node_of(&result, "second")["started_ms"].as_f64().unwrap() >= end, "ran before its dependency: {result}");
    app.app.stop().await;
}
