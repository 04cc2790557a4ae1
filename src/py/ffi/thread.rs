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
///
/// With a GIL, only one thread attached to the interpreter runs at a time, so no two threads ever
/// count at once and telling them apart buys nothing: every thread is given the number 0 (they
/// share the counters' inline block, which is what stripes would save them from contending on).
/// This spares the call that reads the thread state, about 9 instructions on every guarded call
/// (3.11). A local breaker belongs to one interpreter, whose GIL serializes its threads even where
/// interpreters have GILs of their own; the counts are atomic adds, exact whatever the number.
#[cfg(not(Py_GIL_DISABLED))]
#[inline(always)]
pub fn key(_attached: Python<'_>) -> usize {
    0
}

/// A number that tells the calling thread apart from the other threads attached to the
/// interpreter now (free-threaded build: see `of_state`). Below `usize::MAX`.
#[cfg(Py_GIL_DISABLED)]
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
/// each (bug 40; issue 10, item 4).
#[cfg(Py_GIL_DISABLED)]
#[inline(always)]
fn of_state(state: *mut ffi::PyThreadState) -> usize {
    // SAFETY: `state` is the calling thread's current thread state (the callers' contract), live
    // while it is current; `PyThreadState_GetID` only reads its id.
    let id = unsafe { ffi::PyThreadState_GetID(state) };
    // Ids count up from 1: without the top bit, none is `usize::MAX`.
    (id as u64 as usize) & (usize::MAX >> 1)
}

/// With the GIL, every thread's number is 0 (see `key`).
#[cfg(not(Py_GIL_DISABLED))]
#[inline(always)]
fn of_state(_state: *mut ffi::PyThreadState) -> usize {
    0
}
