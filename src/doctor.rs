//! `orch doctor`: checks what this deployment needs, and says how to fix each
//! failure: the store (and queue) reachable, each provider's CLI found (with
//! its version) and credentials present, each MCP server starting and listing
//! tools. Exits non-zero when anything needs fixing.

use std::time::{Duration, Instant};

use anyhow::Result;
use orch_mcp::ServerState;

use crate::config::Settings;

/// How long MCP servers get to connect and list their tools.
const MCP_WAIT: Duration = Duration::from_secs(20);

struct Report {
    lines: Vec<String>,
    problems: usize,
}

impl Report {
    fn ok(&mut self, what: String) {
        self.lines.push(format!("[ok]  {what}"));
    }

    fn fail(&mut self, what: String, fixes: &[String]) {
        self.problems += 1;
        self.lines.push(format!("[!!]  {what}"));
        self.lines.extend(fixes.iter().map(|f| format!("        fix: {f}")));
    }
}

/// Runs every check, prints the report, and fails when something needs fixing.
pub async fn run(settings: &Settings) -> Result<bool> {
    let mut report = Report { lines: Vec::new(), problems: 0 };
    let store_name = crate::describe_store(&settings.store);
    let store = match crate::open_store(settings).await {
        Ok(store) => match (store.ping().await, store.count_jobs().await) {
            (Ok(()), Ok(counts)) => {
                report.ok(format!(
                    "store {store_name}: reachable; queue has {} queued, {} running",
                    counts.queued, counts.running
                ));
                Some(store)
            }
            (Err(e), _) | (_, Err(e)) => {
                report.fail(format!("store {store_name}: {e}"), &["check ORCH_STORE and that the store is up".into()]);
                None
            }
        },
        Err(e) => {
            report.fail(
                format!("store {store_name}: {e:#}"),
                &["check ORCH_STORE (sqlite://PATH or redis://HOST:PORT/DB) and that the store is up".into()],
            );
            None
        }
    };

    let router = settings.router()?;
    // The state every worker recorded (cooldowns, refused credentials) counts,
    // judged by the same function as `GET /v1/providers` and `/health/tokens`.
    if let Some(store) = &store {
        router.providers().share_state(orch_worker::provider_state::StoreState::new(store.clone()));
    }
    let warn_days = settings.api.token_warn_days;
    let checks = router.providers().iter().map(|p| orch_providers::health(p, warn_days));
    for health in futures::future::join_all(checks).await {
        let diagnosis = &health.diagnosis;
        let cli = match &diagnosis.cli {
            orch_providers::CliStatus::Found { path, version } => format!("{version} at {}", path.display()),
            orch_providers::CliStatus::Broken { path, .. } => format!("{} does not run", path.display()),
            orch_providers::CliStatus::Missing { .. } => "CLI not found".into(),
        };
        let credentials = match &diagnosis.credentials {
            orch_providers::Credentials::Present { source } => format!("credentials from {source}"),
            orch_providers::Credentials::Missing { .. } => "no credentials".into(),
            orch_providers::Credentials::NotChecked => "credentials not checked (a `cli` provider)".into(),
        };
        let billing =
            diagnosis.billing.as_ref().map(|b| format!(" ({})", b.plan.replace('_', " "))).unwrap_or_default();
        let token = match health.token.as_str() {
            "ok" | "not_checked" | "missing" => String::new(),
            other => format!("; credential {other}"),
        };
        let cooling =
            health.cooldown_until.map(|t| format!("; cooling down until {}", t.to_rfc3339())).unwrap_or_default();
        let line = format!(
            "provider {} ({}): {cli}; {credentials}{billing}{token}{cooling}",
            diagnosis.provider, diagnosis.kind
        );
        let mut fixes = health.fixes.clone();
        fixes.extend(diagnosis.warnings.iter().map(|w| format!("note: {w}")));
        if health.ready {
            report.ok(line);
            report.lines.extend(diagnosis.billing.iter().map(|b| format!("        billing: {}", b.detail)));
            report.lines.extend(diagnosis.warnings.iter().map(|w| format!("        note: {w}")));
        } else {
            report.fail(line, &fixes);
        }
    }

    if let Some(store) = store {
        let options = orch_mcp::RegistryOptions {
            separator: settings.mcp_separator.clone(),
            ca_file: settings.mcp_ca_file.clone(),
            ..Default::default()
        };
        let registry = orch_mcp::Registry::new(options)
            .map_err(|e| anyhow::anyhow!("ORCH_MCP_SEPARATOR / ORCH_MCP_CA_FILE: {e}"))?;
        let sources = orch_api::servers::McpSources::new(settings.mcp.clone());
        let view = sources.reload(store.as_ref(), &registry).await?;
        if let Some(error) = &view.file_error {
            report.fail(format!("MCP config: {error}"), &["fix the file ORCH_MCP_CONFIG names".into()]);
        }
        for invalid in &view.invalid {
            report.fail(
                format!("MCP server {}: not started: {}: {}", invalid.server, invalid.field, invalid.message),
                &["fix that entry of mcp-config.json (or of the registered server)".into()],
            );
        }
        let deadline = Instant::now() + MCP_WAIT;
        loop {
            // Still connecting: not up, not disabled, and no error yet.
            let pending = registry
                .status()
                .iter()
                .any(|s| !matches!(s.state, ServerState::Up | ServerState::Disabled) && s.last_error.is_none());
            if !pending || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for status in registry.status() {
            let name = &status.name;
            match status.state {
                ServerState::Up => report.ok(format!(
                    "MCP server {name} ({}): up, {} tools{}",
                    status.transport,
                    status.tools,
                    status.latency.map(|l| format!(", {} ms", l.as_millis())).unwrap_or_default()
                )),
                ServerState::Disabled => report.ok(format!("MCP server {name}: disabled in its config")),
                state => report.fail(
                    format!(
                        "MCP server {name} ({}): {}: {}",
                        status.transport,
                        format!("{state:?}").to_lowercase(),
                        status
                            .last_error
                            .clone()
                            .unwrap_or_else(|| format!("no answer within {} s", MCP_WAIT.as_secs()))
                    ),
                    &[format!(
                        "check its command or url in the config; `POST /v1/servers/{name}/test` shows the handshake"
                    )],
                ),
            }
        }
        registry.shutdown(Duration::from_secs(2)).await;
    }

    let mut out = report.lines.join("\n");
    out.push('\n');
    out.push_str(&match report.problems {
        0 => "Everything Orch needs is in place.\n".to_owned(),
        1 => "1 problem needs fixing.\n".to_owned(),
        n => format!("{n} problems need fixing.\n"),
    });
    print!("{out}");
    Ok(report.problems == 0)
}
