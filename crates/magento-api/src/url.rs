//! Which store URLs the ledger may call, and an HTTP client pinned to the checked
//! addresses.
//!
//! A merchant types the store URL, so it is untrusted input that makes the ledger send
//! requests (with secrets) from inside its network. By default only public https
//! endpoints are allowed: the host is resolved once, every address is checked, and the
//! client connects only to those addresses (no DNS rebinding between check and use).
//! Redirects are never followed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

pub use ::url::Url;

/// Development switches and timeouts, from settings.
#[derive(Debug, Clone, Copy)]
pub struct UrlPolicy {
    pub allow_insecure: bool,
    pub allow_private: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl UrlPolicy {
    /// The state's policy, read from its settings once.
    pub fn of(state: &ledger_core::AppState) -> std::sync::Arc<Self> {
        state.part(|s| Self::from_settings(&s.settings))
    }

    pub fn from_settings(s: &ledger_core::Settings) -> Self {
        Self {
            allow_insecure: s.allow_insecure_magento,
            allow_private: s.allow_private_magento,
            connect_timeout: s.magento_connect_timeout,
            request_timeout: s.magento_request_timeout,
        }
    }
}

/// Why a store URL is refused. Messages say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`{0}` is not an absolute URL; enter the store's base URL, e.g. https://shop.example.com")]
    NotAUrl(String),
    #[error("only http(s) store URLs are supported")]
    Scheme,
    #[error("the store URL must use https (plain http is allowed only in development)")]
    InsecureNotAllowed,
    #[error("the store URL must not contain a user name or password")]
    Credentials,
    #[error("the store URL must not contain a query string or fragment")]
    QueryOrFragment,
    #[error("the store host `{host}` does not resolve: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "the store host resolves to {0}, a loopback, private, link-local or metadata address, which is not allowed"
    )]
    PrivateAddress(IpAddr),
}

impl UrlError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAUrl(_) | Self::Scheme | Self::Credentials | Self::QueryOrFragment => "invalid_format",
            Self::InsecureNotAllowed => "https_required",
            Self::Resolve { .. } => "host_not_found",
            Self::PrivateAddress(_) => "address_not_allowed",
        }
    }
}

/// Parses and normalises a store base URL: http(s), a host, no credentials, query or
/// fragment; no trailing `/`. Does not touch the network.
pub fn normalize_base_url(input: &str, policy: &UrlPolicy) -> Result<Url, UrlError> {
    let input = input.trim();
    let mut url = Url::parse(input).map_err(|_| UrlError::NotAUrl(input.chars().take(200).collect()))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_insecure => {}
        "http" => return Err(UrlError::InsecureNotAllowed),
        _ => return Err(UrlError::Scheme),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NotAUrl(input.chars().take(200).collect()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(UrlError::QueryOrFragment);
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// The URL as text without a trailing `/` (the form stored and compared).
pub fn base_url_text(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

/// True for addresses a public store never has: loopback, private, link-local (incl.
/// the 169.254.169.254 metadata service), CGNAT, unspecified, broadcast, multicast,
/// documentation and IPv6 unique-local ranges, and IPv4-mapped forms of those.
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_non_public_v4(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            // Forms that carry an IPv4 address the network may route to: mapped
            // (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64 (64:ff9b::/96), 6to4 (2002::/16).
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_non_public_v4(v4);
            }
            if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return is_non_public_v4(embedded(seg[6], seg[7]));
            }
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_non_public_v4(embedded(seg[6], seg[7]));
            }
            if seg[0] == 0x2002 {
                return is_non_public_v4(embedded(seg[1], seg[2]));
            }
            let first = seg[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // local-use NAT64 64:ff9b:1::/48
                || (first == 0x2001 && seg[1] == 0) // Teredo 2001::/32 (tunnels to any IPv4)
                || (first == 0x100 && seg[1..4] == [0, 0, 0]) // discard-only 100::/64
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) // AWS IMDS over IPv6
        }
    }
}

fn is_non_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0) // 192.0.0.0/24 protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240
}

/// Resolves the URL's host and applies the address rules.
pub async fn resolve(url: &Url, policy: &UrlPolicy) -> Result<Vec<SocketAddr>, UrlError> {
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(policy.connect_timeout, tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| UrlError::Resolve {
                host: host.clone(),
                reason: "DNS timed out".to_owned(),
            })?
            .map_err(|e| UrlError::Resolve {
                host: host.clone(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(UrlError::Resolve {
            host,
            reason: "no addresses".to_owned(),
        });
    }
    if !policy.allow_private
        && let Some(bad) = addrs.iter().find(|a| is_non_public(a.ip()))
    {
        return Err(UrlError::PrivateAddress(bad.ip()));
    }
    Ok(addrs)
}

/// A client for one store: connects only to the checked addresses, follows no
/// redirects, and gives up after the configured timeouts.
pub async fn pinned_client(url: &Url, policy: &UrlPolicy) -> Result<reqwest::Client, UrlError> {
    let addrs = resolve(url, policy).await?;
    ledger_core::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // An HTTP(S)_PROXY from the environment would take the request past the pinned,
        // checked addresses.
        .no_proxy()
        .tls_backend_preconfigured(ledger_core::tls_config())
        .connect_timeout(policy.connect_timeout)
        .timeout(policy.request_timeout)
        .user_agent(concat!("byte8-ledger/", env!("CARGO_PKG_VERSION")));
    if let Some(host) = url.host_str()
        && host.parse::<IpAddr>().is_err()
    {
        builder = builder.resolve_to_addrs(host, &addrs);
    }
    Ok(builder.build().expect("the HTTP client configuration is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> UrlPolicy {
        UrlPolicy {
            allow_insecure: false,
            allow_private: false,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn normalisation() {
        let p = strict();
        assert_eq!(
            base_url_text(&normalize_base_url(" https://shop.example.com/ ", &p).unwrap()),
            "https://shop.example.com"
        );
        assert_eq!(
            base_url_text(&normalize_base_url("https://shop.example.com/store/", &p).unwrap()),
            "https://shop.example.com/store"
        );
        assert_eq!(
            normalize_base_url("http://shop.example.com", &p).unwrap_err(),
            UrlError::InsecureNotAllowed
        );
        assert!(
            normalize_base_url(
                "http://shop.example.com",
                &UrlPolicy {
                    allow_insecure: true,
                    ..p
                }
            )
            .is_ok()
        );
        assert_eq!(
            normalize_base_url("ftp://shop.example.com", &p).unwrap_err(),
            UrlError::Scheme
        );
        assert_eq!(
            normalize_base_url("https://u:p@shop.example.com", &p).unwrap_err(),
            UrlError::Credentials
        );
        assert_eq!(
            normalize_base_url("https://shop.example.com/?a=1", &p).unwrap_err(),
            UrlError::QueryOrFragment
        );
        assert!(matches!(
            normalize_base_url("shop.example.com", &p),
            Err(UrlError::NotAUrl(_))
        ));
    }

    #[test]
    fn private_and_metadata_addresses_are_non_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            // IPv4 inside IPv6: NAT64, 6to4, IPv4-compatible; site-local; Teredo.
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "::10.0.0.1",
            "::169.254.169.254",
            "fec0::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(is_non_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(!is_non_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn resolution_refuses_private_targets_unless_allowed() {
        let p = strict();
        let url = Url::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(
            resolve(&url, &p).await.unwrap_err(),
            UrlError::PrivateAddress("127.0.0.1".parse().unwrap())
        );
        let url = Url::parse("https://localhost:8443").unwrap();
        assert!(matches!(
            resolve(&url, &p).await.unwrap_err(),
            UrlError::PrivateAddress(_)
        ));
        let url = Url::parse("https://[::1]:8443").unwrap();
        assert!(matches!(
            resolve(&url, &p).await.unwrap_err(),
            UrlError::PrivateAddress(_)
        ));
        assert!(
            resolve(
                &url,
                &UrlPolicy {
                    allow_private: true,
                    ..p
                }
            )
            .await
            .is_ok()
        );
    }
}
