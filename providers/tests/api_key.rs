//! `ANTHROPIC_API_KEY` and Orch's own `ORCH_*` settings in Orch's environment never reach Claude.
//! (Alone in its binary: it changes the process environment.)

mod common;

#[tokio::test]
async fn inherited_anthropic_api_key_is_removed_and_warned_about() {
    // SAFETY: the only test in this binary; set before any thread reads the environment.
    unsafe {
        std::env::set_var("ANTHROPIC_API_KEY", "sk-ant-api03-from-orch-env");
        std::env::set_var("ORCH_STORE", "redis://:hunter2@db:6379/0");
    }
    let f = common::fixture(
        "claude",
        "",
        &[("FAKE_MODE", "record"), ("FAKE_CAPTURE", "claude-code-2.1.197/ok.stream.jsonl")],
    );
    f.run("hi").await.unwrap();
    assert_eq!(f.record().env.get("ANTHROPIC_API_KEY"), None);
    // Orch's own settings (a store password here) stay with Orch.
    assert_eq!(f.record().env.get("ORCH_STORE"), None);
    let warnings = f.provider.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("ANTHROPIC_API_KEY is set; provider claude removes it"), "{}", warnings[0]);
}
