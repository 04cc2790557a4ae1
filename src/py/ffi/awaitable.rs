//! The C side of the native awaitables (`GuardedCoroutine`, `_Ready`): the `am_await` and
//! `am_send` slots, which PyO3 cannot declare.
//!
//! `await x` on CPython 3.11 asks `x`'s type for `am_await` (the iterator to drive; ours return
//! themselves), then drives that iterator with `PyIter_Send`, which calls `am_send` when the type
//! has one: a value is returned or yielded without a `StopIteration` ever being made (making one
//! costs more than the rest of a guarded call). asyncio's tasks drive their coroutine the same way.
//! Python 3.12 and later drive an awaitable that is not a generator through `tp_iternext`
//! (`__next__`), which PyO3 declares.
//!
//! What a send does is written in safe code above this module, as a `SendBody`; this module turns
//! one into the slot functions and installs them on the class.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::Borrowed;

pub use super::upcall::Sent;

/// What sending `value` into the awaitable `slf` does: the value it yields (it is suspended), the
/// value it returns (it is finished), or the exception it raises.
pub trait SendBody {
    fn send<'py>(
        py: Python<'py>,
        slf: Borrowed<'_, 'py, PyAny>,
        value: Borrowed<'_, 'py, PyAny>,
    ) -> PyResult<Sent<'py>>;
}

/// `am_send` for `B`. `extern "C-unwind"`: a body calls Python (the awaited coroutine) through
/// `upcall`, and an unwind CPython starts there at shutdown must be able to pass (see `upcall`);
/// Rust panics are turned into exceptions inside the bodies.
///
/// # Safety
/// Called by CPython only, with the thread attached: `slf` and `value` are live objects and
/// `result` points to writable storage for one reference.
unsafe extern "C-unwind" fn send_entry<B: SendBody>(
    slf: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: the thread is attached (CPython calls a slot that way).
    let py = unsafe { Python::assume_attached() };
    // SAFETY: live objects, borrowed for the duration of the call (see above). The receiver is
    // held by the caller (the awaiting frame's stack, or the task driving it) throughout.
    let (slf, value) = unsafe { (Borrowed::from_ptr(py, slf), Borrowed::from_ptr(py, value)) };
    let (status, object) = match B::send(py, slf, value) {
        Ok(Sent::Yielded(object)) => (ffi::PySendResult::PYGEN_NEXT, object.into_ptr()),
        Ok(Sent::Returned(object)) => (ffi::PySendResult::PYGEN_RETURN, object.into_ptr()),
        Err(err) => {
            err.restore(py);
            (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
        }
    };
    // SAFETY: `result` is writable (see above); it receives a new reference, or null with an
    // exception set, as `am_send` must.
    unsafe { *result = object };
    status
}

/// `am_await` of every native awaitable: the object is its own iterator.
///
/// # Safety
/// Called by CPython only, with the thread attached and a live `slf`.
unsafe extern "C" fn await_self(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: a live object; the caller receives the new reference.
    unsafe { ffi::Py_INCREF(slf) };
    slf
}

type SendEntry = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *mut ffi::PyObject,
    *mut *mut ffi::PyObject,
) -> ffi::PySendResult;

/// Gives `ty` (a PyO3 class that declares `__await__` and `__next__`) the `am_await` and
/// `am_send` slots of `B`. Called once, while the module initialises, before any instance exists.
pub fn install<B: SendBody>(ty: &Bound<'_, PyType>) -> PyResult<()> {
    // SAFETY: "C-unwind" and "C" share the calling convention; they differ only in what an unwind
    // does, which the callee decides (as `entry::as_c_fastcall`).
    let send: ffi::sendfunc =
        unsafe { std::mem::transmute::<SendEntry, ffi::sendfunc>(send_entry::<B>) };
    // SAFETY: `ty` is a live heap type (PyO3 makes its classes with `PyType_FromSpec`), whose
    // `tp_as_async` points at the `as_async` slots inside the type object itself; no instance
    // exists yet and no other thread uses the type while the module initialises.
    unsafe {
        let tp = ty.as_type_ptr();
        let slots = (*tp).tp_as_async;
        if slots.is_null() || (*tp).tp_iternext.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "panelboard: a native awaitable's class lacks its __await__ or __next__",
            ));
        }
        (*slots).am_await = Some(await_self);
        (*slots).am_send = Some(send);
        ffi::PyType_Modified(tp);
    }
    Ok(())
}
