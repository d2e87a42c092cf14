//! Orch's durable state: jobs, their event logs and results, worker liveness,
//! API keys, the MCP servers registered through the API, chat sessions, usage and provider state, behind one [`Store`] trait with two backends.
//!
//! - [`sqlite::SqliteStore`], the embedded default: one file, no service. All
//!   writes go through one writer thread that commits whatever is pending in a
//!   single transaction (group commit), so durability costs one fsync per batch
//!   rather than per job.
//! - [`redis::RedisStore`], the scale-out backend: every state transition is one
//!   Lua script, so many API and worker processes share one Redis safely.
//!
//! Both implement the same semantics, pinned by the conformance suite in
//! `tests/conformance.rs`. Neither uses apalis' storage: see ARCHITECTURE.md for
//! the measured defects that decided this.

pub mod audit;
pub mod model;
pub mod notify;
pub mod rate;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

pub use audit::AuditLog;
pub use model::*;
pub use notify::{CancelSignal, Notifier, Watch};

/// Errors from a store. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A write reached the primary but not the replicas it must reach before
    /// it counts (Redis `ack_replicas`): it may exist, and a failover may lose it.
    #[error("store write not replicated: {0}")]
    NotReplicated(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The durable state of Orch. Every method is atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short backend name for health output: `sqlite` or `redis`.
    fn backend(&self) -> &'static str;

    /// Wake-ups: `jobs()` fires when jobs may be ready to claim, a
    /// [`Notifier::watch`] of a job when its events change. The Redis backend
    /// carries them across processes (pub/sub); SQLite only within one.
    fn notifier(&self) -> &Notifier;

    /// Round trip to the backing store.
    async fn ping(&self) -> Result<()>;

    /// Stores a queued job (and its `queued` event, seq 1), honouring the
    /// idempotency record when there is one. Returns only once durable.
    async fn insert_job(&self, job: NewJob) -> Result<Inserted> {
        self.insert_job_within(job, 0).await
    }

    /// [`Store::insert_job`] counting the job against its owner's quota of
    /// `jobs_per_day` jobs a UTC day (0: unlimited), in the same atomic step:
    /// over it, nothing is stored ([`Inserted::OverQuota`]). A replay of an
    /// idempotency record is not counted.
    async fn insert_job_within(&self, job: NewJob, jobs_per_day: u32) -> Result<Inserted>;

    /// Counts one request of `bucket` (a key id) against `per_minute`
    /// requests a minute (> 0): a burst of `per_minute`, refilled evenly over
    /// the minute (GCRA). Shared by every process on a Redis store; on SQLite,
    /// by the process (its API is the only one).
    async fn take_request(&self, bucket: &str, per_minute: u32) -> Result<RateDecision>;

    /// Stores many queued jobs at once (no idempotency), for bulk loads.
    async fn insert_jobs(&self, jobs: Vec<NewJob>) -> Result<()>;

    async fn get_job(&self, id: JobId) -> Result<Option<Job>>;

    /// The result of a succeeded job.
    async fn get_result(&self, id: JobId) -> Result<Option<Value>>;

    /// Newest first; at most `filter.limit` jobs. Deliveries are listed only
    /// when `filter.kind` asks for them.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>>;

    async fn count_jobs(&self) -> Result<JobCounts>;

    /// Count of the jobs of one kind per status.
    async fn count_jobs_of_kind(&self, kind: JobKind) -> Result<JobCounts>;

    /// The deliveries about job `parent` (see [`NewJob::parent`]), newest
    /// first, strictly older than `before`, at most `limit`.
    async fn job_deliveries(&self, parent: JobId, before: Option<JobId>, limit: usize) -> Result<Vec<Job>>;

    /// Cancels a job: a queued one becomes `cancelled` at once (and never
    /// starts); a running one gets `cancel_requested` and its worker stops it.
    /// A finished job is returned unchanged. `None` when unknown.
    async fn cancel_job(&self, id: JobId) -> Result<Option<Job>>;

    /// Claims up to `limit` due queued jobs for `worker`: each becomes
    /// `running` with `attempts + 1`, a lease until `now + lease`, and a
    /// `running` event. Oldest due first.
    async fn claim(&self, worker: &str, limit: usize, lease: Duration) -> Result<Vec<Job>>;

    /// Extends the leases `worker` holds on `jobs` and records the worker as
    /// alive. Returns the ids among `jobs` the worker must stop: cancellation
    /// was requested, or the lease is no longer the worker's.
    async fn heartbeat(&self, worker: &WorkerInfo, jobs: &[JobId], lease: Duration) -> Result<Vec<JobId>>;

    /// Ends now the leases `worker` holds on `jobs` (of running jobs), so that
    /// [`Store::recover_expired`] moves them at once, as it moves the jobs of a
    /// worker that died: the attempt counts. For a worker that stopped those
    /// attempts itself (shutdown grace over).
    async fn release(&self, worker: &WorkerInfo, jobs: &[JobId]) -> Result<()> {
        self.heartbeat(worker, jobs, Duration::ZERO).await.map(|_| ())
    }

    /// Records how attempts ended. Applied only where `worker` still holds the
    /// lease of a running job; returns, per completion, whether it applied.
    /// A `retrying` event's `retry_at` is the time as chrono serializes it at
    /// millisecond precision (`2026-01-02T03:04:05.678Z`, `...:05Z` on a whole second).
    async fn complete(&self, worker: &str, completions: Vec<Completion>) -> Result<Vec<bool>>;

    /// Sets a running job's progress and appends a `progress` event.
    async fn record_progress(&self, worker: &str, id: JobId, progress: Value) -> Result<()>;

    /// Running jobs whose lease expired before `now` (their worker died) go back
    /// to `queued`, or to `failed` with `worker_lost` when out of attempts, or to
    /// `cancelled` when cancellation was requested. Returns how many moved.
    async fn recover_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<u64>;

    /// Events of a job with `seq > after`, oldest first, at most `limit`.
    async fn events(&self, id: JobId, after: u64, limit: usize) -> Result<Vec<JobEvent>>;

    /// Workers seen since `since`.
    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerInfo>>;

    /// Deletes up to `limit` finished jobs (with events, results and
    /// idempotency records) finished before `before`; returns how many.
    async fn purge(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;

    /// Stores a key by the hash of its secret.
    async fn create_key(&self, key: &ApiKey, secret_hash: &str) -> Result<()>;

    /// Stores the key only when no unrevoked key exists yet (first start);
    /// returns whether it was stored.
    async fn create_first_key(&self, key: &ApiKey, secret_hash: &str) -> Result<bool>;

    /// An unrevoked key by the hash of its secret.
    async fn key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>>;

    /// All keys, revoked ones included, oldest first.
    async fn list_keys(&self) -> Result<Vec<ApiKey>>;

    /// Revokes a key; returns false when no unrevoked key has that id.
    async fn revoke_key(&self, id: &str) -> Result<bool>;

    /// An unrevoked key whose *previous* secret (before its last rotation)
    /// has this hash; the caller checks `rotated_until`.
    async fn key_by_previous_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>>;

    /// Gives an unrevoked key a new secret (and prefix); the old secret is
    /// kept as the previous one, working until `until`. False when no
    /// unrevoked key has that id.
    async fn rotate_key(&self, id: &str, prefix: &str, secret_hash: &str, until: DateTime<Utc>) -> Result<bool>;

    /// Replaces an unrevoked key's `expires_at`, `servers`, `tools`,
    /// `providers`, `rate_limit_per_minute` and `jobs_per_day` with those of `key`; false when no unrevoked key has its id.
    async fn update_key(&self, key: &ApiKey) -> Result<bool>;

    /// Sets a key's `last_used_at`.
    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<()>;

    /// Appends audit records (their `id`s are assigned, increasing).
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()>;

    /// Audit records passing `filter`, newest first, at most `limit`.
    async fn list_audit(&self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditEntry>>;

    /// Deletes audit records older than `before`; returns how many.
    async fn purge_audit(&self, before: DateTime<Utc>) -> Result<u64>;

    /// MCP servers registered through the API, by name.
    async fn list_servers(&self) -> Result<Vec<StoredServer>>;

    /// Stores a server by name, replacing one of the same name (whose
    /// `created_at` is kept); returns whether it was new.
    async fn put_server(&self, server: &StoredServer) -> Result<bool>;

    /// Removes a server; returns false when none has that name.
    async fn delete_server(&self, name: &str) -> Result<bool>;

    /// Running jobs whose lease expired before `now`, at most `limit`: the
    /// jobs `recover_expired` would move next. Read-only.
    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>>;

    /// Global webhook subscriptions, oldest first.
    async fn list_webhooks(&self) -> Result<Vec<StoredWebhook>>;

    /// Stores a subscription by id, replacing one with the same id (whose
    /// `created_at` is kept); returns whether it was new.
    async fn put_webhook(&self, webhook: &StoredWebhook) -> Result<bool>;

    /// Removes a subscription; returns false when none has that id.
    async fn delete_webhook(&self, id: &str) -> Result<bool>;

    /// A session that has not expired.
    async fn get_session(&self, id: &str) -> Result<Option<Session>>;

    /// Appends `messages` to a session, starting it for `owner` when it does not
    /// exist (or expired), and slides its expiry to now + `ttl`. Atomic.
    async fn append_session(
        &self,
        id: &str,
        owner: &str,
        messages: Vec<SessionMessage>,
        ttl: Duration,
    ) -> Result<Session>;

    /// Unexpired sessions (of `owner`, or everyone's), most recently updated
    /// first, skipping `offset`, at most `limit`.
    async fn list_sessions(&self, owner: Option<&str>, offset: usize, limit: usize) -> Result<Vec<Session>>;

    /// Forgets a session; false when there was none.
    async fn delete_session(&self, id: &str) -> Result<bool>;

    /// A counting semaphore shared by every process on this store: takes one
    /// of `limit` slots of `name` for `holder` until now + `hold` (so a holder
    /// that dies frees its slot then), or renews the holder's slot. False when
    /// every slot is taken.
    async fn try_acquire_slot(&self, name: &str, holder: &str, limit: u32, hold: Duration) -> Result<bool>;

    /// Gives a slot back; nothing happens when `holder` has none.
    async fn release_slot(&self, name: &str, holder: &str) -> Result<()>;

    /// Applies `update` to `provider`'s state (creating it) and returns the result.
    async fn update_provider_state(&self, provider: &str, update: ProviderUpdate) -> Result<ProviderState>;

    /// One provider's state; a default (empty) state when nothing was recorded.
    async fn provider_state(&self, provider: &str) -> Result<ProviderState>;

    /// Every provider with recorded state, by name.
    async fn provider_states(&self) -> Result<Vec<ProviderState>>;

    /// Records a chat turn for `/v1/usage` (once per job: a repeat replaces it).
    async fn record_usage(&self, record: &UsageRecord) -> Result<()>;

    /// Turns recorded in `[from, to)`, oldest first, at most `limit`. Records
    /// older than the retention are removed by [`Store::purge`].
    async fn usage(&self, from: DateTime<Utc>, to: DateTime<Utc>, limit: usize) -> Result<Vec<UsageRecord>>;

    /// Keeps the output of plan node `node` of job `id` (JSON text), replacing
    /// an earlier one; false when the job does not exist (then nothing is
    /// kept). Removed with the job by [`Store::purge`].
    async fn put_output(&self, id: JobId, node: &str, output: &str) -> Result<bool>;

    /// The output [`Store::put_output`] kept, as it was given.
    async fn get_output(&self, id: JobId, node: &str) -> Result<Option<String>>;

    /// Keeps `value` under `key` for `ttl` in a cache every process on this
    /// store shares (the LLM planner's plans), replacing an earlier value.
    async fn cache_put(&self, key: &str, value: &str, ttl: Duration) -> Result<()>;

    /// The value under `key` if its time has not passed.
    async fn cache_get(&self, key: &str) -> Result<Option<String>>;
}

/// Where the state lives, parsed from `ORCH_STORE`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    Sqlite(std::path::PathBuf),
    Redis(String),
}

impl StoreUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `redis://...`, `rediss://...`,
    /// `redis+unix://...` or `redis+sentinel://...` (`rediss+sentinel://...`).
    /// A Redis URL's own parameters are checked when the store opens.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err(StoreError::InvalidUrl {
                    url: url.to_owned(),
                    reason: "missing file path, e.g. sqlite://./orch-data/orch.db".into(),
                });
            }
            return Ok(StoreUrl::Sqlite(path.into()));
        }
        if ["redis://", "rediss://", "redis+unix://", "redis+sentinel://", "rediss+sentinel://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Ok(StoreUrl::Redis(url.to_owned()));
        }
        Err(StoreError::InvalidUrl {
            url: redact_url(url),
            reason: "allowed forms: sqlite://PATH, redis://HOST:PORT/DB, rediss://HOST:PORT/DB, \
                     redis+sentinel://HOST:PORT,HOST:PORT,.../SERVICE[/DB]"
                .into(),
        })
    }
}

/// Options common to both backends.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Redis key prefix, so several deployments can share one Redis.
    pub redis_prefix: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { redis_prefix: "orch".into() }
    }
}

/// Opens the store a URL names.
pub async fn open(url: &StoreUrl, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    Ok(match url {
        StoreUrl::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path).await?),
        StoreUrl::Redis(url) => Arc::new(redis::RedisStore::open(url, &options.redis_prefix).await?),
    })
}

/// Hides the passwords in a URL (its user info, and query parameters named
/// like `*password`) so it can be logged or shown.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut shown = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &base[..scheme_end], &base[at + 1..])
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.ends_with("password") => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// Milliseconds since the Unix epoch, the time unit both backends store.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(StoreUrl::parse("sqlite://./x/orch.db").unwrap(), StoreUrl::Sqlite("./x/orch.db".into()));
        assert_eq!(StoreUrl::parse("sqlite:/tmp/a.db").unwrap(), StoreUrl::Sqlite("/tmp/a.db".into()));
        assert_eq!(
            StoreUrl::parse("redis://127.0.0.1:6379/2").unwrap(),
            StoreUrl::Redis("redis://127.0.0.1:6379/2".into())
        );
        let err = StoreUrl::parse("postgres://u:secret@h/db").unwrap_err().to_string();
        assert!(err.contains("sqlite://PATH"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(StoreUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("redis://:pw@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact_url("redis://host:6379/0"), "redis://host:6379/0");
        assert_eq!(
            redact_url("redis+sentinel://:pw@a:1,b:2/orch?sentinel_password=spw&ack_replicas=1"),
            "redis+sentinel://***@a:1,b:2/orch?sentinel_password=***&ack_replicas=1"
        );
    }
}
