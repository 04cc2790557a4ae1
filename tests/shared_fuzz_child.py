"""Run by tests/test_shared_attach.py in a child interpreter: ``python shared_fuzz_child.py REGION
DIR N``. Creates a valid table file in DIR, then N times corrupts a few random bytes of REGION
(``header`` or ``slots``; or ``options``: whole option words of the slots, set to random or
extreme values) of a copy and uses it: attaching must either refuse it with a ValueError
or give a registry whose every operation works or raises ValueError/OSError. A crash, a hang (the
parent's timeout), a PanicException or any other exception fails. Prints ``fuzzed N`` at the end.
"""

from __future__ import annotations

import random
import struct
import sys
from collections import Counter
from pathlib import Path

import panelboard
from panelboard import CircuitOpenError, Registry

HEADER_SIZE = 4096
SLOT_SIZE = 1088
# The option words of a slot and their agreement word (docs/shared-memory.md, "Slots").
OPTION_WORDS = (32, 40, 48, 56, 64, 96, 104, 112, 120, 496, 504, 512, 520, 528)
EXTREMES = [0, 1, 2**63, 2**64 - 1, 2**64 - 2] + [
    struct.unpack("<Q", struct.pack("<d", x))[0] for x in (float("nan"), float("inf"), -1.0, 0.5, 1.0, 1e300)
]
ALLOWED = (ValueError, OSError)


def exercise(path: str) -> str:
    try:
        registry = Registry(shared=path, reset_timeout=0.0)
    except ValueError:
        return "refused"
    outcome = "used"
    operations = [
        lambda: registry.list(),
        lambda: registry.snapshot(),
        lambda: panelboard._core.shared_table_rows(path),
        lambda: registry.call("healthy", lambda: None),
        lambda: registry.call("forced", lambda: None),
        lambda: registry.state("n" * 300),
        lambda: registry.breaker("new-name").call(lambda: None),
        lambda: registry.delete("healthy"),
        lambda: registry.force_open("forced"),
        lambda: registry.breaker("x" * 200).metrics(),
        lambda: registry.configure("healthy", min_calls=3, failure_rate=0.5),
        lambda: [registry.call("healthy", lambda: None) for _ in range(3)],
    ]
    for operation in operations:
        try:
            operation()
        except CircuitOpenError:
            pass  # "forced" is forced open, or a corrupted state word says open: a normal answer
        except ALLOWED as err:
            outcome = f"used, some operations refused ({type(err).__name__})"
    return outcome


def main(region: str, directory: str, iterations: int) -> None:
    rng = random.Random(12)
    base = str(Path(directory) / "base")
    registry = Registry(shared=base, capacity=8, failure_threshold=1)
    registry.call("healthy", lambda: None)
    registry.force_open("forced")
    registry.call("x" * 200, lambda: None)  # a name stored as its digest
    registry.breaker("deleted")
    registry.delete("deleted")
    valid = Path(base).read_bytes()
    outcomes: Counter[str] = Counter()
    for i in range(iterations):
        data = bytearray(valid)
        if region == "options":
            for _ in range(rng.randint(1, 8)):
                at = HEADER_SIZE + rng.randrange(8) * SLOT_SIZE + rng.choice(OPTION_WORDS)
                value = rng.choice(EXTREMES) if rng.random() < 0.5 else rng.getrandbits(64)
                struct.pack_into("<Q", data, at, value)
        else:
            if region == "header":
                start, end = (0, 384) if rng.random() < 0.8 else (0, HEADER_SIZE)
            else:
                start, end = HEADER_SIZE, len(data)
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(start, end)
                data[at] = (
                    rng.randrange(256) if rng.random() < 0.7 else rng.choice((0, 0xFF, 0x40, 0x80, 0xC0))
                )
        path = str(Path(directory) / f"fuzz-{i}")
        Path(path).write_bytes(bytes(data))
        try:
            outcomes[exercise(path)] += 1
        except BaseException as err:
            print(f"iteration {i}: {type(err).__name__}: {err}", flush=True)
            raise
        # A fuzzed header may have lost the magic, and unlink_shared removes only tables.
        Path(path).unlink(missing_ok=True)
    print(dict(outcomes))
    print(f"fuzzed {iterations}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
