//! The three calls that sit on every guarded RPC, wired to CPython's vectorcall protocol by hand.
//!
//! PyO3 routes a method that takes `*args, **kwargs` through `METH_VARARGS`, which builds an
//! argument tuple (and slices it) on every call: more than the rest of the guarded call costs. So
//! `Breaker.call`, `Registry.call` and calling a decorated function are `METH_FASTCALL` /
//! vectorcall entry points that hand the caller's argument array straight to the user's function.
//! Each one is still a single native call doing admit, call, classify and record (`core::guarded`),
//! which looks at its result's type with raw API too (`is_coroutine`).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
// Arguments are `Borrowed`, not `Bound`: taking a new reference to the shared breaker and
// function objects on every call would make threads contend on their reference counts
// (free-threaded CPython), which is all the read-only fast path is there to avoid.
use pyo3::Borrowed;
use std::ffi::{c_int, CStr};
use std::os::raw::c_char;
use std::ptr::null_mut;

use super::core::{guarded, shield};
use super::handle::{not_callable, Breaker, Guarded};
use super::registry::Registry;
use super::upcall::vectorcall;

/// Runs `body` as the body of a C entry point: an error is restored as the current exception.
///
/// There is no `catch_unwind` here: Rust panics are caught by `shield` around everything the bodies
/// do except calling the user's function, and that call goes through `upcall` (see there for what
/// happens when CPython ends the thread inside it), so no unwind comes out of `body`.
///
/// This is lighter than PyO3's own trampoline, which also counts the thread as attached in
/// thread-local storage on every call. That count only matters for unbound `Py<T>` references
/// dropped inside (PyO3 queues their release when it does not know the thread is attached). The
/// hot path drops none; the paths that can (options given to `Registry.call`, a configuration
/// replaced while a call was running) attach explicitly: see `Registry::call` and `Config`'s `Drop`.
fn entry_point(
    body: impl for<'py> FnOnce(Python<'py>) -> PyResult<*mut ffi::PyObject>,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls these entry points with the calling thread attached.
    let py = unsafe { Python::assume_attached() };
    match body(py) {
        Ok(value) => value,
        Err(err) => {
            err.restore(py);
            null_mut()
        }
    }
}

/// `Breaker.call(fn, /, *args, **kwargs)`.
///
/// Safety (of this and the other bodies): called by CPython as a `METH_FASTCALL | METH_KEYWORDS`
/// method or a vectorcall, with the thread attached: `slf` is a live object, and `args` holds
/// `nargs` positional arguments followed by one value per name in `kwnames` (a tuple, or null).
unsafe fn breaker_call(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: the arguments are as CPython passed them (see above); `args[0]` exists once
    // `nargs >= 1` is checked, and `args.add(1)` holds the remaining `nargs - 1` plus keywords.
    unsafe {
        let slf = Borrowed::from_ptr(py, slf);
        let breaker = shield(|| Ok(slf.cast::<Breaker>()?))?;
        if nargs < 1 {
            return Err(PyTypeError::new_err(
                "Breaker.call() missing required argument 'fn'",
            ));
        }
        let func = Borrowed::from_ptr(py, *args);
        shield(|| {
            if func.is_callable() {
                Ok(())
            } else {
                Err(not_callable("fn", &func))
            }
        })?;
        let rest = (nargs - 1) as usize;
        guarded(&breaker.get().core, py, || {
            vectorcall(&func, args.add(1), rest, kwnames)
        })
        .map(Bound::into_ptr)
    }
}

/// `Registry.call(name, fn, **options)`: `name` and `fn` by position or keyword, every other
/// keyword an option.
unsafe fn registry_call(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: `slf` is the live object the method was called on.
    let slf = unsafe { Borrowed::from_ptr(py, slf) };
    let (registry, name, func, options) = shield(|| {
        let registry = slf.cast::<Registry>()?;
        if nargs > 2 {
            return Err(PyTypeError::new_err(format!(
                "Registry.call() takes 2 positional arguments (name, fn) but {nargs} were given"
            )));
        }
        let positional = |i: ffi::Py_ssize_t| {
            (i < nargs).then(|| {
                // SAFETY: `args` holds `nargs` positional arguments, each a live object.
                unsafe { Borrowed::from_ptr(py, *args.offset(i)) }
            })
        };
        let (mut name, mut func) = (positional(0), positional(1));
        let mut options = None;
        if !kwnames.is_null() {
            // SAFETY: a non-null `kwnames` is a live tuple of the keyword names.
            let names = unsafe { Borrowed::from_ptr(py, kwnames) }.cast::<PyTuple>()?;
            for (i, key) in names.iter().enumerate() {
                // SAFETY: the value of keyword `i` follows the `nargs` positional arguments.
                let value =
                    unsafe { Borrowed::from_ptr(py, *args.offset(nargs + i as ffi::Py_ssize_t)) };
                let slot = match key.cast::<PyString>()?.to_str().ok() {
                    Some("name") => &mut name,
                    Some("fn") => &mut func,
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
        Ok((registry, name, func, options))
    })?;
    registry
        .get()
        .call(&name, &func, options.as_ref())
        .map(Bound::into_ptr)
}

/// Calling a decorated function (`nargsf` travels as the entry point's `Py_ssize_t` argument and is
/// handed on unchanged, `PY_VECTORCALL_ARGUMENTS_OFFSET` flag included).
unsafe fn guarded_call(
    py: Python<'_>,
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: `callable` is the live object being called.
    let callable = unsafe { Borrowed::from_ptr(py, callable) };
    let guarded_fn = shield(|| Ok(callable.cast::<Guarded>()?))?;
    let guarded_fn = guarded_fn.get();
    let func = guarded_fn.func.bind(py);
    guarded(&guarded_fn.core, py, || {
        // SAFETY: the caller's arguments, handed on exactly as CPython passed them.
        unsafe { vectorcall(func, args, nargsf as usize, kwnames) }
    })
    .map(Bound::into_ptr)
}

/// Whether `value` is exactly a coroutine object: one pointer comparison (pyo3-ffi's
/// `PyCoro_CheckExact` is a subtype check, a function call for every other result).
#[inline]
pub fn is_coroutine(value: &Bound<'_, PyAny>) -> bool {
    // SAFETY: reads the type pointer of a live object, and the address of a static type object.
    unsafe { pyo3::ffi::Py_TYPE(value.as_ptr()) == std::ptr::addr_of_mut!(pyo3::ffi::PyCoro_Type) }
}

/// The `extern "C"` function for a body.
/// `extern "C-unwind"` so that a forced unwind may pass (see `entry_point`); pyo3-ffi types the
/// callbacks `extern "C"`, which has the same calling convention (see `as_c_fastcall`).
macro_rules! entry_point {
    ($name:ident, $body:ident) => {
        unsafe extern "C-unwind" fn $name(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls the entry point with the arguments the body expects.
            entry_point(|py| unsafe { $body(py, slf, args, nargs, kwnames) })
        }
    };
}

entry_point!(breaker_call_entry, breaker_call);
entry_point!(registry_call_entry, registry_call);
entry_point!(guarded_call_entry, guarded_call);

unsafe extern "C-unwind" fn guarded_vectorcall(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: a vectorcall's arguments are a fastcall's (`nargsf` carries the flag bit unchanged).
    unsafe { guarded_call_entry(callable, args, nargsf as ffi::Py_ssize_t, kwnames) }
}

/// The per-instance vectorcall pointer CPython finds through the type's `tp_vectorcall_offset`.
#[repr(transparent)]
pub struct VectorcallSlot(#[allow(dead_code)] ffi::vectorcallfunc);

type FastcallEntry = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

type VectorcallEntry = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// The entry point as the `extern "C"` pointer type CPython's method table holds. "C-unwind" has
/// the same calling convention; it differs only in what an unwind does, which the callee decides.
fn as_c_fastcall(entry: FastcallEntry) -> ffi::PyCFunctionFastWithKeywords {
    // SAFETY: identical signatures and calling convention (see above).
    unsafe { std::mem::transmute::<FastcallEntry, ffi::PyCFunctionFastWithKeywords>(entry) }
}

impl VectorcallSlot {
    // SAFETY: as in `as_c_fastcall`.
    pub const GUARDED: VectorcallSlot = VectorcallSlot(unsafe {
        std::mem::transmute::<VectorcallEntry, ffi::vectorcallfunc>(guarded_vectorcall)
    });
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
        as_c_fastcall(breaker_call_entry),
    )?;
    install_method(
        &py.get_type::<Registry>(),
        c"call",
        c"call($self, name, fn, **options)\n--\n\nCalls fn() through the breaker `name`, creating it with `options` if new.",
        as_c_fastcall(registry_call_entry),
    )?;
    install_guarded_vectorcall(py)
}

/// Where the `vectorcall` field sits inside a `Guarded` object, from the object's start.
static GUARDED_SLOT_OFFSET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The instance `__dict__` of the `Guarded` whose `vectorcall` field is `slot` (PyO3 does not
/// report a `#[pyclass(dict)]`'s dict to the garbage collector, and `functools.wraps` puts the
/// wrapped function in it as `__wrapped__`).
pub fn guarded_dict(slot: &VectorcallSlot) -> Option<&Py<PyAny>> {
    let offset = GUARDED_SLOT_OFFSET.load(std::sync::atomic::Ordering::Acquire);
    if offset == 0 {
        return None;
    }
    let object = (slot as *const VectorcallSlot as usize - offset) as *mut ffi::PyObject;
    // SAFETY: `slot` lives inside a Guarded object at `offset`; PyO3 sets a positive
    // tp_dictoffset for `#[pyclass(dict)]`, and the slot holds NULL or a strong reference, which
    // has the layout of `Option<Py<PyAny>>`.
    unsafe {
        let dict_offset = (*ffi::Py_TYPE(object)).tp_dictoffset;
        if dict_offset <= 0 {
            return None;
        }
        let dict_slot = (object as *mut u8).offset(dict_offset) as *const Option<Py<PyAny>>;
        (*dict_slot).as_ref()
    }
}

/// Points `Guarded`'s `tp_vectorcall_offset` at each instance's `vectorcall` field.
fn install_guarded_vectorcall(py: Python<'_>) -> PyResult<()> {
    let probe = Bound::new(py, Guarded::probe(py)?)?;
    let base = probe.as_ptr() as usize;
    let field = &probe.get().vectorcall as *const VectorcallSlot as usize;
    let offset = field
        .checked_sub(base)
        .ok_or_else(|| PyValueError::new_err("unexpected Guarded layout"))?;
    GUARDED_SLOT_OFFSET.store(offset, std::sync::atomic::Ordering::Release);
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
