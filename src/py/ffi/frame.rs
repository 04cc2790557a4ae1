//! The Python frame running now, as `with` blocks tell frames apart (see `block`).

use pyo3::ffi;
use pyo3::prelude::*;

/// Where Python code is running: a frame's address, its code object and the offset of the
/// instruction it is executing.
///
/// The address alone could be that of a freed frame, reused; the code object, kept alive by
/// whoever keeps the mark, tells such frames apart unless they run the same code. The instruction
/// offset tells apart two places in one frame: the `with` statement looks `__exit__` up and calls
/// `__enter__` within one instruction (`BEFORE_WITH` / `BEFORE_ASYNC_WITH`, CPython 3.11 to 3.13).
/// No reference to the frame itself is taken, so no frame's locals are kept alive.
pub struct FrameMark {
    address: usize,
    code: Py<PyAny>,
    instruction: i32,
}

impl FrameMark {
    /// The same frame (as far as address and code tell), and, with `same_instruction`, the same
    /// instruction in it.
    pub fn matches(&self, now: &FrameMark, same_instruction: bool) -> bool {
        self.address == now.address
            && self.code.as_ptr() == now.code.as_ptr()
            && (!same_instruction || self.instruction == now.instruction)
    }
}

/// The mark of the frame running now; `None` outside any Python frame.
pub fn current_frame(py: Python<'_>) -> Option<FrameMark> {
    // SAFETY: attached to the interpreter (`py`). `PyEval_GetFrame` returns a borrowed frame of
    // this thread, or NULL with no error set (none running, or no memory for the frame object);
    // `PyFrame_GetCode` of a valid frame returns a new, non-NULL reference to its code object, and
    // `PyFrame_GetLasti` only reads the frame.
    unsafe {
        let frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            return None;
        }
        let code = ffi::PyFrame_GetCode(frame);
        Some(FrameMark {
            address: frame as usize,
            code: Bound::from_owned_ptr(py, code.cast()).unbind(),
            instruction: ffi::PyFrame_GetLasti(frame),
        })
    }
}
