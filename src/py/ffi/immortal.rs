//! Objects that live as long as the process, their reference counts never written again, as
//! free-threaded CPython 3.13 does for top-level functions, types and modules (gh-117696).
//!
//! On free-threaded CPython every thread that takes a reference to an object another thread owns
//! adds to its shared reference count atomically, so threads sharing one object (a module-level
//! bound method such as `panelboard.call`, the default registry it is bound to) fight over that
//! cache line on every call. CPython 3.13t exempts its own process-lifetime objects by giving them
//! deferred reference counts and making them immortal once a second thread starts
//! (`_PyObject_SetDeferredRefcount`, `_PyGC_ImmortalizeDeferredObjects`); neither is exported, so
//! `immortal` does what CPython's `_Py_SetImmortal` does (as nanobind does for its own objects):
//! untrack the object from the collector and set the immortal reference count.
//!
//! Version gates: only free-threaded 3.13 (`Py_GIL_DISABLED`, not `Py_3_14`). With the GIL (3.11,
//! 3.12, 3.13) reference counts are plain writes under the GIL and cost no contention, so nothing
//! is done; 3.14t has real deferred reference counting in the interpreter and an API for it
//! (`PyUnstable_Object_EnableDeferredRefcount`), which pyo3-ffi 0.28 does not bind, so nothing is
//! done there either (the object stays an ordinary one, which is always correct).

use pyo3::prelude::*;

/// Makes `object` immortal when the caller's reference is its only one (a freshly created object
/// that no other thread can reach), on free-threaded CPython 3.13; otherwise, and on every other
/// build, returns it unchanged. Immortal objects are never freed: use it only for objects that live
/// as long as the process anyway (the module's own, created once).
pub fn immortal(object: Bound<'_, PyAny>) -> Bound<'_, PyAny> {
    #[cfg(all(Py_GIL_DISABLED, not(Py_3_14)))]
    {
        use pyo3::ffi;
        use std::sync::atomic::Ordering::Relaxed;
        let op = object.as_ptr();
        // SAFETY: `op` is a live object (we hold a reference). Its header fields are read
        // atomically as CPython does (`_PyObject_IsUniquelyReferenced`): a local count of 1 and a
        // shared count of 0 (flags included) mean that our reference is the only one, so no other
        // thread can reach the object to take a reference while the fields below are written.
        // The writes are `_Py_SetImmortal`'s in 3.13: untrack from the collector (an immortal
        // object must not be traversed or collected), then the unowned thread id, the immortal
        // local count (`_Py_IMMORTAL_REFCNT_LOCAL`, u32::MAX) and a zero shared count. From then
        // on every `Py_INCREF`/`Py_DECREF` sees the immortal count and writes nothing; our own
        // reference, dropped later, is one of those.
        unsafe {
            let unique =
                (*op).ob_ref_local.load(Relaxed) == 1 && (*op).ob_ref_shared.load(Relaxed) == 0;
            if unique {
                if ffi::PyObject_IS_GC(op) != 0 && ffi::PyObject_GC_IsTracked(op) != 0 {
                    ffi::PyObject_GC_UnTrack(op.cast());
                }
                (*op).ob_tid = 0;
                (*op).ob_ref_local.store(u32::MAX, Relaxed);
                (*op).ob_ref_shared.store(0, Relaxed);
            }
        }
    }
    object
}
