//! Python objects the bindings look up once: the `State` members, the `panelboard` logger, the
//! context variable that carries `with breaker:` permits, and the asyncio helpers.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::borrow::Cow;
use std::sync::OnceLock;

use super::ffi::{contextvar, objects};
use crate::engine::Mode;

/// The Python objects the bindings use, looked up when the module is imported.
pub struct Refs {
    /// `State` members, indexed by `state_index`.
    states: [Py<PyAny>; 5],
    /// `logging.getLogger`: the `panelboard` logger is fetched when something is logged, not at
    /// import, so that a `logging.config.dictConfig()` run after the import (which disables the
    /// loggers that exist by then) does not silence it.
    pub get_logger: Py<PyAny>,
    /// `contextvars.ContextVar` holding the stack of permits taken by `with`/`async with` blocks
    /// in the current thread or task, as nested `(permit, rest)` tuples.
    permit_stack: Py<PyAny>,
    /// The helpers of `panelboard._aio`: `acall` with a timeout (it needs `asyncio.timeout`),
    /// `decorate` (which kind of function is decorated), and the rare paths of the native
    /// awaitables (`src/py/awaitable.rs`).
    pub aio_acall: Py<PyAny>,
    pub aio_decorate: Py<PyAny>,
    pub aio_native_async: Py<PyAny>,
    pub aio_wrap_native_async: Py<PyAny>,
    pub aio_await_iterator: Py<PyAny>,
    pub aio_not_awaitable: Py<PyAny>,
    pub update_wrapper: Py<PyAny>,
    pub method_type: Py<PyAny>,
}

impl Refs {
    fn look_up(py: Python<'_>) -> PyResult<Refs> {
        let attr = |module: &str, name: &str| -> PyResult<Py<PyAny>> {
            Ok(py.import(module)?.getattr(name)?.unbind())
        };
        let state = py.import("panelboard._types")?.getattr("State")?;
        let member = |name: &str| state.getattr(name).map(Bound::unbind);
        Ok(Refs {
            states: [
                member("CLOSED")?,
                member("OPEN")?,
                member("HALF_OPEN")?,
                member("FORCED_OPEN")?,
                member("DISABLED")?,
            ],
            get_logger: attr("logging", "getLogger")?,
            permit_stack: py
                .import("contextvars")?
                .getattr("ContextVar")?
                .call1(("panelboard_permits",))?
                .unbind(),
            aio_acall: attr("panelboard._aio", "acall")?,
            aio_decorate: attr("panelboard._aio", "decorate")?,
            aio_native_async: attr("panelboard._aio", "NATIVE_ASYNC")?,
            aio_wrap_native_async: attr("panelboard._aio", "wrap_native_async")?,
            aio_await_iterator: attr("panelboard._aio", "await_iterator")?,
            aio_not_awaitable: attr("panelboard._aio", "not_awaitable")?,
            update_wrapper: attr("functools", "update_wrapper")?,
            method_type: attr("types", "MethodType")?,
        })
    }
}

static REFS: OnceLock<Refs> = OnceLock::new();

/// Looks everything up; called when the module is imported, so that no later call has to. (A
/// lookup runs Python code, and Python code is where a daemon thread is ended at shutdown: see
/// `upcall`.)
pub fn init(py: Python<'_>) -> PyResult<()> {
    refs(py).map(|_| ())
}

/// The looked-up objects. Unlike `PyOnceLock`, a thread that finds them missing does the lookup
/// itself instead of waiting, with the interpreter released, for another thread to finish it:
/// taking the interpreter back is exactly where CPython ends daemon threads at shutdown. When two
/// threads race, the first to store its lookup wins and the other's is dropped.
pub fn refs(py: Python<'_>) -> PyResult<&'static Refs> {
    if let Some(refs) = REFS.get() {
        return Ok(refs);
    }
    let looked_up = Refs::look_up(py)?;
    let _ = REFS.set(looked_up);
    REFS.get()
        .ok_or_else(|| PyRuntimeError::new_err("panelboard: lookup of Python objects failed"))
}

/// The `panelboard.State` member for `mode`.
pub fn state<'py>(py: Python<'py>, mode: Mode) -> PyResult<Bound<'py, PyAny>> {
    let index = match mode {
        Mode::Closed => 0,
        Mode::Open => 1,
        Mode::HalfOpen => 2,
        Mode::ForcedOpen => 3,
        Mode::Disabled => 4,
    };
    Ok(refs(py)?.states[index].bind(py).clone())
}

/// The value of `mode`'s `State` member (read here rather than through the enum's `value`
/// property, which is Python code).
pub fn state_value(mode: Mode) -> &'static str {
    match mode {
        Mode::Closed => "closed",
        Mode::Open => "open",
        Mode::HalfOpen => "half_open",
        Mode::ForcedOpen => "forced_open",
        Mode::Disabled => "disabled",
    }
}

fn permit_stack(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(refs(py)?.permit_stack.bind(py))
}

/// The current thread's or task's permit stack (`None` when empty).
pub fn permit_stack_get(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    contextvar::get(permit_stack(py)?)
}

/// Replaces the current thread's or task's permit stack.
pub fn permit_stack_set(py: Python<'_>, stack: &Bound<'_, PyAny>) -> PyResult<()> {
    contextvar::set(permit_stack(py)?, stack)
}

/// Name keys are the name's UTF-8 bytes, borrowed from the `str`'s cached UTF-8 when it has one.
/// Lone surrogates (valid in a Python `str`) are kept with "surrogatepass", so that every `str` is a
/// usable, distinct name.
pub fn name_key<'a>(name: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    let Ok(name) = name.cast::<PyString>() else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "name must be a str, not {}",
            super::config::type_name(name)
        )));
    };
    match name.to_str() {
        Ok(s) => Ok(Cow::Borrowed(s.as_bytes())),
        Err(_) => {
            let bytes = objects::utf8_surrogatepass(name)?;
            Ok(Cow::Owned(bytes.as_bytes().to_vec()))
        }
    }
}

/// The `str` for stored name bytes: one decoding pass, in which "surrogatepass" restores the lone
/// surrogates `name_key` kept (it is only consulted for them).
pub fn name_str<'py>(py: Python<'py>, key: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    objects::str_from_utf8_surrogatepass(py, key)
}
