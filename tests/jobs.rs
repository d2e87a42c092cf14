//! The job lifecycle over HTTP, the same tests on the SQLite and Redis backends.

mod support;

use std::time::Duration;

use chrono::Utc;
use orch_store::{JobKind, NewJob};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Options, spawn_app, spawn_app_with};

const WAIT: Duration = Duration::from_secs(20);

async fn chat_job_runs_and_returns_its_result(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app
        .post(
            "/v1/jobs/chat",
            json!({"messages": [{"role": "user", "content": "hello orch"}], "metadata": {"flow": "t1"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["status"], "queued");
    let base = &app.base;
    assert_eq!(r.body["status_url"], format!("{base}/v1/jobs/{id}"));
    assert_eq!(r.body["result_url"], format!("{base}/v1/jobs/{id}/result"));
    assert_eq!(r.body["events_url"], format!("{base}/v1/jobs/{id}/events"));
    assert_eq!(r.headers["location"], format!("{base}/v1/jobs/{id}"));

    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "chat");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["metadata"], json!({"flow": "t1"}));
    assert!(job["finished_at"].is_string() && job["started_at"].is_string(), "{job}");

    let result = app.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(result.status, StatusCode::OK);
    assert_eq!(result.body["status"], "succeeded");
    assert_eq!(result.body["result"]["text"], "hello orch");
    app.stop().await;
}

async fn batch_plan_runs_branches_in_parallel(backend: Backend) {
    let app = spawn_app(backend).await;
    let started = std::time::Instant::now();
    let id = app
        .submit_plan(json!({"nodes": [
            {"id": "a", "sleep": {"ms": 400}},
            {"id": "b", "sleep": {"ms": 400}},
            {"id": "c", "sleep": {"ms": 400}},
            {"id": "join", "echo": {"done": true}, "depends_on": ["a", "b", "c"]}
        ], "max_parallel": 3}))
        .await;
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // Three 400 ms branches side by side take about 400 ms, not 1.2 s.
    assert!(started.elapsed() < Duration::from_millis(1100), "took {:?}", started.elapsed());
    assert_eq!(job["progress"]["completed"], 4);
    assert_eq!(job["progress"]["total"], 4);
    let result = app.get(&format!("/v1/jobs/{id}/result")).await.body;
    assert_eq!(result["result"]["output"]["join"], json!({"done": true}));
    assert_eq!(result["result"]["output"]["a"], json!({"slept_ms": 400}));
    assert_eq!(result["result"]["nodes"]["b"]["status"], "succeeded");
    app.stop().await;
}

async fn events_stream_to_the_end_and_resume(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app
        .submit_plan(json!({"nodes": [{"id": "a", "sleep": {"ms": 100}}, {"id": "b", "echo": 1, "depends_on": ["a"]}]}))
        .await;
    let events = app.events(&id, None).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    // Per node: started, then succeeded.
    assert_eq!(kinds, ["queued", "running", "progress", "progress", "progress", "progress", "succeeded"]);
    let ids: Vec<u64> = events.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(events[2].2["data"]["node"], "a");
    assert_eq!(events[4].2["job_id"], id);

    let rest = app.events(&id, Some(3)).await;
    let rest_ids: Vec<u64> = rest.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(rest_ids, [4, 5, 6, 7]);
    app.stop().await;
}

async fn idempotency_key_returns_the_first_job(backend: Backend) {
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    let send = |body: Value, key: &'static str| {
        let req = app
            .client
            .post(format!("{}/v1/jobs/chat", app.base))
            .bearer_auth(&app.admin)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let body = json!({"prompt": "once"});
    let first = send(body.clone(), "abc-1").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = send(body.clone(), "abc-1").await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let other = send(json!({"prompt": "twice"}), "abc-1").await;
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["error"]["code"], "idempotency_conflict");
    assert_eq!(other["error"]["details"]["job_id"], first["id"]);

    let page = app.get("/v1/jobs").await.body;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
}

async fn list_pages_newest_first_with_filters(backend: Backend) {
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let r = if i % 2 == 0 {
            app.post("/v1/jobs/chat", json!({"prompt": format!("n{i}")})).await
        } else {
            app.post("/v1/jobs/batch", json!({"plan": {"nodes": [{"id": "x", "echo": i}]}})).await
        };
        assert_eq!(r.status, StatusCode::ACCEPTED);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=3&cursor={c}"),
            None => "/v1/jobs?limit=3".to_owned(),
        };
        let page = app.get(&path).await.body;
        for j in page["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let chats = app.get("/v1/jobs?kind=chat&status=queued").await.body;
    let chat_ids: Vec<&str> = chats["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(chat_ids, [&ids[6], &ids[4], &ids[2], &ids[0]]);
    assert_eq!(app.get("/v1/jobs?status=succeeded").await.body["jobs"], json!([]));

    let bad = app.get("/v1/jobs?status=done").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["error"]["details"]["field"], "status");
    assert!(bad.body["error"]["message"].as_str().unwrap().contains("queued, running, succeeded, failed, cancelled"));
    let bad = app.get("/v1/jobs?limit=1000").await;
    assert_eq!(bad.body["error"]["details"]["field"], "limit");
}

async fn cancelled_queued_job_never_starts(backend: Backend) {
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    let id = app.submit_plan(json!({"nodes": [{"id": "a", "echo": 1}]})).await;
    let r = app.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "cancelled");
    // A worker that starts now finds nothing to run.
    let worker = tokio::spawn(orch_worker::run(
        app.store.clone(),
        std::sync::Arc::new(orch_worker::Executors::new(support::echo_router(), None)),
        support::quick_worker(),
        app.shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = app.get(&format!("/v1/jobs/{id}")).await.body;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["attempts"], 0);
    let again = app.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["error"]["code"], "job_finished");
    app.shutdown.cancel();
    worker.await.unwrap();
}

async fn cancelling_a_running_job_stops_it(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options { tweak: Box::new(|c| c.lease = Duration::from_millis(600)), ..Default::default() },
    )
    .await;
    let id = app.submit_plan(json!({"nodes": [{"id": "long", "sleep": {"ms": 60000}}]})).await;
    app.wait_for(&id, WAIT, |j| j["status"] == "running").await;
    let r = app.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["cancel_requested"], true);
    let started = std::time::Instant::now();
    let job = app.wait_finished(&id, Duration::from_secs(5)).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(started.elapsed() < Duration::from_secs(3), "stopping took {:?}", started.elapsed());
    app.stop().await;
}

async fn failed_attempts_are_retried_with_backoff(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app
        .submit_batch(json!({"plan": {"nodes": [{"id": "flaky", "fail": {"message": "upstream hiccup", "times": 2}}]}, "max_attempts": 3}))
        .await;
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 3);
    let kinds: Vec<String> = app.events(&id, None).await.into_iter().map(|(_, k, _)| k).collect();
    // Per attempt: the node started, then failed (or succeeded).
    assert_eq!(
        kinds,
        [
            "queued",
            "running",
            "progress",
            "progress",
            "retrying",
            "running",
            "progress",
            "progress",
            "retrying",
            "running",
            "progress",
            "progress",
            "succeeded"
        ]
    );

    let id = app
        .submit_batch(json!({"plan": {"nodes": [{"id": "broken", "fail": {"message": "always"}}]}, "max_attempts": 2}))
        .await;
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["error"]["code"], "step_failed");
    assert!(job["error"]["message"].as_str().unwrap().contains("always"), "{job}");
    let result = app.get(&format!("/v1/jobs/{id}/result")).await.body;
    assert_eq!(result["status"], "failed");
    assert_eq!(result["result"], Value::Null);
    assert_eq!(result["error"]["code"], "step_failed");

    let id = app
        .submit_plan(json!({"nodes": [{"id": "fatal", "fail": {"message": "bad input", "retryable": false}}]}))
        .await;
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!((job["status"].as_str(), job["attempts"].as_u64()), (Some("failed"), Some(1)), "{job}");
    app.stop().await;
}

async fn result_waits_for_the_job_to_finish(backend: Backend) {
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    let id = app.submit_plan(json!({"nodes": [{"id": "a", "echo": 1}]})).await;
    let r = app.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["error"]["code"], "job_not_finished");
    assert_eq!(r.body["error"]["details"]["status"], "queued");
    assert_eq!(r.headers["retry-after"], "1");
}

async fn job_of_a_dead_worker_is_finished_by_another(backend: Backend) {
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    let id = app.submit_plan(json!({"nodes": [{"id": "a", "echo": "survived"}]})).await;
    // A worker claims the job and dies without a word.
    let claimed = app.store.claim("dead-worker", 10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let worker = tokio::spawn(orch_worker::run(
        app.store.clone(),
        std::sync::Arc::new(orch_worker::Executors::new(support::echo_router(), None)),
        {
            let mut c = support::quick_worker();
            c.lease = Duration::from_millis(600);
            c
        },
        app.shutdown.clone(),
    ));
    let job = app.wait_finished(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);
    let events = app.events(&id, None).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["queued", "running", "retrying", "running", "progress", "progress", "succeeded"]);
    assert_eq!(events[2].2["data"]["error"]["code"], "worker_lost");
    // The dead worker coming back cannot record a second outcome.
    let late = orch_store::Completion {
        job_id: claimed[0].id,
        outcome: orch_store::Outcome::Succeeded { result: json!("zombie") },
    };
    assert_eq!(app.store.complete("dead-worker", vec![late]).await.unwrap(), [false]);
    let result = app.get(&format!("/v1/jobs/{id}/result")).await.body;
    assert_eq!(result["result"]["output"]["a"], "survived");
    app.shutdown.cancel();
    worker.await.unwrap();
}

async fn finished_jobs_are_purged_after_the_retention(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            tweak: Box::new(|c| {
                c.retention = Duration::from_millis(300);
                c.purge_interval = Duration::from_millis(100);
            }),
            ..Default::default()
        },
    )
    .await;
    let id = app.submit_plan(json!({"nodes": [{"id": "a", "echo": 1}]})).await;
    app.wait_finished(&id, WAIT).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get(&format!("/v1/jobs/{id}")).await;
        if r.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "job was not purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get(&format!("/v1/jobs/{id}/result")).await.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

/// Regression for the apalis-redis "too many results to unpack" and the
/// apalis-sqlite slowdown: a 50,000 job backlog built while no worker runs
/// drains completely once a worker starts.
async fn backlog_of_50000_drains_after_worker_starts(backend: Backend) {
    let app = spawn_app_with(backend, Options { worker: false, ..Default::default() }).await;
    const N: usize = 50_000;
    let now = Utc::now();
    for chunk in 0..(N / 5000) {
        let jobs = (0..5000)
            .map(|_| NewJob {
                id: orch_store::new_job_id(),
                kind: JobKind::Batch,
                input: json!({"plan": {"nodes": []}}),
                metadata: json!({"chunk": chunk}),
                max_attempts: 3,
                created_at: now,
                run_at: now,
                idempotency: None,
                owner: None,
            })
            .collect();
        app.store.insert_jobs(jobs).await.unwrap();
    }
    assert_eq!(app.store.count_jobs().await.unwrap().queued, N as u64);
    let worker = tokio::spawn(orch_worker::run(
        app.store.clone(),
        std::sync::Arc::new(orch_worker::Executors::new(support::echo_router(), None)),
        support::quick_worker(),
        app.shutdown.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let counts = app.store.count_jobs().await.unwrap();
        if counts.succeeded == N as u64 {
            assert_eq!((counts.queued, counts.running, counts.failed), (0, 0, 0));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backlog not drained: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.body["queue"]["succeeded"], N as u64);
    app.shutdown.cancel();
    worker.await.unwrap();
}

async fn health_reports_store_and_queue(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(
        r.body["store"]["backend"],
        match backend {
            Backend::Sqlite => "sqlite",
            Backend::Redis => "redis",
        }
    );
    assert_eq!(r.body["store"]["ok"], true);
    assert_eq!(r.body["queue"]["queued"], 0);
    app.stop().await;
}

on_both_backends!(
    chat_job_runs_and_returns_its_result,
    batch_plan_runs_branches_in_parallel,
    events_stream_to_the_end_and_resume,
    idempotency_key_returns_the_first_job,
    list_pages_newest_first_with_filters,
    cancelled_queued_job_never_starts,
    cancelling_a_running_job_stops_it,
    failed_attempts_are_retried_with_backoff,
    result_waits_for_the_job_to_finish,
    job_of_a_dead_worker_is_finished_by_another,
    finished_jobs_are_purged_after_the_retention,
    backlog_of_50000_drains_after_worker_starts,
    health_reports_store_and_queue,
);

/// While the store refuses writes (Redis over its `maxmemory` with
/// `noeviction`; reads still work) `/health` answers 503, and a worker that
/// cannot renew its lease stops the attempt before the lease expires, so the
/// job is never run by two attempts at once (a lock the CLI holds shows it).
#[tokio::test]
async fn health_is_503_and_no_job_runs_twice_while_store_writes_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (lock, log) = (dir.path().join("run.lock"), dir.path().join("runs.log"));
    let script = format!(
        "exec 9>{l}; flock -n 9 || echo overlap >> {g}; echo start >> {g}; sleep 5; echo end >> {g}; echo ok",
        l = lock.display(),
        g = log.display()
    );
    let providers = format!(
        "[slow]\nkind = 'cli'\ncommand = '/bin/sh'\nargs = ['-c', {script:?}]\noutput = {{ format = 'text' }}\n"
    );
    let router = support::router(&providers, "default_model = 'slow'\n");
    let app = spawn_app_with(Backend::Redis, Options { router: Some(router), ..Default::default() }).await;
    let redis = app.handle.redis.as_ref().unwrap();
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
    let r = app.post("/v1/jobs/chat", json!({"prompt": "hi"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("start") {
        assert!(std::time::Instant::now() < deadline, "the CLI never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis.command("CONFIG SET maxmemory-policy noeviction"), "+OK");
    assert_eq!(redis.command("CONFIG SET maxmemory 1"), "+OK");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{}", health.body);
    assert_eq!(health.body["store"]["writable"], false, "{}", health.body);
    // Longer than the lease (2 s): the job's lease expires meanwhile.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(redis.command("CONFIG SET maxmemory 0"), "+OK");
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let runs = std::fs::read_to_string(&log).unwrap();
    assert!(!runs.contains("overlap"), "two attempts ran at once: {runs}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
    app.stop().await;
}
