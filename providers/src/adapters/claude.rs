//! Claude Code (`claude -p`), and Qwen Code, whose JSON output uses the same
//! system / assistant / result messages.
//!
//! Claude reports failures inside its `result` message (`is_error: true`,
//! `api_error_status`) and exits 0 or 1; a usage limit is announced first by a
//! `rate_limit_event` with `status: "rejected"` and `resetsAt` (Unix seconds).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Invocation, Setup, crashed, empty_output, json_events, output_format, str_at, u64_at};
use crate::config::OutputFormat;
use crate::error::{ErrorKind, TurnError};
use crate::process::{Exit, RawOutput};
use crate::turn::{ProgressEvent, TurnOutput, TurnRequest, Usage};

pub(super) fn invocation(setup: &Setup<'_>, request: &TurnRequest) -> Invocation {
    let pty = setup.config.pty;
    // Caller text (model, system prompt, tools) only ever as the value of an
    // `--option=value` argument, and the prompt on stdin: nothing a caller
    // sends can stand where the CLI reads an option.
    let mut args = vec!["-p".to_owned()];
    match output_format(setup.config, OutputFormat::StreamJson) {
        OutputFormat::Json => args.push("--output-format=json".into()),
        _ => args.extend(["--output-format=stream-json".into(), "--verbose".into()]),
    }
    if let Some(model) = setup.model {
        args.push(format!("--model={model}"));
    }
    if let Some(system) = &request.system {
        args.push(format!("--system-prompt={system}"));
    }
    if let Some(max_turns) = request.max_turns {
        args.push(format!("--max-turns={max_turns}"));
    }
    // The lower of the request's and the provider's cap.
    let budget = match (request.max_budget_usd, setup.config.limits.max_budget_usd) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(usd) = budget {
        args.push(format!("--max-budget-usd={usd}"));
    }
    // `--tools` picks the built-in tools that exist at all ("" = none);
    // `--allowedTools` lets the allowed ones run without a permission prompt.
    let tools = request.allowed_tools.join(",");
    args.push(format!("--tools={tools}"));
    if !tools.is_empty() {
        args.push(format!("--allowedTools={tools}"));
    }
    // Only the MCP servers Orch passes, never the user's own.
    args.push("--strict-mcp-config".into());
    if let Some(path) = &request.mcp_config {
        args.push(format!("--mcp-config={}", path.display()));
    }
    // Each turn stands alone: no transcript of the prompt is kept under the config dir.
    args.push("--no-session-persistence".into());
    args.extend(setup.config.args.iter().cloned());
    if pty {
        // A pty's stdin is the terminal, and its line discipline would mangle a
        // long prompt: the prompt is the last argument, after `--`.
        args.extend(["--".into(), request.prompt.clone()]);
    }
    let mut env = Vec::new();
    if let Some(dir) = setup.slot_dir {
        env.push(("CLAUDE_CONFIG_DIR".into(), dir.display().to_string()));
    }
    Invocation {
        args,
        stdin: (!pty).then(|| request.prompt.clone()),
        env,
        // It would bill the API key instead of the subscription.
        env_remove: vec!["ANTHROPIC_API_KEY"],
    }
}

pub(super) fn qwen_invocation(setup: &Setup<'_>, request: &TurnRequest) -> Invocation {
    // Qwen prepends a piped stdin to the prompt with a blank line, so the
    // prompt is the value of `--prompt=`: yargs never reads a value given
    // after `=` as an option. stream-json: events arrive as the model answers,
    // so a silent CLI (Qwen retries 429 and 5xx without a word) can be told
    // from a working one.
    let format = match output_format(setup.config, OutputFormat::StreamJson) {
        OutputFormat::Json => "json",
        _ => "stream-json",
    };
    let mut args = vec![super::yargs_value("--prompt", &request.prompt), format!("--output-format={format}")];
    if let Some(model) = setup.model {
        args.push(format!("--model={model}"));
    }
    if let Some(system) = &request.system {
        args.push(super::yargs_value("--system-prompt", system));
    }
    // No chat recording: nothing of the prompt stays under the CLI's home.
    // `--bare`: no managed auto-memory, whose extractor makes a second model
    // request per turn (billed too) and may write facts from the prompt
    // under ~/.qwen/projects; nor the user's hooks, skills and extensions.
    args.extend(["--chat-recording=false".into(), "--bare".into()]);
    args.extend(setup.config.args.iter().cloned());
    // Qwen reads a piped stdin as extra context; give it none.
    Invocation { args, stdin: None, env: Vec::new(), env_remove: Vec::new() }
}

pub(super) fn progress(line: &str) -> Option<ProgressEvent> {
    let event: Value = serde_json::from_str(line).ok()?;
    match (str_at(&event, "/type")?, str_at(&event, "/subtype")) {
        ("system", Some("api_retry")) => Some(ProgressEvent::ApiRetry {
            attempt: u64_at(&event, "/attempt").unwrap_or(0) as u32,
            max_retries: u64_at(&event, "/max_retries").map(|n| n as u32),
            delay_ms: event["retry_delay_ms"].as_f64().unwrap_or(0.0).round() as u64,
            status: u64_at(&event, "/error_status").map(|s| s as u16),
            error: str_at(&event, "/error").map(str::to_owned),
        }),
        ("assistant", _) => {
            let text = assistant_text(&event);
            // Synthetic error messages repeat the result; they are not answer text.
            (!text.is_empty() && event.get("error").is_none()).then_some(ProgressEvent::Text { text })
        }
        _ => None,
    }
}

/// Qwen's progress: Claude's, but an API error it prints as an answer is not answer text.
pub(super) fn qwen_progress(line: &str) -> Option<ProgressEvent> {
    match progress(line)? {
        ProgressEvent::Text { text } if qwen_api_error(&text).is_some() => None,
        event => Some(event),
    }
}

/// Qwen Code prints a failed API call as a successful answer
/// (`[API Error: 401 Incorrect API key provided.]`, `is_error: false`);
/// here it is the failure it is.
pub(super) fn qwen_parse(raw: &RawOutput) -> Result<TurnOutput, TurnError> {
    let output = parse(raw)?;
    let Some((status, said)) = qwen_api_error(&output.text) else { return Ok(output) };
    let lower = said.to_lowercase();
    let kind = match status {
        Some(401 | 403) => ErrorKind::Auth { expired: lower.contains("expired") },
        Some(429) => ErrorKind::UsageLimit { resets_at: None },
        Some(status) => ErrorKind::Upstream { status: Some(status) },
        None => super::classify_text(said).unwrap_or(ErrorKind::Upstream { status: None }),
    };
    let message = match kind {
        ErrorKind::Auth { .. } => format!(
            "authentication failed: {said}; set a valid OPENAI_API_KEY (or DASHSCOPE_API_KEY) in the provider's env, \
             or log in again under its home"
        ),
        ErrorKind::UsageLimit { .. } => format!("usage limit reached: {said}"),
        _ => format!("the model API failed: {said}"),
    };
    Err(TurnError::new(kind, message))
}

/// `[API Error: 401 Incorrect API key provided.]` -> (401, the whole text).
fn qwen_api_error(text: &str) -> Option<(Option<u16>, &str)> {
    let text = text.trim();
    let inner = text.strip_prefix("[API Error:")?.trim_start();
    if !text.ends_with(']') {
        return None;
    }
    let status = inner.get(..3).and_then(|s| s.parse::<u16>().ok()).filter(|s| (100..=599).contains(s));
    Some((status, text))
}

fn assistant_text(event: &Value) -> String {
    let Some(content) = event.pointer("/message/content").and_then(Value::as_array) else { return String::new() };
    content.iter().filter(|c| c["type"] == "text").filter_map(|c| c["text"].as_str()).collect()
}

/// What the events before the `result` told.
#[derive(Default)]
struct Seen {
    model: Option<String>,
    session_id: Option<String>,
    rejected: bool,
    resets_at: Option<DateTime<Utc>>,
    retries: u32,
    last_retry_status: Option<u16>,
    assistant_error: Option<String>,
    text: String,
}

pub(super) fn parse(raw: &RawOutput) -> Result<TurnOutput, TurnError> {
    let (events, _) = json_events(&raw.stdout);
    let mut seen = Seen::default();
    let mut result = None;
    for event in &events {
        match (str_at(event, "/type").unwrap_or(""), str_at(event, "/subtype")) {
            ("system", Some("init" | "session_start")) => {
                seen.model = str_at(event, "/model").map(str::to_owned);
                seen.session_id = str_at(event, "/session_id").map(str::to_owned);
            }
            ("system", Some("api_retry")) => {
                seen.retries += 1;
                seen.last_retry_status = u64_at(event, "/error_status").map(|s| s as u16);
            }
            ("rate_limit_event", _) if str_at(event, "/rate_limit_info/status") == Some("rejected") => {
                seen.rejected = true;
                seen.resets_at = event
                    .pointer("/rate_limit_info/resetsAt")
                    .and_then(Value::as_i64)
                    .and_then(|s| DateTime::from_timestamp(s, 0));
            }
            ("assistant", _) => {
                if let Some(error) = str_at(event, "/error") {
                    seen.assistant_error = Some(error.to_owned());
                } else {
                    seen.text.push_str(&assistant_text(event));
                }
            }
            ("result", _) => result = Some(event),
            _ => {}
        }
    }
    match result {
        Some(result) => from_result(result, seen),
        None => Err(without_result(raw, &seen)),
    }
}

fn from_result(result: &Value, seen: Seen) -> Result<TurnOutput, TurnError> {
    let text = str_at(result, "/result").map(str::to_owned);
    if result["subtype"] == "error_max_budget_usd" {
        let cost = result["total_cost_usd"].as_f64();
        let spent = cost.map(|c| format!(" (it cost ${c})")).unwrap_or_default();
        return Err(TurnError::new(
            ErrorKind::BudgetExceeded { cost_usd: cost },
            format!("the turn passed its budget{spent} and was stopped: raise max_budget_usd to let it finish"),
        ));
    }
    if result["is_error"].as_bool().unwrap_or(false) {
        let status = u64_at(result, "/api_error_status").map(|s| s as u16);
        let detail = text.or_else(|| str_at(result, "/subtype").map(str::to_owned)).unwrap_or_default();
        return Err(failure(status, &detail, &seen));
    }
    let usage = &result["usage"];
    Ok(TurnOutput {
        text: text.unwrap_or(seen.text),
        usage: Usage {
            input_tokens: u64_at(usage, "/input_tokens").unwrap_or(0),
            output_tokens: u64_at(usage, "/output_tokens").unwrap_or(0),
            cache_read_tokens: u64_at(usage, "/cache_read_input_tokens"),
            cache_creation_tokens: u64_at(usage, "/cache_creation_input_tokens"),
        },
        cost_usd: result["total_cost_usd"].as_f64(),
        // `modelUsage` names the model that answered; init only the one configured.
        model: result["modelUsage"].as_object().and_then(|m| m.keys().next().cloned()).or(seen.model),
        session_id: str_at(result, "/session_id").map(str::to_owned).or(seen.session_id),
        num_turns: u64_at(result, "/num_turns").map(|n| n as u32),
        ..empty_output()
    })
}

fn failure(status: Option<u16>, detail: &str, seen: &Seen) -> TurnError {
    let auth_failed = seen.assistant_error.as_deref() == Some("authentication_failed");
    let lower = detail.to_lowercase();
    let limit_words = [
        "usage limit",
        "credit balance",
        "credits exhausted",
        "credit exhausted",
        "hit your limit",
        "out of extra usage",
    ];
    if status == Some(429) || seen.rejected || limit_words.iter().any(|w| lower.contains(w)) {
        // `Claude AI usage limit reached|1763740800`: the reset time after the bar.
        let said = detail
            .rsplit_once('|')
            .and_then(|(_, t)| t.trim().parse::<i64>().ok())
            .and_then(|t| DateTime::from_timestamp(t, 0));
        // A reset time already past says nothing about when to try again.
        let resets_at = seen.resets_at.or(said).filter(|t| *t > Utc::now());
        let when = resets_at.map(|t| format!(" (resets at {})", t.to_rfc3339())).unwrap_or_default();
        return TurnError::new(ErrorKind::UsageLimit { resets_at }, format!("usage limit reached{when}: {detail}"));
    }
    if status == Some(401) || auth_failed || detail.contains("OAuth token has expired") {
        let expired = detail.contains("expired");
        let fix = "create a new token with `claude setup-token` and set CLAUDE_CODE_OAUTH_TOKEN";
        return TurnError::new(ErrorKind::Auth { expired }, format!("authentication failed: {detail}; {fix}"));
    }
    TurnError::new(ErrorKind::Upstream { status }, format!("the model API failed: {detail}"))
}

fn without_result(raw: &RawOutput, seen: &Seen) -> TurnError {
    if matches!(raw.exit, Exit::Code(_)) && seen.retries > 0 {
        let status = seen.last_retry_status;
        let shown = status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into());
        return TurnError::new(
            ErrorKind::Upstream { status },
            format!("the CLI gave up after {} API retries (last status {shown})", seen.retries),
        );
    }
    match raw.exit {
        Exit::Code(0) => TurnError::malformed("no result message in the output"),
        _ => crashed(raw),
    }
}
