//! The PyO3 bindings: a thin layer over the engine.
//!
//! # Layers
//!
//! Each module imports only from the modules listed before it, so the imports form no cycle:
//!
//! 1. `ffi`: every use of raw CPython API (`pyo3::ffi`) and every `unsafe` block, fenced behind
//!    safe functions (calls into Python, the entry points' C side, context variables, references
//!    released while attached, the module definition). It imports no other binding module, except
//!    that `ffi::module_def`, CPython's way in, calls `init_module` (this module, the top).
//! 2. `config` (options, their validation, classification of outcomes), then `clock`, `pyrefs`
//!    (the Python objects looked up once, name keys), `name` (a breaker's name as stored) and
//!    `errors` (`CircuitOpenError`).
//! 3. `core`: one breaker as the bindings hold it (and the `Breaker` handle's type), and `guarded`
//!    (admit, call, classify, record).
//! 4. `permit`: the `Permit` class; `awaitable`: the native awaitables (`GuardedCoroutine`, what
//!    `acall` and decorated `async def` functions return, and the ready ones of `async with`).
//! 5. `block`: the `with breaker:` blocks (each settles its own permit).
//! 6. `handle`: the methods of `Breaker` (its `__enter__` starts a block), `Guarded` with its
//!    vectorcall entry point, `Metrics`.
//! 7. `names`: a registry's map of breakers by name; `lookup`: each thread's cache in front of
//!    it; then `registry`: the `Registry`
//!    class, and `default_api`: the process-wide default registry and its exported methods.
//!    `fleet`: the Redis sync worker's private entry points (read a breaker, install the fleet's
//!    state, hold or release its fleet gate).
//! 8. `fastcall`: the `Breaker.call` and `Registry.call` fast entry points.
//! 9. this module: `init_module`, which adds the classes and installs the entry points.
//!
//! `unsafe` is forbidden in every module but `ffi` (the crate denies it, `ffi` alone allows it,
//! and each other module forbids it so that nothing inside can allow it again); `make lint` also
//! checks that no module outside `ffi` names `pyo3::ffi` (`.ci/check-ffi-fence`).

#[allow(unsafe_code)]
mod ffi;

#[forbid(unsafe_code)]
mod awaitable;
#[forbid(unsafe_code)]
mod block;
#[forbid(unsafe_code)]
mod clock;
#[forbid(unsafe_code)]
mod config;
#[forbid(unsafe_code)]
mod core;
#[forbid(unsafe_code)]
mod default_api;
#[forbid(unsafe_code)]
mod errors;
#[forbid(unsafe_code)]
mod fastcall;
#[forbid(unsafe_code)]
mod fleet;
#[forbid(unsafe_code)]
mod handle;
#[forbid(unsafe_code)]
mod local_window;
#[forbid(unsafe_code)]
mod lookup;
#[forbid(unsafe_code)]
mod name;
#[forbid(unsafe_code)]
mod names;
#[forbid(unsafe_code)]
mod permit;
#[forbid(unsafe_code)]
mod pyrefs;
#[forbid(unsafe_code)]
mod registry;
#[forbid(unsafe_code)]
mod shared;
#[forbid(unsafe_code)]
mod storage;

use pyo3::prelude::*;

/// Fills in the module `panelboard._core` (defined in `ffi::module_def`, which runs this in the
/// main interpreter only).
fn init_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<registry::Registry>()?;
    m.add_class::<core::Breaker>()?;
    m.add_class::<handle::Guarded>()?;
    m.add_class::<permit::Permit>()?;
    m.add_class::<handle::Metrics>()?;
    m.add_class::<awaitable::GuardedCoroutine>()?;
    m.add_class::<clock::ManualClock>()?;
    m.add_class::<errors::CircuitOpenError>()?;
    m.add_function(wrap_pyfunction!(fleet::fleet_breakers, m)?)?;
    m.add_function(wrap_pyfunction!(fleet::fleet_read, m)?)?;
    m.add_function(wrap_pyfunction!(fleet::fleet_install, m)?)?;
    m.add_function(wrap_pyfunction!(fleet::fleet_gate, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(shared::unlink_shared, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(shared::shared_table_rows, m)?)?;
    fastcall::install(m.py())?;
    #[cfg(unix)]
    ffi::ticker::watch_forks();
    block::install(m.py())?;
    awaitable::install(m.py())?;
    pyrefs::init(m.py())?;
    default_api::add(m)?;
    Ok(())
}
