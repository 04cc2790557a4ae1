"""Python helpers for the async API and for decorating what is not a plain sync function.

Admission and recording stay in Rust (``Breaker._acquire`` and the permit's ``_settle_*`` methods);
only the ``await`` (and a generator's ``yield``) needs a Python frame. ``asyncio`` is imported only
when a ``timeout`` is used, so that ``import panelboard`` stays light.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import CoroutineType
from typing import Any, TypeVar

T = TypeVar("T")


async def ready(value: T) -> T:
    """An awaitable that is already done (``__aenter__``/``__aexit__`` do their work eagerly)."""
    return value


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
        raise _not_awaitable(fn, awaitable)
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


def _not_awaitable(fn: Any, result: Any) -> TypeError:
    """A result that cannot be awaited is the caller's bug, not the dependency's: refused, and
    the call counts as ignored, as ``call(async_fn)`` does the other way round."""
    return TypeError(
        f"acall needs a function that returns an awaitable (an async def function), but {fn!r} "
        f"returned {type(result).__name__!r}: use breaker.call(fn) for a sync function"
    )


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
    ``None``: the native ``Guarded`` wrapper is made instead). ``func`` is ``None`` for
    ``@breaker(timeout=...)``, which returns the decorator. ``timeout`` is already validated."""
    if func is None:
        return functools.partial(breaker, timeout=timeout)
    # An object whose `__call__` is `async def` (or a generator function) is one too.
    call_method = getattr(func, "__call__", None)  # noqa: B004 - the method itself is inspected

    def kind(check: Callable[[Any], bool]) -> bool:
        return check(func) or (call_method is not None and check(call_method))

    if kind(inspect.iscoroutinefunction):
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
