//! Where upstream connections may go, and what their failures may say.
//!
//! Servers registered through the API ([`ServerConfig::guarded`]) connect
//! through a client whose DNS resolver is the egress guard's
//! ([`orch_egress::GuardedResolver`]): a name resolving to a loopback,
//! private, link-local, metadata or other internal address is refused unless
//! `ORCH_MCP_ALLOW` lists it, and the connection goes only to the addresses
//! checked. A URL whose host is an address is checked before connecting (no
//! resolver sees it), and so is every redirect. That client ignores proxy
//! settings, which would connect on its behalf. The config file's servers use
//! an ordinary client (system proxy, redirects).
//!
//! An HTTP upstream's failure is [`classify`]d before anyone sees it: what
//! the server answered (bodies, headers, event data) and Rust type names
//! never reach `last_error`, tool-call errors or test results.

use std::path::Path;
use std::sync::Arc;

use orch_egress::Guard;

use crate::config::{ServerConfig, TransportConfig};

/// The HTTP clients of upstream connections.
#[derive(Clone)]
pub(crate) struct Clients {
    /// For the operator's servers (the config file).
    trusted: reqwest::Client,
    /// For servers registered through the API: guarded resolver, no proxy.
    guarded: reqwest::Client,
    guard: Arc<Guard>,
}

impl Clients {
    pub fn new(ca_file: Option<&Path>, guard: &Guard) -> Result<Clients, String> {
        let guard = Arc::new(guard.clone());
        let trusted = crate::tls::http_builder(ca_file)?;
        let checked = guard.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match checked.check_host(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let guarded = crate::tls::http_builder(ca_file)?.dns_resolver(guard.resolver()).no_proxy().redirect(redirects);
        let build = |builder: reqwest::ClientBuilder| {
            builder.build().map_err(|e| format!("cannot set up the HTTP client: {}", crate::error::chain(&e)))
        };
        Ok(Clients { trusted: build(trusted)?, guarded: build(guarded)?, guard })
    }

    /// The client to reach `server` with. A guarded server's URL is checked
    /// here when its host is an address; a name is checked when it resolves.
    pub fn for_server(&self, server: &ServerConfig) -> Result<&reqwest::Client, String> {
        if !server.guarded {
            return Ok(&self.trusted);
        }
        if let TransportConfig::Sse { url, .. } | TransportConfig::StreamableHttp { url, .. } = &server.transport {
            let url = orch_egress::parse_url(url).map_err(|e| classify(&e.to_string()))?;
            self.guard.check_host(&url).map_err(|e| classify(&e.to_string()))?;
        }
        Ok(&self.guarded)
    }
}

/// The kinds of address [`orch_egress::forbidden_kind`] names.
const KINDS: [&str; 13] = [
    "cloud metadata",
    "loopback",
    "private",
    "link-local",
    "carrier-grade NAT",
    "unspecified",
    "reserved",
    "documentation",
    "unique-local",
    "site-local",
    "multicast",
    "Teredo",
    "discard",
];

/// What a caller may learn of an HTTP upstream's failure, from the failure's
/// full text: its class and the facts Orch itself knows (an HTTP status, a
/// certificate problem, the kind of a refused address), never what the
/// upstream sent.
pub(crate) fn classify(raw: &str) -> String {
    let text = raw.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if let Some(end) = raw.find(" address, which ") {
        // Only a kind the guard names: the text around it is not trusted.
        let kind = raw[..end]
            .rfind(", a ")
            .map(|start| &raw[start + 4..end])
            .filter(|kind| KINDS.contains(kind))
            .unwrap_or("internal");
        return format!("egress refused: the host resolves to a {kind} address; allow it with ORCH_MCP_ALLOW");
    }
    if has(&["does not resolve", "dns error", "failed to lookup address", "name or service not known"]) {
        return "unreachable: the host name does not resolve".into();
    }
    if has(&["auth required"]) {
        return "upstream refused: HTTP 401 (authentication required)".into();
    }
    if has(&["insufficient scope"]) {
        return "upstream refused: HTTP 403 (insufficient scope)".into();
    }
    if let Some(status) = http_status(raw) {
        let class = if status < 500 { "upstream refused" } else { "upstream failed" };
        return format!("{class}: HTTP {status}");
    }
    if has(&["unknownissuer", "unknown issuer"]) {
        return "tls: unknown issuer".into();
    }
    if has(&["notvalidforname", "not valid for name"]) {
        return "tls: the certificate is not valid for this host name".into();
    }
    if has(&["expired"]) && has(&["certificate"]) {
        return "tls: the certificate has expired".into();
    }
    if has(&["certificate", "tls", "handshake"]) {
        return "tls: handshake failed".into();
    }
    if has(&["connection refused"]) {
        return "unreachable: connection refused".into();
    }
    if has(&["no route to host", "network is unreachable", "host is unreachable"]) {
        return "unreachable: no route to the host".into();
    }
    if has(&["timed out", "timeout", "did not finish within", "deadline"]) {
        return "timeout".into();
    }
    if has(&["too many redirects", "redirect"]) {
        return "upstream refused: too many redirects".into();
    }
    if has(&["connection reset", "broken pipe"]) {
        return "unreachable: the connection was reset".into();
    }
    if has(&["unexpected content type", "unexpected server response", "deserialize", "endpoint", "json", "parse"]) {
        return "not an MCP server: unexpected response".into();
    }
    if has(&["end of stream", "closed", "ended"]) {
        return "connection closed by the upstream".into();
    }
    "unreachable".into()
}

/// The HTTP status in an error's text: `HTTP 401`, `answered 401`, `status: 401`.
fn http_status(raw: &str) -> Option<u16> {
    for marker in ["HTTP ", "answered ", "status: ", "status code "] {
        for (at, _) in raw.match_indices(marker) {
            let digits: String = raw[at + marker.len()..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(status) = digits.parse::<u16>()
                && digits.len() == 3
                && (400..600).contains(&status)
            {
                return Some(status);
            }
        }
    }
    None
}

/// `text` without Rust type names: rmcp writes the transport's type into its
/// errors (`Transport [orch_mcp::conn::Watched<...>] error: ...`).
pub(crate) fn without_type_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("Transport [") {
        out.push_str(&rest[..start]);
        out.push_str("transport");
        let after = &rest[start + "Transport [".len()..];
        rest = match after.find("] ") {
            Some(end) => &after[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// A failure of `server` as callers may see it: classified for HTTP
/// upstreams, without type names for child processes (the operator's own).
pub(crate) fn describe(server: &ServerConfig, raw: &str) -> String {
    match server.transport {
        TransportConfig::Stdio { .. } => without_type_names(raw),
        TransportConfig::Sse { .. } | TransportConfig::StreamableHttp { .. } => classify(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_without_what_the_upstream_sent() {
        for (raw, expected) in [
            (
                "initialisation failed: send initialize request: Transport [orch_mcp::conn::Watched<rmcp::X<orch_mcp::session_http::SessionHttpClient>>] error: unexpected server response: HTTP 401 Unauthorized: {\"token\": \"sk-secret\"}",
                "upstream refused: HTTP 401",
            ),
            ("GET http://h/sse answered 503 Service Unavailable; expected 200", "upstream failed: HTTP 503"),
            (
                "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer",
                "tls: unknown issuer",
            ),
            (
                "error sending request: tcp connect error: Connection refused (os error 111)",
                "unreachable: connection refused",
            ),
            (
                "error sending request: client error (Connect): localhost resolves to 127.0.0.1, a loopback address, which MCP servers may not reach; if it is yours, allow it with ORCH_MCP_ALLOW",
                "egress refused: the host resolves to a loopback address; allow it with ORCH_MCP_ALLOW",
            ),
            ("initialisation did not finish within 5s (the server's `timeout`)", "timeout"),
            (
                "unexpected server response: expected JSON-RPC, got {\"secret\": 1}",
                "not an MCP server: unexpected response",
            ),
            (
                "`endpoint` event `http://evil/x?k=secret` from http://h/sse is not a URL on the same origin",
                "not an MCP server: unexpected response",
            ),
        ] {
            assert_eq!(classify(raw), expected, "{raw}");
        }
    }

    #[test]
    fn type_names_are_taken_out() {
        let raw =
            "initialisation failed: Transport [orch_mcp::conn::Watched<rmcp::transport::TokioChildProcess>] error: EOF";
        assert_eq!(without_type_names(raw), "initialisation failed: transport error: EOF");
    }
}
