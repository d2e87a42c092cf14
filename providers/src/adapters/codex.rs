//! Codex (`codex exec --json`): JSON-lines thread events; the answer is the
//! last `agent_message` item, usage comes with `turn.completed`.

use serde_json::Value;

use super::{Invocation, Setup, classify_text, crashed, empty_output, json_events, str_at, u64_at, with_system};
use crate::error::{ErrorKind, TurnError};
use crate::process::{Exit, RawOutput};
use crate::turn::{ProgressEvent, TurnOutput, TurnRequest, Usage};

pub(super) fn invocation(setup: &Setup<'_>, request: &TurnRequest) -> Invocation {
    // `--ephemeral`: no session rollout (the prompt) is kept under CODEX_HOME.
    let mut args = vec!["exec".to_owned(), "--json".into(), "--ephemeral".into(), "--skip-git-repo-check".into()];
    if let Some(model) = setup.model {
        args.push(format!("--model={model}"));
    }
    args.extend(setup.config.args.iter().cloned());
    // `-` reads the prompt from stdin; a pty's stdin is the terminal, so there
    // it is an argument, after `--` so that clap never reads it as an option.
    let prompt = with_system(request);
    if setup.config.pty {
        args.extend(["--".into(), prompt]);
        Invocation { args, ..Default::default() }
    } else {
        args.push("-".into());
        Invocation { args, stdin: Some(prompt), ..Default::default() }
    }
}

pub(super) fn progress(line: &str) -> Option<ProgressEvent> {
    let event: Value = serde_json::from_str(line).ok()?;
    if event["type"] == "error" {
        return reconnecting(str_at(&event, "/message")?);
    }
    agent_message(&event).map(|text| ProgressEvent::Text { text: text.to_owned() })
}

/// `Reconnecting... 2/5 (unexpected status 401 Unauthorized: ...)`: Codex
/// retrying its model API (not a failure yet).
fn reconnecting(message: &str) -> Option<ProgressEvent> {
    let rest = message.strip_prefix("Reconnecting...")?.trim_start();
    let (count, why) = rest.split_once(' ').unwrap_or((rest, ""));
    let (attempt, max) = count.split_once('/').unwrap_or((count, ""));
    let why = why.trim().trim_start_matches('(').trim_end_matches(')');
    Some(ProgressEvent::ApiRetry {
        attempt: attempt.parse().unwrap_or(0),
        max_retries: max.parse().ok(),
        delay_ms: 0,
        status: status_in(why),
        error: (!why.is_empty()).then(|| why.to_owned()),
    })
}

/// The status in `unexpected status 401 Unauthorized` or `last status: 429`.
fn status_in(message: &str) -> Option<u16> {
    let at = message.find("status")? + "status".len();
    let digits: String =
        message[at..].trim_start_matches([':', ' ']).chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|s| (100..=599).contains(s))
}

/// Codex says what failed only in words (see the captures' README).
pub(super) fn classify(message: &str) -> ErrorKind {
    let lower = message.to_lowercase();
    let status = status_in(message);
    if lower.contains("quota exceeded") || lower.contains("usage limit") || status == Some(429) {
        return ErrorKind::UsageLimit { resets_at: None };
    }
    if matches!(status, Some(401 | 403)) {
        return ErrorKind::Auth { expired: lower.contains("expired") };
    }
    if lower.contains("high demand") || lower.contains("overloaded") {
        return ErrorKind::Upstream { status: status.or(Some(503)) };
    }
    match status {
        Some(status) => ErrorKind::Upstream { status: Some(status) },
        None => classify_text(message).unwrap_or(ErrorKind::Upstream { status: None }),
    }
}

fn agent_message(event: &Value) -> Option<&str> {
    (event["type"] == "item.completed" && event.pointer("/item/type") == Some(&Value::from("agent_message")))
        .then(|| str_at(event, "/item/text"))
        .flatten()
}

pub(super) fn parse(raw: &RawOutput) -> Result<TurnOutput, TurnError> {
    let (events, _) = json_events(&raw.stdout);
    let mut out = empty_output();
    let mut completed = false;
    // Only `turn.failed` fails a turn: `error` events (Reconnecting..., and
    // the one that precedes `turn.failed`) are progress.
    let mut error = None;
    let mut last_error_event = None;
    for event in &events {
        match str_at(event, "/type").unwrap_or("") {
            "thread.started" => out.session_id = str_at(event, "/thread_id").map(str::to_owned),
            "item.completed" => {
                if let Some(text) = agent_message(event) {
                    out.text = text.to_owned();
                }
            }
            "turn.completed" => {
                completed = true;
                out.num_turns = Some(out.num_turns.unwrap_or(0) + 1);
                out.usage = Usage {
                    input_tokens: u64_at(event, "/usage/input_tokens").unwrap_or(0),
                    output_tokens: u64_at(event, "/usage/output_tokens").unwrap_or(0),
                    cache_read_tokens: u64_at(event, "/usage/cached_input_tokens"),
                    cache_creation_tokens: None,
                };
            }
            "turn.failed" => error = str_at(event, "/error/message").map(str::to_owned),
            "error" => last_error_event = str_at(event, "/message").map(str::to_owned),
            _ => {}
        }
    }
    if let Some(message) = error {
        return Err(TurnError::new(classify(&message), format!("codex failed: {message}")));
    }
    match raw.exit {
        Exit::Code(0) if completed => Ok(out),
        _ if !completed && let Some(message) = last_error_event.filter(|m| !m.starts_with("Reconnecting...")) => {
            Err(TurnError::new(classify(&message), format!("codex failed: {message}")))
        }
        Exit::Code(0) => Err(TurnError::malformed("no turn.completed event in the output")),
        _ => Err(match raw.stderr.lines().rev().find_map(|l| l.strip_prefix("ERROR: ")) {
            Some(message) => TurnError::new(classify(message), format!("codex failed: {message}")),
            None => match classify_text(&raw.stderr) {
                Some(kind) => TurnError::new(kind, format!("codex failed: {}", super::tail(&raw.stderr, 500))),
                None => crashed(raw),
            },
        }),
    }
}
