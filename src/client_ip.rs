//! Client IP: the TCP peer, or for a trusted proxy the address it forwarded.
//!
//! Forwarding headers are read only when the peer is in `trustedProxies`. Each line of a
//! header and each comma-separated element is parsed. The client is the rightmost
//! address that is not itself a trusted proxy, so a client cannot choose its address by
//! prepending elements. A malformed element makes the whole header unusable and the
//! peer is used instead.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;

/// Maximum forwarded elements examined per request, against header bloat.
const MAX_ELEMENTS: usize = 32;

/// The trusted peers and the headers they may use to name the client.
#[derive(Debug, Clone, Default)]
pub struct ClientIpPolicy {
    headers: Vec<HeaderName>,
    trusted: Vec<IpNet>,
}

/// The resolved client address and the verified forwarding chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// Addresses between the client and the peer that trusted proxies vouched for,
    /// client first and the peer excluded.
    pub chain: Vec<IpAddr>,
    /// Set when a forwarding header from a trusted peer could not be parsed.
    pub malformed: bool,
}

/// Normalises IPv4-mapped IPv6 (`::ffff:192.0.2.1`) to IPv4, as dual-stack sockets report it.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses one forwarded element: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:443`, optionally quoted.
fn parse_element(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(canonical_ip(addr.ip()));
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(canonical_ip)
}

impl ClientIpPolicy {
    pub fn new(headers: Vec<HeaderName>, trusted: Vec<IpNet>) -> Self {
        ClientIpPolicy { headers, trusted }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Resolves the client of a request from `peer`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        let peer = canonical_ip(peer);
        let mut result = ClientAddr {
            ip: peer,
            chain: Vec::new(),
            malformed: false,
        };
        if self.headers.is_empty() || !self.is_trusted(peer) {
            return result;
        }

        for name in &self.headers {
            let mut elements: Vec<IpAddr> = Vec::new();
            let mut present = false;
            let mut valid = true;
            for line in headers.get_all(name) {
                present = true;
                let Ok(text) = line.to_str() else {
                    valid = false;
                    break;
                };
                for element in text.split(',') {
                    if elements.len() == MAX_ELEMENTS {
                        valid = false;
                        break;
                    }
                    match parse_element(element) {
                        Some(ip) => elements.push(ip),
                        None => valid = false,
                    }
                }
            }
            if !present {
                continue;
            }
            if !valid || elements.is_empty() {
                result.malformed = true;
                return result;
            }

            // Walk from the right past trusted proxies; the first untrusted address is
            // the client. If every element is trusted, the leftmost one is.
            let client_at = elements.iter().rposition(|ip| !self.is_trusted(*ip)).unwrap_or(0);
            result.ip = elements[client_at];
            result.chain = elements.split_off(client_at);
            return result;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(trusted: &[&str]) -> ClientIpPolicy {
        ClientIpPolicy::new(
            vec![
                HeaderName::from_static("x-forwarded-for"),
                HeaderName::from_static("x-real-ip"),
            ],
            trusted.iter().map(|t| t.parse().unwrap()).collect(),
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let resolved =
            policy(&["10.0.0.0/8"]).resolve(ip("127.0.0.1"), &headers(&[("x-forwarded-for", "203.0.113.7")]));
        assert_eq!(resolved.ip, ip("127.0.0.1"));
        assert!(resolved.chain.is_empty());
    }

    #[test]
    fn trusted_peer_takes_rightmost_untrusted() {
        let resolved = policy(&["127.0.0.0/8"]).resolve(
            ip("127.0.0.1"),
            &headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.7, 127.0.0.2")]),
        );
        assert_eq!(resolved.ip, ip("203.0.113.7"));
        assert_eq!(resolved.chain, vec![ip("203.0.113.7"), ip("127.0.0.2")]);
    }

    #[test]
    fn every_header_line_is_read() {
        let resolved = policy(&["127.0.0.0/8"]).resolve(
            ip("127.0.0.1"),
            &headers(&[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "203.0.113.7")]),
        );
        assert_eq!(resolved.ip, ip("203.0.113.7"));
    }

    #[test]
    fn malformed_header_falls_back_to_peer() {
        let resolved =
            policy(&["127.0.0.0/8"]).resolve(ip("127.0.0.1"), &headers(&[("x-forwarded-for", "203.0.113.7, junk")]));
        assert_eq!(resolved.ip, ip("127.0.0.1"));
        assert!(resolved.malformed);
    }

    #[test]
    fn element_forms() {
        assert_eq!(parse_element(" 192.0.2.1:443 "), Some(ip("192.0.2.1")));
        assert_eq!(parse_element("[2001:db8::1]:80"), Some(ip("2001:db8::1")));
        assert_eq!(parse_element("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_element("\"2001:db8::1\""), Some(ip("2001:db8::1")));
        assert_eq!(parse_element("::ffff:192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_element("unknown"), None);
    }

    #[test]
    fn second_header_used_when_first_absent() {
        let resolved = policy(&["127.0.0.0/8"]).resolve(ip("127.0.0.1"), &headers(&[("x-real-ip", "203.0.113.9")]));
        assert_eq!(resolved.ip, ip("203.0.113.9"));
    }
}
