//! A monotonic millisecond clock that fits in an atomic.
//!
//! Connection phases, ban expiries and health marks store times as milliseconds since
//! the process started, so they can live in `AtomicU64`s and be compared without locks.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process started, never 0 (0 means "unset" in atomics).
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Converts a clock value back into an `Instant`.
pub fn instant_of(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms.saturating_sub(1))
}

pub fn duration_ms(duration: Duration) -> u64 {
    duration.as_millis().min(u128::from(u64::MAX)) as u64
}
