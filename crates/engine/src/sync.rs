//! Atomics used by the engine: std's in normal builds, loom's under `--cfg loom` so that
//! `make loom` can explore every interleaving of the same code.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU64, Ordering};
