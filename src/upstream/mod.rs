//! Upstream targets, their pools and passive health, and their connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::uri::Authority;

use crate::balance::Balancer;
use crate::clock;
use crate::metrics::TargetStats;

mod chunked;
pub mod http1;
pub mod pool;

pub use pool::{ConnectionPool, TargetAddr};

/// Passive health of one target: failures mark it down for a while.
#[derive(Debug, Default)]
pub struct TargetHealth {
    consecutive_failures: AtomicU32,
    /// Clock time until which the target is down; 0 when it is up.
    down_until: AtomicU64,
}

impl TargetHealth {
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Counts a failed attempt; returns true when this failure marks the target down.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < max_fails {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let until = clock::now_ms() + clock::duration_ms(fail_timeout);
        self.down_until.store(until, Ordering::Relaxed);
        true
    }

    pub fn record_success(&self) {
        // Avoid writing the shared cache line on the common path.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Returns the clock time until which the target is down, or 0.
    pub fn down_until(&self) -> u64 {
        self.down_until.load(Ordering::Relaxed)
    }
}

/// One upstream server of a pool.
#[derive(Debug)]
pub struct Target {
    /// The URL as configured, used in logs and as its identity on the hash ring.
    pub url: Box<str>,
    pub authority: Authority,
    pub addr: TargetAddr,
    /// Path prepended to request paths; empty for none.
    pub path_prefix: Box<str>,
    pub health: Arc<TargetHealth>,
    pub stats: Arc<TargetStats>,
    /// Idle connections to this target's address, shared by every route that uses it.
    pub connections: Arc<ConnectionPool>,
}

/// The targets of one route and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    pub targets: Box<[Target]>,
    pub balancer: Balancer,
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl Pool {
    /// Picks a target that is up and not `excluded`; returns its index.
    pub fn pick(&self, key: u64, excluded: Option<usize>) -> Option<usize> {
        let now = clock::now_ms();
        self.balancer.pick(key, |index| {
            Some(index) != excluded && self.targets[index].health.is_available(now)
        })
    }

    /// Records a failed attempt on a target; returns true when it is now marked down.
    ///
    /// The only target of a pool is never marked down, as in nginx: with nothing to
    /// fall over to, responding 503 for failTimeout would only add to an outage.
    pub fn record_failure(&self, index: usize) -> bool {
        if self.targets.len() == 1 {
            return false;
        }
        self.targets[index]
            .health
            .record_failure(self.max_fails, self.fail_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_marks_down_after_max_fails() {
        let health = TargetHealth::default();
        let now = clock::now_ms();
        assert!(!health.record_failure(2, Duration::from_secs(10)));
        assert!(health.is_available(now));
        assert!(health.record_failure(2, Duration::from_secs(10)));
        assert!(!health.is_available(clock::now_ms()));
        assert!(health.is_available(clock::now_ms() + 11_000));
    }

    #[test]
    fn health_success_resets_failures() {
        let health = TargetHealth::default();
        assert!(!health.record_failure(2, Duration::from_secs(10)));
        health.record_success();
        assert!(!health.record_failure(2, Duration::from_secs(10)));
    }

    #[test]
    fn max_fails_zero_never_marks_down() {
        let health = TargetHealth::default();
        for _ in 0..10 {
            assert!(!health.record_failure(0, Duration::from_secs(10)));
        }
        assert!(health.is_available(clock::now_ms()));
    }
}
