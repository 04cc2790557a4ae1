//! The registry's map from name to breaker: hash tables of breakers behind read-write locks, in
//! shards so that threads creating breakers do not all wait on one lock.
//!
//! Each entry is the breaker alone (one word): its name, which the breaker keeps anyway, is the key
//! (hashed and compared through the breaker). A map of name to breaker would store the name a
//! second time, or a pointer to it, in every entry (issue 11: memory per breaker).
//!
//! The guards are only ever held by the short sections here, which run no Python code, take
//! references (which never blocks) and release none: what the caller lets go of (a breaker that
//! lost a race, one removed or replaced) is handed back and dropped after the guard. On
//! free-threaded CPython a release may block, and a thread blocked under a guard could be stopped
//! for a garbage collection that then traverses this map (`for_each`).

use pyo3::prelude::*;
use std::hash::BuildHasher;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use super::core::CoreRef;

/// One shard, alone on its pair of cache lines (threads taking the locks of two shards must not
/// write the same line).
#[repr(align(128))]
struct Shard(RwLock<HashTable<CoreRef>>);

impl Shard {
    // A poisoned lock only means that a thread panicked while holding it; nothing here can leave
    // a table half-changed (hashbrown's operations are panic-safe), so the table is used as is.
    fn read(&self) -> RwLockReadGuard<'_, HashTable<CoreRef>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashTable<CoreRef>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What an insertion found under the name.
pub enum Inserted {
    /// The name was free: the breaker given is in the map now.
    Fresh,
    /// Another breaker holds the name (not replaced).
    Existing(CoreRef),
    /// A breaker that `replace` said to replace held the name: the breaker given took its place
    /// (drop the old one after the call, not under a guard).
    Replaced(CoreRef),
}

pub struct Names {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard]>,
}

impl Names {
    pub fn new() -> Names {
        // As many shards as a `DashMap` has: four per core, a power of two.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = (cores * 4).next_power_of_two();
        Names {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..count)
                .map(|_| Shard(RwLock::new(HashTable::new())))
                .collect(),
        }
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a hash: its high bits (the tables use the low ones for their buckets, and
    /// the top seven for their control bytes).
    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        let index = (hash >> 40) as usize & (self.shards.len() - 1);
        &self.shards[index]
    }

    /// The breaker named `key`, cloned out.
    pub fn get(&self, py: Python<'_>, key: &[u8]) -> Option<CoreRef> {
        let hash = self.hash(key);
        let table = self.shard(hash).read();
        table
            .find(hash, |core| *core.name == *key)
            .map(|core| core.clone_ref(py))
    }

    /// Puts `fresh` in the map under its name if the name is free, or if the breaker holding it is
    /// one that `replace` says to replace; else returns that breaker.
    pub fn insert(
        &self,
        py: Python<'_>,
        fresh: &CoreRef,
        replace: impl FnOnce(&CoreRef) -> bool,
    ) -> Inserted {
        let key: &[u8] = &fresh.name;
        let hash = self.hash(key);
        let mut table = self.shard(hash).write();
        let rehash = |core: &CoreRef| self.hash(&core.name);
        match table.entry(hash, |core| *core.name == *key, rehash) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => {
                if replace(entry.get()) {
                    Inserted::Replaced(std::mem::replace(entry.get_mut(), fresh.clone_ref(py)))
                } else {
                    Inserted::Existing(entry.get().clone_ref(py))
                }
            }
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(fresh.clone_ref(py));
                Inserted::Fresh
            }
        }
    }

    /// Takes the breaker named `key` out of the map (to be dropped by the caller).
    pub fn remove(&self, key: &[u8]) -> Option<CoreRef> {
        let hash = self.hash(key);
        let mut table = self.shard(hash).write();
        let entry = table.find_entry(hash, |core| *core.name == *key).ok()?;
        Some(entry.remove().0)
    }

    /// Calls `f` on every breaker, shard by shard under its read guard: `f` must run no Python
    /// code and release no reference (reporting to the garbage collector, cloning out).
    pub fn for_each<E>(&self, mut f: impl FnMut(&CoreRef) -> Result<(), E>) -> Result<(), E> {
        for shard in self.shards.iter() {
            for core in shard.read().iter() {
                f(core)?;
            }
        }
        Ok(())
    }

    /// Every breaker, cloned out.
    pub fn cores(&self, py: Python<'_>) -> Vec<CoreRef> {
        let mut cores = Vec::with_capacity(self.len());
        let _ = self.for_each(|core| {
            cores.push(core.clone_ref(py));
            Ok::<(), ()>(())
        });
        cores
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }
}
