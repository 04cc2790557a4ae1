//! The three calls that sit on every guarded RPC, wired to CPython's vectorcall protocol by hand.
//!
//! PyO3 routes a method that takes `*args, **kwargs` through `METH_VARARGS`, which builds an
//! argument tuple (and slices it) on every call: more than the rest of the guarded call costs. So
//! `Breaker.call`, `Registry.call` and calling a decorated function are `METH_FASTCALL` /
//! vectorcall entry points that hand the caller's argument array straight to the user's function.
//! Each one is still a single native call doing admit, call, classify and record (`core::guarded`).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::ffi::{c_int, CStr};
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

use super::core::guarded;
use super::handle::{not_callable, Breaker, Guarded};
use super::registry::Registry;

/// Runs `body` as the body of a C entry point: errors are restored as the current exception, and
/// a Rust panic becomes `PanicException` instead of unwinding into C.
fn entry_point(
    body: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls these entry points with the calling thread attached.
    let py = unsafe { Python::assume_attached() };
    match catch_unwind(AssertUnwindSafe(|| body(py))) {
        Ok(Ok(value)) => value.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            null_mut()
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic in panelboard".to_owned());
            PanicException::new_err((message,)).restore(py);
            null_mut()
        }
    }
}

/// `PyObject_Vectorcall(func, args, nargsf, kwnames)` as a `PyResult`.
///
/// SAFETY: `args` holds `PyVectorcall_NARGS(nargsf)` positional arguments followed by one value per
/// name in `kwnames`, as CPython hands them to the entry point.
unsafe fn vectorcall<'py>(
    func: &Bound<'py, PyAny>,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    Bound::from_owned_ptr_or_err(
        func.py(),
        ffi::PyObject_Vectorcall(func.as_ptr(), args, nargsf, kwnames),
    )
}

/// `Breaker.call(fn, /, *args, **kwargs)`.
unsafe extern "C" fn breaker_call(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry_point(|py| {
        let slf = Bound::from_borrowed_ptr(py, slf);
        let breaker = slf.cast::<Breaker>()?;
        if nargs < 1 {
            return Err(PyTypeError::new_err(
                "Breaker.call() missing required argument 'fn'",
            ));
        }
        let func = Bound::from_borrowed_ptr(py, *args);
        if !func.is_callable() {
            return Err(not_callable("fn", &func));
        }
        let rest = (nargs - 1) as usize;
        guarded(&breaker.get().core, py, || {
            vectorcall(&func, args.add(1), rest, kwnames)
        })
    })
}

/// `Registry.call(name, fn, **options)`: `name` and `fn` by position or keyword, every other
/// keyword an option.
unsafe extern "C" fn registry_call(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry_point(|py| {
        let slf = Bound::from_borrowed_ptr(py, slf);
        let registry = slf.cast::<Registry>()?;
        if nargs > 2 {
            return Err(PyTypeError::new_err(format!(
                "Registry.call() takes 2 positional arguments (name, fn) but {nargs} were given"
            )));
        }
        let positional =
            |i: ffi::Py_ssize_t| (i < nargs).then(|| Bound::from_borrowed_ptr(py, *args.offset(i)));
        let (mut name, mut func) = (positional(0), positional(1));
        let mut options = None;
        if !kwnames.is_null() {
            let names = Bound::from_borrowed_ptr(py, kwnames).cast_into::<PyTuple>()?;
            for (i, key) in names.iter().enumerate() {
                let value =
                    Bound::from_borrowed_ptr(py, *args.offset(nargs + i as ffi::Py_ssize_t));
                let slot = match key.cast::<PyString>()?.to_str()? {
                    "name" => &mut name,
                    "fn" => &mut func,
                    _ => {
                        options
                            .get_or_insert_with(|| PyDict::new(py))
                            .set_item(key, value)?;
                        continue;
                    }
                };
                if slot.replace(value).is_some() {
                    return Err(PyTypeError::new_err(format!(
                        "Registry.call() got multiple values for argument '{key}'"
                    )));
                }
            }
        }
        let (Some(name), Some(func)) = (name, func) else {
            return Err(PyTypeError::new_err(
                "Registry.call() missing required argument 'name' or 'fn'",
            ));
        };
        registry.get().call(&name, &func, options.as_ref())
    })
}

/// Calling a decorated function.
unsafe extern "C" fn guarded_vectorcall(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry_point(|py| {
        let callable = Bound::from_borrowed_ptr(py, callable);
        let guarded_fn = callable.cast::<Guarded>()?.get();
        let func = guarded_fn.func.bind(py);
        guarded(&guarded_fn.core, py, || {
            vectorcall(func, args, nargsf, kwnames)
        })
    })
}

/// The per-instance vectorcall pointer CPython finds through the type's `tp_vectorcall_offset`.
#[repr(transparent)]
pub struct VectorcallSlot(#[allow(dead_code)] ffi::vectorcallfunc);

impl VectorcallSlot {
    pub const GUARDED: VectorcallSlot = VectorcallSlot(guarded_vectorcall);
}

fn method_def(
    name: &'static CStr,
    doc: &'static CStr,
    meth: ffi::PyCFunctionFastWithKeywords,
) -> *mut ffi::PyMethodDef {
    // Leaked once per interpreter start: CPython keeps pointing at method definitions forever.
    Box::into_raw(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr() as *const c_char,
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: meth,
        },
        ml_flags: (ffi::METH_FASTCALL | ffi::METH_KEYWORDS) as c_int,
        ml_doc: doc.as_ptr() as *const c_char,
    }))
}

fn install_method(
    ty: &Bound<'_, pyo3::types::PyType>,
    name: &'static CStr,
    doc: &'static CStr,
    meth: ffi::PyCFunctionFastWithKeywords,
) -> PyResult<()> {
    let py = ty.py();
    // SAFETY: a method descriptor for a live type object and a definition that is never freed.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyDescr_NewMethod(ty.as_type_ptr(), method_def(name, doc, meth)),
        )?
    };
    ty.setattr(
        name.to_str()
            .map_err(|e| PyValueError::new_err(e.to_string()))?,
        descr,
    )
}

/// Installs the fast entry points on the classes of the module being initialised.
pub fn install(py: Python<'_>) -> PyResult<()> {
    install_method(
        &py.get_type::<Breaker>(),
        c"call",
        c"call($self, fn, /, *args, **kwargs)\n--\n\nCalls fn(*args, **kwargs) through the breaker.",
        breaker_call,
    )?;
    install_method(
        &py.get_type::<Registry>(),
        c"call",
        c"call($self, name, fn, **options)\n--\n\nCalls fn() through the breaker `name`, creating it with `options` if new.",
        registry_call,
    )?;
    install_guarded_vectorcall(py)
}

/// Points `Guarded`'s `tp_vectorcall_offset` at each instance's `vectorcall` field.
fn install_guarded_vectorcall(py: Python<'_>) -> PyResult<()> {
    let probe = Bound::new(py, Guarded::probe(py))?;
    let base = probe.as_ptr() as usize;
    let field = &probe.get().vectorcall as *const VectorcallSlot as usize;
    let offset = field
        .checked_sub(base)
        .ok_or_else(|| PyValueError::new_err("unexpected Guarded layout"))?;
    let ty = py.get_type::<Guarded>();
    // SAFETY: set once, while the module initialises and before any instance is called; the field
    // lives inside every instance at the same offset and always holds `guarded_vectorcall`.
    unsafe {
        let tp = ty.as_type_ptr();
        (*tp).tp_vectorcall_offset = offset as ffi::Py_ssize_t;
        // Free-threaded builds make tp_flags atomic.
        #[cfg(Py_GIL_DISABLED)]
        (*tp).tp_flags.fetch_or(
            ffi::Py_TPFLAGS_HAVE_VECTORCALL,
            std::sync::atomic::Ordering::Relaxed,
        );
        #[cfg(not(Py_GIL_DISABLED))]
        {
            (*tp).tp_flags |= ffi::Py_TPFLAGS_HAVE_VECTORCALL;
        }
        ffi::PyType_Modified(tp);
    }
    Ok(())
}
