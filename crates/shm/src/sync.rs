//! Atomics of the table: std's in normal builds, loom's under `--cfg loom` (the engine switches the
//! same way, so a slot's engine words and its claim word are both modelled).

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU64, Ordering};
