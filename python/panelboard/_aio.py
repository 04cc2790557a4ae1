"""Coroutine helpers for the async API.

Admission and recording stay in Rust (``Breaker._acquire`` and the permit's ``_settle_*`` methods);
only the ``await`` itself needs a Python coroutine frame.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
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
) -> T:
    permit = breaker._acquire()
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        # CancelledError is a BaseException, not an Exception: classified as ignored.
        permit._settle_error(exc)
        raise
    permit._settle_result(result)
    return result


def decorate(breaker: Any, func: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(func)
    async def guarded(*args: Any, **kwargs: Any) -> T:
        return await acall(breaker, func, args, kwargs)

    guarded.breaker = breaker  # type: ignore[attr-defined]
    return guarded
