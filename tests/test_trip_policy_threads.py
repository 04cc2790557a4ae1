"""Trip policies under threads (issue 11): 16 threads recording into one breaker's window.

The clock is a ``ManualClock`` that never moves, so the window keeps every outcome and its exact
counts are known from what the threads did. Each thread records its own outcomes in order, so at
any moment the window holds a prefix of every thread's sequence: a per-thread pattern whose every
prefix stays under (or over) the threshold keeps the whole window under (or over) it, whatever
the interleaving. Runs on CPython 3.11 (with frequent thread switches) and free-threaded 3.13t.
"""

from __future__ import annotations

import threading

import pytest
from helpers import Boom, fail, ok, run_threads, window_of
from panelboard import CircuitOpenError, Registry, State

pytestmark = pytest.mark.usefixtures("frequent_switches")

THREADS = 16
ROUNDS = 10


def fail_until_rejected(b) -> int:
    """Failed calls through ``b`` until it rejects one; returns how many ran."""
    ran = 0
    while True:
        try:
            b.call(fail)
        except Boom:
            ran += 1
        except CircuitOpenError:
            return ran


def listen(registry) -> list:
    heard: list = []
    registry.on_state_change(lambda name, old, new: heard.append((name, old, new)))
    return heard


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sixteen_threads_under_the_rate_never_trip_then_trip_exactly_where_it_is_reached(clock, round_):
    """Phase 1: every thread at 1 failure in 4 (each prefix of ``SSSF`` stays <= 1/4) against a
    threshold of 1/2: never a trip. Phase 2: every thread fails until rejected: the window's rate
    reaches 1/2 at exactly the 320th of those failures, and the only calls recorded after it are
    the ones already admitted, at most one per thread."""
    registry = Registry(clock=clock)
    heard = listen(registry)
    handles = [
        registry.breaker("x", failure_rate=0.5, min_calls=100, failure_threshold=None) for _ in range(THREADS)
    ]
    per_thread = 40  # 10 x "SSSF"
    barrier = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        b = handles[i]
        for _ in range(per_thread // 4):
            for letter in "SSSF":
                if letter == "S":
                    b.call(ok)
                else:
                    with pytest.raises(Boom):
                        b.call(fail)
        barrier.wait(30)
        if i == 0:  # one thread checks the window between the phases
            m = b.metrics()
            assert (m.state, m.times_opened) == (State.CLOSED, 0), m
            assert window_of(m) == (THREADS * per_thread, THREADS * per_thread // 4, 0)
            assert m.failure_rate == 0.25
        barrier.wait(30)
        fail_until_rejected(b)

    run_threads(worker, THREADS)
    m = handles[0].metrics()
    calls_before = THREADS * per_thread  # 640 calls, 160 failures
    crossing = calls_before + (
        calls_before - 2 * (calls_before // 4)
    )  # (160 + k) / (640 + k) >= 1/2 at k = 320
    assert m.state is State.OPEN and m.times_opened == 1, m
    assert crossing <= m.calls <= crossing + THREADS - 1, (
        f"{m.calls} calls recorded: the trip must come at call {crossing} (plus at most "
        f"{THREADS - 1} already admitted by other threads)"
    )
    assert heard == [("x", State.CLOSED, State.OPEN)]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sixteen_threads_all_failing_never_trip_below_min_calls(clock, round_):
    """Every call fails (a rate of 1), but the window holds fewer than min_calls until the last
    phase: no trip until the 500th call, then exactly one."""
    registry = Registry(clock=clock)
    heard = listen(registry)
    min_calls = 500
    handles = [
        registry.breaker("x", failure_rate=0.1, min_calls=min_calls, failure_threshold=None)
        for _ in range(THREADS)
    ]
    per_thread = (min_calls - 1) // THREADS  # 31 each: 496 calls
    barrier = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        b = handles[i]
        for _ in range(per_thread):
            with pytest.raises(Boom):
                b.call(fail)
        barrier.wait(30)
        if i == 0:
            m = b.metrics()
            assert (m.state, m.times_opened) == (State.CLOSED, 0), m
            assert window_of(m) == (THREADS * per_thread,) * 2 + (0,)
        barrier.wait(30)
        fail_until_rejected(b)

    run_threads(worker, THREADS)
    m = handles[0].metrics()
    assert m.state is State.OPEN and m.times_opened == 1
    assert min_calls <= m.calls <= min_calls + THREADS - 1, m
    assert heard == [("x", State.CLOSED, State.OPEN)]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_many_threads_crossing_the_rate_at_once_trip_it_once(clock, round_):
    """The window holds min_calls - 1 failures; 16 threads holding permits all fail at once, so
    every one of them would cross the threshold: exactly one trip, one listener call."""
    registry = Registry(clock=clock)
    heard = listen(registry)
    b = registry.breaker("x", failure_rate=0.5, min_calls=40, failure_threshold=None)
    handles = [registry.breaker("x") for _ in range(THREADS)]
    for _ in range(39):
        with pytest.raises(Boom):
            b.call(fail)
    permits = [h.try_acquire() for h in handles]
    assert all(p is not None for p in permits)
    barrier = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        barrier.wait(30)
        permits[i].failure()

    run_threads(worker, THREADS)
    m = b.metrics()
    assert (m.state, m.times_opened, m.failures) == (State.OPEN, 1, 39 + THREADS)
    assert heard == [("x", State.CLOSED, State.OPEN)]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sixteen_threads_of_slow_calls_trip_the_slow_call_rate_once(clock, round_):
    """Slow successes through permits held across a clock step, from 16 threads at once."""
    registry = Registry(clock=clock)
    heard = listen(registry)
    b = registry.breaker(
        "x", slow_call_duration=1.0, slow_call_rate=0.5, min_calls=32, failure_threshold=None
    )
    handles = [registry.breaker("x") for _ in range(THREADS)]
    for _ in range(THREADS):
        b.call(ok)  # 16 fast successes: the 16 slow ones reach 1/2 together
    permits = [h.try_acquire() for h in handles]
    clock.advance(1.5)
    barrier = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        barrier.wait(30)
        permits[i].success()

    run_threads(worker, THREADS)
    m = b.metrics()
    assert (m.state, m.times_opened, m.slow_calls, m.failures) == (State.OPEN, 1, THREADS, 0)
    assert heard == [("x", State.CLOSED, State.OPEN)]


def test_counts_from_sixteen_threads_are_exact_in_the_window(clock):
    registry = Registry(clock=clock)
    b = registry.breaker("x", failure_rate=1.0, min_calls=10**6, failure_threshold=None)
    per_thread = 500

    def worker(i: int) -> None:
        h = registry.breaker("x")
        for n in range(per_thread):
            if n % 5 == i % 5:
                with pytest.raises(Boom):
                    h.call(fail)
            else:
                h.call(ok)

    run_threads(worker, THREADS)
    m = b.metrics()
    assert window_of(m) == (THREADS * per_thread, THREADS * per_thread // 5, 0)
    assert (m.successes, m.failures) == (THREADS * per_thread * 4 // 5, THREADS * per_thread // 5)
    assert m.state is State.CLOSED


def test_a_new_window_width_forgets_what_every_thread_counted(clock):
    """A new ``window`` forgets every thread's counts (their buckets' time indices mean other times
    under another width), and the threads count afresh in the new one."""
    registry = Registry(clock=clock)
    b = registry.breaker("x", failure_rate=1.0, min_calls=10**6, failure_threshold=None)

    def worker(i: int) -> None:
        h = registry.breaker("x")
        for _ in range(100):
            h.call(ok)

    run_threads(worker, THREADS)
    assert window_of(b.metrics()) == (THREADS * 100, 0, 0)
    registry.configure("x", window=5.0)
    assert window_of(b.metrics()) == (0, 0, 0)
    run_threads(worker, THREADS)
    assert window_of(b.metrics()) == (THREADS * 100, 0, 0)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sixteen_threads_under_the_rate_never_trip_while_the_window_slides(clock, round_):
    """The threads move the clock on themselves, 10 ms after every 10 calls (6.4 s in all, over a
    1 s window), so buckets roll under recorders that read the time just before. The window then
    holds, of each thread, the calls of a stretch of time, and a stretch of ``SSSF...`` holds at most
    one failure more than a quarter of its calls: with at least 200 calls the rate stays below
    0.25 + 16/200 (and a few late recorders dropped), far from 0.6."""
    registry = Registry(clock=clock)
    heard = listen(registry)
    handles = [
        registry.breaker("x", failure_rate=0.6, min_calls=200, window=1.0, failure_threshold=None)
        for _ in range(THREADS)
    ]
    seen = []

    def worker(i: int) -> None:
        b = handles[i]
        for n in range(100):
            for letter in "SSSF":
                if letter == "S":
                    b.call(ok)
                else:
                    with pytest.raises(Boom):
                        b.call(fail)
            if n % 5 == 4:  # every 20 calls
                clock.advance(0.02)
                if i == 0:
                    seen.append(window_of(b.metrics()))

    run_threads(worker, THREADS)
    m = handles[0].metrics()
    assert (m.state, m.times_opened) == (State.CLOSED, 0), m
    assert heard == []
    assert m.successes + m.failures == THREADS * 400
    assert clock.now() == pytest.approx(THREADS * 20 * 0.02)
    assert all(failures <= 0.6 * calls or calls < 200 for calls, failures, _ in seen), seen
    assert 0 < m.window_calls < THREADS * 400, "the window slid: it holds the last second or so"
