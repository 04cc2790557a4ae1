//! `CircuitOpenError`, native so that a rejection costs no Python frame.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use pyo3::types::{PyFloat, PyTuple};

use super::ffi::{objects, upcall};
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
    // Positional only, as BaseException.__init__ (which also runs) takes no keywords.
    #[pyo3(signature = (name, retry_after = 0.0, /, *_args))]
    fn new(name: Bound<'_, PyAny>, retry_after: f64, _args: &Bound<'_, PyTuple>) -> Self {
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
            "CircuitOpenError({}, {:?})",
            upcall::repr(self.name.bind(py)).map_or_else(|_| "?".to_owned(), |r| r.to_string()),
            self.retry_after
        )
    }
}

impl CircuitOpenError {
    pub fn new_err(py: Python<'_>, name: Bound<'_, PyAny>, retry_after: f64) -> PyErr {
        let args = match PyTuple::new(py, [name.as_any(), PyFloat::new(py, retry_after).as_any()]) {
            Ok(args) => args,
            Err(err) => return err,
        };
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
                objects::set_new_exception_args(err.as_any(), args);
                PyErr::from_value(err.into_any())
            }
            Err(err) => err,
        }
    }
}

/// A breaker's name as the `str` its `CircuitOpenError`s carry. With the GIL it is made on the
/// first rejection and shared by the next ones (decoding it each time was a tenth of a rejection's
/// instructions). Free-threaded builds make a new one each time: threads rejected at once would
/// otherwise all write the shared string's reference count. (A `OnceBox`, one word until the
/// first rejection, not the two of a `OnceLock`: every breaker carries one.)
#[derive(Default)]
pub struct RejectionName {
    #[cfg(not(Py_GIL_DISABLED))]
    made: once_cell::race::OnceBox<Py<pyo3::types::PyString>>,
}

impl RejectionName {
    pub fn get<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        #[cfg(not(Py_GIL_DISABLED))]
        if let Some(name) = self.made.get() {
            return Ok(name.bind(py).clone().into_any());
        }
        let name = pyrefs::name_str(py, key)?;
        #[cfg(not(Py_GIL_DISABLED))]
        if let Ok(made) = name.cast::<pyo3::types::PyString>() {
            if let Err(lost) = self.made.set(Box::new(made.clone().unbind())) {
                drop((*lost).into_bound(py)); // released at once: this thread is attached
            }
        }
        Ok(name)
    }
}

#[cfg(not(Py_GIL_DISABLED))]
impl Drop for RejectionName {
    /// Releases the string at once. A breaker can be dropped inside the fast entry points, where
    /// PyO3 does not count the thread as attached and would queue the release (as `Config` does).
    fn drop(&mut self) {
        let mut made = Some(std::mem::take(&mut self.made));
        Python::try_attach(|_| drop(made.take()));
        drop(made);
    }
}
