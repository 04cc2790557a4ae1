"""Helpers shared by the tests: exceptions, tripping a breaker, running threads and scripts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Boom(Exception):
    """The failure the guarded functions raise."""


def run_threads(target: Callable[[int], object], n: int = 16, timeout: float = 60.0) -> None:
    """Runs target(i) on n threads; re-raises the first error; fails if any thread hangs."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    assert hung == 0, f"{hung} threads still running after {timeout}s (deadlock?)"
    if errors:
        raise errors[0]
