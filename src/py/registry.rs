//! The registry: named breakers in a concurrent map.
//!
//! The map (`names`) is only ever touched by short Rust sections that clone a reference out (or put
//! one in) and drop the shard guard before any Python code runs; values removed from it are
//! dropped after the guard is released, so not even a `__del__` can run under it. No reference to
//! a Python object is released under a guard either (on free-threaded CPython a release may
//! block, and a thread blocked there could be stopped for a garbage collection that then
//! traverses this map).

use arc_swap::ArcSwapOption;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::{Arc, OnceLock};

use super::clock::{Clock, ManualClock};
use super::config::{Config, Patch};
use super::core::Breaker;
use super::core::{guarded, shield, shield_value, BreakerCore, CoreRef, Hub};
use super::ffi::entry::is_callable;
use super::ffi::upcall::{self, raise, Returned};
use super::handle::{not_callable, Metrics};
use super::lookup::{CachedCore, Lookups};
use super::name::Name;
use super::names::{Inserted, Names};
use super::pyrefs;
use super::shared::{self, SharedTable};
use super::storage::SharedWords;
use crate::engine::Mode;

/// Named circuit breakers; `call` creates a breaker on first use of a name.
#[pyclass(frozen, module = "panelboard", weakref)]
pub struct Registry {
    /// The breakers by name (the name each breaker keeps is the key).
    breakers: Names,
    hub: Py<Hub>,
    /// The registry's own configuration for new breakers. One that holds Python objects is never
    /// shared: each breaker gets a copy (see `core` on ownership); one that holds none is shared
    /// by every breaker created with it (`config_for`).
    defaults: Arc<Config>,
    /// The last object-free configuration made for new breakers from options of their own
    /// (`call`/`breaker` keywords), shared by the next breakers given the same options: breakers
    /// configured alike pay for one configuration, not one each.
    interned: ArcSwapOption<Config>,
    /// The Redis sync worker (`panelboard._redis`) of a registry made with `redis=`; it holds only
    /// a weak reference back, so a registry dropped without `close()` still goes away.
    fleet: OnceLock<Py<PyAny>>,
    /// Each thread's cache in front of `breakers`, for `call` (see `lookup`).
    lookups: Lookups,
    /// The host-wide table of a shared registry (`Registry(shared=NAME)`); the map then caches this
    /// process's breakers on its slots (and holds the local ones of a full table).
    shared: Option<SharedTable>,
}

impl Registry {
    // The one caller of the map's lookup, which is inlined here (a second caller would make the
    // compiler keep it apart, a call more on `call`'s fast path); `find` itself stays apart.
    #[inline(never)]
    fn find(&self, py: Python<'_>, key: &[u8]) -> Option<CoreRef> {
        // Taking a reference never blocks, so it may happen under the guard.
        match self.breakers.get(py, key) {
            // A local breaker is always current; a shared one while its slot holds it.
            Some(core) if core.storage.is_current() => Some(core),
            _ if self.shared.is_none() => None,
            _ => self.find_shared(py, key),
        }
    }

    /// The breaker `key` of the shared table (made by any process), attached in this process.
    #[cold]
    fn find_shared(&self, py: Python<'_>, key: &[u8]) -> Option<CoreRef> {
        let table = &self.shared.as_ref()?.table;
        let (index, claim) = py.detach(|| table.find(key))?;
        let config = self.config_for(py, &Patch::default()).ok()?;
        self.adopt(py, key, index, claim, config).ok()
    }

    /// A breaker of this process on slot `index` of the table (live with `claim`), put in the map
    /// in place of a stale one; a current one already there wins.
    fn adopt(
        &self,
        py: Python<'_>,
        key: &[u8],
        index: usize,
        claim: u64,
        config: Arc<Config>,
    ) -> PyResult<CoreRef> {
        let Some(shared) = &self.shared else {
            return Err(PyValueError::new_err("not a shared registry"));
        };
        let words = SharedWords::new(shared.table.clone(), index, claim)
            .ok_or_else(|| PyValueError::new_err("shared table slot out of range"))?;
        let config = shared::with_table_options(py, config, &shared.table, index);
        let fresh = CoreRef::new(
            py,
            BreakerCore::shared(Name::new(key), config, self.hub.clone_ref(py), words),
        )?;
        // A current breaker already there wins; a stale one is replaced, and dropped here, after
        // the shard guard is gone.
        Ok(
            match self
                .breakers
                .insert(py, &fresh, |there| !there.storage.is_current())
            {
                Inserted::Existing(existing) => existing,
                Inserted::Replaced(stale) => {
                    drop(stale);
                    fresh
                }
                Inserted::Fresh => fresh,
            },
        )
    }

    /// The configuration of a new breaker: the registry defaults plus `patch`. Shared when it holds
    /// no Python object: the defaults themselves for no options, else the last configuration made
    /// alike (`interned`); a configuration with objects is the breaker's own (see `core`).
    fn config_for(&self, py: Python<'_>, patch: &Patch) -> PyResult<Arc<Config>> {
        if patch.is_empty() && self.defaults.is_shareable() {
            return Ok(Arc::clone(&self.defaults));
        }
        let config = self.defaults.with(py, patch)?;
        if !config.is_shareable() {
            return Ok(Arc::new(config));
        }
        if let Some(last) = &*self.interned.load() {
            if last.same_options(&config) {
                return Ok(Arc::clone(last));
            }
        }
        let config = Arc::new(config);
        // Another thread may store its own meanwhile: either one is a valid configuration to
        // share, the other breakers simply keep theirs.
        self.interned.store(Some(Arc::clone(&config)));
        Ok(config)
    }

    /// The breaker named `key`, created with the registry defaults plus `patch` if it is new.
    /// The options of an existing breaker are ignored, but still checked as they would be for a
    /// new one (options that do not fit together are an error either way).
    fn get_or_create(&self, py: Python<'_>, key: &[u8], patch: &Patch) -> PyResult<CoreRef> {
        let (core, created) = self.find_or_create(py, key, patch)?;
        if !created && !patch.is_empty() {
            drop(self.defaults.with(py, patch)?);
        }
        Ok(core)
    }

    /// Like `get_or_create`, and tells whether the breaker returned was created with `patch`.
    fn find_or_create(
        &self,
        py: Python<'_>,
        key: &[u8],
        patch: &Patch,
    ) -> PyResult<(CoreRef, bool)> {
        if let Some(core) = self.find(py, key) {
            return Ok((core, false));
        }
        if let Some(shared) = &self.shared {
            patch.check_shared()?;
            let config = self.config_for(py, patch)?;
            // Stored only if this process creates the name: the first creation's options win.
            let options = config.table_options();
            let lag_us = self.hub.get().clock.lag_us();
            let table = &shared.table;
            let claimed = py
                .detach(|| table.find_or_create(key, |slot| slot.reset_contents(&options, lag_us)));
            match claimed {
                Some((index, claim, created)) => {
                    return Ok((self.adopt(py, key, index, claim, config)?, created))
                }
                None => shared.warn_full(py, &pyrefs::name_str(py, key)?),
            }
        }
        let config = self.config_for(py, patch)?;
        let fresh = CoreRef::new(
            py,
            BreakerCore::new(Name::new(key), config, self.hub.clone_ref(py)),
        )?;
        // `fresh` goes into the map only if the name is still free; otherwise it is dropped here,
        // after the guard.
        Ok(match self.breakers.insert(py, &fresh, |_| false) {
            Inserted::Existing(winner) => (winner, false),
            Inserted::Fresh | Inserted::Replaced(_) => (fresh, true), // never replaced here
        })
    }

    fn handle(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<CoreRef> {
        let key = pyrefs::name_key(name)?;
        let patch = Patch::parse(options)?;
        self.get_or_create(py, &key, &patch)
    }
}

#[pymethods]
impl Registry {
    #[new]
    #[pyo3(signature = (
        *, clock = None, shared = None, capacity = None, mode = None, redis = None,
        namespace = None, sync_interval = None, **defaults
    ))]
    #[allow(clippy::too_many_arguments)] // the keyword options of the Python constructor
    fn new(
        py: Python<'_>,
        clock: Option<&Bound<'_, PyAny>>,
        shared: Option<&Bound<'_, PyAny>>,
        capacity: Option<&Bound<'_, PyAny>>,
        mode: Option<&Bound<'_, PyAny>>,
        redis: Option<&Bound<'_, PyAny>>,
        namespace: Option<&Bound<'_, PyAny>>,
        sync_interval: Option<&Bound<'_, PyAny>>,
        defaults: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<Self>> {
        let redis = redis.filter(|url| !url.is_none());
        if redis.is_none() {
            for (argument, value) in [("namespace", namespace), ("sync_interval", sync_interval)] {
                if value.is_some_and(|v| !v.is_none()) {
                    return Err(PyValueError::new_err(format!(
                        "{argument} is an option of a Redis-synced registry: give redis= too"
                    )));
                }
            }
        }
        let is_shared = shared.is_some_and(|s| !s.is_none());
        if is_shared && redis.is_some() {
            return Err(PyValueError::new_err(
                "shared= and redis= cannot be combined: a registry is either host-wide (shared \
                 memory) or fleet-wide (Redis)",
            ));
        }
        if is_shared && clock.is_some_and(|c| !c.is_none()) {
            return Err(PyTypeError::new_err(
                "clock cannot be given with shared=: a shared registry reads the host's monotonic \
                 clock, the one every process shares (a ManualClock cannot be shared)",
            ));
        }
        // Refused for the same reason: a fleet's open period is a key that expires on the Redis
        // server's clock, which a ManualClock cannot move (advancing it would seem to do nothing).
        if redis.is_some() && clock.is_some_and(|c| !c.is_none()) {
            return Err(PyTypeError::new_err(
                "clock cannot be given with redis=: the open period of a Redis-synced breaker runs \
                 on the Redis server's clock, for every process of the fleet (a ManualClock cannot \
                 move it)",
            ));
        }
        let clock = match clock {
            None => Clock::monotonic(),
            Some(c) if c.is_none() => Clock::monotonic(),
            Some(c) => match c.cast::<ManualClock>() {
                Ok(manual) => Clock::Manual(manual.get().time.clone()),
                Err(_) => {
                    return Err(PyTypeError::new_err(format!(
                        "clock must be a ManualClock or None, not {}",
                        super::config::type_name(c)
                    )))
                }
            },
        };
        let patch = Patch::parse(defaults)?;
        let mut base = Config::defaults();
        let mut clock = clock;
        if is_shared {
            patch.check_shared()?;
            base = base.with(py, &Patch::shared_defaults())?;
            clock = Clock::Host;
        }
        // Validated before the table is opened or created.
        let defaults = base.with(py, &patch)?;
        let shared = shared::open_for_registry(py, shared, capacity, mode)?;
        let registry = Py::new(py, Registry::with_parts(py, clock, defaults, shared)?)?;
        if let Some(url) = redis {
            // The worker validates the Redis options (naming each) and imports redis-py: only a
            // registry made with `redis=` pays for either.
            let none = py.None().into_bound(py);
            let start = py.import("panelboard._redis")?.getattr("start")?;
            let worker = start.call1((
                registry.clone_ref(py),
                url,
                namespace.unwrap_or(&none),
                sync_interval.unwrap_or(&none),
            ))?;
            // Set once, here, before anyone else can see the registry.
            let _ = registry.get().fleet.set(worker.unbind());
        }
        Ok(registry)
    }

    /// The Redis sync worker's status (see `_core.pyi`), or `None` for a local registry.
    fn sync_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.fleet.get() {
            Some(worker) => worker.bind(py).call_method0("status"),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// Stops the Redis sync worker (its breakers go on as local ones); nothing for a local registry.
    /// Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(worker) = self.fleet.get() {
            worker.bind(py).call_method0("close")?;
        }
        Ok(())
    }

    // `call(name, fn, /, **options)` is installed by `fastcall::install` (METH_FASTCALL) and
    // implemented by `Registry::call` below.

    /// A handle on the breaker `name` (created with `options` if new).
    #[pyo3(signature = (name, /, **options))]
    fn breaker(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Breaker> {
        Ok(Breaker {
            core: self.handle(py, name, options)?,
        })
    }

    /// Creates the breaker with `options`, or atomically changes the given options of an existing one.
    #[pyo3(signature = (name, /, **options))]
    fn configure(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Breaker> {
        let key = pyrefs::name_key(name)?;
        let patch = Patch::parse(options)?;
        if self.shared.is_some() {
            patch.check_shared()?;
        }
        let (core, created) = self.find_or_create(py, &key, &patch)?;
        if !created {
            // Existing, or created by another thread since the lookup: change it.
            core.reconfigure(py, &patch)?;
        }
        Ok(Breaker { core })
    }

    /// The state of `name`; `State.CLOSED` for an unknown name (which is not created).
    fn state<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let key = pyrefs::name_key(name)?;
        let mode = match self.find(py, &key) {
            Some(core) => core.observe(py).0.mode(),
            None => Mode::Closed,
        };
        pyrefs::state(py, mode)
    }

    /// Closes `name`: count 0, permits dropped, new generation. Unknown names are not created.
    fn reset(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = pyrefs::name_key(name)?;
        if let Some(core) = self.find(py, &key) {
            core.set_mode(py, Mode::Closed);
        }
        Ok(())
    }

    /// Forgets `name`; calls in flight on it finish normally, and handles keep their breaker.
    fn delete(&self, name: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = pyrefs::name_key(name)?;
        let removed = self.breakers.remove(&key);
        if removed.is_some() {
            self.lookups.removed(&key);
        }
        drop(removed); // after the shard guard is gone
        if let Some(shared) = &self.shared {
            // For every process: their handles carry on with breakers of their own.
            name.py().detach(|| shared.table.delete(&key));
        }
        Ok(())
    }

    /// Every breaker with its state, as `(name, State)` pairs.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for core in self.cores(py) {
            let mode = core.observe(py).0.mode();
            list.append((core.py_name(py)?, pyrefs::state(py, mode)?))?;
        }
        Ok(list)
    }

    /// Rejects every call to `name` until `reset` (state `FORCED_OPEN`). Creates the breaker if new.
    fn force_open(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        self.handle(py, name, None)?.set_mode(py, Mode::ForcedOpen);
        Ok(())
    }

    /// Admits every call to `name` until `reset`, still counting metrics (state `DISABLED`).
    fn disable(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        self.handle(py, name, None)?.set_mode(py, Mode::Disabled);
        Ok(())
    }

    /// Registers `listener(name, old, new)` for every state change; returns it (usable as a decorator).
    fn on_state_change<'py>(&self, listener: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !listener.is_callable() {
            return Err(not_callable("listener", &listener));
        }
        let py = listener.py();
        // The update runs no Python code (it only takes references), so its retries can only be
        // caused by other threads changing the list, never by itself: no livelock.
        self.hub.get().listeners.rcu(|current| {
            let mut next: Vec<Py<PyAny>> = current.iter().map(|l| l.clone_ref(py)).collect();
            next.push(listener.clone().unbind());
            next
        });
        Ok(listener)
    }

    /// Unregisters a listener added with `on_state_change` (compared with `==`, so a bound method
    /// can be removed with a fresh `obj.method`); `ValueError` if it is not registered.
    fn remove_listener(&self, listener: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = listener.py();
        // `==` runs Python code, which may change the list (a hostile `__eq__` that registers a
        // listener made every compare-and-swap fail, and the retry ran `__eq__` again, forever).
        // So the comparison runs exactly once, on a snapshot, outside any lock, and picks the
        // registered object to remove; the swap below finds that object by identity, which runs
        // no Python code, and only retries when another thread changed the list meanwhile.
        let listeners = &self.hub.get().listeners;
        let snapshot = listeners.load_full();
        let mut matched = None;
        for registered in snapshot.iter() {
            if upcall::equal(registered.bind(py), listener)? {
                matched = Some(registered.clone_ref(py));
                break;
            }
        }
        drop(snapshot);
        let not_registered = || PyValueError::new_err("listener is not registered");
        let matched = matched.ok_or_else(not_registered)?;
        loop {
            let current = listeners.load_full();
            // Gone already (removed by `__eq__` or by another thread): not registered any more.
            let position = current
                .iter()
                .position(|l| l.is(&matched))
                .ok_or_else(not_registered)?;
            let next: Vec<Py<PyAny>> = current
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != position)
                .map(|(_, l)| l.clone_ref(py))
                .collect();
            let previous = listeners.compare_and_swap(&current, Arc::new(next));
            if Arc::ptr_eq(&previous, &current) {
                return Ok(());
            }
        }
    }

    /// `{name: Metrics}` for every breaker.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for core in self.cores(py) {
            dict.set_item(core.py_name(py)?, Metrics::of(py, &core)?)?;
        }
        Ok(dict)
    }

    /// Reports to the garbage collector what the registry alone holds: its hub, its own default
    /// configuration and one reference to each breaker in its map (see `core` on ownership).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.hub)?;
        if let Some(worker) = self.fleet.get() {
            visit.call(worker)?;
        }
        self.defaults.traverse(&visit)?;
        // The collector runs with every other thread stopped at a safe point (or, with the GIL,
        // not running); no thread is ever stopped inside a map operation (nothing under a guard
        // runs Python code or releases a reference), so these read guards never wait.
        self.breakers.for_each(|core| visit.call(core.as_py()))?;
        self.lookups.traverse(&visit)
    }

    fn __len__(&self) -> usize {
        match &self.shared {
            None => self.breakers.len(),
            Some(shared) => {
                let mut local = 0;
                let _ = self.breakers.for_each(|core| {
                    local += usize::from(core.storage.shared().is_none());
                    Ok::<(), ()>(())
                });
                shared.table.live().len() + local
            }
        }
    }

    /// Whether this registry's breakers live in a shared table (`shared=` was given).
    #[getter]
    fn shared(&self) -> Option<&str> {
        self.shared.as_ref().map(|s| s.table.name())
    }

    fn __contains__(&self, name: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.find(name.py(), &pyrefs::name_key(name)?).is_some())
    }

    fn __repr__(&self) -> String {
        match &self.shared {
            None => format!("<Registry with {} breakers>", self.breakers.len()),
            Some(shared) => format!(
                "<Registry shared={:?} with {} breakers>",
                shared.table.name(),
                self.__len__()
            ),
        }
    }
}

/// The breaker a `Registry.call` runs on: from this thread's cache, or straight from the map (a
/// breaker just created, or a call with options), which needs no cache entry. (Wrapping those in a
/// cache entry, a 128-byte-aligned allocation freed at the end of the call, cost nothing in time
/// but made glibc fragment the heap: creating breakers with `call` took 184 B more per rate-policy
/// breaker than creating them with `breaker`, issue 11.)
enum Reached {
    Cached(CachedCore),
    Direct(CoreRef),
}

/// `Registry.call` on a breaker reached straight from the map: apart, so that the cached path
/// keeps its own inlined copy of `guarded` with nothing more to check.
#[cold]
#[inline(never)]
fn call_direct<'py>(core: CoreRef, py: Python<'py>, func: &Bound<'py, PyAny>) -> Returned<'py> {
    guarded(&core, py, || upcall::call_returned(func))
}

impl Registry {
    /// Calls `func()` through the breaker `name`, creating it with the registry's defaults if the
    /// name is new: `Registry.call(name, fn)`, the usual call, inlined into its entry point.
    ///
    /// (`call` below does the same with options. It must not share this code: every function
    /// inlined in two places, as the pieces of the guarded call would be, is compiled apart and
    /// called, which cost this path about 30 instructions.)
    #[inline(always)]
    pub(crate) fn call_plain<'py>(
        &self,
        name: &Bound<'py, PyAny>,
        func: &Bound<'py, PyAny>,
    ) -> Returned<'py> {
        let py = name.py();
        // This thread's cache first (see `lookup`): the same `str` as its last lookup costs no
        // reading of the name, and neither path writes memory another thread reads.
        let version = self.lookups.version();
        let core = match raise(py, shield_value(|| self.lookups.last(version, name)))? {
            Some(core) if is_callable(func) => core,
            // (A function that is not callable is refused there.)
            _ => match raise(
                py,
                shield(|| self.lookup_for_call(py, version, name, func, None)),
            )? {
                Reached::Cached(core) => core,
                Reached::Direct(core) => return call_direct(core, py, func),
            },
        };
        guarded(&core, py, || upcall::call_returned(func))
    }

    /// Calls `func()` through the breaker `name`, creating it with `options` if the name is new
    /// (options of later calls are validated but ignored, as in the reference).
    #[inline(never)]
    pub(crate) fn call<'py>(
        &self,
        name: &Bound<'py, PyAny>,
        func: &Bound<'py, PyAny>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> Returned<'py> {
        let py = name.py();
        let version = self.lookups.version();
        let last = match options {
            None => raise(py, shield_value(|| self.lookups.last(version, name)))?,
            Some(_) => None,
        };
        let core = match last {
            Some(core) if is_callable(func) => core,
            _ => match raise(
                py,
                shield(|| self.lookup_for_call(py, version, name, func, options)),
            )? {
                Reached::Cached(core) => core,
                Reached::Direct(core) => return call_direct(core, py, func),
            },
        };
        guarded(&core, py, || upcall::call_returned(func))
    }

    /// The breaker `name` for `call` when it is not this thread's last lookup, or `TypeError` when
    /// `func` is not callable (kept out of line: the last lookup is the path repeated calls take).
    #[inline(never)]
    fn lookup_for_call(
        &self,
        py: Python<'_>,
        version: u64,
        name: &Bound<'_, PyAny>,
        func: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Reached> {
        let key = pyrefs::name_key(name)?;
        if !func.is_callable() {
            return Err(not_callable("fn", func));
        }
        Ok(match options {
            None => match self
                .lookups
                .by_name(version, name, &key, || self.find(py, &key))
            {
                Some(core) => Reached::Cached(core),
                // Creating may drop references (a breaker that lost a creation race): attach
                // properly so PyO3 releases them at once, not at its next call.
                None => Reached::Direct(Python::attach(|py| {
                    self.get_or_create(py, &key, &Patch::default())
                })?),
            },
            // The options' objects may be dropped here (they are ignored for an existing
            // breaker): attach properly, as above.
            Some(options) => Reached::Direct(Python::attach(|py| -> PyResult<_> {
                self.get_or_create(py, &key, &Patch::parse(Some(options))?)
            })?),
        })
    }

    /// A registry with the default configuration (the process-wide default registry).
    pub(crate) fn with_defaults(py: Python<'_>) -> PyResult<Registry> {
        let defaults = Config::defaults().with(py, &Patch::parse(None)?)?;
        Registry::with_parts(py, Clock::monotonic(), defaults, None)
    }

    /// A registry with no Redis worker yet: local, or on the shared table `shared`.
    fn with_parts(
        py: Python<'_>,
        clock: Clock,
        defaults: Config,
        shared: Option<SharedTable>,
    ) -> PyResult<Registry> {
        Ok(Registry {
            breakers: Names::new(),
            hub: Py::new(py, Hub::new(clock))?,
            defaults: Arc::new(defaults),
            interned: ArcSwapOption::empty(),
            fleet: OnceLock::new(),
            lookups: Lookups::new(),
            shared,
        })
    }

    /// The breakers, cloned out of the map (whose guards are released before this returns). For
    /// a shared registry: every live breaker of the table (attached in this process), then this
    /// process's local ones (made while the table was full).
    pub(crate) fn cores(&self, py: Python<'_>) -> Vec<CoreRef> {
        let cached: Vec<CoreRef> = self.breakers.cores(py);
        let Some(shared) = &self.shared else {
            return cached;
        };
        let mut cores = Vec::new();
        for (index, claim) in shared.table.live() {
            let attached = cached.iter().find(|core| {
                core.storage
                    .shared()
                    .is_some_and(|s| s.index() == index && s.claim() == claim)
            });
            if let Some(core) = attached {
                cores.push(core.clone_ref(py));
                continue;
            }
            let Ok(config) = self.config_for(py, &Patch::default()) else {
                continue;
            };
            let core = match shared::slot_key(&shared.table, index) {
                // Bytes that no str encodes to were not written by panelboard (a corrupt slot):
                // left out, so that one bad slot cannot make the whole listing fail.
                Some(key) if pyrefs::name_str(py, &key).is_err() => continue,
                Some(key) => self.adopt(py, &key, index, claim, config),
                // A long name made by another process: only its prefix is known here, so the
                // breaker is listed under it without entering the map.
                None => shared::slot_display_name(py, &shared.table, index).and_then(|name| {
                    let name = pyrefs::name_key(&name)?;
                    let words = SharedWords::new(shared.table.clone(), index, claim)
                        .ok_or_else(|| PyValueError::new_err("shared table slot out of range"))?;
                    let config = shared::with_table_options(py, config, &shared.table, index);
                    CoreRef::new(
                        py,
                        BreakerCore::shared(
                            Name::new(&name),
                            config,
                            self.hub.clone_ref(py),
                            words,
                        ),
                    )
                }),
            };
            if let Ok(core) = core {
                cores.push(core);
            }
        }
        cores.extend(
            cached
                .into_iter()
                .filter(|core| core.storage.shared().is_none()),
        );
        cores
    }
}
