//! Per-provider limits: concurrency slots and the cooldown after a usage limit.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::fixture;
use orch_providers::ErrorKind;

#[tokio::test]
async fn usage_limit_without_reset_time_cools_down_for_the_configured_time() {
    let f = fixture(
        "claude",
        "output = { format = 'json' }\nlimits = { cooldown_secs = 2 }",
        &[("FAKE_CAPTURE", "claude-code-2.1.197/429.json")],
    );
    let first = f.run("hi").await.unwrap_err();
    assert_eq!(first.kind, ErrorKind::UsageLimit { resets_at: None });

    let started = Instant::now();
    let refused = f.run("hi").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100), "refusing took {:?}", started.elapsed());
    let until = f.provider.status().cooldown_until.expect("cooling down");
    assert_eq!(refused.kind, ErrorKind::UsageLimit { resets_at: Some(until) });
    assert!(refused.message.starts_with("claude: cooling down after a usage limit until "), "{}", refused.message);
    assert_eq!(f.pids().len(), 1, "the CLI was not started during the cooldown");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(f.provider.status().cooldown_until, None);
    let _ = f.run("hi").await;
    assert_eq!(f.pids().len(), 2, "the CLI runs again after the cooldown");
}

#[tokio::test]
async fn usage_limit_cools_down_until_the_reset_time_claude_gave() {
    let f = fixture("claude", "", &[("FAKE_MODE", "rate-limit-reset"), ("FAKE_RESET_IN", "3600")]);
    let err = f.run("hi").await.unwrap_err();
    let ErrorKind::UsageLimit { resets_at: Some(resets_at) } = err.kind else { panic!("{err:?}") };
    let from_now = resets_at - Utc::now();
    assert!((3590..=3600).contains(&from_now.num_seconds()), "{from_now}");
    assert_eq!(f.provider.status().cooldown_until, Some(resets_at));
    let refused = f.run("hi").await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::UsageLimit { resets_at: Some(resets_at) });
    assert_eq!(f.pids().len(), 1);
}

#[tokio::test]
async fn at_most_the_concurrency_limit_runs_at_once() {
    let f = fixture(
        "claude",
        "limits = { concurrency = 2 }",
        &[("FAKE_MODE", "record"), ("FAKE_DELAY", "0.4"), ("FAKE_CAPTURE", "claude-code-2.1.197/ok.stream.jsonl")],
    );
    let started = Instant::now();
    let turns = (0..6).map(|i| f.run(if i % 2 == 0 { "a" } else { "b" }));
    let watch = async {
        let mut max = 0;
        while started.elapsed() < Duration::from_millis(1000) {
            max = max.max(f.provider.status().in_use);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        max
    };
    let (results, max_in_use) = tokio::join!(futures::future::join_all(turns), watch);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(max_in_use, 2);
    // Six turns of 0.4 s, two at a time: three rounds.
    assert!(started.elapsed() >= Duration::from_millis(1200), "{:?}", started.elapsed());
    let dirs: BTreeSet<String> = f.records().into_iter().map(|r| r.env["CLAUDE_CONFIG_DIR"].clone()).collect();
    assert_eq!(dirs.len(), 2, "six turns shared the two slot dirs: {dirs:?}");
    assert_eq!(f.provider.status().in_use, 0);
}

/// Counts permits held at once, like a Redis limit would across workers.
struct CountingLimit {
    held: std::sync::Arc<std::sync::atomic::AtomicU32>,
    calls: std::sync::Mutex<Vec<(String, u32)>>,
}

struct Held(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl orch_providers::SharedLimit for CountingLimit {
    async fn acquire(
        &self,
        provider: &str,
        limit: u32,
        _max_hold: std::time::Duration,
    ) -> Result<orch_providers::SharedPermit, orch_providers::TurnError> {
        self.calls.lock().unwrap().push((provider.to_owned(), limit));
        self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(orch_providers::SharedPermit(Box::new(Held(self.held.clone()))))
    }
}

#[tokio::test]
async fn a_shared_limit_is_asked_for_each_turn_and_released() {
    let data = tempfile::tempdir().unwrap();
    let config: orch_providers::ProvidersConfig = toml::from_str(&format!(
        "[claude]\ncommand = '{}'\nlimits = {{ concurrency = 3 }}\nenv = {{ FAKE_CAPTURES = '{}', FAKE_CAPTURE = \
         'claude-code-2.1.197/ok.stream.jsonl' }}",
        common::fake_cli().display(),
        common::captures().display()
    ))
    .unwrap();
    let limit = std::sync::Arc::new(CountingLimit { held: Default::default(), calls: Default::default() });
    let providers = orch_providers::Providers::with_shared_limit(&config, data.path(), limit.clone()).unwrap();
    let claude = providers.get("claude").unwrap();
    let request = orch_providers::TurnRequest { prompt: "hi".into(), ..Default::default() };
    claude.run(&request, &Default::default()).await.unwrap();
    assert_eq!(*limit.calls.lock().unwrap(), [("claude".to_owned(), 3)]);
    assert_eq!(limit.held.load(std::sync::atomic::Ordering::SeqCst), 0, "released after the turn");
}

#[tokio::test]
async fn a_bad_configuration_is_refused_naming_the_field() {
    let config: orch_providers::ProvidersConfig = toml::from_str("[gemini]\nlimits = { timeout_secs = 0 }").unwrap();
    let err = orch_providers::Providers::new(&config, std::path::Path::new("/nonexistent")).err().unwrap();
    assert_eq!(err.to_string(), "providers.gemini.limits.timeout_secs: must be at least 1");
}
