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
pub const SCOPES: &[&str] = &["jobs:read", "jobs:write", "jobs:read_all", "tools:call", "admin"];

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
    if name.trim().is_empty() || name.len() > 100 {
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
    };
    Ok(NewKey { hash: hash_secret(&secret), key, secret })
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
}

impl KeyCache {
    pub const TTL: Duration = Duration::from_secs(5);

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
        let key = state
            .keys
            .lookup(state.store.as_ref(), &hash_secret(secret))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
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
            "scopes[1]: unknown scope \"root\"; allowed: jobs:read, jobs:write, jobs:read_all, tools:call, admin"
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
