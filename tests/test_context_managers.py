"""``with breaker:`` (issue 3): ``CircuitOpenError`` on entry when rejected; on exit the block's
exception is classified (success / failure / ignored) and always propagates. Nesting, out-of-order
exits and threads each keep their own permit. ``async with`` is covered in ``test_async.py``."""

from __future__ import annotations

import threading

import pytest
from helpers import Boom, ClientError, CustomBase, raise_in_block, run_threads
from panelboard import CircuitOpenError, State


def test_with_returns_the_breaker_and_counts_success(registry):
    b = registry.breaker("db")
    with b as entered:
        assert entered is b
    m = b.metrics()
    assert (m.calls, m.successes) == (1, 1)


def test_exception_in_block_is_a_failure_and_propagates(registry):
    b = registry.breaker("db", failure_threshold=2)
    err = Boom("x")
    with pytest.raises(Boom) as info:
        with b:
            raise err
    assert info.value is err, "never suppressed, never replaced"
    assert b.state is State.CLOSED
    raise_in_block(b)
    assert b.state is State.OPEN
    assert b.metrics().failures == 2


def test_exit_classifies_with_failure_on_and_ignore(registry):
    b = registry.breaker("db", failure_threshold=1, failure_on=(Boom, ClientError), ignore=ClientError)
    with pytest.raises(ClientError):
        with b:
            raise ClientError()  # matches failure_on but is ignored
    with pytest.raises(KeyError):
        with b:
            raise KeyError()  # not in failure_on: ignored
    with pytest.raises(CustomBase):
        with b:
            raise CustomBase()  # a BaseException that is not an Exception: ignored
    assert b.state is State.CLOSED
    assert b.metrics().ignored == 3
    raise_in_block(b)
    assert b.state is State.OPEN


def test_success_predicate_does_not_apply_to_blocks(registry):
    # A block has no return value to judge: leaving it normally is a success.
    b = registry.breaker("db", failure_threshold=1, success=lambda r: False)
    with b:
        pass
    assert b.state is State.CLOSED


def test_entry_is_rejected_while_open_and_the_block_does_not_run(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=5.0)
    raise_in_block(b)
    clock.advance(2.0)
    ran = []
    with pytest.raises(CircuitOpenError) as info:
        with b:
            ran.append(1)
    assert ran == []
    assert info.value.name == "db"
    assert info.value.retry_after == pytest.approx(3.0)
    assert b.metrics().rejected == 1


def test_half_open_block_holds_the_probe_permit(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=1)
    raise_in_block(b)
    clock.advance(1.0)
    with b:
        assert b.state is State.HALF_OPEN
        assert b.try_acquire() is None, "the block holds the only probe"
        with pytest.raises(CircuitOpenError):
            with b:
                pass
    assert b.state is State.CLOSED


def test_half_open_block_failure_reopens(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0)
    raise_in_block(b)
    clock.advance(1.0)
    raise_in_block(b)
    assert b.state is State.OPEN


def test_half_open_block_ignored_exception_releases_the_permit(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0, ignore=ClientError)
    raise_in_block(b)
    clock.advance(1.0)
    raise_in_block(b, ClientError())
    assert b.state is State.HALF_OPEN
    permit = b.try_acquire()
    assert permit is not None, "the ignored probe gave its slot back"
    permit.success()
    assert b.state is State.CLOSED


def test_nested_blocks_on_the_same_breaker(registry):
    b = registry.breaker("db", failure_threshold=2)
    with pytest.raises(Boom):
        with b:
            with b:
                with b:
                    pass
                raise Boom()  # fails the two blocks it leaves
    m = b.metrics()
    assert (m.successes, m.failures) == (1, 2)
    assert b.state is State.OPEN


def test_nested_blocks_on_different_breakers(registry):
    outer = registry.breaker("outer", failure_threshold=1)
    inner = registry.breaker("inner", failure_threshold=1, ignore=Boom)
    with pytest.raises(Boom):
        with outer:
            with inner:
                raise Boom()
    assert inner.state is State.CLOSED, "inner ignores Boom"
    assert outer.state is State.OPEN, "outer counts Boom"


def test_nested_half_open_blocks_each_settle_their_own_permit(registry, clock):
    b = registry.breaker(
        "db", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=2, success_threshold=2
    )
    raise_in_block(b)
    clock.advance(1.0)
    with b:
        with b:
            assert b.try_acquire() is None
        assert b.state is State.HALF_OPEN
        permit = b.try_acquire()
        assert permit is not None, "the inner block released its slot"
        permit.ignore()
    assert b.state is State.CLOSED


def test_exits_out_of_order_settle_each_breakers_own_permit(registry):
    a = registry.breaker("a", failure_threshold=1)
    c = registry.breaker("c", failure_threshold=1)
    a.__enter__()
    c.__enter__()
    assert a.__exit__(Boom, Boom(), None) is False  # a's permit, although c entered last
    assert c.__exit__(None, None, None) is False
    assert a.state is State.OPEN
    assert c.state is State.CLOSED
    assert c.metrics().successes == 1


def test_exit_without_enter_is_a_runtime_error(registry):
    b = registry.breaker("db")
    with pytest.raises(RuntimeError):
        b.__exit__(None, None, None)
    with b:
        pass
    with pytest.raises(RuntimeError):
        b.__exit__(None, None, None)
    assert b.metrics().calls == 1


def test_stale_block_outcome_is_dropped(registry):
    b = registry.breaker("db", failure_threshold=1)
    with pytest.raises(Boom):
        with b:
            registry.reset("db")  # new generation while the block runs
            raise Boom()
    assert b.state is State.CLOSED


def test_blocks_from_16_threads_keep_their_own_permits(registry):
    b = registry.breaker("db", failure_threshold=10**6)
    barrier = threading.Barrier(16, timeout=10)
    errors = []

    def work(i):
        try:
            for _ in range(20):
                try:
                    with b:
                        barrier.wait()  # all 16 threads are inside a block at once
                        if i % 2:
                            raise Boom()
                except Boom:
                    pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    run_threads(work, n=16, timeout=30)
    assert errors == []
    m = b.metrics()
    assert (m.calls, m.successes, m.failures) == (320, 160, 160)


def test_half_open_storm_through_with_admits_exactly_max_calls(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=3)
    raise_in_block(b)
    clock.advance(1.0)
    start = threading.Barrier(16, timeout=10)
    tried = threading.Barrier(16, timeout=10)  # every thread has tried; the admitted ones still hold permits
    admitted, rejected = [], []

    def work():
        start.wait()
        try:
            with b:
                admitted.append(1)
                tried.wait(10)
        except CircuitOpenError:
            rejected.append(1)
            tried.wait(10)

    run_threads(lambda i: work(), 16, timeout=30)
    assert (len(admitted), len(rejected)) == (3, 13)
    assert b.state is State.CLOSED
    m = b.metrics()
    assert (m.successes, m.rejected) == (3, 13)
