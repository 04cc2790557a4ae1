"""Fleet semantics of a Redis-synced registry (issue 13), measured with 8 processes.

Each test runs one function in 8 ``multiprocessing`` spawn processes at once (``helpers.Fleet``);
each process has its own ``Registry(redis=..., namespace=..., sync_interval=SYNC_INTERVAL)`` on a
real ``redis-server`` (``tests/redis_fixtures.py``). Times are ``time.monotonic()``, which on Linux
is one clock for every process of the machine, so a delay measured between two processes is real.

The bounds asserted here are the README's "Fleet guarantees" (with a margin for a loaded 2-core CI
machine, stated next to each); the measured values are printed (``pytest -s``) for the docs.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import pytest
from helpers import (
    SYNC_INTERVAL,
    TIMEOUT,
    Fleet,
    close_registry,
    finish,
    poll,
    redis_registry,
    rejects,
    report,
    wait_synced,
    wait_until,
)
from panelboard import ManualClock, Registry, State

pytestmark = pytest.mark.usefixtures("redis_server")

FLEET = 8
NAME = "payments"
#: What a loaded CI machine may add to a bound (scheduling of 8 processes and Redis on 2 cores).
MARGIN = 0.25
#: "Every process rejects within sync_interval plus a round trip" (README, Fleet guarantees).
PROPAGATION_BOUND = SYNC_INTERVAL + MARGIN


# --------------------------------------------------------------------------------------------------
# Failures count fleet-wide

FAIL_PACE = 0.01  # seconds between two failures of one process
THRESHOLD = 40


def fail_until_rejected(index: int, barrier: Any, url: str, ns: str) -> dict[str, Any]:
    registry = redis_registry(url, ns, failure_threshold=THRESHOLD, reset_timeout=60.0)
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)
        barrier.wait()
        failures = 0
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            permit = b.try_acquire()
            if permit is None:
                return {"failures": failures, "rejected": True, "state": b.state}
            permit.failure()
            failures += 1
            time.sleep(FAIL_PACE)
        return {"failures": failures, "rejected": False, "state": b.state}
    finally:
        finish(barrier, registry)


def test_failures_count_fleet_wide(fleet: Fleet, redis_url: str, namespace: str) -> None:
    """8 processes failing at once open the breaker after about failure_threshold failures in total,
    not failure_threshold each: at most threshold + K x (failures one process makes per batch)."""
    results = fleet.run(fail_until_rejected, redis_url, namespace)
    total = sum(r["failures"] for r in results)
    assert all(r["rejected"] for r in results), results
    assert all(r["state"] is State.OPEN for r in results), results
    # A batch: what one process fails between two syncs, a push and the others' next poll
    # (2 sync intervals at FAIL_PACE, plus one in flight).
    per_batch = math.ceil(2 * SYNC_INTERVAL / FAIL_PACE) + 1
    print(f"\nfleet trip: {total} failures in total (threshold {THRESHOLD}, {FLEET} processes)")
    assert THRESHOLD <= total <= THRESHOLD + FLEET * per_batch, [r["failures"] for r in results]
    # Counting alone would need THRESHOLD failures in every process.
    assert max(r["failures"] for r in results) < THRESHOLD


# --------------------------------------------------------------------------------------------------
# No lost update: every failure of every process counts exactly once

BURST = 5


def burst_then_one_more(index: int, barrier: Any, url: str, ns: str) -> dict[str, Any]:
    registry = redis_registry(url, ns, failure_threshold=FLEET * BURST + 1, reset_timeout=60.0)
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)
        barrier.wait()
        for _ in range(BURST):  # all 8 processes at once: racing compare-and-swaps in Redis
            permit = b.try_acquire()
            assert permit is not None
            permit.failure()
        time.sleep(10 * SYNC_INTERVAL)  # every batch is in Redis, and back
        barrier.wait()
        after_burst = b.state
        barrier.wait()
        if index == 0:
            permit = b.try_acquire()
            assert permit is not None, "the breaker opened before its threshold"
            permit.failure()  # the threshold's last failure
            return {"after_burst": after_burst, "opened_by": True}
        seen = poll(lambda: rejects(b), 5.0)
        return {"after_burst": after_burst, "rejected": seen is not None}
    finally:
        finish(barrier, registry)


def test_racing_processes_lose_no_failure_and_count_none_twice(
    fleet: Fleet, redis_url: str, namespace: str
) -> None:
    """8 processes fail 5 times each at the same moment with failure_threshold = 41: the breaker
    stays closed (no failure counted twice); one more failure anywhere opens it everywhere (no
    failure lost in the race)."""
    results = fleet.run(burst_then_one_more, redis_url, namespace)
    assert [r["after_burst"] for r in results] == [State.CLOSED] * FLEET
    assert all(r["rejected"] for r in results[1:]), results


def race_manual_changes(index: int, barrier: Any, url: str, ns: str) -> State:
    registry = redis_registry(url, ns, failure_threshold=3, reset_timeout=60.0)
    try:
        registry.breaker(NAME)
        wait_synced(registry)
        barrier.wait()
        for i in range(30):
            if (i + index) % 2:
                registry.force_open(NAME)
            else:
                registry.reset(NAME)
        time.sleep(10 * SYNC_INTERVAL)
        barrier.wait()
        time.sleep(4 * SYNC_INTERVAL)
        return registry.state(NAME)
    finally:
        finish(barrier, registry)


def test_racing_manual_changes_converge_to_one_state(fleet: Fleet, redis_url: str, namespace: str) -> None:
    """8 processes alternating force_open and reset as fast as they can end up agreeing."""
    states = fleet.run(race_manual_changes, redis_url, namespace)
    assert len(set(states)) == 1, states
    assert states[0] in (State.CLOSED, State.FORCED_OPEN)


# --------------------------------------------------------------------------------------------------
# An opening reaches every process within sync_interval plus a round trip


def open_and_watch(index: int, barrier: Any, url: str, ns: str) -> float | None:
    registry = redis_registry(url, ns, failure_threshold=1, reset_timeout=60.0)
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)  # everyone has synced once
        barrier.wait()
        if index == 0:
            time.sleep(0.1)
            opened = time.monotonic()
            b.try_acquire().failure()
            assert b.state is State.OPEN
            return opened
        return poll(lambda: rejects(b), 5.0)
    finally:
        finish(barrier, registry)


def test_an_opening_reaches_every_process_within_the_bound(
    fleet: Fleet, redis_url: str, namespace: str
) -> None:
    results = fleet.run(open_and_watch, redis_url, namespace)
    opened = results[0]
    assert all(seen is not None for seen in results[1:]), "a process never rejected"
    delays = [seen - opened for seen in results[1:]]
    report("open propagation", delays)
    assert max(delays) <= PROPAGATION_BOUND, delays


# --------------------------------------------------------------------------------------------------
# The open period runs on the Redis server's clock

RESET_TIMEOUT = 1.0


def skewed_registry(url: str, ns: str, clock: ManualClock, **defaults: Any) -> tuple[Any, Any]:
    """A Redis-synced registry whose own clock is ``clock``, standing in for a host whose clock
    disagrees with the others'. ``Registry(redis=..., clock=...)`` is refused (a ManualClock cannot
    move the fleet's open period), so the sync worker is started on a local registry with the
    private entry point the constructor uses. Returns the registry and its worker (``close()``,
    ``status()``)."""
    from panelboard import _redis

    registry = Registry(clock=clock, **defaults)
    return registry, _redis.start(registry, url, ns, SYNC_INTERVAL)


def open_with_skewed_clocks(index: int, barrier: Any, url: str, ns: str) -> dict[str, Any]:
    # Process 1's clock never moves; process 2's runs an hour ahead of everyone else's.
    clock = ManualClock() if index in (1, 2) else None
    options: dict[str, Any] = {"failure_threshold": 1, "reset_timeout": RESET_TIMEOUT}
    if clock is None:
        registry = redis_registry(url, ns, **options)
        close, status = registry.close, registry.sync_status
    else:
        if index == 2:
            clock.advance(3600.0)
        registry, worker = skewed_registry(url, ns, clock, **options)
        close, status = worker.close, worker.status
    try:
        b = registry.breaker(NAME)
        wait_until(lambda: status()["connected"], TIMEOUT, "connected to Redis")
        time.sleep(2 * SYNC_INTERVAL)
        barrier.wait()
        if index == 0:
            opened = time.monotonic()
            b.try_acquire().failure()
        else:
            opened = None
        seen_open = poll(lambda: b.state is State.OPEN, 5.0)
        if index == 2:
            clock.advance(3600.0)  # a jump forward while open changes nothing either
        seen_half_open = poll(lambda: b.state is State.HALF_OPEN, 10.0)
        return {"opened": opened, "open": seen_open, "half_open": seen_half_open}
    finally:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        finally:
            close()


def test_open_time_runs_on_the_redis_clock(fleet: Fleet, redis_url: str, namespace: str) -> None:
    """Processes whose clocks disagree (one frozen, one an hour ahead) all stay open for
    reset_timeout of the server's time, then all go half-open."""
    results = fleet.run(open_with_skewed_clocks, redis_url, namespace)
    opened = results[0]["opened"]
    for index, r in enumerate(results):
        assert r["open"] is not None, f"process {index} never saw the breaker open"
        assert r["half_open"] is not None, f"process {index} never went half-open (its clock: frozen?)"
    half_open = [r["half_open"] - opened for r in results]
    report("half-open after open (s)", half_open)
    # Not before reset_timeout (less the few milliseconds between the server's clock and ours), and
    # within sync_interval + margin after it.
    assert min(half_open) >= RESET_TIMEOUT - 0.02, half_open
    assert max(half_open) <= RESET_TIMEOUT + PROPAGATION_BOUND, half_open


# --------------------------------------------------------------------------------------------------
# Half-open: at most half_open_max_calls probes fleet-wide; a probe's outcome counts for everyone

PROBES = 2
PROBE_HOLD = 0.15


def probe_storm(index: int, barrier: Any, url: str, ns: str, outcome: str) -> dict[str, Any]:
    registry = redis_registry(url, ns, failure_threshold=1, reset_timeout=0.5, half_open_max_calls=PROBES)
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)
        barrier.wait()
        if index == 0:
            b.try_acquire().failure()
        # Only permits taken once the breaker is open here are probes (before, a closed breaker admits).
        assert poll(lambda: b.state is not State.CLOSED, 5.0) is not None, "the opening never arrived"
        held: list[tuple[float, float]] = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            permit = b.try_acquire()
            if permit is not None:
                start = time.monotonic()
                time.sleep(PROBE_HOLD)
                held.append((start, time.monotonic()))
                permit.ignore()
            time.sleep(0.002)
        barrier.wait()
        # Phase two: process 0 takes a probe and settles it; everyone sees the outcome.
        settled = None
        if index == 0:
            deadline = time.monotonic() + 10.0
            while settled is None and time.monotonic() < deadline:
                permit = b.try_acquire()
                if permit is not None:
                    settled = time.monotonic()
                    permit.success() if outcome == "success" else permit.failure()
                time.sleep(0.002)
            assert settled is not None, "no probe admitted"
        want = State.CLOSED if outcome == "success" else State.OPEN
        seen = poll(lambda: b.state is want, 5.0)
        return {
            "held": held,
            "settled": settled,
            "seen": seen,
            "final": b.state,
            "metrics": repr(b.metrics()),
        }
    finally:
        finish(barrier, registry)


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_probes_are_limited_fleet_wide_and_their_outcome_reaches_everyone(
    fleet: Fleet, redis_url: str, namespace: str, outcome: str
) -> None:
    results = fleet.run(probe_storm, redis_url, namespace, outcome)
    intervals = [i for r in results for i in r["held"]]
    print(f"\nprobes: {len(intervals)} admitted over 2.5 s, at most {most_at_once(intervals)} at once")
    assert intervals, "no probe was ever admitted"
    assert most_at_once(intervals) <= PROBES
    settled = results[0]["settled"]
    missed = [(i, r["final"], r["metrics"]) for i, r in enumerate(results) if r["seen"] is None]
    assert not missed, f"processes that never saw the probe's {outcome}: {missed}"
    delays = [r["seen"] - settled for r in results[1:]]
    report(f"probe {outcome} propagation", delays)
    assert max(delays) <= PROPAGATION_BOUND, delays


#: How long a dead prober's lease may keep the probe slot after its death: a lease lasts
#: probe_timeout, or max(reset_timeout, 1 s) without one (README), then one sync to see it gone.
PROBE_LEASE_BOUND = max(0.3, 1.0) + PROPAGATION_BOUND


def take_probe_and_hang(url: str, ns: str, ready: Any) -> None:
    registry = redis_registry(url, ns, failure_threshold=1, reset_timeout=0.3, half_open_max_calls=1)
    b = registry.breaker(NAME)
    b.try_acquire().failure()
    permit = wait_for_permit(b, 10.0)
    assert permit is not None
    time.sleep(6 * SYNC_INTERVAL)  # the lease is in Redis
    ready.set()
    time.sleep(60)  # killed here, holding the permit


def wait_for_permit(b: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        permit = b.try_acquire()
        if permit is not None:
            return permit
        time.sleep(0.002)
    return None


def test_a_dead_probers_lease_lapses(redis_url: str, namespace: str) -> None:
    """A process killed while holding the only probe slot blocks probes fleet-wide only until its
    lease expires; then another process probes and its success closes the breaker."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    prober = context.Process(target=take_probe_and_hang, args=(redis_url, namespace, ready), daemon=True)
    prober.start()
    registry = redis_registry(
        redis_url, namespace, failure_threshold=1, reset_timeout=0.3, half_open_max_calls=1
    )
    try:
        b = registry.breaker(NAME)
        assert ready.wait(TIMEOUT), "the prober never took its probe"
        os.kill(prober.pid, signal.SIGKILL)
        prober.join(TIMEOUT)
        killed = time.monotonic()
        wait_until(lambda: b.state is State.HALF_OPEN, 5.0, "half-open here")
        assert b.try_acquire() is None, "the dead prober's slot was free at once: no fleet-wide limit"
        permit = wait_for_permit(b, PROBE_LEASE_BOUND + 5.0)
        lapsed = time.monotonic() - killed
        print(f"\ndead prober's lease lapsed after {lapsed:.2f} s")
        assert permit is not None and lapsed <= PROBE_LEASE_BOUND
        permit.success()
        assert b.state is State.CLOSED
    finally:
        close_registry(registry)
        if prober.is_alive():
            prober.kill()
            prober.join(TIMEOUT)


# --------------------------------------------------------------------------------------------------
# Manual control and configure reach every process


def manual_controls(index: int, barrier: Any, url: str, ns: str) -> dict[str, float]:
    """Each step: one process acts, the others poll until they see its effect. Returns, per step,
    when this process acted or saw it (monotonic time)."""
    registry = redis_registry(url, ns, failure_threshold=5, reset_timeout=60.0)
    times: dict[str, float] = {}
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)

        def step(what: str, act: Any, done: Any, actor: int = 0) -> None:
            barrier.wait()
            if index == actor:
                times[what] = time.monotonic()
                act()
                assert done(), f"{what}: not even in the process that did it ({b.state})"
            else:
                seen = poll(done, 5.0)
                assert seen is not None, f"{what} never reached process {index}: {registry.state(NAME)}"
                times[what] = seen
            barrier.wait()

        step("force_open", lambda: registry.force_open(NAME), lambda: b.state is State.FORCED_OPEN)
        step("reset", lambda: registry.reset(NAME), lambda: b.state is State.CLOSED)
        step("disable", lambda: registry.disable(NAME), lambda: b.state is State.DISABLED)
        step("reset again", lambda: registry.reset(NAME), lambda: b.state is State.CLOSED)
        barrier.wait()
        if index == 0:
            registry.configure(NAME, failure_threshold=2)  # was 5
        time.sleep(10 * SYNC_INTERVAL)
        # Two failures in process 1 open the breaker there at once only if the new threshold reached it.
        step(
            "threshold 2",
            lambda: [b.try_acquire().failure() for _ in range(2)],
            lambda: b.state is State.OPEN,
            actor=1,
        )
        step(
            "delete",
            lambda: registry.delete(NAME),
            lambda: NAME not in registry and registry.state(NAME) is State.CLOSED,
        )
        return times
    finally:
        finish(barrier, registry)


def test_manual_control_and_configure_reach_every_process(
    fleet: Fleet, redis_url: str, namespace: str
) -> None:
    """force_open, reset, disable, a numeric configure and delete in one process reach the 7 others."""
    results = fleet.run(manual_controls, redis_url, namespace)
    actors = {"threshold 2": 1}
    for what in results[0]:
        actor = actors.get(what, 0)
        delays = [r[what] - results[actor][what] for i, r in enumerate(results) if i != actor]
        report(what, delays)
        assert max(delays) <= PROPAGATION_BOUND, (what, delays)
