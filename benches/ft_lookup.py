"""Lookup by name and the module-level API on free-threaded CPython: two threads against one (issue 10,
items 3 and 4).

Each case runs its statement in a loop on 1 and on 2 threads, all on one healthy breaker named
``svc``, in interleaved, shuffled runs; the table shows medians of the aggregate throughput, the
scaling (2 threads ÷ 1) and the CPU time per call (thread CPU clocks summed over the threads: it
rises with contention on shared cache lines and, unlike the wall clock, does not count the time
other processes take on a shared machine, so that 2 × its 1-thread ÷ 2-thread ratio estimates the
scaling on 2 idle cores, as ``bench.py`` does). It reuses the thread harness of ``bench.py``.

Cases: a function per thread (the interpreter's ceiling); ``panelboard.call(name, f)`` as users
write it; ``Registry.call`` on the default registry and on a registry of one's own, both shared by
the threads; a shared ``Breaker`` handle; a shared decorated function; a handle per thread.

Run: ``.venv-ft/bin/python benches/ft_lookup.py [--runs 7] [--duration 0.3] [--output PATH]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (the thread harness)
import panelboard  # noqa: E402

THREADS = (1, 2)


def cases() -> list[bench.ThreadCase]:
    f = bench.f
    own_f = {i: types.FunctionType(f.__code__, f.__globals__, f"f{i}") for i in range(max(THREADS))}
    own_reg = panelboard.Registry()
    own_reg.breaker("svc")
    default = panelboard.default_registry()
    default.breaker("svc")
    shared = own_reg.breaker("svc")
    per_thread = {i: own_reg.breaker("svc") for i in range(max(THREADS))}
    decorated = own_reg.breaker("svc")(f)

    def case(key: str, label: str, stmt: str, make: object) -> bench.ThreadCase:
        return bench.ThreadCase(key, "panelboard", label, stmt, make, True)  # type: ignore[arg-type]

    return [
        case("bare_own", "bare `f()`, function per thread (ceiling)", "f()", lambda i: {"f": own_f[i]}),
        case(
            "module_call",
            "`panelboard.call(name, f)`",
            'pb.call("svc", f)',
            lambda i: {"pb": panelboard, "f": f},
        ),
        case(
            "default_registry_call",
            "`Registry.call(name, f)`, default registry",
            'reg.call("svc", f)',
            lambda i: {"reg": default, "f": f},
        ),
        case(
            "own_registry_call",
            "`Registry.call(name, f)`, a registry of one's own, shared",
            'reg.call("svc", f)',
            lambda i: {"reg": own_reg, "f": f},
        ),
        case("handle_shared", "`b.call(f)`, one shared handle", "b.call(f)", lambda i: {"b": shared, "f": f}),
        case("decorated_shared", "decorated function, shared", "g()", lambda i: {"g": decorated}),
        case(
            "handle_per_thread",
            "`b.call(f)`, a handle per thread",
            "b.call(f)",
            lambda i: {"b": per_thread[i], "f": f},
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--duration", type=float, default=0.3, help="seconds per measurement")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--output", help="also write the Markdown table here")
    args = p.parse_args(argv)
    all_cases = cases()
    rates: dict[tuple[str, int], list[float]] = {(c.key, n): [] for c in all_cases for n in THREADS}
    cpu: dict[tuple[str, int], list[float]] = {(c.key, n): [] for c in all_cases for n in THREADS}
    for c in all_cases:
        bench.throughput(c, 1, args.duration / 10, 100)  # warm-up
    rng = random.Random(args.seed)
    started = time.time()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    for _ in range(args.runs):
        order = [(c, n) for c in all_cases for n in THREADS]
        rng.shuffle(order)
        for c, n in order:
            rate, cpu_ns = bench.throughput(c, n, args.duration, 200)
            rates[(c.key, n)].append(rate)
            cpu[(c.key, n)].append(cpu_ns)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    lines = [
        f"Python {sys.version.split()[0]}, GIL {'enabled' if gil else 'disabled'}; {args.runs} interleaved runs "
        f"of {args.duration} s per case and thread count, medians; {time.time() - started:.0f} s; "
        f"load average before / after: {' '.join(load_before)} / {' '.join(load_after)}",
        "",
        "| case | 1 thread M calls/s | 2 threads M calls/s | scaling (2 ÷ 1) | CPU ns/call 1 → 2 threads "
        "| ≈ scaling on 2 idle cores (2 × CPU/call ratio) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for c in all_cases:
        one, two = (statistics.median(rates[(c.key, n)]) for n in THREADS)
        cpu_one, cpu_two = (statistics.median(cpu[(c.key, n)]) for n in THREADS)
        lines.append(
            f"| {c.label} | {one / 1e6:.2f} | {two / 1e6:.2f} | {two / one:.2f}× | {cpu_one:.0f} → {cpu_two:.0f} "
            f"| {2 * cpu_one / cpu_two:.2f}× |"
        )
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
