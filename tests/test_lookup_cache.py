"""Lookup by name through each thread's cache (issue 10, items 3 and 4).

`Registry.call(name, fn)` first asks a cache that the registry keeps for the calling thread, which
remembers the breakers this thread found before; a delete anywhere invalidates every cache. What a
user relies on: a call that starts after a delete (and a re-creation) of its name returned, in any
thread, runs through the current breaker, never the deleted one, however each thread reached the
name before (the same `str` object, an equal one, many names, many registries); and a registry the
program dropped is still collected, cycles included, whatever its threads' caches held. The
module-level functions are the default registry's, made once per process.
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref

import panelboard
import pytest
from helpers import in_thread, run_python, run_threads
from panelboard import CircuitOpenError, Registry

FREE_THREADED_313 = not getattr(sys, "_is_gil_enabled", lambda: True)() and sys.version_info[:2] == (3, 13)


def fresh(text: str) -> str:
    """An equal `str` that is a different object (a cache keyed by identity must not be fooled)."""
    copy = "".join(list(text))
    assert copy == text and copy is not text
    return copy


class Worker:
    """A thread that runs the functions handed to it, one at a time, and returns their results: the
    thread stays alive between steps, so its cache survives them."""

    def __init__(self) -> None:
        self.requests: list = []
        self.ready = threading.Condition()
        self.join = in_thread(self._loop)

    def _loop(self) -> None:
        while True:
            with self.ready:
                self.ready.wait_for(lambda: self.requests)
                fn, box, done = self.requests.pop(0)
            if fn is None:
                return
            try:
                box["value"] = fn()
            except BaseException as err:  # noqa: BLE001 - handed back to the caller
                box["error"] = err
            # Keep nothing of a finished request alive (its closure may hold a registry), and let
            # go of it before the caller is told: the caller may collect at once (on free-threaded
            # CPython this thread could otherwise still hold it then).
            fn = box = None
            done.set()
            done = None

    def run(self, fn, timeout: float = 60.0):
        box: dict = {}
        done = threading.Event()
        with self.ready:
            self.requests.append((fn, box, done))
            self.ready.notify()
        assert done.wait(timeout), "worker did not answer"
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stop(self) -> None:
        with self.ready:
            self.requests.append((None, None, None))
            self.ready.notify()
        self.join()


def outcome(registry: Registry, name: str) -> str:
    try:
        registry.call(name, lambda: None)
    except CircuitOpenError:
        return "rejected"
    return "admitted"


@pytest.mark.parametrize("same_object", [True, False], ids=["same_str", "equal_str"])
def test_a_call_after_delete_and_recreate_in_another_thread_uses_the_new_breaker(same_object):
    registry = Registry()
    name = "svc"
    worker = Worker()
    try:
        for round_ in range(50):
            key = name if same_object else fresh(name)
            # The worker's cache now holds the current breaker (by identity and by name).
            assert worker.run(lambda key=key: [outcome(registry, key) for _ in range(3)]) == ["admitted"] * 3
            old = registry.breaker(name)
            registry.delete(name)
            registry.force_open(name)  # a new breaker, forced open
            assert worker.run(lambda key=key: outcome(registry, key)) == "rejected", round_
            # The old breaker, still held by a handle, is not the registry's any more.
            assert old.call(lambda: "old") == "old"
            registry.delete(name)
            registry.breaker(name)  # a new, closed one
            assert worker.run(lambda key=key: outcome(registry, key)) == "admitted", round_
            assert registry.breaker(name).metrics().successes == 1
    finally:
        worker.stop()


def test_cached_names_stay_correct_while_other_threads_delete_and_recreate_them():
    registry = Registry()
    names = [f"svc-{i}" for i in range(40)]
    stop = threading.Event()
    workers = [Worker() for _ in range(3)]

    def churn(_: int) -> None:
        # Many rounds of delete / re-create (open or closed) while the workers call.
        for round_ in range(200):
            name = names[round_ % len(names)]
            registry.delete(name)
            if round_ % 3 == 0:
                registry.force_open(name)
            else:
                registry.breaker(name)

    def call_all() -> None:
        while not stop.is_set():
            for name in names:
                outcome(registry, name if hash(name) % 2 else fresh(name))

    # (Generous time: the workers spin until the churn ends, on a machine that may be loaded.)
    callers = [in_thread(w.run, call_all, timeout=300) for w in workers]
    try:
        run_threads(churn, n=2)
    finally:
        stop.set()
        for join in callers:
            join(300)
    # Every worker, whatever its cache holds, now sees the breakers as they are.
    try:
        for name in names:
            registry.delete(name)
            registry.force_open(name)
        for w in workers:
            assert w.run(lambda: {outcome(registry, n) for n in names}) == {"rejected"}
        for name in names:
            registry.delete(name)
        for w in workers:
            assert w.run(lambda: {outcome(registry, fresh(n)) for n in names}) == {"admitted"}
        for name in names:
            assert registry.breaker(name).metrics().successes == len(workers)
    finally:
        for w in workers:
            w.stop()


def test_each_registry_has_its_own_breakers_through_the_cache():
    def work(i: int) -> None:
        registries = [Registry() for _ in range(30)]
        for _ in range(3):
            for r in registries:
                assert r.call("svc", lambda: i) == i
        registries[i % 30].force_open("svc")
        for j, r in enumerate(registries):
            assert outcome(r, "svc") == ("rejected" if j == i % 30 else "admitted")
            assert r.breaker("svc").metrics().successes == 3 + (j != i % 30)
        # Registries dropped and made again (a new one may reuse an old one's address).
        for _ in range(30):
            r = Registry()
            assert outcome(r, "svc") == "admitted"
            assert r.breaker("svc").metrics().successes == 1
            del r

    run_threads(work, n=4)


def test_many_names_in_one_thread_each_reach_their_own_breaker():
    registry = Registry()
    names = [f"svc-{i}" for i in range(1000)]  # more than one thread's cache holds
    for name in names[::7]:
        registry.force_open(name)
    for _ in range(2):
        for i, name in enumerate(names):
            assert outcome(registry, fresh(name)) == ("rejected" if i % 7 == 0 else "admitted")
    assert sum(m.successes for m in registry.snapshot().values()) == 2 * (1000 - len(names[::7]))


class Predicate:
    def __call__(self, value: object) -> bool:
        return True


def test_a_deleted_breaker_goes_at_once_even_if_other_threads_cached_it():
    # As without caches: once no call runs on it and no handle holds it, a deleted breaker (and
    # what its configuration holds) is released by the delete itself, not at some later lookup.
    registry = Registry()
    predicate = Predicate()
    alive = weakref.ref(predicate)
    registry.breaker("svc", success=predicate)
    del predicate
    workers = [Worker() for _ in range(3)]
    try:
        for w in workers:
            w.run(lambda: [registry.call("svc", lambda: None) for _ in range(3)])
        # One worker ends: its cache stays with the registry, for the next thread.
        workers.pop().stop()
        registry.call("svc", lambda: None)
        assert alive() is not None
        registry.delete("svc")
        assert alive() is None, "a deleted breaker was kept by a lookup cache"
    finally:
        for w in workers:
            w.stop()


def listener_cycle() -> tuple[Registry, weakref.ref]:
    """A registry in a cycle: its listener closes over it. Returns it and a weak reference to the
    listener, which dies when the cycle is collected."""
    registry = Registry()

    def listener(name, old, new):
        return registry

    registry.on_state_change(listener)
    return registry, weakref.ref(listener)


def test_a_registry_in_a_cycle_is_collected_after_threads_looked_up_names():
    worker = Worker()

    def use_and_drop() -> weakref.ref:
        registry, alive = listener_cycle()
        worker.run(lambda: [registry.call(f"svc-{i}", lambda: None) for i in range(5)])
        run_threads(lambda i: [registry.call("svc", lambda: None) for _ in range(10)], n=4)
        registry.call("svc", lambda: None)
        # A name deleted while caches still hold its breaker.
        registry.delete("svc-1")
        return alive

    try:
        alive = use_and_drop()
        gc.collect()
        assert alive() is None, "a registry in a cycle was kept alive by its lookup caches"
    finally:
        worker.stop()


def test_a_breaker_held_by_a_cache_and_in_a_cycle_with_its_registry_is_collected():
    # The cached breaker's listener closes over the registry, and a thread's cache (alive and
    # idle) holds that breaker: the registry, its caches and the breaker go together.
    worker = Worker()

    def use_and_drop() -> weakref.ref:
        registry, alive = listener_cycle()
        worker.run(lambda: [registry.call("svc", lambda: None) for _ in range(3)])
        registry.breaker("svc").call(lambda: None)
        return alive

    try:
        alive = use_and_drop()
        gc.collect()
        assert alive() is None
    finally:
        worker.stop()


def test_module_level_functions_are_the_default_registrys_made_once():
    default = panelboard.default_registry()
    for fn in (panelboard.call, panelboard.state, panelboard.delete, panelboard.snapshot):
        assert fn.__self__ is default
    assert panelboard.call is panelboard.call
    assert panelboard.breaker.__name__ == "breaker"


@pytest.mark.skipif(not FREE_THREADED_313, reason="immortal only on free-threaded CPython 3.13")
def test_module_level_functions_and_default_registry_are_immortal_on_313t():
    # CPython reports an immortal object's count as a huge constant.
    for obj in (panelboard.call, panelboard.default_registry(), panelboard.state):
        assert sys.getrefcount(obj) > 2**30, obj


def test_registries_and_breakers_a_user_makes_are_not_immortal():
    # Only the process's own default registry and functions are: what users create is freed.
    registry, alive = listener_cycle()
    registry.call("svc", lambda: None)
    assert sys.getrefcount(registry) < 100
    del registry
    gc.collect()
    assert alive() is None


def test_interpreter_exits_cleanly_with_threads_in_registry_calls():
    script = """
import threading, time, panelboard
registries = [panelboard.Registry() for _ in range(3)]
def spin():
    while True:
        for r in registries:
            r.call("svc", lambda: None)
        panelboard.call("svc", lambda: None)
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
def finished():
    for r in registries:
        r.delete("svc")
for _ in range(50):
    finished()
    time.sleep(0.002)
print("done")
"""
    for _ in range(3):
        result = run_python("-c", script, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "done"
