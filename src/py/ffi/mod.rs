//! The fence around raw CPython API: every use of `pyo3::ffi` and every `unsafe` block of the
//! extension is in this module tree, each with a SAFETY comment saying why it is sound. What it
//! exports is safe to call (or, for the few `unsafe fn`s, says what the caller promises), so the
//! rest of the bindings are compiled with `unsafe_code` forbidden (see `py/mod.rs`).
//!
//! These modules import no other binding module (they are the bottom layer), with one exception:
//! `module_def` is CPython's entry into the whole extension and calls `init_module` at the top.
//!
//! - `upcall`: every call from the bindings into Python code (`PyIter_Send` included), declared
//!   `"C-unwind"`, parking a thread that the interpreter ends at shutdown;
//! - `entry`: the C side of the vectorcall / `METH_FASTCALL` entry points (`Breaker.call`,
//!   `Registry.call`, calling a decorated function): the argument array as a safe `FastArgs`,
//!   method definitions, the per-instance vectorcall slot, and arguments kept for a later call
//!   (`OwnedArgs`, what a guarded coroutine calls its function with once admitted);
//! - `awaitable`: the `am_await`/`am_send` slots of the native awaitables (`await` without a
//!   `StopIteration`);
//! - `refs`: references released with the thread counted as attached;
//! - `immortal`: process-lifetime objects whose reference counts no thread writes (3.13t);
//! - `objects`: small object-level helpers (`is_coroutine`, UTF-8 with surrogates, exception args);
//! - `frame`: the frame running now (address and code object), for `with` blocks;
//! - `contextvar`: `ContextVar.get`/`set` through the C API (the permit stack);
//! - `module_def`: the hand-written module definition that refuses subinterpreters;
//! - `monotonic`: the monotonic clock in one `clock_gettime`;
//! - `ticker`: the monotonic clock published every millisecond by a thread of its own (a rate rule's
//!   window reads it per call), with its fork handler;
//! - `thread`: a number for the calling thread from its thread state (the success counter's stripe).

pub mod awaitable;
pub mod contextvar;
pub mod entry;
pub mod frame;
pub mod immortal;
pub mod module_def;
pub mod monotonic;
pub mod objects;
pub mod refs;
pub mod thread;
#[cfg(unix)]
pub mod ticker;
pub mod upcall;
