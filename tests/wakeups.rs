//! Wake-ups across processes (issue 17 §1): `orch api` and `orch worker` on one
//! Redis, with the worker's poll set to 30 s, so anything quicker than that is a
//! wake-up. Real processes, a real Redis, real HTTP.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_testkit::RedisServer;
use serde_json::{Value, json};
use support::procs::{self, Procs};

/// `orch` on `store`, allowed the streams the memory and latency tests open.
fn orch(dir: &std::path::Path, store: &str) -> Command {
    let mut cmd = procs::orch(dir, store);
    cmd.env("ORCH_MAX_STREAMS_PER_KEY", "1000").stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

struct Split {
    base: String,
    key: String,
    client: reqwest::Client,
    _procs: Procs,
    _dir: tempfile::TempDir,
}

/// `orch api` and, when `worker`, one `orch worker` that polls every 30 s.
async fn split(redis: &RedisServer, worker: bool) -> Split {
    orch_mcp::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs::default();
    let port = orch_testkit::free_port();
    let mut api = orch(dir.path(), &redis.url())
        .arg("api")
        .env("ORCH_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = api.stdout.take().unwrap();
    procs.0.push(api);
    let key = tokio::task::spawn_blocking(move || {
        let mut key = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(k) = line.trim().strip_prefix("orch_") {
                key = Some(format!("orch_{k}"));
            }
            if line.contains("POST /v1/keys") {
                break;
            }
        }
        key.expect("first start prints an admin key")
    })
    .await
    .unwrap();
    if worker {
        procs.0.push(orch(dir.path(), &redis.url()).arg("worker").env("ORCH_POLL_INTERVAL", "30s").spawn().unwrap());
    }
    let split = Split {
        base: format!("http://127.0.0.1:{port}"),
        key,
        client: reqwest::Client::new(),
        _procs: procs,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = split.health().await;
        if health["store"]["ok"] == true && (!worker || health["workers"].as_u64() >= Some(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "api/worker not up: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker is past its first look at the queue and idle now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    split
}

impl Split {
    async fn health(&self) -> Value {
        match self.client.get(format!("{}/health", self.base)).send().await {
            Ok(resp) => resp.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn submit(&self, plan: Value) -> String {
        let resp = self
            .client
            .post(format!("{}/v1/jobs/batch", self.base))
            .bearer_auth(&self.key)
            .json(&json!({ "plan": plan }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    /// Follows the job's events until its terminal one; its name.
    async fn follow_to_end(&self, id: &str) -> String {
        let resp =
            self.client.get(format!("{}/v1/jobs/{id}/events", self.base)).bearer_auth(&self.key).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            for kind in ["succeeded", "failed", "cancelled"] {
                if text.contains(&format!("event: {kind}\n")) {
                    return kind.to_owned();
                }
            }
        }
        panic!("the event stream of {id} ended without a terminal event: {text}");
    }

    /// Submits a one-node job and follows it; how long to its end.
    async fn run_one(&self) -> Duration {
        let started = Instant::now();
        let id = self.submit(json!({"nodes": [{"id": "a", "echo": "hi"}]})).await;
        let end = tokio::time::timeout(Duration::from_secs(10), self.follow_to_end(&id))
            .await
            .unwrap_or_else(|_| panic!("job {id} did not end within 10 s"));
        assert_eq!(end, "succeeded");
        started.elapsed()
    }
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
