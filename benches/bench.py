#!/usr/bin/env python3
"""panelboard benchmark suite (issue 4): panelboard against pybreaker, circuitbreaker, aiobreaker, purgatory.

``make bench`` runs this file with the 3.11 virtualenv. In one run it

* times the same single-thread workloads through every library, interleaved: each round measures every
  workload once (in a shuffled order), so drift and noise from other processes hit all of them alike;
  the tables report the median over the rounds;
* measures aggregate throughput with 1, 2, 4 and 8 threads, on one shared healthy breaker and on one
  breaker per thread, here and (in a child process) on free-threaded CPython 3.13t;
* measures the resident size of 1,000,000 breakers in a fresh subprocess;
* runs the criterion benches of the Rust engine (``cargo bench --bench engine``) when cargo is there;
* writes ``benches/results.md`` and ``benches/throughput.png``.

Useful options: ``--quick`` (a smoke run of a few seconds per part), ``--no-ft``, ``--no-rust``,
``--no-memory``, ``--ft-python PATH``, ``--rounds N``; ``--callgrind`` adds instruction counts per
operation (exact even on a busy machine, about 4 minutes more); ``--save-raw PATH`` keeps the raw
measurements and ``--report-from PATH`` redraws the report and plot from them. The child modes
(``--child ...``) are internal.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import itertools
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ROOT / "benches"
RESULTS_MD = BENCHES / "results.md"
PLOT_PNG = BENCHES / "throughput.png"
FT_VENV = ROOT / ".venv-ft"
# The project's tools sit in `shared/` beside the clone (as `.ci/run` expects).
FT_LOCATOR = ROOT.parent / "shared" / "tools" / "free-threaded-python"
PEERS = ["pybreaker", "circuitbreaker", "aiobreaker", "purgatory"]
LIBS = ["panelboard", "pybreaker", "circuitbreaker", "aiobreaker", "purgatory"]
THREAD_COUNTS = [1, 2, 4, 8]
LONG = 3600  # seconds: an open breaker stays open for the whole run


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The functions every library guards
# --------------------------------------------------------------------------------------------------


def f() -> int:
    """The guarded no-op."""
    return 1


def boom() -> None:
    raise ValueError("boom")


async def af() -> int:
    return 1


async def aboom() -> None:
    raise ValueError("boom")


def is_free_threaded() -> bool:
    return bool(getattr(sys, "_is_gil_enabled", lambda: True)() is False)


def interpreter_label() -> str:
    v = sys.version_info
    return f"{v.major}.{v.minor}{'t' if is_free_threaded() else ''}"


def lib_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


def available(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------------------------------
# Single-thread workloads
# --------------------------------------------------------------------------------------------------


class Workload:
    """One statement timed in a loop. ``base`` names the baseline its added cost is measured against."""

    def __init__(
        self,
        op: str,
        lib: str,
        stmt: str,
        ns: dict[str, Any],
        base: str | None = "bare",
        is_async: bool = False,
        note: str = "",
    ) -> None:
        self.op, self.lib, self.stmt, self.ns = op, lib, stmt, ns
        self.base, self.is_async, self.note = base, is_async, note
        self.number = 0
        self.samples: list[float] = []  # ns per operation, one per round
        self.runner = self._compile()
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def key(self) -> str:
        return f"{self.lib}:{self.op}"

    def _compile(self) -> Callable[..., Any]:
        # Every workload gets the same loop (timeit's shape), with its objects as fast locals.
        params = "".join(f", {name}" for name in self.ns)
        body = textwrap.indent(self.stmt, " " * 8)
        head = "async def" if self.is_async else "def"
        src = (
            f"{head} _bench(_n, _timer, _repeat{params}):\n"
            f"    _t0 = _timer()\n"
            f"    for _ in _repeat(None, _n):\n{body}\n"
            f"    return _timer() - _t0\n"
        )
        scope: dict[str, Any] = {}
        exec(compile(src, f"<bench {self.key}>", "exec"), scope)
        return scope["_bench"]

    def time(self, n: int) -> float:
        """Seconds for ``n`` executions."""
        gc_was = gc.isenabled()
        gc.disable()
        try:
            if self.is_async:
                assert self.loop is not None
                coro = self.runner(n, time.perf_counter, itertools.repeat, **self.ns)
                return self.loop.run_until_complete(coro)
            return self.runner(n, time.perf_counter, itertools.repeat, **self.ns)
        finally:
            if gc_was:
                gc.enable()

    def calibrate(self, target_s: float) -> None:
        n = 64
        while True:
            t = self.time(n)
            if t >= target_s / 4 or n >= 1 << 26:
                break
            n *= 4 if t < target_s / 40 else 2
        self.number = max(1, int(n * target_s / max(t, 1e-9)))

    def measure(self) -> None:
        self.samples.append(self.time(self.number) / self.number * 1e9)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def build_sync_workloads() -> list[Workload]:
    import panelboard

    W: list[Workload] = []
    W.append(Workload("empty", "baseline", "pass", {}, base=None, note="the loop alone"))
    W.append(Workload("bare", "baseline", "f()", {"f": f}, base=None, note="a bare `f()`"))
    W.append(
        Workload(
            "bare_raise",
            "baseline",
            "try:\n    boom()\nexcept ValueError:\n    pass",
            {"boom": boom},
            base=None,
            note="`boom()` raising ValueError, caught",
        )
    )

    # panelboard
    reg = panelboard.Registry()
    b = reg.breaker("svc")
    ob = reg.breaker("open", failure_threshold=1, reset_timeout=LONG)
    try:
        ob.call(boom)
    except ValueError:
        pass
    assert ob.state == panelboard.State.OPEN, ob.state
    fb = reg.breaker("failing", failure_threshold=2**32 - 1)
    g = b(f)
    fg = fb(boom)
    COE = panelboard.CircuitOpenError
    W += [
        Workload("registry_call", "panelboard", 'reg.call("svc", f)', {"reg": reg, "f": f}),
        Workload("handle_call", "panelboard", "b.call(f)", {"b": b, "f": f}),
        Workload("decorated", "panelboard", "g()", {"g": g}),
        Workload("context", "panelboard", "with b:\n    f()", {"b": b, "f": f}),
        Workload(
            "try_acquire_success", "panelboard", "p = b.try_acquire()\nf()\np.success()", {"b": b, "f": f}
        ),
        Workload(
            "reject_exc",
            "panelboard",
            "try:\n    ob.call(f)\nexcept COE:\n    pass",
            {"ob": ob, "f": f, "COE": COE},
            base=None,
        ),
        Workload(
            "reject_none", "panelboard", "if ob.try_acquire() is None:\n    pass", {"ob": ob}, base=None
        ),
        Workload(
            "failure",
            "panelboard",
            "try:\n    fb.call(boom)\nexcept ValueError:\n    pass",
            {"fb": fb, "boom": boom},
            base="bare_raise",
        ),
        Workload(
            "failure_decorated",
            "panelboard",
            "try:\n    fg()\nexcept ValueError:\n    pass",
            {"fg": fg},
            base="bare_raise",
        ),
    ]

    def check_panelboard() -> None:
        assert b.state == panelboard.State.CLOSED, f"panelboard healthy breaker is {b.state}"
        assert ob.state == panelboard.State.OPEN, f"panelboard open breaker is {ob.state}"
        assert fb.state == panelboard.State.CLOSED, f"panelboard failing breaker is {fb.state}"
        m = b.metrics()
        assert m.successes > 0 and m.failures == 0 and m.rejected == 0, m
        assert ob.metrics().rejected > 0

    CHECKS.append(check_panelboard)

    if available("pybreaker"):
        import pybreaker

        cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=LONG, name="svc")
        ocb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=LONG, name="open")
        try:
            ocb.call(boom)
        except (ValueError, pybreaker.CircuitBreakerError):
            pass
        assert ocb.current_state == "open", ocb.current_state
        fcb = pybreaker.CircuitBreaker(fail_max=10**12, reset_timeout=LONG, name="failing")
        pyb_reg = {"svc": cb}
        pg = cb(f)
        CBE = pybreaker.CircuitBreakerError
        W += [
            Workload(
                "registry_call",
                "pybreaker",
                'reg["svc"].call(f)',
                {"reg": pyb_reg, "f": f},
                note="dict lookup + `cb.call(f)` (pybreaker has no registry)",
            ),
            Workload("handle_call", "pybreaker", "cb.call(f)", {"cb": cb, "f": f}),
            Workload("decorated", "pybreaker", "g()", {"g": pg}),
            Workload("context", "pybreaker", "with cb.calling():\n    f()", {"cb": cb, "f": f}),
            Workload(
                "reject_exc",
                "pybreaker",
                "try:\n    ocb.call(f)\nexcept CBE:\n    pass",
                {"ocb": ocb, "f": f, "CBE": CBE},
                base=None,
            ),
            Workload(
                "failure",
                "pybreaker",
                "try:\n    fcb.call(boom)\nexcept ValueError:\n    pass",
                {"fcb": fcb, "boom": boom},
                base="bare_raise",
            ),
        ]

        def check_pybreaker() -> None:
            assert cb.current_state == "closed", cb.current_state
            assert ocb.current_state == "open", ocb.current_state
            assert fcb.current_state == "closed", fcb.current_state

        CHECKS.append(check_pybreaker)

    if available("circuitbreaker"):
        import circuitbreaker

        cbb = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=LONG, name="svc")
        cg = cbb(f)
        ocbb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=LONG, name="open")
        og = ocbb(f)
        ob_fail = ocbb(boom)
        try:
            ob_fail()
        except ValueError:
            pass
        assert ocbb.opened
        fcbb = circuitbreaker.CircuitBreaker(failure_threshold=10**12, recovery_timeout=LONG, name="failing")
        fcg = fcbb(boom)
        CBE2 = circuitbreaker.CircuitBreakerError
        W += [
            Workload(
                "registry_call",
                "circuitbreaker",
                'reg["svc"]()',
                {"reg": {"svc": cg}},
                note="dict lookup + decorated function (its `call()` skips the open check)",
            ),
            Workload(
                "handle_call",
                "circuitbreaker",
                "cb.call(f)",
                {"cb": cbb, "f": f},
                note="`CircuitBreaker.call` never checks the open state",
            ),
            Workload("decorated", "circuitbreaker", "g()", {"g": cg}),
            Workload(
                "context",
                "circuitbreaker",
                "with cb:\n    f()",
                {"cb": cbb, "f": f},
                note="its `with` never checks the open state",
            ),
            Workload(
                "reject_exc",
                "circuitbreaker",
                "try:\n    og()\nexcept CBE:\n    pass",
                {"og": og, "CBE": CBE2},
                base=None,
            ),
            Workload(
                "failure",
                "circuitbreaker",
                "try:\n    fg()\nexcept ValueError:\n    pass",
                {"fg": fcg},
                base="bare_raise",
            ),
        ]

        def check_circuitbreaker() -> None:
            assert cbb.closed and not ocbb.closed and fcbb.closed

        CHECKS.append(check_circuitbreaker)
    return W


def build_async_workloads(loop: asyncio.AbstractEventLoop) -> list[Workload]:
    import panelboard

    W: list[Workload] = []
    W.append(
        Workload(
            "abare",
            "baseline",
            "await af()",
            {"af": af},
            base=None,
            is_async=True,
            note="a bare `await af()`",
        )
    )
    W.append(
        Workload(
            "abare_raise",
            "baseline",
            "try:\n    await aboom()\nexcept ValueError:\n    pass",
            {"aboom": aboom},
            base=None,
            is_async=True,
        )
    )
    reg = panelboard.Registry()
    b = reg.breaker("svc")
    ob = reg.breaker("open", failure_threshold=1, reset_timeout=LONG)
    try:
        ob.call(boom)
    except ValueError:
        pass
    COE = panelboard.CircuitOpenError
    ag = b(af)
    W += [
        Workload("acall", "panelboard", "await b.acall(af)", {"b": b, "af": af}, base="abare", is_async=True),
        Workload("adecorated", "panelboard", "await g()", {"g": ag}, base="abare", is_async=True),
        Workload(
            "acontext",
            "panelboard",
            "async with b:\n    await af()",
            {"b": b, "af": af},
            base="abare",
            is_async=True,
        ),
        Workload(
            "areject_exc",
            "panelboard",
            "try:\n    await ob.acall(af)\nexcept COE:\n    pass",
            {"ob": ob, "af": af, "COE": COE},
            base=None,
            is_async=True,
        ),
    ]

    def check() -> None:
        assert b.state == panelboard.State.CLOSED and ob.state == panelboard.State.OPEN

    CHECKS.append(check)

    if available("aiobreaker"):
        import aiobreaker

        ab = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=LONG))
        oab = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=datetime.timedelta(seconds=LONG))
        try:
            loop.run_until_complete(oab.call_async(aboom))
        except (ValueError, aiobreaker.CircuitBreakerError):
            pass
        abg = ab(af)
        W += [
            Workload(
                "acall",
                "aiobreaker",
                "await ab.call_async(af)",
                {"ab": ab, "af": af},
                base="abare",
                is_async=True,
            ),
            Workload("adecorated", "aiobreaker", "await g()", {"g": abg}, base="abare", is_async=True),
            Workload(
                "areject_exc",
                "aiobreaker",
                "try:\n    await oab.call_async(af)\nexcept CBE:\n    pass",
                {"oab": oab, "af": af, "CBE": aiobreaker.CircuitBreakerError},
                base=None,
                is_async=True,
            ),
        ]

        def check_ab() -> None:
            assert ab.current_state == aiobreaker.CircuitBreakerState.CLOSED, ab.current_state
            assert oab.current_state == aiobreaker.CircuitBreakerState.OPEN, oab.current_state

        CHECKS.append(check_ab)

    if available("purgatory"):
        import purgatory
        from purgatory.domain.model import OpenedState

        factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=LONG)
        pg = factory("svc")(af)
        opg_fail = factory("open", threshold=1)(aboom)
        opg = factory("open", threshold=1)(af)
        try:
            loop.run_until_complete(opg_fail())
        except (ValueError, OpenedState):
            pass
        W += [
            Workload("adecorated", "purgatory", "await g()", {"g": pg}, base="abare", is_async=True),
            Workload(
                "acontext",
                "purgatory",
                'async with await factory.get_breaker("svc"):\n    await af()',
                {"factory": factory, "af": af},
                base="abare",
                is_async=True,
            ),
            Workload(
                "areject_exc",
                "purgatory",
                "try:\n    await og()\nexcept OS:\n    pass",
                {"og": opg, "OS": OpenedState},
                base=None,
                is_async=True,
            ),
        ]
    if available("circuitbreaker"):
        import circuitbreaker

        cbb = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=LONG, name="asvc")
        W.append(
            Workload("adecorated", "circuitbreaker", "await g()", {"g": cbb(af)}, base="abare", is_async=True)
        )
    for w in W:
        w.loop = loop
    return W


CHECKS: list[Callable[[], None]] = []


def run_micro(rounds: int, target_s: float, seed: int) -> dict[str, Any]:
    """Interleaved rounds of every single-thread workload; medians in ns per operation."""
    loop = asyncio.new_event_loop()
    workloads = build_sync_workloads() + build_async_workloads(loop)
    log(f"[micro {interpreter_label()}] {len(workloads)} workloads, calibrating ...")
    for w in workloads:
        w.calibrate(target_s)  # also the warm-up
    rng = random.Random(seed)
    for r in range(rounds):
        order = list(workloads)
        rng.shuffle(order)
        for w in order:
            w.measure()
        log(f"[micro {interpreter_label()}] round {r + 1}/{rounds} done")
    for check in CHECKS:
        check()
    loop.close()
    return {
        "interpreter": interpreter_label(),
        "rounds": rounds,
        "workloads": [
            {
                "op": w.op,
                "lib": w.lib,
                "stmt": w.stmt,
                "base": w.base,
                "async": w.is_async,
                "note": w.note,
                "number": w.number,
                "samples": w.samples,
                "median": w.median,
            }
            for w in workloads
        ],
    }


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------


class ThreadCase:
    def __init__(
        self,
        key: str,
        lib: str,
        label: str,
        stmt: str,
        make: Callable[[int], dict[str, Any]],
        shared: bool | None,
    ) -> None:
        self.key, self.lib, self.label, self.stmt, self.make, self.shared = (
            key,
            lib,
            label,
            stmt,
            make,
            shared,
        )
        names = list(make(0))
        params = "".join(f", {n}" for n in names)
        body = textwrap.indent(stmt, " " * 12)
        src = (
            f"def _worker(_stop, _barrier, _out, _ends, _cpus, _i, _chunk, _repeat, _timer, _cpu{params}):\n"
            f"    _n = 0\n"
            f"    _barrier.wait()\n"
            f"    _c0 = _cpu()\n"
            f"    while True:\n"
            f"        for _ in _repeat(None, _chunk):\n{body}\n"
            f"        _n += _chunk\n"
            f"        if _stop[0]:\n"
            f"            break\n"
            f"    _cpus[_i] = _cpu() - _c0\n"
            f"    _ends[_i] = _timer()\n"
            f"    _out[_i] = _n\n"
        )
        scope: dict[str, Any] = {}
        exec(compile(src, f"<thread {key}>", "exec"), scope)
        self.worker = scope["_worker"]


def build_thread_cases() -> list[ThreadCase]:
    import panelboard

    reg = panelboard.Registry()
    shared_b = reg.breaker("svc")
    own = {i: reg.breaker(f"svc-{i}") for i in range(max(THREAD_COUNTS))}
    # Function objects of their own, so that no two threads touch the same Python object.
    own_f = {i: types.FunctionType(f.__code__, f.__globals__, f"f{i}") for i in range(max(THREAD_COUNTS))}
    same = {i: reg.breaker("svc") for i in range(max(THREAD_COUNTS))}  # one breaker, own handle objects
    cases = [
        ThreadCase("bare", "baseline", "bare f(), shared function", "f()", lambda i: {"f": f}, True),
        ThreadCase(
            "bare_own",
            "baseline",
            "bare f(), function per thread (ceiling)",
            "f()",
            lambda i: {"f": own_f[i]},
            False,
        ),
        ThreadCase(
            "pb_handle_shared",
            "panelboard",
            "panelboard b.call, shared handle",
            "b.call(f)",
            lambda i: {"b": shared_b, "f": f},
            True,
        ),
        ThreadCase(
            "pb_handle_samebreaker",
            "panelboard",
            "panelboard b.call, one breaker, handle per thread",
            "b.call(f)",
            lambda i: {"b": same[i], "f": f},
            True,
        ),
        ThreadCase(
            "pb_handle_distinct",
            "panelboard",
            "panelboard b.call, breaker per thread",
            "b.call(f)",
            lambda i: {"b": own[i], "f": f},
            False,
        ),
        ThreadCase(
            "pb_handle_isolated",
            "panelboard",
            "panelboard b.call, breaker and function per thread",
            "b.call(f)",
            lambda i: {"b": own[i], "f": own_f[i]},
            False,
        ),
        ThreadCase(
            "pb_registry_shared",
            "panelboard",
            "panelboard Registry.call, one name",
            'reg.call("svc", f)',
            lambda i: {"reg": reg, "f": f},
            True,
        ),
        ThreadCase(
            "pb_module_call",
            "panelboard",
            "panelboard.call (module-level), one name",
            'pb.call("svc", f)',
            lambda i: {"pb": panelboard, "f": f},
            True,
        ),
        ThreadCase(
            "pb_registry_distinct",
            "panelboard",
            "panelboard Registry.call, name per thread",
            "reg.call(name, f)",
            lambda i: {"reg": reg, "name": f"svc-{i}", "f": f},
            False,
        ),
    ]
    if available("pybreaker"):
        import pybreaker

        shared_cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=LONG)
        own_cb = {
            i: pybreaker.CircuitBreaker(fail_max=5, reset_timeout=LONG) for i in range(max(THREAD_COUNTS))
        }
        cases += [
            ThreadCase(
                "pyb_shared",
                "pybreaker",
                "pybreaker cb.call, shared",
                "cb.call(f)",
                lambda i: {"cb": shared_cb, "f": f},
                True,
            ),
            ThreadCase(
                "pyb_distinct",
                "pybreaker",
                "pybreaker cb.call, breaker per thread",
                "cb.call(f)",
                lambda i: {"cb": own_cb[i], "f": f},
                False,
            ),
        ]
    if available("circuitbreaker"):
        import circuitbreaker

        shared_g = circuitbreaker.CircuitBreaker(recovery_timeout=LONG)(f)
        own_g = {
            i: circuitbreaker.CircuitBreaker(recovery_timeout=LONG)(f) for i in range(max(THREAD_COUNTS))
        }
        cases += [
            ThreadCase(
                "cb_shared",
                "circuitbreaker",
                "circuitbreaker decorated, shared",
                "g()",
                lambda i: {"g": shared_g},
                True,
            ),
            ThreadCase(
                "cb_distinct",
                "circuitbreaker",
                "circuitbreaker decorated, breaker per thread",
                "g()",
                lambda i: {"g": own_g[i]},
                False,
            ),
        ]

    def check() -> None:
        for handle in [shared_b, *own.values()]:
            assert handle.state == panelboard.State.CLOSED, handle
            m = handle.metrics()
            assert m.failures == 0 and m.rejected == 0, m

    CHECKS.append(check)
    return cases


def throughput(case: ThreadCase, threads: int, duration: float, chunk: int) -> tuple[float, float]:
    """Aggregate calls per second of ``threads`` threads running the case for about ``duration`` s, and
    the CPU time per call (thread CPU clocks: unlike the wall clock, it does not count the time other
    processes on a shared machine take from us, but it does count cache-line contention)."""
    stop = [False]
    barrier = threading.Barrier(threads + 1)
    out = [0] * threads
    ends = [0.0] * threads
    cpus = [0.0] * threads
    ts = [
        threading.Thread(
            target=case.worker,
            args=(
                stop,
                barrier,
                out,
                ends,
                cpus,
                i,
                chunk,
                itertools.repeat,
                time.perf_counter,
                time.thread_time,
            ),
            kwargs=case.make(i),
            daemon=True,
        )
        for i in range(threads)
    ]
    for t in ts:
        t.start()
    barrier.wait(timeout=60)
    t0 = time.perf_counter()
    time.sleep(duration)
    stop[0] = True
    for t in ts:
        t.join(timeout=120)
        if t.is_alive():
            raise RuntimeError(f"thread of {case.key} did not finish")
    calls = sum(out)
    return calls / (max(ends) - t0), sum(cpus) / calls * 1e9


def run_threads(rounds: int, duration: float, seed: int) -> dict[str, Any]:
    cases = build_thread_cases()
    samples: dict[str, dict[int, list[float]]] = {c.key: {n: [] for n in THREAD_COUNTS} for c in cases}
    cpu: dict[str, dict[int, list[float]]] = {c.key: {n: [] for n in THREAD_COUNTS} for c in cases}
    rng = random.Random(seed)
    label = interpreter_label()
    for c in cases:  # warm-up
        throughput(c, 1, duration / 10, 100)
    for r in range(rounds):
        order = [(c, n) for c in cases for n in THREAD_COUNTS]
        rng.shuffle(order)
        for c, n in order:
            rate, cpu_ns = throughput(c, n, duration, 200)
            samples[c.key][n].append(rate)
            cpu[c.key][n].append(cpu_ns)
        log(f"[threads {label}] round {r + 1}/{rounds} done")
    for check in CHECKS:
        check()
    return {
        "interpreter": label,
        "gil_enabled": not is_free_threaded(),
        "rounds": rounds,
        "duration_s": duration,
        "cases": [
            {
                "key": c.key,
                "lib": c.lib,
                "label": c.label,
                "stmt": c.stmt,
                "shared": c.shared,
                "samples": {str(n): samples[c.key][n] for n in THREAD_COUNTS},
                "median": {str(n): statistics.median(samples[c.key][n]) for n in THREAD_COUNTS},
                "cpu_ns": {str(n): statistics.median(cpu[c.key][n]) for n in THREAD_COUNTS},
            }
            for c in cases
        ],
    }


# --------------------------------------------------------------------------------------------------
# Memory (run in a fresh subprocess: ``--child memory``)
# --------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_memory(names: int, lib: str) -> dict[str, Any]:
    """Resident bytes per breaker for ``names`` distinct names (names as ``svc-0000123``)."""
    gc.collect()
    fmt = "svc-{:07d}".format
    if lib == "panelboard":
        import panelboard

        reg = panelboard.Registry()
        reg.breaker("warm-up")
        base = rss_bytes()
        for i in range(names):
            reg.breaker(fmt(i))
        created = rss_bytes()
        call = reg.call
        for i in range(names):
            call(fmt(i), f)
        called = rss_bytes()
        assert len(reg) == names + 1
    else:
        if lib == "pybreaker":
            import pybreaker

            make = lambda: pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)  # noqa: E731
            call_one = lambda cb: cb.call(f)  # noqa: E731
        else:
            import circuitbreaker

            make = lambda: circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)  # noqa: E731
            call_one = lambda cb: cb.call(f)  # noqa: E731
        reg_d: dict[str, Any] = {}
        base = rss_bytes()
        for i in range(names):
            reg_d[fmt(i)] = make()
        created = rss_bytes()
        for i in range(names):
            call_one(reg_d[fmt(i)])
        called = rss_bytes()
    return {
        "lib": lib,
        "names": names,
        "base": base,
        "created": created,
        "called": called,
        "per_breaker_created": (created - base) / names,
        "per_breaker_called": (called - base) / names,
    }


def run_memory(python: str, names: int, peer_names: int) -> list[dict[str, Any]]:
    out = []
    plan = [("panelboard", names)] + [
        (p, peer_names) for p in ("pybreaker", "circuitbreaker") if available(p)
    ]
    for lib, n in plan:
        log(f"[memory] {lib}: {n:,} breakers in a fresh process ...")
        proc = subprocess.run(
            [python, __file__, "--child", "memory", "--names", str(n), "--lib", lib],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            log(proc.stderr)
            out.append({"lib": lib, "names": n, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


# --------------------------------------------------------------------------------------------------
# Free-threaded child
# --------------------------------------------------------------------------------------------------


def find_ft_python(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if FT_LOCATOR.exists():
        try:
            path = subprocess.run(
                [str(FT_LOCATOR)], capture_output=True, text=True, timeout=600
            ).stdout.strip()
            if path and Path(path).exists():
                return path
        except (OSError, subprocess.SubprocessError):
            pass
    return shutil.which("python3.13t")


def sh(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> bool:
    log("$ " + " ".join(cmd))
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"  failed: {exc}")
        return False


def prepare_ft_venv(ft_python: str) -> str | None:
    """Builds panelboard into .venv-ft (the release build, as ``make build`` does) and installs the peers."""
    py = FT_VENV / "bin" / "python"
    if (FT_VENV / ".deps").exists():
        ok = sh(["make", "build", f"VENV={FT_VENV.name}", f"PYTHON={ft_python}"])
    else:
        # `make build VENV=.venv-ft` installs the test dependencies first, and mypy's native
        # dependencies do not build for 3.13t; the benchmark needs only maturin.
        ok = py.exists() or sh([ft_python, "-m", "venv", str(FT_VENV)])
        ok = ok and (
            available_in(str(py), "maturin") or sh([str(py), "-m", "pip", "install", "-q", "maturin"])
        )
        env = dict(os.environ, VIRTUAL_ENV=str(FT_VENV))
        ok = ok and sh([str(FT_VENV / "bin" / "maturin"), "develop", "--release", "-q"], env=env)
    if not ok:
        return None
    missing = [p for p in PEERS if not available_in(str(py), p)]
    if missing:
        sh([str(py), "-m", "pip", "install", "-q", *missing])
    return str(py) if available_in(str(py), "panelboard") else None


def available_in(python: str, module: str) -> bool:
    if not Path(python).exists():
        return False
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True, cwd="/").returncode == 0


def run_ft_child(python: str, args: argparse.Namespace) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ft.json"
        cmd = [
            python,
            __file__,
            "--child",
            "ft",
            "--json",
            str(out),
            "--rounds",
            str(args.rounds),
            "--thread-rounds",
            str(args.thread_rounds),
            "--duration",
            str(args.duration),
            "--target",
            str(args.target),
            "--seed",
            str(args.seed),
        ]
        log("$ " + " ".join(cmd))
        proc = subprocess.run(cmd, timeout=1200)
        if proc.returncode != 0 or not out.exists():
            log(f"[ft] child failed with exit status {proc.returncode}")
            return None
        return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------------
# Instruction counts (callgrind): deterministic, so usable on a busy machine (``--callgrind``)
# --------------------------------------------------------------------------------------------------

CG_WORKLOADS = [
    "baseline:empty",
    "baseline:bare",
    "baseline:bare_raise",
    "panelboard:registry_call",
    "panelboard:handle_call",
    "panelboard:decorated",
    "panelboard:try_acquire_success",
    "panelboard:reject_exc",
    "panelboard:reject_none",
    "panelboard:failure",
    "pybreaker:handle_call",
    "pybreaker:decorated",
    "pybreaker:reject_exc",
    "pybreaker:failure",
    "circuitbreaker:decorated",
    "circuitbreaker:reject_exc",
    "circuitbreaker:failure",
]


def child_callgrind_loop(key: str, n: int) -> None:
    """Builds every workload (the same set-up each time) and runs one of them ``n`` times."""
    w = next(w for w in build_sync_workloads() if w.key == key)
    w.runner(n, time.perf_counter, itertools.repeat, **w.ns)


def run_callgrind(python: str, n: int) -> dict[str, Any]:
    """Instructions per operation: (Ir(n) - Ir(1)) / (n - 1), so that start-up and set-up cancel out."""
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return {"skipped": "valgrind not found"}
    env = dict(os.environ, PYTHONHASHSEED="0")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in CG_WORKLOADS:
            lib = key.split(":")[0]
            if lib not in ("baseline", "panelboard") and not available(lib):
                continue
            ir = []
            for count in (1, n):
                cg_out = Path(tmp) / f"cg.{count}"
                proc = subprocess.run(
                    [
                        valgrind,
                        "--tool=callgrind",
                        f"--callgrind-out-file={cg_out}",
                        python,
                        __file__,
                        "--child",
                        "callgrind",
                        "--workload",
                        key,
                        "--n",
                        str(count),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=600,
                )
                m = re.search(r"Collected : (\d+)", proc.stderr)
                if proc.returncode != 0 or not m:
                    return {"skipped": f"callgrind failed on {key}: {proc.stderr.strip().splitlines()[-1:]}"}
                ir.append(int(m.group(1)))
            out[key] = (ir[1] - ir[0]) / (n - 1)
            log(f"[callgrind] {key}: {out[key]:.0f} instructions per operation")
    return {"n": n, "instructions": out}


def callgrind_section(cg: dict[str, Any]) -> list[str]:
    L = ["## Instructions per operation (callgrind, CPython 3.11)", ""]
    if "instructions" not in cg:
        return L + [f"Skipped: {cg.get('skipped')}.", ""]
    ins = cg["instructions"]
    L.append(
        f"`valgrind --tool=callgrind`, (Ir(N) − Ir(1)) / (N − 1) with N = {cg['n']:,}: exact and unaffected "
        "by other load on the machine (but blind to cache misses and contention). Added = minus the bare "
        "call (minus the bare raise for failure paths)."
    )
    L.append("")
    L.append("| workload | panelboard | added | pybreaker | added | ratio | circuitbreaker | added | ratio |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    base = {"failure": ins.get("baseline:bare_raise")}
    for op, label in OPS:
        if op in ("bare", "context", "failure_decorated"):
            continue
        b = base.get(op, ins.get("baseline:bare")) if not op.startswith("reject") else 0.0
        row = [label]
        ours = ins.get(f"panelboard:{op}")
        row += [fmt_ns(ours), fmt_ns(None if ours is None else ours - b)]
        for peer in ("pybreaker", "circuitbreaker"):
            theirs = ins.get(f"{peer}:{op}")
            row += [
                fmt_ns(theirs),
                fmt_ns(None if theirs is None else theirs - b),
                fmt_ratio(None if theirs is None else theirs - b, None if ours is None else ours - b),
            ]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append(
        f"Bare call: {fmt_ns(ins.get('baseline:bare'))}, bare raise: {fmt_ns(ins.get('baseline:bare_raise'))}, "
        f"empty loop: {fmt_ns(ins.get('baseline:empty'))} instructions."
    )
    L.append("")

    def get(lib: str, op: str) -> float | None:
        v = ins.get(f"{lib}:{op}")
        if v is None or op.startswith("reject"):
            return v
        return v - ins["baseline:bare_raise" if op == "failure" else "baseline:bare"]

    L.append("The per-call targets by instruction count:")
    L.append("")
    L.append("| target | measured | required | |")
    L.append("|---|---|---|---|")
    for t in ratio_targets(get, "instructions"):
        verdict = "–" if t["ok"] is None else ("PASS" if t["ok"] else "**MISS**")
        L.append(f"| {t['name']} | {t['measured']} | {t['target']} | {verdict} |")
    L.append("")
    return L


# --------------------------------------------------------------------------------------------------
# Rust criterion benches
# --------------------------------------------------------------------------------------------------


_TIME_RE = re.compile(
    r"^(?P<name>.+?)\s+time:\s+\[(?P<lo>[\d.]+) (?P<ulo>\S+) (?P<mid>[\d.]+) (?P<umid>\S+) "
    r"(?P<hi>[\d.]+) (?P<uhi>\S+)\]"
)
_UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def run_rust(timeout: int) -> dict[str, Any]:
    cargo = shutil.which("cargo")
    if not cargo:
        return {"skipped": "cargo not found"}
    cmd = [
        cargo,
        "bench",
        "--bench",
        "engine",
        "--",
        "--noplot",
        "--warm-up-time",
        "1",
        "--measurement-time",
        "2",
    ]
    log("$ " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"cargo bench took more than {timeout} s"}
    if proc.returncode != 0:
        return {"skipped": "cargo bench failed: " + " / ".join(proc.stderr.strip().splitlines()[-3:])}
    # Criterion prints the name, then `time: [low estimate high]`, sometimes on the next line.
    results = []
    pending = None
    for line in proc.stdout.splitlines():
        m = _TIME_RE.match(line.strip()) or (_TIME_RE.match(f"{pending} {line.strip()}") if pending else None)
        if m:
            name = m.group("name").strip()
            results.append(
                {
                    "name": name,
                    "estimate_ns": float(m.group("mid")) * _UNITS.get(m.group("umid"), 1.0),
                    "low_ns": float(m.group("lo")) * _UNITS.get(m.group("ulo"), 1.0),
                    "high_ns": float(m.group("hi")) * _UNITS.get(m.group("uhi"), 1.0),
                }
            )
            pending = None
        elif line.strip() and not line.startswith(" ") and "time:" not in line:
            pending = line.strip()
    # The medians criterion stores next to its estimates.
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "criterion"
    for r in results:
        for bench_json in target.glob("*/new/benchmark.json"):
            try:
                meta = json.loads(bench_json.read_text())
                if meta.get("full_id") == r["name"] or meta.get("title") == r["name"]:
                    est = json.loads((bench_json.parent / "estimates.json").read_text())
                    r["median_ns"] = est["median"]["point_estimate"]
            except (OSError, ValueError, KeyError):
                pass
    return {"results": results, "command": " ".join(cmd[1:])}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


OPS = [
    ("bare", "bare call `f()`"),
    ("registry_call", "`Registry.call` by name"),
    ("handle_call", "handle `b.call(f)`"),
    ("decorated", "decorated function"),
    ("context", "`with b: f()`"),
    ("try_acquire_success", "`try_acquire()` + `f()` + `success()`"),
    ("reject_exc", "rejection by exception"),
    ("reject_none", "rejection by `try_acquire() is None`"),
    ("failure", "failure path (`fn` raises)"),
    ("failure_decorated", "failure path, decorated"),
]
AOPS = [
    ("abare", "bare `await af()`"),
    ("acall", "`await b.acall(af)`"),
    ("adecorated", "decorated `async def`"),
    ("acontext", "`async with b: await af()`"),
    ("areject_exc", "async rejection by exception"),
]
PEER_COLS = ["pybreaker", "circuitbreaker"]
APEER_COLS = ["aiobreaker", "purgatory", "circuitbreaker"]


def index_micro(micro: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{w['lib']}:{w['op']}": w for w in micro["workloads"]}


def added(ix: dict[str, dict[str, Any]], lib: str, op: str) -> float | None:
    w = ix.get(f"{lib}:{op}")
    if w is None:
        return None
    if w["base"] is None:
        return w["median"]
    return w["median"] - ix[f"baseline:{w['base']}"]["median"]


def fmt_ns(v: float | None) -> str:
    return "–" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}")


def fmt_ratio(peer: float | None, ours: float | None) -> str:
    if peer is None or ours is None:
        return "–"
    if ours <= 0:
        return "∞"
    return f"{peer / ours:.1f}×"


def micro_table(micro: dict[str, Any], ops: list[tuple[str, str]], peers: list[str]) -> list[str]:
    ix = index_micro(micro)
    head = ["workload", "panelboard ns", "added"]
    for p in peers:
        head += [f"{p} ns", "added", f"{p}/panelboard (added)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op, label in ops:
        if op in ("bare", "abare"):
            w = ix.get(f"baseline:{op}")
            row = [label, fmt_ns(w["median"]) if w else "–", "0"] + ["", "", ""] * len(peers)
            lines.append("| " + " | ".join(row) + " |")
            continue
        keys = [f"panelboard:{op}"] + [f"{p}:{op}" for p in peers]
        if not any(k in ix for k in keys):
            continue
        pw = ix.get(f"panelboard:{op}")
        ours = added(ix, "panelboard", op)
        row = [label, fmt_ns(pw["median"]) if pw else "–", fmt_ns(ours) if pw and pw["base"] else "(abs)"]
        for p in peers:
            w = ix.get(f"{p}:{op}")
            theirs = added(ix, p, op)
            row += [
                fmt_ns(w["median"]) if w else "–",
                (fmt_ns(theirs) if w["base"] else "(abs)") if w else "–",
                fmt_ratio(theirs, ours),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


# The per-call targets of issue 4: (name, our workload, peer, peer's workload, required ratio peer/ours).
RATIO_TARGETS = [
    ("handle `b.call` added cost vs pybreaker `cb.call`", "handle_call", "pybreaker", "handle_call", 20),
    ("decorator added cost vs pybreaker decorator", "decorated", "pybreaker", "decorated", 20),
    ("`Registry.call` added cost vs pybreaker `cb.call`", "registry_call", "pybreaker", "handle_call", 12),
    (
        "`Registry.call` added cost vs circuitbreaker decorator",
        "registry_call",
        "circuitbreaker",
        "decorated",
        4,
    ),
    (
        "rejection by `try_acquire() is None` vs pybreaker rejection",
        "reject_none",
        "pybreaker",
        "reject_exc",
        20,
    ),
    ("rejection by exception vs pybreaker rejection", "reject_exc", "pybreaker", "reject_exc", 3),
]


def ratio_targets(get: Callable[[str, str], float | None], unit: str) -> list[dict[str, Any]]:
    T = []
    for name, op, peer, peer_op, need in RATIO_TARGETS:
        ours, theirs = get("panelboard", op), get(peer, peer_op)
        if ours is None or theirs is None:
            T.append({"name": name, "measured": "not measured", "target": f"≥ {need:g}×", "ok": None})
            continue
        r = theirs / ours if ours > 0 else float("inf")
        T.append(
            {
                "name": name,
                "measured": f"{r:.1f}× ({fmt_ns(ours)} vs {fmt_ns(theirs)} {unit})",
                "target": f"≥ {need:g}×",
                "ok": r >= need,
            }
        )
    return T


def targets(
    micro: dict[str, Any], ft: dict[str, Any] | None, memory: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    ix = index_micro(micro)
    T = ratio_targets(lambda lib, op: added(ix, lib, op), "ns")
    if ft:
        cases = {c["key"]: c for c in ft["threads"]["cases"]}
        ceiling = cases.get("bare_own")
        for key, name in (
            (
                "pb_handle_shared",
                "3.13t, shared healthy breaker, one shared handle (`b.call`), 2 threads vs 1",
            ),
            ("pb_handle_samebreaker", "3.13t, shared healthy breaker, a handle per thread, 2 threads vs 1"),
            ("pb_module_call", "3.13t, `panelboard.call(name, f)` on one name, 2 threads vs 1 (issue 10)"),
        ):
            case = cases.get(key)
            if not case:
                continue
            s = case["median"]["2"] / case["median"]["1"]
            cpu = case.get("cpu_ns", {})
            text = f"{s:.2f}× ({case['median']['1'] / 1e6:.2f} → {case['median']['2'] / 1e6:.2f} M calls/s)"
            if cpu:
                # With 2 threads on 2 otherwise idle cores, wall-clock scaling = 2 × CPU/call(1) / CPU/call(2).
                text += (
                    f"; CPU per call {cpu['1']:,.0f} → {cpu['2']:,.0f} ns, i.e. ≈ "
                    f"{2 * cpu['1'] / cpu['2']:.2f}× on 2 idle cores"
                )
            if ceiling:
                text += f"; interpreter ceiling (bare `f()`, nothing shared) {ceiling['median']['2'] / ceiling['median']['1']:.2f}×"
            T.append({"name": name, "measured": text, "target": "≥ 1.6×", "ok": s >= 1.6})
    else:
        T.append(
            {
                "name": "3.13t, shared healthy breaker, 2 threads vs 1",
                "measured": "not measured",
                "target": "≥ 1.6×",
                "ok": None,
            }
        )
    for m in memory:
        if m["lib"] != "panelboard" or "error" in m:
            continue
        for key, what in (
            ("per_breaker_created", "created by `registry.breaker(name)`"),
            ("per_breaker_called", "after one call each"),
        ):
            T.append(
                {
                    "name": f"memory at {m['names']:,} names, {what}",
                    "measured": f"{m[key]:.0f} B/breaker",
                    "target": "≤ 300 B",
                    "ok": m[key] <= 300,
                }
            )
    return T


def thread_table(threads: dict[str, Any]) -> list[str]:
    head = ["case"] + [f"{n} thread{'s' if n > 1 else ''}" for n in THREAD_COUNTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in threads["cases"]:
        one = c["median"]["1"]
        cells = [c["label"]]
        for n in THREAD_COUNTS:
            v = c["median"][str(n)]
            cpu = c.get("cpu_ns", {}).get(str(n))
            cells.append(f"{v / 1e6:.2f} ({v / one:.2f}×)" + (f" · {cpu:,.0f} ns" if cpu is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    mem = "?"
    try:
        kb = int(
            next(
                l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")
            ).split()[1]
        )
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except OSError:
        commit = "?"
    return {"cpu": cpu, "nproc": nproc, "mem": mem, "kernel": platform.release(), "commit": commit}


def write_report(raw: dict[str, Any]) -> str:
    """The Markdown report from everything one run measured (``raw``, as ``--save-raw`` stores it)."""
    info, micro, threads, ft = raw["info"], raw["micro"], raw["threads"], raw.get("ft")
    memory, rust, cg, ft_note = raw["memory"], raw["rust"], raw.get("callgrind"), raw.get("ft_note", "")
    load, elapsed, target_s = raw["load"], raw["elapsed_s"], raw["target_s"]
    T = targets(micro, ft, memory)
    L: list[str] = []
    L.append("# Benchmark results")
    L.append("")
    L.append(
        f"Generated by `{info.get('command', 'python benches/bench.py')}` on {info['date']}, in {elapsed:.0f} s "
        "(`make bench` runs `benches/bench.py` without options)."
    )
    L.append("")
    L.append(
        f"- Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}, {info['mem']} RAM, Linux {info['kernel']}"
    )
    L.append(
        f"- Load average before / after the run: {load[0]} / {load[1]}"
        + (
            "  **(other work was running: treat the numbers as preliminary)**"
            if float(load[0].split()[0]) > 0.5
            else ""
        )
    )
    L.append(f"- Python: {info['python']}" + (f"; free-threaded: {ft['python']}" if ft else ""))
    L.append("- Libraries: " + ", ".join(f"{lib} {info['versions'][lib]}" for lib in LIBS))
    L.append(f"- panelboard commit: {info['commit']}")
    L.append(
        f"- Method: {micro['rounds']} interleaved rounds (each round times every workload once, in a "
        f'shuffled order, about {target_s * 1000:.0f} ms each); medians over rounds. "Added" = '
        "median time minus the median of the bare call (or of a bare raise, for failure paths). "
        "Rejections are absolute times. Ratios are peer ÷ panelboard (higher is better)."
    )
    L.append("")
    L.append("## Targets (issue 4)")
    L.append("")
    L.append("| target | measured | required | |")
    L.append("|---|---|---|---|")
    for t in T:
        verdict = "–" if t["ok"] is None else ("PASS" if t["ok"] else "**MISS**")
        L.append(f"| {t['name']} | {t['measured']} | {t['target']} | {verdict} |")
    L.append("")
    L.append(
        "Peer reference points: pybreaker's guarded call is `cb.call(f)`; circuitbreaker's is its "
        "decorator (its `call()` and `with` never check whether the breaker is open)."
    )
    L.append("")
    L.append(f"## Per call, CPython {micro['interpreter']} (ns, medians)")
    L.append("")
    L += micro_table(micro, OPS, PEER_COLS)
    L.append("")
    L.append("Async (one event loop, a coroutine awaiting in a loop):")
    L.append("")
    L += micro_table(micro, AOPS, APEER_COLS)
    L.append("")
    notes = sorted(
        {(w["lib"], w["op"], w["note"]) for w in micro["workloads"] if w["note"] and w["lib"] != "baseline"}
    )
    if notes:
        L.append(
            "Notes: " + "; ".join(f"{lib} `{op}`: {note}" for lib, op, note in notes) + ". "
            f"Empty loop: {fmt_ns(index_micro(micro)['baseline:empty']['median'])} ns per iteration."
        )
        L.append("")
    if ft and ft.get("micro"):
        L.append(f"## Per call, free-threaded CPython {ft['micro']['interpreter']} (ns, medians)")
        L.append("")
        L += micro_table(ft["micro"], OPS, PEER_COLS)
        L.append("")
    L.append("## Threads: aggregate throughput (M calls/s, scaling against 1 thread)")
    L.append("")
    L.append(
        f"Each cell: aggregate M calls/s (scaling against 1 thread) · CPU time per call (thread CPU "
        f"clocks summed over the threads); median of {threads['rounds']} runs of about "
        f"{threads['duration_s']:.2f} s, cases and thread counts interleaved. All threads call a no-op `f`. "
        "The CPU time per call is what contention on shared cache lines shows up in: it stays flat when "
        "threads do not interfere, and unlike the wall clock it does not count the time other processes "
        "take on a shared machine. With more threads than cores the wall-clock scaling is capped at the "
        "core count."
    )
    L.append("")
    L.append(f"### CPython {threads['interpreter']} (GIL)")
    L.append("")
    L += thread_table(threads)
    L.append("")
    if ft:
        L.append(
            f"### CPython {ft['threads']['interpreter']} (free-threaded, GIL disabled: "
            f"{not ft['threads']['gil_enabled']})"
        )
        L.append("")
        L += thread_table(ft["threads"])
    else:
        L.append(f"### Free-threaded CPython 3.13t: not measured ({ft_note})")
    L.append("")
    L.append("![throughput per thread count](throughput.png)")
    L.append("")
    L.append("## Memory (resident size, fresh process, `/proc/self/statm`)")
    L.append("")
    L.append(
        "| library | breakers | RSS growth, created | bytes/breaker | RSS growth, after one call each | bytes/breaker |"
    )
    L.append("|---|---|---|---|---|---|")
    for m in memory:
        if "error" in m:
            L.append(f"| {m['lib']} | {m['names']:,} | failed: {m['error']} | | | |")
            continue
        L.append(
            f"| {m['lib']} | {m['names']:,} | {(m['created'] - m['base']) / 2**20:.1f} MiB | "
            f"{m['per_breaker_created']:.0f} | {(m['called'] - m['base']) / 2**20:.1f} MiB | "
            f"{m['per_breaker_called']:.0f} |"
        )
    L.append("")
    L.append(
        "panelboard: `registry.breaker(name)` for each name (handle dropped), then `registry.call(name, f)` "
        "for each. Peers (no registry): one instance per name in a dict, then one `call` each. Names are "
        "`svc-0000000` style; the RSS includes everything the process keeps for them."
    )
    L.append("")
    L.append("## Rust engine (criterion, `cargo bench --bench engine`)")
    L.append("")
    if "results" in rust and rust["results"]:
        L.append(f"`cargo {rust['command']}`")
        L.append("")
        L.append("| bench | median ns | estimate [low, high] ns |")
        L.append("|---|---|---|")
        for r in rust["results"]:
            L.append(
                f"| {r['name']} | {fmt_ns(r.get('median_ns'))} | {r['estimate_ns']:.2f} "
                f"[{r['low_ns']:.2f}, {r['high_ns']:.2f}] |"
            )
    else:
        L.append(f"Skipped: {rust.get('skipped', 'no results parsed')}.")
    L.append("")
    if cg is not None:
        L += callgrind_section(cg)
    L.append("## Reproduce")
    L.append("")
    L.append(
        "`make bench` (3.11 in `.venv`; the script builds panelboard into `.venv-ft` for 3.13t and installs "
        "the peers there). `.venv/bin/python benches/bench.py --callgrind` adds the instruction counts; "
        "other options: `--help`."
    )
    L.append("")
    return "\n".join(L)


def draw_plot(threads: dict[str, Any], ft: dict[str, Any] | None, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # matplotlib missing: the table is still written
        return f"plot skipped: {exc}"
    panels = [threads] + ([ft["threads"]] if ft else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 6.5), squeeze=False)
    colors = {
        "baseline": "0.6",
        "panelboard": "tab:blue",
        "pybreaker": "tab:red",
        "circuitbreaker": "tab:green",
    }
    markers = ["o", "s", "^", "D", "v", "P"]
    for ax, data in zip(axes[0], panels):
        seen: dict[str, int] = {}
        for c in data["cases"]:
            i = seen.setdefault(c["lib"], 0)
            seen[c["lib"]] += 1
            y = [c["median"][str(n)] / 1e6 for n in THREAD_COUNTS]
            ax.plot(
                THREAD_COUNTS,
                y,
                label=c["label"],
                color=colors.get(c["lib"], "k"),
                linestyle="--" if c["shared"] is False else "-",
                marker=markers[i % len(markers)],
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(THREAD_COUNTS)
        ax.set_xticklabels([str(n) for n in THREAD_COUNTS])
        ax.set_yscale("log")
        ax.set_xlabel("threads")
        ax.set_ylabel("aggregate M calls/s (log)")
        gil = "GIL" if data["gil_enabled"] else "free-threaded"
        ax.set_title(f"CPython {data['interpreter']} ({gil})")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=3 if len(panels) > 1 else 2, fontsize=8, frameon=False
    )
    fig.suptitle(
        "Aggregate throughput per thread count, no-op function\n"
        "(solid: threads share the breaker, dashed: a breaker per thread)"
    )
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def print_summary(report: str) -> None:
    # The report is Markdown tables; print the interesting parts as they are.
    print(report)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds of the per-call workloads")
    p.add_argument("--target", type=float, default=0.03, help="seconds per timing of one workload")
    p.add_argument("--thread-rounds", type=int, default=3, help="rounds of the thread cases")
    p.add_argument("--duration", type=float, default=0.25, help="seconds per thread measurement")
    p.add_argument("--names", type=int, default=1_000_000, help="breakers for the memory measurement")
    p.add_argument("--peer-names", type=int, default=100_000, help="breakers for the peers' memory")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument(
        "--ft-python",
        help=f"free-threaded CPython 3.13t interpreter (default: {FT_LOCATOR}, or python3.13t on PATH)",
    )
    p.add_argument("--no-ft", action="store_true", help="skip the free-threaded run")
    p.add_argument("--no-ft-build", action="store_true", help="use .venv-ft as it is")
    p.add_argument("--no-ft-micro", action="store_true", help="on 3.13t, run only the thread cases")
    p.add_argument("--no-rust", action="store_true", help="skip cargo bench")
    p.add_argument(
        "--rust-timeout",
        type=int,
        default=1800,
        help="seconds allowed for cargo bench (a first build with fat LTO included)",
    )
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--quick", action="store_true", help="a short smoke run (numbers are not meaningful)")
    p.add_argument(
        "--output",
        default=str(RESULTS_MD),
        help="where to write the Markdown report (the plot goes next to it)",
    )
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="also count instructions per operation under valgrind (about 3 minutes more)",
    )
    p.add_argument("--callgrind-n", type=int, default=10_001, help=argparse.SUPPRESS)
    p.add_argument("--save-raw", metavar="PATH", help="also store the raw measurements as JSON")
    p.add_argument(
        "--report-from", metavar="PATH", help="only write the report and plot from a --save-raw file"
    )
    p.add_argument("--child", choices=["memory", "ft", "callgrind"], help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--lib", default="panelboard", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.target, args.thread_rounds, args.duration = 3, 0.005, 1, 0.05
        args.names, args.peer_names = min(args.names, 100_000), min(args.peer_names, 10_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "memory":
        print(json.dumps(child_memory(args.names, args.lib)))
        return 0
    if args.child == "callgrind":
        child_callgrind_loop(args.workload, args.n)
        return 0
    if args.child == "ft":
        result: dict[str, Any] = {"python": sys.version.replace("\n", " ")}
        if not args.no_ft_micro:
            result["micro"] = run_micro(args.rounds, args.target, args.seed)
        result["threads"] = run_threads(args.thread_rounds, args.duration, args.seed)
        result["versions"] = {lib: lib_version(lib) for lib in LIBS}
        Path(args.json).write_text(json.dumps(result))
        return 0

    if args.report_from:
        raw = json.loads(Path(args.report_from).read_text())
        finish(raw, args)
        return 0

    started = time.perf_counter()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    info = machine_info()
    info["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["python"] = sys.version.replace("\n", " ")
    info["versions"] = {lib: lib_version(lib) for lib in LIBS}
    shown = list(argv if argv is not None else sys.argv[1:])
    if "--save-raw" in shown:  # where the raw data went changes nothing measured
        i = shown.index("--save-raw")
        del shown[i : i + 2]
    info["command"] = " ".join(["python benches/bench.py", *shown])
    log(
        f"panelboard benchmarks: {info['nproc']} CPUs, {info['cpu']}, Python {platform.python_version()}, "
        f"load {' '.join(load_before)}"
    )

    micro = run_micro(args.rounds, args.target, args.seed)
    threads = run_threads(args.thread_rounds, args.duration, args.seed)

    ft: dict[str, Any] | None = None
    ft_note = "skipped with --no-ft"
    if not args.no_ft:
        venv_py: str | None
        if args.no_ft_build:
            venv_py = args.ft_python or (
                str(FT_VENV / "bin" / "python")
                if (FT_VENV / "bin" / "python").exists()
                else find_ft_python(None)
            )
            if venv_py is None:
                ft_note = "no free-threaded interpreter found (pass --ft-python)"
        else:
            ft_python = find_ft_python(args.ft_python)
            if ft_python is None:
                venv_py, ft_note = None, "no free-threaded interpreter found (pass --ft-python)"
            else:
                venv_py = prepare_ft_venv(ft_python)
                if venv_py is None:
                    ft_note = "panelboard could not be built for 3.13t (see the log)"
        if venv_py is not None:
            if not available_in(venv_py, "panelboard"):
                ft_note = f"panelboard is not importable by {venv_py}"
            else:
                ft = run_ft_child(venv_py, args)
                ft_note = "" if ft else "the 3.13t run failed (see the log)"
        if ft_note:
            log(f"[ft] {ft_note}")

    memory = [] if args.no_memory else run_memory(sys.executable, args.names, args.peer_names)
    rust = {"skipped": "--no-rust"} if args.no_rust else run_rust(args.rust_timeout)
    cg = run_callgrind(sys.executable, args.callgrind_n) if args.callgrind else None

    load_after = Path("/proc/loadavg").read_text().split()[:3]
    raw = {
        "info": info,
        "micro": micro,
        "threads": threads,
        "ft": ft,
        "ft_note": ft_note,
        "memory": memory,
        "rust": rust,
        "callgrind": cg,
        "load": [" ".join(load_before), " ".join(load_after)],
        "elapsed_s": time.perf_counter() - started,
        "target_s": args.target,
    }
    if args.save_raw:
        Path(args.save_raw).write_text(json.dumps(raw))
    finish(raw, args)
    return 0


def finish(raw: dict[str, Any], args: argparse.Namespace) -> None:
    report = write_report(raw)
    plot = Path(args.output).with_name(PLOT_PNG.name)  # next to the report, which links it by name
    plot_note = draw_plot(raw["threads"], raw.get("ft"), plot)
    if plot_note:
        report += f"\n_{plot_note}_\n"
    Path(args.output).write_text(report)
    print_summary(report)
    log(f"wrote {args.output}" + ("" if plot_note else f" and {plot}"))


if __name__ == "__main__":
    sys.exit(main())
