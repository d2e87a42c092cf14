//! Provider state in the store, shared by every worker: a cooldown one worker
//! met makes the others skip that provider, and the API shows what the
//! workers saw. Also the two provider events: `provider.auth_expired` when a
//! turn is refused for the credential (once per incident), and
//! `provider.auth_expiring` when a known expiry enters the warning window
//! (checked periodically, once per provider and expiry).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use orch_providers::{ErrorKind, Provider, Providers, SharedSnapshot, SharedState, TurnError};
use orch_store::{AuthFailure, ProviderUpdate, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Where events that are not about a job go (the webhooks' subscriptions).
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Queues `event` with its `payload` for whoever wants it; `dedupe` names
    /// the occurrence, so processes reporting the same one queue it once.
    async fn emit(&self, event: &str, payload: Value, dedupe: &str) -> Result<(), String>;
}

/// [`SharedState`] on the store.
pub struct StoreState {
    store: Arc<dyn Store>,
    events: OnceLock<Arc<dyn EventSink>>,
}

impl StoreState {
    pub fn new(store: Arc<dyn Store>) -> Arc<StoreState> {
        Arc::new(StoreState { store, events: OnceLock::new() })
    }

    /// Where `provider.auth_expired` goes (set once, when the webhooks exist).
    pub fn set_events(&self, events: Arc<dyn EventSink>) {
        let _ = self.events.set(events);
    }
}

#[async_trait]
impl SharedState for StoreState {
    async fn load(&self, provider: &Provider) -> Result<SharedSnapshot, String> {
        let state = self.store.provider_state(provider.name()).await.map_err(|e| e.to_string())?;
        let cooldown_until = state.cooldown_until.filter(|t| *t > Utc::now());
        let last_error: Option<TurnError> =
            state.last_error.as_ref().and_then(|e| serde_json::from_value(e.clone()).ok());
        Ok(SharedSnapshot {
            cooldown_until,
            // The failure that set the cooldown is the last one: a provider
            // cooling down takes no turns.
            cooldown_cause: cooldown_until.and(last_error.clone()),
            auth_failing: state.auth_failure.is_some(),
            auth_failure_at: state.auth_failure.as_ref().map(|f| f.at),
            auth_error: state
                .auth_failure
                .as_ref()
                .map(|f| TurnError::new(ErrorKind::Auth { expired: f.expired }, f.message.clone())),
            has_error: last_error.is_some(),
            last_error,
            last_error_at: state.last_error_at,
        })
    }

    async fn record(&self, provider: &Provider, cooldown_until: Option<DateTime<Utc>>, error: Option<&TurnError>) {
        let now = Utc::now();
        let auth_failure = error.and_then(|e| match e.kind {
            ErrorKind::Auth { expired } => {
                Some(AuthFailure { since: now, at: now, expired, message: e.message.clone() })
            }
            _ => None,
        });
        let update = ProviderUpdate {
            cooldown_until,
            // A success replaces the last error with null: it is history.
            last_error: Some((error.map_or(Value::Null, |e| serde_json::to_value(e).unwrap_or(Value::Null)), now)),
            auth_ok: error.is_none(),
            auth_failure: auth_failure.clone(),
        };
        let state = match self.store.update_provider_state(provider.name(), update).await {
            Ok(state) => state,
            Err(err) => {
                tracing::warn!(provider = %provider.name(), error = %err, "recording shared provider state failed");
                return;
            }
        };
        // Only the refusal that opened the incident reports it.
        if let (Some(mine), Some(open)) = (auth_failure, state.auth_failure)
            && open.since == mine.at
            && let Some(events) = self.events.get()
        {
            let status = if open.expired { "expired" } else { "invalid" };
            let payload = event_payload("provider.auth_expired", provider, status, Some(&open.message), now);
            let dedupe = format!("{}:{}", provider.name(), open.since.timestamp_millis());
            if let Err(err) = events.emit("provider.auth_expired", payload, &dedupe).await {
                tracing::warn!(provider = %provider.name(), error = %err, "queueing provider.auth_expired failed");
            }
        }
    }
}

/// Whole days from `now` until `at` (negative once past).
pub fn days_left(at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (at - now).num_days()
}

/// The payload of a provider event; never the credential itself.
pub fn event_payload(
    event: &str,
    provider: &Provider,
    status: &str,
    detail: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    let expiry = orch_providers::expiry(provider);
    let expires_at = expiry.as_ref().and_then(|e| e.expires_at);
    json!({
        "type": event,
        "provider": provider.name(),
        "status": status,
        "expires_at": expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        "days_left": expires_at.map(|t| days_left(t, now)),
        "detail": detail,
        "fix": provider.renew_hint(),
        "at": now.to_rfc3339_opts(SecondsFormat::Millis, true),
    })
}

/// Queues `provider.auth_expiring` for each provider whose credential expires
/// within `warn_days` (and has not yet expired); returns how many.
pub async fn check_expiry(providers: &Providers, events: &dyn EventSink, warn_days: u32) -> usize {
    let now = Utc::now();
    let mut queued = 0;
    for provider in providers.iter() {
        let Some(at) = orch_providers::expiry(provider).and_then(|e| e.expires_at) else { continue };
        let left = at - now;
        if left <= chrono::TimeDelta::zero() || left > chrono::TimeDelta::days(i64::from(warn_days)) {
            continue;
        }
        let detail = format!(
            "the credential of {} expires at {} ({} days left)",
            provider.name(),
            at.to_rfc3339_opts(SecondsFormat::Secs, true),
            days_left(at, now)
        );
        let payload = event_payload("provider.auth_expiring", provider, "expiring", Some(&detail), now);
        let dedupe = format!("{}:{}", provider.name(), at.timestamp_millis());
        match events.emit("provider.auth_expiring", payload, &dedupe).await {
            Ok(()) => queued += 1,
            Err(err) => {
                tracing::warn!(provider = %provider.name(), error = %err, "queueing provider.auth_expiring failed")
            }
        }
    }
    queued
}

/// Runs [`check_expiry`] every `every` until `shutdown`.
pub async fn watch_expiry(
    providers: Arc<orch_providers::Router>,
    events: Arc<dyn EventSink>,
    warn_days: u32,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        check_expiry(providers.providers(), events.as_ref(), warn_days).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
