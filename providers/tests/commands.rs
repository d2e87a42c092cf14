//! The exact command line, stdin and environment each provider gives its CLI.

mod common;

use std::collections::BTreeSet;

use common::fixture;
use orch_providers::{ErrorKind, TurnRequest};

const OK_CLAUDE: (&str, &str) = ("FAKE_CAPTURE", "claude-code-2.1.197/ok.stream.jsonl");
const RECORD: (&str, &str) = ("FAKE_MODE", "record");

fn request(prompt: &str) -> TurnRequest {
    TurnRequest { prompt: prompt.into(), ..Default::default() }
}

#[tokio::test]
async fn claude_prompt_on_stdin_tools_off_own_config_dir() {
    let f = fixture(
        "claude",
        "env = { ANTHROPIC_API_KEY = 'sk-ant-api-should-not-pass', CLAUDE_CODE_OAUTH_TOKEN = 'sk-ant-oat-ok' }",
        &[RECORD, OK_CLAUDE],
    );
    let req = TurnRequest {
        prompt: "hello\nworld".into(),
        model: Some("claude-sonnet-5".into()),
        system: Some("be brief".into()),
        max_turns: Some(3),
        ..Default::default()
    };
    f.run_request(&req).await.unwrap();
    let rec = f.record();
    assert_eq!(
        rec.argv,
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "claude-sonnet-5",
            "--system-prompt",
            "be brief",
            "--max-turns",
            "3",
            "--tools",
            "",
            "--strict-mcp-config"
        ]
    );
    assert_eq!(rec.stdin, "hello\nworld");
    assert!(rec.stdin_source.starts_with("pipe:"), "{}", rec.stdin_source);
    assert_eq!(rec.env.get("ANTHROPIC_API_KEY"), None);
    assert_eq!(rec.env["CLAUDE_CODE_OAUTH_TOKEN"], "sk-ant-oat-ok");
    let data = f.dir.path().join("data/claude");
    assert_eq!(rec.env["CLAUDE_CONFIG_DIR"], data.join("slot-1").display().to_string());
    assert_eq!(rec.cwd, data.join("work"));
    assert!(f.provider.warnings()[0].starts_with("ANTHROPIC_API_KEY is set in its env; provider claude removes it"));
}

#[tokio::test]
async fn claude_allowed_tools_mcp_config_and_extra_args() {
    let f = fixture(
        "claude",
        "args = ['--fallback-model', 'haiku']\noutput = { format = 'json' }",
        &[RECORD, ("FAKE_CAPTURE", "claude-code-2.1.197/ok.json")],
    );
    let req = TurnRequest {
        allowed_tools: vec!["Read".into(), "Grep".into()],
        mcp_config: Some("/etc/orch/mcp.json".into()),
        ..request("hi")
    };
    f.run_request(&req).await.unwrap();
    assert_eq!(
        f.record().argv,
        [
            "-p",
            "--output-format",
            "json",
            "--tools",
            "Read,Grep",
            "--allowedTools",
            "Read,Grep",
            "--strict-mcp-config",
            "--mcp-config",
            "/etc/orch/mcp.json",
            "--fallback-model",
            "haiku"
        ]
    );
}

#[tokio::test]
async fn concurrent_claude_turns_get_different_config_dirs() {
    let f = fixture("claude", "limits = { concurrency = 2 }", &[RECORD, OK_CLAUDE, ("FAKE_DELAY", "0.5")]);
    let (a, b) = tokio::join!(f.run("one"), f.run("two"));
    a.unwrap();
    b.unwrap();
    let dirs: BTreeSet<String> = f.records().into_iter().map(|r| r.env["CLAUDE_CONFIG_DIR"].clone()).collect();
    let data = f.dir.path().join("data/claude");
    let expected: BTreeSet<String> = ["slot-1", "slot-2"].iter().map(|s| data.join(s).display().to_string()).collect();
    assert_eq!(dirs, expected);
}

#[tokio::test]
async fn gemini_prompt_as_argument_stdin_closed_no_browser() {
    let f = fixture(
        "gemini",
        "home = '/srv/gemini-home'\ndefault_model = 'gemini-2.5-pro'",
        &[RECORD, ("FAKE_CAPTURE", "gemini-cli-0.61.0/ok.stream.jsonl")],
    );
    let req = TurnRequest { system: Some("be brief".into()), ..request("hello") };
    let out = f.run_request(&req).await.unwrap();
    assert_eq!(out.text, "FAKE-GEMINI: hello from loopback");
    let rec = f.record();
    assert_eq!(rec.argv, ["-p", "be brief\n\nhello", "-o", "stream-json", "-m", "gemini-2.5-pro"]);
    assert_eq!(rec.stdin_source, "/dev/null");
    assert_eq!(rec.stdin, "");
    assert_eq!(rec.env["NO_BROWSER"], "true");
    assert_eq!(rec.env["GEMINI_CLI_TRUST_WORKSPACE"], "true");
    assert_eq!(rec.env["GEMINI_CLI_HOME"], "/srv/gemini-home");
}

#[tokio::test]
async fn codex_qwen_and_generic_command_lines() {
    let f = fixture("codex", "", &[RECORD, OK_CLAUDE]);
    let _ = f.run_request(&TurnRequest { model: Some("gpt-5-codex".into()), ..request("fix it") }).await;
    let rec = f.record();
    assert_eq!(rec.argv, ["exec", "--json", "--skip-git-repo-check", "-m", "gpt-5-codex", "-"]);
    assert_eq!(rec.stdin, "fix it");

    let f = fixture("qwen", "", &[RECORD, OK_CLAUDE]);
    f.run_request(&TurnRequest { model: Some("qwen3-coder-plus".into()), ..request("hi") }).await.unwrap();
    let rec = f.record();
    assert_eq!(rec.argv, ["-p", "hi", "-o", "stream-json", "-m", "qwen3-coder-plus"]);
    assert_eq!(rec.stdin_source, "/dev/null");

    let toml = "kind = 'cli'\nargs = ['ask', '--model={model}', '--system={system}', '{prompt}']\n\
                models = ['m1', 'm2']\ndefault_model = 'm1'\noutput = { format = 'text' }";
    let f = fixture("mine", toml, &[RECORD, OK_CLAUDE]);
    f.run("what's up").await.unwrap();
    assert_eq!(f.record().argv, ["ask", "--model=m1", "what's up"], "no system prompt: its argument is left out");

    let f = fixture("mine", "kind = 'cli'\noutput = { format = 'text' }", &[RECORD, OK_CLAUDE]);
    f.run("via stdin").await.unwrap();
    assert_eq!((f.record().argv.len(), f.record().stdin.as_str()), (0, "via stdin"));
}

#[tokio::test]
async fn unknown_model_is_refused_naming_the_configured_ones() {
    let f = fixture("claude", "models = ['sonnet', 'opus']", &[RECORD, OK_CLAUDE]);
    let err = f.run_request(&TurnRequest { model: Some("gpt-4".into()), ..request("hi") }).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest { field: "model".into() });
    assert_eq!(err.message, "claude: unknown model \"gpt-4\"; configured: sonnet, opus");
    assert!(f.records().is_empty(), "the CLI was not started");
}

#[tokio::test]
async fn secrets_never_reach_messages() {
    let f = fixture(
        "claude",
        "env = { CLAUDE_CODE_OAUTH_TOKEN = 'sk-ant-oat01-SECRETSECRET' }",
        &[("FAKE_MODE", "leak-secret")],
    );
    let err = f.run("hi").await.unwrap_err();
    let ErrorKind::Crashed { exit: Some(2), stderr_tail, .. } = &err.kind else { panic!("{err:?}") };
    assert_eq!(stderr_tail, "debug: using token [redacted]");
    assert!(!err.message.contains("SECRETSECRET"), "{}", err.message);
    assert!(!format!("{:?}", f.provider.config()).contains("SECRETSECRET"));
}

#[tokio::test]
async fn missing_cli_says_how_to_install_it() {
    let f = fixture("claude", "command = '/nonexistent/bin/claude'", &[]);
    let err = f.run("hi").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotInstalled { hint: "npm i -g @anthropic-ai/claude-code".into() });
    assert_eq!(
        err.message,
        "claude: command \"/nonexistent/bin/claude\" not found; npm i -g @anthropic-ai/claude-code"
    );
}
