//! `check`: what `orch doctor` reports per provider.

mod common;

use common::fixture;
use orch_providers::{CliStatus, Credentials, check};

#[tokio::test]
async fn found_cli_with_version_and_token() {
    let f = fixture(
        "claude",
        "env = { CLAUDE_CODE_OAUTH_TOKEN = 'sk-ant-oat01-x' }",
        &[("FAKE_VERSION", "2.1.197 (Claude Code)")],
    );
    let d = check(&f.provider).await;
    assert_eq!(d.cli, CliStatus::Found { path: common::fake_cli(), version: "2.1.197 (Claude Code)".into() });
    assert_eq!(d.credentials, Credentials::Present { source: "CLAUDE_CODE_OAUTH_TOKEN".into() });
    assert!(d.ok());
    assert_eq!(d.fixes(), Vec::<String>::new());
}

#[tokio::test]
async fn missing_cli_and_credentials_say_how_to_fix() {
    let home = tempfile::tempdir().unwrap();
    let toml = format!("command = 'codex-not-installed-here'\nenv = {{ HOME = '{}' }}", home.path().display());
    let f = fixture("codex", &toml, &[]);
    let d = check(&f.provider).await;
    assert!(!d.ok());
    assert_eq!(
        d.fixes(),
        [
            "\"codex-not-installed-here\" not found: npm i -g @openai/codex",
            "run `codex login` as the user Orch runs as (ChatGPT plan; or set CODEX_HOME in the provider's env), \
             or set OPENAI_API_KEY in the provider's env (billed at API rates)"
        ]
    );
}

#[tokio::test]
async fn gemini_login_under_its_home_counts() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".gemini")).unwrap();
    let creds = home.path().join(".gemini/oauth_creds.json");
    std::fs::write(&creds, "{}").unwrap();
    let f = fixture("gemini", &format!("home = '{}'", home.path().display()), &[]);
    let d = check(&f.provider).await;
    assert_eq!(d.credentials, Credentials::Present { source: creds.display().to_string() });
}
