//! The context-variable C API, for the permit stack of manually entered `with breaker:` blocks
//! (no method lookup, no call into Python).

use pyo3::ffi;
use pyo3::prelude::*;

/// `var.get(None)` for a `contextvars.ContextVar`.
pub fn get<'py>(var: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = var.py();
    let mut value: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: borrowed objects; CPython raises `TypeError` if `var` is not a ContextVar. On
    // success `value` is a new reference (with a default given, never null).
    let status = unsafe { ffi::PyContextVar_Get(var.as_ptr(), py.None().as_ptr(), &mut value) };
    if status < 0 {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: as above: a new reference, or null (then an error, not a crash).
    unsafe { Bound::from_owned_ptr_or_err(py, value) }
}

/// `var.set(value)` for a `contextvars.ContextVar` (the returned token is dropped at once).
pub fn set(var: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: borrowed objects (CPython checks `var`'s type); the token is a new reference, or
    // null with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            var.py(),
            ffi::PyContextVar_Set(var.as_ptr(), value.as_ptr()),
        )?;
    }
    Ok(())
}
