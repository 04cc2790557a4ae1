//! `Permit`: permission for one call, taken by `try_acquire` or a manually entered `with` block,
//! settled once by the caller.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

use super::core::CoreRef;
use crate::engine::{Outcome, Ticket};

/// Permission for one call. Exactly one outcome may be reported; a permit dropped without one
/// counts as ignored, which releases its half-open slot.
#[pyclass(frozen, module = "panelboard")]
pub struct Permit {
    core: CoreRef,
    ticket: Ticket,
    /// When the call started, if the breaker times calls (`slow_call_duration`).
    started: Option<u64>,
    settled: AtomicBool,
}

impl Permit {
    pub(crate) fn new(core: CoreRef, ticket: Ticket, started: Option<u64>) -> Permit {
        Permit {
            core,
            ticket,
            started,
            settled: AtomicBool::new(false),
        }
    }

    fn claim(&self) -> PyResult<()> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Err(PyRuntimeError::new_err(
                "this permit's outcome was already reported",
            ));
        }
        Ok(())
    }

    fn settle(&self, py: Python<'_>, outcome: Outcome) -> PyResult<()> {
        self.claim()?;
        self.core.finish(
            py,
            &self.core.config.load(),
            self.ticket,
            outcome,
            self.started,
        );
        Ok(())
    }

    pub(crate) fn is_for(&self, core: &CoreRef) -> bool {
        self.core.same(core)
    }

    /// Settles a `with` block left with `exc` (`None`: left normally, a success).
    pub(crate) fn settle_block(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        if exc.is_none() {
            self.settle(py, Outcome::Success)
        } else {
            self._settle_error(py, exc)
        }
    }
}

#[pymethods]
impl Permit {
    fn success(&self, py: Python<'_>) -> PyResult<()> {
        self.settle(py, Outcome::Success)
    }

    fn failure(&self, py: Python<'_>) -> PyResult<()> {
        self.settle(py, Outcome::Failure)
    }

    fn ignore(&self, py: Python<'_>) -> PyResult<()> {
        self.settle(py, Outcome::Ignored)
    }

    /// Classifies a returned value with the breaker's `success` predicate and records it; raises the
    /// predicate's exception if it raised.
    fn _settle_result(&self, py: Python<'_>, result: &Bound<'_, PyAny>) -> PyResult<()> {
        self.claim()?;
        let config = self.core.config.load();
        let (outcome, predicate_error) = config.classify_result(result);
        self.core
            .finish(py, &config, self.ticket, outcome, self.started);
        predicate_error.map_or(Ok(()), Err)
    }

    /// Classifies a raised exception with the breaker's `failure_on`/`ignore` and records it.
    fn _settle_error(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        self.claim()?;
        let config = self.core.config.load();
        let outcome = config.classify_exception(exc);
        self.core
            .finish(py, &config, self.ticket, outcome, self.started);
        Ok(())
    }

    /// True once an outcome has been reported.
    #[getter]
    fn settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Permit {}{}>",
            if self.ticket.is_probe() {
                "probe"
            } else {
                "call"
            },
            if self.settled() { ", settled" } else { "" }
        )
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            // Ignored outcomes never change the mode, so no listener has to run here.
            self.core.record(
                &self.core.config.load(),
                self.ticket,
                Outcome::Ignored,
                None,
            );
        }
    }
}
