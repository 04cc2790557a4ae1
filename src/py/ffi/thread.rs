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

#[inline(always)]
fn mixed(state: usize) -> usize {
    ((state as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (usize::MAX >> 1)
}
