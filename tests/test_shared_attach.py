"""Safe attachment to a shared table (issue 12): a segment that is not one this build can use is
refused with a ``ValueError`` naming the table and the problem, never read out of bounds, and left
as it was; the segment is created owner-only unless ``mode=`` says otherwise.

The segments are crafted from the layout in docs/shared-memory.md (header words at fixed offsets,
little-endian ``u64``s). The fuzz loops run in a child interpreter, so that a crash or a hang fails
the test with what the child printed instead of taking pytest down.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import panelboard
import pytest
from helpers import TESTS, fork_and_check, run_python, segment_path, shared_table
from panelboard import Registry, State

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX shared memory")

HEADER_SIZE = 4096
SLOT_SIZE = 1088
NAME_HEAP_PER_SLOT = 256  # the long-name heap after the slots
MAGIC = 0x3142_4154_4D48_5350
MAX_CAPACITY = 1 << 20
# Header words (docs/shared-memory.md, "Header").
MAGIC_AT, VERSION_AT, HEADER_SIZE_AT, SLOT_SIZE_AT, CAPACITY_AT, LAYOUT_HASH_AT = 0, 8, 16, 24, 32, 40
BOOT_ID_LEN_AT, BOOT_ID_AT, TIMENS_LEN_AT, TIMENS_AT = 72, 80, 128, 136
# Slot words (docs/shared-memory.md, "Slots").
PROBE_TIMEOUT_MS_AT = 64


def segment_size(capacity: int) -> int:
    return HEADER_SIZE + capacity * (SLOT_SIZE + NAME_HEAP_PER_SLOT)


def word(data: bytes | bytearray, offset: int) -> int:
    return struct.unpack_from("<Q", data, offset)[0]


def put(data: bytearray, offset: int, value: int) -> None:
    struct.pack_into("<Q", data, offset, value)


@pytest.fixture
def valid(tmp_path) -> bytes:
    """The bytes of a freshly created table of 4 slots with two breakers in it."""
    path = str(tmp_path / "valid")
    registry = Registry(shared=path, capacity=4, failure_threshold=1)
    registry.call("healthy", lambda: None)
    registry.force_open("forced")
    data = Path(path).read_bytes()
    panelboard.unlink_shared(path)
    return data


def test_the_layout_is_the_documented_one(valid):
    assert word(valid, MAGIC_AT) == MAGIC
    assert valid[:8] == b"PSHMTAB1"
    assert word(valid, VERSION_AT) == 5  # docs/shared-memory.md, "Layout (version 5)"
    assert word(valid, HEADER_SIZE_AT) == HEADER_SIZE
    assert word(valid, SLOT_SIZE_AT) == SLOT_SIZE
    assert word(valid, CAPACITY_AT) == 4
    assert len(valid) == segment_size(4)


def test_the_option_words_are_the_documented_ones(tmp_path):
    """Every numeric option is in the slot, where docs/shared-memory.md says (f64 bits for ratios
    and factors, u64::MAX for none)."""
    path = str(tmp_path / "options")
    registry = Registry(shared=path, capacity=4)
    registry.breaker(
        "dep",
        failure_threshold=None,
        failure_rate=0.25,
        slow_call_duration=0.5,
        slow_call_rate=0.75,
        window=3.0,
        min_calls=6,
        backoff=1.5,
        max_reset_timeout=90.0,
        jitter=0.125,
        reset_timeout=7.0,
        half_open_max_calls=2,
        success_threshold=3,
        probe_timeout=9.0,
    )
    (row,) = panelboard._core.shared_table_rows(path)
    data = Path(path).read_bytes()
    slot = HEADER_SIZE + row["slot"] * SLOT_SIZE

    def real(offset: int) -> float:
        return struct.unpack_from("<d", data, slot + offset)[0]

    assert word(data, slot + 32) == (1 << 64) - 1  # failure_threshold None
    assert [word(data, slot + offset) for offset in (40, 48, 56, 64)] == [7000, 2, 3, 9000]
    assert word(data, slot + 96) & 0xFFF == 0, "no writer in flight"
    assert word(data, slot + 104) == 500_000_000  # slow_call_duration, ns
    assert (real(112), real(120)) == (0.25, 0.75)
    assert (word(data, slot + 496), word(data, slot + 504)) == (3_000_000, 6)  # window µs, min_calls
    assert (real(512), word(data, slot + 520), real(528)) == (1.5, 90_000, 0.125)
    registry.configure("dep", failure_rate=None, max_reset_timeout=None)
    data = Path(path).read_bytes()
    assert (word(data, slot + 112), word(data, slot + 520)) == (0, (1 << 64) - 1)
    panelboard.unlink_shared(path)


def refused(tmp_path, data: bytes | bytearray, problem: str) -> None:
    """Writes ``data`` as a table file; attaching to it (a registry, or the CLI's reader) raises a
    ValueError naming the file and ``problem``, and leaves the file as it was."""
    path = tmp_path / f"crafted-{time.monotonic_ns()}"
    path.write_bytes(bytes(data))
    for attach in (lambda: Registry(shared=str(path)), lambda: panelboard._core.shared_table_rows(str(path))):
        with pytest.raises(ValueError) as info:
            attach()
        message = str(info.value)
        assert str(path) in message, f"the error does not name the table: {message!r}"
        assert problem.lower() in message.lower(), f"the error does not say {problem!r}: {message!r}"
    assert path.read_bytes() == bytes(data), "a refused segment was changed"


def crafted(valid: bytes, offset: int, value: int) -> bytearray:
    data = bytearray(valid)
    put(data, offset, value)
    return data


def test_wrong_magic_is_refused(tmp_path, valid):
    refused(tmp_path, crafted(valid, MAGIC_AT, 0x1234), "not a panelboard")
    refused(tmp_path, b"\x7fELF" + bytes(len(valid) - 4), "not a panelboard")


def test_a_never_initialised_segment_is_refused_after_a_bounded_wait(tmp_path, valid):
    start = time.monotonic()
    refused(tmp_path, crafted(valid, MAGIC_AT, 0), "not initialised")
    assert time.monotonic() - start < 15.0


@pytest.mark.parametrize(
    ("offset", "value", "problem"),
    [
        (VERSION_AT, 1, "version"),  # a table of the layout without the rate options
        (VERSION_AT, 2, "version"),  # options_seq without the stale-writer stamp and epoch
        (VERSION_AT, 3, "version"),  # window words of 34-bit indices and 22-bit counts (bug 42)
        (VERSION_AT, 4, "version"),  # a window of ten buckets: every field after it moved
        (VERSION_AT, 6, "version"),
        (VERSION_AT, 0, "version"),
        (HEADER_SIZE_AT, 8192, "header size"),
        (HEADER_SIZE_AT, 0, "header size"),
        (SLOT_SIZE_AT, 512, "slot size"),
        (SLOT_SIZE_AT, 1 << 63, "slot size"),
        (LAYOUT_HASH_AT, 0xDEAD_BEEF, "layout"),
        (CAPACITY_AT, 0, "capacity"),
        (CAPACITY_AT, MAX_CAPACITY + 1, "capacity"),
        (CAPACITY_AT, (1 << 64) - 1, "capacity"),
        (CAPACITY_AT, 5, "wrong size"),
        (CAPACITY_AT, 3, "wrong size"),
    ],
    ids=lambda v: str(v),
)
def test_a_header_this_build_cannot_use_is_refused(tmp_path, valid, offset, value, problem):
    refused(tmp_path, crafted(valid, offset, value), problem)


def test_truncated_and_extended_files_are_refused(tmp_path, valid):
    refused(tmp_path, valid[:100], "truncated")
    refused(tmp_path, valid[: HEADER_SIZE - 1], "truncated")
    refused(tmp_path, valid[: HEADER_SIZE + SLOT_SIZE], "wrong size")
    refused(tmp_path, valid[:-1], "wrong size")
    refused(tmp_path, valid + b"\0" * SLOT_SIZE, "wrong size")


def test_an_empty_file_is_refused_in_bounded_time(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    start = time.monotonic()
    with pytest.raises(ValueError, match="empty|truncated|not initialised"):
        Registry(shared=str(path))
    assert time.monotonic() - start < 15.0
    assert path.read_bytes() == b""


def with_text(valid: bytes, len_at: int, text_at: int, text: bytes) -> bytearray:
    data = bytearray(valid)
    put(data, len_at, len(text))
    data[text_at : text_at + len(text)] = text
    return data


def test_a_table_from_another_boot_is_refused(tmp_path, valid):
    assert word(valid, BOOT_ID_LEN_AT) > 0, "the creator records its boot id"
    other_boot = b"00000000-1111-2222-3333-444444444444"
    refused(tmp_path, with_text(valid, BOOT_ID_LEN_AT, BOOT_ID_AT, other_boot), "reboot")


def test_a_table_from_another_time_namespace_is_refused(tmp_path, valid):
    offsets = b"monotonic        1000         0\nboottime            0         0\n"
    refused(tmp_path, with_text(valid, TIMENS_LEN_AT, TIMENS_AT, offsets), "time namespace")


def test_oversized_text_lengths_are_refused_not_read_past(tmp_path, valid):
    for len_at, value in (
        (BOOT_ID_LEN_AT, 49),
        (BOOT_ID_LEN_AT, 1 << 40),
        (TIMENS_LEN_AT, 249),
        (TIMENS_LEN_AT, 1 << 63),
    ):
        path = tmp_path / f"lengths-{len_at}-{value}"
        path.write_bytes(bytes(crafted(valid, len_at, value)))
        with pytest.raises(ValueError):
            Registry(shared=str(path))


def unshare_time() -> list[str]:
    """A command prefix that runs its command in a new time namespace whose monotonic clock is
    1000 s ahead; skips where this host does not allow it (no unshare, no permission)."""
    command = ["unshare", "--time", "--monotonic", "1000"]
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run([*command, "cat", "/proc/self/timens_offsets"], capture_output=True, text=True)
    if probe.returncode != 0:
        command = ["unshare", "--user", "--map-root-user", "--time", "--monotonic", "1000"]
        probe = subprocess.run([*command, "cat", "/proc/self/timens_offsets"], capture_output=True, text=True)
    if probe.returncode != 0 or "1000" not in probe.stdout:
        pytest.skip(f"time namespaces are not available here: {probe.stderr.strip()}")
    return command


@pytest.mark.parametrize("creator", ["offset-namespace", "this-namespace"])
def test_a_real_process_in_another_time_namespace_cannot_share_a_table(tmp_path, creator):
    """Two processes whose monotonic clocks differ by 1000 s: whichever creates the table, the
    other refuses it (its reset timeouts and retry-afters would be off by that much)."""
    prefix = unshare_time()
    path = str(tmp_path / "timens")
    script = "import sys, panelboard; panelboard.Registry(shared=sys.argv[1]).call('x', lambda: None)"
    if creator == "offset-namespace":
        created = subprocess.run(
            [*prefix, sys.executable, "-c", script, path], capture_output=True, text=True
        )
        assert created.returncode == 0, created.stderr
        with pytest.raises(ValueError, match="time namespace"):
            Registry(shared=path)
    else:
        Registry(shared=path).call("x", lambda: None)
        attached = subprocess.run(
            [*prefix, sys.executable, "-c", script, path], capture_output=True, text=True
        )
        assert attached.returncode != 0
        assert "ValueError" in attached.stderr and "time namespace" in attached.stderr
    panelboard.unlink_shared(path)


def test_segments_are_owner_only_by_default():
    with shared_table() as table:
        Registry(shared=table)
        assert stat.S_IMODE(os.stat(segment_path(table)).st_mode) == 0o600


def test_mode_is_honoured_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        with shared_table() as table:
            Registry(shared=table, mode=0o640)
            assert stat.S_IMODE(os.stat(segment_path(table)).st_mode) == 0o640
        path = str(tmp_path / "file-table")
        Registry(shared=path, mode=0o644)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        other = str(tmp_path / "file-default")
        Registry(shared=other)
        assert stat.S_IMODE(os.stat(other).st_mode) == 0o600
    finally:
        os.umask(old)


def test_attaching_keeps_the_creators_mode_and_capacity(tmp_path):
    path = str(tmp_path / "first")
    Registry(shared=path, capacity=8, mode=0o600)
    other = Registry(shared=path, capacity=4096, mode=0o666)  # attaches: first creation wins
    names = [f"n{i}" for i in range(9)]
    for name in names:
        other.breaker(name)
    assert [other.breaker(n).shared for n in names].count(True) == 8
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.path.getsize(path) == segment_size(8)


def test_shared_breakers_always_have_a_finite_probe_timeout(tmp_path):
    with pytest.raises(ValueError, match="probe_timeout"):
        Registry(shared=str(tmp_path / "t"), probe_timeout=None)
    path = tmp_path / "default"
    Registry(shared=str(path), capacity=1).breaker("only")
    data = path.read_bytes()
    assert word(data, HEADER_SIZE + PROBE_TIMEOUT_MS_AT) == 60_000, "the documented default, 60 s"


def test_forced_hash_collisions_keep_names_apart(monkeypatch):
    """PANELBOARD_SHM_FORCE_COLLISIONS=1 when the table is created: every name starts at slot 0, so
    every lookup walks the others' slots."""
    monkeypatch.setenv("PANELBOARD_SHM_FORCE_COLLISIONS", "1")
    with shared_table() as table:
        registry = Registry(shared=table, capacity=64, failure_threshold=1, reset_timeout=600.0)
        monkeypatch.delenv("PANELBOARD_SHM_FORCE_COLLISIONS")
        assert word(segment_path(table).read_bytes(), 48) == 1, "the table records the forced index"
        names = ["a", "b", "a" * 200, "a" * 201, "x\x00y", "x\x00z", "🔌", "", "\udc80"]
        for i, name in enumerate(names):
            if i % 2:
                registry.force_open(name)
            else:
                registry.call(name, lambda: None)
        registry.delete("b")
        registry.delete("a" * 200)
        expected = {n: State.FORCED_OPEN if i % 2 else State.CLOSED for i, n in enumerate(names)}
        del expected["b"], expected["a" * 200]

        def child_checks():
            other = Registry(shared=table)  # attachers follow the header
            assert dict(other.list()) == expected, "long names too, from the name heap"
            for name, state in expected.items():
                assert other.state(name) is state
            assert other.state("a" * 201) is State.FORCED_OPEN
            assert other.breaker("b").shared is True
            assert other.state("b") is State.CLOSED

        fork_and_check(child_checks)
        assert registry.state("b") is State.CLOSED, "re-created by the child, fresh"
        assert all(registry.breaker(n).shared for n in expected)


FUZZ = TESTS / "shared_fuzz_child.py"


@pytest.mark.parametrize("region", ["header", "slots", "options"])
def test_fuzzed_segments_are_refused_or_used_never_a_crash(tmp_path, region):
    result = run_python(str(FUZZ), region, str(tmp_path), "300", timeout=240)
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "fuzzed 300" in result.stdout
