//! panelboard's Python extension module (`panelboard._core`): the thin PyO3 layer over the engine
//! crate (`crates/engine`, plain Rust with no PyO3), which holds the state machine and counters.

// The bindings name the engine's items `crate::engine::...` and `crate::metrics::...`.
use panelboard_engine as engine;
use panelboard_engine::metrics;

mod py;
