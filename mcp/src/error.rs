//! The errors of connecting to and calling MCP servers; each names the server
//! and says what to do.

use std::time::Duration;

/// An error of the registry or of one server. Messages never contain secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("unknown MCP server `{server}`; GET /v1/servers lists the configured servers")]
    UnknownServer { server: String },
    #[error("MCP server `{server}` has no tool `{tool}`; GET /v1/tools?server={server} lists its tools")]
    UnknownTool { server: String, tool: String },
    #[error("MCP server `{server}` has no prompt `{prompt}`; prompts/list shows its prompts")]
    UnknownPrompt { server: String, prompt: String },
    #[error("no tool named `{name}`: tool names are `<server>{separator}<tool>`")]
    BadToolName { name: String, separator: String },
    #[error("MCP server `{server}` is disabled in mcp-config.json; set `\"disabled\": false` to use it")]
    Disabled { server: String },
    #[error(
        "MCP server `{server}` is down: {reason}; Orch retries the connection, check the server's configuration and logs"
    )]
    Down { server: String, reason: String },
    #[error("cannot connect to MCP server `{server}`: {reason}")]
    Connect { server: String, reason: String },
    #[error(
        "tool `{tool}` on MCP server `{server}` did not answer within {}s and was cancelled; raise `timeout` (seconds) for this server in mcp-config.json if it is just slow",
        timeout.as_secs_f64()
    )]
    Timeout { server: String, tool: String, timeout: Duration },
    #[error("the call of tool `{tool}` on MCP server `{server}` was cancelled by the caller")]
    Cancelled { server: String, tool: String },
    #[error(
        "MCP server `{server}` closed the connection while `{tool}` was running (its process exited or the connection broke); Orch is restarting it, retry the call"
    )]
    ConnectionLost { server: String, tool: String },
    #[error("MCP server `{server}` answered `{operation}` with an error: {reason}")]
    Upstream { server: String, operation: String, reason: String },
    /// The server answered a request other than a tool call with a JSON-RPC
    /// error (an unknown resource, a missing prompt argument); `code` is its own.
    #[error("MCP server `{server}` refused `{operation}`: {message}")]
    Refused { server: String, operation: String, code: i32, message: String },
    #[error("invalid MCP registry option: {message}")]
    Options { message: String },
    #[error("the MCP registry is shut down")]
    Shutdown,
}

/// An error with its causes, `outer: inner: ...`: reqwest's own message for a
/// refused certificate is only "error sending request"; the cause says why.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

impl Error {
    /// The server the error is about, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            Error::UnknownServer { server }
            | Error::UnknownTool { server, .. }
            | Error::UnknownPrompt { server, .. }
            | Error::Disabled { server }
            | Error::Down { server, .. }
            | Error::Connect { server, .. }
            | Error::Timeout { server, .. }
            | Error::Cancelled { server, .. }
            | Error::ConnectionLost { server, .. }
            | Error::Upstream { server, .. }
            | Error::Refused { server, .. } => Some(server),
            Error::BadToolName { .. } | Error::Options { .. } | Error::Shutdown => None,
        }
    }
}
