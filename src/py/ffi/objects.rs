//! Object-level helpers on raw API: a type test cheaper than pyo3-ffi's, the UTF-8 encoding that a
//! `str` subclass cannot override, its one-pass decoding, and an exception's `args` set in place.

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

/// Whether `value` is exactly a coroutine object: one pointer comparison (pyo3-ffi's
/// `PyCoro_CheckExact` is a subtype check, a function call for every other result).
#[inline]
pub fn is_coroutine(value: &Bound<'_, PyAny>) -> bool {
    // SAFETY: reads the type pointer of a live object, and the address of a static type object.
    unsafe { ffi::Py_TYPE(value.as_ptr()) == std::ptr::addr_of_mut!(ffi::PyCoro_Type) }
}

/// `name`'s UTF-8 bytes with lone surrogates kept ("surrogatepass"), through the C function: a
/// `str` subclass may override `encode`.
pub fn utf8_surrogatepass<'py>(name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: a borrowed `str` and two static C strings; the result is new bytes, or null with an
    // exception set.
    let bytes = unsafe {
        Bound::from_owned_ptr_or_err(
            name.py(),
            ffi::PyUnicode_AsEncodedString(
                name.as_ptr(),
                c"utf-8".as_ptr(),
                c"surrogatepass".as_ptr(),
            ),
        )?
    };
    Ok(bytes.cast_into::<PyBytes>()?)
}

/// The `str` for UTF-8 bytes in one decoding pass, "surrogatepass" restoring the lone surrogates
/// that `utf8_surrogatepass` kept (it is only consulted for them).
pub fn str_from_utf8_surrogatepass<'py>(
    py: Python<'py>,
    bytes: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let len = ffi::Py_ssize_t::try_from(bytes.len())
        .map_err(|_| PyRuntimeError::new_err("panelboard: name too long"))?;
    // SAFETY: `bytes` is readable for `len` bytes and the errors handler is a C string; the result
    // is a new reference, or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_DecodeUTF8(bytes.as_ptr().cast(), len, c"surrogatepass".as_ptr()),
        )
    }
}

/// Sets the `args` of an exception object this thread has just created and not shared yet, as
/// raising it by hand would (`BaseException`'s `__reduce__` rebuilds it from them). Written into
/// the object directly: `setattr` (a descriptor lookup, then BaseException's setter) was 8% of what
/// a rejection cost (callgrind, 3.11).
pub fn set_new_exception_args(exception: &Bound<'_, PyAny>, args: Bound<'_, PyTuple>) {
    debug_assert!(exception.is_instance_of::<pyo3::exceptions::PyBaseException>());
    // SAFETY: the caller created `exception` and shares it with no other thread yet; its type
    // derives from BaseException, whose instances start with a PyBaseExceptionObject; its `args`
    // holds a strong reference (BaseException.__new__ stores the empty tuple), released once
    // replaced by the new tuple's reference.
    unsafe {
        let raw = exception.as_ptr().cast::<ffi::PyBaseExceptionObject>();
        let previous = std::ptr::replace(std::ptr::addr_of_mut!((*raw).args), args.into_ptr());
        ffi::Py_XDECREF(previous);
    }
}
