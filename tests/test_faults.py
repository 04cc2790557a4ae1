"""Faults (issue 5): user code that raises, blocks or re-enters the registry; ``KeyboardInterrupt``
arriving inside ``fn`` (raised by it, or a real SIGINT delivered while it runs in the main thread);
``os.fork()`` while other threads are in the middle of guarded calls; and interpreter shutdown with
calls in flight.

Blocking is always bounded: user code waits on a ``threading.Event`` that the test sets, and every
thread is joined with a timeout, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import _thread
import logging
import os
import random
import signal
import subprocess
import textwrap
import threading
import time

import panelboard
import pytest
from helpers import (
    TIMEOUT,
    Boom,
    fail,
    fork_and_check,
    half_open,
    hold_in_call,
    in_thread,
    run_python,
    run_threads,
)
from panelboard import CircuitOpenError, State


class PredicateBoom(Exception):
    pass


class Stop(BaseException):
    pass


def call_via(via, b, registry, fn):
    if via == "registry":
        return registry.call(b.name, fn)
    if via == "handle":
        return b.call(fn)
    if via == "decorated":
        return b(fn)()
    with b:
        return fn()


VIAS = ["registry", "handle", "decorated", "with"]


# --------------------------------------------------------------------------------------------------
# Raising user code


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(
    "exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit, Stop], ids=lambda t: t.__name__
)
def test_base_exception_from_fn_is_ignored_releases_the_probe_and_propagates(registry, clock, via, exc_type):
    b = half_open(registry, clock, f"base-{via}")
    exc = exc_type()

    def fn():
        raise exc

    with pytest.raises(exc_type) as info:
        call_via(via, b, registry, fn)
    assert info.value is exc
    m = b.metrics()
    assert (m.failures, m.ignored, m.successes) == (1, 1, 0)
    assert b.state == State.HALF_OPEN
    permit = b.try_acquire()
    assert permit is not None, "the interrupted probe kept its half-open slot"
    permit.success()
    assert b.state == State.CLOSED


@pytest.mark.parametrize("via", VIAS)
def test_exception_from_fn_is_a_failure_and_the_same_object_propagates(registry, clock, via):
    b = half_open(registry, clock, f"exc-{via}")
    exc = Boom("probe failed")

    def fn():
        raise exc

    with pytest.raises(Boom) as info:
        call_via(via, b, registry, fn)
    assert info.value is exc
    assert b.state == State.OPEN
    assert b.metrics().failures == 2


@pytest.mark.parametrize("via", ["registry", "handle", "decorated"])
def test_raising_success_predicate_fails_the_call_and_its_exception_propagates(registry, clock, via):
    exc = PredicateBoom()

    def success(value):
        raise exc

    b = half_open(registry, clock, f"pred-{via}", success=success)
    with pytest.raises(PredicateBoom) as info:
        call_via(via, b, registry, lambda: "value")
    assert info.value is exc
    assert b.state == State.OPEN, "a raising predicate counts the call as a failure"
    m = b.metrics()
    assert (m.failures, m.successes, m.ignored) == (2, 0, 0)


def test_success_predicate_interrupted_does_not_leave_the_probe_slot_taken(registry, clock):
    """Whatever a predicate's KeyboardInterrupt counts as, it propagates and the breaker is never
    left half-open with its only slot taken."""
    exc = KeyboardInterrupt()

    def success(value):
        raise exc

    b = half_open(registry, clock, "pred-ki", success=success)
    with pytest.raises(KeyboardInterrupt) as info:
        b.call(lambda: 1)
    assert info.value is exc
    assert b.metrics().calls == 2
    if b.state == State.HALF_OPEN:
        assert b.try_acquire() is not None
    else:
        assert b.state == State.OPEN


@pytest.mark.parametrize("exc_type", [Boom, KeyboardInterrupt, Stop], ids=lambda t: t.__name__)
def test_raising_listener_is_logged_and_the_call_and_other_listeners_are_unaffected(
    registry, clock, caplog, exc_type
):
    seen = []
    registry.on_state_change(lambda n, old, new: seen.append(("first", old, new)))

    @registry.on_state_change
    def bad(name, old, new):
        raise exc_type("listener")

    registry.on_state_change(lambda n, old, new: seen.append(("last", old, new)))
    b = registry.breaker("noisy", failure_threshold=1, reset_timeout=1.0)
    with caplog.at_level(logging.ERROR, logger="panelboard"):
        with pytest.raises(Boom):
            b.call(fail)  # closed -> open
        clock.advance(1.0)
        permit = b.try_acquire()  # open -> half-open
        permit.success()  # half-open -> closed
        assert b.call(lambda: "fine") == "fine"
    expected = [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.CLOSED)]
    assert [(o, n) for who, o, n in seen if who == "first"] == expected
    assert [(o, n) for who, o, n in seen if who == "last"] == expected
    errors = [r for r in caplog.records if r.name == "panelboard" and r.exc_info]
    assert len(errors) == 3 and all(isinstance(r.exc_info[1], exc_type) for r in errors)


# --------------------------------------------------------------------------------------------------
# Blocking user code: the breaker stays usable from other threads


def every_operation(registry, b, name, expect_admitted):
    """Runs the whole API against the breaker `name` (and others); returns what it saw."""
    seen = {
        "state": registry.state(name),
        "handle_state": b.state,
        "metrics": b.metrics(),
        "listed": dict(registry.list()).get(name),
        "snapshot": name in registry.snapshot(),
    }
    if expect_admitted:
        assert registry.call(name, lambda: "other call") == "other call"
    else:
        with pytest.raises(CircuitOpenError) as info:
            registry.call(name, lambda: "other call")
        seen["retry_after"] = info.value.retry_after
        assert b.try_acquire() is None
    registry.configure(name, failure_threshold=5)
    registry.call("bystander", lambda: None)
    listener = registry.on_state_change(lambda *a: None)
    registry.remove_listener(listener)
    return seen


def test_fn_blocked_in_a_closed_breaker_blocks_nothing_else(registry):
    b = registry.breaker("slow", failure_threshold=1)
    inside, release = threading.Event(), threading.Event()

    def slow():
        inside.set()
        assert release.wait(TIMEOUT)
        raise Boom("late failure")

    def blocked_caller():
        with pytest.raises(Boom):
            registry.call("slow", slow)

    join_caller = in_thread(blocked_caller)
    assert inside.wait(TIMEOUT)

    def meanwhile():
        seen = every_operation(registry, b, "slow", expect_admitted=True)
        assert seen["state"] == State.CLOSED and seen["listed"] == State.CLOSED
        registry.force_open("slow")
        registry.disable("slow")
        registry.reset("slow")  # the blocked call's outcome is now stale
        registry.delete("slow")
        registry.breaker("slow", failure_threshold=1)  # a new breaker under the same name
        return True

    assert in_thread(meanwhile)()
    release.set()
    join_caller()
    assert registry.state("slow") == State.CLOSED, "the new breaker is not the blocked call's"
    assert b.state == State.CLOSED, "a stale outcome (admitted before the reset) changed nothing"
    assert b.metrics().failures == 1


def test_blocked_probe_holds_only_its_own_slot(registry, clock):
    b = half_open(registry, clock, "probe")
    finish_probe = hold_in_call(b.call, result="recovered")

    def meanwhile():
        seen = every_operation(registry, b, "probe", expect_admitted=False)
        assert seen["state"] == State.HALF_OPEN and seen["retry_after"] == 0.0
        return True

    assert in_thread(meanwhile)()
    assert finish_probe() == "recovered"
    assert b.state == State.CLOSED


def test_blocked_success_predicate_blocks_nothing_else(registry, clock):
    inside, release = threading.Event(), threading.Event()

    def success(value):
        if value == "slow":
            inside.set()
            assert release.wait(TIMEOUT)
        return True

    b = half_open(registry, clock, "pred", success=success)
    join_probe = in_thread(b.call, lambda: "slow")
    assert inside.wait(TIMEOUT)

    def meanwhile():
        seen = every_operation(registry, b, "pred", expect_admitted=False)
        assert seen["state"] == State.HALF_OPEN
        registry.configure("pred", success=None)  # swapping the config under a running predicate
        return True

    assert in_thread(meanwhile)()
    release.set()
    assert join_probe() == "slow"
    assert b.state == State.CLOSED


def test_blocked_listener_blocks_nothing_else(registry, clock):
    inside, release = threading.Event(), threading.Event()
    seen = []
    blocker = [None]  # the thread whose listener call blocks

    def listener(name, old, new):
        seen.append((name, old, new))
        if threading.current_thread() is blocker[0] and new == State.OPEN:
            inside.set()
            assert release.wait(TIMEOUT)

    registry.on_state_change(listener)
    b = registry.breaker("watched", failure_threshold=1, reset_timeout=1.0)

    def tripper():
        blocker[0] = threading.current_thread()
        with pytest.raises(Boom):
            b.call(fail)
        return "done"

    join_tripper = in_thread(tripper)
    assert inside.wait(TIMEOUT)

    def meanwhile():
        state = every_operation(registry, b, "watched", expect_admitted=False)
        assert state["state"] == State.OPEN, "the transition happened before its listener ran"
        registry.reset("watched")  # reported to the listener on this thread, while it is blocked
        assert registry.call("watched", lambda: 1) == 1
        registry.force_open("other")
        return True

    assert in_thread(meanwhile)()
    release.set()
    assert join_tripper() == "done"
    transitions = seen
    assert ("watched", State.CLOSED, State.OPEN) in transitions
    assert ("watched", State.OPEN, State.CLOSED) in transitions
    assert ("other", State.CLOSED, State.FORCED_OPEN) in transitions
    assert len(transitions) == 3


# --------------------------------------------------------------------------------------------------
# Re-entrant user code


def test_fn_recursing_through_its_own_breaker(registry):
    b = registry.breaker("deep", failure_threshold=3)

    def dive(depth):
        if depth == 0:
            return "bottom"
        return registry.call("deep", lambda: dive(depth - 1)) if depth % 2 else b.call(dive, depth - 1)

    assert dive(100) == "bottom"
    assert b.metrics().calls == 100 and b.metrics().successes == 100


def test_nested_call_on_a_half_open_breaker_is_rejected_not_deadlocked(registry, clock):
    b = half_open(registry, clock, "reentrant")

    def probe():
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: "nested")  # the only slot is taken by this very call
        assert info.value.retry_after == 0.0
        assert registry.state("reentrant") == State.HALF_OPEN
        return "outer"

    assert b.call(probe) == "outer"
    assert b.state == State.CLOSED


def test_fn_that_resets_deletes_and_recreates_its_own_breaker(registry):
    b = registry.breaker("self", failure_threshold=1)

    def rude():
        registry.reset("self")
        registry.force_open("self")
        registry.delete("self")
        registry.call("self", lambda: None, failure_threshold=1)
        raise Boom()

    with pytest.raises(Boom):
        b.call(rude)
    assert b.state == State.FORCED_OPEN, "the stale failure must not reopen or close it"
    assert registry.state("self") == State.CLOSED, "the re-created breaker is a new one"


def test_listener_reacting_to_its_own_transition(registry):
    seen = []

    @registry.on_state_change
    def heal(name, old, new):
        seen.append((old, new))
        if new == State.OPEN:
            registry.reset(name)  # a nested transition, reported from inside this listener

    b = registry.breaker("heal", failure_threshold=1)
    with pytest.raises(Boom):
        b.call(fail)
    assert seen == [(State.CLOSED, State.OPEN), (State.OPEN, State.CLOSED)]
    assert b.state == State.CLOSED
    assert b.metrics().times_opened == 1


def test_listener_cascade_across_fifty_breakers(registry):
    names = [f"chain-{i}" for i in range(50)]
    for n in names:
        registry.breaker(n, failure_threshold=1)
    seen = []

    @registry.on_state_change
    def cascade(name, old, new):
        seen.append(name)
        i = names.index(name)
        if new == State.OPEN and i + 1 < len(names):
            with pytest.raises(Boom):
                registry.call(names[i + 1], fail)

    with pytest.raises(Boom):
        registry.call(names[0], fail)
    assert seen == names
    assert all(state == State.OPEN for _, state in registry.list())


def test_success_predicate_using_the_registry(registry):
    def success(value):
        if isinstance(value, bool):
            return value  # the nested call's own result, below
        registry.call("side", lambda: None)
        registry.state("judged")
        registry.snapshot()
        verdict = registry.call("judged", lambda: value == "good", failure_threshold=1)
        registry.reset("judged")  # makes the outer call's outcome stale: it changes nothing
        return verdict

    b = registry.breaker("judged", failure_threshold=1, success=success)
    assert b.call(lambda: "good") == "good"
    assert b.call(lambda: "bad") == "bad"
    # "bad": the nested call's failure opened it, the predicate's reset closed it again, and the
    # outer failure (admitted before that reset) is stale.
    assert b.state == State.CLOSED
    m = b.metrics()
    assert (m.successes, m.failures, m.times_opened) == (2, 2, 1)
    assert registry.state("side") == State.CLOSED


# --------------------------------------------------------------------------------------------------
# KeyboardInterrupt arriving inside fn


@pytest.fixture
def sigint_raises_keyboard_interrupt():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled on the main thread only")
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("how", ["raise", "raise_signal", "interrupt_main", "os_kill"])
def test_keyboard_interrupt_inside_fn_is_ignored_releases_the_permit_and_propagates(
    registry, clock, sigint_raises_keyboard_interrupt, how, via
):
    """The only half-open probe is interrupted: the outcome is ignored (no failure), its slot is
    free again, and the KeyboardInterrupt reaches the caller."""
    b = half_open(registry, clock, f"ki-{how}-{via}")
    started = threading.Event()
    own = KeyboardInterrupt("from fn")

    def fn():
        started.set()
        if how == "raise":
            raise own
        if how == "raise_signal":
            signal.raise_signal(signal.SIGINT)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:  # the interrupt arrives while this loop runs
            time.sleep(0.001)
        return "never interrupted"

    def interrupter():
        assert started.wait(TIMEOUT)
        if how == "interrupt_main":
            _thread.interrupt_main()
        else:
            os.kill(os.getpid(), signal.SIGINT)

    join = in_thread(interrupter) if how in ("interrupt_main", "os_kill") else None
    with pytest.raises(KeyboardInterrupt) as info:
        call_via(via, b, registry, fn)
    if join:
        join()
    if how == "raise":
        assert info.value is own
    m = b.metrics()
    assert (m.failures, m.ignored, m.successes) == (1, 1, 0), m
    assert b.state == State.HALF_OPEN
    assert b.try_acquire() is not None, "the interrupted probe's slot was not released"


# --------------------------------------------------------------------------------------------------
# fork() while other threads are in the middle of guarded calls


def _child_checks(registry, clock):
    """Runs in the forked child. Raises AssertionError on the first thing that does not work."""
    names = {n for n, _ in registry.list()}
    assert {"blocked", "probe", "hot-0"} <= names, names
    # The half-open breaker's only slot belongs to a thread that does not exist in the child:
    # its state is a copy, so the slot stays taken until a reset.
    assert registry.state("probe") == State.HALF_OPEN
    assert registry.breaker("probe").try_acquire() is None
    registry.reset("probe")
    assert registry.call("probe", lambda: "child probe") == "child probe"
    # Breakers with calls in flight in the parent work here.
    assert registry.call("blocked", lambda: "child") == "child"
    for n in sorted(names):
        try:
            registry.call(n, lambda: None)
        except CircuitOpenError:
            pass
        registry.reset(n)
        registry.call(n, lambda: None)
    # Listeners, new breakers, deletion.
    seen = []
    registry.on_state_change(lambda *a: seen.append(a))
    b = registry.breaker("child-new", failure_threshold=1, reset_timeout=1.0)
    try:
        b.call(fail)
    except Boom:
        pass
    assert b.state == State.OPEN and seen == [("child-new", State.CLOSED, State.OPEN)]
    clock.advance(1.0)
    assert b.state == State.HALF_OPEN
    registry.delete("child-new")
    assert "child-new" not in registry

    # Threads in the child (no lock inherited in a held state).
    def hammer(i):
        for k in range(300):
            registry.call(f"child-{i}-{k % 7}", lambda: k)
            registry.reset(f"child-{i}-{k % 7}")
            if k % 50 == 0:
                registry.list()

    run_threads(hammer, 4, timeout=TIMEOUT)
    # The default registry too.
    assert panelboard.call("test-faults-child", lambda: 3) == 3
    panelboard.delete("test-faults-child")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_other_threads_are_mid_call(registry, clock, caplog):
    # The hammers' transitions are logged; a fork while one of them is inside a logging handler's
    # stream write leaves that stream's (CPython) buffer lock held in the child. That hazard is the
    # logging configuration's, not panelboard's, so the transitions are not logged here.
    caplog.set_level(logging.CRITICAL, logger="panelboard")
    blocked_threads = 3
    release, stop = threading.Event(), threading.Event()
    inside = threading.Barrier(blocked_threads + 2)  # blocked callers + the probe + this thread

    def blocked():
        inside.wait(TIMEOUT)
        assert release.wait(TIMEOUT)
        return "parent"

    probe = half_open(registry, clock, "probe")
    joins = [in_thread(registry.call, "blocked", blocked) for _ in range(blocked_threads)]
    joins.append(in_thread(probe.call, blocked))

    for k in range(4):  # the child expects them whichever names the hammers draw first
        registry.breaker(f"hot-{k}", failure_threshold=3)
    warmed = [threading.Event() for _ in range(4)]

    def hammer(i):
        rng = random.Random(i)
        while not stop.is_set():
            name = f"hot-{rng.randrange(4)}"
            try:
                registry.call(name, fail if rng.random() < 0.3 else (lambda: None), failure_threshold=3)
            except (Boom, CircuitOpenError):
                pass
            p = registry.breaker(name).try_acquire()
            if p is not None:
                p.ignore()
            r = rng.random()
            if r < 0.05:
                registry.reset(name)
            elif r < 0.08:
                registry.delete(f"cold-{i}")
                registry.call(f"cold-{i}", lambda: None)
            elif r < 0.10:
                registry.list()
            elif r < 0.11:
                clock.advance(0.5)
            warmed[i].set()
        return True

    hammers = [in_thread(hammer, i) for i in range(4)]
    inside.wait(TIMEOUT)
    for w in warmed:  # every hammer is mid-loop when the first fork happens
        assert w.wait(TIMEOUT)
    try:
        for _ in range(4):
            fork_and_check(lambda: _child_checks(registry, clock), timeout=TIMEOUT)
    finally:
        stop.set()
        release.set()
        results = [j() for j in joins]
        assert all(h() for h in hammers)
    assert results == ["parent"] * (blocked_threads + 1)
    # In the parent the probe's permit was real: its success closed the breaker.
    assert probe.state == State.CLOSED


# --------------------------------------------------------------------------------------------------
# Interpreter shutdown with calls in flight

SHUTDOWN_PRELUDE = """
import sys, threading, time
import panelboard
from panelboard import CircuitOpenError, Registry

registry = Registry()
N = 8
started = threading.Barrier(N + 1, timeout=60)  # every worker thread is running
inside = threading.Barrier(N + 1, timeout=60)  # every worker is inside the user code it blocks in
never = threading.Event()
progress = [0]
warm = threading.Event()  # the workers have done some rounds


def tick():
    progress[0] += 1
    if progress[0] >= 400:
        warm.set()


class SlowFinalization:
    # Destroyed while the interpreter finalizes __main__: the sleep keeps it finalizing for 0.1 s,
    # so that every daemon thread that wakes up is ended by CPython (pthread_exit), in every run.
    def __del__(self, sleep=time.sleep):
        sleep(0.1)


slow_finalization = SlowFinalization()
"""


def run_script(body: str, expect_rc: int = 0, runs: int = 1) -> subprocess.CompletedProcess:
    script = SHUTDOWN_PRELUDE + textwrap.dedent(body)
    for attempt in range(runs):
        proc = run_python("-X", "faulthandler", "-c", script, timeout=120)
        report = (
            f"run {attempt}: rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
        )
        assert proc.returncode == expect_rc, report
        for marker in ("Fatal Python error", "panicked", "PanicException", "Segmentation fault"):
            assert marker not in proc.stderr, report
    return proc


def test_exit_with_daemon_threads_blocked_in_fn_predicate_and_listener():
    run_script(
        """
        held = threading.Lock()
        held.acquire()  # never released: acquiring it blocks in C, with no Python frame running

        def block(*args):
            inside.wait()
            held.acquire()

        registry.on_state_change(lambda name, old, new: block() if name.startswith("l") else None)

        def work(i):
            started.wait()
            if i % 3 == 0:
                registry.call(f"f{i}", block)
            elif i % 3 == 1:
                registry.call(f"p{i}", int, success=block)
            else:
                registry.force_open(f"l{i}")

        for i in range(N):
            threading.Thread(target=work, args=(i,), daemon=True).start()
        started.wait()
        inside.wait()
        # Every worker is inside its guarded user code, a few bytecodes before the C-level wait.
        # No barrier can report "now blocked in C"; give them a moment to get there (threads still
        # running Python at exit are the test below).
        time.sleep(0.2)
        registry.call("main", lambda: None)
        """
    )


def test_exit_while_daemon_threads_run_python_in_every_kind_of_callback():
    # At exit, CPython 3.11-3.13 ends a daemon thread that wakes up in Python code with
    # `pthread_exit`, a forced unwind through the native frames below that code. Each worker here
    # is in a callback that keeps waking up (like a socket read with a timeout) when the main
    # thread exits: a listener run from a method (regression: the unwind reached PyO3's
    # `catch_unwind` and glibc aborted with "FATAL: exception not rethrown"), from a guarded call,
    # from `with`, from `try_acquire`; a result predicate, sync and async; a decorated function.
    run_script(
        """
        import asyncio, logging

        def keep_waking(*args):
            inside.wait()
            while not never.wait(0.0005):
                pass
            return True

        def on_change(name, old, new):
            if name.startswith("e"):
                raise RuntimeError("listener failed")  # logged: the filter below runs
            if name.startswith("l") or new == panelboard.State.HALF_OPEN:
                keep_waking()

        # A filter runs in Logger.handle, outside the handler locks that logging.shutdown() takes.
        logging.getLogger("panelboard").addFilter(keep_waking)
        clock = panelboard.ManualClock()
        timed = Registry(clock=clock)
        for r in (registry, timed):
            r.on_state_change(on_change)

        def fail():
            raise ValueError("down")

        def work(i):
            started.wait()
            if i == 0:
                registry.force_open(f"l{i}")  # a method's listener
            elif i == 1:
                try:
                    registry.call(f"l{i}", fail, failure_threshold=1)  # a guarded call's listener
                except ValueError:
                    pass
            elif i == 2:
                try:
                    with registry.breaker(f"l{i}", failure_threshold=1):  # __exit__'s listener
                        fail()
                except ValueError:
                    pass
            elif i == 3:
                registry.call(f"p{i}", int, success=keep_waking)  # a result predicate
            elif i == 4:
                b = timed.breaker(f"t{i}", failure_threshold=1, reset_timeout=1.0)
                try:
                    b.call(fail)
                except ValueError:
                    pass
                clock.advance(1.0)
                b.try_acquire()  # sees open -> half-open first: its listener runs from here
            elif i == 5:
                b = registry.breaker(f"a{i}", success=keep_waking)
                asyncio.run(b.acall(asyncio.sleep, 0))  # the predicate runs from the permit
            elif i == 6:
                registry.breaker(f"d{i}")(keep_waking)()  # a decorated function
            else:
                registry.force_open(f"e{i}")  # a listener's error, logged

        for i in range(N):
            threading.Thread(target=work, args=(i,), daemon=True).start()
        started.wait()
        inside.wait()  # every worker is in its callback, waking up every half millisecond
        """,
        runs=3,
    )


def test_exit_while_daemon_threads_run_with_blocks_and_permits():
    run_script(
        """
        def busy():
            return sum(range(2000))

        def work(i):
            started.wait()
            n = 0
            while True:
                n += 1
                b = registry.breaker(f"w{n % 20}")
                try:
                    with b:
                        busy()
                except CircuitOpenError:
                    pass
                p = b.try_acquire()
                if p is not None:
                    busy()
                    p.success()
                tick()

        for i in range(N):
            threading.Thread(target=work, args=(i,), daemon=True).start()
        started.wait()
        assert warm.wait(60)
        """,
        runs=2,
    )


def test_sys_exit_inside_fn_is_ignored_and_exits_with_its_code():
    proc = run_script(
        """
        import atexit

        b = registry.breaker("exit", failure_threshold=1)

        @atexit.register
        def at_exit():
            # The registry still works while the interpreter shuts down.
            m = b.metrics()
            assert (m.ignored, m.failures) == (1, 0), m
            assert registry.call("atexit", lambda: 5) == 5
            print("atexit ok", flush=True)

        b.call(lambda: sys.exit(7))
        """,
        expect_rc=7,
    )
    assert proc.stdout == "atexit ok\n", proc.stderr


def test_exit_with_daemon_threads_mid_call_does_not_abort():
    run_script(
        """
        first = threading.local()

        def io_with_timeout():
            if not getattr(first, "done", False):
                first.done = True
                inside.wait()
            while not never.wait(0.001):  # like a socket read with a timeout
                pass

        def work(i):
            started.wait()
            while True:
                try:
                    registry.call(f"io{i}", io_with_timeout)
                except CircuitOpenError:
                    pass

        for i in range(N):
            threading.Thread(target=work, args=(i,), daemon=True).start()
        started.wait()
        inside.wait()  # every worker is inside a guarded call now
        """,
        runs=4,
    )
