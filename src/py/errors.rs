//! `CircuitOpenError`, native so that a rejection costs no Python frame.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use super::ffi::upcall;
use super::pyrefs;

/// Raised instead of calling the function while the breaker rejects calls.
#[pyclass(extends = PyException, frozen, module = "panelboard", subclass)]
pub struct CircuitOpenError {
    /// The breaker's name.
    #[pyo3(get)]
    name: Py<PyAny>,
    /// Seconds until the breaker goes half-open; 0.0 if that is not known.
    #[pyo3(get)]
    retry_after: f64,
}

#[pymethods]
impl CircuitOpenError {
    #[new]
    #[pyo3(signature = (name, retry_after = 0.0, *_args))]
    fn new(
        name: Bound<'_, PyAny>,
        retry_after: f64,
        _args: &Bound<'_, pyo3::types::PyTuple>,
    ) -> Self {
        CircuitOpenError {
            name: name.unbind(),
            retry_after,
        }
    }

    fn __str__(&self, py: Python<'_>) -> String {
        format!(
            "circuit {} is open (retry after {:.3}s)",
            upcall::repr(self.name.bind(py)).map_or_else(|_| "?".to_owned(), |r| r.to_string()),
            self.retry_after
        )
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "CircuitOpenError({}, retry_after={})",
            upcall::repr(self.name.bind(py)).map_or_else(|_| "?".to_owned(), |r| r.to_string()),
            self.retry_after
        )
    }
}

impl CircuitOpenError {
    pub fn new_err(py: Python<'_>, name: Bound<'_, PyAny>, retry_after: f64) -> PyErr {
        match Bound::new(
            py,
            CircuitOpenError {
                name: name.unbind(),
                retry_after,
            },
        ) {
            Ok(err) => {
                // `args` as if raised by hand, `CircuitOpenError(name, retry_after)`: that is also
                // what pickling and copying (BaseException's `__reduce__`) rebuild it from.
                let set = pyrefs::refs(py).and_then(|refs| {
                    err.as_any().setattr(
                        refs.args_name.bind(py),
                        (err.get().name.clone_ref(py), retry_after),
                    )
                });
                match set {
                    Ok(()) => PyErr::from_value(err.into_any()),
                    Err(e) => e,
                }
            }
            Err(err) => err,
        }
    }
}
