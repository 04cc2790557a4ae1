//! Python objects the bindings look up once: the `State` members, the `panelboard` logger, the
//! context variable that carries `with breaker:` permits, and the asyncio helpers.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};
use std::borrow::Cow;

use crate::engine::Mode;

fn member<'py>(py: Python<'py>, mode: Mode) -> PyResult<&'py Py<PyAny>> {
    static STATES: PyOnceLock<[Py<PyAny>; 5]> = PyOnceLock::new();
    let states = STATES.get_or_try_init(py, || -> PyResult<_> {
        let state = py.import("panelboard._types")?.getattr("State")?;
        let get = |name: &str| state.getattr(name).map(Bound::unbind);
        Ok([
            get("CLOSED")?,
            get("OPEN")?,
            get("HALF_OPEN")?,
            get("FORCED_OPEN")?,
            get("DISABLED")?,
        ])
    })?;
    let index = match mode {
        Mode::Closed => 0,
        Mode::Open => 1,
        Mode::HalfOpen => 2,
        Mode::ForcedOpen => 3,
        Mode::Disabled => 4,
    };
    Ok(&states[index])
}

/// The `panelboard.State` member for `mode`.
pub fn state<'py>(py: Python<'py>, mode: Mode) -> PyResult<Bound<'py, PyAny>> {
    member(py, mode).map(|m| m.bind(py).clone())
}

pub fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            py.import("logging")?
                .call_method1("getLogger", ("panelboard",))
                .map(Bound::unbind)
        })
        .map(|l| l.bind(py))
}

/// `contextvars.ContextVar` holding the stack of permits taken by `with`/`async with` blocks in
/// the current thread or task, as nested `(permit, rest)` tuples.
pub fn permit_stack(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static VAR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    VAR.get_or_try_init(py, || {
        py.import("contextvars")?
            .getattr("ContextVar")?
            .call1(("panelboard_permits",))
            .map(Bound::unbind)
    })
    .map(|v| v.bind(py))
}

/// The current thread's or task's permit stack (`None` when empty).
pub fn permit_stack_get(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let var = permit_stack(py)?;
    let mut value: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `var` is a ContextVar; on success `value` is a new reference (or NULL: no value).
    let status =
        unsafe { pyo3::ffi::PyContextVar_Get(var.as_ptr(), py.None().as_ptr(), &mut value) };
    if status < 0 {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: with a default given, `value` is a new, non-NULL reference.
    Ok(unsafe { Bound::from_owned_ptr(py, value) })
}

/// Replaces the current thread's or task's permit stack.
pub fn permit_stack_set(py: Python<'_>, stack: &Bound<'_, PyAny>) -> PyResult<()> {
    let var = permit_stack(py)?;
    // SAFETY: `var` is a ContextVar; the returned token is a new reference we drop at once.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyContextVar_Set(var.as_ptr(), stack.as_ptr()),
        )?;
    }
    Ok(())
}

/// A function of `panelboard._aio` (the coroutine helpers live in Python: an `async def` frame is
/// what asyncio needs anyway).
pub fn aio<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || py.import("panelboard._aio").map(Bound::unbind))?
        .bind(py)
        .getattr(name)
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
            let bytes = name.call_method1("encode", ("utf-8", "surrogatepass"))?;
            Ok(Cow::Owned(bytes.cast::<PyBytes>()?.as_bytes().to_vec()))
        }
    }
}

/// The `str` for stored name bytes.
pub fn name_str<'py>(py: Python<'py>, key: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match std::str::from_utf8(key) {
        Ok(s) => Ok(PyString::new(py, s).into_any()),
        Err(_) => PyBytes::new(py, key).call_method1("decode", ("utf-8", "surrogatepass")),
    }
}
