//! `mcp-config.json`: the Claude Desktop / Cline format, validated per server.
//!
//! ```json
//! {"mcpServers": {
//!   "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"],
//!              "env": {"GITHUB_TOKEN": "${GITHUB_TOKEN}"}, "timeout": 30,
//!              "autoApprove": ["search_repositories"], "pool": {"min": 1, "max": 2}},
//!   "remote": {"transportType": "streamable-http", "url": "https://example.com/mcp",
//!              "headers": {"Authorization": "Bearer ${REMOTE_TOKEN}"}}
//! }}
//! ```
//!
//! Fields per server: `command`, `args`, `env`, `cwd` (stdio); `url`, `headers`
//! (HTTP); `transportType` (`stdio` | `sse` | `streamable-http`, also `http` and
//! `streamableHttp`; Cline's `type` is accepted too; without it, `command` means
//! stdio and `url` means streamable HTTP); `timeout` in **seconds** per tool call
//! (Cline's convention; default 60); `autoApprove` (tool names); `disabled`;
//! `pool` `{min, max, concurrency}` (defaults 1, 1, 16).
//!
//! `${VAR}` anywhere in `command`, `args`, `env`, `cwd`, `url` and `headers`
//! expands from the environment, so secrets stay out of the file; a variable
//! that is not set is an error for that server. Disabled servers are not
//! expanded: a server is often disabled because its secret is missing.
//!
//! Unknown fields are reported as warnings (a typo like `autoapprove` would
//! otherwise silently do nothing) and do not invalidate the server.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// A value that must never be printed: `env` values and `headers` values.
/// `Debug` and `Display` show `<redacted>`; [`Secret::expose`] gives the value
/// to the one place that needs it (the child's environment, the HTTP request).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The valid, enabled-or-disabled servers of one configuration, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpConfig {
    pub servers: BTreeMap<String, ServerConfig>,
}

/// One server, validated and with `${VAR}`s expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub name: String,
    pub transport: TransportConfig,
    /// Per tool call (Cline's `timeout`, given in seconds in the file); also
    /// bounds connecting and initialising.
    pub timeout: Duration,
    /// Tools that planner-generated plans may use without the caller naming them.
    pub auto_approve: BTreeSet<String>,
    pub disabled: bool,
    pub pool: PoolConfig,
    /// Registered through the API rather than written by the operator: an
    /// HTTP server's URL must pass the registry's egress guard
    /// ([`crate::RegistryOptions::egress`]) at every connect. The config
    /// file's servers are the operator's and are not guarded.
    pub guarded: bool,
}

/// How to reach a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportConfig {
    /// A child process speaking JSON-RPC lines on stdin/stdout.
    Stdio { command: String, args: Vec<String>, env: BTreeMap<String, Secret>, cwd: Option<PathBuf> },
    /// Legacy HTTP+SSE (protocol 2024-11-05): a GET event stream plus POSTs.
    Sse { url: String, headers: BTreeMap<String, Secret> },
    /// Streamable HTTP (protocol 2025-03-26 and later).
    StreamableHttp { url: String, headers: BTreeMap<String, Secret> },
}

impl TransportConfig {
    /// The name users write in `transportType`.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportConfig::Stdio { .. } => "stdio",
            TransportConfig::Sse { .. } => "sse",
            TransportConfig::StreamableHttp { .. } => "streamable-http",
        }
    }
}

/// Connections kept per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections kept open while idle (idle ones above this are reaped).
    pub min: usize,
    /// Most connections (stdio: child processes; HTTP: sessions).
    pub max: usize,
    /// Most tool calls in flight on this server at once; more wait their turn
    /// (the wait counts against the call's timeout).
    pub concurrency: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        // One child by default: many stdio servers keep state (a browser, a
        // memory file) that two processes would split.
        PoolConfig { min: 1, max: 1, concurrency: 16 }
    }
}

/// What a configuration file yielded: the valid servers, and what was wrong
/// with the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub config: McpConfig,
    /// One per invalid server (that server is left out of `config`).
    pub errors: Vec<ConfigError>,
    /// Unknown fields; the server is kept.
    pub warnings: Vec<ConfigError>,
}

/// A problem with one field of one server, worded for the person editing the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mcp-config.json: server `{server}`, field `{field}`: {message}")]
pub struct ConfigError {
    pub server: String,
    pub field: String,
    pub message: String,
}

/// The file as a whole could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read MCP config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("MCP config {path} is not valid JSON: {source}; expected {{\"mcpServers\": {{\"<name>\": {{...}}}}}}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error(
        "MCP config {path}: `mcpServers` must be an object of servers by name, e.g. {{\"mcpServers\": {{\"github\": {{\"command\": \"npx\"}}}}}}"
    )]
    Shape { path: PathBuf },
}

/// Reads and parses a config file, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Parsed, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.into(), source })?;
    parse(&text, |name| std::env::var(name).ok()).map_err(|e| e.at(path))
}

/// Parses config text; `env` answers `${VAR}` look-ups (the process environment
/// in [`load`]; a map in tests).
pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Parsed, FileError> {
    let here = PathBuf::from("<text>");
    let root: Value = serde_json::from_str(text).map_err(|source| FileError::Json { path: here.clone(), source })?;
    let servers = match root.get("mcpServers") {
        Some(Value::Object(servers)) => servers,
        None if root.is_object() => return Ok(Parsed::default()),
        _ => return Err(FileError::Shape { path: here }),
    };
    let mut parsed = Parsed::default();
    for (name, entry) in servers {
        match parse_server(name, entry, &env, &mut parsed.warnings) {
            Ok(server) => {
                parsed.config.servers.insert(name.clone(), server);
            }
            Err(error) => parsed.errors.push(error),
        }
    }
    Ok(parsed)
}

impl FileError {
    fn at(self, path: &Path) -> FileError {
        match self {
            FileError::Json { source, .. } => FileError::Json { path: path.into(), source },
            FileError::Shape { .. } => FileError::Shape { path: path.into() },
            read @ FileError::Read { .. } => read,
        }
    }
}

/// Server names become the prefix of tool names (`server.tool`), URL path
/// segments (`/mcp/{server}`) and command-line words, so they are kept to a
/// safe alphabet and start with a letter or digit (never `-rf`).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid server name `{name}`: use 1 to 64 letters, digits, `_` or `-`, starting with a letter or digit"
        ))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServer {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    timeout: Option<u64>,
    #[serde(default)]
    auto_approve: Vec<String>,
    transport_type: Option<String>,
    #[serde(rename = "type")]
    cline_type: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    disabled: bool,
    pool: Option<RawPool>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    min: Option<usize>,
    max: Option<usize>,
    concurrency: Option<usize>,
}

const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
const MAX_POOL: usize = 64;
/// Headers the transports set themselves; a config value would break the protocol.
const RESERVED_HEADERS: &[&str] =
    &["accept", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id"];

fn parse_server(
    name: &str,
    entry: &Value,
    env: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<ConfigError>,
) -> Result<ServerConfig, ConfigError> {
    let err = |field: &str, message: String| ConfigError { server: name.into(), field: field.into(), message };
    validate_name(name).map_err(|m| err("name", m))?;
    let raw: RawServer = serde_path_to_error::deserialize(entry).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        err(&field, e.into_inner().to_string())
    })?;
    for field in raw.unknown.keys() {
        warnings.push(err(field, "unknown field, ignored".into()));
    }
    let expand = |field: &str, value: &str| -> Result<String, ConfigError> {
        if raw.disabled { Ok(value.to_string()) } else { expand_vars(value, env).map_err(|m| err(field, m)) }
    };

    let kind = match (raw.transport_type.as_deref(), raw.cline_type.as_deref()) {
        (Some(t), _) => Some(("transportType", t)),
        (None, Some(t)) => Some(("type", t)),
        (None, None) => None,
    };
    let kind = match kind {
        Some((field, value)) => match value {
            "stdio" => "stdio",
            "sse" => "sse",
            "streamable-http" | "streamableHttp" | "streamable_http" | "http" => "streamable-http",
            other => {
                return Err(err(
                    field,
                    format!("unknown transport `{other}`; use \"stdio\", \"sse\" or \"streamable-http\""),
                ));
            }
        },
        None if raw.command.is_some() => "stdio",
        None if raw.url.is_some() => "streamable-http",
        None => return Err(err("command", "missing: give `command` (stdio) or `url` (HTTP)".into())),
    };

    let headers = || -> Result<BTreeMap<String, Secret>, ConfigError> {
        let mut out = BTreeMap::new();
        for (key, value) in &raw.headers {
            let field = format!("headers.{key}");
            let header = http::HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| err(&field, format!("`{key}` is not a valid HTTP header name")))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(err(&field, format!("`{key}` is set by the MCP transport itself; remove it")));
            }
            let value = expand(&field, value)?;
            // Only say that the value is wrong, never what it is: it is a secret.
            http::HeaderValue::from_str(&value)
                .map_err(|_| err(&field, "the value is not a valid HTTP header value".into()))?;
            out.insert(key.clone(), Secret(value));
        }
        Ok(out)
    };
    let url = || -> Result<String, ConfigError> {
        let url = raw.url.as_deref().ok_or_else(|| err("url", format!("missing: a {kind} server needs `url`")))?;
        let url = expand("url", url)?;
        let parsed = reqwest::Url::parse(&url).map_err(|e| err("url", format!("`{url}` is not a valid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(err("url", format!("`{url}` must start with http:// or https://")));
        }
        Ok(url)
    };
    let transport = match kind {
        "stdio" => {
            let command = raw
                .command
                .as_deref()
                .ok_or_else(|| err("command", "missing: a stdio server needs `command`".into()))?;
            if command.trim().is_empty() {
                return Err(err("command", "must not be empty".into()));
            }
            let command = expand("command", command)?;
            let args = raw
                .args
                .iter()
                .enumerate()
                .map(|(i, arg)| expand(&format!("args[{i}]"), arg))
                .collect::<Result<Vec<_>, _>>()?;
            let mut vars = BTreeMap::new();
            for (key, value) in &raw.env {
                let field = format!("env.{key}");
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    return Err(err(&field, format!("`{key}` is not a valid environment variable name")));
                }
                vars.insert(key.clone(), Secret(expand(&field, value)?));
            }
            let cwd = raw.cwd.as_deref().map(|cwd| expand("cwd", cwd)).transpose()?.map(PathBuf::from);
            TransportConfig::Stdio { command, args, env: vars, cwd }
        }
        "sse" => TransportConfig::Sse { url: url()?, headers: headers()? },
        _ => TransportConfig::StreamableHttp { url: url()?, headers: headers()? },
    };

    let timeout = match raw.timeout {
        None => Duration::from_secs(60),
        Some(secs @ 1..=MAX_TIMEOUT_SECS) => Duration::from_secs(secs),
        Some(other) => {
            return Err(err("timeout", format!("{other} is out of range: seconds from 1 to {MAX_TIMEOUT_SECS}")));
        }
    };
    let defaults = PoolConfig::default();
    let pool = match raw.pool {
        None => defaults,
        Some(pool) => {
            let max = pool.max.unwrap_or(defaults.max.max(pool.min.unwrap_or(0)));
            let min = pool.min.unwrap_or(defaults.min.min(max));
            let concurrency = pool.concurrency.unwrap_or(defaults.concurrency);
            if !(1..=MAX_POOL).contains(&max) {
                return Err(err("pool.max", format!("{max} is out of range: 1 to {MAX_POOL}")));
            }
            if min > max {
                return Err(err("pool.min", format!("{min} is more than pool.max ({max})")));
            }
            if concurrency == 0 {
                return Err(err("pool.concurrency", "must be at least 1".into()));
            }
            PoolConfig { min, max, concurrency }
        }
    };
    Ok(ServerConfig {
        name: name.to_string(),
        transport,
        timeout,
        auto_approve: raw.auto_approve.into_iter().collect(),
        disabled: raw.disabled,
        pool,
        guarded: false,
    })
}

/// Expands `${NAME}` from `env`. A `$` not followed by `{` is kept as is.
fn expand_vars(value: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| "`${` without a closing `}`".to_string())?;
        let name = &after[..end];
        let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!("`${{{name}}}` is not a variable name (letters, digits and `_`)"));
        }
        let value = env(name)
            .ok_or_else(|| format!("environment variable `{name}` is not set; set it or remove `${{{name}}}`"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
