//! The Redis backend drains any backlog: the regression test for apalis-redis'
//! defect (its fetch script unpacks every due id at once and fails past ~8,000),
//! and the drain-rate figures.
//!
//! Rates: `cargo test -p orch-store --release --test redis_backlog -- --nocapture`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orch_store::redis::RedisStore;
use orch_store::{Completion, JobError, JobId, JobKind, JobStatus, NewJob, Outcome, Store, new_job_id};
use orch_testkit::RedisServer;
use serde_json::json;

const LEASE: Duration = Duration::from_secs(300);
/// Jobs per claim and per completion batch.
const BATCH: usize = 500;

/// One test at a time, so the printed rates are not shared with another test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn open(server: &RedisServer) -> RedisStore {
    RedisStore::open(&server.url(), "orch").await.expect("open the redis store")
}

fn new_jobs(n: usize, run_at: Option<DateTime<Utc>>) -> Vec<NewJob> {
    (0..n)
        .map(|i| {
            let now = Utc::now();
            NewJob {
                id: new_job_id(),
                kind: JobKind::Batch,
                input: json!({"n": i}),
                metadata: json!({}),
                max_attempts: 3,
                created_at: now,
                run_at: run_at.unwrap_or(now),
                idempotency: None,
                owner: None,
            }
        })
        .collect()
}

fn success(job_id: JobId) -> Completion {
    Completion { job_id, outcome: Outcome::Succeeded { result: json!(null) } }
}

/// Claims and completes (as `outcome` says) until nothing is due or `max` jobs
/// were claimed; returns the claimed ids in order and asserts every completion
/// applied.
async fn drain(store: &RedisStore, worker: &str, max: usize, outcome: impl Fn(JobId) -> Completion) -> Vec<JobId> {
    let mut claimed = Vec::new();
    while claimed.len() < max {
        let jobs = store.claim(worker, BATCH.min(max - claimed.len()), LEASE).await.unwrap();
        if jobs.is_empty() {
            return claimed;
        }
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        let applied = store.complete(worker, ids.iter().map(|&id| outcome(id)).collect()).await.unwrap();
        assert!(applied.iter().all(|&a| a), "every completion of a claimed job applies");
        claimed.extend(ids);
    }
    claimed
}

fn assert_unique(claimed: &[JobId], expected: usize) {
    let unique: HashSet<_> = claimed.iter().collect();
    assert_eq!(unique.len(), claimed.len(), "a job was claimed twice");
    assert_eq!(claimed.len(), expected);
}

/// Drains `n` queued jobs with one worker; returns jobs per second.
async fn drain_rate(store: &RedisStore, n: usize) -> f64 {
    store.insert_jobs(new_jobs(n, None)).await.unwrap();
    let started = Instant::now();
    let claimed = drain(store, "bench", usize::MAX, success).await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    assert_unique(&claimed, n);
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_of_50000_drains_beyond_the_lua_unpack_limit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let store = open(&server).await;

    // Warm-up, then 1,000-job backlogs (repeated: one is over in a blink).
    drain_rate(&store, 1_000).await;
    let mut small = Vec::new();
    for _ in 0..10 {
        small.push(drain_rate(&store, 1_000).await);
    }
    small.sort_by(f64::total_cmp);
    let small = small[small.len() / 2];

    let large = drain_rate(&store, 50_000).await;
    let counts = store.count_jobs().await.unwrap();
    assert_eq!(counts.succeeded, 61_000);
    assert_eq!((counts.queued, counts.running, counts.failed, counts.cancelled), (0, 0, 0, 0));
    println!(
        "redis drain, one worker, claim/complete {BATCH}: backlog 1,000: {small:.0} jobs/s (median of 10); \
         backlog 50,000: {large:.0} jobs/s ({:.2}x)",
        large / small
    );
}

/// The restart case: a backlog of due jobs that sit in the delayed set (not yet
/// due when queued, then retried) is claimed in bounded steps, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_backlog_of_12000_in_the_delayed_set_drains() {
    const N: usize = 12_000;
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let store = open(&server).await;
    let mut raw = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let delayed = async |raw: &mut ::redis::aio::MultiplexedConnection| -> usize {
        ::redis::cmd("ZCARD").arg("orch:delayed").query_async(raw).await.unwrap()
    };

    let due_at = Utc::now() + chrono::Duration::seconds(2);
    store.insert_jobs(new_jobs(N, Some(due_at))).await.unwrap();
    assert_eq!(delayed(&mut raw).await, N);
    let early = store.claim("w", BATCH, LEASE).await.unwrap();
    assert!(early.is_empty() || Utc::now() >= due_at, "nothing is due yet");
    tokio::time::sleep((due_at - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(50)).await;

    // First attempts fail with a retry shortly after: back into the delayed set.
    // The originals are older, so they are all claimed before any retry is.
    let error = JobError::new("step_failed", "boom", true);
    let first = drain(&store, "w", N, |job_id| Completion {
        job_id,
        outcome: Outcome::Failed {
            error: error.clone(),
            retry_at: Some(Utc::now() + chrono::Duration::milliseconds(300)),
        },
    })
    .await;
    assert_unique(&first, N);
    assert_eq!(store.count_jobs().await.unwrap().queued, N as u64);
    assert_eq!(delayed(&mut raw).await, N);

    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = drain(&store, "w", usize::MAX, success).await;
    assert_unique(&second, N);
    assert_eq!(delayed(&mut raw).await, 0);
    let counts = store.count_jobs().await.unwrap();
    assert_eq!((counts.succeeded, counts.queued, counts.running), (N as u64, 0, 0));
    let job = store.get_job(second[N / 2]).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Succeeded, 2));
}

/// Due jobs in the ready list and the delayed set are claimed in one order:
/// oldest `run_at` first.
#[tokio::test]
async fn claim_merges_ready_and_delayed_oldest_first() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let store = open(&server).await;
    let now = Utc::now();
    let at = |ms: i64| Some(now - chrono::Duration::milliseconds(ms));
    // Inserted newest-due first, so all but the first wait in the delayed set.
    let mut jobs = Vec::new();
    for ms in [1_000, 5_000, 3_000, 2_000, 4_000] {
        jobs.extend(new_jobs(1, at(ms)));
    }
    jobs.extend(new_jobs(2, None));
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    for job in jobs {
        store.insert_job(job).await.unwrap();
    }
    let mut order = Vec::new();
    for limit in [2, 1, 3, 5] {
        order.extend(store.claim("w", limit, LEASE).await.unwrap().into_iter().map(|j| j.id));
    }
    assert_eq!(order, vec![ids[1], ids[4], ids[2], ids[3], ids[0], ids[5], ids[6]]);
}

/// Many workers claiming at once never get the same job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_never_share_a_job() {
    const N: usize = 20_000;
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let store = open(&server).await;
    store.insert_jobs(new_jobs(N, None)).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = open(&server).await;
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut claimed = Vec::new();
            loop {
                let jobs = store.claim(&worker, 100, LEASE).await.unwrap();
                if jobs.is_empty() {
                    return claimed;
                }
                let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
                store.complete(&worker, ids.iter().copied().map(success).collect()).await.unwrap();
                claimed.extend(ids);
            }
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    assert_unique(&claimed, N);
    assert_eq!(store.count_jobs().await.unwrap().succeeded, N as u64);
}

/// Purge reads the log of finished jobs from its head: a job finished on a clock
/// that ran ahead holds back the ones behind it until it is old enough itself,
/// and jobs in the sorted set that came before the log are still purged.
#[tokio::test]
async fn purge_follows_the_finished_log_and_drains_the_older_set() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let store = open(&server).await;
    let mut raw = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let jobs = new_jobs(3, None);
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    store.insert_jobs(jobs).await.unwrap();
    assert_eq!(drain(&store, "w", usize::MAX, success).await.len(), 3);
    let log: Vec<String> =
        ::redis::cmd("LRANGE").arg("orch:finished:log").arg(0).arg(-1).query_async(&mut raw).await.unwrap();
    assert_eq!(log, ids.iter().map(|id| id.to_string()).collect::<Vec<_>>(), "the log is in finishing order");

    // The first job's worker clock ran a minute ahead; the third job was finished
    // by an Orch that kept a sorted set by finish time.
    let now = Utc::now();
    let ahead = (now + chrono::Duration::seconds(60)).timestamp_millis();
    let _: () = ::redis::cmd("HSET")
        .arg(format!("orch:job:{}", ids[0]))
        .arg("finished_at")
        .arg(ahead)
        .query_async(&mut raw)
        .await
        .unwrap();
    let third = ids[2].to_string();
    let _: () = ::redis::cmd("LREM").arg("orch:finished:log").arg(1).arg(&third).query_async(&mut raw).await.unwrap();
    let _: () = ::redis::cmd("ZADD")
        .arg("orch:finished")
        .arg(now.timestamp_millis())
        .arg(&third)
        .query_async(&mut raw)
        .await
        .unwrap();

    let soon = now + chrono::Duration::seconds(1);
    assert_eq!(store.purge(soon, 100).await.unwrap(), 1, "only the job in the older set is old enough to reach");
    assert!(store.get_job(ids[2]).await.unwrap().is_none());
    assert!(store.get_job(ids[1]).await.unwrap().is_some(), "the job behind the one finished ahead was purged early");
    let old: usize = ::redis::cmd("ZCARD").arg("orch:finished").query_async(&mut raw).await.unwrap();
    assert_eq!(old, 0, "the older set was not drained");

    assert_eq!(store.purge(now + chrono::Duration::seconds(61), 100).await.unwrap(), 2);
    for id in &ids {
        assert!(store.get_job(*id).await.unwrap().is_none(), "job {id} outlived the purge");
    }
    let left: usize = ::redis::cmd("LLEN").arg("orch:finished:log").query_async(&mut raw).await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(store.count_jobs().await.unwrap().succeeded, 0);
}

/// Calls of each command since the last `CONFIG RESETSTAT` (commands run by
/// Lua scripts included), leaving out the two this measurement sends.
async fn command_calls(raw: &mut ::redis::aio::MultiplexedConnection) -> std::collections::BTreeMap<String, u64> {
    let info: String = ::redis::cmd("INFO").arg("commandstats").query_async(raw).await.unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            (!["info", "config|resetstat"].contains(&name)).then(|| (name.to_owned(), calls))
        })
        .collect()
}

/// The Redis commands (and script calls) of claiming and completing one batch.
async fn claim_cost(
    store: &RedisStore,
    raw: &mut ::redis::aio::MultiplexedConnection,
) -> std::collections::BTreeMap<String, u64> {
    let _: () = ::redis::cmd("CONFIG").arg("RESETSTAT").query_async(raw).await.unwrap();
    let claimed = drain(store, "w", BATCH, success).await;
    assert_eq!(claimed.len(), BATCH);
    command_calls(raw).await
}

/// What `backlog_of_50000_drains_beyond_the_lua_unpack_limit` can only print
/// as a rate, counted: claiming and completing a batch sends the same Redis
/// commands, as many times, with 50,000 jobs queued as with 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_s_redis_commands_do_not_grow_with_the_backlog() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let store = open(&server).await;
    let mut raw = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();

    // The first claim and completion also load their scripts: not measured.
    store.insert_jobs(new_jobs(1_000 + BATCH, None)).await.unwrap();
    claim_cost(&store, &mut raw).await;
    let shallow = claim_cost(&store, &mut raw).await;
    assert!(shallow.values().sum::<u64>() > 0, "no commands counted: {shallow:?}");
    store.insert_jobs(new_jobs(50_000, None)).await.unwrap();
    let deep = claim_cost(&store, &mut raw).await;
    assert_eq!(deep, shallow, "commands per claimed and completed batch of {BATCH}, 50,000 queued vs 1,000");
}
