//! Deep backlogs on each backend: 1,000 and 50,000 queued jobs drain
//! completely, and concurrent single inserts are all stored. These tests assert
//! correctness only; the rates they print are not asserted, because times on a
//! shared machine swing too much to pin. That a claim's cost does not grow
//! with the backlog is asserted in counts instead, by
//! `a_claim_s_statement_steps_do_not_grow_with_the_backlog` (store/src/sqlite.rs)
//! and `a_claim_s_redis_commands_do_not_grow_with_the_backlog`
//! (tests/redis_backlog.rs); the drain-rate benchmark is `orch bench queue`.
//! For the printed figures: `cargo test -p orch-store --release --test backlog -- --nocapture`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orch_store::*;
use serde_json::json;
use support::{now_ms, on_each_backend};

const LEASE: Duration = Duration::from_secs(300);
const CLAIM_BATCH: usize = 500;

/// Measurements run one at a time so they do not share the two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn new_job(i: usize) -> NewJob {
    let now = now_ms();
    NewJob {
        id: new_job_id(),
        kind: JobKind::Chat,
        input: json!({"prompt": format!("job {i}")}),
        metadata: json!({}),
        max_attempts: 3,
        created_at: now,
        run_at: now,
        idempotency: None,
        owner: None,
    }
}

fn rate(jobs: usize, elapsed: Duration) -> f64 {
    jobs as f64 / elapsed.as_secs_f64()
}

/// Loads `n` jobs, then claims and completes until none is left; returns the
/// load and drain times.
async fn load_and_drain(store: &Arc<dyn Store>, n: usize) -> (Duration, Duration) {
    let loading = Instant::now();
    for chunk_start in (0..n).step_by(10_000) {
        let jobs = (chunk_start..n.min(chunk_start + 10_000)).map(new_job).collect();
        store.insert_jobs(jobs).await.unwrap();
    }
    let load_time = loading.elapsed();

    let draining = Instant::now();
    let mut drained = 0;
    // Drain rate of each tenth of the backlog: flat when a claim's cost does not
    // depend on how many jobs are still queued.
    let mut tenths = Vec::new();
    let mut tenth_started = Instant::now();
    loop {
        let claimed = store.claim("bench", CLAIM_BATCH, LEASE).await.unwrap();
        if claimed.is_empty() {
            break;
        }
        let completions: Vec<Completion> = claimed
            .iter()
            .map(|job| Completion { job_id: job.id, outcome: Outcome::Succeeded { result: json!({"ok": true}) } })
            .collect();
        let applied = store.complete("bench", completions).await.unwrap();
        assert!(applied.iter().all(|&a| a), "a completion of a freshly claimed job was refused");
        drained += claimed.len();
        if drained % (n / 10) == 0 {
            tenths.push(format!("{:.0}", rate(n / 10, tenth_started.elapsed())));
            tenth_started = Instant::now();
        }
    }
    let drain_time = draining.elapsed();
    assert_eq!(drained, n);
    if n >= 10 * CLAIM_BATCH {
        println!("[{}] backlog {n:>6}: jobs/s per tenth drained: {}", store.backend(), tenths.join(" "));
    }
    (load_time, drain_time)
}

async fn a_deep_backlog_drains_completely(store: Arc<dyn Store>) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let backend = store.backend();
    // A 1,000 backlog drains in tens of milliseconds: take several for a stable figure.
    const ROUNDS: usize = 5;
    let (mut load, mut drain) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let (l, d) = load_and_drain(&store, 1_000).await;
        (load, drain) = (load + l, drain + d);
    }
    assert_eq!(store.count_jobs().await.unwrap(), JobCounts { succeeded: 5_000, ..Default::default() });
    let shallow = rate(ROUNDS * 1_000, drain);
    println!(
        "[{backend}] backlog   1000: loaded at {:>6.0} jobs/s, drained at {shallow:>6.0} jobs/s",
        rate(5_000, load)
    );

    let (load, drain) = load_and_drain(&store, 50_000).await;
    assert_eq!(store.count_jobs().await.unwrap(), JobCounts { succeeded: 55_000, ..Default::default() });
    let deep = rate(50_000, drain);
    println!("[{backend}] backlog  50000: loaded at {:>6.0} jobs/s, drained at {deep:>6.0} jobs/s", rate(50_000, load));
    println!("[{backend}] the 50,000 backlog drains at {:.2}x the 1,000 rate", deep / shallow);
}

async fn concurrent_inserts_are_all_stored(store: Arc<dyn Store>) {
    const JOBS: usize = 10_000;
    const TASKS: usize = 64;
    let _turn = ONE_AT_A_TIME.lock().await;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < JOBS {
                    let inserted = store.insert_job(new_job(0)).await.unwrap();
                    assert!(matches!(inserted, Inserted::Created(_)), "{inserted:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(store.count_jobs().await.unwrap(), JobCounts { queued: JOBS as u64, ..Default::default() });
    println!(
        "[{}] {TASKS} tasks inserted {JOBS} jobs one by one at {:.0} jobs/s",
        store.backend(),
        rate(JOBS, elapsed)
    );
}

on_each_backend!(a_deep_backlog_drains_completely, concurrent_inserts_are_all_stored);
