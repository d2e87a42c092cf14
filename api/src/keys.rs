//! Key management for admins: create (secret shown once), list, revoke.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use orch_store::ApiKey;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{self, Principal};
use crate::error::responses::{Forbidden, Invalid, NotFound, Unauthorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::json::ApiJson;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "n8n production", "scopes": ["jobs:read", "jobs:write", "tools:call"], "servers": ["github"], "tools": ["github.*"], "providers": ["claude"], "expires_at": "2027-06-01T00:00:00Z", "rate_limit_per_minute": 120, "jobs_per_day": 1000}))]
pub struct CreateKey {
    /// A name to recognise the key by (1–100 characters).
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    /// Any of `jobs:read`, `jobs:write`, `jobs:read_all` (read every key's jobs), `tools:call`, `metrics:read` (`GET /metrics`), `admin`.
    pub scopes: Vec<String>,
    /// The MCP servers the key may see and call; absent for every server.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
    /// The tools the key may see and call, as globs over `server.tool`
    /// (`github.*`, `*.read_*`); absent for every tool.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// The chat providers the key may use; absent for every provider.
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// When the key stops working (RFC 3339); absent for never.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Requests a minute the key may make (0–1000000; 0 for unlimited);
    /// absent for the server's `ORCH_RATE_LIMIT_PER_MINUTE`.
    #[serde(default)]
    #[schema(maximum = 1000000)]
    pub rate_limit_per_minute: Option<u32>,
    /// Jobs a UTC day the key may submit (0–1000000; 0 for unlimited);
    /// absent for the server's `ORCH_JOBS_PER_DAY`.
    #[serde(default)]
    #[schema(maximum = 1000000)]
    pub jobs_per_day: Option<u32>,
}

/// Changes to a key: a field left out stays as it is; `null` removes the
/// limit (or the expiry; for the rate limit and job quota: back to the server's default).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tools": ["github.*", "*.read_*"], "expires_at": null, "rate_limit_per_minute": 600}))]
pub struct UpdateKey {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub servers: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub tools: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub providers: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// Requests a minute (0–1000000; 0 for unlimited); `null` for the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, maximum = 1000000)]
    pub rate_limit_per_minute: Option<Option<u32>>,
    /// Jobs a UTC day (0–1000000; 0 for unlimited); `null` for the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, maximum = 1000000)]
    pub jobs_per_day: Option<Option<u32>>,
}

/// Most requests a minute or jobs a day a key may be given (0 is unlimited).
pub const MAX_LIMIT: u32 = 1_000_000;

/// 422 naming `field` when a limit is over [`MAX_LIMIT`].
fn check_limit(field: &str, value: Option<u32>) -> ApiResult<()> {
    match value {
        Some(n) if n > MAX_LIMIT => Err(ApiError::invalid_field(
            field,
            format!(
                "{n} is too large; allowed: 0 (unlimited) to {MAX_LIMIT}, or leave it out for the server's default"
            ),
        )),
        _ => Ok(()),
    }
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// How long the old secret keeps working after a rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"overlap_seconds": 3600}))]
pub struct RotateKey {
    /// Seconds the old secret keeps working, 0–2592000 (30 days); default 86400 (24 h).
    #[serde(default)]
    #[schema(maximum = 2592000)]
    pub overlap_seconds: Option<u64>,
}

/// Default overlap of a rotation: 24 h.
pub const DEFAULT_OVERLAP: u64 = 24 * 3600;
/// Longest overlap of a rotation: 30 days.
pub const MAX_OVERLAP: u64 = 30 * 24 * 3600;

/// A key as listed: never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// The secret's first characters, to recognise it.
    pub prefix: String,
    pub scopes: Vec<String>,
    /// The MCP servers the key may use; `null` for every server.
    pub servers: Option<Vec<String>>,
    /// Globs over `server.tool` the key may use; `null` for every tool.
    pub tools: Option<Vec<String>>,
    /// The chat providers the key may use; `null` for every provider.
    pub providers: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the key stops working; `null` for never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key was last used (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// After a rotation: until when the previous secret works.
    pub rotated_until: Option<DateTime<Utc>>,
    /// Requests a minute the key may make (0: unlimited); `null` for the
    /// server's default (`ORCH_RATE_LIMIT_PER_MINUTE`).
    pub rate_limit_per_minute: Option<u32>,
    /// Jobs a UTC day the key may submit (0: unlimited); `null` for the
    /// server's default (`ORCH_JOBS_PER_DAY`).
    pub jobs_per_day: Option<u32>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> KeyView {
        KeyView {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            servers: k.servers,
            tools: k.tools,
            providers: k.providers,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            rotated_until: k.rotated_until,
            rate_limit_per_minute: k.rate_limit_per_minute,
            jobs_per_day: k.jobs_per_day,
        }
    }
}

/// The configured chat providers' names.
fn provider_names(state: &AppState) -> Vec<String> {
    let mut names: Vec<String> = state.router.providers().iter().map(|p| p.name().to_owned()).collect();
    names.sort();
    names
}

/// 422 unless `at` is in the future.
fn check_expiry(at: DateTime<Utc>) -> ApiResult<()> {
    if at <= Utc::now() {
        return Err(ApiError::invalid_field("expires_at", format!("{} is not in the future", at.to_rfc3339())));
    }
    Ok(())
}

/// A new key with its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "key_3f2a9c01b7de", "name": "n8n production", "prefix": "orch_Xk3v9QaL", "scopes": ["jobs:read", "jobs:write"], "servers": null, "tools": null, "providers": null, "created_at": "2026-11-21T09:00:00Z", "revoked_at": null, "expires_at": null, "last_used_at": null, "rotated_until": null, "rate_limit_per_minute": null, "jobs_per_day": null, "secret": "orch_Xk3v9QaLr2T0m7N4pWcE1yH6uJ8bZsVdG5fK0qAoi3s", "webhook_secret": "whsec_p0TzNwJ3kq3m5oU1o9bX2yq6Vh0Ffk8cS4yW1dJqv7E="}))]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// Send as `Authorization: Bearer <secret>`. It cannot be shown again.
    pub secret: String,
    /// Signs the webhooks of jobs this key submits with a callback that sets no `secret`
    /// (Standard Webhooks). Derived from `secret`; not shown again.
    pub webhook_secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// Create an API key.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created; the secret is shown only now", body = CreatedKey),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    principal: Principal,
    body: ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    principal.require(auth::ADMIN)?;
    let mut new = auth::new_key(&body.value.name, &body.value.scopes)?;
    if let Some(servers) = &body.value.servers {
        auth::check_servers(servers)?;
    }
    if let Some(tools) = &body.value.tools {
        auth::check_tools(tools)?;
    }
    if let Some(providers) = &body.value.providers {
        auth::check_providers(providers, &provider_names(&state))?;
    }
    if let Some(at) = body.value.expires_at {
        check_expiry(at)?;
    }
    check_limit("rate_limit_per_minute", body.value.rate_limit_per_minute)?;
    check_limit("jobs_per_day", body.value.jobs_per_day)?;
    new.key.rate_limit_per_minute = body.value.rate_limit_per_minute;
    new.key.jobs_per_day = body.value.jobs_per_day;
    new.key.servers = body.value.servers;
    new.key.tools = body.value.tools;
    new.key.providers = body.value.providers;
    new.key.expires_at = body.value.expires_at;
    state.store.create_key(&new.key, &new.hash).await?;
    tracing::info!(key = %new.key.id, by = %principal.key.id, "API key created");
    let webhook_secret = orch_webhooks::Secret::for_api_key(&new.secret);
    Ok((StatusCode::CREATED, Json(CreatedKey { key: new.key.into(), secret: new.secret, webhook_secret })))
}

/// List API keys (without secrets).
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "Every key, revoked ones included", body = KeyList), (status = 401, response = Unauthorized), (status = 403, response = Forbidden)),
    security(("bearer" = []))
)]
pub async fn list_keys(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<KeyList>> {
    principal.require(auth::ADMIN)?;
    let keys = state.store.list_keys().await?;
    Ok(Json(KeyList { keys: keys.into_iter().map(KeyView::from).collect() }))
}

/// Revoke an API key.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id, e.g. key_3f2a9c01b7de")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    principal.require(auth::ADMIN)?;
    if !state.store.revoke_key(&id).await? {
        return Err(ApiError::not_found("unrevoked key", &id));
    }
    state.keys.clear();
    tracing::info!(key = %id, by = %principal.key.id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Change a key's expiry, allow-lists, rate limit or job quota.
///
/// Fields left out stay as they are; `null` removes a limit or the expiry.
/// Takes effect within 5 s in every process (at once in this one).
#[utoipa::path(
    patch, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id, e.g. key_3f2a9c01b7de")),
    request_body = UpdateKey,
    responses(
        (status = 200, description = "The key as changed", body = KeyView),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn update_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: ApiJson<UpdateKey>,
) -> ApiResult<Json<KeyView>> {
    principal.require(auth::ADMIN)?;
    let mut key = find_unrevoked(&state, &id).await?;
    let change = body.value;
    if let Some(servers) = change.servers {
        if let Some(list) = &servers {
            auth::check_servers(list)?;
        }
        key.servers = servers;
    }
    if let Some(tools) = change.tools {
        if let Some(list) = &tools {
            auth::check_tools(list)?;
        }
        key.tools = tools;
    }
    if let Some(providers) = change.providers {
        if let Some(list) = &providers {
            auth::check_providers(list, &provider_names(&state))?;
        }
        key.providers = providers;
    }
    if let Some(expires_at) = change.expires_at {
        if let Some(at) = expires_at {
            check_expiry(at)?;
        }
        key.expires_at = expires_at;
    }
    if let Some(limit) = change.rate_limit_per_minute {
        check_limit("rate_limit_per_minute", limit)?;
        key.rate_limit_per_minute = limit;
    }
    if let Some(limit) = change.jobs_per_day {
        check_limit("jobs_per_day", limit)?;
        key.jobs_per_day = limit;
    }
    if !state.store.update_key(&key).await? {
        return Err(ApiError::not_found("unrevoked key", &id));
    }
    state.keys.clear();
    tracing::info!(key = %id, by = %principal.key.id, "API key changed");
    Ok(Json(key.into()))
}

async fn find_unrevoked(state: &AppState, id: &str) -> ApiResult<ApiKey> {
    state
        .store
        .list_keys()
        .await?
        .into_iter()
        .find(|k| k.id == id && k.revoked_at.is_none())
        .ok_or_else(|| ApiError::not_found("unrevoked key", id))
}

/// The new secret of a rotated key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The new secret. The old one keeps working until `rotated_until`, then answers 401 `key_rotated`.
    pub secret: String,
    /// The webhook signing secret derived from the new secret.
    pub webhook_secret: String,
}

/// Rotate a key's secret.
///
/// Answers a new secret (shown only now). The old secret keeps working for
/// `overlap_seconds` (default 24 h), then answers 401 `key_rotated`. The
/// body may be empty.
#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = String, Path, description = "Key id, e.g. key_3f2a9c01b7de")),
    request_body(content = Option<RotateKey>),
    responses(
        (status = 200, description = "Rotated; the new secret is shown only now", body = RotatedKey),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn rotate_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RotatedKey>> {
    principal.require(auth::ADMIN)?;
    let ask: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid_field(
                "overlap_seconds",
                format!("the body must be {{\"overlap_seconds\": 0–{MAX_OVERLAP}}} or empty: {e}"),
            )
        })?
    };
    let overlap = ask.overlap_seconds.unwrap_or(DEFAULT_OVERLAP);
    if overlap > MAX_OVERLAP {
        return Err(ApiError::invalid_field(
            "overlap_seconds",
            format!("{overlap} is too long; at most {MAX_OVERLAP} (30 days)"),
        ));
    }
    let until = Utc::now() + chrono::Duration::seconds(overlap as i64);
    let (prefix, hash, secret) = auth::new_secret();
    if !state.store.rotate_key(&id, &prefix, &hash, until).await? {
        return Err(ApiError::not_found("unrevoked key", &id));
    }
    state.keys.clear();
    let key = find_unrevoked(&state, &id).await?;
    tracing::info!(key = %id, by = %principal.key.id, overlap_s = overlap, "API key rotated");
    let webhook_secret = orch_webhooks::Secret::for_api_key(&secret);
    Ok(Json(RotatedKey { key: key.into(), secret, webhook_secret }))
}
