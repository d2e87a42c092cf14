//! The egress guard: which addresses Orch may connect to for others (webhook
//! receivers, MCP servers registered through the API). Addresses are judged,
//! not names: a name is resolved and every address it resolves to must be
//! allowed. The connection then goes to exactly the addresses checked, either
//! handed to the HTTP client ([`Guard::resolve`] and `resolve_to_addrs`, as
//! webhooks do) or through [`GuardedResolver`], a DNS resolver for reqwest that
//! refuses names resolving to a forbidden address, as MCP connections do; so a
//! name that resolves differently later (DNS rebinding) gains nothing. URLs
//! whose host is an address literal never reach a resolver: check them with
//! [`Guard::check_host`] before connecting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use url::Host;

/// Why a URL is refused.
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
        "{host} resolves to {addr}, a {what} address, which {who} may not reach; if it is yours, allow it with {setting}"
    )]
    Forbidden { host: String, addr: IpAddr, what: &'static str, who: &'static str, setting: &'static str },
}

impl UrlError {
    /// Whether a later attempt could get another answer (DNS hiccups).
    pub fn is_transient(&self) -> bool {
        matches!(self, UrlError::Resolve { .. })
    }
}

/// Parses a URL Orch is to connect to: absolute, http or https, with a host.
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

/// The kind of address that may not be reached by default, or `None` for a
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

/// The allow list and the checks it exempts.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Networks that may be reached anyway.
    pub allow: Vec<IpNet>,
    /// Host names that may be reached whatever they resolve to (lower case,
    /// without a trailing dot): internal servers named by the operator.
    pub allow_hosts: Vec<String>,
    /// Who is guarded, for messages: `webhooks`, `MCP servers`.
    pub who: &'static str,
    /// The setting of the allow list, for messages.
    pub setting: &'static str,
}

impl Guard {
    /// A guard allowing nothing special, for `who`, whose allow list is `setting`.
    pub fn new(who: &'static str, setting: &'static str) -> Guard {
        Guard { allow: Vec::new(), allow_hosts: Vec::new(), who, setting }
    }

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

    /// Whether `host` (a name) is on the allow list of host names.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.contains(&host)
    }

    fn forbidden(&self, host: &str, addr: IpAddr, what: &'static str) -> UrlError {
        UrlError::Forbidden { host: host.to_owned(), addr, what, who: self.who, setting: self.setting }
    }

    /// Checks `addrs`, what `host` resolved to: all must be allowed.
    pub fn check_addrs(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), UrlError> {
        if self.allows_host(host) {
            return Ok(());
        }
        for addr in addrs {
            if let Some(what) = self.refuses(addr.ip()) {
                return Err(self.forbidden(host, addr.ip(), what));
            }
        }
        Ok(())
    }

    /// Checks the URL's host when it is an address (which no resolver sees);
    /// a name passes (it is checked when it is resolved).
    pub fn check_host(&self, url: &Url) -> Result<(), UrlError> {
        let ip: IpAddr = match url.host().ok_or(UrlError::NoHost)? {
            Host::Ipv4(ip) => ip.into(),
            Host::Ipv6(ip) => ip.into(),
            Host::Domain(_) => return Ok(()),
        };
        match self.refuses(ip) {
            Some(what) => Err(self.forbidden(&ip.to_string(), ip, what)),
            None => Ok(()),
        }
    }

    /// Resolves the URL's host and checks every address; all must be
    /// allowed. Returns the addresses to connect to.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, UrlError> {
        let port = url.port_or_known_default().unwrap_or(80);
        match url.host().ok_or(UrlError::NoHost)? {
            Host::Ipv4(ip) => self.check_host(url).map(|()| vec![SocketAddr::new(ip.into(), port)]),
            Host::Ipv6(ip) => self.check_host(url).map(|()| vec![SocketAddr::new(ip.into(), port)]),
            Host::Domain(domain) => {
                let addrs = lookup(domain, port).await?;
                self.check_addrs(domain, &addrs)?;
                Ok(addrs)
            }
        }
    }

    /// A reqwest DNS resolver that resolves with the system's resolver and
    /// refuses a name any of whose addresses this guard refuses.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver(Arc::new(self.clone())))
    }
}

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, UrlError> {
    let found = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| UrlError::Resolve { host: host.to_owned(), reason: e.to_string() })?
        .collect::<Vec<_>>();
    if found.is_empty() {
        return Err(UrlError::Resolve { host: host.to_owned(), reason: "no addresses".into() });
    }
    Ok(found)
}

/// See [`Guard::resolver`]. The client connects only to the addresses this
/// resolver returned, which are the addresses it checked.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts in the URL's port.
            let addrs = lookup(&host, 0).await?;
            guard.check_addrs(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Parses an allow list: CIDRs (`10.0.0.0/8`, `fd00::/8`), addresses (taken as
/// one-address networks) and, with `hosts`, host names. Returns the networks
/// and the names, or the entry that is neither.
pub fn parse_allow(entries: &[String], hosts: bool) -> Result<(Vec<IpNet>, Vec<String>), String> {
    let (mut nets, mut names) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.trim();
        if let Ok(net) = entry.parse::<IpNet>() {
            nets.push(net);
        } else if let Ok(ip) = entry.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            nets.push(IpNet::from(ip));
        } else if hosts && valid_host_name(entry) {
            names.push(entry.trim_end_matches('.').to_ascii_lowercase());
        } else {
            return Err(entry.to_owned());
        }
    }
    Ok((nets, names))
}

fn valid_host_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
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
        let guard = Guard { allow: vec!["127.0.0.0/8".parse().unwrap()], ..Guard::new("tests", "TEST_ALLOW") };
        assert_eq!(guard.refuses("127.0.0.1".parse().unwrap()), None);
        assert_eq!(guard.refuses("::ffff:127.0.0.1".parse().unwrap()), None);
        assert_eq!(guard.refuses("::1".parse().unwrap()), Some("loopback"));
        assert_eq!(guard.refuses("10.0.0.1".parse().unwrap()), Some("private"));
    }

    #[tokio::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let guard = Guard::new("tests", "TEST_ALLOW");
        let url = parse_url("http://localhost:9/hook").unwrap();
        let err = guard.resolve(&url).await.unwrap_err();
        assert!(matches!(err, UrlError::Forbidden { what: "loopback", .. }), "{err}");
        // Other spellings of 127.0.0.1 are parsed as the address.
        for text in ["http://2130706433/", "http://0x7f.1/", "http://[::ffff:7f00:1]/"] {
            let err = guard.resolve(&parse_url(text).unwrap()).await.unwrap_err();
            assert!(matches!(err, UrlError::Forbidden { .. }), "{text}: {err}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_forbidden_addresses_and_allowed_hosts_pass() {
        use reqwest::dns::Resolve;
        let guard = Guard::new("MCP servers", "ORCH_MCP_ALLOW");
        let err = guard.resolver().resolve("localhost".parse().unwrap()).await.err().expect("refused");
        assert!(err.to_string().contains("a loopback address, which MCP servers may not reach"), "{err}");
        assert!(err.to_string().contains("ORCH_MCP_ALLOW"), "{err}");
        let (allow, allow_hosts) = parse_allow(&["localhost.".into()], true).unwrap();
        let trusting = Guard { allow, allow_hosts, ..guard };
        let addrs: Vec<_> = trusting.resolver().resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn allow_lists_take_networks_addresses_and_names() {
        let (nets, names) =
            parse_allow(&["10.0.0.0/8".into(), "127.0.0.1".into(), "[::1]".into(), "MCP.internal.".into()], true)
                .unwrap();
        assert_eq!(nets.len(), 3);
        assert_eq!(names, ["mcp.internal"]);
        assert_eq!(parse_allow(&["mcp.internal".into()], false), Err("mcp.internal".into()));
        assert_eq!(parse_allow(&["bad name".into()], true), Err("bad name".into()));
    }
}
