//! Supervision against real processes: a killed child is restarted and the
//! call in flight fails clearly; nothing outlives the registry; pools grow
//! under load and shrink when idle; a restarted HTTP server is reconnected.

mod support;

use std::time::Duration;

use orch_mcp::{CallOptions, Error, ServerState};
use serde_json::json;
use support::*;

#[tokio::test]
async fn a_child_killed_mid_call_errors_clearly_and_is_restarted() {
    init_tracing();
    let registry = start(config(json!({"mcpServers": {"t": test_stdio()}}))).await;
    let before = registry.server_status("t").unwrap().connections[0].pid.unwrap();

    let call = {
        let registry = registry.clone();
        tokio::spawn(async move {
            registry.call_tool("t", "sleep", args(json!({"ms": 30_000})), CallOptions::default()).await
        })
    };
    eventually(Duration::from_secs(5), "the call to be in flight", || {
        (registry.server_status("t").unwrap().connections[0].in_flight == 1).then_some(())
    })
    .await;
    // SAFETY: kill(2) on the pid of our own child; no memory involved.
    unsafe { libc::kill(before as libc::pid_t, libc::SIGKILL) };

    let error = tokio::time::timeout(Duration::from_secs(5), call).await.expect("the call ends").unwrap().unwrap_err();
    assert!(matches!(error, Error::ConnectionLost { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "MCP server `t` closed the connection while `sleep` was running (its process exited or the connection broke); Orch is restarting it, retry the call"
    );

    let after = eventually(Duration::from_secs(10), "a restarted child", || {
        let status = registry.server_status("t").unwrap();
        status.connections.first().and_then(|c| c.pid).filter(|pid| *pid != before)
    })
    .await;
    assert!(alive(after));
    let status = registry.server_status("t").unwrap();
    assert_eq!(status.restarts, 1);
    assert!(status.last_error.as_deref().unwrap_or_default().contains("connection closed"), "{status:?}");
    // Recently failed: degraded until the new child has been up a while.
    assert_eq!(status.state, ServerState::Degraded);

    let result = registry.call_tool("t", "echo", args(json!({"message": "back"})), CallOptions::default()).await;
    assert_eq!(text(&result.unwrap()), "back");
}

#[tokio::test]
async fn a_child_that_exits_by_itself_is_restarted() {
    init_tracing();
    let registry = start(config(json!({"mcpServers": {"t": test_stdio()}}))).await;
    let error = registry.call_tool("t", "exit", args(json!({"code": 3})), CallOptions::default()).await.unwrap_err();
    assert!(matches!(error, Error::ConnectionLost { .. }), "{error}");
    // The next call does not wait for the supervisor: it reconnects itself.
    let result = registry.call_tool("t", "echo", args(json!({"message": "again"})), CallOptions::default()).await;
    assert_eq!(text(&result.unwrap()), "again");
}

#[tokio::test]
async fn no_process_outlives_the_registry() {
    init_tracing();
    // The server starts a grandchild (`sleep`) in its process group, as
    // `npx` starts `node`: it has to die too.
    let script = format!("sleep 1000 & exec {}", test_server_bin());
    let config = config(json!({"mcpServers": {
        "t": {"command": "sh", "args": ["-c", script]},
        "everything": everything_stdio(),
    }}));
    let registry = start(config).await;
    let mut groups = Vec::new();
    for name in ["t", "everything"] {
        let pid = registry.server_status(name).unwrap().connections[0].pid.unwrap();
        groups.push(pid);
    }
    let members: Vec<u32> = groups.iter().flat_map(|g| group_members(*g)).collect();
    assert!(group_members(groups[0]).len() >= 2, "server plus its sleep: {:?}", group_members(groups[0]));

    drop(registry);
    eventually(Duration::from_secs(5), "every process of the servers to exit", || {
        members.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_children_and_empties_the_registry() {
    let registry = start(config(json!({"mcpServers": {"everything": everything_stdio()}}))).await;
    let pid = registry.server_status("everything").unwrap().connections[0].pid.unwrap();
    registry.shutdown(Duration::from_secs(2)).await;
    assert!(registry.status().is_empty());
    eventually(Duration::from_secs(5), "the child to exit", || (!alive(pid)).then_some(())).await;
}

#[tokio::test]
async fn calls_spread_over_the_pool_and_idle_connections_are_reaped() {
    init_tracing();
    let mut server = test_stdio();
    server["pool"] = json!({"min": 1, "max": 3});
    let registry = start(config(json!({"mcpServers": {"t": server}}))).await;
    assert_eq!(registry.server_status("t").unwrap().connections.len(), 1);

    // Steady load makes the pool grow to max: a call that finds every
    // connection busy asks for another, and new calls go to the least busy.
    let mut calls = Vec::new();
    for _ in 0..16 {
        let registry = registry.clone();
        calls.push(tokio::spawn(async move {
            registry.call_tool("t", "sleep", args(json!({"ms": 600})), CallOptions::default()).await
        }));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let grown = eventually(Duration::from_secs(10), "the pool to grow to 3", || {
        let status = registry.server_status("t").unwrap();
        (status.connections.len() == 3).then_some(status)
    })
    .await;
    assert!(grown.connections.iter().all(|c| c.pid.is_some()));
    for call in calls {
        call.await.unwrap().unwrap();
    }

    // Idle for longer than idle_timeout (300 ms in the test options): back to min.
    eventually(Duration::from_secs(10), "idle connections to be reaped to min", || {
        (registry.server_status("t").unwrap().connections.len() == 1).then_some(())
    })
    .await;
    assert_eq!(registry.server_status("t").unwrap().state, ServerState::Up);
}

#[tokio::test]
async fn a_pool_min_above_one_starts_that_many_children() {
    let mut server = test_stdio();
    server["pool"] = json!({"min": 2, "max": 2});
    let registry = start(config(json!({"mcpServers": {"t": server}}))).await;
    let status = registry.server_status("t").unwrap();
    assert_eq!(status.connections.len(), 2);
    // A call while one child is busy goes to the other (least busy).
    let sleeping = {
        let registry = registry.clone();
        tokio::spawn(
            async move { registry.call_tool("t", "sleep", args(json!({"ms": 500})), CallOptions::default()).await },
        )
    };
    let busy = eventually(Duration::from_secs(5), "the sleep to be in flight", || {
        let status = registry.server_status("t").unwrap();
        status.connections.iter().find(|c| c.in_flight == 1).and_then(|c| c.pid)
    })
    .await;
    let other: u32 =
        text(&registry.call_tool("t", "pid", None, CallOptions::default()).await.unwrap()).parse().unwrap();
    assert_ne!(other, busy);
    assert!(status.connections.iter().any(|c| c.pid == Some(other)));
    sleeping.await.unwrap().unwrap();
    let after = registry.server_status("t").unwrap();
    assert_eq!(after.connections.len(), 2, "min connections are never reaped");
}

#[tokio::test]
async fn a_restarted_http_server_is_reconnected() {
    init_tracing();
    let port = free_port();
    let server = HttpServer::start_on("streamableHttp", port);
    let config = config(json!({"mcpServers": {
        "http": {"url": format!("http://127.0.0.1:{port}/mcp"), "timeout": 10},
    }}));
    let registry = start(config).await;
    let echo = |m: &str| registry.call_tool("http", "echo", args(json!({"message": m})), CallOptions::default());
    assert_eq!(text(&echo("one").await.unwrap()), "Echo: one");

    // A new server process knows nothing of our session.
    drop(server);
    let _server = HttpServer::start_on("streamableHttp", port);
    let mut last = None;
    for _ in 0..3 {
        match echo("two").await {
            Ok(result) => {
                last = Some(text(&result));
                break;
            }
            // The first call after the restart may fail; it must name the server.
            Err(error) => assert_eq!(error.server(), Some("http"), "{error}"),
        }
    }
    assert_eq!(last.as_deref(), Some("Echo: two"));
}

/// A server that forgot the session answers its next request 404 (as the
/// spec says) or 400 (as some SDK servers do, with a JSON-RPC error whose id
/// is null): either way the session is re-initialised and the call answered,
/// instead of waiting out the timeout for an answer that never comes.
#[tokio::test]
async fn an_expired_http_session_is_reinitialised_whether_the_server_answers_404_or_400() {
    init_tracing();
    for status in ["404", "400"] {
        let upstream = TestHttpServer::start(&["--expired-status", status]);
        let registry = start(config(json!({"mcpServers": {
            "h": {"transportType": "streamable-http", "url": upstream.url, "timeout": 30},
        }})))
        .await;
        let expired = registry.call_tool("h", "expire_session", None, CallOptions::default()).await;
        assert_eq!(text(&expired.unwrap()), "expired", "{status}");
        let started = std::time::Instant::now();
        let call = registry.call_tool("h", "echo", args(json!({"message": "after"})), CallOptions::default());
        let result = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("{status}: the call after the session expired hung"));
        assert_eq!(text(&result.unwrap_or_else(|e| panic!("{status}: {e}"))), "after", "{status}");
        assert!(started.elapsed() < Duration::from_secs(5), "{status}: took {:?}", started.elapsed());
    }
}
