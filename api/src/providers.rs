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

/// One provider as this API process sees it. `in_use`, `cooldown_until` and
/// `last_error` are this process's (in `orch serve`, the worker's too).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "claude", "kind": "claude", "models": ["sonnet", "opus"], "default_model": "sonnet", "cli": {"status": "found", "path": "/usr/local/bin/claude", "version": "2.1.197 (Claude Code)"}, "credentials": {"status": "present", "source": "CLAUDE_CODE_OAUTH_TOKEN"}, "ready": true, "fixes": [], "warnings": [], "in_use": 0, "limit": 2, "cooldown_until": null, "last_error": null}))]
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
    /// CLI found and credentials not missing.
    pub ready: bool,
    /// What to do about each problem.
    pub fixes: Vec<String>,
    pub warnings: Vec<String>,
    pub in_use: u32,
    /// Turns at once per worker.
    pub limit: u32,
    /// Set after a usage limit: no turns go to this provider until then.
    pub cooldown_until: Option<DateTime<Utc>>,
    /// The last failed turn: `{"kind": {"type": ...}, "message"}`.
    #[schema(value_type = Option<Object>)]
    pub last_error: Option<Value>,
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
    let checks = state.router.providers().iter().map(|p| async move { (p.clone(), orch_providers::check(p).await) });
    let mut views = Vec::new();
    for (provider, diagnosis) in futures::future::join_all(checks).await {
        let status = provider.status();
        let config = provider.config();
        views.push(ProviderView {
            name: status.name,
            kind: status.kind.to_string(),
            models: config.models.clone(),
            default_model: config.default_model.clone(),
            ready: diagnosis.ok(),
            fixes: diagnosis.fixes(),
            cli: serde_json::to_value(&diagnosis.cli).unwrap_or(Value::Null),
            credentials: serde_json::to_value(&diagnosis.credentials).unwrap_or(Value::Null),
            warnings: diagnosis.warnings,
            in_use: status.in_use,
            limit: status.limit,
            cooldown_until: status.cooldown_until,
            last_error: status.last_error.and_then(|e| serde_json::to_value(e).ok()),
        });
    }
    views
}

/// How to replace a credential the provider refused.
fn renew_hint(kind: orch_providers::ProviderKind) -> &'static str {
    match kind {
        orch_providers::ProviderKind::Claude => "run `claude setup-token` and replace CLAUDE_CODE_OAUTH_TOKEN",
        orch_providers::ProviderKind::Gemini => "log in again under the provider's home, or replace GEMINI_API_KEY",
        orch_providers::ProviderKind::Codex => "run `codex login` again as the user Orch runs as",
        orch_providers::ProviderKind::Qwen => "run `qwen` and log in again as the user Orch runs as",
        orch_providers::ProviderKind::Cli => "renew the credentials the command uses",
    }
}

/// One provider's credential, as far as Orch can know it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"provider": "claude", "status": "expired", "source": "CLAUDE_CODE_OAUTH_TOKEN", "expires_at": null, "days_left": null, "detail": "claude: authentication failed: OAuth token has expired…", "fix": "run `claude setup-token` and set CLAUDE_CODE_OAUTH_TOKEN"}))]
pub struct TokenHealth {
    pub provider: String,
    /// `ok` (present, last turn not refused), `expired` or `invalid` (the last
    /// turn failed authentication), `missing`, or `not_checked` (a `cli` provider).
    pub status: String,
    /// The variable or file the credential comes from; never its value.
    pub source: Option<String>,
    /// When the credential expires, where that can be known (subscription
    /// OAuth tokens do not say; null then).
    pub expires_at: Option<DateTime<Utc>>,
    pub days_left: Option<i64>,
    /// The last authentication failure, when that is why the status is not ok.
    pub detail: Option<String>,
    pub fix: Option<String>,
}

/// Credentials of each provider.
///
/// Whether each provider's credential is present (and where from), and
/// whether its last turn was refused for an expired or invalid credential.
/// Subscription tokens carry no expiry Orch can read, so `expires_at` is
/// null unless known.
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
    let mut tokens = Vec::new();
    for provider in state.router.providers().iter() {
        let diagnosis = orch_providers::check(provider).await;
        let last_auth =
            provider.status().last_error.filter(|e| matches!(e.kind, orch_providers::ErrorKind::Auth { .. }));
        let (mut status, source, mut fix) = match &diagnosis.credentials {
            orch_providers::Credentials::Present { source } => ("ok", Some(source.clone()), None),
            orch_providers::Credentials::Missing { fix } => ("missing", None, Some(fix.clone())),
            orch_providers::Credentials::NotChecked => ("not_checked", None, None),
        };
        if let Some(err) = &last_auth {
            let expired = matches!(err.kind, orch_providers::ErrorKind::Auth { expired: true });
            status = if expired { "expired" } else { "invalid" };
            fix = fix.or_else(|| Some(renew_hint(provider.kind()).to_owned()));
        }
        tokens.push(TokenHealth {
            provider: provider.name().to_owned(),
            status: status.to_owned(),
            source,
            expires_at: None,
            days_left: None,
            detail: last_auth.map(|e| e.message),
            fix,
        });
    }
    Ok(Json(tokens))
}
