//! What `orch doctor` asks of a provider: is the CLI there (and which
//! version), are credentials present, and how to fix what is not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::ProviderKind;
use crate::error::{ErrorKind, TurnError};
use crate::process::{self, Exit};
use crate::provider::Provider;

/// The state of one provider's prerequisites.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnosis {
    pub provider: String,
    pub kind: ProviderKind,
    pub cli: CliStatus,
    pub credentials: Credentials,
    /// What the credential found bills, and whether it works headless; None
    /// for a `cli` provider or when no credential was found.
    pub billing: Option<Billing>,
    pub warnings: Vec<String>,
}

/// What a provider's turns are billed to, judged from the credential Orch
/// found (never its value) and what each vendor allows as of 2026-12.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Billing {
    /// `subscription` (a plan login or token), `api_key` (pay per token) or
    /// `cloud_project` (billed to a cloud account).
    pub plan: &'static str,
    /// The vendor lets this credential run turns headless (from a service).
    pub headless: bool,
    /// One sentence: what a turn draws on, and what happens when it runs out.
    pub detail: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CliStatus {
    Found {
        path: PathBuf,
        version: String,
    },
    /// Present but `--version` failed.
    Broken {
        path: PathBuf,
        detail: String,
    },
    Missing {
        fix: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Credentials {
    /// `source` names the variable or file, never its content.
    Present {
        source: String,
    },
    Missing {
        fix: String,
    },
    /// A `cli` provider: Orch cannot know what it needs.
    NotChecked,
}

impl Diagnosis {
    pub fn ok(&self) -> bool {
        matches!(self.cli, CliStatus::Found { .. }) && !matches!(self.credentials, Credentials::Missing { .. })
    }

    /// What to do, one line per problem.
    pub fn fixes(&self) -> Vec<String> {
        let mut fixes = Vec::new();
        match &self.cli {
            CliStatus::Found { .. } => {}
            CliStatus::Broken { path, detail } => fixes.push(format!("{} --version failed ({detail})", path.display())),
            CliStatus::Missing { fix } => fixes.push(fix.clone()),
        }
        if let Credentials::Missing { fix } = &self.credentials {
            fixes.push(fix.clone());
        }
        fixes
    }
}

/// Checks `provider`'s CLI (`--version`) and credentials.
pub async fn check(provider: &Provider) -> Diagnosis {
    let cli = match provider.resolve_command() {
        None => CliStatus::Missing {
            fix: format!("{:?} not found: {}", provider.command(), provider.kind().install_hint()),
        },
        Some(path) => version(&path, provider).await,
    };
    let credentials = credentials(provider);
    let billing = match &credentials {
        Credentials::Present { source } => billing(provider.kind(), source),
        _ => None,
    };
    let mut warnings = provider.warnings();
    if let Some(billing) = billing.as_ref().filter(|b| !b.headless) {
        warnings.push(format!("provider {}: {}", provider.name(), billing.detail));
    }
    Diagnosis { provider: provider.name().to_owned(), kind: provider.kind(), cli, credentials, billing, warnings }
}

/// What the credential from `source` (a variable's name or a file's path)
/// bills. Docs: docs/providers.md, "What each subscription allows".
pub fn billing(kind: ProviderKind, source: &str) -> Option<Billing> {
    let bill = |plan, headless, detail| Some(Billing { plan, headless, detail });
    let file = source.contains('/');
    match kind {
        ProviderKind::Claude => bill(
            "subscription",
            true,
            "Claude Pro/Max/Team subscription: since 2026-06-15 headless turns draw on the plan's monthly Agent SDK \
             credit ($20 Pro, $100 Max 5x, $200 Max 20x; no roll-over), not the interactive limits; when it is used \
             up turns pause or bill as extra usage at API rates (cap a turn with limits.max_budget_usd)",
        ),
        ProviderKind::Gemini if source == "GOOGLE_GENAI_USE_VERTEXAI" => {
            bill("cloud_project", true, "Vertex AI: billed per token to the Google Cloud project")
        }
        ProviderKind::Gemini if file || source == "GOOGLE_GENAI_USE_GCA" => bill(
            "subscription",
            true,
            "Google login: works headless only with a Gemini Code Assist Standard or Enterprise licence (billed as \
             that licence); personal Google logins are refused since 2026-06-18",
        ),
        ProviderKind::Gemini => bill(
            "api_key",
            true,
            "Gemini API key: billed per token to the key's Google Cloud project (or within its free-tier quota)",
        ),
        ProviderKind::Codex if file => bill(
            "subscription",
            true,
            "ChatGPT plan login (`codex login`): turns count against the plan's Codex usage limits",
        ),
        ProviderKind::Codex => bill("api_key", true, "OpenAI API key: billed per token at API rates"),
        ProviderKind::Qwen if file => bill(
            "subscription",
            false,
            "Qwen OAuth login: the free OAuth tier ended 2026-04-15, so this login is expected to be refused; use \
             Alibaba Cloud's Coding Plan or an OpenAI-compatible API key (OPENAI_API_KEY with OPENAI_BASE_URL)",
        ),
        ProviderKind::Qwen => bill(
            "api_key",
            true,
            "OpenAI-compatible API key (Alibaba Cloud Coding Plan or Model Studio, or another vendor): billed by \
             that key's plan",
        ),
        ProviderKind::Cli => None,
    }
}

async fn version(path: &Path, provider: &Provider) -> CliStatus {
    // The CLI's own environment: a wrapper script may need it to start at all.
    let env: Vec<(String, String)> = provider.config().env.0.clone().into_iter().collect();
    let command = process::Command {
        program: path,
        args: &["--version".to_owned()],
        env: &env,
        env_remove: &[],
        cwd: None,
        stdin: None,
        pty: false,
        timeout: Duration::from_secs(20),
        output_cap: 64 * 1024,
    };
    let broken = |detail: String| CliStatus::Broken { path: path.to_owned(), detail };
    match process::run(command, &CancellationToken::new(), &mut |_| {}).await {
        Ok(out) if out.exit == Exit::Code(0) => match out.stdout.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => CliStatus::Found { path: path.to_owned(), version: line.to_owned() },
            None => broken("it printed no version".into()),
        },
        Ok(out) => broken(format!("{:?}: {}", out.exit, out.stderr.trim())),
        Err(err) => broken(format!("{err:?}")),
    }
}

/// When a provider's credential expires, as far as Orch can know.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expiry {
    /// None when the credential renews itself.
    pub expires_at: Option<DateTime<Utc>>,
    /// Where Orch learnt it: the `token_expires_at` setting or the CLI's file.
    pub source: String,
    /// The login has a refresh token: the CLI renews it, so it does not expire.
    pub renews: bool,
}

/// The credential's expiry: the provider's `token_expires_at` setting first,
/// else the CLI's own OAuth file where Orch's turns use it (Gemini's
/// `oauth_creds.json` under the provider's home, Qwen's under `$HOME/.qwen`),
/// which carries `expiry_date` and, for a login that renews itself,
/// `refresh_token`. Claude's `.credentials.json` is never used by Orch's
/// turns (each slot has its own `CLAUDE_CONFIG_DIR`; the token comes from
/// `CLAUDE_CODE_OAUTH_TOKEN`, which says nothing of its expiry), so only the
/// setting can tell. None when nothing is known.
pub fn expiry(provider: &Provider) -> Option<Expiry> {
    if let Some(at) = provider.config().token_expiry() {
        return Some(Expiry { expires_at: Some(at), source: "token_expires_at".into(), renews: false });
    }
    let Credentials::Present { source } = credentials(provider) else { return None };
    if !source.ends_with("oauth_creds.json") {
        return None;
    }
    let creds: serde_json::Value = serde_json::from_slice(&std::fs::read(&source).ok()?).ok()?;
    oauth_expiry(&creds, &source)
}

/// Reads a Google-style OAuth file (`refresh_token`, `expiry_date` in ms).
fn oauth_expiry(creds: &serde_json::Value, source: &str) -> Option<Expiry> {
    if creds["refresh_token"].as_str().is_some_and(|t| !t.is_empty()) {
        return Some(Expiry { expires_at: None, source: source.to_owned(), renews: true });
    }
    let ms = creds["expiry_date"].as_f64()?;
    let at = DateTime::from_timestamp_millis(ms as i64)?;
    Some(Expiry { expires_at: Some(at), source: source.to_owned(), renews: false })
}

fn credentials(provider: &Provider) -> Credentials {
    let env = &provider.config().env.0;
    let var = |name: &str| env.get(name).cloned().or_else(|| std::env::var(name).ok()).filter(|v| !v.is_empty());
    let first_var = |names: &[&str]| names.iter().find(|n| var(n).is_some()).map(|n| n.to_string());
    let home = var("HOME").map(PathBuf::from).unwrap_or_default();
    let file = |path: PathBuf| path.is_file().then(|| path.display().to_string());
    let found = |source: Option<String>, fix: &str| match source {
        Some(source) => Credentials::Present { source },
        None => Credentials::Missing { fix: fix.to_owned() },
    };
    let name = provider.name();
    match provider.kind() {
        ProviderKind::Claude => found(
            first_var(&["CLAUDE_CODE_OAUTH_TOKEN"]),
            &format!(
                "run `claude setup-token` and set CLAUDE_CODE_OAUTH_TOKEN in Orch's environment or \
                 [providers.{name}.env] (ANTHROPIC_API_KEY does not count: Orch runs on the subscription)"
            ),
        ),
        ProviderKind::Gemini => {
            let gemini_home = provider.config().home.clone().or_else(|| var("GEMINI_CLI_HOME").map(PathBuf::from));
            let oauth = file(gemini_home.unwrap_or(home).join(".gemini/oauth_creds.json"));
            found(
                first_var(&["GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA"])
                    .or(oauth),
                &format!(
                    "set GEMINI_API_KEY in [providers.{name}.env], or log in with a Code Assist Standard/Enterprise \
                     account under the provider's home; personal Google logins no longer work with Gemini CLI"
                ),
            )
        }
        ProviderKind::Codex => {
            let codex_home = var("CODEX_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".codex"));
            found(
                first_var(&["CODEX_API_KEY", "OPENAI_API_KEY"]).or(file(codex_home.join("auth.json"))),
                "run `codex login` as the user Orch runs as (ChatGPT plan; or set CODEX_HOME in the provider's env), \
                 or set OPENAI_API_KEY in the provider's env (billed at API rates)",
            )
        }
        ProviderKind::Qwen => found(
            first_var(&["OPENAI_API_KEY", "DASHSCOPE_API_KEY"]).or(file(home.join(".qwen/oauth_creds.json"))),
            "run `qwen` once and log in as the user Orch runs as, or set OPENAI_API_KEY in the provider's env",
        ),
        ProviderKind::Cli => Credentials::NotChecked,
    }
}

/// A provider's health: one answer, from its configuration and the state
/// every process recorded, for `orch doctor`, `GET /v1/providers` and
/// `GET /health/tokens` alike.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    pub diagnosis: Diagnosis,
    /// The CLI is found, the credential is neither missing nor refused nor
    /// expired, and the provider does not cool down: a turn would start now.
    pub ready: bool,
    /// The credential: `ok`, `expiring`, `expired`, `invalid` (a turn was
    /// refused for it and none succeeded since), `missing` or `not_checked`.
    pub token: String,
    /// Why the token is not ok.
    pub token_detail: Option<String>,
    pub expiry: Option<Expiry>,
    /// No turns go to the provider until then.
    pub cooldown_until: Option<DateTime<Utc>>,
    /// Why it cools down: `usage_limit` or `upstream` (its model API failed).
    pub cooldown_reason: Option<&'static str>,
    /// While its credential is refused, when the next turn may probe it.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// The last failed turn, unless one succeeded since.
    pub last_error: Option<TurnError>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// What to do, one line per problem.
    pub fixes: Vec<String>,
}

/// Computes [`Health`]: checks the CLI and credentials now, reads the shared
/// state (when the provider shares it), and judges both. `warn_days`: a known
/// expiry this close makes the token `expiring`.
pub async fn health(provider: &Provider, warn_days: u32) -> Health {
    let (diagnosis, ()) = tokio::join!(check(provider), provider.refresh());
    let status = provider.status();
    let now = Utc::now();
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut fixes = diagnosis.fixes();
    let (mut token, mut token_detail) = match &diagnosis.credentials {
        Credentials::Present { .. } => ("ok", None),
        Credentials::Missing { .. } => ("missing", None),
        Credentials::NotChecked => ("not_checked", None),
    };
    let expiry = expiry(provider);
    if let (Some(at), "ok" | "not_checked") = (expiry.as_ref().and_then(|e| e.expires_at), token) {
        let from = expiry.as_ref().map_or("", |e| e.source.as_str());
        if at <= now {
            token = "expired";
            token_detail = Some(format!("expired at {} ({from})", at.to_rfc3339()));
        } else if at - now <= chrono::TimeDelta::days(i64::from(warn_days)) {
            token = "expiring";
            token_detail = Some(format!("expires in {} days ({from})", (at - now).num_days()));
        }
    }
    // A refused turn (on any process) says more than a date.
    if let Some((_, error)) = &status.auth_failure {
        token = if matches!(error.kind, ErrorKind::Auth { expired: true }) { "expired" } else { "invalid" };
        token_detail = Some(error.message.clone());
    }
    if matches!(token, "expired" | "invalid") {
        let probe = status
            .auth_probe_at
            .filter(|t| *t > now)
            .map(|t| format!(" (turns skip it; the next probe is at {})", stamp(t)))
            .unwrap_or_default();
        fixes.push(format!("credential {token}{probe}: {}", provider.renew_hint()));
    }
    let cooldown_reason = status.cooldown_until.map(|_| match status.cooldown_cause.as_ref().map(|e| &e.kind) {
        Some(ErrorKind::Upstream { .. }) => "upstream",
        _ => "usage_limit",
    });
    if let (Some(until), Some(reason)) = (status.cooldown_until, cooldown_reason) {
        let why = if reason == "upstream" { "its model API failed" } else { "it hit a usage limit" };
        fixes.push(format!("cooling down until {} ({why}); turns skip it until then", stamp(until)));
    }
    let ready = diagnosis.ok() && !matches!(token, "expired" | "invalid") && status.cooldown_until.is_none();
    Health {
        ready,
        token: token.to_owned(),
        token_detail,
        expiry,
        cooldown_until: status.cooldown_until,
        cooldown_reason,
        next_probe_at: status.auth_failure.as_ref().and(status.auth_probe_at),
        last_error: status.last_error,
        last_error_at: status.last_error_at,
        fixes,
        diagnosis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_files_expire_only_without_a_refresh_token() {
        let renewing =
            serde_json::json!({"access_token": "x", "refresh_token": "1//r", "expiry_date": 1_700_000_000_000u64});
        assert_eq!(oauth_expiry(&renewing, "f").map(|e| (e.expires_at, e.renews)), Some((None, true)));
        let fixed = serde_json::json!({"access_token": "x", "expiry_date": 1_700_000_000_123.5});
        let expiry = oauth_expiry(&fixed, "f").unwrap();
        assert_eq!((expiry.expires_at.map(|t| t.timestamp_millis()), expiry.renews), (Some(1_700_000_000_123), false));
        assert_eq!(oauth_expiry(&serde_json::json!({"access_token": "x"}), "f"), None);
    }

    #[test]
    fn billing_follows_the_credential_found() {
        let plan = |kind, source| billing(kind, source).map(|b| (b.plan, b.headless));
        assert_eq!(plan(ProviderKind::Claude, "CLAUDE_CODE_OAUTH_TOKEN"), Some(("subscription", true)));
        assert_eq!(plan(ProviderKind::Gemini, "GEMINI_API_KEY"), Some(("api_key", true)));
        assert_eq!(plan(ProviderKind::Gemini, "GOOGLE_GENAI_USE_VERTEXAI"), Some(("cloud_project", true)));
        assert_eq!(plan(ProviderKind::Gemini, "/home/o/.gemini/oauth_creds.json"), Some(("subscription", true)));
        assert_eq!(plan(ProviderKind::Codex, "/home/o/.codex/auth.json"), Some(("subscription", true)));
        assert_eq!(plan(ProviderKind::Codex, "OPENAI_API_KEY"), Some(("api_key", true)));
        // Qwen's free OAuth tier is gone: its login no longer runs turns.
        assert_eq!(plan(ProviderKind::Qwen, "/home/o/.qwen/oauth_creds.json"), Some(("subscription", false)));
        assert_eq!(plan(ProviderKind::Qwen, "DASHSCOPE_API_KEY"), Some(("api_key", true)));
        assert_eq!(plan(ProviderKind::Cli, "X"), None);
    }
}
