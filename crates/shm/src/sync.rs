//! Atomics of the table: std's in normal builds, loom's under `--cfg loom` (the engine switches the
//! same way, so a slot's engine words and its claim word are both modelled).

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU64, Ordering};

#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicU64, Ordering};

/// A pause in a bounded retry loop (under loom, a point where another thread may run).
#[inline]
pub fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Host-wide monotonic milliseconds, as the option writers stamp them (`crate::options`). Under
/// loom a clock that never moves, as the models' hosts have (a model that needs time to pass
/// gives its own times to the `_at` functions).
#[inline]
pub fn now_ms() -> u64 {
    #[cfg(loom)]
    return 0;
    #[cfg(not(loom))]
    crate::host::monotonic_ms()
}
