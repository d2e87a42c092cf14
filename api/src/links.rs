//! Absolute links: `status_url`, `Location`, the webhook payload's `links`.
//!
//! `ORCH_PUBLIC_URL` wins when set. Otherwise the base URL is the one the
//! client used, read from `Forwarded`, `X-Forwarded-Proto`/`-Host` or `Host`,
//! so that clients which cannot follow a relative URL (n8n's HTTP Request
//! node) can follow them. Header values are only taken when they are a plain
//! scheme (`http`/`https`) and a plain authority (a host name, an IPv4 address
//! or a bracketed IPv6 address, and a port): a hostile `Host` cannot put
//! anything else into a URL. A request whose headers say nothing usable gets
//! relative links, as before.

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    /// The base URL of the request being handled (no trailing slash).
    static BASE: Option<String>;
}

/// The base URL of the request being handled, if one could be read from it.
pub fn current() -> Option<String> {
    BASE.try_with(Clone::clone).ok().flatten()
}

/// Runs `future` with `base` as the request's base URL.
pub async fn scope<F: std::future::Future>(base: Option<String>, future: F) -> F::Output {
    BASE.scope(base, future).await
}

/// Middleware: the rest of the request runs with its base URL known.
pub async fn layer(request: Request, next: Next) -> Response {
    let base = base_url(request.headers());
    BASE.scope(base, next.run(request)).await
}

/// `scheme://authority` as the client addressed this server, or None when the
/// headers give no valid authority.
pub fn base_url(headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let first = |value: &str| value.split(',').next().unwrap_or("").trim().to_owned();
    let (mut proto, mut host) = (None, None);
    if let Some(forwarded) = text("forwarded") {
        for pair in first(forwarded).split(';') {
            let Some((key, value)) = pair.split_once('=') else { continue };
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "proto" => proto = Some(value),
                "host" => host = Some(value),
                _ => {}
            }
        }
    }
    let proto = proto.or_else(|| text("x-forwarded-proto").map(first));
    let host = host.or_else(|| text("x-forwarded-host").map(first)).or_else(|| text("host").map(first))?;
    let scheme = match proto.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => "http",
        Some("http") => "http",
        Some("https") => "https",
        Some(_) => return None,
    };
    valid_authority(&host).then(|| format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// A host (name, IPv4, or `[IPv6]`) and an optional port, nothing else.
fn valid_authority(text: &str) -> bool {
    if text.is_empty() || text.len() > 255 {
        return false;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else { return false };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(text), None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
    let host_ok = host.is_none_or(|h| {
        !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    });
    port_ok && host_ok
}

/// The base for links: `ORCH_PUBLIC_URL` when set, else the request's, else
/// empty (relative links).
pub fn base(public_url: &str) -> String {
    if !public_url.is_empty() {
        return public_url.trim_end_matches('/').to_owned();
    }
    current().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_base_comes_from_the_request() {
        assert_eq!(base_url(&headers(&[("host", "orch:8080")])).as_deref(), Some("http://orch:8080"));
        assert_eq!(
            base_url(&headers(&[
                ("host", "10.0.0.5:8080"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "orch.example.com")
            ]))
            .as_deref(),
            Some("https://orch.example.com")
        );
        assert_eq!(
            base_url(&headers(&[
                ("host", "x"),
                ("forwarded", "for=1.2.3.4;proto=https;host=\"a.example:444\", host=b")
            ]))
            .as_deref(),
            Some("https://a.example:444")
        );
        assert_eq!(base_url(&headers(&[("host", "[::1]:9")])).as_deref(), Some("http://[::1]:9"));
    }

    #[test]
    fn a_hostile_host_gives_no_base() {
        for host in [
            "evil.com/x",
            "evil.com?x",
            "a@b",
            "evil.com#",
            "a b",
            "evil.com:99999",
            "evil.com:",
            "[::1",
            "-a.com",
            "a..b",
            "\"x\"",
            "evil.com:80:80",
            "[zz]:1",
            "",
        ] {
            assert_eq!(base_url(&headers(&[("host", host)])), None, "{host:?}");
        }
        assert_eq!(base_url(&headers(&[("host", "ok"), ("x-forwarded-proto", "javascript")])), None);
    }
}
