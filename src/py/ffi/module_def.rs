//! The module definition of `panelboard._core`, written out by hand (raw CPython API)
//! so that it can declare what `#[pymodule]` cannot: that the module does not support a second
//! interpreter. (PyO3 0.28's `#[pymodule]` does not refuse subinterpreters: it uses multi-phase
//! initialisation without a `Py_mod_multiple_interpreters` slot, which CPython reads as
//! "supported", and its own interpreter check only runs for submodules.)
//!
//! The bindings keep process-wide state: PyO3's type objects, the Python objects in `pyrefs`, the
//! fast entry points. All of them belong to the interpreter that created them, so a module
//! initialised in a subinterpreter would hand that interpreter's objects to the main one (and, once
//! it is destroyed, dangling ones). So the module loads in the main interpreter only:
//! - `Py_mod_multiple_interpreters` = not supported (3.12+): CPython itself refuses the import in
//!   an isolated subinterpreter;
//! - a legacy subinterpreter (which shares the GIL, and where CPython only checks that slot when
//!   the interpreter asks it to), and any subinterpreter on 3.11, is refused by `exec` below with
//!   an `ImportError`, *before* anything process-wide is created or touched (PyO3 included), so
//!   the main interpreter can still import the module later.

use pyo3::ffi;
use pyo3::prelude::*;
use std::cell::UnsafeCell;
use std::os::raw::{c_int, c_void};
use std::ptr::null_mut;

/// The module's slots, terminated by a zero slot.
struct Slots(UnsafeCell<[ffi::PyModuleDef_Slot; 4]>);
/// The module definition CPython keeps a pointer to (and initialises in place).
struct Definition(UnsafeCell<ffi::PyModuleDef>);

// SAFETY: only handed to CPython, which reads it with the interpreter held; Rust never touches it.
unsafe impl Sync for Slots {}
// SAFETY: only handed to CPython, which initialises it in place and reads it with the interpreter
// held; Rust never touches it after building it.
unsafe impl Sync for Definition {}

// `next` is only advanced on the versions that have the optional slots.
#[allow(unused_mut, unused_assignments)]
const fn slots() -> [ffi::PyModuleDef_Slot; 4] {
    let end = ffi::PyModuleDef_Slot {
        slot: 0,
        value: null_mut(),
    };
    let mut slots = [end, end, end, end];
    slots[0] = ffi::PyModuleDef_Slot {
        slot: ffi::Py_mod_exec,
        value: exec as *mut c_void,
    };
    let mut next = 1;
    #[cfg(Py_3_12)]
    {
        slots[next] = ffi::PyModuleDef_Slot {
            slot: ffi::Py_mod_multiple_interpreters,
            value: ffi::Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED,
        };
        next += 1;
    }
    #[cfg(Py_3_13)]
    {
        // As `#[pymodule(gil_used = false)]`: the module is safe without the GIL.
        slots[next] = ffi::PyModuleDef_Slot {
            slot: ffi::Py_mod_gil,
            value: ffi::Py_MOD_GIL_NOT_USED,
        };
        next += 1;
    }
    let _ = next;
    slots
}

static SLOTS: Slots = Slots(UnsafeCell::new(slots()));

static DEFINITION: Definition = Definition(UnsafeCell::new(ffi::PyModuleDef {
    m_base: ffi::PyModuleDef_HEAD_INIT,
    m_name: c"panelboard._core".as_ptr(),
    m_doc: c"The native part of panelboard; import `panelboard` instead.".as_ptr(),
    m_size: 0,
    m_methods: null_mut(),
    m_slots: SLOTS.0.get() as *mut ffi::PyModuleDef_Slot,
    m_traverse: None,
    m_clear: None,
    m_free: None,
}));

/// The module's entry point (multi-phase initialisation, PEP 489).
///
/// # Safety
/// Called by CPython's import machinery only.
#[no_mangle]
pub unsafe extern "C" fn PyInit__core() -> *mut ffi::PyObject {
    // SAFETY: a static definition that lives as long as the process.
    unsafe { ffi::PyModuleDef_Init(DEFINITION.0.get()) }
}

const REFUSED: &std::ffi::CStr =
    c"panelboard can only be imported in the main interpreter, not in \
a subinterpreter: its native part keeps process-wide state that belongs to one interpreter";

/// `Py_mod_exec`: refuses any interpreter but the main one, then builds the module.
unsafe extern "C" fn exec(module: *mut ffi::PyObject) -> c_int {
    // SAFETY: CPython calls `exec` with the importing thread attached to the importing
    // interpreter; these calls read interpreter pointers and set an exception, nothing else.
    unsafe {
        if ffi::PyInterpreterState_Get() != ffi::PyInterpreterState_Main() {
            ffi::PyErr_SetString(ffi::PyExc_ImportError, REFUSED.as_ptr());
            return -1;
        }
        // What `#[pymodule]` generates: PyO3's trampoline (attached, panics become exceptions).
        pyo3::impl_::trampoline::module_exec(module, build)
    }
}

fn build(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    // The one call from `ffi` up into the bindings: this is where CPython enters them.
    super::super::init_module(m)
}
