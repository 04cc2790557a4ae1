"""Manual control (issue 3): ``registry.force_open(name)`` rejects everything until ``reset``
(``State.FORCED_OPEN``); ``registry.disable(name)`` admits everything and still counts metrics
(``State.DISABLED``); ``registry.reset(name)`` returns to closed. Both create the breaker if the name
is new."""

from __future__ import annotations

import asyncio
import threading

import panelboard
import pytest
from helpers import Boom, fail, run_threads
from panelboard import CircuitOpenError, State


def test_state_enum_has_the_manual_states():
    assert State.FORCED_OPEN == "forced_open"
    assert State.DISABLED == "disabled"
    assert str(State.FORCED_OPEN) == "forced_open"


def test_force_open_creates_a_new_breaker(registry):
    registry.force_open("maint")
    assert "maint" in registry
    assert registry.state("maint") is State.FORCED_OPEN
    assert ("maint", State.FORCED_OPEN) in registry.list()


def test_force_open_rejects_every_way_of_calling_until_reset(registry, clock):
    b = registry.breaker("maint", reset_timeout=1.0)
    registry.force_open("maint")
    ran = []

    @b
    def guarded():
        ran.append(1)

    for _ in range(2):
        with pytest.raises(CircuitOpenError) as info:
            registry.call("maint", lambda: ran.append(1))
        assert info.value.name == "maint"
        assert info.value.retry_after == 0.0, "no automatic half-open time"
        with pytest.raises(CircuitOpenError):
            b.call(ran.append, 1)
        with pytest.raises(CircuitOpenError):
            guarded()
        with pytest.raises(CircuitOpenError):
            with b:
                ran.append(1)
        with pytest.raises(CircuitOpenError):
            asyncio.run(b.acall(asyncio.sleep, 0))
        assert b.try_acquire() is None
        clock.advance(10**6)  # time never half-opens a forced-open breaker
        assert b.state is State.FORCED_OPEN
    assert ran == []
    assert b.metrics().rejected == 12
    registry.reset("maint")
    assert b.state is State.CLOSED
    assert b.call(lambda: "back") == "back"


def test_force_open_from_any_state(registry, clock):
    b = registry.breaker("m", failure_threshold=1, reset_timeout=1.0)
    with pytest.raises(Boom):
        b.call(fail)
    registry.force_open("m")  # from open
    assert b.state is State.FORCED_OPEN
    registry.reset("m")
    with pytest.raises(Boom):
        b.call(fail)
    clock.advance(1.0)
    probe = b.try_acquire()  # half-open
    registry.force_open("m")
    probe.success()  # admitted before force_open: stale
    assert b.state is State.FORCED_OPEN
    registry.disable("m")
    registry.force_open("m")  # from disabled
    assert b.state is State.FORCED_OPEN


def test_calls_in_flight_when_forced_open_do_not_change_it(registry):
    b = registry.breaker("m", failure_threshold=1)

    def force_then_fail():
        registry.force_open("m")
        raise Boom()

    with pytest.raises(Boom):
        b.call(force_then_fail)
    assert b.state is State.FORCED_OPEN
    assert b.metrics().times_opened == 0


def test_disable_creates_a_new_breaker(registry):
    registry.disable("off")
    assert "off" in registry
    assert registry.state("off") is State.DISABLED


def test_disable_admits_everything_and_still_counts(registry, clock):
    b = registry.breaker("off", failure_threshold=1, half_open_max_calls=1)
    registry.disable("off")
    for _ in range(10):
        with pytest.raises(Boom):
            b.call(fail)
    assert b.state is State.DISABLED
    assert b.call(lambda: "ok") == "ok"
    permits = [b.try_acquire() for _ in range(5)]
    assert all(p is not None for p in permits), "no probe limit either"
    for p in permits:
        p.failure()
    with b:
        pass
    clock.advance(10**6)
    assert b.state is State.DISABLED
    m = b.metrics()
    assert m.state is State.DISABLED
    assert (m.calls, m.successes, m.failures, m.rejected, m.times_opened) == (17, 2, 15, 0, 0)


def test_disable_then_reset_starts_closed_with_no_failures(registry):
    b = registry.breaker("off", failure_threshold=2)
    with pytest.raises(Boom):
        b.call(fail)
    registry.disable("off")
    for _ in range(5):
        with pytest.raises(Boom):
            b.call(fail)
    registry.reset("off")
    assert b.state is State.CLOSED
    assert b.metrics().consecutive_failures == 0
    with pytest.raises(Boom):
        b.call(fail)
    assert b.state is State.CLOSED, "failures while disabled (and before) were not carried over"
    with pytest.raises(Boom):
        b.call(fail)
    assert b.state is State.OPEN


def test_disable_an_open_breaker_admits_at_once(registry):
    b = registry.breaker("off", failure_threshold=1, reset_timeout=1000.0)
    with pytest.raises(Boom):
        b.call(fail)
    registry.disable("off")
    assert b.call(lambda: 1) == 1


def test_force_open_and_disable_use_registry_defaults_when_creating(clock):
    registry = panelboard.Registry(clock=clock, failure_threshold=2)
    registry.force_open("f")
    registry.reset("f")
    b = registry.breaker("f", failure_threshold=100)  # exists already: options ignored
    for _ in range(2):
        with pytest.raises(Boom):
            b.call(fail)
    assert b.state is State.OPEN


def test_manual_control_rejects_a_non_str_name(registry):
    for op in (registry.force_open, registry.disable, registry.reset):
        with pytest.raises(TypeError):
            op(1)
    assert len(registry) == 0


def test_reset_of_unknown_name_does_not_create(registry):
    registry.reset("ghost")
    assert "ghost" not in registry


def test_default_registry_manual_control(name):
    panelboard.force_open(name)
    assert panelboard.state(name) is State.FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        panelboard.call(name, lambda: None)
    panelboard.disable(name)
    assert panelboard.call(name, lambda: 5) == 5
    panelboard.reset(name)
    assert panelboard.state(name) is State.CLOSED


def test_manual_control_races_with_calls(registry):
    """8 threads flip force_open / disable / reset while 8 threads call: only documented exceptions,
    no hang, and the last operation decides the final state."""
    b = registry.breaker("m", failure_threshold=3)
    barrier = threading.Barrier(16, timeout=10)
    errors = []

    def flipper(i):
        for k in range(200):
            (registry.force_open, registry.disable, registry.reset)[(i + k) % 3]("m")

    def caller(i):
        for k in range(200):
            try:
                b.call(fail if k % 2 else (lambda: None))
            except (Boom, CircuitOpenError):
                pass
            p = b.try_acquire()
            if p is not None:
                p.ignore()

    def work(i):
        try:
            barrier.wait()
            (flipper if i < 8 else caller)(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_threads(work, n=16, timeout=60)
    assert errors == []
    registry.force_open("m")
    assert b.try_acquire() is None
    registry.disable("m")
    assert b.call(lambda: 1) == 1
    registry.reset("m")
    assert b.state is State.CLOSED
