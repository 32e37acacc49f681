//! Request limits (`[limitReq]`): more than `count` requests for one key within
//! `timeDuration` ms get 429 with Retry-After.
//!
//! The key is the client IP, the request host (normalised, without port) and the URL
//! path as sent (mode 0), plus the query (mode 1). It is stored as a 128-bit keyed
//! SipHash, so an entry has a fixed size whatever the URL's length.
//!
//! Each key has one fixed window:
//! - The first request counted for a key opens a window of timeDuration ms. Requests
//!   1 to `count` in it are admitted. Later requests in it get 429, with Retry-After set
//!   to the seconds left until the window ends, rounded up.
//! - Rejected requests are not counted, so they neither extend nor restart the window:
//!   a client that keeps sending is admitted again as soon as the window ends.
//! - The first request at or after the window's end opens a new window. Windows do not
//!   slide, so up to `2 × count` requests can pass in a span shorter than timeDuration
//!   across a window boundary.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;

use siphasher::sip128::{Hasher128, SipHasher13};

use super::Rejection;
use super::table::Table;
use crate::client_ip::canonical_ip;
use crate::clock;
use crate::config::{LimitReq, LimitReqMode};

/// The enforced form of `[limitReq]`, built into each snapshot.
#[derive(Debug, Clone)]
pub struct LimitReqSettings {
    pub window_ms: u64,
    /// Requests admitted per window for one key.
    pub count: u32,
    pub mode: LimitReqMode,
    pub max_entries: usize,
}

impl LimitReqSettings {
    /// Returns the settings of an enabled `[limitReq]`, or `None` when it is disabled.
    pub fn from_config(config: &LimitReq) -> Option<LimitReqSettings> {
        config.enable.then(|| LimitReqSettings {
            window_ms: clock::duration_ms(config.window),
            count: config.count,
            mode: config.mode,
            max_entries: config.max_entries,
        })
    }
}

/// The window of one key, in clock milliseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct LimitEntry {
    window_start: u64,
    /// Requests admitted in the current window; 0 means no window is open.
    count: u32,
}

/// The request windows of every tracked key.
pub struct LimitReqState {
    table: Table<LimitEntry>,
    /// SipHash keys for request keys, random per process.
    hash_keys: (u64, u64),
}

impl Default for LimitReqState {
    fn default() -> Self {
        let seed = std::collections::hash_map::RandomState::new();
        LimitReqState {
            table: Table::default(),
            hash_keys: (
                std::hash::BuildHasher::hash_one(&seed, 2u8),
                std::hash::BuildHasher::hash_one(&seed, 3u8),
            ),
        }
    }
}

impl LimitReqState {
    /// Hashes the limit key of a request. Each part is written with its length, so
    /// different splits of the same bytes never share a key.
    fn key(&self, mode: LimitReqMode, ip: IpAddr, host: &str, path: &str, query: Option<&str>) -> u128 {
        let mut hasher = SipHasher13::new_with_keys(self.hash_keys.0, self.hash_keys.1);
        match canonical_ip(ip) {
            IpAddr::V4(v4) => hasher.write(&v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => hasher.write(&v6.octets()),
        }
        hasher.write_usize(host.len());
        hasher.write(host.as_bytes());
        hasher.write_usize(path.len());
        hasher.write(path.as_bytes());
        if mode == LimitReqMode::PathAndQuery {
            match query {
                Some(query) => {
                    hasher.write_u8(1);
                    hasher.write_usize(query.len());
                    hasher.write(query.as_bytes());
                }
                None => hasher.write_u8(0),
            }
        }
        hasher.finish128().as_u128()
    }

    /// Counts a request and returns whether it may proceed.
    pub fn check(
        &self,
        settings: &LimitReqSettings,
        ip: IpAddr,
        host: &str,
        path: &str,
        query: Option<&str>,
        now: u64,
    ) -> Result<(), Rejection> {
        let key = self.key(settings.mode, ip, host, path, query);
        let window_ms = settings.window_ms;
        let window_end = self.table.update(
            key,
            settings.max_entries,
            |entry| entry.count == 0 || now >= entry.window_start.saturating_add(window_ms),
            |entry| {
                if entry.count == 0 || now >= entry.window_start.saturating_add(window_ms) {
                    entry.window_start = now;
                    entry.count = 0;
                }
                if entry.count < settings.count {
                    entry.count += 1;
                    return None;
                }
                Some(entry.window_start.saturating_add(window_ms))
            },
        );
        match window_end {
            None => Ok(()),
            Some(end) => Err(Rejection::RateLimited {
                retry_after: Duration::from_millis(end.saturating_sub(now)),
            }),
        }
    }

    /// Returns the number of tracked keys, including expired entries not yet dropped.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: LimitReqMode, count: u32, window_ms: u64) -> LimitReqSettings {
        LimitReqSettings {
            window_ms,
            count,
            mode,
            max_entries: 1000,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn request_past_count_is_limited_until_window_end() {
        let limits = LimitReqState::default();
        let settings = settings(LimitReqMode::Path, 2, 1000);
        let check = |now| limits.check(&settings, ip("127.0.0.1"), "a.test", "/p", None, now);
        assert_eq!(check(100), Ok(()));
        assert_eq!(check(200), Ok(()));
        assert_eq!(
            check(300),
            Err(Rejection::RateLimited {
                retry_after: Duration::from_millis(800)
            })
        );
        assert_eq!(
            check(1099),
            Err(Rejection::RateLimited {
                retry_after: Duration::from_millis(1)
            })
        );
        assert_eq!(check(1100), Ok(()), "rejected requests must not extend the window");
        assert_eq!(check(1101), Ok(()));
        assert!(check(1102).is_err());
    }

    #[test]
    fn mode_0_ignores_query() {
        let limits = LimitReqState::default();
        let settings = settings(LimitReqMode::Path, 1, 1000);
        let check = |path, query| limits.check(&settings, ip("127.0.0.1"), "a.test", path, query, 100);
        assert_eq!(check("/p", Some("x=1")), Ok(()));
        assert!(check("/p", Some("x=2")).is_err());
        assert_eq!(check("/q", Some("x=1")), Ok(()), "another path has its own limit");
    }

    #[test]
    fn mode_1_keys_on_query() {
        let limits = LimitReqState::default();
        let settings = settings(LimitReqMode::PathAndQuery, 1, 1000);
        let check = |query| limits.check(&settings, ip("127.0.0.1"), "a.test", "/p", query, 100);
        assert_eq!(check(Some("x=1")), Ok(()));
        assert!(check(Some("x=1")).is_err());
        assert_eq!(check(Some("x=2")), Ok(()));
        assert_eq!(check(None), Ok(()));
        assert_eq!(check(Some("")), Ok(()), "an empty query differs from none");
    }

    #[test]
    fn key_parts_are_separate() {
        let limits = LimitReqState::default();
        let settings = settings(LimitReqMode::Path, 1, 1000);
        assert_eq!(
            limits.check(&settings, ip("127.0.0.1"), "a.test", "/p", None, 100),
            Ok(())
        );
        assert_eq!(
            limits.check(&settings, ip("127.0.0.1"), "a.tes", "t/p", None, 100),
            Ok(())
        );
        assert_eq!(
            limits.check(&settings, ip("127.0.0.2"), "a.test", "/p", None, 100),
            Ok(())
        );
        assert_eq!(
            limits.check(&settings, ip("127.0.0.1"), "b.test", "/p", None, 100),
            Ok(())
        );
    }
}
