//! Codex (`codex exec --json`): JSON-lines thread events; the answer is the
//! last `agent_message` item, usage comes with `turn.completed`.

use serde_json::Value;

use super::{Invocation, Setup, classify_text, crashed, empty_output, json_events, str_at, u64_at, with_system};
use crate::error::{ErrorKind, TurnError};
use crate::process::{Exit, RawOutput};
use crate::turn::{ProgressEvent, TurnOutput, TurnRequest, Usage};

pub(super) fn invocation(setup: &Setup<'_>, request: &TurnRequest) -> Invocation {
    let mut args = vec!["exec".to_owned(), "--json".into(), "--skip-git-repo-check".into()];
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
    agent_message(&event).map(|text| ProgressEvent::Text { text: text.to_owned() })
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
    let mut error = None;
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
            "error" => error = str_at(event, "/message").map(str::to_owned),
            _ => {}
        }
    }
    if let Some(message) = error {
        let kind = classify_text(&message).unwrap_or(ErrorKind::Upstream { status: None });
        return Err(TurnError::new(kind, format!("codex failed: {message}")));
    }
    match raw.exit {
        Exit::Code(0) if completed => Ok(out),
        Exit::Code(0) => Err(TurnError::malformed("no turn.completed event in the output")),
        _ => Err(match classify_text(&raw.stderr) {
            Some(kind) => TurnError::new(kind, format!("codex failed: {}", super::tail(&raw.stderr, 500))),
            None => crashed(raw),
        }),
    }
}
