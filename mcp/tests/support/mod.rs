//! Test support: the real MCP servers the tests run (server-everything from the
//! pinned npm package in tests/servers, and this crate's test server), configs
//! for them, and waiting helpers. Missing node or npm packages fail the test.

#![allow(dead_code, unused_imports)] // Each test binary uses a different part.

use std::time::{Duration, Instant};

use orch_mcp::config::{self, Parsed};
use orch_mcp::{McpConfig, Registry, RegistryOptions, ServerConfig};
use serde_json::{Value, json};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("orch_mcp=debug,rmcp=warn").try_init();
}

pub use orch_testkit::everything::{HttpServer, node};
pub use orch_testkit::free_port;

/// server-everything's entry point, from the pinned package in tests/servers.
pub fn everything() -> String {
    orch_testkit::everything::entry()
}

/// The test server binary built from src/bin.
pub fn test_server_bin() -> String {
    env!("CARGO_BIN_EXE_orch-mcp-test-server").into()
}

/// Parses a config, failing the test on any error.
pub fn config(value: Value) -> McpConfig {
    let Parsed { config, errors, .. } = config::parse(&value.to_string(), |_| None).expect("config parses");
    assert!(errors.is_empty(), "config errors: {errors:?}");
    config
}

pub fn server(config: &McpConfig, name: &str) -> ServerConfig {
    config.servers[name].clone()
}

pub fn everything_stdio() -> Value {
    json!({"command": node(), "args": [everything(), "stdio"], "timeout": 30})
}

pub fn test_stdio() -> Value {
    json!({"command": test_server_bin(), "timeout": 30})
}

/// Options with short intervals, so supervision shows within a test.
pub fn fast_options() -> RegistryOptions {
    RegistryOptions {
        health_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(300),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        ..RegistryOptions::default()
    }
}

pub async fn start(config: McpConfig) -> Registry {
    let (registry, report) = Registry::start(config, fast_options()).await.expect("registry starts");
    assert!(report.rejected.is_empty(), "{report:?}");
    registry
}

/// Polls `check` until it returns `Some`, failing after `within`.
pub async fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A process is alive if /proc has it and it is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Every live process whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the `(comm)`: state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// The text of a tool result's first content block.
pub fn text(result: &orch_mcp::model::CallToolResult) -> String {
    let value = serde_json::to_value(result).unwrap();
    value["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

pub fn args(value: Value) -> Option<serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        _ => panic!("arguments must be an object"),
    }
}

/// This crate's test server in streamable-HTTP mode (`--http`), at `url`.
pub struct TestHttpServer {
    pub url: String,
    child: std::process::Child,
}

impl TestHttpServer {
    /// On a free port, once it listens; `args` are more flags (`--expired-status 400`).
    pub fn start(args: &[&str]) -> TestHttpServer {
        let port = free_port();
        let child = std::process::Command::new(test_server_bin())
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the test server in HTTP mode");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the test server did not listen on port {port} within 10s");
            std::thread::sleep(Duration::from_millis(20));
        }
        TestHttpServer { url: format!("http://127.0.0.1:{port}/mcp"), child }
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
