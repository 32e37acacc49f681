//! State that outlives snapshots, keyed by stable names.
//!
//! A snapshot build asks the registry for the round-robin position, health mark and
//! counters of each pool and target by name, and stores the `Arc`s it gets. The request
//! path then reaches that state through the snapshot without touching the registry's
//! mutex, which only snapshot builds and admin reads take.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use crate::metrics::{RouteStats, TargetStats};
use crate::upstream::{ConnectionPool, TargetHealth};

/// A map from names to shared values that new snapshots pick up again.
#[derive(Debug)]
pub struct Keyed<T> {
    entries: Mutex<HashMap<String, Arc<T>>>,
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Default> Keyed<T> {
    /// Returns the value for `key`, creating it on first use.
    pub fn get(&self, key: &str) -> Arc<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(value) = entries.get(key) {
            return value.clone();
        }
        let value = Arc::new(T::default());
        entries.insert(key.to_owned(), value.clone());
        value
    }
}

impl<T> Keyed<T> {
    /// Drops entries whose key is not in `keep`, after a reload removed them.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|key, _| keep(key));
    }

    /// Returns a copy of every entry, for status reports.
    pub fn entries(&self) -> Vec<(String, Arc<T>)> {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut list: Vec<_> = entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

/// Every kind of state carried from one snapshot to the next.
#[derive(Debug, Default)]
pub struct Registry {
    /// Round-robin positions by route label.
    pub positions: Keyed<AtomicUsize>,
    /// Passive health marks by `label target-url`.
    pub health: Keyed<TargetHealth>,
    pub route_stats: Keyed<RouteStats>,
    /// Target counters by `label target-url`.
    pub target_stats: Keyed<TargetStats>,
    /// Idle upstream connections by target authority (`host:port`).
    pub connection_pools: Keyed<ConnectionPool>,
    /// Session ticket keys, the session cache and OCSP staples by certificate fingerprint.
    pub tls: crate::tls::TlsState,
}

/// Returns the registry key of a target within its route.
pub fn target_key(label: &str, url: &str) -> String {
    format!("{label} {url}")
}
