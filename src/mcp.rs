//! `orch mcp`: Orch as a stdio MCP server for `command`-style client configs
//! (Claude Desktop, Cursor, Cline). stdout carries the protocol, so logs go to
//! stderr only.

use anyhow::{Context, Result};

use crate::config::Settings;

/// Serves the aggregated tools plus Orch's own over stdin/stdout until the
/// client closes stdin or a signal arrives; then closes every MCP server.
pub async fn run(settings: &Settings) -> Result<()> {
    let store = crate::open_store(settings).await?;
    let mut state = orch_api::AppState::new(store.clone(), settings.api.clone());
    state.webhooks = orch_webhooks::Webhooks::new(store, settings.webhooks.clone());
    state.router = std::sync::Arc::new(settings.router()?);
    state.shutdown = crate::shutdown_signal();
    crate::start_mcp(settings, &mut state).await?;
    let registry = state.registry.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(orch_api::servers::watch_file(state.clone(), crate::MCP_CONFIG_POLL));
    let served = tokio::select! {
        served = orch_api::mcp_server::serve_stdio(state) => served.context("MCP session over stdio"),
        () = shutdown.cancelled() => Ok(()),
    };
    // Every MCP child's process group goes with us.
    registry.shutdown(crate::MCP_CHILD_GRACE).await;
    served
}
