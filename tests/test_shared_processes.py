"""One breaker per name for every process on a host (issue 12), shown with real processes.

Each test opens a table of its own (the ``table`` fixture: a unique name, unlinked afterwards) and
starts worker processes (``helpers.Worker``: spawned or forked, each with ``Registry(shared=table)``)
that run the code the test sends them. Every wait is bounded, and every worker is stopped (killed if
it does not stop) before the test ends.
"""

from __future__ import annotations

import logging
import os
import time

import panelboard
import pytest
from helpers import (
    Boom,
    fail,
    fork_and_check,
    names_of,
    start_workers,
    stop_workers,
)
from panelboard import CircuitOpenError, ManualClock, Registry, State

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX shared memory and fork")

METHODS = ["spawn", "fork"]

# Run in a worker: one failed call through `name`; "failed", or "rejected" (fn not run).
FAIL_ONCE = """
try:
    registry.call({name!r}, fail)
    result = "succeeded"
except Boom:
    result = "failed"
except panelboard.CircuitOpenError:
    result = "rejected"
"""

# Run in a worker: a call that would record that it ran; ("rejected", retry_after > 0, ran) or "admitted".
TRY_CALL = """
ran = []
try:
    registry.call({name!r}, lambda: ran.append(1))
    result = ("admitted", ran)
except panelboard.CircuitOpenError as err:
    result = ("rejected", err.retry_after > 0, ran)
"""


def state_in(worker, name: str) -> str:
    return worker.eval(f"registry.state({name!r}).value")


@pytest.mark.parametrize("method", METHODS)
def test_failures_spread_over_four_processes_open_at_the_fifth(method, table):
    workers = start_workers(method, table, 4, failure_threshold=5, reset_timeout=60.0)
    try:
        for failure in range(1, 5):
            assert workers[(failure - 1) % 4].exec(FAIL_ONCE.format(name="dep")) == "failed"
            assert [state_in(w, "dep") for w in workers] == ["closed"] * 4, f"after {failure} failures"
        assert workers[0].exec(FAIL_ONCE.format(name="dep")) == "failed"  # the 5th, host-wide
        assert [state_in(w, "dep") for w in workers] == ["open"] * 4
        for w in workers:
            assert w.exec(TRY_CALL.format(name="dep")) == ("rejected", True, [])
        # The counters are one, whoever recorded them.
        for w in workers:
            m = w.eval("metrics(registry.breaker('dep').metrics())")
            assert (m.failures, m.rejected, m.times_opened, m.successes) == (5, 4, 1, 0)
            assert w.eval("registry.breaker('dep').shared") is True
    finally:
        stop_workers(workers)


def test_a_success_in_one_process_resets_the_count_of_all(table):
    workers = start_workers("fork", table, 2, failure_threshold=3, reset_timeout=60.0)
    try:
        for w in workers:
            assert w.exec(FAIL_ONCE.format(name="dep")) == "failed"
        assert workers[1].eval("registry.call('dep', lambda: 'fine')") == "fine"
        for w in workers:
            assert w.exec(FAIL_ONCE.format(name="dep")) == "failed"
        assert [state_in(w, "dep") for w in workers] == ["closed", "closed"]
        assert workers[0].exec(FAIL_ONCE.format(name="dep")) == "failed"
        assert [state_in(w, "dep") for w in workers] == ["open", "open"]
    finally:
        stop_workers(workers)


# Run in a worker: 4 threads take every permit they can between `start` and `end` (monotonic
# seconds, one clock for the host) and keep them; the result is how many each got.
STORM = """
import threading
b = registry.breaker("dep")
held = []
held_lock = threading.Lock()
rejected = [0]
def storm():
    while time.monotonic() < {start}:
        pass
    while time.monotonic() < {end}:
        p = b.try_acquire()
        if p is None:
            rejected[0] += 1
        else:
            with held_lock:
                held.append(p)
threads = [threading.Thread(target=storm) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
result = (len(held), rejected[0])
"""


@pytest.mark.parametrize("probes", [1, 3])
def test_eight_processes_of_four_threads_get_exactly_half_open_max_calls_probes(table, probes):
    options = dict(failure_threshold=1, reset_timeout=0.5, half_open_max_calls=probes, probe_timeout=120.0)
    registry = Registry(shared=table, **options)
    workers = start_workers("fork", table, 8, **options)
    try:
        with pytest.raises(Boom):
            registry.call("dep", fail)
        opened = time.monotonic()
        assert registry.state("dep") is State.OPEN
        # The storm starts while the breaker is still open and goes on well past its reset timeout,
        # so that the open -> half-open change itself happens under it.
        start, end = opened + 0.3, opened + 1.5
        for w in workers:
            w.send("exec", STORM.format(start=start, end=end))
        results = [w.answer(60.0, "the storm") for w in workers]
        admitted = sum(n for n, _ in results)
        assert admitted == probes, f"probes host-wide: {results}"
        assert sum(r for _, r in results) > 0
        assert registry.state("dep") is State.HALF_OPEN
        assert registry.breaker("dep").try_acquire() is None
        # The probes' successes (in whichever processes hold them) close it for everyone.
        for w in workers:
            w.exec("for p in held:\n    p.success()\nheld.clear()")
        assert registry.state("dep") is State.CLOSED
        assert {state_in(w, "dep") for w in workers} == {"closed"}
    finally:
        stop_workers(workers)


def test_a_registry_opened_before_fork_keeps_working_shared_in_the_children(table):
    registry = Registry(shared=table, failure_threshold=4, reset_timeout=60.0)
    b = registry.breaker("dep")
    with pytest.raises(Boom):
        b.call(fail)

    for child in range(3):

        def child_checks(child=child):
            assert b.shared is True
            assert b.metrics().failures == 1 + child, "the child sees the failures recorded so far"
            with pytest.raises(Boom):
                b.call(fail)  # through the inherited handle
            assert registry.call(f"made-in-child-{child}", lambda: child) == child
            assert registry.state("dep") is (State.OPEN if child == 2 else State.CLOSED)

        fork_and_check(child_checks)

    # The children's failures and names are the parent's.
    assert b.metrics().failures == 4
    assert b.state is State.OPEN  # 1 + 3 children's failures = failure_threshold
    assert {f"made-in-child-{i}" for i in range(3)} <= names_of(registry)

    def child_sees_open():
        with pytest.raises(CircuitOpenError):
            b.call(lambda: None)
        registry.reset("dep")

    fork_and_check(child_sees_open)
    assert b.state is State.CLOSED, "a reset in a child reaches the parent"


def test_listeners_hear_other_processes_transitions_once_when_first_observed(table):
    events = []
    reset_timeout = 2.0  # room for the checks made while it is open, on a busy machine
    options = dict(failure_threshold=1, reset_timeout=reset_timeout, probe_timeout=60.0)
    registry = Registry(shared=table, **options)
    registry.on_state_change(lambda name, old, new: events.append((name, old, new)))
    a, b = start_workers("spawn", table, 2, **options)
    try:
        registry.call("dep", lambda: None)
        b.eval("registry.call('dep', lambda: None)")
        assert a.exec(FAIL_ONCE.format(name="dep")) == "failed"
        opened = time.monotonic()
        assert a.eval("events") == [("dep", "closed", "open")], "heard by the process that made it"
        assert b.eval("events") == [], "not observed yet"
        assert events == []
        # Observed: once, whichever way, however often.
        assert b.eval("registry.state('dep').value") == "open"
        assert b.eval("(registry.list(), metrics(registry.breaker('dep').metrics()), registry.state('dep'))")
        assert b.eval("events") == [("dep", "closed", "open")]
        assert registry.snapshot()["dep"].state is State.OPEN
        assert registry.state("dep") is State.OPEN
        assert events == [("dep", State.CLOSED, State.OPEN)]
        assert time.monotonic() < opened + reset_timeout, "too slow to check the open state in time"
        # The lazy open -> half-open change: each process reports it when it first observes it.
        time.sleep(max(0.0, opened + reset_timeout + 0.05 - time.monotonic()))
        assert b.eval("registry.state('dep').value") == "half_open"
        assert b.eval("registry.list()") and b.eval("events")[1:] == [("dep", "open", "half_open")]
        assert a.eval("events")[1:] == [], "a has not looked yet"
        assert registry.state("dep") is State.HALF_OPEN
        assert events[1:] == [("dep", State.OPEN, State.HALF_OPEN)]
        # A probe success in a closes it; b hears it on its next call.
        assert a.eval("registry.call('dep', lambda: 'probe')") == "probe"
        assert a.eval("events") == [
            ("dep", "closed", "open"),
            ("dep", "open", "half_open"),
            ("dep", "half_open", "closed"),
        ]
        assert b.eval("registry.call('dep', lambda: 1)") == 1
        assert b.eval("events")[2:] == [("dep", "half_open", "closed")]
        registry.state("dep")
        registry.state("dep")
        assert events[2:] == [("dep", State.HALF_OPEN, State.CLOSED)]
    finally:
        stop_workers([a, b])


def test_numeric_options_are_shared_and_first_creation_wins(table):
    a, b = start_workers("fork", table, 2)
    try:
        a.exec("registry.breaker('dep', failure_threshold=3, reset_timeout=600.0)")
        b.exec("registry.breaker('dep', failure_threshold=10, reset_timeout=1.0)")  # validated, ignored
        for _ in range(3):
            assert b.exec(FAIL_ONCE.format(name="dep")) == "failed"
        assert state_in(a, "dep") == "open", "a's failure_threshold=3 applies to b's failures"
        retry_after = b.eval("metrics(registry.breaker('dep').metrics()).retry_after")
        assert retry_after > 500.0, "a's reset_timeout=600 applies in b"
        # configure in one process changes the option for every process.
        b.exec("registry.configure('dep', failure_threshold=2)")
        a.eval("registry.reset('dep')")
        assert a.exec(FAIL_ONCE.format(name="dep")) == "failed"
        assert state_in(b, "dep") == "closed"
        assert a.exec(FAIL_ONCE.format(name="dep")) == "failed"
        assert state_in(b, "dep") == "open"
        # Registry defaults are numeric options for the names that process creates.
    finally:
        stop_workers([a, b])


def test_python_object_options_are_per_process(table):
    a, b = start_workers("fork", table, 2, failure_threshold=1, reset_timeout=600.0)
    try:
        a.exec("registry.configure('dep', success=lambda r: r != 'bad', failure_on=(Boom, KeyError))")
        # b has no predicate: "bad" is a success there, and a KeyError is a failure (Exception).
        assert b.eval("registry.call('dep', lambda: 'bad')") == "bad"
        assert state_in(a, "dep") == "closed"
        assert (
            b.exec("try:\n    registry.call('dep', lambda: {}['x'])\nexcept KeyError:\n    result = 1") == 1
        )
        assert state_in(a, "dep") == "open"
        a.eval("registry.reset('dep')")
        b.exec("registry.configure('dep', failure_on=KeyError)")
        # In b a Boom is not a failure any more (ignored), in a it still is.
        assert b.exec(FAIL_ONCE.format(name="dep")) == "failed"  # propagates, counted as ignored
        assert state_in(a, "dep") == "closed"
        assert a.eval("registry.call('dep', lambda: 'bad')") == "bad"  # a's predicate: a failure
        assert state_in(b, "dep") == "open"
        m = b.eval("metrics(registry.breaker('dep').metrics())")
        assert (m.successes, m.failures, m.ignored) == (1, 2, 1)
    finally:
        stop_workers([a, b])


def test_manual_clock_cannot_be_shared(table):
    with pytest.raises(TypeError, match="clock|ManualClock"):
        Registry(shared=table, clock=ManualClock())
    assert panelboard.unlink_shared(table) is False, "nothing was created"


def test_shared_must_be_a_str(table):
    for bad in (b"bytes", 3, ""):
        with pytest.raises((TypeError, ValueError), match="shared"):
            Registry(shared=bad)
    for bad in (0, -1, 1.5, "8", True):
        with pytest.raises((TypeError, ValueError), match="capacity"):
            Registry(shared=table, capacity=bad)
    for bad in (-1, 0o10000, "600", 1.0):
        with pytest.raises((TypeError, ValueError), match="mode"):
            Registry(shared=table, mode=bad)
    assert panelboard.unlink_shared(table) is False, "bad input created nothing"


def test_breaker_shared_tells_where_the_breaker_lives(table):
    assert Registry().breaker("local").shared is False
    registry = Registry(shared=table)
    assert registry.breaker("dep").shared is True
    assert registry.shared == table and Registry().shared is None


def test_the_module_level_api_stays_on_the_process_default_registry(table, name):
    """The module-level functions use the default registry, which is per process (the README says
    to make a shared ``Registry``); opening a shared one changes nothing there."""
    Registry(shared=table).force_open(name)
    assert panelboard.default_registry().shared is None
    assert panelboard.breaker(name).shared is False
    assert panelboard.state(name) is State.CLOSED
    assert panelboard.call(name, lambda: 1) == 1


def test_a_full_table_falls_back_to_process_local_breakers_with_one_warning(table, caplog):
    caplog.set_level(logging.DEBUG, logger="panelboard")
    capacity = 4
    registry = Registry(shared=table, capacity=capacity, failure_threshold=1, reset_timeout=600.0)
    handles = [registry.breaker(f"n{i}") for i in range(capacity)]
    assert [h.shared for h in handles] == [True] * capacity
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    extra = registry.breaker("extra")  # nothing raises
    assert extra.shared is False
    for _ in range(3):
        registry.call("extra", lambda: None)
        registry.breaker("extra")
    warnings = [r for r in caplog.records if r.name == "panelboard" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "extra" in warnings[0].getMessage() or table in warnings[0].getMessage()

    # The fallback is a working breaker of this process only.
    with pytest.raises(Boom):
        extra.call(fail)
    assert registry.state("extra") is State.OPEN
    assert "extra" in names_of(registry)

    def child_checks():
        other = Registry(shared=table, capacity=capacity)
        assert other.state("extra") is State.CLOSED, "another process does not see a local breaker"
        assert other.breaker("n0").shared is True

    fork_and_check(child_checks)

    # A deleted name created again gets its shared slot back, fresh.
    with pytest.raises(Boom):
        registry.call("n0", fail)
    registry.delete("n0")
    again = registry.breaker("n0")
    assert again.shared is True
    assert again.state is State.CLOSED and again.metrics().failures == 0


def test_names_of_any_length_and_characters_are_distinct_breakers_in_every_process(table):
    names = [
        "",
        "a",
        "a" * 128,
        "a" * 129,
        "a" * 255,
        "a" * 256,
        "a" * 10_000,
        "a" * 10_000 + "b",
        "with\x00nul",
        "with\x00nul\x00",
        "emoji 🔌⚡",
        "日本語",
        "/looks/like/a/path",
        "x" * 300 + "🔌",
    ]
    registry = Registry(shared=table, failure_threshold=1, reset_timeout=600.0)
    for index, name in enumerate(names):
        if index % 2 == 0:
            with pytest.raises(Boom):
                registry.call(name, fail)
        else:
            registry.call(name, lambda: None)
    assert all(registry.breaker(n).shared for n in names)
    expected = {n: (State.OPEN if i % 2 == 0 else State.CLOSED) for i, n in enumerate(names)}

    def child_checks():
        other = Registry(shared=table)
        # Names over 128 bytes too: the table keeps them whole while its name heap has room.
        assert dict(other.list()) == expected, "names read back exactly, states kept apart"
        for name, state in expected.items():
            assert other.state(name) is state, name[:20]
        other.delete("a" * 10_000)
        assert other.state("a" * 10_000 + "b") is State.CLOSED

    fork_and_check(child_checks)
    assert "a" * 10_000 not in names_of(registry)
    assert len(registry.list()) == len(names) - 1


def test_long_names_work_when_the_name_heap_is_full(table):
    """Two slots keep 512 bytes of long names: the second 400-byte name does not fit. It is still a
    shared breaker, found by its full name in every process; only listing it elsewhere shows its
    first bytes (docs/shared-memory.md)."""
    first, second = "f" * 400, "s" * 400
    registry = Registry(shared=table, capacity=2, failure_threshold=1, reset_timeout=600.0)
    registry.call(first, lambda: None)
    with pytest.raises(Boom):
        registry.call(second, fail)
    assert registry.breaker(second).shared is True
    assert sorted(n for n, _ in registry.list()) == [first, second], "its creator knows the name"

    def child_checks():
        other = Registry(shared=table)
        listed = dict(other.list())
        assert listed[first] is State.CLOSED
        (shown,) = set(listed) - {first}
        assert shown.startswith("s" * 80) and shown.endswith("…") and listed[shown] is State.OPEN
        assert other.state(second) is State.OPEN
        other.reset(second)
        other.delete(first)

    fork_and_check(child_checks)
    assert registry.state(second) is State.CLOSED
    assert [n for n, _ in registry.list()] == [second]


def test_names_with_lone_surrogates_are_kept_exactly_as_on_a_local_registry(table):
    """A local registry takes any ``str`` as a name, lone surrogates included; so does a shared one,
    and names that differ only there are different breakers in every process."""
    names = ["lone \ud800", "lone \udc80", "lone ", "\udfff" * 200]
    registry = Registry(shared=table, failure_threshold=1, reset_timeout=600.0)
    with pytest.raises(Boom):
        registry.call(names[0], fail)
    for name in names[1:]:
        registry.call(name, lambda: None)
    assert all(registry.breaker(n).shared for n in names)

    def child_checks():
        other = Registry(shared=table)
        assert sorted(n for n, _ in other.list()) == sorted(names)
        assert other.state(names[0]) is State.OPEN
        assert [other.state(n) for n in names[1:]] == [State.CLOSED] * 3

    fork_and_check(child_checks)


def test_a_small_table_keeps_colliding_names_apart(table):
    """With as many names as slots every probe sequence collides; each name stays its own breaker."""
    capacity = 8
    registry = Registry(shared=table, capacity=capacity, failure_threshold=1, reset_timeout=600.0)
    names = [f"collide-{i}" for i in range(capacity)]
    for i, name in enumerate(names):
        if i % 2:
            with pytest.raises(Boom):
                registry.call(name, fail)
        else:
            registry.call(name, lambda: None)
    assert all(registry.breaker(n).shared for n in names)

    def child_checks():
        other = Registry(shared=table, capacity=capacity)
        assert {n: s for n, s in other.list()} == {
            n: State.OPEN if i % 2 else State.CLOSED for i, n in enumerate(names)
        }
        for name in names[::2]:
            other.delete(name)

    fork_and_check(child_checks)
    assert {n for n, _ in registry.list()} == set(names[1::2])
    for name in names[::2]:  # re-created in their own slots, fresh
        again = registry.breaker(name)
        assert again.shared is True and again.metrics().calls == 0


def test_a_table_outlives_its_processes_until_unlinked(table):
    def child_checks():
        Registry(shared=table, failure_threshold=1, reset_timeout=600.0).force_open("kept")

    fork_and_check(child_checks)
    assert Registry(shared=table).state("kept") is State.FORCED_OPEN
    assert panelboard.unlink_shared(table) is True
    assert Registry(shared=table).state("kept") is State.CLOSED, "a new table after unlink"
    assert panelboard.unlink_shared(table) is True
    assert panelboard.unlink_shared(table) is False
