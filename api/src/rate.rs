//! Per-key request rate limits and daily job quotas, and their response
//! headers.
//!
//! A key makes at most `rate_limit_per_minute` requests a minute (its own
//! figure, else `ORCH_RATE_LIMIT_PER_MINUTE`; 0 for unlimited), counted when
//! the [`crate::auth::Principal`] extractor accepts the key, so every
//! authenticated route counts: REST, the OpenAI-compatible routes, `/mcp` and
//! `/sse`. The store keeps the count ([`orch_store::Store::take_request`]):
//! shared by every API process on Redis. Jobs a UTC day (`jobs_per_day`, else
//! `ORCH_JOBS_PER_DAY`) are counted by the store in the step that stores the
//! job ([`orch_store::Store::insert_job_within`]).
//!
//! Responses of limited keys carry `RateLimit-Policy` and `RateLimit` as in
//! draft-ietf-httpapi-ratelimit-headers (structured fields): policy
//! `"requests";q=<limit>;w=60`, state `"requests";r=<remaining>;t=<seconds>`,
//! where `t` is the time until the full quota is back, or, with `r=0`, until
//! the next request is allowed. A refusal is 429 with `Retry-After`; a job over
//! the daily quota adds the `"jobs";q=<limit>;w=86400` policy.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use orch_store::ApiKey;
use serde_json::json;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::{ApiConfig, AppState};

pub const RATE_LIMIT: &str = "ratelimit";
pub const RATE_LIMIT_POLICY: &str = "ratelimit-policy";

/// Requests a minute `key` may make: its own figure, else the server's; 0 for unlimited.
pub fn requests_per_minute(config: &ApiConfig, key: &ApiKey) -> u32 {
    key.rate_limit_per_minute.unwrap_or(config.rate_limit_per_minute)
}

/// Jobs a UTC day the caller may submit: its key's figure, else the server's;
/// 0 for unlimited. Stdio MCP (no key) is not limited.
pub fn jobs_per_day(config: &ApiConfig, principal: Option<&Principal>) -> u32 {
    principal.map_or(0, |p| p.key.jobs_per_day.unwrap_or(config.jobs_per_day))
}

/// A limited request's place in its key's rate limit, put in the request's
/// extensions by [`headers`] and filled by the extractor.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Seen>>>);

#[derive(Clone, Copy)]
struct Seen {
    limit: u32,
    remaining: u32,
    reset_secs: u64,
}

/// Counts a request of `key` against its rate limit; 429 over it.
pub async fn check(state: &AppState, key: &ApiKey, slot: Option<&Slot>) -> Result<(), ApiError> {
    let limit = requests_per_minute(&state.config, key);
    if limit == 0 {
        return Ok(());
    }
    let decision = state.store.take_request(&key.id, limit).await?;
    let reset_secs = if decision.allowed {
        // The quota refills one request every 60/limit seconds.
        (u64::from(limit.saturating_sub(decision.remaining)) * 60).div_ceil(u64::from(limit))
    } else {
        ceil_secs(decision.retry_after)
    };
    if let Some(slot) = slot {
        *slot.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Seen { limit, remaining: decision.remaining.min(limit), reset_secs });
    }
    if decision.allowed {
        return Ok(());
    }
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this key may make {limit} requests a minute; wait {reset_secs} s (Retry-After) or ask an admin for a \
             higher rate_limit_per_minute"
        ),
    )
    .with_details(json!({"limit": limit, "window_seconds": 60, "retry_after": reset_secs}));
    e.retry_after = Some(reset_secs);
    Err(e)
}

/// 429 for a job over its key's daily quota, with the `"jobs"` policy.
pub fn over_quota(limit: u32, resets_at: DateTime<Utc>) -> ApiError {
    let secs = ceil_secs((resets_at - Utc::now()).to_std().unwrap_or_default());
    let at = resets_at.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "job_quota_exceeded",
        format!(
            "this key may submit {limit} jobs a day and has submitted them today; the count starts again at {at} \
             (UTC midnight), or ask an admin for a higher jobs_per_day"
        ),
    )
    .with_details(json!({"limit": limit, "resets_at": at, "retry_after": secs}));
    e.retry_after = Some(secs);
    e.headers = vec![
        (RATE_LIMIT_POLICY, format!("\"jobs\";q={limit};w=86400")),
        (RATE_LIMIT, format!("\"jobs\";r=0;t={secs}")),
    ];
    e
}

/// Whole seconds, rounded up, at least 1.
fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// Middleware: gives the request a [`Slot`] and writes what the extractor put
/// there as `RateLimit-Policy` and `RateLimit` (after any the handler set).
pub async fn headers(mut request: Request, next: Next) -> Response {
    let slot = Slot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    let seen = *slot.0.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(seen) = seen {
        let headers = response.headers_mut();
        for (name, item) in [
            (RATE_LIMIT_POLICY, format!("\"requests\";q={};w=60", seen.limit)),
            (RATE_LIMIT, format!("\"requests\";r={};t={}", seen.remaining, seen.reset_secs)),
        ] {
            let value = match headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(before) => format!("{before}, {item}"),
                None => item,
            };
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_limit_overrides_the_default_and_zero_is_unlimited() {
        let mut key = crate::auth::new_key("k", &["jobs:read".into()]).unwrap().key;
        let config = ApiConfig { rate_limit_per_minute: 120, jobs_per_day: 50, ..ApiConfig::default() };
        assert_eq!(requests_per_minute(&config, &key), 120);
        key.rate_limit_per_minute = Some(0);
        assert_eq!(requests_per_minute(&config, &key), 0);
        key.jobs_per_day = Some(7);
        assert_eq!(jobs_per_day(&config, Some(&Principal { key })), 7);
        assert_eq!(jobs_per_day(&config, None), 0);
    }

    #[test]
    fn over_quota_is_429_with_retry_after_and_the_jobs_policy() {
        let e = over_quota(5, Utc::now() + chrono::Duration::seconds(90));
        assert_eq!((e.status, e.code), (StatusCode::TOO_MANY_REQUESTS, "job_quota_exceeded"));
        assert!(matches!(e.retry_after, Some(89..=90)), "{:?}", e.retry_after);
        assert_eq!(e.headers[0], (RATE_LIMIT_POLICY, "\"jobs\";q=5;w=86400".to_owned()));
    }
}
