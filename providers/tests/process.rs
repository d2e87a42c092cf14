//! Process hygiene per turn: timeout, cancellation, output cap, crashes and
//! pseudo-terminals, with the whole process group gone afterwards.

mod common;

use std::time::{Duration, Instant};

use common::{fixture, gone, group_survivors};
use orch_providers::{ErrorKind, ProgressEvent, TurnControl, TurnRequest};
use tokio::sync::mpsc;

fn read_pid(path: &std::path::Path) -> i32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// Asserts the fake's group (leader and grandchild) is gone.
async fn assert_group_gone(f: &common::Fixture, grandchild_file: &str) {
    let leader = f.pids()[0];
    let grandchild = read_pid(&f.records_dir().join(grandchild_file));
    assert!(gone(grandchild).await, "grandchild {grandchild} survived");
    assert!(gone(leader).await, "leader {leader} survived");
    assert_eq!(group_survivors(leader).await, Vec::<String>::new(), "still in group {leader}");
}

fn hang_fixture(timeout_secs: u64) -> common::Fixture {
    fixture("claude", &format!("limits = {{ timeout_secs = {timeout_secs} }}"), &[("FAKE_MODE", "retry-hang")])
}

#[tokio::test]
async fn timeout_kills_the_whole_group_and_retries_were_reported() {
    let f = hang_fixture(2);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let control = TurnControl { progress: Some(tx), ..Default::default() };
    let started = Instant::now();
    let err = f.provider.run(&TurnRequest { prompt: "hi".into(), ..Default::default() }, &control).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout { after: Duration::from_secs(2) });
    assert_eq!(err.message, "claude: no answer within 2 s; the CLI was killed");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    drop(control);
    let mut statuses = Vec::new();
    while let Some(event) = rx.recv().await {
        if let ProgressEvent::ApiRetry { attempt, status, .. } = event {
            statuses.push((attempt, status));
        }
    }
    assert_eq!(statuses, [(1, Some(500)), (2, Some(500)), (3, Some(500))]);
    assert_group_gone(&f, "grandchild").await;
}

#[tokio::test]
async fn cancellation_kills_the_whole_group() {
    let f = hang_fixture(60);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let control = TurnControl { progress: Some(tx), ..Default::default() };
    let cancel = control.cancel.clone();
    tokio::spawn(async move {
        // Cancel once the CLI is visibly running.
        rx.recv().await;
        cancel.cancel();
    });
    let started = Instant::now();
    let err = f.provider.run(&TurnRequest { prompt: "hi".into(), ..Default::default() }, &control).await.unwrap_err();
    assert_eq!((err.kind, err.message.as_str()), (ErrorKind::Cancelled, "claude: cancelled"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_group_gone(&f, "grandchild").await;
}

#[tokio::test]
async fn dropping_the_turn_kills_the_whole_group() {
    let f = hang_fixture(60);
    let turn = f.run("hi");
    // The worker cancels a job by dropping its future.
    assert!(tokio::time::timeout(Duration::from_millis(700), turn).await.is_err());
    assert_group_gone(&f, "grandchild").await;
}

#[tokio::test]
async fn leftover_helpers_die_when_the_cli_answers() {
    let f = fixture("claude", "", &[("FAKE_MODE", "orphan"), ("FAKE_CAPTURE", "claude-code-2.1.197/ok.stream.jsonl")]);
    let started = Instant::now();
    // The helper holds stdout open; the answer must not wait for it.
    assert_eq!(f.run("hi").await.unwrap().text, "FAKE-REPLY: hello from loopback");
    assert!(started.elapsed() < Duration::from_secs(5));
    let leader = f.pids()[0];
    assert_group_gone(&f, &format!("grandchild.{leader}")).await;
}

#[tokio::test]
async fn output_over_the_cap_is_cut_and_killed() {
    let f = fixture("claude", "limits = { output_cap_bytes = 65536 }", &[("FAKE_MODE", "huge")]);
    let err = f.run("hi").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::OutputTooLarge { limit: 65536 });
    assert_eq!(err.message, "claude: the CLI printed more than 65536 bytes (limits.output_cap_bytes); it was killed");
    let leader = f.pids()[0];
    assert!(gone(leader).await);
    assert_eq!(group_survivors(leader).await, Vec::<String>::new(), "`yes` survived");
}

#[tokio::test]
async fn crash_malformed_and_slow() {
    let f = fixture("claude", "", &[("FAKE_MODE", "crash")]);
    let err = f.run("hi").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Crashed { exit: None, signal: Some(11), stderr_tail: String::new() });
    assert_eq!(err.message, "claude: the CLI was killed by signal 11 without an answer");

    let f = fixture("claude", "", &[("FAKE_MODE", "malformed")]);
    let err = f.run("hi").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Malformed { detail: "no result message in the output".into() });

    let f = fixture(
        "gemini",
        "limits = { timeout_secs = 10 }",
        &[("FAKE_MODE", "slow"), ("FAKE_DELAY", "1"), ("FAKE_CAPTURE", "gemini-cli-0.61.0/ok.json")],
    );
    let out = f.run("hi").await.unwrap();
    assert_eq!(out.text, "FAKE-GEMINI: hello from loopback");
    assert!(out.duration >= Duration::from_secs(1), "{:?}", out.duration);
}

#[tokio::test]
async fn a_cli_that_insists_on_a_tty_runs_in_a_pty_with_ansi_stripped() {
    let toml = |pty: bool| format!("kind = 'cli'\nargs = ['{{prompt}}']\npty = {pty}\noutput = {{ format = 'text' }}");
    let f = fixture("tty", &toml(true), &[("FAKE_MODE", "tty")]);
    assert_eq!(f.run("say hi").await.unwrap().text, "hello from a terminal: say hi");

    let f = fixture("tty", &toml(false), &[("FAKE_MODE", "tty")]);
    let err = f.run("say hi").await.unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::Crashed { exit: Some(3), signal: None, stderr_tail: "stdout is not a terminal".into() }
    );
}

#[tokio::test]
async fn claude_in_a_pty_takes_the_prompt_as_an_argument() {
    let f = fixture("claude", "pty = true", &[("FAKE_CAPTURE", "claude-code-2.1.197/ok.stream.jsonl")]);
    let out = f.run("hi").await.unwrap();
    assert_eq!(out.text, "FAKE-REPLY: hello from loopback");
    assert_eq!(out.usage.output_tokens, 7);
}
