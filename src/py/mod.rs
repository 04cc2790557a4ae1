//! The PyO3 bindings: a thin layer over the engine.

mod block;
mod clock;
mod config;
mod core;
mod errors;
mod fastcall;
mod handle;
mod module;
mod pyrefs;
mod registry;
mod upcall;

use pyo3::prelude::*;

/// Fills in the module `panelboard._core` (defined in `module`, which runs this in the main
/// interpreter only).
fn init_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<registry::Registry>()?;
    m.add_class::<handle::Breaker>()?;
    m.add_class::<handle::Guarded>()?;
    m.add_class::<handle::Permit>()?;
    m.add_class::<handle::Metrics>()?;
    m.add_class::<clock::ManualClock>()?;
    m.add_class::<errors::CircuitOpenError>()?;
    fastcall::install(m.py())?;
    block::install(m.py())?;
    pyrefs::init(m.py())?;
    Ok(())
}
