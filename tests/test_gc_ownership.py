"""The garbage collector never frees a listener, predicate or exception class that a live handle
still uses, and still collects the cycles that nothing live uses (issue 8, item 1).

A registry's listeners and every breaker's configuration are shared by the registry, each handle
(`Breaker`, a decorated function, a `Permit`) and calls in flight. When the registry sat in a
reference cycle (a listener or predicate that closes over it) and a handle outlived it, the
collector was told the cycle owned those objects: it cleared them, and the next call through the
handle crashed the process. Each case runs in a fresh interpreter, so that a crash is a failed test
and not a dead test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PREAMBLE = """
import asyncio, gc, sys, threading, weakref
from panelboard import Registry, State

events = []


def fail(f, *args):
    try:
        f(*args)
    except (ZeroDivisionError, LookupError):
        return
    raise AssertionError("did not raise")
"""

# How the collection is forced between building the objects and using them.
COLLECTIONS = {
    "gc_collect": "gc.collect()",
    # An automatic collection, triggered by allocations, as in an ordinary program.
    "allocation": "junk = [[] for _ in range(100_000)]\ndel junk",
    # A collection at nearly every allocation while the objects are used (listeners, predicates
    # and classification run with collections happening inside them).
    "every_allocation": "gc.collect()\ngc.set_threshold(1)",
}

# Each case: `make()` builds objects in which the registry is part of a reference cycle and
# returns only what the program keeps; `use(kept)` then calls through it.
CASES = {
    "listener_closing_over_registry_kept_handle": """
        def make():
            reg = Registry(failure_threshold=1)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))
            return reg.breaker("x")

        def use(h):
            fail(h.call, lambda: 1 / 0)
            assert events == [("x", "open", 1)], events
        """,
    "success_predicate_option_kept_handle": """
        def make():
            reg = Registry()
            return reg.breaker("x", success=lambda v: len(reg) == 1 and v == 1)

        def use(h):
            assert h.call(lambda: 1) == 1
            assert h.call(lambda: 2) == 2
            m = h.metrics()
            assert (m.successes, m.failures) == (1, 1), m
        """,
    "success_predicate_in_registry_defaults_kept_handle": """
        def make():
            reg = Registry(success=lambda v: len(reg) >= 0 and v == 1)
            return reg.breaker("x")

        def use(h):
            assert h.call(lambda: 2) == 2
            assert h.metrics().failures == 1
        """,
    "decorated_function_only": """
        def make():
            reg = Registry(failure_threshold=1)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))

            @reg.breaker("x")
            def divide(v):
                return 1 / v

            return divide

        def use(divide):
            assert divide(1) == 1.0
            fail(divide, 0)
            assert events == [("x", "open", 1)], events
        """,
    "decorated_function_with_default_predicate": """
        def make():
            reg = Registry(success=lambda v: len(reg) >= 0 and v > 0)
            return reg.breaker("x")(lambda v: v)

        def use(f):
            assert f(-1) == -1
            assert f.breaker.metrics().failures == 1
        """,
    "decorated_method": """
        def make():
            reg = Registry(failure_threshold=1)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))

            class Client:
                @reg.breaker("x")
                def get(self, v):
                    return 1 / v

            return Client()

        def use(client):
            assert client.get(2) == 0.5
            fail(client.get, 0)
            assert events == [("x", "open", 1)], events
        """,
    "decorated_async_function": """
        def make():
            reg = Registry(failure_threshold=1)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))

            @reg.breaker("x")
            async def divide(v):
                return 1 / v

            return divide

        def use(divide):
            assert asyncio.run(divide(4)) == 0.25
            fail(asyncio.run, divide(0))
            assert events == [("x", "open", 1)], events
        """,
    "permit_only": """
        def make():
            reg = Registry(failure_threshold=1)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))
            return reg.breaker("x").try_acquire()

        def use(permit):
            permit.failure()
            assert events == [("x", "open", 1)], events
        """,
    "with_block_on_kept_handle": """
        def make():
            reg = Registry(failure_threshold=1, failure_on=LookupError)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))
            return reg.breaker("x")

        def use(h):
            def body():
                with h:
                    raise KeyError("k")
            fail(body)
            assert events == [("x", "open", 1)], events
        """,
    "exception_classes_closing_over_registry": """
        def make():
            reg = Registry()

            class Transient(Exception):
                registry = reg

            class Expected(Transient):
                pass

            h = reg.breaker("x", failure_on=Transient, ignore=Expected)
            return h, Transient, Expected

        def use(kept):
            h, transient, expected = kept
            for exc in (transient, expected, ValueError):
                try:
                    h.call(lambda: (_ for _ in ()).throw(exc()))
                except exc:
                    pass
            m = h.metrics()
            assert (m.failures, m.ignored) == (1, 2), m
        """,
    "configure_replaces_the_configuration_of_a_kept_handle": """
        def make():
            reg = Registry()
            h = reg.breaker("x", success=lambda v: True)
            reg.configure("x", success=lambda v: len(reg) == 1 and v == 1)
            return h

        def use(h):
            assert h.call(lambda: 2) == 2
            assert h.metrics().failures == 1
        """,
    "configure_while_a_call_is_in_flight": """
        def make():
            reg = Registry()
            h = reg.breaker("x", success=lambda v: len(reg) == 1 and v == 1)

            def swap():
                reg.configure("x", success=lambda v: len(reg) == 1)
                gc.collect()
                return 2

            return h, swap

        def use(kept):
            h, swap = kept
            assert h.call(swap) == 2  # classified by the predicate it was admitted under
            assert h.metrics().failures == 1
            assert h.call(lambda: 2) == 2
            assert h.metrics().successes == 1
        """,
    "deleted_name_kept_handle": """
        def make():
            reg = Registry(failure_threshold=1)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))
            h = reg.breaker("x", success=lambda v: len(reg) == 0 and v == 1)
            reg.delete("x")
            return h

        def use(h):
            assert h.call(lambda: 2) == 2
            assert events == [("x", "open", 0)], events
        """,
    "registry_dropped_without_a_cycle": """
        def make():
            reg = Registry(failure_threshold=1)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value)))
            return reg.breaker("x")

        def use(h):
            fail(h.call, lambda: 1 / 0)
            assert events == [("x", "open")], events
        """,
    "two_handles_one_in_a_cycle": """
        def make():
            reg = Registry(failure_threshold=1)
            holder = {}
            first = reg.breaker("x", success=lambda v: holder["h"] is not None and v == 1)
            holder["h"] = first
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))
            return reg.breaker("x")

        def use(h):
            assert h.call(lambda: 2) == 2
            assert events == [("x", "open", 1)], events
        """,
    "handle_from_a_decorated_function": """
        def make():
            reg = Registry(failure_threshold=1)
            reg.on_state_change(lambda n, o, s: events.append((n, s.value, len(reg))))
            f = reg.breaker("x")(lambda: 1 / 0)
            return f.breaker, f

        def use(kept):
            h, f = kept
            del kept
            fail(f)
            assert events == [("x", "open", 1)], events
            assert h.state is State.OPEN
        """,
}


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    )


@pytest.mark.parametrize("collection", sorted(COLLECTIONS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_a_live_handle_uses_survive_collection(case, collection):
    code = (
        PREAMBLE
        + textwrap.dedent(CASES[case])
        + "\nkept = make()\n"
        + COLLECTIONS[collection]
        + "\nuse(kept)\nprint('ok')\n"
    )
    assert_ok(run_python(code))


def test_collections_racing_calls_through_handles_of_dropped_registries():
    """Threads make registries in cycles, keep a handle, drop the rest and call through the handle
    while another thread collects without pause (free-threaded CPython runs them in parallel)."""
    code = PREAMBLE + textwrap.dedent(
        """
        stop = threading.Event()
        errors = []

        def make(i):
            reg = Registry(failure_threshold=1, success=lambda v: len(reg) >= 0)
            reg.on_state_change(lambda n, o, s: len(reg))
            h = reg.breaker(f"x{i}", success=lambda v: v is not reg)
            if i % 3 == 0:
                return h.try_acquire()
            if i % 3 == 1:
                return reg.breaker(f"y{i}")(lambda v: 1 / v)
            return h

        def worker():
            i = 0
            try:
                while not stop.is_set():
                    kept = make(i)
                    if i % 3 == 0:
                        kept.failure()
                    elif i % 3 == 1:
                        kept(1)
                        fail(kept, 0)
                    else:
                        kept.call(lambda: 1)
                        fail(kept.call, lambda: 1 / 0)
                    i += 1
            except BaseException as e:
                errors.append(e)

        def collector():
            while not stop.is_set():
                gc.collect()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        threads.append(threading.Thread(target=collector))
        for t in threads:
            t.start()
        threading.Event().wait(1.5)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors
        print("ok")
        """
    )
    assert_ok(run_python(code, timeout=120))


# --- What nothing live uses is still collected -------------------------------------------------
# (Except a cycle through a `Permit`: permits are not tracked by the collector, so that
# `try_acquire` costs it nothing, and a listener whose closure holds a permit is never freed.)

COLLECTABLE = {
    "registry_and_listener_closing_over_it": """
        def build():
            reg = Registry()
            def listener(n, o, s):
                reg.snapshot()
            reg.on_state_change(listener)
            return weakref.ref(listener)
        """,
    "registry_with_a_breaker_whose_predicate_closes_over_it": """
        def build():
            reg = Registry()
            def success(v):
                return len(reg) > 0
            reg.call("x", lambda: 1, success=success)
            return weakref.ref(success)
        """,
    "registry_whose_default_predicate_closes_over_it": """
        def build():
            def success(v):
                return reg is not None
            reg = Registry(success=success)
            reg.breaker("x")
            return weakref.ref(success)
        """,
    "handle_whose_predicate_closes_over_it": """
        def build():
            reg = Registry()
            holder = {}
            def success(v):
                return holder["h"].name == "h"
            holder["h"] = reg.breaker("h", success=success)
            return weakref.ref(success)
        """,
    "handle_whose_listener_closes_over_it_after_the_registry_is_gone": """
        def build():
            reg = Registry()
            h = reg.breaker("h")
            def listener(n, o, s):
                h.metrics()
            reg.on_state_change(listener)
            return weakref.ref(listener)
        """,
    "decorated_function_calling_itself_by_name": """
        def build():
            reg = Registry()
            @reg.breaker("rec")
            def countdown(n):
                return countdown(n - 1) if n else 0
            countdown(3)
            return weakref.ref(countdown)
        """,
    "decorated_function_in_its_own_listener": """
        def build():
            reg = Registry()
            @reg.breaker("x")
            def f():
                return 1
            reg.on_state_change(lambda n, o, s: f)
            del reg
            return weakref.ref(f)
        """,
}


@pytest.mark.parametrize("case", sorted(COLLECTABLE))
def test_cycles_that_nothing_live_uses_are_collected(case):
    code = (
        PREAMBLE
        + textwrap.dedent(COLLECTABLE[case])
        + "\nref = build()\ngc.collect()\nassert ref() is None, 'an unreachable cycle was kept'\nprint('ok')\n"
    )
    assert_ok(run_python(code))


def test_a_listener_lives_as_long_as_a_handle_and_is_collected_after_it():
    code = PREAMBLE + textwrap.dedent(
        """
        def make():
            reg = Registry(failure_threshold=1)
            def listener(n, o, s):
                events.append((n, s.value, len(reg)))
            reg.on_state_change(listener)
            return reg.breaker("x"), weakref.ref(listener)

        h, listener = make()
        gc.collect()
        assert listener() is not None
        fail(h.call, lambda: 1 / 0)
        assert events == [("x", "open", 1)], events
        del h
        gc.collect()
        assert listener() is None, "not collected once the handle was gone"
        print("ok")
        """
    )
    assert_ok(run_python(code))
