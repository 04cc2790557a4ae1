"""A positive duration never becomes zero milliseconds (issue 8, item 4).

The engine counts whole milliseconds. `probe_timeout=0.0004` used to round to 0 ms, and then every
caller reclaimed the half-open slot: with `half_open_max_calls=1`, 20 of 20 `try_acquire()` were
admitted. A positive duration now rounds to at least 1 ms (the README's option table says so).
"""

from __future__ import annotations

import pytest
from panelboard import ManualClock, Registry, State


def open_breaker(clock, **options):
    registry = Registry(clock=clock, failure_threshold=1, **options)
    b = registry.breaker("x")
    permit = b.try_acquire()
    permit.failure()
    return b


@pytest.mark.parametrize("probe_timeout", [1e-9, 0.0001, 0.0004, 0.00049999])
def test_a_sub_millisecond_probe_timeout_still_admits_one_probe_at_a_time(probe_timeout):
    clock = ManualClock()
    b = open_breaker(clock, reset_timeout=1.0, half_open_max_calls=1, probe_timeout=probe_timeout)
    assert b.state is State.OPEN
    clock.advance(1.0)
    permits = [b.try_acquire() for _ in range(20)]
    admitted = [p for p in permits if p is not None]
    assert len(admitted) == 1, f"{len(admitted)} probes admitted with half_open_max_calls=1"
    # The timeout still works: a millisecond later the hung probe's slot is reclaimed, once.
    clock.advance(0.001)
    again = [b.try_acquire() for _ in range(20)]
    assert sum(p is not None for p in again) == 1


@pytest.mark.parametrize("reset_timeout", [1e-9, 0.0004])
def test_a_sub_millisecond_reset_timeout_keeps_the_breaker_open_until_a_millisecond_has_passed(
    reset_timeout,
):
    clock = ManualClock()
    b = open_breaker(clock, reset_timeout=reset_timeout)
    assert b.try_acquire() is None
    assert b.state is State.OPEN
    assert b.metrics().retry_after == 0.001
    clock.advance(0.001)
    assert b.state is State.HALF_OPEN


def test_a_zero_reset_timeout_still_means_half_open_at_once():
    clock = ManualClock()
    b = open_breaker(clock, reset_timeout=0)
    assert b.state is State.HALF_OPEN


def test_zero_probe_timeout_is_still_rejected():
    with pytest.raises(ValueError, match="probe_timeout"):
        Registry(probe_timeout=0.0)


@pytest.mark.parametrize("option", ["reset_timeout", "probe_timeout"])
def test_configure_rounds_the_same_way(option):
    clock = ManualClock()
    registry = Registry(clock=clock, failure_threshold=1, half_open_max_calls=1)
    b = registry.breaker("x")
    registry.configure("x", **{option: 0.0002})
    b.try_acquire().failure()
    if option == "reset_timeout":
        assert b.state is State.OPEN
        clock.advance(0.001)
        assert b.state is State.HALF_OPEN
    else:
        clock.advance(30.0)
        permits = [b.try_acquire() for _ in range(20)]  # kept: a dropped permit frees its slot
        assert sum(p is not None for p in permits) == 1
