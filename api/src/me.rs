//! What a client needs to know about its own key and a job's input, for the
//! dashboard above all: `GET /v1/me` says which key is calling and what it may
//! do (so a read-only key gets a read-only view), and
//! `GET /v1/jobs/{id}/input` answers what a job was asked to do.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::error::responses::{NotFound, Unauthorized};
use crate::jobs;
use crate::keys::KeyView;

/// The calling key.
///
/// The key's id, name, scopes and limits, never its secret. Any valid key
/// may ask, whatever its scopes.
#[utoipa::path(
    get, path = "/v1/me", tag = "keys",
    responses(
        (status = 200, description = "The key that made the request", body = KeyView),
        (status = 401, response = Unauthorized),
    ),
    security(("bearer" = []))
)]
pub async fn me(principal: Principal) -> Json<KeyView> {
    Json(principal.key.into())
}

/// Get a job's input.
///
/// What the job was submitted with, as the worker reads it: for a chat job
/// its `messages` (system prompt first) and options; for a batch job its
/// `plan`, or the `request` and planner options; the `callback` without its
/// `secret` and with its header values redacted. Same scope and visibility as
/// `GET /v1/jobs/{id}`.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/input", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job's input", content_type = "application/json", body = Value,
            example = json!({"plan": {"nodes": [{"id": "wait", "sleep": {"ms": 200}}]}, "key": {"id": "key_3f2a9c01b7de", "name": "n8n production"}})),
        (status = 401, response = Unauthorized), (status = 403, response = crate::error::responses::Forbidden),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []))
)]
pub async fn job_input(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    principal.require("jobs:read")?;
    let mut input = jobs::load(&state, Some(&principal), &id).await?.input;
    if let Some(fields) = input.as_object_mut() {
        // Where the worker builds the webhook's links from: bookkeeping, not input.
        fields.remove(orch_webhooks::LINKS_BASE);
        // The callback's secret and header values are never answered (as on submission).
        if let Some(callback) = fields.get_mut("callback").and_then(Value::as_object_mut) {
            callback.remove("secret");
            if let Some(headers) = callback.get_mut("headers").and_then(Value::as_object_mut) {
                headers.values_mut().for_each(|v| *v = Value::from("<redacted>"));
            }
        }
    }
    Ok(Json(input))
}
