//! The embedded SQLite backend: one database file, no service to run.
//!
//! All writes go through one writer thread that owns the only read-write
//! connection. A caller sends it a closure and awaits the reply; the thread runs
//! every pending closure in one `BEGIN IMMEDIATE` transaction, each inside its
//! own savepoint so that a failing command undoes only itself, commits once and
//! then replies to all of them (group commit). With WAL and `synchronous=FULL` a
//! job is durable when its caller hears back, at the cost of one fsync per batch
//! rather than one per job. Reads use a small pool of read-only connections,
//! which WAL lets run beside the writer.
//!
//! Other processes (an `orch api` and an `orch worker` on the same file) take
//! the same database write lock; `busy_timeout` makes each wait for the other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params, params_from_iter};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::*;

/// Schema migrations; migration `i` brings `PRAGMA user_version` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_servers.sql"),
    include_str!("../../migrations/sqlite/0003_sessions.sql"),
    include_str!("../../migrations/sqlite/0004_slots.sql"),
    include_str!("../../migrations/sqlite/0005_usage.sql"),
    include_str!("../../migrations/sqlite/0006_webhooks.sql"),
    include_str!("../../migrations/sqlite/0007_provider_state.sql"),
    include_str!("../../migrations/sqlite/0008_job_outputs.sql"),
    include_str!("../../migrations/sqlite/0009_cache.sql"),
    include_str!("../../migrations/sqlite/0010_delivery_parent.sql"),
    include_str!("../../migrations/sqlite/0010_job_owner.sql"),
    include_str!("../../migrations/sqlite/0011_key_lifecycle_audit.sql"),
    include_str!("../../migrations/sqlite/0012_rate_limits.sql"),
];

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most commands the writer puts in one transaction.
const MAX_BATCH: usize = 1000;
/// Commands waiting for the writer before callers wait to send.
const WRITE_QUEUE: usize = 4096;
const READERS: usize = 3;

// Without statistics the planner prefers `jobs_status` and sorts every queued
// job per claim (the cost growing with the backlog), so the hot queries name
// their index; a plan test below guards the rest.
const DUE_JOBS: &str = "SELECT rowid FROM jobs INDEXED BY jobs_due WHERE status = 'queued' AND run_at <= ?3
     ORDER BY run_at, id LIMIT ?4";
const EXPIRED_JOBS: &str = "SELECT id, cancel_requested, attempts, max_attempts, worker FROM jobs INDEXED BY jobs_lease
     WHERE status = 'running' AND lease_expires_at < ?1 ORDER BY lease_expires_at LIMIT ?2";
const PURGEABLE_JOBS: &str = "SELECT id FROM jobs INDEXED BY jobs_finished
     WHERE finished_at < ?1 AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?2";

const JOB_COLUMNS: &str = "id, kind, status, input, metadata, attempts, max_attempts, progress, error, \
     created_at, updated_at, run_at, started_at, finished_at, cancel_requested, worker, lease_expires_at, owner";

/// The SQLite store. Dropping it stops the writer thread once queued writes are done.
pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    readers: Arc<ReadPool>,
    notifier: Notifier,
    /// Request rate limits: the API of `orch serve` is the only one on the file.
    rates: crate::rate::LocalRates,
    /// Dropping it stops the checkpoint thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

/// Set by the checkpoint thread after it copied frames; the writer then copies
/// the rest itself before its next transaction (see [`start_checkpointer`]).
type CatchUp = Arc<std::sync::atomic::AtomicBool>;

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// Copies what it can of the WAL without waiting for the writer or readers; its
/// row is (busy, frames in the WAL, frames copied).
const CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// A write command for the writer thread. It runs inside the batch transaction,
/// or is given `None` when the transaction could not begin; the reply it returns
/// is sent once the batch committed or failed.
type WriteOp = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(format!("sqlite: {e}"))
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its parent
    /// directories, and brings the schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the sqlite store failed: {e}")))?
    }

    async fn write<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let op: WriteOp = Box::new(move |conn| {
            let out = conn.map(|conn| in_savepoint(conn, f));
            Box::new(move |batch: Result<(), String>| {
                let reply = match (batch, out) {
                    (Ok(()), Some(out)) => out,
                    (Err(e), _) => Err(StoreError::Unavailable(e)),
                    (Ok(()), None) => Err(StoreError::Unavailable("write was not run".into())),
                };
                let _ = tx.send(reply);
            })
        });
        self.writer.send(op).await.map_err(|_| writer_stopped())?;
        rx.await.map_err(|_| writer_stopped())?
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let pool = self.readers.clone();
        // The semaphore is never closed.
        let permit = pool.permits.clone().acquire_owned().await.expect("read permits stay open");
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match idle {
                Some(conn) => conn,
                None => open_reader(&pool.path)?,
            };
            let out = f(&conn);
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite read failed: {e}")))?
    }
}

/// `provider`'s stored state, or the empty state of one never seen.
fn stored_provider_state(conn: &Connection, provider: &str) -> Result<ProviderState> {
    let stored: Option<String> = conn
        .prepare_cached("SELECT state FROM provider_states WHERE name = ?1")?
        .query_row([provider], |r| r.get(0))
        .optional()?;
    match stored {
        Some(text) => parse_json(&text, "provider state"),
        None => Ok(ProviderState { provider: provider.to_owned(), ..Default::default() }),
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the sqlite writer thread has stopped".into())
}

fn open_blocking(path: &Path) -> Result<SqliteStore> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open sqlite database {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "sqlite database {} cannot use WAL journaling (got {mode}); put it on a local disk",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 64 MiB, at most: a 50,000-job backlog and its events stay in memory while draining.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    // Every write runs in a savepoint of the group commit (`in_savepoint`), whose
    // journal of the pages it changes otherwise spills to a temporary file past
    // 64 KiB: a claim or a batch of completions then cost write syscalls for a
    // rollback that almost never happens (a quarter of the writer's time).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread (below): done inside a commit, they
    // stall every write queued behind it for the time of a database fsync.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(64);
    migrate(&conn)?;
    let (checkpointer, catch_up) = start_checkpointer(path)?;

    let readers = (0..READERS).map(|_| open_reader(path)).collect::<Result<Vec<_>>>()?;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    std::thread::Builder::new()
        .name("orch-sqlite-writer".into())
        .spawn(move || run_writer(conn, rx, catch_up))
        .map_err(|e| StoreError::Unavailable(format!("cannot start the sqlite writer thread: {e}")))?;
    Ok(SqliteStore {
        writer: tx,
        readers: Arc::new(ReadPool {
            path: path.to_owned(),
            idle: Mutex::new(readers),
            permits: Arc::new(Semaphore::new(READERS)),
        }),
        notifier: Notifier::default(),
        rates: Default::default(),
        _checkpointer: checkpointer,
    })
}

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`] from a
/// connection of its own. PASSIVE never waits for the writer, so commits keep
/// their latency; the thread ends when the store is dropped.
///
/// Under steady writes that alone never lets the WAL start over: SQLite
/// rewinds it only in a transaction that begins once every frame is in the
/// database, and the writer commits new frames while each checkpoint runs. The
/// WAL then grows for as long as the writes go on. So after each checkpoint
/// the writer, between two transactions, copies the few frames committed
/// meanwhile itself (see `run_writer`), and its next transaction rewinds the
/// WAL.
fn start_checkpointer(path: &Path) -> Result<(std::sync::mpsc::Sender<()>, CatchUp)> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let catch_up = CatchUp::default();
    let flag = catch_up.clone();
    std::thread::Builder::new()
        .name("orch-sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                match conn.query_row(CHECKPOINT, [], |r| r.get::<_, i64>(2)) {
                    Ok(copied) if copied > 0 => flag.store(true, std::sync::atomic::Ordering::Release),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed; retrying"),
                }
            }
            // Leave a small WAL behind for the next start.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the sqlite checkpoint thread: {e}")))?;
    Ok((stop, catch_up))
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Applies the migrations the file lacks. Another process may be opening the
/// same file, so the version is read again under the write lock.
fn migrate(conn: &Connection) -> Result<()> {
    let version = |conn: &Connection| -> Result<usize> {
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let v = usize::try_from(v).unwrap_or(usize::MAX);
        if v > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the database has schema version {v} but this orch knows only up to {}; use a newer orch",
                MIGRATIONS.len()
            )));
        }
        Ok(v)
    };
    if version(conn)? == MIGRATIONS.len() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let applied = (|| {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version(conn)?) {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        conn.execute_batch("COMMIT")?;
        Ok(())
    })();
    if applied.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    applied
}

/// The writer thread: takes what is pending, runs it in one transaction,
/// commits, replies; until the store is dropped. After each checkpoint of the
/// checkpoint thread it first copies the frames committed meanwhile, so the
/// next transaction can rewind the WAL (see [`start_checkpointer`]).
fn run_writer(conn: Connection, mut rx: mpsc::Receiver<WriteOp>, catch_up: CatchUp) {
    while let Some(first) = rx.blocking_recv() {
        if catch_up.swap(false, std::sync::atomic::Ordering::Acquire)
            && let Err(e) = conn.query_row(CHECKPOINT, [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "sqlite checkpoint in the writer failed");
        }
        let mut replies = Vec::new();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let message = format!("cannot start a sqlite write transaction: {e}");
            tracing::error!("{message}");
            replies.push(first(None));
            while replies.len() < MAX_BATCH {
                let Ok(op) = rx.try_recv() else { break };
                replies.push(op(None));
            }
            for reply in replies {
                reply(Err(message.clone()));
            }
            continue;
        }
        let mut next = Some(first);
        while let Some(op) = next.take() {
            replies.push(op(Some(&conn)));
            // An I/O error can roll back the whole transaction, not just the savepoint.
            if conn.is_autocommit() || replies.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        let outcome = if conn.is_autocommit() {
            Err("the sqlite write transaction was rolled back by an error".to_owned())
        } else {
            conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                format!("sqlite commit failed: {e}")
            })
        };
        if let Err(e) = &outcome {
            tracing::error!(writes = replies.len(), "{e}");
        }
        for reply in replies {
            reply(outcome.clone());
        }
    }
}

/// Runs one command so that its failure undoes only its own changes.
///
/// That makes SQLite's own per-statement undo redundant inside a command, so the
/// hot statements say `OR FAIL`: with the default `ABORT`, every statement that
/// could fail a constraint opens a statement journal of its own, and releasing
/// one walks the in-memory journal of the whole command (quadratic in the pages
/// a batch of claims or completions touches). An error still ends the command,
/// and this savepoint undoes all of it.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT op")?;
    let out = f(conn);
    let end = match out {
        Ok(_) => conn.execute_batch("RELEASE op"),
        Err(_) => conn.execute_batch("ROLLBACK TO op; RELEASE op"),
    };
    if let Err(e) = end {
        // The batch cannot be trusted any more: abandon it (the writer sees autocommit).
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    out
}

fn now_millis() -> i64 {
    to_millis(Utc::now())
}

fn lease_until(now: i64, lease: Duration) -> i64 {
    now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// As chrono serializes a millisecond time: `2026-01-02T03:04:05.678Z`.
fn rfc3339(ms: i64) -> String {
    from_millis(ms).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn to_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data always serializes")
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what} is not valid JSON: {e}")))
}

fn parse_id(text: &str) -> Result<JobId> {
    JobId::parse_str(text).map_err(|e| StoreError::Corrupt(format!("job id {text:?}: {e}")))
}

/// Every row of `rows`, each made by `from_row`.
fn collect_rows<T>(mut rows: rusqlite::Rows<'_>, mut from_row: impl FnMut(&Row) -> Result<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    Ok(out)
}

/// Job counts from rows of (status, count).
fn counts_by_status(rows: rusqlite::Rows<'_>) -> Result<JobCounts> {
    let mut counts = JobCounts::default();
    let rows = collect_rows(rows, |row| {
        let status: JobStatus =
            row.get::<_, String>(0)?.parse().map_err(|e: UnknownVariant| StoreError::Corrupt(e.to_string()))?;
        Ok((status, row.get(1)?))
    })?;
    for (status, n) in rows {
        counts.set(status, n);
    }
    Ok(counts)
}

fn job_from_row(row: &Row) -> Result<Job> {
    let corrupt = |e: UnknownVariant| StoreError::Corrupt(e.to_string());
    Ok(Job {
        id: parse_id(&row.get::<_, String>(0)?)?,
        kind: row.get::<_, String>(1)?.parse().map_err(corrupt)?,
        status: row.get::<_, String>(2)?.parse().map_err(corrupt)?,
        input: parse_json(&row.get::<_, String>(3)?, "job input")?,
        metadata: parse_json(&row.get::<_, String>(4)?, "job metadata")?,
        attempts: row.get(5)?,
        max_attempts: row.get(6)?,
        progress: row.get::<_, Option<String>>(7)?.map(|t| parse_json(&t, "job progress")).transpose()?,
        error: row.get::<_, Option<String>>(8)?.map(|t| parse_json(&t, "job error")).transpose()?,
        created_at: from_millis(row.get(9)?),
        updated_at: from_millis(row.get(10)?),
        run_at: from_millis(row.get(11)?),
        started_at: row.get::<_, Option<i64>>(12)?.map(from_millis),
        finished_at: row.get::<_, Option<i64>>(13)?.map(from_millis),
        cancel_requested: row.get(14)?,
        worker: row.get(15)?,
        lease_expires_at: row.get::<_, Option<i64>>(16)?.map(from_millis),
        owner: row.get(17)?,
    })
}

fn load_job(conn: &Connection, id: &str) -> Result<Option<Job>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?;
    let mut rows = stmt.query([id])?;
    rows.next()?.map(job_from_row).transpose()
}

fn append_event(conn: &Connection, id: &str, seq: i64, kind: &str, data: &Value, at: i64) -> Result<()> {
    conn.prepare_cached("INSERT OR FAIL INTO job_events (job_id, seq, kind, data, at) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![id, seq, kind, data.to_string(), at])?;
    Ok(())
}

/// Stores a queued job and its first event; returns the job as stored.
fn insert_queued(conn: &Connection, job: &NewJob) -> Result<Job> {
    let id = job.id.to_string();
    let created = to_millis(job.created_at);
    let run_at = to_millis(job.run_at);
    conn.prepare_cached(
        "INSERT OR FAIL INTO jobs (id, kind, status, input, metadata, attempts, max_attempts, created_at, updated_at, run_at, last_seq, parent, owner)
         VALUES (?1, ?2, 'queued', ?3, ?4, 0, ?5, ?6, ?6, ?7, 1, ?8, ?9)",
    )?
    .execute(params![
        id,
        job.kind.as_str(),
        job.input.to_string(),
        job.metadata.to_string(),
        job.max_attempts,
        created,
        run_at,
        job.parent().map(|p| p.to_string()),
        job.owner
    ])?;
    append_event(conn, &id, 1, "queued", &json!({"status": "queued"}), created)?;
    Ok(Job {
        id: job.id,
        kind: job.kind,
        status: JobStatus::Queued,
        input: job.input.clone(),
        metadata: job.metadata.clone(),
        attempts: 0,
        max_attempts: job.max_attempts,
        progress: None,
        error: None,
        created_at: from_millis(created),
        updated_at: from_millis(created),
        run_at: from_millis(run_at),
        started_at: None,
        finished_at: None,
        cancel_requested: false,
        worker: None,
        lease_expires_at: None,
        owner: job.owner.clone(),
    })
}

/// Stores a job unless its idempotency record replays an earlier one or its
/// owner is over `jobs_per_day` (0: unlimited) today.
fn insert_with_idempotency(conn: &Connection, job: &NewJob, jobs_per_day: u32) -> Result<Inserted> {
    let replay = replayed(conn, job)?;
    if let Some(replay) = replay {
        return Ok(replay);
    }
    if jobs_per_day > 0 {
        let (day, resets_at) = quota_day(Utc::now());
        let owner = job.owner.as_deref().unwrap_or_default();
        let counted = conn
            .prepare_cached(
                "INSERT INTO job_quota (owner, day, count) VALUES (?1, ?2, 1)
                 ON CONFLICT (owner, day) DO UPDATE SET count = count + 1 WHERE count < ?3",
            )?
            .execute(params![owner, day, jobs_per_day])?;
        if counted == 0 {
            return Ok(Inserted::OverQuota { limit: jobs_per_day, resets_at });
        }
    }
    if let Some(rec) = &job.idempotency {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (key, body_hash, job_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![rec.key, rec.body_hash, job.id.to_string(), to_millis(rec.expires_at)])?;
    }
    Ok(Inserted::Created(insert_queued(conn, job)?))
}

/// The earlier job a live idempotency record of `job` names: `Existing`
/// with the same body, `Conflict` with another.
fn replayed(conn: &Connection, job: &NewJob) -> Result<Option<Inserted>> {
    if let Some(rec) = &job.idempotency {
        let seen: Option<(String, String, i64)> = conn
            .prepare_cached("SELECT body_hash, job_id, expires_at FROM idempotency WHERE key = ?1")?
            .query_row([&rec.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((body_hash, job_id, expires_at)) = seen
            && expires_at > now_millis()
            && let Some(first) = load_job(conn, &job_id)?
        {
            return Ok(Some(if body_hash == rec.body_hash {
                Inserted::Existing(first)
            } else {
                Inserted::Conflict { job_id: first.id }
            }));
        }
    }
    Ok(None)
}

/// How a state change treats the job's `error`.
enum ErrorChange<'a> {
    Keep,
    Clear,
    Set(&'a JobError),
}

/// A state change of one job that ends its current state and appends an event.
struct Move<'a> {
    to: JobStatus,
    at: i64,
    /// Only when re-queueing: when the job is due again.
    run_at: Option<i64>,
    error: ErrorChange<'a>,
}

/// Applies `to` if the job is in `from` (and, when given, leased by `owner`);
/// returns whether it applied. Releases the lease; terminal states get
/// `finished_at`; re-queueing appends `retrying`, anything else an event named
/// after the new status.
fn move_job(conn: &Connection, id: &str, from: JobStatus, owner: Option<&str>, to: &Move) -> Result<bool> {
    let (set_error, error) = match to.error {
        ErrorChange::Keep => (false, None),
        ErrorChange::Clear => (true, None),
        ErrorChange::Set(e) => (true, Some(to_text(e))),
    };
    let moved: Option<(u32, i64)> = conn
        .prepare_cached(
            "UPDATE OR FAIL jobs SET status = ?4, run_at = COALESCE(?5, run_at),
                 error = CASE WHEN ?6 THEN ?7 ELSE error END,
                 finished_at = CASE WHEN ?8 THEN ?9 ELSE finished_at END,
                 updated_at = ?9, worker = NULL, lease_expires_at = NULL, last_seq = last_seq + 1
             WHERE id = ?1 AND status = ?2 AND (?3 IS NULL OR worker = ?3)
             RETURNING attempts, last_seq",
        )?
        .query_row(
            params![id, from.as_str(), owner, to.to.as_str(), to.run_at, set_error, error, to.to.is_terminal(), to.at],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((attempts, seq)) = moved else { return Ok(false) };
    let mut data = json!({"status": to.to.as_str(), "attempts": attempts});
    if let ErrorChange::Set(e) = to.error
        && matches!(to.to, JobStatus::Queued | JobStatus::Failed)
    {
        data["error"] = json!(e);
    }
    let kind = if to.to == JobStatus::Queued {
        data["retry_at"] = json!(rfc3339(to.run_at.unwrap_or(to.at)));
        "retrying"
    } else {
        to.to.as_str()
    };
    append_event(conn, id, seq, kind, &data, to.at)?;
    Ok(true)
}

fn claim_due(conn: &Connection, worker: &str, limit: usize, lease: Duration) -> Result<Vec<Job>> {
    let now = now_millis();
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE OR FAIL jobs SET status = 'running', attempts = attempts + 1, worker = ?1, lease_expires_at = ?2,
             started_at = ?3, updated_at = ?3, last_seq = last_seq + 1
         WHERE rowid IN ({DUE_JOBS})
         RETURNING {JOB_COLUMNS}, last_seq"
    ))?;
    let mut claimed =
        collect_rows(stmt.query(params![worker, lease_until(now, lease), now, sql_limit(limit)])?, |row| {
            Ok((job_from_row(row)?, row.get::<_, i64>(18)?))
        })?;
    // RETURNING has no order of its own.
    claimed.sort_by_key(|(job, _)| (job.run_at, job.id));
    for (job, seq) in &claimed {
        let data = json!({"status": "running", "attempts": job.attempts});
        append_event(conn, &job.id.to_string(), *seq, "running", &data, now)?;
    }
    Ok(claimed.into_iter().map(|(job, _)| job).collect())
}

fn complete_one(conn: &Connection, worker: &str, completion: &Completion) -> Result<bool> {
    let id = completion.job_id.to_string();
    let at = now_millis();
    let to = match &completion.outcome {
        Outcome::Succeeded { .. } => Move { to: JobStatus::Succeeded, at, run_at: None, error: ErrorChange::Clear },
        Outcome::Failed { error, retry_at: Some(t) } => {
            Move { to: JobStatus::Queued, at, run_at: Some(to_millis(*t)), error: ErrorChange::Set(error) }
        }
        Outcome::Failed { error, retry_at: None } => {
            Move { to: JobStatus::Failed, at, run_at: None, error: ErrorChange::Set(error) }
        }
        Outcome::Cancelled => Move { to: JobStatus::Cancelled, at, run_at: None, error: ErrorChange::Keep },
    };
    if !move_job(conn, &id, JobStatus::Running, Some(worker), &to)? {
        return Ok(false);
    }
    if let Outcome::Succeeded { result } = &completion.outcome {
        conn.prepare_cached(
            "INSERT OR FAIL INTO job_results (job_id, result) VALUES (?1, ?2)
             ON CONFLICT (job_id) DO UPDATE SET result = excluded.result",
        )?
        .execute(params![id, result.to_string()])?;
    }
    Ok(true)
}

fn recover(conn: &Connection, now: DateTime<Utc>, limit: usize) -> Result<u64> {
    let at = to_millis(now);
    let expired: Vec<(String, bool, u32, u32, Option<String>)> = conn
        .prepare_cached(EXPIRED_JOBS)?
        .query_map(params![at, sql_limit(limit)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut moved = 0;
    for (id, cancel_requested, attempts, max_attempts, worker) in expired {
        let lost = JobError::new(
            "worker_lost",
            format!("worker {} stopped heartbeating; its lease expired", worker.unwrap_or_default()),
            true,
        );
        let to = if cancel_requested {
            Move { to: JobStatus::Cancelled, at, run_at: None, error: ErrorChange::Keep }
        } else if attempts < max_attempts {
            Move { to: JobStatus::Queued, at, run_at: Some(at), error: ErrorChange::Set(&lost) }
        } else {
            Move { to: JobStatus::Failed, at, run_at: None, error: ErrorChange::Set(&lost) }
        };
        if move_job(conn, &id, JobStatus::Running, None, &to)? {
            moved += 1;
        }
    }
    Ok(moved)
}

fn cancel(conn: &Connection, id: &str) -> Result<(Option<Job>, bool)> {
    let Some(job) = load_job(conn, id)? else { return Ok((None, false)) };
    let at = now_millis();
    match job.status {
        JobStatus::Queued => {
            let to = Move { to: JobStatus::Cancelled, at, run_at: None, error: ErrorChange::Keep };
            move_job(conn, id, JobStatus::Queued, None, &to)?;
            Ok((load_job(conn, id)?, true))
        }
        JobStatus::Running if !job.cancel_requested => {
            conn.prepare_cached("UPDATE jobs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1")?
                .execute(params![id, at])?;
            Ok((load_job(conn, id)?, false))
        }
        _ => Ok((Some(job), false)),
    }
}

fn purge_finished(conn: &Connection, before: i64, limit: usize) -> Result<u64> {
    let ids: Vec<String> = conn
        .prepare_cached(PURGEABLE_JOBS)?
        .query_map(params![before, sql_limit(limit)], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &ids {
        for sql in [
            "DELETE FROM job_events WHERE job_id = ?1",
            "DELETE FROM job_results WHERE job_id = ?1",
            "DELETE FROM job_outputs WHERE job_id = ?1",
            "DELETE FROM idempotency WHERE job_id = ?1",
            "DELETE FROM jobs WHERE id = ?1",
        ] {
            conn.prepare_cached(sql)?.execute([id])?;
        }
    }
    Ok(ids.len() as u64)
}

/// The query of one page of `list_jobs` and its arguments: only the filters
/// given, so the planner can use the index of each.
fn list_query(filter: &JobFilter) -> (String, Vec<String>) {
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
    let mut args = Vec::new();
    for (condition, value) in [
        ("owner =", filter.owner.clone()),
        ("status =", filter.status.map(|s| s.as_str().to_owned())),
        ("kind =", filter.kind.map(|k| k.as_str().to_owned())),
        ("id <", filter.before.map(|id| id.to_string())),
        // Deliveries only when asked for by kind.
        ("kind !=", filter.kind.is_none().then(|| JobKind::Delivery.as_str().to_owned())),
    ] {
        if let Some(value) = value {
            args.push(value);
            sql.push_str(&format!(" AND {condition} ?{}", args.len()));
        }
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", sql_limit(filter.limit)));
    (sql, args)
}

fn key_from_row(row: &Row) -> Result<ApiKey> {
    Ok(ApiKey {
        id: row.get(0)?,
        name: row.get(1)?,
        prefix: row.get(2)?,
        scopes: parse_json(&row.get::<_, String>(3)?, "key scopes")?,
        created_at: from_millis(row.get(4)?),
        revoked_at: row.get::<_, Option<i64>>(5)?.map(from_millis),
        servers: row.get::<_, Option<String>>(6)?.map(|s| parse_json(&s, "key servers")).transpose()?,
        expires_at: row.get::<_, Option<i64>>(7)?.map(from_millis),
        tools: row.get::<_, Option<String>>(8)?.map(|s| parse_json(&s, "key tools")).transpose()?,
        providers: row.get::<_, Option<String>>(9)?.map(|s| parse_json(&s, "key providers")).transpose()?,
        last_used_at: row.get::<_, Option<i64>>(10)?.map(from_millis),
        rotated_until: row.get::<_, Option<i64>>(11)?.map(from_millis),
        rate_limit_per_minute: row.get(12)?,
        jobs_per_day: row.get(13)?,
    })
}

const KEY_COLUMNS: &str = "id, name, prefix, scopes, created_at, revoked_at, servers, expires_at, tools, providers, last_used_at, rotated_until, \
     rate_limit_per_minute, jobs_per_day";

const AUDIT_COLUMNS: &str =
    "id, at, key_id, key_name, action, method, route, target_kind, target, job_id, outcome, status";

fn audit_from_row(row: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get::<_, i64>(0)? as u64,
        at: from_millis(row.get(1)?),
        key_id: row.get(2)?,
        key_name: row.get(3)?,
        action: row.get(4)?,
        method: row.get(5)?,
        route: row.get(6)?,
        target_kind: row.get(7)?,
        target: row.get(8)?,
        job_id: row
            .get::<_, Option<String>>(9)?
            .map(|s| s.parse().map_err(|_| StoreError::Corrupt(format!("bad audit job id {s:?}"))))
            .transpose()?,
        outcome: row.get(10)?,
        status: row.get::<_, Option<i64>>(11)?.and_then(|s| u16::try_from(s).ok()),
    })
}

const SESSION_COLUMNS: &str = "id, owner, messages, created_at, updated_at, expires_at";

fn session_from_row(row: &Row) -> Result<Session> {
    Ok(Session {
        id: row.get(0)?,
        owner: row.get(1)?,
        messages: parse_json(&row.get::<_, String>(2)?, "session messages")?,
        created_at: from_millis(row.get(3)?),
        updated_at: from_millis(row.get(4)?),
        expires_at: from_millis(row.get(5)?),
    })
}

fn load_session(conn: &Connection, id: &str, now: i64) -> Result<Option<Session>> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1 AND expires_at > ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![id, now])?;
    rows.next()?.map(session_from_row).transpose()
}

fn server_from_row(row: &Row) -> Result<StoredServer> {
    Ok(StoredServer {
        name: row.get(0)?,
        config: parse_json(&row.get::<_, String>(1)?, "server config")?,
        created_at: from_millis(row.get(2)?),
        updated_at: from_millis(row.get(3)?),
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    async fn ping(&self) -> Result<()> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    async fn insert_job_within(&self, job: NewJob, jobs_per_day: u32) -> Result<Inserted> {
        let inserted = self.write(move |conn| insert_with_idempotency(conn, &job, jobs_per_day)).await?;
        if let Inserted::Created(_) = inserted {
            self.notifier.jobs_ready();
        }
        Ok(inserted)
    }

    async fn take_request(&self, bucket: &str, per_minute: u32) -> Result<RateDecision> {
        Ok(self.rates.take(bucket, per_minute))
    }

    async fn insert_jobs(&self, jobs: Vec<NewJob>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.write(move |conn| jobs.iter().try_for_each(|job| insert_queued(conn, job).map(drop))).await?;
        self.notifier.jobs_ready();
        Ok(())
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.read(move |conn| load_job(conn, &id.to_string())).await
    }

    async fn get_result(&self, id: JobId) -> Result<Option<Value>> {
        self.read(move |conn| {
            let text: Option<String> = conn
                .prepare_cached(
                    "SELECT r.result FROM job_results r JOIN jobs j ON j.id = r.job_id
                     WHERE r.job_id = ?1 AND j.status = 'succeeded'",
                )?
                .query_row([id.to_string()], |r| r.get(0))
                .optional()?;
            text.map(|t| parse_json(&t, "job result")).transpose()
        })
        .await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let (sql, args) = list_query(filter);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            collect_rows(stmt.query(params_from_iter(&args))?, job_from_row)
        })
        .await
    }

    async fn count_jobs(&self) -> Result<JobCounts> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
            counts_by_status(stmt.query([])?)
        })
        .await
    }

    async fn count_jobs_of_kind(&self, kind: JobKind) -> Result<JobCounts> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM jobs WHERE kind = ?1 GROUP BY status")?;
            counts_by_status(stmt.query([kind.as_str()])?)
        })
        .await
    }

    async fn job_deliveries(&self, parent: JobId, before: Option<JobId>, limit: usize) -> Result<Vec<Job>> {
        let parent = parent.to_string();
        // The largest id sorts before "~": no `before` means from the newest.
        let before = before.map_or_else(|| "~".to_owned(), |id| id.to_string());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_parent WHERE parent = ?1 AND id < ?2
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            collect_rows(stmt.query(params![parent, before, sql_limit(limit)])?, job_from_row)
        })
        .await
    }

    async fn cancel_job(&self, id: JobId) -> Result<Option<Job>> {
        let (job, appended) = self.write(move |conn| cancel(conn, &id.to_string())).await?;
        if appended {
            self.notifier.job_changed(id);
        }
        // Workers of other processes sharing the file find it at their heartbeat.
        if let Some(Job { status: JobStatus::Running, worker: Some(worker), .. }) = &job {
            self.notifier.cancel_requested(worker, id);
        }
        Ok(job)
    }

    async fn claim(&self, worker: &str, limit: usize, lease: Duration) -> Result<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let worker = worker.to_owned();
        let jobs = self.write(move |conn| claim_due(conn, &worker, limit, lease)).await?;
        for job in &jobs {
            self.notifier.job_changed(job.id);
        }
        Ok(jobs)
    }

    async fn heartbeat(&self, worker: &WorkerInfo, jobs: &[JobId], lease: Duration) -> Result<Vec<JobId>> {
        let info = worker.clone();
        let jobs = jobs.to_vec();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO workers (id, hostname, pid, started_at, last_seen, concurrency, running)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, pid = excluded.pid,
                     started_at = excluded.started_at, last_seen = excluded.last_seen,
                     concurrency = excluded.concurrency, running = excluded.running",
            )?
            .execute(params![
                info.id,
                info.hostname,
                info.pid,
                to_millis(info.started_at),
                to_millis(info.last_seen),
                info.concurrency,
                info.running
            ])?;
            let until = lease_until(now_millis(), lease);
            let mut extend = conn.prepare_cached(
                "UPDATE jobs SET lease_expires_at = ?3 WHERE id = ?1 AND status = 'running' AND worker = ?2
                 RETURNING cancel_requested",
            )?;
            let mut stop = Vec::new();
            for id in jobs {
                let cancel_requested: Option<bool> =
                    extend.query_row(params![id.to_string(), info.id, until], |r| r.get(0)).optional()?;
                if cancel_requested != Some(false) {
                    stop.push(id);
                }
            }
            Ok(stop)
        })
        .await
    }

    async fn complete(&self, worker: &str, completions: Vec<Completion>) -> Result<Vec<bool>> {
        let worker = worker.to_owned();
        let ids: Vec<JobId> = completions.iter().map(|c| c.job_id).collect();
        let applied = self
            .write(move |conn| completions.iter().map(|c| complete_one(conn, &worker, c)).collect::<Result<Vec<_>>>())
            .await?;
        for (id, _) in ids.iter().zip(&applied).filter(|(_, applied)| **applied) {
            self.notifier.job_changed(*id);
        }
        Ok(applied)
    }

    async fn record_progress(&self, worker: &str, id: JobId, progress: Value) -> Result<()> {
        let worker = worker.to_owned();
        let recorded = self
            .write(move |conn| {
                let id = id.to_string();
                let at = now_millis();
                let seq: Option<i64> = conn
                    .prepare_cached(
                        "UPDATE jobs SET progress = ?3, updated_at = ?4, last_seq = last_seq + 1
                         WHERE id = ?1 AND status = 'running' AND worker = ?2 RETURNING last_seq",
                    )?
                    .query_row(params![id, worker, progress.to_string(), at], |r| r.get(0))
                    .optional()?;
                if let Some(seq) = seq {
                    append_event(conn, &id, seq, "progress", &progress, at)?;
                }
                Ok(seq.is_some())
            })
            .await?;
        if recorded {
            self.notifier.job_changed(id);
        }
        Ok(())
    }

    async fn recover_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<u64> {
        let moved = self.write(move |conn| recover(conn, now, limit)).await?;
        if moved > 0 {
            self.notifier.jobs_ready();
            self.notifier.all_changed();
        }
        Ok(moved)
    }

    async fn events(&self, id: JobId, after: u64, limit: usize) -> Result<Vec<JobEvent>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, kind, data, at FROM job_events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            collect_rows(stmt.query(params![id.to_string(), after, sql_limit(limit)])?, |row| {
                Ok(JobEvent {
                    seq: row.get(0)?,
                    job_id: id,
                    kind: row.get(1)?,
                    data: parse_json(&row.get::<_, String>(2)?, "event data")?,
                    at: from_millis(row.get(3)?),
                })
            })
        })
        .await
    }

    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerInfo>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, hostname, pid, started_at, last_seen, concurrency, running FROM workers
                 WHERE last_seen >= ?1 ORDER BY id",
            )?;
            let workers = stmt
                .query_map([to_millis(since)], |r| {
                    Ok(WorkerInfo {
                        id: r.get(0)?,
                        hostname: r.get(1)?,
                        pid: r.get(2)?,
                        started_at: from_millis(r.get(3)?),
                        last_seen: from_millis(r.get(4)?),
                        concurrency: r.get(5)?,
                        running: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(workers)
        })
        .await
    }

    async fn purge(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        self.write(move |conn| {
            // Expired sessions are invisible already; this reclaims their space.
            conn.prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?.execute([now_millis()])?;
            conn.prepare_cached("DELETE FROM usage WHERE at < ?1")?.execute([to_millis(before)])?;
            conn.prepare_cached("DELETE FROM cache WHERE expires_at <= ?1")?.execute([now_millis()])?;
            // Today's and yesterday's counts are kept (a clock may lag).
            conn.prepare_cached("DELETE FROM job_quota WHERE day < ?1")?.execute([quota_day(Utc::now()).0 - 1])?;
            purge_finished(conn, to_millis(before), limit)
        })
        .await
    }

    async fn create_key(&self, key: &ApiKey, secret_hash: &str) -> Result<()> {
        let (key, hash) = (key.clone(), secret_hash.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO api_keys (id, name, prefix, scopes, secret_hash, created_at, revoked_at, servers,
                                       expires_at, tools, providers, rate_limit_per_minute, jobs_per_day)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?
            .execute(params![
                key.id,
                key.name,
                key.prefix,
                to_text(&key.scopes),
                hash,
                to_millis(key.created_at),
                key.revoked_at.map(to_millis),
                key.servers.as_ref().map(to_text),
                key.expires_at.map(to_millis),
                key.tools.as_ref().map(to_text),
                key.providers.as_ref().map(to_text),
                key.rate_limit_per_minute,
                key.jobs_per_day
            ])?;
            Ok(())
        })
        .await
    }

    async fn create_first_key(&self, key: &ApiKey, secret_hash: &str) -> Result<bool> {
        let (key, hash) = (key.clone(), secret_hash.to_owned());
        self.write(move |conn| {
            let stored = conn
                .prepare_cached(
                    "INSERT INTO api_keys (id, name, prefix, scopes, secret_hash, created_at, revoked_at, servers,
                                           expires_at, tools, providers, rate_limit_per_minute, jobs_per_day)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13
                     WHERE NOT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)",
                )?
                .execute(params![
                    key.id,
                    key.name,
                    key.prefix,
                    to_text(&key.scopes),
                    hash,
                    to_millis(key.created_at),
                    key.revoked_at.map(to_millis),
                    key.servers.as_ref().map(to_text),
                    key.expires_at.map(to_millis),
                    key.tools.as_ref().map(to_text),
                    key.providers.as_ref().map(to_text),
                    key.rate_limit_per_minute,
                    key.jobs_per_day
                ])?;
            Ok(stored == 1)
        })
        .await
    }

    async fn key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let hash = secret_hash.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?1 AND revoked_at IS NULL"
            ))?;
            let mut rows = stmt.query([hash])?;
            rows.next()?.map(key_from_row).transpose()
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, rowid"))?;
            collect_rows(stmt.query([])?, key_from_row)
        })
        .await
    }

    async fn revoke_key(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |conn| {
            let revoked = conn
                .prepare_cached("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")?
                .execute(params![id, now_millis()])?;
            Ok(revoked == 1)
        })
        .await
    }

    async fn key_by_previous_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let hash = secret_hash.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE previous_hash = ?1 AND revoked_at IS NULL"
            ))?;
            let mut rows = stmt.query([hash])?;
            rows.next()?.map(key_from_row).transpose()
        })
        .await
    }

    async fn rotate_key(&self, id: &str, prefix: &str, secret_hash: &str, until: DateTime<Utc>) -> Result<bool> {
        let (id, prefix, hash) = (id.to_owned(), prefix.to_owned(), secret_hash.to_owned());
        self.write(move |conn| {
            let rotated = conn
                .prepare_cached(
                    "UPDATE api_keys SET previous_hash = secret_hash, secret_hash = ?2, prefix = ?3, rotated_until = ?4
                     WHERE id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![id, hash, prefix, to_millis(until)])?;
            Ok(rotated == 1)
        })
        .await
    }

    async fn update_key(&self, key: &ApiKey) -> Result<bool> {
        let key = key.clone();
        self.write(move |conn| {
            let updated = conn
                .prepare_cached(
                    "UPDATE api_keys SET expires_at = ?2, servers = ?3, tools = ?4, providers = ?5,
                                         rate_limit_per_minute = ?6, jobs_per_day = ?7
                     WHERE id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![
                    key.id,
                    key.expires_at.map(to_millis),
                    key.servers.as_ref().map(to_text),
                    key.tools.as_ref().map(to_text),
                    key.providers.as_ref().map(to_text),
                    key.rate_limit_per_minute,
                    key.jobs_per_day
                ])?;
            Ok(updated == 1)
        })
        .await
    }

    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1")?
                .execute(params![id, to_millis(at)])?;
            Ok(())
        })
        .await
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO audit_log (at, key_id, key_name, action, method, route, target_kind, target, job_id, outcome, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for e in entries {
                stmt.execute(params![
                    to_millis(e.at),
                    e.key_id,
                    e.key_name,
                    e.action,
                    e.method,
                    e.route,
                    e.target_kind,
                    e.target,
                    e.job_id.map(|id| id.to_string()),
                    e.outcome,
                    e.status
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditEntry>> {
        let filter = filter.clone();
        self.read(move |conn| {
            let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            for (condition, value) in [
                ("key_id =", filter.key_id.clone()),
                ("action =", filter.action.clone()),
                ("target_kind =", filter.target_kind.clone()),
                ("target =", filter.target.clone()),
                ("outcome =", filter.outcome.clone()),
            ] {
                if let Some(v) = value {
                    args.push(v.into());
                    sql.push_str(&format!(" AND {condition} ?{}", args.len()));
                }
            }
            for (condition, value) in [
                ("at >=", filter.since.map(to_millis)),
                ("at <", filter.until.map(to_millis)),
                ("id <", filter.before.map(|b| i64::try_from(b).unwrap_or(i64::MAX))),
            ] {
                if let Some(v) = value {
                    args.push(v.into());
                    sql.push_str(&format!(" AND {condition} ?{}", args.len()));
                }
            }
            args.push(sql_limit(limit).into());
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
            let mut stmt = conn.prepare_cached(&sql)?;
            collect_rows(stmt.query(rusqlite::params_from_iter(args))?, audit_from_row)
        })
        .await
    }

    async fn purge_audit(&self, before: DateTime<Utc>) -> Result<u64> {
        self.write(move |conn| {
            let n = conn.prepare_cached("DELETE FROM audit_log WHERE at < ?1")?.execute([to_millis(before)])?;
            Ok(n as u64)
        })
        .await
    }

    async fn list_servers(&self) -> Result<Vec<StoredServer>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT name, config, created_at, updated_at FROM mcp_servers ORDER BY name")?;
            collect_rows(stmt.query([])?, server_from_row)
        })
        .await
    }

    async fn put_server(&self, server: &StoredServer) -> Result<bool> {
        let server = server.clone();
        self.write(move |conn| {
            let existed = conn
                .prepare_cached("SELECT 1 FROM mcp_servers WHERE name = ?1")?
                .query_row([&server.name], |_| Ok(()))
                .optional()?
                .is_some();
            conn.prepare_cached(
                "INSERT INTO mcp_servers (name, config, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
            )?
            .execute(params![
                server.name,
                to_text(&server.config),
                to_millis(server.created_at),
                to_millis(server.updated_at)
            ])?;
            Ok(!existed)
        })
        .await
    }

    async fn delete_server(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            let deleted = conn.prepare_cached("DELETE FROM mcp_servers WHERE name = ?1")?.execute([name])?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>> {
        let at = to_millis(now);
        self.read(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(EXPIRED_JOBS)?
                .query_map(params![at, sql_limit(limit)], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut jobs = Vec::with_capacity(ids.len());
            for id in ids {
                jobs.extend(load_job(conn, &id)?);
            }
            Ok(jobs)
        })
        .await
    }

    async fn list_webhooks(&self) -> Result<Vec<StoredWebhook>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT id, config, created_at, updated_at FROM webhooks ORDER BY created_at, id")?;
            collect_rows(stmt.query([])?, |row| {
                Ok(StoredWebhook {
                    id: row.get(0)?,
                    config: parse_json(&row.get::<_, String>(1)?, "webhook config")?,
                    created_at: from_millis(row.get(2)?),
                    updated_at: from_millis(row.get(3)?),
                })
            })
        })
        .await
    }

    async fn put_webhook(&self, webhook: &StoredWebhook) -> Result<bool> {
        let hook = webhook.clone();
        self.write(move |conn| {
            let existed = conn
                .prepare_cached("SELECT 1 FROM webhooks WHERE id = ?1")?
                .query_row([&hook.id], |_| Ok(()))
                .optional()?;
            conn.prepare_cached(
                "INSERT INTO webhooks (id, config, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
            )?
            .execute(params![
                hook.id,
                to_text(&hook.config),
                to_millis(hook.created_at),
                to_millis(hook.updated_at)
            ])?;
            Ok(existed.is_none())
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>> {
        let id = id.to_owned();
        self.read(move |conn| load_session(conn, &id, now_millis())).await
    }

    async fn append_session(
        &self,
        id: &str,
        owner: &str,
        messages: Vec<SessionMessage>,
        ttl: Duration,
    ) -> Result<Session> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        self.write(move |conn| {
            let now = now_millis();
            let mut session = load_session(conn, &id, now)?.unwrap_or_else(|| Session {
                id: id.clone(),
                owner,
                messages: Vec::new(),
                created_at: from_millis(now),
                updated_at: from_millis(now),
                expires_at: from_millis(now),
            });
            session.messages.extend(messages);
            session.updated_at = from_millis(now);
            session.expires_at = from_millis(now.saturating_add(ttl));
            conn.prepare_cached(
                "INSERT INTO sessions (id, owner, messages, created_at, updated_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, messages = excluded.messages,
                     created_at = excluded.created_at, updated_at = excluded.updated_at,
                     expires_at = excluded.expires_at",
            )?
            .execute(params![
                session.id,
                session.owner,
                to_text(&session.messages),
                to_millis(session.created_at),
                to_millis(session.updated_at),
                to_millis(session.expires_at)
            ])?;
            Ok(session)
        })
        .await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |conn| Ok(conn.prepare_cached("DELETE FROM webhooks WHERE id = ?1")?.execute([id])? == 1)).await
    }

    async fn list_sessions(&self, owner: Option<&str>, offset: usize, limit: usize) -> Result<Vec<Session>> {
        let owner = owner.map(str::to_owned);
        self.read(move |conn| {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE expires_at > ?1 AND (?2 IS NULL OR owner = ?2)
                 ORDER BY updated_at DESC, id LIMIT ?3 OFFSET ?4"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            collect_rows(
                stmt.query(params![now_millis(), owner, sql_limit(limit), sql_limit(offset)])?,
                session_from_row,
            )
        })
        .await
    }

    async fn delete_session(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |conn| {
            let deleted = conn
                .prepare_cached("DELETE FROM sessions WHERE id = ?1 AND expires_at > ?2")?
                .execute(params![id, now_millis()])?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn try_acquire_slot(&self, name: &str, holder: &str, limit: u32, hold: Duration) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let hold = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX / 2);
        self.write(move |conn| {
            let now = now_millis();
            conn.prepare_cached("DELETE FROM slots WHERE name = ?1 AND expires_at <= ?2")?
                .execute(params![name, now])?;
            let held: bool = conn
                .prepare_cached("SELECT 1 FROM slots WHERE name = ?1 AND holder = ?2")?
                .query_row(params![name, holder], |_| Ok(()))
                .optional()?
                .is_some();
            let taken: i64 =
                conn.prepare_cached("SELECT COUNT(*) FROM slots WHERE name = ?1")?.query_row([&name], |r| r.get(0))?;
            if !held && taken >= i64::from(limit) {
                return Ok(false);
            }
            conn.prepare_cached(
                "INSERT INTO slots (name, holder, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name, holder) DO UPDATE SET expires_at = excluded.expires_at",
            )?
            .execute(params![name, holder, now.saturating_add(hold)])?;
            Ok(true)
        })
        .await
    }

    async fn record_usage(&self, record: &UsageRecord) -> Result<()> {
        let record = record.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO usage (job_id, at, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (job_id) DO UPDATE SET at = excluded.at, record = excluded.record",
            )?
            .execute(params![record.key(), to_millis(record.at), to_text(&record)])?;
            Ok(())
        })
        .await
    }

    async fn usage(&self, from: DateTime<Utc>, to: DateTime<Utc>, limit: usize) -> Result<Vec<UsageRecord>> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT record FROM usage WHERE at >= ?1 AND at < ?2 ORDER BY at LIMIT ?3")?;
            let records =
                collect_rows(stmt.query(params![to_millis(from), to_millis(to), sql_limit(limit)])?, |row| {
                    parse_json(&row.get::<_, String>(0)?, "usage record")
                })?;
            Ok(records)
        })
        .await
    }

    async fn update_provider_state(&self, provider: &str, update: ProviderUpdate) -> Result<ProviderState> {
        let provider = provider.to_owned();
        self.write(move |conn| {
            let mut state = stored_provider_state(conn, &provider)?;
            state.apply(update);
            conn.prepare_cached(
                "INSERT INTO provider_states (name, state) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state",
            )?
            .execute(params![provider, to_text(&state)])?;
            Ok(state)
        })
        .await
    }

    async fn provider_state(&self, provider: &str) -> Result<ProviderState> {
        let provider = provider.to_owned();
        self.read(move |conn| stored_provider_state(conn, &provider)).await
    }

    async fn provider_states(&self) -> Result<Vec<ProviderState>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT state FROM provider_states ORDER BY name")?;
            let states = collect_rows(stmt.query([])?, |row| parse_json(&row.get::<_, String>(0)?, "provider state"))?;
            Ok(states)
        })
        .await
    }

    async fn release_slot(&self, name: &str, holder: &str) -> Result<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM slots WHERE name = ?1 AND holder = ?2")?.execute(params![name, holder])?;
            Ok(())
        })
        .await
    }

    async fn put_output(&self, id: JobId, node: &str, output: &str) -> Result<bool> {
        let (id, node, output) = (id.to_string(), node.to_owned(), output.to_owned());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "INSERT INTO job_outputs (job_id, node, output) SELECT ?1, ?2, ?3
                     WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1)
                     ON CONFLICT (job_id, node) DO UPDATE SET output = excluded.output",
                )?
                .execute(params![id, node, output])?;
            Ok(n > 0)
        })
        .await
    }

    async fn get_output(&self, id: JobId, node: &str) -> Result<Option<String>> {
        let (id, node) = (id.to_string(), node.to_owned());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT output FROM job_outputs WHERE job_id = ?1 AND node = ?2")?
                .query_row(params![id, node], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn cache_put(&self, key: &str, value: &str, ttl: Duration) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        let expires_at = now_millis().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO cache (key, value, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            )?
            .execute(params![key, value, expires_at])?;
            Ok(())
        })
        .await
    }

    async fn cache_get(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM cache WHERE key = ?1 AND expires_at > ?2")?
                .query_row(params![key, now_millis()], |r| r.get(0))
                .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql` against a fresh schema.
    fn plan(sql: &str) -> String {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Parameters stay unbound: the plan does not depend on their values.
        let mut rows = stmt.raw_query();
        let mut details = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            details.push(row.get::<_, String>(3).unwrap());
        }
        details.join("\n")
    }

    fn check_plan(sql: &str, index: &str) {
        let plan = plan(sql);
        assert!(plan.contains(&format!("INDEX {index}")), "expected index {index}:\n{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "sorts instead of reading in order:\n{plan}");
    }

    #[test]
    fn hot_queries_read_their_index_in_order() {
        check_plan(DUE_JOBS, "jobs_due");
        check_plan(EXPIRED_JOBS, "jobs_lease");
        check_plan(PURGEABLE_JOBS, "jobs_finished");
        check_plan("SELECT status, COUNT(*) FROM jobs GROUP BY status", "jobs_status");
    }

    /// Steps of the statement that picks the jobs to claim, as SQLite counts
    /// them: (virtual machine steps, full-scan steps, sorts).
    fn due_jobs_steps(db: &Path) -> (i32, i32, i32) {
        let conn = Connection::open(db).unwrap();
        let mut stmt = conn.prepare(DUE_JOBS).unwrap();
        let rows = stmt
            .query_map(params![rusqlite::types::Null, rusqlite::types::Null, now_millis(), 500], |r| r.get::<_, i64>(0))
            .unwrap()
            .count();
        assert_eq!(rows, 500);
        use rusqlite::StatementStatus::{FullscanStep, Sort, VmStep};
        (stmt.get_status(VmStep), stmt.get_status(FullscanStep), stmt.get_status(Sort))
    }

    /// What the backlog tests can only print as a drain rate, counted: finding
    /// a batch of due jobs takes as many steps with 50,000 jobs queued as with
    /// 1,000, and neither scans nor sorts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_s_statement_steps_do_not_grow_with_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("orch.db");
        let store = SqliteStore::open(&db).await.unwrap();
        store.insert_jobs((0..1_000).map(|_| new_job()).collect()).await.unwrap();
        let shallow = due_jobs_steps(&db);
        for _ in 0..5 {
            store.insert_jobs((0..10_000).map(|_| new_job()).collect()).await.unwrap();
        }
        let deep = due_jobs_steps(&db);
        assert_eq!((shallow.1, shallow.2), (0, 0), "a claim scans or sorts: {shallow:?}");
        assert_eq!(deep, shallow, "(steps, full-scan steps, sorts) with 51,000 queued vs 1,000");
    }

    #[test]
    fn every_list_filter_reads_an_index_in_order() {
        let before = Some(new_job_id());
        for (owner, status, kind, index) in [
            (None, None, None, "sqlite_autoindex_jobs_1"),
            (None, Some(JobStatus::Queued), None, "jobs_status"),
            (None, None, Some(JobKind::Chat), "jobs_kind"),
            (None, Some(JobStatus::Queued), Some(JobKind::Chat), "jobs_"),
            (Some("key_a"), None, None, "jobs_owner"),
            (Some("key_a"), None, Some(JobKind::Chat), "jobs_"),
            (Some("key_a"), Some(JobStatus::Queued), None, "jobs_"),
            (Some("key_a"), Some(JobStatus::Queued), Some(JobKind::Chat), "jobs_"),
        ] {
            for before in [None, before] {
                let owner = owner.map(str::to_owned);
                let (sql, _) = list_query(&JobFilter { owner, status, kind, before, limit: 10 });
                check_plan(&sql, index);
            }
        }
    }

    #[test]
    fn migrations_are_applied_once_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/orch.db");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            drop(SqliteStore::open(&path).await.unwrap());
            // Reopening finds the schema current and leaves it alone.
            drop(SqliteStore::open(&path).await.unwrap());
        });
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    fn new_job() -> NewJob {
        let now = from_millis(now_millis());
        NewJob {
            id: new_job_id(),
            kind: JobKind::Chat,
            input: json!({"prompt": "hi"}),
            metadata: json!({}),
            max_attempts: 3,
            created_at: now,
            run_at: now,
            idempotency: None,
            owner: None,
        }
    }

    /// The WAL header's checkpoint sequence: SQLite adds one each time the WAL
    /// starts over from its beginning.
    fn wal_rewinds(db: &Path) -> Option<u32> {
        let header = std::fs::read(db.with_extension("db-wal")).ok()?;
        Some(u32::from_be_bytes(header.get(12..16)?.try_into().ok()?))
    }

    /// Writes that never pause still let the WAL start over after checkpoints,
    /// instead of growing for as long as they last.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("orch.db");
        let store = Arc::new(SqliteStore::open(&db).await.unwrap());
        let until = std::time::Instant::now() + CHECKPOINT_EVERY * 8;
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while std::time::Instant::now() < until {
                        store.insert_job(new_job()).await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // Sampled while the writes go on, from the point the first checkpoint could run.
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let first = wal_rewinds(&db).expect("a WAL with a header");
        let mut last = first;
        while std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            last = wal_rewinds(&db).unwrap_or(last);
        }
        let mut written = 0;
        for writer in writers {
            written += writer.await.unwrap();
        }
        assert!(written > 1_000, "too few writes to keep the writer busy: {written}");
        assert!(last >= first + 3, "the WAL started over {} times in 3.5 s of steady writes", last - first);
    }

    /// Two stores on one file stand for `orch api` and `orch worker` processes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_sharing_a_file_never_claim_the_same_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let (a, b) =
            (Arc::new(SqliteStore::open(&path).await.unwrap()), Arc::new(SqliteStore::open(&path).await.unwrap()));
        a.insert_jobs((0..400).map(|_| new_job()).collect()).await.unwrap();
        assert_eq!(b.count_jobs().await.unwrap().queued, 400);
        let claimer = |store: Arc<SqliteStore>| {
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let jobs = store.claim(store.backend(), 9, Duration::from_secs(60)).await.unwrap();
                    if jobs.is_empty() {
                        return ids;
                    }
                    ids.extend(jobs.into_iter().map(|j| j.id));
                }
            })
        };
        let (from_a, from_b) = (claimer(a.clone()), claimer(b.clone()));
        let mut all = from_a.await.unwrap();
        all.extend(from_b.await.unwrap());
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 400);
        assert_eq!(a.count_jobs().await.unwrap(), JobCounts { running: 400, ..Default::default() });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("orch.db")).await.unwrap());
        let taken = new_job();
        store.insert_job(taken.clone()).await.unwrap();
        // Same id again: it stores its idempotency record, then fails on the job.
        let idempotency = Some(Idempotency {
            key: "k".into(),
            body_hash: "h".into(),
            expires_at: Utc::now() + chrono::TimeDelta::hours(1),
        });
        let failing = NewJob { idempotency: idempotency.clone(), ..taken };
        let inserts = (0..100).map(|i| {
            let store = store.clone();
            let job = if i == 50 { failing.clone() } else { new_job() };
            tokio::spawn(async move { store.insert_job(job).await })
        });
        let mut failed = 0;
        for insert in inserts {
            failed += insert.await.unwrap().is_err() as usize;
        }
        assert_eq!(failed, 1);
        assert_eq!(store.count_jobs().await.unwrap().queued, 100);
        // The failed insert's idempotency record was undone with it.
        let retry = NewJob { idempotency, ..new_job() };
        assert!(matches!(store.insert_job(retry).await.unwrap(), Inserted::Created(_)));
        // Statements say OR FAIL, so the batch's first job is written before the
        // duplicate fails; the command's savepoint takes it back.
        let batch = vec![new_job(), NewJob { idempotency: None, ..failing }, new_job()];
        assert!(store.insert_jobs(batch).await.is_err());
        assert_eq!(store.count_jobs().await.unwrap().queued, 101);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1).unwrap();
        let err = migrate(&conn).unwrap_err().to_string();
        assert!(err.contains("use a newer orch"), "{err}");
    }
}
