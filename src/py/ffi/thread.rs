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
/// interpreter now: the address of its thread state, mixed so that its low bits (by which the
/// counters pick a stripe) differ between threads. Below `usize::MAX`.
///
/// With a GIL, only one thread attached to the interpreter runs at a time, so no two threads ever
/// count at once and telling them apart buys nothing: every thread is given the number 0 (they
/// share the counters' inline block, which is what stripes would save them from contending on).
/// This spares the call that reads the thread state (and its mixing), about 9 instructions, on
/// every guarded call (3.11). A local breaker belongs to one interpreter, whose GIL serializes
/// its threads even where interpreters have GILs of their own.
#[cfg(not(Py_GIL_DISABLED))]
#[inline(always)]
pub fn key(_attached: Python<'_>) -> usize {
    mixed(0)
}

/// A number that tells the calling thread apart from the other threads attached to the
/// interpreter now (see above; free-threaded build).
#[cfg(Py_GIL_DISABLED)]
#[inline(always)]
pub fn key(_attached: Python<'_>) -> usize {
    // SAFETY: the thread is attached (the token says so), so it has a current thread state, which
    // this only reads the address of.
    let state = unsafe { ffi::PyThreadState_Get() } as usize;
    mixed(state)
}

/// `key` for a caller that may not be attached (a breaker's outcome recorded while the
/// interpreter finalizes): `None` without a thread state.
#[inline(always)]
pub fn key_if_attached() -> Option<usize> {
    // SAFETY: reads the calling thread's current thread state, null when it has none; callable
    // from any thread.
    let state = unsafe { ffi::compat::PyThreadState_GetUnchecked() } as usize;
    (state != 0).then(|| mixed(state))
}

/// The number `key` gives the thread whose thread state is at `state`.
#[cfg(not(Py_GIL_DISABLED))]
#[inline(always)]
fn mixed(_state: usize) -> usize {
    0
}

#[cfg(Py_GIL_DISABLED)]
#[inline(always)]
fn mixed(state: usize) -> usize {
    ((state as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (usize::MAX >> 1)
}
