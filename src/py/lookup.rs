//! Lookup by name without a shared write: a cache per thread in front of the registry's map.
//!
//! Every lookup in the `DashMap` takes a shard read lock, which writes the lock word, and takes a
//! reference to the breaker found, which writes its reference count: two threads calling
//! `Registry.call` on one name fight over those two cache lines (issue 10, item 3). So `call`
//! first asks this thread's cache, which holds what this thread found in the map before, and
//! only goes to the map when the cache has nothing valid.
//!
//! # Validity
//!
//! The registry keeps a version that is bumped after every removal from its map (a delete), before
//! the removing call returns. A thread reads the version before it looks in its cache or in the
//! map, and its cache keeps entries only while they were all found under the version it holds: an
//! entry found in the map under version `v` is still the map's entry for its name as long as the
//! version is `v` (insertions only ever fill a free name, and no cache entry names a free name
//! under the version it was found in). When the version moved, the whole cache is dropped. So a
//! lookup that starts after a delete (and a re-creation) returned never uses the deleted breaker.
//! No registry identity is involved (each registry owns its caches), so nothing can be confused
//! with another registry that reused an address.
//!
//! # Ownership
//!
//! The caches belong to the registry (one per thread that used it, in a `ThreadLocal`), not to the
//! threads: they are dropped with the registry, not at thread exit (a thread's Rust thread-locals
//! are destroyed after it left the interpreter, where no reference may be released), and a new
//! thread may inherit an exited thread's cache, which is fine because it is validated like any other.
//! Each cached breaker is one strong reference held by the cache and reported by the registry to
//! the garbage collector (`Registry::__traverse__` calls `traverse` here), so a registry in a cycle
//! is still collected, and nothing is reported twice: the lookup hands out the cache's `Arc`
//! (a count only this thread touches), never a second Python reference. A call still running on a
//! breaker that its thread's cache dropped meanwhile holds the last `Arc`: that reference is then
//! reported by nobody and counts as held from outside, like a configuration replaced under a
//! running call (see `core`).
//!
//! Each cache sits behind its own `Mutex`, so that the collector can read it (with `try_lock`, never
//! waiting: it skips a cache it cannot lock, which can only keep a cycle alive, never free something
//! live). Only its thread locks it otherwise, so the lock word never leaves that thread's core.
//! Nothing under the lock runs Python code, allocates a Python object or releases a reference:
//! what a cache lets go of is dropped after the guard.
//!
//! # Bounds
//!
//! A cache holds at most `CAPACITY` names (it is emptied when full) and is emptied at the next
//! lookup after any delete, so a deleted breaker is kept by a cache at most until its thread's next
//! lookup in that registry (or until the registry is dropped, for a thread that never looks again).
//! In practice it goes sooner: `delete` also takes it out of every cache that is not in use at that
//! moment, so a deleted breaker goes when the calls running on it return, as it did without caches.

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thread_local::ThreadLocal;

use super::core::CoreRef;
use super::ffi::refs::AttachedObject;
use super::name::Name;

/// Names one thread's cache holds at most, per registry.
const CAPACITY: usize = 256;

/// A breaker as a cache hands it out: shared with the cache by an `Arc` that only this thread
/// counts (the Python reference inside is the cache's own), alone on its cache lines.
#[derive(Clone)]
pub struct CachedCore(Arc<Aligned<CoreRef>>);

impl From<CoreRef> for CachedCore {
    fn from(core: CoreRef) -> CachedCore {
        CachedCore(Arc::new(Aligned(core)))
    }
}

impl CachedCore {
    /// The same cached breaker (the same `Arc`)?
    #[inline]
    fn same(&self, other: &CachedCore) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for CachedCore {
    type Target = CoreRef;
    #[inline]
    fn deref(&self) -> &CoreRef {
        &self.0 .0
    }
}

/// Alone on its pair of cache lines (CPUs fetch lines in pairs): the caches of two threads, which
/// `ThreadLocal` stores side by side, and the `Arc` counts each thread writes must not share a
/// line, or every lookup would write a line that another thread reads.
#[repr(align(128))]
struct Aligned<T>(T);

/// The caches of one registry, and the version that validates them.
pub struct Lookups {
    /// Bumped after every removal from the registry's map.
    version: AtomicU64,
    threads: ThreadLocal<Aligned<Mutex<ThreadCache>>>,
}

struct ThreadCache {
    /// The registry's version when every entry below was found in the map.
    version: u64,
    by_name: HashMap<Name, CachedCore, foldhash::fast::RandomState>,
    /// The last name looked up, by identity: the `str` object itself (held, so that no other
    /// object can take its address) and its breaker, which is also in `by_name`. A hit skips
    /// reading and hashing the name.
    last: Option<(AttachedObject, CachedCore)>,
}

/// What a cache lets go of, dropped after its guard (a breaker's last reference may run Python code).
#[derive(Default)]
struct Released {
    by_name: Option<HashMap<Name, CachedCore, foldhash::fast::RandomState>>,
    /// `last` of a cache that restarted, and the `last` that `remember` replaced.
    restarted_last: Option<(AttachedObject, CachedCore)>,
    last: Option<(AttachedObject, CachedCore)>,
    replaced: Option<CachedCore>,
}

impl ThreadCache {
    fn new(version: u64) -> ThreadCache {
        ThreadCache {
            version,
            by_name: HashMap::default(),
            last: None,
        }
    }

    /// Empties the cache and moves it to `version`; what it held goes to `released`.
    fn restart(&mut self, version: u64, released: &mut Released) {
        self.version = version;
        released.by_name = Some(std::mem::take(&mut self.by_name));
        released.restarted_last = self.last.take();
    }

    /// Takes out what the cache holds for `key`.
    fn forget(&mut self, key: &[u8]) -> (Option<CachedCore>, Option<(AttachedObject, CachedCore)>) {
        let by_name = self.by_name.remove(key);
        let last = match &self.last {
            Some((_, core)) if *core.name == *key => self.last.take(),
            _ => None,
        };
        (by_name, last)
    }

    /// Makes `core`, found for `name`, the last name looked up.
    fn remember(&mut self, name: &Bound<'_, PyAny>, core: &CachedCore, released: &mut Released) {
        // Kept when it already names this breaker: a name built anew for each call (an equal `str`,
        // another object every time) would otherwise replace it on every lookup, for nothing.
        if !matches!(&self.last, Some((_, last_core)) if last_core.same(core)) {
            // Taking a reference runs no Python code.
            let previous = self.last.replace((AttachedObject::new(name), core.clone()));
            // A lookup remembers once (and a restart before empties `last`, which `restarted_last`
            // keeps), so nothing is in `released.last` yet.
            released.last = previous;
        }
    }
}

impl Lookups {
    pub fn new() -> Lookups {
        Lookups {
            version: AtomicU64::new(0),
            threads: ThreadLocal::new(),
        }
    }

    /// The version to validate a lookup with: read before looking in the cache or the map.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Called after `key`'s entry was removed from the map, before the removing call returns: every
    /// cache is invalidated, and each drops its reference to that breaker now (so that it goes when
    /// the calls running on it return, as without caches), except a cache in use at this moment,
    /// which lets go of it at its thread's next lookup.
    pub fn removed(&self, key: &[u8]) {
        self.version.fetch_add(1, Ordering::Release);
        for cell in self.threads.iter() {
            let forgotten = match cell.0.try_lock() {
                Ok(mut cache) => cache.forget(key),
                Err(_) => continue,
            };
            drop(forgotten); // after the guard
        }
    }

    /// The breaker this thread looked up last, if `name` is that very `str` object and its cache
    /// is still valid under `version`. Kept out of line: inlined, it made the entry point of
    /// `Registry.call` too large for the compiler to inline the guarded call's own pieces.
    #[inline(never)]
    pub fn last(&self, version: u64, name: &Bound<'_, PyAny>) -> Option<CachedCore> {
        let cache = self.threads.get()?.0.try_lock().ok()?;
        if cache.version != version {
            return None;
        }
        match &cache.last {
            // A shared breaker whose name another process deleted is no longer the name's.
            Some((last, core)) if last.is(name) && core.storage.is_current() => Some(core.clone()),
            _ => None,
        }
    }

    /// The breaker named `key` (the bytes of `name`): from this thread's cache if it is valid under
    /// `version`, else from `find` (the map), and then cached.
    pub fn by_name(
        &self,
        version: u64,
        name: &Bound<'_, PyAny>,
        key: &[u8],
        find: impl FnOnce() -> Option<CoreRef>,
    ) -> Option<CachedCore> {
        let cell = &self
            .threads
            .get_or(|| Aligned(Mutex::new(ThreadCache::new(version))))
            .0;
        let mut released = Released::default();
        let found = self.cached(cell, version, name, key, &mut released);
        if found.is_some() {
            drop(released); // after the guard, which `cached` dropped
            return found;
        }
        drop(released);
        // Not cached (or the cache is in use by the collector): the map, outside any guard.
        let core = CachedCore::from(find()?);
        let mut released = Released::default();
        if let Ok(mut cache) = cell.try_lock() {
            // Cache it only under the version it was found under (a delete since then will
            // empty the cache at the next lookup anyway).
            if cache.version == version {
                if cache.by_name.len() >= CAPACITY {
                    cache.restart(version, &mut released);
                }
                if let Some(replaced) = cache.by_name.insert(core.name.clone(), core.clone()) {
                    released.replaced = Some(replaced);
                }
                cache.remember(name, &core, &mut released);
            }
        }
        drop(released);
        Some(core)
    }

    fn cached(
        &self,
        cell: &Mutex<ThreadCache>,
        version: u64,
        name: &Bound<'_, PyAny>,
        key: &[u8],
        released: &mut Released,
    ) -> Option<CachedCore> {
        let mut cache = cell.try_lock().ok()?;
        if cache.version != version {
            cache.restart(version, released);
            return None;
        }
        let core = cache.by_name.get(key)?.clone();
        if !core.storage.is_current() {
            // Deleted by another process (a shared registry): found again, and replaced, by
            // `by_name`.
            return None;
        }
        cache.remember(name, &core, released);
        Some(core)
    }

    /// Reports every cached breaker (one strong reference each, held by the cache alone; `last`
    /// shares its breaker with `by_name`).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for cell in self.threads.iter() {
            // The collector runs with every other thread stopped at a safe point (or, with the GIL,
            // not running), and no thread is ever stopped with its cache locked (nothing under the
            // lock runs Python code): `try_lock` succeeds; if it did not, skipping is the safe side.
            let Ok(cache) = cell.0.try_lock() else {
                continue;
            };
            for core in cache.by_name.values() {
                visit.call(core.as_py())?;
            }
        }
        Ok(())
    }
}
