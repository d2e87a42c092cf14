//! After 1,000 turns no zombie or orphan remains. Alone in its binary, so the
//! test process's children are only the turns' CLIs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{fixture, processes};
use futures::StreamExt;
use orch_providers::{ErrorKind, TurnControl, TurnRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_turns_leave_no_process_behind() {
    let ok =
        fixture("claude", "limits = { concurrency = 8 }", &[("FAKE_CAPTURE", "claude-code-2.1.197/ok.stream.jsonl")]);
    // Answers but leaves a helper behind in its group.
    let orphaning = fixture(
        "claude",
        "limits = { concurrency = 8 }",
        &[("FAKE_MODE", "orphan"), ("FAKE_CAPTURE", "claude-code-2.1.197/ok.stream.jsonl")],
    );
    // Hangs with a grandchild until cancelled.
    let hanging = fixture("claude", "limits = { concurrency = 8 }", &[("FAKE_MODE", "retry-hang")]);

    let turns = futures::stream::iter(0..1000).map(|i| {
        let (ok, orphaning, hanging) = (&ok, &orphaning, &hanging);
        async move {
            let request = TurnRequest { prompt: format!("turn {i}"), ..Default::default() };
            match i % 50 {
                0 => {
                    let control = TurnControl::default();
                    let cancel = control.cancel.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        cancel.cancel();
                    });
                    let err = hanging.provider.run(&request, &control).await.unwrap_err();
                    assert_eq!(err.kind, ErrorKind::Cancelled);
                }
                1..=5 => assert!(orphaning.provider.run(&request, &TurnControl::default()).await.is_ok()),
                _ => assert!(ok.provider.run(&request, &TurnControl::default()).await.is_ok()),
            }
        }
    });
    turns.buffer_unordered(8).collect::<Vec<()>>().await;

    let groups: BTreeSet<i32> = [&ok, &orphaning, &hanging].iter().flat_map(|f| f.pids()).collect();
    assert_eq!(groups.len(), 1000, "one CLI per turn");
    let me = std::process::id() as i32;
    assert!(processes().iter().any(|p| p.pid == me), "the /proc scan sees this process");
    let mut leftovers = Vec::new();
    // Orphans killed by the group kill are reaped by init, which may take a moment.
    for _ in 0..50 {
        leftovers = processes().into_iter().filter(|p| p.ppid == me || groups.contains(&p.pgrp)).collect();
        if leftovers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
