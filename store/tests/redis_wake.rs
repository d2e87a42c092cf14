//! Wake-ups across processes over Redis pub/sub (issue 17 §1): two stores on one
//! Redis stand for two processes; what one writes wakes the other's waiters at
//! once, per job, and again after Redis restarts.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use orch_store::redis::RedisStore;
use orch_store::{JobKind, NewJob, Store, new_job_id};
use orch_testkit::RedisServer;
use serde_json::json;

const LEASE: Duration = Duration::from_secs(300);
const SOON: Duration = Duration::from_secs(1);

async fn open(server: &RedisServer) -> RedisStore {
    RedisStore::open(&server.url(), "orch").await.expect("open the redis store")
}

fn new_job(delay: TimeDelta) -> NewJob {
    let now = Utc::now();
    NewJob {
        id: new_job_id(),
        kind: JobKind::Batch,
        input: json!({}),
        metadata: json!({}),
        max_attempts: 3,
        created_at: now,
        run_at: now + delay,
        idempotency: None,
        owner: None,
    }
}

/// Lets the subscriber of `store` connect and subscribe what it watches.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn another_process_wakes_workers_and_followers_per_job() {
    let server = RedisServer::start();
    let (here, there) = (open(&server).await, open(&server).await);
    settle().await;

    // A job queued by another process wakes this one's idle workers.
    let ready = here.notifier().jobs().notified();
    let job = new_job(TimeDelta::zero());
    let id = job.id;
    there.insert_job(job).await.unwrap();
    tokio::time::timeout(SOON, ready).await.expect("a job queued elsewhere wakes workers");

    // A follower of that job is woken by another process's claim; a follower
    // of another job is not.
    let watch = here.notifier().watch(id);
    let other = here.notifier().watch(new_job_id());
    settle().await;
    {
        let (woken, not_woken) = (watch.changed(), other.changed());
        tokio::pin!(not_woken);
        assert_eq!(there.claim("w1", 1, LEASE).await.unwrap().len(), 1);
        tokio::time::timeout(SOON, woken).await.expect("an event written elsewhere wakes the job's followers");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut not_woken).await.is_err(),
            "an event of one job wakes no follower of another"
        );
    }
    drop((watch, other));
    settle().await;
    assert_eq!(here.notifier().watched_count(), 0);
}

#[tokio::test]
async fn a_delayed_job_wakes_workers_when_it_is_due() {
    let server = RedisServer::start();
    let (here, there) = (open(&server).await, open(&server).await);
    settle().await;
    there.insert_job(new_job(TimeDelta::milliseconds(700))).await.unwrap();
    // The insert itself wakes nobody for a job not yet due ...
    let ready = here.notifier().jobs().notified();
    tokio::pin!(ready);
    assert!(tokio::time::timeout(Duration::from_millis(400), &mut ready).await.is_err(), "woken before due");
    // ... its due time does.
    tokio::time::timeout(SOON, ready).await.expect("woken when the delayed job is due");
    assert_eq!(here.claim("w1", 1, LEASE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn wake_ups_resume_after_redis_restarts() {
    let mut server = RedisServer::start();
    let (here, there) = (open(&server).await, open(&server).await);
    let job = new_job(TimeDelta::zero());
    let id = job.id;
    there.insert_job(job).await.unwrap();
    let watch = here.notifier().watch(id);
    settle().await;

    server.stop();
    // Reconnecting wakes every waiter once: what happened meanwhile is unknown.
    let after_reconnect = (watch.changed(), here.notifier().jobs().notified());
    server.restart();
    tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(after_reconnect.0, after_reconnect.1) })
        .await
        .expect("the reconnect wakes followers and workers");
    settle().await;

    // Wake-ups flow again, both kinds.
    let ready = here.notifier().jobs().notified();
    // The other store's connection notices the restart on its first use.
    while there.insert_job(new_job(TimeDelta::zero())).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(SOON, ready).await.expect("jobs queued after the restart wake workers");
    let woken = watch.changed();
    let claimed = loop {
        // The other store's connection may need a moment too.
        match there.claim("w1", 1, LEASE).await {
            Ok(jobs) => break jobs,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(claimed.iter().any(|j| j.id == id), "the oldest job is claimed first");
    tokio::time::timeout(SOON, woken).await.expect("events after the restart wake followers");
}
