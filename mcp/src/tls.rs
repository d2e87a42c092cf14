//! TLS for `https://` upstreams (streamable HTTP and SSE): rustls with the
//! `ring` provider (no aws-lc, no cmake), the system's roots through
//! rustls-platform-verifier, plus the CA certificates of `ORCH_MCP_CA_FILE`
//! for servers behind a private CA.

use std::path::Path;

/// Makes `ring` the process's rustls provider. reqwest is built without a
/// provider of its own, so every process must call this before it builds a
/// `reqwest::Client` (`Registry::new` and Orch's `main` do; tests that build
/// clients themselves must too). Calling it again does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file (one or more `-----BEGIN CERTIFICATE-----`
/// blocks), or what is wrong with it.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certificates)
}

/// The builder of the upstream connections' HTTP clients: system roots, plus
/// the certificates of `ca_file` when given.
pub(crate) fn http_builder(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder, String> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_file {
        builder = builder.tls_certs_merge(ca_certificates(path)?);
    }
    Ok(builder)
}
