//! `Breaker.call` and `Registry.call`, the two methods that sit on every guarded RPC, as fast
//! entry points: `METH_FASTCALL` methods that hand the caller's argument array straight to the
//! user's function (PyO3's `*args, **kwargs` methods build a tuple and a dict on every call, more
//! than the rest of the guarded call costs). Each is a single native call doing admit, call,
//! classify and record (`core::guarded`). The C side (the argument array, the method table) is
//! `ffi::entry`; calling a decorated function, the third fast entry point, is `handle::CallGuarded`
//! (its entry point is stored in every instance).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
// Arguments are `Borrowed`, not `Bound`: taking a new reference to the shared breaker and
// function objects on every call would make threads contend on their reference counts
// (free-threaded CPython), which is all the read-only fast path is there to avoid.
use pyo3::Borrowed;

use super::awaitable::GuardedCoroutine;
use super::core::Breaker;
use super::core::{guarded_local_fast, guarded_unless_local_fast, shield};
use super::ffi::entry::{install_method, is_callable, FastArgs, FastMethodOf, OwnedArgs};
use super::ffi::upcall::{self, raise, Returned};
use super::handle::{not_callable, timeout_seconds, Guarded};
use super::pyrefs;
use super::registry::Registry;

/// `Breaker.call(fn, /, *args, **kwargs)`.
struct BreakerCall;

impl FastMethodOf for BreakerCall {
    type Owner = Breaker;
    const TRIES_FAST: bool = true;

    fn call<'a, 'py>(
        py: Python<'py>,
        breaker: Borrowed<'a, 'py, Breaker>,
        args: FastArgs<'a, 'py>,
    ) -> Returned<'py> {
        let Some((func, rest)) = args.split_first() else {
            return raise(
                py,
                Err(PyTypeError::new_err(
                    "Breaker.call() missing required argument 'fn'",
                )),
            );
        };
        if !is_callable(&func) {
            return raise(py, shield(|| Err(not_callable("fn", &func))));
        }
        // `try_fast` found no fast path of a breaker of this process a moment ago.
        guarded_unless_local_fast(&breaker.get().core, py, || rest.forward_returned(&func))
    }

    /// The common call, a callable `fn` and a closed breaker of this process, inlined into the
    /// entry point; anything else (errors included) is for `call`, out of line.
    #[inline(always)]
    fn try_fast<'a, 'py>(
        py: Python<'py>,
        breaker: Borrowed<'a, 'py, Breaker>,
        args: &FastArgs<'a, 'py>,
    ) -> Option<Returned<'py>> {
        let (func, rest) = args.split_first()?;
        if !is_callable(&func) {
            return None;
        }
        guarded_local_fast(&breaker.get().core, py, || rest.forward_returned(&func))
    }
}

/// `Breaker.acall(fn, /, *args, **kwargs)`: a `GuardedCoroutine` holding the arguments (admitted,
/// and `fn` called, when it is awaited). The keyword `timeout` is the breaker's own: given (and not
/// `None`), the call takes the Python helper that cancels it after that long (`_aio.acall`).
struct BreakerAcall;

impl FastMethodOf for BreakerAcall {
    type Owner = Breaker;

    fn call<'a, 'py>(
        py: Python<'py>,
        breaker: Borrowed<'a, 'py, Breaker>,
        args: FastArgs<'a, 'py>,
    ) -> Returned<'py> {
        let called = shield(|| {
            let Some((func, rest)) = args.split_first() else {
                return Err(PyTypeError::new_err(
                    "Breaker.acall() missing required argument 'fn'",
                ));
            };
            let mut timeout = None;
            for (key, value) in rest.keywords() {
                if is_timeout(&key) {
                    timeout = Some(value);
                }
            }
            if !func.is_callable() {
                return Err(not_callable("fn", &func));
            }
            let core = breaker.get().core.clone_ref(py);
            let Some(timeout) = timeout else {
                let coroutine = GuardedCoroutine::new(core, &func, rest.to_owned());
                return Ok(Bound::new(py, coroutine)?.into_any());
            };
            let timeout = timeout_seconds(py, Some(&timeout))?;
            let positional: Vec<_> = (0..rest.positional_count())
                .filter_map(|i| rest.positional(i))
                .collect();
            let keywords = rest.keywords().filter(|(key, _)| !is_timeout(key));
            if timeout.is_none() {
                let args = OwnedArgs::from_parts(
                    py,
                    positional.into_iter().map(|a| a.to_owned()),
                    keywords
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                )?;
                let coroutine = GuardedCoroutine::new(core, &func, args);
                return Ok(Bound::new(py, coroutine)?.into_any());
            }
            let positional = PyTuple::new(py, positional)?;
            let kwargs = PyDict::new(py);
            for (key, value) in keywords {
                kwargs.set_item(key, value)?;
            }
            let acall = pyrefs::refs(py)?.aio_acall.bind(py);
            upcall::call(
                acall,
                [
                    breaker.as_any(),
                    &*func,
                    positional.as_any(),
                    kwargs.as_any(),
                    &timeout,
                ],
            )
        });
        raise(py, called)
    }
}

/// Whether a keyword name is `timeout` (keyword names are `str`s).
fn is_timeout(key: &Bound<'_, PyAny>) -> bool {
    key.cast::<PyString>()
        .is_ok_and(|name| name.to_str().is_ok_and(|name| name == "timeout"))
}

/// `Registry.call(name, fn, **options)`: `name` and `fn` by position or keyword, every other
/// keyword an option.
struct RegistryCall;

impl FastMethodOf for RegistryCall {
    type Owner = Registry;

    #[inline]
    fn call<'a, 'py>(
        py: Python<'py>,
        registry: Borrowed<'a, 'py, Registry>,
        args: FastArgs<'a, 'py>,
    ) -> Returned<'py> {
        // The usual call, `call(name, fn)`, needs no parsing.
        if let (false, 2, Some(name), Some(func)) = (
            args.has_keywords(),
            args.positional_count(),
            args.positional(0),
            args.positional(1),
        ) {
            return registry.get().call_plain(&name, &func);
        }
        registry_call_parsed(py, registry.get(), &args)
    }
}

/// `Registry.call` given keywords or the wrong number of arguments: parsed, then called (out of
/// line, so that the usual call's entry point stays small enough to be compiled as one piece).
#[inline(never)]
fn registry_call_parsed<'py>(
    py: Python<'py>,
    registry: &Registry,
    args: &FastArgs<'_, 'py>,
) -> Returned<'py> {
    let (name, func, options) = raise(py, shield(|| registry_call_arguments(py, args)))?;
    registry.call(&name, &func, options.as_ref())
}

/// `name`, `fn` and the options of a `Registry.call` given keywords or the wrong number of
/// arguments.
#[allow(clippy::type_complexity)] // the three arguments, as `call` takes them
fn registry_call_arguments<'a, 'py>(
    py: Python<'py>,
    args: &FastArgs<'a, 'py>,
) -> PyResult<(
    Borrowed<'a, 'py, PyAny>,
    Borrowed<'a, 'py, PyAny>,
    Option<Bound<'py, PyDict>>,
)> {
    let nargs = args.positional_count();
    if nargs > 2 {
        return Err(PyTypeError::new_err(format!(
            "Registry.call() takes 2 positional arguments (name, fn) but {nargs} were given"
        )));
    }
    let (mut name, mut func) = (args.positional(0), args.positional(1));
    let mut options = None;
    for (key, value) in args.keywords() {
        let slot = match key.cast::<PyString>()?.to_str().ok() {
            Some("name") => &mut name,
            Some("fn") => &mut func,
            _ => {
                options
                    .get_or_insert_with(|| PyDict::new(py))
                    .set_item(key, value)?;
                continue;
            }
        };
        if slot.replace(value).is_some() {
            return Err(PyTypeError::new_err(format!(
                "Registry.call() got multiple values for argument '{}'",
                *key
            )));
        }
    }
    let (Some(name), Some(func)) = (name, func) else {
        return Err(PyTypeError::new_err(
            "Registry.call() missing required argument 'name' or 'fn'",
        ));
    };
    Ok((name, func, options))
}

/// Installs the fast entry points on the classes of the module being initialised.
pub fn install(py: Python<'_>) -> PyResult<()> {
    install_method::<BreakerCall>(
        py,
        c"call",
        c"call($self, fn, /, *args, **kwargs)\n--\n\nCalls fn(*args, **kwargs) through the breaker.",
    )?;
    install_method::<BreakerAcall>(
        py,
        c"acall",
        c"acall($self, fn, /, *args, **kwargs)\n--\n\nAwaits fn(*args, **kwargs) through the breaker: returns a GuardedCoroutine, admitted when awaited. The keyword `timeout` is the breaker's own: the call is cancelled after that many seconds, which raises `TimeoutError` and counts as a failure.",
    )?;
    install_method::<RegistryCall>(
        py,
        c"call",
        c"call($self, name, fn, **options)\n--\n\nCalls fn() through the breaker `name`, creating it with `options` if new.",
    )?;
    Guarded::install_vectorcall(py)
}
