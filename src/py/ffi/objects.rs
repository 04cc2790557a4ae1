//! Object-level helpers on raw API: a type test cheaper than pyo3-ffi's, and the UTF-8 encoding
//! that a `str` subclass cannot override.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

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
