//! Orch's MCP upstream side: the servers Orch connects to, their tools, and the
//! pooled clients that call them.
//!
//! - [`config`] reads `mcp-config.json` (the Claude Desktop / Cline format) into
//!   validated [`ServerConfig`]s. An invalid entry is reported by server name and
//!   field and does not stop the other servers; `${VAR}` expands from the
//!   environment; secrets (`env` values, `headers` values) are [`Secret`]s, which
//!   never print.
//! - [`Registry`] owns one pool of connections per enabled server, discovers
//!   each server's tools, resources (and templates) and prompts, names tools `server.tool`
//!   (separator configurable), keeps them fresh on `notifications/tools/list_changed`
//!   and on [`Registry::reload`] (only changed servers reconnect), and calls
//!   tools with a per-call timeout, cancellation forwarded upstream and a
//!   per-server concurrency limit, and forwards `resources/read` and
//!   `prompts/get` under the same rules. Each server has a supervisor that pings it,
//!   restarts crashed children with exponential backoff and reaps idle
//!   connections; [`Registry::subscribe`] reports tool and state changes.
//! - [`test_server`] connects once, lists tools and reports the latency, for
//!   "test this server" buttons.
//!
//! The protocol is rmcp's client, over stdio (children in their own process
//! group, killed as a group, and sent SIGTERM by the kernel if Orch dies),
//! streamable HTTP, and our own legacy-SSE client ([`sse`]), since rmcp no
//! longer has one; `https://` upstreams use rustls ([`tls`]). Servers registered
//! through the API ([`ServerConfig::guarded`]) reach only the addresses the egress
//! guard allows ([`RegistryOptions::egress`]), and an HTTP upstream's failures are
//! classified before anyone sees them: what the upstream sent never shows. This crate knows nothing of Orch's
//! HTTP API or store: the exposure side (`/mcp`, `/sse/{server}`, `orch mcp`,
//! REST routes, servers registered over the API) is built on top of it.

pub mod config;
mod conn;
mod egress;
mod error;
mod pool;
mod registry;
mod session_http;
pub mod sse;
pub mod tls;

pub use config::{ConfigError, McpConfig, PoolConfig, Secret, ServerConfig, TransportConfig};
pub use error::Error;
pub use pool::{ConnectionStatus, ServerState, ServerStatus};
pub use registry::{
    CallOptions, PromptEntry, Registry, RegistryEvent, RegistryOptions, ReloadReport, ResourceEntry,
    ResourceTemplateEntry, TestReport, ToolEntry, mcp_guard, test_server,
};
/// The MCP types this crate's API speaks (tools, call results), re-exported so
/// callers use the same rmcp version.
pub use rmcp::model;
