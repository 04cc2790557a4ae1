"""Two threads against one thread on one healthy breaker, on free-threaded CPython.

A focused companion to bench.py's thread table: longer runs, five interleaved repetitions, medians,
and the CPU time per call (which shows cache-line contention and is not inflated by other processes
on a shared machine). Three ways for threads to reach the same breaker:

- ``shared handle``: one ``Breaker`` object used by every thread (``b.call(f)`` per call);
- ``handle per thread``: each thread calls ``registry.breaker(name)`` once, then ``b.call(f)``;
- ``bound method per thread``: each thread binds ``call = registry.breaker(name).call`` once;
- ``bound method and function per thread``: the same, calling a function defined in the thread;
- two controls without panelboard: ``d.get(k)`` on one dict shared by the threads, and on a dict
  per thread. A shared built-in object stops scaling just like a shared handle.

What the cases separate: the breaker's own success path writes no shared memory (per-thread
handles on one breaker keep the CPU time per call flat in most runs), while a Python object shared
by the threads is reference-counted atomically by CPython 3.13t: the shared handle (its refcount
moves on every `b.call` lookup) and, to a lesser degree, a shared function called from C
(`_PyEval_Vector` takes a new reference to it). On these 2-core VMs the run-to-run spread is
large, so compare rows of one run, and run it more than once.

Writes the table to ``benches/ft_scaling.md`` as well as printing it.

Run: ``.venv-ft/bin/python benches/ft_scaling.py`` (after ``make build VENV=.venv-ft PYTHON=...``).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

import panelboard

CALLS = 1_500_000
REPEATS = 5


def f() -> int:
    return 1


def run(mode: str, threads: int) -> tuple[float, float]:
    registry = panelboard.Registry()
    shared = registry.breaker("svc")
    shared_dict = {"k": 1}
    cpu = [0.0] * threads

    def work(i: int) -> None:
        g = f
        if mode == "bound method and function per thread":

            def g() -> int:
                return 1

        if mode == "shared handle":
            b = shared
        else:
            b = registry.breaker("svc")
        t0 = time.thread_time()
        if mode.endswith("(no panelboard)"):
            d = shared_dict if mode.startswith("shared") else {"k": 1}
            for _ in range(CALLS):
                d.get("k")
        elif mode.startswith("bound method"):
            call = b.call
            for _ in range(CALLS):
                call(g)
        else:
            for _ in range(CALLS):
                b.call(g)
        cpu[i] = time.thread_time() - t0

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    return threads * CALLS / wall / 1e6, sum(cpu) / (threads * CALLS) * 1e9


def main() -> None:
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    lines = [
        f"Python {sys.version.split()[0]}, GIL {'enabled' if gil else 'disabled'}; "
        f"{CALLS:,} calls per thread, median of {REPEATS} interleaved runs; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    modes = (
        "shared handle",
        "handle per thread",
        "bound method per thread",
        "bound method and function per thread",
        "shared dict, d.get(k) (no panelboard)",
        "dict per thread, d.get(k) (no panelboard)",
    )
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(REPEATS):
        for mode in modes:
            for threads in (1, 2):
                results.setdefault((mode, threads), []).append(run(mode, threads))
    lines.append("| case | 1 thread M calls/s | 2 threads M calls/s | scaling | CPU ns/call 1 → 2 threads |")
    lines.append("|---|---|---|---|---|")
    for mode in modes:
        one = [statistics.median(x[k] for x in results[(mode, 1)]) for k in (0, 1)]
        two = [statistics.median(x[k] for x in results[(mode, 2)]) for k in (0, 1)]
        lines.append(
            f"| {mode} | {one[0]:.2f} | {two[0]:.2f} | {two[0] / one[0]:.2f}× | {one[1]:.0f} → {two[1]:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (Path(__file__).parent / "ft_scaling.md").write_text(
        "# Free-threaded scaling on one breaker\n\n"
        "Written by `benches/ft_scaling.py` (see its docstring for what each case means).\n\n" + text
    )


if __name__ == "__main__":
    main()
