"""The demo behind ``make demo``: a real httpx client calling local flaky HTTP services through
``panelboard.httpx.BreakerTransport``.

Three services, each its own HTTP server on loopback (so each its own origin and breaker):
``healthy`` always answers, ``flaky`` has bursts of 503s, ``recovering`` answers 503 for the first
half of the run and then comes back. Worker threads send requests through one ``httpx.Client``;
the breakers' state changes are printed as they happen, and a table at the end shows how many
requests each open breaker saved the failing service and how many probes it sent to find out
whether the service was back.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

from . import CircuitOpenError, Registry, State
from ._flaky_server import FlakyServer


def _behaviours(started: float, seconds: float) -> dict[str, Callable[[str], int]]:
    rng = random.Random(7)
    lock = threading.Lock()

    def chance(p: float) -> bool:
        with lock:
            return rng.random() < p

    def healthy(path: str) -> int:
        return 200

    def flaky(path: str) -> int:
        # Mostly fine, with a burst of errors in every third quarter-second.
        burst = int((time.monotonic() - started) * 4) % 3 == 0
        return 503 if chance(0.6 if burst else 0.02) else 200

    def recovering(path: str) -> int:
        return 503 if time.monotonic() - started < seconds * 0.5 else 200

    return {"healthy": healthy, "flaky": flaky, "recovering": recovering}


def run(seconds: float = 4.0, workers: int = 4) -> int:
    try:
        import httpx
    except ImportError:
        print(
            "the demo needs httpx: pip install 'panelboard[httpx]' (make demo installs it)", file=sys.stderr
        )
        return 1
    from .httpx import BreakerTransport

    registry = Registry(failure_threshold=3, reset_timeout=0.4)
    started = time.monotonic()
    servers = {label: FlakyServer(behaviour) for label, behaviour in _behaviours(started, seconds).items()}
    label_of = {server.url: label for label, server in servers.items()}
    print_lock = threading.Lock()
    probes: Counter[str] = Counter()

    @registry.on_state_change
    def show(name: str, old: State, new: State) -> None:
        label = label_of.get(name, name)
        if old is State.HALF_OPEN:
            probes[label] += 1  # one probe (half_open_max_calls=1) decided the way out of half-open
        with print_lock:
            print(f"  {time.monotonic() - started:6.2f}s  {label:<11} {old.value:>9} -> {new.value}")
            sys.stdout.flush()

    print(
        f"panelboard demo: {workers} threads, one httpx client through BreakerTransport, calling "
        f"{len(servers)} local HTTP services for {seconds:g}s\n(one breaker per origin; "
        "failure_threshold=3, reset_timeout=0.4s; 503 counts as a failure)\n"
    )
    stop = time.monotonic() + seconds
    sent: Counter[str] = Counter()
    saved: Counter[str] = Counter()
    counts_lock = threading.Lock()

    def worker(client: httpx.Client) -> None:
        labels = sorted(servers)
        i = 0
        while time.monotonic() < stop:
            label = labels[i % len(labels)]
            i += 1
            try:
                client.get(servers[label].url + "/api")
                outcome = sent
            except CircuitOpenError:
                outcome = saved  # failed fast: the request never left the process
            with counts_lock:
                outcome[label] += 1
            time.sleep(0.002)

    # The transitions are printed by the listener above; the `panelboard` logger's own records
    # (WARNING on opening) would print them a second time on stderr.
    logger = logging.getLogger("panelboard")
    level = logger.level
    logger.setLevel(logging.ERROR)
    for server in servers.values():
        server.start()
    try:
        with httpx.Client(transport=BreakerTransport(registry=registry), timeout=2.0) as client:
            threads = [threading.Thread(target=worker, args=(client,)) for _ in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        for server in servers.values():
            server.stop()
        logger.setLevel(level)

    snapshot = registry.snapshot()
    print(
        f"\n  {'service':<11} {'state':>9} {'sent':>6} {'ok':>6} {'failed':>7} {'saved':>6} "
        f"{'opened':>7} {'probes':>7}"
    )
    for label, server in servers.items():
        m = snapshot[server.url]
        print(
            f"  {label:<11} {m.state.value:>9} {sent[label]:>6} {m.successes:>6} {m.failures:>7} "
            f"{saved[label]:>6} {m.times_opened:>7} {probes[label]:>7}"
        )
    print(
        f"\n  {sum(saved.values())} requests were saved: an open breaker failed them fast instead of "
        f"sending them to a failing service;\n  {sum(probes.values())} probes were sent to find out "
        f"whether a service was back ({sum(m.failures for m in snapshot.values())} requests failed)."
    )
    sys.stdout.flush()
    return 0
