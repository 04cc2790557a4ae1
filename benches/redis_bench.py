#!/usr/bin/env python3
"""What sharing breakers through Redis costs (issue 13); part of ``make bench``.

Against a real ``redis-server`` on loopback (started here, persistence off, stopped at the end;
``tests/redis_fixtures.py`` starts it):

* a closed success through a handle, ``b.call(f)``, on a Redis-synced registry against the same on a
  local one: interleaved rounds, ns per call of the fastest round (and the median), and the ratio
  (target: at most 1.2x);
* the Redis commands per second one process sends (``MONITOR``; and what Redis runs, ``INFO commandstats``) while its breakers take
  calls as fast as it can, for 1 and 10 active breakers, at two sync intervals, with the bound
  ``1 / sync_interval`` per active breaker next to it;
* the same with every call failing (a breaker that trips, probes and reopens all the time).

Writes ``benches/redis.md``. Options: ``--quick`` (a smoke run), ``--rounds N``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import panelboard  # noqa: E402
from redis_fixtures import RedisServer  # noqa: E402

RESULTS_MD = ROOT / "benches" / "redis.md"


def f() -> int:
    return 1


def boom() -> None:
    raise ConnectionError("down")


def per_call_ns(call: Any, n: int) -> float:
    """Nanoseconds per ``call(f)`` over ``n`` calls (timeit's loop shape)."""
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in itertools.repeat(None, n):
            call(f)
        return (time.perf_counter() - start) / n * 1e9
    finally:
        gc.enable()


def closed_success(server: RedisServer, rounds: int, n: int) -> dict[str, Any]:
    local = panelboard.Registry()
    shared = panelboard.Registry(redis=server.url, namespace="bench-cost", sync_interval=0.05)
    try:
        b_local, b_shared = local.breaker("svc"), shared.breaker("svc")
        b_local.call(f)
        b_shared.call(f)
        time.sleep(0.3)  # connected, the breaker published
        samples: dict[str, list[float]] = {"local": [], "redis": []}
        for round_ in range(rounds):
            order = [("local", b_local), ("redis", b_shared)]
            if round_ % 2:
                order.reverse()
            for label, b in order:
                samples[label].append(per_call_ns(b.call, n))
        # The fastest round of each is the least disturbed by other work on the machine (timeit's
        # advice); the medians are reported beside them.
        local_ns, redis_ns = min(samples["local"]), min(samples["redis"])
        return {
            "local_ns": local_ns,
            "redis_ns": redis_ns,
            "ratio": redis_ns / local_ns,
            "local_median": statistics.median(samples["local"]),
            "redis_median": statistics.median(samples["redis"]),
            "samples": samples,
        }
    finally:
        shared.close()


#: A rate rule that the succeeding calls never meet: their counts go to the fleet's window every
#: round (in the same script call).
RATE_RULE = {"failure_rate": 0.5, "min_calls": 20, "window": 1.0}


def commands_per_second(
    server: RedisServer,
    breakers: int,
    sync_interval: float,
    seconds: float,
    failing: bool,
    rate: bool = False,
) -> dict[str, Any]:
    registry = panelboard.Registry(
        redis=server.url,
        namespace=f"bench-cmds-{breakers}-{sync_interval}-{failing}-{rate}",
        sync_interval=sync_interval,
        failure_threshold=3,
        reset_timeout=0.0 if failing else 30.0,
        **(RATE_RULE if rate else {}),
    )
    try:
        handles = [registry.breaker(f"svc-{i}") for i in range(breakers)]
        for b in handles:
            b.call(f)
        time.sleep(max(0.3, 4 * sync_interval))
        server.reset_stats()
        calls = 0
        with server.monitor() as monitor:
            start = time.monotonic()
            end = start + seconds
            while time.monotonic() < end:
                for b in handles:
                    for _ in range(100):
                        try:
                            b.call(boom if failing else f)
                        except (ConnectionError, panelboard.CircuitOpenError):
                            pass
                    calls += 100
                time.sleep(0.0002)  # a real program does other work between calls
            elapsed = time.monotonic() - start
        ran = sum(server.commands().values())
        return {
            "breakers": breakers,
            "sync_interval": sync_interval,
            "failing": failing,
            "rate": rate,
            "calls_per_s": calls / elapsed,
            "sent_per_s": monitor.total / elapsed,
            "ran_per_s": ran / elapsed,
            "bound_per_s": breakers / sync_interval,
            "sent": monitor.sent,
        }
    finally:
        registry.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rounds, n, seconds = (3, 50_000, 1.0) if args.quick else (args.rounds, 300_000, 3.0)
    server = RedisServer()
    server.start()
    try:
        print(f"redis-server {server.admin().info('server')['redis_version']} on {server.url}")
        cost = closed_success(server, rounds, n)
        print(
            f"closed success b.call(f): local {cost['local_ns']:.0f} ns, Redis-synced {cost['redis_ns']:.0f} ns "
            f"(fastest rounds), ratio {cost['ratio']:.2f}x (target <= 1.2x); medians {cost['local_median']:.0f} / "
            f"{cost['redis_median']:.0f} ns"
        )
        traffic = []
        cases = [
            (failing, sync_interval, breakers, False)
            for failing in (False, True)
            for sync_interval in (0.05, 0.2)
            for breakers in (1, 10)
        ]
        cases += [(False, 0.05, breakers, True) for breakers in (1, 10)]
        for failing, sync_interval, breakers, rate in cases:
            r = commands_per_second(server, breakers, sync_interval, seconds, failing, rate)
            traffic.append(r)
            print(
                f"{label(r)} calls, {breakers} breakers, sync_interval "
                f"{sync_interval}: {r['calls_per_s']:,.0f} calls/s -> {r['sent_per_s']:.1f} commands/s sent "
                f"(bound {r['bound_per_s']:.0f}/s; {r['ran_per_s']:.0f}/s run in Redis with the script's) "
                f"{r['sent']}"
            )
    finally:
        server.close()
    write_report(cost, traffic, rounds, n, seconds)


def label(r: dict[str, Any]) -> str:
    what = "failing" if r["failing"] else "succeeding"
    return f"{what}, rate rule" if r.get("rate") else what


def write_report(
    cost: dict[str, Any], traffic: list[dict[str, Any]], rounds: int, n: int, seconds: float
) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Redis-synced breakers: cost per call and Redis traffic",
        "",
        f"Measured by `make bench` (`benches/redis_bench.py`) on {now}: {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs (load average "
        f"{os.getloadavg()[0]:.1f} at the end: other work shares them), a local `redis-server` on loopback. "
        f"{rounds} interleaved rounds of {n:,} calls.",
        "",
        "| closed success, `b.call(f)` | ns per call (fastest round) | median of the rounds |",
        "|---|---|---|",
        f"| local registry | {cost['local_ns']:.0f} | {cost['local_median']:.0f} |",
        f"| Redis-synced registry (`sync_interval=0.05`) | {cost['redis_ns']:.0f} | {cost['redis_median']:.0f} |",
        f"| ratio (target ≤ 1.2×) | {cost['ratio']:.2f}× | {cost['redis_median'] / cost['local_median']:.2f}× |",
        "",
        f"Commands one process sent (counted with `MONITOR`) while its breakers took calls in a loop "
        f"(100 calls per breaker, then 0.2 ms of pause), for {seconds:.0f} s; the bound is `1 / sync_interval` "
        "per active breaker. The last column is what Redis ran, the Lua script's own commands included "
        "(`INFO commandstats`). Failing calls use `reset_timeout=0`: the breakers trip, probe and reopen "
        "all the time. Rows with a rate rule (`failure_rate=0.5, min_calls=20, window=1.0`, never met) "
        "also push their window's counts to the fleet's window every round, in the same script call.",
        "",
        "| calls | breakers | sync_interval | calls/s | commands sent/s | bound/s | commands run in Redis/s (the script's included) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in traffic:
        lines.append(
            f"| {label(r)} | {r['breakers']} | {r['sync_interval']} | "
            f"{r['calls_per_s']:,.0f} | {r['sent_per_s']:.1f} | {r['bound_per_s']:.0f} | {r['ran_per_s']:,.0f} |"
        )
    RESULTS_MD.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS_MD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
