//! The Python-facing breaker handle's methods (`Breaker` itself is declared in `core`, below the
//! `with` blocks that need its type), the decorated-function wrapper and metrics.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{Borrowed, PyTraverseError, PyVisit};

use super::awaitable::{self, GuardedCoroutine};
use super::block;
use super::core::{guarded, shield, shield_value, Breaker, BreakerCore, CoreRef};
use super::ffi::entry::{
    install_vectorcall_slot, instance_dict, FastArgs, FastMethod, OwnedArgs, VectorcallSlot,
};
use super::ffi::upcall::{self, raise, Returned};
use super::permit::Permit;
use super::pyrefs;
use crate::engine::Mode;

#[pymethods]
impl Breaker {
    #[getter]
    fn name<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.core.py_name(py)
    }

    #[getter]
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pyrefs::state(py, self.core.observe(py).0.mode())
    }

    /// Whether this breaker lives in a shared table (a shared registry's breaker, unless the table
    /// was full when it was made, or its name was deleted since).
    #[getter]
    fn shared(&self) -> bool {
        self.core.storage.is_shared()
    }

    // `call(fn, /, *args, **kwargs)` is installed by `fastcall::install` as a METH_FASTCALL method
    // that forwards its arguments to `fn` without building a tuple or dict.

    // `acall(fn, /, *args, **kwargs)` is installed by `fastcall::install` as a METH_FASTCALL
    // method too: it returns a `GuardedCoroutine` holding the caller's arguments.

    /// Decorates a function so that every call goes through the breaker: `@breaker`, or
    /// `@breaker(timeout=seconds)` for an async function. Generator and async-generator functions
    /// are guarded over their whole iteration (see `_aio`).
    #[pyo3(signature = (*func, timeout=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyTuple>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let timeout = timeout_seconds(py, timeout)?;
        let func = match func.len() {
            0 => None,
            1 => Some(func.get_item(0)?),
            n => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "a breaker decorates one function, {n} were given"
                )))
            }
        };
        if let Some(func) = &func {
            if !func.is_callable() {
                return Err(not_callable("the decorated object", func));
            }
        }
        let refs = pyrefs::refs(py)?;
        let none = py.None().into_bound(py);
        let decorated = upcall::call(
            refs.aio_decorate.bind(py),
            [slf.as_any(), func.as_ref().unwrap_or(&none), &timeout],
        )?;
        // `None`: a plain sync function, which gets the native wrapper; `NATIVE_ASYNC`: an
        // `async def` function without a timeout, which gets the native wrapper whose calls
        // return a `GuardedCoroutine` (`decorate` answers neither without a function).
        let asynchronous = decorated.as_ptr() == refs.aio_native_async.as_ptr();
        let (true, Some(func)) = (decorated.is_none() || asynchronous, func) else {
            return Ok(decorated);
        };
        let core = slf.get().core.clone_ref(py);
        let unbound = func.clone().unbind();
        let guarded = if asynchronous {
            Bound::new(py, Guarded::new_async(core, unbound))?
        } else {
            Bound::new(py, Guarded::new(core, unbound))?
        };
        let wrap = if asynchronous {
            &refs.aio_wrap_native_async
        } else {
            &refs.update_wrapper
        };
        upcall::call(wrap.bind(py), [guarded.as_any(), &func])?;
        Ok(guarded.into_any())
    }

    /// A permit for one call, or `None` when the breaker rejects it. Never raises for an open
    /// breaker: rejection costs no exception.
    fn try_acquire(&self, py: Python<'_>) -> Option<Permit> {
        let config = self.core.config.load();
        self.core.try_admit(py, &config).map(|ticket| {
            let started = self.core.start_timer(&config);
            Permit::new(self.core.clone_ref(py), ticket, started)
        })
    }

    /// A permit, or `CircuitOpenError` (used by the async helpers).
    fn _acquire(&self, py: Python<'_>) -> PyResult<Permit> {
        let config = self.core.config.load();
        let ticket = self.core.admit(py, &config)?;
        let started = self.core.start_timer(&config);
        Ok(Permit::new(self.core.clone_ref(py), ticket, started))
    }

    // `__exit__` and `__aexit__` are descriptors installed by `block::install`: every lookup
    // returns the exit of one block, which the `__enter__` that follows fills with its permit.

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        block::enter(slf, false)?;
        Ok(slf.clone())
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        block::enter(slf, true)?;
        awaitable::ready(slf.as_any())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(self.core.as_py())
    }

    /// Counters and state of this breaker, as an immutable snapshot.
    fn metrics(&self, py: Python<'_>) -> PyResult<Metrics> {
        Metrics::of(py, &self.core)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mode = self.core.observe(py).0.mode();
        Ok(format!(
            "<Breaker {} {}>",
            self.core.py_name(py)?.repr()?,
            pyrefs::state_value(mode)
        ))
    }
}

/// `timeout=` of `acall` and of async decoration: `None`, or a positive, finite number of seconds
/// (as a `float` for the helpers).
pub(crate) fn timeout_seconds<'py>(
    py: Python<'py>,
    value: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Some(value) if !value.is_none() => {
            let seconds = super::config::finite_seconds(value, "timeout", f64::NEG_INFINITY)?;
            if seconds <= 0.0 {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "timeout must be > 0, got {seconds} (None: no timeout)"
                )));
            }
            Ok(pyo3::types::PyFloat::new(py, seconds).into_any())
        }
        _ => Ok(py.None().into_bound(py)),
    }
}

pub fn not_callable(what: &str, value: &Bound<'_, PyAny>) -> PyErr {
    pyo3::exceptions::PyTypeError::new_err(format!(
        "{what} must be callable, not {}",
        super::config::type_name(value)
    ))
}

/// A function decorated with a breaker: calling it is one native call. Instances carry a
/// vectorcall entry point (`CallGuarded`), so arguments reach the function without a tuple. An
/// `async def` function's wrapper (`asynchronous`) has its own entry point (`CallAsyncGuarded`):
/// calling it returns a `GuardedCoroutine`, which calls the function when it is awaited.
#[pyclass(frozen, dict, weakref, module = "panelboard")]
pub struct Guarded {
    pub(crate) vectorcall: VectorcallSlot,
    pub(crate) core: CoreRef,
    pub(crate) func: Py<PyAny>,
    asynchronous: bool,
}

impl Guarded {
    pub(crate) fn new(core: CoreRef, func: Py<PyAny>) -> Guarded {
        Guarded {
            vectorcall: VectorcallSlot::of::<CallGuarded>(),
            core,
            func,
            asynchronous: false,
        }
    }

    /// The wrapper of an `async def` function.
    pub(crate) fn new_async(core: CoreRef, func: Py<PyAny>) -> Guarded {
        Guarded {
            vectorcall: VectorcallSlot::of::<CallAsyncGuarded>(),
            core,
            func,
            asynchronous: true,
        }
    }

    /// Points the class at each instance's `vectorcall` field (found on a throwaway instance).
    pub(crate) fn install_vectorcall(py: Python<'_>) -> PyResult<()> {
        let probe = Bound::new(py, Guarded::new(BreakerCore::detached(py)?, py.None()))?;
        install_vectorcall_slot(&probe, &probe.get().vectorcall)
    }
}

/// Calling a decorated function: the vectorcall entry point of every `Guarded`, which hands the
/// caller's arguments to the function unchanged.
pub(crate) struct CallGuarded;

impl FastMethod for CallGuarded {
    #[inline]
    fn call<'a, 'py>(
        py: Python<'py>,
        slf: Borrowed<'a, 'py, PyAny>,
        args: FastArgs<'a, 'py>,
    ) -> Returned<'py> {
        let guarded_fn = raise(
            py,
            shield_value(|| slf.cast::<Guarded>()).and_then(|cast| Ok(cast?)),
        )?;
        let guarded_fn = guarded_fn.get();
        let func = guarded_fn.func.bind(py);
        guarded(&guarded_fn.core, py, || args.forward_returned(func))
    }
}

/// Calling a decorated `async def` function: a `GuardedCoroutine` that holds the caller's
/// arguments (nothing is admitted or called before it is awaited).
pub(crate) struct CallAsyncGuarded;

impl FastMethod for CallAsyncGuarded {
    #[inline]
    fn call<'a, 'py>(
        py: Python<'py>,
        slf: Borrowed<'a, 'py, PyAny>,
        args: FastArgs<'a, 'py>,
    ) -> Returned<'py> {
        let guarded_fn = raise(py, shield(|| Ok(slf.cast::<Guarded>()?)))?;
        let guarded_fn = guarded_fn.get();
        let coroutine = GuardedCoroutine::new(
            guarded_fn.core.clone_ref(py),
            guarded_fn.func.bind(py),
            args.to_owned(),
        );
        raise(py, Bound::new(py, coroutine).map(Bound::into_any))
    }
}

#[pymethods]
impl Guarded {
    /// The slow-path entry (`PyObject_Call` with a tuple); ordinary calls use vectorcall.
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let func = self.func.bind(py);
        if self.asynchronous {
            let keywords = match kwargs {
                Some(kwargs) => kwargs.iter().collect(),
                None => Vec::new(),
            };
            let args = OwnedArgs::from_parts(py, args.iter(), keywords)?;
            let coroutine = GuardedCoroutine::new(self.core.clone_ref(py), func, args);
            return Ok(Bound::new(py, coroutine)?.into_any());
        }
        guarded(&self.core, py, || {
            upcall::call_with_returned(func, args, kwargs)
        })
        .map_err(|raised| raised.fetch(py))
    }

    /// Pickled (and copied) by reference, as functions are: by the name it has in its module,
    /// `__module__` + `__qualname__` (set by `functools.update_wrapper`). Copying returns the
    /// same object.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        upcall::getattr(slf.as_any(), "__qualname__").map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "cannot pickle {}: a decorated function is pickled by its module-level name, and \
                 this one has no __qualname__",
                upcall::repr(slf.as_any()).map_or_else(|_| "it".to_owned(), |r| r.to_string())
            ))
        })
    }

    /// Binds like a function, so decorated methods receive `self`.
    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        instance: &Bound<'py, PyAny>,
        _owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if instance.is_none() {
            return Ok(slf.clone().into_any());
        }
        let py = slf.py();
        upcall::call(
            pyrefs::refs(py)?.method_type.bind(py),
            [slf.as_any(), instance],
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        visit.call(instance_dict(&self.vectorcall))?;
        visit.call(self.core.as_py())
    }

    /// `Guarded[P, T]` in annotations evaluated at runtime (the stub makes it generic).
    #[classmethod]
    fn __class_getitem__<'py>(
        cls: &Bound<'py, pyo3::types::PyType>,
        _item: &Bound<'py, PyAny>,
    ) -> Bound<'py, pyo3::types::PyType> {
        cls.clone()
    }

    #[getter]
    fn breaker(&self, py: Python<'_>) -> Breaker {
        Breaker {
            core: self.core.clone_ref(py),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<guarded {}>", upcall::repr(self.func.bind(py))?))
    }
}

/// An immutable snapshot of one breaker's counters and state.
#[pyclass(frozen, get_all, module = "panelboard")]
pub struct Metrics {
    state: Py<PyAny>,
    consecutive_failures: u64,
    calls: u64,
    successes: u64,
    failures: u64,
    ignored: u64,
    rejected: u64,
    times_opened: u64,
    retry_after: f64,
    /// Calls that took longer than `slow_call_duration`, ever (whatever their outcome).
    slow_calls: u64,
    /// Calls (successes and failures) in the current window of the rate rules, and of them the
    /// failures and the slow calls; `failure_rate` and `slow_call_rate` are their ratios, `None`
    /// when the window holds no calls.
    window_calls: u64,
    window_failures: u64,
    window_slow: u64,
    failure_rate: Option<f64>,
    slow_call_rate: Option<f64>,
}

impl Metrics {
    pub fn of(py: Python<'_>, core: &BreakerCore) -> PyResult<Metrics> {
        let (word, retry_after) = core.observe(py);
        let totals = core.storage.totals();
        let config = core.config.load();
        let clock = &core.hub.get().clock;
        let limits = core.limits(&config);
        let window = core.machine(&limits).window_counts(clock.now_us());
        let ratio = |count: u64| (window.calls > 0).then(|| count as f64 / window.calls as f64);
        Ok(Metrics {
            state: pyrefs::state(py, word.mode())?.unbind(),
            consecutive_failures: if word.mode() == Mode::Closed {
                word.failures()
            } else {
                0
            },
            calls: totals.calls,
            successes: totals.successes,
            failures: totals.failures,
            ignored: totals.ignored,
            rejected: totals.rejected,
            times_opened: core.storage.times_opened(),
            retry_after,
            slow_calls: core.slow_calls.load(std::sync::atomic::Ordering::Relaxed),
            window_calls: window.calls,
            window_failures: window.failures,
            window_slow: window.slow,
            failure_rate: ratio(window.failures),
            slow_call_rate: ratio(window.slow),
        })
    }
}

#[pymethods]
impl Metrics {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Metrics(state={}, consecutive_failures={}, calls={}, successes={}, failures={}, \
             ignored={}, rejected={}, times_opened={}, retry_after={:?}, slow_calls={}, \
             window_calls={}, window_failures={}, window_slow={}, failure_rate={}, \
             slow_call_rate={})",
            // `State` is a `str` enum: its text is its value, read without running `.value`.
            self.state
                .bind(py)
                .cast::<pyo3::types::PyString>()?
                .to_str()?,
            self.consecutive_failures,
            self.calls,
            self.successes,
            self.failures,
            self.ignored,
            self.rejected,
            self.times_opened,
            self.retry_after,
            self.slow_calls,
            self.window_calls,
            self.window_failures,
            self.window_slow,
            optional_repr(self.failure_rate),
            optional_repr(self.slow_call_rate),
        ))
    }
}

/// A ratio as Python's `repr` would write it (`None` when absent).
fn optional_repr(value: Option<f64>) -> String {
    value.map_or_else(|| "None".to_owned(), |v| format!("{v:?}"))
}
