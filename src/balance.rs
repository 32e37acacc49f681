//! Balancing: the choice of the target that serves a request.
//!
//! Random and round robin walk a weighted schedule of target indices. Round robin keeps
//! one atomic position per pool, shared across reloads so a reload does not restart the
//! rotation. Consistent hashing places each target on a SipHash ring at
//! `VIRTUAL_NODES × weight` points derived from the target's URL, so adding or removing
//! one of N targets moves about 1/N of the keys, all to or from the changed target.
//! Picking never locks or allocates.

use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use siphasher::sip::SipHasher13;

/// Virtual nodes per unit of weight on the consistent-hash ring.
pub const VIRTUAL_NODES: u32 = 160;

/// Fixed SipHash keys, so the ring and key positions stay the same across reloads and
/// restarts: a client keeps its target as long as the target set is unchanged.
const RING_KEY: (u64, u64) = (0x6d69_6e69_6761_7465, 0x7761_7972_696e_6721);

/// The strategy a pool uses to choose a target (`obtainMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Random,
    RoundRobin,
    ConsistentHash,
}

impl Strategy {
    /// Maps minGateway's `obtainMode` number; unset means random.
    pub fn from_obtain_mode(mode: Option<i64>) -> Option<Strategy> {
        match mode {
            None | Some(1) => Some(Strategy::Random),
            Some(2) => Some(Strategy::RoundRobin),
            Some(3) => Some(Strategy::ConsistentHash),
            Some(_) => None,
        }
    }
}

/// Hashes a balancing key with the ring's SipHash keys.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(RING_KEY.0, RING_KEY.1);
    hasher.write(bytes);
    hasher.finish()
}

/// Hashes a client IP address; IPv4-mapped IPv6 addresses hash as their IPv4 form.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_key(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_key(&v4.octets()),
            None => hash_key(&v6.octets()),
        },
    }
}

/// Builds the consistent-hash ring: sorted (point, target index) pairs.
fn build_ring(identities: &[&str], weights: &[u32]) -> Box<[(u64, u32)]> {
    let mut ring = Vec::new();
    let mut label = String::new();
    for (index, (identity, weight)) in identities.iter().zip(weights).enumerate() {
        for replica in 0..VIRTUAL_NODES * weight {
            label.clear();
            label.push_str(identity);
            label.push('#');
            label.push_str(&replica.to_string());
            ring.push((hash_key(label.as_bytes()), index as u32));
        }
    }
    ring.sort_unstable();
    ring.dedup_by_key(|(point, _)| *point);
    ring.into_boxed_slice()
}

/// Interleaves target indices by weight (smooth weighted round robin, as nginx does), so
/// weights 5:1:1 give `a a b a c a a` rather than `a a a a a b c`.
fn build_schedule(weights: &[u32]) -> Box<[u32]> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (slot, &weight) in current.iter_mut().zip(weights) {
            *slot += i64::from(weight);
        }
        let best = (0..weights.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule.into_boxed_slice()
}

/// The balancer of one pool in one snapshot.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    schedule: Box<[u32]>,
    ring: Box<[(u64, u32)]>,
    /// Round-robin position; the same `Arc` is handed to every snapshot of this pool.
    position: Arc<AtomicUsize>,
    targets: usize,
}

impl Balancer {
    /// Builds a balancer over targets named by `identities` (their URLs) with `weights`.
    pub fn new(strategy: Strategy, identities: &[&str], weights: &[u32], position: Arc<AtomicUsize>) -> Balancer {
        let ring = match strategy {
            Strategy::ConsistentHash => build_ring(identities, weights),
            _ => Box::default(),
        };
        Balancer {
            strategy,
            schedule: build_schedule(weights),
            ring,
            position,
            targets: identities.len(),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks a target index. `key` is the balancing hash (used by consistent hashing
    /// only); `available` filters out targets that are down or already tried.
    ///
    /// When the first choice is not available the next one in schedule or ring order
    /// is taken, so the load of a failed target spreads in a stable way. Returns `None`
    /// when no target is available.
    pub fn pick(&self, key: u64, available: impl Fn(usize) -> bool) -> Option<usize> {
        if self.targets == 0 {
            return None;
        }
        match self.strategy {
            Strategy::Random => {
                let start = fastrand::usize(..self.schedule.len());
                self.walk_schedule(start, &available)
            }
            Strategy::RoundRobin => {
                let start = self.position.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
                self.walk_schedule(start, &available)
            }
            Strategy::ConsistentHash => self.walk_ring(key, &available),
        }
    }

    fn walk_schedule(&self, start: usize, available: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        (0..len)
            .map(|step| self.schedule[(start + step) % len] as usize)
            .find(|&index| available(index))
    }

    fn walk_ring(&self, key: u64, available: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.ring.len();
        let start = self.ring.partition_point(|&(point, _)| point < key);
        (0..len)
            .map(|step| self.ring[(start + step) % len].1 as usize)
            .find(|&index| available(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(strategy: Strategy, names: &[&str]) -> Balancer {
        let weights = vec![1; names.len()];
        Balancer::new(strategy, names, &weights, Arc::default())
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let pool = balancer(Strategy::RoundRobin, &["a", "b", "c"]);
        let picks: Vec<usize> = (0..6).map(|_| pool.pick(0, |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_unavailable() {
        let pool = balancer(Strategy::RoundRobin, &["a", "b", "c"]);
        let picks: Vec<usize> = (0..4).map(|_| pool.pick(0, |i| i != 1).unwrap()).collect();
        assert_eq!(picks, [0, 2, 2, 0]);
        assert_eq!(pool.pick(0, |_| false), None);
    }

    #[test]
    fn schedule_interleaves_weights() {
        assert_eq!(&*build_schedule(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*build_schedule(&[1, 1]), &[0, 1]);
        assert_eq!(&*build_schedule(&[2, 1]), &[0, 1, 0]);
    }

    #[test]
    fn random_covers_every_target() {
        let pool = balancer(Strategy::Random, &["a", "b", "c"]);
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            seen[pool.pick(0, |_| true).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&count| count > 800), "{seen:?}");
    }

    #[test]
    fn ring_has_virtual_nodes_per_target() {
        let pool = balancer(Strategy::ConsistentHash, &["http://a", "http://b"]);
        assert_eq!(pool.ring.len(), 2 * VIRTUAL_NODES as usize);
    }

    #[test]
    fn hash_is_stable_and_moves_a_fifth() {
        let four = [
            "http://10.0.0.1",
            "http://10.0.0.2",
            "http://10.0.0.3",
            "http://10.0.0.4",
        ];
        let five = [
            "http://10.0.0.1",
            "http://10.0.0.2",
            "http://10.0.0.3",
            "http://10.0.0.4",
            "http://10.0.0.5",
        ];
        let before = balancer(Strategy::ConsistentHash, &four);
        let after = balancer(Strategy::ConsistentHash, &five);
        let again = balancer(Strategy::ConsistentHash, &four);

        let mut moved = 0;
        for n in 0..10_000u32 {
            let key = hash_key(&n.to_be_bytes());
            let old = before.pick(key, |_| true).unwrap();
            assert_eq!(again.pick(key, |_| true).unwrap(), old, "rebuilding changed a key");
            let new = after.pick(key, |_| true).unwrap();
            if new != old {
                moved += 1;
                assert_eq!(new, 4, "a moved key must move to the new target");
            }
        }
        assert!((1000..=3000).contains(&moved), "moved {moved} of 10000");
    }

    #[test]
    fn hash_falls_over_to_next_target_on_ring() {
        let pool = balancer(Strategy::ConsistentHash, &["http://a", "http://b", "http://c"]);
        for n in 0..100u32 {
            let key = hash_key(&n.to_be_bytes());
            let first = pool.pick(key, |_| true).unwrap();
            let second = pool.pick(key, |i| i != first).unwrap();
            assert_ne!(first, second);
            assert_eq!(
                pool.pick(key, |i| i != first).unwrap(),
                second,
                "fallback must be stable"
            );
        }
    }
}
