//! `orch bench gateway`: what the MCP gateway adds to a tool call.
//!
//! The upstream is the project's test MCP server in streamable-HTTP mode
//! (`orch-mcp-test-server --http`, beside `orch`), so the direct path and the
//! gateway path speak the same transport. One client (Orch's own MCP client,
//! `orch_mcp::Registry`, one session per path) calls its `echo` tool directly
//! and through an `orch serve` child's `/mcp/echo`, alternately, so both paths
//! see the same machine load. Reported:
//! 1. latency p50 / p99 of both paths and the difference (the added latency);
//! 2. calls/s at concurrency 1 and 32 on both paths;
//! 3. memory per pooled connection: `orch serve`'s RSS after a stdio server's
//!    pool grows from 1 to 1 + N children, and after a streamable-HTTP
//!    server's pool grows from 1 to 1 + N sessions, divided by N (Orch's
//!    memory only; the children's own is not Orch's);
//! 4. `tools/list` on `/mcp` of a second `orch serve` whose registry holds
//!    1,000 tools of 50 stdio servers.
//!
//! Like the other benches it reports and asserts nothing about speed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use orch_mcp::{CallOptions, Registry, RegistryOptions};
use serde_json::{Value, json};

use crate::bench::{ServeChild, percentiles, proc_status_kib};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Calls per path in the one-at-a-time run.
    #[arg(long, default_value_t = 2_000)]
    pub calls: usize,
    /// Calls per path in the concurrent run.
    #[arg(long, default_value_t = 5_000)]
    pub concurrent_calls: usize,
    /// Callers of the concurrent run.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Connections added to a pool for the memory figure.
    #[arg(long, default_value_t = 32)]
    pub pool: usize,
}

/// Servers and tools per server of the `tools/list` run: 50 × 20 = 1,000.
const LIST_SERVERS: usize = 50;
const TOOLS_PER_SERVER: usize = 20;
/// Tools the test server always has (echo, sleep, ...); `--tools` adds the rest.
const TEST_SERVER_TOOLS: usize = 7;

pub async fn gateway(args: GatewayArgs) -> Result<()> {
    ensure!(
        args.calls > 0 && args.concurrent_calls > 0 && args.concurrency > 0 && args.pool > 0,
        "--calls, --concurrent-calls, --concurrency and --pool must be at least 1"
    );
    let test_server = std::env::current_exe()
        .context("finding the orch executable")?
        .parent()
        .context("the orch executable's directory")?
        .join("orch-mcp-test-server");
    ensure!(
        test_server.exists(),
        "{} is missing: build it (`cargo build [--release] -p orch-mcp --bin orch-mcp-test-server`)",
        test_server.display()
    );
    println!(
        "== MCP gateway: /mcp/{{server}} of an orch serve child vs the same streamable-HTTP upstream directly ({} build) ==",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );

    let upstream = Upstream::start(&test_server).await?;
    let dir = tempfile::Builder::new().prefix("orch-bench-gateway-").tempdir().context("temp dir")?;
    let config = |stdio_pool: usize, http_pool: usize| {
        let pool = |n: usize| json!({"min": n, "max": n, "concurrency": 256});
        json!({"mcpServers": {
            "echo": {"transportType": "streamable-http", "url": upstream.url, "pool": pool(1)},
            "stdio": {"command": test_server, "pool": pool(stdio_pool)},
            "http": {"transportType": "streamable-http", "url": upstream.url, "pool": pool(http_pool)},
        }})
    };
    write_config(dir.path(), &config(1, 1))?;
    let mut serve = ServeChild::start(dir.path(), |_| {}).await?;
    let result = async {
        serve.wait_servers(&[("echo", 1), ("stdio", 1), ("http", 1)]).await?;
        calls(&serve, &upstream, &args).await?;
        memory(&serve, dir.path(), &args, config).await
    }
    .await;
    serve.stop().await;
    result?;

    tools_list(&test_server).await
}

/// Latency and calls/s of both paths.
async fn calls(serve: &ServeChild, upstream: &Upstream, args: &GatewayArgs) -> Result<()> {
    let gateway_url = format!("{}/mcp/echo", serve.url);
    let pool = json!({"min": 1, "max": 1, "concurrency": 1024});
    let text = json!({"mcpServers": {
        "direct": {"transportType": "streamable-http", "url": upstream.url, "pool": pool},
        "gateway": {"transportType": "streamable-http", "url": gateway_url, "pool": pool,
                    "headers": {"Authorization": format!("Bearer {}", serve.key)}},
    }})
    .to_string();
    let parsed = orch_mcp::config::parse(&text, |_| None)?;
    ensure!(parsed.errors.is_empty(), "client config: {:?}", parsed.errors);
    let (client, report) = Registry::start(parsed.config, RegistryOptions::default()).await?;
    ensure!(report.rejected.is_empty(), "client config: {:?}", report.rejected);
    for path in ["direct", "gateway"] {
        let status = client.server_status(path)?;
        ensure!(status.tools > 0, "the {path} path lists no tools: {:?}", status.last_error);
    }

    // Warm-up: connections, the key cache, allocator; not counted.
    for _ in 0..200 {
        call(&client, "direct").await?;
        call(&client, "gateway").await?;
    }
    let (mut direct, mut gateway) = (Vec::with_capacity(args.calls), Vec::with_capacity(args.calls));
    for _ in 0..args.calls {
        direct.push(call(&client, "direct").await?);
        gateway.push(call(&client, "gateway").await?);
    }
    let rate = |latencies: &[Duration]| latencies.len() as f64 / latencies.iter().sum::<Duration>().as_secs_f64();
    let (direct_rate, gateway_rate) = (rate(&direct), rate(&gateway));
    let (d50, d99) = (quantile(&mut direct, 0.50), quantile(&mut direct, 0.99));
    let (g50, g99) = (quantile(&mut gateway, 0.50), quantile(&mut gateway, 0.99));
    println!("\n`echo` tool calls, one at a time, {} per path, alternating:", args.calls);
    println!("direct to the upstream        {}", percentiles(direct));
    println!("through /mcp/echo             {}", percentiles(gateway));
    println!(
        "added latency                 p50 {:.3} ms  p99 {:.3} ms   (target p50 <= 0.3 ms)",
        ms(g50) - ms(d50),
        ms(g99) - ms(d99)
    );
    println!("calls/s at concurrency 1      direct {direct_rate:.0}  through orch {gateway_rate:.0}");

    let mut line = format!("calls/s at concurrency {:<6} ", args.concurrency);
    for path in ["direct", "gateway"] {
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..args.concurrency {
            let (client, next, total) = (client.clone(), next.clone(), args.concurrent_calls);
            callers.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    call(&client, path).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(joined) = callers.join_next().await {
            joined.context("caller task")??;
        }
        let label = if path == "direct" { "direct" } else { "through orch" };
        line += &format!("{label} {:.0}  ", args.concurrent_calls as f64 / started.elapsed().as_secs_f64());
    }
    println!("{}({} calls per path)", line, args.concurrent_calls);
    client.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

async fn call(client: &Registry, path: &str) -> Result<Duration> {
    let started = Instant::now();
    let arguments = json!({"message": "ping"});
    let result = client
        .call_tool(path, "echo", arguments.as_object().cloned(), CallOptions::default())
        .await
        .with_context(|| format!("calling echo on the {path} path"))?;
    let took = started.elapsed();
    let text = serde_json::to_value(&result)?["content"][0]["text"].as_str().map(str::to_owned);
    ensure!(text.as_deref() == Some("ping"), "echo on the {path} path answered {result:?}");
    Ok(took)
}

/// Orch's RSS per added stdio child and per added HTTP session.
async fn memory(
    serve: &ServeChild,
    dir: &Path,
    args: &GatewayArgs,
    config: impl Fn(usize, usize) -> Value,
) -> Result<()> {
    let n = args.pool;
    let settled_rss = || async {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        proc_status_kib(serve.pid, "VmRSS")
    };
    let base = settled_rss().await?;
    write_config(dir, &config(1 + n, 1))?;
    serve.wait_servers(&[("stdio", 1 + n)]).await?;
    let stdio = settled_rss().await?;
    write_config(dir, &config(1 + n, 1 + n))?;
    serve.wait_servers(&[("http", 1 + n)]).await?;
    let http = settled_rss().await?;
    let per = |from: u64, to: u64| to.saturating_sub(from) as f64 / n as f64;
    println!("\nmemory per pooled connection (orch serve's RSS, pool grown from 1 to {}):", 1 + n);
    println!(
        "stdio child                   {:.0} KiB  (RSS {:.1} -> {:.1} MiB)",
        per(base, stdio),
        base as f64 / 1024.0,
        stdio as f64 / 1024.0
    );
    println!(
        "streamable-HTTP session       {:.0} KiB  (RSS {:.1} -> {:.1} MiB)",
        per(stdio, http),
        stdio as f64 / 1024.0,
        http as f64 / 1024.0
    );
    Ok(())
}

/// `tools/list` on `/mcp` of a registry of 1,000 tools over 50 servers.
async fn tools_list(test_server: &Path) -> Result<()> {
    let extra = (TOOLS_PER_SERVER - TEST_SERVER_TOOLS).to_string();
    let servers: serde_json::Map<String, Value> = (0..LIST_SERVERS)
        .map(|i| (format!("s{i:02}"), json!({"command": test_server, "args": ["--tools", extra]})))
        .collect();
    let dir = tempfile::Builder::new().prefix("orch-bench-gateway-list-").tempdir().context("temp dir")?;
    write_config(dir.path(), &json!({"mcpServers": servers}))?;
    let mut serve = ServeChild::start(dir.path(), |_| {}).await?;
    let result = async {
        let want: Vec<(String, usize)> = servers.keys().map(|name| (name.clone(), 1)).collect();
        let want: Vec<(&str, usize)> = want.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        serve.wait_servers(&want).await?;
        let session = McpSession::open(&serve).await?;
        let mut took = Vec::new();
        let mut upstream_tools = 0;
        for round in 0..25 {
            let started = Instant::now();
            let tools = session.list_tools().await?;
            if round >= 5 {
                took.push(started.elapsed());
            }
            upstream_tools = tools.iter().filter(|name| name.contains('.')).count();
        }
        ensure!(
            upstream_tools == LIST_SERVERS * TOOLS_PER_SERVER,
            "tools/list returned {upstream_tools} upstream tools, expected {}",
            LIST_SERVERS * TOOLS_PER_SERVER
        );
        println!(
            "\ntools/list on /mcp, {upstream_tools} tools of {LIST_SERVERS} servers (plus Orch's own), 20 requests: {} (target < 10 ms)",
            percentiles(took)
        );
        anyhow::Ok(())
    }
    .await;
    serve.stop().await;
    result
}

/// A raw MCP session on `/mcp` (so the timing is one HTTP request).
struct McpSession {
    client: reqwest::Client,
    url: String,
    key: String,
    id: String,
}

impl McpSession {
    async fn open(serve: &ServeChild) -> Result<McpSession> {
        let client = reqwest::Client::builder().tcp_nodelay(true).timeout(Duration::from_secs(30)).build()?;
        let url = format!("{}/mcp", serve.url);
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "orch-bench", "version": env!("CARGO_PKG_VERSION")}}});
        let response = client
            .post(&url)
            .bearer_auth(&serve.key)
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
            .await?;
        ensure!(response.status().is_success(), "initialize on /mcp answered {}", response.status());
        let id = response.headers().get("mcp-session-id").context("no mcp-session-id")?.to_str()?.to_owned();
        let session = McpSession { client, url, key: serve.key.clone(), id };
        let response = session.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await?;
        ensure!(response.status().is_success(), "notifications/initialized answered {}", response.status());
        Ok(session)
    }

    async fn post(&self, body: &Value) -> Result<reqwest::Response> {
        Ok(self
            .client
            .post(&self.url)
            .bearer_auth(&self.key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.id)
            .json(body)
            .send()
            .await?)
    }

    /// The names of every tool, read from the response's SSE `data` lines.
    async fn list_tools(&self) -> Result<Vec<String>> {
        let response = self.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await?;
        ensure!(response.status().is_success(), "tools/list answered {}", response.status());
        let body = response.text().await?;
        for line in body.lines() {
            let Some(data) = line.strip_prefix("data:") else { continue };
            let Ok(message) = serde_json::from_str::<Value>(data.trim()) else { continue };
            if message["id"] == 1 {
                let tools = message["result"]["tools"].as_array().context("tools/list result has no tools")?;
                ensure!(message["result"]["nextCursor"].is_null(), "tools/list paged; expected one page");
                return Ok(tools.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect());
            }
        }
        bail!("tools/list answered no result: {body}")
    }
}

/// The test server in streamable-HTTP mode on a free port.
struct Upstream {
    url: String,
    _child: tokio::process::Child,
}

impl Upstream {
    async fn start(test_server: &PathBuf) -> Result<Upstream> {
        let port = orch_testkit::free_port();
        let child = tokio::process::Command::new(test_server)
            .args(["--http", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", test_server.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            ensure!(Instant::now() < deadline, "the test server did not listen on port {port} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Upstream { url: format!("http://127.0.0.1:{port}/mcp"), _child: child })
    }
}

fn write_config(dir: &Path, config: &Value) -> Result<()> {
    // Written whole and renamed, so the watcher never reads half a file.
    let tmp = dir.join("mcp-config.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(config)?)?;
    std::fs::rename(&tmp, dir.join("mcp-config.json"))?;
    Ok(())
}

fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort_unstable();
    let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
    latencies[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
