//! MCP server routes: status, admin CRUD of servers registered through the API,
//! test and reload; and [`McpSources`], which merges mcp-config.json with the
//! stored servers and applies the result to the registry.
//!
//! Servers of the file are read-only over the API (the file is their truth);
//! names are unique across both, the file winning a clash. `env` and `headers`
//! values are secrets: every view shows their keys with `"<redacted>"`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use orch_mcp::config::{self, ConfigError};
use orch_mcp::{McpConfig, Registry, ServerConfig, ServerState, TransportConfig};
use orch_store::{Store, StoreError, StoredServer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{self, Principal};
use crate::error::responses::{BadRequest, Forbidden, Invalid, NotFound, NotJson, Unauthorized, Unavailable};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::json::ApiJson;

/// Shown instead of every `env` and `headers` value.
pub const REDACTED: &str = "<redacted>";

/// Where a server is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// mcp-config.json: read-only over the API.
    File,
    /// Registered through `POST /v1/servers` and kept in the store.
    Api,
}

/// Settings of the MCP gateway's server sources.
#[derive(Debug, Clone, Default)]
pub struct McpSettings {
    /// mcp-config.json; `None` for no file.
    pub file: Option<PathBuf>,
    /// Whether `POST /v1/servers` may register stdio servers (a command run on this host).
    pub allow_api_stdio: bool,
}

#[derive(Debug, Clone)]
struct Known {
    source: Source,
    /// The entry as written, `${VAR}`s unexpanded.
    entry: Value,
    config: ServerConfig,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Snapshot {
    servers: BTreeMap<String, Known>,
    invalid: Vec<(Source, ConfigError)>,
    /// The file's last readable content: its servers as written, and its hash.
    file_entries: Map<String, Value>,
    file_hash: Option<[u8; 32]>,
    file_error: Option<String>,
}

/// The server sources (mcp-config.json and the store) and what they yielded at
/// the last reload. One per process, in [`AppState`].
#[derive(Debug, Default)]
pub struct McpSources {
    pub settings: McpSettings,
    snapshot: RwLock<Snapshot>,
    /// Reloads run one at a time (file watcher, API, admin changes).
    reloading: tokio::sync::Mutex<()>,
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"added": ["github"], "removed": [], "changed": ["remote"], "unchanged": ["everything"], "invalid": [{"server": "broken", "source": "file", "field": "url", "message": "missing: a sse server needs `url`"}], "file_error": null}))]
pub struct ReloadView {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Their configuration changed: reconnected.
    pub changed: Vec<String>,
    /// Same configuration: connections kept.
    pub unchanged: Vec<String>,
    /// Entries left out, each naming the server and the field.
    pub invalid: Vec<InvalidServer>,
    /// mcp-config.json could not be read or parsed; its previous servers were kept.
    pub file_error: Option<String>,
}

/// A server entry that was left out.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InvalidServer {
    pub server: String,
    pub source: Source,
    pub field: String,
    pub message: String,
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Parses one entry by the mcp-config.json rules.
fn parse_entry(name: &str, entry: &Value) -> (Option<ServerConfig>, Vec<ConfigError>, Vec<ConfigError>) {
    let text = json!({"mcpServers": {name: entry}}).to_string();
    match config::parse(&text, process_env) {
        Ok(mut parsed) => (parsed.config.servers.remove(name), parsed.errors, parsed.warnings),
        Err(e) => {
            (None, vec![ConfigError { server: name.into(), field: String::new(), message: e.to_string() }], vec![])
        }
    }
}

impl McpSources {
    pub fn new(settings: McpSettings) -> McpSources {
        McpSources { settings, ..McpSources::default() }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `name` is defined, if anywhere.
    pub fn source(&self, name: &str) -> Option<Source> {
        self.read().servers.get(name).map(|k| k.source)
    }

    /// Reads the file and the stored servers, merges them and applies the result
    /// to `registry` (only changed servers reconnect). An unreadable file keeps
    /// its previous servers; an invalid entry is logged with its server and
    /// field and left out, without stopping the others.
    pub async fn reload(&self, store: &dyn Store, registry: &Registry) -> Result<ReloadView, StoreError> {
        let _one_at_a_time = self.reloading.lock().await;
        let stored = store.list_servers().await?;
        let (mut file_entries, mut file_hash, mut file_error) = {
            let snapshot = self.read();
            (snapshot.file_entries.clone(), snapshot.file_hash, None)
        };
        if let Some(path) = &self.settings.file {
            match read_file(path) {
                Ok((entries, hash)) => {
                    file_entries = entries;
                    file_hash = Some(hash);
                }
                Err(message) => {
                    tracing::warn!(file = %path.display(), error = %message, "MCP config not applied; keeping its previous servers");
                    file_error = Some(message);
                    file_hash = None;
                }
            }
        }

        let mut servers = BTreeMap::new();
        let mut invalid = Vec::new();
        for (name, entry) in &file_entries {
            let (config, errors, warnings) = parse_entry(name, entry);
            for warning in warnings {
                tracing::warn!(server = %warning.server, field = %warning.field, "{warning}");
            }
            invalid.extend(errors.into_iter().map(|e| (Source::File, e)));
            if let Some(config) = config {
                let known =
                    Known { source: Source::File, entry: entry.clone(), config, created_at: None, updated_at: None };
                servers.insert(name.clone(), known);
            }
        }
        for server in stored {
            if servers.contains_key(&server.name) {
                let message = format!("{} also defines this server; its definition is used", self.file_name());
                invalid.push((Source::Api, ConfigError { server: server.name.clone(), field: "name".into(), message }));
                continue;
            }
            let (config, errors, _) = parse_entry(&server.name, &server.config);
            invalid.extend(errors.into_iter().map(|e| (Source::Api, e)));
            if let Some(mut config) = config {
                // An admin's server, not the operator's: held to the egress guard at every connect.
                config.guarded = true;
                let known = Known {
                    source: Source::Api,
                    entry: server.config,
                    config,
                    created_at: Some(server.created_at),
                    updated_at: Some(server.updated_at),
                };
                servers.insert(server.name, known);
            }
        }

        let wanted = McpConfig { servers: servers.iter().map(|(n, k)| (n.clone(), k.config.clone())).collect() };
        let report = registry.reload(wanted).await;
        for rejected in report.rejected {
            let source = servers.remove(&rejected.server).map_or(Source::File, |k| k.source);
            invalid.push((source, rejected));
        }
        for (source, error) in &invalid {
            tracing::warn!(server = %error.server, field = %error.field, source = ?source, "MCP server left out: {}", error.message);
        }
        let view = ReloadView {
            added: report.added,
            removed: report.removed,
            changed: report.changed,
            unchanged: report.unchanged,
            invalid: invalid.iter().map(invalid_view).collect(),
            file_error: file_error.clone(),
        };
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) =
            Snapshot { servers, invalid, file_entries, file_hash, file_error };
        Ok(view)
    }

    fn file_name(&self) -> String {
        self.settings.file.as_ref().map_or_else(|| "mcp-config.json".into(), |p| p.display().to_string())
    }

    /// Whether the file's content differs from what the last reload read.
    pub fn file_changed(&self) -> bool {
        let Some(path) = &self.settings.file else { return false };
        let now = read_file(path).ok().map(|(_, hash)| hash);
        now != self.read().file_hash
    }
}

/// The servers of a config file as written, and the hash of its text.
fn read_file(path: &std::path::Path) -> Result<(Map<String, Value>, [u8; 32]), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    // config::parse reports the file-level errors with their fix.
    config::parse(&text, |_| None).map_err(|e| e.to_string().replace("<text>", &path.display().to_string()))?;
    let root: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let entries = match root.get("mcpServers") {
        Some(Value::Object(servers)) => servers.clone(),
        _ => Map::new(),
    };
    Ok((entries, hash))
}

/// Applies changes of the config file within about `every`, until shutdown.
pub async fn watch_file(state: AppState, every: Duration) {
    if state.mcp.settings.file.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        if state.mcp.file_changed() {
            match state.mcp.reload(state.store.as_ref(), &state.registry).await {
                Ok(report) => tracing::info!(
                    added = ?report.added, removed = ?report.removed, changed = ?report.changed,
                    "MCP config file changed; servers reloaded"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "MCP config file changed but the stored servers could not be read; retrying")
                }
            }
        }
    }
}

fn invalid_view((source, e): &(Source, ConfigError)) -> InvalidServer {
    InvalidServer { server: e.server.clone(), source: *source, field: e.field.clone(), message: e.message.clone() }
}

/// The entry with every `env` and `headers` value replaced by `"<redacted>"`.
pub fn redact(entry: &Value) -> Value {
    let mut entry = entry.clone();
    if let Value::Object(map) = &mut entry {
        for field in ["env", "headers"] {
            if let Some(Value::Object(secrets)) = map.get_mut(field) {
                for value in secrets.values_mut() {
                    *value = Value::String(REDACTED.into());
                }
            }
        }
    }
    entry
}

/// A server as listed.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "everything", "source": "file", "transport": "stdio", "state": "up", "tools": 11, "latency_ms": 1.8, "last_error": null, "restarts": 0, "connections": 1, "config": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything"], "env": {"API_TOKEN": "<redacted>"}}, "created_at": null, "updated_at": null}))]
pub struct ServerView {
    pub name: String,
    pub source: Option<Source>,
    /// `stdio`, `sse` or `streamable-http`.
    pub transport: String,
    /// `up`, `degraded`, `down` or `disabled`.
    #[schema(value_type = String)]
    pub state: ServerState,
    /// Tools listed by the server.
    pub tools: usize,
    /// Round trip of the last ping, in milliseconds.
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Connections that broke and were replaced.
    pub restarts: u64,
    pub connections: usize,
    /// The entry as written (mcp-config.json format), `env` and `headers` values redacted.
    #[schema(value_type = Object)]
    pub config: Value,
    /// For servers registered through the API.
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerView>,
    /// Entries left out for an error, each naming the server and the field.
    pub invalid: Vec<InvalidServer>,
    /// mcp-config.json could not be read or parsed at the last reload; its previous servers are kept.
    pub file_error: Option<String>,
}

fn view(state: &AppState, name: &str) -> Option<ServerView> {
    let status = state.registry.server_status(name).ok()?;
    let snapshot = state.mcp.read();
    let known = snapshot.servers.get(name);
    Some(ServerView {
        name: status.name,
        source: known.map(|k| k.source),
        transport: status.transport.into(),
        state: status.state,
        tools: status.tools,
        latency_ms: status.latency.map(|d| d.as_secs_f64() * 1000.0),
        last_error: status.last_error,
        restarts: status.restarts,
        connections: status.connections.len(),
        config: known.map_or(Value::Null, |k| redact(&k.entry)),
        created_at: known.and_then(|k| k.created_at),
        updated_at: known.and_then(|k| k.updated_at),
    })
}

/// Registering a server through the API.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "remote", "config": {"transportType": "streamable-http", "url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer ${REMOTE_TOKEN}"}, "timeout": 30}}))]
pub struct CreateServer {
    /// 1–64 letters, digits, `_` or `-`, starting with a letter or digit; unique
    /// across mcp-config.json and the API.
    pub name: String,
    /// The entry in the mcp-config.json format (`url`, `transportType`, `headers`, `timeout`,
    /// `autoApprove`, `disabled`, `pool`; `command`, `args`, `env`, `cwd` only when
    /// ORCH_ALLOW_STDIO_REGISTRATION is on). `${VAR}` expands from Orch's environment.
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
}

/// Replacing a server registered through the API.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"config": {"url": "https://mcp.example.com/mcp", "timeout": 60, "disabled": false}}))]
pub struct ReplaceServer {
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
}

/// Checks an entry the way the file's entries are checked, plus the API's own
/// rules: the name must not contain the tool-name separator, and stdio servers
/// need `allow_stdio`.
pub fn check_entry(name: &str, entry: &Value, allow_stdio: bool, separator: &str) -> ApiResult<ServerConfig> {
    let named = |field: &str, message: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_server",
            format!("server `{name}`, field `{field}`: {message}"),
        )
        .with_details(json!({"server": name, "field": field}))
    };
    config::validate_name(name).map_err(|m| named("name", m))?;
    if name.contains(separator) {
        return Err(named(
            "name",
            format!("contains the tool-name separator `{separator}` (ORCH_MCP_SEPARATOR); rename the server"),
        ));
    }
    let (config, errors, warnings) = parse_entry(name, entry);
    let config_field = |field: &str| if field.is_empty() { "config".to_owned() } else { format!("config.{field}") };
    if let Some(e) = errors.into_iter().next() {
        return Err(named(&config_field(&e.field), e.message));
    }
    if let Some(w) = warnings.into_iter().next() {
        return Err(named(
            &config_field(&w.field),
            "unknown field; see the mcp-config.json fields in docs/mcp.md".into(),
        ));
    }
    let config = config.ok_or_else(|| named("config", "not a valid server entry".into()))?;
    if matches!(config.transport, TransportConfig::Stdio { .. }) && !allow_stdio {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "stdio_not_allowed",
            format!(
                "server `{name}` would run a command on this host (stdio); such servers come from mcp-config.json, \
                 or from the API only when ORCH_ALLOW_STDIO_REGISTRATION=true. Register an HTTP server (`url`) instead"
            ),
        )
        .with_details(json!({"server": name, "field": "config.command"})));
    }
    Ok(config)
}

/// An HTTP server registered through the API may reach only what the egress
/// guard allows (not loopback, private, link-local, metadata and other
/// internal addresses, unless ORCH_MCP_ALLOW lists them): its URL's host is
/// resolved and every address checked now, and again at every connect.
async fn check_egress(state: &AppState, name: &str, config: &ServerConfig) -> ApiResult<()> {
    let (TransportConfig::Sse { url, .. } | TransportConfig::StreamableHttp { url, .. }) = &config.transport else {
        return Ok(());
    };
    let refused = |message: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_server",
            format!("server `{name}`, field `config.url`: {message}"),
        )
        .with_details(json!({"server": name, "field": "config.url"}))
    };
    let url = orch_egress::parse_url(url).map_err(|e| refused(e.to_string()))?;
    let guard = &state.registry.options().egress;
    guard.resolve(&url).await.map_err(|e| match e {
        orch_egress::UrlError::Resolve { host, .. } => refused(format!(
            "host {host:?} does not resolve; servers registered through the API are checked against {} when registered",
            guard.setting
        )),
        other => refused(other.to_string()),
    })?;
    Ok(())
}

fn read_only(state: &AppState, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "server_read_only",
        format!("server `{name}` is defined in {}; change it there (it reloads on save)", state.mcp.file_name()),
    )
    .with_details(json!({"server": name, "source": "file"}))
}

fn unknown_server(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no MCP server named `{name}`; GET /v1/servers lists the servers"),
    )
}

async fn reload(state: &AppState) -> ApiResult<ReloadView> {
    Ok(state.mcp.reload(state.store.as_ref(), &state.registry).await?)
}

/// The view of a stored server after a reload, or the error that kept it out.
fn stored_view(state: &AppState, name: &str, report: &ReloadView) -> ApiResult<ServerView> {
    if let Some(bad) = report.invalid.iter().find(|i| i.server == name) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_server",
            format!("server `{name}`, field `{}`: {}", bad.field, bad.message),
        )
        .with_details(json!({"server": name, "field": bad.field})));
    }
    view(state, name).ok_or_else(|| ApiError::internal(format!("server {name} is missing after a reload")))
}

/// List MCP servers.
///
/// Status, tool count, latency and last error of every server, with its source
/// (`file` or `api`) and its configuration with `env` and `headers` values redacted.
/// A key limited to some servers sees only those.
#[utoipa::path(
    get, path = "/v1/servers", tag = "servers",
    responses((status = 200, body = ServerList), (status = 401, response = Unauthorized), (status = 403, response = Forbidden)),
    security(("bearer" = []))
)]
pub async fn list_servers(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<ServerList>> {
    principal.require(auth::TOOLS_CALL)?;
    let servers = state
        .registry
        .status()
        .into_iter()
        .filter(|s| principal.may_use_server(&s.name))
        .filter_map(|s| view(&state, &s.name))
        .collect();
    // A limited key learns nothing of other servers, broken ones included.
    let (invalid, file_error) = if principal.key.servers.is_none() {
        let snapshot = state.mcp.read();
        (snapshot.invalid.iter().map(invalid_view).collect(), snapshot.file_error.clone())
    } else {
        (Vec::new(), None)
    };
    Ok(Json(ServerList { servers, invalid, file_error }))
}

/// One MCP server.
#[utoipa::path(
    get, path = "/v1/servers/{name}", tag = "servers",
    params(("name" = String, Path, description = "Server name, e.g. github")),
    responses((status = 200, body = ServerView), (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound)),
    security(("bearer" = []))
)]
pub async fn get_server(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<ServerView>> {
    principal.require(auth::TOOLS_CALL)?;
    principal.require_server(&name)?;
    view(&state, &name).map(Json).ok_or_else(|| unknown_server(&name))
}

/// Register an MCP server (admin).
///
/// Stored (on either store backend) and connected at once; the answer shows its
/// first status. Only HTTP servers (`url`) unless ORCH_ALLOW_STDIO_REGISTRATION is on.
#[utoipa::path(
    post, path = "/v1/servers", tag = "servers",
    request_body = CreateServer,
    responses(
        (status = 201, description = "Stored and connected (or down and retrying)", body = ServerView),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 409, description = "The name is taken (in mcp-config.json or through the API)", body = crate::error::ErrorBody),
        (status = 415, response = NotJson),
        (status = 422, description = "An invalid entry; the message names the server and the field", body = crate::error::ErrorBody,
            example = json!({"error": {"code": "invalid_server", "message": "server `remote`, field `config.url`: `ftp://x` must start with http:// or https://", "details": {"server": "remote", "field": "config.url"}}})),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn create_server(
    State(state): State<AppState>,
    principal: Principal,
    body: ApiJson<CreateServer>,
) -> ApiResult<(StatusCode, Json<ServerView>)> {
    principal.require(auth::ADMIN)?;
    let CreateServer { name, config } = body.value;
    let entry = Value::Object(config);
    let config = check_entry(&name, &entry, state.mcp.settings.allow_api_stdio, &state.registry.options().separator)?;
    match state.mcp.source(&name) {
        Some(Source::File) => return Err(read_only(&state, &name)),
        Some(Source::Api) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "server_exists",
                format!("server `{name}` is already registered; PUT /v1/servers/{name} replaces it"),
            )
            .with_details(json!({"server": name})));
        }
        None => {}
    }
    check_egress(&state, &name, &config).await?;
    let now = Utc::now();
    let created = state
        .store
        .put_server(&StoredServer { name: name.clone(), config: entry, created_at: now, updated_at: now })
        .await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "server_exists",
            format!("server `{name}` was registered meanwhile; PUT /v1/servers/{name} replaces it"),
        ));
    }
    tracing::info!(server = %name, by = %principal.key.id, "MCP server registered");
    let report = reload(&state).await?;
    Ok((StatusCode::CREATED, Json(stored_view(&state, &name, &report)?)))
}

/// Replace an MCP server registered through the API (admin).
///
/// Creates it when absent. Servers of mcp-config.json answer 409.
#[utoipa::path(
    put, path = "/v1/servers/{name}", tag = "servers",
    params(("name" = String, Path, description = "Server name")),
    request_body = ReplaceServer,
    responses(
        (status = 200, description = "Replaced and reconnected", body = ServerView),
        (status = 201, description = "Created", body = ServerView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 409, description = "Defined in mcp-config.json: read-only over the API", body = crate::error::ErrorBody),
        (status = 422, response = Invalid), (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn replace_server(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
    body: ApiJson<ReplaceServer>,
) -> ApiResult<(StatusCode, Json<ServerView>)> {
    principal.require(auth::ADMIN)?;
    let entry = Value::Object(body.value.config);
    let config = check_entry(&name, &entry, state.mcp.settings.allow_api_stdio, &state.registry.options().separator)?;
    if state.mcp.source(&name) == Some(Source::File) {
        return Err(read_only(&state, &name));
    }
    check_egress(&state, &name, &config).await?;
    let now = Utc::now();
    let created = state
        .store
        .put_server(&StoredServer { name: name.clone(), config: entry, created_at: now, updated_at: now })
        .await?;
    tracing::info!(server = %name, by = %principal.key.id, created, "MCP server stored");
    let report = reload(&state).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(stored_view(&state, &name, &report)?)))
}

/// Remove an MCP server registered through the API (admin).
#[utoipa::path(
    delete, path = "/v1/servers/{name}", tag = "servers",
    params(("name" = String, Path, description = "Server name")),
    responses(
        (status = 204, description = "Removed and disconnected"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound),
        (status = 409, description = "Defined in mcp-config.json: read-only over the API", body = crate::error::ErrorBody),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []))
)]
pub async fn delete_server(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    principal.require(auth::ADMIN)?;
    if state.mcp.source(&name) == Some(Source::File) {
        return Err(read_only(&state, &name));
    }
    if !state.store.delete_server(&name).await? {
        return Err(unknown_server(&name));
    }
    tracing::info!(server = %name, by = %principal.key.id, "MCP server removed");
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Outcome of testing a server.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"server": "everything", "ok": true, "latency_ms": 412.5, "tools": ["echo", "add"], "error": null}))]
pub struct TestView {
    pub server: String,
    pub ok: bool,
    /// Connecting, initialising and listing tools, in milliseconds.
    pub latency_ms: Option<f64>,
    pub tools: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Test an MCP server (admin).
///
/// Opens a separate connection with the server's current configuration,
/// initialises, lists its tools and closes. A failure is reported in the body
/// (`ok: false`), not as an HTTP error.
#[utoipa::path(
    post, path = "/v1/servers/{name}/test", tag = "servers",
    params(("name" = String, Path, description = "Server name")),
    responses((status = 200, body = TestView), (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound)),
    security(("bearer" = []))
)]
pub async fn test_server(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<TestView>> {
    principal.require(auth::ADMIN)?;
    let config = state.mcp.read().servers.get(&name).map(|k| k.config.clone()).ok_or_else(|| unknown_server(&name))?;
    // A stdio child or an HTTP handshake that hangs must not hold the request forever.
    let limit = config.timeout + Duration::from_secs(5);
    let outcome = tokio::time::timeout(limit, state.registry.test_server(&config)).await;
    Ok(Json(match outcome {
        Ok(Ok(report)) => TestView {
            server: name,
            ok: true,
            latency_ms: Some(report.latency.as_secs_f64() * 1000.0),
            tools: report.tools.iter().map(|t| t.name.to_string()).collect(),
            error: None,
        },
        Ok(Err(e)) => TestView { server: name, ok: false, latency_ms: None, tools: vec![], error: Some(e.to_string()) },
        Err(_) => TestView {
            server: name,
            ok: false,
            latency_ms: None,
            tools: vec![],
            error: Some(format!("no answer within {}s", limit.as_secs())),
        },
    }))
}

/// Reload MCP servers (admin).
///
/// Re-reads mcp-config.json and the stored servers; only servers whose
/// configuration changed reconnect. (A change of the file is also applied on
/// its own within about a second.)
#[utoipa::path(
    post, path = "/v1/servers/reload", tag = "servers",
    responses((status = 200, body = ReloadView), (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 503, response = Unavailable)),
    security(("bearer" = []))
)]
pub async fn reload_servers(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<ReloadView>> {
    principal.require(auth::ADMIN)?;
    let report = reload(&state).await?;
    tracing::info!(by = %principal.key.id, added = ?report.added, removed = ?report.removed, changed = ?report.changed, "MCP servers reloaded");
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_keys_kept() {
        let entry =
            json!({"url": "http://x/mcp", "headers": {"Authorization": "Bearer s3cret"}, "env": {"TOKEN": "${TOKEN}"}});
        assert_eq!(
            redact(&entry),
            json!({"url": "http://x/mcp", "headers": {"Authorization": "<redacted>"}, "env": {"TOKEN": "<redacted>"}})
        );
    }

    fn check(name: &str, entry: Value, allow_stdio: bool, status: u16, message: &str) {
        let err = check_entry(name, &entry, allow_stdio, ".").unwrap_err();
        assert_eq!((err.status.as_u16(), err.message.as_str()), (status, message));
    }

    #[test]
    fn entries_are_checked_by_the_file_rules_and_the_api_rules() {
        check(
            "a.b",
            json!({"url": "http://x"}),
            false,
            422,
            "server `a.b`, field `name`: invalid server name `a.b`: use 1 to 64 letters, digits, `_` or `-`, starting with a letter or digit",
        );
        check(
            "remote",
            json!({"url": "ftp://x"}),
            false,
            422,
            "server `remote`, field `config.url`: `ftp://x` must start with http:// or https://",
        );
        check(
            "remote",
            json!({"url": "http://x", "timout": 3}),
            false,
            422,
            "server `remote`, field `config.timout`: unknown field; see the mcp-config.json fields in docs/mcp.md",
        );
        check(
            "remote",
            json!({"url": "http://x", "pool": {"max": 0}}),
            false,
            422,
            "server `remote`, field `config.pool.max`: 0 is out of range: 1 to 64",
        );
        let err = check_entry("local", &json!({"command": "npx"}), false, ".").unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (403, "stdio_not_allowed"));
        assert!(check_entry("local", &json!({"command": "npx"}), true, ".").is_ok());
        assert!(check_entry("remote", &json!({"transportType": "sse", "url": "http://x/sse"}), false, ".").is_ok());
    }
}
