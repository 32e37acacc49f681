//! A bounded map from 128-bit keys to small fixed-size entries, split into shards.
//!
//! Guards keep one entry per client IP (CC defence) or per client and URL (limitReq).
//! A keyed SipHash of the key picks one of 64 shards, each behind its own mutex, and the
//! lock is held only for one lookup and a few field updates. Entries live in a slab
//! with an intrusive list in order of last use. Freed slots are reused, so once a shard
//! has grown to its working size nothing is allocated per request.
//!
//! Bounds: a shard contains at most `ceil(max_entries / 64)` entries, so the whole table
//! contains at most `max_entries + 63`. Inserting a new key first drops up to two expired
//! entries from the least recently used end, then, while the shard is full, evicts its
//! least recently used entry. A lookup that finds an expired entry resets it, so an
//! expired entry never affects a request even before it is dropped.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashTable;
use siphasher::sip::SipHasher13;

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;

/// Expired entries dropped from the least recently used end per insertion.
const EXPIRE_PER_INSERT: usize = 2;

/// The "no slot" link value.
const NIL: u32 = u32::MAX;

/// A sharded, bounded map from 128-bit keys to entries of type `V`.
pub struct Table<V> {
    shards: Box<[Padded<Mutex<Shard<V>>>]>,
    /// SipHash keys, random per table, so clients cannot aim their keys at one shard.
    hash_keys: (u64, u64),
}

/// Keeps each shard's mutex on its own cache lines.
#[repr(align(128))]
struct Padded<T>(T);

struct Slot<V> {
    key: [u64; 2],
    /// Neighbour towards the most recently used end.
    prev: u32,
    /// Neighbour towards the least recently used end; links free slots too.
    next: u32,
    value: V,
}

struct Shard<V> {
    /// Slot numbers, found by the key's hash.
    index: HashTable<u32>,
    slots: Vec<Slot<V>>,
    /// First free slot, linked through `next`.
    free: u32,
    /// Most recently used entry.
    head: u32,
    /// Least recently used entry.
    tail: u32,
    len: usize,
}

fn split(key: u128) -> [u64; 2] {
    [key as u64, (key >> 64) as u64]
}

fn join(key: [u64; 2]) -> u128 {
    u128::from(key[0]) | (u128::from(key[1]) << 64)
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            index: HashTable::new(),
            slots: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl<V> Shard<V> {
    fn find(&self, hash: u64, key: [u64; 2]) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |&slot| slots[slot as usize].key == key).copied()
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let entry = &self.slots[slot as usize];
            (entry.prev, entry.next)
        };
        match prev {
            NIL => self.head = next,
            prev => self.slots[prev as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.slots[next as usize].prev = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        {
            let entry = &mut self.slots[slot as usize];
            entry.prev = NIL;
            entry.next = old_head;
        }
        match old_head {
            NIL => self.tail = slot,
            head => self.slots[head as usize].prev = slot,
        }
        self.head = slot;
    }

    /// Moves an entry to the most recently used end.
    fn touch(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    fn remove(&mut self, slot: u32, hash: u64) {
        if let Ok(found) = self.index.find_entry(hash, |&candidate| candidate == slot) {
            found.remove();
        }
        self.unlink(slot);
        self.slots[slot as usize].next = self.free;
        self.free = slot;
        self.len -= 1;
    }

    fn insert(&mut self, key: [u64; 2], hash: u64, value: V, hash_of: impl Fn([u64; 2]) -> u64) -> u32 {
        let entry = Slot {
            key,
            prev: NIL,
            next: NIL,
            value,
        };
        let slot = match self.free {
            NIL => {
                self.slots.push(entry);
                (self.slots.len() - 1) as u32
            }
            free => {
                self.free = self.slots[free as usize].next;
                self.slots[free as usize] = entry;
                free
            }
        };
        let Shard { index, slots, .. } = self;
        index.insert_unique(hash, slot, |&existing| hash_of(slots[existing as usize].key));
        self.push_front(slot);
        self.len += 1;
        slot
    }
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        let seed = RandomState::new();
        Table {
            shards: (0..SHARDS).map(|_| Padded(Mutex::new(Shard::default()))).collect(),
            hash_keys: (seed.hash_one(0u8), seed.hash_one(1u8)),
        }
    }
}

impl<V> Table<V> {
    fn hash(&self, key: [u64; 2]) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(self.hash_keys.0, self.hash_keys.1);
        hasher.write_u64(key[0]);
        hasher.write_u64(key[1]);
        hasher.finish()
    }

    /// Locks the shard of `hash`. Bits 32 to 37 choose it, because hashbrown uses the
    /// low bits for the bucket and the top seven as the tag within a shard.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard<V>> {
        let index = (hash >> 32) as usize & (SHARDS - 1);
        self.shards[index]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `update` on the entry of `key`, creating or resetting it first when it is
    /// missing or `expired`, and marks the entry as most recently used.
    ///
    /// `max_entries` is the table-wide cap of the current settings; `expired` must not
    /// panic, because it runs with the shard locked.
    pub fn update<R>(
        &self,
        key: u128,
        max_entries: usize,
        expired: impl Fn(&V) -> bool,
        update: impl FnOnce(&mut V) -> R,
    ) -> R
    where
        V: Default,
    {
        let key = split(key);
        let hash = self.hash(key);
        let mut shard = self.shard(hash);

        let slot = match shard.find(hash, key) {
            Some(slot) => {
                let value = &mut shard.slots[slot as usize].value;
                if expired(value) {
                    *value = V::default();
                }
                shard.touch(slot);
                slot
            }
            None => {
                for _ in 0..EXPIRE_PER_INSERT {
                    let tail = shard.tail;
                    if tail == NIL || !expired(&shard.slots[tail as usize].value) {
                        break;
                    }
                    let tail_hash = self.hash(shard.slots[tail as usize].key);
                    shard.remove(tail, tail_hash);
                }

                let shard_cap = max_entries.div_ceil(SHARDS).max(1);
                while shard.len >= shard_cap {
                    let tail = shard.tail;
                    let tail_hash = self.hash(shard.slots[tail as usize].key);
                    shard.remove(tail, tail_hash);
                }
                shard.insert(key, hash, V::default(), |key| self.hash(key))
            }
        };
        update(&mut shard.slots[slot as usize].value)
    }

    /// Runs `update` on the entry of `key` if there is one, without changing its place
    /// in the eviction order.
    pub fn update_existing<R>(&self, key: u128, update: impl FnOnce(&mut V) -> R) -> Option<R> {
        let key = split(key);
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        let slot = shard.find(hash, key)?;
        Some(update(&mut shard.slots[slot as usize].value))
    }

    /// Calls `visit` with every entry, one shard locked at a time.
    pub fn for_each(&self, mut visit: impl FnMut(u128, &V)) {
        for shard in self.shards.iter() {
            let shard = shard.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut slot = shard.head;
            while slot != NIL {
                let entry = &shard.slots[slot as usize];
                visit(join(entry.key), &entry.value);
                slot = entry.next;
            }
        }
    }

    /// Returns the number of entries, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds one to the counter of `key`, which expires at 100, and returns the count.
    fn bump(table: &Table<u32>, key: u128, max_entries: usize) -> u32 {
        table.update(
            key,
            max_entries,
            |count| *count >= 100,
            |count| {
                *count += 1;
                *count
            },
        )
    }

    #[test]
    fn update_counts_per_key() {
        let table = Table::<u32>::default();
        assert_eq!(bump(&table, 1, 1000), 1);
        assert_eq!(bump(&table, 1, 1000), 2);
        assert_eq!(bump(&table, 2, 1000), 1);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn cap_bounds_entries() {
        let table = Table::<u32>::default();
        for key in 0..100_000u128 {
            bump(&table, key, 1000);
        }
        let len = table.len();
        assert!(len < 1000 + SHARDS, "table grew to {len} entries");
        assert!(len >= 900, "table evicted too much: {len} entries");
    }

    #[test]
    fn cap_evicts_least_recently_used() {
        // Four entries per shard: a key used after every insertion stays, while the
        // first of 4000 new keys is pushed out of its shard.
        let table = Table::<u32>::default();
        let hot = 7u128;
        bump(&table, hot, 64 * 4);
        for key in 1000..5000u128 {
            bump(&table, key, 64 * 4);
            bump(&table, hot, 64 * 4);
        }
        assert!(
            table.update_existing(hot, |count| *count).is_some(),
            "a key used all the time was evicted"
        );
        assert!(
            table.update_existing(1000, |count| *count).is_none(),
            "the oldest key was not evicted"
        );
    }

    #[test]
    fn expired_entry_resets_and_is_reused() {
        let table = Table::<u32>::default();
        for _ in 0..100 {
            bump(&table, 5, 1000);
        }
        assert_eq!(bump(&table, 5, 1000), 1, "an expired entry must start over");
    }

    #[test]
    fn expired_tail_is_dropped_on_insert() {
        let table = Table::<u32>::default();
        let cap = SHARDS * 1000;
        for _ in 0..100 {
            bump(&table, 1, cap);
        }
        let before = table.len();
        // Enough new keys that one lands in key 1's shard.
        for key in 10..10_000u128 {
            bump(&table, key, cap);
        }
        assert!(table.update_existing(1, |_| ()).is_none(), "the expired entry stayed");
        assert_eq!(table.len(), before - 1 + 9_990);
    }

    #[test]
    fn for_each_visits_every_entry() {
        let table = Table::<u32>::default();
        for key in 0..500u128 {
            bump(&table, key << 64 | key, 10_000);
        }
        let mut seen = Vec::new();
        table.for_each(|key, _| seen.push(key));
        seen.sort_unstable();
        let expected: Vec<u128> = (0..500u128).map(|key| key << 64 | key).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn freed_slots_are_reused() {
        let table = Table::<u32>::default();
        for key in 0..50_000u128 {
            bump(&table, key, 640);
        }
        let slots: usize = table
            .shards
            .iter()
            .map(|shard| shard.0.lock().unwrap().slots.len())
            .sum();
        assert!(slots <= 640, "the slab grew to {slots} slots for a cap of 640");
    }
}
