"""Issue 8, item 2: each ``with b:`` / ``async with b:`` settles exactly the permit its own
``__enter__`` took, wherever, whenever and on whichever thread its ``__exit__`` runs, and no block's
permit is ever leaked (a leaked half-open slot would wedge the breaker).

The block is suspended in a generator or coroutine and resumed, closed or collected elsewhere:
after a reset, inside another block on the same breaker, from another thread, from a worker of
``asyncio.to_thread``, in another ``contextvars`` context, at ``asyncio.run``'s shutdown. Manual
``__enter__``/``__exit__`` pairs (wrapper classes, ``ExitStack``) keep working as before."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import threading

import pytest
from helpers import Boom, probe_slot_is_free, run_threads, trip_to_half_open
from panelboard import CircuitOpenError, State


def in_thread(fn) -> None:
    """Runs fn() on another thread and re-raises what it raised there."""
    run_threads(lambda _: fn(), n=1, timeout=30)


def block_generator(b, steps: int = 1):
    """A generator that suspends `steps` times inside one `with b:` block."""
    with b:
        for _ in range(steps):
            yield


# --- a stale outcome never lands on another block's permit -----------------------------------


def test_stale_generator_failure_after_reset_does_not_fail_the_callers_block(registry):
    b = registry.breaker("db", failure_threshold=1)
    g = block_generator(b)
    next(g)  # the generator's block holds a permit of this generation
    registry.reset("db")  # a new generation
    with b:  # the caller's own, fresh permit
        with pytest.raises(ConnectionError):
            g.throw(ConnectionError())  # leaves the generator's block with a stale failure
    assert b.state is State.CLOSED, "the stale failure was applied to the caller's permit"
    assert b.metrics().consecutive_failures == 0


def test_stale_generator_failure_with_another_generator_in_between(registry):
    b = registry.breaker("db", failure_threshold=1)
    old = block_generator(b)
    next(old)
    registry.reset("db")
    new = block_generator(b)
    next(new)  # a current permit, entered after the stale one
    with pytest.raises(ConnectionError):
        old.throw(ConnectionError())
    assert b.state is State.CLOSED, "the stale failure landed on the other generator's permit"
    with pytest.raises(StopIteration):
        next(new)
    m = b.metrics()
    assert (m.successes, m.failures, m.state) == (1, 1, State.CLOSED)


def test_generator_failure_inside_the_callers_block_counts_once_for_each(registry):
    b = registry.breaker("db", failure_threshold=3)
    g = block_generator(b)
    next(g)
    with pytest.raises(Boom):
        with b:
            g.throw(Boom())  # fails the generator's block, then the caller's
    assert b.metrics().consecutive_failures == 2


async def test_stale_async_generator_failure_after_reset_does_not_fail_the_callers_block(registry):
    b = registry.breaker("db", failure_threshold=1)

    async def agen():
        async with b:
            yield

    g = agen()
    await g.__anext__()
    registry.reset("db")
    async with b:
        with pytest.raises(ConnectionError):
            await g.athrow(ConnectionError())
    assert b.state is State.CLOSED
    assert b.metrics().consecutive_failures == 0


async def test_stale_coroutine_in_another_task_does_not_fail_this_tasks_block(registry):
    b = registry.breaker("db", failure_threshold=1)
    entered, go = asyncio.Event(), asyncio.Event()

    async def slow():
        async with b:
            entered.set()
            await go.wait()
            raise ConnectionError()

    task = asyncio.create_task(slow())
    await entered.wait()
    registry.reset("db")
    async with b:
        go.set()
        with pytest.raises(ConnectionError):
            await task
    assert b.state is State.CLOSED


# --- a block finished on another thread or context settles its own permit ----------------------


@pytest.mark.parametrize("finish", ["close", "throw", "next", "del"])
def test_generator_holding_the_only_probe_finished_from_another_thread(registry, clock, finish):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)
    g = block_generator(b)
    next(g)  # the generator's block holds the only probe
    assert not probe_slot_is_free(b)
    holder = [g]
    del g

    def step():
        g = holder.pop()
        if finish == "close":
            g.close()  # GeneratorExit: ignored, the slot is released
        elif finish == "throw":
            with pytest.raises(Boom):
                g.throw(Boom())  # the probe fails: open again
        elif finish == "next":
            with pytest.raises(StopIteration):
                next(g)  # the probe succeeds: closed
        else:
            del g  # collected while suspended: ignored, the slot is released
            gc.collect()

    in_thread(step)
    expected = {"close": State.HALF_OPEN, "del": State.HALF_OPEN, "throw": State.OPEN, "next": State.CLOSED}
    assert b.state is expected[finish]
    if expected[finish] is State.HALF_OPEN:
        assert probe_slot_is_free(b), "the generator's probe slot was leaked"


def test_generator_entered_on_one_thread_and_finished_on_another_counts_a_success(registry):
    b = registry.breaker("db")
    g = block_generator(b, steps=2)
    in_thread(lambda: next(g))
    next(g)
    in_thread(lambda: pytest.raises(StopIteration, next, g))
    m = b.metrics()
    assert (m.calls, m.successes) == (1, 1)


def test_generator_stepped_in_different_contexts(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)
    g = block_generator(b, steps=2)
    contextvars.copy_context().run(next, g)
    contextvars.copy_context().run(next, g)
    assert not probe_slot_is_free(b)
    contextvars.copy_context().run(g.close)
    assert probe_slot_is_free(b)


async def test_generator_stepped_through_to_thread(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)
    g = block_generator(b, steps=2)
    await asyncio.to_thread(next, g)  # enters in one worker's copy of the context
    await asyncio.to_thread(next, g)
    assert not probe_slot_is_free(b)
    assert await asyncio.to_thread(next, g, "done") == "done"  # leaves in another copy
    assert b.state is State.CLOSED, "the probe's success was counted"


def test_async_generator_closed_by_asyncio_run_at_shutdown(registry, clock, caplog):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)

    async def agen():
        async with b:
            yield

    async def main():
        g = agen()
        await g.__anext__()  # left suspended: asyncio.run closes it at shutdown
        assert not probe_slot_is_free(b)
        main.g = g  # kept alive until the loop's shutdown closes it

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert b.metrics().ignored == 1
    assert probe_slot_is_free(b)


def test_coroutine_suspended_in_async_with_finished_from_another_thread(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)

    class Suspend:
        def __await__(self):
            yield

    async def probe():
        async with b:
            await Suspend()
        return "ok"

    coro = probe()
    coro.send(None)  # suspended inside the block, holding the probe
    assert not probe_slot_is_free(b)

    def finish():
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        assert stop.value.value == "ok"

    in_thread(finish)
    assert b.state is State.CLOSED


def test_generators_from_many_threads_finished_on_other_threads(registry):
    b = registry.breaker("db", failure_threshold=10**6)
    n = 8
    generators = [block_generator(b) for _ in range(n)]
    barrier = threading.Barrier(n, timeout=10)

    def start(i):
        next(generators[i])
        barrier.wait()  # every generator is inside its block

    run_threads(start, n=n)

    def finish(i):
        g = generators[(i + 1) % n]  # a generator another thread started
        if i % 2:
            with pytest.raises(Boom):
                g.throw(Boom())
        else:
            with pytest.raises(StopIteration):
                next(g)

    run_threads(finish, n=n)
    m = b.metrics()
    assert (m.calls, m.successes, m.failures) == (n, n // 2, n // 2)


# --- the ordinary forms keep their semantics -------------------------------------------------


def test_recursive_blocks_each_settle_their_own_permit(registry):
    b = registry.breaker("db", failure_threshold=100)

    def descend(depth, fail):
        with b:
            if depth:
                descend(depth - 1, fail)
            elif fail:
                raise Boom()

    descend(10, fail=False)
    with pytest.raises(Boom):
        descend(10, fail=True)
    m = b.metrics()
    assert (m.successes, m.failures) == (11, 11)


def test_block_inside_copy_context_run(registry):
    b = registry.breaker("db", failure_threshold=1)

    def inner():
        with b:
            raise Boom()

    with b:
        with pytest.raises(Boom):
            contextvars.copy_context().run(inner)
    assert b.state is State.OPEN
    assert (b.metrics().failures, b.metrics().successes) == (1, 1)


async def test_interleaved_tasks_settle_their_own_blocks(registry):
    b = registry.breaker("db", failure_threshold=10**6)
    gates = [asyncio.Event() for _ in range(6)]

    async def block(i):
        async with b:
            await gates[i].wait()
            if i % 2:
                raise Boom()

    tasks = [asyncio.create_task(block(i)) for i in range(6)]
    await asyncio.sleep(0)
    for gate in reversed(gates):  # leave in the opposite order to entry
        gate.set()
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, Boom) for r in results) == 3
    m = b.metrics()
    assert (m.successes, m.failures) == (3, 3)


def wrapper_class(b):
    """A client class whose own `__enter__`/`__exit__` call `b`'s by hand."""

    class Client:
        def __enter__(self):
            b.__enter__()
            return self

        def __exit__(self, *exc):
            return b.__exit__(*exc)

    return Client


def test_exit_stack_and_wrapper_classes_pair_enter_and_exit(registry):
    b = registry.breaker("db", failure_threshold=2)

    Client = wrapper_class(b)

    with pytest.raises(Boom):
        with contextlib.ExitStack() as stack:
            stack.enter_context(b)
            stack.enter_context(Client())
            raise Boom()
    assert b.state is State.OPEN
    assert b.metrics().failures == 2


def test_exit_object_looked_up_before_a_manual_enter_settles_that_block(registry):
    b = registry.breaker("db", failure_threshold=1)
    leave = b.__exit__
    b.__enter__()
    assert leave(Boom, Boom(), None) is False
    assert b.state is State.OPEN
    with pytest.raises(RuntimeError):
        leave(None, None, None)  # a block is left once


def test_rejected_entry_leaves_nothing_to_settle(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)
    g = block_generator(b)
    next(g)
    with pytest.raises(CircuitOpenError):
        with b:
            pass
    with pytest.raises(StopIteration):
        next(g)
    assert b.state is State.CLOSED


def test_exit_objects_misused_raise_clear_errors_and_leak_nothing(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    trip_to_half_open(b, clock)
    descriptor = type(b).__dict__["__exit__"]
    with pytest.raises(TypeError):
        descriptor.__get__(42, type(b))  # only a Breaker has this __exit__
    with pytest.raises(TypeError):
        b.__exit__(None, None)  # wrong number of arguments
    with pytest.raises(TypeError):
        type(b).__exit__(42, None, None, None)  # an unbound exit needs the breaker first
    with pytest.raises(RuntimeError):
        b.__exit__(None, None, None)  # never entered
    leave = b.__exit__
    b.__enter__()  # a manual entry (not the lookup's instruction): its permit goes on the stack
    assert not probe_slot_is_free(b)
    assert not leave(None, None, None)  # an exit with no permit of its own settles the stack's
    assert b.state is State.CLOSED
    assert "exit" in repr(b.__exit__)


# --- a kept `__exit__` lookup never takes another entry's permit ---------------------------------


def half_open_pair(registry, clock):
    """Two half-open breakers with one probe slot each."""
    breakers = [registry.breaker(name, failure_threshold=1, reset_timeout=1.0) for name in ("one", "two")]
    for b in breakers:
        b.try_acquire().failure()
    clock.advance(1.0)
    assert all(b.state is State.HALF_OPEN for b in breakers)
    return breakers


def test_exit_stack_push_after_manual_enters(registry, clock):
    # The pattern contextlib documents for ExitStack.push: push looks `__exit__` up on the class
    # (in its own frame) and keeps it; the next manual `__enter__` must not give it its permit.
    b1, b2 = half_open_pair(registry, clock)
    with contextlib.ExitStack() as stack:
        b1.__enter__()
        stack.push(b1)
        b2.__enter__()
        stack.push(b2)
    assert b1.state is State.CLOSED
    assert b2.state is State.CLOSED
    # One failure each: the one that opened it, none for the library's own error.
    assert [(b.metrics().successes, b.metrics().failures) for b in (b1, b2)] == [(1, 1), (1, 1)]


def test_exit_stack_push_after_manual_enter_counts_the_failure(registry, clock):
    b1, b2 = half_open_pair(registry, clock)
    with pytest.raises(Boom):
        with contextlib.ExitStack() as stack:
            b1.__enter__()
            stack.push(b1)
            b2.__enter__()
            stack.push(b2)
            raise Boom()
    assert b1.state is State.OPEN
    assert b2.state is State.OPEN


def test_kept_exit_lookup_does_not_take_a_wrapper_class_entry(registry, clock):
    (b, _) = half_open_pair(registry, clock)
    kept = b.__exit__  # looked up here, entered nowhere

    Client = wrapper_class(b)

    with Client():
        assert not probe_slot_is_free(b)
    assert b.state is State.CLOSED
    assert b.try_acquire() is not None
    assert "not entered" in repr(kept)


def test_kept_exit_lookup_in_the_same_frame_does_not_take_a_manual_entry(registry, clock):
    (b, _) = half_open_pair(registry, clock)
    kept = b.__exit__  # the same frame, another instruction than the manual entry below
    b.__enter__()
    b.__exit__(None, None, None)
    assert b.state is State.CLOSED
    assert "not entered" in repr(kept)


def test_kept_exit_lookup_of_an_earlier_call_of_the_same_function_does_not_take_its_entry(registry, clock):
    # On 3.11 a function's next call can run in the frame memory of its finished earlier call:
    # the frame's address and code match, the instruction does not.
    (b, _) = half_open_pair(registry, clock)
    kept = []

    def step(look: bool) -> str | None:
        if look:
            kept.append(b.__exit__)  # a lookup kept for later
            return None
        b.__enter__()
        try:
            return "work"
        finally:
            b.__exit__(None, None, None)

    step(True)
    assert step(False) == "work"
    assert b.state is State.CLOSED
    assert b.try_acquire() is not None


def test_kept_exit_lookup_of_another_breaker_never_takes_the_permit(registry, clock):
    b1, b2 = half_open_pair(registry, clock)
    kept = b1.__exit__
    b2.__enter__()  # same frame, another breaker: the permit goes on the stack
    assert "not entered" in repr(kept)
    assert b2.__exit__(None, None, None) is False
    assert b2.state is State.CLOSED
    assert b1.state is State.HALF_OPEN
    assert probe_slot_is_free(b1)


def test_exit_object_that_got_no_permit_leaves_the_manual_entry(registry, clock):
    (b, _) = half_open_pair(registry, clock)
    kept = b.__exit__

    def enter_elsewhere():
        b.__enter__()  # another frame: on this thread's stack, not in `kept`

    enter_elsewhere()
    assert "not entered" in repr(kept)
    assert kept(Boom, Boom(), None) is False  # falls back to this breaker's innermost entry
    assert b.state is State.OPEN
    with pytest.raises(RuntimeError):
        b.__exit__(None, None, None)  # nothing left to leave


@pytest.mark.parametrize("enter", ["exit_stack", "unittest"])
def test_enter_context_helpers_still_give_the_block_its_permit(registry, clock, enter):
    # enter_context/enterContext look `__exit__` up and enter in one frame: the permit travels
    # with the exit object, so leaving on another thread settles it.
    import unittest

    (b, _) = half_open_pair(registry, clock)
    if enter == "exit_stack":
        stack = contextlib.ExitStack()
        stack.enter_context(b)
        in_thread(stack.close)
    else:

        class Case(unittest.TestCase):
            def runTest(self):
                pass

        case = Case()
        case.enterContext(b)
        in_thread(case.doCleanups)
    assert b.state is State.CLOSED
    assert b.metrics().successes == 1
