//! API keys: generation, hashing, the bearer-key extractor and scopes.
//!
//! A key is `orch_` plus 32 random bytes in base64url. Only its SHA-256 is
//! stored: the secret has 256 bits of entropy, so a plain hash cannot be
//! brute-forced and lets us look keys up in one query.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use chrono::Utc;
use orch_store::{ApiKey, Store};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// Every scope a key can carry. `admin` implies all others.
pub const SCOPES: &[&str] = &["jobs:read", "jobs:write", "jobs:read_all", "tools:call", "metrics:read", "admin"];

/// Read every key's jobs, sessions, deliveries and usage (not change them);
/// without it a key sees only what it submitted.
pub const JOBS_READ_ALL: &str = "jobs:read_all";

/// List MCP servers and tools, and call tools (REST and the MCP endpoints).
pub const TOOLS_CALL: &str = "tools:call";

/// Scopes of the key printed on first start.
pub const ADMIN: &str = "admin";

/// A freshly made key: the record to store and the secret to show once.
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
    pub hash: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("key", &self.key).field("secret", &"<redacted>").finish_non_exhaustive()
    }
}

/// Makes a key with the given name and scopes (checked against [`SCOPES`]).
pub fn new_key(name: &str, scopes: &[String]) -> Result<NewKey, ApiError> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid_field("name", "give the key a name of 1–100 characters"));
    }
    if scopes.is_empty() {
        return Err(ApiError::invalid_field(
            "scopes",
            format!("give at least one scope; allowed: {}", SCOPES.join(", ")),
        ));
    }
    for (i, s) in scopes.iter().enumerate() {
        if !SCOPES.contains(&s.as_str()) {
            return Err(ApiError::invalid_field(
                &format!("scopes[{i}]"),
                format!("unknown scope {s:?}; allowed: {}", SCOPES.join(", ")),
            ));
        }
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("orch_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let mut id_bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut id_bytes);
    let key = ApiKey {
        id: format!("key_{}", hex::encode(id_bytes)),
        name: name.trim().to_owned(),
        prefix: secret[..12].to_owned(),
        scopes: scopes.to_vec(),
        servers: None,
        created_at: Utc::now(),
        revoked_at: None,
        expires_at: None,
        tools: None,
        providers: None,
        last_used_at: None,
        rotated_until: None,
        rate_limit_per_minute: None,
        jobs_per_day: None,
    };
    Ok(NewKey { hash: hash_secret(&secret), key, secret })
}

/// A new secret (and its prefix and hash) for rotating a key.
pub fn new_secret() -> (String, String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("orch_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    (secret[..12].to_owned(), hash_secret(&secret), secret)
}

/// Most entries in a key's `tools` or `providers` list.
pub const MAX_ALLOW_LIST: usize = 200;

/// Checks the tool globs a key is limited to (`tools`): `server.tool` names
/// where `*` stands for any characters, e.g. `github.*` or `*.read_*`.
pub fn check_tools(tools: &[String]) -> Result<(), ApiError> {
    if tools.len() > MAX_ALLOW_LIST {
        return Err(ApiError::invalid_field("tools", format!("has {} entries; at most {MAX_ALLOW_LIST}", tools.len())));
    }
    for (i, glob) in tools.iter().enumerate() {
        let ok = !glob.is_empty()
            && glob.len() <= 200
            && glob.contains('.')
            && glob.chars().all(|c| c.is_ascii_alphanumeric() || "._-*".contains(c));
        if !ok {
            return Err(ApiError::invalid_field(
                &format!("tools[{i}]"),
                format!(
                    "{glob:?} is not a tool pattern; give `server.tool` (1–200 of A-Z a-z 0-9 . _ - where `*` matches \
                     any characters), e.g. `github.*` or `*.read_*`"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the providers a key is limited to (`providers`) against the configured ones.
pub fn check_providers(providers: &[String], known: &[String]) -> Result<(), ApiError> {
    if providers.len() > MAX_ALLOW_LIST {
        return Err(ApiError::invalid_field(
            "providers",
            format!("has {} entries; at most {MAX_ALLOW_LIST}", providers.len()),
        ));
    }
    for (i, name) in providers.iter().enumerate() {
        if !known.contains(name) {
            return Err(ApiError::invalid_field(
                &format!("providers[{i}]"),
                format!("unknown provider {name:?}; the providers are {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Whether `name` (`server.tool`) matches one of `globs`.
pub fn tool_allowed(globs: &[String], name: &str) -> bool {
    globs.iter().any(|g| wildmatch::WildMatch::new(g).matches(name))
}

/// Checks the server names a key is limited to (`servers` of a new key).
pub fn check_servers(servers: &[String]) -> Result<(), ApiError> {
    for (i, name) in servers.iter().enumerate() {
        orch_mcp::config::validate_name(name).map_err(|m| ApiError::invalid_field(&format!("servers[{i}]"), m))?;
    }
    Ok(())
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Recently seen keys, so a busy API does not hit the store per request.
/// A revocation through this process clears it; other processes notice within
/// [`KeyCache::TTL`].
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (ApiKey, Instant)>>,
    /// Keys found by their previous secret (after a rotation).
    previous: Mutex<HashMap<String, (ApiKey, Instant)>>,
    /// When each key's `last_used_at` was last written.
    touched: Mutex<HashMap<String, Instant>>,
}

/// What a secret is.
pub enum Found {
    Current(ApiKey),
    /// The secret a key had before its last rotation.
    Previous(ApiKey),
    Unknown,
}

impl KeyCache {
    pub const TTL: Duration = Duration::from_secs(5);

    /// How often a key's `last_used_at` is written at most.
    pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

    /// The key of a secret's hash: current, by its previous secret, or none.
    pub async fn find(&self, store: &dyn Store, hash: &str) -> Result<Found, ApiError> {
        if let Some(key) = self.lookup(store, hash).await? {
            return Ok(Found::Current(key));
        }
        if let Some((key, at)) = self.previous.lock().unwrap().get(hash)
            && at.elapsed() < Self::TTL
        {
            return Ok(Found::Previous(key.clone()));
        }
        let found = store.key_by_previous_hash(hash).await?;
        let mut previous = self.previous.lock().unwrap();
        match found {
            Some(key) => {
                if previous.len() > 10_000 {
                    previous.clear();
                }
                previous.insert(hash.to_owned(), (key.clone(), Instant::now()));
                Ok(Found::Previous(key))
            }
            None => {
                previous.remove(hash);
                Ok(Found::Unknown)
            }
        }
    }

    /// Whether `last_used_at` of key `id` is due to be written (and notes that it is).
    pub fn touch_due(&self, id: &str) -> bool {
        let mut touched = self.touched.lock().unwrap();
        if touched.get(id).is_some_and(|at| at.elapsed() < Self::TOUCH_EVERY) {
            return false;
        }
        if touched.len() > 10_000 {
            touched.clear();
        }
        touched.insert(id.to_owned(), Instant::now());
        true
    }

    pub async fn lookup(&self, store: &dyn Store, hash: &str) -> Result<Option<ApiKey>, ApiError> {
        if let Some((key, at)) = self.entries.lock().unwrap().get(hash)
            && at.elapsed() < Self::TTL
        {
            return Ok(Some(key.clone()));
        }
        let found = store.key_by_hash(hash).await?;
        let mut entries = self.entries.lock().unwrap();
        match &found {
            Some(key) => {
                if entries.len() > 10_000 {
                    entries.clear();
                }
                entries.insert(hash.to_owned(), (key.clone(), Instant::now()));
            }
            None => {
                entries.remove(hash);
            }
        }
        Ok(found)
    }

    pub fn clear(&self) {
        self.entries.lock().unwrap().clear();
        self.previous.lock().unwrap().clear();
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key: ApiKey,
}

impl Principal {
    /// 403 unless the key has `scope` (or `admin`).
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        if self.key.scopes.iter().any(|s| s == scope || s == ADMIN) {
            Ok(())
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "missing_scope",
                format!("this key lacks the scope {scope:?}; its scopes are {:?}", self.key.scopes),
            )
            .with_details(serde_json::json!({"required_scope": scope})))
        }
    }

    /// Whether the key reads every key's jobs, sessions, deliveries and usage
    /// (`admin` or [`JOBS_READ_ALL`]).
    pub fn reads_all(&self) -> bool {
        self.key.scopes.iter().any(|s| s == ADMIN || s == JOBS_READ_ALL)
    }

    /// Whether the key may read a job (or session) whose owner is `owner`: its
    /// own, or any with [`Principal::reads_all`]. Ownerless jobs (stored before
    /// owners were kept) only with [`Principal::reads_all`].
    pub fn may_read(&self, owner: Option<&str>) -> bool {
        self.reads_all() || owner == Some(self.key.id.as_str())
    }

    /// Whether the key may change (cancel, redeliver) what `owner` owns: its
    /// own, or any as `admin`.
    pub fn may_change(&self, owner: Option<&str>) -> bool {
        self.key.scopes.iter().any(|s| s == ADMIN) || owner == Some(self.key.id.as_str())
    }

    /// Whether the key may see and call the MCP server `name` (keys without
    /// a server list may use every server).
    pub fn may_use_server(&self, name: &str) -> bool {
        self.key.servers.as_ref().is_none_or(|allowed| allowed.iter().any(|s| s == name))
    }

    /// Whether the key may see and call tool `tool` of `server`: its server
    /// is allowed and `server.tool` matches one of the key's tool globs
    /// (keys without a tool list may use every tool of their servers).
    pub fn may_use_tool(&self, server: &str, tool: &str) -> bool {
        self.may_use_server(server)
            && self.key.tools.as_ref().is_none_or(|globs| tool_allowed(globs, &format!("{server}.{tool}")))
    }

    /// 403 unless [`Principal::may_use_tool`].
    pub fn require_tool(&self, server: &str, tool: &str) -> Result<(), ApiError> {
        self.require_server(server)?;
        if self.may_use_tool(server, tool) {
            return Ok(());
        }
        let allowed = self.key.tools.clone().unwrap_or_default();
        let name = format!("{server}.{tool}");
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "tool_not_allowed",
            format!("this key may use only the tools matching {allowed:?}, not {name:?}"),
        )
        .with_details(serde_json::json!({"tool": name, "allowed_tools": allowed})))
    }

    /// Whether the key may use chat provider `name` (keys without a provider
    /// list may use every provider).
    pub fn may_use_provider(&self, name: &str) -> bool {
        self.key.providers.as_ref().is_none_or(|allowed| allowed.iter().any(|p| p == name))
    }

    /// 403 naming `field` unless [`Principal::may_use_provider`].
    pub fn require_provider(&self, field: &str, name: &str) -> Result<(), ApiError> {
        if self.may_use_provider(name) {
            return Ok(());
        }
        let allowed = self.key.providers.clone().unwrap_or_default();
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "provider_not_allowed",
            format!("{field}: this key may use only the providers {allowed:?}, not {name:?}"),
        )
        .with_details(serde_json::json!({"field": field, "provider": name, "allowed_providers": allowed})))
    }

    /// 403 unless [`Principal::may_use_server`].
    pub fn require_server(&self, name: &str) -> Result<(), ApiError> {
        if self.may_use_server(name) {
            return Ok(());
        }
        let allowed = self.key.servers.clone().unwrap_or_default();
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "server_not_allowed",
            format!("this key may use only the MCP servers {allowed:?}, not {name:?}"),
        )
        .with_details(serde_json::json!({"server": name, "allowed_servers": allowed})))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized(
                "missing Authorization header; send Authorization: Bearer <key> (make a key with `orch keys create`)",
            )
        })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
        let now = Utc::now();
        let key = match state.keys.find(state.store.as_ref(), &hash_secret(secret)).await? {
            Found::Current(key) => key,
            Found::Previous(key) if key.rotated_until.is_some_and(|until| now < until) => key,
            Found::Previous(key) => {
                let until = key.rotated_until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                return Err(ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "key_rotated",
                    format!(
                        "this API key was rotated; its old secret stopped working at {}; use the new secret",
                        until.as_deref().unwrap_or("the end of the overlap")
                    ),
                )
                .with_details(serde_json::json!({"key_id": key.id, "rotated_until": until})));
            }
            Found::Unknown => return Err(ApiError::unauthorized("unknown or revoked API key")),
        };
        if let Some(expires_at) = key.expires_at
            && expires_at <= now
        {
            let at = expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "key_expired",
                format!("this API key expired at {at}; ask an admin for a new key or a later expiry"),
            )
            .with_details(serde_json::json!({"key_id": key.id, "expired_at": at})));
        }
        if state.keys.touch_due(&key.id) {
            let (store, id) = (state.store.clone(), key.id.clone());
            tokio::spawn(async move {
                if let Err(err) = store.touch_key(&id, now).await {
                    tracing::warn!(key = %id, error = %err, "recording a key's last use failed");
                }
            });
        }
        if let Some(slot) = parts.extensions.get::<crate::audit::Caller>() {
            slot.set(&key);
        }
        crate::rate::check(state, &key, parts.extensions.get::<crate::rate::Slot>()).await?;
        Ok(Principal { key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashed() {
        let a = new_key("ci", &["jobs:read".into()]).unwrap();
        let b = new_key("ci", &["jobs:read".into()]).unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with("orch_") && a.secret.len() == 48, "{}", a.secret);
        assert_eq!(a.hash, hash_secret(&a.secret));
        assert_ne!(a.hash, a.secret);
        assert!(a.secret.starts_with(&a.key.prefix));
    }

    #[test]
    fn scopes_are_checked() {
        let err = new_key("x", &["jobs:read".into(), "root".into()]).unwrap_err();
        assert_eq!(
            err.message,
            "scopes[1]: unknown scope \"root\"; allowed: jobs:read, jobs:write, jobs:read_all, tools:call, metrics:read, admin"
        );
        assert!(new_key("x", &[]).is_err());
        assert!(new_key(" ", &["admin".into()]).is_err());
    }

    #[test]
    fn admin_implies_every_scope() {
        let admin = Principal { key: new_key("a", &["admin".into()]).unwrap().key };
        assert!(admin.require("jobs:write").is_ok());
        let reader = Principal { key: new_key("r", &["jobs:read".into()]).unwrap().key };
        assert!(reader.require("jobs:read").is_ok());
        assert_eq!(reader.require("jobs:write").unwrap_err().status.as_u16(), 403);
    }

    #[test]
    fn a_limited_key_uses_only_its_servers() {
        let mut key = new_key("l", &["tools:call".into()]).unwrap().key;
        assert!(Principal { key: key.clone() }.may_use_server("anything"));
        key.servers = Some(vec!["github".into()]);
        let limited = Principal { key };
        assert!(limited.require_server("github").is_ok());
        let err = limited.require_server("memory").unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (403, "server_not_allowed"));
        assert!(check_servers(&["github".into(), "a.b".into()]).unwrap_err().message.starts_with("servers[1]: "));
    }
}
