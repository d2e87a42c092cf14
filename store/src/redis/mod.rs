//! The Redis backend: every state transition is one Lua script, so any number of
//! API and worker processes can share one Redis.
//!
//! Key layout (all under `{prefix}:`):
//! - `job:{id}` HASH: the job's changing fields (times in ms, JSON as text, `''`
//!   for none), `spec` (the fields that never change, as one JSON text), `result`,
//!   `idem` (its idempotency key, for purge), and its event log: `events` (the
//!   count) and `e{seq}` = `"{at}|{kind}|{data}"`. Keeping events in the job's
//!   hash makes each transition one HSET, and a job one key.
//! - `ready` LIST of due queued ids sorted by `(run_at, id)`, and `ready:tail`, the
//!   sort key of its last entry. Claiming pops from the head: O(1) per job however
//!   long the backlog is.
//! - `delayed` ZSET by `run_at`: queued jobs that could not join the end of the
//!   ready list (not yet due, or due but older than its tail). Claim merges its due
//!   head with the ready head, reading at most `limit` from each; there is no
//!   promotion step that could grow with the number of due jobs.
//! - `leases` ZSET by lease expiry (running jobs); `finished:log` LIST of terminal
//!   ids in the order they finished, which purge reads from its head (O(1) per job
//!   where a sorted set cost O(log n) and fell out of the CPU caches as it grew);
//!   `finished`, the ZSET by finish time that came before it, is drained by purge.
//! - `jobs`, `status:{status}`, `kind:{kind}` ZSETs with score 0, read
//!   newest-first with `ZRANGE ... BYLEX REV` (UUIDv7 ids sort by time) and
//!   counted with `ZLEXCOUNT`, both from `(` up: `status:running` and `leases`
//!   hold a `''` sentinel so they are not deleted and rebuilt with every batch.
//! - `idem:{key}` HASH `job, hash, expires_at` expiring at `expires_at`.
//! - `workers` HASH id → record, `workers:seen` ZSET by last seen.
//! - `key:{id}` HASH, `keys` ZSET by creation, `keys:active` HASH secret hash → id.
//! - `servers` HASH name → `{"config", "updated_at"}` (JSON) of the MCP servers
//!   registered through the API; `servers:created` HASH name → creation time.
//! - `session:{id}` HASH `owner, created_at, updated_at` and `session:{id}:messages`
//!   LIST of message JSON, both expiring together (each append slides the TTL);
//!   `sessions` ZSET id by last update, for listing (members whose keys expired
//!   are dropped when met).
//! - `usage` ZSET of chat-turn records (JSON, member) by time, and `usage:jobs`
//!   HASH job id → its record, so a repeat replaces it.
//! - `slots:{name}` ZSET holder → expiry: a limit shared by every process (a
//!   provider's concurrency); expired holders are dropped before counting.
//! - `webhooks` HASH id → the global webhook subscription (JSON).
//! - `provider:{name}` HASH `cooldown_until`, `last_error` (JSON), `last_error_at`,
//!   `auth` (the open authentication incident, JSON) and `auth_since`; `providers`
//!   SET of the names with state.
//! - `job:{id}:outputs` HASH node → output (JSON text): plan node outputs too
//!   large for events, deleted with the job by purge.
//! - `cache:{key}` STRING expiring with its entry: the cache every process
//!   shares (the LLM planner's plans).
//! - `parent:{id}` ZSET (score 0) of the deliveries about job `id`, read like
//!   `jobs`; a delivery's hash names it in `parent`, so purge removes it.
//! - `owner:{key id}` ZSET (score 0) of the jobs a key submitted (deliveries
//!   included), read like `jobs`, so one key's listing never walks everyone's
//!   jobs; the job's hash names it in `owner` (and `spec` holds it), so purge
//!   removes it.
//!
//! Scripts build key names from the prefix rather than declaring them in `KEYS`,
//! so this backend does not support Redis Cluster (ARCHITECTURE.md, "Redis
//! Cluster"). Times are the caller's clock, passed to every script.
//!
//! The primary is one URL or the one Sentinels name, followed across failovers,
//! and writes that create jobs can wait for replicas ([`primary`]).

mod primary;
mod wake;

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Script, Value as Reply};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    ApiKey, AuditEntry, AuditFilter, AuthFailure, Completion, Inserted, Job, JobCounts, JobError, JobEvent, JobFilter,
    JobId, JobKind, JobStatus, NewJob, Notifier, Outcome, ProviderState, ProviderUpdate, RateDecision, Result, Session,
    SessionMessage, Store, StoreError, StoredServer, StoredWebhook, UsageRecord, WorkerInfo, from_millis, redact_url,
    to_millis,
};

/// Takes or renews a slot: ARGV now, holder, limit, expiry (ms).
static SLOT_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
        if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
            redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
            -- The set lives as long as its longest hold, never shorter.
            local want = tonumber(ARGV[4]) - tonumber(ARGV[1])
            if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], want) end
            return 1
        end
        return 0
        ",
    )
});

/// Stores a usage record, replacing the earlier one with its key: KEYS usage,
/// usage:jobs; ARGV record key (job id, `#attempt` after the first), time (ms), record.
static USAGE_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
        local old = redis.call('HGET', KEYS[2], ARGV[1])
        if old then redis.call('ZREM', KEYS[1], old) end
        redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
        return redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
        ",
    )
});

/// Removes up to 1000 usage records older than ARGV[1] (ms): KEYS usage, usage:jobs.
/// Keeps a node output only while its job exists, so a late write after
/// purge leaves nothing behind.
static PUT_OUTPUT_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
        return 1
        ",
    )
});

static USAGE_PURGE_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
        local old = redis.call('ZRANGE', KEYS[1], '-inf', '(' .. ARGV[1], 'BYSCORE', 'LIMIT', 0, 1000)
        for _, record in ipairs(old) do
            redis.call('HDEL', KEYS[2], cjson.decode(record).job_id)
            redis.call('ZREM', KEYS[1], record)
        end
        return #old
        ",
    )
});

/// Merges a provider's state update: KEYS provider:{name}, providers; ARGV name,
/// cooldown (ms or ''), last error ('' none), its time, auth failure (JSON or
/// ''), its time, '1' when a turn succeeded. Returns the hash.
static PROVIDER_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
        if ARGV[2] ~= '' then
            local current = tonumber(redis.call('HGET', KEYS[1], 'cooldown_until') or '0')
            if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], 'cooldown_until', ARGV[2]) end
        end
        if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[3], 'last_error_at', ARGV[4]) end
        if ARGV[5] ~= '' then
            redis.call('HSETNX', KEYS[1], 'auth_since', ARGV[6])
            redis.call('HSET', KEYS[1], 'auth', ARGV[5])
        end
        if ARGV[7] == '1' then redis.call('HDEL', KEYS[1], 'auth', 'auth_since') end
        redis.call('SADD', KEYS[2], ARGV[1])
        return redis.call('HGETALL', KEYS[1])
        ",
    )
});

/// A provider's state from its hash.
fn parse_provider(name: &str, hash: &std::collections::HashMap<String, String>) -> Result<ProviderState> {
    let millis = |field: &str| -> Result<Option<DateTime<Utc>>> {
        hash.get(field)
            .map(|v| v.parse::<i64>().map(from_millis).map_err(|_| corrupt(format!("provider {name}: {field}"))))
            .transpose()
    };
    let auth = match (hash.get("auth"), millis("auth_since")?) {
        (Some(text), Some(since)) => {
            Some(AuthFailure { since, ..serde_json::from_str::<AuthFailure>(text).map_err(corrupt)? })
        }
        _ => None,
    };
    Ok(ProviderState {
        provider: name.to_owned(),
        cooldown_until: millis("cooldown_until")?,
        last_error: hash.get("last_error").map(|t| serde_json::from_str(t).map_err(corrupt)).transpose()?,
        last_error_at: millis("last_error_at")?,
        auth_failure: auth,
    })
}

/// Jobs per `insert_jobs` script call.
const INSERT_CHUNK: usize = 1000;
/// Jobs per `purge` script call, so one call holds Redis only briefly.
const PURGE_CHUNK: usize = 1000;
/// Index entries one `list_jobs` script call scans when filtering.
const LIST_SCAN: usize = 1000;

/// A job's hash fields in the order scripts return them after the id: `FIELDS`
/// in common.lua.
const JOB_FIELDS: [&str; 13] = [
    "spec",
    "status",
    "attempts",
    "progress",
    "error",
    "updated_at",
    "run_at",
    "started_at",
    "finished_at",
    "cancel_requested",
    "worker",
    "lease_expires_at",
    "events",
];
const JOB_WIDTH: usize = JOB_FIELDS.len() + 1;
/// Most events one `HMGET` reads.
const EVENT_PAGE: u64 = 1000;
/// Fields of the first `events` page.
const FIRST_EVENT_PAGE: u64 = 16;

struct Scripts {
    insert: Script,
    insert_many: Script,
    rate: Script,
    claim: Script,
    complete: Script,
    heartbeat: Script,
    progress: Script,
    cancel: Script,
    recover: Script,
    purge: Script,
    list: Script,
    keys: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("common.lua"), "\n", include_str!($file)))
    };
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            insert: script!("insert.lua"),
            insert_many: script!("insert_many.lua"),
            rate: Script::new(include_str!("rate.lua")),
            claim: script!("claim.lua"),
            complete: script!("complete.lua"),
            heartbeat: script!("heartbeat.lua"),
            progress: script!("progress.lua"),
            cancel: script!("cancel.lua"),
            recover: script!("recover.lua"),
            purge: script!("purge.lua"),
            list: script!("list.lua"),
            keys: script!("keys.lua"),
        }
    }
}

pub struct RedisStore {
    primary: std::sync::Arc<primary::Primary>,
    /// When a write that creates jobs counts as done.
    ack: primary::Ack,
    prefix: String,
    scripts: Scripts,
    notifier: Notifier,
    _wake: wake::WakeTask,
    _follow: primary::FollowTask,
}

impl RedisStore {
    /// Job counts from `pipe`, which counts each of [`JobStatus::ALL`] in order.
    async fn counts_by_status(&self, pipe: ::redis::Pipeline) -> Result<JobCounts> {
        let counts: Vec<u64> = pipe.query_async(&mut self.primary.conn()).await.map_err(redis_error)?;
        let mut out = JobCounts::default();
        for (status, n) in JobStatus::ALL.into_iter().zip(counts) {
            out.set(status, n);
        }
        Ok(out)
    }

    /// Connects (reconnecting on its own later) and checks the server answers.
    pub async fn open(url: &str, prefix: &str) -> Result<RedisStore> {
        let (target, ack) = primary::parse(url)?;
        let primary = primary::Primary::connect(&target, ack).await.map_err(|e| {
            // The error text may quote the URL; never show its password.
            let reason = e.to_string().replace(url, &redact_url(url));
            match e.kind() {
                ::redis::ErrorKind::InvalidClientConfig => StoreError::InvalidUrl { url: redact_url(url), reason },
                _ => StoreError::Unavailable(format!("cannot connect to Redis at {}: {reason}", redact_url(url))),
            }
        })?;
        let primary = std::sync::Arc::new(primary);
        let notifier = Notifier::default();
        let wake = wake::start(primary.clone(), prefix, notifier.clone());
        let follow = primary::follow(primary.clone());
        let store = RedisStore {
            primary,
            ack,
            prefix: prefix.to_owned(),
            scripts: Scripts::new(),
            notifier,
            _wake: wake,
            _follow: follow,
        };
        store.ping().await?;
        Ok(store)
    }

    /// Waits until the replicas the store was told to wait for have every
    /// write made so far on the primary (`WAIT`), so an acknowledged job
    /// survives a failover. WAIT blocks the connection it is sent on, so it
    /// goes on a connection of its own: commands of other callers go on.
    async fn replicated(&self, mut conn: ConnectionManager) -> Result<()> {
        if self.ack.replicas == 0 {
            return Ok(());
        }
        let timeout_ms = u64::try_from(self.ack.timeout.as_millis()).unwrap_or(u64::MAX);
        let acked: i64 = ::redis::cmd("WAIT")
            .arg(self.ack.replicas)
            .arg(timeout_ms)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if acked < i64::from(self.ack.replicas) {
            return Err(StoreError::NotReplicated(format!(
                "redis: {acked} of the {} replicas (ack_replicas) confirmed the write within {timeout_ms} ms",
                self.ack.replicas
            )));
        }
        Ok(())
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Runs a script with the prefix and `now` as its first two arguments.
    async fn run<'a>(
        &self,
        script: &'a Script,
        now: i64,
        args: impl FnOnce(&mut ::redis::ScriptInvocation<'a>),
    ) -> Result<Reply> {
        self.run_on(self.primary.conn(), script, now, args).await
    }

    /// [`RedisStore::run`] on connection `conn`.
    async fn run_on<'a>(
        &self,
        mut conn: ConnectionManager,
        script: &'a Script,
        now: i64,
        args: impl FnOnce(&mut ::redis::ScriptInvocation<'a>),
    ) -> Result<Reply> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.prefix).arg(now);
        args(&mut invocation);
        invocation.invoke_async(&mut conn).await.map_err(redis_error)
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T> {
        cmd.query_async(&mut self.primary.conn()).await.map_err(redis_error)
    }
}

fn redis_error(e: ::redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis: {what}"))
}

fn now_millis() -> i64 {
    to_millis(Utc::now())
}

fn rfc3339(ms: i64) -> String {
    from_millis(ms).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).expect("JSON values serialize")
}

fn lease_millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

// --- Reading replies -------------------------------------------------------

fn text(v: &Reply) -> Result<Option<&str>> {
    match v {
        Reply::Nil => Ok(None),
        Reply::BulkString(b) => std::str::from_utf8(b).map(Some).map_err(corrupt),
        Reply::SimpleString(s) => Ok(Some(s)),
        other => Err(corrupt(format!("expected text, got {other:?}"))),
    }
}

fn int(v: &Reply) -> Result<i64> {
    match v {
        Reply::Int(n) => Ok(*n),
        other => text(other)?
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(format!("expected an integer, got {other:?}"))),
    }
}

fn array(v: &Reply) -> Result<&[Reply]> {
    match v {
        Reply::Array(items) => Ok(items),
        Reply::Nil => Ok(&[]),
        other => Err(corrupt(format!("expected an array, got {other:?}"))),
    }
}

fn job_id(s: &str) -> Result<JobId> {
    s.parse().map_err(|_| corrupt(format!("bad job id {s:?}")))
}

/// A stored job field list, as read by `read_job` in common.lua.
struct Fields<'a>(&'a [Reply]);

impl Fields<'_> {
    /// A field, `None` when absent or empty (how scripts clear a field).
    fn opt(&self, i: usize) -> Result<Option<&str>> {
        Ok(text(&self.0[i])?.filter(|s| !s.is_empty()))
    }
    fn req(&self, i: usize) -> Result<&str> {
        self.opt(i)?.ok_or_else(|| corrupt(format!("job field {i} is missing")))
    }
    fn parse<T: std::str::FromStr>(&self, i: usize) -> Result<T> {
        let s = self.req(i)?;
        s.parse().map_err(|_| corrupt(format!("bad job field {i}: {s:?}")))
    }
    fn time(&self, i: usize) -> Result<DateTime<Utc>> {
        self.parse(i).map(from_millis)
    }
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>> {
        self.opt(i)?.map(|s| s.parse().map(from_millis).map_err(|_| corrupt(format!("bad time {s:?}")))).transpose()
    }
    fn json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<Option<T>> {
        self.opt(i)?.map(|s| serde_json::from_str(s).map_err(corrupt)).transpose()
    }
}

/// What never changes about a job, stored as one field (`spec`).
#[derive(Serialize, Deserialize)]
struct Spec<V = Value> {
    kind: JobKind,
    max_attempts: u32,
    created_at: i64,
    input: V,
    metadata: V,
    /// Absent for jobs stored before owners were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

fn spec_text(job: &NewJob) -> String {
    let spec = Spec {
        kind: job.kind,
        max_attempts: job.max_attempts,
        created_at: to_millis(job.created_at),
        input: &job.input,
        metadata: &job.metadata,
        owner: job.owner.clone(),
    };
    serde_json::to_string(&spec).expect("job specs serialize")
}

fn parse_job(v: &Reply) -> Result<Job> {
    let items = array(v)?;
    if items.len() != JOB_WIDTH {
        return Err(corrupt(format!("a job has {} fields, expected {JOB_WIDTH}", items.len())));
    }
    let f = Fields(items);
    let spec: Spec = f.json(1)?.ok_or_else(|| corrupt("job without spec"))?;
    let status: JobStatus = f.parse(2)?;
    let running = status == JobStatus::Running;
    Ok(Job {
        id: job_id(f.req(0)?)?,
        kind: spec.kind,
        status,
        input: spec.input,
        metadata: spec.metadata,
        attempts: f.parse(3)?,
        max_attempts: spec.max_attempts,
        progress: f.json(4)?,
        error: f.json(5)?,
        created_at: from_millis(spec.created_at),
        updated_at: f.time(6)?,
        run_at: f.time(7)?,
        started_at: f.opt_time(8)?,
        finished_at: f.opt_time(9)?,
        cancel_requested: f.opt(10)? == Some("1"),
        // Stale once the job stopped running (scripts do not clear them).
        worker: if running { f.opt(11)?.map(str::to_owned) } else { None },
        lease_expires_at: if running { f.opt_time(12)? } else { None },
        owner: spec.owner,
    })
}

/// A job as claim.lua returns it: id, spec, attempts, progress, error, run_at,
/// cancel_requested; the rest is what the claim set.
fn parse_claimed(row: &[Reply], worker: &str, now: i64, lease_until: i64) -> Result<Job> {
    let f = Fields(row);
    let spec: Spec = f.json(1)?.ok_or_else(|| corrupt("job without spec"))?;
    Ok(Job {
        id: job_id(f.req(0)?)?,
        kind: spec.kind,
        status: JobStatus::Running,
        input: spec.input,
        metadata: spec.metadata,
        attempts: f.parse(2)?,
        max_attempts: spec.max_attempts,
        progress: f.json(3)?,
        error: f.json(4)?,
        created_at: from_millis(spec.created_at),
        updated_at: from_millis(now),
        run_at: f.time(5)?,
        started_at: Some(from_millis(now)),
        finished_at: None,
        cancel_requested: f.opt(6)? == Some("1"),
        worker: Some(worker.to_owned()),
        lease_expires_at: Some(from_millis(lease_until)),
        owner: spec.owner,
    })
}

fn parse_jobs(v: &Reply) -> Result<Vec<Job>> {
    array(v)?.iter().map(parse_job).collect()
}

fn parse_event(job_id: JobId, seq: u64, entry: &str) -> Result<JobEvent> {
    let mut parts = entry.splitn(3, '|');
    let (Some(at), Some(kind), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(corrupt(format!("bad event entry of job {job_id}")));
    };
    Ok(JobEvent {
        seq,
        job_id,
        kind: kind.to_owned(),
        data: serde_json::from_str(data).map_err(corrupt)?,
        at: from_millis(at.parse().map_err(|_| corrupt(format!("bad event time {at:?}")))?),
    })
}

/// The worker record as stored: times in ms like everything else.
#[derive(Serialize, Deserialize)]
struct StoredWorker {
    id: String,
    hostname: String,
    pid: u32,
    started_at: i64,
    last_seen: i64,
    concurrency: u32,
    running: u32,
}

fn parse_key(v: &Reply) -> Result<ApiKey> {
    let items = array(v)?;
    let [
        id,
        name,
        prefix,
        scopes,
        created_at,
        revoked_at,
        servers,
        expires_at,
        tools,
        providers,
        last_used_at,
        rotated_until,
        rate_limit_per_minute,
        jobs_per_day,
    ] = items
    else {
        return Err(corrupt("an API key record has the wrong shape"));
    };
    let opt = |r: &Reply| -> Result<Option<String>> { Ok(text(r)?.filter(|s| !s.is_empty()).map(str::to_owned)) };
    let time = |s: String| s.parse().map(from_millis).map_err(|_| corrupt(format!("bad key time {s:?}")));
    let count = |s: String| s.parse::<u32>().map_err(|_| corrupt(format!("bad key limit {s:?}")));
    Ok(ApiKey {
        id: opt(id)?.ok_or_else(|| corrupt("API key without id"))?,
        name: opt(name)?.unwrap_or_default(),
        prefix: opt(prefix)?.unwrap_or_default(),
        scopes: serde_json::from_str(&opt(scopes)?.unwrap_or_else(|| "[]".into())).map_err(corrupt)?,
        created_at: time(opt(created_at)?.ok_or_else(|| corrupt("API key without created_at"))?)?,
        revoked_at: opt(revoked_at)?.map(time).transpose()?,
        servers: opt(servers)?.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
        expires_at: opt(expires_at)?.map(time).transpose()?,
        tools: opt(tools)?.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
        providers: opt(providers)?.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
        last_used_at: opt(last_used_at)?.map(time).transpose()?,
        rotated_until: opt(rotated_until)?.map(time).transpose()?,
        rate_limit_per_minute: opt(rate_limit_per_minute)?.map(count).transpose()?,
        jobs_per_day: opt(jobs_per_day)?.map(count).transpose()?,
    })
}

/// The value of a server in the `servers` hash.
#[derive(Serialize, Deserialize)]
struct ServerRecord {
    config: Value,
    updated_at: i64,
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.query(&::redis::cmd("PING")).await?;
        Ok(())
    }

    async fn insert_job_within(&self, job: NewJob, jobs_per_day: u32) -> Result<Inserted> {
        let now = now_millis();
        let (day, resets_at) = crate::quota_day(from_millis(now));
        let spec = spec_text(&job);
        let conn = self.primary.acked();
        let reply = self
            .run_on(conn.clone(), &self.scripts.insert, now, |s| {
                s.arg(job.id.to_string())
                    .arg(job.kind.as_str())
                    .arg(&spec)
                    .arg(job.max_attempts)
                    .arg(to_millis(job.created_at))
                    .arg(to_millis(job.run_at));
                match &job.idempotency {
                    Some(rec) => s.arg(&rec.key).arg(&rec.body_hash).arg(to_millis(rec.expires_at)),
                    None => s.arg("").arg("").arg(0),
                };
                s.arg(job.parent().map(|p| p.to_string()).unwrap_or_default());
                s.arg(job.owner.as_deref().unwrap_or_default());
                // A day's count is kept a day past its end (a clock may lag).
                s.arg(jobs_per_day).arg(day).arg(to_millis(resets_at) + 86_400_000);
            })
            .await?;
        let items = array(&reply)?;
        match items.first().map(text).transpose()?.flatten() {
            Some("created") => {}
            Some("existing") => return Ok(Inserted::Existing(parse_job(items.get(1).unwrap_or(&Reply::Nil))?)),
            Some("over_quota") => return Ok(Inserted::OverQuota { limit: jobs_per_day, resets_at }),
            Some("conflict") => {
                let id = items.get(1).map(text).transpose()?.flatten().ok_or_else(|| corrupt("conflict without id"))?;
                return Ok(Inserted::Conflict { job_id: job_id(id)? });
            }
            other => return Err(corrupt(format!("unexpected insert reply {other:?}"))),
        }
        self.replicated(conn).await?;
        self.notifier.jobs_ready();
        let created_at = from_millis(to_millis(job.created_at));
        Ok(Inserted::Created(Job {
            id: job.id,
            kind: job.kind,
            status: JobStatus::Queued,
            input: job.input,
            metadata: job.metadata,
            attempts: 0,
            max_attempts: job.max_attempts,
            progress: None,
            error: None,
            created_at,
            updated_at: created_at,
            run_at: from_millis(to_millis(job.run_at)),
            started_at: None,
            finished_at: None,
            cancel_requested: false,
            worker: None,
            lease_expires_at: None,
            owner: job.owner,
        }))
    }

    async fn take_request(&self, bucket: &str, per_minute: u32) -> Result<RateDecision> {
        let reply = self
            .run(&self.scripts.rate, now_millis(), |s| {
                s.arg(bucket).arg(per_minute);
            })
            .await?;
        let items = array(&reply)?;
        let [allowed, remaining, retry_ms] = items else {
            return Err(corrupt("a rate limit reply has the wrong shape"));
        };
        Ok(RateDecision {
            allowed: int(allowed)? == 1,
            remaining: u32::try_from(int(remaining)?).unwrap_or(0),
            retry_after: Duration::from_millis(u64::try_from(int(retry_ms)?).unwrap_or(0)),
        })
    }

    async fn insert_jobs(&self, jobs: Vec<NewJob>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let conn = self.primary.acked();
        for chunk in jobs.chunks(INSERT_CHUNK) {
            self.run_on(conn.clone(), &self.scripts.insert_many, now_millis(), |s| {
                for job in chunk {
                    s.arg(job.id.to_string())
                        .arg(job.kind.as_str())
                        .arg(spec_text(job))
                        .arg(job.max_attempts)
                        .arg(to_millis(job.created_at))
                        .arg(to_millis(job.run_at))
                        .arg(job.parent().map(|p| p.to_string()).unwrap_or_default())
                        .arg(job.owner.as_deref().unwrap_or_default());
                }
            })
            .await?;
        }
        self.replicated(conn).await?;
        self.notifier.jobs_ready();
        Ok(())
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(self.key(&format!("job:{id}")));
        cmd.arg(&JOB_FIELDS);
        let mut fields: Vec<Reply> = self.query(&cmd).await?;
        if matches!(fields.get(1), None | Some(Reply::Nil)) {
            return Ok(None);
        }
        fields.insert(0, Reply::BulkString(id.to_string().into_bytes()));
        parse_job(&Reply::Array(fields)).map(Some)
    }

    async fn get_result(&self, id: JobId) -> Result<Option<Value>> {
        let (status, result): (Option<String>, Option<String>) =
            self.query(::redis::cmd("HMGET").arg(self.key(&format!("job:{id}"))).arg("status").arg("result")).await?;
        match (status.as_deref(), result) {
            (Some("succeeded"), Some(result)) if !result.is_empty() => {
                serde_json::from_str(&result).map(Some).map_err(corrupt)
            }
            _ => Ok(None),
        }
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        // Deliveries only when asked for by kind.
        let kind_check = match filter.kind {
            Some(kind) => ("kind", kind.to_string()),
            None => ("kind", format!("!{}", JobKind::Delivery)),
        };
        let status_check = filter.status.map(|s| ("status", s.to_string()));
        let (index, checks): (String, Vec<(&str, String)>) = if let Some(owner) = &filter.owner {
            // One key's jobs: walk its own index, checking the rest on each job.
            (format!("owner:{owner}"), status_check.into_iter().chain([kind_check]).collect())
        } else {
            let status_index = filter.status.map(|s| format!("status:{s}"));
            let kind_index = filter.kind.map(|k| format!("kind:{k}"));
            // Walk the smaller index and check the other field on each job.
            match (&status_index, &kind_index) {
                (None, None) => ("jobs".to_owned(), vec![kind_check]),
                (Some(s), None) => (s.clone(), vec![kind_check]),
                (None, Some(k)) => (k.clone(), vec![]),
                (Some(s), Some(k)) => {
                    let (ns, nk): (u64, u64) = ::redis::pipe()
                        .zlexcount(self.key(s), "(", "+")
                        .zlexcount(self.key(k), "(", "+")
                        .query_async(&mut self.primary.conn())
                        .await
                        .map_err(redis_error)?;
                    if ns <= nk {
                        (s.clone(), vec![kind_check])
                    } else {
                        (k.clone(), status_check.into_iter().collect())
                    }
                }
            }
        };
        let scan = if checks.is_empty() { filter.limit } else { LIST_SCAN.max(filter.limit) };
        let mut before = filter.before.map(|id| id.to_string()).unwrap_or_default();
        let mut jobs = Vec::new();
        loop {
            let want = filter.limit - jobs.len();
            let reply = self
                .run(&self.scripts.list, now_millis(), |s| {
                    s.arg(&index).arg(&before).arg(scan).arg(want);
                    for (field, value) in &checks {
                        s.arg(*field).arg(value);
                    }
                })
                .await?;
            let [last, exhausted, page] = array(&reply)? else {
                return Err(corrupt("unexpected list reply"));
            };
            jobs.extend(parse_jobs(page)?);
            if jobs.len() >= filter.limit || int(exhausted)? == 1 {
                break;
            }
            match text(last)? {
                Some(last) if !last.is_empty() => before = last.to_owned(),
                _ => break,
            }
        }
        jobs.truncate(filter.limit);
        Ok(jobs)
    }

    async fn count_jobs(&self) -> Result<JobCounts> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for status in JobStatus::ALL {
            // Not ZCARD: a busy index keeps a '' sentinel (see claim.lua).
            pipe.zlexcount(self.key(&format!("status:{status}")), "(", "+");
        }
        self.counts_by_status(pipe).await
    }

    async fn count_jobs_of_kind(&self, kind: JobKind) -> Result<JobCounts> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for status in JobStatus::ALL {
            // Costs the size of the smaller set: the kind index holds no sentinel.
            pipe.cmd("ZINTERCARD")
                .arg(2)
                .arg(self.key(&format!("kind:{kind}")))
                .arg(self.key(&format!("status:{status}")));
        }
        self.counts_by_status(pipe).await
    }

    async fn job_deliveries(&self, parent: JobId, before: Option<JobId>, limit: usize) -> Result<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = format!("parent:{parent}");
        let before = before.map(|id| id.to_string()).unwrap_or_default();
        let reply = self
            .run(&self.scripts.list, now_millis(), |s| {
                s.arg(&index).arg(&before).arg(limit).arg(limit);
            })
            .await?;
        let [_, _, page] = array(&reply)? else {
            return Err(corrupt("unexpected list reply"));
        };
        parse_jobs(page)
    }

    async fn cancel_job(&self, id: JobId) -> Result<Option<Job>> {
        let reply = self
            .run(&self.scripts.cancel, now_millis(), |s| {
                s.arg(id.to_string());
            })
            .await?;
        let [evented, job] = array(&reply)? else {
            return Ok(None);
        };
        let job = parse_job(job)?;
        if int(evented)? == 1 {
            self.notifier.job_changed(id);
        }
        // Other processes hear it over pub/sub (cancel.lua); this one at once.
        if let (JobStatus::Running, Some(worker)) = (job.status, &job.worker) {
            self.notifier.cancel_requested(worker, id);
        }
        Ok(Some(job))
    }

    async fn claim(&self, worker: &str, limit: usize, lease: Duration) -> Result<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_millis();
        let lease_until = now.saturating_add(lease_millis(lease));
        let reply = self
            .run(&self.scripts.claim, now, |s| {
                s.arg(worker).arg(limit).arg(lease_until);
            })
            .await?;
        let rows = array(&reply)?;
        if rows.len() % 7 != 0 {
            return Err(corrupt(format!("claim returned {} values, not rows of 7", rows.len())));
        }
        let jobs =
            rows.chunks(7).map(|row| parse_claimed(row, worker, now, lease_until)).collect::<Result<Vec<_>>>()?;
        for job in &jobs {
            self.notifier.job_changed(job.id);
        }
        Ok(jobs)
    }

    async fn heartbeat(&self, worker: &WorkerInfo, jobs: &[JobId], lease: Duration) -> Result<Vec<JobId>> {
        let now = now_millis();
        let record = serde_json::to_string(&StoredWorker {
            id: worker.id.clone(),
            hostname: worker.hostname.clone(),
            pid: worker.pid,
            started_at: to_millis(worker.started_at),
            last_seen: to_millis(worker.last_seen),
            concurrency: worker.concurrency,
            running: worker.running,
        })
        .expect("worker records serialize");
        let reply = self
            .run(&self.scripts.heartbeat, now, |s| {
                s.arg(&worker.id)
                    .arg(&record)
                    .arg(to_millis(worker.last_seen))
                    .arg(now.saturating_add(lease_millis(lease)));
                for id in jobs {
                    s.arg(id.to_string());
                }
            })
            .await?;
        array(&reply)?.iter().map(|v| job_id(text(v)?.unwrap_or_default())).collect()
    }

    async fn complete(&self, worker: &str, completions: Vec<Completion>) -> Result<Vec<bool>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self
            .run(&self.scripts.complete, now_millis(), |s| {
                s.arg(worker);
                for c in &completions {
                    s.arg(c.job_id.to_string());
                    match &c.outcome {
                        Outcome::Succeeded { result } => s.arg("s").arg(json_text(result)).arg(0).arg(""),
                        Outcome::Failed { error, retry_at: Some(at) } => {
                            let at = to_millis(*at);
                            s.arg("r").arg(error_text(error)).arg(at).arg(rfc3339(at))
                        }
                        Outcome::Failed { error, retry_at: None } => s.arg("f").arg(error_text(error)).arg(0).arg(""),
                        Outcome::Cancelled => s.arg("c").arg("").arg(0).arg(""),
                    };
                }
            })
            .await?;
        let applied = array(&reply)?.iter().map(|v| int(v).map(|n| n == 1)).collect::<Result<Vec<_>>>()?;
        for (c, _) in completions.iter().zip(&applied).filter(|(_, applied)| **applied) {
            self.notifier.job_changed(c.job_id);
        }
        Ok(applied)
    }

    async fn record_progress(&self, worker: &str, id: JobId, progress: Value) -> Result<()> {
        let reply = self
            .run(&self.scripts.progress, now_millis(), |s| {
                s.arg(worker).arg(id.to_string()).arg(json_text(&progress));
            })
            .await?;
        if int(&reply)? == 1 {
            self.notifier.job_changed(id);
        }
        Ok(())
    }

    async fn recover_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let now = to_millis(now);
        let reply = self
            .run(&self.scripts.recover, now, |s| {
                s.arg(limit).arg(rfc3339(now)).arg(now_millis());
            })
            .await?;
        let moved = u64::try_from(int(&reply)?).unwrap_or(0);
        if moved > 0 {
            self.notifier.jobs_ready();
            self.notifier.all_changed();
        }
        Ok(moved)
    }

    async fn events(&self, id: JobId, after: u64, limit: usize) -> Result<Vec<JobEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Events are fields e1, e2, ... of the job's hash: read pages until a
        // gap. Most jobs have a handful, so the first page is small and each
        // next one twice as large, up to EVENT_PAGE.
        let key = self.key(&format!("job:{id}"));
        let mut events = Vec::new();
        let mut next = after + 1;
        let end = after.saturating_add(u64::try_from(limit).unwrap_or(u64::MAX));
        let mut page = FIRST_EVENT_PAGE;
        while next <= end {
            let last = end.min(next.saturating_add(page - 1));
            page = (page * 2).min(EVENT_PAGE);
            let mut cmd = ::redis::cmd("HMGET");
            cmd.arg(&key);
            for seq in next..=last {
                cmd.arg(format!("e{seq}"));
            }
            let entries: Vec<Option<String>> = self.query(&cmd).await?;
            for (entry, seq) in entries.iter().zip(next..) {
                let Some(entry) = entry else { return Ok(events) };
                events.push(parse_event(id, seq, entry)?);
            }
            match last.checked_add(1) {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(events)
    }

    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerInfo>> {
        let ids: Vec<String> = self
            .query(::redis::cmd("ZRANGEBYSCORE").arg(self.key("workers:seen")).arg(to_millis(since)).arg("+inf"))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<Option<String>> = self.query(::redis::cmd("HMGET").arg(self.key("workers")).arg(&ids)).await?;
        records
            .into_iter()
            .flatten()
            .map(|r| {
                let w: StoredWorker = serde_json::from_str(&r).map_err(corrupt)?;
                Ok(WorkerInfo {
                    id: w.id,
                    hostname: w.hostname,
                    pid: w.pid,
                    started_at: from_millis(w.started_at),
                    last_seen: from_millis(w.last_seen),
                    concurrency: w.concurrency,
                    running: w.running,
                })
            })
            .collect()
    }

    async fn purge(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let before = to_millis(before);
        let mut purged = 0u64;
        let mut left = limit;
        while left > 0 {
            let chunk = left.min(PURGE_CHUNK);
            let reply = self
                .run(&self.scripts.purge, now_millis(), |s| {
                    s.arg(before).arg(chunk);
                })
                .await?;
            let n = usize::try_from(int(&reply)?).unwrap_or(0);
            purged += n as u64;
            left -= n.min(left);
            if n < chunk {
                break;
            }
        }
        // Usage records past the retention go too, a thousand per call.
        loop {
            let removed: i64 = USAGE_PURGE_SCRIPT
                .key(self.key("usage"))
                .key(self.key("usage:jobs"))
                .arg(before)
                .invoke_async(&mut self.primary.conn())
                .await
                .map_err(redis_error)?;
            if removed < 1000 {
                break;
            }
        }
        Ok(purged)
    }

    async fn create_key(&self, key: &ApiKey, secret_hash: &str) -> Result<()> {
        self.store_key("create", key, secret_hash).await.map(drop)
    }

    async fn create_first_key(&self, key: &ApiKey, secret_hash: &str) -> Result<bool> {
        self.store_key("create_first", key, secret_hash).await
    }

    async fn key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let reply = self
            .run(&self.scripts.keys, now_millis(), |s| {
                s.arg("by_hash").arg(secret_hash);
            })
            .await?;
        match reply {
            Reply::Nil => Ok(None),
            reply => parse_key(&reply).map(Some),
        }
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        let reply = self
            .run(&self.scripts.keys, now_millis(), |s| {
                s.arg("list");
            })
            .await?;
        array(&reply)?.iter().map(parse_key).collect()
    }

    async fn revoke_key(&self, id: &str) -> Result<bool> {
        let reply = self
            .run(&self.scripts.keys, now_millis(), |s| {
                s.arg("revoke").arg(id);
            })
            .await?;
        Ok(int(&reply)? == 1)
    }

    async fn key_by_previous_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let reply = self
            .run(&self.scripts.keys, now_millis(), |s| {
                s.arg("by_previous").arg(secret_hash);
            })
            .await?;
        match reply {
            Reply::Nil => Ok(None),
            reply => parse_key(&reply).map(Some),
        }
    }

    async fn rotate_key(&self, id: &str, prefix: &str, secret_hash: &str, until: DateTime<Utc>) -> Result<bool> {
        let reply = self
            .run(&self.scripts.keys, now_millis(), |s| {
                s.arg("rotate").arg(id).arg(prefix).arg(secret_hash).arg(to_millis(until));
            })
            .await?;
        Ok(int(&reply)? == 1)
    }

    async fn update_key(&self, key: &ApiKey) -> Result<bool> {
        let reply = self
            .run(&self.scripts.keys, now_millis(), |s| {
                s.arg("update")
                    .arg(&key.id)
                    .arg(key.expires_at.map(|t| to_millis(t).to_string()).unwrap_or_default())
                    .arg(json_list(&key.servers))
                    .arg(json_list(&key.tools))
                    .arg(json_list(&key.providers))
                    .arg(optional_count(key.rate_limit_per_minute))
                    .arg(optional_count(key.jobs_per_day));
            })
            .await?;
        Ok(int(&reply)? == 1)
    }

    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        self.run(&self.scripts.keys, now_millis(), |s| {
            s.arg("touch").arg(id).arg(to_millis(at));
        })
        .await
        .map(drop)
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let last: u64 = self.query(::redis::cmd("INCRBY").arg(self.key("audit:seq")).arg(entries.len())).await?;
        let first = last + 1 - entries.len() as u64;
        let mut cmd = ::redis::cmd("ZADD");
        cmd.arg(self.key("audit"));
        for (i, entry) in entries.iter().enumerate() {
            let id = first + i as u64;
            let text = serde_json::to_string(&AuditEntry { id, ..entry.clone() }).expect("audit records serialize");
            cmd.arg(id).arg(text);
        }
        self.query::<i64>(&cmd).await.map(drop)
    }

    async fn list_audit(&self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        let mut max = filter.before.map_or_else(|| "+inf".to_owned(), |b| format!("({b}"));
        while out.len() < limit {
            let chunk: Vec<String> = self
                .query(
                    ::redis::cmd("ZRANGE")
                        .arg(self.key("audit"))
                        .arg(&max)
                        .arg("-inf")
                        .arg("BYSCORE")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(AUDIT_CHUNK),
                )
                .await?;
            let Some(last) = chunk.last() else { break };
            let last: AuditEntry = serde_json::from_str(last).map_err(corrupt)?;
            max = format!("({}", last.id);
            for text in &chunk {
                let entry: AuditEntry = serde_json::from_str(text).map_err(corrupt)?;
                if filter.since.is_some_and(|t| entry.at < t) {
                    return Ok(out);
                }
                if filter.matches(&entry) && out.len() < limit {
                    out.push(entry);
                }
            }
            if chunk.len() < AUDIT_CHUNK as usize {
                break;
            }
        }
        Ok(out)
    }

    async fn purge_audit(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut purged = 0u64;
        loop {
            let chunk: Vec<(String, f64)> = self
                .query(::redis::cmd("ZRANGE").arg(self.key("audit")).arg(0).arg(AUDIT_CHUNK - 1).arg("WITHSCORES"))
                .await?;
            let mut upto = None;
            for (text, score) in &chunk {
                let entry: AuditEntry = serde_json::from_str(text).map_err(corrupt)?;
                if entry.at >= before {
                    break;
                }
                upto = Some(*score);
            }
            let Some(upto) = upto else { break };
            let n: u64 =
                self.query(::redis::cmd("ZREMRANGEBYSCORE").arg(self.key("audit")).arg("-inf").arg(upto)).await?;
            purged += n;
            if chunk.len() < AUDIT_CHUNK as usize {
                break;
            }
        }
        Ok(purged)
    }

    async fn list_servers(&self) -> Result<Vec<StoredServer>> {
        let (records, created): (Vec<(String, String)>, std::collections::HashMap<String, i64>) = {
            let mut conn = self.primary.conn();
            ::redis::pipe()
                .atomic()
                .hgetall(self.key("servers"))
                .hgetall(self.key("servers:created"))
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?
        };
        let mut servers = records
            .into_iter()
            .map(|(name, text)| {
                let record: ServerRecord = serde_json::from_str(&text).map_err(corrupt)?;
                let created_at = created.get(&name).copied().unwrap_or(record.updated_at);
                Ok(StoredServer {
                    name,
                    config: record.config,
                    created_at: from_millis(created_at),
                    updated_at: from_millis(record.updated_at),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(servers)
    }

    async fn put_server(&self, server: &StoredServer) -> Result<bool> {
        let record = ServerRecord { config: server.config.clone(), updated_at: to_millis(server.updated_at) };
        let record = serde_json::to_string(&record).expect("server records serialize");
        let mut conn = self.primary.conn();
        let (created, _): (i64, i64) = ::redis::pipe()
            .atomic()
            .hset_nx(self.key("servers:created"), &server.name, to_millis(server.created_at))
            .hset(self.key("servers"), &server.name, record)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(created == 1)
    }

    async fn delete_server(&self, name: &str) -> Result<bool> {
        let mut conn = self.primary.conn();
        let (deleted, _): (i64, i64) = ::redis::pipe()
            .atomic()
            .hdel(self.key("servers"), name)
            .hdel(self.key("servers:created"), name)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(deleted == 1)
    }

    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = self
            .query(
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key("leases"))
                    .arg("-inf")
                    .arg(format!("({}", to_millis(now)))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        let mut jobs = Vec::with_capacity(ids.len());
        // The '' sentinel of the index is no job.
        for id in ids.iter().filter(|id| !id.is_empty()) {
            if let Some(job) = self.get_job(job_id(id)?).await?
                && job.status == JobStatus::Running
            {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    async fn list_webhooks(&self) -> Result<Vec<StoredWebhook>> {
        let records: std::collections::HashMap<String, String> =
            self.query(::redis::cmd("HGETALL").arg(self.key("webhooks"))).await?;
        let mut hooks = records
            .into_values()
            .map(|r| serde_json::from_str::<StoredWebhook>(&r).map_err(corrupt))
            .collect::<Result<Vec<_>>>()?;
        hooks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(hooks)
    }

    async fn put_webhook(&self, webhook: &StoredWebhook) -> Result<bool> {
        let key = self.key("webhooks");
        let existing: Option<String> = self.query(::redis::cmd("HGET").arg(&key).arg(&webhook.id)).await?;
        let mut record = webhook.clone();
        if let Some(old) = existing {
            let old: StoredWebhook = serde_json::from_str(&old).map_err(corrupt)?;
            record.created_at = old.created_at;
        }
        let text = serde_json::to_string(&record).expect("webhook records serialize");
        let new: i64 = self.query(::redis::cmd("HSET").arg(&key).arg(&webhook.id).arg(text)).await?;
        Ok(new == 1)
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let deleted: i64 = self.query(::redis::cmd("HDEL").arg(self.key("webhooks")).arg(id)).await?;
        Ok(deleted == 1)
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>> {
        self.load_session(id).await
    }

    async fn append_session(
        &self,
        id: &str,
        owner: &str,
        messages: Vec<SessionMessage>,
        ttl: Duration,
    ) -> Result<Session> {
        let meta_key = self.key(&format!("session:{id}"));
        let list_key = format!("{meta_key}:messages");
        let now = now_millis();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2).max(1);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .hset_nx(&meta_key, "owner", owner)
            .ignore()
            .hset_nx(&meta_key, "created_at", now)
            .ignore()
            .hset(&meta_key, "updated_at", now)
            .ignore();
        for message in &messages {
            pipe.rpush(&list_key, serde_json::to_string(message).expect("messages serialize")).ignore();
        }
        pipe.pexpire(&meta_key, ttl_ms)
            .ignore()
            .pexpire(&list_key, ttl_ms)
            .ignore()
            .zadd(self.key("sessions"), id, now)
            .ignore();
        let mut conn = self.primary.conn();
        let () = pipe.query_async(&mut conn).await.map_err(redis_error)?;
        self.load_session(id).await?.ok_or_else(|| corrupt(format!("session {id} vanished while written")))
    }

    async fn list_sessions(&self, owner: Option<&str>, offset: usize, limit: usize) -> Result<Vec<Session>> {
        let mut sessions = Vec::new();
        let mut skipped = 0;
        let mut start = 0isize;
        const PAGE: isize = 200;
        while sessions.len() < limit {
            let mut conn = self.primary.conn();
            let ids: Vec<String> = ::redis::cmd("ZRANGE")
                .arg(self.key("sessions"))
                .arg(start)
                .arg(start + PAGE - 1)
                .arg("REV")
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if ids.is_empty() {
                break;
            }
            start += PAGE;
            for id in ids {
                match self.load_session(&id).await? {
                    None => {
                        let _: i64 = ::redis::cmd("ZREM")
                            .arg(self.key("sessions"))
                            .arg(&id)
                            .query_async(&mut conn)
                            .await
                            .map_err(redis_error)?;
                        start -= 1;
                    }
                    Some(s) if owner.is_none_or(|o| o == s.owner) => {
                        if skipped < offset {
                            skipped += 1;
                        } else if sessions.len() < limit {
                            sessions.push(s);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(sessions)
    }

    async fn try_acquire_slot(&self, name: &str, holder: &str, limit: u32, hold: Duration) -> Result<bool> {
        let now = now_millis();
        let hold = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX / 2);
        let mut invocation = SLOT_SCRIPT.key(self.key(&format!("slots:{name}")));
        invocation.arg(now).arg(holder).arg(limit).arg(now.saturating_add(hold));
        let taken: i64 = invocation.invoke_async(&mut self.primary.conn()).await.map_err(redis_error)?;
        Ok(taken == 1)
    }

    async fn record_usage(&self, record: &UsageRecord) -> Result<()> {
        let text = serde_json::to_string(record).expect("usage records serialize");
        let _: i64 = USAGE_SCRIPT
            .key(self.key("usage"))
            .key(self.key("usage:jobs"))
            .arg(record.key())
            .arg(to_millis(record.at))
            .arg(text)
            .invoke_async(&mut self.primary.conn())
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn usage(&self, from: DateTime<Utc>, to: DateTime<Utc>, limit: usize) -> Result<Vec<UsageRecord>> {
        let texts: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(self.key("usage"))
            .arg(to_millis(from))
            .arg(format!("({}", to_millis(to)))
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.primary.conn())
            .await
            .map_err(redis_error)?;
        texts.iter().map(|t| serde_json::from_str(t).map_err(corrupt)).collect()
    }

    async fn update_provider_state(&self, provider: &str, update: ProviderUpdate) -> Result<ProviderState> {
        let (error, error_at) = match &update.last_error {
            Some((error, at)) => (error.to_string(), to_millis(*at).to_string()),
            None => (String::new(), String::new()),
        };
        let (auth, auth_at) = match &update.auth_failure {
            Some(failure) => {
                (serde_json::to_string(failure).expect("auth failures serialize"), to_millis(failure.at).to_string())
            }
            None => (String::new(), String::new()),
        };
        let hash: std::collections::HashMap<String, String> = PROVIDER_SCRIPT
            .key(self.key(&format!("provider:{provider}")))
            .key(self.key("providers"))
            .arg(provider)
            .arg(update.cooldown_until.map(|t| to_millis(t).to_string()).unwrap_or_default())
            .arg(error)
            .arg(error_at)
            .arg(auth)
            .arg(auth_at)
            .arg(if update.auth_ok { "1" } else { "0" })
            .invoke_async(&mut self.primary.conn())
            .await
            .map_err(redis_error)?;
        parse_provider(provider, &hash)
    }

    async fn provider_state(&self, provider: &str) -> Result<ProviderState> {
        let hash: std::collections::HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(self.key(&format!("provider:{provider}")))
            .query_async(&mut self.primary.conn())
            .await
            .map_err(redis_error)?;
        parse_provider(provider, &hash)
    }

    async fn provider_states(&self) -> Result<Vec<ProviderState>> {
        let mut conn = self.primary.conn();
        let mut names: Vec<String> =
            ::redis::cmd("SMEMBERS").arg(self.key("providers")).query_async(&mut conn).await.map_err(redis_error)?;
        names.sort();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for name in &names {
            pipe.hgetall(self.key(&format!("provider:{name}")));
        }
        let hashes: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(redis_error)?;
        names.iter().zip(&hashes).map(|(name, hash)| parse_provider(name, hash)).collect()
    }

    async fn release_slot(&self, name: &str, holder: &str) -> Result<()> {
        let _: i64 = ::redis::cmd("ZREM")
            .arg(self.key(&format!("slots:{name}")))
            .arg(holder)
            .query_async(&mut self.primary.conn())
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn delete_session(&self, id: &str) -> Result<bool> {
        let meta_key = self.key(&format!("session:{id}"));
        let mut conn = self.primary.conn();
        let (deleted, _, _): (i64, i64, i64) = ::redis::pipe()
            .atomic()
            .del(&meta_key)
            .del(format!("{meta_key}:messages"))
            .zrem(self.key("sessions"), id)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(deleted == 1)
    }

    async fn put_output(&self, id: JobId, node: &str, output: &str) -> Result<bool> {
        let stored: i64 = PUT_OUTPUT_SCRIPT
            .key(self.key(&format!("job:{id}")))
            .key(self.key(&format!("job:{id}:outputs")))
            .arg(node)
            .arg(output)
            .invoke_async(&mut self.primary.conn())
            .await
            .map_err(redis_error)?;
        Ok(stored == 1)
    }

    async fn get_output(&self, id: JobId, node: &str) -> Result<Option<String>> {
        self.query(::redis::cmd("HGET").arg(self.key(&format!("job:{id}:outputs"))).arg(node)).await
    }

    async fn cache_put(&self, key: &str, value: &str, ttl: Duration) -> Result<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.query(::redis::cmd("SET").arg(self.key(&format!("cache:{key}"))).arg(value).arg("PX").arg(ms)).await
    }

    async fn cache_get(&self, key: &str) -> Result<Option<String>> {
        self.query(::redis::cmd("GET").arg(self.key(&format!("cache:{key}")))).await
    }
}

impl RedisStore {
    /// A session by id, or None when its keys expired; `now` for `expires_at`.
    async fn load_session(&self, id: &str) -> Result<Option<Session>> {
        let meta_key = self.key(&format!("session:{id}"));
        let mut conn = self.primary.conn();
        let (meta, messages, ttl): (std::collections::HashMap<String, String>, Vec<String>, i64) = ::redis::pipe()
            .atomic()
            .hgetall(&meta_key)
            .lrange(format!("{meta_key}:messages"), 0, -1)
            .pttl(&meta_key)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let (Some(owner), true) = (meta.get("owner"), ttl > 0) else { return Ok(None) };
        let millis = |field: &str| -> Result<i64> {
            meta.get(field).and_then(|v| v.parse().ok()).ok_or_else(|| corrupt(format!("session {id}: no {field}")))
        };
        Ok(Some(Session {
            id: id.to_owned(),
            owner: owner.clone(),
            messages: messages.iter().map(|m| serde_json::from_str(m).map_err(corrupt)).collect::<Result<_>>()?,
            created_at: from_millis(millis("created_at")?),
            updated_at: from_millis(millis("updated_at")?),
            expires_at: from_millis(now_millis() + ttl),
        }))
    }

    async fn store_key(&self, op: &str, key: &ApiKey, secret_hash: &str) -> Result<bool> {
        let scopes = serde_json::to_string(&key.scopes).expect("scopes serialize");
        let servers = key.servers.as_ref().map(|s| serde_json::to_string(s).expect("server names serialize"));
        let reply = self
            .run(&self.scripts.keys, now_millis(), |s| {
                s.arg(op)
                    .arg(&key.id)
                    .arg(&key.name)
                    .arg(&key.prefix)
                    .arg(&scopes)
                    .arg(to_millis(key.created_at))
                    .arg(key.revoked_at.map(|t| to_millis(t).to_string()).unwrap_or_default())
                    .arg(secret_hash)
                    .arg(servers.as_deref().unwrap_or_default())
                    .arg(key.expires_at.map(|t| to_millis(t).to_string()).unwrap_or_default())
                    .arg(json_list(&key.tools))
                    .arg(json_list(&key.providers))
                    .arg(optional_count(key.rate_limit_per_minute))
                    .arg(optional_count(key.jobs_per_day));
            })
            .await?;
        Ok(int(&reply)? == 1)
    }
}

/// An optional limit as a key hash field: the number, or '' for none.
fn optional_count(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

/// An optional list as a key hash field: JSON, or '' for none.
fn json_list(list: &Option<Vec<String>>) -> String {
    list.as_ref().map(|l| serde_json::to_string(l).expect("names serialize")).unwrap_or_default()
}

/// Audit records read per round trip while filtering a page.
const AUDIT_CHUNK: isize = 500;

fn error_text(error: &JobError) -> String {
    serde_json::to_string(error).expect("job errors serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_redis_is_unavailable_without_the_password() {
        let port = orch_testkit::free_port();
        let started = std::time::Instant::now();
        let err = RedisStore::open(&format!("redis://:hunter2@127.0.0.1:{port}/0"), "orch").await.err().unwrap();
        let message = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("***@127.0.0.1"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}
