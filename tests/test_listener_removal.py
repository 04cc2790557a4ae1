"""`remove_listener` always returns, whatever the registered listeners' `__eq__` does (issue 8,
item 7).

It compares with `==` (so that a fresh bound method finds the registered one), and `__eq__` is
user code: one that registered another listener made every compare-and-swap of the new list fail,
so the call retried, and ran `__eq__` again, forever. The comparison now runs once, on a snapshot.
"""

from __future__ import annotations

import threading

import pytest
from panelboard import Registry


class Hostile:
    """A listener whose `__eq__` runs `action` (at most `limit` times, then fails loudly)."""

    def __init__(self, action, result=False, limit=1000, thread=None):
        self.action = action
        self.result = result
        self.calls = 0  # calls from `remove_listener` itself, not from the action's own calls
        self.limit = limit
        self.inside = False
        self.thread = thread  # when set, calls from other threads only compare

    def __call__(self, name, old, new):
        pass

    def __eq__(self, other):
        # The action's own registry calls compare with this listener too: they only compare.
        if self.inside or (self.thread is not None and threading.current_thread() is not self.thread):
            return self.result
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError(f"__eq__ ran {self.calls} times: remove_listener is looping")
        self.inside = True
        try:
            self.action()
        finally:
            self.inside = False
        return self.result

    __hash__ = object.__hash__


def noop(name, old, new):
    pass


def test_eq_that_registers_a_listener_does_not_livelock():
    registry = Registry()
    added = []

    def register_another():
        listener = lambda n, o, s: None  # noqa: E731
        added.append(listener)
        registry.on_state_change(listener)

    hostile = Hostile(register_another)
    registry.on_state_change(hostile)
    registry.on_state_change(noop)

    registry.remove_listener(noop)

    assert hostile.calls == 1
    assert len(added) == 1
    with pytest.raises(ValueError):
        registry.remove_listener(noop)
    # The listener its __eq__ registered, and the hostile one itself, are still there.
    for listener in (hostile, added[0]):
        registry.remove_listener(listener)


def test_eq_that_removes_listeners_does_not_livelock():
    registry = Registry()
    others = [lambda n, o, s: None for _ in range(3)]

    def remove_one():
        if others:
            registry.remove_listener(others.pop())

    hostile = Hostile(remove_one)
    registry.on_state_change(hostile)
    for listener in others[:]:
        registry.on_state_change(listener)
    registry.on_state_change(noop)

    registry.remove_listener(noop)
    assert hostile.calls == 1
    with pytest.raises(ValueError):
        registry.remove_listener(noop)


def test_eq_that_removes_the_target_itself_gives_value_error_or_removes_it():
    registry = Registry()

    def remove_target():
        try:
            registry.remove_listener(noop)
        except ValueError:
            pass

    hostile = Hostile(remove_target)
    registry.on_state_change(hostile)
    registry.on_state_change(noop)
    try:
        registry.remove_listener(noop)
    except ValueError:
        pass
    assert hostile.calls == 1
    with pytest.raises(ValueError):
        registry.remove_listener(noop)


def test_eq_that_raises_propagates_and_changes_nothing():
    registry = Registry()

    def boom():
        raise KeyError("eq")

    hostile = Hostile(boom)
    registry.on_state_change(hostile)
    registry.on_state_change(noop)
    with pytest.raises(KeyError):
        registry.remove_listener(noop)
    hostile.action = lambda: None
    registry.remove_listener(noop)  # still registered


class Truthy:
    def __bool__(self):
        return True


class Untruthable:
    def __bool__(self):
        raise ValueError("no truth")


@pytest.mark.parametrize("result", [Truthy(), "yes", 1, NotImplemented])
def test_eq_returning_a_truthy_non_bool_counts_as_equal(result):
    registry = Registry()
    hostile = Hostile(lambda: None, result=result)
    registry.on_state_change(hostile)
    registry.on_state_change(noop)
    stranger = lambda n, o, s: None  # noqa: E731
    if result is NotImplemented:
        # Python then tries the reflected comparison and falls back to identity: not equal.
        with pytest.raises(ValueError):
            registry.remove_listener(stranger)
        return
    registry.remove_listener(stranger)  # the hostile listener claims to be equal: it goes
    registry.remove_listener(noop)
    with pytest.raises(ValueError):
        registry.remove_listener(hostile)


def test_eq_returning_an_object_whose_truth_raises_propagates():
    registry = Registry()
    registry.on_state_change(Hostile(lambda: None, result=Untruthable()))
    with pytest.raises(ValueError, match="no truth"):
        registry.remove_listener(noop)


def test_eq_that_registers_and_removes_while_other_threads_do_too():
    """Threads registering and removing listeners never make a removal fail or loop."""
    registry = Registry()
    stop = threading.Event()
    errors = []

    def churn():
        own = [lambda n, o, s: None for _ in range(20)]
        try:
            while not stop.is_set():
                for listener in own:
                    registry.on_state_change(listener)
                for listener in own:
                    registry.remove_listener(listener)
        except BaseException as e:
            errors.append(e)

    def register_and_remove():
        extra = lambda n, o, s: None  # noqa: E731
        registry.on_state_change(extra)
        registry.remove_listener(extra)

    hostile = Hostile(register_and_remove, thread=threading.current_thread())
    registry.on_state_change(hostile)
    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            registry.on_state_change(noop)
            registry.remove_listener(noop)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert hostile.calls == 200
