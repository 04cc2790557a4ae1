"""Metrics (issue 3): ``b.metrics()`` is an immutable snapshot with ``state, consecutive_failures,
calls, successes, failures, ignored, rejected, times_opened, retry_after``; ``registry.snapshot()``
maps every name to one. Counters are exact under concurrency (no lost increments)."""

from __future__ import annotations

import threading

import panelboard
import pytest
from helpers import METRICS_FIELDS, Boom, raiser, run_threads
from panelboard import Metrics, Registry, State

FIELDS = METRICS_FIELDS  # the fields every Metrics has (the one list, in helpers)


class Skip(Exception):
    pass


def as_dict(m: Metrics) -> dict:
    return {f: getattr(m, f) for f in FIELDS}


def test_new_breaker_metrics_are_zero(registry):
    m = registry.breaker("m").metrics()
    assert isinstance(m, Metrics)
    assert as_dict(m) == {
        "state": State.CLOSED,
        "consecutive_failures": 0,
        "calls": 0,
        "successes": 0,
        "failures": 0,
        "ignored": 0,
        "rejected": 0,
        "times_opened": 0,
        "retry_after": 0.0,
    }
    assert type(m.retry_after) is float
    assert all(type(getattr(m, f)) is int for f in FIELDS if f not in ("state", "retry_after"))


def test_metrics_count_every_kind_of_outcome(registry, clock):
    b = registry.breaker("m", failure_threshold=3, reset_timeout=10.0, ignore=Skip)
    b.call(lambda: 1)
    b.call(lambda: 2)
    for exc in (Boom(), Boom(), Skip()):
        with pytest.raises(type(exc)):
            b.call(raiser(exc))
    m = b.metrics()
    assert (m.calls, m.successes, m.failures, m.ignored, m.rejected) == (5, 2, 2, 1, 0)
    assert m.consecutive_failures == 2
    assert m.state is State.CLOSED
    with pytest.raises(Boom):
        b.call(raiser(Boom()))
    clock.advance(4.0)
    for _ in range(3):
        with pytest.raises(panelboard.CircuitOpenError):
            b.call(lambda: None)
    assert b.try_acquire() is None
    m = b.metrics()
    assert m.state is State.OPEN
    assert (m.calls, m.failures, m.rejected, m.times_opened) == (6, 3, 4, 1)
    assert m.consecutive_failures == 0, "counted only while closed"
    assert m.retry_after == pytest.approx(6.0)


def test_retry_after_counts_down_with_the_clock(registry, clock):
    b = registry.breaker("m", failure_threshold=1, reset_timeout=30.0)
    with pytest.raises(Boom):
        b.call(raiser(Boom()))
    assert b.metrics().retry_after == pytest.approx(30.0)
    clock.advance(12.5)
    assert b.metrics().retry_after == pytest.approx(17.5)
    clock.advance(17.5)
    m = b.metrics()
    assert m.state is State.HALF_OPEN
    assert m.retry_after == 0.0


def test_times_opened_counts_each_opening(registry, clock):
    b = registry.breaker("m", failure_threshold=1, reset_timeout=1.0)
    for expected in (1, 2, 3):
        with pytest.raises(Boom):
            b.call(raiser(Boom()))  # closed -> open, then half-open probe -> open
        assert b.metrics().times_opened == expected
        clock.advance(1.0)
    b.call(lambda: None)
    registry.force_open("m")  # forced open is not an opening by failures
    m = b.metrics()
    assert m.times_opened == 3
    assert m.state is State.FORCED_OPEN


def test_success_predicate_failures_are_failures(registry):
    b = registry.breaker("m", failure_threshold=10, success=lambda r: r > 0)
    b.call(lambda: 1)
    b.call(lambda: 0)
    m = b.metrics()
    assert (m.successes, m.failures, m.consecutive_failures) == (1, 1, 1)


def test_metrics_are_immutable_snapshots(registry):
    b = registry.breaker("m", failure_threshold=1)
    before = b.metrics()
    for field in FIELDS:
        with pytest.raises(AttributeError):
            setattr(before, field, 99)
    with pytest.raises(AttributeError):
        before.extra = 1
    with pytest.raises(Boom):
        b.call(raiser(Boom()))
    assert before.state is State.CLOSED, "a snapshot does not follow the breaker"
    assert before.calls == 0
    assert b.metrics().calls == 1


def test_metrics_repr_shows_the_fields(registry):
    r = repr(registry.breaker("m").metrics())
    for field in FIELDS:
        assert field in r


def test_snapshot_maps_every_breaker(registry):
    registry.call("a", lambda: None)
    with pytest.raises(Boom):
        registry.call("b", raiser(Boom()), failure_threshold=1)
    registry.force_open("c")
    snap = registry.snapshot()
    assert isinstance(snap, dict)
    assert set(snap) == {"a", "b", "c"}
    assert all(isinstance(m, Metrics) for m in snap.values())
    assert snap["a"].successes == 1
    assert (snap["b"].failures, snap["b"].state) == (1, State.OPEN)
    assert snap["c"].state is State.FORCED_OPEN
    registry.delete("a")
    assert set(registry.snapshot()) == {"b", "c"}
    assert snap["a"].successes == 1, "an earlier snapshot is unaffected"


def test_snapshot_of_empty_registry(registry):
    assert registry.snapshot() == {}


def test_snapshot_is_a_copy(registry):
    registry.call("a", lambda: None)
    snap = registry.snapshot()
    snap.clear()
    assert set(registry.snapshot()) == {"a"}


def test_default_registry_snapshot(name):
    panelboard.call(name, lambda: None)
    assert panelboard.snapshot()[name].successes == 1


def test_metrics_survive_reset_and_delete(registry):
    b = registry.breaker("m", failure_threshold=1)
    with pytest.raises(Boom):
        b.call(raiser(Boom()))
    registry.reset("m")
    m = b.metrics()
    assert (m.failures, m.times_opened, m.state) == (1, 1, State.CLOSED), "counters are totals, not reset"
    registry.delete("m")
    b.call(lambda: None)
    assert b.metrics().calls == 2
    assert registry.breaker("m").metrics().calls == 0, "a new breaker starts from zero"


def test_counters_are_exact_with_16_threads(registry):
    """16 threads each make 500 guarded calls (successes, failures, ignored) and 200 rejected
    calls: every counter is exact."""
    b = registry.breaker("hot", failure_threshold=10**9, failure_on=Boom)
    shut = registry.breaker("shut")
    registry.force_open("shut")
    barrier = threading.Barrier(16, timeout=10)
    n = 500

    def work(i):
        barrier.wait()
        for j in range(n):
            kind = (i + j) % 3
            if kind == 0:
                b.call(lambda: None)
            elif kind == 1:
                try:
                    b.call(raiser(Boom()))
                except Boom:
                    pass
            else:
                try:
                    b.call(raiser(KeyError()))
                except KeyError:
                    pass
        for j in range(200):
            if j % 2:
                assert shut.try_acquire() is None
            else:
                try:
                    shut.call(lambda: None)
                except panelboard.CircuitOpenError:
                    pass

    run_threads(work)
    expected = {0: 0, 1: 0, 2: 0}
    for i in range(16):
        for j in range(n):
            expected[(i + j) % 3] += 1
    m = b.metrics()
    assert (m.calls, m.successes, m.failures, m.ignored) == (16 * n, expected[0], expected[1], expected[2])
    assert m.rejected == 0
    assert shut.metrics().rejected == 16 * 200
    assert shut.metrics().calls == 0


def test_counters_are_exact_with_permits_and_blocks_from_16_threads(registry):
    b = registry.breaker("hot", failure_threshold=10**9)
    barrier = threading.Barrier(16, timeout=10)

    def work(i):
        barrier.wait()
        for j in range(300):
            if j % 3 == 0:
                b.try_acquire().success()
            elif j % 3 == 1:
                b.try_acquire().failure()
            else:
                with b:
                    pass

    run_threads(work)
    m = b.metrics()
    assert (m.calls, m.successes, m.failures) == (16 * 300, 16 * 200, 16 * 100)


def test_times_opened_is_exact_under_concurrent_trips(clock):
    """16 threads repeatedly trip and reset the same breaker; each closed -> open transition is
    counted once, and matches the listener's count."""
    registry = Registry(clock=clock)
    opened = []
    registry.on_state_change(lambda name, old, new: opened.append(1) if new is State.OPEN else None)
    b = registry.breaker("m", failure_threshold=1)
    barrier = threading.Barrier(16, timeout=10)

    def work(i):
        barrier.wait()
        for _ in range(100):
            try:
                b.call(raiser(Boom()))
            except (Boom, panelboard.CircuitOpenError):
                pass
            registry.reset("m")

    run_threads(work)
    assert b.metrics().times_opened == len(opened)
    assert len(opened) > 0
