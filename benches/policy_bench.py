#!/usr/bin/env python3
"""What a rate policy costs (issue 11): ``make bench`` runs this after ``benches/bench.py``
(``make bench-policy`` runs it alone) and writes ``benches/policy.md``.

Three measurements, each against the issue's target:

* **Closed success, per call, CPython 3.11**: ``b.call(f)`` on a breaker with a rate policy
  (``failure_rate=0.5``) against the same call on a consecutive-only breaker (today's path), timed
  in interleaved rounds (``benches/bench.py``'s ``Workload``: every round times every workload once,
  in a shuffled order, so that noise from other processes hits all of them alike). Each round
  gives a paired ratio (rate ÷ consecutive, timed moments apart); the rounds run in several fresh
  processes (``--processes``), since where a process's code and objects land moves the cost of both
  paths by up to a third on this VM from one process to the next (40 to 58 ns), and the figure is
  the median of the per-process medians of the paired ratios, with their range beside it.
  Target: at most 1.15x per call. A rate policy with the slow-call rule too (which reads the
  clock twice per call) is shown beside it.
* **Scaling on free-threaded 3.13t**: two threads, each with its own handle on one rate-policy
  breaker, against one thread (``benches/bench.py``'s ``throughput``: aggregate calls per second,
  and CPU time per call, which a busy machine does not inflate the way it does wall time).
  Target: at least 1.6x. The consecutive-only breaker and a bare ``f()`` per thread are measured
  in the same rounds, so a run on a busy 2-core machine shows what the machine itself allowed.
* **Memory per breaker at 100,000 names**: the resident-size growth of a fresh process creating
  100,000 rate-policy breakers and calling each once, divided by 100,000; the same for
  consecutive-only breakers. Target: at most 512 B per rate-policy breaker. (``tracemalloc`` sees
  only Python's allocations, not the Rust ones, so the resident size is what is measured.) Beside
  it, where it goes: the C heap's bytes in use (glibc ``mallinfo2``: the Rust allocations, chunk
  headers included) and the Python objects (``sys.getallocatedblocks``; a breaker is one
  ``_BreakerCore`` of ``__basicsize__`` bytes plus CPython's GC header).

Options: ``--quick`` (a smoke run), ``--no-ft``, ``--no-memory``, ``--ft-python PATH``,
``--processes N``, ``--rounds N`` (per process), ``--names N``, ``--md PATH``; ``--child ...`` modes are internal.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHES))

import bench  # noqa: E402  (benches/bench.py: Workload, ThreadCase, throughput, the ft venv)

DEFAULT_MD = BENCHES / "policy.md"
RATE = {"failure_rate": 0.5}
RATE_AND_SLOW = {"failure_rate": 0.5, "slow_call_duration": 1.0, "slow_call_rate": 0.5}
TARGET_RATIO = 1.15
TARGET_SCALING = 1.6
TARGET_BYTES = 512


def f() -> int:
    return 1


# --------------------------------------------------------------------------------------------------
# Closed success per call (this interpreter)


def run_micro(rounds: int, target_s: float, seed: int) -> dict[str, Any]:
    import panelboard

    reg = panelboard.Registry()
    plain = reg.breaker("consecutive")
    rate = reg.breaker("rate", **RATE)
    slow = reg.breaker("rate-slow", **RATE_AND_SLOW)
    workloads = [
        bench.Workload("bare", "baseline", "f()", {"f": f}, base=None),
        bench.Workload("consecutive", "panelboard", "b.call(f)", {"b": plain, "f": f}),
        bench.Workload("rate", "panelboard", "b.call(f)", {"b": rate, "f": f}),
        bench.Workload("rate_slow", "panelboard", "b.call(f)", {"b": slow, "f": f}),
    ]
    for w in workloads:
        w.calibrate(target_s)
    cpu_samples: dict[str, list[float]] = {w.op: [] for w in workloads}
    rng = random.Random(seed)
    for r in range(rounds):
        order = list(workloads)
        rng.shuffle(order)
        for w in order:
            w.measure()  # wall time (perf_counter)
            cpu_samples[w.op].append(cpu_ns_per_op(w))
        bench.log(f"[policy micro {bench.interpreter_label()}] round {r + 1}/{rounds}")
    for b in (plain, rate, slow):
        m = b.metrics()
        assert m.state == panelboard.State.CLOSED and m.failures == 0 and m.rejected == 0, m
    assert rate.metrics().window_calls > 0, "the rate-policy breaker did not count into its window"
    return {
        "interpreter": bench.interpreter_label(),
        "version": platform.python_version(),
        "rounds": rounds,
        "median_ns": {w.op: w.median for w in workloads},
        "samples_ns": {w.op: w.samples for w in workloads},
        "cpu_median_ns": {op: statistics.median(v) for op, v in cpu_samples.items()},
        "cpu_samples_ns": cpu_samples,
    }


def cpu_ns_per_op(w: bench.Workload) -> float:
    """The workload timed by this thread's CPU clock: on a busy machine, the wall clock also counts
    the time other processes took the core away, the thread's CPU time does not."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        seconds = w.runner(w.number, time.thread_time, itertools.repeat, **w.ns)
    finally:
        if gc_was:
            gc.enable()
    return seconds / w.number * 1e9


def run_micro_processes(processes: int, rounds: int, target_s: float, seed: int) -> dict[str, Any]:
    """``run_micro`` in ``processes`` fresh processes, one after the other, and the summary the
    report gives: per process, the medians of the paired per-round ratios to the consecutive-only
    path (CPU time and wall time); over the processes, their median and range."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(processes):
            out = Path(tmp) / f"micro{i}.json"
            cmd = [sys.executable, __file__, "--child", "micro", "--json", str(out)]
            cmd += ["--rounds", str(rounds), "--target", str(target_s), "--seed", str(seed + i)]
            subprocess.run(cmd, timeout=1800, check=True)
            runs.append(json.loads(out.read_text()))
            bench.log(f"[policy micro] process {i + 1}/{processes} done")

    def paired(run: dict[str, Any], samples: str, op: str) -> float:
        s = run[samples]
        return statistics.median(a / b for a, b in zip(s[op], s["consecutive"]))

    summary: dict[str, Any] = {"version": runs[0]["version"], "processes": processes, "rounds": rounds}
    for key, samples in (("cpu", "cpu_samples_ns"), ("wall", "samples_ns")):
        for op in ("rate", "rate_slow"):
            per_process = [paired(run, samples, op) for run in runs]
            summary[f"{key}_{op}_ratio"] = statistics.median(per_process)
            summary[f"{key}_{op}_per_process"] = per_process
        medians = "cpu_median_ns" if key == "cpu" else "median_ns"
        summary[f"{key}_ns"] = {
            op: statistics.median(run[medians][op] for run in runs) for op in runs[0][medians]
        }
    summary["runs"] = runs
    return summary


# --------------------------------------------------------------------------------------------------
# Two threads, own handles, one breaker (run in the 3.13t child)


def run_scaling(rounds: int, duration: float, seed: int) -> dict[str, Any]:
    import panelboard

    reg = panelboard.Registry()
    handles = {
        "rate": [reg.breaker("rate", **RATE) for _ in range(2)],
        "consecutive": [reg.breaker("consecutive") for _ in range(2)],
    }
    own_f = [bench.types.FunctionType(f.__code__, f.__globals__, f"f{i}") for i in range(2)]
    cases = [
        bench.ThreadCase(
            "rate",
            "panelboard",
            "rate policy, handle per thread",
            "b.call(f)",
            lambda i: {"b": handles["rate"][i], "f": f},
            True,
        ),
        bench.ThreadCase(
            "consecutive",
            "panelboard",
            "consecutive only, handle per thread",
            "b.call(f)",
            lambda i: {"b": handles["consecutive"][i], "f": f},
            True,
        ),
        bench.ThreadCase(
            "bare_own", "baseline", "bare f(), function per thread", "f()", lambda i: {"f": own_f[i]}, False
        ),
        # The same calls without the objects every thread shares in `b.call(f)` although it has a
        # handle of its own: the method `Breaker.call` (looked up on the type at each call) and the
        # function `f`, whose reference counts every call writes on 3.13t.
        bench.ThreadCase(
            "rate_own",
            "panelboard",
            "rate policy, bound method and function per thread",
            "c(f)",
            lambda i: {"c": handles["rate"][i].call, "f": own_f[i]},
            True,
        ),
        bench.ThreadCase(
            "consecutive_own",
            "panelboard",
            "consecutive only, bound method and function per thread",
            "c(f)",
            lambda i: {"c": handles["consecutive"][i].call, "f": own_f[i]},
            True,
        ),
    ]
    rates: dict[str, dict[int, list[float]]] = {c.key: {1: [], 2: []} for c in cases}
    cpu: dict[str, dict[int, list[float]]] = {c.key: {1: [], 2: []} for c in cases}
    for c in cases:
        bench.throughput(c, 1, duration / 10, 100)  # warm-up
    rng = random.Random(seed)
    for r in range(rounds):
        order = [(c, n) for c in cases for n in (1, 2)]
        rng.shuffle(order)
        for c, n in order:
            rate, cpu_ns = bench.throughput(c, n, duration, 200)
            rates[c.key][n].append(rate)
            cpu[c.key][n].append(cpu_ns)
        bench.log(f"[policy scaling {bench.interpreter_label()}] round {r + 1}/{rounds}")
    m = handles["rate"][0].metrics()
    assert m.state == panelboard.State.CLOSED and m.failures == 0 and m.window_calls > 0, m
    out: dict[str, Any] = {
        "interpreter": bench.interpreter_label(),
        "version": platform.python_version(),
        "gil_enabled": not bench.is_free_threaded(),
        "rounds": rounds,
        "duration_s": duration,
        "cases": {},
    }
    for c in cases:
        one, two = statistics.median(rates[c.key][1]), statistics.median(rates[c.key][2])
        per_round = [b / a for a, b in zip(rates[c.key][1], rates[c.key][2])]
        out["cases"][c.key] = {
            "label": c.label,
            "calls_per_s": {"1": one, "2": two},
            "scaling": two / one,
            "scaling_per_round": per_round,
            "cpu_ns": {"1": statistics.median(cpu[c.key][1]), "2": statistics.median(cpu[c.key][2])},
        }
    return out


# --------------------------------------------------------------------------------------------------
# Memory (a fresh process per measurement)


def malloc_in_use() -> int | None:
    """Bytes the C heap has handed out (glibc's ``mallinfo2``: ``uordblks`` + ``hblkhd``), or
    ``None`` where that is not glibc."""
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
            + ("uordblks", "fordblks", "keepcost")
        ]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def child_memory(names: int, kind: str) -> dict[str, Any]:
    import panelboard

    options = {"rate": RATE, "consecutive": {}}[kind]
    gc.collect()
    fmt = "svc-{:07d}".format
    reg = panelboard.Registry(**options)
    reg.breaker("warm-up").call(f)
    keys = [fmt(i) for i in range(names)]  # the names themselves are not the breakers' cost
    base = bench.rss_bytes()
    base_malloc, base_blocks = malloc_in_use(), sys.getallocatedblocks()
    for k in keys:
        reg.breaker(k)
    created = bench.rss_bytes()
    call = reg.call
    for k in keys:
        call(k, f)
    called = bench.rss_bytes()
    end_malloc, end_blocks = malloc_in_use(), sys.getallocatedblocks()
    if kind == "rate":
        assert reg.breaker(keys[-1]).metrics().window_calls == 1
    return {
        "kind": kind,
        "names": names,
        "per_breaker_created": (created - base) / names,
        "per_breaker_called": (called - base) / names,
        # Where it goes (after the calls): the C heap (Rust), and Python objects.
        "malloc_per_breaker": None
        if base_malloc is None or end_malloc is None
        else (end_malloc - base_malloc) / names,
        "python_blocks_per_breaker": (end_blocks - base_blocks) / names,
        "core_basicsize": core_basicsize(reg),
    }


def core_basicsize(reg: Any) -> int | None:
    """The size of a breaker's Python object (its type is not exported: found among what the
    registry reports to the garbage collector)."""
    for o in gc.get_referents(reg):
        if type(o).__name__ == "_BreakerCore":
            return int(type(o).__basicsize__)
    return None


def run_memory(python: str, names: int) -> dict[str, Any]:
    out = {}
    for kind in ("rate", "consecutive"):
        bench.log(f"[policy memory] {kind}: {names:,} breakers in a fresh process ...")
        proc = subprocess.run(
            [python, __file__, "--child", "memory", "--names", str(names), "--kind", kind],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            bench.log(proc.stderr)
            out[kind] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------------------------------
# Report


def verdict(ok: bool | None) -> str:
    return "?" if ok is None else ("yes" if ok else "**no**")


def report(raw: dict[str, Any], command: str) -> str:
    lines = [
        "# What a rate policy costs (issue 11)",
        "",
        f"Measured by `{command}` on {raw['when']} ({raw['machine']}). Regenerate with `make bench-policy`",
        "(or `make bench`, which runs it too). Method: `benches/policy_bench.py`'s docstring.",
        "",
        "| measurement | value | target | met |",
        "|---|---|---|---|",
    ]
    micro = raw.get("micro")
    if micro:
        cpu, wall = micro["cpu_ns"], micro["wall_ns"]
        spread = "–".join(f"{f(micro['cpu_rate_per_process']):.2f}" for f in (min, max))
        ratio = micro["cpu_rate_ratio"]
        lines.append(
            f"| closed success `b.call(f)`, CPython {micro['version']}: rate policy ÷ consecutive only, per call "
            f"(thread CPU time; median over {micro['processes']} processes of the paired per-round ratios) "
            f"| {cpu['rate']:.1f} ns ÷ {cpu['consecutive']:.1f} ns; **{ratio:.3f}x** (processes: {spread}x) "
            f"| ≤ {TARGET_RATIO}x | {verdict(ratio <= TARGET_RATIO)} |"
        )
        wall_ratio = micro["wall_rate_ratio"]
        wall_spread = "–".join(f"{f(micro['wall_rate_per_process']):.2f}" for f in (min, max))
        lines.append(
            f"| the same by the wall clock | {wall['rate']:.1f} ns ÷ {wall['consecutive']:.1f} ns; "
            f"{wall_ratio:.3f}x (processes: {wall_spread}x; a bare `f()`: {wall['bare']:.1f} ns) "
            f"| ≤ {TARGET_RATIO}x | {verdict(wall_ratio <= TARGET_RATIO)} |"
        )
        lines.append(
            f"| the same with the slow-call rule too (`slow_call_duration`, `slow_call_rate`), CPU time "
            f"| {cpu['rate_slow']:.1f} ns; {micro['cpu_rate_slow_ratio']:.3f}x | — | |"
        )
    ft = raw.get("ft")
    if ft:
        rate = ft["cases"]["rate"]
        lines.append(
            f"| CPython {ft['version']} free-threaded: 2 threads ÷ 1 thread, own handles on one rate-policy breaker "
            f"| **{rate['scaling']:.2f}x** ({rate['calls_per_s']['1'] / 1e6:.2f} → {rate['calls_per_s']['2'] / 1e6:.2f} "
            f"M calls/s; CPU per call {rate['cpu_ns']['1']:.0f} → {rate['cpu_ns']['2']:.0f} ns) "
            f"| ≥ {TARGET_SCALING}x | {verdict(rate['scaling'] >= TARGET_SCALING)} |"
        )
        for key in ("consecutive", "bare_own", "rate_own", "consecutive_own"):
            if key not in ft["cases"]:
                continue
            case = ft["cases"][key]
            lines.append(
                f"| same rounds, {case['label']} (what the machine allowed) | {case['scaling']:.2f}x "
                f"(CPU per call {case['cpu_ns']['1']:.0f} → {case['cpu_ns']['2']:.0f} ns) | — | |"
            )
    elif raw.get("ft_skipped"):
        lines.append(f"| 3.13t scaling | not measured: {raw['ft_skipped']} | ≥ {TARGET_SCALING}x | ? |")
    memory = raw.get("memory")
    if memory:
        rate_m, plain_m = memory.get("rate", {}), memory.get("consecutive", {})
        if "error" in rate_m:
            lines.append(
                f"| memory per rate-policy breaker | failed: {rate_m['error']} | ≤ {TARGET_BYTES} B | ? |"
            )
        else:
            per = rate_m["per_breaker_called"]
            lines.append(
                f"| memory per rate-policy breaker at {rate_m['names']:,} names (resident size, created and "
                f"called once) | **{per:.0f} B** (created: {rate_m['per_breaker_created']:.0f} B) "
                f"| ≤ {TARGET_BYTES} B | {verdict(per <= TARGET_BYTES)} |"
            )
        if "error" not in plain_m and plain_m:
            lines.append(
                f"| the same, consecutive-only breakers | {plain_m['per_breaker_called']:.0f} B "
                f"(created: {plain_m['per_breaker_created']:.0f} B) | — | |"
            )
        for label, m in (("rate-policy", rate_m), ("consecutive-only", plain_m)):
            if m.get("malloc_per_breaker") is not None:
                lines.append(
                    f"| where a {label} breaker's bytes go | C heap (Rust allocations, chunk headers "
                    f"included) {m['malloc_per_breaker']:.0f} B; Python objects "
                    f"{m['python_blocks_per_breaker']:.2f} per breaker (`_BreakerCore`: "
                    f"{m['core_basicsize']} B + the GC header) | — | |"
                )
    lines += [
        "",
        "The machine these numbers come from has 2 vCPUs shared with other work: the 3.13t rows measured",
        'in the same rounds say how much parallelism it actually gave. The rows "bound method and function',
        'per thread" call `c(f)` with `c = b.call` and `f` made per thread: `b.call(f)` with a handle per',
        "thread still has both threads write the reference counts of two shared objects on every call",
        "(the method `Breaker.call`, looked up on the type, and the global `f`), which is CPython's",
        "contention, not the breaker's. Instruction counts, which no load",
        "changes, are in `make bench-insns` (entries `rate_call`, target at most 1.15x `handle_call`, and",
        "`rate_slow_call`; `benches/insns-baseline.json`); they are blind to the clock read (under",
        "valgrind `clock_gettime` is a system call, whose kernel instructions callgrind does not count)",
        "and weigh a time-stamp counter read or a 64-bit division as one instruction each. Raw medians",
        "and per-round samples:",
        "",
        "```json",
        json.dumps(raw_for_report(raw), indent=1, sort_keys=True)[:8000],
        "```",
        "",
    ]
    return "\n".join(lines)


def raw_for_report(raw: dict[str, Any]) -> dict[str, Any]:
    """The raw figures the report ends with: each process's medians, not its every sample."""
    out = {k: v for k, v in raw.items() if k != "machine"}
    if "micro" in out:
        micro = dict(out["micro"])
        micro["runs"] = [
            {"cpu_median_ns": run["cpu_median_ns"], "median_ns": run["median_ns"]} for run in micro["runs"]
        ]
        out["micro"] = micro
    return out


def machine() -> str:
    cpus = os.cpu_count()
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return f"{cpus} vCPUs{load}, {platform.system()} {platform.release()}, {platform.python_implementation()}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-ft", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--ft-python")
    p.add_argument("--processes", type=int, default=5, help="fresh processes for the per-call cost")
    p.add_argument("--rounds", type=int, default=7, help="rounds per process")
    p.add_argument("--target", type=float, default=0.2, help="seconds per workload per round")
    p.add_argument("--thread-rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=1.0, help="seconds per thread measurement")
    p.add_argument("--names", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--md", type=Path, default=DEFAULT_MD)
    p.add_argument("--child", choices=["memory", "ft", "micro"], help=argparse.SUPPRESS)
    p.add_argument("--kind", default="rate", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.processes, args.rounds, args.target, args.thread_rounds, args.duration = 2, 3, 0.05, 2, 0.3
        args.names = min(args.names, 20_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "memory":
        print(json.dumps(child_memory(args.names, args.kind)))
        return 0
    if args.child == "micro":
        args.json.write_text(json.dumps(run_micro(args.rounds, args.target, args.seed)))
        return 0
    if args.child == "ft":
        args.json.write_text(json.dumps(run_scaling(args.thread_rounds, args.duration, args.seed)))
        return 0
    raw: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }
    raw["micro"] = run_micro_processes(args.processes, args.rounds, args.target, args.seed)
    if not args.no_ft:
        ft_python = bench.find_ft_python(args.ft_python)
        venv_python = bench.prepare_ft_venv(ft_python) if ft_python else None
        if venv_python is None:
            raw["ft_skipped"] = "no free-threaded CPython 3.13t found or built"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "ft.json"
                cmd = [venv_python, __file__, "--child", "ft", "--json", str(out)]
                cmd += ["--thread-rounds", str(args.thread_rounds), "--duration", str(args.duration)]
                proc = subprocess.run(cmd, timeout=1800)
                if proc.returncode == 0 and out.exists():
                    raw["ft"] = json.loads(out.read_text())
                else:
                    raw["ft_skipped"] = f"the 3.13t child failed (exit status {proc.returncode})"
    if not args.no_memory:
        raw["memory"] = run_memory(sys.executable, args.names)
    command = "make bench-policy" if not args.quick else "python benches/policy_bench.py --quick"
    text = report(raw, command)
    args.md.write_text(text)
    print(text.split("\n\nThe machine")[0])
    bench.log(f"[policy] wrote {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
