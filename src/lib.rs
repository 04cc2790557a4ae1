//! panelboard's Python extension module (`panelboard._core`): the thin PyO3 layer over the engine
//! crate (`crates/engine`, plain Rust with no PyO3), which holds the state machine and counters.
//!
//! Raw CPython API is used here (vectorcall entry points, calls into Python) in one module tree
//! only, `py::ffi`: every unsafe operation there sits in an `unsafe` block that says why it is
//! sound, and `unsafe` is denied everywhere else (see `py/mod.rs`).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

// The bindings name the engine's items `crate::engine::...` and `crate::metrics::...`.
use panelboard_engine as engine;
use panelboard_engine::metrics;
use panelboard_shm as shm;

mod py;
