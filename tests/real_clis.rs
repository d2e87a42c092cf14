//! The real CLIs behind Orch: Claude Code, Gemini CLI, Codex and Qwen Code,
//! pinned in providers/tests/real-clis (scripts/test runs `npm ci` there),
//! each talking to a fake model API on loopback (support::model_api) that
//! answers as each test scripts it. What is asserted is what a user sees:
//! answers, failover and its time, cooldowns and skipped providers, 429 with
//! Retry-After, `/v1/usage`, `/v1/providers`, `/health/tokens`, `orch doctor`,
//! and that no provider home keeps a prompt after its turn.
//!
//! Every CLI is told to send nothing but model requests (telemetry, update
//! checks and plugin syncs off), so all traffic stays on loopback.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::model_api::{self, Answer, Api, ModelApi};
use support::{Backend, Options, TestApp};

/// The pinned CLIs' executables.
fn cli(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("providers/tests/real-clis/node_modules/.bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `npm ci` in providers/tests/real-clis (scripts/test does)",
        path.display()
    );
    path
}

/// Seconds since the epoch, as the start logs write them.
fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Orch with the four real CLIs, their homes and data in one temporary dir.
struct Rig {
    api: ModelApi,
    dir: tempfile::TempDir,
    app: TestApp,
    providers_toml: String,
}

/// Per-provider additions to the generated configuration (`limits = {...}` lines).
#[derive(Default)]
struct Extra {
    claude: &'static str,
    gemini: &'static str,
    codex: &'static str,
    qwen: &'static str,
}

impl Rig {
    async fn start(fallback: &[&str], extra: Extra) -> Rig {
        let api = ModelApi::start().await;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let url = &api.url;
        // Each CLI runs through a wrapper that notes when it started (for failover times).
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["claude", "gemini", "codex", "qwen"] {
            let wrapper = bin.join(name);
            let script = format!(
                "#!/bin/sh\ndate +%s.%N >> '{}'\nexec '{}' \"$@\"\n",
                root.join(format!("starts-{name}")).display(),
                cli(name).display()
            );
            std::fs::write(&wrapper, script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::create_dir_all(root.join(format!("home-{name}"))).unwrap();
        }
        // Gemini's configured home has settings of its own (usage statistics off)
        // but no auth type: Orch adds the one its API key needs (issue 16, defect 7).
        let gemini_home = root.join("gemini-home");
        std::fs::create_dir_all(gemini_home.join(".gemini")).unwrap();
        std::fs::write(
            gemini_home.join(".gemini/settings.json"),
            json!({"privacy": {"usageStatisticsEnabled": false}}).to_string(),
        )
        .unwrap();
        // Codex on the fake Responses API; no update check, analytics or plugin sync.
        let codex_home = root.join("codex-home");
        std::fs::create_dir_all(&codex_home).unwrap();
        std::fs::write(
            codex_home.join("config.toml"),
            format!(
                "check_for_update_on_startup = false\nmodel = \"fake-model\"\nmodel_provider = \"fake\"\n\
                 [model_providers.fake]\nname = \"fake\"\nbase_url = \"{url}/v1\"\nenv_key = \"OPENAI_API_KEY\"\n\
                 wire_api = \"responses\"\n[analytics]\nenabled = false\n[features]\nplugins = false\n"
            ),
        )
        .unwrap();
        // Qwen Code sends no usage statistics.
        std::fs::create_dir_all(root.join("home-qwen/.qwen")).unwrap();
        std::fs::write(
            root.join("home-qwen/.qwen/settings.json"),
            json!({"privacy": {"usageStatisticsEnabled": false}}).to_string(),
        )
        .unwrap();
        let home = |name: &str| root.join(format!("home-{name}")).display().to_string();
        let command = |name: &str| bin.join(name).display().to_string();
        let providers_toml = format!(
            "[claude]\ncommand = '{claude}'\nenv = {{ HOME = '{claude_home}', CLAUDE_CODE_OAUTH_TOKEN = \
             'sk-ant-oat01-fake-token', ANTHROPIC_BASE_URL = '{url}', CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = '1' }}\n\
             {claude_extra}\n\
             [gemini]\ncommand = '{gemini}'\nhome = '{gemini_home}'\ndefault_model = 'gemini-2.5-pro'\n\
             env = {{ HOME = '{gemini_user}', GEMINI_API_KEY = 'fake-gemini-key', GOOGLE_GEMINI_BASE_URL = '{url}' }}\n\
             {gemini_extra}\n\
             [codex]\ncommand = '{codex}'\nenv = {{ HOME = '{codex_user}', CODEX_HOME = '{codex_home}', \
             OPENAI_API_KEY = 'fake-openai-key' }}\n{codex_extra}\n\
             [qwen]\ncommand = '{qwen}'\nenv = {{ HOME = '{qwen_home}', OPENAI_API_KEY = 'fake-qwen-key', \
             OPENAI_BASE_URL = '{url}/v1', OPENAI_MODEL = 'fake-model' }}\n{qwen_extra}\n",
            claude = command("claude"),
            claude_home = home("claude"),
            claude_extra = extra.claude,
            gemini = command("gemini"),
            gemini_home = gemini_home.display(),
            gemini_user = home("gemini"),
            gemini_extra = extra.gemini,
            codex = command("codex"),
            codex_user = home("codex"),
            codex_home = codex_home.display(),
            codex_extra = extra.codex,
            qwen = command("qwen"),
            qwen_home = home("qwen"),
            qwen_extra = extra.qwen,
        );
        let fallback: Vec<String> = fallback.iter().map(|f| format!("'{f}'")).collect();
        let routing = format!("default_model = 'claude'\nfallback = [{}]\n", fallback.join(", "));
        let providers: orch_providers::ProvidersConfig = toml::from_str(&providers_toml).unwrap();
        let routing: orch_providers::RoutingConfig = toml::from_str(&routing).unwrap();
        let router = orch_providers::Router::from_config(&providers, routing, &root.join("data")).unwrap();
        let options = Options { router: Some(Arc::new(router)), ..Default::default() };
        let app = support::spawn_app_with(Backend::Sqlite, options).await;
        Rig { api, dir, app, providers_toml }
    }

    /// One chat completion; the reply's status and body.
    async fn chat(&self, model: &str, prompt: &str) -> support::Reply {
        let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
        self.app.post("/v1/chat/completions", body).await
    }

    /// When each start of `name`'s CLI happened (seconds since the epoch).
    fn starts(&self, name: &str) -> Vec<f64> {
        std::fs::read_to_string(self.dir.path().join(format!("starts-{name}")))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// The job behind a completion.
    async fn job_result(&self, reply: &support::Reply) -> Value {
        let id = reply.body["orch"]["job_id"].as_str().or(reply.body["error"]["details"]["job_id"].as_str());
        let id = id.unwrap_or_else(|| panic!("no job id in {}", reply.body));
        self.app.get(&format!("/v1/jobs/{id}/result")).await.body["result"].clone()
    }

    /// `/v1/usage` by provider: (turns, failed, input tokens, output tokens).
    async fn usage(&self) -> std::collections::BTreeMap<String, (u64, u64, u64, u64)> {
        let report = self.app.get("/v1/usage").await;
        assert_eq!(report.status, StatusCode::OK, "{}", report.body);
        report.body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let n = |k: &str| g[k].as_u64().unwrap_or(0);
                (
                    g["group"].as_str().unwrap().to_owned(),
                    (n("turns"), n("failed"), n("input_tokens"), n("output_tokens")),
                )
            })
            .collect()
    }

    /// `GET /v1/providers` by name.
    async fn providers(&self) -> std::collections::BTreeMap<String, Value> {
        let list = self.app.get("/v1/providers").await;
        assert_eq!(list.status, StatusCode::OK, "{}", list.body);
        list.body.as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone())).collect()
    }

    /// `GET /health/tokens`: each provider's status.
    async fn tokens(&self) -> std::collections::BTreeMap<String, String> {
        let health = self.app.get("/health/tokens").await;
        let list = health.body.as_array().cloned().unwrap_or_else(|| panic!("{}", health.body));
        list.iter()
            .map(|p| (p["provider"].as_str().unwrap().to_owned(), p["status"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// `orch doctor` on this rig's store and providers: (success, stdout).
    fn doctor(&self) -> (bool, String) {
        let dir = self.dir.path().join("doctor");
        std::fs::create_dir_all(&dir).unwrap();
        let toml = self.providers_toml.replace("\n[", "\n[providers.");
        std::fs::write(dir.join("orch.toml"), format!("[providers.{}", &toml[1..])).unwrap();
        let support::StoreHandle { url, .. } = &self.app.handle;
        let orch_store::StoreUrl::Sqlite(db) = url else { unreachable!("the rig uses SQLite") };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
            .arg("doctor")
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ORCH_STORE", format!("sqlite://{}", db.display()))
            .env("ORCH_DATA_DIR", dir.join("data"))
            .env("ORCH_LOG", "warn")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every file under the provider homes and Orch's provider data that
    /// contains `needle`.
    fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.dir.path().to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = entry.file_name();
                // The start logs and the doctor's config are the test's own.
                if name.to_string_lossy().starts_with("starts-") || name == "doctor" || name == "orch.db" {
                    continue;
                }
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file()
                    && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                {
                    found.push(path);
                }
            }
        }
        found
    }
}

/// The provider a completion names in `model` (`provider` or `provider/model`).
fn answered_by(reply: &support::Reply) -> &str {
    reply.body["model"].as_str().unwrap_or_default().split('/').next().unwrap()
}

/// A prompt no file should keep.
fn secret_prompt(tag: &str) -> String {
    format!("orch-prompt-{tag}-{}", uuid_like())
}

fn uuid_like() -> String {
    format!("{:x}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos())
}

/// Each CLI answers through Orch with its model's text, usage is booked on
/// its provider, and afterwards no provider home keeps the prompt (issue 16,
/// defect 8: Claude `--no-session-persistence`, Codex `--ephemeral`, Gemini's
/// chat file removed after the turn, Qwen `--chat-recording=false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_real_cli_answers_and_leaves_no_prompt_behind() {
    let rig = Rig::start(&[], Extra::default()).await;
    let names = ["claude", "gemini", "codex", "qwen"];
    let prompts: Vec<String> = names.iter().map(|n| secret_prompt(n)).collect();
    let replies = futures::future::join_all(names.iter().zip(&prompts).map(|(n, p)| rig.chat(n, p))).await;
    for (name, reply) in names.iter().zip(&replies) {
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.body);
        assert_eq!(reply.body["choices"][0]["message"]["content"], model_api::REPLY, "{name}");
        assert_eq!(answered_by(reply), *name, "{}", reply.body);
    }
    assert!(rig.api.unknown().is_empty(), "requests the fake does not serve: {:?}", rig.api.unknown());
    // One model request per turn: Qwen's memory extractor (a second, billed request) is off.
    for api in [Api::Anthropic, Api::Gemini, Api::OpenAiChat, Api::OpenAiResponses] {
        assert_eq!(rig.api.hits_of(api).len(), 1, "{api:?}: {:?}", rig.api.hits_of(api));
    }
    let usage = rig.usage().await;
    for (name, (input, output)) in [
        ("claude", model_api::ANTHROPIC_USAGE),
        ("gemini", model_api::GEMINI_USAGE),
        ("codex", model_api::RESPONSES_USAGE),
        ("qwen", model_api::CHAT_USAGE),
    ] {
        assert_eq!(usage[name], (1, 0, input, output), "{name}: {usage:?}");
    }
    for (name, prompt) in names.iter().zip(&prompts) {
        let left = rig.files_containing(prompt);
        assert!(left.is_empty(), "{name}'s prompt is still on disk in {left:?}");
    }
    let tokens = rig.tokens().await;
    assert!(tokens.values().all(|t| t == "ok"), "{tokens:?}");
    // Each provider says what its credential bills (issue 16, "say what each subscription allows").
    let plans: Vec<(String, Value)> =
        rig.providers().await.into_iter().map(|(name, p)| (name, p["billing"]["plan"].clone())).collect();
    let expected = [("claude", "subscription"), ("codex", "api_key"), ("gemini", "api_key"), ("qwen", "api_key")];
    assert_eq!(plans, expected.map(|(n, p)| (n.to_owned(), json!(p))), "{plans:?}");
    let (ok, report) = rig.doctor();
    assert!(ok, "doctor:\n{report}");
    assert!(report.contains("billing: Claude Pro/Max/Team subscription"), "{report}");
    rig.app.stop().await;
}

/// The first request `api` answered with a status of at least `min` at or after `since`.
fn first_failure(rig: &Rig, api: Api, since: SystemTime, min: u16) -> SystemTime {
    rig.api
        .hits_of(api)
        .into_iter()
        .find(|h| h.at >= since && h.status >= min)
        .unwrap_or_else(|| panic!("{api:?} answered no failure since the turn began: {:?}", rig.api.hits_of(api)))
        .at
}

/// A Claude 500 or 529 moves the turn to the fallback within 5 s of the first
/// failed request (measured from the fake's clock to the fallback CLI's start),
/// and the next turn skips Claude while its outage cooldown lasts (issue 16,
/// defects 2 and 5: each attempt booked on its own provider).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_outage_fails_over_within_five_seconds() {
    let extra = Extra { claude: "limits = { outage_cooldown_secs = 3 }", ..Default::default() };
    let rig = Rig::start(&["codex"], extra).await;
    for (round, answer, status) in [(0, Answer::ServerError, 500), (1, Answer::Overloaded, 529)] {
        rig.api.answer(Api::Anthropic, answer);
        let since = SystemTime::now();
        let codex_before = rig.starts("codex").len();
        let reply = rig.chat("claude", &format!("round {round}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(answered_by(&reply), "codex", "{}", reply.body);
        let result = rig.job_result(&reply).await;
        let failed = &result["fallbacks"][0];
        assert_eq!(failed["target"], "claude", "{result}");
        assert_eq!(failed["error"]["kind"], json!({"type": "upstream", "status": status}), "{result}");
        let failure = epoch(first_failure(&rig, Api::Anthropic, since, 500));
        let fallback_start = rig.starts("codex")[codex_before];
        let gap = fallback_start - failure;
        assert!((0.0..=5.0).contains(&gap), "round {round}: the fallback started {gap:.2} s after the first {status}");
        eprintln!("claude {status}: fallback started {gap:.3} s after the first failed request");

        // While the outage cooldown lasts, Claude is skipped without a request.
        let calls = rig.api.hits_of(Api::Anthropic).len();
        let skipped = rig.chat("claude", "during the cooldown").await;
        assert_eq!(skipped.status, StatusCode::OK, "{}", skipped.body);
        let result = rig.job_result(&skipped).await;
        assert_eq!(result["fallbacks"][0]["skipped"], true, "{result}");
        assert_eq!(rig.api.hits_of(Api::Anthropic).len(), calls, "a cooling-down provider got a request");
        let claude = &rig.providers().await["claude"];
        assert_eq!((claude["ready"].as_bool(), claude["cooldown_reason"].as_str()), (Some(false), Some("upstream")));
        tokio::time::sleep(Duration::from_millis(3200)).await;
    }
    let usage = rig.usage().await;
    assert_eq!((usage["claude"].0, usage["claude"].1), (2, 2), "{usage:?}");
    assert_eq!((usage["codex"].0, usage["codex"].1), (4, 0), "{usage:?}");
    rig.app.stop().await;
}

/// A refused Claude credential: the turn falls back, later turns skip Claude
/// without a request until a probe is due, and `/v1/providers`,
/// `/health/tokens` and `orch doctor` all say so (issue 16, defects 3 and 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_claude_credential_is_skipped_and_every_health_view_agrees() {
    let rig = Rig::start(&["codex"], Extra::default()).await;
    rig.api.answer(Api::Anthropic, Answer::Unauthorized);
    let first = rig.chat("claude", "first").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let result = rig.job_result(&first).await;
    assert_eq!(result["fallbacks"][0]["error"]["kind"]["type"], "auth", "{result}");
    let calls = rig.api.hits_of(Api::Anthropic).len();

    let second = rig.chat("claude", "second").await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let result = rig.job_result(&second).await;
    assert_eq!(result["fallbacks"][0]["skipped"], true, "{result}");
    assert_eq!(rig.api.hits_of(Api::Anthropic).len(), calls, "a refused credential was tried again");

    let providers = rig.providers().await;
    let claude = &providers["claude"];
    assert_eq!(claude["ready"], false, "{claude}");
    assert_eq!(claude["token"], "invalid", "{claude}");
    assert!(claude["next_probe_at"].is_string(), "{claude}");
    assert_eq!(providers["codex"]["ready"], true, "{}", providers["codex"]);
    let tokens = rig.tokens().await;
    assert_eq!(tokens["claude"], "invalid", "{tokens:?}");
    assert_eq!(tokens["codex"], "ok", "{tokens:?}");
    let (ok, report) = rig.doctor();
    assert!(!ok, "doctor passed with a refused credential:\n{report}");
    let line = |name: &str| report.lines().find(|l| l.contains(&format!("provider {name} ({name})"))).unwrap_or("");
    assert!(line("claude").starts_with("[!!]") && line("claude").contains("credential invalid"), "{report}");
    assert!(line("codex").starts_with("[ok]"), "{report}");
    let usage = rig.usage().await;
    assert_eq!((usage["claude"].0, usage["claude"].1), (1, 1), "{usage:?}");
    assert_eq!((usage["codex"].0, usage["codex"].1), (2, 0), "{usage:?}");
    rig.app.stop().await;
}

/// Every provider of the chain at its usage limit: 429 `usage_limit` with
/// `Retry-After` (the earliest time one takes turns again), and the next
/// turn starts no CLI (issue 16, defect 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_providers_limited_answers_429_with_retry_after() {
    let extra = Extra { codex: "limits = { cooldown_secs = 120 }", ..Default::default() };
    let rig = Rig::start(&["codex"], extra).await;
    rig.api.answer(Api::Anthropic, Answer::Limited { reset_in: Duration::from_secs(3600) });
    rig.api.answer(Api::OpenAiResponses, Answer::Limited { reset_in: Duration::from_secs(3600) });
    for turn in ["first", "second"] {
        let calls = rig.api.hits().len();
        let reply = rig.chat("claude", turn).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{turn}: {}", reply.body);
        assert_eq!(reply.body["error"]["code"], "usage_limit", "{}", reply.body);
        let retry_after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((100..=120).contains(&retry_after), "{turn}: Retry-After {retry_after}");
        if turn == "second" {
            assert_eq!(rig.api.hits().len(), calls, "a limited provider got a request");
        }
    }
    let claude = &rig.providers().await["claude"];
    assert_eq!(claude["cooldown_reason"], "usage_limit", "{claude}");
    let until = chrono::DateTime::parse_from_rfc3339(claude["cooldown_until"].as_str().unwrap()).unwrap();
    let left = until.signed_duration_since(chrono::Utc::now()).num_seconds();
    assert!((3500..=3600).contains(&left), "Claude's reset time (resetsAt) was not kept: {left} s");
    // The first turn failed on both; the second, where nothing ran, is one
    // failed turn booked on the first provider of the chain.
    let usage = rig.usage().await;
    assert_eq!((usage["claude"].0, usage["claude"].1), (2, 2), "{usage:?}");
    assert_eq!((usage["codex"].0, usage["codex"].1), (1, 1), "{usage:?}");
    rig.app.stop().await;
}

/// A 401 on each CLI alone is an authentication failure, never an answer:
/// Qwen Code prints it as a successful reply (issue 16, defect 1). Every
/// health view marks the four credentials invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_an_auth_failure_on_every_cli_never_an_answer() {
    let rig = Rig::start(&[], Extra::default()).await;
    for api in [Api::Anthropic, Api::Gemini, Api::OpenAiChat, Api::OpenAiResponses] {
        rig.api.answer(api, Answer::Unauthorized);
    }
    let names = ["claude", "gemini", "codex", "qwen"];
    let replies = futures::future::join_all(names.iter().map(|n| rig.chat(n, "hello"))).await;
    for (name, reply) in names.iter().zip(&replies) {
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{name}: {}", reply.body);
        assert_eq!(reply.body["error"]["code"], "provider_auth", "{name}: {}", reply.body);
    }
    let tokens = rig.tokens().await;
    assert!(names.iter().all(|n| tokens[*n] == "invalid"), "{tokens:?}");
    let usage = rig.usage().await;
    assert!(names.iter().all(|n| (usage[*n].0, usage[*n].1) == (1, 1)), "{usage:?}");
    let (ok, report) = rig.doctor();
    assert!(!ok, "{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("[!!]") && l.contains("credential invalid")).count(),
        4,
        "{report}"
    );
    rig.app.stop().await;
}

/// Qwen Code retries a 429 without a word: with a fallback waiting, Orch
/// stops it after `limits.silent_secs` and moves on. Codex retrying a 500
/// (`Reconnecting...`) is stopped at its first retry (issue 16, defects 1 and 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_qwen_and_retrying_codex_fall_back() {
    let extra = Extra { qwen: "limits = { silent_secs = 20 }", ..Default::default() };
    let rig = Rig::start(&["codex", "gemini"], extra).await;
    rig.api.answer(Api::OpenAiChat, Answer::Limited { reset_in: Duration::from_secs(60) });
    let reply = rig.chat("qwen", "qwen is limited").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(answered_by(&reply), "codex", "{}", reply.body);
    let result = rig.job_result(&reply).await;
    assert_eq!(result["fallbacks"][0]["target"], "qwen", "{result}");
    assert_eq!(result["fallbacks"][0]["error"]["kind"]["type"], "upstream", "{result}");

    rig.api.answer(Api::OpenAiResponses, Answer::ServerError);
    let since = SystemTime::now();
    let gemini_before = rig.starts("gemini").len();
    let reply = rig.chat("codex", "codex is down").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(answered_by(&reply), "gemini", "{}", reply.body);
    let result = rig.job_result(&reply).await;
    assert_eq!(result["fallbacks"][0]["target"], "codex", "{result}");
    assert_eq!(result["fallbacks"][0]["error"]["kind"]["type"], "upstream", "{result}");
    let gap = rig.starts("gemini")[gemini_before] - epoch(first_failure(&rig, Api::OpenAiResponses, since, 500));
    assert!((0.0..=5.0).contains(&gap), "the fallback started {gap:.2} s after Codex's first 500");
    rig.app.stop().await;
}

/// Issue 16, defect 9: every streamed chunk names the model as the answer
/// does (`provider/model`, with the model the CLI reported), not the
/// provider name the request gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunks_name_the_model_the_answer_names() {
    let rig = Rig::start(&[], Extra::default()).await;
    let body = json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "stream it"}]});
    let resp = rig
        .app
        .client
        .post(format!("{}/v1/chat/completions", rig.app.base))
        .bearer_auth(&rig.app.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, model_api::REPLY, "{text}");
    let last = chunks.last().unwrap();
    let routed = last["orch"]["routed_to"].as_str().unwrap();
    assert!(routed.starts_with("claude/"), "{routed}");
    for chunk in &chunks {
        assert_eq!(chunk["model"], routed, "a chunk names another model than the answer: {text}");
    }
    rig.app.stop().await;
}

/// A Claude turn that passes its budget is stopped by the CLI
/// (`--max-budget-usd`) and answered 402 `budget_exceeded`, never passed off
/// as an answer; the provider's own cap applies when the request sets none,
/// and a budget is the caller's cap, not a provider failure: no cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_turn_over_its_budget_is_402_budget_exceeded() {
    let extra = Extra { claude: "limits = { max_budget_usd = 0.5 }", ..Default::default() };
    let rig = Rig::start(&[], extra).await;
    rig.api.answer(Api::Anthropic, Answer::Costly(model_api::REPLY.into()));
    let by_request =
        json!({"model": "claude", "max_budget_usd": 0.01, "messages": [{"role": "user", "content": "spend a lot"}]});
    for (what, reply) in [
        ("the request's budget", rig.app.post("/v1/chat/completions", by_request).await),
        ("the provider's cap", rig.chat("claude", "spend a lot again").await),
    ] {
        assert_eq!(reply.status, StatusCode::PAYMENT_REQUIRED, "{what}: {}", reply.body);
        assert_eq!(reply.body["error"]["code"], "budget_exceeded", "{what}: {}", reply.body);
        assert!(reply.body.get("choices").is_none(), "{what}: {}", reply.body);
    }
    assert!(!rig.api.hits_of(Api::Anthropic).is_empty(), "Claude never asked the model API");
    let claude = &rig.providers().await["claude"];
    assert!(claude["cooldown_until"].is_null(), "a budget put the provider in a cooldown: {claude}");
    assert_eq!(claude["ready"], true, "{claude}");
    rig.app.stop().await;
}

/// An Anthropic account whose credit is used up answers 400 "Your credit
/// balance is too low": a usage limit, not an answer and not an outage, so
/// the turn falls back and the provider cools down (issue 16, "classify
/// credit exhausted as a usage limit").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_credit_exhausted_is_a_usage_limit() {
    let rig = Rig::start(&["gemini"], Extra::default()).await;
    rig.api.answer(Api::Anthropic, Answer::CreditExhausted);
    let reply = rig.chat("claude", "no credit left").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(answered_by(&reply), "gemini", "{}", reply.body);
    let result = rig.job_result(&reply).await;
    assert_eq!(result["fallbacks"][0]["target"], "claude", "{result}");
    assert_eq!(result["fallbacks"][0]["error"]["kind"]["type"], "usage_limit", "{result}");
    let claude = &rig.providers().await["claude"];
    assert_eq!(claude["cooldown_reason"], "usage_limit", "{claude}");
    assert_eq!(claude["ready"], false, "{claude}");
    let usage = rig.usage().await;
    assert_eq!((usage["claude"].0, usage["claude"].1), (1, 1), "{usage:?}");
    rig.app.stop().await;
}
