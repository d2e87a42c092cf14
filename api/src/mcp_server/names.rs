//! Function-safe tool names on the MCP endpoints.
//!
//! MCP clients such as n8n's AI Agent hand the listed tool names to a model as
//! function names, and OpenAI and Anthropic accept only
//! `^[a-zA-Z0-9_-]{1,64}$`. So the MCP endpoints list `server__tool` (one
//! server's endpoints the tool's own name) with every other character made
//! `_`; a name still too long, or shared by two tools once made safe, is cut
//! and ends in `_` and 8 hex digits of a SHA-256 of the server and tool, so it
//! is the same on every listing. `tools/call` takes the listed name or the
//! registry's `server.tool`; REST and plans keep `server.tool`.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::tool_calls::valid_function_name;

const MAX: usize = 64;
const HASH_HEX: usize = 8;

/// Every character outside `[A-Za-z0-9_-]` made `_`.
fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// The name made safe and unique: cut, then `_` and a hash of `server`/`tool`.
fn hashed(base: &str, server: &str, tool: &str) -> String {
    let digest = Sha256::new().chain_update(server).chain_update([0]).chain_update(tool).finalize();
    let hex: String = digest.iter().take(HASH_HEX / 2).map(|b| format!("{b:02x}")).collect();
    // `base` is ASCII after sanitising, so bytes are characters.
    let head = &base[..base.len().min(MAX - 1 - HASH_HEX)];
    format!("{head}_{hex}")
}

/// The listed names of one endpoint's tools, both ways.
#[derive(Debug, Default)]
pub struct ToolNames {
    /// (server, tool) → listed name.
    listed: HashMap<(String, String), String>,
    /// Listed name → (server, tool).
    targets: HashMap<String, (String, String)>,
}

impl ToolNames {
    /// Names `tools` (server, tool's own name): `server__tool` when `prefixed`
    /// (the aggregate endpoint), else the tool's name, made function-safe and
    /// unique among themselves and `reserved` (Orch's own tools).
    pub fn new<'a>(
        tools: impl IntoIterator<Item = (&'a str, &'a str)>,
        prefixed: bool,
        reserved: &[&str],
    ) -> ToolNames {
        let tools: Vec<(&str, &str, String)> = tools
            .into_iter()
            .map(|(server, tool)| {
                let base = if prefixed { format!("{}__{}", sanitize(server), sanitize(tool)) } else { sanitize(tool) };
                (server, tool, base)
            })
            .collect();
        let mut counts: HashMap<&str, usize> = reserved.iter().map(|r| (*r, 1)).collect();
        for (_, _, base) in &tools {
            *counts.entry(base.as_str()).or_default() += 1;
        }
        let mut names = ToolNames::default();
        for (server, tool, base) in &tools {
            let name = if valid_function_name(base) && counts[base.as_str()] == 1 {
                base.clone()
            } else {
                hashed(base, server, tool)
            };
            names.listed.insert((server.to_string(), tool.to_string()), name.clone());
            names.targets.insert(name, (server.to_string(), tool.to_string()));
        }
        names
    }

    /// The name `server`'s `tool` is listed under.
    pub fn listed(&self, server: &str, tool: &str) -> Option<&str> {
        self.listed.get(&(server.to_owned(), tool.to_owned())).map(String::as_str)
    }

    /// The server and tool a listed name stands for.
    pub fn target(&self, name: &str) -> Option<(&str, &str)> {
        self.targets.get(name).map(|(s, t)| (s.as_str(), t.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_function_safe_stable_and_unique() {
        let long = "t".repeat(70);
        let tools = [
            ("everything", "echo"),
            ("everything", "get-sum"),
            ("my.server", "a.b"),
            ("my_server", "a_b"),
            ("everything", long.as_str()),
            ("x", "submit_job"),
        ];
        let names = ToolNames::new(tools, true, &["submit_job"]);
        assert_eq!(names.listed("everything", "echo"), Some("everything__echo"));
        assert_eq!(names.listed("everything", "get-sum"), Some("everything__get-sum"));
        assert_eq!(names.listed("x", "submit_job"), Some("x__submit_job"));
        // `my.server`/`a.b` and `my_server`/`a_b` both make `my_server__a_b`: both get a hash.
        let a = names.listed("my.server", "a.b").unwrap();
        let b = names.listed("my_server", "a_b").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("my_server__a_b_") && a.len() == "my_server__a_b_".len() + 8, "{a}");
        let cut = names.listed("everything", &long).unwrap();
        assert_eq!(cut.len(), 64, "{cut}");
        for (server, tool) in tools {
            let name = names.listed(server, tool).unwrap();
            assert!(valid_function_name(name), "{name}");
            assert_eq!(names.target(name), Some((server, tool)));
        }
        // The same tools get the same names, in any order.
        let again = ToolNames::new(tools.into_iter().rev(), true, &["submit_job"]);
        assert_eq!(again.listed("my.server", "a.b"), Some(a));
        // One server's endpoint: the tool's own name when it is safe.
        let one = ToolNames::new([("s", "echo"), ("s", "a.b")], false, &[]);
        assert_eq!((one.listed("s", "echo"), one.listed("s", "a.b")), (Some("echo"), Some("a_b")));
    }
}
