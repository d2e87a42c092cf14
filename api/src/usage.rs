//! `GET /v1/usage`: chat turns, tokens, cost (as the CLIs reported it) and
//! latency percentiles over a time range, grouped by provider, model or key.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Duration as TimeDelta, Utc};
use orch_store::UsageRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::error::responses::{Forbidden, Invalid, Unauthorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;

/// Most turns one report reads.
const MAX_RECORDS: usize = 200_000;

#[derive(Debug, Deserialize, IntoParams)]
pub struct UsageParams {
    /// Start (RFC 3339, inclusive); default 24 hours before `to`.
    pub from: Option<String>,
    /// End (RFC 3339, exclusive); default now.
    pub to: Option<String>,
    /// `provider` (default), `model` or `key`.
    pub group_by: Option<String>,
}

/// Usage over a range.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"from": "2026-11-20T09:00:00Z", "to": "2026-11-21T09:00:00Z", "group_by": "provider", "groups": [{"group": "claude", "turns": 42, "failed": 1, "input_tokens": 51234, "output_tokens": 9120, "cost_usd": 1.84, "latency_ms": {"p50": 6100, "p90": 14200, "p99": 30100}}], "truncated": false}))]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: String,
    pub groups: Vec<UsageGroup>,
    /// More turns than one report reads (200,000) were in the range: narrow it.
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageGroup {
    /// The provider, `provider/model`, or key id.
    pub group: String,
    pub turns: u64,
    /// Turns no provider answered.
    pub failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Sum of the costs the CLIs reported (turns without one count 0); null when none reported any.
    pub cost_usd: Option<f64>,
    /// Turn latency (fallbacks included) percentiles, ms.
    pub latency_ms: Percentiles,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
}

fn parse_time(field: &str, text: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::invalid_field(field, "an RFC 3339 time like 2026-11-21T09:00:00Z"))
}

/// Chat usage.
///
/// Turns, tokens, cost as the CLIs reported it, and latency percentiles in
/// `[from, to)`, grouped by `provider`, `model` or `key`. `admin` and
/// `jobs:read_all` keys see every key's turns; another key sees its own.
#[utoipa::path(
    get, path = "/v1/usage", tag = "chat",
    params(UsageParams),
    responses(
        (status = 200, description = "The report", body = UsageReport),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 422, response = Invalid),
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> ApiResult<Json<UsageReport>> {
    principal.require("jobs:read")?;
    let to = params.to.as_deref().map(|t| parse_time("to", t)).transpose()?.unwrap_or_else(Utc::now);
    let from = params.from.as_deref().map(|t| parse_time("from", t)).transpose()?.unwrap_or(to - TimeDelta::hours(24));
    if from >= to {
        return Err(ApiError::invalid_field("from", "must be before `to`"));
    }
    let group_by = params.group_by.unwrap_or_else(|| "provider".into());
    let group_of: fn(&UsageRecord) -> String = match group_by.as_str() {
        "provider" => |r| r.provider.clone(),
        "model" => |r| match &r.model {
            Some(model) => format!("{}/{model}", r.provider),
            None => r.provider.clone(),
        },
        "key" => |r| r.key_id.clone(),
        other => {
            return Err(ApiError::invalid_field(
                "group_by",
                format!("{other:?} is not a grouping; allowed: provider, model, key"),
            ));
        }
    };
    let records = state.store.usage(from, to, MAX_RECORDS).await?;
    let truncated = records.len() == MAX_RECORDS;
    let admin = principal.reads_all();
    let mut groups: BTreeMap<String, Vec<&UsageRecord>> = BTreeMap::new();
    for record in records.iter().filter(|r| admin || r.key_id == principal.key.id) {
        groups.entry(group_of(record)).or_default().push(record);
    }
    let groups = groups.into_iter().map(|(group, records)| summarise(group, &records)).collect();
    Ok(Json(UsageReport { from, to, group_by, groups, truncated }))
}

fn summarise(group: String, records: &[&UsageRecord]) -> UsageGroup {
    let mut latencies: Vec<u64> = records.iter().map(|r| r.latency_ms).collect();
    latencies.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    let costs: Vec<f64> = records.iter().filter_map(|r| r.cost_usd).collect();
    UsageGroup {
        group,
        turns: records.len() as u64,
        failed: records.iter().filter(|r| !r.ok).count() as u64,
        input_tokens: records.iter().map(|r| r.input_tokens).sum(),
        output_tokens: records.iter().map(|r| r.output_tokens).sum(),
        cost_usd: (!costs.is_empty()).then(|| costs.iter().sum()),
        latency_ms: Percentiles { p50: at(0.5), p90: at(0.9), p99: at(0.99) },
    }
}
