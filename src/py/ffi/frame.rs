//! The Python frame running now, as `with` blocks tell frames apart (see `block`).

use pyo3::ffi;
use pyo3::prelude::*;

/// The Python frame running now, as its address and its code object; `None` outside any Python
/// frame. `with` blocks use it to tell the frame that looked `__exit__` up (see `block`). The
/// address alone could be that of a freed frame, reused; the code object, kept alive by whoever
/// keeps the address, tells such frames apart unless they run the same code. No reference to the
/// frame itself is taken, so no frame's locals are kept alive.
pub fn current_frame(py: Python<'_>) -> Option<(usize, Bound<'_, PyAny>)> {
    // SAFETY: attached to the interpreter (`py`). `PyEval_GetFrame` returns a borrowed frame of
    // this thread, or NULL with no error set (none running, or no memory for the frame object);
    // `PyFrame_GetCode` of a valid frame returns a new, non-NULL reference to its code object.
    unsafe {
        let frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            return None;
        }
        let code = ffi::PyFrame_GetCode(frame);
        Some((frame as usize, Bound::from_owned_ptr(py, code.cast())))
    }
}
