//! The registry: every configured server's pool, their tools under namespaced
//! names, calls by server and tool, reloads that reconnect only what changed,
//! and a broadcast of tool and state changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolResult, GetPromptRequestParams, GetPromptResult, JsonObject, Prompt, ReadResourceRequestParams,
    ReadResourceResult, Resource, ResourceTemplate, Tool,
};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{ConfigError, McpConfig, ServerConfig};
use crate::conn;
use crate::egress::Clients;
use crate::error::Error;
use crate::pool::{ServerPool, ServerStatus};

/// Knobs of the registry itself (per-server settings live in the config).
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Between server and tool in namespaced names: `.` gives `github.search`;
    /// use `__` for clients that reject dots in tool names.
    pub separator: String,
    /// How often each server is pinged (and its pool checked).
    pub health_interval: Duration,
    /// Longest wait for a ping (also capped by the server's timeout).
    pub ping_timeout: Duration,
    /// Connections idle this long are closed, down to `pool.min`.
    pub idle_timeout: Duration,
    /// First delay before reconnecting a failed server; doubles per failure.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// PEM file of CA certificates trusted for `https://` upstreams besides the
    /// system's roots (`ORCH_MCP_CA_FILE`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Where servers registered through the API ([`ServerConfig::guarded`])
    /// may connect: its allow list is `ORCH_MCP_ALLOW`.
    pub egress: orch_egress::Guard,
}

/// The egress guard of MCP servers with an empty allow list.
pub fn mcp_guard() -> orch_egress::Guard {
    orch_egress::Guard::new("MCP servers registered through the API", "ORCH_MCP_ALLOW (hosts and CIDRs)")
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            separator: ".".into(),
            health_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            ca_file: None,
            egress: mcp_guard(),
        }
    }
}

/// A tool of one server, with its namespaced name.
#[derive(Debug, Clone)]
pub struct ToolEntry {
    /// `server<separator>tool`, unique across the registry.
    pub name: String,
    pub server: String,
    /// As the server listed it (its `name` is the server's own name for it).
    pub tool: Tool,
    /// In the server's `autoApprove` list: planner-generated plans may use it
    /// without the caller naming it.
    pub auto_approved: bool,
}

#[derive(Debug, Clone)]
pub struct ResourceEntry {
    pub server: String,
    pub resource: Resource,
}

#[derive(Debug, Clone)]
pub struct ResourceTemplateEntry {
    pub server: String,
    pub template: ResourceTemplate,
}

#[derive(Debug, Clone)]
pub struct PromptEntry {
    /// `server<separator>prompt`.
    pub name: String,
    pub server: String,
    pub prompt: Prompt,
}

/// What changed in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// The server's tools changed (listed for the first time, list_changed,
    /// reload, removal). Exposed MCP endpoints send their clients
    /// `notifications/tools/list_changed`.
    ToolsChanged { server: String },
    /// The server went up, degraded, down or disabled.
    ServerState { server: String, state: crate::pool::ServerState, last_error: Option<String> },
}

/// Per-call settings.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Overrides the server's `timeout`.
    pub timeout: Option<Duration>,
    /// Cancelling it abandons the call and tells the server (`notifications/cancelled`).
    pub cancel: Option<CancellationToken>,
    /// Sent as the request's `_meta` (plans put their idempotency key here).
    pub meta: Option<JsonObject>,
}

/// What [`Registry::reload`] did, by server name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Their config changed: reconnected.
    pub changed: Vec<String>,
    /// Same config: connections kept.
    pub unchanged: Vec<String>,
    /// Servers the registry refused (for example a name containing the separator).
    pub rejected: Vec<ConfigError>,
}

/// The servers Orch is connected to. Cheap to clone; dropping the last clone
/// stops the supervisors and kills every child process group.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    options: Arc<RegistryOptions>,
    http: Clients,
    servers: RwLock<BTreeMap<String, Arc<ServerPool>>>,
    events: broadcast::Sender<RegistryEvent>,
    /// Moving average of successful call durations (ms) by namespaced tool name.
    latencies: Mutex<HashMap<String, f64>>,
    /// Parent of every supervisor's stop token.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl Registry {
    /// An empty registry; [`Registry::reload`] adds servers.
    pub fn new(options: RegistryOptions) -> Result<Registry, Error> {
        if options.separator.is_empty() {
            return Err(Error::Options { message: "`separator` must not be empty; use `.` or `__`".into() });
        }
        let http = Clients::new(options.ca_file.as_deref(), &options.egress)
            .map_err(|message| Error::Options { message: format!("`ca_file`: {message}") })?;
        let stop = CancellationToken::new();
        let (events, _) = broadcast::channel(256);
        Ok(Registry {
            inner: Arc::new(Inner {
                options: Arc::new(options),
                http,
                servers: RwLock::default(),
                events,
                latencies: Mutex::default(),
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        })
    }

    /// A registry with these servers connected (or down and retrying).
    pub async fn start(config: McpConfig, options: RegistryOptions) -> Result<(Registry, ReloadReport), Error> {
        let registry = Registry::new(options)?;
        let report = registry.reload(config).await;
        Ok((registry, report))
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.inner.options
    }

    /// Tool and server-state changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.inner.events.subscribe()
    }

    fn servers(&self) -> BTreeMap<String, Arc<ServerPool>> {
        self.inner.servers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn server(&self, name: &str) -> Result<Arc<ServerPool>, Error> {
        self.inner
            .servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownServer { server: name.into() })
    }

    /// Applies a configuration: new servers start, removed ones stop, changed
    /// ones (any field differs) reconnect, unchanged ones keep their connections.
    /// Waits for the first connection attempt of each started server, so the
    /// registry lists their tools on return (a server that failed is down and retried).
    pub async fn reload(&self, config: McpConfig) -> ReloadReport {
        let mut report = ReloadReport::default();
        let current = self.servers();
        let mut wanted: BTreeMap<String, ServerConfig> = BTreeMap::new();
        for (name, server) in config.servers {
            if name.contains(&self.inner.options.separator) {
                report.rejected.push(ConfigError {
                    server: name.clone(),
                    field: "name".into(),
                    message: format!(
                        "contains the tool-name separator `{}`, so its tool names would be ambiguous; rename the server",
                        self.inner.options.separator
                    ),
                });
                continue;
            }
            wanted.insert(name, server);
        }
        let mut to_start = Vec::new();
        for (name, server) in &wanted {
            match current.get(name) {
                Some(pool) if pool.config == *server => report.unchanged.push(name.clone()),
                Some(_) => {
                    report.changed.push(name.clone());
                    to_start.push(server.clone());
                }
                None => {
                    report.added.push(name.clone());
                    to_start.push(server.clone());
                }
            }
        }
        report.removed = current.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();

        let started = futures::future::join_all(to_start.into_iter().map(|server| {
            ServerPool::start(
                server,
                self.inner.options.clone(),
                self.inner.http.clone(),
                self.inner.events.clone(),
                self.inner.stop.child_token(),
            )
        }))
        .await;
        let replaced: Vec<Arc<ServerPool>> = {
            let mut servers = self.inner.servers.write().unwrap_or_else(|p| p.into_inner());
            let mut replaced: Vec<_> = report.removed.iter().filter_map(|name| servers.remove(name)).collect();
            for pool in started {
                replaced.extend(servers.insert(pool.config.name.clone(), pool));
            }
            replaced
        };
        // Old pools go after the new ones are in, so a changed server is never missing.
        for pool in &replaced {
            pool.shutdown(Duration::from_secs(2)).await;
        }
        for name in report.removed.iter().chain(&report.changed) {
            let _ = self.inner.events.send(RegistryEvent::ToolsChanged { server: name.clone() });
        }
        report
    }

    /// Every tool of every enabled server that has listed its tools.
    pub fn tools(&self) -> Vec<ToolEntry> {
        let separator = &self.inner.options.separator;
        let mut out = Vec::new();
        for (name, pool) in self.servers() {
            let Some(catalog) = pool.catalog() else { continue };
            for tool in catalog.tools {
                out.push(ToolEntry {
                    name: format!("{name}{separator}{}", tool.name),
                    server: name.clone(),
                    auto_approved: pool.config.auto_approve.contains(tool.name.as_ref()),
                    tool,
                });
            }
        }
        out
    }

    pub fn resources(&self) -> Vec<ResourceEntry> {
        self.servers()
            .into_iter()
            .flat_map(|(name, pool)| {
                let resources = pool.catalog().map(|c| c.resources).unwrap_or_default();
                resources.into_iter().map(move |resource| ResourceEntry { server: name.clone(), resource })
            })
            .collect()
    }

    pub fn resource_templates(&self) -> Vec<ResourceTemplateEntry> {
        self.servers()
            .into_iter()
            .flat_map(|(name, pool)| {
                let templates = pool.catalog().map(|c| c.resource_templates).unwrap_or_default();
                templates.into_iter().map(move |template| ResourceTemplateEntry { server: name.clone(), template })
            })
            .collect()
    }

    pub fn prompts(&self) -> Vec<PromptEntry> {
        let separator = self.inner.options.separator.clone();
        self.servers()
            .into_iter()
            .flat_map(|(name, pool)| {
                let prompts = pool.catalog().map(|c| c.prompts).unwrap_or_default();
                let separator = separator.clone();
                prompts.into_iter().map(move |prompt| PromptEntry {
                    name: format!("{name}{separator}{}", prompt.name),
                    server: name.clone(),
                    prompt,
                })
            })
            .collect()
    }

    /// Splits `server<separator>tool` into its parts. Server names cannot
    /// contain the separator, so the first occurrence is the split.
    pub fn resolve<'a>(&self, name: &'a str) -> Result<(&'a str, &'a str), Error> {
        let separator = &self.inner.options.separator;
        name.split_once(separator.as_str())
            .filter(|(server, tool)| !server.is_empty() && !tool.is_empty())
            .ok_or_else(|| Error::BadToolName { name: name.into(), separator: separator.clone() })
    }

    /// Calls `tool` on `server`. The tool must be in the server's listed tools.
    pub async fn call_tool(
        &self,
        server: &str,
        tool: &str,
        arguments: Option<JsonObject>,
        options: CallOptions,
    ) -> Result<CallToolResult, Error> {
        let pool = self.server(server)?;
        if pool.config.disabled {
            return Err(Error::Disabled { server: server.into() });
        }
        let known = pool.lists_tool(tool).unwrap_or(true);
        if !known {
            return Err(Error::UnknownTool { server: server.into(), tool: tool.into() });
        }
        let started = Instant::now();
        let span = tracing::info_span!("mcp_call", server, tool);
        let result = tracing::Instrument::instrument(pool.call(tool, arguments, options), span).await;
        // By server only: the per-tool figures are the plan nodes' (orch_node_duration_seconds).
        let outcome = match &result {
            Ok(r) if r.is_error == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(e) => error_label(e),
        };
        let server_label = server.to_owned();
        metrics::counter!("orch_mcp_calls_total", "server" => server_label.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!("orch_mcp_call_duration_seconds", "server" => server_label, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        if result.is_ok() {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let name = format!("{server}{}{tool}", self.inner.options.separator);
            let mut latencies = self.inner.latencies.lock().unwrap_or_else(|p| p.into_inner());
            let average = latencies.entry(name).or_insert(ms);
            *average = 0.8 * *average + 0.2 * ms;
        }
        result
    }

    /// Average duration of successful calls by namespaced tool name, in
    /// milliseconds (calls made through this registry since it started).
    pub fn tool_latencies(&self) -> HashMap<String, f64> {
        self.inner.latencies.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls a tool by its namespaced name.
    pub async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
        options: CallOptions,
    ) -> Result<CallToolResult, Error> {
        let (server, tool) = self.resolve(name)?;
        self.call_tool(server, tool, arguments, options).await
    }

    /// Reads a resource of `server` (any URI: listed, or matching one of its
    /// templates; the server decides). Same timeout, limits and cancellation
    /// as a tool call.
    pub async fn read_resource(
        &self,
        server: &str,
        uri: &str,
        cancel: Option<CancellationToken>,
    ) -> Result<ReadResourceResult, Error> {
        let params = ReadResourceRequestParams::new(uri);
        let pool = self.server(server)?;
        pool.request("resources/read", cancel, move |conn| async move { conn.service.read_resource(params).await })
            .await
    }

    /// Gets a prompt of `server` by its own name. The prompt must be in the
    /// server's listed prompts; the server checks the arguments.
    pub async fn get_prompt(
        &self,
        server: &str,
        prompt: &str,
        arguments: Option<JsonObject>,
        cancel: Option<CancellationToken>,
    ) -> Result<GetPromptResult, Error> {
        let pool = self.server(server)?;
        let known = pool.catalog().is_none_or(|c| c.prompts.iter().any(|p| p.name == prompt));
        if !known {
            return Err(Error::UnknownPrompt { server: server.into(), prompt: prompt.into() });
        }
        let mut params = GetPromptRequestParams::new(prompt);
        params.arguments = arguments;
        pool.request("prompts/get", cancel, move |conn| async move { conn.service.get_prompt(params).await }).await
    }

    pub fn status(&self) -> Vec<ServerStatus> {
        self.servers().values().map(|pool| pool.status()).collect()
    }

    pub fn server_status(&self, name: &str) -> Result<ServerStatus, Error> {
        Ok(self.server(name)?.status())
    }

    /// Closes every server: children get `grace` to exit after their stdin
    /// closes, then their process groups are killed. The registry is empty after.
    pub async fn shutdown(&self, grace: Duration) {
        let pools: Vec<Arc<ServerPool>> =
            std::mem::take(&mut *self.inner.servers.write().unwrap_or_else(|p| p.into_inner())).into_values().collect();
        futures::future::join_all(pools.iter().map(|pool| pool.shutdown(grace))).await;
        self.inner.stop.cancel();
    }
}

/// The result of [`test_server`].
#[derive(Debug, Clone)]
pub struct TestReport {
    /// Connecting, initialising and listing tools.
    pub latency: Duration,
    pub tools: Vec<Tool>,
}

/// Connects to one server, initialises, lists its tools and disconnects;
/// for "test this server" before (or without) adding it to the registry.
/// `https://` servers are checked against the system's roots only; see
/// [`Registry::test_server`] for the registry's own CA settings.
/// A guarded server ([`ServerConfig::guarded`]) is held to an empty allow list.
pub async fn test_server(config: &ServerConfig) -> Result<TestReport, Error> {
    let http = Clients::new(None, &mcp_guard()).map_err(|message| Error::Options { message })?;
    test_server_with(config, &http).await
}

impl Registry {
    /// [`test_server`] with this registry's HTTP client (its `ca_file`).
    pub async fn test_server(&self, config: &ServerConfig) -> Result<TestReport, Error> {
        test_server_with(config, &self.inner.http).await
    }
}

async fn test_server_with(config: &ServerConfig, http: &Clients) -> Result<TestReport, Error> {
    let server = config.name.clone();
    let start = Instant::now();
    let signals = Arc::default();
    let conn = conn::connect(config, http, signals)
        .await
        .map_err(|reason| Error::Connect { server: server.clone(), reason })?;
    let listing = conn.service.peer().list_all_tools();
    let tools = tokio::time::timeout(config.timeout, listing)
        .await
        .map_err(|_| Error::Timeout { server: server.clone(), tool: "tools/list".into(), timeout: config.timeout })?
        .map_err(|e| Error::Upstream {
            server: server.clone(),
            operation: "tools/list".into(),
            reason: crate::egress::describe(config, &e.to_string()),
        })?;
    let latency = start.elapsed();
    conn.service.cancellation_token().cancel();
    Ok(TestReport { latency, tools })
}

/// A failed call's outcome label (a bounded set).
fn error_label(error: &Error) -> &'static str {
    match error {
        Error::Timeout { .. } => "timeout",
        Error::Cancelled { .. } => "cancelled",
        Error::Down { .. } | Error::Connect { .. } | Error::ConnectionLost { .. } | Error::Shutdown => "unavailable",
        Error::Upstream { .. } | Error::Refused { .. } => "upstream_error",
        Error::UnknownServer { .. }
        | Error::UnknownTool { .. }
        | Error::UnknownPrompt { .. }
        | Error::BadToolName { .. }
        | Error::Disabled { .. }
        | Error::Options { .. } => "unknown_tool",
    }
}
