//! panelboard: a lock-free circuit-breaker registry.
//!
//! - [`engine`]: the state machine, plain Rust over borrowed atomic words (no PyO3).
//! - [`metrics`]: striped per-breaker counters (no PyO3).
//! - `py` (feature `python`): the thin PyO3 layer that maturin builds into `panelboard._core`.

pub mod engine;
pub mod metrics;
mod sync;

#[cfg(feature = "python")]
mod py;
