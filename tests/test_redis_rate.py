"""Rate rules on the fleet's window, and backed-off open times held in Redis (issue 13).

The multi-process tests run one function in 8 ``multiprocessing`` spawn processes at once
(``helpers.Fleet``), each with its own ``Registry(redis=...)`` on a real ``redis-server``
(``tests/redis_fixtures.py``); times are ``time.monotonic()``, one clock for every process of the
machine. The bounds are the README's "Fleet guarantees" (with the margin of test_redis_fleet.py for
a loaded 2-core machine); the measured values are printed (``pytest -s``) for the docs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from helpers import (
    SYNC_INTERVAL,
    Fleet,
    finish,
    poll,
    redis_registry,
    rejects,
    report,
    sync_status,
    sync_warnings,
    wait_synced,
    wait_until,
)
from panelboard import Registry, State, _core

pytestmark = pytest.mark.usefixtures("redis_server")

FLEET = 8
NAME = "rated"
MARGIN = 0.25
#: Every process rejects within sync_interval plus a round trip once the fleet's window in Redis
#: crosses the threshold; the counts that cross it reach Redis at most one sync_interval after
#: they were recorded (README, Fleet guarantees).
RATE_TRIP_BOUND = 2 * SYNC_INTERVAL + MARGIN
PROPAGATION_BOUND = SYNC_INTERVAL + MARGIN
#: A sync whose Redis reply takes longer than the worker's socket timeout (`_redis.start`: 4 sync
#: intervals, at least 0.25 s) fails: the worker waits out the timeout and a backoff of 2 sync
#: intervals before the next round (README, "Redis is hung or slow"). A 2-core machine running 8
#: processes and the server stalls a reply that long now and then; when a worker of the fleet
#: failed a sync during the measurement, every process is held to this bound instead (the fleet
#: trips only once the counts of the process that failed arrive).
WORKER_TIMEOUT = min(max(4 * SYNC_INTERVAL, 0.25), 5.0)
OUTAGE_BOUND = RATE_TRIP_BOUND + WORKER_TIMEOUT + 2 * SYNC_INTERVAL


def record_until_rejected(b: Any, outcomes: str) -> None:
    """``record``, stopping at the first rejection (a local control breaker that trips)."""
    for outcome in outcomes:
        permit = b.try_acquire()
        if permit is None:
            return
        permit.failure() if outcome == "F" else permit.success()


def record(b: Any, outcomes: str) -> None:
    """One call per letter: ``F`` fails, ``S`` succeeds."""
    for outcome in outcomes:
        permit = b.try_acquire()
        assert permit is not None, f"rejected while recording ({b.state})"
        if outcome == "F":
            permit.failure()
        else:
            permit.success()


def window_key(namespace: str, name: str) -> str:
    return f"{namespace}:{{b{name.encode().hex()}}}:window"


# --------------------------------------------------------------------------------------------------
# The fleet's window trips the breaker when no process's own window would

SPREAD = {
    "failure_threshold": None,
    "failure_rate": 0.5,
    "min_calls": 40,
    "window": 10.0,
    "reset_timeout": 60.0,
}


def failed_syncs(registry: Any) -> int:
    return int(sync_status(registry)["errors"])


def assert_every_process_rejected_in_time(results: list[dict[str, Any]], what: str) -> None:
    """Every process first rejected (``seen``) within the bound after the fleet's last recorded
    call (``done``): `RATE_TRIP_BOUND`, or `OUTAGE_BOUND` when a worker failed a sync between
    the counts and the rejection (``failed``); the delays are reported under ``what``."""
    assert all(r["seen"] is not None for r in results), f"a process never rejected: {results}"
    last = max(r["done"] for r in results)
    delays = [max(r["seen"] - last, 0.0) for r in results]
    report(what, delays)
    failed = sum(r["failed"] for r in results)
    bound = OUTAGE_BOUND if failed else RATE_TRIP_BOUND
    assert max(delays) <= bound, (f"failed syncs: {failed}", delays)


def below_min_calls_each(index: int, barrier: Any, url: str, ns: str) -> dict[str, Any]:
    registry = redis_registry(url, ns, **SPREAD)
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)
        barrier.wait()
        before = failed_syncs(registry)
        # 6 calls, 4 failures: far below min_calls here (a process that starts late may find the
        # breaker already opened by the others' counts).
        record_until_rejected(b, "FSFFSF")
        done = time.monotonic()
        seen = poll(lambda: rejects(b), 5.0)
        failed = failed_syncs(registry) - before
        # The control: the same calls on a local breaker with the same options leave it closed.
        alone = Registry(**SPREAD).breaker(NAME)
        record(alone, "FSFFSF")
        return {"done": done, "seen": seen, "failed": failed, "alone": alone.state}
    finally:
        finish(barrier, registry)


def test_the_fleets_window_trips_when_no_process_alone_would(
    fleet: Fleet, redis_url: str, namespace: str
) -> None:
    """8 processes each record 6 calls, 4 of them failures, with min_calls=40: no process's window
    holds min_calls, the fleet's holds 48 calls at a 67% failure rate, and every process rejects
    soon after the last of them recorded its calls."""
    results = fleet.run(below_min_calls_each, redis_url, namespace)
    assert [r["alone"] for r in results] == [State.CLOSED] * FLEET
    assert_every_process_rejected_in_time(results, "fleet rate trip after the last count")


# --------------------------------------------------------------------------------------------------
# One process's own rate above the threshold does not trip the fleet while the fleet's is under it

MIXED = {
    "failure_threshold": None,
    "failure_rate": 0.5,
    "min_calls": 10,
    "window": 10.0,
    "reset_timeout": 60.0,
}


def one_bad_process(index: int, barrier: Any, url: str, ns: str) -> dict[str, Any]:
    registry = redis_registry(url, ns, **MIXED)
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)
        barrier.wait()
        if index != 0:
            record(b, ("S" * 10 + "F") * 2)  # 22 calls, 2 failures (9%)
        time.sleep(4 * SYNC_INTERVAL)  # in Redis
        barrier.wait()
        result: dict[str, Any] = {}
        if index == 0:
            record(b, "FFFSFFFSFFFSFFFSFFFS")  # 20 calls, 15 failures (75%)
            local = b.metrics()
            result["own"] = (local.window_calls, local.failure_rate)
            # The control: the same calls on a local breaker with the same options trip it.
            alone = Registry(**MIXED).breaker(NAME)
            record_until_rejected(alone, "FFFSFFFSFFFSFFFSFFFS")
            result["alone"] = alone.state
        time.sleep(8 * SYNC_INTERVAL)  # pushed, judged, and back everywhere
        barrier.wait()
        result["under"] = b.state
        barrier.wait()
        before = failed_syncs(registry)
        # Now everyone fails 25 times: the fleet's window (374 calls, 229 failures) crosses 50%.
        record_until_rejected(b, "F" * 25)
        done = time.monotonic()
        seen = poll(lambda: rejects(b), 5.0)
        result.update(done=done, seen=seen, failed=failed_syncs(registry) - before)
        return result
    finally:
        finish(barrier, registry)


def test_one_process_over_the_rate_does_not_trip_the_fleet_under_it(
    fleet: Fleet, redis_url: str, namespace: str
) -> None:
    results = fleet.run(one_bad_process, redis_url, namespace)
    calls, rate = results[0]["own"]
    assert calls >= MIXED["min_calls"] and rate >= MIXED["failure_rate"], results[0]
    assert results[0]["alone"] is State.OPEN, "the control: alone, these calls trip the breaker"
    # The fleet's window: 174 calls, 29 failures (17%): nobody opened.
    assert [r["under"] for r in results] == [State.CLOSED] * FLEET, results
    assert_every_process_rejected_in_time(results, "fleet rate trip once the fleet's rate crossed")


# --------------------------------------------------------------------------------------------------
# Buckets that left the fleet's window no longer count

SHORT = {
    "failure_threshold": None,
    "failure_rate": 0.5,
    "min_calls": 20,
    "window": 1.0,
    "reset_timeout": 60.0,
}
#: Longer than the window (1 s) plus a push.
AGE_OUT = 2.0


def counts_that_age_out(index: int, barrier: Any, url: str, ns: str) -> dict[str, Any]:
    registry = redis_registry(url, ns, **SHORT)
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)
        barrier.wait()
        record(b, "FF")  # the fleet: 16 failures in 16 calls, under min_calls
        time.sleep(AGE_OUT)
        barrier.wait()
        record(b, "FF")  # 16 more: 32 if the first ones still counted
        time.sleep(6 * SYNC_INTERVAL)
        barrier.wait()
        result: dict[str, Any] = {"after_age_out": b.state}
        barrier.wait()
        before = failed_syncs(registry)
        record_until_rejected(b, "F")  # 24 in the window: over min_calls
        done = time.monotonic()
        seen = poll(lambda: rejects(b), 5.0)
        result.update(done=done, seen=seen, failed=failed_syncs(registry) - before)
        return result
    finally:
        finish(barrier, registry)


def test_buckets_that_left_the_fleets_window_no_longer_count(
    fleet: Fleet, redis_url: str, namespace: str, redis_server: Any
) -> None:
    results = fleet.run(counts_that_age_out, redis_url, namespace)
    assert [r["after_age_out"] for r in results] == [State.CLOSED] * FLEET, results
    assert_every_process_rejected_in_time(results, "fleet rate trip, short window")
    # The trip dropped the fleet's window (the open breaker's next window starts empty).
    assert redis_server.admin().exists(window_key(namespace, NAME)) == 0


# --------------------------------------------------------------------------------------------------
# A backed-off, jittered open period: every process reports (and keeps to) the one held in Redis

BACKOFF = {
    "failure_threshold": 1,
    "reset_timeout": 0.4,
    "backoff": 3.0,
    "jitter": 0.25,
    "max_reset_timeout": 30.0,
    "half_open_max_calls": 1,
}


def fail_a_probe(b: Any, timeout: float = 10.0) -> float:
    """Takes a probe (once the fleet grants a lease here) and fails it; returns when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        permit = b.try_acquire()
        if permit is not None:
            failed = time.monotonic()
            permit.failure()
            return failed
        time.sleep(0.002)
    raise AssertionError("no probe was admitted")


def reopen_period(b: Any, barrier: Any, prober: bool) -> dict[str, Any]:
    """One reopening: the prober fails a probe, everyone reads when its open period ends (by its
    retry_after) and then waits for the end."""
    failed = fail_a_probe(b) if prober else None
    barrier.wait()
    # The reopening reached this process: open again, for longer than reset_timeout (the period
    # before it lasted at most that). A process that reported at most reset_timeout (each
    # process's own cap) never gets past this.
    poll(lambda: b.state is State.OPEN and b.metrics().retry_after > BACKOFF["reset_timeout"], 5.0)
    state = b.state
    read = time.monotonic()
    retry_after = b.metrics().retry_after
    half_open = poll(lambda: b.state is State.HALF_OPEN, 10.0)
    barrier.wait()
    return {"failed": failed, "state": state, "end": read + retry_after, "half_open": half_open}


def backed_off_periods(index: int, barrier: Any, url: str, ns: str) -> list[dict[str, Any]]:
    registry = redis_registry(url, ns, **BACKOFF)
    try:
        b = registry.breaker(NAME)
        wait_synced(registry)
        barrier.wait()
        if index == 0:
            record(b, "F")  # the trip: open for at most 0.4 s
        assert poll(lambda: b.state is not State.CLOSED, 5.0) is not None, "the opening never arrived"
        # The 1st reopen (process 0's probe): 0.4 * 3 = 1.2 s, jittered into [0.9, 1.2].
        first = reopen_period(b, barrier, index == 0)
        # The 2nd (process 1's probe, a process that never reopened it before): 0.4 * 9 = 3.6 s,
        # jittered into [2.7, 3.6], only if process 1 backs off from the fleet's count.
        second = reopen_period(b, barrier, index == 1)
        return [first, second]
    finally:
        finish(barrier, registry)


def test_every_process_reports_the_backed_off_period_held_in_redis(
    fleet: Fleet, redis_url: str, namespace: str
) -> None:
    results = fleet.run(backed_off_periods, redis_url, namespace)
    for period, (prober, shortest) in enumerate([(0, 0.9), (1, 2.7)]):
        rows = [r[period] for r in results]
        failed = rows[prober]["failed"]
        assert [r["state"] for r in rows] == [State.OPEN] * FLEET, rows
        ends = [r["end"] - failed for r in rows]
        report(f"reopen {period + 1}: open period by each process's retry_after", ends)
        print(f"reopen {period + 1}: the processes' ends spread over {(max(ends) - min(ends)) * 1000:.1f} ms")
        # Longer than reset_timeout everywhere (the drawn, backed-off time), and the same one: a
        # process that drew its own would be up to 0.3 / 0.9 s off, one that capped it at
        # reset_timeout 0.5 / 2.3 s.
        assert min(ends) >= shortest - 0.05, ends
        assert max(ends) - min(ends) <= 0.1, ends
        # Kept to: no process goes half-open before the period ends, each within a sync after.
        for r in rows:
            assert r["half_open"] is not None, rows
            assert r["half_open"] >= min(r["end"] for r in rows) - 0.05, rows
            assert r["half_open"] <= max(r["end"] for r in rows) + PROPAGATION_BOUND, rows


# --------------------------------------------------------------------------------------------------
# Garbage in the fleet's window (one process)


GARBAGE_OPTIONS = {"failure_threshold": None, "failure_rate": 0.5, "min_calls": 10, "window": 1.0}


def write_window_garbage(admin: Any, key: str, state_key: str, kind: str) -> None:
    seconds, micros = admin.time()
    index = (int(seconds) * 1000 + int(micros) // 1000) // 100  # buckets of 100 ms
    generation = admin.hget(state_key, "g")
    if kind == "wrong-type":
        admin.delete(key)
        admin.rpush(key, "garbage")
    elif kind == "too-many-fields":
        admin.hset(key, mapping={f"f{index - i}": 1000 for i in range(500)})
    elif kind == "bad-header":
        admin.hset(key, mapping={"g": "not a generation", "w": "0", f"f{index}": 1000})
    else:  # bad counts under the fleet's own generation and width: each would trip it if trusted
        fields: dict[str, Any] = {"g": generation, "w": 100, "junk": "1"}
        for i in range(4):
            fields[f"f{index + 1 - i}"] = "lots \xff"
            fields[f"c{index + 1 - i}"] = "-3"
            fields[f"s{index + 1 - i}"] = "1.5"
        admin.hset(key, mapping=fields)
    admin.pexpire(key, 60_000)


@pytest.mark.parametrize("kind", ["bad-counts", "bad-header", "wrong-type", "too-many-fields"])
def test_garbage_in_the_fleets_window_is_ignored_with_one_warning(
    redis_server: Any, namespace: str, registries: Any, records: list[logging.LogRecord], kind: str
) -> None:
    a = registries(redis_server.url, namespace, **GARBAGE_OPTIONS)
    b = a.breaker(NAME)
    record(b, "S")
    wait_synced(a)
    admin = redis_server.admin()
    state_key = f"{namespace}:{{b{NAME.encode().hex()}}}"
    for _ in range(3):  # written again and again while the worker runs
        write_window_garbage(admin, window_key(namespace, NAME), state_key, kind)
        record(b, "SSSSS")
        time.sleep(4 * SYNC_INTERVAL)
    assert b.state is State.CLOSED, "garbage counts were trusted"
    assert a.sync_status()["connected"]
    warnings = [r for r in sync_warnings(records) if "malformed" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    # The window works again: the next failures trip the fleet (40 failures: over the rate even
    # if the 16 successes above were still in the window, on a machine so loaded that their push
    # came late).
    record(b, "SSSSS" + "F" * 40)
    wait_until(lambda: b.state is State.OPEN, 5.0, "the fleet's window tripped after the garbage")


# --------------------------------------------------------------------------------------------------
# A numeric configure of the trip-policy options in one process reaches every process

BEFORE = {
    "failure_threshold": None,
    "failure_rate": 0.9,
    "min_calls": 1000,
    "window": 10.0,
    "reset_timeout": 0.3,
    "half_open_max_calls": 1,
}
AFTER = {"failure_rate": 0.5, "min_calls": 12, "backoff": 4.0}


def configured_elsewhere(index: int, barrier: Any, url: str, ns: str) -> dict[str, Any]:
    registry = redis_registry(url, ns, **BEFORE)
    try:
        # One breaker per process, each published by all before anyone configures it (a breaker
        # configured before its first sync adopts the fleet's options: the first creation wins).
        mine = registry.breaker(f"{NAME}{index}")
        for other in range(FLEET):
            registry.breaker(f"{NAME}{other}")
        wait_synced(registry)
        barrier.wait()
        if index == 0:
            for other in range(FLEET):
                registry.configure(f"{NAME}{other}", **AFTER)
        time.sleep(8 * SYNC_INTERVAL)  # pushed, and applied everywhere
        barrier.wait()
        # The options this process now runs with (the worker's private read).
        policy = _core._fleet_read(mine)[6][6]
        options = {"failure_rate": policy[0], "min_calls": policy[4], "backoff": policy[5]}
        # 12 calls, 6 of them failures, in this process only: the fleet's window (judged in Redis
        # by the stored options) trips the breaker only under the new ones.
        record(mine, "SF" * 6)
        tripped = poll(lambda: rejects(mine), 5.0) is not None
        alone = Registry(**BEFORE).breaker(NAME)
        record(alone, "SF" * 6)
        # A failed probe reopens it for reset_timeout * backoff: this process's own draw, from its
        # own options.
        reopened = None
        if tripped and poll(lambda: mine.state is State.HALF_OPEN, 5.0) is not None:
            fail_a_probe(mine)
            reopened = mine.metrics().retry_after
        return {"options": options, "tripped": tripped, "alone": alone.state, "reopened": reopened}
    finally:
        finish(barrier, registry)


def test_a_configure_of_the_rate_options_reaches_every_process(
    fleet: Fleet, redis_url: str, namespace: str
) -> None:
    results = fleet.run(configured_elsewhere, redis_url, namespace)
    assert [r["alone"] for r in results] == [State.CLOSED] * FLEET, "the control: the old options hold"
    assert [r["options"] for r in results] == [AFTER] * FLEET, results
    assert [r["tripped"] for r in results] == [True] * FLEET, results
    # 0.3 s * 4 = 1.2 s (0.3 s under the old backoff of 1).
    assert all(r["reopened"] is not None and r["reopened"] >= 1.0 for r in results), results


# --------------------------------------------------------------------------------------------------
# Garbage in the state hash's trip-policy fields (one process)

POLICY_GARBAGE = {
    "not-a-number": {"fr": "half"},
    "out-of-range": {"mc": "0", "w": "-1"},
    "a-float": {"bo": "1.5"},
    "no-trip-rule": {"ft": "-1", "fr": "-1", "sr": "-1"},
    "rate-without-duration": {"sr": "500000000", "sd": "-1"},
}


@pytest.mark.parametrize("kind", sorted(POLICY_GARBAGE))
def test_garbage_in_the_fleets_rate_options_is_ignored_with_one_warning(
    redis_server: Any, namespace: str, registries: Any, records: list[logging.LogRecord], kind: str
) -> None:
    a = registries(redis_server.url, namespace, **GARBAGE_OPTIONS)
    b = a.breaker(NAME)
    record(b, "S")
    wait_synced(a)
    admin = redis_server.admin()
    state_key = f"{namespace}:{{b{NAME.encode().hex()}}}"
    assert admin.hget(state_key, "fr") == b"500000000", "failure_rate 0.5 is stored in billionths"
    for _ in range(3):  # written again and again while the worker runs
        admin.hset(state_key, mapping=POLICY_GARBAGE[kind])
        record(b, "SSSSS")
        time.sleep(4 * SYNC_INTERVAL)
    assert b.state is State.CLOSED
    assert a.sync_status()["connected"]
    warnings = [r for r in sync_warnings(records) if "malformed" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    # Re-published from this process's options, which the garbage never changed: by the worker's
    # next round after the last garbage, which on a loaded machine can come later than the four
    # intervals slept above (CI's 3.13t leg once read the garbage still there).
    published = [b"500000000", b"10", b"1000000", b"1000000", b"-1"]
    wait_until(
        lambda: admin.hmget(state_key, ["fr", "mc", "w", "bo", "sr"]) == published,
        5.0,
        "this process's options re-published over the garbage",
    )
    record(b, "SSSSS" + "F" * 40)
    wait_until(lambda: b.state is State.OPEN, 5.0, "the fleet's window tripped after the garbage")
