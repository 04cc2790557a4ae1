"""The demo behind ``make demo``: worker threads calling simulated endpoints through the registry.

Three endpoints: ``healthy`` always answers, ``flaky`` fails now and then, ``recovering`` is down
for the first part of the run and then comes back. Their breakers' state changes are printed as they
happen; at the end a table shows how many calls each breaker turned away instead of letting them
hit a failing endpoint.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable

from . import CircuitOpenError, Registry, State


class EndpointDown(Exception):
    pass


def _endpoints(started: float, seconds: float) -> dict[str, Callable[[], str]]:
    rng = random.Random(7)
    lock = threading.Lock()

    def chance(p: float) -> bool:
        with lock:
            return rng.random() < p

    def healthy() -> str:
        time.sleep(0.001)
        return "ok"

    def flaky() -> str:
        time.sleep(0.001)
        # Bursts of errors: mostly fine, sometimes several failures in a row.
        if chance(0.35 if int((time.monotonic() - started) * 4) % 3 == 0 else 0.02):
            raise EndpointDown("flaky: 503")
        return "ok"

    def recovering() -> str:
        time.sleep(0.001)
        if time.monotonic() - started < seconds * 0.5:
            raise EndpointDown("recovering: connection refused")
        return "ok"

    return {"healthy": healthy, "flaky": flaky, "recovering": recovering}


def run(seconds: float = 4.0, workers: int = 4) -> int:
    registry = Registry(failure_threshold=3, reset_timeout=0.4)
    started = time.monotonic()
    endpoints = _endpoints(started, seconds)
    print_lock = threading.Lock()

    @registry.on_state_change
    def show(name: str, old: State, new: State) -> None:
        with print_lock:
            print(f"  {time.monotonic() - started:6.2f}s  {name:<11} {old.value:>9} -> {new.value}")

    print(
        f"panelboard demo: {workers} worker threads calling {len(endpoints)} endpoints for "
        f"{seconds:g}s (failure_threshold=3, reset_timeout=0.4s)\n"
    )
    hits: dict[str, int] = {name: 0 for name in endpoints}
    hits_lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        names = sorted(endpoints)
        i = 0
        while time.monotonic() < stop:
            name = names[i % len(names)]
            i += 1
            try:
                registry.call(name, endpoints[name])
            except CircuitOpenError:
                time.sleep(0.001)  # a real client would fail fast or fall back here
                continue
            except EndpointDown:
                pass
            with hits_lock:
                hits[name] += 1

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    snapshot = registry.snapshot()
    print(
        f"\n  {'endpoint':<11} {'state':>9} {'calls':>7} {'ok':>7} {'failed':>7} {'rejected':>9} {'opened':>7}"
    )
    for name in sorted(snapshot):
        m = snapshot[name]
        print(
            f"  {name:<11} {m.state.value:>9} {m.calls:>7} {m.successes:>7} {m.failures:>7} "
            f"{m.rejected:>9} {m.times_opened:>7}"
        )
    rejected = sum(m.rejected for m in snapshot.values())
    failed = sum(m.failures for m in snapshot.values())
    print(
        f"\n  {rejected} calls were rejected by an open breaker instead of hitting a failing endpoint "
        f"(the endpoints themselves failed {failed} times)."
    )
    sys.stdout.flush()
    return 0
