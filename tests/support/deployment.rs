//! `orch` deployments as child processes of a test: `orch serve`, or `orch
//! api` with or without an `orch worker`, on any store, with real HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use super::procs::{self, Procs};

/// `orch` on `store`, allowed the streams the memory and latency tests open, quiet.
fn orch(dir: &std::path::Path, store: &str) -> Command {
    let mut cmd = procs::orch(dir, store);
    cmd.env("ORCH_MAX_STREAMS_PER_KEY", "1000").stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// A running deployment: its processes (killed on drop) and a client of its API.
pub struct Split {
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
    _procs: Procs,
    _dir: tempfile::TempDir,
}

/// Which processes serve a test.
#[derive(Clone, Copy, PartialEq)]
pub enum Layout {
    /// `orch api` alone: jobs stay queued.
    ApiOnly,
    /// `orch api` + `orch worker` (polling every 30 s).
    Split,
    /// `orch serve`: API and worker in one process.
    Serve,
}

/// The processes of `layout` on `store`, with `env` added to each.
pub async fn start(store: &str, layout: Layout, env: &[(&str, String)]) -> Split {
    orch_mcp::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs::default();
    let port = orch_testkit::free_port();
    let command = |what: &str| {
        let mut cmd = orch(dir.path(), store);
        cmd.arg(what).envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    };
    let mut api = command(if layout == Layout::Serve { "serve" } else { "api" })
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
    if layout == Layout::Split {
        procs.0.push(command("worker").env("ORCH_POLL_INTERVAL", "30s").spawn().unwrap());
    }
    let worker = layout != Layout::ApiOnly;
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
    pub async fn health(&self) -> Value {
        match self.client.get(format!("{}/health", self.base)).send().await {
            Ok(resp) => resp.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    pub async fn submit(&self, plan: Value) -> String {
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
    pub async fn follow_to_end(&self, id: &str) -> String {
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

    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Submits a one-node job and follows it; how long to its end.
    pub async fn run_one(&self) -> Duration {
        let started = Instant::now();
        let id = self.submit(json!({"nodes": [{"id": "a", "echo": "hi"}]})).await;
        let end = tokio::time::timeout(Duration::from_secs(10), self.follow_to_end(&id))
            .await
            .unwrap_or_else(|_| panic!("job {id} did not end within 10 s"));
        assert_eq!(end, "succeeded");
        started.elapsed()
    }
}
