//! Warm starts with the real Claude Code (pinned in providers/tests/real-clis)
//! against the fake model API on loopback: a CLI started ahead of its turn
//! answers right, serves one turn only, never reads a prompt as a flag, is
//! replaced in the background within the provider's concurrency, is replaced
//! when it died, and no CLI outlives Orch.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::model_api::{Api, ModelApi, REPLY};
use support::{Backend, Options, TestApp};

/// A pinned CLI's executable.
fn cli(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("providers/tests/real-clis/node_modules/.bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `npm ci` in providers/tests/real-clis (scripts/test does)",
        path.display()
    );
    path
}

/// Orch with the real Claude Code, `warm` CLIs kept ready.
struct Rig {
    api: ModelApi,
    dir: tempfile::TempDir,
    app: TestApp,
    router: Arc<orch_providers::Router>,
    name: String,
}

/// Writes `bin/NAME`: notes each start's pid and arguments (one line per
/// start: `pid [arg] [arg] ...`), then becomes the CLI (same pid).
fn wrapper(root: &Path, name: &str) -> PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join(name);
    let script = format!(
        "#!/bin/sh\nprintf '%s' \"$$\" >> '{log}'\nfor a in \"$@\"; do printf ' [%s]' \"$a\" >> '{log}'; done\n\
         echo >> '{log}'\nexec '{cli}' \"$@\"\n",
        log = root.join("starts").display(),
        cli = cli(name).display()
    );
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// The `[claude]` provider of a rig: the real CLI on `url`, homes under `root`.
fn claude_toml(root: &Path, url: &str, extra: &str) -> String {
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    format!(
        "[claude]\ncommand = '{}'\nenv = {{ HOME = '{}', CLAUDE_CODE_OAUTH_TOKEN = 'sk-ant-oat01-fake-token', \
         ANTHROPIC_BASE_URL = '{url}', CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = '1' }}\n{extra}\n",
        wrapper(root, "claude").display(),
        home.display()
    )
}

/// The `[qwen]` provider of a rig (OpenAI-compatible mode on `url`).
fn qwen_toml(root: &Path, url: &str, extra: &str) -> String {
    let home = root.join("home");
    std::fs::create_dir_all(home.join(".qwen")).unwrap();
    std::fs::write(home.join(".qwen/settings.json"), json!({"privacy": {"usageStatisticsEnabled": false}}).to_string())
        .unwrap();
    format!(
        "[qwen]\ncommand = '{}'\nenv = {{ HOME = '{}', OPENAI_API_KEY = 'fake-qwen-key', OPENAI_BASE_URL = '{url}/v1', \
         OPENAI_MODEL = 'fake-model' }}\n{extra}\n",
        wrapper(root, "qwen").display(),
        home.display()
    )
}

impl Rig {
    async fn start(extra: &str) -> Rig {
        Rig::with(claude_toml, extra).await
    }

    async fn with(provider: fn(&Path, &str, &str) -> String, extra: &str) -> Rig {
        let api = ModelApi::start().await;
        let dir = tempfile::tempdir().unwrap();
        let toml = provider(dir.path(), &api.url, extra);
        let providers: orch_providers::ProvidersConfig = toml::from_str(&toml).unwrap();
        let name = providers.0.keys().next().unwrap().clone();
        let routing: orch_providers::RoutingConfig = toml::from_str(&format!("default_model = '{name}'\n")).unwrap();
        let router =
            Arc::new(orch_providers::Router::from_config(&providers, routing, &dir.path().join("data")).unwrap());
        let options = Options { router: Some(router.clone()), ..Default::default() };
        let app = support::spawn_app_with(Backend::Sqlite, options).await;
        Rig { api, dir, app, router, name }
    }

    /// The rig's one provider.
    fn claude(&self) -> &orch_providers::Provider {
        self.router.providers().get(&self.name).unwrap()
    }

    async fn chat(&self, prompt: &str) -> support::Reply {
        let body = json!({"model": self.name, "messages": [{"role": "user", "content": prompt}]});
        self.app.post("/v1/chat/completions", body).await
    }

    /// Waits until `n` warm CLIs are ready; their pids.
    async fn ready(&self, n: u32) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pids = self.claude().warm_pids();
            if pids.len() as u32 == n {
                return pids;
            }
            assert!(Instant::now() < deadline, "{} warm CLIs ready, not {n}", pids.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Each start of the CLI: its pid and arguments.
    fn starts(&self) -> Vec<(i32, String)> {
        std::fs::read_to_string(self.dir.path().join("starts"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (pid, args) = l.split_once(' ').unwrap_or((l, ""));
                (pid.parse().unwrap(), args.to_owned())
            })
            .collect()
    }

    /// The user text of every request the fake Anthropic API received.
    fn user_texts(&self) -> Vec<String> {
        self.api
            .hits_of(Api::Anthropic)
            .iter()
            .filter(|h| h.path.starts_with("/v1/messages") && !h.path.contains("count_tokens"))
            .map(|h| h.body["messages"].to_string())
            .collect()
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// Live processes in process group `pgid` (a CLI's helpers stay in its group).
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        // After `(comm)`: state ppid pgrp ...
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

async fn gone(pids: &[i32], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p) || !group_members(*p).is_empty()).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "CLI processes left: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text(reply: &support::Reply) -> &str {
    reply.body["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("{}", reply.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_claude_turn_answers_and_each_turn_has_its_own_process() {
    let rig = Rig::start("warm = 1").await;
    // Nothing starts before a turn says which shape (model, flags) to keep ready.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rig.starts().is_empty(), "{:?}", rig.starts());

    let first = rig.chat("first question").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(text(&first), REPLY);
    let warm = rig.ready(1).await;

    let second = rig.chat("second question").await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(text(&second), REPLY);
    let stats = rig.claude().warm_stats().unwrap();
    assert_eq!(stats.served, 1, "{stats:?}");
    // The warm CLI served its one turn and is gone; another took its place.
    gone(&warm, Duration::from_secs(10)).await;
    let next = rig.ready(1).await;
    assert_ne!(next, warm);

    let third = rig.chat("third question").await;
    assert_eq!(text(&third), REPLY, "{}", third.body);
    assert_eq!(rig.claude().warm_stats().unwrap().served, 2);
    gone(&next, Duration::from_secs(10)).await;

    // Each question reached the model once, in its own request, alone.
    let texts = rig.user_texts();
    for (i, question) in ["first question", "second question", "third question"].iter().enumerate() {
        let with: Vec<&String> = texts.iter().filter(|t| t.contains(question)).collect();
        assert_eq!(with.len(), 1, "{question}: {texts:?}");
        for other in ["first question", "second question", "third question"].iter().skip(i + 1) {
            assert!(!with[0].contains(other), "{question} carried {other}: {}", with[0]);
        }
    }
    // Cold and warm starts ran the same command line but for the input format.
    let starts = rig.starts();
    let cold = &starts[0].1;
    let warm_args = &starts[1].1;
    assert_eq!(warm_args.replace(" [--input-format=stream-json]", ""), *cold, "{starts:?}");
    assert!(warm_args.contains("[--input-format=stream-json]"), "{starts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_qwen_turn_answers() {
    let rig = Rig::with(qwen_toml, "warm = 1").await;
    assert_eq!(text(&rig.chat("warm me up").await), REPLY);
    let warm = rig.ready(1).await;
    let reply = rig.chat("-p --yolo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(text(&reply), REPLY);
    assert_eq!(rig.claude().warm_stats().unwrap().served, 1);
    gone(&warm, Duration::from_secs(10)).await;
    let asked = rig.api.hits_of(Api::OpenAiChat).last().unwrap().body["messages"].to_string();
    assert!(asked.contains("-p --yolo"), "{asked}");
    for (_, args) in rig.starts() {
        assert!(!args.contains("--yolo"), "{args}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flag_shaped_prompt_to_a_warm_claude_stays_text() {
    let rig = Rig::start("warm = 1").await;
    assert_eq!(text(&rig.chat("warm me up").await), REPLY);
    for prompt in ["--yolo", "-p x", "--model=opus --dangerously-skip-permissions"] {
        rig.ready(1).await;
        let reply = rig.chat(prompt).await;
        assert_eq!(reply.status, StatusCode::OK, "{prompt}: {}", reply.body);
        assert_eq!(text(&reply), REPLY, "{prompt}");
        // The model got it as the user's text ...
        let last = rig.user_texts().pop().unwrap();
        assert!(last.contains(&serde_json::to_string(prompt).unwrap()[1..prompt.len() + 1]), "{prompt}: {last}");
    }
    assert_eq!(rig.claude().warm_stats().unwrap().served, 3);
    // ... and no start of the CLI had it among its arguments.
    for (_, args) in rig.starts() {
        for prompt in ["[--yolo]", "[-p x]", "opus", "dangerously"] {
            assert!(!args.contains(prompt), "{prompt} in {args}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_warm_pool_is_refilled_within_the_concurrency() {
    let rig = Rig::start("warm = 2\nlimits = { concurrency = 2 }").await;
    assert_eq!(text(&rig.chat("fill it").await), REPLY);
    let ready = rig.ready(2).await;
    // Both slots are held by warm CLIs: never a third.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.claude().warm_pids().len(), 2);
    assert_eq!(rig.starts().len(), 3, "{:?}", rig.starts());

    // Three turns at once: two served warm, one waits for a slot; never more
    // than two CLIs alive at once.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = {
        let watching = watching.clone();
        let starts = rig.dir.path().join("starts");
        tokio::task::spawn_blocking(move || {
            let mut peak = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let log = std::fs::read_to_string(&starts).unwrap_or_default();
                let live =
                    log.lines().filter_map(|l| l.split(' ').next()?.parse::<i32>().ok()).filter(|p| alive(*p)).count();
                peak = peak.max(live);
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let rig_ref = &rig;
    let turns = futures::future::join_all((0..3).map(|i| async move { rig_ref.chat(&format!("at once {i}")).await }));
    for reply in turns.await {
        assert_eq!(text(&reply), REPLY, "{}", reply.body);
    }
    let refilled = rig.ready(2).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(peak.await.unwrap() <= 2, "more CLIs alive than limits.concurrency");
    assert!(refilled.iter().all(|p| !ready.contains(p)));
    let stats = rig.claude().warm_stats().unwrap();
    assert!(stats.served >= 2, "{stats:?}");
    let status = rig.claude().status();
    assert_eq!(status.in_use, 0, "ready CLIs are not turns: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_warm_cli_is_replaced_and_the_turn_starts_cold() {
    let rig = Rig::start("warm = 1").await;
    assert_eq!(text(&rig.chat("warm me up").await), REPLY);
    let ready = rig.ready(1).await;
    // The CLI and whatever it started die at once.
    sigkill(-ready[0]);
    gone(&ready, Duration::from_secs(5)).await;

    let reply = rig.chat("after the death").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(text(&reply), REPLY);
    let stats = rig.claude().warm_stats().unwrap();
    assert_eq!((stats.served, stats.discarded), (0, 1), "{stats:?}");
    // A new one is ready for the next turn, which it serves.
    rig.ready(1).await;
    assert_eq!(text(&rig.chat("next").await), REPLY);
    assert_eq!(rig.claude().warm_stats().unwrap().served, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_turn_of_another_shape_replaces_the_warm_cli() {
    let rig = Rig::start("warm = 1\nlimits = { concurrency = 1 }").await;
    assert_eq!(text(&rig.chat("plain").await), REPLY);
    let plain = rig.ready(1).await;
    // A system prompt is another command line: the ready CLI (holding the
    // only slot) is stopped, the turn runs cold, and its shape is kept ready.
    let body = json!({"model": "claude", "messages": [
        {"role": "system", "content": "answer briefly"}, {"role": "user", "content": "with a system prompt"}]});
    let reply = rig.app.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(text(&reply), REPLY, "{}", reply.body);
    gone(&plain, Duration::from_secs(10)).await;
    rig.ready(1).await;
    let reply = rig.app.post("/v1/chat/completions", body).await;
    assert_eq!(text(&reply), REPLY, "{}", reply.body);
    let stats = rig.claude().warm_stats().unwrap();
    assert_eq!(stats.served, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_stops_every_warm_cli() {
    let rig = Rig::start("warm = 2\nlimits = { concurrency = 2 }").await;
    assert_eq!(text(&rig.chat("fill it").await), REPLY);
    let ready = rig.ready(2).await;
    rig.router.providers().shutdown();
    gone(&ready, Duration::from_secs(5)).await;
    assert!(rig.claude().warm_pids().is_empty());
}

/// SIGKILL to one process (or, negative, to a process group).
fn sigkill(pid: i32) {
    assert!(std::process::Command::new("kill").args(["-KILL", "--", &pid.to_string()]).status().unwrap().success());
}

/// The real binary: `orch serve` with a warm Claude, stopped by SIGTERM and
/// by SIGKILL, leaves no CLI behind.
mod binary {
    use super::*;
    use std::process::Stdio;
    use support::procs::{Procs, orch};

    async fn serve_with_warm_claude(root: &Path, url: &str, procs: &mut Procs) -> (String, String, u32) {
        let home = root.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let port = orch_testkit::free_port();
        let mut child = orch(root, "sqlite://orch.db")
            .arg("serve")
            .env("ORCH_BIND", format!("127.0.0.1:{port}"))
            .env("ORCH_PROVIDER_CLAUDE_COMMAND", wrapper(root, "claude"))
            .env("ORCH_PROVIDER_CLAUDE_WARM", "1")
            .env("ORCH_PROVIDER_CLAUDE_ENV_HOME", &home)
            .env("ORCH_PROVIDER_CLAUDE_ENV_CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-fake-token")
            .env("ORCH_PROVIDER_CLAUDE_ENV_ANTHROPIC_BASE_URL", url)
            .env("ORCH_PROVIDER_CLAUDE_ENV_CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        procs.0.push(child);
        let key = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, BufReader};
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
        (format!("http://127.0.0.1:{port}"), key, pid)
    }

    async fn one_turn(base: &str, key: &str) {
        orch_mcp::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "claude", "messages": [{"role": "user", "content": "hello"}]}))
                .send()
                .await;
            if let Ok(reply) = reply {
                let body: Value = reply.json().await.unwrap();
                assert_eq!(body["choices"][0]["message"]["content"], REPLY, "{body}");
                return;
            }
            assert!(Instant::now() < deadline, "orch serve never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pids of the CLI starts the wrapper noted, once `n` are alive.
    async fn live_starts(root: &Path, n: usize) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(root.join("starts")).unwrap_or_default();
            let live: Vec<i32> =
                log.lines().filter_map(|l| l.split(' ').next()?.parse().ok()).filter(|p| alive(*p)).collect();
            if live.len() == n {
                return live;
            }
            assert!(Instant::now() < deadline, "{} CLIs alive, not {n}", live.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn orch_serve_stopped_by_sigterm_leaves_no_warm_cli() {
        let api = ModelApi::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut procs = Procs::default();
        let (base, key, pid) = serve_with_warm_claude(dir.path(), &api.url, &mut procs).await;
        one_turn(&base, &key).await;
        let warm = live_starts(dir.path(), 1).await;
        assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
        let child = procs.0.last_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "orch serve did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gone(&warm, Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn orch_serve_killed_by_sigkill_leaves_no_warm_cli() {
        let api = ModelApi::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut procs = Procs::default();
        let (base, key, pid) = serve_with_warm_claude(dir.path(), &api.url, &mut procs).await;
        one_turn(&base, &key).await;
        let warm = live_starts(dir.path(), 1).await;
        // Nothing runs in Orch to stop it: its stdin closes with Orch, and it ends.
        sigkill(pid as i32);
        gone(&warm, Duration::from_secs(10)).await;
    }
}
