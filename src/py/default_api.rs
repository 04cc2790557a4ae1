//! The process-wide default registry and the module-level functions bound to it
//! (`panelboard.call`, `panelboard.state`, ...), made once per process.
//!
//! They live as long as the process and every thread shares them, so on free-threaded CPython 3.13
//! they are made immortal (`ffi::immortal`), as CPython does for top-level functions: calling
//! `panelboard.call(name, f)` from several threads then writes no reference count that another
//! thread reads (issue 10, item 4). Nothing else is: whatever a user creates stays collectable.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::OnceLock;

use super::ffi::immortal::immortal;
use super::registry::Registry;

/// The registry methods `panelboard` exports as functions.
const EXPORTED: [&str; 12] = [
    "call",
    "breaker",
    "configure",
    "state",
    "reset",
    "delete",
    "list",
    "force_open",
    "disable",
    "on_state_change",
    "remove_listener",
    "snapshot",
];

/// The default registry and `{name: bound method}`.
static DEFAULT: OnceLock<(Py<PyAny>, Py<PyDict>)> = OnceLock::new();

/// Adds `_default_registry` and `_default_methods` to the module. Each object is made immortal
/// while the reference creating it is its only one, before it is published; the module's `exec`
/// runs again only when `panelboard._core` is imported anew, which finds the ones made first.
pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let (registry, methods) = match DEFAULT.get() {
        Some(made) => made,
        None => {
            let registry = immortal(Bound::new(py, Registry::with_defaults(py)?)?.into_any());
            let methods = PyDict::new(py);
            for name in EXPORTED {
                methods.set_item(name, immortal(registry.getattr(name)?))?;
            }
            // Two imports racing (which the import lock prevents): the first to store wins.
            let _ = DEFAULT.set((registry.unbind(), methods.unbind()));
            DEFAULT.get().ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("panelboard: no default registry")
            })?
        }
    };
    // Attributes, not `add`ed: they are private, and `add` would list them in `__all__`.
    m.setattr("_default_registry", registry.bind(py))?;
    m.setattr("_default_methods", methods.bind(py))?;
    Ok(())
}
