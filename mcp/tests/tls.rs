//! `https://` upstreams (streamable HTTP and legacy SSE) behind a private CA:
//! a call succeeds when `ORCH_MCP_CA_FILE` (`RegistryOptions::ca_file`) holds
//! the CA, and fails with a certificate error without it. The TLS endpoint is
//! real: a Python TLS proxy in front of the servers, with a CA and a server
//! certificate made by the `openssl` CLI for this test.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orch_mcp::{CallOptions, Error, RegistryOptions, ServerState};
use serde_json::json;
use support::*;

/// A CA and a certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl CLI runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Orch test CA"],
        &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// TLS on a free port in front of 127.0.0.1:`target`; killed on drop.
struct TlsProxy {
    port: u16,
    child: Child,
}

impl TlsProxy {
    fn start(cert: &Path, key: &Path, target: u16) -> TlsProxy {
        use std::io::BufRead;
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([cert.as_os_str(), key.as_os_str()])
            .args([port.to_string(), target.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the TLS proxy");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening", "the TLS proxy did not start");
        TlsProxy { port, child }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':').unwrap().1.split('/').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn https_upstreams_work_with_the_ca_file_and_fail_with_a_certificate_error_without_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let http = TestHttpServer::start(&[]);
    let sse = HttpServer::start("sse");
    let http_tls = TlsProxy::start(&cert, &key, port_of(&http.url));
    let sse_tls = TlsProxy::start(&cert, &key, sse.port);
    let servers = config(json!({"mcpServers": {
        "h": {"transportType": "streamable-http", "url": format!("https://127.0.0.1:{}/mcp", http_tls.port), "timeout": 10},
        "s": {"transportType": "sse", "url": format!("https://127.0.0.1:{}/sse", sse_tls.port), "timeout": 10},
    }}));

    let options = RegistryOptions { ca_file: Some(ca.clone()), ..fast_options() };
    let (registry, _) = orch_mcp::Registry::start(servers.clone(), options).await.unwrap();
    for (server, expected) in [("h", "over tls"), ("s", "Echo: over tls")] {
        let status = registry.server_status(server).unwrap();
        assert_eq!(status.state, ServerState::Up, "{status:?}");
        let result = registry
            .call_tool(server, "echo", args(json!({"message": "over tls"})), CallOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{server}: {e}"));
        assert_eq!(text(&result), expected);
    }
    registry.shutdown(Duration::from_secs(1)).await;

    let (registry, _) = orch_mcp::Registry::start(servers, fast_options()).await.unwrap();
    for server in ["h", "s"] {
        let status = registry.server_status(server).unwrap();
        assert_eq!(status.state, ServerState::Down, "{status:?}");
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("tls: unknown issuer"), "{server}: {error}");
        let call = registry.call_tool(server, "echo", args(json!({"message": "x"})), CallOptions::default()).await;
        let error = call.unwrap_err();
        assert!(matches!(error, Error::Down { .. } | Error::Connect { .. }), "{server}: {error}");
        assert!(error.to_string().contains("tls: unknown issuer"), "{server}: {error}");
    }
}

#[test]
fn a_ca_file_that_is_not_pem_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let error = orch_mcp::tls::ca_certificates(&path).unwrap_err();
    assert_eq!(error, format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    let missing = dir.path().join("missing.pem");
    let error = orch_mcp::tls::ca_certificates(&missing).unwrap_err();
    assert!(error.starts_with(&format!("cannot read {}: ", missing.display())), "{error}");
}
