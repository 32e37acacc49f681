//! Header rewriting between client and upstream.
//!
//! Hop-by-hop headers (RFC 9110 section 7.6.1) are removed in both directions: the
//! fixed list below plus every name listed in any `Connection` line. An upgrade keeps
//! its `Upgrade` header and `Connection: upgrade`, since the handshake must reach the
//! other side.

use std::io::Write;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::client_ip::ClientAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// Returns whether a `Connection` header lists `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Returns whether a request is an upgrade request, such as a WebSocket handshake.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Bits for the hop-by-hop headers that are hop-by-hop by name alone.
const CONNECTION_BIT: u8 = 1;
const UPGRADE_BIT: u8 = 1 << 1;

/// Returns the bit of a header that is hop-by-hop by name alone, or 0.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        CONNECTION_BIT
    } else if name == header::UPGRADE {
        UPGRADE_BIT
    } else if name == header::TE {
        1 << 2
    } else if name == header::TRAILER {
        1 << 3
    } else if name == header::TRANSFER_ENCODING {
        1 << 4
    } else if name == KEEP_ALIVE {
        1 << 5
    } else if name == PROXY_CONNECTION {
        1 << 6
    } else {
        0
    }
}

/// Removes hop-by-hop headers; with `keep_upgrade` the upgrade handshake stays.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which hop-by-hop headers are present, so only
    // those are looked up and removed. Most messages carry none or only `Connection`.
    let present = headers.keys().fold(0u8, |bits, name| bits | hop_by_hop_bit(name));
    if present == 0 && !keep_upgrade {
        return;
    }

    if present & CONNECTION_BIT != 0 {
        let mut listed: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(text) = value.to_str() else { continue };
            for token in text.split(',').map(str::trim) {
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("upgrade")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }

    for (bit, name) in [
        (1 << 2, &header::TE),
        (1 << 3, &header::TRAILER),
        (1 << 4, &header::TRANSFER_ENCODING),
        (1 << 5, &KEEP_ALIVE),
        (1 << 6, &PROXY_CONNECTION),
    ] {
        if present & bit != 0 {
            headers.remove(name);
        }
    }

    if keep_upgrade {
        headers.insert(header::CONNECTION, UPGRADE.clone());
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Formats an IP address as a header value.
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}

/// The forwarding headers of one request, written after the request's own fields.
///
/// They replace any values the client sent. X-Forwarded-For is rebuilt from the verified
/// chain plus the peer, so a client cannot choose its first element. X-Real-IP is the
/// resolved client. Writing them at encoding time, rather than inserting them into the
/// request's header map, saves four map insertions and often a map resize per request.
#[derive(Debug)]
pub struct Forwarding {
    pub forwarded_for: HeaderValue,
    pub real_ip: HeaderValue,
    pub tls: bool,
    pub host: Option<HeaderValue>,
}

impl Forwarding {
    /// Builds the headers for `client`. `peer` is the peer's address as header text,
    /// which a connection formats once for all its requests. With no verified chain it
    /// serves both addresses.
    pub fn new(client: &ClientAddr, peer: &HeaderValue, tls: bool, host: Option<HeaderValue>) -> Forwarding {
        let (forwarded_for, real_ip) = if client.chain.is_empty() {
            (peer.clone(), peer.clone())
        } else {
            let mut text = String::with_capacity(16 * (client.chain.len() + 1));
            for ip in &client.chain {
                let _ = std::fmt::Write::write_fmt(&mut text, format_args!("{ip}, "));
            }
            text.push_str(peer.to_str().unwrap_or_default());
            let chain = HeaderValue::from_str(&text).expect("IP addresses are valid header text");
            (chain, ip_header(client.ip))
        };
        Forwarding {
            forwarded_for,
            real_ip,
            tls,
            host,
        }
    }

    /// Returns whether `name` is one of the headers this replaces.
    pub fn replaces(name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR || name == X_REAL_IP || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST
    }

    /// Returns the value sent upstream for one of the replaced headers.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        if name == X_FORWARDED_FOR {
            Some(&self.forwarded_for)
        } else if name == X_REAL_IP {
            Some(&self.real_ip)
        } else if name == X_FORWARDED_PROTO {
            Some(if self.tls { &HTTPS } else { &HTTP })
        } else if name == X_FORWARDED_HOST {
            self.host.as_ref()
        } else {
            None
        }
    }

    /// Appends the header lines to an HTTP/1.1 head.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }

        line(out, &X_FORWARDED_FOR, &self.forwarded_for);
        line(out, &X_REAL_IP, &self.real_ip);
        line(out, &X_FORWARDED_PROTO, if self.tls { &HTTPS } else { &HTTP });
        if let Some(host) = &self.host {
            line(out, &X_FORWARDED_HOST, host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn removes_names_from_every_connection_line() {
        let mut headers = map(&[
            ("connection", "X-Foo, close"),
            ("connection", "x-bar"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "3"),
        ]);
        remove_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn upgrade_keeps_handshake() {
        let mut headers = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }

    fn encoded(forwarding: &Forwarding) -> String {
        let mut out = Vec::new();
        forwarding.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn forwarding_uses_the_peer_without_a_chain() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let client = ClientAddr {
            ip: peer,
            chain: Vec::new(),
            malformed: false,
        };
        let forwarding = Forwarding::new(
            &client,
            &ip_header(peer),
            false,
            Some(HeaderValue::from_static("a.test")),
        );
        assert_eq!(
            encoded(&forwarding),
            "x-forwarded-for: 127.0.0.1\r\nx-real-ip: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: a.test\r\n"
        );
        assert!(Forwarding::replaces(&HeaderName::from_static("x-real-ip")));
        assert!(!Forwarding::replaces(&header::HOST));
    }

    #[test]
    fn forwarding_keeps_verified_chain() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let client = ClientAddr {
            ip: "203.0.113.7".parse().unwrap(),
            chain: vec!["203.0.113.7".parse().unwrap(), "127.0.0.2".parse().unwrap()],
            malformed: false,
        };
        let forwarding = Forwarding::new(&client, &ip_header(peer), true, None);
        assert_eq!(
            encoded(&forwarding),
            "x-forwarded-for: 203.0.113.7, 127.0.0.2, 127.0.0.1\r\nx-real-ip: 203.0.113.7\r\nx-forwarded-proto: https\r\n"
        );
        assert_eq!(forwarding.get(&X_REAL_IP).unwrap(), "203.0.113.7");
    }
}
