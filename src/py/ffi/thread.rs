//! A number for the calling thread, from CPython's thread state: reading a Rust thread-local in
//! this shared library is a call to `__tls_get_addr` (about 17 instructions with its checks), paid
//! on every guarded call by the success counter.

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
    ((state as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (usize::MAX >> 1)
}
