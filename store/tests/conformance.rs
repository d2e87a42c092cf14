//! The behaviour every store backend must share, run on SQLite and on Redis.
//!
//! Each test is an `async fn(Arc<dyn Store>)` given a fresh, empty store; the
//! `on_each_backend!` list at the end runs it as `sqlite::<name>` and
//! `redis::<name>`.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use orch_store::*;
use serde_json::{Value, json};
use support::{now_ms, on_each_backend};

const LEASE: Duration = Duration::from_secs(60);

fn new_job(kind: JobKind) -> NewJob {
    let now = now_ms();
    NewJob {
        id: new_job_id(),
        kind,
        input: json!({"prompt": "summarise the notes", "provider": "claude"}),
        metadata: json!({"workflow": "n8n-42"}),
        max_attempts: 3,
        created_at: now,
        run_at: now,
        idempotency: None,
        owner: None,
    }
}

fn job_due_at(run_at: DateTime<Utc>) -> NewJob {
    NewJob { run_at, ..new_job(JobKind::Chat) }
}

fn with_key(key: &str, body_hash: &str, expires_at: DateTime<Utc>) -> NewJob {
    let idempotency = Some(Idempotency { key: key.into(), body_hash: body_hash.into(), expires_at });
    NewJob { idempotency, ..new_job(JobKind::Chat) }
}

async fn insert(store: &Arc<dyn Store>, job: NewJob) -> Job {
    match store.insert_job(job).await.unwrap() {
        Inserted::Created(job) => job,
        other => panic!("expected a new job, got {other:?}"),
    }
}

async fn get(store: &Arc<dyn Store>, id: JobId) -> Job {
    store.get_job(id).await.unwrap().expect("job exists")
}

/// A job claimed by `worker` with the given lease.
async fn running(store: &Arc<dyn Store>, worker: &str, max_attempts: u32, lease: Duration) -> Job {
    let job = insert(store, NewJob { max_attempts, ..new_job(JobKind::Chat) }).await;
    let claimed = store.claim(worker, 1, lease).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, job.id);
    claimed.into_iter().next().unwrap()
}

async fn complete(store: &Arc<dyn Store>, worker: &str, job_id: JobId, outcome: Outcome) -> bool {
    let applied = store.complete(worker, vec![Completion { job_id, outcome }]).await.unwrap();
    assert_eq!(applied.len(), 1);
    applied[0]
}

fn succeeded(result: Value) -> Outcome {
    Outcome::Succeeded { result }
}

fn step_failed() -> JobError {
    JobError::new("step_failed", "node fetch: HTTP 502 from the MCP server", true)
}

async fn all_events(store: &Arc<dyn Store>, id: JobId) -> Vec<JobEvent> {
    store.events(id, 0, 1000).await.unwrap()
}

async fn last_event(store: &Arc<dyn Store>, id: JobId) -> (String, Value) {
    let event = all_events(store, id).await.pop().expect("job has events");
    (event.kind, event.data)
}

/// `retry_at` as events carry it: chrono's serialization at millisecond precision.
fn retry_at_json(t: DateTime<Utc>) -> Value {
    json!(from_millis(to_millis(t)))
}

fn worker_info(id: &str, running: u32) -> WorkerInfo {
    let now = now_ms();
    WorkerInfo {
        id: id.into(),
        hostname: "box-1".into(),
        pid: 4242,
        started_at: now - TimeDelta::minutes(5),
        last_seen: now,
        concurrency: 8,
        running,
    }
}

fn api_key(id: &str, created_at: DateTime<Utc>) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: format!("{id} key"),
        prefix: format!("orch_{id}"),
        scopes: vec!["jobs:write".into(), "admin".into()],
        servers: None,
        created_at,
        revoked_at: None,
        expires_at: None,
        tools: None,
        providers: None,
        last_used_at: None,
        rotated_until: None,
        rate_limit_per_minute: None,
        jobs_per_day: None,
    }
}

fn audit_entry(i: u64, at: DateTime<Utc>, key: &str, action: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        at,
        key_id: Some(key.into()),
        key_name: Some(format!("{key} key")),
        action: action.into(),
        method: "POST".into(),
        route: "/v1/tools/{server}/{tool}".into(),
        target_kind: Some("tool".into()),
        target: Some(format!("github.tool_{i}")),
        job_id: (i.is_multiple_of(2)).then(new_job_id),
        outcome: if i.is_multiple_of(3) { "error".into() } else { "ok".into() },
        status: Some(if i.is_multiple_of(3) { 502 } else { 200 }),
    }
}

fn stored_server(name: &str, config: Value, at: DateTime<Utc>) -> StoredServer {
    StoredServer { name: name.into(), config, created_at: at, updated_at: at }
}

fn sorted(mut ids: Vec<JobId>) -> Vec<JobId> {
    ids.sort();
    ids
}

// --- inserting ---

async fn inserted_job_is_queued_and_readable(store: Arc<dyn Store>) {
    let new = new_job(JobKind::Batch);
    let job = insert(&store, new.clone()).await;
    let expected = Job {
        id: new.id,
        kind: JobKind::Batch,
        status: JobStatus::Queued,
        input: new.input,
        metadata: new.metadata,
        attempts: 0,
        max_attempts: 3,
        progress: None,
        error: None,
        created_at: new.created_at,
        updated_at: new.created_at,
        run_at: new.run_at,
        started_at: None,
        finished_at: None,
        cancel_requested: false,
        worker: None,
        lease_expires_at: None,
        owner: None,
    };
    assert_eq!(job, expected);
    assert_eq!(get(&store, new.id).await, expected);
}

async fn unknown_job_is_none(store: Arc<dyn Store>) {
    assert_eq!(store.get_job(new_job_id()).await.unwrap(), None);
    assert_eq!(store.get_result(new_job_id()).await.unwrap(), None);
    assert!(store.events(new_job_id(), 0, 10).await.unwrap().is_empty());
}

async fn inserted_job_has_queued_event(store: Arc<dyn Store>) {
    let job = insert(&store, new_job(JobKind::Chat)).await;
    let events = all_events(&store, job.id).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].seq, events[0].job_id), (1, job.id));
    assert_eq!(events[0].kind, "queued");
    assert_eq!(events[0].data, json!({"status": "queued"}));
}

async fn insert_wakes_job_and_event_waiters(store: Arc<dyn Store>) {
    let jobs = store.notifier().jobs().notified();
    insert(&store, new_job(JobKind::Chat)).await;
    tokio::time::timeout(Duration::from_secs(1), jobs).await.expect("insert_job notifies jobs");
}

async fn bulk_insert_stores_every_job_queued(store: Arc<dyn Store>) {
    let jobs: Vec<NewJob> = (0..20).map(|_| new_job(JobKind::Batch)).collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    store.insert_jobs(jobs).await.unwrap();
    assert_eq!(store.count_jobs().await.unwrap(), JobCounts { queued: 20, ..Default::default() });
    for id in ids {
        assert_eq!(get(&store, id).await.status, JobStatus::Queued);
        assert_eq!(last_event(&store, id).await, ("queued".into(), json!({"status": "queued"})));
    }
}

// --- idempotency ---

async fn repeat_with_same_body_returns_first_job(store: Arc<dyn Store>) {
    let expires = now_ms() + TimeDelta::hours(24);
    let first = insert(&store, with_key("key1:order-7", "hash-a", expires)).await;
    let repeat = with_key("key1:order-7", "hash-a", expires);
    let repeat_id = repeat.id;
    match store.insert_job(repeat).await.unwrap() {
        Inserted::Existing(job) => assert_eq!(job, first),
        other => panic!("expected the first job, got {other:?}"),
    }
    assert_eq!(store.get_job(repeat_id).await.unwrap(), None);
    assert_eq!(store.count_jobs().await.unwrap().queued, 1);
}

async fn repeat_with_other_body_conflicts(store: Arc<dyn Store>) {
    let expires = now_ms() + TimeDelta::hours(24);
    let first = insert(&store, with_key("key1:order-7", "hash-a", expires)).await;
    let other = with_key("key1:order-7", "hash-b", expires);
    let other_id = other.id;
    match store.insert_job(other).await.unwrap() {
        Inserted::Conflict { job_id } => assert_eq!(job_id, first.id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get_job(other_id).await.unwrap(), None);
}

async fn expired_idempotency_key_creates_a_new_job(store: Arc<dyn Store>) {
    let expired = now_ms() - TimeDelta::seconds(1);
    let first = insert(&store, with_key("key1:order-7", "hash-a", expired)).await;
    let again = insert(&store, with_key("key1:order-7", "hash-a", now_ms() + TimeDelta::hours(1))).await;
    assert_ne!(again.id, first.id);
    // The new record now holds the key.
    match store.insert_job(with_key("key1:order-7", "hash-a", now_ms())).await.unwrap() {
        Inserted::Existing(job) => assert_eq!(job.id, again.id),
        other => panic!("expected the second job, got {other:?}"),
    }
}

async fn idempotency_keys_are_independent(store: Arc<dyn Store>) {
    let expires = now_ms() + TimeDelta::hours(1);
    let a = insert(&store, with_key("key1:x", "hash-a", expires)).await;
    let b = insert(&store, with_key("key2:x", "hash-a", expires)).await;
    assert_ne!(a.id, b.id);
}

// --- claiming ---

async fn claim_takes_oldest_due_first(store: Arc<dyn Store>) {
    let now = now_ms();
    let at = |secs: i64| now - TimeDelta::seconds(secs);
    let j0 = insert(&store, job_due_at(at(1))).await.id;
    let j1 = insert(&store, job_due_at(at(3))).await.id;
    let j2 = insert(&store, job_due_at(at(2))).await.id;
    let j3 = insert(&store, job_due_at(at(3))).await.id; // same run_at as j1, later id
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(store.claim("w1", 3, LEASE).await.unwrap()), [j1, j3, j2]);
    assert_eq!(ids(store.claim("w1", 3, LEASE).await.unwrap()), [j0]);
    assert!(store.claim("w1", 3, LEASE).await.unwrap().is_empty());
}

async fn claimed_job_runs_under_a_lease(store: Arc<dyn Store>) {
    let queued = insert(&store, new_job(JobKind::Chat)).await;
    let before = now_ms();
    let claimed = store.claim("w1", 10, LEASE).await.unwrap();
    let after = Utc::now();
    assert_eq!(claimed.len(), 1);
    let job = &claimed[0];
    assert_eq!((job.id, job.status, job.attempts), (queued.id, JobStatus::Running, 1));
    assert_eq!(job.worker.as_deref(), Some("w1"));
    let started = job.started_at.expect("started_at is set");
    assert!(before <= started && started <= after, "{started} not within the call");
    assert_eq!(job.updated_at, started);
    assert_eq!(job.lease_expires_at, Some(started + TimeDelta::from_std(LEASE).unwrap()));
    assert_eq!(&get(&store, job.id).await, job);
    assert_eq!(last_event(&store, job.id).await, ("running".into(), json!({"status": "running", "attempts": 1})));
}

async fn claim_leaves_jobs_not_yet_due(store: Arc<dyn Store>) {
    let later = insert(&store, job_due_at(now_ms() + TimeDelta::hours(1))).await;
    assert!(store.claim("w1", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(get(&store, later.id).await.status, JobStatus::Queued);
}

async fn claim_respects_limit(store: Arc<dyn Store>) {
    store.insert_jobs((0..5).map(|_| new_job(JobKind::Chat)).collect()).await.unwrap();
    assert_eq!(store.claim("w1", 2, LEASE).await.unwrap().len(), 2);
    assert_eq!(store.count_jobs().await.unwrap(), JobCounts { queued: 3, running: 2, ..Default::default() });
}

async fn concurrent_claimers_never_share_a_job(store: Arc<dyn Store>) {
    let jobs: Vec<NewJob> = (0..300).map(|_| new_job(JobKind::Chat)).collect();
    let all: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    store.insert_jobs(jobs).await.unwrap();
    let claimer = |worker: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.claim(worker, 7, LEASE).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                assert!(batch.iter().all(|j| j.worker.as_deref() == Some(worker) && j.attempts == 1));
                got.extend(batch.into_iter().map(|j| j.id));
            }
        })
    };
    let (a, b) = (claimer("w1"), claimer("w2"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let both: Vec<JobId> = a.iter().chain(&b).copied().collect();
    assert_eq!(both.iter().collect::<HashSet<_>>().len(), both.len(), "a job was claimed twice");
    assert_eq!(sorted(both), sorted(all));
    assert_eq!(store.count_jobs().await.unwrap(), JobCounts { running: 300, ..Default::default() });
}

// --- heartbeats ---

async fn heartbeat_extends_the_lease(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, Duration::from_secs(1)).await;
    let stop = store.heartbeat(&worker_info("w1", 1), &[job.id], Duration::from_secs(3600)).await.unwrap();
    assert!(stop.is_empty(), "{stop:?}");
    let lease = get(&store, job.id).await.lease_expires_at.unwrap();
    assert!(lease > Utc::now() + TimeDelta::minutes(59), "lease not extended: {lease}");
}

/// A worker stopping at its shutdown grace hands its jobs back at once: no
/// lease wait; the attempt counts; another worker's job is left alone.
async fn released_jobs_are_recovered_at_once(store: Arc<dyn Store>) {
    let mine = running(&store, "w1", 3, Duration::from_secs(3600)).await;
    let foreign = running(&store, "w2", 3, Duration::from_secs(3600)).await;
    store.release(&worker_info("w1", 0), &[mine.id, foreign.id]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.recover_expired(Utc::now(), 100).await.unwrap(), 1);
    let queued = get(&store, mine.id).await;
    assert_eq!((queued.status, queued.attempts, queued.worker), (JobStatus::Queued, 1, None));
    let still = get(&store, foreign.id).await;
    assert_eq!((still.status, still.lease_expires_at), (JobStatus::Running, foreign.lease_expires_at));
}

async fn heartbeat_reports_cancel_requests(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    let other = running(&store, "w1", 3, LEASE).await;
    store.cancel_job(job.id).await.unwrap();
    let stop = store.heartbeat(&worker_info("w1", 2), &[job.id, other.id], LEASE).await.unwrap();
    assert_eq!(stop, [job.id]);
    assert_eq!(get(&store, job.id).await.status, JobStatus::Running);
}

async fn heartbeat_reports_jobs_the_worker_does_not_hold(store: Arc<dyn Store>) {
    let foreign = running(&store, "w2", 3, Duration::from_secs(30)).await;
    let finished = running(&store, "w1", 3, LEASE).await;
    assert!(complete(&store, "w1", finished.id, succeeded(json!(1))).await);
    let queued = insert(&store, new_job(JobKind::Chat)).await;
    let unknown = new_job_id();
    let asked = [foreign.id, finished.id, queued.id, unknown];
    let stop = store.heartbeat(&worker_info("w1", 0), &asked, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(sorted(stop), sorted(asked.to_vec()));
    assert_eq!(get(&store, foreign.id).await.lease_expires_at, foreign.lease_expires_at);
}

async fn workers_lists_those_seen_since(store: Arc<dyn Store>) {
    let info = worker_info("w1", 1);
    store.heartbeat(&info, &[], LEASE).await.unwrap();
    assert_eq!(store.workers(info.last_seen - TimeDelta::minutes(1)).await.unwrap(), vec![info.clone()]);
    assert_eq!(store.workers(info.last_seen).await.unwrap(), vec![info.clone()]);
    assert!(store.workers(info.last_seen + TimeDelta::minutes(1)).await.unwrap().is_empty());
    let later = WorkerInfo { running: 3, last_seen: info.last_seen + TimeDelta::seconds(5), ..info };
    store.heartbeat(&later, &[], LEASE).await.unwrap();
    assert_eq!(store.workers(later.last_seen - TimeDelta::minutes(1)).await.unwrap(), [later]);
}

// --- completing ---

async fn success_stores_the_result(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    assert_eq!(store.get_result(job.id).await.unwrap(), None);
    let result = json!({"text": "done", "usage": {"tokens": 12}});
    assert!(complete(&store, "w1", job.id, succeeded(result.clone())).await);
    let done = get(&store, job.id).await;
    assert_eq!((done.status, done.attempts, done.error), (JobStatus::Succeeded, 1, None));
    assert_eq!((done.worker, done.lease_expires_at), (None, None));
    let finished = done.finished_at.expect("finished_at is set");
    assert!(finished >= job.started_at.unwrap());
    assert_eq!(done.updated_at, finished);
    assert_eq!(store.get_result(job.id).await.unwrap(), Some(result));
    assert_eq!(last_event(&store, job.id).await, ("succeeded".into(), json!({"status": "succeeded", "attempts": 1})));
}

async fn completion_from_another_worker_is_refused(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    assert!(!complete(&store, "w2", job.id, succeeded(json!(1))).await);
    assert_eq!(get(&store, job.id).await, job);
    assert_eq!(store.get_result(job.id).await.unwrap(), None);
}

async fn completion_applies_once(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    let applied = store
        .complete(
            "w1",
            vec![
                Completion { job_id: job.id, outcome: succeeded(json!("first")) },
                Completion { job_id: job.id, outcome: succeeded(json!("second")) },
                Completion { job_id: new_job_id(), outcome: Outcome::Cancelled },
            ],
        )
        .await
        .unwrap();
    assert_eq!(applied, [true, false, false]);
    assert_eq!(store.get_result(job.id).await.unwrap(), Some(json!("first")));
}

async fn owner_completes_after_its_lease_lapsed_until_recovered(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(complete(&store, "w1", job.id, succeeded(json!(1))).await);
    assert_eq!(get(&store, job.id).await.status, JobStatus::Succeeded);
}

async fn failure_with_retry_requeues_for_later(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    let retry_at = Utc::now() + TimeDelta::hours(1);
    let outcome = Outcome::Failed { error: step_failed(), retry_at: Some(retry_at) };
    assert!(complete(&store, "w1", job.id, outcome).await);
    let queued = get(&store, job.id).await;
    assert_eq!((queued.status, queued.attempts), (JobStatus::Queued, 1));
    assert_eq!(queued.run_at, from_millis(to_millis(retry_at)));
    assert_eq!(queued.error, Some(step_failed()));
    assert_eq!((queued.worker, queued.lease_expires_at, queued.finished_at), (None, None, None));
    assert!(store.claim("w1", 10, LEASE).await.unwrap().is_empty(), "claimed before retry_at");
    let expected =
        json!({"status": "queued", "attempts": 1, "error": step_failed(), "retry_at": retry_at_json(retry_at)});
    assert_eq!(last_event(&store, job.id).await, ("retrying".into(), expected));
}

async fn due_retry_runs_again_as_attempt_two(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    let outcome = Outcome::Failed { error: step_failed(), retry_at: Some(now_ms() - TimeDelta::milliseconds(1)) };
    assert!(complete(&store, "w1", job.id, outcome).await);
    let again = store.claim("w2", 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts, again[0].status), (job.id, 2, JobStatus::Running));
    assert_eq!(again[0].worker.as_deref(), Some("w2"));
    assert_eq!(again[0].error, Some(step_failed()), "the last attempt's error is kept while running");
    assert!(complete(&store, "w2", job.id, succeeded(json!("ok"))).await);
    let done = get(&store, job.id).await;
    assert_eq!((done.status, done.attempts, done.error), (JobStatus::Succeeded, 2, None));
}

async fn failure_without_retry_is_final(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    assert!(complete(&store, "w1", job.id, Outcome::Failed { error: step_failed(), retry_at: None }).await);
    let failed = get(&store, job.id).await;
    assert_eq!((failed.status, failed.error.clone()), (JobStatus::Failed, Some(step_failed())));
    assert!(failed.finished_at.is_some());
    assert_eq!((failed.worker.clone(), failed.lease_expires_at), (None, None));
    assert_eq!(store.get_result(job.id).await.unwrap(), None);
    assert!(store.claim("w1", 10, LEASE).await.unwrap().is_empty());
    let expected = json!({"status": "failed", "attempts": 1, "error": step_failed()});
    assert_eq!(last_event(&store, job.id).await, ("failed".into(), expected));
    assert_eq!(store.cancel_job(job.id).await.unwrap(), Some(failed));
}

async fn cancelled_attempt_is_final(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    store.cancel_job(job.id).await.unwrap();
    assert!(complete(&store, "w1", job.id, Outcome::Cancelled).await);
    let cancelled = get(&store, job.id).await;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert_eq!((cancelled.worker, cancelled.lease_expires_at), (None, None));
    assert_eq!(last_event(&store, job.id).await, ("cancelled".into(), json!({"status": "cancelled", "attempts": 1})));
}

async fn progress_is_recorded_for_the_lease_holder_only(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    let queued = insert(&store, new_job(JobKind::Chat)).await;
    store.record_progress("w2", job.id, json!({"node": "fetch"})).await.unwrap();
    store.record_progress("w1", queued.id, json!({"node": "fetch"})).await.unwrap();
    assert_eq!(get(&store, job.id).await.progress, None);
    assert_eq!(all_events(&store, job.id).await.len(), 2);
    assert_eq!(all_events(&store, queued.id).await.len(), 1);

    let progress = json!({"node": "fetch", "done": 1, "total": 3});
    store.record_progress("w1", job.id, progress.clone()).await.unwrap();
    let updated = get(&store, job.id).await;
    assert_eq!(updated.progress, Some(progress.clone()));
    assert!(updated.updated_at >= job.updated_at);
    assert_eq!(last_event(&store, job.id).await, ("progress".into(), progress));
}

// --- cancelling ---

async fn cancelling_a_queued_job_ends_it(store: Arc<dyn Store>) {
    let job = insert(&store, new_job(JobKind::Chat)).await;
    let cancelled = store.cancel_job(job.id).await.unwrap().expect("known job");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert_eq!(get(&store, job.id).await, cancelled);
    assert!(store.claim("w1", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(last_event(&store, job.id).await, ("cancelled".into(), json!({"status": "cancelled", "attempts": 0})));
}

async fn cancelling_a_running_job_asks_its_worker(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    let requested = store.cancel_job(job.id).await.unwrap().expect("known job");
    assert_eq!((requested.status, requested.cancel_requested), (JobStatus::Running, true));
    assert_eq!(requested.worker.as_deref(), Some("w1"));
    assert_eq!(get(&store, job.id).await, requested);
    assert_eq!(all_events(&store, job.id).await.len(), 2, "no event until the worker stops");
}

async fn cancelling_a_finished_job_changes_nothing(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    assert!(complete(&store, "w1", job.id, succeeded(json!(1))).await);
    let done = get(&store, job.id).await;
    assert_eq!(store.cancel_job(job.id).await.unwrap(), Some(done.clone()));
    assert_eq!(get(&store, job.id).await, done);
    assert_eq!(all_events(&store, job.id).await.len(), 3);
}

async fn cancelling_an_unknown_job_is_none(store: Arc<dyn Store>) {
    assert_eq!(store.cancel_job(new_job_id()).await.unwrap(), None);
}

// --- recovering jobs of dead workers ---

fn worker_lost(worker: &str) -> JobError {
    JobError::new("worker_lost", format!("worker {worker} stopped heartbeating; its lease expired"), true)
}

async fn unexpired_leases_are_left_alone(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    assert_eq!(store.recover_expired(Utc::now(), 10).await.unwrap(), 0);
    assert_eq!(get(&store, job.id).await, job);
}

async fn expired_job_with_attempts_left_is_requeued(store: Arc<dyn Store>) {
    let job = running(&store, "w-dead", 3, LEASE).await;
    let now = Utc::now() + TimeDelta::minutes(2);
    assert_eq!(store.recover_expired(now, 10).await.unwrap(), 1);
    let queued = get(&store, job.id).await;
    assert_eq!((queued.status, queued.attempts), (JobStatus::Queued, 1));
    assert_eq!(queued.run_at, from_millis(to_millis(now)));
    assert_eq!(queued.error, Some(worker_lost("w-dead")));
    assert_eq!((queued.worker, queued.lease_expires_at, queued.finished_at), (None, None, None));
    let expected =
        json!({"status": "queued", "attempts": 1, "error": worker_lost("w-dead"), "retry_at": retry_at_json(now)});
    assert_eq!(last_event(&store, job.id).await, ("retrying".into(), expected));
    assert!(!complete(&store, "w-dead", job.id, succeeded(json!(1))).await, "the dead worker lost its lease");
}

async fn expired_job_out_of_attempts_fails(store: Arc<dyn Store>) {
    let job = running(&store, "w-dead", 1, LEASE).await;
    assert_eq!(store.recover_expired(Utc::now() + TimeDelta::minutes(2), 10).await.unwrap(), 1);
    let failed = get(&store, job.id).await;
    assert_eq!((failed.status, failed.error), (JobStatus::Failed, Some(worker_lost("w-dead"))));
    assert!(failed.finished_at.is_some());
    let expected = json!({"status": "failed", "attempts": 1, "error": worker_lost("w-dead")});
    assert_eq!(last_event(&store, job.id).await, ("failed".into(), expected));
}

async fn expired_job_with_cancel_request_is_cancelled(store: Arc<dyn Store>) {
    let job = running(&store, "w-dead", 3, LEASE).await;
    store.cancel_job(job.id).await.unwrap();
    assert_eq!(store.recover_expired(Utc::now() + TimeDelta::minutes(2), 10).await.unwrap(), 1);
    let cancelled = get(&store, job.id).await;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert_eq!(last_event(&store, job.id).await, ("cancelled".into(), json!({"status": "cancelled", "attempts": 1})));
}

async fn recovery_respects_limit(store: Arc<dyn Store>) {
    for _ in 0..3 {
        running(&store, "w-dead", 3, LEASE).await;
    }
    let later = Utc::now() + TimeDelta::minutes(2);
    assert_eq!(store.recover_expired(later, 2).await.unwrap(), 2);
    assert_eq!(store.recover_expired(later, 2).await.unwrap(), 1);
    assert_eq!(store.recover_expired(later, 2).await.unwrap(), 0);
    assert_eq!(store.count_jobs().await.unwrap(), JobCounts { queued: 3, ..Default::default() });
}

// --- events ---

async fn events_are_numbered_from_one_and_paged(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    store.record_progress("w1", job.id, json!({"step": 1})).await.unwrap();
    store.record_progress("w1", job.id, json!({"step": 2})).await.unwrap();
    assert!(complete(&store, "w1", job.id, succeeded(json!("ok"))).await);

    let events = all_events(&store, job.id).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(kinds, ["queued", "running", "progress", "progress", "succeeded"]);
    assert!(events.iter().all(|e| e.job_id == job.id));
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at), "event times go backwards");
    assert!(events.last().unwrap().is_terminal());

    let page = store.events(job.id, 2, 2).await.unwrap();
    assert_eq!(page, events[2..4]);
    assert!(store.events(job.id, 5, 10).await.unwrap().is_empty());
}

async fn long_event_histories_read_back_whole_in_pages(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    for step in 0..1_100 {
        store.record_progress("w1", job.id, json!({"step": step})).await.unwrap();
    }
    // queued, running, then 1,100 progress events: seq 1 to 1,102.
    let first = store.events(job.id, 0, 1_000).await.unwrap();
    assert_eq!(first.len(), 1_000);
    assert!(first.iter().zip(1..).all(|(e, seq)| e.seq == seq), "gaps or repeats in the first 1,000");
    assert_eq!(first[999].data["step"], 997);
    let rest = store.events(job.id, 1_000, 1_000).await.unwrap();
    let seqs: Vec<u64> = rest.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1_001..=1_102).collect::<Vec<_>>());
    assert_eq!(rest[101].data["step"], 1_099);
    // A window in the middle, across the sizes a backend may read in.
    let middle = store.events(job.id, 10, 50).await.unwrap();
    assert_eq!(middle.iter().map(|e| e.seq).collect::<Vec<_>>(), (11..=60).collect::<Vec<_>>());
}

async fn event_appends_wake_waiters(store: Arc<dyn Store>) {
    let job = insert(&store, new_job(JobKind::Chat)).await;
    let watch = store.notifier().watch(job.id);
    let woken = watch.changed();
    store.claim("w1", 1, LEASE).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), woken).await.expect("claim notifies event waiters");
}

// --- listing and counting ---

async fn list_pages_newest_first(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(insert(&store, new_job(JobKind::Chat)).await.id);
    }
    let newest_first: Vec<JobId> = sorted(ids).into_iter().rev().collect();
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = Vec::new();
    loop {
        let page = store.list_jobs(&JobFilter { before, limit: 10, ..Default::default() }).await.unwrap();
        pages.push(page.len());
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        seen.extend(page.iter().map(|j| j.id));
    }
    assert_eq!(pages, [10, 10, 5, 0]);
    assert_eq!(seen, newest_first);
}

async fn list_filters_by_status_and_kind(store: Arc<dyn Store>) {
    let mut chat = Vec::new();
    let mut batch = Vec::new();
    for i in 0..6 {
        let kind = if i % 2 == 0 { JobKind::Chat } else { JobKind::Batch };
        let id = insert(&store, new_job(kind)).await.id;
        if kind == JobKind::Chat { chat.push(id) } else { batch.push(id) }
    }
    // Claims the two oldest: chat[0] and batch[0].
    store.claim("w1", 2, LEASE).await.unwrap();
    let list = |status, kind, limit| {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(&JobFilter { status, kind, before: None, limit, owner: None }).await.unwrap();
            jobs.into_iter().map(|j| j.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(Some(JobStatus::Running), None, 10).await, [batch[0], chat[0]]);
    assert_eq!(list(None, Some(JobKind::Batch), 10).await, [batch[2], batch[1], batch[0]]);
    assert_eq!(list(Some(JobStatus::Queued), Some(JobKind::Chat), 10).await, [chat[2], chat[1]]);
    assert_eq!(list(Some(JobStatus::Queued), Some(JobKind::Chat), 1).await, [chat[2]]);
    assert!(list(Some(JobStatus::Failed), None, 10).await.is_empty());
    let page = store
        .list_jobs(&JobFilter { kind: Some(JobKind::Chat), before: Some(chat[2]), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.into_iter().map(|j| j.id).collect::<Vec<_>>(), [chat[1], chat[0]]);
}

fn owned_by(owner: &str, kind: JobKind) -> NewJob {
    NewJob { owner: Some(owner.into()), ..new_job(kind) }
}

/// Each key lists only its own jobs, in pages, with the other filters, on both
/// backends; purge takes a purged job out of its owner's listing.
async fn jobs_are_listed_per_owner_in_pages(store: Arc<dyn Store>) {
    let mut mine = Vec::new();
    for i in 0..23 {
        // Another key's and an ownerless job between each of mine.
        insert(&store, owned_by("key_b", JobKind::Chat)).await;
        insert(&store, new_job(JobKind::Chat)).await;
        let kind = if i % 3 == 0 { JobKind::Batch } else { JobKind::Chat };
        mine.push(insert(&store, owned_by("key_a", kind)).await);
    }
    store.insert_jobs(vec![owned_by("key_a", JobKind::Chat), owned_by("key_b", JobKind::Chat)]).await.unwrap();
    let bulk = store
        .list_jobs(&JobFilter { owner: Some("key_a".into()), limit: 1, ..Default::default() })
        .await
        .unwrap()
        .remove(0);
    assert_eq!(bulk.owner.as_deref(), Some("key_a"), "bulk inserts keep the owner");
    mine.push(bulk);
    let delivery = insert(&store, NewJob { owner: Some("key_a".into()), ..delivery_of(mine[0].id) }).await;
    assert_eq!(get(&store, mine[0].id).await.owner.as_deref(), Some("key_a"));
    assert_eq!(get(&store, delivery.id).await.owner.as_deref(), Some("key_a"));

    let page_all = |filter: JobFilter| {
        let store = store.clone();
        async move {
            let (mut seen, mut pages, mut before) = (Vec::new(), Vec::new(), None);
            loop {
                let page = store.list_jobs(&JobFilter { before, limit: 10, ..filter.clone() }).await.unwrap();
                pages.push(page.len());
                let Some(last) = page.last() else { break };
                before = Some(last.id);
                seen.extend(page);
            }
            (seen, pages)
        }
    };
    let a = || JobFilter { owner: Some("key_a".into()), ..Default::default() };
    let (seen, pages) = page_all(a()).await;
    assert_eq!(pages, [10, 10, 4, 0]);
    let newest_first: Vec<JobId> = sorted(mine.iter().map(|j| j.id).collect()).into_iter().rev().collect();
    assert_eq!(seen.iter().map(|j| j.id).collect::<Vec<_>>(), newest_first);
    assert!(seen.iter().all(|j| j.owner.as_deref() == Some("key_a")));

    let (batches, _) = page_all(JobFilter { kind: Some(JobKind::Batch), ..a() }).await;
    assert_eq!(batches.len(), 8);
    assert!(batches.iter().all(|j| j.kind == JobKind::Batch && j.owner.as_deref() == Some("key_a")));
    let (deliveries, _) = page_all(JobFilter { kind: Some(JobKind::Delivery), ..a() }).await;
    assert_eq!(deliveries.iter().map(|j| j.id).collect::<Vec<_>>(), [delivery.id]);

    store.cancel_job(mine[1].id).await.unwrap();
    let (cancelled, _) = page_all(JobFilter { status: Some(JobStatus::Cancelled), ..a() }).await;
    assert_eq!(cancelled.iter().map(|j| j.id).collect::<Vec<_>>(), [mine[1].id]);
    let (of_b, _) = page_all(JobFilter { owner: Some("key_b".into()), ..Default::default() }).await;
    assert_eq!(of_b.len(), 24);
    assert!(page_all(JobFilter { owner: Some("key_c".into()), ..Default::default() }).await.0.is_empty());
    // Everyone's listing still has every non-delivery job, ownerless ones included.
    assert_eq!(page_all(JobFilter::default()).await.0.len(), 24 + 24 + 23);

    assert_eq!(store.purge(Utc::now() + TimeDelta::seconds(1), 100).await.unwrap(), 1);
    let (after_purge, _) = page_all(a()).await;
    assert_eq!(after_purge.len(), 23);
    assert!(after_purge.iter().all(|j| j.id != mine[1].id));
}

async fn counts_follow_each_status(store: Arc<dyn Store>) {
    let ok = running(&store, "w1", 3, LEASE).await;
    let bad = running(&store, "w1", 3, LEASE).await;
    running(&store, "w1", 3, LEASE).await;
    assert!(complete(&store, "w1", ok.id, succeeded(json!(1))).await);
    assert!(complete(&store, "w1", bad.id, Outcome::Failed { error: step_failed(), retry_at: None }).await);
    let cancelled = insert(&store, new_job(JobKind::Chat)).await;
    store.cancel_job(cancelled.id).await.unwrap();
    store.insert_jobs(vec![new_job(JobKind::Chat), new_job(JobKind::Batch)]).await.unwrap();
    let expected = JobCounts { queued: 2, running: 1, succeeded: 1, failed: 1, cancelled: 1 };
    assert_eq!(store.count_jobs().await.unwrap(), expected);
}

// --- purging ---

async fn purge_removes_only_old_finished_jobs(store: Arc<dyn Store>) {
    let ok = running(&store, "w1", 3, LEASE).await;
    let bad = running(&store, "w1", 3, LEASE).await;
    let busy = running(&store, "w1", 3, LEASE).await;
    let queued = insert(&store, new_job(JobKind::Chat)).await;
    let dropped = insert(&store, new_job(JobKind::Chat)).await;
    let before_finishing = now_ms();
    assert!(complete(&store, "w1", ok.id, succeeded(json!("kept until purged"))).await);
    assert!(complete(&store, "w1", bad.id, Outcome::Failed { error: step_failed(), retry_at: None }).await);
    store.cancel_job(dropped.id).await.unwrap();

    assert_eq!(store.purge(before_finishing, 100).await.unwrap(), 0, "purged jobs that finished later");
    assert_eq!(store.purge(Utc::now() + TimeDelta::seconds(1), 100).await.unwrap(), 3);
    for id in [ok.id, bad.id, dropped.id] {
        assert_eq!(store.get_job(id).await.unwrap(), None);
        assert!(store.events(id, 0, 10).await.unwrap().is_empty());
    }
    assert_eq!(store.get_result(ok.id).await.unwrap(), None);
    assert_eq!(get(&store, queued.id).await.status, JobStatus::Queued);
    assert_eq!(get(&store, busy.id).await.status, JobStatus::Running);
    assert_eq!(store.count_jobs().await.unwrap(), JobCounts { queued: 1, running: 1, ..Default::default() });
}

async fn purge_respects_limit(store: Arc<dyn Store>) {
    for _ in 0..3 {
        let job = insert(&store, new_job(JobKind::Chat)).await;
        store.cancel_job(job.id).await.unwrap();
    }
    let later = Utc::now() + TimeDelta::seconds(1);
    assert_eq!(store.purge(later, 2).await.unwrap(), 2);
    assert_eq!(store.purge(later, 2).await.unwrap(), 1);
    assert_eq!(store.purge(later, 2).await.unwrap(), 0);
}

async fn purge_forgets_idempotency_keys(store: Arc<dyn Store>) {
    let expires = now_ms() + TimeDelta::hours(24);
    let first = insert(&store, with_key("key1:order-7", "hash-a", expires)).await;
    store.cancel_job(first.id).await.unwrap();
    assert_eq!(store.purge(Utc::now() + TimeDelta::seconds(1), 10).await.unwrap(), 1);
    let again = insert(&store, with_key("key1:order-7", "hash-a", expires)).await;
    assert_ne!(again.id, first.id);
}

async fn node_outputs_are_kept_replaced_and_purged_with_their_job(store: Arc<dyn Store>) {
    let job = running(&store, "w1", 3, LEASE).await;
    let other = insert(&store, new_job(JobKind::Batch)).await;
    let big = format!("{{\"text\": \"{}\"}}", "x".repeat(100_000));
    assert!(store.put_output(job.id, "fetch", &big).await.unwrap());
    assert!(store.put_output(job.id, "map", "[1, 2]").await.unwrap());
    assert!(store.put_output(other.id, "fetch", "\"other job\"").await.unwrap());
    assert_eq!(store.get_output(job.id, "fetch").await.unwrap().as_deref(), Some(big.as_str()));
    assert_eq!(store.get_output(job.id, "nope").await.unwrap(), None);
    // A later attempt of the node replaces it.
    assert!(store.put_output(job.id, "map", "[3]").await.unwrap());
    assert_eq!(store.get_output(job.id, "map").await.unwrap().as_deref(), Some("[3]"));
    // Nothing is kept for a job that does not exist.
    let ghost = new_job_id();
    assert!(!store.put_output(ghost, "fetch", "1").await.unwrap());
    assert_eq!(store.get_output(ghost, "fetch").await.unwrap(), None);

    assert!(complete(&store, "w1", job.id, succeeded(json!("done"))).await);
    assert_eq!(store.purge(Utc::now() + TimeDelta::seconds(1), 100).await.unwrap(), 1);
    assert_eq!(store.get_output(job.id, "fetch").await.unwrap(), None);
    assert_eq!(store.get_output(job.id, "map").await.unwrap(), None);
    assert!(!store.put_output(job.id, "late", "1").await.unwrap(), "a write after purge kept something");
    assert_eq!(store.get_output(other.id, "fetch").await.unwrap().as_deref(), Some("\"other job\""));
}

async fn cache_entries_are_replaced_and_expire(store: Arc<dyn Store>) {
    assert_eq!(store.cache_get("plan:a").await.unwrap(), None);
    store.cache_put("plan:a", "{\"nodes\": []}", Duration::from_secs(60)).await.unwrap();
    store.cache_put("plan:b", "short", Duration::from_millis(300)).await.unwrap();
    assert_eq!(store.cache_get("plan:a").await.unwrap().as_deref(), Some("{\"nodes\": []}"));
    assert_eq!(store.cache_get("plan:b").await.unwrap().as_deref(), Some("short"));
    store.cache_put("plan:a", "replaced", Duration::from_secs(60)).await.unwrap();
    assert_eq!(store.cache_get("plan:a").await.unwrap().as_deref(), Some("replaced"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.cache_get("plan:b").await.unwrap(), None, "an expired entry was answered");
    store.purge(Utc::now(), 10).await.unwrap();
    assert_eq!(store.cache_get("plan:a").await.unwrap().as_deref(), Some("replaced"), "purge took a live entry");
}

// --- API keys ---

async fn first_key_is_created_only_once(store: Arc<dyn Store>) {
    let now = now_ms();
    assert!(store.create_first_key(&api_key("k1", now), "hash-1").await.unwrap());
    assert!(!store.create_first_key(&api_key("k2", now), "hash-2").await.unwrap());
    assert_eq!(store.list_keys().await.unwrap(), [api_key("k1", now)]);
    assert_eq!(store.key_by_hash("hash-2").await.unwrap(), None);
}

async fn first_key_again_once_all_are_revoked(store: Arc<dyn Store>) {
    let now = now_ms();
    store.create_key(&api_key("k1", now), "hash-1").await.unwrap();
    assert!(!store.create_first_key(&api_key("k2", now), "hash-2").await.unwrap());
    assert!(store.revoke_key("k1").await.unwrap());
    assert!(store.create_first_key(&api_key("k2", now), "hash-2").await.unwrap());
}

async fn concurrent_first_keys_store_one(store: Arc<dyn Store>) {
    let now = now_ms();
    let tries = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.create_first_key(&api_key(&format!("k{i}"), now), &format!("hash-{i}")).await })
    });
    let stored = futures::future::join_all(tries).await.into_iter().filter(|r| *r.as_ref().unwrap().as_ref().unwrap());
    assert_eq!(stored.count(), 1);
    assert_eq!(store.list_keys().await.unwrap().len(), 1);
}

async fn keys_are_found_by_hash_until_revoked(store: Arc<dyn Store>) {
    let key = api_key("k1", now_ms());
    store.create_key(&key, "hash-1").await.unwrap();
    assert_eq!(store.key_by_hash("hash-1").await.unwrap(), Some(key.clone()));
    assert_eq!(store.key_by_hash("hash-9").await.unwrap(), None);
    let before = now_ms();
    assert!(store.revoke_key("k1").await.unwrap());
    assert!(!store.revoke_key("k1").await.unwrap(), "revoked twice");
    assert!(!store.revoke_key("nope").await.unwrap());
    assert_eq!(store.key_by_hash("hash-1").await.unwrap(), None);
    let listed = store.list_keys().await.unwrap();
    assert_eq!(listed.len(), 1);
    let revoked_at = listed[0].revoked_at.expect("revoked_at is set");
    assert!(revoked_at >= before && revoked_at <= Utc::now(), "{revoked_at}");
    assert_eq!(ApiKey { revoked_at: None, ..listed[0].clone() }, key);
}

async fn keys_are_listed_oldest_first(store: Arc<dyn Store>) {
    let now = now_ms();
    let (old, mid, new) =
        (api_key("old", now - TimeDelta::days(2)), api_key("mid", now - TimeDelta::days(1)), api_key("new", now));
    store.create_key(&mid, "hash-mid").await.unwrap();
    store.create_key(&new, "hash-new").await.unwrap();
    store.create_key(&old, "hash-old").await.unwrap();
    store.revoke_key("mid").await.unwrap();
    let ids: Vec<String> = store.list_keys().await.unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(ids, ["old", "mid", "new"]);
}

async fn keys_keep_their_server_limits(store: Arc<dyn Store>) {
    let limited = ApiKey { servers: Some(vec!["github".into(), "memory".into()]), ..api_key("k1", now_ms()) };
    store.create_key(&limited, "hash-1").await.unwrap();
    assert_eq!(store.key_by_hash("hash-1").await.unwrap(), Some(limited.clone()));
    let first = ApiKey { servers: Some(vec![]), ..api_key("k2", now_ms()) };
    store.revoke_key("k1").await.unwrap();
    assert!(store.create_first_key(&first, "hash-2").await.unwrap());
    let listed = store.list_keys().await.unwrap();
    assert_eq!(listed[0].servers, limited.servers);
    assert_eq!(listed[1], first, "an empty limit (no server) is not the same as no limit");
}

async fn keys_keep_expiry_and_allow_lists_and_can_be_updated(store: Arc<dyn Store>) {
    let now = now_ms();
    let key = ApiKey {
        expires_at: Some(now + TimeDelta::days(1)),
        tools: Some(vec!["github.*".into(), "*.read_*".into()]),
        providers: Some(vec!["claude".into()]),
        ..api_key("k1", now)
    };
    store.create_key(&key, "hash-1").await.unwrap();
    assert_eq!(store.key_by_hash("hash-1").await.unwrap(), Some(key.clone()));
    let changed =
        ApiKey { expires_at: None, tools: Some(vec![]), providers: None, servers: Some(vec!["a".into()]), ..key };
    assert!(store.update_key(&changed).await.unwrap());
    assert_eq!(store.key_by_hash("hash-1").await.unwrap(), Some(changed.clone()));
    store.touch_key("k1", now).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap()[0].last_used_at, Some(now));
    store.revoke_key("k1").await.unwrap();
    assert!(!store.update_key(&changed).await.unwrap(), "a revoked key cannot be changed");
    assert!(!store.update_key(&api_key("nope", now)).await.unwrap());
}

async fn rotated_keys_answer_to_the_new_secret_and_the_previous_one(store: Arc<dyn Store>) {
    let now = now_ms();
    store.create_key(&api_key("k1", now), "hash-1").await.unwrap();
    assert!(store.key_by_previous_hash("hash-1").await.unwrap().is_none());
    let until = now + TimeDelta::hours(24);
    assert!(store.rotate_key("k1", "orch_new", "hash-2", until).await.unwrap());
    assert!(!store.rotate_key("nope", "orch_x", "hash-x", until).await.unwrap());
    let current = store.key_by_hash("hash-2").await.unwrap().expect("the new secret works");
    assert_eq!((current.prefix.as_str(), current.rotated_until), ("orch_new", Some(until)));
    assert_eq!(store.key_by_hash("hash-1").await.unwrap(), None, "the old secret is not the current one");
    let previous = store.key_by_previous_hash("hash-1").await.unwrap().expect("the old secret is the previous one");
    assert_eq!(previous.id, "k1");
    // A second rotation forgets the first secret.
    assert!(store.rotate_key("k1", "orch_3rd", "hash-3", until).await.unwrap());
    assert!(store.key_by_previous_hash("hash-1").await.unwrap().is_none());
    assert_eq!(store.key_by_previous_hash("hash-2").await.unwrap().map(|k| k.id).as_deref(), Some("k1"));
    store.revoke_key("k1").await.unwrap();
    assert!(store.key_by_previous_hash("hash-2").await.unwrap().is_none(), "revoking ends the old secret too");
    assert!(store.key_by_hash("hash-3").await.unwrap().is_none());
}

async fn keys_keep_their_rate_limit_and_job_quota(store: Arc<dyn Store>) {
    let now = now_ms();
    let key = ApiKey { rate_limit_per_minute: Some(120), jobs_per_day: Some(0), ..api_key("k1", now) };
    store.create_key(&key, "hash-1").await.unwrap();
    assert_eq!(store.key_by_hash("hash-1").await.unwrap(), Some(key.clone()));
    let changed = ApiKey { rate_limit_per_minute: None, jobs_per_day: Some(1000), ..key };
    assert!(store.update_key(&changed).await.unwrap());
    assert_eq!(store.list_keys().await.unwrap(), vec![changed]);
}

// --- rate limits and job quotas ---

fn owned_with_key(owner: &str, idempotency_key: &str) -> NewJob {
    let idempotency = Some(Idempotency {
        key: format!("{owner}:{idempotency_key}"),
        body_hash: "hash-a".into(),
        expires_at: now_ms() + TimeDelta::hours(1),
    });
    NewJob { idempotency, ..owned_by(owner, JobKind::Chat) }
}

async fn daily_quota_refuses_the_job_over_it_and_stores_nothing(store: Arc<dyn Store>) {
    for _ in 0..2 {
        assert!(matches!(
            store.insert_job_within(owned_by("key_a", JobKind::Chat), 2).await.unwrap(),
            Inserted::Created(_)
        ));
    }
    let over = owned_with_key("key_a", "third");
    match store.insert_job_within(over.clone(), 2).await.unwrap() {
        Inserted::OverQuota { limit, resets_at } => {
            assert_eq!(limit, 2);
            assert_eq!(resets_at, quota_day(Utc::now()).1);
            assert!(resets_at > Utc::now() && resets_at <= Utc::now() + TimeDelta::days(1));
        }
        other => panic!("expected the quota to refuse the job, got {other:?}"),
    }
    assert!(store.get_job(over.id).await.unwrap().is_none(), "a refused job is not stored");
    // Its idempotency key was not taken either: with quota to spare it creates the job.
    assert!(matches!(store.insert_job_within(over, 3).await.unwrap(), Inserted::Created(_)));
    // Other owners and unlimited inserts are not counted against key_a.
    assert!(matches!(
        store.insert_job_within(owned_by("key_b", JobKind::Chat), 2).await.unwrap(),
        Inserted::Created(_)
    ));
    assert!(matches!(
        store.insert_job_within(owned_by("key_a", JobKind::Chat), 0).await.unwrap(),
        Inserted::Created(_)
    ));
    assert!(matches!(store.insert_job(owned_by("key_a", JobKind::Chat)).await.unwrap(), Inserted::Created(_)));
    assert!(matches!(
        store.insert_job_within(owned_by("key_a", JobKind::Chat), 3).await.unwrap(),
        Inserted::OverQuota { limit: 3, .. }
    ));
}

async fn idempotent_replays_are_not_counted_against_the_quota(store: Arc<dyn Store>) {
    let first = owned_with_key("key_a", "order-7");
    let created = match store.insert_job_within(first.clone(), 1).await.unwrap() {
        Inserted::Created(job) => job,
        other => panic!("expected a new job, got {other:?}"),
    };
    for _ in 0..3 {
        let replay = NewJob { id: new_job_id(), ..first.clone() };
        match store.insert_job_within(replay, 1).await.unwrap() {
            Inserted::Existing(job) => assert_eq!(job.id, created.id),
            other => panic!("a replay returns the first job even at the quota, got {other:?}"),
        }
    }
    let conflict = NewJob {
        id: new_job_id(),
        idempotency: first.idempotency.clone().map(|i| Idempotency { body_hash: "hash-b".into(), ..i }),
        ..first
    };
    assert!(matches!(store.insert_job_within(conflict, 1).await.unwrap(), Inserted::Conflict { .. }));
}

async fn concurrent_inserts_never_exceed_the_daily_quota(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_job_within(owned_by("key_a", JobKind::Chat), 25).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Inserted::Created(_) => created += 1,
            Inserted::OverQuota { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 25);
    let filter = JobFilter { owner: Some("key_a".into()), limit: 100, ..JobFilter::default() };
    assert_eq!(store.list_jobs(&filter).await.unwrap().len(), 25);
}

async fn requests_are_limited_per_bucket_with_a_burst_of_the_limit(store: Arc<dyn Store>) {
    for left in (0..3).rev() {
        let d = store.take_request("key_a", 3).await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, left);
    }
    let refused = store.take_request("key_a", 3).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    // One request comes back every 60 s / 3.
    let wait = refused.retry_after.as_secs_f64();
    assert!(wait > 19.0 && wait <= 20.0, "{refused:?}");
    assert!(store.take_request("key_b", 3).await.unwrap().allowed, "buckets are independent");
    // At 600 a minute one request comes back every 100 ms, and not before.
    let mut taken = 0;
    let refused = loop {
        let d = store.take_request("key_c", 600).await.unwrap();
        if !d.allowed {
            break d;
        }
        taken += 1;
        assert!(taken <= 700, "600 a minute let {taken} through");
    };
    assert!(taken >= 600, "only {taken} of a burst of 600");
    assert!(refused.retry_after <= Duration::from_millis(100), "{refused:?}");
    tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
    assert!(store.take_request("key_c", 600).await.unwrap().allowed, "the bucket refills over the minute");
}

// --- the audit log ---

async fn audit_pages_newest_first_with_filters_and_purges(store: Arc<dyn Store>) {
    let now = now_ms();
    let entries: Vec<AuditEntry> = (0..25u64)
        .map(|i| {
            audit_entry(i, now - TimeDelta::minutes(30 - i as i64), if i % 2 == 0 { "a" } else { "b" }, "tool_call")
        })
        .collect();
    store.append_audit(&entries[..10]).await.unwrap();
    store.append_audit(&entries[10..]).await.unwrap();
    store.append_audit(&[]).await.unwrap();
    // Pages of 10, newest first, by cursor.
    let mut seen = Vec::new();
    let mut filter = AuditFilter::default();
    loop {
        let page = store.list_audit(&filter, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        filter.before = Some(page.last().unwrap().id);
        seen.extend(page);
    }
    assert_eq!(seen.len(), 25);
    let targets: Vec<_> = seen.iter().map(|e| e.target.clone().unwrap()).collect();
    let expected: Vec<_> = (0..25).rev().map(|i| format!("github.tool_{i}")).collect();
    assert_eq!(targets, expected);
    assert!(seen.windows(2).all(|w| w[0].id > w[1].id), "ids increase with appends");
    assert_eq!(AuditEntry { id: 0, ..seen[24].clone() }, entries[0], "read back as written");
    // Filters, with a cursor.
    let by_a = AuditFilter { key_id: Some("a".into()), outcome: Some("ok".into()), ..Default::default() };
    let page = store.list_audit(&by_a, 3).await.unwrap();
    let names: Vec<_> = page.iter().map(|e| e.target.clone().unwrap()).collect();
    assert_eq!(names, ["github.tool_22", "github.tool_20", "github.tool_16"]);
    let next = store.list_audit(&AuditFilter { before: Some(page[2].id), ..by_a.clone() }, 100).await.unwrap();
    assert_eq!(next.len(), 8 - 3);
    let recent = AuditFilter { since: Some(now - TimeDelta::minutes(10)), ..Default::default() };
    assert_eq!(store.list_audit(&recent, 100).await.unwrap().len(), 5);
    let one = AuditFilter { target: Some("github.tool_7".into()), ..Default::default() };
    assert_eq!(store.list_audit(&one, 100).await.unwrap().len(), 1);
    // Retention.
    assert_eq!(store.purge_audit(now - TimeDelta::minutes(15)).await.unwrap(), 15);
    let left = store.list_audit(&AuditFilter::default(), 100).await.unwrap();
    assert_eq!(left.len(), 10);
    assert_eq!(left.last().unwrap().target.as_deref(), Some("github.tool_15"));
}

// --- MCP servers registered through the API ---

async fn servers_are_stored_listed_by_name_and_deleted(store: Arc<dyn Store>) {
    assert_eq!(store.list_servers().await.unwrap(), []);
    let now = now_ms();
    let remote = json!({"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}});
    let github = json!({"transportType": "sse", "url": "http://127.0.0.1:9/sse", "timeout": 30});
    assert!(store.put_server(&stored_server("remote", remote.clone(), now)).await.unwrap());
    assert!(store.put_server(&stored_server("github", github.clone(), now)).await.unwrap());
    assert_eq!(
        store.list_servers().await.unwrap(),
        [stored_server("github", github, now), stored_server("remote", remote.clone(), now)]
    );
    assert!(store.delete_server("github").await.unwrap());
    assert!(!store.delete_server("github").await.unwrap(), "deleted twice");
    assert!(!store.delete_server("nope").await.unwrap());
    assert_eq!(store.list_servers().await.unwrap(), [stored_server("remote", remote, now)]);
}

async fn replacing_a_server_keeps_its_creation_time(store: Arc<dyn Store>) {
    let created = now_ms() - TimeDelta::hours(1);
    assert!(store.put_server(&stored_server("remote", json!({"url": "http://a/mcp"}), created)).await.unwrap());
    let later = now_ms();
    let changed = stored_server("remote", json!({"url": "http://b/mcp", "disabled": true}), later);
    assert!(!store.put_server(&changed).await.unwrap(), "a replacement is not new");
    let listed = store.list_servers().await.unwrap();
    assert_eq!(listed, [StoredServer { created_at: created, ..changed }]);
    // Deleted and added again: new once more.
    store.delete_server("remote").await.unwrap();
    assert!(store.put_server(&stored_server("remote", json!({"url": "http://c/mcp"}), later)).await.unwrap());
    assert_eq!(store.list_servers().await.unwrap()[0].created_at, later);
}

// --- Webhooks: deliveries are jobs; subscriptions are stored ---

async fn expired_jobs_are_read_without_moving_them(store: Arc<dyn Store>) {
    let job = running(&store, "w-dead", 1, LEASE).await;
    let _alive = running(&store, "w-alive", 1, LEASE * 10).await;
    assert_eq!(store.expired_jobs(Utc::now(), 10).await.unwrap(), [], "nothing expired yet");
    let expired = store.expired_jobs(Utc::now() + TimeDelta::minutes(2), 10).await.unwrap();
    assert_eq!(
        expired.iter().map(|j| (j.id, j.status, j.attempts)).collect::<Vec<_>>(),
        [(job.id, JobStatus::Running, 1)]
    );
    assert_eq!(get(&store, job.id).await.status, JobStatus::Running, "reading moves nothing");
    assert_eq!(store.recover_expired(Utc::now() + TimeDelta::minutes(2), 10).await.unwrap(), 1);
    assert_eq!(store.expired_jobs(Utc::now() + TimeDelta::minutes(2), 10).await.unwrap(), []);
}

async fn deliveries_are_listed_only_when_asked_for(store: Arc<dyn Store>) {
    let chat = insert(&store, new_job(JobKind::Chat)).await;
    let delivery = insert(&store, new_job(JobKind::Delivery)).await;
    let batch = insert(&store, new_job(JobKind::Batch)).await;
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let all = JobFilter { limit: 10, ..Default::default() };
    assert_eq!(ids(store.list_jobs(&all).await.unwrap()), [batch.id, chat.id]);
    let queued = JobFilter { status: Some(JobStatus::Queued), ..all.clone() };
    assert_eq!(ids(store.list_jobs(&queued).await.unwrap()), [batch.id, chat.id]);
    let deliveries = JobFilter { kind: Some(JobKind::Delivery), ..all.clone() };
    assert_eq!(ids(store.list_jobs(&deliveries).await.unwrap()), [delivery.id]);
    assert_eq!(get(&store, delivery.id).await.kind, JobKind::Delivery);
}

fn delivery_of(parent: JobId) -> NewJob {
    NewJob { input: json!({"job_id": parent, "event": "job.succeeded"}), ..new_job(JobKind::Delivery) }
}

async fn deliveries_are_found_by_their_job_paged_and_purged(store: Arc<dyn Store>) {
    let job = insert(&store, new_job(JobKind::Chat)).await;
    let other = insert(&store, new_job(JobKind::Batch)).await;
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let mut mine = Vec::new();
    for i in 0..5 {
        // Both ways of inserting index the delivery by its job.
        if i % 2 == 0 {
            mine.push(insert(&store, delivery_of(job.id)).await.id);
        } else {
            let d = delivery_of(job.id);
            mine.push(d.id);
            store.insert_jobs(vec![d]).await.unwrap();
        }
        store.insert_jobs((0..3).map(|_| delivery_of(other.id)).collect()).await.unwrap();
    }
    // A delivery without a job (`server.down`) and a chat job naming a job_id are nobody's.
    insert(&store, NewJob { input: json!({"event": "server.down"}), ..new_job(JobKind::Delivery) }).await;
    insert(&store, NewJob { input: json!({"job_id": job.id}), ..new_job(JobKind::Chat) }).await;
    mine.reverse();
    assert_eq!(ids(store.job_deliveries(job.id, None, 10).await.unwrap()), mine);
    assert_eq!(ids(store.job_deliveries(job.id, None, 2).await.unwrap()), mine[..2]);
    assert_eq!(ids(store.job_deliveries(job.id, Some(mine[1]), 2).await.unwrap()), mine[2..4]);
    assert_eq!(ids(store.job_deliveries(job.id, Some(mine[4]), 2).await.unwrap()), Vec::<JobId>::new());
    assert_eq!(store.job_deliveries(other.id, None, 100).await.unwrap().len(), 15);
    assert!(store.job_deliveries(new_job_id(), None, 10).await.unwrap().is_empty());
    assert_eq!(
        store.count_jobs_of_kind(JobKind::Delivery).await.unwrap(),
        JobCounts { queued: 21, ..Default::default() }
    );
    assert_eq!(store.count_jobs_of_kind(JobKind::Chat).await.unwrap(), JobCounts { queued: 2, ..Default::default() });

    // Purged deliveries leave their job's list.
    for id in &mine[..3] {
        store.cancel_job(*id).await.unwrap();
    }
    assert_eq!(store.purge(Utc::now() + TimeDelta::seconds(1), 100).await.unwrap(), 3);
    assert_eq!(ids(store.job_deliveries(job.id, None, 10).await.unwrap()), mine[3..]);
    assert_eq!(
        store.count_jobs_of_kind(JobKind::Delivery).await.unwrap(),
        JobCounts { queued: 18, ..Default::default() }
    );
}

fn stored_webhook(id: &str, config: Value, at: DateTime<Utc>) -> StoredWebhook {
    StoredWebhook { id: id.into(), config, created_at: at, updated_at: at }
}

async fn webhooks_are_stored_listed_oldest_first_and_deleted(store: Arc<dyn Store>) {
    assert_eq!(store.list_webhooks().await.unwrap(), []);
    let (earlier, later) = (now_ms() - TimeDelta::hours(1), now_ms());
    let b = stored_webhook("wh_b", json!({"url": "https://b.example/hook", "secret": "whsec_x"}), earlier);
    let a = stored_webhook("wh_a", json!({"url": "https://a.example/hook", "secret": "whsec_y"}), later);
    assert!(store.put_webhook(&a).await.unwrap());
    assert!(store.put_webhook(&b).await.unwrap());
    assert_eq!(store.list_webhooks().await.unwrap(), [b.clone(), a.clone()]);
    let changed = stored_webhook("wh_b", json!({"url": "https://c.example/hook"}), later);
    assert!(!store.put_webhook(&changed).await.unwrap(), "a replacement is not new");
    assert_eq!(store.list_webhooks().await.unwrap()[0], StoredWebhook { created_at: earlier, ..changed });
    assert!(store.delete_webhook("wh_b").await.unwrap());
    assert!(!store.delete_webhook("wh_b").await.unwrap(), "deleted twice");
    assert_eq!(store.list_webhooks().await.unwrap(), [a]);
}

// --- chat sessions ---

fn message(role: &str, content: &str) -> SessionMessage {
    SessionMessage { role: role.into(), content: content.into(), at: now_ms(), routed_to: None, job_id: None }
}

async fn sessions_collect_messages_in_order(store: Arc<dyn Store>) {
    assert_eq!(store.get_session("s1").await.unwrap(), None);
    let ttl = Duration::from_secs(3600);
    let first = store.append_session("s1", "key-a", vec![message("user", "hi")], ttl).await.unwrap();
    assert_eq!((first.id.as_str(), first.owner.as_str()), ("s1", "key-a"));
    assert_eq!(first.messages, [message("user", "hi")].map(|m| SessionMessage { at: first.messages[0].at, ..m }));
    let answer = SessionMessage {
        routed_to: Some("claude/sonnet".into()),
        job_id: Some(new_job_id()),
        ..message("assistant", "hello ✓")
    };
    // A later append by another key does not take the session over.
    let second = store.append_session("s1", "key-b", vec![answer.clone()], ttl).await.unwrap();
    assert_eq!(second.owner, "key-a");
    assert_eq!(second.messages.len(), 2);
    assert_eq!(second.messages[1], answer);
    assert_eq!(second.created_at, first.created_at);
    assert!(second.updated_at >= first.updated_at);
    let expires = second.expires_at - Utc::now();
    assert!(expires > TimeDelta::minutes(59) && expires <= TimeDelta::minutes(60), "{expires}");
    assert_eq!(store.get_session("s1").await.unwrap().unwrap().messages, second.messages);
}

async fn sessions_expire_unless_used(store: Arc<dyn Store>) {
    let short = Duration::from_millis(300);
    store.append_session("brief", "k", vec![message("user", "a")], short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Using it slides the expiry.
    store.append_session("brief", "k", vec![message("user", "b")], short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.get_session("brief").await.unwrap().unwrap().messages.len(), 2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(store.get_session("brief").await.unwrap(), None);
    assert_eq!(store.list_sessions(None, 0, 10).await.unwrap(), []);
    assert!(!store.delete_session("brief").await.unwrap());
    // An expired id starts afresh.
    let again = store.append_session("brief", "other", vec![message("user", "c")], short).await.unwrap();
    assert_eq!((again.owner.as_str(), again.messages.len()), ("other", 1));
}

async fn sessions_are_listed_newest_first_by_owner_and_deleted(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(60);
    for (id, owner) in [("a", "k1"), ("b", "k2"), ("c", "k1"), ("d", "k1")] {
        store.append_session(id, owner, vec![message("user", id)], ttl).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.append_session("a", "k1", vec![message("user", "again")], ttl).await.unwrap();
    let ids = |sessions: Vec<Session>| sessions.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_sessions(None, 0, 10).await.unwrap()), ["a", "d", "c", "b"]);
    assert_eq!(ids(store.list_sessions(Some("k1"), 0, 2).await.unwrap()), ["a", "d"]);
    assert_eq!(ids(store.list_sessions(Some("k1"), 2, 2).await.unwrap()), ["c"]);
    assert!(store.delete_session("d").await.unwrap());
    assert!(!store.delete_session("d").await.unwrap());
    assert_eq!(store.get_session("d").await.unwrap(), None);
    assert_eq!(ids(store.list_sessions(Some("k1"), 0, 10).await.unwrap()), ["a", "c"]);
}

// --- slots of limits shared across processes ---

async fn slots_are_limited_renewed_released_and_expire(store: Arc<dyn Store>) {
    let hold = Duration::from_secs(60);
    assert!(store.try_acquire_slot("provider:claude", "w1:a", 2, hold).await.unwrap());
    assert!(store.try_acquire_slot("provider:claude", "w2:b", 2, hold).await.unwrap());
    assert!(!store.try_acquire_slot("provider:claude", "w3:c", 2, hold).await.unwrap(), "over the limit");
    // Another name has its own slots; a holder renews its own.
    assert!(store.try_acquire_slot("provider:gemini", "w3:c", 1, hold).await.unwrap());
    assert!(store.try_acquire_slot("provider:claude", "w1:a", 2, hold).await.unwrap());
    store.release_slot("provider:claude", "w1:a").await.unwrap();
    store.release_slot("provider:claude", "nobody").await.unwrap();
    assert!(store.try_acquire_slot("provider:claude", "w3:c", 2, hold).await.unwrap());
    // A holder that never releases loses its slot at the end of its hold.
    assert!(store.try_acquire_slot("provider:qwen", "dead", 1, Duration::from_millis(200)).await.unwrap());
    assert!(!store.try_acquire_slot("provider:qwen", "alive", 1, hold).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.try_acquire_slot("provider:qwen", "alive", 1, hold).await.unwrap());
    // A long hold is not cut short by a shorter one taken later.
    assert!(store.try_acquire_slot("provider:codex", "long", 2, hold).await.unwrap());
    assert!(store.try_acquire_slot("provider:codex", "short", 2, Duration::from_millis(100)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(store.try_acquire_slot("provider:codex", "third", 2, hold).await.unwrap());
    assert!(!store.try_acquire_slot("provider:codex", "fourth", 2, hold).await.unwrap(), "long still holds");
}

// --- provider state shared across processes ---

async fn provider_state_merges_cooldowns_errors_and_auth_incidents(store: Arc<dyn Store>) {
    let t0 = now_ms();
    let at = |secs: i64| t0 + TimeDelta::seconds(secs);
    let empty = store.provider_state("claude").await.unwrap();
    assert_eq!(empty, ProviderState { provider: "claude".into(), ..Default::default() });
    assert!(store.provider_states().await.unwrap().is_empty());

    // A cooldown only ever grows; an error replaces the last one.
    let update = |cooldown: Option<i64>, error: Option<&str>| ProviderUpdate {
        cooldown_until: cooldown.map(at),
        last_error: error.map(|e| (json!({"message": e}), at(1))),
        ..Default::default()
    };
    let state = store.update_provider_state("claude", update(Some(600), Some("limit"))).await.unwrap();
    assert_eq!(state.cooldown_until, Some(at(600)));
    let state = store.update_provider_state("claude", update(Some(60), Some("again"))).await.unwrap();
    assert_eq!(state.cooldown_until, Some(at(600)), "a shorter cooldown does not cut a longer one");
    assert_eq!(state.last_error, Some(json!({"message": "again"})));
    assert_eq!(state.last_error_at, Some(at(1)));

    // Auth refusals: the incident keeps its first time until a turn succeeds.
    let refused = |secs: i64, message: &str| ProviderUpdate {
        auth_failure: Some(AuthFailure { since: at(0), at: at(secs), expired: true, message: message.into() }),
        ..Default::default()
    };
    let first = store.update_provider_state("gemini", refused(10, "expired")).await.unwrap();
    let failure = first.auth_failure.unwrap();
    assert_eq!((failure.since, failure.at), (at(10), at(10)));
    let second = store.update_provider_state("gemini", refused(20, "still expired")).await.unwrap();
    let failure = second.auth_failure.unwrap();
    assert_eq!((failure.since, failure.at, failure.message.as_str()), (at(10), at(20), "still expired"));
    let ok = ProviderUpdate { auth_ok: true, ..Default::default() };
    assert_eq!(store.update_provider_state("gemini", ok).await.unwrap().auth_failure, None);
    let again = store.update_provider_state("gemini", refused(30, "expired")).await.unwrap();
    assert_eq!(again.auth_failure.unwrap().since, at(30), "a new incident after a success");

    let read = store.provider_state("gemini").await.unwrap();
    assert_eq!(read.auth_failure.as_ref().map(|f| f.since), Some(at(30)));
    let names: Vec<String> = store.provider_states().await.unwrap().into_iter().map(|s| s.provider).collect();
    assert_eq!(names, ["claude", "gemini"]);
    assert_eq!(store.provider_states().await.unwrap()[0], store.provider_state("claude").await.unwrap());
}

// --- usage records ---

fn usage_at(job_id: JobId, at: DateTime<Utc>, tokens: u64) -> UsageRecord {
    UsageRecord {
        job_id,
        attempt: 0,
        at,
        key_id: "k1".into(),
        provider: "claude".into(),
        model: Some("sonnet".into()),
        ok: true,
        input_tokens: tokens,
        output_tokens: 1,
        cost_usd: Some(0.01),
        latency_ms: 1200,
    }
}

async fn usage_is_recorded_once_per_job_read_by_range_and_purged(store: Arc<dyn Store>) {
    let now = now_ms();
    let (a, b, old) = (new_job_id(), new_job_id(), new_job_id());
    store.record_usage(&usage_at(old, now - TimeDelta::days(10), 5)).await.unwrap();
    store.record_usage(&usage_at(a, now - TimeDelta::minutes(2), 10)).await.unwrap();
    store.record_usage(&usage_at(b, now - TimeDelta::minutes(1), 20)).await.unwrap();
    // A repeat for the same job replaces its record.
    store.record_usage(&usage_at(a, now - TimeDelta::minutes(2), 11)).await.unwrap();
    let recent = store.usage(now - TimeDelta::hours(1), now, 100).await.unwrap();
    assert_eq!(recent, [usage_at(a, now - TimeDelta::minutes(2), 11), usage_at(b, now - TimeDelta::minutes(1), 20)]);
    assert_eq!(store.usage(now - TimeDelta::hours(1), now, 1).await.unwrap().len(), 1);
    assert_eq!(store.usage(now - TimeDelta::days(30), now, 100).await.unwrap().len(), 3);
    store.purge(now - TimeDelta::days(7), 100).await.unwrap();
    assert_eq!(store.usage(now - TimeDelta::days(30), now, 100).await.unwrap().len(), 2);
}

async fn every_attempt_of_a_turn_is_booked_on_its_own_provider(store: Arc<dyn Store>) {
    let now = now_ms();
    let job = new_job_id();
    let failed = UsageRecord { attempt: 1, provider: "claude".into(), ok: false, ..usage_at(job, now, 0) };
    let answered = UsageRecord { provider: "gemini".into(), ..usage_at(job, now, 7) };
    store.record_usage(&failed).await.unwrap();
    store.record_usage(&answered).await.unwrap();
    // The job running again replaces its records, attempt by attempt.
    store.record_usage(&failed).await.unwrap();
    let mut got = store.usage(now - TimeDelta::minutes(1), now + TimeDelta::minutes(1), 100).await.unwrap();
    got.sort_by_key(|r| r.attempt);
    assert_eq!(got, [answered, failed]);
}

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(["sqlite", "redis"].contains(&store.backend()));
}

on_each_backend!(
    inserted_job_is_queued_and_readable,
    unknown_job_is_none,
    inserted_job_has_queued_event,
    insert_wakes_job_and_event_waiters,
    bulk_insert_stores_every_job_queued,
    repeat_with_same_body_returns_first_job,
    repeat_with_other_body_conflicts,
    expired_idempotency_key_creates_a_new_job,
    idempotency_keys_are_independent,
    claim_takes_oldest_due_first,
    claimed_job_runs_under_a_lease,
    claim_leaves_jobs_not_yet_due,
    claim_respects_limit,
    concurrent_claimers_never_share_a_job,
    heartbeat_extends_the_lease,
    released_jobs_are_recovered_at_once,
    heartbeat_reports_cancel_requests,
    heartbeat_reports_jobs_the_worker_does_not_hold,
    workers_lists_those_seen_since,
    success_stores_the_result,
    completion_from_another_worker_is_refused,
    completion_applies_once,
    owner_completes_after_its_lease_lapsed_until_recovered,
    failure_with_retry_requeues_for_later,
    due_retry_runs_again_as_attempt_two,
    failure_without_retry_is_final,
    cancelled_attempt_is_final,
    progress_is_recorded_for_the_lease_holder_only,
    cancelling_a_queued_job_ends_it,
    cancelling_a_running_job_asks_its_worker,
    cancelling_a_finished_job_changes_nothing,
    cancelling_an_unknown_job_is_none,
    unexpired_leases_are_left_alone,
    expired_job_with_attempts_left_is_requeued,
    expired_job_out_of_attempts_fails,
    expired_job_with_cancel_request_is_cancelled,
    recovery_respects_limit,
    events_are_numbered_from_one_and_paged,
    long_event_histories_read_back_whole_in_pages,
    event_appends_wake_waiters,
    list_pages_newest_first,
    list_filters_by_status_and_kind,
    jobs_are_listed_per_owner_in_pages,
    counts_follow_each_status,
    purge_removes_only_old_finished_jobs,
    purge_respects_limit,
    purge_forgets_idempotency_keys,
    node_outputs_are_kept_replaced_and_purged_with_their_job,
    cache_entries_are_replaced_and_expire,
    first_key_is_created_only_once,
    first_key_again_once_all_are_revoked,
    concurrent_first_keys_store_one,
    keys_are_found_by_hash_until_revoked,
    keys_are_listed_oldest_first,
    keys_keep_their_server_limits,
    keys_keep_expiry_and_allow_lists_and_can_be_updated,
    rotated_keys_answer_to_the_new_secret_and_the_previous_one,
    keys_keep_their_rate_limit_and_job_quota,
    daily_quota_refuses_the_job_over_it_and_stores_nothing,
    idempotent_replays_are_not_counted_against_the_quota,
    concurrent_inserts_never_exceed_the_daily_quota,
    requests_are_limited_per_bucket_with_a_burst_of_the_limit,
    audit_pages_newest_first_with_filters_and_purges,
    servers_are_stored_listed_by_name_and_deleted,
    replacing_a_server_keeps_its_creation_time,
    expired_jobs_are_read_without_moving_them,
    deliveries_are_listed_only_when_asked_for,
    deliveries_are_found_by_their_job_paged_and_purged,
    webhooks_are_stored_listed_oldest_first_and_deleted,
    sessions_collect_messages_in_order,
    sessions_expire_unless_used,
    sessions_are_listed_newest_first_by_owner_and_deleted,
    slots_are_limited_renewed_released_and_expire,
    usage_is_recorded_once_per_job_read_by_range_and_purged,
    every_attempt_of_a_turn_is_booked_on_its_own_provider,
    provider_state_merges_cooldowns_errors_and_auth_incidents,
    ping_answers,
);
