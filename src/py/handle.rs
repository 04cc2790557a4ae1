//! The Python-facing breaker handle, the decorated-function wrapper, permits and metrics.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicBool, Ordering};

use super::core::{guarded, BreakerCore, CoreRef};
use super::fastcall;
use super::pyrefs;
use super::upcall;
use crate::engine::{Mode, Outcome, Ticket};

/// A handle on one breaker. Calling through it does no name lookup; it keeps working on its own
/// breaker after that breaker is deleted from the registry.
#[pyclass(frozen, module = "panelboard", weakref)]
pub struct Breaker {
    pub(crate) core: CoreRef,
}

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

    // `call(fn, /, *args, **kwargs)` is installed by `fastcall::install` as a METH_FASTCALL method
    // that forwards its arguments to `fn` without building a tuple or dict.

    /// Awaits `fn(*args, **kwargs)` through the breaker (returns a coroutine).
    #[pyo3(signature = (r#fn, /, *args, **kwargs))]
    fn acall<'py>(
        slf: &Bound<'py, Self>,
        r#fn: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if !r#fn.is_callable() {
            return Err(not_callable("fn", r#fn));
        }
        let kwargs = match kwargs {
            Some(k) => k.clone(),
            None => PyDict::new(py),
        };
        let acall = pyrefs::refs(py)?.aio_acall.bind(py);
        upcall::call(acall, [slf.as_any(), r#fn, args.as_any(), kwargs.as_any()])
    }

    /// Decorates a function (sync or async) so that every call goes through the breaker.
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if !func.is_callable() {
            return Err(not_callable("the decorated object", func));
        }
        let refs = pyrefs::refs(py)?;
        let is_async = |f: &Bound<'py, PyAny>| -> PyResult<bool> {
            upcall::truthy(&upcall::call(refs.iscoroutinefunction.bind(py), [f])?)
        };
        // An object whose `__call__` is `async def` is an async function too.
        let call_method = upcall::getattr(func, "__call__")?;
        if is_async(func)? || is_async(&call_method)? {
            return upcall::call(refs.aio_decorate.bind(py), [slf.as_any(), func]);
        }
        let guarded = Bound::new(
            py,
            Guarded::new(slf.get().core.clone_ref(py), func.clone().unbind()),
        )?;
        upcall::call(refs.update_wrapper.bind(py), [guarded.as_any(), func])?;
        Ok(guarded.into_any())
    }

    /// A permit for one call, or `None` when the breaker rejects it. Never raises for an open
    /// breaker: rejection costs no exception.
    fn try_acquire(&self, py: Python<'_>) -> Option<Permit> {
        let config = self.core.config.load();
        self.core
            .try_admit(py, &config)
            .map(|ticket| Permit::new(self.core.clone_ref(py), ticket))
    }

    /// A permit, or `CircuitOpenError` (used by the async helpers).
    fn _acquire(&self, py: Python<'_>) -> PyResult<Permit> {
        let config = self.core.config.load();
        let ticket = self.core.admit(py, &config)?;
        Ok(Permit::new(self.core.clone_ref(py), ticket))
    }

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        let py = slf.py();
        let permit = Bound::new(py, slf.get()._acquire(py)?)?;
        let below = pyrefs::permit_stack_get(py)?;
        pyrefs::permit_stack_set(py, PyTuple::new(py, [permit.into_any(), below])?.as_any())?;
        Ok(slf.clone())
    }

    #[pyo3(signature = (_exc_type, exc, _traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
        _traceback: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let permit = self.pop_permit(py)?;
        let permit = permit.get();
        if exc.is_none() {
            permit.settle(py, Outcome::Success)?;
        } else {
            permit._settle_error(py, exc)?;
        }
        Ok(false)
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let entered = Self::__enter__(slf)?;
        let py = slf.py();
        upcall::call(pyrefs::refs(py)?.aio_ready.bind(py), [entered.as_any()])
    }

    #[pyo3(signature = (exc_type, exc, traceback))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: &Bound<'py, PyAny>,
        exc: &Bound<'py, PyAny>,
        traceback: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let suppress = self.__exit__(py, exc_type, exc, traceback)?;
        let suppress = PyBool::new(py, suppress).to_owned().into_any();
        upcall::call(pyrefs::refs(py)?.aio_ready.bind(py), [&suppress])
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

impl Breaker {
    /// Takes this breaker's innermost permit off the `with` stack of the current thread or task.
    fn pop_permit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, Permit>> {
        let mut skipped = Vec::new();
        let mut node = pyrefs::permit_stack_get(py)?;
        while !node.is_none() {
            let (permit, below): (Bound<'py, Permit>, Bound<'py, PyAny>) = node.extract()?;
            if permit.get().core.same(&self.core) {
                let mut rebuilt = below;
                for other in skipped.into_iter().rev() {
                    rebuilt = PyTuple::new(py, [other, rebuilt])?.into_any();
                }
                pyrefs::permit_stack_set(py, &rebuilt)?;
                return Ok(permit);
            }
            skipped.push(permit.into_any());
            node = below;
        }
        Err(PyRuntimeError::new_err(
            "__exit__ without a matching __enter__ on this breaker",
        ))
    }
}

pub fn not_callable(what: &str, value: &Bound<'_, PyAny>) -> PyErr {
    pyo3::exceptions::PyTypeError::new_err(format!(
        "{what} must be callable, not {}",
        super::config::type_name(value)
    ))
}

/// A function decorated with a breaker: calling it is one native call. Instances carry a
/// vectorcall entry point (see `fastcall`), so arguments reach the function without a tuple.
#[pyclass(frozen, dict, weakref, module = "panelboard")]
pub struct Guarded {
    pub(crate) vectorcall: fastcall::VectorcallSlot,
    pub(crate) core: CoreRef,
    pub(crate) func: Py<PyAny>,
}

impl Guarded {
    pub(crate) fn new(core: CoreRef, func: Py<PyAny>) -> Guarded {
        Guarded {
            vectorcall: fastcall::VectorcallSlot::GUARDED,
            core,
            func,
        }
    }

    /// A throwaway instance, used once to find where the vectorcall field sits in the object.
    pub(crate) fn probe(py: Python<'_>) -> PyResult<Guarded> {
        Ok(Guarded::new(BreakerCore::detached(py)?, py.None()))
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
        guarded(&self.core, py, || upcall::call_with(func, args, kwargs))
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
        visit.call(fastcall::guarded_dict(&self.vectorcall))?;
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

/// Permission for one call. Exactly one outcome may be reported; a permit dropped without one
/// counts as ignored, which releases its half-open slot.
#[pyclass(frozen, module = "panelboard")]
pub struct Permit {
    core: CoreRef,
    ticket: Ticket,
    settled: AtomicBool,
}

impl Permit {
    fn new(core: CoreRef, ticket: Ticket) -> Permit {
        Permit {
            core,
            ticket,
            settled: AtomicBool::new(false),
        }
    }

    fn claim(&self) -> PyResult<()> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Err(PyRuntimeError::new_err(
                "this permit's outcome was already reported",
            ));
        }
        Ok(())
    }

    fn settle(&self, py: Python<'_>, outcome: Outcome) -> PyResult<()> {
        self.claim()?;
        self.core
            .finish(py, &self.core.config.load(), self.ticket, outcome);
        Ok(())
    }
}

#[pymethods]
impl Permit {
    fn success(&self, py: Python<'_>) -> PyResult<()> {
        self.settle(py, Outcome::Success)
    }

    fn failure(&self, py: Python<'_>) -> PyResult<()> {
        self.settle(py, Outcome::Failure)
    }

    fn ignore(&self, py: Python<'_>) -> PyResult<()> {
        self.settle(py, Outcome::Ignored)
    }

    /// Classifies a returned value with the breaker's `success` predicate and records it; raises the
    /// predicate's exception if it raised.
    fn _settle_result(&self, py: Python<'_>, result: &Bound<'_, PyAny>) -> PyResult<()> {
        self.claim()?;
        let config = self.core.config.load();
        let (outcome, predicate_error) = config.classify_result(result);
        self.core.finish(py, &config, self.ticket, outcome);
        predicate_error.map_or(Ok(()), Err)
    }

    /// Classifies a raised exception with the breaker's `failure_on`/`ignore` and records it.
    fn _settle_error(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        self.claim()?;
        let config = self.core.config.load();
        let outcome = config.classify_error(py, &PyErr::from_value(exc.clone()));
        self.core.finish(py, &config, self.ticket, outcome);
        Ok(())
    }

    /// True once an outcome has been reported.
    #[getter]
    fn settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Permit {}{}>",
            if self.ticket.is_probe() {
                "probe"
            } else {
                "call"
            },
            if self.settled() { ", settled" } else { "" }
        )
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            // Ignored outcomes never change the mode, so no listener has to run here.
            self.core
                .record(&self.core.config.load(), self.ticket, Outcome::Ignored);
        }
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
}

impl Metrics {
    pub fn of(py: Python<'_>, core: &BreakerCore) -> PyResult<Metrics> {
        let (word, retry_after) = core.observe(py);
        let totals = core.counters.totals();
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
            times_opened: core.times_opened.load(Ordering::Relaxed),
            retry_after,
        })
    }
}

#[pymethods]
impl Metrics {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Metrics(state={}, consecutive_failures={}, calls={}, successes={}, failures={}, \
             ignored={}, rejected={}, times_opened={}, retry_after={:?})",
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
            self.retry_after
        ))
    }
}
