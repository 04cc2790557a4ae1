"""No lock across Python (issue 5): the registry never holds a map-shard guard, or any other lock,
while Python code runs: the guarded function, the success predicate, state-change listeners,
``with`` bodies, and even ``__del__`` methods that run because the library dropped the last
reference to a user object.

Which names share a DashMap shard cannot be chosen (the map hashes them; it has 4 shards per CPU,
rounded up to a power of two: 8 on a 2-core machine), so the tests use many names (1,024 for the
"while blocked" checks, 96 for the hammering), which on such a machine puts several in every shard. A lock held across
Python shows up as a thread that does not finish: every thread is joined with a timeout.
"""

from __future__ import annotations

import gc
import random
import threading

import pytest
from helpers import TIMEOUT, Boom, fail, in_thread
from panelboard import CircuitOpenError, ManualClock, Registry, State

ALL_NAMES = [f"n{i}" for i in range(1024)]


def touch_every_shard(registry, names=ALL_NAMES):
    """Every operation of the API on every name (and registry-wide ones in between)."""
    for i, name in enumerate(names):
        registry.state(name)
        assert name in registry or name not in registry
        try:
            registry.call(name, lambda: None)
        except CircuitOpenError:
            pass
        b = registry.breaker(name)
        p = b.try_acquire()
        if p is not None:
            p.ignore()
        b.metrics()
        registry.configure(name, failure_threshold=3)
        registry.reset(name)
        if i % 3 == 0:
            registry.force_open(name)
            registry.disable(name)
            registry.reset(name)
        if i % 2 == 0:
            registry.delete(name)
        if i % 128 == 0:
            registry.list()
            registry.snapshot()
            len(registry)
            listener = registry.on_state_change(lambda *a: None)
            registry.remove_listener(listener)
    return True


# Where the blocked user code sits. Each entry: (breaker options, how to start the blocking call).
def _block_in_fn(registry, b, gate):
    return b.call(gate)


def _block_in_registry_call(registry, b, gate):
    return registry.call(b.name, gate)


def _block_in_decorated(registry, b, gate):
    return b(gate)()


def _block_in_predicate(registry, b, gate):
    return b.call(lambda: "value")


def _block_in_listener(registry, b, gate):
    with pytest.raises(Boom):
        b.call(fail)  # trips it: the listener runs on this thread and blocks
    return "value"


def _block_in_with_body(registry, b, gate):
    with b:
        return gate()


def _block_in_permit_holder(registry, b, gate):
    p = b.try_acquire()
    value = gate()
    p.success()
    return value


PLACES = {
    "fn via Breaker.call": _block_in_fn,
    "fn via Registry.call": _block_in_registry_call,
    "decorated fn": _block_in_decorated,
    "success predicate": _block_in_predicate,
    "listener": _block_in_listener,
    "with body": _block_in_with_body,
    "between try_acquire and its outcome": _block_in_permit_holder,
}


@pytest.mark.parametrize("place", list(PLACES))
def test_every_operation_on_every_shard_completes_while_user_code_blocks(place):
    registry = Registry(clock=ManualClock())
    inside, release = threading.Event(), threading.Event()
    name = ALL_NAMES[len(ALL_NAMES) // 2]

    def gate(*args):
        if threading.current_thread() is blocker[0]:  # only the blocked call waits
            inside.set()
            assert release.wait(TIMEOUT)
        return "value"

    options = {"failure_threshold": 1}
    if place == "success predicate":
        options["success"] = lambda v: gate() == "value"
    blocker = [None]
    if place == "listener":
        registry.on_state_change(lambda n, old, new: gate() if n == name and new == State.OPEN else None)
    b = registry.breaker(name, **options)

    def blocked_call():
        blocker[0] = threading.current_thread()
        return PLACES[place](registry, b, gate)

    join_blocked = in_thread(blocked_call)
    assert inside.wait(TIMEOUT), "the user code never started"
    try:
        join_other = in_thread(touch_every_shard, registry)
        assert join_other(what=f"touching every shard while user code blocks in the {place}")
        # A second registry and the default one are independent of it, but check them too.
        assert in_thread(touch_every_shard, Registry(), ALL_NAMES[:64])(what="another registry")
    finally:
        release.set()
    assert join_blocked(what="the blocked call") == "value"


# --------------------------------------------------------------------------------------------------
# Hammering: user code that deletes, resets and re-creates its own breaker and others


NAMES = [f"h{i}" for i in range(96)]
THREADS = 15
ROUNDS = 400


class Chaos:
    """User code (fn, predicate, listener) that rearranges the registry under its own feet."""

    def __init__(self, registry, seed):
        self.registry = registry
        self.rng = random.Random(seed)
        self.local = threading.local()
        self.unexpected: list = []

    def act(self, own):
        """Deletes, resets and re-creates `own` and a few others; bounded nesting depth."""
        depth = getattr(self.local, "depth", 0)
        if depth >= 2:
            return
        self.local.depth = depth + 1
        r = self.registry
        rng = random.Random(self.rng.random())  # per call, so threads do not share one stream
        try:
            for name in [own] + rng.sample(NAMES, 3):
                op = rng.randrange(9)
                if op == 0:
                    r.delete(name)
                elif op == 1:
                    r.reset(name)
                elif op == 2:
                    r.breaker(name, failure_threshold=2, success=self.predicate)
                elif op == 3:
                    r.configure(name, failure_threshold=rng.randint(1, 3), half_open_max_calls=2)
                elif op == 4:
                    try:
                        r.call(name, self.fn if rng.random() < 0.3 else (lambda: None))
                    except (CircuitOpenError, Boom):
                        pass
                elif op == 5:
                    r.force_open(name) if rng.random() < 0.5 else r.disable(name)
                elif op == 6:
                    p = r.breaker(name).try_acquire()
                    if p is not None:
                        (p.failure if rng.random() < 0.5 else p.success)()
                elif op == 7:
                    r.list()
                    r.snapshot()
                else:
                    r.state(name)
                    r.breaker(name).metrics()
        except BaseException as err:  # noqa: BLE001 - anything here is unexpected
            self.unexpected.append(err)
        finally:
            self.local.depth = depth

    def fn(self):
        own = getattr(self.local, "name", NAMES[0])
        self.act(own)
        if self.rng.random() < 0.3:
            raise Boom()
        return "ok"

    def predicate(self, value):
        self.act(getattr(self.local, "name", NAMES[1]))
        return value == "ok"

    def listener(self, name, old, new):
        self.act(name)


def test_fifteen_threads_hammer_breakers_whose_callbacks_rearrange_the_registry():
    clock = ManualClock()
    registry = Registry(clock=clock, failure_threshold=2, reset_timeout=1.0)
    chaos = Chaos(registry, seed=5)
    registry.on_state_change(chaos.listener)
    for name in NAMES:
        registry.breaker(name, success=chaos.predicate)
    barrier = threading.Barrier(THREADS)

    def hammer(i):
        rng = random.Random(i)
        barrier.wait(TIMEOUT)
        for _ in range(ROUNDS):
            name = rng.choice(NAMES)
            chaos.local.name = name
            try:
                r = rng.random()
                if r < 0.5:
                    registry.call(name, chaos.fn)
                elif r < 0.7:
                    registry.breaker(name).call(chaos.fn)
                elif r < 0.8:
                    with registry.breaker(name):
                        chaos.act(name)
                elif r < 0.9:
                    p = registry.breaker(name).try_acquire()
                    if p is not None:
                        chaos.act(name)
                        p.success()
                else:
                    clock.advance(0.5)
                    registry.state(name)
            except (CircuitOpenError, Boom):
                pass
        return True

    workers = [in_thread(hammer, i) for i in range(THREADS)]
    for join_worker in workers:
        assert join_worker(120, what="a hammering thread")
    assert not chaos.unexpected, chaos.unexpected[:3]
    # The registry is still consistent and usable (with the chaotic callbacks taken out).
    registry.remove_listener(chaos.listener)
    listed = [n for n, _ in registry.list()]
    assert len(listed) == len(set(listed)) == len(registry)
    for name in listed:
        registry.configure(name, success=None)
        registry.reset(name)
        assert registry.call(name, lambda: "ok") == "ok"
        assert registry.state(name) == State.CLOSED


# --------------------------------------------------------------------------------------------------
# __del__ methods that run because the library dropped its last reference


class Hook:
    """A success predicate / listener whose __del__ uses the registry, on every shard."""

    def __init__(self, registry, ran):
        self.registry = registry
        self.ran = ran

    def __call__(self, *args):
        return True

    def __del__(self):
        r = self.registry
        for name in ALL_NAMES[:256]:
            r.state(name)
            r.call(name, lambda: None)
            r.reset(name)
        r.list()
        r.snapshot()
        r.delete(ALL_NAMES[0])
        self.ran.append(True)


def _drop_by_delete(registry, ran):
    registry.breaker("victim", success=Hook(registry, ran))
    registry.delete("victim")


def _drop_by_reconfigure(registry, ran):
    registry.breaker("victim", success=Hook(registry, ran))
    registry.configure("victim", success=None)


def _drop_by_remove_listener(registry, ran):
    hook = registry.on_state_change(Hook(registry, ran))
    registry.remove_listener(hook)
    del hook


def _drop_by_last_permit(registry, ran):
    b = registry.breaker("victim", success=Hook(registry, ran))
    permit = b.try_acquire()
    registry.delete("victim")
    del b
    permit.success()
    del permit  # the permit held the last reference to the deleted breaker


def _drop_by_ignored_options(registry, ran):
    # The name exists already: options of later calls are ignored, and dropped.
    registry.breaker("victim")
    registry.breaker("victim", success=Hook(registry, ran))


def _drop_with_the_registry(registry, ran):
    inner = Registry()
    inner.breaker("victim", success=Hook(registry, ran))
    inner.on_state_change(Hook(registry, ran))
    del inner


DROPS = [
    _drop_by_delete,
    _drop_by_reconfigure,
    _drop_by_remove_listener,
    _drop_by_last_permit,
    _drop_by_ignored_options,
    _drop_with_the_registry,
]


@pytest.mark.parametrize("drop", DROPS, ids=lambda f: f.__name__[1:])
def test_del_of_a_user_object_dropped_by_the_library_may_use_the_registry(drop):
    registry = Registry()
    for name in ALL_NAMES[:256]:
        registry.breaker(name)
    ran: list = []

    def scenario():
        drop(registry, ran)
        gc.collect()
        return True

    assert in_thread(scenario)(what=f"dropping a user object ({drop.__name__})")
    gc.collect()
    assert ran, "__del__ never ran: the library kept the object alive"
    assert ALL_NAMES[0] not in registry
