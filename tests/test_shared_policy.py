"""Where shared-memory tables (issue 12) meet the other features: trip policies (issue 11: the
sliding window and every rate and open-time option live in the table's slot, so the failure rate
is the host's, judged by the same rules in every process), the lookup caches of issue 10, and
removing tables."""

from __future__ import annotations

import os
import struct
import time

import panelboard
import pytest
from helpers import Boom, fail, run_python, segment_path, start_workers, stop_workers
from panelboard import CircuitOpenError, Registry, State

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX shared memory and fork")

# The rate rule the tests create their breaker with (the table's, for every process).
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


def test_a_process_without_a_rate_rule_follows_the_tables(table):
    """Another process turning the consecutive rule off for a rate rule turns it off for every
    process: this one's failures are judged by the table's rate rule, not its own threshold."""
    workers = start_workers("fork", table, 2, reset_timeout=60.0)
    try:
        rated, plain = workers
        rated.exec("registry.configure('dep', failure_threshold=None, failure_rate=0.5, min_calls=100)")
        results = [plain.exec(ONE_CALL.format(name="dep", failing=True)) for _ in range(6)]
        assert results == ["failed"] * 6, "min_calls=100 not reached: the table's rule does not trip"
        assert plain.eval("registry.state('dep').value") == "closed"
        assert window_in(plain, "dep") == (6, 6)
    finally:
        stop_workers(workers)


# Options of another process, none of which would open the breaker in the tests below.
OTHER_POLICY = dict(failure_threshold=2, failure_rate=0.9, min_calls=100, window=1.0, reset_timeout=5.0)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_process_opening_the_name_with_other_rate_options_follows_the_creators(method, table):
    """The first creation's rate options are the table's: a process whose registry (and call)
    asks for others judges the host's window by the creator's (min_calls=4, failure_rate=0.5,
    reset_timeout=60), and the failures of both processes count together."""
    (creator,) = start_workers(method, table, 1, **POLICY)
    (other,) = start_workers(method, table, 1, **OTHER_POLICY)
    workers = [creator, other]
    try:
        creator.exec("registry.breaker('dep')")
        other.exec("registry.breaker('dep', failure_rate=1.0, min_calls=50)")  # validated, ignored
        # Two failures: the other process's own failure_threshold=2 would open it; the table's
        # rule has the consecutive rule off.
        assert [other.exec(ONE_CALL.format(name="dep", failing=True)) for _ in range(2)] == ["failed"] * 2
        assert creator.exec(ONE_CALL.format(name="dep", failing=False)) == "succeeded"
        assert other.eval("registry.state('dep').value") == "closed", "3 calls: under min_calls=4"
        # The 4th call of the host, a success in the other process, makes 2/4 >= 0.5: the other
        # process judges it by the table's rule (its own, 0.9 over 100 calls, would not trip).
        assert other.exec(ONE_CALL.format(name="dep", failing=False)) == "succeeded"
        assert [w.eval("registry.state('dep').value") for w in workers] == ["open", "open"]
        retry_after = other.eval("metrics(registry.breaker('dep').metrics()).retry_after")
        assert 50.0 < retry_after <= 60.0, "the table's reset_timeout=60, not the process's 5"
    finally:
        stop_workers(workers)


def test_configure_in_one_process_changes_the_rate_rule_for_all(table):
    workers = start_workers("fork", table, 2, **POLICY)
    try:
        first, second = workers
        first.exec("registry.breaker('dep')")
        second.exec("registry.configure('dep', failure_rate=0.2, min_calls=5)")
        # 1 failure in 4 calls: 25% (under the old rule's 50% at 4 calls, under the new min_calls).
        assert first.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        for _ in range(3):
            assert first.exec(ONE_CALL.format(name="dep", failing=False)) == "succeeded"
        assert first.eval("registry.state('dep').value") == "closed"
        # The 5th call makes 1/5 = 20% >= 0.2: the first process trips it by the second's options.
        assert first.exec(ONE_CALL.format(name="dep", failing=False)) == "succeeded"
        assert [w.eval("registry.state('dep').value") for w in workers] == ["open", "open"]
        # And configure from the first process reaches the second.
        first.exec("registry.configure('dep', failure_threshold=2, failure_rate=None)\nregistry.reset('dep')")
        assert second.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        assert second.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        assert first.eval("registry.state('dep').value") == "open"
    finally:
        stop_workers(workers)


def test_open_time_growth_is_the_tables_and_one_draw_serves_every_process(table):
    """backoff, max_reset_timeout and jitter are the table's: a process that has none of its own
    draws the reopen time by them, and what it drew is every process's retry_after."""
    growth = dict(failure_threshold=1, reset_timeout=0.2, backoff=1000.0, max_reset_timeout=300.0, jitter=0.5)
    (creator,) = start_workers("fork", table, 1, **growth)
    (other,) = start_workers("fork", table, 1, failure_threshold=1, reset_timeout=0.2)
    workers = [creator, other]
    names = ["dep-0", "dep-1", "dep-2"]
    try:
        for name in names:
            creator.exec(f"registry.breaker({name!r})")
            assert other.exec(ONE_CALL.format(name=name, failing=True)) == "failed"  # open for <= 0.2 s
        time.sleep(0.5)
        reported = []
        for name in names:
            # The half-open probe fails: the reopen (k = 1) lasts min(0.2 * 1000, 300) = 200 s,
            # jittered into [100, 200], drawn by the process without options of its own.
            assert other.exec(ONE_CALL.format(name=name, failing=True)) == "failed"
            retry = f"metrics(registry.breaker({name!r}).metrics()).retry_after"
            drawn, seen = other.eval(retry), creator.eval(retry)
            assert 99.0 < drawn <= 200.0 and 99.0 < seen <= 200.0, (drawn, seen)
            assert abs(drawn - seen) < 2.0, "one draw, reported by every process"
            reported.append(drawn)
        assert min(reported) < 199.0, f"jitter draws below the cap: {reported}"
    finally:
        stop_workers(workers)


# Option words of a slot (docs/shared-memory.md, "Slots"), and a slot's place in the file.
HEADER_SIZE, SLOT_SIZE = 4096, 1088
GARBAGE = {
    32: (1 << 64) - 1,  # failure_threshold: None ...
    112: struct.unpack("<Q", struct.pack("<d", float("nan")))[0],  # ... failure_rate: NaN (off)
    120: struct.unpack("<Q", struct.pack("<d", 7.0))[0],  # slow_call_rate above 1 (off)
    104: (1 << 64) - 2,  # slow_call_duration beyond the largest
    40: (1 << 64) - 2,  # reset_timeout beyond the largest
    48: 0,  # half_open_max_calls 0
    64: 0,  # probe_timeout 0
    496: 0,  # window 0
    504: 0,  # min_calls 0
    512: struct.unpack("<Q", struct.pack("<d", float("-inf")))[0],  # backoff
    520: 1,  # max_reset_timeout below reset_timeout
    528: struct.unpack("<Q", struct.pack("<d", float("nan")))[0],  # jitter
    96: 5,  # options_seq: five writers in flight for ever (killed mid-configure)
}


def test_garbage_option_words_are_survived(tmp_path):
    """Option words someone else wrote out of range are read as safe values (docs/shared-memory.md,
    "Options"): no trip rule left means the consecutive rule with 5 failures; nothing crashes,
    hangs or raises, inspect shows what is used, and configure puts options back."""
    path = str(tmp_path / "table")
    registry = Registry(shared=path, failure_threshold=None, failure_rate=0.5, min_calls=4)
    registry.breaker("dep")
    (row,) = panelboard._core.shared_table_rows(path)
    base = HEADER_SIZE + row["slot"] * SLOT_SIZE
    with open(path, "r+b") as f:
        for offset, value in GARBAGE.items():
            f.seek(base + offset)
            f.write(struct.pack("<Q", value))
    (worker,) = start_workers("spawn", path, 1)
    try:
        options = panelboard._core.shared_table_rows(path)[0]["options"]
        assert options["failure_threshold"] == 5 and options["failure_rate"] is None
        assert (options["half_open_max_calls"], options["probe_timeout"], options["min_calls"]) == (
            1,
            60.0,
            1,
        )
        assert (options["backoff"], options["jitter"], options["window"]) == (1.0, 0.0, 0.0001)
        assert options["max_reset_timeout"] == options["reset_timeout"] > 3e7
        # Five failures spread over two processes open it, by the fallback rule.
        for i in range(5):
            if i % 2:
                with pytest.raises(Boom):
                    registry.call("dep", fail)
            else:
                assert worker.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        assert registry.state("dep") is State.OPEN
        assert worker.exec(ONE_CALL.format(name="dep", failing=False)) == "rejected"
        assert registry.breaker("dep").metrics().retry_after > 3e7
        # configure still works (the writers counted in the word, stamped long ago, are forgotten).
        worker.exec(
            "registry.configure('dep', failure_threshold=None, failure_rate=0.5, min_calls=2, reset_timeout=1.0)"
        )
        registry.reset("dep")
        with pytest.raises(Boom):
            registry.call("dep", fail)
        assert worker.eval("registry.state('dep').value") == "closed", "1 call: under min_calls=2"
        assert worker.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        assert registry.state("dep") is State.OPEN
        assert registry.breaker("dep").metrics().retry_after <= 1.0
        assert run_python("-m", "panelboard", "inspect", path, timeout=60).returncode == 0
    finally:
        stop_workers([worker])


def options_seq_at(path: str, slot: int) -> int:
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE + slot * SLOT_SIZE + 96)
        return struct.unpack("<Q", f.read(8))[0]


def stuck_writer(path: str, slot: int, started_ms: int) -> int:
    """Leaves ``options_seq`` as a process killed mid-``configure`` at host time ``started_ms``
    does (docs/shared-memory.md, "Torn reads": ``stamp << 40 | sequence << 16 | epoch << 12 |
    writers``): one writer counted, never counted out. Returns the word."""
    word = (started_ms % (1 << 24)) << 40 | 7 << 16 | 1
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + slot * SLOT_SIZE + 96)
        f.write(struct.pack("<Q", word))
    return word


def test_a_writer_killed_mid_configure_is_forgotten_once_stale(tmp_path):
    """A process killed between the two updates of a ``configure`` leaves the options' writer count
    raised (bug 38): every later read of the options in every process (admission and recording
    off the closed fast path, ``configure``) paid its four attempts, for good. Once the last writer
    started more than a second ago, the first reader or writer, in any process, forgets it; a
    younger count (a writer that may still be storing) is left alone."""
    path = str(tmp_path / "table")
    registry = Registry(shared=path, failure_threshold=3)
    names = ["young", "old-read", "old-write"]
    for name in names:
        registry.breaker(name)
    slots = {row["name"]: row["slot"] for row in panelboard._core.shared_table_rows(path)}
    writers = 0xFFF
    (worker,) = start_workers("spawn", path, 1)
    try:
        now_ms = int(time.monotonic() * 1000)  # CLOCK_MONOTONIC, as the table's clock
        for name in ["old-read", "old-write"]:
            stuck_writer(path, slots[name], now_ms - 60_000)
        young = stuck_writer(path, slots["young"], now_ms)
        poked = time.monotonic()
        with pytest.raises(Boom):
            registry.call("young", fail)  # recording reads the options
        if time.monotonic() - poked < 0.5:  # still young when read (the stamp is 1 s from stale)
            assert options_seq_at(path, slots["young"]) == young, "a writer that may be storing"
        # A read in this process forgets the stale writer: the count is 0, in a new epoch.
        with pytest.raises(Boom):
            registry.call("old-read", fail)
        assert options_seq_at(path, slots["old-read"]) & writers == 0
        assert options_seq_at(path, slots["old-read"]) >> 12 & 0xF == 1
        # So does a configure in another process (its own writer counted out again).
        worker.exec("registry.configure('old-write', failure_threshold=2)\nresult = None")
        assert options_seq_at(path, slots["old-write"]) & writers == 0
        rows = {row["name"]: row for row in panelboard._core.shared_table_rows(path)}
        assert rows["old-write"]["options"]["failure_threshold"] == 2
        # And the breaker works as its options say: the second failure opens it.
        for _ in range(2):
            with pytest.raises(Boom):
                registry.call("old-write", fail)
        assert registry.state("old-write") is State.OPEN
    finally:
        stop_workers([worker])


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
