//! The registry: named breakers in a concurrent map.
//!
//! The map is only ever touched by short Rust sections that clone a reference out (or put one in)
//! and drop the shard guard before any Python code runs; values removed from it are dropped after
//! the guard is released, so not even a `__del__` can run under it. No reference to a Python
//! object is released under a guard either (on free-threaded CPython a release may block, and a
//! thread blocked there could be stopped for a garbage collection that then traverses this map):
//! the keys are plain name bytes.

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::Arc;
use std::time::Instant;

use super::clock::{Clock, ManualClock};
use super::config::{Config, Patch};
use super::core::Breaker;
use super::core::{guarded, shield, BreakerCore, CoreRef, Hub};
use super::ffi::upcall;
use super::handle::{not_callable, Metrics};
use super::lookup::{CachedCore, Lookups};
use super::pyrefs;
use crate::engine::Mode;

/// Named circuit breakers; `call` creates a breaker on first use of a name.
#[pyclass(frozen, module = "panelboard")]
pub struct Registry {
    /// Name bytes (shared with the breaker, which keeps its name) to breaker.
    breakers: DashMap<Arc<[u8]>, CoreRef, foldhash::fast::RandomState>,
    hub: Py<Hub>,
    /// The registry's own configuration for new breakers, each of which gets a copy: no Python
    /// object in it is shared with a breaker (see `core` on ownership).
    defaults: Config,
    /// Each thread's cache in front of `breakers`, for `call` (see `lookup`).
    lookups: Lookups,
}

impl Registry {
    // The one caller of the map's lookup, which is inlined here (a second caller would make the
    // compiler keep it apart, a call more on `call`'s fast path); `find` itself stays apart.
    #[inline(never)]
    fn find(&self, py: Python<'_>, key: &[u8]) -> Option<CoreRef> {
        // Taking a reference never blocks, so it may happen under the guard.
        self.breakers
            .get(key)
            .map(|entry| entry.value().clone_ref(py))
    }

    /// The breaker named `key`, created with the registry defaults plus `patch` if it is new.
    fn get_or_create(&self, py: Python<'_>, key: &[u8], patch: &Patch) -> PyResult<CoreRef> {
        Ok(self.find_or_create(py, key, patch)?.0)
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
        let config = Arc::new(self.defaults.with(py, patch));
        let name: Arc<[u8]> = Arc::from(key);
        let fresh = CoreRef::new(
            py,
            BreakerCore::new(name.clone(), config, self.hub.clone_ref(py)),
        )?;
        // `fresh` is moved into the map only if the name is still free; otherwise it is dropped
        // after the guard (only the name bytes are dropped under it).
        let existing = match self.breakers.entry(name) {
            MapEntry::Occupied(existing) => Some(existing.get().clone_ref(py)),
            MapEntry::Vacant(slot) => {
                slot.insert(fresh.clone_ref(py));
                None
            }
        };
        Ok(match existing {
            Some(winner) => (winner, false),
            None => (fresh, true),
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
    #[pyo3(signature = (*, clock = None, **defaults))]
    fn new(
        py: Python<'_>,
        clock: Option<&Bound<'_, PyAny>>,
        defaults: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let clock = match clock {
            None => Clock::Monotonic(Instant::now()),
            Some(c) if c.is_none() => Clock::Monotonic(Instant::now()),
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
        Ok(Registry {
            breakers: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            hub: Py::new(py, Hub::new(clock))?,
            defaults: Config::defaults(py).with(py, &patch),
            lookups: Lookups::new(),
        })
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
        let (core, created) = self.find_or_create(py, &key, &patch)?;
        if !created {
            // Existing, or created by another thread since the lookup: change it.
            core.reconfigure(py, &patch);
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
        let removed = self.breakers.remove(&*key);
        if removed.is_some() {
            self.lookups.removed(&key);
        }
        drop(removed); // after the shard guard is gone
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
        self.defaults.traverse(&visit)?;
        // The collector runs with every other thread stopped at a safe point (or, with the GIL,
        // not running); no thread is ever stopped inside a map operation (nothing under a guard
        // runs Python code or releases a reference), so these read guards never wait.
        for entry in self.breakers.iter() {
            visit.call(entry.value().as_py())?;
        }
        self.lookups.traverse(&visit)
    }

    fn __len__(&self) -> usize {
        self.breakers.len()
    }

    fn __contains__(&self, name: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.find(name.py(), &pyrefs::name_key(name)?).is_some())
    }

    fn __repr__(&self) -> String {
        format!("<Registry with {} breakers>", self.breakers.len())
    }
}

impl Registry {
    /// Calls `func()` through the breaker `name`, creating it with `options` if the name is new
    /// (options of later calls are validated but ignored, as in the reference).
    pub(crate) fn call<'py>(
        &self,
        name: &Bound<'py, PyAny>,
        func: &Bound<'py, PyAny>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = name.py();
        let core: CachedCore = shield(|| {
            // This thread's cache first (see `lookup`): the same `str` as its last lookup costs
            // no reading of the name, and neither path writes memory another thread reads.
            let version = self.lookups.version();
            if options.is_none() {
                if let Some(core) = self.lookups.last(version, name) {
                    if !func.is_callable() {
                        return Err(not_callable("fn", func));
                    }
                    return Ok(core);
                }
            }
            let key = pyrefs::name_key(name)?;
            if !func.is_callable() {
                return Err(not_callable("fn", func));
            }
            Ok(match options {
                None => match self
                    .lookups
                    .by_name(version, name, &key, || self.find(py, &key))
                {
                    Some(core) => core,
                    // Creating may drop references (a breaker that lost a creation race): attach
                    // properly so PyO3 releases them at once, not at its next call.
                    None => CachedCore::from(Python::attach(|py| {
                        self.get_or_create(py, &key, &Patch::default())
                    })?),
                },
                // The options' objects may be dropped here (they are ignored for an existing
                // breaker): attach properly, as above.
                Some(options) => CachedCore::from(Python::attach(|py| -> PyResult<_> {
                    self.get_or_create(py, &key, &Patch::parse(Some(options))?)
                })?),
            })
        })?;
        guarded(&core, py, || upcall::call(func, []))
    }

    /// A registry with the default configuration (the process-wide default registry).
    pub(crate) fn with_defaults(py: Python<'_>) -> PyResult<Registry> {
        Registry::new(py, None, None)
    }

    /// The breakers, cloned out of the map (whose guards are released before this returns).
    fn cores(&self, py: Python<'_>) -> Vec<CoreRef> {
        self.breakers
            .iter()
            .map(|entry| entry.value().clone_ref(py))
            .collect()
    }
}
