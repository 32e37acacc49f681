//! limitMaxConn: a cap on open client connections over all listeners together.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts open client connections against the configured cap.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    open: AtomicUsize,
    /// The cap from the current snapshot; 0 means no cap.
    limit: AtomicUsize,
}

impl ConnLimiter {
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a slot for a new connection, or returns `None` when the cap is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnSlot> {
        let limit = self.limit();
        let previous = self.open.fetch_add(1, Ordering::AcqRel);
        if limit != 0 && previous >= limit {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnSlot { limiter: self.clone() })
    }
}

/// One occupied connection slot, released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limiter.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_rejects_past_limit_and_frees_on_drop() {
        let limiter = Arc::new(ConnLimiter::default());
        limiter.set_limit(2);
        let first = limiter.try_acquire().unwrap();
        let _second = limiter.try_acquire().unwrap();
        assert!(limiter.try_acquire().is_none());
        drop(first);
        assert!(limiter.try_acquire().is_some());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = Arc::new(ConnLimiter::default());
        let slots: Vec<_> = (0..100).map(|_| limiter.try_acquire().unwrap()).collect();
        assert_eq!(limiter.open(), 100);
        drop(slots);
        assert_eq!(limiter.open(), 0);
    }
}
