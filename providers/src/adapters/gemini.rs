//! Gemini CLI (`gemini --output-format=stream-json|json`, the prompt on stdin).
//!
//! In json mode errors go to stderr (a stack, then a JSON document) and the
//! exit status is the HTTP status cut to 8 bits (401 -> 145, 429 -> 173); exit
//! 41 means no usable auth method. In stream-json mode the error arrives as a
//! `result` event with `status: "error"`.

use serde_json::Value;

use super::{Invocation, Setup, crashed, empty_output, json_events, output_format, str_at, u64_at, with_system};
use crate::config::OutputFormat;
use crate::error::{ErrorKind, TurnError};
use crate::process::{Exit, RawOutput};
use crate::turn::{ProgressEvent, TurnOutput, TurnRequest, Usage};

/// Said when the CLI rejects a personal Google login (since 2026-06-18).
pub(crate) const INELIGIBLE: &str = "personal Google logins no longer work with Gemini CLI; \
     use an API key (GEMINI_API_KEY) or Code Assist Standard/Enterprise";

pub(super) fn invocation(setup: &Setup<'_>, request: &TurnRequest) -> Invocation {
    let format = match output_format(setup.config, OutputFormat::StreamJson) {
        OutputFormat::Json => "json",
        _ => "stream-json",
    };
    // The prompt goes on stdin, which headless Gemini reads as the whole prompt
    // when no `-p` is given; a pty's stdin is the terminal, so there it is the
    // value of `--prompt=` (yargs never reads a value after `=` as an option).
    let prompt = with_system(request);
    let mut args = Vec::new();
    if setup.config.pty {
        args.push(super::yargs_value("--prompt", &prompt));
    }
    args.push(format!("--output-format={format}"));
    if let Some(model) = setup.model {
        args.push(format!("--model={model}"));
    }
    args.extend(setup.config.args.iter().cloned());
    let mut env = vec![
        // Never wait for a browser login or a folder-trust prompt: nobody is there.
        ("NO_BROWSER".to_owned(), "true".to_owned()),
        ("GEMINI_CLI_TRUST_WORKSPACE".to_owned(), "true".to_owned()),
    ];
    if let Some(home) = &setup.config.home {
        env.push(("GEMINI_CLI_HOME".into(), home.display().to_string()));
    }
    Invocation { args, stdin: (!setup.config.pty).then_some(prompt), env, env_remove: Vec::new() }
}

pub(super) fn progress(line: &str) -> Option<ProgressEvent> {
    let event: Value = serde_json::from_str(line).ok()?;
    (event["type"] == "message" && event["role"] == "assistant")
        .then(|| ProgressEvent::Text { text: str_at(&event, "/content").unwrap_or_default().to_owned() })
}

pub(super) fn parse(raw: &RawOutput) -> Result<TurnOutput, TurnError> {
    if raw.stderr.contains("IneligibleTierError") || raw.stdout.contains("IneligibleTierError") {
        return Err(TurnError::new(ErrorKind::Auth { expired: false }, INELIGIBLE));
    }
    let (events, _) = json_events(&raw.stdout);
    let mut out = empty_output();
    let mut result = None;
    for event in &events {
        match str_at(event, "/type") {
            Some("init") => {
                out.session_id = str_at(event, "/session_id").map(str::to_owned);
                out.model = str_at(event, "/model").map(str::to_owned);
            }
            Some("message") if event["role"] == "assistant" => {
                out.text.push_str(str_at(event, "/content").unwrap_or_default());
            }
            Some("result") => result = Some(event),
            // json mode: one document with the answer in `response`.
            None if event.get("response").is_some() => return Ok(from_document(event)),
            _ => {}
        }
    }
    if let Some(result) = result {
        if result["status"] == "success" {
            let stats = &result["stats"];
            out.usage = Usage {
                input_tokens: u64_at(stats, "/input_tokens").unwrap_or(0),
                output_tokens: u64_at(stats, "/output_tokens").unwrap_or(0),
                cache_read_tokens: u64_at(stats, "/cached"),
                cache_creation_tokens: None,
            };
            out.model = first_key(&stats["models"]).or(out.model);
            return Ok(out);
        }
        let message = str_at(result, "/error/message").unwrap_or("the CLI reported an error");
        return Err(failure(status_from_exit(raw.exit), message));
    }
    if let Some(error) = stderr_document(&raw.stderr) {
        let status = u64_at(&error, "/error/code").map(|c| c as u16).or(status_from_exit(raw.exit));
        return Err(failure(status, str_at(&error, "/error/message").unwrap_or("the CLI reported an error")));
    }
    Err(match raw.exit {
        Exit::Code(41) => TurnError::new(
            ErrorKind::Auth { expired: false },
            format!(
                "no usable auth method: set GEMINI_API_KEY in the provider's env, or log in under its home; {INELIGIBLE}"
            ),
        ),
        Exit::Code(0) => TurnError::malformed("no answer in the output"),
        exit => match status_from_exit(exit) {
            Some(status) => failure(Some(status), &super::tail(&raw.stderr, 500)),
            None => crashed(raw),
        },
    })
}

fn from_document(doc: &Value) -> TurnOutput {
    let mut usage = Usage::default();
    if let Some(models) = doc.pointer("/stats/models").and_then(Value::as_object) {
        for model in models.values() {
            let tokens = &model["tokens"];
            usage.input_tokens += u64_at(tokens, "/prompt").or(u64_at(tokens, "/input")).unwrap_or(0);
            usage.output_tokens += u64_at(tokens, "/candidates").unwrap_or(0);
            *usage.cache_read_tokens.get_or_insert(0) += u64_at(tokens, "/cached").unwrap_or(0);
        }
    }
    TurnOutput {
        text: str_at(doc, "/response").unwrap_or_default().to_owned(),
        usage,
        model: first_key(doc.pointer("/stats/models").unwrap_or(&Value::Null)),
        session_id: str_at(doc, "/session_id").map(str::to_owned),
        ..empty_output()
    }
}

fn first_key(value: &Value) -> Option<String> {
    value.as_object().and_then(|m| m.keys().next().cloned())
}

/// The JSON document json mode writes at the end of stderr.
fn stderr_document(stderr: &str) -> Option<Value> {
    let start = if stderr.starts_with('{') { 0 } else { stderr.rfind("\n{")? + 1 };
    serde_json::from_str::<Value>(stderr[start..].trim()).ok().filter(|v| v.get("error").is_some())
}

/// The HTTP status the CLI exited with, cut to 8 bits.
fn status_from_exit(exit: Exit) -> Option<u16> {
    match exit {
        Exit::Code(145) => Some(401),
        Exit::Code(147) => Some(403),
        Exit::Code(173) => Some(429),
        Exit::Code(code @ 244..=248) => Some(code as u16 + 256),
        _ => None,
    }
}

fn failure(status: Option<u16>, message: &str) -> TurnError {
    let lower = message.to_lowercase();
    if matches!(status, Some(401 | 403)) || message.contains("UNAUTHENTICATED") || message.contains("\"code\":401") {
        return TurnError::new(
            ErrorKind::Auth { expired: lower.contains("expired") },
            format!(
                "authentication failed: {message}; set a valid GEMINI_API_KEY or log in again under the provider's home"
            ),
        );
    }
    if status == Some(429) || lower.contains("quota") || message.contains("\"code\":429") {
        return TurnError::new(ErrorKind::UsageLimit { resets_at: None }, format!("usage limit reached: {message}"));
    }
    TurnError::new(ErrorKind::Upstream { status }, format!("the model API failed: {message}"))
}
