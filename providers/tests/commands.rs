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
            "--output-format=stream-json",
            "--verbose",
            "--model=claude-sonnet-5",
            "--system-prompt=be brief",
            "--max-turns=3",
            "--tools=",
            "--strict-mcp-config",
            "--no-session-persistence"
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
            "--output-format=json",
            "--tools=Read,Grep",
            "--allowedTools=Read,Grep",
            "--strict-mcp-config",
            "--mcp-config=/etc/orch/mcp.json",
            "--no-session-persistence",
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
async fn gemini_prompt_on_stdin_no_browser() {
    let f = fixture(
        "gemini",
        "home = '/srv/gemini-home'\ndefault_model = 'gemini-2.5-pro'",
        &[RECORD, ("FAKE_CAPTURE", "gemini-cli-0.61.0/ok.stream.jsonl")],
    );
    let req = TurnRequest { system: Some("be brief".into()), ..request("hello") };
    let out = f.run_request(&req).await.unwrap();
    assert_eq!(out.text, "FAKE-GEMINI: hello from loopback");
    let rec = f.record();
    assert_eq!(rec.argv, ["--output-format=stream-json", "--model=gemini-2.5-pro"]);
    assert!(rec.stdin_source.starts_with("pipe:"), "{}", rec.stdin_source);
    assert_eq!(rec.stdin, "be brief\n\nhello");
    assert_eq!(rec.env["NO_BROWSER"], "true");
    assert_eq!(rec.env["GEMINI_CLI_TRUST_WORKSPACE"], "true");
    assert_eq!(rec.env["GEMINI_CLI_HOME"], "/srv/gemini-home");
}

#[tokio::test]
async fn codex_qwen_and_generic_command_lines() {
    let f = fixture("codex", "", &[RECORD, OK_CLAUDE]);
    let _ = f.run_request(&TurnRequest { model: Some("gpt-5-codex".into()), ..request("fix it") }).await;
    let rec = f.record();
    assert_eq!(rec.argv, ["exec", "--json", "--ephemeral", "--skip-git-repo-check", "--model=gpt-5-codex", "-"]);
    assert_eq!(rec.stdin, "fix it");

    let f = fixture("qwen", "", &[RECORD, OK_CLAUDE]);
    f.run_request(&TurnRequest { model: Some("qwen3-coder-plus".into()), ..request("hi") }).await.unwrap();
    let rec = f.record();
    assert_eq!(
        rec.argv,
        ["--prompt=hi", "--output-format=stream-json", "--model=qwen3-coder-plus", "--chat-recording=false", "--bare"]
    );
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

/// Prompts and models that a CLI's argument parser (yargs for gemini and qwen,
/// commander for claude, clap for codex) would read as options if they stood
/// where it reads one.
const FLAG_SHAPED: [&str; 9] = ["--yolo", "-y", "--help", "-m x", "-p", "-y --help", "--prompt=x", "-", "--"];

/// Where caller text may be in an argv: the value after `=` of an option Orch
/// wrote, or after a `--` argument. Anywhere else a parser could read it as an
/// option. `baseline` is the argv for the sentinel prompt and system prompt:
/// `argv` must be the same but where a sentinel was.
fn assert_no_caller_text_in_option_position(argv: &[String], baseline: &[String]) {
    assert_eq!(argv.len(), baseline.len(), "{argv:?} has the shape of {baseline:?}");
    let mut after_double_dash = false;
    for (arg, base) in argv.iter().zip(baseline) {
        let carries_text = base.contains(SENTINEL) || base.contains(SYSTEM_SENTINEL);
        if !carries_text {
            assert_eq!(arg, base, "only caller text differs: {argv:?} vs {baseline:?}");
        } else if !after_double_dash {
            let (option, value) =
                base.split_once('=').unwrap_or_else(|| panic!("caller text is an argument: {base:?}"));
            assert!(option.starts_with("--") && !option.contains(SENTINEL), "caller text in an option name: {base:?}");
            assert!(arg.starts_with(&format!("{option}=")), "{arg:?} is {option}=…");
            let _ = value;
        }
        after_double_dash |= base == "--";
    }
}

const SENTINEL: &str = "PROMPTSENTINEL";
const SYSTEM_SENTINEL: &str = "SYSTEMSENTINEL";

/// The prompt as the CLI gets it: on stdin, as yargs reads `--prompt=`
/// (one pair of matching quotes stripped), or the argument after `--`.
fn prompt_seen(rec: &common::Record, yargs: bool) -> String {
    let mut options = rec.argv.iter().take_while(|a| *a != "--");
    if let Some(value) = options.find_map(|a| a.strip_prefix("--prompt=")) {
        let b = value.as_bytes();
        let quoted = yargs && !b.is_empty() && matches!(b[0], b'"' | b'\'') && b[b.len() - 1] == b[0];
        return if quoted { value[1..value.len() - 1].to_owned() } else { value.to_owned() };
    }
    if let Some(at) = rec.argv.iter().position(|a| a == "--") {
        return rec.argv[at + 1].clone();
    }
    rec.stdin.clone()
}

#[tokio::test]
async fn a_prompt_that_looks_like_a_flag_stays_a_prompt() {
    let mut prompts: Vec<String> = FLAG_SHAPED.iter().map(|s| s.to_string()).collect();
    prompts.extend(
        ["line one\n--yolo\n-p x", "-5 degrees is cold", "\"quoted\"", "'", "mcp", "--model=evil"].map(String::from),
    );
    let providers = [
        ("claude", ""),
        ("gemini", ""),
        ("codex", ""),
        ("qwen", ""),
        ("mine", "kind = 'cli'\nargs = ['ask', '--model={model}', '--prompt={prompt}']\noutput = { format = 'text' }"),
        ("mine", "kind = 'cli'\nargs = ['ask', '--', '{prompt}']\noutput = { format = 'text' }"),
        ("mine", "kind = 'cli'\nargs = ['ask']\noutput = { format = 'text' }"),
    ];
    for (name, toml) in providers {
        let f = fixture(name, toml, &[RECORD, OK_CLAUDE]);
        let sentinel =
            TurnRequest { model: Some("m1".into()), system: Some(SYSTEM_SENTINEL.into()), ..request(SENTINEL) };
        let _ = f.run_request(&sentinel).await;
        let baseline = f.record().argv;
        for prompt in &prompts {
            let f = fixture(name, toml, &[RECORD, OK_CLAUDE]);
            let req = TurnRequest { model: Some("m1".into()), system: Some("-y".into()), ..request(prompt) };
            let _ = f.run_request(&req).await;
            let rec = f.record();
            assert_no_caller_text_in_option_position(&rec.argv, &baseline);
            let seen = prompt_seen(&rec, name == "gemini" || name == "qwen");
            let system_first = name == "gemini" || name == "codex";
            let expected = if system_first { format!("-y\n\n{prompt}") } else { prompt.clone() };
            assert_eq!(seen, expected, "{name} {toml:?}: the prompt reaches the CLI intact ({:?})", rec.argv);
        }
    }
}

#[tokio::test]
async fn a_cli_template_refuses_a_flag_shaped_value_where_an_option_would_be_read() {
    let toml = "kind = 'cli'\nargs = ['ask', '{prompt}', '{model}']\noutput = { format = 'text' }";
    for text in FLAG_SHAPED.iter().filter(|t| t.starts_with('-')) {
        let f = fixture("mine", toml, &[RECORD, OK_CLAUDE]);
        let err = f.run(text).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest { field: "prompt".into() }, "{text:?}");
        assert!(err.message.contains("put `--` before it"), "{}", err.message);
        assert!(f.records().is_empty(), "the CLI was not started for {text:?}");
    }
    let f = fixture("mine", toml, &[RECORD, OK_CLAUDE]);
    f.run("hello -y").await.unwrap();
    assert_eq!(f.record().argv, ["ask", "hello -y"], "a prompt not starting with '-' passes");
}

#[tokio::test]
async fn a_model_that_looks_like_a_flag_is_refused_before_the_cli_starts() {
    let bad = ["--yolo", "-y", "--help", "-m x", "-p", "", "a b", "x\n--yolo", &"m".repeat(129)];
    for kind in ["claude", "gemini", "codex", "qwen", "mine"] {
        let toml =
            if kind == "mine" { "kind = 'cli'\nargs = ['--model={model}']\noutput = { format = 'text' }" } else { "" };
        for model in bad {
            let f = fixture(kind, toml, &[RECORD, OK_CLAUDE]);
            let err = f.run_request(&TurnRequest { model: Some(model.into()), ..request("hi") }).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidRequest { field: "model".into() }, "{kind} {model:?}");
            assert!(err.message.contains("is not a model name"), "{}", err.message);
            assert!(f.records().is_empty(), "{kind}: the CLI was not started for {model:?}");
        }
    }
    for good in ["claude-sonnet-4-5@20250929", "models/gemini-2.5-pro", "sonnet[1m]", "llama3:8b", "gpt-5.1-codex"] {
        orch_providers::check_model_name(good).unwrap();
    }
}

#[tokio::test]
async fn gemini_with_an_api_key_gets_a_home_whose_settings_select_api_key_auth() {
    // No home configured: Orch's own, under the provider's data dir, never the user's.
    let f = fixture(
        "gemini",
        "env = { GEMINI_API_KEY = 'gm-key-123456' }",
        &[RECORD, ("FAKE_CAPTURE", "gemini-cli-0.61.0/ok.stream.jsonl")],
    );
    f.run("hello").await.unwrap();
    let home = f.dir.path().join("data/gemini/home");
    assert_eq!(f.record().env["GEMINI_CLI_HOME"], home.display().to_string());
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join(".gemini/settings.json")).unwrap()).unwrap();
    assert_eq!(settings["security"]["auth"]["selectedType"], "gemini-api-key");

    // A configured home: its settings are merged, not replaced; a chosen type is kept.
    let configured = tempfile::tempdir().unwrap();
    std::fs::create_dir(configured.path().join(".gemini")).unwrap();
    let file = configured.path().join(".gemini/settings.json");
    std::fs::write(&file, r#"{"ui": {"theme": "Dracula"}, "security": {"folderTrust": {"enabled": false}}}"#).unwrap();
    let toml = format!("home = '{}'\nenv = {{ GEMINI_API_KEY = 'gm-key-123456' }}", configured.path().display());
    let f = fixture("gemini", &toml, &[RECORD, ("FAKE_CAPTURE", "gemini-cli-0.61.0/ok.stream.jsonl")]);
    f.run("hello").await.unwrap();
    let settings: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(settings["ui"]["theme"], "Dracula");
    assert_eq!(settings["security"]["folderTrust"]["enabled"], false);
    assert_eq!(settings["security"]["auth"]["selectedType"], "gemini-api-key");

    // Exit 41 is an auth/config failure whose fix names the setting.
    let f = fixture(
        "gemini",
        "env = { GEMINI_API_KEY = 'gm-key-123456' }",
        &[("FAKE_MODE", "file"), ("FAKE_STDOUT_FILE", "/dev/null"), ("FAKE_EXIT", "41")],
    );
    let err = f.run("hello").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth { expired: false });
    assert!(err.message.contains("security.auth.selectedType"), "{}", err.message);
}
