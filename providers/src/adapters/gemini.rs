//! Gemini CLI (`gemini --output-format=stream-json|json`, the prompt on stdin).
//!
//! In json mode errors go to stderr (a stack, then a JSON document) and the
//! exit status is the HTTP status cut to 8 bits (401 -> 145, 429 -> 173); exit
//! 41 means no usable auth method. In stream-json mode the error arrives as a
//! `result` event with `status: "error"`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Invocation, Setup, crashed, empty_output, json_events, output_format, str_at, u64_at, with_system};
use crate::config::{OutputFormat, ProviderConfig};
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
    if let Some(home) = setup.home {
        env.push(("GEMINI_CLI_HOME".into(), home.display().to_string()));
    }
    Invocation { args, stdin: (!setup.config.pty).then_some(prompt), env, env_remove: Vec::new() }
}

/// The `security.auth.selectedType` the CLI needs for the credential in its
/// environment: headless Gemini exits 41 ("Invalid auth method selected.")
/// without one in `$GEMINI_CLI_HOME/.gemini/settings.json`.
fn auth_type(config: &ProviderConfig) -> Option<&'static str> {
    let var = |k: &str| config.env.0.get(k).cloned().or_else(|| std::env::var(k).ok()).filter(|v| !v.is_empty());
    if var("GOOGLE_GENAI_USE_GCA").as_deref() == Some("true") {
        Some("oauth-personal")
    } else if var("GOOGLE_GENAI_USE_VERTEXAI").as_deref() == Some("true") {
        Some("vertex-ai")
    } else if var("GEMINI_API_KEY").is_some() {
        Some("gemini-api-key")
    } else if var("GEMINI_CLI_USE_COMPUTE_ADC").as_deref() == Some("true") {
        Some("compute-default-credentials")
    } else {
        None
    }
}

/// Makes the provider's home carry what the CLI needs for its credential, and
/// returns it (the CLI's `GEMINI_CLI_HOME`): the configured `home`, or, for a
/// credential given in the environment (API key, Vertex AI, ADC), Orch's own
/// `own_home` under its data dir (never the user's real home). Its
/// `.gemini/settings.json` gets `security.auth.selectedType` when it has
/// none; everything else in the file is kept.
pub(crate) fn prepare_home(config: &ProviderConfig, own_home: &Path) -> Result<Option<PathBuf>, String> {
    let auth = auth_type(config);
    let home = match (&config.home, auth) {
        (Some(home), _) => home.clone(),
        (None, Some(auth)) if auth != "oauth-personal" => own_home.to_owned(),
        _ => return Ok(None),
    };
    let Some(auth) = auth else { return Ok(Some(home)) };
    let dir = home.join(".gemini");
    let file = dir.join("settings.json");
    let mut settings = match std::fs::read_to_string(&file) {
        Ok(text) => serde_json::from_str::<Value>(&text).map_err(|e| {
            format!("{} is not JSON ({e}); fix it or set security.auth.selectedType yourself", file.display())
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Object(Default::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    if settings.pointer("/security/auth/selectedType").is_some() {
        return Ok(Some(home));
    }
    let Some(root) = settings.as_object_mut() else {
        return Err(format!("{} is not a JSON object", file.display()));
    };
    let security = root.entry("security").or_insert_with(|| Value::Object(Default::default()));
    let Some(security) = security.as_object_mut() else {
        return Err(format!("{}: `security` is not an object", file.display()));
    };
    let auth_obj = security.entry("auth").or_insert_with(|| Value::Object(Default::default()));
    let Some(auth_obj) = auth_obj.as_object_mut() else {
        return Err(format!("{}: `security.auth` is not an object", file.display()));
    };
    auth_obj.insert("selectedType".into(), Value::from(auth));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let text = serde_json::to_string_pretty(&settings).expect("a JSON value serialises");
    // Written aside and renamed: a concurrent turn never reads half a file.
    let tmp = dir.join(format!("settings.json.orch-{}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(Some(home))
}

/// Removes what the CLI kept of a turn under its home: Gemini CLI records
/// every session (the prompt included) in
/// `.gemini/tmp/<project>/chats/session-<time>-<id8>.jsonl` and has no option
/// not to. The turn's own file goes by the session id in its output; files
/// of turns that died before saying theirs go once older than `stale` (no
/// running turn keeps a file that long unwritten), and only in projects
/// rooted at Orch's `workdir`.
pub(crate) fn forget_turn(home: &Path, workdir: &Path, stdout: &str, stale: std::time::Duration) {
    let (events, _) = json_events(stdout);
    let session = events.iter().find_map(|e| str_at(e, "/session_id")).map(|id| id.chars().take(8).collect::<String>());
    let Ok(workdir) = workdir.canonicalize() else { return };
    let Ok(projects) = std::fs::read_dir(home.join(".gemini/tmp")) else { return };
    for project in projects.flatten() {
        let root = std::fs::read_to_string(project.path().join(".project_root")).unwrap_or_default();
        if Path::new(root.trim()).canonicalize().ok().as_deref() != Some(workdir.as_path()) {
            continue;
        }
        let Ok(chats) = std::fs::read_dir(project.path().join("chats")) else { continue };
        for chat in chats.flatten() {
            let name = chat.file_name().to_string_lossy().into_owned();
            let own = session.as_ref().is_some_and(|id| !id.is_empty() && name.contains(id.as_str()));
            let old =
                chat.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > stale));
            if own || old {
                let path = chat.path();
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                if let Err(err) = removed {
                    tracing::warn!(path = %path.display(), error = %err, "removing a gemini chat record failed");
                }
            }
        }
    }
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
                "no usable auth method (exit 41{}): give the provider a credential in its env (GEMINI_API_KEY, or \
                 GOOGLE_GENAI_USE_VERTEXAI=true with GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION), and check \
                 security.auth.selectedType in the home's .gemini/settings.json matches it (gemini-api-key, \
                 vertex-ai, oauth-personal); {INELIGIBLE}",
                stderr_line(&raw.stderr).map(|l| format!(": {l}")).unwrap_or_default()
            ),
        ),
        Exit::Code(0) => TurnError::malformed("no answer in the output"),
        exit => match status_from_exit(exit) {
            Some(status) => failure(Some(status), &super::tail(&raw.stderr, 500)),
            None => crashed(raw),
        },
    })
}

/// The last non-empty stderr line (the CLI's own reason), shortened.
fn stderr_line(stderr: &str) -> Option<String> {
    stderr.lines().map(str::trim).rfind(|l| !l.is_empty()).map(|l| super::tail(l, 200))
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
