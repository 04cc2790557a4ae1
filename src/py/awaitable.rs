//! Native awaitables: what `breaker.acall(fn)` and a decorated `async def` function return
//! (`GuardedCoroutine`), and the awaitables of `async with breaker:`, finished before they are
//! awaited (`_Ready`).
//!
//! A `GuardedCoroutine` behaves as the coroutine
//!
//! ```python
//! async def guarded():
//!     ticket = admit()                 # CircuitOpenError when rejected: fn is not called
//!     try:
//!         result = await fn(*args, **kwargs)
//!     except BaseException as exc:
//!         record(ticket, classify(exc))
//!         raise
//!     record(ticket, classify(result))
//!     return result
//! ```
//!
//! without a Python frame: it admits on its first send (so a rejection is raised where it is
//! awaited, and creating one admits nothing), then drives the awaited iterator itself, passing
//! every value it yields up to the event loop and every value sent or exception thrown down to
//! it, and records the outcome exactly once, under the generation the call was admitted in
//! (`HeldTicket`). `close()`, or the object being collected unfinished, closes the awaited
//! iterator and settles the call as ignored, releasing a half-open slot. Awaiting it does not make
//! a `StopIteration` on CPython 3.11 (`ffi::awaitable`: `am_send`), and its class is registered as
//! a `collections.abc.Coroutine`, so `asyncio.create_task`, `gather`, `wait_for` and `asyncio.run`
//! take it.
//!
//! One task drives it at a time. Its stage is taken out of a mutex for the duration of a step and
//! put back afterwards, so no lock is held while Python runs; a second thread (or a reentrant
//! call) that finds the stage taken gets CPython's "coroutine already executing" `ValueError`.

use pyo3::exceptions::{
    PyAttributeError, PyGeneratorExit, PyRuntimeError, PyStopIteration, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyTuple, PyType};
use pyo3::{Borrowed, PyTraverseError, PyVisit};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::core::{shield, CoreRef, HeldTicket};
use super::ffi::awaitable::{install as install_slots, SendBody, Sent};
use super::ffi::entry::OwnedArgs;
use super::ffi::immortal::immortal;
use super::ffi::objects::is_coroutine;
use super::ffi::refs::AttachedObject;
use super::ffi::upcall;
use super::pyrefs;

/// Where a guarded coroutine is.
enum Stage {
    /// Made, not yet awaited: the call to make once admitted.
    Created {
        func: AttachedObject,
        args: OwnedArgs,
    },
    /// Admitted, suspended in the awaited iterator.
    Awaiting {
        inner: AttachedObject,
        held: HeldTicket,
    },
    /// A step is running (the stage is out of the mutex, on that step's stack).
    Running,
    /// Finished, closed or thrown into before it started: its outcome (if any) is recorded.
    Finished,
}

/// The awaitable of one guarded async call (see the module documentation).
#[pyclass(frozen, module = "panelboard._core")]
pub struct GuardedCoroutine {
    core: CoreRef,
    stage: Mutex<Stage>,
}

/// What a step does to the awaited iterator.
enum Step<'a, 'py> {
    Send(&'a Bound<'py, PyAny>),
    Throw(Bound<'py, PyAny>),
}

impl GuardedCoroutine {
    /// A coroutine that will call `func` with `args` through the breaker `core` when awaited.
    pub fn new(core: CoreRef, func: &Bound<'_, PyAny>, args: OwnedArgs) -> GuardedCoroutine {
        GuardedCoroutine {
            core,
            stage: Mutex::new(Stage::Created {
                func: AttachedObject::new(func),
                args,
            }),
        }
    }

    /// Takes the stage out for one step, leaving `Running`. Nothing is dropped under the lock.
    fn take(&self) -> PyResult<Stage> {
        let mut stage = self.stage.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*stage, Stage::Running) {
            // A `ValueError`, as CPython raises for a coroutine that is running (`gen_send_ex2`).
            return Err(PyValueError::new_err("coroutine already executing"));
        }
        Ok(std::mem::replace(&mut *stage, Stage::Running))
    }

    /// Puts the stage back after a step (what it replaces is `Running`, which holds nothing).
    fn put(&self, stage: Stage) {
        *self.stage.lock().unwrap_or_else(PoisonError::into_inner) = stage;
    }

    /// `send(value)`: starts the call (the first send must be `None`) or resumes it.
    pub fn send<'py>(&self, py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Sent<'py>> {
        match self.take()? {
            Stage::Awaiting { inner, held } => self.step(py, inner, held, Step::Send(value)),
            Stage::Created { func, args } => {
                if !value.is_none() {
                    self.put(Stage::Created { func, args });
                    return Err(PyTypeError::new_err(
                        "can't send non-None value to a just-started coroutine",
                    ));
                }
                self.start(py, func, args)
            }
            Stage::Finished | Stage::Running => {
                self.put(Stage::Finished);
                Err(PyRuntimeError::new_err(
                    "cannot reuse already awaited coroutine",
                ))
            }
        }
    }

    /// The first send: admit, call the function, then drive what it returned.
    fn start<'py>(
        &self,
        py: Python<'py>,
        func: AttachedObject,
        args: OwnedArgs,
    ) -> PyResult<Sent<'py>> {
        let held = match shield(|| self.core.admit_held(py)) {
            Ok(held) => held,
            Err(rejection) => {
                self.put(Stage::Finished);
                return Err(rejection);
            }
        };
        let func = func.bind(py);
        let awaitable = match args.call(func) {
            Ok(awaitable) => awaitable,
            Err(err) => {
                self.put(Stage::Finished);
                return Err(self.failed(py, held, err));
            }
        };
        drop(args);
        let inner = if is_coroutine(&awaitable) {
            awaitable
        } else {
            match await_iterator(py, func, awaitable, held, &self.core) {
                Ok(inner) => inner,
                Err(err) => {
                    self.put(Stage::Finished);
                    return Err(err);
                }
            }
        };
        let none = py.None().into_bound(py);
        self.step(py, AttachedObject::take(inner), held, Step::Send(&none))
    }

    /// Drives the awaited iterator one step; records the outcome if that finished it.
    fn step<'py>(
        &self,
        py: Python<'py>,
        inner: AttachedObject,
        held: HeldTicket,
        step: Step<'_, 'py>,
    ) -> PyResult<Sent<'py>> {
        let resumed = match step {
            Step::Send(value) => upcall::send(inner.bind(py), value),
            Step::Throw(exception) => throw_into(inner.bind(py), exception),
        };
        match resumed {
            Ok(Sent::Yielded(value)) => {
                self.put(Stage::Awaiting { inner, held });
                Ok(Sent::Yielded(value))
            }
            Ok(Sent::Returned(value)) => {
                self.put(Stage::Finished);
                drop(inner);
                match shield(|| Ok(self.core.settle_held_result(py, held, &value)))? {
                    None => Ok(Sent::Returned(value)),
                    Some(predicate_error) => Err(escaping(py, predicate_error)),
                }
            }
            Err(err) => {
                self.put(Stage::Finished);
                drop(inner);
                Err(self.failed(py, held, err))
            }
        }
    }

    /// Records a call that raised `err` and returns the exception to raise.
    fn failed(&self, py: Python<'_>, held: HeldTicket, err: PyErr) -> PyErr {
        if let Err(panic) = shield(|| {
            self.core.settle_held_error(py, held, &err);
            Ok(())
        }) {
            return panic;
        }
        escaping(py, err)
    }

    /// `throw(exception)`: raises it where the coroutine is suspended (in the awaited iterator).
    pub fn throw<'py>(&self, py: Python<'py>, exception: Bound<'py, PyAny>) -> PyResult<Sent<'py>> {
        match self.take()? {
            Stage::Awaiting { inner, held } => self.step(py, inner, held, Step::Throw(exception)),
            stage => {
                // Not started: it ends before calling anything, admitting nothing (as a coroutine
                // thrown into before its first line). Finished: the exception is raised as is.
                self.put(Stage::Finished);
                drop(stage);
                Err(PyErr::from_value(exception))
            }
        }
    }

    /// `close()`: a suspended call is ended as a coroutine's `close()` ends it (`GeneratorExit`
    /// raised at the `await`, which closes the awaited iterator first), and counts as ignored.
    pub fn close(&self, py: Python<'_>) -> PyResult<()> {
        let exit = py.get_type::<PyGeneratorExit>().call0()?;
        let stage = self.take()?;
        let Stage::Awaiting { inner, held } = stage else {
            self.put(Stage::Finished);
            drop(stage);
            return Ok(());
        };
        match self.step(py, inner, held, Step::Throw(exit)) {
            Err(err) if err.is_instance_of::<PyGeneratorExit>(py) => Ok(()),
            Err(err) => Err(err),
            // Cannot happen (the iterator is closed, not thrown into), but a coroutine that
            // answers `close()` with a value is CPython's error too.
            Ok(_) => Err(PyRuntimeError::new_err("coroutine ignored GeneratorExit")),
        }
    }

    /// Settles a call that will never finish: closes the awaited iterator (its `finally` blocks
    /// run, as when an unfinished coroutine is collected), then records the call as ignored.
    fn abandon(&self, py: Python<'_>, stage: Stage) {
        let Stage::Awaiting { inner, held } = stage else {
            return;
        };
        if let Err(err) = close_iterator(inner.bind(py)) {
            upcall::write_unraisable(py, err);
        }
        drop(inner);
        self.core.abandon_held(held);
    }
}

impl Drop for GuardedCoroutine {
    fn drop(&mut self) {
        let stage = std::mem::replace(
            self.stage.get_mut().unwrap_or_else(PoisonError::into_inner),
            Stage::Finished,
        );
        if matches!(stage, Stage::Finished | Stage::Running) {
            return;
        }
        let mut stage = Some(stage);
        Python::try_attach(|py| {
            upcall::with_exception_saved(py, || {
                if let Some(Stage::Created { func, .. }) = &stage {
                    warn_never_awaited(py, func);
                }
                if let Some(stage) = stage.take() {
                    self.abandon(py, stage);
                }
            })
        });
        // The interpreter is finalizing: settled without Python.
        if let Some(Stage::Awaiting { inner, held }) = stage {
            drop(inner);
            self.core.abandon_held(held);
        }
    }
}

/// Warns of a guarded call made and dropped without being awaited, as CPython warns of a
/// coroutine that is never awaited (a forgotten `await`).
fn warn_never_awaited(py: Python<'_>, func: &AttachedObject) {
    let described =
        upcall::repr(func.bind(py)).map_or_else(|_| "a function".to_owned(), |r| r.to_string());
    let message = format!(
        "the guarded call of {described} (a panelboard GuardedCoroutine) was never awaited"
    );
    if let Ok(message) = std::ffi::CString::new(message) {
        upcall::warn_runtime(py, &message);
    }
}

/// The iterator that `await awaitable` would drive, for what `fn` returned when it is not a
/// coroutine (a future, an object with `__await__`); a `TypeError` counted as ignored when it is
/// not awaitable at all (a sync function given to `acall`: the caller's bug, not the dependency's).
fn await_iterator<'py>(
    py: Python<'py>,
    func: &Bound<'py, PyAny>,
    awaitable: Bound<'py, PyAny>,
    held: HeldTicket,
    core: &CoreRef,
) -> PyResult<Bound<'py, PyAny>> {
    let refs = pyrefs::refs(py)?;
    match upcall::call(refs.aio_await_iterator.bind(py), [&awaitable]) {
        Ok(iterator) if !iterator.is_none() => Ok(iterator),
        Ok(_) => {
            shield(|| {
                core.settle_held_ignored(py, held);
                Ok(())
            })?;
            let error = upcall::call(refs.aio_not_awaitable.bind(py), [func, &awaitable])?;
            Err(PyErr::from_value(error))
        }
        Err(err) => {
            // `__await__` raised: what `await` would have raised, classified as usual.
            shield(|| {
                core.settle_held_error(py, held, &err);
                Ok(())
            })?;
            Err(escaping(py, err))
        }
    }
}

/// Raises `exception` in the awaited iterator `inner`, as `await` does when its coroutine is
/// thrown into: `GeneratorExit` closes the iterator and is then raised here; anything else goes to
/// the iterator's `throw`, or is raised here when it has none.
fn throw_into<'py>(inner: &Bound<'py, PyAny>, exception: Bound<'py, PyAny>) -> PyResult<Sent<'py>> {
    let py = inner.py();
    if exception.is_instance_of::<PyGeneratorExit>() {
        close_iterator(inner)?;
        return Err(PyErr::from_value(exception));
    }
    let throw = match upcall::getattr(inner, "throw") {
        Ok(throw) => throw,
        Err(err) if err.is_instance_of::<PyAttributeError>(py) => {
            return Err(PyErr::from_value(exception))
        }
        Err(err) => return Err(err),
    };
    match upcall::call(&throw, [&exception]) {
        Ok(yielded) => Ok(Sent::Yielded(yielded)),
        Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
            upcall::getattr(err.value(py), "value").map(Sent::Returned)
        }
        Err(err) => Err(err),
    }
}

/// Closes the awaited iterator, as `await` does when its coroutine is closed (an iterator without
/// `close` is left as it is).
fn close_iterator(inner: &Bound<'_, PyAny>) -> PyResult<()> {
    match upcall::getattr(inner, "close") {
        Ok(close) => upcall::call(&close, []).map(drop),
        Err(err) if err.is_instance_of::<PyAttributeError>(inner.py()) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The exception a coroutine raises for `err`: a `StopIteration` that escapes a coroutine becomes
/// a `RuntimeError` (PEP 479), so that it cannot pass for the coroutine's return.
fn escaping(py: Python<'_>, err: PyErr) -> PyErr {
    if !err.is_instance_of::<PyStopIteration>(py) {
        return err;
    }
    let runtime = PyRuntimeError::new_err("coroutine raised StopIteration");
    runtime.set_cause(py, Some(err));
    runtime
}

/// The `StopIteration` that finishes an iterator with `value`.
fn stop_iteration(value: Bound<'_, PyAny>) -> PyErr {
    match value.py().get_type::<PyStopIteration>().call1((value,)) {
        Ok(stop) => PyErr::from_value(stop),
        Err(err) => err,
    }
}

/// A step as the Python-level `send`/`throw` answer it: the value yielded, or `StopIteration`.
fn as_method_result(sent: PyResult<Sent<'_>>) -> PyResult<Bound<'_, PyAny>> {
    match sent? {
        Sent::Yielded(value) => Ok(value),
        Sent::Returned(value) => Err(stop_iteration(value)),
    }
}

/// A step as `__next__` answers it (`None`: `StopIteration` without a value).
fn as_next_result(sent: PyResult<Sent<'_>>) -> PyResult<Option<Bound<'_, PyAny>>> {
    match sent? {
        Sent::Yielded(value) => Ok(Some(value)),
        Sent::Returned(value) if value.is_none() => Ok(None),
        Sent::Returned(value) => Err(stop_iteration(value)),
    }
}

/// The exception `throw(typ, val, tb)` raises, normalised as a generator's `throw` does.
fn exception_to_throw<'py>(
    typ: &Bound<'py, PyAny>,
    val: Option<&Bound<'py, PyAny>>,
    tb: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let val = val.filter(|v| !v.is_none());
    let exception = if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        if val.is_some() {
            return Err(PyTypeError::new_err(
                "instance exception may not have a separate value",
            ));
        }
        typ.clone()
    } else if typ.cast::<PyType>().is_ok_and(|t| {
        t.is_subclass_of::<pyo3::exceptions::PyBaseException>()
            .unwrap_or(false)
    }) {
        match val {
            Some(val) if upcall::is_instance(val, typ)? => val.clone(),
            Some(val) => match val.cast::<PyTuple>() {
                Ok(args) => upcall::call_with(typ, args, None)?,
                Err(_) => upcall::call(typ, [val])?,
            },
            None => upcall::call(typ, [])?,
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "exceptions must be classes or instances deriving from BaseException, not {}",
            super::config::type_name(typ)
        )));
    };
    if !exception.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        return Err(PyTypeError::new_err(format!(
            "calling {} should have returned an instance of BaseException, not {}",
            upcall::repr(typ)?,
            super::config::type_name(&exception)
        )));
    }
    if let Some(tb) = tb.filter(|tb| !tb.is_none()) {
        if !tb.is_instance_of::<pyo3::types::PyTraceback>() {
            return Err(PyTypeError::new_err(
                "throw() third argument must be a traceback object",
            ));
        }
        upcall::setattr(&exception, "__traceback__", tb)?;
    }
    Ok(exception)
}

#[pymethods]
impl GuardedCoroutine {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        as_next_result(self.send(py, &py.None().into_bound(py)))
    }

    #[pyo3(name = "send", signature = (value, /))]
    fn py_send<'py>(&self, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        as_method_result(self.send(value.py(), value))
    }

    #[pyo3(name = "throw", signature = (typ, val=None, tb=None, /))]
    fn py_throw<'py>(
        &self,
        typ: &Bound<'py, PyAny>,
        val: Option<&Bound<'py, PyAny>>,
        tb: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exception = exception_to_throw(typ, val, tb)?;
        as_method_result(self.throw(typ.py(), exception))
    }

    #[pyo3(name = "close")]
    fn py_close(&self, py: Python<'_>) -> PyResult<()> {
        self.close(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(self.core.as_py())?;
        // A stage taken by a running step is on that step's stack, held from outside.
        let Ok(stage) = self.stage.try_lock() else {
            return Ok(());
        };
        match &*stage {
            Stage::Created { func, args } => {
                visit.call(func.as_py())?;
                args.traverse(&visit)
            }
            Stage::Awaiting { inner, .. } => visit.call(inner.as_py()),
            Stage::Running | Stage::Finished => Ok(()),
        }
    }

    /// Found in a garbage cycle: it will never finish, so it lets go of what it holds (breaking
    /// the cycle) and settles an admitted call as ignored.
    fn __clear__(&self, py: Python<'_>) {
        let stage = match self.stage.try_lock() {
            Ok(mut stage) if !matches!(*stage, Stage::Running) => {
                std::mem::replace(&mut *stage, Stage::Finished)
            }
            _ => return,
        };
        upcall::with_exception_saved(py, || self.abandon(py, stage));
    }

    fn __repr__(&self) -> &'static str {
        match self.stage.try_lock().as_deref() {
            Ok(Stage::Created { .. }) => "<GuardedCoroutine not started>",
            Ok(Stage::Awaiting { .. }) => "<GuardedCoroutine suspended>",
            Ok(Stage::Finished) => "<GuardedCoroutine finished>",
            Ok(Stage::Running) | Err(_) => "<GuardedCoroutine running>",
        }
    }
}

/// The `am_send` of `GuardedCoroutine`.
struct SendGuarded;

impl SendBody for SendGuarded {
    #[inline]
    fn send<'py>(
        py: Python<'py>,
        slf: Borrowed<'_, 'py, PyAny>,
        value: Borrowed<'_, 'py, PyAny>,
    ) -> PyResult<Sent<'py>> {
        let coroutine = shield(|| Ok(slf.cast::<GuardedCoroutine>()?))?;
        coroutine.get().send(py, &value)
    }
}

/// An awaitable that is finished before it is awaited: what `Breaker.__aenter__` and a block's
/// `__aexit__` return (they do their work when called). Stateless, so it may be awaited any
/// number of times, from any thread, like a finished future.
#[pyclass(frozen, module = "panelboard._core", name = "_Ready")]
pub struct Ready {
    value: AttachedObject,
}

#[pymethods]
impl Ready {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        as_next_result(Ok(Sent::Returned(self.value.bind(py).clone())))
    }

    #[pyo3(signature = (value, /))]
    fn send<'py>(&self, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        Err(stop_iteration(self.value.bind(value.py()).clone()))
    }

    #[pyo3(signature = (typ, val=None, tb=None, /))]
    fn throw<'py>(
        &self,
        typ: &Bound<'py, PyAny>,
        val: Option<&Bound<'py, PyAny>>,
        tb: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Err(PyErr::from_value(exception_to_throw(typ, val, tb)?))
    }

    fn close(&self) {}

    // No `__traverse__`: like a `Permit`, a `_Ready` is not tracked by the collector, so that
    // `async with` costs it no work; all it holds is the breaker it was entered on.
}

/// The `am_send` of `_Ready`: returns its value at once.
struct SendReady;

impl SendBody for SendReady {
    #[inline]
    fn send<'py>(
        py: Python<'py>,
        slf: Borrowed<'_, 'py, PyAny>,
        _value: Borrowed<'_, 'py, PyAny>,
    ) -> PyResult<Sent<'py>> {
        let ready = shield(|| Ok(slf.cast::<Ready>()?))?;
        Ok(Sent::Returned(ready.get().value.bind(py).clone()))
    }
}

/// The one `_Ready(False)`, what every `async with` block's exit returns (made immortal on
/// free-threaded 3.13, so that threads leaving blocks share no reference count).
static READY_FALSE: OnceLock<Py<PyAny>> = OnceLock::new();

/// An awaitable that returns `value` at once.
pub fn ready<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    Ok(Bound::new(
        value.py(),
        Ready {
            value: AttachedObject::new(value),
        },
    )?
    .into_any())
}

/// An awaitable that returns `False` at once (an `async with` block's exit: not suppressed).
pub fn ready_false(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    match READY_FALSE.get() {
        Some(ready) => Ok(ready.bind(py).clone()),
        None => ready(PyBool::new(py, false).as_any()),
    }
}

/// Installs the awaitables' slots and registers their classes as `collections.abc.Coroutine`s.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let guarded = py.get_type::<GuardedCoroutine>();
    let ready_type = py.get_type::<Ready>();
    install_slots::<SendGuarded>(&guarded)?;
    install_slots::<SendReady>(&ready_type)?;
    let coroutine_abc = py.import("collections.abc")?.getattr("Coroutine")?;
    coroutine_abc.call_method1("register", (&guarded,))?;
    coroutine_abc.call_method1("register", (&ready_type,))?;
    if READY_FALSE.get().is_none() {
        let made = immortal(ready(PyBool::new(py, false).as_any())?);
        let _ = READY_FALSE.set(made.unbind());
    }
    Ok(())
}
