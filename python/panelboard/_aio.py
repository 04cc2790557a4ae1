"""Python helpers for the async API and for decorating what is not a plain sync function.

``await b.acall(fn)`` and calling a decorated ``async def`` function return a native awaitable
(``GuardedCoroutine``, src/py/awaitable.rs) that admits, drives ``fn``'s coroutine and records
without a Python frame; what is left here is the ``timeout`` path (it needs ``asyncio.timeout``),
generators (a ``yield`` needs a frame), and the rare paths of the native awaitable. Admission and
recording stay in Rust (``Breaker._acquire`` and the permit's ``_settle_*`` methods). ``asyncio`` is
imported only when a ``timeout`` is used, so that ``import panelboard`` stays light.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator
from types import CodeType, CoroutineType, GeneratorType
from typing import Any, TypeVar

T = TypeVar("T")

#: What ``decorate`` answers for an ``async def`` function without a ``timeout``: the breaker makes
#: the native wrapper (a ``Guarded`` whose calls return a ``GuardedCoroutine``).
NATIVE_ASYNC = object()


async def acall(
    breaker: Any,
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None = None,
) -> T:
    permit = breaker._acquire()
    try:
        awaitable = fn(*args, **kwargs)  # for an `async def` function, none of its code runs yet
    except BaseException as exc:
        permit._settle_error(exc)
        raise
    # The type test first: an `async def` function's coroutine, by far the usual case, costs one
    # comparison (`inspect.isawaitable` costs more than the rest of `acall` together).
    if type(awaitable) is not CoroutineType and not inspect.isawaitable(awaitable):
        permit.ignore()
        raise not_awaitable(fn, awaitable)
    if timeout is not None:
        return await _acall_within(breaker, permit, timeout, awaitable)
    try:
        result = await awaitable
    except BaseException as exc:
        # CancelledError is a BaseException, not an Exception: classified as ignored.
        permit._settle_error(exc)
        raise
    permit._settle_result(result)
    return result


def not_awaitable(fn: Any, result: Any) -> TypeError:
    """A result that cannot be awaited is the caller's bug, not the dependency's: refused, and
    the call counts as ignored, as ``call(async_fn)`` does the other way round."""
    return TypeError(
        f"acall needs a function that returns an awaitable (an async def function), but {fn!r} "
        f"returned {type(result).__name__!r}: use breaker.call(fn) for a sync function"
    )


def await_iterator(awaitable: Any) -> Iterator[Any] | None:
    """The iterator that ``await awaitable`` drives, for an awaitable that is not a coroutine (the
    native awaitable drives coroutines itself), or ``None`` when it cannot be awaited. Errors are
    those ``await`` raises: ``__await__``'s own, or a ``TypeError`` for what it returned."""
    if isinstance(awaitable, GeneratorType) and awaitable.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE:
        return awaitable  # a @types.coroutine generator
    method = getattr(type(awaitable), "__await__", None)
    if method is None:
        if isinstance(awaitable, Awaitable):  # registered as one, but `await` would refuse it
            raise TypeError(f"object {type(awaitable).__name__} can't be used in 'await' expression")
        return None
    iterator = method(awaitable)
    if isinstance(iterator, CoroutineType) or (
        isinstance(iterator, GeneratorType) and iterator.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE
    ):
        raise TypeError("__await__() returned a coroutine")
    if not hasattr(type(iterator), "__next__"):
        raise TypeError(f"__await__() returned non-iterator of type '{type(iterator).__name__}'")
    return iterator  # type: ignore[no-any-return]


def wrap_native_async(guarded: Any, func: Callable[..., Any]) -> None:
    """Gives the native wrapper of an ``async def`` function ``func`` its metadata
    (``functools.wraps``) and makes ``inspect.iscoroutinefunction(guarded)`` true, as it is for
    ``func``: 3.12+ have ``inspect.markcoroutinefunction``; 3.11 reads the flags of a code object,
    which it also finds on a "function-like" object such as a Cython function (``__code__``,
    ``__defaults__``, ``__kwdefaults__``), so the wrapper gets ``func``'s code object."""
    functools.update_wrapper(guarded, func)
    if sys.version_info >= (3, 12):
        inspect.markcoroutinefunction(guarded)
        return
    code = _coroutine_code(func)
    if code is None:
        code = _coroutine_code(getattr(func, "__call__", None))  # noqa: B004 - the method itself
    if code is not None:
        guarded.__code__ = code
        guarded.__defaults__ = None
        guarded.__kwdefaults__ = None


def _coroutine_code(func: Any) -> CodeType | None:
    """The code object of the ``async def`` function behind ``func`` (a method or
    ``functools.partial`` unwrapped, as ``inspect.iscoroutinefunction`` does), if it has one."""
    while inspect.ismethod(func):
        func = func.__func__
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(func, "__code__", None)
    if isinstance(code, CodeType) and code.co_flags & inspect.CO_COROUTINE:
        return code
    return None


async def _acall_within(breaker: Any, permit: Any, timeout: float, awaitable: Awaitable[T]) -> T:
    """``acall`` with ``timeout``: the call is cancelled after ``timeout`` seconds, which counts as
    a failure (whatever ``failure_on``/``ignore`` say) and raises ``TimeoutError``."""
    import asyncio

    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            result = await awaitable
    except BaseException as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            permit.failure()
            raise TimeoutError(f"breaker {breaker.name!r}: the call took longer than {timeout} s") from exc
        permit._settle_error(exc)
        raise
    permit._settle_result(result)
    return result


def decorate(breaker: Any, func: Callable[..., Any] | None, timeout: float | None) -> Any:
    """What ``breaker(func, timeout=...)`` returns unless ``func`` is a plain sync function (then
    ``None``: the native ``Guarded`` wrapper is made instead) or an ``async def`` function without
    a timeout (then ``NATIVE_ASYNC``: the native wrapper whose calls return a ``GuardedCoroutine``). ``func`` is ``None`` for
    ``@breaker(timeout=...)``, which returns the decorator. ``timeout`` is already validated."""
    if func is None:
        return functools.partial(breaker, timeout=timeout)
    # An object whose `__call__` is `async def` (or a generator function) is one too.
    call_method = getattr(func, "__call__", None)  # noqa: B004 - the method itself is inspected

    def kind(check: Callable[[Any], bool]) -> bool:
        return check(func) or (call_method is not None and check(call_method))

    if kind(inspect.iscoroutinefunction):
        if timeout is None:
            return NATIVE_ASYNC
        return _decorate_async(breaker, func, timeout)
    for check, guard in (
        (inspect.isasyncgenfunction, _decorate_async_generator),
        (inspect.isgeneratorfunction, _decorate_generator),
    ):
        if kind(check):
            if timeout is not None:
                raise TypeError(
                    "timeout applies to async def functions (and acall) only, not to generator "
                    f"functions such as {func!r}"
                )
            return guard(breaker, func)
    if timeout is not None:
        raise TypeError(
            f"timeout applies to async def functions (and acall) only: a sync call such as {func!r} "
            "cannot be cancelled"
        )
    return None


def _decorate_async(
    breaker: Any, func: Callable[..., Awaitable[T]], timeout: float | None
) -> Callable[..., Awaitable[T]]:
    @functools.wraps(func)
    async def guarded(*args: Any, **kwargs: Any) -> T:
        return await acall(breaker, func, args, kwargs, timeout)

    guarded.breaker = breaker  # type: ignore[attr-defined]
    return guarded


def _decorate_generator(
    breaker: Any, func: Callable[..., Generator[Any, Any, T]]
) -> Callable[..., Generator[Any, Any, T]]:
    """Guards the whole iteration: admitted when the generator starts (first ``next``/``send``),
    a success when it ends, its exception classified as usual. ``GeneratorExit`` (an early
    ``close()``, or the generator collected unfinished) is ignored and releases the permit."""

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Generator[Any, Any, T]:
        generator = func(*args, **kwargs)
        permit = breaker._acquire()
        try:
            result = yield from generator
        except BaseException as exc:
            permit._settle_error(exc)
            raise
        permit.success()
        return result

    guarded.breaker = breaker  # type: ignore[attr-defined]
    return guarded


def _decorate_async_generator(
    breaker: Any, func: Callable[..., AsyncGenerator[Any, Any]]
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """``_decorate_generator`` for async generators (which have no ``yield from``)."""

    @functools.wraps(func)
    async def guarded(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        generator = func(*args, **kwargs)
        permit = breaker._acquire()
        try:
            value = await generator.asend(None)
            while True:
                try:
                    sent = yield value
                except GeneratorExit:
                    await generator.aclose()
                    raise
                except BaseException as exc:
                    value = await generator.athrow(exc)
                else:
                    value = await generator.asend(sent)
        except StopAsyncIteration:
            permit.success()
        except BaseException as exc:
            permit._settle_error(exc)
            raise

    guarded.breaker = breaker  # type: ignore[attr-defined]
    return guarded
