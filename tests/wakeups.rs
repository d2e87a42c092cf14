//! Wake-ups across processes (issue 17 §1): `orch api` and `orch worker` on one
//! Redis, with the worker's poll set to 30 s, so anything quicker than that is a
//! wake-up. Real processes, a real Redis, real HTTP.

mod support;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_testkit::RedisServer;
use serde_json::{Value, json};
use support::deployment::{Layout, Split, start};

/// `orch api` and, when `worker`, one `orch worker` that polls every 30 s.
async fn split(redis: &RedisServer, worker: bool) -> Split {
    start(&redis.url(), if worker { Layout::Split } else { Layout::ApiOnly }, &[]).await
}

/// Issue 17 §1: with a 30 s worker poll, a job is still picked up at once and
/// its follower in the API process sees its end within a second.
#[tokio::test(flavor = "multi_thread")]
async fn across_processes_everything_waits_for_a_poll() {
    let redis = RedisServer::start();
    let split = split(&redis, true).await;
    for _ in 0..5 {
        let took = split.run_one().await;
        assert!(took < Duration::from_secs(1), "submit → end took {took:?}");
        // Idle again between jobs.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After Redis restarts, the worker and the followers are woken again without
/// waiting for their polls.
#[tokio::test(flavor = "multi_thread")]
async fn wakeups_resume_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let split = split(&redis, true).await;
    assert!(split.run_one().await < Duration::from_secs(1));
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    // Both processes reconnect (the API answers again first).
    let deadline = Instant::now() + Duration::from_secs(20);
    while split.health().await["store"]["ok"] != true {
        assert!(Instant::now() < deadline, "the API did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..3 {
        let took = split.run_one().await;
        assert!(took < Duration::from_secs(1), "after the restart, submit → end took {took:?}");
    }
}

/// Followers of jobs nothing happens to cost the store nothing measurable
/// (issue 17 §1: at most 0.1 store operations per second each).
#[tokio::test(flavor = "multi_thread")]
async fn idle_followers_do_not_read_the_store() {
    const FOLLOWERS: usize = 100;
    const WINDOW: Duration = Duration::from_secs(3);
    let redis = RedisServer::start();
    // No worker: the jobs stay queued, their followers idle.
    let split = split(&redis, false).await;
    let commands = || -> u64 {
        // `RedisServer::command` gives one line; the stat is further down.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
        std::io::Write::write_all(&mut s, b"INFO stats\r\n").unwrap();
        let reader = BufReader::new(s);
        for line in reader.lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("total_commands_processed:") {
                return n.trim().parse().unwrap();
            }
        }
        panic!("no total_commands_processed in INFO stats");
    };
    // What the API does on its own while nobody follows.
    let before = commands();
    tokio::time::sleep(WINDOW).await;
    let baseline = commands() - before;

    let mut followers = Vec::new();
    for _ in 0..FOLLOWERS {
        let id = split.submit(json!({"nodes": [{"id": "a", "echo": "hi"}]})).await;
        let resp = split
            .client
            .get(format!("{}/v1/jobs/{id}/events", split.base))
            .bearer_auth(&split.key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        // The queued event arrives; then the follower waits.
        body.next().await.unwrap().unwrap();
        followers.push(body);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = commands();
    tokio::time::sleep(WINDOW).await;
    let with_followers = commands() - before;
    let per_follower = (with_followers.saturating_sub(baseline)) as f64 / WINDOW.as_secs_f64() / FOLLOWERS as f64;
    assert!(
        per_follower <= 0.1,
        "{FOLLOWERS} idle followers cost {per_follower:.2} store ops/s each ({with_followers} commands in {WINDOW:?}, {baseline} without them)"
    );
    drop(followers);
}

/// A provider CLI that writes its pid into `pid_file`, then sleeps a minute.
fn sleeping_cli(dir: &std::path::Path, pid_file: &std::path::Path) -> Vec<(&'static str, String)> {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("sleepy");
    std::fs::write(&script, format!("#!/bin/sh\necho $$ > {}\nexec sleep 60\n", pid_file.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    vec![
        ("ORCH_PROVIDER_SLEEPY_KIND", "cli".into()),
        ("ORCH_PROVIDER_SLEEPY_COMMAND", script.display().to_string()),
        ("ORCH_PROVIDER_SLEEPY_ARGS", "{prompt}".into()),
        ("ORCH_PROVIDER_SLEEPY_OUTPUT_FORMAT", "text".into()),
    ]
}

/// Whether process `pid` is alive (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// A running 60 s chat job on `layout` is cancelled through the API: within
/// about a second it is `cancelled` and its CLI is gone, long before the
/// worker's next heartbeat (every 10 s with the default 30 s lease).
async fn cancel_reaches_the_cli_at_once(store: &str, layout: Layout) {
    let files = tempfile::tempdir().unwrap();
    let pid_file = files.path().join("cli.pid");
    let app = start(store, layout, &sleeping_cli(files.path(), &pid_file)).await;
    let resp = app
        .client
        .post(format!("{}/v1/jobs/chat", app.base))
        .bearer_auth(&app.key)
        .json(&json!({"model": "sleepy", "prompt": "take your time", "max_attempts": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the CLI never started: {}", app.get(&format!("/v1/jobs/{id}")).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(alive(pid));
    // Past the worker's first heartbeat, so only the wake-up can be quick.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = Instant::now();
    let resp = app.client.post(format!("{}/v1/jobs/{id}/cancel", app.base)).bearer_auth(&app.key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let job = loop {
        let job = app.get(&format!("/v1/jobs/{id}")).await;
        if job["status"] != "running" {
            break job;
        }
        assert!(cancelled.elapsed() < Duration::from_secs(5), "still running 5 s after the cancel: {job}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = cancelled.elapsed();
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(took < Duration::from_millis(1500), "cancelled after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(1);
    while alive(pid) {
        assert!(Instant::now() < deadline, "the CLI (pid {pid}) still runs after the job was cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Cancellation reached a running job's worker only with its next heartbeat
/// (every lease/3): api + worker on Redis.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_job_stops_its_cli_at_once_across_processes() {
    let redis = RedisServer::start();
    cancel_reaches_the_cli_at_once(&redis.url(), Layout::Split).await;
}

/// The same in one process: `orch serve` on its embedded store.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_job_stops_its_cli_at_once_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    cancel_reaches_the_cli_at_once(&format!("sqlite://{}", dir.path().join("orch.db").display()), Layout::Serve).await;
}
