//! `GET /v1/providers`: each configured provider's CLI, credentials, load and
//! recent trouble, so a user sees why chat is not answering before asking it.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::error::responses::{Forbidden, Unauthorized};

/// One provider. `cooldown_until`, `last_error` and `last_error_at` come from
/// the store, written by every worker; `in_use` is this process's (in `orch
/// serve`, the worker's too).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "claude", "kind": "claude", "models": ["sonnet", "opus"], "default_model": "sonnet", "cli": {"status": "found", "path": "/usr/local/bin/claude", "version": "2.1.197 (Claude Code)"}, "credentials": {"status": "present", "source": "CLAUDE_CODE_OAUTH_TOKEN"}, "billing": {"plan": "subscription", "headless": true, "detail": "Claude Pro/Max/Team subscription: since 2026-06-15 headless turns draw on the plan's monthly Agent SDK credit …"}, "ready": true, "fixes": [], "warnings": [], "in_use": 0, "limit": 2, "cooldown_until": null, "last_error": null, "last_error_at": null}))]
pub struct ProviderView {
    pub name: String,
    /// claude, gemini, codex, qwen or cli.
    pub kind: String,
    /// Models callers may ask for (empty: any).
    pub models: Vec<String>,
    pub default_model: Option<String>,
    /// `{"status": "found", path, version}`, `{"status": "broken", path, detail}` or `{"status": "missing", fix}`.
    #[schema(value_type = Object)]
    pub cli: Value,
    /// `{"status": "present", source}` (the variable or file, never its value), `{"status": "missing", fix}` or `{"status": "not_checked"}`.
    #[schema(value_type = Object)]
    pub credentials: Value,
    /// What the credential found bills: `{"plan": "subscription" | "api_key" | "cloud_project", "headless", "detail"}`;
    /// null for a `cli` provider or when no credential was found.
    #[schema(value_type = Option<Object>)]
    pub billing: Option<Value>,
    /// A turn would start now: CLI found, credential neither missing nor
    /// refused nor expired, and no cooldown.
    pub ready: bool,
    /// What to do about each problem.
    pub fixes: Vec<String>,
    pub warnings: Vec<String>,
    pub in_use: u32,
    /// Turns at once per worker.
    pub limit: u32,
    /// Set after a usage limit or an outage of its model API: no turns go to
    /// this provider until then.
    pub cooldown_until: Option<DateTime<Utc>>,
    /// Why it cools down: `usage_limit` or `upstream`.
    pub cooldown_reason: Option<String>,
    /// `ok`, `expiring`, `expired`, `invalid`, `missing` or `not_checked`, as in `GET /health/tokens`.
    pub token: String,
    /// While its credential is refused (`token` expired or invalid), turns
    /// skip the provider; one turn probes it at this time.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// The last failed turn on any worker, unless a turn succeeded since: `{"kind": {"type": ...}, "message"}`.
    #[schema(value_type = Option<Object>)]
    pub last_error: Option<Value>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// List the providers.
///
/// Runs each CLI's `--version` and checks its credentials (presence only:
/// values are never read out), then adds the current load and cooldown.
#[utoipa::path(
    get, path = "/v1/providers", tag = "chat",
    responses(
        (status = 200, description = "Every configured provider", body = Vec<ProviderView>),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("bearer" = []))
)]
pub async fn list_providers(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Vec<ProviderView>>> {
    principal.require("jobs:read")?;
    Ok(Json(provider_views(&state).await))
}

/// Every provider's view, its CLI and credentials checked now.
pub async fn provider_views(state: &AppState) -> Vec<ProviderView> {
    let warn_days = state.config.token_warn_days;
    let checks =
        state.router.providers().iter().map(|p| async move { (p.clone(), orch_providers::health(p, warn_days).await) });
    let mut views = Vec::new();
    for (provider, health) in futures::future::join_all(checks).await {
        let status = provider.status();
        let config = provider.config();
        let diagnosis = health.diagnosis;
        views.push(ProviderView {
            name: status.name,
            kind: status.kind.to_string(),
            models: config.models.clone(),
            default_model: config.default_model.clone(),
            ready: health.ready,
            fixes: health.fixes,
            cli: serde_json::to_value(&diagnosis.cli).unwrap_or(Value::Null),
            credentials: serde_json::to_value(&diagnosis.credentials).unwrap_or(Value::Null),
            billing: diagnosis.billing.as_ref().and_then(|b| serde_json::to_value(b).ok()),
            warnings: diagnosis.warnings,
            in_use: status.in_use,
            limit: status.limit,
            cooldown_until: health.cooldown_until,
            cooldown_reason: health.cooldown_reason.map(str::to_owned),
            token: health.token,
            next_probe_at: health.next_probe_at,
            last_error: health.last_error.and_then(|e| serde_json::to_value(e).ok()),
            last_error_at: health.last_error_at,
        });
    }
    views
}

/// One provider's credential, as far as Orch can know it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"provider": "claude", "status": "expiring", "source": "CLAUDE_CODE_OAUTH_TOKEN", "expires_at": "2026-11-25T00:00:00Z", "expires_from": "token_expires_at", "renews": false, "days_left": 3, "detail": "expires in 3 days (token_expires_at)", "fix": "run `claude setup-token`, replace CLAUDE_CODE_OAUTH_TOKEN and set token_expires_at to a year from now"}))]
pub struct TokenHealth {
    pub provider: String,
    /// `ok`; `expiring` (its known expiry is within ORCH_TOKEN_WARN_DAYS);
    /// `expired` (past its known expiry, or a turn was refused because it
    /// expired) or `invalid` (a turn was refused for it), both until a turn on
    /// the provider succeeds; `missing`; `not_checked` (a `cli` provider).
    pub status: String,
    /// The variable or file the credential comes from; never its value.
    pub source: Option<String>,
    /// When the credential expires, where that can be known: the provider's
    /// `token_expires_at` setting, or the CLI's OAuth file without a refresh
    /// token (Gemini, Qwen). Null otherwise: a subscription token says nothing
    /// of its expiry, and a login with a refresh token renews itself.
    pub expires_at: Option<DateTime<Utc>>,
    /// Where `expires_at` comes from: `token_expires_at` or the file's path.
    pub expires_from: Option<String>,
    /// The CLI's login has a refresh token and renews itself.
    pub renews: bool,
    /// Whole days until `expires_at` (negative once past).
    pub days_left: Option<i64>,
    /// Why the status is not ok: the refused turn's message, or the expiry.
    pub detail: Option<String>,
    pub fix: Option<String>,
}

/// Credentials of each provider.
///
/// Whether each provider's credential is present (and where from), when it
/// expires where that can be known, and whether a turn on any worker was
/// refused for it since the last one that succeeded.
#[utoipa::path(
    get, path = "/health/tokens", tag = "health",
    responses(
        (status = 200, description = "Per provider", body = Vec<TokenHealth>),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("bearer" = []))
)]
pub async fn token_health(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Vec<TokenHealth>>> {
    principal.require("jobs:read")?;
    let now = Utc::now();
    let warn_days = state.config.token_warn_days;
    let mut tokens = Vec::new();
    for provider in state.router.providers().iter() {
        let health = orch_providers::health(provider, warn_days).await;
        let (source, missing_fix) = match &health.diagnosis.credentials {
            orch_providers::Credentials::Present { source } => (Some(source.clone()), None),
            orch_providers::Credentials::Missing { fix } => (None, Some(fix.clone())),
            orch_providers::Credentials::NotChecked => (None, None),
        };
        let fix = match health.token.as_str() {
            "ok" | "not_checked" => None,
            _ => missing_fix.or_else(|| Some(provider.renew_hint())),
        };
        let expires_at = health.expiry.as_ref().and_then(|e| e.expires_at);
        tokens.push(TokenHealth {
            provider: provider.name().to_owned(),
            status: health.token,
            source,
            expires_at,
            expires_from: health.expiry.as_ref().filter(|e| e.expires_at.is_some()).map(|e| e.source.clone()),
            renews: health.expiry.as_ref().is_some_and(|e| e.renews),
            days_left: expires_at.map(|at| (at - now).num_days()),
            detail: health.token_detail,
            fix,
        });
    }
    Ok(Json(tokens))
}
