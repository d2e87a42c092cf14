//! A CLI described only by configuration: an argument template, and where
//! in its output the answer is.

use serde_json::Value;

use super::{Invocation, Setup, classify_text, crashed, empty_output, json_events};
use crate::config::{OutputFormat, ProviderConfig};
use crate::error::TurnError;
use crate::process::{Exit, RawOutput};
use crate::turn::{TurnOutput, TurnRequest};

/// Fills `{prompt}`, `{model}` and `{system}`. An argument whose placeholder has
/// no value is left out, so write a flag and its value as one (`--model={model}`).
pub(super) fn invocation(setup: &Setup<'_>, request: &TurnRequest) -> Invocation {
    let values = [
        ("{prompt}", Some(request.prompt.as_str())),
        ("{model}", setup.model),
        ("{system}", request.system.as_deref()),
    ];
    let mut prompt_in_args = false;
    let args = setup
        .config
        .args
        .iter()
        .filter_map(|arg| {
            let mut filled = arg.clone();
            for (placeholder, value) in values {
                if filled.contains(placeholder) {
                    prompt_in_args |= placeholder == "{prompt}";
                    filled = filled.replace(placeholder, value?);
                }
            }
            Some(filled)
        })
        .collect();
    Invocation { args, stdin: (!prompt_in_args).then(|| request.prompt.clone()), ..Default::default() }
}

pub(super) fn parse(config: &ProviderConfig, raw: &RawOutput) -> Result<TurnOutput, TurnError> {
    if raw.exit != Exit::Code(0) {
        let said = format!("{}\n{}", raw.stderr, super::tail(&raw.stdout, 2000));
        return Err(match classify_text(&said) {
            Some(kind) => TurnError::new(kind, format!("the CLI failed: {}", super::tail(said.trim(), 500))),
            None => crashed(raw),
        });
    }
    let output = config.output.as_ref().expect("validated: a cli provider has an output");
    let path = output.text.as_deref().unwrap_or_default();
    let text = match output.format {
        OutputFormat::Text | OutputFormat::StreamJson => raw.stdout.trim_end().to_owned(),
        OutputFormat::Json => {
            let doc: Value = serde_json::from_str(raw.stdout.trim())
                .map_err(|e| TurnError::malformed(format!("output is not JSON: {e}")))?;
            at_path(&doc, path).ok_or_else(|| TurnError::malformed(format!("no text at `{path}` in the output")))?
        }
        OutputFormat::Jsonl => {
            let (events, _) = json_events(&raw.stdout);
            let parts: Vec<String> = events.iter().filter_map(|e| at_path(e, path)).collect();
            if parts.is_empty() {
                return Err(TurnError::malformed(format!("no event has text at `{path}`")));
            }
            parts.concat()
        }
    };
    Ok(TurnOutput { text, ..empty_output() })
}

/// Follows a dotted path (`result.text`, `choices.0.text`) to a string.
fn at_path(value: &Value, path: &str) -> Option<String> {
    let mut at = value;
    for part in path.split('.') {
        at = match at {
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => at.get(part)?,
        };
    }
    at.as_str().map(str::to_owned)
}
