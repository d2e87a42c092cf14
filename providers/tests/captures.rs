//! The real CLI captures, replayed by the fake CLI, read into answers or classified failures.

mod common;

use common::fixture;
use orch_providers::{ProgressEvent, TurnControl, TurnError, TurnOutput, TurnRequest};
use tokio::sync::mpsc;

/// One line a user would compare: the answer and its metadata, or the failure kind.
fn outcome(result: &Result<TurnOutput, TurnError>) -> String {
    match result {
        Ok(o) => format!(
            "ok {:?} in={} out={} cache_read={:?} cost={:?} model={:?} session={:?} turns={:?}",
            o.text,
            o.usage.input_tokens,
            o.usage.output_tokens,
            o.usage.cache_read_tokens,
            o.cost_usd,
            o.model.as_deref().unwrap_or("-"),
            o.session_id.as_deref().unwrap_or("-"),
            o.num_turns
        ),
        Err(e) => format!("{:?}", e.kind),
    }
}

/// Replays `capture` through a provider of `kind` (in the capture's output
/// format) and checks the outcome and a piece of the message.
async fn check(kind: &str, capture: &str, expected: &str, message_has: &str) {
    let format = if capture.ends_with(".stream.jsonl") { "stream-json" } else { "json" };
    let f = fixture(kind, &format!("output = {{ format = '{format}' }}"), &[("FAKE_CAPTURE", capture)]);
    let result = f.run("say hi").await;
    assert_eq!(outcome(&result), expected, "{capture}");
    let message = match &result {
        Ok(o) => o.text.clone(),
        Err(e) => e.message.clone(),
    };
    assert!(message.contains(message_has), "{capture}: message {message:?} lacks {message_has:?}");
}

#[tokio::test]
async fn claude_captures() {
    let cc = |mode: &str| format!("claude-code-2.1.197/{mode}");
    let ok = "ok \"FAKE-REPLY: hello from loopback\" in=12 out=7 cache_read=Some(0) cost=Some(0.000141) \
              model=\"claude-sonnet-5\"";
    check(
        "claude",
        &cc("ok.stream.jsonl"),
        &format!("{ok} session=\"6a5693a3-1d55-45d4-b2ad-97beba38f175\" turns=Some(1)"),
        "FAKE-REPLY",
    )
    .await;
    check(
        "claude",
        &cc("ok.json"),
        &format!("{ok} session=\"7a68a561-e8b4-4c31-9ee7-17b4a71fe58f\" turns=Some(1)"),
        "FAKE-REPLY",
    )
    .await;
    check(
        "claude",
        &cc("429.stream.jsonl"),
        // The capture's reset time has passed: it is not shown as the reason (issue 16, defect 4).
        "UsageLimit { resets_at: None }",
        "claude: usage limit reached: API Error: Server is temporarily limiting",
    )
    .await;
    check("claude", &cc("429.json"), "UsageLimit { resets_at: None }", "exceed your account's rate limit").await;
    check("claude", &cc("401.stream.jsonl"), "Auth { expired: true }", "OAuth token has expired").await;
    check("claude", &cc("401.json"), "Auth { expired: true }", "claude setup-token").await;
    check(
        "claude",
        &cc("500.stream.jsonl"),
        "Upstream { status: Some(500) }",
        "gave up after 9 API retries (last status 500)",
    )
    .await;
    check(
        "claude",
        &cc("500.json"),
        "Crashed { exit: Some(124), signal: None, stderr_tail: \"\" }",
        "exited with status 124 without an answer",
    )
    .await;
}

#[tokio::test]
async fn gemini_captures() {
    let gc = |mode: &str| format!("gemini-cli-0.61.0/{mode}");
    let ok = "ok \"FAKE-GEMINI: hello from loopback\" in=9 out=6 cache_read=Some(0) cost=None model=\"gemini-fake\"";
    check(
        "gemini",
        &gc("ok.stream.jsonl"),
        &format!("{ok} session=\"cc6336a4-ca59-4bd2-8a1f-d2cdf426131e\" turns=None"),
        "FAKE-GEMINI",
    )
    .await;
    check(
        "gemini",
        &gc("ok.json"),
        &format!("{ok} session=\"e626140f-f9af-49ea-8dda-f2163a62956d\" turns=None"),
        "FAKE-GEMINI",
    )
    .await;
    check("gemini", &gc("429.stream.jsonl"), "UsageLimit { resets_at: None }", "exhausted your daily quota").await;
    check("gemini", &gc("429.json"), "UsageLimit { resets_at: None }", "exhausted your daily quota").await;
    check("gemini", &gc("401.stream.jsonl"), "Auth { expired: false }", "invalid authentication credentials").await;
    check("gemini", &gc("401.json"), "Auth { expired: false }", "invalid authentication credentials").await;
}

#[tokio::test]
async fn gemini_personal_login_is_reported_clearly() {
    let f = fixture("gemini", "", &[("FAKE_MODE", "ineligible")]);
    let err = f.run("say hi").await.unwrap_err();
    assert_eq!(err.kind, orch_providers::ErrorKind::Auth { expired: false });
    assert!(
        err.message.contains(
            "personal Google logins no longer work with Gemini CLI; use an API key (GEMINI_API_KEY) or Code Assist \
             Standard/Enterprise"
        ),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn gemini_exit_41_means_no_auth_method() {
    let f = fixture("gemini", "", &[("FAKE_MODE", "no-auth")]);
    let err = f.run("say hi").await.unwrap_err();
    assert_eq!(err.kind, orch_providers::ErrorKind::Auth { expired: false });
    assert!(err.message.contains("no usable auth method"), "{}", err.message);
    assert!(
        err.message.contains("GEMINI_API_KEY") && err.message.contains("security.auth.selectedType"),
        "{}",
        err.message
    );
}

async fn progress_of(kind: &str, capture: &str) -> Vec<ProgressEvent> {
    let f = fixture(kind, "", &[("FAKE_CAPTURE", capture)]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let control = TurnControl { progress: Some(tx), ..Default::default() };
    let _ = f.provider.run(&TurnRequest { prompt: "say hi".into(), ..Default::default() }, &control).await;
    drop(control);
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    events
}

#[tokio::test]
async fn claude_api_retries_become_progress() {
    let events = progress_of("claude", "claude-code-2.1.197/401.stream.jsonl").await;
    let model = ProgressEvent::Model { provider: "claude".into(), model: Some("claude-sonnet-5".into()) };
    let retry = |attempt, delay_ms| ProgressEvent::ApiRetry {
        attempt,
        max_retries: Some(10),
        delay_ms,
        status: Some(401),
        error: Some("authentication_failed".into()),
    };
    assert_eq!(events, [model, retry(1, 537), retry(2, 1146)]);
}

#[tokio::test]
async fn streamed_text_becomes_progress() {
    let text = |t: &str| ProgressEvent::Text { text: t.into() };
    // The model the CLI names at its start comes first (issue 16, defect 9: streams name it).
    let model = |p: &str, m: &str| ProgressEvent::Model { provider: p.into(), model: Some(m.into()) };
    assert_eq!(
        progress_of("claude", "claude-code-2.1.197/ok.stream.jsonl").await,
        [model("claude", "claude-sonnet-5"), text("FAKE-REPLY: hello from loopback")]
    );
    assert_eq!(
        progress_of("gemini", "gemini-cli-0.61.0/ok.stream.jsonl").await,
        [model("gemini", "gemini-2.5-pro"), text("FAKE-GEMINI: hello from loopback")]
    );
}

#[tokio::test]
async fn codex_and_qwen_outputs() {
    let out = |file: &str| common::outputs().join(file).display().to_string();
    let f = fixture("codex", "", &[("FAKE_MODE", "file"), ("FAKE_STDOUT_FILE", &out("codex-ok.jsonl"))]);
    assert_eq!(
        outcome(&f.run("say hi").await),
        "ok \"FAKE-CODEX: hello\" in=24763 out=122 cache_read=Some(24448) cost=None model=\"-\" \
         session=\"0199a213-81c0-7800-8aa1-bbab2a035a53\" turns=Some(1)"
    );
    let f = fixture(
        "codex",
        "",
        &[("FAKE_MODE", "file"), ("FAKE_STDOUT_FILE", &out("codex-limit.jsonl")), ("FAKE_EXIT", "1")],
    );
    let err = f.run("say hi").await.unwrap_err();
    assert_eq!(outcome(&Err(err.clone())), "UsageLimit { resets_at: None }");
    assert!(err.message.contains("You've hit your usage limit"), "{}", err.message);
    let f = fixture("qwen", "", &[("FAKE_MODE", "file"), ("FAKE_STDOUT_FILE", &out("qwen-ok.json"))]);
    assert_eq!(
        outcome(&f.run("say hi").await),
        "ok \"FAKE-QWEN: hello\" in=11 out=4 cache_read=None cost=None model=\"qwen3-coder-plus\" session=\"q-1\" \
         turns=Some(1)"
    );
}

#[tokio::test]
async fn generic_cli_outputs() {
    let out = |file: &str| common::outputs().join(file).display().to_string();
    let generic = |format: &str, path: &str| {
        format!("kind = 'cli'\nargs = ['{{prompt}}']\noutput = {{ format = '{format}', text = '{path}' }}\n")
    };
    let f = fixture(
        "mine",
        &generic("json", "result.text"),
        &[("FAKE_MODE", "file"), ("FAKE_STDOUT_FILE", &out("generic.json"))],
    );
    assert_eq!(f.run("x").await.unwrap().text, "FAKE-GENERIC: hello");
    let f = fixture(
        "mine",
        &generic("json", "result.missing"),
        &[("FAKE_MODE", "file"), ("FAKE_STDOUT_FILE", &out("generic.json"))],
    );
    assert_eq!(
        f.run("x").await.unwrap_err().message,
        "mine: unreadable CLI output: no text at `result.missing` in the output"
    );
    let f = fixture(
        "mine",
        &generic("jsonl", "delta.text"),
        &[("FAKE_MODE", "file"), ("FAKE_STDOUT_FILE", &out("generic.jsonl"))],
    );
    assert_eq!(f.run("x").await.unwrap().text, "FAKE-JSONL");
    let f = fixture(
        "mine",
        "kind = 'cli'\noutput = { format = 'text' }\n",
        &[("FAKE_MODE", "file"), ("FAKE_STDOUT_FILE", &out("generic.json"))],
    );
    assert_eq!(f.run("x").await.unwrap().text, std::fs::read_to_string(out("generic.json")).unwrap().trim_end());
}

/// Issue 16, defect 9: a refused Codex credential names the fix for the
/// credential in use: the API key in its env, not `codex login`.
#[tokio::test]
async fn codex_fix_text_names_openai_api_key_not_codex_login() {
    let f = fixture(
        "codex",
        "env = { OPENAI_API_KEY = 'sk-fake-refused-key' }",
        &[("FAKE_CAPTURE", "codex-cli-0.171.0/401.stream.jsonl")],
    );
    let err = f.run("say hi").await.unwrap_err();
    assert!(matches!(err.kind, orch_providers::ErrorKind::Auth { .. }), "{err:?}");
    assert!(err.message.contains("replace OPENAI_API_KEY in the provider's env"), "{}", err.message);
    assert!(!err.message.contains("codex login"), "{}", err.message);
    assert_eq!(
        f.provider.renew_hint(),
        "replace OPENAI_API_KEY in the provider's env with a valid key (it was refused)"
    );
    // Without a key, a login is the fix.
    let f = fixture("codex", "", &[]);
    assert!(f.provider.renew_hint().contains("codex login"), "{}", f.provider.renew_hint());
}
