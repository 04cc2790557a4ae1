//! Every call from the bindings into Python code: the user's function, result predicate and
//! listeners, the logger and `sys.unraisablehook`, the Python helpers (`_aio`, `functools`,
//! `inspect`), and the protocols a user's objects can override (`==`, `isinstance`/`issubclass`
//! through a metaclass, `repr`, `getattr`).
//!
//! Why they all go through here: on CPython 3.11 to 3.13, a daemon thread that tries to take the
//! interpreter back after shutdown has begun is ended with `pthread_exit`, a forced unwind through
//! every frame on its stack. In an extension that is fatal twice over. A `catch_unwind` on the way
//! (PyO3 puts one around every method) stops the unwind, and glibc aborts the process with
//! "FATAL: exception not rethrown". And any Rust drop glue it runs releases Python references
//! without holding the interpreter. So when that unwind comes out of Python code into one of these
//! calls while the interpreter is finalizing, the thread parks for good instead, with its stack
//! intact, until the process exits: the remedy CPython itself adopted in 3.14 (gh-87135).
//!
//! The C functions are declared `"C-unwind"` here: pyo3-ffi declares them `"C"`, which tells Rust
//! they cannot unwind, so the call would get no unwind entry and the guard below would never run.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::ptr::null_mut;

extern "C-unwind" {
    #[link_name = "PyObject_Vectorcall"]
    fn PyObject_Vectorcall_unwinding(
        callable: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargsf: usize,
        kwnames: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;

    #[link_name = "PyObject_Call"]
    fn PyObject_Call_unwinding(
        callable: *mut ffi::PyObject,
        args: *mut ffi::PyObject,
        kwargs: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;

    #[link_name = "PyObject_RichCompareBool"]
    fn PyObject_RichCompareBool_unwinding(
        a: *mut ffi::PyObject,
        b: *mut ffi::PyObject,
        op: std::ffi::c_int,
    ) -> std::ffi::c_int;

    #[link_name = "PyObject_IsTrue"]
    fn PyObject_IsTrue_unwinding(value: *mut ffi::PyObject) -> std::ffi::c_int;

    #[link_name = "PyObject_IsInstance"]
    fn PyObject_IsInstance_unwinding(
        object: *mut ffi::PyObject,
        types: *mut ffi::PyObject,
    ) -> std::ffi::c_int;

    #[link_name = "PyObject_IsSubclass"]
    fn PyObject_IsSubclass_unwinding(
        derived: *mut ffi::PyObject,
        types: *mut ffi::PyObject,
    ) -> std::ffi::c_int;

    #[link_name = "PyObject_Repr"]
    fn PyObject_Repr_unwinding(object: *mut ffi::PyObject) -> *mut ffi::PyObject;

    #[link_name = "PyObject_GetAttr"]
    fn PyObject_GetAttr_unwinding(
        object: *mut ffi::PyObject,
        name: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;

    #[link_name = "PyErr_WriteUnraisable"]
    fn PyErr_WriteUnraisable_unwinding(object: *mut ffi::PyObject);

    #[link_name = "PyObject_SetAttr"]
    fn PyObject_SetAttr_unwinding(
        object: *mut ffi::PyObject,
        name: *mut ffi::PyObject,
        value: *mut ffi::PyObject,
    ) -> std::ffi::c_int;

    #[link_name = "PyErr_WarnEx"]
    fn PyErr_WarnEx_unwinding(
        category: *mut ffi::PyObject,
        message: *const std::ffi::c_char,
        stacklevel: ffi::Py_ssize_t,
    ) -> std::ffi::c_int;

    #[link_name = "PyIter_Send"]
    fn PyIter_Send_unwinding(
        iter: *mut ffi::PyObject,
        arg: *mut ffi::PyObject,
        result: *mut *mut ffi::PyObject,
    ) -> ffi::PySendResult;
}

/// Whether the interpreter has begun to shut down (the only time CPython ends a thread this way).
fn interpreter_is_finalizing() -> bool {
    #[cfg(Py_3_13)]
    {
        // SAFETY: reads the runtime's state; callable from any thread.
        unsafe { ffi::Py_IsFinalizing() != 0 }
    }
    #[cfg(not(Py_3_13))]
    {
        extern "C" {
            fn _Py_IsFinalizing() -> std::ffi::c_int;
        }
        // SAFETY: as above (the private name of the same function before 3.13).
        unsafe { _Py_IsFinalizing() != 0 }
    }
}

/// Parks the thread forever if it is dropped by the interpreter ending the thread at shutdown.
/// Calls forget it when Python returns, so it only drops while unwinding.
struct ParkIfThreadEnds;

impl Drop for ParkIfThreadEnds {
    #[cold]
    fn drop(&mut self) {
        // A panic of this module cannot come out of the C call (PyO3 turns panics in nested
        // callbacks into exceptions). Any other unwind during shutdown is CPython ending the
        // thread. Anything else (a foreign exception, `pthread_cancel` from native code) is left
        // to go on unwinding, so that it fails loudly instead of hanging a thread.
        if !std::thread::panicking() && interpreter_is_finalizing() {
            loop {
                std::thread::park();
            }
        }
    }
}

/// Runs one C call into Python under `ParkIfThreadEnds`.
#[inline(always)]
fn parked_on_exit<R>(call: impl FnOnce() -> R) -> R {
    let guard = ParkIfThreadEnds;
    let result = call();
    std::mem::forget(guard);
    result
}

/// A call into Python that raised: its exception is still the thread's current exception, until
/// `fetch` takes it. Only this module makes one (from a call that returned null).
pub struct Raised(());

impl Raised {
    /// Takes the exception the call raised. Call it before anything else calls into Python.
    #[inline]
    pub fn fetch(self, py: Python<'_>) -> PyErr {
        PyErr::fetch(py)
    }

    /// Sets `err` as the thread's current exception, for an entry point to return null with it.
    #[cold]
    pub fn restore(py: Python<'_>, err: PyErr) -> Raised {
        err.restore(py);
        Raised(())
    }
}

/// `result`, its error set as the thread's current exception (`Raised`).
#[inline(always)]
pub fn raise<T>(py: Python<'_>, result: PyResult<T>) -> Result<T, Raised> {
    result.map_err(|err| Raised::restore(py, err))
}

/// What a call into Python returned, or what an entry point returns, one word wide: the guarded
/// call's fast path moves it through `catch_unwind` and the entry point, where a `PyResult` (eight
/// words) was copied at each step.
pub type Returned<'py> = Result<Bound<'py, PyAny>, Raised>;

/// A new reference, or `Raised` for null.
///
/// SAFETY: `result` is a new reference, or null with an exception set.
#[inline(always)]
unsafe fn returned(py: Python<'_>, result: *mut ffi::PyObject) -> Returned<'_> {
    // SAFETY: as the caller promised (above).
    unsafe { Bound::from_owned_ptr_or_opt(py, result) }.ok_or(Raised(()))
}

/// `PyObject_Vectorcall(func, args, nargsf, kwnames)`, its exception left set (`Raised`).
///
/// SAFETY: `args` holds `PyVectorcall_NARGS(nargsf)` positional arguments followed by one value per
/// name in `kwnames` (a tuple of `str`, or null), as CPython hands them to a vectorcall entry point.
#[inline(always)]
pub(super) unsafe fn vectorcall_returned<'py>(
    func: &Bound<'py, PyAny>,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> Returned<'py> {
    // SAFETY: `func` is borrowed for the call; the arguments are as the caller promised (above).
    let result = parked_on_exit(|| unsafe {
        PyObject_Vectorcall_unwinding(func.as_ptr(), args, nargsf, kwnames)
    });
    // SAFETY: a new reference, or null with an exception set.
    unsafe { returned(func.py(), result) }
}

/// `PyObject_Vectorcall(func, args, nargsf, kwnames)` as a `PyResult`.
///
/// SAFETY: as `vectorcall_returned`.
#[inline(always)]
pub(super) unsafe fn vectorcall<'py>(
    func: &Bound<'py, PyAny>,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: as this function's caller promised.
    unsafe { vectorcall_returned(func, args, nargsf, kwnames) }
        .map_err(|raised| raised.fetch(func.py()))
}

/// `func(*args)`.
#[inline(always)]
pub fn call<'py, const N: usize>(
    func: &Bound<'py, PyAny>,
    args: [&Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyAny>> {
    let pointers = args.map(|a| a.as_ptr());
    // SAFETY: `pointers` holds N borrowed arguments that outlive the call; no keywords.
    unsafe { vectorcall(func, pointers.as_ptr(), N, null_mut()) }
}

/// `func()`, its exception left set (`Raised`).
#[inline(always)]
pub fn call_returned<'py>(func: &Bound<'py, PyAny>) -> Returned<'py> {
    // SAFETY: no arguments; no keywords.
    unsafe { vectorcall_returned(func, std::ptr::null(), 0, null_mut()) }
}

/// What driving an awaitable one step gave: a value it yields (it is suspended) or the value it
/// returned (it is finished).
pub enum Sent<'py> {
    Yielded(Bound<'py, PyAny>),
    Returned(Bound<'py, PyAny>),
}

/// `PyIter_Send(iter, value)`: resumes a coroutine, generator or `__await__` iterator with
/// `value`, as `await` does (the value it returns comes back without a `StopIteration`).
pub fn send<'py>(iter: &Bound<'py, PyAny>, value: &Bound<'py, PyAny>) -> PyResult<Sent<'py>> {
    let py = iter.py();
    let mut result = null_mut();
    // SAFETY: two borrowed objects and storage for the one reference the call writes.
    let status = parked_on_exit(|| unsafe {
        PyIter_Send_unwinding(iter.as_ptr(), value.as_ptr(), &mut result)
    });
    // SAFETY: `result` is a new reference for PYGEN_NEXT and PYGEN_RETURN, null with an exception
    // set for PYGEN_ERROR.
    unsafe {
        match status {
            ffi::PySendResult::PYGEN_NEXT => {
                Bound::from_owned_ptr_or_err(py, result).map(Sent::Yielded)
            }
            ffi::PySendResult::PYGEN_RETURN => {
                Bound::from_owned_ptr_or_err(py, result).map(Sent::Returned)
            }
            ffi::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
        }
    }
}

/// `func(*args, **kwargs)` with a tuple and an optional dict (the non-vectorcall protocol).
pub fn call_with<'py>(
    func: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    call_with_returned(func, args, kwargs).map_err(|raised| raised.fetch(func.py()))
}

/// `func(*args, **kwargs)`, its exception left set (`Raised`).
pub fn call_with_returned<'py>(
    func: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Returned<'py> {
    let kwargs = kwargs.map_or(null_mut(), |k| k.as_ptr());
    // SAFETY: a tuple and a dict (or null), borrowed for the duration of the call.
    let result =
        parked_on_exit(|| unsafe { PyObject_Call_unwinding(func.as_ptr(), args.as_ptr(), kwargs) });
    // SAFETY: a new reference, or null with an exception set.
    unsafe { returned(func.py(), result) }
}

/// `a == b`, which may run either object's `__eq__`.
pub fn equal(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
    // SAFETY: two borrowed objects.
    let result = parked_on_exit(|| unsafe {
        PyObject_RichCompareBool_unwinding(a.as_ptr(), b.as_ptr(), ffi::Py_EQ)
    });
    match result {
        -1 => Err(PyErr::fetch(a.py())),
        r => Ok(r == 1),
    }
}

/// `bool(value)`, which may run its `__bool__` or `__len__`.
pub fn truthy(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    // SAFETY: a borrowed object.
    let result = parked_on_exit(|| unsafe { PyObject_IsTrue_unwinding(value.as_ptr()) });
    match result {
        -1 => Err(PyErr::fetch(value.py())),
        r => Ok(r == 1),
    }
}

/// `isinstance(object, types)`, which may run a metaclass's `__instancecheck__`.
pub fn is_instance(object: &Bound<'_, PyAny>, types: &Bound<'_, PyAny>) -> PyResult<bool> {
    type_check(PyObject_IsInstance_unwinding, object, types)
}

/// `issubclass(derived, types)`, which may run a metaclass's `__subclasscheck__`.
pub fn is_subclass(derived: &Bound<'_, PyAny>, types: &Bound<'_, PyAny>) -> PyResult<bool> {
    type_check(PyObject_IsSubclass_unwinding, derived, types)
}

fn type_check(
    check: unsafe extern "C-unwind" fn(*mut ffi::PyObject, *mut ffi::PyObject) -> std::ffi::c_int,
    value: &Bound<'_, PyAny>,
    types: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    // SAFETY: two borrowed objects.
    match parked_on_exit(|| unsafe { check(value.as_ptr(), types.as_ptr()) }) {
        -1 => Err(PyErr::fetch(value.py())),
        r => Ok(r == 1),
    }
}

/// `repr(object)`, which may run its `__repr__`.
pub fn repr<'py>(object: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: a borrowed object; the result is a new reference, or null with an exception set.
    unsafe {
        let result = parked_on_exit(|| PyObject_Repr_unwinding(object.as_ptr()));
        Bound::from_owned_ptr_or_err(object.py(), result)
    }
}

/// `getattr(object, name)`, which may run `__getattr__`, `__getattribute__` or a descriptor.
pub fn getattr<'py>(object: &Bound<'py, PyAny>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let name = pyo3::types::PyString::new(object.py(), name);
    // SAFETY: two borrowed objects; the result is a new reference, or null with an exception set.
    unsafe {
        let result = parked_on_exit(|| PyObject_GetAttr_unwinding(object.as_ptr(), name.as_ptr()));
        Bound::from_owned_ptr_or_err(object.py(), result)
    }
}

/// `setattr(object, name, value)`, which may run `__setattr__` or a descriptor.
pub fn setattr(object: &Bound<'_, PyAny>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
    let name = pyo3::types::PyString::new(object.py(), name);
    // SAFETY: three borrowed objects.
    let result = parked_on_exit(|| unsafe {
        PyObject_SetAttr_unwinding(object.as_ptr(), name.as_ptr(), value.as_ptr())
    });
    match result {
        -1 => Err(PyErr::fetch(object.py())),
        _ => Ok(()),
    }
}

/// `warnings.warn(message, RuntimeWarning)`, which may run the warning filters and
/// `showwarning`; a warning turned into an error goes to `sys.unraisablehook`.
pub fn warn_runtime(py: Python<'_>, message: &std::ffi::CStr) {
    // SAFETY: a static exception type and a C string that outlives the call.
    let result = parked_on_exit(|| unsafe {
        PyErr_WarnEx_unwinding(ffi::PyExc_RuntimeWarning, message.as_ptr(), 1)
    });
    if result == -1 {
        write_unraisable(py, PyErr::fetch(py));
    }
}

/// Runs `f` with the exception being raised (if any) put aside, and restores it afterwards, as
/// CPython's finalizers do: an object can be deallocated while an exception propagates, and Python
/// code must not be called with one set.
pub fn with_exception_saved<R>(py: Python<'_>, f: impl FnOnce() -> R) -> R {
    let _ = py;
    #[cfg(Py_3_12)]
    {
        // SAFETY: the thread is attached (`py`); the exception's reference moves out and back.
        let saved = unsafe { ffi::PyErr_GetRaisedException() };
        let result = f();
        // SAFETY: as above; restoring null clears nothing that `f` left (it leaves nothing set).
        unsafe { ffi::PyErr_SetRaisedException(saved) };
        result
    }
    #[cfg(not(Py_3_12))]
    {
        let (mut kind, mut value, mut traceback) = (null_mut(), null_mut(), null_mut());
        // SAFETY: the thread is attached (`py`); the three references move out and back.
        unsafe { ffi::PyErr_Fetch(&mut kind, &mut value, &mut traceback) };
        let result = f();
        // SAFETY: as above.
        unsafe { ffi::PyErr_Restore(kind, value, traceback) };
        result
    }
}

/// Reports `err` through `sys.unraisablehook` (which may be Python code), as
/// `PyErr::write_unraisable` does.
pub fn write_unraisable(py: Python<'_>, err: PyErr) {
    err.restore(py);
    // SAFETY: an exception is set; a null object means "no context".
    parked_on_exit(|| unsafe { PyErr_WriteUnraisable_unwinding(null_mut()) });
}
