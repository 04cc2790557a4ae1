"""Two-step permits (issue 3): ``p = b.try_acquire()`` gives a ``Permit`` or ``None`` (never raises
for a rejecting breaker); exactly one of ``p.success() / p.failure() / p.ignore()``, a second raises
``RuntimeError``; a permit dropped without an outcome counts as ignored and gives its half-open slot
back. Permits never leak, whatever 16 threads do with them."""

from __future__ import annotations

import gc
import random
import threading

import pytest
from helpers import open_with_permits, run_threads
from panelboard import Permit, State

OUTCOMES = ("success", "failure", "ignore")


def test_try_acquire_on_a_closed_breaker_gives_a_permit(registry):
    b = registry.breaker("rpc")
    p = b.try_acquire()
    assert isinstance(p, Permit)
    assert p.settled is False
    p.success()
    assert p.settled is True
    assert b.metrics().successes == 1


def test_try_acquire_returns_none_while_open_and_counts_a_rejection(registry, clock):
    b = registry.breaker("rpc", failure_threshold=1, reset_timeout=5.0)
    open_with_permits(b)
    for _ in range(3):
        assert b.try_acquire() is None  # no exception
    clock.advance(4.999)
    assert b.try_acquire() is None
    assert b.metrics().rejected == 4


def test_try_acquire_returns_none_when_forced_open(registry):
    b = registry.breaker("rpc")
    registry.force_open("rpc")
    assert b.try_acquire() is None


@pytest.mark.parametrize("first", OUTCOMES)
@pytest.mark.parametrize("second", OUTCOMES)
def test_a_second_outcome_raises_runtime_error_and_changes_nothing(registry, first, second):
    b = registry.breaker("rpc", failure_threshold=1)
    p = b.try_acquire()
    getattr(p, first)()
    before = b.metrics()
    with pytest.raises(RuntimeError):
        getattr(p, second)()
    after = b.metrics()
    assert (after.calls, after.successes, after.failures, after.ignored) == (
        before.calls,
        before.successes,
        before.failures,
        before.ignored,
    )
    assert after.state is before.state


def test_outcomes_drive_the_breaker(registry):
    b = registry.breaker("rpc", failure_threshold=3)
    for outcome in ("failure", "failure", "success", "failure", "failure", "ignore"):
        getattr(b.try_acquire(), outcome)()
    assert b.state is State.CLOSED
    assert b.metrics().consecutive_failures == 2
    b.try_acquire().failure()
    assert b.state is State.OPEN
    m = b.metrics()
    assert (m.calls, m.successes, m.failures, m.ignored) == (7, 1, 5, 1)


def test_half_open_probe_permit_success_closes_and_failure_reopens(registry, clock):
    b = registry.breaker("rpc", failure_threshold=1, reset_timeout=1.0)
    open_with_permits(b)
    clock.advance(1.0)
    p = b.try_acquire()
    assert p is not None
    assert b.try_acquire() is None, "one probe at a time"
    p.failure()
    assert b.state is State.OPEN
    clock.advance(1.0)
    b.try_acquire().success()
    assert b.state is State.CLOSED


def test_ignored_probe_gives_its_slot_back(registry, clock):
    b = registry.breaker("rpc", failure_threshold=1, reset_timeout=1.0)
    open_with_permits(b)
    clock.advance(1.0)
    b.try_acquire().ignore()
    assert b.state is State.HALF_OPEN
    assert b.try_acquire() is not None


def test_dropped_permit_counts_as_ignored_while_closed(registry):
    b = registry.breaker("rpc", failure_threshold=1)
    p = b.try_acquire()
    assert p is not None
    del p  # the last reference: refcounting frees it at once
    gc.collect()
    m = b.metrics()
    assert (m.calls, m.ignored, m.failures) == (1, 1, 0)
    assert b.state is State.CLOSED


def test_dropped_probe_permit_releases_the_half_open_slot(registry, clock):
    b = registry.breaker("rpc", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=2)
    open_with_permits(b)
    clock.advance(1.0)
    keep = b.try_acquire()
    dropped = b.try_acquire()
    assert keep is not None and dropped is not None
    assert b.try_acquire() is None
    del dropped
    gc.collect()
    again = b.try_acquire()
    assert again is not None, "the dropped permit's slot came back"
    assert b.state is State.HALF_OPEN
    assert b.metrics().ignored == 1
    keep.success()
    assert b.state is State.CLOSED
    again.ignore()


def test_settled_permit_dropped_is_not_counted_twice(registry):
    b = registry.breaker("rpc")
    p = b.try_acquire()
    p.failure()
    del p
    gc.collect()
    m = b.metrics()
    assert (m.calls, m.failures, m.ignored) == (1, 1, 0)


def test_stale_permit_outcome_is_dropped(registry, clock):
    b = registry.breaker("rpc", failure_threshold=1, reset_timeout=1.0)
    slow = b.try_acquire()
    registry.reset("rpc")  # new generation
    slow.failure()
    assert b.state is State.CLOSED
    # A probe taken before the breaker reopened cannot close it.
    open_with_permits(b)
    clock.advance(1.0)
    probe = b.try_acquire()
    registry.force_open("rpc")
    probe.success()
    assert b.state is State.FORCED_OPEN


def test_permit_outlives_deleted_breaker(registry):
    b = registry.breaker("rpc", failure_threshold=1)
    p = b.try_acquire()
    registry.delete("rpc")
    del b
    p.failure()  # its own breaker still exists for it
    assert "rpc" not in registry


def test_permit_repr(registry):
    b = registry.breaker("rpc")
    p = b.try_acquire()
    assert "Permit" in repr(p)
    p.success()
    assert "settled" in repr(p)


def test_permit_settled_on_another_thread(registry, clock):
    # The callback / future use case: acquire here, report from whichever thread completes it.
    from concurrent.futures import ThreadPoolExecutor

    b = registry.breaker("rpc", failure_threshold=1, reset_timeout=1.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        p = b.try_acquire()
        fut = pool.submit(lambda: 1 / 0)
        fut.add_done_callback(lambda f: p.failure() if f.exception() else p.success())
        with pytest.raises(ZeroDivisionError):
            fut.result(10)
    assert b.state is State.OPEN
    clock.advance(1.0)
    probe = b.try_acquire()
    t = threading.Thread(target=probe.success)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert b.state is State.CLOSED


def test_16_threads_racing_to_settle_one_permit_exactly_one_wins(registry):
    for outcome_round in range(10):
        b = registry.breaker(f"rpc-{outcome_round}", failure_threshold=1)
        p = b.try_acquire()
        barrier = threading.Barrier(16, timeout=10)
        won, lost = [], []

        def settle(i):
            barrier.wait()
            try:
                getattr(p, OUTCOMES[i % 3])()
                won.append(i)
            except RuntimeError:
                lost.append(i)

        run_threads(settle, 16, timeout=10)
        assert (len(won), len(lost)) == (1, 15)
        assert b.metrics().calls == 1


def test_permits_never_leak_under_random_outcomes_from_16_threads(registry, clock):
    """16 threads take probe permits from a half-open breaker and answer each one at random:
    success, ignore, drop, or report twice. Afterwards every slot is free again and the counters
    add up exactly."""
    max_calls = 4
    b = registry.breaker(
        "rpc",
        failure_threshold=1,
        reset_timeout=1.0,
        half_open_max_calls=max_calls,
        success_threshold=65535,  # stays half-open: every slot must come back
    )
    open_with_permits(b)
    clock.advance(1.0)
    assert b.state is State.HALF_OPEN
    barrier = threading.Barrier(16, timeout=10)
    granted = [0] * 16
    refused = [0] * 16
    double = [0] * 16
    errors = []

    def work(i):
        rng = random.Random(i)
        try:
            barrier.wait()
            held = []
            for _ in range(400):
                p = b.try_acquire()
                if p is None:
                    refused[i] += 1
                    # Give back whatever we hold so that others get a turn.
                    while held:
                        held.pop().ignore()
                    continue
                granted[i] += 1
                action = rng.choice(("success", "ignore", "drop", "twice", "hold"))
                if action == "success":
                    p.success()
                elif action == "ignore":
                    p.ignore()
                elif action == "drop":
                    del p
                elif action == "twice":
                    p.success()
                    try:
                        p.ignore()
                    except RuntimeError:
                        double[i] += 1
                else:
                    held.append(p)
            for p in held:
                p.success()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_threads(work, n=16, timeout=60)
    gc.collect()
    assert errors == []
    assert sum(granted) > 0 and sum(refused) > 0
    m = b.metrics()
    assert b.state is State.HALF_OPEN
    # Every permit handed out was answered exactly once (drops count as ignored).
    assert m.calls == sum(granted) + 1  # + the failure that opened it
    assert m.rejected == sum(refused)
    twice = sum(double)
    assert m.successes + m.ignored == sum(granted)
    assert twice > 0
    # No slot leaked: exactly max_calls probes can be taken now.
    permits = [b.try_acquire() for _ in range(max_calls)]
    assert all(p is not None for p in permits)
    assert b.try_acquire() is None
    for p in permits:
        p.ignore()


def test_permits_never_leak_with_failures_and_reopening(registry, clock):
    """Random outcomes including failures (which reopen the breaker and start new generations) and
    clock advances (open -> half-open): afterwards exactly max_calls probes get in, and they close it."""
    b = registry.breaker("rpc", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=2)
    barrier = threading.Barrier(16, timeout=10)
    granted = [0] * 16
    errors = []

    def work(i):
        rng = random.Random(100 + i)
        try:
            barrier.wait()
            for _ in range(300):
                p = b.try_acquire()
                if p is None:
                    if rng.random() < 0.2:
                        clock.advance(1.0)
                    continue
                granted[i] += 1
                action = rng.choice(("success", "failure", "ignore", "drop"))
                if action != "drop":
                    getattr(p, action)()
                del p
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_threads(work, n=16, timeout=60)
    gc.collect()
    assert errors == []
    m = b.metrics()
    assert m.calls == sum(granted)
    assert m.times_opened > 1
    open_with_permits(b)
    clock.advance(1.0)
    p1, p2 = b.try_acquire(), b.try_acquire()
    assert p1 is not None and p2 is not None
    assert b.try_acquire() is None
    p1.ignore()
    p2.success()
    assert b.state is State.CLOSED
