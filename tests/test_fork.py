"""Process safety (issue 3): after ``os.fork()`` the child's registry works, with no inherited held
lock, and its states are a copy (changes on either side stay on that side). The fork happens while
other threads are in the middle of calls.

The child runs its checks and reports through its exit status and a pipe (a traceback on failure);
the parent waits for it with a timeout, so a deadlocked child fails the test instead of hanging.
"""

from __future__ import annotations

import os
import random
import select
import threading

import panelboard
import pytest
from helpers import Boom, fail, fork_and_check, run_threads
from panelboard import CircuitOpenError, Registry, State

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available here")


def test_child_registry_is_a_working_copy(registry, clock):
    events = []
    registry.on_state_change(lambda name, old, new: events.append((name, old, new)))
    tripped = registry.breaker("tripped", failure_threshold=1, reset_timeout=10.0)
    with pytest.raises(Boom):
        tripped.call(fail)
    registry.call("healthy", lambda: None)
    registry.force_open("forced")
    registry.disable("disabled")
    clock.advance(4.0)
    events.clear()

    def child():
        # The copy: same breakers, same states, same counters, same clock.
        assert {n: s for n, s in registry.list()} == {
            "tripped": State.OPEN,
            "healthy": State.CLOSED,
            "forced": State.FORCED_OPEN,
            "disabled": State.DISABLED,
        }
        assert tripped.metrics().retry_after == pytest.approx(6.0)
        assert registry.snapshot()["healthy"].successes == 1
        # Everything works in the child.
        with pytest.raises(CircuitOpenError):
            tripped.call(lambda: None)
        clock.advance(6.0)
        assert tripped.call(lambda: "probe") == "probe"
        assert tripped.state is State.CLOSED
        assert events == [
            ("tripped", State.OPEN, State.HALF_OPEN),
            ("tripped", State.HALF_OPEN, State.CLOSED),
        ]
        registry.reset("forced")
        registry.force_open("healthy")
        assert registry.call("child-only", lambda: 42) == 42
        registry.delete("disabled")
        p = registry.breaker("child-only").try_acquire()
        p.failure()
        with registry.breaker("child-only"):
            pass
        assert panelboard.call("fork-default-child", lambda: "default") == "default"
        panelboard.delete("fork-default-child")

    fork_and_check(child)
    # The parent's registry did not see the child's changes.
    assert {n: s for n, s in registry.list()} == {
        "tripped": State.OPEN,
        "healthy": State.CLOSED,
        "forced": State.FORCED_OPEN,
        "disabled": State.DISABLED,
    }
    assert clock.now() == 4.0, "the child's clock is its own copy"
    assert events == []
    assert "fork-default-child" not in panelboard.default_registry()


def test_parent_changes_after_fork_do_not_reach_the_child(registry):
    b = registry.breaker("b", failure_threshold=1)
    # The child waits on this pipe until the parent has changed its registry.
    go_read, go_write = os.pipe()

    def child():
        os.close(go_write)
        ready, _, _ = select.select([go_read], [], [], 30)
        assert ready, "the parent never signalled"
        assert os.read(go_read, 1) == b"x"
        assert b.state is State.CLOSED, "the parent's trip is not in the child's copy"
        assert "parent-only" not in registry
        assert b.metrics().failures == 0

    def parent_changes():
        with pytest.raises(Boom):
            b.call(fail)
        registry.call("parent-only", lambda: None)
        os.write(go_write, b"x")

    try:
        fork_and_check(child, parent_after_fork=parent_changes)
    finally:
        os.close(go_read)
        os.close(go_write)
    assert b.state is State.OPEN


def test_fork_while_other_threads_are_mid_call(clock):
    """Threads are inside guarded calls (one blocked inside a half-open probe, others hammering
    calls, creations, deletions, snapshots and listener changes on many names) when the process
    forks. The child must find no held lock: it touches every name, creates and deletes thousands,
    runs threads of its own, and resets the breaker whose probe is held by a thread that does not
    exist in the child."""
    registry = Registry(clock=clock)
    registry.on_state_change(lambda name, old, new: None)
    probe = registry.breaker("probe", failure_threshold=1, reset_timeout=1.0)
    with pytest.raises(Boom):
        probe.call(fail)
    clock.advance(1.0)

    in_probe = threading.Event()
    release = threading.Event()
    stop = threading.Event()
    hammering = threading.Barrier(5, timeout=30)  # 4 hammer threads + the test
    warmed = [threading.Event() for _ in range(4)]  # set once a hammer thread is well into its loop
    errors = []

    def blocked_probe():
        def hang():
            in_probe.set()
            release.wait(30)
            return "done"

        try:
            probe.call(hang)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def hammer(i):
        rng = random.Random(i)
        try:
            hammering.wait()
            done = 0
            while not stop.is_set():
                done += 1
                if done == 50:
                    warmed[i].set()
                name = f"hot-{rng.randrange(64)}"
                op = rng.randrange(8)
                if op < 3:
                    try:
                        registry.call(
                            name, fail if rng.random() < 0.3 else (lambda: None), failure_threshold=3
                        )
                    except (Boom, CircuitOpenError):
                        pass
                elif op == 3:
                    registry.delete(name)
                elif op == 4:
                    b = registry.breaker(name)
                    p = b.try_acquire()
                    if p is not None:
                        p.success()
                elif op == 5:
                    registry.snapshot()
                    registry.list()
                elif op == 6:
                    listener = registry.on_state_change(lambda n, o, w: None)
                    registry.remove_listener(listener)
                else:
                    registry.reset(name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=blocked_probe)] + [
        threading.Thread(target=hammer, args=(i,)) for i in range(4)
    ]
    for t in threads:
        t.start()
    try:
        assert in_probe.wait(10)
        hammering.wait()
        assert all(w.wait(30) for w in warmed)  # and they keep going while we fork

        def child():
            assert threading.active_count() == 1, "only the forking thread exists in the child"
            assert probe.state is State.HALF_OPEN
            assert probe.try_acquire() is None, "the copy keeps the probe slot of the vanished thread"
            registry.reset("probe")
            assert probe.call(lambda: "works") == "works"
            for k in range(2000):
                name = f"child-{k}"
                assert registry.call(name, lambda: k) == k
            for k in range(64):
                registry.reset(f"hot-{k}")  # hot names may have been left open
                registry.call(f"hot-{k}", lambda: None)
                assert registry.state(f"hot-{k}") is State.CLOSED
                registry.delete(f"hot-{k}")
            for k in range(2000):
                registry.delete(f"child-{k}")
            assert set(registry.snapshot()) == {"probe"}
            registry.on_state_change(lambda n, o, w: None)

            # Threads of the child's own work too.
            def child_worker(i):
                for j in range(200):
                    registry.call(f"c-{i}-{j % 10}", lambda: None)

            run_threads(child_worker, 4, timeout=30)
            assert len(registry) == 41
            assert panelboard.call("fork-default-mid-call", lambda: 1) == 1

        fork_and_check(child)
    finally:
        stop.set()
        release.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    # The parent's probe finished normally and closed its breaker.
    assert probe.state is State.CLOSED
    assert "fork-default-mid-call" not in panelboard.default_registry()


def test_fork_while_a_listener_is_running(registry):
    """A listener is running (on another thread) at the moment of the fork: the child's registry
    still works, including its own transitions and listeners."""
    in_listener = threading.Event()
    release = threading.Event()

    def slow_listener(name, old, new):
        if threading.current_thread() is not threading.main_thread():
            in_listener.set()
            release.wait(30)

    registry.on_state_change(slow_listener)
    b = registry.breaker("l", failure_threshold=1)

    def trip():
        with pytest.raises(Boom):
            b.call(fail)

    t = threading.Thread(target=trip)
    t.start()
    try:
        assert in_listener.wait(10)

        def child():
            assert b.state is State.OPEN
            registry.reset("l")
            with pytest.raises(Boom):
                b.call(fail)
            assert b.state is State.OPEN
            registry.force_open("other")
            assert registry.state("other") is State.FORCED_OPEN

        fork_and_check(child)
    finally:
        release.set()
        t.join(30)
    assert not t.is_alive()
    assert "other" not in registry
