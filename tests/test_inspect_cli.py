"""``python -m panelboard inspect NAME`` (issue 12): every breaker of a shared table, with its
state, counts and retry-after, read without creating or changing anything."""

from __future__ import annotations

import json
import os

import panelboard
import panelboard._inspect
import pytest
from helpers import Boom, fail, run_python, segment_path
from panelboard import Registry, State

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX shared memory")


def inspect(*args: str):
    return run_python("-m", "panelboard", "inspect", *args, timeout=60)


@pytest.fixture
def populated(table):
    registry = Registry(shared=table, failure_threshold=2, reset_timeout=600.0)
    for _ in range(2):
        with pytest.raises(Boom):
            registry.call("payments", fail)
    with pytest.raises(panelboard.CircuitOpenError):
        registry.call("payments", lambda: None)
    for _ in range(3):
        registry.call("search", lambda: None)
    with pytest.raises(Boom):
        registry.call("search", fail)
    registry.force_open("legacy")
    registry.disable("always")
    registry.call("line\nbreak", lambda: None)
    return table, registry


def test_inspect_prints_every_breaker_with_state_counts_and_retry_after(populated):
    table, _ = populated
    result = inspect(table)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"table {table}: 5 breakers"
    header = lines[1].split()
    assert header == [
        "NAME",
        "STATE",
        "CONSEC",
        "CALLS",
        "SUCCESSES",
        "FAILURES",
        "IGNORED",
        "REJECTED",
        "OPENED",
        "RETRY-AFTER",
    ]
    # The counts, then a blank line and the options (test_inspect_shows_the_options_of_the_table).
    rows = {line.split()[0]: line.split()[1:] for line in lines[2 : lines.index("")]}
    assert set(rows) == {"payments", "search", "legacy", "always", repr("line\nbreak")}
    state, _, calls, successes, failures, ignored, rejected, opened, retry = rows["payments"]
    assert (state, calls, successes, failures, ignored, rejected, opened) == (
        "open",
        "2",
        "0",
        "2",
        "0",
        "1",
        "1",
    )
    assert 590.0 < float(retry.rstrip("s")) <= 600.0
    assert rows["search"][:8] == ["closed", "1", "4", "3", "1", "0", "0", "0"]
    assert rows["search"][8] == "0.000s"
    assert rows["legacy"][0] == "forced_open"
    assert rows["always"][0] == "disabled"


def test_inspect_json_gives_the_rows(populated):
    table, registry = populated
    result = inspect(table, "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {n for n, _ in registry.list()}
    for name, row in rows.items():
        m = registry.snapshot()[name]
        assert State(row["state"]) is m.state
        assert (row["calls"], row["successes"], row["failures"], row["ignored"], row["rejected"]) == (
            m.calls, m.successes, m.failures, m.ignored, m.rejected,
        )  # fmt: skip
        assert row["times_opened"] == m.times_opened


def test_inspect_shows_the_options_of_the_table(table):
    """The numeric options every process follows are the table's: inspect shows them, as the
    creator stored them and as configure (from any process) changed them."""
    creator = Registry(shared=table, failure_threshold=None, failure_rate=0.5, window=2.0, min_calls=4)
    creator.breaker("rated", backoff=2.0, max_reset_timeout=120.0, jitter=0.25)
    Registry(shared=table).configure(
        "plain", reset_timeout=12.5, slow_call_duration=0.25, slow_call_rate=0.75
    )
    Registry(shared=table, failure_threshold=9).configure("rated", min_calls=6)
    result = inspect(table, "--json")
    assert result.returncode == 0, result.stderr
    options = {row["name"]: row["options"] for row in json.loads(result.stdout)}
    assert options["rated"] == {
        "failure_threshold": None,
        "reset_timeout": 30.0,
        "half_open_max_calls": 1,
        "success_threshold": 1,
        "probe_timeout": 60.0,
        "failure_rate": 0.5,
        "slow_call_duration": None,
        "slow_call_rate": None,
        "window": 2.0,
        "min_calls": 6,
        "backoff": 2.0,
        "max_reset_timeout": 120.0,
        "jitter": 0.25,
    }
    assert options["plain"]["failure_threshold"] == 5
    assert (options["plain"]["reset_timeout"], options["plain"]["slow_call_duration"]) == (12.5, 0.25)
    assert options["plain"]["slow_call_rate"] == 0.75
    text = inspect(table)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    block = lines[lines.index("") + 1 :]
    assert block[0].split() == ["NAME", *panelboard._inspect.OPTIONS]
    shown = {line.split()[0]: line.split()[1:] for line in block[1:]}
    assert shown["rated"] == ["-", "30s", "1", "1", "60s", "0.5", "-", "-", "2s", "6", "2", "120s", "0.25"]
    assert shown["plain"][:8] == ["5", "12.5s", "1", "1", "60s", "-", "0.25s", "0.75"]


def test_inspect_sees_a_table_written_by_other_processes_and_changes_nothing(populated):
    table, registry = populated
    before = segment_path(table).read_bytes()
    assert inspect(table).returncode == 0
    assert segment_path(table).read_bytes() == before
    assert registry.state("payments") is State.OPEN


def test_inspect_of_a_missing_table_fails_clearly_and_creates_nothing(table):
    result = inspect(table)
    assert result.returncode == 1
    assert f"no shared table named {table!r}" in result.stderr
    assert not segment_path(table).exists()


def test_inspect_of_something_else_fails_clearly(tmp_path):
    path = tmp_path / "not-a-table"
    path.write_bytes(b"hello" * 2000)
    result = inspect(str(path))
    assert result.returncode == 1
    assert "not a panelboard" in result.stderr
    assert "Traceback" not in result.stderr


def test_inspect_usage():
    for args in ((), ("a", "b")):
        result = inspect(*args)
        assert result.returncode == 2
        assert "usage: python -m panelboard inspect NAME" in result.stderr
