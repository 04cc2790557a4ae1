//! The C side of the three calls that sit on every guarded RPC, wired to CPython's vectorcall
//! protocol by hand.
//!
//! PyO3 routes a method that takes `*args, **kwargs` through `METH_VARARGS`, which builds an
//! argument tuple (and slices it) on every call: more than the rest of the guarded call costs. So
//! `Breaker.call`, `Registry.call` and calling a decorated function are `METH_FASTCALL` /
//! vectorcall entry points that hand the caller's argument array straight to the user's function.
//!
//! What each call does is written in safe code above this module, as a `FastMethod` (the method
//! bodies in `fastcall`, the decorated function's in `handle`); this module turns one into an
//! `extern "C-unwind"` function (`fastcall_entry`, `vectorcall_entry`), hands it the caller's
//! arguments as `FastArgs`, and installs it (`install_method`, `VectorcallSlot`).

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::{PyClass, PyTypeInfo};
// Arguments are `Borrowed`, not `Bound`: taking a new reference to the shared breaker and
// function objects on every call would make threads contend on their reference counts
// (free-threaded CPython), which is all the read-only fast path is there to avoid.
use pyo3::Borrowed;
use std::ffi::{c_int, CStr};
use std::marker::PhantomData;
use std::os::raw::c_char;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::upcall::{vectorcall, vectorcall_returned, Returned};

/// The body of a fast entry point: `slf` is the object the method was called on (for a
/// vectorcall, the object being called) and `args` the caller's arguments.
pub trait FastMethod {
    fn call<'a, 'py>(
        py: Python<'py>,
        slf: Borrowed<'a, 'py, PyAny>,
        args: FastArgs<'a, 'py>,
    ) -> Returned<'py>;
}

/// The body of a fast entry point installed as a method of the class `Owner` (`install_method`):
/// `slf` is the instance the method was called on, already known to be an `Owner`.
pub trait FastMethodOf {
    type Owner: PyClass + PyTypeInfo;

    fn call<'a, 'py>(
        py: Python<'py>,
        slf: Borrowed<'a, 'py, Self::Owner>,
        args: FastArgs<'a, 'py>,
    ) -> Returned<'py>;

    /// Whether the method has a `try_fast`.
    const TRIES_FAST: bool = false;

    /// What `call` returns, for the calls it can take without calling `call` (which the entry
    /// point then calls out of line, so that the common call's frame holds none of the rest):
    /// `None` for any other, having done nothing.
    #[inline(always)]
    fn try_fast<'a, 'py>(
        _py: Python<'py>,
        _slf: Borrowed<'a, 'py, Self::Owner>,
        _args: &FastArgs<'a, 'py>,
    ) -> Option<Returned<'py>> {
        None
    }
}

/// The arguments of a vectorcall or `METH_FASTCALL | METH_KEYWORDS` call, as CPython passed them:
/// an array of positional arguments followed by one value per name in `kwnames`. Only this module
/// builds one (from a live call), so its accessors are safe.
pub struct FastArgs<'a, 'py> {
    py: Python<'py>,
    args: *const *mut ffi::PyObject,
    /// How many positional arguments.
    nargs: usize,
    /// The same, with `PY_VECTORCALL_ARGUMENTS_OFFSET` as the caller set it.
    nargsf: usize,
    /// A tuple of `str`, or null when no keywords were passed.
    kwnames: *mut ffi::PyObject,
    /// Borrowed from the caller for the duration of the call.
    call: PhantomData<&'a ()>,
}

impl<'a, 'py> FastArgs<'a, 'py> {
    /// # Safety
    /// `args` holds `nargs` live positional arguments followed by one live value per name in
    /// `kwnames` (a live tuple of `str`, or null), all borrowed for `'a`; `nargsf` is `nargs`,
    /// or `nargs | PY_VECTORCALL_ARGUMENTS_OFFSET`.
    #[inline(always)]
    unsafe fn new(
        py: Python<'py>,
        args: *const *mut ffi::PyObject,
        nargs: usize,
        nargsf: usize,
        kwnames: *mut ffi::PyObject,
    ) -> FastArgs<'a, 'py> {
        FastArgs {
            py,
            args,
            nargs,
            nargsf,
            kwnames,
            call: PhantomData,
        }
    }

    /// How many positional arguments.
    #[inline(always)]
    pub fn positional_count(&self) -> usize {
        self.nargs
    }

    /// Positional argument `i`, if there is one.
    #[inline(always)]
    pub fn positional(&self, i: usize) -> Option<Borrowed<'a, 'py, PyAny>> {
        (i < self.positional_count()).then(|| {
            // SAFETY: `args` holds `positional_count()` live arguments (see `new`), so the
            // pointer is not null: saying so spares `from_ptr`'s null check on every call.
            unsafe {
                let arg = *self.args.add(i);
                std::hint::assert_unchecked(!arg.is_null());
                Borrowed::from_ptr(self.py, arg)
            }
        })
    }

    /// Whether the caller passed keyword arguments (CPython passes no `kwnames` when none).
    #[inline(always)]
    pub fn has_keywords(&self) -> bool {
        !self.kwnames.is_null()
    }

    /// The keyword arguments, as (name, value) pairs in the caller's order.
    pub fn keywords(
        &self,
    ) -> impl Iterator<Item = (Borrowed<'a, 'py, PyAny>, Borrowed<'a, 'py, PyAny>)> {
        let (py, args, kwnames) = (self.py, self.args, self.kwnames);
        let count = if kwnames.is_null() {
            0
        } else {
            // SAFETY: a non-null `kwnames` is a live tuple (see `new`).
            unsafe { ffi::PyTuple_GET_SIZE(kwnames) as usize }
        };
        let first_value = self.positional_count();
        (0..count).map(move |i| {
            // SAFETY: `i < len(kwnames)`, a live tuple whose items are live `str`s; the value of
            // keyword `i` follows the positional arguments (see `new`).
            unsafe {
                (
                    Borrowed::from_ptr(py, ffi::PyTuple_GET_ITEM(kwnames, i as ffi::Py_ssize_t)),
                    Borrowed::from_ptr(py, *args.add(first_value + i)),
                )
            }
        })
    }

    /// The first positional argument and the arguments after it, if there is one.
    #[inline(always)]
    pub fn split_first(&self) -> Option<(Borrowed<'a, 'py, PyAny>, FastArgs<'a, 'py>)> {
        let first = self.positional(0)?;
        // SAFETY: there is a first positional argument, so `args.add(1)` holds the remaining
        // `nargs - 1` positional arguments followed by the keyword values, all live for `'a`.
        let rest = unsafe {
            FastArgs::new(
                self.py,
                self.args.add(1),
                self.nargs - 1,
                self.nargs - 1,
                self.kwnames,
            )
        };
        Some((first, rest))
    }

    /// `func(*args, **kwargs)`: hands the arguments on without a tuple, exactly as CPython passed
    /// them (`PY_VECTORCALL_ARGUMENTS_OFFSET` included, so that `func` may borrow the slot before
    /// them). The exception it raises is left set (`Raised`), for the guarded call to take.
    #[inline(always)]
    pub fn forward_returned(&self, func: &Bound<'py, PyAny>) -> Returned<'py> {
        // SAFETY: the arguments as CPython passed them (see `new`).
        unsafe { vectorcall_returned(func, self.args, self.nargsf, self.kwnames) }
    }
}

/// `callable(obj)`, inlined: what `PyCallable_Check` does (a type with `tp_call`), without the
/// call into CPython (about 10 instructions on every guarded call).
#[inline(always)]
pub fn is_callable(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a live object, so its type is a live type object.
    unsafe { (*ffi::Py_TYPE(obj.as_ptr())).tp_call.is_some() }
}

/// Runs `body` as the body of a C entry point: an error is restored as the current exception.
///
/// There is no `catch_unwind` here: Rust panics are caught by `shield` around everything the bodies
/// do except calling the user's function, and that call goes through `upcall` (see there for what
/// happens when CPython ends the thread inside it), so no unwind comes out of `body`.
///
/// This is lighter than PyO3's own trampoline, which also counts the thread as attached in
/// thread-local storage on every call. That count only matters for unbound `Py<T>` references
/// dropped inside (PyO3 queues their release when it does not know the thread is attached). The
/// hot path drops none; the paths that can (options given to `Registry.call`, a configuration
/// replaced while a call was running) attach explicitly: see `Registry::call` and `refs`.
///
/// # Safety
/// Called with the thread attached; `slf` is a live object, and `args` holds `nargs` live
/// positional arguments followed by one live value per name in `kwnames` (a live tuple of `str`,
/// or null); `nargsf` is `nargs`, or `nargs | PY_VECTORCALL_ARGUMENTS_OFFSET`.
#[inline(always)]
unsafe fn entry_point<M: FastMethod>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: usize,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the thread is attached (the caller promised).
    let py = unsafe { Python::assume_attached() };
    // SAFETY: as this function's caller promised (above); a live object is not null (said, to
    // spare `from_ptr`'s check).
    let (slf, args) = unsafe {
        std::hint::assert_unchecked(!slf.is_null());
        (
            Borrowed::from_ptr(py, slf),
            FastArgs::new(py, args, nargs, nargsf, kwnames),
        )
    };
    into_c_result(M::call(py, slf, args))
}

/// What a C entry point returns for `result`: a new reference, or null (the exception is set).
#[inline(always)]
fn into_c_result(result: Returned<'_>) -> *mut ffi::PyObject {
    match result {
        Ok(value) => value.into_ptr(),
        Err(_raised) => null_mut(),
    }
}

/// The `METH_FASTCALL | METH_KEYWORDS` function for `M`. `extern "C-unwind"` so that a forced
/// unwind may pass (see `entry_point`); CPython's method table types it `extern "C"`, which has
/// the same calling convention (see `as_c_fastcall`).
///
/// # Safety
/// Called by CPython only, with the thread attached: `slf` is a live object, and `args` holds
/// `nargs` positional arguments followed by one value per name in `kwnames` (a tuple, or null).
///
/// No type check of `slf` here: `install_method` installs it only as a method descriptor of
/// `M::Owner`, and CPython calls a method descriptor's function only with an instance of that
/// class (`descr_check` on every generic path, binding included; the specialised call instructions
/// check the exact type first), as CPython's own C methods assume. (The check cost a call and the
/// copying of its result, about 25 instructions per `Breaker.call`, callgrind on 3.11.)
unsafe extern "C-unwind" fn fastcall_entry<M: FastMethodOf>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    if M::TRIES_FAST {
        // SAFETY: as CPython calls this function (see `fastcall_method`).
        let (py, slf, fast_args) = unsafe { method_arguments::<M>(slf, args, nargs, kwnames) };
        if let Some(returned) = M::try_fast(py, slf, &fast_args) {
            return into_c_result(returned);
        }
    }
    // SAFETY: as CPython calls this function (see above).
    unsafe { fastcall_method::<M>(slf, args, nargs, kwnames) }
}

/// `fastcall_entry` calling `M::call`: inlined unless `M` tries a fast path first (the rest of
/// the method then stays out of the fast path's frame).
///
/// # Safety
/// As `fastcall_entry`.
#[inline(always)]
unsafe fn fastcall_method<M: FastMethodOf>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    if M::TRIES_FAST {
        // SAFETY: as this function's caller promised.
        unsafe { fastcall_method_apart::<M>(slf, args, nargs, kwnames) }
    } else {
        // SAFETY: as this function's caller promised.
        let (py, slf, args) = unsafe { method_arguments::<M>(slf, args, nargs, kwnames) };
        into_c_result(M::call(py, slf, args))
    }
}

/// `fastcall_method`, out of line.
///
/// # Safety
/// As `fastcall_entry`.
#[inline(never)]
unsafe fn fastcall_method_apart<M: FastMethodOf>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as this function's caller promised.
    let (py, slf, args) = unsafe { method_arguments::<M>(slf, args, nargs, kwnames) };
    into_c_result(M::call(py, slf, args))
}

/// The arguments of a method call, as `M`'s bodies take them.
///
/// # Safety
/// As `fastcall_entry`.
#[inline(always)]
unsafe fn method_arguments<'a, 'py, M: FastMethodOf>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> (Python<'py>, Borrowed<'a, 'py, M::Owner>, FastArgs<'a, 'py>) {
    // SAFETY: the thread is attached (CPython calls methods so).
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `slf` is a live instance of `M::Owner` (see above), borrowed for the call, so not
    // null (said, to spare `from_ptr`'s check); `args` holds `nargs` positional arguments followed
    // by one value per name in `kwnames`, as CPython calls a method (whose `nargs` carries no flag).
    let (slf, args) = unsafe {
        std::hint::assert_unchecked(!slf.is_null());
        (
            Borrowed::from_ptr(py, slf).cast_unchecked::<M::Owner>(),
            FastArgs::new(py, args, nargs as usize, nargs as usize, kwnames),
        )
    };
    (py, slf, args)
}

/// The vectorcall function for `M` (`nargsf` carries `PY_VECTORCALL_ARGUMENTS_OFFSET`).
///
/// # Safety
/// As `fastcall_entry`, with `callable` the object being called.
unsafe extern "C-unwind" fn vectorcall_entry<M: FastMethod>(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let nargs = nargsf & !ffi::PY_VECTORCALL_ARGUMENTS_OFFSET;
    // SAFETY: CPython calls a vectorcall this way, `PyVectorcall_NARGS(nargsf)` positional
    // arguments first.
    unsafe { entry_point::<M>(callable, args, nargs, nargsf, kwnames) }
}

type FastcallEntry = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

type VectorcallEntry = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// The entry point as the `extern "C"` pointer type CPython's method table holds. "C-unwind" has
/// the same calling convention; it differs only in what an unwind does, which the callee decides.
fn as_c_fastcall(entry: FastcallEntry) -> ffi::PyCFunctionFastWithKeywords {
    // SAFETY: identical signatures and calling convention (see above).
    unsafe { std::mem::transmute::<FastcallEntry, ffi::PyCFunctionFastWithKeywords>(entry) }
}

/// The per-instance vectorcall pointer CPython finds through the type's `tp_vectorcall_offset`.
/// Two classes use it: `Guarded` (`install_vectorcall_slot` records where it sits, for
/// `instance_dict`) and a `with` block's exit (`install_plain_vectorcall_slot`).
#[repr(transparent)]
pub struct VectorcallSlot(#[allow(dead_code)] ffi::vectorcallfunc);

impl VectorcallSlot {
    /// The slot that calls `M`.
    pub const fn of<M: FastMethod>() -> VectorcallSlot {
        // SAFETY: as in `as_c_fastcall`.
        VectorcallSlot(unsafe {
            std::mem::transmute::<VectorcallEntry, ffi::vectorcallfunc>(vectorcall_entry::<M>)
        })
    }
}

fn method_def(
    name: &'static CStr,
    doc: &'static CStr,
    meth: ffi::PyCFunctionFastWithKeywords,
) -> *mut ffi::PyMethodDef {
    // Leaked once per interpreter start: CPython keeps pointing at method definitions forever.
    Box::into_raw(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr() as *const c_char,
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: meth,
        },
        ml_flags: (ffi::METH_FASTCALL | ffi::METH_KEYWORDS) as c_int,
        ml_doc: doc.as_ptr() as *const c_char,
    }))
}

/// Installs `M` as the method `name` of its class, a `METH_FASTCALL | METH_KEYWORDS` descriptor
/// (the only way its entry point is installed: `fastcall_entry` relies on it).
pub fn install_method<M: FastMethodOf>(
    py: Python<'_>,
    name: &'static CStr,
    doc: &'static CStr,
) -> PyResult<()> {
    let ty = py.get_type::<M::Owner>();
    let def = method_def(name, doc, as_c_fastcall(fastcall_entry::<M>));
    // SAFETY: a method descriptor for a live type object and a definition that is never freed.
    let descr =
        unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))? };
    ty.setattr(
        name.to_str()
            .map_err(|e| PyValueError::new_err(e.to_string()))?,
        descr,
    )
}

/// Where the `VectorcallSlot` field sits inside an instance, from the object's start (0: not
/// installed yet).
static SLOT_OFFSET: AtomicUsize = AtomicUsize::new(0);

/// Points the type of `probe` (a `#[pyclass(dict)]` instance) at the `VectorcallSlot` field
/// `slot` of `probe`, which every instance has at the same offset, and records that offset for
/// `instance_dict` (one class, `Guarded`).
pub fn install_vectorcall_slot<T: PyClass>(
    probe: &Bound<'_, T>,
    slot: &VectorcallSlot,
) -> PyResult<()> {
    let offset = install_vectorcall_slot_of(probe, slot)?;
    SLOT_OFFSET.store(offset, Ordering::Release);
    Ok(())
}

/// `install_vectorcall_slot` for a class without an instance dict (a block's exit).
pub fn install_plain_vectorcall_slot<T: PyClass>(
    probe: &Bound<'_, T>,
    slot: &VectorcallSlot,
) -> PyResult<()> {
    install_vectorcall_slot_of(probe, slot).map(drop)
}

fn install_vectorcall_slot_of<T: PyClass>(
    probe: &Bound<'_, T>,
    slot: &VectorcallSlot,
) -> PyResult<usize> {
    let ty = probe.py().get_type::<T>();
    // SAFETY: reads a field of a live type object.
    let object_size = unsafe { (*ty.as_type_ptr()).tp_basicsize } as usize;
    let base = probe.as_ptr() as usize;
    let field = slot as *const VectorcallSlot as usize;
    // The slot must lie inside the probe object, so it is a field of `T`, at the same offset in
    // every instance.
    let offset = field
        .checked_sub(base)
        .filter(|&offset| {
            offset > 0 && offset + std::mem::size_of::<VectorcallSlot>() <= object_size
        })
        .ok_or_else(|| PyValueError::new_err("unexpected layout of a vectorcall class"))?;
    // SAFETY: set once, while the module initialises and before any instance is called; the field
    // lives inside every instance at the same offset and always holds a `vectorcall_entry`.
    unsafe {
        let tp = ty.as_type_ptr();
        (*tp).tp_vectorcall_offset = offset as ffi::Py_ssize_t;
        // Free-threaded builds make tp_flags atomic.
        #[cfg(Py_GIL_DISABLED)]
        (*tp)
            .tp_flags
            .fetch_or(ffi::Py_TPFLAGS_HAVE_VECTORCALL, Ordering::Relaxed);
        #[cfg(not(Py_GIL_DISABLED))]
        {
            (*tp).tp_flags |= ffi::Py_TPFLAGS_HAVE_VECTORCALL;
        }
        ffi::PyType_Modified(tp);
    }
    Ok(offset)
}

/// The instance `__dict__` of the object whose `VectorcallSlot` field is `slot` (PyO3 does not
/// report a `#[pyclass(dict)]`'s dict to the garbage collector, and `functools.wraps` puts the
/// wrapped function in it as `__wrapped__`). `slot` must be the field of a live instance, as in
/// that instance's `__traverse__` (the one use): a `VectorcallSlot` is only ever built to be one.
pub fn instance_dict(slot: &VectorcallSlot) -> Option<&Py<PyAny>> {
    let offset = SLOT_OFFSET.load(Ordering::Acquire);
    if offset == 0 {
        return None;
    }
    let object = (slot as *const VectorcallSlot as usize - offset) as *mut ffi::PyObject;
    // SAFETY: `slot` lives inside an instance of the one class with a vectorcall slot, at
    // `offset`; PyO3 sets a positive tp_dictoffset for `#[pyclass(dict)]`, and the dict slot holds
    // NULL or a strong reference, which has the layout of `Option<Py<PyAny>>`.
    unsafe {
        let dict_offset = (*ffi::Py_TYPE(object)).tp_dictoffset;
        if dict_offset <= 0 {
            return None;
        }
        let dict_slot = (object as *mut u8).offset(dict_offset) as *const Option<Py<PyAny>>;
        (*dict_slot).as_ref()
    }
}

/// Arguments kept for a later call: a guarded coroutine calls its function with them once it is
/// admitted, on its first send (`await`). Strong references, laid out as a vectorcall takes them,
/// and released at once when dropped, like an `AttachedObject` (same rule: dropped only by a
/// thread attached to the interpreter, never moved into `Python::detach` or a thread of Rust's own).
pub struct OwnedArgs {
    /// The positional arguments, then one value per name in `kwnames`.
    values: std::mem::ManuallyDrop<Vec<Py<PyAny>>>,
    nargs: usize,
    /// A tuple of `str`, when keywords were passed.
    kwnames: Option<super::refs::AttachedObject>,
}

impl<'a, 'py> FastArgs<'a, 'py> {
    /// The same arguments, kept for a call made later.
    pub fn to_owned(&self) -> OwnedArgs {
        let keywords = if self.kwnames.is_null() {
            0
        } else {
            // SAFETY: a non-null `kwnames` is a live tuple (see `new`).
            unsafe { ffi::PyTuple_GET_SIZE(self.kwnames) as usize }
        };
        let count = self.nargs + keywords;
        if count == 0 {
            // The usual `acall(fn)` / `f()`: nothing to keep (an empty `Vec` allocates nothing).
            return OwnedArgs {
                values: std::mem::ManuallyDrop::new(Vec::new()),
                nargs: 0,
                kwnames: None,
            };
        }
        let values = (0..count)
            .map(|i| {
                // SAFETY: `args` holds `nargs` positional arguments and one value per keyword,
                // all live for `'a` (see `new`).
                unsafe {
                    Borrowed::from_ptr(self.py, *self.args.add(i))
                        .to_owned()
                        .unbind()
                }
            })
            .collect();
        let kwnames = (!self.kwnames.is_null()).then(|| {
            // SAFETY: a live tuple (see `new`).
            let names = unsafe { Borrowed::from_ptr(self.py, self.kwnames) };
            super::refs::AttachedObject::new(&names)
        });
        OwnedArgs {
            values: std::mem::ManuallyDrop::new(values),
            nargs: self.nargs,
            kwnames,
        }
    }
}

impl OwnedArgs {
    /// Positional arguments and (name, value) keyword pairs.
    pub fn from_parts<'py>(
        py: Python<'py>,
        positional: impl IntoIterator<Item = Bound<'py, PyAny>>,
        keywords: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    ) -> PyResult<OwnedArgs> {
        let mut values: Vec<Py<PyAny>> = positional.into_iter().map(Bound::unbind).collect();
        let nargs = values.len();
        let kwnames = if keywords.is_empty() {
            None
        } else {
            let names = pyo3::types::PyTuple::new(py, keywords.iter().map(|(name, _)| name))?;
            values.extend(keywords.into_iter().map(|(_, value)| value.unbind()));
            Some(super::refs::AttachedObject::new(names.as_any()))
        };
        Ok(OwnedArgs {
            values: std::mem::ManuallyDrop::new(values),
            nargs,
            kwnames,
        })
    }

    /// `func(*args, **kwargs)` with these arguments.
    pub fn call<'py>(&self, func: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let kwnames = self
            .kwnames
            .as_ref()
            .map_or(null_mut(), |k| k.as_py().as_ptr());
        // SAFETY: `Py<PyAny>` is a transparent non-null object pointer, so `values` is an array
        // of `nargs` positional arguments followed by one value per name in `kwnames` (a tuple of
        // `str`, or null), all held by `self` for the duration of the call. No
        // `PY_VECTORCALL_ARGUMENTS_OFFSET`: the slot before the array is not ours to lend.
        unsafe {
            vectorcall(
                func,
                self.values.as_ptr().cast::<*mut ffi::PyObject>(),
                self.nargs,
                kwnames,
            )
        }
    }

    /// Reports the references to the garbage collector.
    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for value in self.values.iter() {
            visit.call(value)?;
        }
        match &self.kwnames {
            Some(names) => visit.call(names.as_py()),
            None => Ok(()),
        }
    }
}

impl Drop for OwnedArgs {
    fn drop(&mut self) {
        // SAFETY: taken exactly once, here, and not used again.
        let values = unsafe { std::mem::ManuallyDrop::take(&mut self.values) };
        // SAFETY: the thread is attached (the rule above).
        let py = unsafe { Python::assume_attached() };
        for value in values {
            drop(value.into_bound(py));
        }
    }
}
