//! A CLI described only by configuration: an argument template, and where
//! in its output the answer is.

use serde_json::Value;

use super::{Invocation, Setup, classify_text, crashed, empty_output, json_events};
use crate::config::{OutputFormat, ProviderConfig};
use crate::error::{ErrorKind, TurnError};
use crate::process::{Exit, RawOutput};
use crate::turn::{TurnOutput, TurnRequest};

/// Fills `{prompt}`, `{model}` and `{system}`. An argument whose placeholder has
/// no value is left out, so write a flag and its value as one (`--model={model}`).
///
/// An argument that starts with a placeholder would let a value starting with
/// `-` (`--yolo`) stand where the CLI reads an option: such a value is refused,
/// unless the template has a `--` argument before it.
pub(super) fn invocation(setup: &Setup<'_>, request: &TurnRequest) -> Result<Invocation, TurnError> {
    let values = [
        ("{prompt}", "prompt", Some(request.prompt.as_str())),
        ("{model}", "model", setup.model),
        ("{system}", "system", request.system.as_deref()),
    ];
    let mut prompt_in_args = false;
    let mut after_double_dash = false;
    let mut args = Vec::new();
    'args: for arg in &setup.config.args {
        let mut filled = arg.clone();
        for (placeholder, field, value) in values {
            if !arg.contains(placeholder) {
                continue;
            }
            prompt_in_args |= placeholder == "{prompt}";
            let Some(value) = value else { continue 'args };
            if arg.starts_with(placeholder) && value.starts_with('-') && !after_double_dash {
                return Err(TurnError::new(
                    ErrorKind::InvalidRequest { field: field.into() },
                    format!(
                        "the {field} starts with '-', and this provider's argument template has {placeholder} at \
                         the start of an argument, where the CLI would read it as an option; put `--` before it in \
                         `args` if the CLI supports that, or write it as `--option={placeholder}`"
                    ),
                ));
            }
            filled = filled.replace(placeholder, value);
        }
        after_double_dash |= arg == "--";
        args.push(filled);
    }
    Ok(Invocation { args, stdin: (!prompt_in_args).then(|| request.prompt.clone()), ..Default::default() })
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
