//! mcp-config.json parsing as data: each case is the file text, the
//! environment, and the summary a user would check (servers kept, errors by
//! server and field).

use std::collections::HashMap;
use std::fmt::Write;

use orch_mcp::config::{self, Parsed};
use orch_mcp::{Secret, TransportConfig};

fn summary(parsed: &Parsed) -> String {
    let mut out = String::new();
    for server in parsed.config.servers.values() {
        let transport = match &server.transport {
            TransportConfig::Stdio { command, args, env, cwd } => {
                let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", v.expose())).collect();
                format!("stdio {command} {args:?} env={env:?} cwd={cwd:?}")
            }
            TransportConfig::Sse { url, headers } | TransportConfig::StreamableHttp { url, headers } => {
                let headers: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={}", v.expose())).collect();
                format!("{} {url} headers={headers:?}", server.transport.kind())
            }
        };
        let p = server.pool;
        writeln!(
            out,
            "{}: {transport} timeout={}s pool={}..{}/{} auto={:?}{}",
            server.name,
            server.timeout.as_secs(),
            p.min,
            p.max,
            p.concurrency,
            server.auto_approve,
            if server.disabled { " disabled" } else { "" },
        )
        .unwrap();
    }
    for e in &parsed.errors {
        writeln!(out, "error {}.{}: {}", e.server, e.field, e.message).unwrap();
    }
    for e in &parsed.warnings {
        writeln!(out, "warning {}.{}: {}", e.server, e.field, e.message).unwrap();
    }
    out
}

#[track_caller]
fn check(input: &str, expected: &str) {
    check_env(input, &[], expected);
}

#[track_caller]
fn check_env(input: &str, env: &[(&str, &str)], expected: &str) {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let parsed = config::parse(input, |name| env.get(name).cloned()).expect("the file as a whole parses");
    let actual = summary(&parsed);
    let expected: String =
        expected.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| format!("{l}\n")).collect();
    assert_eq!(actual, expected, "\n--- actual ---\n{actual}--- expected ---\n{expected}");
}

#[test]
fn claude_desktop_stdio_entry_gets_defaults() {
    check(
        r#"{"mcpServers": {"fs": {"command": "npx", "args": ["-y", "server-filesystem", "/tmp"]}}}"#,
        r#"fs: stdio npx ["-y", "server-filesystem", "/tmp"] env=[] cwd=None timeout=60s pool=1..1/16 auto={}"#,
    );
}

#[test]
fn cline_fields() {
    check(
        r#"{"mcpServers": {"gh": {"command": "node", "args": ["gh.js"], "env": {"TOKEN": "t"}, "cwd": "/srv",
            "timeout": 30, "autoApprove": ["search", "get"], "disabled": true, "transportType": "stdio",
            "pool": {"min": 0, "max": 4, "concurrency": 8}}}}"#,
        r#"gh: stdio node ["gh.js"] env=["TOKEN=t"] cwd=Some("/srv") timeout=30s pool=0..4/8 auto={"get", "search"} disabled"#,
    );
}

#[test]
fn transport_types_and_their_aliases() {
    check(
        r#"{"mcpServers": {
            "a": {"transportType": "sse", "url": "http://h/sse"},
            "b": {"transportType": "streamable-http", "url": "http://h/mcp"},
            "c": {"transportType": "http", "url": "http://h/mcp"},
            "d": {"type": "streamableHttp", "url": "http://h/mcp", "headers": {"Authorization": "Bearer x"}},
            "e": {"url": "https://h/mcp"}
        }}"#,
        r#"
        a: sse http://h/sse headers=[] timeout=60s pool=1..1/16 auto={}
        b: streamable-http http://h/mcp headers=[] timeout=60s pool=1..1/16 auto={}
        c: streamable-http http://h/mcp headers=[] timeout=60s pool=1..1/16 auto={}
        d: streamable-http http://h/mcp headers=["Authorization=Bearer x"] timeout=60s pool=1..1/16 auto={}
        e: streamable-http https://h/mcp headers=[] timeout=60s pool=1..1/16 auto={}
        "#,
    );
}

#[test]
fn env_vars_expand_in_every_value() {
    check_env(
        r#"{"mcpServers": {
            "s": {"command": "${BIN}/server", "args": ["--root=${HOME}", "$literal"], "env": {"KEY": "${SECRET}"}, "cwd": "${HOME}"},
            "h": {"url": "http://${HOST}/mcp", "headers": {"Authorization": "Bearer ${SECRET}"}}
        }}"#,
        &[("BIN", "/opt/bin"), ("HOME", "/home/u"), ("SECRET", "s3cr3t"), ("HOST", "example.com:8080")],
        r#"
        h: streamable-http http://example.com:8080/mcp headers=["Authorization=Bearer s3cr3t"] timeout=60s pool=1..1/16 auto={}
        s: stdio /opt/bin/server ["--root=/home/u", "$literal"] env=["KEY=s3cr3t"] cwd=Some("/home/u") timeout=60s pool=1..1/16 auto={}
        "#,
    );
}

#[test]
fn missing_env_var_fails_only_that_server() {
    check(
        r#"{"mcpServers": {
            "needs": {"command": "x", "env": {"TOKEN": "${GITHUB_TOKEN}"}},
            "fine": {"command": "y"},
            "off": {"command": "z", "env": {"TOKEN": "${GITHUB_TOKEN}"}, "disabled": true}
        }}"#,
        r#"
        fine: stdio y [] env=[] cwd=None timeout=60s pool=1..1/16 auto={}
        off: stdio z [] env=["TOKEN=${GITHUB_TOKEN}"] cwd=None timeout=60s pool=1..1/16 auto={} disabled
        error needs.env.TOKEN: environment variable `GITHUB_TOKEN` is not set; set it or remove `${GITHUB_TOKEN}`
        "#,
    );
}

#[test]
fn invalid_entries_are_reported_by_server_and_field_and_do_not_stop_others() {
    check(
        r#"{"mcpServers": {
            "ok": {"command": "y"},
            "bad.name": {"command": "x"},
            "no-transport": {"args": []},
            "bad-type": {"transportType": "websocket", "url": "http://h"},
            "no-url": {"transportType": "sse"},
            "bad-url": {"url": "ftp://h/x"},
            "timeout-zero": {"command": "x", "timeout": 0},
            "timeout-text": {"command": "x", "timeout": "30s"},
            "pool-min": {"command": "x", "pool": {"min": 3, "max": 2}},
            "pool-field": {"command": "x", "pool": {"size": 2}},
            "args-type": {"command": "x", "args": "a b"},
            "unclosed": {"command": "${HOME"},
            "reserved": {"url": "http://h/mcp", "headers": {"Mcp-Session-Id": "1"}},
            "bad-header": {"url": "http://h/mcp", "headers": {"X": "line\nbreak"}}
        }}"#,
        r#"
        ok: stdio y [] env=[] cwd=None timeout=60s pool=1..1/16 auto={}
        error args-type.args: invalid type: string "a b", expected a sequence
        error bad-header.headers.X: the value is not a valid HTTP header value
        error bad-type.transportType: unknown transport `websocket`; use "stdio", "sse" or "streamable-http"
        error bad-url.url: `ftp://h/x` must start with http:// or https://
        error bad.name.name: invalid server name `bad.name`: use 1 to 64 letters, digits, `_` or `-`, starting with a letter or digit
        error no-transport.command: missing: give `command` (stdio) or `url` (HTTP)
        error no-url.url: missing: a sse server needs `url`
        error pool-field.pool.size: unknown field `size`, expected one of `min`, `max`, `concurrency`
        error pool-min.pool.min: 3 is more than pool.max (2)
        error reserved.headers.Mcp-Session-Id: `Mcp-Session-Id` is set by the MCP transport itself; remove it
        error timeout-text.timeout: invalid type: string "30s", expected u64
        error timeout-zero.timeout: 0 is out of range: seconds from 1 to 86400
        error unclosed.command: `${` without a closing `}`
        "#,
    );
}

#[test]
fn unknown_fields_warn_but_keep_the_server() {
    check(
        r#"{"mcpServers": {"s": {"command": "x", "autoapprove": ["a"], "alwaysAllow": []}}}"#,
        r#"
        s: stdio x [] env=[] cwd=None timeout=60s pool=1..1/16 auto={}
        warning s.alwaysAllow: unknown field, ignored
        warning s.autoapprove: unknown field, ignored
        "#,
    );
}

#[test]
fn pool_defaults_follow_the_given_bound() {
    check(
        r#"{"mcpServers": {"a": {"command": "x", "pool": {"max": 3}}, "b": {"command": "x", "pool": {"min": 2}}}}"#,
        r#"
        a: stdio x [] env=[] cwd=None timeout=60s pool=1..3/16 auto={}
        b: stdio x [] env=[] cwd=None timeout=60s pool=2..2/16 auto={}
        "#,
    );
}

#[test]
fn file_level_problems_are_errors() {
    assert!(matches!(config::parse("{", |_| None), Err(config::FileError::Json { .. })));
    assert!(matches!(config::parse(r#"{"mcpServers": []}"#, |_| None), Err(config::FileError::Shape { .. })));
    assert_eq!(config::parse("{}", |_| None).unwrap(), Parsed::default());
}

#[test]
fn secrets_never_print() {
    let parsed = config::parse(
        r#"{"mcpServers": {"s": {"command": "x", "env": {"TOKEN": "${T}"}},
                           "h": {"url": "http://h/mcp", "headers": {"Authorization": "Bearer ${T}"}}}}"#,
        |_| Some("hunter2-secret".into()),
    )
    .unwrap();
    let debug = format!("{:?} {parsed:#?}", parsed.config);
    assert!(!debug.contains("hunter2"), "secret in Debug output: {debug}");
    assert!(debug.contains("<redacted>"));
    assert_eq!(format!("{}", Secret::new("x")), "<redacted>");
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mcp-config.json");
    std::fs::write(&path, r#"{"mcpServers": {"a": {"command": "x"}}}"#).unwrap();
    assert_eq!(config::load(&path).unwrap().config.servers.len(), 1);
    std::fs::write(&path, "not json").unwrap();
    let error = config::load(&path).unwrap_err().to_string();
    assert!(error.contains("mcp-config.json is not valid JSON"), "{error}");
    let missing = config::load(&dir.path().join("nope.json")).unwrap_err().to_string();
    assert!(missing.contains("cannot read MCP config"), "{missing}");
}
