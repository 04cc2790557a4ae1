"""Concurrency (issue 2): 16 threads behind a barrier. No lost updates, an exact half-open storm,
no errors from racing create/delete/reset/call/state/list, re-entrant use, fn once per admission.

Every thread is joined with a timeout, so a deadlock fails the test instead of hanging it."""

from __future__ import annotations

import random
import threading

import panelboard
import pytest
from helpers import TIMEOUT, Boom, CustomBase, fail, fail_n, ok, run_threads
from panelboard import CircuitOpenError, State

pytestmark = pytest.mark.usefixtures("frequent_switches")

THREADS = 16


# --------------------------------------------------------------------------------------------------
# No lost updates


@pytest.mark.parametrize("repeat", range(5))
def test_n_concurrent_failures_against_threshold_n_always_open(api, name, repeat):
    api.call(name, ok, failure_threshold=THREADS, reset_timeout=1000)
    start = threading.Barrier(THREADS, timeout=TIMEOUT)
    inside = threading.Barrier(THREADS, timeout=TIMEOUT)
    raised = []

    def failing():
        inside.wait()  # every call is admitted and in flight before any records its failure
        raise Boom()

    def worker(i):
        start.wait()
        try:
            api.call(name, failing)
        except Boom:
            raised.append(i)

    run_threads(worker)
    assert len(raised) == THREADS
    assert api.state(name) is State.OPEN
    with pytest.raises(CircuitOpenError):
        api.call(name, ok)


def fail_at_once(registry):
    """THREADS threads, released together, each fail one call to "svc"."""
    start = threading.Barrier(THREADS, timeout=TIMEOUT)

    def worker(i):
        start.wait()
        fail_n(registry, "svc", 1)

    run_threads(worker)


@pytest.mark.parametrize("repeat", range(3))
def test_concurrent_failures_without_rendezvous_always_open(registry, repeat):
    registry.call("svc", ok, failure_threshold=THREADS, reset_timeout=1000)
    fail_at_once(registry)
    assert registry.state("svc") is State.OPEN


def test_concurrent_failures_one_short_of_threshold_stay_closed(registry):
    registry.call("svc", ok, failure_threshold=THREADS + 1, reset_timeout=1000)
    fail_at_once(registry)
    assert registry.state("svc") is State.CLOSED
    with pytest.raises(Boom):
        registry.call("svc", fail)
    assert registry.state("svc") is State.OPEN


# --------------------------------------------------------------------------------------------------
# Half-open storm


def _storm(api, name, max_calls):
    """16 threads hit a breaker whose timeout has just run out; returns (admitted, rejections)."""
    start = threading.Barrier(THREADS, timeout=TIMEOUT)
    lock = threading.Lock()
    tried = [0]
    all_tried = threading.Event()
    admitted = []
    rejections = []

    def arrived():
        with lock:
            tried[0] += 1
            if tried[0] == THREADS:
                all_tried.set()

    def probe():
        admitted.append(1)
        arrived()
        # Hold the permit until every thread has tried.
        assert all_tried.wait(TIMEOUT)
        return "probed"

    def worker(i):
        start.wait()
        try:
            assert api.call(name, probe) == "probed"
        except CircuitOpenError as err:
            rejections.append(err)
            arrived()

    run_threads(worker)
    return len(admitted), rejections


@pytest.mark.parametrize("max_calls", [1, 3, 8])
def test_half_open_storm_admits_exactly_max_calls(registry, clock, max_calls):
    with pytest.raises(Boom):
        registry.call("svc", fail, failure_threshold=1, reset_timeout=5, half_open_max_calls=max_calls)
    clock.advance(5)  # the storm arrives the moment the timeout runs out (state not read yet)
    admitted, rejections = _storm(registry, "svc", max_calls)
    assert admitted == max_calls
    assert len(rejections) == THREADS - max_calls
    assert all(err.name == "svc" and err.retry_after == 0.0 for err in rejections)
    assert registry.state("svc") is State.CLOSED


@pytest.mark.parametrize("repeat", range(3))
def test_half_open_storm_default_registry(api, name, repeat):
    with pytest.raises(Boom):
        api.call(name, fail, failure_threshold=1, reset_timeout=0, half_open_max_calls=2)
    admitted, rejections = _storm(api, name, 2)
    assert admitted == 2
    assert len(rejections) == THREADS - 2
    assert api.state(name) is State.CLOSED


def test_half_open_storm_of_failing_probes_reopens_once(registry, clock):
    with pytest.raises(Boom):
        registry.call("svc", fail, failure_threshold=1, reset_timeout=5, half_open_max_calls=4)
    clock.advance(5)
    start = threading.Barrier(THREADS, timeout=TIMEOUT)
    admitted = []

    def probe():
        admitted.append(1)
        raise Boom()

    def worker(i):
        start.wait()
        try:
            registry.call("svc", probe)
        except (Boom, CircuitOpenError):
            pass

    run_threads(worker)
    # The clock does not move: once a probe fails the breaker stays open, so at most 4 ran.
    assert 1 <= len(admitted) <= 4
    assert registry.state("svc") is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        registry.call("svc", ok)
    assert info.value.retry_after == 5.0


# --------------------------------------------------------------------------------------------------
# Everything at once never errors


def _chaos(api, names, ops_per_thread, seed):
    start = threading.Barrier(THREADS, timeout=TIMEOUT)
    states = set(State)

    def worker(i):
        rng = random.Random(seed * 1000 + i)
        start.wait()
        for _ in range(ops_per_thread):
            n = rng.choice(names)
            op = rng.randrange(8)
            if op <= 2:
                outcome = rng.choice(["ok", "fail", "base", "bad"])

                def fn(outcome=outcome):
                    if outcome == "fail":
                        raise Boom()
                    if outcome == "base":
                        raise CustomBase()
                    return outcome

                try:
                    result = api.call(
                        n,
                        fn,
                        failure_threshold=rng.randint(1, 3),
                        reset_timeout=rng.choice([0, 0.001, 1000]),
                        half_open_max_calls=rng.randint(1, 3),
                        success=lambda r: r != "bad",
                    )
                    assert result == outcome
                except (Boom, CustomBase, CircuitOpenError):
                    pass
            elif op == 3:
                assert api.state(n) in states
            elif op == 4:
                assert api.reset(n) is None
            elif op == 5:
                assert api.delete(n) is None
            else:
                for listed_name, listed_state in api.list():
                    assert type(listed_name) is str
                    assert listed_state in states

    run_threads(worker)


def test_concurrent_create_delete_reset_call_state_list_never_errors(registry):
    names = [f"n{i}" for i in range(4)]
    _chaos(registry, names, ops_per_thread=1000, seed=1)
    listing = registry.list()
    assert len({n for n, _ in listing}) == len(listing) == len(registry)
    assert {n for n, _ in listing} <= set(names)
    for n in names:
        registry.reset(n)
        assert registry.state(n) is State.CLOSED
        assert registry.call(n, ok) == "ok"


def test_concurrent_chaos_on_default_registry(name):
    names = [f"{name}-{i}" for i in range(3)]
    try:
        _chaos(panelboard, names, ops_per_thread=500, seed=2)
        listed = [n for n, _ in panelboard.list() if n in names]
        assert len(listed) == len(set(listed))
    finally:
        for n in names:
            panelboard.delete(n)
    assert not {n for n, _ in panelboard.list()} & set(names)


def test_concurrent_create_of_one_name_makes_one_breaker(registry):
    start = threading.Barrier(THREADS, timeout=TIMEOUT)

    def worker(i):
        start.wait()
        # Each thread asks for a different threshold; exactly one creation wins.
        registry.call("svc", ok, failure_threshold=i + 1, reset_timeout=1000)

    run_threads(worker)
    assert registry.list() == [("svc", State.CLOSED)]
    # Whoever won, the threshold is one of theirs and applies to everyone.
    failures = 0
    while registry.state("svc") is State.CLOSED:
        with pytest.raises(Boom):
            registry.call("svc", fail)
        failures += 1
        assert failures <= THREADS
    assert 1 <= failures <= THREADS


# --------------------------------------------------------------------------------------------------
# Re-entrancy and exactly-once


def test_fn_calling_registry_on_same_name_from_many_threads_does_not_deadlock(api, name):
    other = name + "-other"
    start = threading.Barrier(THREADS, timeout=TIMEOUT)

    def worker(i):
        start.wait()
        for _ in range(20):

            def outer():
                assert api.call(name, lambda: "inner") == "inner"
                api.state(name)
                api.list()
                api.reset(name)
                api.call(other, ok)
                if i % 4 == 0:
                    api.delete(name)
                    api.call(name, ok)
                if i % 3 == 1:
                    raise Boom()
                return "outer"

            try:
                assert api.call(name, outer, failure_threshold=2, reset_timeout=0) == "outer"
            except (CircuitOpenError, Boom):
                pass

    try:
        run_threads(worker)
    finally:
        api.delete(other)
    assert api.state(name) in set(State)


def test_fn_runs_exactly_once_per_admitted_call(registry, clock):
    start = threading.Barrier(THREADS, timeout=TIMEOUT)
    per_thread = [dict(runs=0, admitted=0, rejected=0) for _ in range(THREADS)]

    def worker(i):
        rng = random.Random(i)
        stats = per_thread[i]
        start.wait()
        for k in range(200):
            outcome = rng.choice(["ok", "ok", "fail", "base"])
            token = (i, k)

            def fn():
                stats["runs"] += 1
                if outcome == "fail":
                    raise Boom(token)
                if outcome == "base":
                    raise CustomBase(token)
                return token

            try:
                assert registry.call("svc", fn, failure_threshold=3, reset_timeout=0.001) == token
                stats["admitted"] += 1
            except (Boom, CustomBase) as err:
                assert err.args == (token,)
                stats["admitted"] += 1
            except CircuitOpenError:
                stats["rejected"] += 1
            if k % 50 == 0 and i == 0:
                clock.advance(0.001)

    run_threads(worker)
    for stats in per_thread:
        assert stats["runs"] == stats["admitted"]
        assert stats["admitted"] + stats["rejected"] == 200
