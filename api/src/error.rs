//! The one error shape of the HTTP API: `{"error": {"code", "message", "details"?}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_field`, `missing_scope`.
    pub code: String,
    /// What went wrong and how to fix it.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// An error a handler returns; converted to a status and the JSON body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// More response headers (the `RateLimit` fields of a quota refusal).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: None, retry_after: None, headers: Vec::new() }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} with id {id}"))
    }

    /// 422 for a field the caller got wrong.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", format!("{field}: {message}"))
            .with_details(json!({"field": field}))
    }

    /// A body over `ORCH_MAX_BODY` (413), whoever read it.
    pub fn body_too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the server accepts (ORCH_MAX_BODY)",
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// A failure of ours: logged in full, shown without internals.
    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the server log has the details")
    }

    pub fn unavailable(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "store unavailable");
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the job store is unavailable; retry shortly",
        );
        e.retry_after = Some(1);
        e
    }
}

impl From<orch_store::StoreError> for ApiError {
    fn from(err: orch_store::StoreError) -> ApiError {
        match err {
            orch_store::StoreError::Unavailable(_) => ApiError::unavailable(err),
            orch_store::StoreError::NotReplicated(_) => {
                tracing::error!(error = %err, "store write not replicated");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_not_replicated",
                    "the write reached the store's primary but not the replicas it must reach before it counts \
                     (ack_replicas in ORCH_STORE), so a failover could lose it; it may exist: retry with the same \
                     Idempotency-Key",
                );
                e.retry_after = Some(1);
                e
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message, details: self.details } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Reusable error responses of the OpenAPI document, each with its own example.
/// These types exist only to describe responses; nothing constructs them.
#[allow(dead_code)]
pub mod responses {
    use utoipa::ToResponse;

    use super::ErrorBody;

    #[derive(ToResponse)]
    #[response(
        description = "Malformed JSON",
        example = json!({"error": {"code": "malformed_json", "message": "the body is not valid JSON: EOF while parsing an object at line 1 column 12"}})
    )]
    pub struct BadRequest(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "Missing, unknown or revoked API key (`Authorization: Bearer <key>`)",
        example = json!({"error": {"code": "unauthorized", "message": "missing Authorization header; send Authorization: Bearer <key> (make a key with `orch keys create`)"}})
    )]
    pub struct Unauthorized(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "The key lacks the scope this route needs",
        example = json!({"error": {"code": "missing_scope", "message": "this key lacks the scope \"jobs:write\"; its scopes are [\"jobs:read\"]", "details": {"required_scope": "jobs:write"}}})
    )]
    pub struct Forbidden(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "No such resource (jobs are gone after the retention)",
        example = json!({"error": {"code": "not_found", "message": "no job with id 019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11"}})
    )]
    pub struct NotFound(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "The Idempotency-Key was used with another body",
        example = json!({"error": {"code": "idempotency_conflict", "message": "this Idempotency-Key was used for job 019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11 with a different body; use a new key for a new job", "details": {"job_id": "019a8a5e-3c1e-7d3a-9a57-0c2f7e1d4b11"}}})
    )]
    pub struct IdempotencyConflict(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "The body is larger than ORCH_MAX_BODY",
        example = json!({"error": {"code": "body_too_large", "message": "the request body is larger than the server accepts (ORCH_MAX_BODY)"}})
    )]
    pub struct TooLarge(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "The body is not JSON",
        example = json!({"error": {"code": "unsupported_media_type", "message": "send the body as JSON with the header Content-Type: application/json"}})
    )]
    pub struct NotJson(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "A field is invalid; `details.field` names it",
        example = json!({"error": {"code": "invalid_field", "message": "plan.nodes[0].sleep.ms: invalid type: string \"soon\", expected u64", "details": {"field": "plan.nodes[0].sleep.ms"}}})
    )]
    pub struct Invalid(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "The store is unavailable; nothing was stored. Retry after `Retry-After` seconds",
        example = json!({"error": {"code": "store_unavailable", "message": "the job store is unavailable; retry shortly"}})
    )]
    pub struct Unavailable(#[to_schema] ErrorBody);

    #[derive(ToResponse)]
    #[response(
        description = "Over the key's request rate limit (`rate_limited`) or, submitting a job, its daily job quota (`job_quota_exceeded`). Retry after `Retry-After` seconds; `RateLimit` and `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers) describe the limits",
        headers(
            ("Retry-After" = u64, description = "Seconds until a request (or job) is allowed again"),
            ("RateLimit" = String, description = "Structured field: `\"requests\";r=<remaining>;t=<seconds>` (and `\"jobs\";r=0;t=<seconds>` over the daily quota)"),
            ("RateLimit-Policy" = String, description = "Structured field: `\"requests\";q=<limit>;w=60` (and `\"jobs\";q=<limit>;w=86400`)"),
        ),
        example = json!({"error": {"code": "rate_limited", "message": "this key may make 120 requests a minute; wait 1 s (Retry-After) or ask an admin for a higher rate_limit_per_minute", "details": {"limit": 120, "window_seconds": 60, "retry_after": 1}}})
    )]
    pub struct TooManyRequests(#[to_schema] ErrorBody);
}
