//! Provider configuration as the user writes it (`[providers.NAME]` in `orch.toml`),
//! validated before any provider is built.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The built-in adapters, and `cli` for a command described only by configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Claude,
    Gemini,
    Codex,
    Qwen,
    Cli,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 5] =
        [ProviderKind::Claude, ProviderKind::Gemini, ProviderKind::Codex, ProviderKind::Qwen, ProviderKind::Cli];

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Claude => "claude",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Codex => "codex",
            ProviderKind::Qwen => "qwen",
            ProviderKind::Cli => "cli",
        }
    }

    fn from_name(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.name() == name && *k != ProviderKind::Cli)
    }

    /// The executable looked up on PATH when `command` is not configured.
    pub fn default_command(self) -> Option<&'static str> {
        match self {
            ProviderKind::Cli => None,
            kind => Some(kind.name()),
        }
    }

    /// How to install the CLI, for `NotInstalled` errors and `orch doctor`.
    pub fn install_hint(self) -> &'static str {
        match self {
            ProviderKind::Claude => "npm i -g @anthropic-ai/claude-code",
            ProviderKind::Gemini => "npm i -g @google/gemini-cli",
            ProviderKind::Codex => "npm i -g @openai/codex",
            ProviderKind::Qwen => "npm i -g @qwen-code/qwen-code",
            ProviderKind::Cli => "install the configured command or fix its path in `command`",
        }
    }
}

impl ProviderKind {
    /// How to replace a credential the provider refused or that expires.
    pub fn renew_hint(self) -> &'static str {
        match self {
            ProviderKind::Claude => {
                "run `claude setup-token`, replace CLAUDE_CODE_OAUTH_TOKEN and set token_expires_at to a year from now"
            }
            ProviderKind::Gemini => "log in again under the provider's home, or replace GEMINI_API_KEY",
            ProviderKind::Codex => "run `codex login` again as the user Orch runs as",
            ProviderKind::Qwen => "run `qwen` and log in again as the user Orch runs as",
            ProviderKind::Cli => "renew the credentials the command uses",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// All configured providers by name. The default has the four built-ins with
/// default settings; a missing CLI only fails its own turns (and `orch doctor`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct ProvidersConfig(pub BTreeMap<String, ProviderConfig>);

impl Default for ProvidersConfig {
    fn default() -> Self {
        let builtins = [ProviderKind::Claude, ProviderKind::Gemini, ProviderKind::Codex, ProviderKind::Qwen];
        ProvidersConfig(builtins.into_iter().map(|k| (k.name().to_owned(), ProviderConfig::default())).collect())
    }
}

/// One provider. For built-ins every field is optional; `cli` needs `command`,
/// `args` (the argument template) and `output`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Which adapter; defaults to the provider's name when that is a built-in.
    pub kind: Option<ProviderKind>,
    /// The executable (a path, or a name looked up on PATH).
    pub command: Option<PathBuf>,
    /// Built-ins: extra arguments appended to Orch's. `cli`: the whole argument
    /// template, with `{prompt}`, `{model}` and `{system}` placeholders.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment for the CLI (credentials, gateway URLs). Values are secret.
    #[serde(default)]
    pub env: EnvMap,
    /// Models callers may ask for; empty = any.
    #[serde(default)]
    pub models: Vec<String>,
    pub default_model: Option<String>,
    /// Built-ins: `json` or `stream-json` (claude, gemini). `cli`: required.
    pub output: Option<OutputConfig>,
    /// Run the CLI in a pseudo-terminal (ANSI stripped); the prompt then goes as an argument.
    #[serde(default)]
    pub pty: bool,
    /// Gemini only: its `GEMINI_CLI_HOME` (where its settings and logins live).
    pub home: Option<PathBuf>,
    /// When the credential expires, as the user knows it: RFC 3339
    /// (`2027-11-21T09:00:00Z`) or a date (`2027-11-21`, midnight UTC). A
    /// `claude setup-token` token lasts a year from its creation.
    pub token_expires_at: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Claude and Qwen Code: how many CLIs to keep started ahead, per model,
    /// each waiting for the one turn it serves (0 = off, the default). They
    /// count against `limits.concurrency`.
    #[serde(default)]
    pub warm: u32,
}

/// Environment variables for a CLI. `Debug` shows names only: values are credentials.
#[derive(Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct EnvMap(pub BTreeMap<String, String>);

impl fmt::Debug for EnvMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// How a `cli` provider prints its answer.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub format: OutputFormat,
    /// For `json` and `jsonl`: dotted path to the answer text, e.g. `result.text`
    /// (for `jsonl`, the text of every event that has it is joined).
    pub text: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    Text,
    Json,
    Jsonl,
    StreamJson,
}

impl OutputFormat {
    fn name(self) -> &'static str {
        match self {
            OutputFormat::Text => "text",
            OutputFormat::Json => "json",
            OutputFormat::Jsonl => "jsonl",
            OutputFormat::StreamJson => "stream-json",
        }
    }
}

/// Per-provider limits, per worker process.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Turns at once on this worker (and each its own config dir, for Claude).
    pub concurrency: u32,
    /// A turn running longer is killed with its whole process group.
    pub timeout_secs: u64,
    /// A CLI printing more than this on stdout is killed.
    pub output_cap_bytes: u64,
    /// Cooldown after a usage limit when the CLI gave no reset time.
    pub cooldown_secs: u64,
    /// Cooldown after the model API behind the CLI failed (5xx, 529, or a CLI
    /// retrying it): turns skip the provider meanwhile.
    pub outage_cooldown_secs: u64,
    /// After a turn was refused for the credential, turns skip the provider;
    /// one turn per this many seconds is let through as a probe (so is the
    /// first turn after a restart, which may bring a new configuration).
    pub auth_probe_secs: u64,
    /// A turn whose CLI printed no event past its start within this many
    /// seconds is given up when a fallback follows (0 = never). Unset: 90 s
    /// for Qwen Code, which retries 429 and 5xx silently; never for the others.
    pub silent_secs: Option<u64>,
    /// Claude only: a turn stops once its cost passes this many US dollars
    /// (`--max-budget-usd`; the cost as Claude Code computes it at API
    /// rates). A request's own `max_budget_usd` may lower it, never raise it.
    pub max_budget_usd: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency: 2,
            timeout_secs: 600,
            output_cap_bytes: 8 << 20,
            cooldown_secs: 300,
            outage_cooldown_secs: 60,
            auth_probe_secs: 600,
            silent_secs: None,
            max_budget_usd: None,
        }
    }
}

/// A configuration mistake, naming the field (`providers.NAME.FIELD`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

pub(crate) const PLACEHOLDERS: [&str; 3] = ["{prompt}", "{model}", "{system}"];

/// The longest model name accepted.
pub const MODEL_NAME_MAX: usize = 128;

/// Checks a model name before it may reach a command line: 1 to 128 ASCII
/// characters, a letter or digit first (never `-`, so a CLI cannot read it as
/// an option), then letters, digits and `. _ - : / @ + [ ]` (enough for
/// `claude-sonnet-4-5@20250929`, `models/gemini-2.5-pro`, `sonnet[1m]`,
/// `llama3:8b`). The message says what is allowed.
pub fn check_model_name(model: &str) -> Result<(), String> {
    let allowed =
        "a model name is 1 to 128 characters: a letter or digit first, then letters, digits and . _ - : / @ + [ ]";
    let first_ok = model.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = model.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/@+[]".contains(&b));
    if model.len() > MODEL_NAME_MAX || !first_ok || !rest_ok {
        let shown: String = model.chars().take(MODEL_NAME_MAX).collect();
        return Err(format!("{shown:?} is not a model name; {allowed}"));
    }
    Ok(())
}

impl ProvidersConfig {
    /// Checks every provider; the first mistake is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, config) in &self.0 {
            config.validate(name)?;
        }
        Ok(())
    }
}

/// Fields settable as `ORCH_PROVIDER_<NAME>_<FIELD>`, longest first so
/// `DEFAULT_MODEL` wins over a name ending in `DEFAULT`.
const ENV_FIELDS: [&str; 16] = [
    "TOKEN_EXPIRES_AT",
    "MAX_BUDGET_USD",
    "OUTPUT_CAP_BYTES",
    "OUTPUT_FORMAT",
    "OUTPUT_TEXT",
    "COOLDOWN_SECS",
    "DEFAULT_MODEL",
    "TIMEOUT_SECS",
    "CONCURRENCY",
    "COMMAND",
    "MODELS",
    "ARGS",
    "HOME",
    "KIND",
    "WARM",
    "PTY",
];

impl ProvidersConfig {
    /// Applies `ORCH_PROVIDER_<NAME>_<FIELD>` variables over the file's
    /// settings: COMMAND, ARGS (a JSON array, or words split on spaces),
    /// MODELS (comma-separated), DEFAULT_MODEL, KIND, HOME, PTY (true/false), TOKEN_EXPIRES_AT,
    /// OUTPUT_FORMAT (text, json, jsonl, stream-json), OUTPUT_TEXT (the answer's path),
    /// CONCURRENCY, TIMEOUT_SECS, OUTPUT_CAP_BYTES, COOLDOWN_SECS, MAX_BUDGET_USD, WARM, and
    /// `ENV_<VAR>` for a variable of the CLI's environment. `<NAME>` is the
    /// provider's name in capitals with `-` as `_`; an unknown name adds a
    /// provider (which then needs a KIND unless named after a built-in).
    /// Errors name the variable; values are never echoed for ENV_ variables.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        let mut vars: Vec<(String, String)> =
            vars.into_iter().filter(|(k, _)| k.starts_with("ORCH_PROVIDER_")).collect();
        vars.sort();
        for (key, value) in vars {
            let rest = &key["ORCH_PROVIDER_".len()..];
            let err = |message: String| Err(ConfigError { field: key.clone(), message });
            let (name, field) = if let Some(at) = rest.find("_ENV_") {
                (&rest[..at], &rest[at + 1..])
            } else {
                match ENV_FIELDS.iter().find(|f| rest.ends_with(&format!("_{f}"))) {
                    Some(f) => (&rest[..rest.len() - f.len() - 1], *f),
                    None => {
                        return err(format!(
                            "ends in no known field; use ORCH_PROVIDER_<NAME>_<FIELD> with FIELD one of {}, or ENV_<VAR>",
                            ENV_FIELDS.join(", ")
                        ));
                    }
                }
            };
            if name.is_empty() {
                return err("names no provider; use ORCH_PROVIDER_<NAME>_<FIELD>".into());
            }
            let existing = self.0.keys().find(|n| n.to_uppercase().replace('-', "_") == name).cloned();
            let config = self.0.entry(existing.unwrap_or_else(|| name.to_lowercase())).or_default();
            let number = |v: &str| v.trim().parse::<u64>().map_err(|_| format!("{v:?} is not a whole number"));
            let result: Result<(), String> = match field {
                "COMMAND" => {
                    config.command = Some(value.clone().into());
                    Ok(())
                }
                "ARGS" if value.trim_start().starts_with('[') => serde_json::from_str::<Vec<String>>(&value)
                    .map(|args| config.args = args)
                    .map_err(|e| format!("not a JSON array of strings: {e}")),
                "ARGS" => {
                    config.args = value.split_whitespace().map(str::to_owned).collect();
                    Ok(())
                }
                "MODELS" => {
                    config.models =
                        value.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect();
                    Ok(())
                }
                "DEFAULT_MODEL" => {
                    config.default_model = Some(value.clone());
                    Ok(())
                }
                "KIND" => ProviderKind::ALL
                    .into_iter()
                    .find(|k| k.name() == value)
                    .map(|k| config.kind = Some(k))
                    .ok_or_else(|| format!("{value:?} is not a kind; allowed: claude, gemini, codex, qwen, cli")),
                "HOME" => {
                    config.home = Some(value.clone().into());
                    Ok(())
                }
                "TOKEN_EXPIRES_AT" => parse_expiry(&value).map(|_| config.token_expires_at = Some(value.clone())),
                "OUTPUT_FORMAT" => {
                    let format =
                        [OutputFormat::Text, OutputFormat::Json, OutputFormat::Jsonl, OutputFormat::StreamJson]
                            .into_iter()
                            .find(|f| f.name() == value)
                            .ok_or_else(|| {
                                format!("{value:?} is not a format; allowed: text, json, jsonl, stream-json")
                            });
                    format.map(|format| {
                        let text = config.output.take().and_then(|o| o.text);
                        config.output = Some(OutputConfig { format, text });
                    })
                }
                "OUTPUT_TEXT" => {
                    let format = config.output.as_ref().map_or(OutputFormat::Json, |o| o.format);
                    config.output = Some(OutputConfig { format, text: Some(value.clone()) });
                    Ok(())
                }
                "PTY" => match value.as_str() {
                    "true" | "1" | "false" | "0" => {
                        config.pty = matches!(value.as_str(), "true" | "1");
                        Ok(())
                    }
                    other => Err(format!("{other:?} is not a boolean; allowed: true, false")),
                },
                "CONCURRENCY" => number(&value).and_then(|n| {
                    u32::try_from(n).map(|n| config.limits.concurrency = n).map_err(|_| "too large".to_owned())
                }),
                "TIMEOUT_SECS" => number(&value).map(|n| config.limits.timeout_secs = n),
                "WARM" => number(&value)
                    .and_then(|n| u32::try_from(n).map(|n| config.warm = n).map_err(|_| "too large".to_owned())),
                "OUTPUT_CAP_BYTES" => number(&value).map(|n| config.limits.output_cap_bytes = n),
                "COOLDOWN_SECS" => number(&value).map(|n| config.limits.cooldown_secs = n),
                "MAX_BUDGET_USD" => value
                    .trim()
                    .parse::<f64>()
                    .map(|usd| config.limits.max_budget_usd = Some(usd))
                    .map_err(|_| format!("{value:?} is not a number of dollars")),
                env => {
                    let var = &env["ENV_".len()..];
                    if var.is_empty() {
                        Err("names no variable; use ORCH_PROVIDER_<NAME>_ENV_<VAR>".into())
                    } else {
                        config.env.0.insert(var.to_owned(), value.clone());
                        Ok(())
                    }
                }
            };
            if let Err(message) = result {
                return err(message);
            }
        }
        Ok(())
    }
}

impl ProviderConfig {
    /// The adapter this provider uses (validated configs always have one).
    pub fn resolved_kind(&self, name: &str) -> Option<ProviderKind> {
        self.kind.or_else(|| ProviderKind::from_name(name))
    }

    /// [`ProviderConfig::token_expires_at`] as a time (validated configs parse).
    pub fn token_expiry(&self) -> Option<DateTime<Utc>> {
        self.token_expires_at.as_deref().and_then(|t| parse_expiry(t).ok())
    }

    /// Checks one provider named `name`.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let field = |f: &str| format!("providers.{name}.{f}");
        let err = |f: &str, message: String| Err(ConfigError { field: field(f), message });
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
        {
            return Err(ConfigError {
                field: format!("providers.{name:?}"),
                message: "a provider name uses only a-z, 0-9, '-' and '_'".into(),
            });
        }
        let Some(kind) = self.resolved_kind(name) else {
            return err(
                "kind",
                "required for a provider not named after a built-in; one of claude, gemini, codex, qwen, cli".into(),
            );
        };
        if kind == ProviderKind::Cli && self.command.is_none() {
            return err("command", "required for a `cli` provider (the executable to run)".into());
        }
        if self.command.as_ref().is_some_and(|c| c.as_os_str().is_empty()) {
            return err("command", "must not be empty".into());
        }
        for key in self.env.0.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return err("env", format!("{key:?} is not a valid variable name"));
            }
        }
        for model in self.models.iter().chain(&self.default_model) {
            if let Err(message) = check_model_name(model) {
                return err(if self.models.contains(model) { "models" } else { "default_model" }, message);
            }
        }
        if let Some(default) = &self.default_model
            && !self.models.is_empty()
            && !self.models.contains(default)
        {
            return err("default_model", format!("{default:?} is not one of models {:?}", self.models));
        }
        if self.home.is_some() && kind != ProviderKind::Gemini {
            return err("home", format!("only a gemini provider has a home (this one is {kind})"));
        }
        if let Some(text) = &self.token_expires_at
            && let Err(message) = parse_expiry(text)
        {
            return err("token_expires_at", message);
        }
        let limits = &self.limits;
        if !(1..=256).contains(&limits.concurrency) {
            return err("limits.concurrency", format!("must be between 1 and 256 (got {})", limits.concurrency));
        }
        if self.warm > 0 {
            let why = match kind {
                ProviderKind::Claude | ProviderKind::Qwen if self.pty => {
                    Some("a CLI in a pty takes its prompt as an argument".to_owned())
                }
                ProviderKind::Claude | ProviderKind::Qwen
                    if self.output.as_ref().is_some_and(|o| o.format != OutputFormat::StreamJson) =>
                {
                    Some("a warm start reads stream-json and needs output.format = \"stream-json\"".to_owned())
                }
                ProviderKind::Claude | ProviderKind::Qwen => None,
                kind => Some(format!(
                    "only claude and qwen can start before their prompt (this one is {kind}); set warm = 0"
                )),
            };
            if let Some(why) = why {
                return err("warm", why);
            }
            if self.warm > limits.concurrency {
                return err(
                    "warm",
                    format!(
                        "must be at most limits.concurrency ({}): warm CLIs hold its slots (got {})",
                        limits.concurrency, self.warm
                    ),
                );
            }
        }
        if limits.timeout_secs == 0 {
            return err("limits.timeout_secs", "must be at least 1".into());
        }
        if let Some(usd) = limits.max_budget_usd {
            if kind != ProviderKind::Claude {
                return err(
                    "limits.max_budget_usd",
                    format!("only a claude provider can cap a turn's cost (this one is {kind})"),
                );
            }
            if !(usd.is_finite() && usd > 0.0) {
                return err("limits.max_budget_usd", format!("must be a positive number of dollars (got {usd})"));
            }
        }
        if limits.output_cap_bytes < 1024 {
            return err("limits.output_cap_bytes", format!("must be at least 1024 (got {})", limits.output_cap_bytes));
        }
        let format = self.output.as_ref().map(|o| o.format);
        match kind {
            ProviderKind::Claude | ProviderKind::Gemini => {
                if let Some(f) = format
                    && !matches!(f, OutputFormat::Json | OutputFormat::StreamJson)
                {
                    return err("output.format", format!("{kind} prints json or stream-json (got {})", f.name()));
                }
                if self.output.as_ref().is_some_and(|o| o.text.is_some()) {
                    return err("output.text", format!("{kind} output is read by its adapter; remove `text`"));
                }
            }
            ProviderKind::Codex | ProviderKind::Qwen => {
                if self.output.is_some() {
                    return err("output", format!("{kind} output is fixed by its adapter; remove `output`"));
                }
            }
            ProviderKind::Cli => {
                let Some(output) = &self.output else {
                    return err("output", "required for a `cli` provider: { format = \"text\" | \"json\" | \"jsonl\", text = \"path.to.text\" }".into());
                };
                match output.format {
                    OutputFormat::Text => {}
                    OutputFormat::Json | OutputFormat::Jsonl if output.text.is_none() => {
                        return err(
                            "output.text",
                            format!("a path to the answer is required with format {}", output.format.name()),
                        );
                    }
                    OutputFormat::Json | OutputFormat::Jsonl => {}
                    OutputFormat::StreamJson => {
                        return err(
                            "output.format",
                            "a `cli` provider prints text, json or jsonl (got stream-json)".into(),
                        );
                    }
                }
                for arg in &self.args {
                    let mut rest = arg.as_str();
                    while let Some(start) = rest.find('{') {
                        let Some(len) = rest[start..].find('}') else { break };
                        let placeholder = &rest[start..start + len + 1];
                        if !PLACEHOLDERS.contains(&placeholder) {
                            return err(
                                "args",
                                format!("unknown placeholder {placeholder} in {arg:?}; allowed: {PLACEHOLDERS:?}"),
                            );
                        }
                        rest = &rest[start + len + 1..];
                    }
                }
                if self.pty && !self.args.iter().any(|a| a.contains("{prompt}")) {
                    return err(
                        "args",
                        "a `cli` provider with pty = true takes the prompt as an argument: add {prompt}".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// An RFC 3339 time, or a date meaning its midnight UTC.
pub(crate) fn parse_expiry(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| format!("{text:?} is not a date; use RFC 3339 (2027-11-21T09:00:00Z) or a date (2027-11-21)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `toml` as the `[providers]` table and validates it.
    fn check(toml_text: &str, expected: Result<(), &str>) {
        let parsed: Result<ProvidersConfig, _> = toml::from_str(toml_text);
        let result = match parsed {
            Ok(config) => config.validate().map_err(|e| e.to_string()),
            Err(e) => Err(e.message().to_owned()),
        };
        match (result, expected) {
            (Ok(()), Ok(())) => {}
            (Err(got), Err(want)) => assert!(got.contains(want), "error {got:?} does not contain {want:?}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn warm_is_for_claude_and_qwen_within_the_concurrency() {
        check("[claude]\nwarm = 2\n", Ok(()));
        check("[qwen]\nwarm = 1\nlimits = { concurrency = 1 }\n", Ok(()));
        check(
            "[claude]\nwarm = 3\n",
            Err("providers.claude.warm: must be at most limits.concurrency (2): warm CLIs hold its slots (got 3)"),
        );
        check(
            "[gemini]\nwarm = 1\n",
            Err(
                "providers.gemini.warm: only claude and qwen can start before their prompt (this one is gemini); set warm = 0",
            ),
        );
        check("[codex]\nwarm = 1\n", Err("providers.codex.warm: only claude and qwen"));
        check("[claude]\nwarm = 1\npty = true\n", Err("providers.claude.warm: a CLI in a pty"));
        check(
            "[claude]\nwarm = 1\noutput = { format = 'json' }\n",
            Err("providers.claude.warm: a warm start reads stream-json"),
        );
        let mut config = ProvidersConfig::default();
        config.apply_env([("ORCH_PROVIDER_CLAUDE_WARM".to_owned(), "1".to_owned())]).unwrap();
        assert_eq!(config.0["claude"].warm, 1);
        let err = config.apply_env([("ORCH_PROVIDER_CLAUDE_WARM".to_owned(), "some".to_owned())]).unwrap_err();
        assert_eq!(err.field, "ORCH_PROVIDER_CLAUDE_WARM");
    }

    #[test]
    fn configurations() {
        check("[claude]\n", Ok(()));
        check("[claude]\nmodels = ['sonnet', 'opus']\ndefault_model = 'opus'\nlimits = { concurrency = 4 }\n", Ok(()));
        check("[claude]\nmodel = 'x'\n", Err("unknown field `model`"));
        check(
            "[claude]\nlimits = { concurrency = 0 }\n",
            Err("providers.claude.limits.concurrency: must be between 1 and 256"),
        );
        check("[claude]\nlimits = { timeout = 3 }\n", Err("unknown field `timeout`"));
        check(
            "[claude]\nmodels = ['a']\ndefault_model = 'b'\n",
            Err("providers.claude.default_model: \"b\" is not one of"),
        );
        check(
            "[claude]\noutput = { format = 'text' }\n",
            Err("providers.claude.output.format: claude prints json or stream-json"),
        );
        check("[claude]\nhome = '/x'\n", Err("providers.claude.home: only a gemini provider"));
        check("[gemini]\nhome = '/srv/gemini'\noutput = { format = 'json' }\n", Ok(()));
        check("[codex]\noutput = { format = 'json' }\n", Err("providers.codex.output"));
        check("[work]\ncommand = 'claude'\n", Err("providers.work.kind: required"));
        check("[work]\nkind = 'claude'\ncommand = '/opt/claude/bin/claude'\n", Ok(()));
        check("[Bad]\nkind = 'claude'\n", Err("a provider name uses only"));
        check("[mine]\nkind = 'cli'\noutput = { format = 'text' }\n", Err("providers.mine.command: required"));
        check("[mine]\nkind = 'cli'\ncommand = 'x'\n", Err("providers.mine.output: required"));
        check("[mine]\nkind = 'cli'\ncommand = 'x'\noutput = { format = 'json' }\n", Err("providers.mine.output.text"));
        check(
            "[mine]\nkind = 'cli'\ncommand = 'x'\nargs = ['--m={model}', '{prompt}']\noutput = { format = 'json', text = 'a.b' }\n",
            Ok(()),
        );
        check(
            "[mine]\nkind = 'cli'\ncommand = 'x'\nargs = ['{promt}']\noutput = { format = 'text' }\n",
            Err("unknown placeholder {promt}"),
        );
        check("[mine]\nkind = 'cli'\ncommand = 'x'\npty = true\noutput = { format = 'text' }\n", Err("add {prompt}"));
        check("[mine]\nkind = 'cli'\ncommand = 'x'\noutput = { format = 'yaml' }\n", Err("unknown variant `yaml`"));
        check("[claude]\ntoken_expires_at = '2027-11-21'\n", Ok(()));
        check("[claude]\ntoken_expires_at = '2027-11-21T09:00:00+02:00'\n", Ok(()));
        check(
            "[claude]\ntoken_expires_at = 'next year'\n",
            Err("providers.claude.token_expires_at: \"next year\" is not a date"),
        );
    }

    #[test]
    fn environment_overrides() {
        let mut config: ProvidersConfig = toml::from_str(
            "[claude]\nmodels = ['sonnet']\n[my-cli]\nkind = 'cli'\ncommand = 'x'\noutput = { format = 'text' }\n",
        )
        .unwrap();
        let vars = [
            ("ORCH_PROVIDER_CLAUDE_COMMAND", "/opt/claude/bin/claude"),
            ("ORCH_PROVIDER_CLAUDE_MODELS", "sonnet, opus"),
            ("ORCH_PROVIDER_CLAUDE_DEFAULT_MODEL", "opus"),
            ("ORCH_PROVIDER_CLAUDE_CONCURRENCY", "4"),
            ("ORCH_PROVIDER_CLAUDE_ENV_CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat-x"),
            ("ORCH_PROVIDER_MY_CLI_ARGS", "[\"--say\", \"{prompt}\"]"),
            ("ORCH_PROVIDER_MY_CLI_OUTPUT_FORMAT", "json"),
            ("ORCH_PROVIDER_MY_CLI_OUTPUT_TEXT", "answer.text"),
            ("ORCH_PROVIDER_WORK_KIND", "gemini"),
            ("ORCH_PROVIDER_WORK_TIMEOUT_SECS", "30"),
            ("ORCH_PROVIDER_CLAUDE_TOKEN_EXPIRES_AT", "2027-11-21"),
            ("ORCH_BIND", "ignored"),
        ];
        config.apply_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        let claude = &config.0["claude"];
        assert_eq!(claude.command.as_deref(), Some(std::path::Path::new("/opt/claude/bin/claude")));
        assert_eq!(claude.models, ["sonnet", "opus"]);
        assert_eq!(claude.default_model.as_deref(), Some("opus"));
        assert_eq!(claude.limits.concurrency, 4);
        assert_eq!(claude.token_expiry().map(|t| t.to_rfc3339()).as_deref(), Some("2027-11-21T00:00:00+00:00"));
        assert_eq!(claude.env.0["CLAUDE_CODE_OAUTH_TOKEN"], "sk-ant-oat-x");
        assert_eq!(config.0["my-cli"].args, ["--say", "{prompt}"]);
        let output = config.0["my-cli"].output.clone().unwrap();
        assert_eq!((output.format, output.text.as_deref()), (OutputFormat::Json, Some("answer.text")));
        assert_eq!(config.0["work"].kind, Some(ProviderKind::Gemini));
        assert_eq!(config.0["work"].limits.timeout_secs, 30);
        config.validate().unwrap();

        let bad = |k: &str, v: &str| {
            let mut c = ProvidersConfig::default();
            c.apply_env([(k.to_owned(), v.to_owned())]).unwrap_err()
        };
        let e = bad("ORCH_PROVIDER_CLAUDE_CONCURRENCY", "many");
        assert_eq!(e.field, "ORCH_PROVIDER_CLAUDE_CONCURRENCY");
        assert!(e.message.contains("not a whole number"), "{e}");
        assert!(bad("ORCH_PROVIDER_CLAUDE_COLOR", "x").message.contains("no known field"));
        assert!(bad("ORCH_PROVIDER_CLAUDE_KIND", "gpt").message.contains("allowed: claude"));
        assert!(bad("ORCH_PROVIDER_CLAUDE_TOKEN_EXPIRES_AT", "soon").message.contains("is not a date"));
    }

    #[test]
    fn debug_hides_env_values() {
        let config: ProviderConfig = toml::from_str("env = { CLAUDE_CODE_OAUTH_TOKEN = 'sk-ant-oat-secret' }").unwrap();
        let debug = format!("{config:?}");
        assert!(debug.contains("CLAUDE_CODE_OAUTH_TOKEN") && !debug.contains("sk-ant-oat-secret"), "{debug}");
    }

    #[test]
    fn default_has_the_four_builtins() {
        let config = ProvidersConfig::default();
        assert_eq!(config.0.keys().collect::<Vec<_>>(), ["claude", "codex", "gemini", "qwen"]);
        config.validate().unwrap();
    }
}
