"""Runs one entry point in a loop, for callgrind: ``python insns_loop.py ENTRY N``.

``benches/insns.py`` runs this under valgrind twice, with two loop counts, and divides the
difference of the totals by the difference of the counts, so that start-up, imports and set-up
cancel out. Everything that could make an iteration's cost vary is kept out of the loop: only what
the entry point needs is imported (lazily), the garbage collector is off, and a warm-up runs the
same loop first so that the interpreter has specialised its bytecode and the allocators have their
pools before the counted iterations start. Every object the loop uses is a local variable of the
loop function, so each loop body is exactly the user's code and nothing else. The loops iterate
over `itertools.repeat(None, n)`, not `range(n)`: `range` makes a new int object from 256 on but not
below, which would make the cost per iteration depend on N.
"""

from __future__ import annotations

import gc
import sys
import time
from itertools import repeat

WARMUP = 300
LONG = 3600.0  # seconds: an open breaker stays open for the whole run


def f():
    return None


async def af():
    return None


def boom():
    raise ValueError("boom")


def _breaker(**options):
    from panelboard import Registry

    return Registry(**options).breaker("insns")


def _open_breaker():
    b = _breaker(failure_threshold=1, reset_timeout=LONG)
    try:
        b.call(boom)
    except ValueError:
        pass
    assert b.try_acquire() is None, "the breaker should be open"
    return b


# Each factory sets up one entry point and returns its loop. ----------------------------------------


def bare():
    def loop(n, f=f):
        for _ in repeat(None, n):
            f()

    return loop


def lock():
    import threading

    def loop(n, threading=threading):
        for _ in repeat(None, n):
            with threading.Lock():
                pass

    return loop


def lock_reused():
    import threading

    lock = threading.Lock()

    def loop(n, lock=lock):
        for _ in repeat(None, n):
            with lock:
                pass

    return loop


def raise_catch():
    def loop(n, E=RuntimeError):
        for _ in repeat(None, n):
            try:
                raise E("open", 1.0)
            except E:
                pass

    return loop


def cguard():
    from _insns_cguard import guard

    def loop(n, guard=guard, f=f):
        for _ in repeat(None, n):
            guard(f)

    return loop


def handle_call():
    b = _breaker()

    def loop(n, b=b, f=f):
        for _ in repeat(None, n):
            b.call(f)

    return loop


def rate_call():
    # Issue 11: a breaker with a failure-rate policy (its success is counted in the window).
    b = _breaker(failure_rate=0.5)

    def loop(n, b=b, f=f):
        for _ in repeat(None, n):
            b.call(f)

    return loop


def rate_slow_call():
    # Issue 11: failure rate and slow-call rate (each call is timed).
    b = _breaker(failure_rate=0.5, slow_call_duration=1.0, slow_call_rate=0.5)

    def loop(n, b=b, f=f):
        for _ in repeat(None, n):
            b.call(f)

    return loop


def decorated():
    g = _breaker()(f)

    def loop(n, g=g):
        for _ in repeat(None, n):
            g()

    return loop


def registry_call():
    from panelboard import Registry

    registry = Registry()

    def loop(n, registry=registry, f=f):
        for _ in repeat(None, n):
            registry.call("insns", f)

    return loop


def module_call():
    import panelboard

    def loop(n, panelboard=panelboard, f=f):
        for _ in repeat(None, n):
            panelboard.call("insns", f)

    return loop


def with_block():
    b = _breaker()

    def loop(n, b=b):
        for _ in repeat(None, n):
            with b:
                pass

    return loop


def permit_success():
    b = _breaker()

    def loop(n, b=b):
        for _ in repeat(None, n):
            b.try_acquire().success()

    return loop


def try_acquire_reject():
    b = _open_breaker()

    def loop(n, b=b):
        for _ in repeat(None, n):
            b.try_acquire()

    return loop


def reject_exc():
    from panelboard import CircuitOpenError

    b = _open_breaker()

    def loop(n, b=b, f=f, E=CircuitOpenError):
        for _ in repeat(None, n):
            try:
                b.call(f)
            except E:
                pass

    return loop


# Coroutines are driven by hand, one `send(None)` each (nothing here suspends), so that the loop
# measures the breaker and not an event loop.


def bare_await():
    def loop(n, af=af, Stop=StopIteration):
        for _ in repeat(None, n):
            coro = af()
            try:
                coro.send(None)
            except Stop:
                pass

    return loop


def acall():
    b = _breaker()

    def loop(n, b=b, af=af, Stop=StopIteration):
        for _ in repeat(None, n):
            coro = b.acall(af)
            try:
                coro.send(None)
            except Stop:
                pass

    return loop


def decorated_async():
    ag = _breaker()(af)

    def loop(n, ag=ag, Stop=StopIteration):
        for _ in repeat(None, n):
            coro = ag()
            try:
                coro.send(None)
            except Stop:
                pass

    return loop


def async_with():
    b = _breaker()

    async def body(b=b):
        async with b:
            pass

    def loop(n, body=body, Stop=StopIteration):
        for _ in repeat(None, n):
            coro = body()
            try:
                coro.send(None)
            except Stop:
                pass

    return loop


ENTRIES = {
    name: globals()[name]
    for name in (
        "bare",
        "lock",
        "lock_reused",
        "raise_catch",
        "cguard",
        "handle_call",
        "rate_call",
        "rate_slow_call",
        "decorated",
        "registry_call",
        "module_call",
        "with_block",
        "permit_success",
        "try_acquire_reject",
        "reject_exc",
        "bare_await",
        "acall",
        "decorated_async",
        "async_with",
    )
}


def main() -> None:
    entry, n = sys.argv[1], int(sys.argv[2])
    loop = ENTRIES[entry]()
    gc.collect()
    gc.disable()
    loop(WARMUP)
    # A pause, so that a rate-policy breaker's ticker thread (started by the warm-up's first
    # success, src/py/ffi/ticker.rs) has published a reading before the counted loop: under
    # valgrind, which runs one thread at a time, the loop could otherwise run whole before the
    # ticker first runs, every success reading the clock itself.
    time.sleep(0.2)
    loop(n)
    if getattr(sys, "_is_gil_enabled", lambda: True)() is False:
        return
    import sysconfig

    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        sys.exit(f"insns_loop: an import re-enabled the GIL ({entry}): the counts would not be 3.13t's")


if __name__ == "__main__":
    main()
