//! Lists of IP addresses and CIDR blocks, such as `whiteList` and `blackList`.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::client_ip::canonical_ip;

/// A list of networks, split by address family so a lookup only scans its own family.
#[derive(Debug, Clone, Default)]
pub struct IpList {
    v4: Box<[ipnet::Ipv4Net]>,
    v6: Box<[ipnet::Ipv6Net]>,
}

impl IpList {
    /// Builds a list; an IPv4-mapped IPv6 block such as `::ffff:192.0.2.0/120` is
    /// stored as its IPv4 block, because client addresses are compared in that form.
    pub fn new(networks: &[IpNet]) -> IpList {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for network in networks {
            match network {
                IpNet::V4(net) => v4.push(*net),
                IpNet::V6(net) => match net.addr().to_ipv4_mapped() {
                    Some(addr) if net.prefix_len() >= 96 => {
                        if let Ok(mapped) = ipnet::Ipv4Net::new(addr, net.prefix_len() - 96) {
                            v4.push(mapped);
                        }
                    }
                    _ => v6.push(*net),
                },
            }
        }
        IpList {
            v4: v4.into(),
            v6: v6.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical_ip(ip) {
            IpAddr::V4(ip) => self.v4.iter().any(|net| net.contains(&ip)),
            IpAddr::V6(ip) => self.v6.iter().any(|net| net.contains(&ip)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> IpList {
        let networks: Vec<IpNet> = entries.iter().map(|entry| entry.parse().unwrap()).collect();
        IpList::new(&networks)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn matches_addresses_and_blocks() {
        let list = list(&["192.0.2.7/32", "198.51.100.0/24", "2001:db8::/32"]);
        assert!(list.contains(ip("192.0.2.7")));
        assert!(!list.contains(ip("192.0.2.8")));
        assert!(list.contains(ip("198.51.100.200")));
        assert!(list.contains(ip("2001:db8::1")));
        assert!(!list.contains(ip("2001:db9::1")));
    }

    #[test]
    fn mapped_forms_match_ipv4() {
        let list = list(&["::ffff:192.0.2.0/120", "198.51.100.0/24"]);
        assert!(list.contains(ip("192.0.2.9")));
        assert!(list.contains(ip("::ffff:198.51.100.1")));
    }

    #[test]
    fn empty_list_matches_nothing() {
        let list = list(&[]);
        assert!(list.is_empty());
        assert!(!list.contains(ip("127.0.0.1")));
    }
}
