"""Where shared-memory tables (issue 12) meet the other features: trip policies (issue 11: the
sliding window lives in the table's slot, so the failure rate is the host's), the lookup caches of
issue 10, and removing tables."""

from __future__ import annotations

import os
import struct

import panelboard
import pytest
from helpers import segment_path, start_workers, stop_workers
from panelboard import CircuitOpenError, Registry, State

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX shared memory and fork")

# Every process gives the breaker the same rate rule (these options are each process's own).
POLICY = dict(failure_threshold=None, failure_rate=0.5, min_calls=4, window=60.0, reset_timeout=60.0)

# Run in a worker: one call through `name` that fails or succeeds; what happened.
ONE_CALL = """
try:
    registry.call({name!r}, fail if {failing} else ok)
    result = "succeeded"
except Boom:
    result = "failed"
except panelboard.CircuitOpenError:
    result = "rejected"
"""


def window_in(worker, name: str) -> tuple[int, int]:
    return worker.eval(
        f"(lambda m: (m.window_calls, m.window_failures))(registry.breaker({name!r}).metrics())"
    )


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_the_failure_rate_is_judged_over_every_process_calls(method, table):
    workers = start_workers(method, table, 2, **POLICY)
    try:
        first, second = workers
        # 3 calls in the host's window, 1 failed: under min_calls, and under the rate.
        assert first.exec(ONE_CALL.format(name="dep", failing=False)) == "succeeded"
        assert second.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        assert first.exec(ONE_CALL.format(name="dep", failing=False)) == "succeeded"
        assert window_in(first, "dep") == window_in(second, "dep") == (3, 1)
        assert second.eval("registry.state('dep').value") == "closed"
        # The 4th call of the host (a failure in the other process) makes 2/4 >= 0.5: it trips,
        # although neither process alone has reached min_calls.
        assert second.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        assert [w.eval("registry.state('dep').value") for w in workers] == ["open", "open"]
        assert first.exec(ONE_CALL.format(name="dep", failing=False)) == "rejected"
        # The trip started an empty window for everyone.
        assert window_in(first, "dep") == window_in(second, "dep") == (0, 0)
    finally:
        stop_workers(workers)


def changed_words(before: bytes, after: bytes) -> dict[int, int]:
    """Offset to increase of every 8-byte word of a segment that differs between two reads."""
    words = f"<{len(before) // 8}Q"
    old, new = struct.unpack(words, before), struct.unpack(words, after)
    return {8 * i: b - a for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b}


def ok() -> str:
    return "ok"


HEALTHY_SUCCESSES = {
    "call": lambda registry, b, guarded: registry.call("dep", ok),
    "handle": lambda registry, b, guarded: b.call(ok),
    "decorated": lambda registry, b, guarded: guarded(),
}


@pytest.mark.parametrize("entry_point", list(HEALTHY_SUCCESSES))
def test_a_healthy_success_writes_nothing_shared_but_its_count(table, entry_point):
    """Design rule 5 on a shared breaker: without a rate rule, a closed success (the fast path)
    changes one word of the whole segment, this process's success count; the slot's rate window is
    left alone (bug 33: every success counted in it, reading the clock and writing a word that
    every process calling the breaker writes too)."""
    registry = Registry(shared=table)
    b = registry.breaker("dep")
    guarded = b(ok)
    assert b.call(ok) == "ok"  # the first count chooses this process's counter stripe (a header word)
    before = segment_path(table).read_bytes()
    for _ in range(7):
        HEALTHY_SUCCESSES[entry_point](registry, b, guarded)
    changed = changed_words(before, segment_path(table).read_bytes())
    assert list(changed.values()) == [7], changed
    assert b.metrics().successes == 8


def test_a_success_with_a_rate_rule_is_counted_in_the_shared_window(table):
    """The other side of the test above: with a rate rule, the fast path's success does count in
    the slot's window, where every process sees it."""
    registry = Registry(shared=table, **POLICY)
    b = registry.breaker("dep")
    assert b.call(ok) == "ok"
    before = segment_path(table).read_bytes()
    for _ in range(7):
        b.call(ok)
    changed = changed_words(before, segment_path(table).read_bytes())
    assert len(changed) >= 2, changed  # the success count, and the window's words
    assert b.metrics().window_calls == 8


def test_a_process_without_a_rate_rule_keeps_its_consecutive_rule(table):
    """Another process turning the consecutive rule off for its rate rule leaves this one's
    breaker a trip rule: it still opens after its own failure_threshold."""
    workers = start_workers("fork", table, 2, reset_timeout=60.0)
    try:
        rated, plain = workers
        rated.exec(
            "registry.configure('dep', failure_threshold=None, failure_rate=0.5, min_calls=100)\n"
            "result = None"
        )
        results = [plain.exec(ONE_CALL.format(name="dep", failing=True)) for _ in range(6)]
        assert results == ["failed"] * 5 + ["rejected"]
        assert plain.eval("registry.state('dep').value") == "open"
    finally:
        stop_workers(workers)


def test_a_name_deleted_by_another_process_is_not_kept_by_the_lookup_cache(table):
    """Registry.call caches each thread's lookups: a name another process deletes and makes again
    (here: opened) must be the new breaker at the next call, not the deleted one."""
    workers = start_workers("fork", table, 1, reset_timeout=60.0)
    try:
        (other,) = workers
        registry = Registry(shared=table, reset_timeout=60.0)
        name = "svc"
        for _ in range(3):  # the second and third calls are served by the cache
            assert registry.call(name, lambda: "ok") == "ok"
        other.exec(f"registry.delete({name!r})\nregistry.force_open({name!r})\nresult = None")
        ran = []
        with pytest.raises(CircuitOpenError):
            registry.call(name, lambda: ran.append(1))
        assert ran == []
        assert registry.state(name) is State.FORCED_OPEN
    finally:
        stop_workers(workers)


def test_unlink_shared_removes_only_tables(tmp_path):
    other = tmp_path / "not-a-table"
    other.write_bytes(b"someone else's data, long enough to have a first word")
    with pytest.raises(ValueError, match="magic"):
        panelboard.unlink_shared(str(other))
    assert other.exists()
    table = str(tmp_path / "a-table")
    Registry(shared=table).call("x", lambda: None)
    assert panelboard.unlink_shared(table) is True
    assert panelboard.unlink_shared(table) is False
