//! The SSRF guard: which addresses a webhook may reach. Checked on the
//! resolved addresses (not the name), at submission and before every attempt,
//! and the attempt connects to exactly the addresses checked, so a name that
//! resolves differently later (DNS rebinding) gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use reqwest::Url;
use url::Host;

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not an absolute URL: {1}")]
    Parse(String, String),
    #[error("scheme {0:?} is not allowed; use http or https")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("host {host:?} does not resolve: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "{host} resolves to {addr}, a {what} address, which webhooks may not reach; if it is yours, allow it with ORCH_WEBHOOK_ALLOW (a CIDR list)"
    )]
    Forbidden { host: String, addr: IpAddr, what: &'static str },
}

impl UrlError {
    /// Whether a later attempt could get another answer (DNS hiccups).
    pub fn is_transient(&self) -> bool {
        matches!(self, UrlError::Resolve { .. })
    }
}

/// Parses a webhook URL: absolute, http or https, with a host.
pub fn parse_url(text: &str) -> Result<Url, UrlError> {
    let url = Url::parse(text).map_err(|e| UrlError::Parse(text.to_owned(), e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme(url.scheme().to_owned()));
    }
    if url.host().is_none() {
        return Err(UrlError::NoHost);
    }
    Ok(url)
}

/// The kind of address webhooks may not reach by default, or `None` for a
/// public one. IPv4 addresses inside IPv6 (mapped, compatible, NAT64, 6to4) are
/// judged as the IPv4 address they carry.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        return Some("cloud metadata");
    }
    Some(match () {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if a == 100 && (64..128).contains(&b) => "carrier-grade NAT",
        _ if a == 0 => "unspecified",
        _ if ip.is_multicast() || ip.is_broadcast() || a >= 240 => "reserved",
        _ if (a, b, c) == (192, 0, 0) || (a == 198 && (18..20).contains(&b)) => "reserved",
        _ if [(192, 0, 2), (198, 51, 100), (203, 0, 113)].contains(&(a, b, c)) => "documentation",
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("cloud metadata");
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible), 64:ff9b::a.b.c.d (NAT64).
    if (s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0)) || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_kind(embedded(s[6], s[7]));
    }
    // 6to4 carries the IPv4 address in segments 1 and 2.
    if s[0] == 0x2002 {
        return v4_kind(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "unique-local",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0 => "Teredo",
        0x2001 if s[1] == 0xdb8 => "documentation",
        0x0100 if s[1..4] == [0, 0, 0] => "discard",
        _ => return None,
    })
}

/// The allow list (`ORCH_WEBHOOK_ALLOW`) and the checks it exempts.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub allow: Vec<IpNet>,
}

impl Guard {
    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let kind = forbidden_kind(ip)?;
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = self.allow.iter().any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)));
        (!allowed).then_some(kind)
    }

    /// Resolves the URL's host and checks every address; all must be
    /// allowed. Returns the addresses to connect to.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, UrlError> {
        let port = url.port_or_known_default().unwrap_or(80);
        let (name, addrs): (String, Vec<SocketAddr>) = match url.host().ok_or(UrlError::NoHost)? {
            Host::Ipv4(ip) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
            Host::Ipv6(ip) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
            Host::Domain(domain) => {
                let found = tokio::net::lookup_host((domain, port))
                    .await
                    .map_err(|e| UrlError::Resolve { host: domain.to_owned(), reason: e.to_string() })?
                    .collect::<Vec<_>>();
                if found.is_empty() {
                    return Err(UrlError::Resolve { host: domain.to_owned(), reason: "no addresses".into() });
                }
                (domain.to_owned(), found)
            }
        };
        for addr in &addrs {
            if let Some(what) = self.refuses(addr.ip()) {
                return Err(UrlError::Forbidden { host: name, addr: addr.ip(), what });
            }
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ip: &str, expected: Option<&str>) {
        assert_eq!(forbidden_kind(ip.parse().unwrap()), expected, "{ip}");
    }

    #[test]
    fn address_kinds() {
        for (ip, kind) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("cloud metadata")),
            ("169.254.1.1", Some("link-local")),
            ("100.64.0.1", Some("carrier-grade NAT")),
            ("0.0.0.0", Some("unspecified")),
            ("8.8.8.8", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
            ("2002:7f00:1::", Some("loopback")),
            ("fd00:ec2::254", Some("cloud metadata")),
            ("fc00::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("2606:4700::1111", None),
        ] {
            check(ip, kind);
        }
    }

    #[test]
    fn the_allow_list_exempts_its_networks_in_both_forms() {
        let guard = Guard { allow: vec!["127.0.0.0/8".parse().unwrap()] };
        assert_eq!(guard.refuses("127.0.0.1".parse().unwrap()), None);
        assert_eq!(guard.refuses("::ffff:127.0.0.1".parse().unwrap()), None);
        assert_eq!(guard.refuses("::1".parse().unwrap()), Some("loopback"));
        assert_eq!(guard.refuses("10.0.0.1".parse().unwrap()), Some("private"));
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let guard = Guard::default();
        let url = parse_url("http://localhost:9/hook").unwrap();
        let err = guard.resolve(&url).await.unwrap_err();
        assert!(matches!(err, UrlError::Forbidden { what: "loopback", .. }), "{err}");
        // Other spellings of 127.0.0.1 are parsed as the address.
        for text in ["http://2130706433/", "http://0x7f.1/", "http://[::ffff:7f00:1]/"] {
            let err = guard.resolve(&parse_url(text).unwrap()).await.unwrap_err();
            assert!(matches!(err, UrlError::Forbidden { .. }), "{text}: {err}");
        }
    }
}
