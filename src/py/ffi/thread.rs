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
/// interpreter now: the id of its thread state, which CPython hands out in sequence
/// (`PyThreadState_GetID`). Below `usize::MAX`.
///
/// The counters pick a stripe by its low bits, so threads started one after the other (a pool)
/// count in different stripes. A hash of the thread state's address, used before, put two threads
/// on one stripe in about half of all processes (the addresses move with ASLR; on 2 cores, 2
/// stripes): in those, both threads wrote that one cache line on every guarded call, which is what
/// made `panelboard.call` on 3.13t scale 1.4x in some runs and 1.85x in others (issue 10, item 4).
#[inline(always)]
pub fn key(_attached: Python<'_>) -> usize {
    // SAFETY: the thread is attached (the token says so), so it has a current thread state, which
    // `PyThreadState_GetID` only reads the id of.
    let id = unsafe { ffi::PyThreadState_GetID(ffi::PyThreadState_Get()) };
    from_id(id)
}

/// `key` for a caller that may not be attached (a breaker's outcome recorded while the
/// interpreter finalizes): `None` without a thread state.
#[inline(always)]
pub fn key_if_attached() -> Option<usize> {
    // SAFETY: reads the calling thread's current thread state, null when it has none; callable
    // from any thread.
    let state = unsafe { ffi::compat::PyThreadState_GetUnchecked() };
    if state.is_null() {
        return None;
    }
    // SAFETY: `state` is not null: it is the calling thread's current thread state, live while it
    // is current (this thread cannot drop it under us), and `PyThreadState_GetID` only reads its id.
    Some(from_id(unsafe { ffi::PyThreadState_GetID(state) }))
}

/// The id's bits below the top one (ids count up from 1, so none is `usize::MAX`).
#[inline(always)]
fn from_id(id: i64) -> usize {
    (id as u64 as usize) & (usize::MAX >> 1)
}
