//! The PyO3 bindings: a thin layer over the engine. Built only with the `python` feature.

mod block;
mod clock;
mod config;
mod core;
mod errors;
mod fastcall;
mod handle;
mod pyrefs;
mod registry;
mod upcall;

use pyo3::prelude::*;

/// The native part of panelboard; import `panelboard` instead.
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
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
