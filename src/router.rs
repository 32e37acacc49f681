//! Host routing.
//!
//! The request host is normalised into a stack buffer: lower case, without the port or
//! IPv6 brackets, and without one trailing dot. It is then matched in a fixed order: an
//! exact rule, the longest matching prefix rule, the longest matching suffix rule, a
//! `www.` alias of an exact rule, and last the `default` rule. Lookups never allocate.

use std::collections::HashMap;
use std::fmt;

/// Maximum length of a normalised host: a DNS name is at most 253 characters.
const MAX_HOST_LEN: usize = 255;

/// One `host` entry of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostRule {
    /// `api.example.com`: this name only (plus its `www.` alias).
    Exact(String),
    /// `alogin.` or `alogin.*`: every host that starts with `alogin.`.
    Prefix(String),
    /// `.example.com` or `*.example.com`: every host that ends with `.example.com`.
    Suffix(String),
    /// `default`: hosts that no other rule matches.
    Default,
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRule::Exact(name) | HostRule::Prefix(name) | HostRule::Suffix(name) => f.write_str(name),
            HostRule::Default => f.write_str("default"),
        }
    }
}

fn is_host_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

impl HostRule {
    /// Parses a rule as written in the config. The error message describes the fault.
    pub fn parse(text: &str) -> Result<HostRule, String> {
        if text.eq_ignore_ascii_case("default") {
            return Ok(HostRule::Default);
        }
        let lower = text.to_ascii_lowercase();
        if lower.is_empty() {
            return Err("host rule is empty".into());
        }

        if let Some(inner) = lower.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            return match inner.parse::<std::net::Ipv6Addr>() {
                Ok(addr) => Ok(HostRule::Exact(addr.to_string())),
                Err(_) => Err(format!("`{text}` is not a valid IPv6 address")),
            };
        }
        if let Ok(addr) = lower.parse::<std::net::Ipv6Addr>() {
            return Ok(HostRule::Exact(addr.to_string()));
        }
        if lower.contains(':') {
            return Err(format!(
                "`{text}` contains a port; host rules match names without ports"
            ));
        }

        let rule = if let Some(rest) = lower.strip_prefix("*.") {
            HostRule::Suffix(format!(".{rest}"))
        } else if let Some(rest) = lower.strip_suffix(".*") {
            HostRule::Prefix(format!("{rest}."))
        } else if lower.starts_with('.') {
            HostRule::Suffix(lower.clone())
        } else if lower.ends_with('.') {
            HostRule::Prefix(lower.clone())
        } else {
            HostRule::Exact(lower.clone())
        };

        let name = match &rule {
            HostRule::Exact(name) | HostRule::Prefix(name) | HostRule::Suffix(name) => name,
            HostRule::Default => unreachable!("handled above"),
        };
        let core = name.trim_matches('.');
        if core.is_empty() || (name.starts_with('.') && name.ends_with('.')) {
            return Err(format!(
                "`{text}` is neither a name, a prefix ending in `.`, nor a suffix starting with `.`"
            ));
        }
        if core.contains("..") || !core.bytes().all(is_host_char) {
            return Err(format!(
                "`{text}` contains characters a host name cannot have; use letters, digits, `-`, `.` and `_`"
            ));
        }
        if name.len() > MAX_HOST_LEN {
            return Err(format!("`{text}` is longer than {MAX_HOST_LEN} characters"));
        }
        Ok(rule)
    }
}

/// The error for a request host that cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHost;

/// A normalised host name held on the stack.
pub struct HostKey {
    buf: [u8; MAX_HOST_LEN],
    len: usize,
}

impl HostKey {
    pub fn as_str(&self) -> &str {
        // The buffer only ever receives bytes checked by `is_host_char` or IPv6 digits,
        // which are ASCII.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    fn from_lowercased(bytes: &[u8]) -> Result<HostKey, InvalidHost> {
        if bytes.len() > MAX_HOST_LEN {
            return Err(InvalidHost);
        }
        let mut key = HostKey {
            buf: [0; MAX_HOST_LEN],
            len: bytes.len(),
        };
        for (slot, &byte) in key.buf.iter_mut().zip(bytes) {
            *slot = byte.to_ascii_lowercase();
        }
        Ok(key)
    }
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_port(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= 5 && bytes.iter().all(u8::is_ascii_digit)
}

/// Normalises a `Host` header value or URI authority (RFC 9110 section 7.2).
///
/// The result is lower case, without the port, without IPv6 brackets and without one
/// trailing dot. An empty value gives an empty key, which only the default rule matches.
pub fn normalize_host(raw: &[u8]) -> Result<HostKey, InvalidHost> {
    if let Some(rest) = raw.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']').ok_or(InvalidHost)?;
        let (literal, after) = (&rest[..close], &rest[close + 1..]);
        let port_ok = after.is_empty() || after.strip_prefix(b":").is_some_and(is_port);
        let literal_ok =
            !literal.is_empty() && literal.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !port_ok || !literal_ok {
            return Err(InvalidHost);
        }
        // Canonical text form, so `[0:0::1]` and `[::1]` match the same rule.
        let text = std::str::from_utf8(literal).map_err(|_| InvalidHost)?;
        let addr: std::net::Ipv6Addr = text.parse().map_err(|_| InvalidHost)?;
        let mut canonical = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut canonical[..]);
        std::io::Write::write_fmt(&mut cursor, format_args!("{addr}")).map_err(|_| InvalidHost)?;
        let len = cursor.position() as usize;
        return HostKey::from_lowercased(&canonical[..len]);
    }

    let name = match raw.iter().rposition(|&b| b == b':') {
        Some(colon) => {
            if !is_port(&raw[colon + 1..]) {
                return Err(InvalidHost);
            }
            &raw[..colon]
        }
        None => raw,
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if !name.iter().copied().all(is_host_char) || name.starts_with(b".") {
        return Err(InvalidHost);
    }
    HostKey::from_lowercased(name)
}

/// The routing table of one snapshot: rules point at route indices.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, usize>,
    aliases: HashMap<Box<str>, usize>,
    /// Prefix rules, longest first.
    prefixes: Vec<(Box<str>, usize)>,
    /// Suffix rules, longest first.
    suffixes: Vec<(Box<str>, usize)>,
    default: Option<usize>,
}

/// Returns the `www.` alias of an exact host name, if it has one.
///
/// `example.com` gains `www.example.com` and `www.example.com` gains `example.com`.
/// IP addresses and single-label names get no alias.
pub fn www_alias(name: &str) -> Option<String> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    match name.strip_prefix("www.") {
        Some(bare) if bare.contains('.') => Some(bare.to_owned()),
        Some(_) => None,
        None if name.contains('.') => Some(format!("www.{name}")),
        None => None,
    }
}

impl Router {
    /// Builds the table from each route's rules, given in route order.
    ///
    /// Rules must be free of duplicates; the config validation rejects them.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a [HostRule]>) -> Router {
        let mut router = Router::default();
        for (index, rules) in routes.into_iter().enumerate() {
            for rule in rules {
                match rule {
                    HostRule::Exact(name) => {
                        router.exact.insert(name.as_str().into(), index);
                        if let Some(alias) = www_alias(name) {
                            router.aliases.entry(alias.into()).or_insert(index);
                        }
                    }
                    HostRule::Prefix(prefix) => router.prefixes.push((prefix.as_str().into(), index)),
                    HostRule::Suffix(suffix) => router.suffixes.push((suffix.as_str().into(), index)),
                    HostRule::Default => router.default = Some(index),
                }
            }
        }
        router
            .prefixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        router
            .suffixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        router
    }

    /// Returns the index of the route for a normalised host.
    pub fn route(&self, host: &str) -> Option<usize> {
        if !host.is_empty() {
            if let Some(&index) = self.exact.get(host) {
                return Some(index);
            }
            if let Some((_, index)) = self.prefixes.iter().find(|(prefix, _)| host.starts_with(&**prefix)) {
                return Some(*index);
            }
            if let Some((_, index)) = self.suffixes.iter().find(|(suffix, _)| host.ends_with(&**suffix)) {
                return Some(*index);
            }
            if let Some(&index) = self.aliases.get(host) {
                return Some(index);
            }
        }
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(raw: &str) -> Result<String, InvalidHost> {
        normalize_host(raw.as_bytes()).map(|key| key.as_str().to_owned())
    }

    #[test]
    fn normalize_strips_case_port_and_dot() {
        assert_eq!(normalized("API.Example.COM").unwrap(), "api.example.com");
        assert_eq!(normalized("api.example.com:8080").unwrap(), "api.example.com");
        assert_eq!(normalized("example.com.").unwrap(), "example.com");
        assert_eq!(normalized("example.com.:443").unwrap(), "example.com");
        assert_eq!(normalized("").unwrap(), "");
    }

    #[test]
    fn normalize_ipv6_literals() {
        assert_eq!(normalized("[::1]:8080").unwrap(), "::1");
        assert_eq!(normalized("[0:0::1]").unwrap(), "::1");
        assert_eq!(normalized("[FE80::1]").unwrap(), "fe80::1");
        assert_eq!(normalized("127.0.0.1:80").unwrap(), "127.0.0.1");
    }

    #[test]
    fn normalize_rejects_malformed_hosts() {
        for raw in [
            "a b",
            "a/b",
            "::1",
            "[::1",
            "[::1]x",
            "host:",
            "host:abc",
            "host:123456",
            ".lead",
            "a..b\0",
        ] {
            assert!(normalized(raw).is_err(), "{raw:?} should be invalid");
        }
        assert!(normalized(&"a".repeat(300)).is_err());
    }

    #[test]
    fn parse_rule_kinds() {
        assert_eq!(
            HostRule::parse("API.example.com").unwrap(),
            HostRule::Exact("api.example.com".into())
        );
        assert_eq!(HostRule::parse("alogin.").unwrap(), HostRule::Prefix("alogin.".into()));
        assert_eq!(HostRule::parse("alogin.*").unwrap(), HostRule::Prefix("alogin.".into()));
        assert_eq!(
            HostRule::parse(".example.com").unwrap(),
            HostRule::Suffix(".example.com".into())
        );
        assert_eq!(
            HostRule::parse("*.example.com").unwrap(),
            HostRule::Suffix(".example.com".into())
        );
        assert_eq!(HostRule::parse("Default").unwrap(), HostRule::Default);
        assert_eq!(HostRule::parse("[::1]").unwrap(), HostRule::Exact("::1".into()));
    }

    #[test]
    fn parse_rule_rejects_bad_rules() {
        for text in ["", ".", "..", ".a.", "a b", "api.example.com:80", "a..b", "[zz]"] {
            assert!(HostRule::parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    fn router(rules: &[&[&str]]) -> Router {
        let parsed: Vec<Vec<HostRule>> = rules
            .iter()
            .map(|list| list.iter().map(|text| HostRule::parse(text).unwrap()).collect())
            .collect();
        Router::new(parsed.iter().map(Vec::as_slice))
    }

    #[test]
    fn route_precedence_is_exact_prefix_suffix_alias_default() {
        let table = router(&[
            &["api.example.com"], // 0
            &["api."],            // 1
            &["api.ex"],          // 2: exact, so not a prefix
            &[".example.com"],    // 3
            &[".b.example.com"],  // 4
            &["example.org"],     // 5
            &["www."],            // 6
            &["default"],         // 7
        ]);
        assert_eq!(table.route("api.example.com"), Some(0));
        assert_eq!(table.route("api.example.net"), Some(1));
        assert_eq!(table.route("x.example.com"), Some(3));
        assert_eq!(table.route("a.b.example.com"), Some(4));
        assert_eq!(table.route("example.com"), Some(7));
        assert_eq!(
            table.route("www.example.org"),
            Some(6),
            "an explicit prefix beats an alias"
        );
        assert_eq!(table.route("unknown.test"), Some(7));
        assert_eq!(table.route(""), Some(7));
    }

    #[test]
    fn longest_prefix_wins() {
        let table = router(&[&["a."], &["a.b."], &["a.b.c."]]);
        assert_eq!(table.route("a.x"), Some(0));
        assert_eq!(table.route("a.b.x"), Some(1));
        assert_eq!(table.route("a.b.c.x"), Some(2));
    }

    #[test]
    fn www_alias_both_ways_without_stripping_letters() {
        let table = router(&[&["web.com"], &["www.wiki.org"]]);
        assert_eq!(table.route("www.web.com"), Some(0));
        assert_eq!(table.route("wiki.org"), Some(1));
        assert_eq!(table.route("eb.com"), None, "no letters are stripped from names");
        assert_eq!(table.route("iki.org"), None);
    }

    #[test]
    fn explicit_exact_beats_alias() {
        let table = router(&[&["example.com"], &["www.example.com"]]);
        assert_eq!(table.route("example.com"), Some(0));
        assert_eq!(table.route("www.example.com"), Some(1));
    }

    #[test]
    fn no_match_without_default() {
        let table = router(&[&["a.test"]]);
        assert_eq!(table.route("b.test"), None);
        assert_eq!(table.route(""), None);
    }

    #[test]
    fn alias_rules() {
        assert_eq!(www_alias("example.com").as_deref(), Some("www.example.com"));
        assert_eq!(www_alias("www.example.com").as_deref(), Some("example.com"));
        assert_eq!(www_alias("www.com"), None);
        assert_eq!(www_alias("localhost"), None);
        assert_eq!(www_alias("127.0.0.1"), None);
    }
}
