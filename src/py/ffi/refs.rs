//! References released with the thread counted as attached, so that their release happens at
//! once instead of being queued by PyO3 (which does not count the fast entry points' threads as
//! attached: see `entry`).

use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::PyClass;
use std::mem::ManuallyDrop;

/// A strong reference that is only ever dropped by a thread attached to the interpreter, and
/// releases it at once, as a `Bound` does, instead of asking PyO3 whether the thread is attached:
/// that check is a thread-local lookup on every drop, and in the fast entry points (which PyO3
/// does not count as attached) it would queue the release instead.
///
/// The rule its users keep: it is owned only by Python objects and by code called from Python (a
/// method, a fast entry point), never moved into `Python::detach` or a thread of Rust's own.
pub struct AttachedRef<T: PyClass>(ManuallyDrop<Py<T>>);

impl<T: PyClass> Drop for AttachedRef<T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the thread is attached (the rule above), and the reference is taken exactly
        // once, here, and not used again.
        unsafe {
            let py = Python::assume_attached();
            drop(ManuallyDrop::take(&mut self.0).into_bound(py));
        }
    }
}

impl<T: PyClass<Frozen = True> + Sync> std::ops::Deref for AttachedRef<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.0.get()
    }
}

impl<T: PyClass> AttachedRef<T> {
    pub fn new(py: Python<'_>, value: T) -> PyResult<AttachedRef<T>>
    where
        T: Into<pyo3::PyClassInitializer<T>>,
    {
        Ok(AttachedRef(ManuallyDrop::new(Py::new(py, value)?)))
    }

    pub fn clone_ref(&self, py: Python<'_>) -> AttachedRef<T> {
        AttachedRef(ManuallyDrop::new(self.0.clone_ref(py)))
    }

    /// The reference itself, for `__traverse__`.
    pub fn as_py(&self) -> &Py<T> {
        &self.0
    }

    /// The same object?
    pub fn same(&self, other: &AttachedRef<T>) -> bool {
        self.0.is(&*other.0)
    }
}

/// Holds objects whose references are released with the thread attached when this is dropped, if
/// it can attach at all: a value dropped inside the fast entry points would otherwise have its
/// references queued by PyO3. At interpreter shutdown (no attaching) they are queued as before.
pub struct ReleasedAttached<T>(ManuallyDrop<T>);

impl<T> ReleasedAttached<T> {
    pub fn new(value: T) -> ReleasedAttached<T> {
        ReleasedAttached(ManuallyDrop::new(value))
    }
}

impl<T> std::ops::Deref for ReleasedAttached<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Drop for ReleasedAttached<T> {
    fn drop(&mut self) {
        // SAFETY: taken exactly once, here; the field is private and not used again.
        let mut value = Some(unsafe { ManuallyDrop::take(&mut self.0) });
        Python::try_attach(|_| drop(value.take()));
        drop(value);
    }
}

/// A strong reference to any object, released like an `AttachedRef` (same rule: dropped only by a
/// thread attached to the interpreter, never moved into `Python::detach` or a thread of Rust's own).
pub struct AttachedObject(ManuallyDrop<Py<PyAny>>);

impl AttachedObject {
    pub fn new(object: &Bound<'_, PyAny>) -> AttachedObject {
        AttachedObject(ManuallyDrop::new(object.clone().unbind()))
    }

    /// Keeps the caller's own reference.
    pub fn take(object: Bound<'_, PyAny>) -> AttachedObject {
        AttachedObject(ManuallyDrop::new(object.unbind()))
    }

    /// Is `other` this very object?
    #[inline]
    pub fn is(&self, other: &Bound<'_, PyAny>) -> bool {
        self.0.as_ptr() == other.as_ptr()
    }

    #[inline]
    pub fn bind<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.0.bind(py)
    }

    /// The reference itself, for `__traverse__`.
    pub fn as_py(&self) -> &Py<PyAny> {
        &self.0
    }
}

impl Drop for AttachedObject {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the thread is attached (the rule above), and the reference is taken exactly
        // once, here, and not used again.
        unsafe {
            let py = Python::assume_attached();
            drop(ManuallyDrop::take(&mut self.0).into_bound(py));
        }
    }
}
