"""asyncio (issue 3): ``await b.acall(fn, *args, **kwargs)`` and ``async with b:``.

``asyncio.CancelledError`` is ignored, never a failure, and gives back a half-open permit. Two tasks
interleaving ``async with`` on one breaker each settle their own permit.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import Boom, ClientError, atrip, cancel_while_running, probe_slot_is_free, trip_to_half_open
from panelboard import CircuitOpenError, State


async def echo(*args, **kwargs):
    await asyncio.sleep(0)
    return args, kwargs


# --- acall ----------------------------------------------------------------------------------------


async def test_acall_forwards_arguments_and_returns_result(registry):
    b = registry.breaker("svc")
    assert await b.acall(echo) == ((), {})
    assert await b.acall(echo, 1, 2, k=3) == ((1, 2), {"k": 3})
    assert await b.acall(echo, fn="f", self="s") == ((), {"fn": "f", "self": "s"})
    sentinel = object()

    async def give():
        return sentinel

    assert await b.acall(give) is sentinel
    assert b.metrics().successes == 4


async def test_acall_accepts_any_callable_returning_an_awaitable(registry):
    b = registry.breaker("svc")
    loop = asyncio.get_running_loop()

    def make_future(value):
        fut = loop.create_future()
        fut.set_result(value)
        return fut

    assert await b.acall(make_future, 5) == 5
    assert await b.acall(lambda: asyncio.sleep(0, result="slept")) == "slept"


async def test_acall_failure_is_counted_and_the_same_exception_propagates(registry):
    b = registry.breaker("svc", failure_threshold=2)
    err = Boom("x")

    async def raise_it():
        raise err

    with pytest.raises(Boom) as info:
        await b.acall(raise_it)
    assert info.value is err
    assert b.state is State.CLOSED
    with pytest.raises(Boom):
        await b.acall(raise_it)
    assert b.state is State.OPEN


async def test_acall_rejects_while_open_without_calling(registry, clock):
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=10.0)
    await atrip(b)
    clock.advance(4.0)
    called = []

    async def never():
        called.append(1)

    with pytest.raises(CircuitOpenError) as info:
        await b.acall(never)
    assert called == []
    assert info.value.retry_after == pytest.approx(6.0)


async def test_acall_uses_success_predicate_failure_on_and_ignore(registry):
    b = registry.breaker(
        "svc",
        failure_threshold=1,
        success=lambda r: r != "bad",
        failure_on=(Boom, ClientError),
        ignore=ClientError,
    )

    async def raise_(exc):
        raise exc

    with pytest.raises(ClientError):
        await b.acall(raise_, ClientError())
    with pytest.raises(KeyError):
        await b.acall(raise_, KeyError())
    assert b.state is State.CLOSED
    assert await b.acall(echo) == ((), {})
    assert await b.acall(lambda: asyncio.sleep(0, result="bad")) == "bad"
    assert b.state is State.OPEN
    m = b.metrics()
    assert (m.ignored, m.successes, m.failures) == (2, 1, 1)


async def test_acall_with_a_non_callable_is_a_type_error(registry):
    b = registry.breaker("svc")
    with pytest.raises(TypeError):
        await b.acall(42)
    assert b.metrics().calls == 0


@pytest.mark.parametrize("timeout", [None, 5.0])
async def test_acall_of_a_sync_function_is_a_type_error_counted_as_ignored(registry, timeout):
    # The mirror of call(async_fn) (docs/reliability.md bug 20): a caller bug, not the
    # dependency's failure, so it never opens the breaker and gives its permit back.
    b = registry.breaker("svc", failure_threshold=1)
    calls = []

    def sync_lookup():
        calls.append(1)
        return {"ok": True}

    for _ in range(3):
        with pytest.raises(TypeError, match="awaitable"):
            await b.acall(sync_lookup, timeout=timeout)
    assert b.state is State.CLOSED
    m = b.metrics()
    assert (m.calls, m.failures, m.ignored, len(calls)) == (3, 0, 3, 3)
    assert await b.acall(echo, 1, timeout=timeout) == ((1,), {})


async def test_acall_of_a_sync_function_gives_back_the_half_open_probe(registry, clock):
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=1)
    trip_to_half_open(b, clock)
    with pytest.raises(TypeError, match="awaitable"):
        await b.acall(lambda: 1)
    assert b.state is State.HALF_OPEN
    assert probe_slot_is_free(b)


async def test_acall_cancellation_is_ignored_never_a_failure(registry):
    b = registry.breaker("svc", failure_threshold=1)
    started = asyncio.Event()

    async def hang():
        started.set()
        await asyncio.Event().wait()

    await cancel_while_running(lambda: b.acall(hang), started)
    assert b.state is State.CLOSED
    m = b.metrics()
    assert (m.failures, m.ignored, m.calls) == (0, 3, 3)


async def test_acall_cancellation_releases_the_half_open_permit(registry, clock):
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=1)
    await atrip(b)
    clock.advance(1.0)
    started = asyncio.Event()

    async def hang():
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(b.acall(hang))
    await started.wait()
    assert b.state is State.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        await b.acall(echo)  # the hung task holds the only probe
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is State.HALF_OPEN, "cancelled probe is neither success nor failure"
    assert await b.acall(echo, 1) == ((1,), {})  # the slot was released
    assert b.state is State.CLOSED


async def test_timeout_inside_the_guarded_function_is_a_failure(registry):
    # asyncio.timeout inside fn raises TimeoutError (an Exception): that is a failure.
    b = registry.breaker("svc", failure_threshold=1)

    async def slow():
        async with asyncio.timeout(0):
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        await b.acall(slow)
    assert b.state is State.OPEN


async def test_concurrent_acalls_in_half_open_admit_exactly_max_calls(registry, clock):
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=2)
    await atrip(b)
    clock.advance(1.0)
    gate = asyncio.Event()

    async def wait_gate(i):
        await gate.wait()
        return i

    tasks = [asyncio.create_task(b.acall(wait_gate, i)) for i in range(10)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    admitted = [r for r in results if isinstance(r, int)]
    rejected = [r for r in results if isinstance(r, CircuitOpenError)]
    assert (len(admitted), len(rejected)) == (2, 8)
    assert b.state is State.CLOSED


# --- async with -----------------------------------------------------------------------------------


async def test_async_with_success_failure_and_rejection(registry, clock):
    b = registry.breaker("svc", failure_threshold=2, reset_timeout=5.0)
    async with b as entered:
        assert entered is b
        await asyncio.sleep(0)
    err = Boom()
    for _ in range(2):
        with pytest.raises(Boom) as info:
            async with b:
                await asyncio.sleep(0)
                raise err
        assert info.value is err
    assert b.state is State.OPEN
    ran = []
    with pytest.raises(CircuitOpenError):
        async with b:
            ran.append(1)
    assert ran == []
    m = b.metrics()
    assert (m.successes, m.failures, m.rejected) == (1, 2, 1)


async def test_async_with_classifies_with_ignore_and_failure_on(registry):
    b = registry.breaker("svc", failure_threshold=1, failure_on=Boom, ignore=ClientError)
    with pytest.raises(ClientError):
        async with b:
            raise ClientError()
    with pytest.raises(ValueError):
        async with b:
            raise ValueError()
    assert b.state is State.CLOSED
    assert b.metrics().ignored == 2


async def test_async_with_cancellation_is_ignored_and_releases_the_probe(registry, clock):
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=1.0)
    await atrip(b)
    clock.advance(1.0)
    started = asyncio.Event()

    async def hang():
        async with b:
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await started.wait()
    assert b.try_acquire() is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is State.HALF_OPEN
    assert b.metrics().failures == 1  # only the one that opened it
    async with b:
        pass
    assert b.state is State.CLOSED


async def test_two_tasks_interleaving_async_with_settle_their_own_permits(registry):
    # Task A enters under generation g; the breaker is reset (g+1); task B enters under g+1. Each
    # exit must settle its own permit: A's failure is stale (dropped), B's failure opens the breaker.
    # A shared (not per-task) permit stack would pop B's permit on A's exit.
    b = registry.breaker("svc", failure_threshold=1)
    a_entered, b_entered, a_exited = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen = {}

    async def task_a():
        with pytest.raises(Boom):
            async with b:
                a_entered.set()
                await b_entered.wait()
                raise Boom("a")
        seen["after_a"] = b.state
        a_exited.set()

    async def task_b():
        await a_entered.wait()
        registry.reset("svc")
        with pytest.raises(Boom):
            async with b:
                b_entered.set()
                await a_exited.wait()
                raise Boom("b")

    await asyncio.wait_for(asyncio.gather(task_a(), task_b()), 10)
    assert seen["after_a"] is State.CLOSED, "A's stale failure changed nothing"
    assert b.state is State.OPEN, "B's failure counted"


async def test_many_tasks_interleaving_async_with(registry):
    b = registry.breaker("svc", failure_threshold=10**6)

    async def worker(i):
        for j in range(10):
            try:
                async with b:
                    await asyncio.sleep(0)  # every task suspends inside its block
                    if (i + j) % 3 == 0:
                        raise Boom()
            except Boom:
                pass

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(20))), 10)
    m = b.metrics()
    failures = sum(1 for i in range(20) for j in range(10) if (i + j) % 3 == 0)
    assert (m.calls, m.failures, m.successes) == (200, failures, 200 - failures)


async def test_async_with_and_acall_from_nested_tasks(registry):
    b = registry.breaker("svc")

    async def inner():
        return await b.acall(echo, "inner")

    async with b:
        # A child task copies the context; its own blocks must not disturb ours.
        assert await asyncio.create_task(inner()) == (("inner",), {})
        async with b:
            pass
    assert b.metrics().successes == 3
