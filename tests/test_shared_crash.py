"""Crash safety of shared tables (issue 12): a process killed with SIGKILL at any point (holding a
half-open permit, creating or deleting a name, in a transition) wedges neither a breaker nor the
table. Killed probes are reclaimed after ``probe_timeout`` (finite on every shared breaker: see
docs/shared-memory.md), half-created names are recovered, and names can still be created, used and
deleted afterwards.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from helpers import Boom, Worker, fail, start_workers, stop_workers
from panelboard import Registry, State

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX shared memory and fork")

PROBE_TIMEOUT = 1.0
RESET_TIMEOUT = 0.05
OPTIONS = dict(failure_threshold=1, reset_timeout=RESET_TIMEOUT, probe_timeout=PROBE_TIMEOUT)
NAMES = [f"n{i}" for i in range(6)] + ["long-" + "x" * 500]
CHURN_NAMES = [f"churn-{k}-" + "y" * (k * 20) for k in range(20)]

# Run in a worker until it is killed: every kind of operation on a few names, many transitions,
# creations and deletions of names (long ones too: their creation takes longer), permits taken and
# never settled. The names come from a fixed set (27 of them): a deleted name keeps its slot for
# its own re-creation (docs/shared-memory.md), so only the slots lost to killed creations, at most
# one per kill, may be missing from the table's 256 afterwards.
CHAOS = """
import random
rng = random.Random({seed})
names = {names!r}
held = []
while True:
    name = rng.choice(names)
    op = rng.random()
    try:
        if op < 0.15:
            registry.delete(name)
        elif op < 0.35:
            p = registry.breaker(name).try_acquire()
            if p is not None:
                held.append(p)  # the process dies holding it
        elif op < 0.6:
            registry.call(name, fail)
        elif op < 0.75:
            registry.call(name, lambda: None)
        elif op < 0.8:
            registry.reset(name)
        elif op < 0.85:
            registry.list()
        else:
            churn = rng.choice({churn!r})
            registry.breaker(churn)
            registry.delete(churn)
    except (Boom, panelboard.CircuitOpenError):
        pass
"""


def admits_again(registry: Registry, name: str, within: float) -> bool:
    """Whether ``name`` lets a call through and closes after one success, within ``within`` s."""
    b = registry.breaker(name)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        permit = b.try_acquire()
        if permit is not None:
            permit.success()
            if b.state is State.CLOSED:
                return True
        time.sleep(0.01)
    return False


def test_a_killed_probe_is_reclaimed_after_probe_timeout(table):
    registry = Registry(shared=table, **OPTIONS)
    holder = start_workers("fork", table, 1, **OPTIONS)[0]
    try:
        with pytest.raises(Boom):
            registry.call("dep", fail)
        time.sleep(RESET_TIMEOUT * 2)
        assert holder.exec("p = registry.breaker('dep').try_acquire()\nresult = p is not None") is True
        holder.kill()  # SIGKILL while holding the only probe permit
        assert registry.breaker("dep").try_acquire() is None, "the permit is still out"
        assert admits_again(registry, "dep", PROBE_TIMEOUT + 5.0)
    finally:
        stop_workers([holder])


def test_workers_killed_at_random_points_wedge_nothing(table):
    capacity = 256
    registry = Registry(shared=table, capacity=capacity, **OPTIONS)
    rng = random.Random(2024)
    rounds, per_round = 12, 4
    for round_ in range(rounds):
        workers = [Worker("fork", table, capacity=capacity, **OPTIONS) for _ in range(per_round)]
        try:
            for i, w in enumerate(workers):
                w.started()
                w.send("exec", CHAOS.format(seed=round_ * 100 + i, names=NAMES, churn=CHURN_NAMES))
            time.sleep(rng.uniform(0.02, 0.15))
            for w in rng.sample(workers, len(workers)):
                w.kill()
                time.sleep(rng.uniform(0, 0.01))
        finally:
            stop_workers(workers)

    # Every invariant, in a process that did not take part.
    every_name = NAMES + CHURN_NAMES
    listed = [n for n, _ in registry.list()]
    assert len(listed) == len(set(listed)) <= len(every_name), "no name twice, no stray slot"
    assert set(listed) <= set(every_name), listed
    for name in NAMES:
        assert admits_again(registry, name, RESET_TIMEOUT + PROBE_TIMEOUT + 5.0), (
            f"{name} is wedged: {registry.breaker(name).metrics()}"
        )
    # Every name can be created, used and deleted; new names get slots.
    for name in every_name + [f"after-{i}" for i in range(20)]:
        b = registry.breaker(name)
        assert b.shared is True, f"{name!r} fell back to a local breaker: the table leaked slots"
        assert b.call(lambda: 1) == 1
        registry.delete(name)
    assert registry.list() == []

    checker = Worker("spawn", table).started()
    try:
        assert checker.exec(
            "registry.call('from-a-fresh-process', lambda: None)\n"
            "result = registry.breaker('from-a-fresh-process').shared"
        )
    finally:
        stop_workers([checker])
    assert registry.state("from-a-fresh-process") is State.CLOSED
    assert "from-a-fresh-process" in dict(registry.list())
