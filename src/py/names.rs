//! The registry's map from name to breaker: a `DashMap` (the design's map: sharded read-write
//! locks, so that threads creating breakers do not all wait on one lock) whose keys are the
//! breakers themselves and whose values are empty.
//!
//! Each entry is the breaker alone (one word): its name, which the breaker keeps anyway, is the key
//! (hashed, compared and borrowed as `[u8]` through the breaker, `ByName`). A map of name to
//! breaker would store the name a second time, or a pointer to it, in every entry (issue 11:
//! memory per breaker).
//!
//! The shard guards are only ever held by the short sections here, which run no Python code, take
//! references (which never blocks) and release none: what the caller lets go of (a breaker that
//! lost a race, one removed or replaced, the lookup's own reference to the breaker it inserts) is
//! handed back and dropped after the guard. On free-threaded CPython a release may block, and a
//! thread blocked under a guard could be stopped for a garbage collection that then traverses this
//! map (`for_each`).

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use pyo3::prelude::*;
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use super::core::CoreRef;

/// A breaker as a key: hashed and compared by its name, as the `[u8]` it borrows as (the two
/// must agree, which `Borrow` requires: both hash the name's bytes the way `[u8]` does).
struct ByName(CoreRef);

impl Borrow<[u8]> for ByName {
    fn borrow(&self) -> &[u8] {
        &self.0.name
    }
}

impl Hash for ByName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let name: &[u8] = self.borrow();
        name.hash(state);
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &ByName) -> bool {
        *self.0.name == *other.0.name
    }
}

impl Eq for ByName {}

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
    map: DashMap<ByName, (), foldhash::fast::RandomState>,
}

impl Names {
    pub fn new() -> Names {
        Names {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// The breaker named `key`, cloned out.
    pub fn get(&self, py: Python<'_>, key: &[u8]) -> Option<CoreRef> {
        self.map.get(key).map(|entry| entry.key().0.clone_ref(py))
    }

    /// Puts `fresh` in the map under its name if the name is free, or if the breaker holding it is
    /// one that `replace` says to replace; else returns that breaker.
    pub fn insert(
        &self,
        py: Python<'_>,
        fresh: &CoreRef,
        replace: impl FnOnce(&CoreRef) -> bool,
    ) -> Inserted {
        // The entry API takes the key by value: a reference of our own to `fresh`, which the
        // caller still holds (so letting go of ours never frees it).
        match self.map.entry(ByName(fresh.clone_ref(py))) {
            Entry::Occupied(entry) => {
                if replace(&entry.key().0) {
                    // Returns once the guard is gone.
                    let (replaced, ()) = entry.replace_entry(());
                    Inserted::Replaced(replaced.0)
                } else {
                    let existing = entry.key().0.clone_ref(py);
                    // `into_key` lets go of the guard first; our reference to `fresh` goes after.
                    drop(entry.into_key());
                    Inserted::Existing(existing)
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(());
                Inserted::Fresh
            }
        }
    }

    /// Takes the breaker named `key` out of the map (to be dropped by the caller).
    pub fn remove(&self, key: &[u8]) -> Option<CoreRef> {
        self.map.remove(key).map(|(removed, ())| removed.0)
    }

    /// Calls `f` on every breaker, shard by shard under its read guard: `f` must run no Python
    /// code and release no reference (reporting to the garbage collector, cloning out).
    pub fn for_each<E>(&self, mut f: impl FnMut(&CoreRef) -> Result<(), E>) -> Result<(), E> {
        for entry in self.map.iter() {
            f(&entry.key().0)?;
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
        self.map.len()
    }
}
