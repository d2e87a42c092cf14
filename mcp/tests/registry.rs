//! The registry against real MCP servers: discovery, namespacing, calls over
//! stdio, streamable HTTP and legacy SSE, timeouts, cancellation, the
//! concurrency limit, list_changed and reload.

mod support;

use std::time::{Duration, Instant};

use orch_mcp::{CallOptions, Error, Registry, RegistryEvent, RegistryOptions, ServerState, test_server};
use serde_json::{Value, json};
use support::*;
use tokio_util::sync::CancellationToken;

fn names(registry: &Registry) -> Vec<String> {
    let mut names: Vec<String> = registry.tools().into_iter().map(|t| t.name).collect();
    names.sort();
    names
}

async fn stats(registry: &Registry, server: &str) -> Value {
    let result = registry.call_tool(server, "stats", None, CallOptions::default()).await.unwrap();
    serde_json::from_str(&text(&result)).unwrap()
}

#[tokio::test]
async fn discovery_follows_pagination_and_namespaces_tools() {
    init_tracing();
    // The test server lists two tools per page: seven tools take four pages.
    let registry = start(config(json!({"mcpServers": {"t": test_stdio()}}))).await;
    assert_eq!(names(&registry), ["t.add_tool", "t.echo", "t.exit", "t.fail_n_times", "t.pid", "t.sleep", "t.stats"],);
    let status = registry.server_status("t").unwrap();
    assert_eq!((status.state, status.tools, status.transport), (ServerState::Up, 7, "stdio"));
}

#[tokio::test]
async fn several_servers_with_a_custom_separator_and_auto_approve() {
    init_tracing();
    let mut everything = everything_stdio();
    everything["autoApprove"] = json!(["echo"]);
    let config = config(json!({"mcpServers": {"everything": everything, "test": test_stdio()}}));
    let options = RegistryOptions { separator: "__".into(), ..fast_options() };
    let (registry, _) = Registry::start(config, options).await.unwrap();

    let tools = registry.tools();
    let echo = tools.iter().find(|t| t.name == "everything__echo").expect("everything__echo listed");
    assert!(echo.auto_approved);
    assert_eq!(echo.tool.name, "echo");
    assert!(tools.iter().any(|t| t.name == "everything__get-sum" && !t.auto_approved));
    assert!(tools.iter().any(|t| t.name == "test__echo" && !t.auto_approved));
    // server-everything also has resources, templates and prompts; reads and
    // prompts go upstream, and what it refuses keeps its JSON-RPC code.
    let resource = registry.resources().into_iter().find(|r| r.server == "everything").expect("a resource");
    let read = registry.read_resource("everything", &resource.resource.uri, None).await.unwrap();
    assert_eq!(read.contents.len(), 1);
    let templates = registry.resource_templates();
    assert!(templates.iter().any(|t| t.template.uri_template == "demo://resource/dynamic/text/{resourceId}"));
    let error = registry.read_resource("everything", "demo://nope", None).await.unwrap_err();
    assert!(matches!(error, Error::Refused { code: -32602, .. }), "{error}");
    assert!(registry.prompts().iter().any(|p| p.name == "everything__simple-prompt"));
    let prompt = registry.get_prompt("everything", "simple-prompt", None, None).await.unwrap();
    assert_eq!(prompt.messages.len(), 1);
    let error = registry.get_prompt("everything", "nope", None, None).await.unwrap_err();
    assert_eq!(error.to_string(), "MCP server `everything` has no prompt `nope`; prompts/list shows its prompts");
    let error = registry.get_prompt("test", "anything", None, None).await.unwrap_err();
    assert!(matches!(error, Error::UnknownPrompt { .. }), "{error}");

    let result = registry.call("everything__get-sum", args(json!({"a": 2, "b": 3})), CallOptions::default()).await;
    assert!(text(&result.unwrap()).contains('5'));
    let result = registry.call("test__echo", args(json!({"message": "hi"})), CallOptions::default()).await.unwrap();
    assert_eq!(text(&result), "hi");

    let error = registry.call("test.echo", None, CallOptions::default()).await.unwrap_err();
    assert!(matches!(error, Error::BadToolName { .. }), "{error}");
    let error = registry.call("test__nope", None, CallOptions::default()).await.unwrap_err();
    assert_eq!(error.to_string(), "MCP server `test` has no tool `nope`; GET /v1/tools?server=test lists its tools");
    let error = registry.call("ghost__echo", None, CallOptions::default()).await.unwrap_err();
    assert!(matches!(error, Error::UnknownServer { .. }), "{error}");
}

#[tokio::test]
async fn a_server_name_containing_the_separator_is_rejected() {
    let config = config(json!({"mcpServers": {"a__b": test_stdio()}}));
    let registry = Registry::new(RegistryOptions { separator: "__".into(), ..fast_options() }).unwrap();
    let report = registry.reload(config).await;
    assert_eq!(report.rejected.len(), 1);
    assert!(report.rejected[0].message.contains("separator `__`"), "{report:?}");
    assert!(registry.tools().is_empty());
}

#[tokio::test]
async fn echo_over_stdio_streamable_http_and_sse() {
    init_tracing();
    let http = HttpServer::start("streamableHttp");
    let sse = HttpServer::start("sse");
    let config = config(json!({"mcpServers": {
        "stdio": everything_stdio(),
        "http": {"transportType": "streamable-http", "url": format!("http://127.0.0.1:{}/mcp", http.port)},
        "sse": {"transportType": "sse", "url": format!("http://127.0.0.1:{}/sse", sse.port)},
    }}));
    let registry = start(config).await;
    for server in ["stdio", "http", "sse"] {
        let status = registry.server_status(server).unwrap();
        assert_eq!(status.state, ServerState::Up, "{status:?}");
        assert!(status.tools >= 12, "{server} listed {} tools", status.tools);
        let message = format!("hello over {server}");
        let result = registry
            .call_tool(server, "echo", args(json!({"message": message})), CallOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{server}: {e}"));
        assert_eq!(text(&result), format!("Echo: {message}"));
        let result =
            registry.call_tool(server, "get-sum", args(json!({"a": 40, "b": 2})), CallOptions::default()).await;
        assert!(text(&result.unwrap()).contains("42"), "{server}");
    }
}

#[tokio::test]
async fn a_slow_call_times_out_and_the_server_is_told_to_cancel() {
    init_tracing();
    let registry = start(config(json!({"mcpServers": {"t": test_stdio()}}))).await;
    let start = Instant::now();
    let options = CallOptions { timeout: Some(Duration::from_millis(300)), ..CallOptions::default() };
    let error = registry.call_tool("t", "sleep", args(json!({"ms": 10_000})), options).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert!(error.to_string().contains("tool `sleep` on MCP server `t` did not answer within 0.3s"), "{error}");
    let stats = cancelled_seen(&registry).await;
    assert_eq!(stats["cancelled"], 1, "{stats}");
}

/// The test server's stats once it has seen a cancellation (or after 2.5 s).
async fn cancelled_seen(registry: &Registry) -> Value {
    let mut seen = json!(null);
    for _ in 0..100 {
        seen = stats(registry, "t").await;
        if seen["cancelled"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    seen
}

#[tokio::test]
async fn the_configured_timeout_applies_by_default() {
    let mut server = test_stdio();
    server["timeout"] = json!(1);
    let registry = start(config(json!({"mcpServers": {"t": server}}))).await;
    let error = registry.call_tool("t", "sleep", args(json!({"ms": 5000})), CallOptions::default()).await.unwrap_err();
    assert!(matches!(error, Error::Timeout { timeout, .. } if timeout == Duration::from_secs(1)), "{error}");
}

#[tokio::test]
async fn cancelling_a_call_forwards_the_cancellation() {
    init_tracing();
    let registry = start(config(json!({"mcpServers": {"t": test_stdio()}}))).await;
    let cancel = CancellationToken::new();
    let call = {
        let registry = registry.clone();
        let options = CallOptions { cancel: Some(cancel.clone()), ..CallOptions::default() };
        tokio::spawn(async move { registry.call_tool("t", "sleep", args(json!({"ms": 10_000})), options).await })
    };
    eventually(Duration::from_secs(5), "the sleep to start", || {
        (registry.server_status("t").unwrap().connections[0].in_flight == 1).then_some(())
    })
    .await;
    cancel.cancel();
    let error = call.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "the call of tool `sleep` on MCP server `t` was cancelled by the caller");
    let stats = cancelled_seen(&registry).await;
    assert_eq!(stats["cancelled"], 1, "{stats}");
    assert_eq!(stats["active"], 0, "{stats}");
}

#[tokio::test]
async fn the_concurrency_limit_bounds_calls_in_flight() {
    init_tracing();
    let mut server = test_stdio();
    server["pool"] = json!({"min": 1, "max": 1, "concurrency": 2});
    let registry = start(config(json!({"mcpServers": {"t": server}}))).await;
    let start = Instant::now();
    let calls = (0..6).map(|_| registry.call_tool("t", "sleep", args(json!({"ms": 200})), CallOptions::default()));
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    // Six calls of 200 ms, two at a time: three rounds.
    assert!(start.elapsed() >= Duration::from_millis(600), "took {:?}", start.elapsed());
    let stats = stats(&registry, "t").await;
    assert_eq!(stats["max_active"], 2, "{stats}");
    assert_eq!(stats["calls"], 7, "{stats}");
}

#[tokio::test]
async fn tools_list_changed_refreshes_the_registry() {
    init_tracing();
    let registry = start(config(json!({"mcpServers": {"t": test_stdio()}}))).await;
    let mut events = registry.subscribe();
    let result = registry.call_tool("t", "add_tool", args(json!({"name": "fresh"})), CallOptions::default()).await;
    assert_eq!(text(&result.unwrap()), "added fresh");
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let RegistryEvent::ToolsChanged { server } = events.recv().await.unwrap() {
                return server;
            }
        }
    })
    .await
    .expect("a ToolsChanged event");
    assert_eq!(event, "t");
    assert!(names(&registry).contains(&"t.fresh".to_string()), "{:?}", names(&registry));
    let result = registry.call("t.fresh", None, CallOptions::default()).await.unwrap();
    assert_eq!(text(&result), "fresh");
}

#[tokio::test]
async fn reload_reconnects_only_changed_servers() {
    init_tracing();
    let first = json!({"mcpServers": {"keep": test_stdio(), "change": test_stdio(), "drop": test_stdio()}});
    let registry = start(config(first)).await;
    let pid = |name: &str| registry.server_status(name).unwrap().connections[0].pid.unwrap();
    let (keep, change, dropped) = (pid("keep"), pid("change"), pid("drop"));

    let mut changed = test_stdio();
    changed["timeout"] = json!(31);
    let second = json!({"mcpServers": {"keep": test_stdio(), "change": changed, "new": test_stdio()}});
    let report = registry.reload(config(second)).await;
    assert_eq!(report.added, ["new"]);
    assert_eq!(report.removed, ["drop"]);
    assert_eq!(report.changed, ["change"]);
    assert_eq!(report.unchanged, ["keep"]);

    assert_eq!(pid("keep"), keep, "an unchanged server keeps its process");
    assert_ne!(pid("change"), change, "a changed server gets a new process");
    assert!(matches!(registry.server_status("drop"), Err(Error::UnknownServer { .. })));
    eventually(Duration::from_secs(5), "the old processes to exit", || {
        (!alive(change) && !alive(dropped)).then_some(())
    })
    .await;
    assert!(alive(keep));
    let mut servers: Vec<String> = registry.tools().into_iter().map(|t| t.server).collect();
    servers.dedup();
    assert_eq!(servers, ["change", "keep", "new"]);
}

#[tokio::test]
async fn disabled_servers_are_listed_but_never_started() {
    let mut off = test_stdio();
    off["disabled"] = json!(true);
    let registry = start(config(json!({"mcpServers": {"off": off}}))).await;
    let status = registry.server_status("off").unwrap();
    assert_eq!((status.state, status.connections.len()), (ServerState::Disabled, 0));
    let error = registry.call_tool("off", "echo", None, CallOptions::default()).await.unwrap_err();
    assert!(matches!(error, Error::Disabled { .. }), "{error}");
}

#[tokio::test]
async fn a_server_that_cannot_start_is_down_with_its_error() {
    let config = config(json!({"mcpServers": {"broken": {"command": "/nonexistent/mcp-server", "timeout": 5}}}));
    let registry = start(config).await;
    let status = registry.server_status("broken").unwrap();
    assert_eq!(status.state, ServerState::Down);
    let last_error = status.last_error.unwrap();
    assert!(last_error.contains("cannot start `/nonexistent/mcp-server`"), "{last_error}");
    let error = registry.call_tool("broken", "echo", None, CallOptions::default()).await.unwrap_err();
    assert_eq!(error.server(), Some("broken"));
}

#[tokio::test]
async fn test_server_reports_latency_and_tools_or_the_failure() {
    let config = config(json!({"mcpServers": {
        "ok": everything_stdio(),
        "bad": {"url": format!("http://127.0.0.1:{}/mcp", free_port()), "timeout": 5},
    }}));
    let report = test_server(&server(&config, "ok")).await.unwrap();
    assert!(report.tools.iter().any(|t| t.name == "echo"));
    assert!(report.latency > Duration::ZERO && report.latency < Duration::from_secs(30));
    let error = test_server(&server(&config, "bad")).await.unwrap_err();
    assert!(error.to_string().starts_with("cannot connect to MCP server `bad`"), "{error}");
}
