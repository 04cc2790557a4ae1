"""Issue 8, item 5: a decorated generator or async-generator function is guarded over its whole
iteration. It is admitted when it starts (first ``next``/``send``/``__anext__``); its end is a
success, its exception is classified as usual, and ``GeneratorExit`` (an early ``close()``, or the
generator collected unfinished) is ignored and releases the permit. A sync call whose function
returns a coroutine cannot be guarded: ``TypeError``, counted as ignored."""

from __future__ import annotations

import asyncio
import gc
import inspect

import pytest
from helpers import Boom, ClientError, probe_slot_is_free, run_threads, trip_to_half_open
from panelboard import CircuitOpenError, State

# --- generators --------------------------------------------------------------------------------


def test_failing_iterations_count_as_failures_and_open_the_breaker(registry):
    b = registry.breaker("db", failure_threshold=5)

    @b
    def rows():
        yield 1
        raise ConnectionError("lost")

    for _ in range(5):
        with pytest.raises(ConnectionError):
            list(rows())
    m = b.metrics()
    assert (m.successes, m.failures, m.state) == (0, 5, State.OPEN)
    with pytest.raises(CircuitOpenError):
        next(rows())


def test_finished_iteration_is_one_success_and_values_and_return_pass_through(registry):
    b = registry.breaker("db", success=lambda result: False)  # never consulted for generators

    @b
    def echo(n):
        got = []
        for i in range(n):
            got.append((yield i))
        return got

    g = echo(3)
    assert next(g) == 0
    assert g.send("a") == 1
    assert g.send("b") == 2
    with pytest.raises(StopIteration) as stop:
        g.send("c")
    assert stop.value.value == ["a", "b", "c"]
    m = b.metrics()
    assert (m.calls, m.successes, m.state) == (1, 1, State.CLOSED)


def test_admission_when_the_generator_starts_not_when_it_is_created(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)

    @b
    def one():
        yield 1

    made = one()  # creating it takes no permit
    assert b.metrics().calls == 0
    b.try_acquire().failure()
    with pytest.raises(CircuitOpenError):
        next(made)
    assert b.metrics().rejected == 1


def test_exceptions_are_classified_with_failure_on_and_ignore(registry):
    b = registry.breaker("db", failure_threshold=1, failure_on=Boom, ignore=ClientError)

    @b
    def raising(exc):
        yield
        raise exc

    for exc in (ClientError(), KeyError(), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            list(raising(exc))
    assert b.state is State.CLOSED
    assert b.metrics().ignored == 3
    with pytest.raises(Boom):
        list(raising(Boom()))
    assert b.state is State.OPEN


def test_early_close_and_collection_are_ignored_and_release_the_probe(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)

    @b
    def endless():
        while True:
            yield

    g = endless()
    next(g)  # holds the only probe
    assert not probe_slot_is_free(b)
    g.close()
    assert probe_slot_is_free(b)
    g = endless()
    next(g)
    del g
    gc.collect()
    assert probe_slot_is_free(b)
    assert b.metrics().ignored >= 2 and b.metrics().failures == 1


def test_throw_into_the_generator_counts_what_comes_out(registry):
    b = registry.breaker("db", failure_threshold=10)

    @b
    def resilient():
        try:
            yield 1
        except Boom:
            yield "handled"

    g = resilient()
    next(g)
    assert g.throw(Boom()) == "handled"  # handled inside: not an outcome yet
    with pytest.raises(StopIteration):
        next(g)
    g = resilient()
    next(g)
    g.throw(Boom())
    with pytest.raises(Boom):
        g.throw(Boom())  # not handled the second time: a failure
    m = b.metrics()
    assert (m.successes, m.failures) == (1, 1)


def test_generator_finished_on_another_thread(registry):
    b = registry.breaker("db")

    @b
    def one():
        yield 1

    g = one()
    next(g)
    run_threads(lambda _: pytest.raises(StopIteration, next, g), n=1)
    assert b.metrics().successes == 1


def test_decorated_generator_is_still_a_generator_function_with_metadata(registry):
    b = registry.breaker("db")

    def rows():
        """Doc."""
        yield 1

    guarded = b(rows)
    assert inspect.isgeneratorfunction(guarded)
    assert guarded.__wrapped__ is rows and guarded.__name__ == "rows" and guarded.__doc__ == "Doc."
    assert guarded.breaker.name == "db"


def test_generator_method_and_callable_object(registry):
    b = registry.breaker("db", failure_threshold=2)

    class Source:
        @b
        def rows(self):
            yield self
            raise Boom()

    class Callable:
        def __call__(self):
            yield 1
            raise Boom()

    s = Source()
    with pytest.raises(Boom):
        assert list(s.rows()) == [s]
    with pytest.raises(Boom):
        list(b(Callable())())
    assert b.state is State.OPEN


# --- async generators --------------------------------------------------------------------------


async def test_failing_async_iterations_count_as_failures_and_open_the_breaker(registry):
    b = registry.breaker("db", failure_threshold=5)

    @b
    async def rows():
        yield 1
        raise ConnectionError("lost")

    for _ in range(5):
        with pytest.raises(ConnectionError):
            async for _ in rows():
                pass
    m = b.metrics()
    assert (m.successes, m.failures, m.state) == (0, 5, State.OPEN)
    with pytest.raises(CircuitOpenError):
        await rows().__anext__()


async def test_finished_async_iteration_is_one_success_with_asend_and_athrow(registry):
    b = registry.breaker("db", failure_threshold=1)

    @b
    async def echo():
        got = yield "ready"
        while True:
            try:
                got = yield got * 2
            except Boom:
                got = "recovered"
            if got == "stop":
                return

    g = echo()
    assert inspect.isasyncgen(g)
    assert await g.asend(None) == "ready"
    assert await g.asend(21) == 42
    assert await g.athrow(Boom()) == "recoveredrecovered"
    with pytest.raises(StopAsyncIteration):
        await g.asend("stop")
    m = b.metrics()
    assert (m.successes, m.failures, m.state) == (1, 0, State.CLOSED)


async def test_async_generator_early_close_and_cancellation_release_the_probe(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)

    @b
    async def endless():
        while True:
            yield
            await asyncio.sleep(0)

    g = endless()
    await g.__anext__()
    assert not probe_slot_is_free(b)
    await g.aclose()
    assert probe_slot_is_free(b)

    hang = asyncio.Event()

    @b
    async def hung():
        yield
        await hang.wait()
        yield

    g = hung()
    await g.__anext__()
    task = asyncio.ensure_future(g.__anext__())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe_slot_is_free(b)
    assert b.state is State.HALF_OPEN and b.metrics().failures == 1


def test_async_generator_left_unfinished_is_closed_at_shutdown_and_ignored(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)

    @b
    async def endless():
        while True:
            yield

    async def main():
        g = endless()
        await g.__anext__()
        main.g = g  # kept alive until asyncio.run closes it

    asyncio.run(main())
    assert probe_slot_is_free(b)


def test_decorated_async_generator_is_still_an_async_generator_function(registry):
    b = registry.breaker("db")

    async def rows():
        yield 1

    assert inspect.isasyncgenfunction(b(rows))


# --- what cannot be guarded ----------------------------------------------------------------------


async def test_sync_function_returning_a_coroutine_is_a_type_error_counted_as_ignored(registry):
    b = registry.breaker("db", failure_threshold=1)

    async def work():
        raise Boom()

    @b
    def starts_work():
        return work()

    for call in (starts_work, lambda: b.call(work), lambda: registry.call("db", work)):
        with pytest.raises(TypeError, match="coroutine"):
            call()
    m = b.metrics()
    assert (m.ignored, m.successes, m.failures, m.state) == (3, 0, 0, State.CLOSED)


def test_timeout_is_refused_for_what_cannot_be_cancelled(registry):
    b = registry.breaker("db")

    def sync():
        return 1

    def gen():
        yield

    async def agen():
        yield

    for fn in (sync, gen, agen):
        with pytest.raises(TypeError, match="timeout"):
            b(fn, timeout=1.0)
        with pytest.raises(TypeError, match="timeout"):
            b(timeout=1.0)(fn)
