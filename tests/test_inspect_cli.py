"""``python -m panelboard inspect NAME`` (issue 12): every breaker of a shared table, with its
state, counts and retry-after, read without creating or changing anything."""

from __future__ import annotations

import json
import os

import panelboard
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
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
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
