//! Settings: command-line flags, then `ORCH_*` environment variables, then
//! `orch.toml`, then defaults. Everything is validated before anything starts,
//! and an error names the setting and what it allows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use orch_store::StoreUrl;
use serde::Deserialize;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; use a duration like 500ms, 30s, 10m, 7d"))
}

/// Settings every command shares.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Configuration file (TOML); `./orch.toml` is read when present.
    #[arg(long, env = "ORCH_CONFIG", global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where jobs live: sqlite://PATH or redis://HOST:PORT/DB [default: sqlite://<data-dir>/orch.db].
    #[arg(long, env = "ORCH_STORE", global = true, value_name = "URL", hide_env_values = true)]
    pub store: Option<String>,
    /// Model of chat requests that name none: auto, a provider, or provider/model
    /// (routing.default_model) [default: auto].
    #[arg(long, env = "ORCH_DEFAULT_MODEL", global = true, value_name = "MODEL")]
    pub default_model: Option<String>,
    /// Directory of the embedded store and other local state [default: ./orch-data].
    #[arg(long, env = "ORCH_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Prefix of every Redis key, so deployments can share a Redis [default: orch].
    #[arg(long, env = "ORCH_REDIS_PREFIX", global = true, value_name = "PREFIX")]
    pub redis_prefix: Option<String>,
    /// Log filter, e.g. info or orch_worker=debug [default: info].
    #[arg(long, env = "ORCH_LOG", global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "ORCH_LOG_FORMAT", global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Also serve GET /metrics (Prometheus text) on this address, without a key, for a
    /// scraper on a private network; `orch worker` serves its metrics only here [default: none].
    #[arg(long, env = "ORCH_METRICS_ADDR", global = true, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Internal networks webhooks may reach anyway, comma-separated CIDRs, e.g.
    /// 10.0.0.0/8,fd00::/8 [default: none].
    #[arg(long, env = "ORCH_WEBHOOK_ALLOW", global = true, value_name = "CIDRS")]
    pub webhook_allow: Option<String>,
    /// Response statuses that end a webhook delivery as failed without retrying, comma-separated,
    /// or none [default: 404,410].
    #[arg(long, env = "ORCH_WEBHOOK_FAIL_STATUSES", global = true, value_name = "CODES")]
    pub webhook_fail_statuses: Option<String>,
    /// Default vault path of the payload's Obsidian note; {date}, {slug}, {id}, {kind}
    /// [default: Inbox/{date}-{slug}-{id}.md].
    #[arg(long, env = "ORCH_WEBHOOK_OBSIDIAN_PATH", global = true, value_name = "TEMPLATE")]
    pub webhook_obsidian_path: Option<String>,
    /// Multiplies the webhook retry schedule (5s, 30s, 2m, … 24h); below 1 only for tests,
    /// 0.001 to 1 [default: 1].
    #[arg(long, env = "ORCH_WEBHOOK_RETRY_SCALE", global = true, value_name = "FACTOR")]
    pub webhook_retry_scale: Option<f64>,
    /// Days before a provider credential's known expiry when it counts as expiring
    /// (/health/tokens, the provider.auth_expiring webhook), 0–365 [default: 7].
    #[arg(long, env = "ORCH_TOKEN_WARN_DAYS", global = true, value_name = "DAYS")]
    pub token_warn_days: Option<u32>,
    /// Shortest time between two job.progress deliveries of one job to one URL; the
    /// progress of the meantime is coalesced into the next, 100ms to 1h [default: 5s].
    #[arg(long, env = "ORCH_WEBHOOK_PROGRESS_INTERVAL", global = true, value_name = "DURATION", value_parser = duration)]
    pub webhook_progress_interval: Option<Duration>,
    /// Most items one plan `map` runs over, checked at submission (a list in the plan, or a
    /// reference to plan input) and on the resolved list when the map starts, 1–1000000 [default: 10000].
    #[arg(long, env = "ORCH_PLAN_MAX_ITEMS", global = true, value_name = "N")]
    pub plan_max_items: Option<usize>,
    /// Most bytes (as JSON) of node outputs, map items included, one batch job holds while it
    /// runs; the node crossing it fails, 1048576–17179869184 [default: 67108864].
    #[arg(long, env = "ORCH_PLAN_MAX_OUTPUT_BYTES", global = true, value_name = "BYTES")]
    pub plan_max_output_bytes: Option<usize>,
}

/// Settings of the HTTP API.
#[derive(Debug, Args, Clone, Default)]
pub struct ApiArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ORCH_BIND", value_name = "HOST:PORT")]
    pub bind: Option<String>,
    /// Base of the URLs returned to callers, e.g. https://orch.example.com [default: relative URLs].
    #[arg(long, env = "ORCH_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Largest request body in bytes [default: 2097152].
    #[arg(long, env = "ORCH_MAX_BODY", value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// Attempts of jobs that do not set max_attempts, 1–20 [default: 3].
    #[arg(long, env = "ORCH_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// MCP servers to connect to (Claude Desktop / Cline format); changes apply on save
    /// [default: ./mcp-config.json when present].
    #[arg(long, env = "ORCH_MCP_CONFIG", value_name = "PATH")]
    pub mcp_config: Option<PathBuf>,
    /// Between server and tool in tool names: `.` gives github.search; `__` for clients
    /// that reject dots [default: .].
    #[arg(long, env = "ORCH_MCP_SEPARATOR", value_name = "TEXT")]
    pub mcp_separator: Option<String>,
    /// PEM file of CA certificates trusted for https:// MCP servers, besides the
    /// system's roots (for servers behind a private CA) [default: none].
    #[arg(long, env = "ORCH_MCP_CA_FILE", value_name = "PATH")]
    pub mcp_ca_file: Option<PathBuf>,
    /// Internal MCP servers that servers registered through the API may reach anyway:
    /// comma-separated CIDRs, addresses and host names, e.g. 10.0.0.0/8,mcp.internal
    /// (mcp-config.json's servers are the operator's and not checked) [default: none].
    #[arg(long, env = "ORCH_MCP_ALLOW", value_name = "LIST")]
    pub mcp_allow: Option<String>,
    /// Let admins register stdio MCP servers (commands run on this host) through the API:
    /// true or false [default: false].
    #[arg(long, env = "ORCH_ALLOW_STDIO_REGISTRATION", value_name = "BOOL")]
    pub allow_stdio_registration: Option<String>,
    /// Largest chat prompt (all messages together) in bytes; more is refused with 413
    /// [default: 524288].
    #[arg(long, env = "ORCH_MAX_PROMPT_BYTES", value_name = "BYTES")]
    pub max_prompt_bytes: Option<usize>,
    /// Longest POST /v1/chat/completions waits for its answer before 504 [default: 15m].
    #[arg(long, env = "ORCH_CHAT_WAIT", value_name = "DURATION", value_parser = duration)]
    pub chat_wait: Option<Duration>,
    /// How long an unused chat session (X-Session-ID) is kept; each turn restarts it [default: 1h].
    #[arg(long, env = "ORCH_SESSION_TTL", value_name = "DURATION", value_parser = duration)]
    pub session_ttl: Option<Duration>,
    /// How long an MCP session of /mcp or /mcp/{server} is kept with no request and no
    /// open stream [default: 5m].
    #[arg(long, env = "ORCH_MCP_SESSION_IDLE", value_name = "DURATION", value_parser = duration)]
    pub mcp_session_idle: Option<Duration>,
    /// How long a connection may take to send a request's headers, from when it opens
    /// or its last response ends; slow, silent and idle connections are closed [default: 30s].
    #[arg(long, env = "ORCH_HEADER_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub header_timeout: Option<Duration>,
    /// Most connections open at once; more are answered 503 and closed [default: 4096].
    #[arg(long, env = "ORCH_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most event streams (SSE: job events, streamed chat, /sse, GET /mcp) open at once;
    /// more are 503 [default: 1000].
    #[arg(long, env = "ORCH_MAX_STREAMS", value_name = "N")]
    pub max_streams: Option<usize>,
    /// Most event streams one API key may hold open; more are 429 [default: 100].
    #[arg(long, env = "ORCH_MAX_STREAMS_PER_KEY", value_name = "N")]
    pub max_streams_per_key: Option<usize>,
    /// Requests a minute each API key may make, for keys that set none; more are 429.
    /// 0 for unlimited [default: 0].
    #[arg(long, env = "ORCH_RATE_LIMIT_PER_MINUTE", value_name = "N")]
    pub rate_limit_per_minute: Option<u32>,
    /// Jobs a UTC day each API key may submit, for keys that set none; more are 429.
    /// 0 for unlimited [default: 0].
    #[arg(long, env = "ORCH_JOBS_PER_DAY", value_name = "N")]
    pub jobs_per_day: Option<u32>,
}

/// Settings of a worker.
#[derive(Debug, Args, Clone, Default)]
pub struct WorkerArgs {
    /// Jobs one worker process runs at once [default: 256].
    #[arg(long, env = "ORCH_WORKER_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
    /// How long a claimed job stays with a worker that stopped heartbeating [default: 30s].
    #[arg(long, env = "ORCH_LEASE", value_name = "DURATION", value_parser = duration)]
    pub lease: Option<Duration>,
    /// How often an idle worker looks for jobs queued by other processes [default: 200ms].
    #[arg(long, env = "ORCH_POLL_INTERVAL", value_name = "DURATION", value_parser = duration)]
    pub poll_interval: Option<Duration>,
    /// Delay before the first retry; doubles per attempt [default: 1s].
    #[arg(long, env = "ORCH_RETRY_BASE", value_name = "DURATION", value_parser = duration)]
    pub retry_base: Option<Duration>,
    /// Longest delay between attempts [default: 10m].
    #[arg(long, env = "ORCH_RETRY_MAX", value_name = "DURATION", value_parser = duration)]
    pub retry_max: Option<Duration>,
    /// Longest one attempt may run [default: 1h].
    #[arg(long, env = "ORCH_JOB_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub job_timeout: Option<Duration>,
    /// How long finished jobs and their results are kept [default: 7d].
    #[arg(long, env = "ORCH_RETENTION", value_name = "DURATION", value_parser = duration)]
    pub retention: Option<Duration>,
    /// How long audit records (`GET /v1/audit`) are kept [default: 30d].
    #[arg(long, env = "ORCH_AUDIT_RETENTION", value_name = "DURATION", value_parser = duration)]
    pub audit_retention: Option<Duration>,
    /// On shutdown, how long running jobs may take to finish [default: 30s].
    #[arg(long, env = "ORCH_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = duration)]
    pub shutdown_grace: Option<Duration>,
    /// Answers the planner model may give for one request before the job fails, 1–10 [default: 3].
    #[arg(long, env = "ORCH_PLANNER_ATTEMPTS", value_name = "N")]
    pub planner_attempts: Option<u32>,
    /// How long a plan is reused for the same request, tools and planner model; 0s turns the cache off [default: 1h].
    #[arg(long, env = "ORCH_PLANNER_CACHE_TTL", value_name = "DURATION", value_parser = duration)]
    pub planner_cache_ttl: Option<Duration>,
    /// Most tools shown to the planner (the most relevant to the request), 1–500 [default: 40].
    #[arg(long, env = "ORCH_PLANNER_MAX_TOOLS", value_name = "N")]
    pub planner_max_tools: Option<usize>,
    /// Plan node outputs larger than this (as JSON) are stored once and referenced from events and results, 1024–16777216 [default: 65536].
    #[arg(long, env = "ORCH_PLAN_INLINE_OUTPUT_BYTES", value_name = "BYTES")]
    pub plan_inline_output_bytes: Option<usize>,
}

/// `orch.toml`: the same settings, by the flag names with `_`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    store: Option<String>,
    data_dir: Option<PathBuf>,
    redis_prefix: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    metrics_addr: Option<String>,
    bind: Option<String>,
    public_url: Option<String>,
    max_body: Option<usize>,
    max_attempts: Option<u32>,
    mcp_config: Option<PathBuf>,
    mcp_separator: Option<String>,
    mcp_ca_file: Option<PathBuf>,
    mcp_allow: Option<Vec<String>>,
    allow_stdio_registration: Option<bool>,
    max_prompt_bytes: Option<usize>,
    chat_wait: Option<String>,
    session_ttl: Option<String>,
    mcp_session_idle: Option<String>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
    max_streams: Option<usize>,
    max_streams_per_key: Option<usize>,
    rate_limit_per_minute: Option<u32>,
    jobs_per_day: Option<u32>,
    /// `[providers.NAME]` tables; without any, the four built-ins with defaults.
    providers: Option<orch_providers::ProvidersConfig>,
    routing: Option<orch_providers::RoutingConfig>,
    concurrency: Option<usize>,
    lease: Option<String>,
    poll_interval: Option<String>,
    retry_base: Option<String>,
    retry_max: Option<String>,
    job_timeout: Option<String>,
    retention: Option<String>,
    audit_retention: Option<String>,
    shutdown_grace: Option<String>,
    webhook_allow: Option<Vec<String>>,
    webhook_fail_statuses: Option<Vec<u16>>,
    webhook_obsidian_path: Option<String>,
    webhook_retry_scale: Option<f64>,
    token_warn_days: Option<u32>,
    webhook_progress_interval: Option<String>,
    planner_attempts: Option<u32>,
    planner_cache_ttl: Option<String>,
    planner_max_tools: Option<usize>,
    plan_inline_output_bytes: Option<usize>,
    plan_max_items: Option<usize>,
    plan_max_output_bytes: Option<usize>,
}

/// Every setting, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreUrl,
    pub redis_prefix: String,
    pub log: String,
    pub log_json: bool,
    pub bind: SocketAddr,
    /// Where `GET /metrics` is served without a key (`ORCH_METRICS_ADDR`).
    pub metrics_addr: Option<SocketAddr>,
    pub api: orch_api::ApiConfig,
    pub worker: orch_worker::WorkerConfig,
    /// mcp-config.json and whether the API may register stdio servers.
    pub mcp: orch_api::servers::McpSettings,
    /// Between server and tool in namespaced tool names.
    pub mcp_separator: String,
    /// Extra CA certificates for https:// MCP servers (checked: readable, PEM).
    pub mcp_ca_file: Option<PathBuf>,
    /// Where MCP servers registered through the API may connect (ORCH_MCP_ALLOW).
    pub mcp_egress: orch_egress::Guard,
    pub webhooks: orch_webhooks::WebhookConfig,
    /// Where local state lives (the SQLite store, providers' working dirs).
    pub data_dir: PathBuf,
    /// The providers (file, then `ORCH_PROVIDER_*` variables) and routing, checked together.
    pub providers: orch_providers::ProvidersConfig,
    pub routing: orch_providers::RoutingConfig,
    /// The LLM planner of batch requests.
    pub planner: orch_worker::PlannerSettings,
    /// Plan node outputs longer than this are stored apart and referenced.
    pub plan_inline_output_bytes: usize,
    /// Most map items and most bytes of node outputs of one batch job.
    pub plan_limits: orch_planner::PlanLimits,
}

impl Settings {
    /// The providers and routing, ready to run turns; their state under `data_dir/providers`.
    pub fn router(&self) -> Result<orch_providers::Router> {
        orch_providers::Router::from_config(&self.providers, self.routing.clone(), &self.data_dir.join("providers"))
            .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))
    }

    /// Like [`Settings::router`], each provider's concurrency limit also held
    /// across every worker through `shared`.
    pub fn shared_router(&self, shared: Arc<dyn orch_providers::SharedLimit>) -> Result<orch_providers::Router> {
        orch_providers::Router::from_config_shared(
            &self.providers,
            self.routing.clone(),
            &self.data_dir.join("providers"),
            shared,
        )
        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))
    }
}

fn load_file(explicit: Option<&Path>) -> Result<FileConfig> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new("orch.toml").exists() => PathBuf::from("orch.toml"),
        None => return Ok(FileConfig::default()),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn file_duration(name: &str, value: Option<&String>) -> Result<Option<Duration>> {
    value.map(|v| duration(v).map_err(|e| anyhow::anyhow!("orch.toml: {name} = {v:?}: {e}"))).transpose()
}

/// Resolves flags, environment, file and defaults into [`Settings`].
pub fn resolve(global: &GlobalArgs, api: &ApiArgs, worker: &WorkerArgs) -> Result<Settings> {
    let file = load_file(global.config.as_deref())?;
    let data_dir = global.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("orch-data"));
    let store_text = global.store.clone().or(file.store);
    let store = match &store_text {
        Some(url) => StoreUrl::parse(url).map_err(|e| anyhow::anyhow!("ORCH_STORE (--store): {e}"))?,
        None => StoreUrl::Sqlite(data_dir.join("orch.db")),
    };
    let log_format = global.log_format.clone().or(file.log_format).unwrap_or_else(|| "text".into());
    let log_json = match log_format.as_str() {
        "text" => false,
        "json" => true,
        other => bail!("ORCH_LOG_FORMAT (--log-format): {other:?} is not a log format; allowed: text, json"),
    };
    let bind_text = api.bind.clone().or(file.bind).unwrap_or_else(|| "127.0.0.1:8080".into());
    let bind: SocketAddr = bind_text.parse().map_err(|_| {
        anyhow::anyhow!(
            "ORCH_BIND (--bind): {bind_text:?} is not an address; use HOST:PORT like 127.0.0.1:8080 or 0.0.0.0:8080"
        )
    })?;
    let metrics_addr = match global.metrics_addr.clone().or(file.metrics_addr) {
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            anyhow::anyhow!(
                "ORCH_METRICS_ADDR (--metrics-addr): {text:?} is not an address; use HOST:PORT like 127.0.0.1:9090"
            )
        })?),
        None => None,
    };
    let public_url = api.public_url.clone().or(file.public_url).unwrap_or_default();
    if !(public_url.is_empty() || public_url.starts_with("http://") || public_url.starts_with("https://")) {
        bail!("ORCH_PUBLIC_URL (--public-url): {public_url:?} must start with http:// or https://");
    }
    let max_body = api.max_body.or(file.max_body).unwrap_or(2 * 1024 * 1024);
    if max_body < 1024 {
        bail!("ORCH_MAX_BODY (--max-body): {max_body} is too small; allowed: 1024 bytes or more");
    }
    let max_attempts = api.max_attempts.or(file.max_attempts).unwrap_or(3);
    if !(1..=orch_api::jobs::MAX_ATTEMPTS).contains(&max_attempts) {
        bail!(
            "ORCH_MAX_ATTEMPTS (--max-attempts): {max_attempts} is out of range; allowed: 1 to {}",
            orch_api::jobs::MAX_ATTEMPTS
        );
    }
    let mcp_file = match api.mcp_config.clone().or(file.mcp_config) {
        Some(path) => {
            if !path.is_file() {
                bail!(
                    "ORCH_MCP_CONFIG (--mcp-config): {} is not a readable file; give the path of an mcp-config.json",
                    path.display()
                );
            }
            Some(path)
        }
        None => Some(PathBuf::from("mcp-config.json")).filter(|p| p.is_file()),
    };
    let mcp_separator = api.mcp_separator.clone().or(file.mcp_separator).unwrap_or_else(|| ".".into());
    if mcp_separator.is_empty() || mcp_separator.len() > 8 || mcp_separator.chars().any(char::is_whitespace) {
        bail!(
            "ORCH_MCP_SEPARATOR (--mcp-separator): {mcp_separator:?} is not a separator; use 1 to 8 characters without spaces, e.g. . or __"
        );
    }
    let mcp_ca_file = api.mcp_ca_file.clone().or(file.mcp_ca_file);
    if let Some(path) = &mcp_ca_file {
        orch_mcp::tls::ca_certificates(path).map_err(|e| {
            anyhow::anyhow!("ORCH_MCP_CA_FILE (--mcp-ca-file): {e}; give a PEM file of one or more CA certificates")
        })?;
    }
    let mcp_allow: Vec<String> = match &api.mcp_allow {
        Some(text) => text.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
        None => file.mcp_allow.unwrap_or_default(),
    };
    let (allow, allow_hosts) = orch_egress::parse_allow(&mcp_allow, true).map_err(|bad| {
        anyhow::anyhow!("ORCH_MCP_ALLOW (--mcp-allow): {bad:?} is neither a CIDR, an address nor a host name; use forms like 10.0.0.0/8, 192.168.1.5, fd00::/8 or mcp.internal, comma-separated")
    })?;
    let mcp_egress = orch_egress::Guard { allow, allow_hosts, ..orch_mcp::mcp_guard() };
    let allow_api_stdio = match api.allow_stdio_registration.as_deref() {
        Some(text) => parse_bool(text).ok_or_else(|| {
            anyhow::anyhow!(
                "ORCH_ALLOW_STDIO_REGISTRATION (--allow-stdio-registration): {text:?} is not a boolean; allowed: true, false"
            )
        })?,
        None => file.allow_stdio_registration.unwrap_or(false),
    };

    let max_prompt_bytes = api.max_prompt_bytes.or(file.max_prompt_bytes).unwrap_or(512 * 1024);
    if max_prompt_bytes < 1024 {
        bail!(
            "ORCH_MAX_PROMPT_BYTES (--max-prompt-bytes): {max_prompt_bytes} is too small; allowed: 1024 bytes or more"
        );
    }
    let chat_wait = match api.chat_wait {
        Some(d) => d,
        None => file_duration("chat_wait", file.chat_wait.as_ref())?.unwrap_or(Duration::from_secs(900)),
    };
    if chat_wait < Duration::from_secs(1) {
        bail!("ORCH_CHAT_WAIT (--chat-wait): {chat_wait:?} is too short; allowed: 1s or more");
    }
    let session_ttl = match api.session_ttl {
        Some(d) => d,
        None => file_duration("session_ttl", file.session_ttl.as_ref())?.unwrap_or(Duration::from_secs(3600)),
    };
    if session_ttl < Duration::from_secs(1) {
        bail!("ORCH_SESSION_TTL (--session-ttl): {session_ttl:?} is too short; allowed: 1s or more");
    }
    let mcp_session_idle = match api.mcp_session_idle {
        Some(d) => d,
        None => file_duration("mcp_session_idle", file.mcp_session_idle.as_ref())?.unwrap_or(Duration::from_secs(300)),
    };
    if mcp_session_idle < Duration::from_secs(1) {
        bail!("ORCH_MCP_SESSION_IDLE (--mcp-session-idle): {mcp_session_idle:?} is too short; allowed: 1s or more");
    }
    let header_timeout = match api.header_timeout {
        Some(d) => d,
        None => file_duration("header_timeout", file.header_timeout.as_ref())?.unwrap_or(Duration::from_secs(30)),
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&header_timeout) {
        bail!("ORCH_HEADER_TIMEOUT (--header-timeout): {header_timeout:?} is out of range; allowed: 1s to 1h");
    }
    let max_connections = api.max_connections.or(file.max_connections).unwrap_or(4096);
    if max_connections == 0 {
        bail!("ORCH_MAX_CONNECTIONS (--max-connections): 0 would refuse every connection; allowed: 1 or more");
    }
    let max_streams = api.max_streams.or(file.max_streams).unwrap_or(1000);
    let max_streams_per_key = api.max_streams_per_key.or(file.max_streams_per_key).unwrap_or(100);
    if max_streams == 0 || max_streams_per_key == 0 {
        bail!("ORCH_MAX_STREAMS / ORCH_MAX_STREAMS_PER_KEY: 0 would refuse every event stream; allowed: 1 or more");
    }
    let rate_limit_per_minute = api.rate_limit_per_minute.or(file.rate_limit_per_minute).unwrap_or(0);
    let jobs_per_day = api.jobs_per_day.or(file.jobs_per_day).unwrap_or(0);
    let token_warn_days = global.token_warn_days.or(file.token_warn_days).unwrap_or(7);
    if token_warn_days > 365 {
        bail!("ORCH_TOKEN_WARN_DAYS (--token-warn-days): {token_warn_days} is out of range; allowed: 0 to 365");
    }
    let mut providers = file.providers.unwrap_or_default();
    providers.apply_env(std::env::vars()).map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
    providers.validate().map_err(|e| anyhow::anyhow!("orch.toml / ORCH_PROVIDER_*: {}: {}", e.field, e.message))?;
    let mut routing = file.routing.unwrap_or_default();
    if let Some(model) = global.default_model.clone() {
        routing.default_model = model;
    }

    let mut w = orch_worker::WorkerConfig::new(orch_worker::worker_id());
    w.concurrency = worker.concurrency.or(file.concurrency).unwrap_or(w.concurrency);
    if !(1..=100_000).contains(&w.concurrency) {
        bail!("ORCH_WORKER_CONCURRENCY (--concurrency): {} is out of range; allowed: 1 to 100000", w.concurrency);
    }
    let pick = |flag: Option<Duration>, name: &str, text: Option<&String>, default: Duration| -> Result<Duration> {
        Ok(flag.or(file_duration(name, text)?).unwrap_or(default))
    };
    w.lease = pick(worker.lease, "lease", file.lease.as_ref(), w.lease)?;
    w.poll_interval = pick(worker.poll_interval, "poll_interval", file.poll_interval.as_ref(), w.poll_interval)?;
    w.retry_base = pick(worker.retry_base, "retry_base", file.retry_base.as_ref(), w.retry_base)?;
    w.retry_max = pick(worker.retry_max, "retry_max", file.retry_max.as_ref(), w.retry_max)?;
    w.job_timeout = pick(worker.job_timeout, "job_timeout", file.job_timeout.as_ref(), w.job_timeout)?;
    w.retention = pick(worker.retention, "retention", file.retention.as_ref(), w.retention)?;
    w.audit_retention =
        pick(worker.audit_retention, "audit_retention", file.audit_retention.as_ref(), w.audit_retention)?;
    if w.audit_retention < Duration::from_secs(60) {
        bail!("ORCH_AUDIT_RETENTION (--audit-retention): {:?} is too short; allowed: 1m or more", w.audit_retention);
    }
    w.shutdown_grace = pick(worker.shutdown_grace, "shutdown_grace", file.shutdown_grace.as_ref(), w.shutdown_grace)?;
    let mut planner = orch_worker::PlannerSettings::default();
    planner.max_attempts = worker.planner_attempts.or(file.planner_attempts).unwrap_or(planner.max_attempts);
    if !(1..=10).contains(&planner.max_attempts) {
        bail!("ORCH_PLANNER_ATTEMPTS (--planner-attempts): {} is out of range; allowed: 1 to 10", planner.max_attempts);
    }
    planner.cache_ttl =
        pick(worker.planner_cache_ttl, "planner_cache_ttl", file.planner_cache_ttl.as_ref(), planner.cache_ttl)?;
    planner.max_tools = worker.planner_max_tools.or(file.planner_max_tools).unwrap_or(planner.max_tools);
    if !(1..=500).contains(&planner.max_tools) {
        bail!("ORCH_PLANNER_MAX_TOOLS (--planner-max-tools): {} is out of range; allowed: 1 to 500", planner.max_tools);
    }
    let plan_inline_output_bytes = worker
        .plan_inline_output_bytes
        .or(file.plan_inline_output_bytes)
        .unwrap_or(orch_worker::plan::DEFAULT_INLINE_OUTPUT_BYTES);
    if !(1024..=16 * 1024 * 1024).contains(&plan_inline_output_bytes) {
        bail!(
            "ORCH_PLAN_INLINE_OUTPUT_BYTES (--plan-inline-output-bytes): {plan_inline_output_bytes} is out of range; allowed: 1024 to 16777216"
        );
    }
    let mut plan_limits = orch_planner::PlanLimits::default();
    plan_limits.max_items = global.plan_max_items.or(file.plan_max_items).unwrap_or(plan_limits.max_items);
    if !(1..=1_000_000).contains(&plan_limits.max_items) {
        bail!(
            "ORCH_PLAN_MAX_ITEMS (--plan-max-items): {} is out of range; allowed: 1 to 1000000",
            plan_limits.max_items
        );
    }
    plan_limits.max_output_bytes =
        global.plan_max_output_bytes.or(file.plan_max_output_bytes).unwrap_or(plan_limits.max_output_bytes);
    if !(1 << 20..=16 << 30).contains(&plan_limits.max_output_bytes) {
        bail!(
            "ORCH_PLAN_MAX_OUTPUT_BYTES (--plan-max-output-bytes): {} is out of range; allowed: 1048576 to 17179869184",
            plan_limits.max_output_bytes
        );
    }
    if w.lease < Duration::from_millis(300) {
        bail!(
            "ORCH_LEASE (--lease): {:?} is too short; allowed: 300ms or more (heartbeats run every lease/3)",
            w.lease
        );
    }
    if w.poll_interval < Duration::from_millis(1) || w.poll_interval > Duration::from_secs(60) {
        bail!("ORCH_POLL_INTERVAL (--poll-interval): allowed: 1ms to 60s");
    }
    if w.retry_base > w.retry_max {
        bail!("ORCH_RETRY_BASE (--retry-base) must not exceed ORCH_RETRY_MAX (--retry-max)");
    }
    if w.retention < Duration::from_secs(60) {
        bail!("ORCH_RETENTION (--retention): {:?} is too short; allowed: 1m or more", w.retention);
    }

    let file_webhooks =
        (file.webhook_allow, file.webhook_fail_statuses, file.webhook_obsidian_path, file.webhook_retry_scale);
    let mut webhooks = webhook_settings(global, file_webhooks, &public_url)?;
    let progress_interval = match global.webhook_progress_interval {
        Some(d) => Some(d),
        None => file_duration("webhook_progress_interval", file.webhook_progress_interval.as_ref())?,
    };
    if let Some(interval) = progress_interval {
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
            bail!(
                "ORCH_WEBHOOK_PROGRESS_INTERVAL (--webhook-progress-interval): {interval:?} is out of range; allowed: 100ms to 1h"
            );
        }
        webhooks.progress_interval = interval;
    }

    let settings = Settings {
        store,
        webhooks,

        redis_prefix: global.redis_prefix.clone().or(file.redis_prefix).unwrap_or_else(|| "orch".into()),
        log: global.log.clone().or(file.log).unwrap_or_else(|| "info".into()),
        log_json,
        bind,
        metrics_addr,
        api: orch_api::ApiConfig {
            public_url,
            max_body,
            default_max_attempts: max_attempts,
            max_prompt_bytes,
            chat_wait,
            session_ttl,
            token_warn_days,
            mcp_session_idle,
            header_timeout,
            max_connections,
            max_streams,
            max_streams_per_key,
            plan_limits,
            rate_limit_per_minute,
            jobs_per_day,
        },
        worker: w,
        mcp: orch_api::servers::McpSettings { file: mcp_file, allow_api_stdio },
        mcp_separator,
        mcp_ca_file,
        mcp_egress,
        data_dir,
        providers,
        routing,
        planner,
        plan_inline_output_bytes,
        plan_limits,
    };
    // Routing names providers and models: checked against them before anything starts.
    settings.router()?;
    Ok(settings)
}

/// The `webhook_*` settings of orch.toml: allow, fail statuses, obsidian path, retry scale.
type FileWebhooks = (Option<Vec<String>>, Option<Vec<u16>>, Option<String>, Option<f64>);

fn webhook_settings(
    global: &GlobalArgs,
    (file_allow, file_fail, file_obsidian, file_scale): FileWebhooks,
    public_url: &str,
) -> Result<orch_webhooks::WebhookConfig> {
    let mut config = orch_webhooks::WebhookConfig { public_url: public_url.to_owned(), ..Default::default() };
    let split = |text: &str| text.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    let allow: Vec<String> = match &global.webhook_allow {
        Some(text) => split(text),
        None => file_allow.unwrap_or_default(),
    };
    for net in allow {
        config.allow.push(net.parse().map_err(|_| {
            anyhow::anyhow!("ORCH_WEBHOOK_ALLOW (--webhook-allow): {net:?} is not a CIDR; use forms like 10.0.0.0/8, 127.0.0.1/32 or fd00::/8, comma-separated")
        })?);
    }
    if let Some(text) = &global.webhook_fail_statuses {
        config.fail_statuses = Vec::new();
        for code in split(text).into_iter().filter(|c: &String| c != "none") {
            config.fail_statuses.push(code.parse().ok().filter(|c| (400..600).contains(c)).ok_or_else(|| {
                anyhow::anyhow!("ORCH_WEBHOOK_FAIL_STATUSES (--webhook-fail-statuses): {code:?} is not an HTTP error status; give codes from 400 to 599, comma-separated, or none")
            })?);
        }
    } else if let Some(codes) = file_fail {
        if let Some(bad) = codes.iter().find(|c| !(400..600).contains(*c)) {
            bail!("orch.toml: webhook_fail_statuses: {bad} is not an HTTP error status; allowed: 400 to 599");
        }
        config.fail_statuses = codes;
    }
    if let Some(path) = global.webhook_obsidian_path.clone().or(file_obsidian) {
        if let Err(e) = orch_webhooks::payload::check_obsidian_path(&path) {
            bail!("ORCH_WEBHOOK_OBSIDIAN_PATH (--webhook-obsidian-path): {e}");
        }
        config.obsidian_path = path;
    }
    if let Some(scale) = global.webhook_retry_scale.or(file_scale) {
        if !(0.001..=1.0).contains(&scale) {
            bail!("ORCH_WEBHOOK_RETRY_SCALE (--webhook-retry-scale): {scale} is out of range; allowed: 0.001 to 1");
        }
        config.retry_scale = scale;
    }
    Ok(config)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}
