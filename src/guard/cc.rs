//! CC defence (`[ccDefense]`): bans a client IP that sends more than `count` requests
//! within `timeDuration` ms, for `blackTime` seconds.
//!
//! Each IP has one fixed window, so its state is a few integers however fast it sends:
//! - The first request counted for an IP opens a window of timeDuration ms and counts 1.
//!   Requests before the window's end add 1 each; the request that makes the count
//!   `count + 1` starts the ban and gets 403.
//! - The first request at or after the window's end opens a new window. Windows are not
//!   aligned to the clock and do not slide, so up to `2 × count` requests can pass in a
//!   span shorter than timeDuration: `count` at the end of one window and `count` at
//!   the start of the next.
//! - A banned IP gets 403 for every request, and those requests count nothing, so the
//!   ban ends `blackTime` after the request that started it. The next request then opens
//!   a new window.
//! - blackList addresses get 403 without being counted; whiteList addresses are neither
//!   counted nor banned. blackList wins when an address is in both.
//!
//! NOTE: the table evicts its least recently used entries when full, banned or not, so
//! a flood of more than `maxEntries` new addresses can end older bans early.
//!
//! Windows and bans live in [`CcState`], outside the snapshot, so they survive reloads.
//! The settings come from each request's snapshot, so changed settings apply to the next
//! request.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::Rejection;
use super::ip_list::IpList;
use super::table::Table;
use crate::client_ip::canonical_ip;
use crate::clock;
use crate::config::CcDefense;

/// The enforced form of `[ccDefense]`, built into each snapshot.
#[derive(Debug, Clone)]
pub struct CcSettings {
    pub window_ms: u64,
    /// Requests allowed per window.
    pub count: u32,
    pub ban_ms: u64,
    pub white_list: IpList,
    pub black_list: IpList,
    pub max_entries: usize,
}

impl CcSettings {
    /// Returns the settings of an enabled `[ccDefense]`, or `None` when it is disabled.
    pub fn from_config(config: &CcDefense) -> Option<CcSettings> {
        config.enable.then(|| CcSettings {
            window_ms: clock::duration_ms(config.window),
            count: config.count,
            ban_ms: clock::duration_ms(config.ban),
            white_list: IpList::new(&config.white_list),
            black_list: IpList::new(&config.black_list),
            max_entries: config.max_entries,
        })
    }
}

/// The window and ban of one client IP, in clock milliseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct CcEntry {
    window_start: u64,
    /// Requests counted in the current window; 0 means no window is open.
    count: u32,
    /// The ban ends at this time; 0 or a past time means not banned.
    banned_until: u64,
}

impl CcEntry {
    fn is_expired(&self, now: u64, window_ms: u64) -> bool {
        self.banned_until <= now && (self.count == 0 || now >= self.window_start.saturating_add(window_ms))
    }
}

/// A client IP that CC defence has banned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ban {
    pub ip: IpAddr,
    /// Time left until the ban ends.
    pub remaining: Duration,
    pub expires_at: SystemTime,
}

/// The effect of one request on its IP's entry.
enum Outcome {
    Counted,
    Banned,
    /// This request started the ban.
    BanStarted {
        requests: u32,
    },
}

/// The CC windows and bans of every tracked client IP.
#[derive(Default)]
pub struct CcState {
    table: Table<CcEntry>,
    /// Limits ban log lines, because a flood from many addresses starts many bans.
    ban_log: LogLimiter,
}

/// Admits [`LOG_LINES_PER_SECOND`] log lines per second and counts the rest. Threads
/// that race at the start of a second can let a few more lines through.
#[derive(Debug, Default)]
struct LogLimiter {
    /// The clock second the count belongs to.
    second: AtomicU64,
    lines: AtomicU64,
    suppressed: AtomicU64,
}

/// Ban log lines written per second; later bans in that second are counted, and the
/// count is reported with the next line written.
const LOG_LINES_PER_SECOND: u64 = 10;

impl LogLimiter {
    /// Returns `Some(suppressed)` when a line may be written, with the number of lines
    /// suppressed since the last one, or `None` when this line must be suppressed.
    fn admit(&self, now_ms: u64) -> Option<u64> {
        let second = now_ms / 1000;
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < LOG_LINES_PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Returns the table key of an IP: its IPv6 form, with IPv4 mapped into `::ffff:0:0/96`.
fn ip_key(ip: IpAddr) -> u128 {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn ip_of_key(key: u128) -> IpAddr {
    canonical_ip(IpAddr::V6(Ipv6Addr::from(key)))
}

impl CcState {
    /// Counts a request from `ip` and returns whether it may proceed.
    pub fn check(&self, settings: &CcSettings, ip: IpAddr, now: u64) -> Result<(), Rejection> {
        if settings.black_list.contains(ip) {
            return Err(Rejection::Blacklisted);
        }
        if settings.white_list.contains(ip) {
            return Ok(());
        }

        let window_ms = settings.window_ms;
        let outcome = self.table.update(
            ip_key(ip),
            settings.max_entries,
            |entry| entry.is_expired(now, window_ms),
            |entry| {
                if entry.banned_until > now {
                    return Outcome::Banned;
                }
                if entry.count == 0 || now >= entry.window_start.saturating_add(window_ms) {
                    entry.window_start = now;
                    entry.count = 1;
                } else {
                    entry.count = entry.count.saturating_add(1);
                }
                if entry.count <= settings.count {
                    return Outcome::Counted;
                }
                let requests = entry.count;
                entry.banned_until = now.saturating_add(settings.ban_ms);
                entry.count = 0;
                Outcome::BanStarted { requests }
            },
        );

        match outcome {
            Outcome::Counted => Ok(()),
            Outcome::Banned => Err(Rejection::Banned),
            Outcome::BanStarted { requests } => {
                if let Some(suppressed) = self.ban_log.admit(now) {
                    tracing::warn!(
                        client = %canonical_ip(ip),
                        reason = "cc_defense",
                        suppressed,
                        "client banned for {} s: {requests} requests within {window_ms} ms, more than the {} allowed",
                        settings.ban_ms / 1000,
                        settings.count,
                    );
                }
                Err(Rejection::Banned)
            }
        }
    }

    /// Returns the IPs banned now, soonest expiry first.
    pub fn bans(&self) -> Vec<Ban> {
        let now = clock::now_ms();
        let wall_now = SystemTime::now();
        let mut bans = Vec::new();
        self.table.for_each(|key, entry| {
            if entry.banned_until > now {
                let remaining = Duration::from_millis(entry.banned_until - now);
                bans.push(Ban {
                    ip: ip_of_key(key),
                    remaining,
                    expires_at: wall_now + remaining,
                });
            }
        });
        bans.sort_by_key(|ban| (ban.remaining, ban.ip));
        bans
    }

    /// Ends the ban of `ip` and clears its window; returns whether it was banned.
    pub fn unban(&self, ip: IpAddr) -> bool {
        let now = clock::now_ms();
        self.table
            .update_existing(ip_key(ip), |entry| {
                let banned = entry.banned_until > now;
                *entry = CcEntry::default();
                banned
            })
            .unwrap_or(false)
    }

    /// Returns the number of tracked IPs, including expired entries not yet dropped.
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

    fn settings(count: u32, window_ms: u64, ban_ms: u64) -> CcSettings {
        CcSettings {
            window_ms,
            count,
            ban_ms,
            white_list: IpList::new(&["127.0.0.64/26".parse().unwrap()]),
            black_list: IpList::new(&["127.0.0.3/32".parse().unwrap()]),
            max_entries: 1000,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn request_past_count_starts_ban() {
        let cc = CcState::default();
        let settings = settings(5, 1000, 10_000);
        for n in 0..5 {
            assert_eq!(
                cc.check(&settings, ip("127.0.0.1"), 100 + n),
                Ok(()),
                "request {}",
                n + 1
            );
        }
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 105), Err(Rejection::Banned));
        assert_eq!(
            cc.check(&settings, ip("127.0.0.2"), 105),
            Ok(()),
            "another IP is not banned"
        );
    }

    #[test]
    fn ban_ends_after_ban_time() {
        let cc = CcState::default();
        let settings = settings(1, 1000, 5000);
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 100), Ok(()));
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 200), Err(Rejection::Banned));
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 5199), Err(Rejection::Banned));
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 5200), Ok(()));
    }

    #[test]
    fn new_window_after_window_end() {
        let cc = CcState::default();
        let settings = settings(2, 1000, 5000);
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 100), Ok(()));
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 1099), Ok(()));
        // The window opened at 100 ends at 1100: this request opens the next one.
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 1100), Ok(()));
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 1101), Ok(()));
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 1102), Err(Rejection::Banned));
    }

    #[test]
    fn lists_override_counting() {
        let cc = CcState::default();
        let settings = settings(1, 1000, 5000);
        for now in 0..10 {
            assert_eq!(cc.check(&settings, ip("127.0.0.65"), 100 + now), Ok(()));
        }
        assert_eq!(cc.check(&settings, ip("127.0.0.3"), 100), Err(Rejection::Blacklisted));
        assert!(cc.is_empty(), "listed addresses must not be tracked");
    }

    #[test]
    fn ban_survives_changed_settings() {
        let cc = CcState::default();
        let before = settings(1, 1000, 60_000);
        assert_eq!(cc.check(&before, ip("127.0.0.1"), 100), Ok(()));
        assert_eq!(cc.check(&before, ip("127.0.0.1"), 101), Err(Rejection::Banned));

        let after = settings(1000, 5000, 1000);
        assert_eq!(cc.check(&after, ip("127.0.0.1"), 102), Err(Rejection::Banned));
    }

    #[test]
    fn changed_count_applies_to_next_request() {
        let cc = CcState::default();
        assert_eq!(cc.check(&settings(10, 1000, 5000), ip("127.0.0.1"), 100), Ok(()));
        assert_eq!(cc.check(&settings(10, 1000, 5000), ip("127.0.0.1"), 101), Ok(()));
        assert_eq!(
            cc.check(&settings(2, 1000, 5000), ip("127.0.0.1"), 102),
            Err(Rejection::Banned)
        );
    }

    #[test]
    fn bans_lists_and_unban_clears() {
        let cc = CcState::default();
        let settings = settings(1, 60_000, 60_000);
        let now = clock::now_ms();
        assert_eq!(cc.check(&settings, ip("2001:db8::1"), now), Ok(()));
        assert_eq!(cc.check(&settings, ip("2001:db8::1"), now), Err(Rejection::Banned));
        assert_eq!(cc.check(&settings, ip("127.0.0.9"), now), Ok(()));

        let bans = cc.bans();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].ip, ip("2001:db8::1"));
        assert!(bans[0].remaining > Duration::from_secs(50));

        assert!(cc.unban(ip("2001:db8::1")));
        assert!(!cc.unban(ip("127.0.0.9")), "an IP that was not banned");
        assert!(cc.bans().is_empty());
        assert_eq!(cc.check(&settings, ip("2001:db8::1"), now), Ok(()));
    }

    #[test]
    fn ban_log_lines_are_limited_per_second() {
        let limiter = LogLimiter::default();
        let admitted = (0..25).filter(|_| limiter.admit(5_000).is_some()).count();
        assert_eq!(admitted as u64, LOG_LINES_PER_SECOND);
        assert_eq!(
            limiter.admit(6_000),
            Some(15),
            "the next second reports what was suppressed"
        );
        assert_eq!(limiter.admit(6_001), Some(0));
    }

    #[test]
    fn mapped_and_plain_ipv4_share_an_entry() {
        let cc = CcState::default();
        let settings = settings(1, 1000, 5000);
        assert_eq!(cc.check(&settings, ip("127.0.0.1"), 100), Ok(()));
        assert_eq!(cc.check(&settings, ip("::ffff:127.0.0.1"), 101), Err(Rejection::Banned));
        assert_eq!(ip_of_key(ip_key(ip("127.0.0.1"))), ip("127.0.0.1"));
    }
}
