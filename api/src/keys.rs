//! Key management for admins: create (secret shown once), list, revoke.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use orch_store::ApiKey;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{self, Principal};
use crate::error::responses::{Forbidden, Invalid, NotFound, Unauthorized};
use crate::error::{ApiError, ApiResult};
use crate::json::ApiJson;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "n8n production", "scopes": ["jobs:read", "jobs:write", "tools:call"], "servers": ["github"]}))]
pub struct CreateKey {
    /// A name to recognise the key by (1–100 characters).
    pub name: String,
    /// Any of `jobs:read`, `jobs:write`, `jobs:read_all` (read every key's jobs), `tools:call`, `admin`.
    pub scopes: Vec<String>,
    /// The MCP servers the key may see and call; absent for every server.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
}

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
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> KeyView {
        KeyView {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            servers: k.servers,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A new key with its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "key_3f2a9c01b7de", "name": "n8n production", "prefix": "orch_Xk3v9QaL", "scopes": ["jobs:read", "jobs:write"], "servers": null, "created_at": "2026-11-21T09:00:00Z", "revoked_at": null, "secret": "orch_Xk3v9QaLr2T0m7N4pWcE1yH6uJ8bZsVdG5fK0qAoi3s", "webhook_secret": "whsec_p0TzNwJ3kq3m5oU1o9bX2yq6Vh0Ffk8cS4yW1dJqv7E="}))]
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
    new.key.servers = body.value.servers;
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
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(auth::ADMIN)?;
    if !state.store.revoke_key(&id).await? {
        return Err(ApiError::not_found("unrevoked key", &id));
    }
    state.keys.clear();
    tracing::info!(key = %id, by = %principal.key.id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
