//! `with breaker:` and `async with breaker:`: each block settles exactly the permit its own
//! `__enter__` took.
//!
//! `with b:` calls `__enter__` and `__exit__` on the same object `b`, which threads, tasks and
//! generators share, so the permit cannot live on `b`, and a context variable is not enough either:
//! a generator or coroutine suspended inside a block may be resumed, closed or collected in another
//! context or on another thread, and inside another block on the same breaker.
//!
//! What identifies a block is the object its `__exit__` lookup returns: the `with` statement looks
//! up `__enter__` and `__exit__`, keeps the `__exit__` object on the frame that runs the block, then
//! calls `__enter__` (CPython 3.11 to 3.13 `BEFORE_WITH`/`BEFORE_ASYNC_WITH`; 3.14 looks `__exit__`
//! up first). So `__exit__` and `__aexit__` are descriptors that return a fresh `BlockExit` for
//! every lookup and remember it, weakly, as this thread's pending block, with the frame that
//! looked it up; the `__enter__` that follows on the same thread, called from that same frame,
//! stores its permit in that block. Leaving the block calls that very
//! object, on whatever thread or context it happens; a block that is never left (its frame is
//! dropped) releases the permit as ignored, like a dropped `Permit`.
//!
//! A manual `b.__enter__()` with no pending block of its own (a wrapper class's `__enter__`,
//! `b.__enter__()` in a test) falls back to a stack of permits in a context variable, and an
//! `__exit__` whose block holds no permit takes the innermost permit of this breaker from that
//! stack: such pairs match within one thread or task, as they always did.

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyTuple};
use pyo3::Borrowed;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use super::awaitable;
use super::core::{shield, Breaker};
use super::ffi::entry::{install_plain_vectorcall_slot, FastArgs, FastMethod, VectorcallSlot};
use super::ffi::frame;
use super::ffi::upcall::{raise, Returned};
use super::permit::Permit;
use super::pyrefs;
use crate::engine::{Outcome, Ticket};

/// One `with` block: the breaker, and the ticket its `__enter__` took.
struct Block {
    asynchronous: bool,
    /// Set by the lookup `b.__exit__`, or by `__enter__` for a lookup on the class
    /// (`type(b).__exit__`, as `contextlib.ExitStack` does).
    breaker: OnceLock<Py<Breaker>>,
    /// The class-level lookup: called with the breaker as its first argument.
    unbound: bool,
    /// The ticket, and when the call started if the breaker times calls. Set once, by the
    /// `__enter__` that takes this block; the mutex is held only to copy it in or out (a
    /// `OnceLock`'s one-time initialisation cost more than the rest of `__enter__`'s bookkeeping).
    ticket: Mutex<Option<(Ticket, Option<u64>)>>,
    settled: AtomicBool,
    /// Where `__exit__` was looked up (see `frame::FrameMark`): only an `__enter__` called from
    /// that frame may give this block its permit, and for a lookup on the instance (`with b:`)
    /// only from that very instruction, so that a lookup kept for later (`kept = b.__exit__`)
    /// never takes the permit of a manual `b.__enter__()`. A lookup on the class
    /// (`ExitStack.enter_context`, `unittest`'s `enterContext`) is entered a few instructions
    /// later, so the frame alone must match.
    lookup_frame: Option<frame::FrameMark>,
}

impl Block {
    /// The ticket, once `__enter__` stored it.
    fn ticket(&self) -> Option<(Ticket, Option<u64>)> {
        *self.ticket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // A block whose frame went away without leaving it: ignored, which frees a half-open slot
        // and never moves the breaker (so no listener has to run, and no Python is needed).
        let ticket = *self
            .ticket
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let (Some((ticket, _)), Some(breaker)) = (ticket, self.breaker.get()) {
            if !*self.settled.get_mut() {
                let core = &breaker.get().core;
                core.record(&core.config.load(), ticket, Outcome::Ignored, None);
            }
        }
    }
}

thread_local! {
    /// The block whose `__exit__` was looked up last on this thread, until an `__enter__` takes it.
    /// Weak: a lookup nobody keeps (`hasattr(b, "__exit__")`) leaves nothing to take.
    static PENDING: Cell<Weak<Block>> = const { Cell::new(Weak::new()) };
}

fn set_pending(block: &Arc<Block>) {
    // `try_with`: during thread teardown there is no pending block, never a panic.
    let _ = PENDING.try_with(|pending| pending.set(Arc::downgrade(block)));
}

/// Takes this thread's pending block if it was looked up for an `__enter__` of this kind on
/// `breaker` (or on the class), by the frame calling `__enter__` now, and is still alive and
/// unused.
///
/// The frame check is what keeps a kept lookup from taking a later manual `__enter__`'s permit:
/// `with` (`BEFORE_WITH`), `ExitStack.enter_context` and `unittest`'s `enterContext` look up and
/// enter in one frame; `ExitStack.push(b)` or a wrapper class's `__enter__` calling
/// `b.__enter__()` do not, and their permits go on the context-variable stack.
fn take_pending(breaker: &Bound<'_, Breaker>, asynchronous: bool) -> Option<Arc<Block>> {
    let block = PENDING.try_with(Cell::take).ok()?.upgrade()?;
    let fits = block.asynchronous == asynchronous
        && block.ticket().is_none()
        && block
            .breaker
            .get()
            .is_none_or(|own| own.as_ptr() == breaker.as_ptr())
        && same_frame(breaker.py(), block.lookup_frame.as_ref(), !block.unbound);
    fits.then_some(block)
}

/// Whether the frame running now (and, with `same_instruction`, its instruction) is `lookup`'s
/// (`None`: looked up outside any Python frame, which matches nothing).
fn same_frame(py: Python<'_>, lookup: Option<&frame::FrameMark>, same_instruction: bool) -> bool {
    match (lookup, frame::current_frame(py)) {
        (Some(lookup), Some(now)) => lookup.matches(&now, same_instruction),
        _ => false,
    }
}

/// `__enter__` / `__aenter__`: takes a permit (or raises `CircuitOpenError`) and gives it to the
/// block being entered.
pub fn enter(breaker: &Bound<'_, Breaker>, asynchronous: bool) -> PyResult<()> {
    let py = breaker.py();
    // Taken before admission: admission may run listeners, whose own blocks must not take it.
    let block = take_pending(breaker, asynchronous);
    let core = &breaker.get().core;
    let config = core.config.load();
    let ticket = core.admit(py, &config)?;
    let started = core.start_timer(&config);
    if let Some(block) = block {
        // Set once: `take_pending` checked the block holds no ticket, and only this thread can
        // take a pending block.
        if block.breaker.get().is_none() {
            let _ = block.breaker.set(breaker.clone().unbind());
        }
        *block.ticket.lock().unwrap_or_else(PoisonError::into_inner) = Some((ticket, started));
        return Ok(());
    }
    let permit = Bound::new(py, Permit::new(core.clone_ref(py), ticket, started))?;
    let below = pyrefs::permit_stack_get(py)?;
    pyrefs::permit_stack_set(py, PyTuple::new(py, [permit.into_any(), below])?.as_any())
}

/// The descriptor installed as `Breaker.__exit__` and `Breaker.__aexit__`.
#[pyclass(frozen, module = "panelboard", name = "_BlockExitDescriptor")]
pub struct ExitDescriptor {
    asynchronous: bool,
}

#[pymethods]
impl ExitDescriptor {
    fn __get__<'py>(
        &self,
        instance: &Bound<'py, PyAny>,
        _owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, BlockExit>> {
        let (breaker, unbound) = if instance.is_none() {
            (OnceLock::new(), true)
        } else {
            let breaker = instance.cast::<Breaker>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "__exit__ is a Breaker's, not {}'s",
                    super::config::type_name(instance)
                ))
            })?;
            (OnceLock::from(breaker.clone().unbind()), false)
        };
        let block = Arc::new(Block {
            asynchronous: self.asynchronous,
            breaker,
            unbound,
            ticket: Mutex::new(None),
            settled: AtomicBool::new(false),
            lookup_frame: frame::current_frame(instance.py()),
        });
        // Made pending only once allocated: an allocation may run a garbage collection, and the
        // finalizers it runs may enter blocks of their own.
        let exit = Bound::new(instance.py(), BlockExit::new(block))?;
        set_pending(&exit.get().block);
        Ok(exit)
    }
}

/// What `b.__exit__` (or `__aexit__`) evaluates to: leaving one block. Called with
/// `(exc_type, exc, traceback)`, or `(breaker, exc_type, exc, traceback)` when looked up on the
/// class.
#[pyclass(frozen, module = "panelboard", name = "_BlockExit")]
pub struct BlockExit {
    vectorcall: VectorcallSlot,
    block: Arc<Block>,
}

impl BlockExit {
    fn new(block: Arc<Block>) -> BlockExit {
        BlockExit {
            vectorcall: VectorcallSlot::of::<CallBlockExit>(),
            block,
        }
    }
}

impl BlockExit {
    /// Leaves the block: `nargs` positional arguments, `arg(i)` the `i`-th.
    fn leave<'py>(
        &self,
        py: Python<'py>,
        nargs: usize,
        arg: impl Fn(usize) -> Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let block = &self.block;
        let expected = if block.unbound { 4 } else { 3 };
        let exc = match arg(expected - 2) {
            Some(exc) if nargs == expected => exc,
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "__exit__ takes {expected} positional arguments but {nargs} were given"
                )))
            }
        };
        match (block.ticket(), block.breaker.get()) {
            (Some((ticket, started)), Some(breaker)) => {
                if block.settled.swap(true, Ordering::AcqRel) {
                    return Err(PyRuntimeError::new_err("this block was already left"));
                }
                let core = &breaker.get().core;
                let config = core.config.load();
                let outcome = if exc.is_none() {
                    Outcome::Success
                } else {
                    config.classify_exception(&exc)
                };
                core.finish(py, &config, ticket, outcome, started);
            }
            _ => {
                // No permit of its own: a manual `__enter__` left by a manual `__exit__`.
                let breaker = match (block.breaker.get(), arg(0)) {
                    (Some(breaker), _) => breaker.bind(py).clone(),
                    (None, Some(first)) => first.cast::<Breaker>()?.clone(),
                    (None, None) => return Err(PyTypeError::new_err("__exit__ needs a breaker")),
                };
                pop_permit(&breaker)?.get().settle_block(py, &exc)?;
            }
        }
        if block.asynchronous {
            return awaitable::ready_false(py);
        }
        Ok(PyBool::new(py, false).to_owned().into_any())
    }
}

/// Calling a block's exit: its vectorcall entry point (`with` passes three arguments, which need
/// no tuple this way).
struct CallBlockExit;

impl FastMethod for CallBlockExit {
    fn call<'a, 'py>(
        py: Python<'py>,
        slf: Borrowed<'a, 'py, PyAny>,
        args: FastArgs<'a, 'py>,
    ) -> Returned<'py> {
        let exit = raise(py, shield(|| Ok(slf.cast::<BlockExit>()?)))?;
        if args.keywords().next().is_some() {
            return raise(
                py,
                Err(PyTypeError::new_err("__exit__ takes no keyword arguments")),
            );
        }
        raise(
            py,
            exit.get().leave(py, args.positional_count(), |i| {
                args.positional(i).map(Borrowed::to_owned)
            }),
        )
    }
}

#[pymethods]
impl BlockExit {
    /// The slow-path entry (`PyObject_Call` with a tuple); `with` uses vectorcall.
    #[pyo3(signature = (*args))]
    fn __call__<'py>(&self, args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        self.leave(args.py(), args.len(), |i| args.get_item(i).ok())
    }

    fn __repr__(&self) -> String {
        let state = match (
            self.block.ticket(),
            self.block.settled.load(Ordering::Acquire),
        ) {
            (None, _) => "not entered",
            (Some(_), false) => "entered",
            (Some(_), true) => "left",
        };
        format!("<exit of a breaker block, {state}>")
    }
}

/// Takes this breaker's innermost permit off the `with` stack of the current thread or task.
fn pop_permit<'py>(breaker: &Bound<'py, Breaker>) -> PyResult<Bound<'py, Permit>> {
    let py = breaker.py();
    let core = &breaker.get().core;
    let mut skipped = Vec::new();
    let mut node = pyrefs::permit_stack_get(py)?;
    while !node.is_none() {
        let (permit, below): (Bound<'py, Permit>, Bound<'py, PyAny>) = node.extract()?;
        if permit.get().is_for(core) {
            let mut rebuilt = below;
            for other in skipped.into_iter().rev() {
                rebuilt = PyTuple::new(py, [other, rebuilt])?.into_any();
            }
            pyrefs::permit_stack_set(py, &rebuilt)?;
            return Ok(permit);
        }
        skipped.push(permit.into_any());
        node = below;
    }
    Err(PyRuntimeError::new_err(
        "__exit__ without a matching __enter__ on this breaker",
    ))
}

/// Installs the `__exit__`/`__aexit__` descriptors on `Breaker`, and the exits' vectorcall entry
/// point (found on a throwaway exit).
pub fn install(py: Python<'_>) -> PyResult<()> {
    let probe = Bound::new(
        py,
        BlockExit::new(Arc::new(Block {
            asynchronous: false,
            breaker: OnceLock::new(),
            unbound: true,
            ticket: Mutex::new(None),
            settled: AtomicBool::new(false),
            lookup_frame: None,
        })),
    )?;
    install_plain_vectorcall_slot(&probe, &probe.get().vectorcall)?;
    let ty = py.get_type::<Breaker>();
    ty.setattr(
        "__exit__",
        Bound::new(
            py,
            ExitDescriptor {
                asynchronous: false,
            },
        )?,
    )?;
    ty.setattr(
        "__aexit__",
        Bound::new(py, ExitDescriptor { asynchronous: true })?,
    )
}
