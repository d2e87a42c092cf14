//! Per-CLI knowledge: the command line for a turn, progress from output lines,
//! and reading the finished output into an answer or a classified failure.

mod claude;
mod cli;
mod codex;
pub(crate) mod gemini;

use std::path::Path;

use serde_json::Value;

use crate::config::{OutputFormat, ProviderConfig, ProviderKind};
use crate::error::{ErrorKind, TurnError};
use crate::process::{Exit, RawOutput};
use crate::turn::{ProgressEvent, TurnOutput, TurnRequest};

/// How to start the CLI for one turn (the program comes from configuration).
#[derive(Debug, Default)]
pub(crate) struct Invocation {
    pub args: Vec<String>,
    /// The prompt on stdin, or None for stdin on /dev/null.
    pub stdin: Option<String>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<&'static str>,
}

/// What building an invocation needs besides the request.
pub(crate) struct Setup<'a> {
    pub kind: ProviderKind,
    pub config: &'a ProviderConfig,
    pub model: Option<&'a str>,
    /// Claude's per-slot `CLAUDE_CONFIG_DIR`.
    pub slot_dir: Option<&'a Path>,
    /// Gemini's `GEMINI_CLI_HOME` (see [`gemini::prepare_home`]).
    pub home: Option<&'a Path>,
}

/// The command line for one turn; refused (InvalidRequest) when caller text
/// could only be placed where the CLI reads an option.
pub(crate) fn invocation(setup: &Setup<'_>, request: &TurnRequest) -> Result<Invocation, TurnError> {
    let mut inv = match setup.kind {
        ProviderKind::Claude => claude::invocation(setup, request),
        ProviderKind::Gemini => gemini::invocation(setup, request),
        ProviderKind::Codex => codex::invocation(setup, request),
        ProviderKind::Qwen => claude::qwen_invocation(setup, request),
        ProviderKind::Cli => cli::invocation(setup, request)?,
    };
    with_configured_env(setup, &mut inv);
    Ok(inv)
}

/// The command line of a warm start (see `crate::warm`): the CLI started
/// ahead of its turn, reading its one user message from stdin as a
/// stream-json event (`stdin`). The arguments are the cold start's, with
/// `--input-format=stream-json` and without the prompt. None for CLIs that
/// cannot wait for their prompt: Gemini gives up on a silent stdin after a
/// moment, Codex reads stdin before its start-up work (nothing to gain), a
/// `cli` provider is unknown; nor in a pty, or with json output (stream-json
/// input needs stream-json output).
pub(crate) fn warm_invocation(setup: &Setup<'_>, request: &TurnRequest) -> Option<Invocation> {
    if setup.config.pty || output_format(setup.config, OutputFormat::StreamJson) != OutputFormat::StreamJson {
        return None;
    }
    let mut inv = match setup.kind {
        ProviderKind::Claude => claude::invocation(setup, request),
        ProviderKind::Qwen => {
            let mut inv = claude::qwen_invocation(setup, request);
            // The prompt (`--prompt=...`) comes first; it goes on stdin instead.
            inv.args.remove(0);
            inv
        }
        ProviderKind::Gemini | ProviderKind::Codex | ProviderKind::Cli => return None,
    };
    // After `-p` for Claude, first for Qwen: both read it anywhere.
    let at = usize::from(setup.kind == ProviderKind::Claude);
    inv.args.insert(at, "--input-format=stream-json".into());
    let message = serde_json::json!({
        "type": "user",
        "message": {"role": "user", "content": [{"type": "text", "text": request.prompt}]},
        "parent_tool_use_id": null,
        "session_id": "",
    });
    inv.stdin = Some(format!("{message}\n"));
    with_configured_env(setup, &mut inv);
    Some(inv)
}

/// Configured env first, so the adapter's own settings (slots, NO_BROWSER) win.
fn with_configured_env(setup: &Setup<'_>, inv: &mut Invocation) {
    let removed = inv.env_remove.clone();
    let configured =
        setup.config.env.0.iter().filter(|(k, _)| !removed.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone()));
    inv.env = configured.chain(std::mem::take(&mut inv.env)).collect();
}

pub(crate) fn progress(kind: ProviderKind, line: &str) -> Option<ProgressEvent> {
    match kind {
        ProviderKind::Claude => claude::progress(line),
        ProviderKind::Qwen => claude::qwen_progress(line),
        ProviderKind::Gemini => gemini::progress(line),
        ProviderKind::Codex => codex::progress(line),
        ProviderKind::Cli => None,
    }
}

/// The model a CLI says it runs, from its start-up event (Claude's and Qwen's
/// `system`/`init`, Gemini's `init`); Codex and `cli` providers say none.
pub(crate) fn reported_model(kind: ProviderKind, line: &str) -> Option<String> {
    if !matches!(kind, ProviderKind::Claude | ProviderKind::Qwen | ProviderKind::Gemini) || !line.contains("\"init\"") {
        return None;
    }
    let event: Value = serde_json::from_str(line).ok()?;
    let init = match kind {
        ProviderKind::Gemini => event["type"] == "init",
        _ => event["type"] == "system" && event["subtype"] == "init",
    };
    init.then(|| str_at(&event, "/model").map(str::to_owned)).flatten().filter(|m| !m.is_empty())
}

/// Reads a finished turn. `provider` and `duration` of the output are the caller's to fill.
pub(crate) fn parse(kind: ProviderKind, config: &ProviderConfig, raw: &RawOutput) -> Result<TurnOutput, TurnError> {
    match kind {
        ProviderKind::Claude => claude::parse(raw),
        ProviderKind::Qwen => claude::qwen_parse(raw),
        ProviderKind::Gemini => gemini::parse(raw),
        ProviderKind::Codex => codex::parse(raw),
        ProviderKind::Cli => cli::parse(config, raw),
    }
}

pub(crate) fn output_format(config: &ProviderConfig, default: OutputFormat) -> OutputFormat {
    config.output.as_ref().map_or(default, |o| o.format)
}

/// `--option=value` for a CLI parsing with yargs (gemini, qwen). yargs reads a
/// value after `=` as a value whatever it starts with, but strips one pair of
/// matching quotes around it; a value wrapped in quotes gets one more pair.
fn yargs_value(option: &str, value: &str) -> String {
    let quoted = !value.is_empty()
        && matches!(value.as_bytes()[0], b'"' | b'\'')
        && value.as_bytes()[value.len() - 1] == value.as_bytes()[0];
    if quoted {
        let q = value.as_bytes()[0] as char;
        format!("{option}={q}{value}{q}")
    } else {
        format!("{option}={value}")
    }
}

/// A CLI without a system prompt flag gets it ahead of the prompt.
fn with_system(request: &TurnRequest) -> String {
    match &request.system {
        Some(system) if !system.is_empty() => format!("{system}\n\n{}", request.prompt),
        _ => request.prompt.clone(),
    }
}

/// The JSON values in a CLI's stdout: one document (pretty-printed or an
/// array of events) or one event per line. Lines that are not JSON are counted.
fn json_events(stdout: &str) -> (Vec<Value>, usize) {
    let trimmed = stdout.trim();
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Array(items)) => return (items, 0),
        Ok(value @ Value::Object(_)) => return (vec![value], 0),
        _ => {}
    }
    let mut bad = 0;
    let events = trimmed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_str::<Value>(l).inspect_err(|_| bad += 1).ok())
        .collect();
    (events, bad)
}

fn u64_at(value: &Value, pointer: &str) -> Option<u64> {
    value.pointer(pointer).and_then(Value::as_u64)
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// Guesses the kind of a failure from an error text, for CLIs that only say it in words.
fn classify_text(text: &str) -> Option<ErrorKind> {
    let lower = text.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if has(&["401", "unauthorized", "unauthenticated", "authentication", "invalid api key", "not logged in"]) {
        return Some(ErrorKind::Auth { expired: lower.contains("expired") });
    }
    if has(&["429", "rate limit", "rate_limit", "usage limit", "quota"]) {
        return Some(ErrorKind::UsageLimit { resets_at: None });
    }
    None
}

/// The last lines of stderr, for a message a person can act on.
fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    match text.char_indices().rev().nth(max) {
        Some((i, _)) => format!("…{}", &text[i..]),
        None => text.to_owned(),
    }
}

/// A CLI that ended without an answer its adapter recognises.
fn crashed(raw: &RawOutput) -> TurnError {
    let stderr_tail = tail(&raw.stderr, 2000);
    let (exit, signal, how) = match raw.exit {
        Exit::Code(code) => (Some(code), None, format!("exited with status {code}")),
        Exit::Signal(sig) => (None, Some(sig), format!("was killed by signal {sig}")),
    };
    let detail = if stderr_tail.is_empty() { String::new() } else { format!(": {stderr_tail}") };
    TurnError::new(ErrorKind::Crashed { exit, signal, stderr_tail }, format!("the CLI {how} without an answer{detail}"))
}

fn empty_output() -> TurnOutput {
    TurnOutput {
        provider: String::new(),
        text: String::new(),
        usage: Default::default(),
        cost_usd: None,
        duration: Default::default(),
        model: None,
        session_id: None,
        num_turns: None,
    }
}

/// Whether a stdout line shows the model answering (anything past the CLI's
/// start-up line), for `limits.silent_secs`.
pub(crate) fn is_reply(kind: ProviderKind, line: &str) -> bool {
    let Ok(event) = serde_json::from_str::<Value>(line) else { return !line.trim().is_empty() };
    match kind {
        ProviderKind::Claude | ProviderKind::Qwen => {
            !matches!(str_at(&event, "/type"), Some("system" | "rate_limit_event"))
        }
        ProviderKind::Gemini => !(event["type"] == "init" || (event["type"] == "message" && event["role"] == "user")),
        ProviderKind::Codex => {
            !matches!(str_at(&event, "/type"), Some("thread.started" | "turn.started" | "error"))
                && event.pointer("/item/type") != Some(&Value::from("error"))
        }
        ProviderKind::Cli => true,
    }
}

/// What a CLI retrying its model API (an `api_retry` event, Codex's
/// `Reconnecting...`) means, when the turn gives up instead of waiting.
pub(crate) fn retry_failure(kind: ProviderKind, status: Option<u16>, error: Option<&str>) -> TurnError {
    let said = error.unwrap_or("no detail");
    let kind_of = match status {
        Some(401 | 403) => ErrorKind::Auth { expired: said.contains("expired") },
        Some(429) => ErrorKind::UsageLimit { resets_at: None },
        Some(status) => ErrorKind::Upstream { status: Some(status) },
        None => match kind {
            ProviderKind::Codex => codex::classify(said),
            _ => classify_text(said).unwrap_or(ErrorKind::Upstream { status: None }),
        },
    };
    let shown = status.map(|s| format!("status {s}, ")).unwrap_or_default();
    TurnError::new(
        kind_of,
        format!("the CLI began retrying its model API ({shown}{said}); stopped it for the fallback"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warm start's arguments are the cold start's plus the input format,
    /// never the prompt; the prompt is the text of the JSON message on stdin.
    #[test]
    fn a_warm_start_takes_a_flag_shaped_prompt_on_stdin_only() {
        let config = ProviderConfig::default();
        for prompt in ["--yolo", "-p x", "--prompt=y", "\"quoted\"", "line\n{\"type\":\"user\"}"] {
            let request = TurnRequest { prompt: prompt.into(), system: Some("be brief".into()), ..Default::default() };
            for kind in [ProviderKind::Claude, ProviderKind::Qwen] {
                let setup = Setup { kind, config: &config, model: Some("m1"), slot_dir: None, home: None };
                let warm = warm_invocation(&setup, &request).unwrap();
                assert!(!warm.args.iter().any(|a| a.contains(prompt)), "{kind}: {:?}", warm.args);
                let cold = invocation(&setup, &request).unwrap();
                let cold_args: Vec<&String> = cold.args.iter().filter(|a| !a.starts_with("--prompt=")).collect();
                let warm_args: Vec<&String> = warm.args.iter().filter(|a| *a != "--input-format=stream-json").collect();
                assert_eq!(warm_args, cold_args, "{kind}");
                let stdin = warm.stdin.unwrap();
                assert_eq!(stdin.lines().count(), 1, "{kind}: one JSON line: {stdin:?}");
                let message: Value = serde_json::from_str(&stdin).unwrap();
                assert_eq!(message["type"], "user");
                assert_eq!(message["message"]["content"][0]["text"], prompt, "{kind}");
            }
        }
        // CLIs that cannot wait for their prompt, and modes that cannot carry it, start cold.
        let request = TurnRequest { prompt: "hi".into(), ..Default::default() };
        for kind in [ProviderKind::Gemini, ProviderKind::Codex, ProviderKind::Cli] {
            let setup = Setup { kind, config: &config, model: None, slot_dir: None, home: None };
            assert!(warm_invocation(&setup, &request).is_none(), "{kind}");
        }
        let json = ProviderConfig {
            output: Some(crate::config::OutputConfig { format: OutputFormat::Json, text: None }),
            ..Default::default()
        };
        let pty = ProviderConfig { pty: true, ..Default::default() };
        for config in [&json, &pty] {
            let setup = Setup { kind: ProviderKind::Claude, config, model: None, slot_dir: None, home: None };
            assert!(warm_invocation(&setup, &request).is_none());
        }
    }

    /// In a pty the prompt is an argument: after `--` (claude, codex) or as the
    /// value of `--prompt=` (gemini, qwen's yargs), with yargs' quote stripping undone.
    #[test]
    fn a_flag_shaped_prompt_in_a_pty_stays_a_prompt() {
        let config = ProviderConfig { pty: true, ..Default::default() };
        for prompt in ["--yolo", "-y --help", "\"quoted\"", "-m x"] {
            let request = TurnRequest { prompt: prompt.into(), ..Default::default() };
            for kind in [ProviderKind::Claude, ProviderKind::Codex, ProviderKind::Gemini, ProviderKind::Qwen] {
                let setup = Setup { kind, config: &config, model: Some("m1"), slot_dir: None, home: None };
                let inv = invocation(&setup, &request).unwrap();
                assert_eq!(inv.stdin, None, "{kind}: a pty's stdin is the terminal");
                let args = &inv.args;
                match kind {
                    ProviderKind::Claude | ProviderKind::Codex => {
                        assert_eq!(&args[args.len() - 2..], ["--", prompt], "{kind}: {args:?}");
                        assert!(!args[..args.len() - 2].iter().any(|a| a.contains(prompt)), "{kind}: {args:?}");
                    }
                    _ => {
                        let wrapped = if prompt.starts_with('"') { format!("\"{prompt}\"") } else { prompt.to_owned() };
                        assert_eq!(args[0], format!("--prompt={wrapped}"), "{kind}: {args:?}");
                        assert!(!args[1..].iter().any(|a| a.contains(prompt)), "{kind}: {args:?}");
                    }
                }
            }
        }
    }
}
