"""Issue 8, item 8: a hung dependency must be able to open the breaker. An outer
``asyncio.wait_for`` or ``asyncio.timeout`` cancels the call, and cancellation is ignored (the
trap); the breaker's own ``timeout`` (``acall(..., timeout=)``, ``@breaker(timeout=)``) cancels the
call itself, raises ``TimeoutError`` and counts a failure."""

from __future__ import annotations

import asyncio
import functools
import math

import pytest
from panelboard import CircuitOpenError, State

HANG = 3600.0


async def hang():
    await asyncio.sleep(HANG)


async def echo(*args, **kwargs):
    await asyncio.sleep(0)
    return args, kwargs


async def test_outer_timeouts_cancel_the_call_which_is_ignored(registry):
    # The trap the README describes: the breaker never sees these hangs.
    b = registry.breaker("db", failure_threshold=1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(b.acall(hang), 0.01)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await b.acall(hang)
    m = b.metrics()
    assert (m.ignored, m.failures, m.state) == (2, 0, State.CLOSED)


async def test_acall_timeout_counts_a_failure_and_opens_the_breaker(registry):
    b = registry.breaker("db", failure_threshold=3)
    for _ in range(3):
        with pytest.raises(TimeoutError, match="db"):
            await b.acall(hang, timeout=0.01)
    m = b.metrics()
    assert (m.failures, m.state) == (3, State.OPEN)
    with pytest.raises(CircuitOpenError):
        await b.acall(hang, timeout=0.01)


async def test_decorated_timeout_forms_count_a_failure(registry):
    b = registry.breaker("db", failure_threshold=3)

    @b(timeout=0.01)
    async def hung():
        await asyncio.sleep(HANG)

    also_hung = b(hang, timeout=0.01)
    assert hung.__name__ == "hung" and hung.breaker.name == "db"
    with pytest.raises(TimeoutError):
        await hung()
    with pytest.raises(TimeoutError):
        await also_hung()

    @b()  # the factory form without options is the plain decorator
    async def plain():
        return "plain"

    assert await plain() == "plain"
    assert b.metrics().failures == 2


async def test_call_within_its_timeout_returns_and_is_classified_as_usual(registry):
    b = registry.breaker("db", success=lambda result: result != "bad")
    assert await b.acall(echo, 1, timeout=5) == ((1,), {})
    assert await b.acall(lambda: asyncio.sleep(0, result="bad"), timeout=5.0) == "bad"
    m = b.metrics()
    assert (m.successes, m.failures) == (1, 1)


async def test_own_timeout_is_a_failure_whatever_failure_on_and_ignore_say(registry):
    b = registry.breaker("db", failure_threshold=1, failure_on=ConnectionError, ignore=TimeoutError)

    async def raises_its_own_timeout():
        raise TimeoutError("the function's own")

    with pytest.raises(TimeoutError, match="own"):
        await b.acall(raises_its_own_timeout, timeout=5)  # classified as usual: ignored
    assert b.state is State.CLOSED
    with pytest.raises(TimeoutError):
        await b.acall(hang, timeout=0.01)
    assert b.state is State.OPEN


async def test_timed_out_probe_reopens_the_breaker(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    b.try_acquire().failure()
    clock.advance(1.0)
    with pytest.raises(TimeoutError):
        await b.acall(hang, timeout=0.01)
    assert b.state is State.OPEN


async def test_outer_cancellation_with_a_timeout_set_is_still_ignored(registry):
    b = registry.breaker("db", failure_threshold=1)
    task = asyncio.create_task(b.acall(hang, timeout=HANG))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    m = b.metrics()
    assert (m.ignored, m.failures) == (1, 0)


async def test_timeout_keyword_is_the_breakers_own(registry):
    b = registry.breaker("db")
    assert await b.acall(echo, 1, timeout=None, other=2) == ((1,), {"other": 2})

    async def needs_its_own_timeout(*, timeout):
        return timeout

    assert await b.acall(functools.partial(needs_its_own_timeout, timeout=7)) == 7


@pytest.mark.parametrize(
    "value, error",
    [
        ("1", TypeError),
        (True, TypeError),
        ([1], TypeError),
        (0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (10**400, ValueError),
    ],
)
async def test_invalid_timeouts_are_rejected_naming_the_argument_and_count_nothing(registry, value, error):
    b = registry.breaker("db")
    with pytest.raises(error, match="timeout"):
        b.acall(echo, timeout=value)  # raised by the call itself, before anything is awaited
    with pytest.raises(error, match="timeout"):
        b(echo, timeout=value)
    with pytest.raises(error, match="timeout"):
        b(timeout=value)
    assert b.metrics().calls == 0


@pytest.mark.parametrize("value", [0, 0.0, -1, -1.0, -0.5, -(10**6)])
async def test_every_rejected_timeout_says_it_must_be_positive(registry, value):
    b = registry.breaker("db")
    for attempt in (lambda: b.acall(echo, timeout=value), lambda: b(echo, timeout=value)):
        with pytest.raises(ValueError, match=r"timeout must be > 0, got"):
            attempt()
    assert b.metrics().calls == 0
