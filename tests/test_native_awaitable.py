"""Issue 10, item 2: ``b.acall(fn)`` and a decorated ``async def`` function return a native awaitable
(``GuardedCoroutine``) that admits on its first send, drives ``fn``'s coroutine and records the
outcome exactly once; ``async with b:`` awaits awaitables that are finished at once.

What the native object adds to tests/test_async.py: asyncio accepts it as a coroutine, it can be
driven by hand (``send``/``throw``/``close``), an awaitable that is never awaited admits nothing,
one closed or collected mid-await settles its permit as ignored, and misuse (reentrancy, a second
thread) is a ``RuntimeError``, never a crash or a second outcome.
"""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import inspect
import threading
import types

import pytest
from helpers import Boom, ClientError, in_thread, probe_slot_is_free, trip_to_half_open
from panelboard import CircuitOpenError, State
from panelboard._core import GuardedCoroutine


class Suspend:
    """An awaitable that suspends once, yielding ``value``, and returns what is sent back."""

    def __init__(self, value=None):
        self.value = value

    def __await__(self):
        return (yield self.value)


def counts(b):
    m = b.metrics()
    return (m.calls, m.successes, m.failures, m.ignored, m.rejected)


async def answer(x=42):
    return x


async def suspend_then(value=None, result="done"):
    sent = await Suspend(value)
    return result if sent is None else sent


def forms(b):
    """The two native forms: ``acall`` and a decorated ``async def`` function."""
    return {
        "acall": lambda fn, *a, **k: b.acall(fn, *a, **k),
        "decorated": lambda fn, *a, **k: b(fn)(*a, **k),
    }


@pytest.fixture(params=["acall", "decorated"])
def guard(request, registry):
    """(breaker, start) where ``start(fn, *args)`` returns the native awaitable of one call."""
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=1.0)
    return b, forms(b)[request.param]


# --- asyncio accepts it -------------------------------------------------------------------------


async def test_it_is_a_coroutine_to_asyncio_and_inspect(guard):
    b, start = guard
    coro = start(answer)
    assert type(coro) is GuardedCoroutine
    assert asyncio.iscoroutine(coro)
    assert isinstance(coro, collections.abc.Coroutine)
    assert inspect.isawaitable(coro)
    assert await asyncio.create_task(coro) == 42
    assert await asyncio.gather(start(answer, 1), start(answer, 2)) == [1, 2]
    assert await asyncio.wait_for(start(answer, 3), 10) == 3
    assert await asyncio.ensure_future(start(answer, 4)) == 4
    assert b.metrics().successes == 5


def test_asyncio_run_and_run_until_complete_take_it(guard):
    b, start = guard
    assert asyncio.run(start(answer, 5)) == 5
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(start(suspend_then)) == "done"
    finally:
        loop.close()
    assert b.metrics().successes == 2


def test_decorated_async_function_is_native_and_a_coroutine_function(registry):
    b = registry.breaker("svc")

    @b
    async def fetch(x: int) -> int:
        return x

    assert inspect.iscoroutinefunction(fetch)
    assert inspect.iscoroutinefunction(types.MethodType(fetch, object()))
    assert not inspect.isgeneratorfunction(fetch) and not inspect.isasyncgenfunction(fetch)
    assert fetch.breaker.name == "svc" and fetch.__wrapped__.__name__ == "fetch"
    coro = fetch(1)
    assert type(coro) is GuardedCoroutine
    assert asyncio.run(coro) == 1


# --- admission happens at the first send ------------------------------------------------------------


async def test_made_but_never_awaited_admits_nothing_and_holds_no_slot(guard, clock):
    b, start = guard
    trip_to_half_open(b, clock)
    before = counts(b)
    called = []

    async def never():
        called.append(1)

    coro = start(never)
    with pytest.warns(RuntimeWarning, match="never awaited"):  # as for a forgotten `await`
        del coro
        gc.collect()
    assert counts(b) == before and called == []
    coro = start(never)
    coro.close()  # closing an unstarted one admits nothing either
    assert counts(b) == before and called == []
    assert probe_slot_is_free(b)


async def test_rejection_is_raised_at_the_await_not_at_the_call(guard, clock):
    b, start = guard
    b.try_acquire().failure()
    assert b.state is State.OPEN
    called = []

    async def never():
        called.append(1)

    coro = start(never)  # no exception yet
    with pytest.raises(CircuitOpenError):
        await coro
    assert called == [] and b.metrics().rejected == 1
    with pytest.raises(RuntimeError, match="cannot reuse"):
        coro.send(None)


def test_slow_call_timing_runs_from_the_first_send_to_the_outcome(registry, clock):
    b = registry.breaker("svc", slow_call_duration=1.0, slow_call_rate=1.0, min_calls=100)
    for slow_so_far, (form, start) in enumerate(forms(b).items()):
        coro = start(suspend_then)
        clock.advance(5.0)  # made long before it is awaited: not part of the call
        coro.send(None)
        with pytest.raises(StopIteration):
            coro.send(None)
        assert b.metrics().slow_calls == slow_so_far, form
        coro = start(suspend_then)
        coro.send(None)
        clock.advance(1.5)  # suspended longer than slow_call_duration
        with pytest.raises(StopIteration):
            coro.send(None)
        assert b.metrics().slow_calls == slow_so_far + 1, form


# --- driven by hand ------------------------------------------------------------------------------


def test_send_passes_values_both_ways_and_stop_iteration_carries_the_result(guard):
    b, start = guard
    coro = start(suspend_then, "up")
    assert coro.send(None) == "up"  # what the inner coroutine yields reaches the driver
    with pytest.raises(StopIteration) as stop:
        coro.send("down")  # what the driver sends reaches the inner coroutine
    assert stop.value.value == "down"
    assert counts(b) == (1, 1, 0, 0, 0)
    with pytest.raises(RuntimeError, match="cannot reuse"):
        coro.send(None)
    coro = start(answer, 7)
    with pytest.raises(StopIteration) as stop:
        next(coro)
    assert stop.value.value == 7


def test_a_first_send_of_a_value_is_a_type_error_and_starts_nothing(guard):
    b, start = guard
    coro = start(answer)
    with pytest.raises(TypeError, match="non-None"):
        coro.send(1)
    assert counts(b) == (0, 0, 0, 0, 0)
    with pytest.raises(StopIteration):
        coro.send(None)  # still unstarted: starts now
    assert counts(b) == (1, 1, 0, 0, 0)


def test_throw_into_a_suspended_call_is_handled_or_classified(guard):
    b, start = guard

    async def handles():
        try:
            await Suspend()
        except ClientError:
            return "handled"

    coro = start(handles)
    coro.send(None)
    with pytest.raises(StopIteration) as stop:
        coro.throw(ClientError())
    assert stop.value.value == "handled"
    assert counts(b) == (1, 1, 0, 0, 0)

    coro = start(suspend_then)
    coro.send(None)
    err = Boom("thrown")
    with pytest.raises(Boom) as info:
        coro.throw(err)
    assert info.value is err
    assert counts(b) == (2, 1, 1, 0, 0) and b.state is State.OPEN


def test_throw_accepts_the_type_value_traceback_form(guard):
    b, start = guard
    coro = start(suspend_then)
    coro.send(None)
    with pytest.raises(KeyboardInterrupt):
        coro.throw(KeyboardInterrupt)  # a class: instantiated; a BaseException: ignored
    coro = start(suspend_then)
    coro.send(None)
    with pytest.raises(Boom, match="value"):
        coro.throw(Boom, "value", None)
    unstarted = start(answer)
    with pytest.raises(TypeError, match="BaseException"):
        unstarted.throw(42)
    unstarted.close()
    assert counts(b)[2:4] == (1, 1)


def test_throw_before_the_first_send_admits_nothing(guard):
    b, start = guard
    coro = start(answer)
    with pytest.raises(Boom):
        coro.throw(Boom())
    with pytest.raises(RuntimeError, match="cannot reuse"):
        coro.send(None)
    assert counts(b) == (0, 0, 0, 0, 0)


def test_close_mid_await_closes_the_inner_coroutine_and_releases_the_probe(guard, clock):
    b, start = guard
    trip_to_half_open(b, clock)
    cleaned = []

    async def hangs():
        try:
            await Suspend()
        finally:
            cleaned.append(b.try_acquire() is None)  # the probe is still held while it cleans up

    coro = start(hangs)
    coro.send(None)
    assert not probe_slot_is_free(b)
    coro.close()
    assert cleaned == [True]
    assert b.state is State.HALF_OPEN and probe_slot_is_free(b)
    m = b.metrics()
    assert (m.ignored, m.successes) == (2, 0)  # the close, and probe_slot_is_free's own permit
    coro.close()  # again: nothing
    with pytest.raises(RuntimeError, match="cannot reuse"):
        coro.send(None)


def test_collected_mid_await_settles_as_ignored_after_the_inner_cleanup(guard, clock):
    b, start = guard
    trip_to_half_open(b, clock)
    cleaned = []

    async def hangs():
        try:
            await Suspend()
        finally:
            cleaned.append(1)

    coro = start(hangs)
    coro.send(None)
    del coro
    gc.collect()
    assert cleaned == [1]
    assert b.state is State.HALF_OPEN and probe_slot_is_free(b)


def test_a_garbage_cycle_through_the_awaited_coroutine_is_collected_and_settled(guard, clock):
    b, start = guard
    trip_to_half_open(b, clock)
    holder = {}

    async def keeps_itself():
        me = holder.pop("coro")  # the inner frame refers to the outer awaitable: a cycle
        await Suspend(me)

    coro = start(keeps_itself)
    holder["coro"] = coro
    assert coro.send(None) is coro
    del coro
    gc.collect()
    assert b.state is State.HALF_OPEN and probe_slot_is_free(b)


def test_an_exception_while_closing_the_inner_coroutine_is_the_outcome(guard):
    b, start = guard

    async def refuses_to_close():
        try:
            await Suspend()
        finally:
            raise Boom("in cleanup")

    coro = start(refuses_to_close)
    coro.send(None)
    with pytest.raises(Boom, match="cleanup"):
        coro.close()
    assert counts(b) == (1, 0, 1, 0, 0)


# --- outcomes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        ("success", (1, 0, 0)),
        ("failure", (0, 1, 0)),
        ("ignored_exception", (0, 0, 1)),
        ("base_exception", (0, 0, 1)),
        ("thrown_and_handled", (1, 0, 0)),
        ("thrown_failure", (0, 1, 0)),
        ("closed", (0, 0, 1)),
        ("collected", (0, 0, 1)),
        ("predicate_false", (0, 1, 0)),
        ("predicate_raises", (0, 1, 0)),
    ],
)
def test_every_path_records_exactly_one_outcome(registry, path, expected):
    for name, make in (("acall", lambda b: b.acall), ("decorated", lambda b: lambda fn: b(fn)())):
        predicates = {"predicate_false": lambda r: r != "bad", "predicate_raises": lambda r: 1 / 0}
        b = registry.breaker(
            f"{path}-{name}", failure_threshold=100, ignore=ClientError, success=predicates.get(path)
        )

        async def body():
            try:
                sent = await Suspend()
            except ClientError:
                return "handled"
            if sent == "fail":
                raise Boom()
            if sent == "ignore":
                raise ClientError()
            if sent == "base":
                raise KeyboardInterrupt()
            return "bad" if path == "predicate_false" else "ok"

        coro = make(b)(body)
        coro.send(None)
        sent = {"failure": "fail", "ignored_exception": "ignore", "base_exception": "base"}.get(path)
        try:
            if path == "thrown_and_handled":
                coro.throw(ClientError())
            elif path == "thrown_failure":
                coro.throw(Boom())
            elif path == "closed":
                coro.close()
            elif path == "collected":
                del coro
                gc.collect()
            else:
                coro.send(sent)
        except (StopIteration, Boom, ClientError, KeyboardInterrupt, ZeroDivisionError):
            pass
        m = b.metrics()
        assert (m.successes, m.failures, m.ignored) == expected, name
        assert m.calls == 1, name


def test_stop_iteration_raised_by_the_function_becomes_a_runtime_error(registry):
    b = registry.breaker("svc", failure_threshold=100)

    def raises_stop():
        raise StopIteration("escaped")

    with pytest.raises(RuntimeError, match="StopIteration") as info:
        asyncio.run(b.acall(raises_stop))
    assert isinstance(info.value.__cause__, StopIteration)
    assert b.metrics().failures == 1


def test_an_outcome_counts_only_under_the_generation_it_was_admitted_in(guard, registry):
    b, start = guard
    coro = start(suspend_then)
    coro.send(None)  # admitted under the current generation
    registry.reset("svc")
    with pytest.raises(Boom):
        coro.throw(Boom())  # a stale failure (failure_threshold=1): it cannot open the breaker
    assert b.state is State.CLOSED
    coro = start(suspend_then)
    coro.send(None)
    with pytest.raises(Boom):
        coro.throw(Boom())  # admitted under the current generation: it opens the breaker
    assert b.state is State.OPEN


def test_awaitables_of_every_kind_are_driven(registry):
    b = registry.breaker("svc", failure_threshold=100)

    class Custom:
        def __await__(self):
            got = yield "custom"
            return got * 2

    @types.coroutine
    def generator_based():
        got = yield "gen"
        return got + 1

    class BadAwait:
        def __await__(self):
            return 42  # not an iterator: what `await` raises, counted as a failure

    for fn, first, sent, result in ((Custom, "custom", 21, 42), (generator_based, "gen", 1, 2)):
        coro = b.acall(fn)
        assert coro.send(None) == first
        with pytest.raises(StopIteration) as stop:
            coro.send(sent)
        assert stop.value.value == result
    with pytest.raises(TypeError, match="non-iterator"):
        asyncio.run(b.acall(BadAwait))
    m = b.metrics()
    assert (m.successes, m.failures) == (2, 1)


# --- misuse ----------------------------------------------------------------------------------------


def test_reentrant_send_is_a_value_error_as_for_a_coroutine_and_changes_nothing(registry):
    b = registry.breaker("svc", failure_threshold=100)
    holder = {}

    async def reenters():
        with pytest.raises(ValueError, match="already executing"):
            holder["coro"].send(None)
        with pytest.raises(ValueError, match="already executing"):
            holder["coro"].close()
        return "ok"

    holder["coro"] = b.acall(reenters)
    with pytest.raises(StopIteration) as stop:
        holder["coro"].send(None)
    assert stop.value.value == "ok"
    assert counts(b) == (1, 1, 0, 0, 0)


def test_running_misuse_raises_what_a_running_coroutine_raises(registry):
    # Code written for coroutines catches `ValueError` here (CPython's `gen_send_ex2`): the native
    # awaitable must raise the same type, not another.
    b = registry.breaker("svc", failure_threshold=100)
    seen = {}

    def misuse(key):
        try:
            seen[key] = None
            return seen["coro_" + key].send(None)
        except Exception as exc:  # noqa: BLE001 - compared below
            seen[key] = type(exc)

    async def plain():
        misuse("plain")

    async def guarded():
        misuse("guarded")

    seen["coro_plain"] = plain()
    seen["coro_guarded"] = b.acall(guarded)
    for key in ("plain", "guarded"):
        with pytest.raises(StopIteration):
            seen["coro_" + key].send(None)
    assert seen["plain"] is ValueError
    assert seen["guarded"] is seen["plain"]


def test_a_second_thread_driving_the_same_awaitable_gets_a_value_error(registry):
    b = registry.breaker("svc", failure_threshold=100)
    inside, release = threading.Event(), threading.Event()

    async def blocks_the_thread():
        inside.set()
        assert release.wait(30)  # a sync wait inside the step: the first thread is in it
        return "first"

    coro = b.acall(blocks_the_thread)
    results = []

    def drive():
        try:
            coro.send(None)
        except StopIteration as stop:
            results.append(stop.value)

    join = in_thread(drive)
    assert inside.wait(30)
    for attempt in (lambda: coro.send(None), lambda: coro.throw(Boom()), coro.close, lambda: next(coro)):
        with pytest.raises(ValueError, match="already executing"):
            attempt()
    release.set()
    join()
    assert results == ["first"]
    assert counts(b) == (1, 1, 0, 0, 0)


def test_hammering_one_awaitable_from_many_threads_records_at_most_one_outcome(registry):
    b = registry.breaker("svc", failure_threshold=10**6)
    errors = []
    for _ in range(50):
        coro = b.acall(suspend_then)
        coro.send(None)  # admitted: whatever the threads do, it ends in one outcome
        barrier = threading.Barrier(4)

        def worker(i, coro=coro, barrier=barrier):
            barrier.wait(10)
            for _ in range(20):
                try:
                    if i == 3:
                        coro.close()
                    else:
                        coro.send(None)
                except (StopIteration, RuntimeError, ValueError):  # finished / already executing
                    pass
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        coro.close()
    assert errors == []
    m = b.metrics()
    assert m.calls == 50 and m.successes + m.ignored == 50


# --- many tasks ------------------------------------------------------------------------------------


async def test_many_tasks_through_one_breaker_record_exactly_their_outcomes(registry):
    b = registry.breaker("svc", failure_threshold=10**6, ignore=ClientError)

    @b
    async def work(i):
        for _ in range(i % 4):
            await asyncio.sleep(0)
        if i % 5 == 0:
            raise Boom(i)
        if i % 7 == 0:
            raise ClientError(i)
        return i

    async def one(i):
        return await (work(i) if i % 2 else b.acall(work.__wrapped__, i))

    tasks = [asyncio.create_task(one(i)) for i in range(400)]
    for i, task in enumerate(tasks):
        if i % 11 == 0:
            task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    failures = sum(isinstance(r, Boom) for r in results)
    ignored = sum(isinstance(r, ClientError) for r in results)
    successes = sum(isinstance(r, int) for r in results)
    assert cancelled > 0 and failures > 0 and ignored > 0
    m = b.metrics()
    # A task cancelled before it first ran never admitted its call: it counts nothing.
    assert (m.successes, m.failures) == (successes, failures)
    assert ignored <= m.ignored <= ignored + cancelled
    assert m.calls == m.successes + m.failures + m.ignored


# --- async with ------------------------------------------------------------------------------------


async def test_async_with_awaitables_are_finished_coroutines(registry):
    b = registry.breaker("svc")
    entered = b.__aenter__()  # admits now
    assert asyncio.iscoroutine(entered)
    assert await entered is b
    exit_ = b.__aexit__(None, None, None)
    assert asyncio.iscoroutine(exit_)
    assert await exit_ is False
    assert b.metrics().successes == 1
    async with b as same:
        assert same is b
    assert b.metrics().successes == 2
