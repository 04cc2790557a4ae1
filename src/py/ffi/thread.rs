//! A number for the calling thread, from CPython's thread state: reading a Rust thread-local in
//! this shared library is a call to `__tls_get_addr` (about 17 instructions with its checks), paid
//! on every guarded call by the success counter.
//!
//! Every count of a local breaker uses it (`Storage::count` as well as the closed fast path):
//! the counters keep one inline block while one thread counts, and a thread that counted under
//! two numbers would be taken for two threads, giving the breaker its stripes (bug 39).

use pyo3::ffi;
use pyo3::Python;

/// A number that tells the calling thread apart from the other threads attached to the
/// interpreter now. Below `usize::MAX`.
#[inline(always)]
pub fn key(_attached: Python<'_>) -> usize {
    // SAFETY: the thread is attached (the token says so), so it has a current thread state.
    let state = unsafe { ffi::PyThreadState_Get() };
    of_state(state)
}

/// `key` for a caller that may not be attached (a breaker's outcome recorded while the
/// interpreter finalizes): `None` without a thread state.
#[inline(always)]
pub fn key_if_attached() -> Option<usize> {
    // SAFETY: reads the calling thread's current thread state, null when it has none; callable
    // from any thread.
    let state = unsafe { ffi::compat::PyThreadState_GetUnchecked() };
    (!state.is_null()).then(|| of_state(state))
}

/// The number of `state`, the calling thread's current thread state (not null).
///
/// Free-threaded: its id, which CPython hands out in sequence (`PyThreadState_GetID`). The
/// counters pick a stripe by the number's low bits, so threads started one after the other (a
/// pool) count in different stripes. A hash of the thread state's address, used before, put two
/// threads on one stripe in about half of all processes (the addresses move with ASLR; 2 stripes
/// on 2 cores): both threads then wrote that cache line on every guarded call, one `lock inc`
/// each (issue 10, item 4: a suspect for `panelboard.call` costing 1.37x per call on 2 threads in
/// some runs and 1.09x in others; the cost was not measurable on a loaded 2-core machine).
///
/// With the GIL one thread runs at a time, so a shared stripe only moves at a thread switch: the
/// hash of the address stays, which costs no call (the id is a call into CPython, 4 instructions
/// more per guarded call on 3.11).
#[inline(always)]
fn of_state(state: *mut ffi::PyThreadState) -> usize {
    #[cfg(Py_GIL_DISABLED)]
    {
        // SAFETY: `state` is the calling thread's current thread state (the callers' contract),
        // live while it is current; `PyThreadState_GetID` only reads its id.
        let id = unsafe { ffi::PyThreadState_GetID(state) };
        // Ids count up from 1: without the top bit, none is `usize::MAX`.
        (id as u64 as usize) & (usize::MAX >> 1)
    }
    #[cfg(not(Py_GIL_DISABLED))]
    {
        ((state as usize as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
            & (usize::MAX >> 1)
    }
}
