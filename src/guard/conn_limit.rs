//! limitMaxConn: a cap on open client connections over all listeners together.
//!
//! Every accepted connection takes a slot and registers itself; dropping the slot, when
//! the socket closes, frees both. Requests never touch the registry.
//!
//! When the cap is reached, a new connection makes room the way nginx does under
//! pressure: it asks the keep-alive connection that has been idle longest (among up to
//! [`IDLE_SCAN`] registered connections, from a rotating position) to close, and takes
//! its place at once. The open count can then exceed the cap for a moment, by the
//! number of idle connections still closing. When no connection is idle, the new one
//! is rejected: plain HTTP gets 503, and the socket is closed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::connection::Connection;

/// Maximum registered connections examined for an idle one per connection over the cap,
/// so a flood of new connections costs bounded work each.
pub const IDLE_SCAN: usize = 1024;

/// Counts open client connections against the configured cap.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    open: AtomicUsize,
    /// The cap from the current snapshot; 0 means no cap.
    limit: AtomicUsize,
    registry: Mutex<Registry>,
    idle_closed: AtomicU64,
}

/// The open connections, in a slab whose freed places are reused.
#[derive(Debug, Default)]
struct Registry {
    slots: Vec<Option<Arc<Connection>>>,
    free: Vec<usize>,
    /// The position where the next scan for an idle connection starts.
    cursor: usize,
}

impl Registry {
    fn insert(&mut self, conn: Arc<Connection>) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(conn);
                index
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.take().is_some() {
                self.free.push(index);
            }
        }
    }

    /// Asks the longest-idle connection among the next [`IDLE_SCAN`] to close; returns
    /// whether one was found.
    fn close_longest_idle(&mut self) -> bool {
        let len = self.slots.len();
        if len == 0 {
            return false;
        }
        let start = self.cursor % len;
        let scanned = len.min(IDLE_SCAN);
        let mut chosen: Option<(u64, &Arc<Connection>)> = None;
        for offset in 0..scanned {
            let Some(conn) = &self.slots[(start + offset) % len] else {
                continue;
            };
            if let Some(since) = conn.idle_since() {
                if chosen.is_none_or(|(oldest, _)| since < oldest) {
                    chosen = Some((since, conn));
                }
            }
        }
        self.cursor = (start + scanned) % len;

        match chosen {
            Some((_, conn)) => {
                conn.request_close();
                true
            }
            None => false,
        }
    }
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

    /// Returns how many idle connections were closed to make room for new ones.
    pub fn idle_closed(&self) -> u64 {
        self.idle_closed.load(Ordering::Relaxed)
    }

    /// Takes a slot for a new connection, closing an idle connection to make room when
    /// the cap is reached; returns `None` when no room can be made.
    pub fn try_acquire(self: &Arc<Self>, conn: &Arc<Connection>) -> Option<ConnSlot> {
        let limit = self.limit();
        let previous = self.open.fetch_add(1, Ordering::AcqRel);
        let mut registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

        if limit != 0 && previous >= limit {
            if !registry.close_longest_idle() {
                drop(registry);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            self.idle_closed.fetch_add(1, Ordering::Relaxed);
        }

        let index = registry.insert(conn.clone());
        Some(ConnSlot {
            limiter: self.clone(),
            index,
        })
    }

    /// Returns the number of registered connections.
    pub fn registered(&self) -> usize {
        let registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.slots.len() - registry.free.len()
    }
}

/// One occupied connection slot, released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    index: usize,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut registry = self
            .limiter
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.remove(self.index);
        drop(registry);
        self.limiter.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Arc<Connection> {
        let addr = "127.0.0.1:1".parse().unwrap();
        Arc::new(Connection::new(
            addr,
            addr,
            false,
            tokio_util::sync::CancellationToken::new(),
        ))
    }

    fn idle_connection() -> Arc<Connection> {
        let conn = connection();
        conn.request_started(false);
        conn.request_finished();
        conn
    }

    #[test]
    fn cap_rejects_past_limit_and_frees_on_drop() {
        let limiter = Arc::new(ConnLimiter::default());
        limiter.set_limit(2);
        let first = limiter.try_acquire(&connection()).unwrap();
        let _second = limiter.try_acquire(&connection()).unwrap();
        assert!(limiter.try_acquire(&connection()).is_none());
        drop(first);
        assert!(limiter.try_acquire(&connection()).is_some());
        assert_eq!(limiter.registered(), 1, "dropped slots leave the registry");
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = Arc::new(ConnLimiter::default());
        let slots: Vec<_> = (0..100).map(|_| limiter.try_acquire(&connection()).unwrap()).collect();
        assert_eq!(limiter.open(), 100);
        assert_eq!(limiter.registered(), 100);
        drop(slots);
        assert_eq!(limiter.open(), 0);
        assert_eq!(limiter.registered(), 0);
    }

    #[test]
    fn cap_closes_longest_idle_first() {
        let limiter = Arc::new(ConnLimiter::default());
        limiter.set_limit(3);
        let busy = connection();
        busy.request_started(false);
        let older = idle_connection();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let newer = idle_connection();
        let _slots: Vec<_> = [&busy, &older, &newer]
            .iter()
            .map(|conn| limiter.try_acquire(conn).unwrap())
            .collect();

        assert!(limiter.try_acquire(&connection()).is_some());
        assert!(older.close_requested(), "the longest-idle connection must close");
        assert!(!newer.close_requested());
        assert!(!busy.close_requested(), "a busy connection must not close");
        assert_eq!(limiter.idle_closed(), 1);

        assert!(limiter.try_acquire(&connection()).is_some());
        assert!(newer.close_requested());
        assert!(
            limiter.try_acquire(&connection()).is_none(),
            "with nothing idle left, the new connection is rejected"
        );
    }
}
