//! The seed scenario end to end: "analyse GitHub issues and write a weekly
//! report to Notion", against stand-ins that behave like the real servers at
//! the MCP level (`orch-mcp-test-server --persona github | notion`: issues of
//! three repos with GitHub's fields and a network-like latency; a sink that
//! keeps the pages it got). The report is written by a fake `cli` provider
//! (`tests/fake-planner/report`) that lists the issue titles it was given;
//! the plan comes either by hand or from the LLM planner answering with the
//! recorded `tests/fake-planner/weekly-report-plan.txt`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use orch_api::servers::McpSettings;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Options, TestApp, spawn_app_with, test_server};

const WAIT: Duration = Duration::from_secs(30);

/// What the GitHub stand-in takes per call.
const LATENCY_MS: u64 = 400;

const REQUEST: &str = "Analyse this week's GitHub issues of acme/api, acme/web and acme/cli \
    and write a weekly report to Notion under weekly-reports.";

/// The issues updated since 2026-11-14 in the stand-in's fixture, per repo.
const THIS_WEEK: [&str; 7] = [
    "Rate limiter returns 500 instead of 429 under burst load",
    "Add cursor pagination to GET /v2/orders",
    "Webhook signatures use the wrong timestamp header",
    "Checkout page freezes on Safari 18 when the cart has > 50 items",
    "Dark mode: contrast of disabled buttons fails WCAG AA",
    "`acme login` hangs when the browser callback port is taken",
    "Ship arm64 Linux binaries",
];

/// Updated before the week: must not be in the report.
const OLDER: &str = "Document the idempotency key retention";

struct App {
    app: TestApp,
    /// The fake planner's answers and prompts.
    planner: tempfile::TempDir,
    _config: tempfile::TempDir,
}

impl std::ops::Deref for App {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

fn fake(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-planner").join(name)
}

/// The app with the stand-ins as `github` and `notion` (the tools the plan
/// needs autoApproved) and two providers: `planner` (answers the recorded
/// plan) and `writer` (writes the report).
async fn app(backend: Backend) -> App {
    let planner = tempfile::tempdir().unwrap();
    std::fs::copy(fake("weekly-report-plan.txt"), planner.path().join("answer.1")).unwrap();
    let providers = format!(
        "[planner]\nkind = 'cli'\ncommand = '{}'\nenv = {{ FAKE_PLANNER_DIR = '{}' }}\noutput = {{ format = 'text' }}\n\
         [writer]\nkind = 'cli'\ncommand = '{}'\noutput = {{ format = 'text' }}\n",
        fake("answers").display(),
        planner.path().display(),
        fake("report").display(),
    );
    let router = support::router(&providers, "default_model = 'planner'\n");
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("mcp-config.json");
    let servers = json!({
        "github": {"command": test_server(), "args": ["--persona", "github", "--latency-ms", LATENCY_MS.to_string()],
            "timeout": 30, "autoApprove": ["list_issues"]},
        "notion": {"command": test_server(), "args": ["--persona", "notion"], "timeout": 30, "autoApprove": ["create_page"]}
    });
    std::fs::write(&file, json!({"mcpServers": servers}).to_string()).unwrap();
    let mcp = McpSettings { file: Some(file), allow_api_stdio: false };
    let app = spawn_app_with(backend, Options { mcp, router: Some(router), ..Default::default() }).await;
    App { app, planner, _config: config }
}

impl App {
    async fn tool(&self, path: &str) -> Value {
        let r = self.post(path, json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        serde_json::from_str(r.body["content"][0]["text"].as_str().unwrap()).unwrap()
    }

    /// The pages the Notion stand-in received.
    async fn pages(&self) -> Vec<Value> {
        self.tool("/v1/tools/notion/list_pages").await["pages"].as_array().unwrap().clone()
    }

    fn planner_calls(&self) -> u32 {
        std::fs::read_to_string(self.planner.path().join("calls")).map_or(0, |s| s.trim().parse().unwrap())
    }

    /// Submits, waits for the end; returns the job and its result body.
    async fn run(&self, body: Value) -> (Value, Value) {
        let id = self.submit_batch(body).await;
        let job = self.wait_finished(&id, WAIT).await;
        let result = self.get(&format!("/v1/jobs/{id}/result")).await.body;
        (job, result)
    }
}

/// The plan a person would write for the scenario.
fn seed_plan() -> Value {
    let fetch = |id: &str, repo: &str| {
        json!({"id": id, "tool": "github.list_issues",
            "args": {"owner": "acme", "repo": repo, "state": "all", "since": "{{input.since}}"}})
    };
    json!({
        "input": {"since": "2026-11-14T00:00:00Z"},
        "nodes": [
            fetch("api", "api"),
            fetch("web", "web"),
            fetch("cli", "cli"),
            {"id": "summary", "llm": {"model": "writer",
                "prompt": "Summarise this week's issues.\napi: {{nodes.api.output}}\nweb: {{nodes.web.output}}\ncli: {{nodes.cli.output}}"}},
            {"id": "page", "tool": "notion.create_page",
                "args": {"parent": "weekly-reports", "title": "Weekly issue report", "markdown": "{{nodes.summary.output}}"}}
        ],
        "output": {"url": "{{nodes.page.output.url}}", "report": "{{nodes.summary.output}}"}
    })
}

/// The one page in the sink holds the writer's report on this week's issues
/// of all three repos, and the job's output points at it.
async fn check_report_reached_notion(app: &App, result: &Value) {
    let pages = app.pages().await;
    assert_eq!(pages.len(), 1, "{pages:?}");
    let page = &pages[0];
    assert_eq!(page["title"], "Weekly issue report");
    assert_eq!(page["parent"]["page_id"], "weekly-reports");
    let report = result["result"]["output"]["report"].as_str().unwrap();
    assert_eq!(page["markdown"], report, "the page holds the model's answer");
    assert!(report.starts_with("# Weekly issue report\n\n7 issues changed this week, 4 still open."), "{report}");
    for title in THIS_WEEK {
        assert!(report.contains(&format!("- {title}")), "{title:?} missing from\n{report}");
    }
    assert!(!report.contains(OLDER), "an issue from before `since` was reported:\n{report}");
    assert_eq!(result["result"]["output"]["url"], page["url"], "{result}");
}

/// The three fetches ran side by side: the GitHub stand-in saw them at once
/// and their node timings overlap.
async fn check_fetches_overlapped(app: &App, result: &Value, fetches: [&str; 3]) {
    let stats = app.tool("/v1/tools/github/stats").await;
    assert_eq!(stats["max_active"], 3, "{stats}");
    let nodes = &result["result"]["nodes"];
    let start = |n: &str| nodes[n]["started_ms"].as_f64().unwrap();
    let end = |n: &str| start(n) + nodes[n]["duration_ms"].as_f64().unwrap();
    let last_start = fetches.iter().map(|n| start(n)).fold(0.0, f64::max);
    let first_end = fetches.iter().map(|n| end(n)).fold(f64::MAX, f64::min);
    assert!(last_start < first_end, "the fetches did not overlap: {nodes}");
}

async fn hand_written_seed_plan_writes_the_weekly_report(backend: Backend) {
    let app = app(backend).await;
    let started = Instant::now();
    let (job, result) = app.run(json!({"plan": seed_plan()})).await;
    let took = started.elapsed();
    assert_eq!(job["status"], "succeeded", "{job}");
    check_report_reached_notion(&app, &result).await;
    check_fetches_overlapped(&app, &result, ["api", "web", "cli"]).await;
    // One after another the fetches alone would take 3 × the latency.
    assert!(took < Duration::from_millis(3 * LATENCY_MS), "took {took:?}");
    assert_eq!(app.planner_calls(), 0, "a given plan is not planned");
    app.app.stop().await;
}

async fn planned_from_a_request_writes_the_weekly_report(backend: Backend) {
    let app = app(backend).await;
    // The dry run plans and shows the plan; nothing is fetched or written.
    let r = app.post("/v1/jobs/batch", json!({"request": REQUEST, "dry_run": true})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["valid"], true, "{}", r.body);
    assert_eq!(
        r.body["analysis"]["levels"],
        json!([["api_issues", "web_issues", "cli_issues"], ["report"], ["page"]]),
        "{}",
        r.body
    );
    assert_eq!(r.body["plan"]["nodes"][4]["tool"], "notion.create_page", "{}", r.body);
    assert_eq!(app.planner_calls(), 1);
    let prompt = std::fs::read_to_string(app.planner.path().join("prompt.1")).unwrap();
    assert!(prompt.contains(REQUEST), "{prompt}");
    assert!(prompt.contains("- github.list_issues: List issues in a GitHub repository"), "{prompt}");
    assert!(prompt.contains("- notion.create_page: Create a Notion page"), "{prompt}");
    assert!(!prompt.contains("list_pages"), "a tool that is not autoApproved was offered:\n{prompt}");
    assert_eq!(app.tool("/v1/tools/github/stats").await["calls"], 1, "only this stats call reached GitHub");
    assert!(app.pages().await.is_empty(), "a dry run wrote a page");

    // The real run takes the same plan from the cache and writes the page.
    let (job, result) = app.run(json!({"request": REQUEST})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(result["result"]["planning"]["cached"], true, "{result}");
    assert_eq!(app.planner_calls(), 1, "the planner was not asked again");
    check_report_reached_notion(&app, &result).await;
    check_fetches_overlapped(&app, &result, ["api_issues", "web_issues", "cli_issues"]).await;
    app.app.stop().await;
}

on_both_backends!(hand_written_seed_plan_writes_the_weekly_report, planned_from_a_request_writes_the_weekly_report);
