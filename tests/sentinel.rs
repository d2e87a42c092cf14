//! A Sentinel-managed Redis store (issue 17 §3): a real primary, replica and
//! three Sentinels on loopback, `orch api` + `orch worker` on
//! `redis+sentinel://`, real HTTP.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_testkit::SentinelSet;
use serde_json::{Value, json};
use support::deployment::{Layout, Split, start};

/// Sends SIGSTOP, SIGCONT or SIGKILL to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Submits a one-node job; its id when the answer was 202, else the status.
async fn submit(app: &Split, ms: u64) -> Result<String, u16> {
    let resp = app
        .client
        .post(format!("{}/v1/jobs/batch", app.base))
        .bearer_auth(&app.key)
        .timeout(Duration::from_secs(10))
        .json(&json!({"plan": {"nodes": [{"id": "a", "sleep": {"ms": ms}}]}}))
        .send()
        .await;
    match resp {
        Ok(resp) if resp.status() == 202 => Ok(resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()),
        Ok(resp) => Err(resp.status().as_u16()),
        Err(_) => Err(0),
    }
}

/// The primary crashes (SIGKILL) while jobs are submitted and run; the
/// sentinels promote the replica, Orch follows it, the crashed server comes
/// back as the new replica, and every job that got a 202 before, during or
/// after the failover ends `succeeded`.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_loses_no_acknowledged_job() {
    let mut set = SentinelSet::start();
    let old_primary = set.primary.port();
    let app = start(&set.url(), Layout::Split, &[]).await;
    let accepted = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let refused = Arc::new(Mutex::new(Vec::<u16>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let app = Arc::new(app);
    let mut submitters = Vec::new();
    for _ in 0..4 {
        let (app, accepted, refused, stop) = (app.clone(), accepted.clone(), refused.clone(), stop.clone());
        submitters.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                match submit(&app, 300).await {
                    Ok(id) => accepted.lock().unwrap().push((id, Instant::now())),
                    Err(status) => {
                        refused.lock().unwrap().push(status);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    // Jobs queued and running on the first primary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!accepted.lock().unwrap().is_empty(), "nothing was accepted before the failover: {:?}", refused.lock());
    signal(set.primary.pid(), "KILL");
    let crashed = Instant::now();
    let deadline = crashed + Duration::from_secs(30);
    while set.primary_port() == Some(old_primary) {
        assert!(Instant::now() < deadline, "the sentinels did not fail over within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = Instant::now();
    assert_eq!(set.primary_port(), Some(set.replica.port()));
    // With its only replica promoted, the new primary has none, so nothing
    // can be acknowledged (503) until the crashed server is back: the
    // sentinels make it a replica of the new primary.
    set.primary.restart();
    // Submissions go on against the new primary.
    let deadline = promoted + Duration::from_secs(20);
    loop {
        let after = accepted.lock().unwrap().iter().filter(|(_, at)| *at > promoted).count();
        if after >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "only {after} jobs accepted in 20 s after the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(accepted.iter().collect::<HashSet<_>>().len(), accepted.len());
    // Every acknowledged job is there and ends well (jobs whose claim or end
    // the old primary took with it run again: at least once).
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &accepted {
        loop {
            let resp = app.client.get(format!("{}/v1/jobs/{id}", app.base)).bearer_auth(&app.key).send().await.unwrap();
            let status = resp.status();
            let job: Value = resp.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 404, "job {id} got a 202 and was lost in the failover");
            if job["status"] == "succeeded" {
                break;
            }
            assert!(
                !matches!(job["status"].as_str(), Some("failed" | "cancelled")),
                "job {id} ended {}: {job}",
                job["status"]
            );
            assert!(Instant::now() < deadline, "job {id} has not ended 60 s after the failover: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "{} jobs acknowledged, all succeeded; {} submissions refused during the failover ({} ms after the crash)",
        accepted.len(),
        refused.lock().unwrap().len(),
        promoted.duration_since(crashed).as_millis()
    );
}

/// A job is acknowledged only once a replica has it: with the replica
/// stopped, a submission answers 503 (it may exist; the message says to
/// retry with the same Idempotency-Key) instead of a 202 a failover could
/// take back; with the replica back, 202 again.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_no_replica_confirmed_is_not_acknowledged() {
    let set = SentinelSet::start();
    let url = format!("{}?ack_timeout_ms=300", set.url());
    let app = start(&url, Layout::ApiOnly, &[]).await;
    submit(&app, 1).await.expect("accepted while the replica runs");
    signal(set.replica.pid(), "STOP");
    let resp = app
        .client
        .post(format!("{}/v1/jobs/batch", app.base))
        .bearer_auth(&app.key)
        .json(&json!({"plan": {"nodes": [{"id": "a", "echo": 1}]}}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    signal(set.replica.pid(), "CONT");
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("replica") && message.contains("Idempotency-Key"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while submit(&app, 1).await.is_err() {
        assert!(Instant::now() < deadline, "no 202 again after the replica came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
