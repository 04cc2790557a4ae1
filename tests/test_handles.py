"""Breaker handles (issue 3): ``registry.breaker(name, **config)``, ``b.name``, ``b.state``, ``b.call``.

A handle holds the breaker itself: it keeps working on its own breaker after ``registry.delete``,
and ``registry.breaker(name)`` then makes a new one.
"""

from __future__ import annotations

import functools
import threading

import panelboard
import pytest
from helpers import Boom, fail, run_threads, trip
from panelboard import Breaker, CircuitOpenError, Registry, State


def test_breaker_returns_a_handle_with_name_and_state(registry):
    b = registry.breaker("payments")
    assert isinstance(b, Breaker)
    assert b.name == "payments"
    assert type(b.name) is str
    assert b.state is State.CLOSED
    assert "payments" in registry, "breaker() creates the breaker"


def test_two_handles_on_one_name_share_the_breaker(registry):
    first = registry.breaker("db", failure_threshold=2)
    second = registry.breaker("db")
    trip(first, 2)
    assert second.state is State.OPEN
    assert registry.state("db") is State.OPEN
    with pytest.raises(CircuitOpenError):
        second.call(lambda: "never")


def test_breaker_options_apply_only_on_creation(registry):
    registry.breaker("db", failure_threshold=1)
    b = registry.breaker("db", failure_threshold=100)  # first creation wins
    trip(b, 1)
    assert b.state is State.OPEN


def test_handle_sees_registry_call_and_vice_versa(registry):
    b = registry.breaker("db", failure_threshold=2)
    with pytest.raises(Boom):
        registry.call("db", fail)
    with pytest.raises(Boom):
        b.call(fail)
    assert registry.state("db") is State.OPEN
    assert b.state is State.OPEN


def test_handle_state_goes_half_open_lazily_with_the_clock(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=10.0)
    trip(b, 1)
    clock.advance(9.999)
    assert b.state is State.OPEN
    clock.advance(0.001)
    assert b.state is State.HALF_OPEN


def test_call_forwards_positional_and_keyword_arguments(registry):
    b = registry.breaker("fwd")

    def record(*args, **kwargs):
        return args, kwargs

    assert b.call(record) == ((), {})
    assert b.call(record, 1) == ((1,), {})
    assert b.call(record, 1, "two", None) == ((1, "two", None), {})
    assert b.call(record, x=1) == ((), {"x": 1})
    assert b.call(record, 1, 2, x=3, y=4) == ((1, 2), {"x": 3, "y": 4})
    many = tuple(range(40))
    assert b.call(record, *many, **{f"k{i}": i for i in range(20)}) == (
        many,
        {f"k{i}": i for i in range(20)},
    )


def test_call_forwards_keyword_arguments_named_like_its_own_parameters(registry):
    b = registry.breaker("fwd")

    def record(*args, **kwargs):
        return args, kwargs

    # `fn` is positional-only in b.call, so a keyword `fn` belongs to the guarded function.
    assert b.call(record, fn=1) == ((), {"fn": 1})
    assert b.call(lambda fn: fn * 2, fn=21) == 42
    assert b.call(record, 0, fn="f", self="s", args="a", kwargs="k", name="n") == (
        (0,),
        {"fn": "f", "self": "s", "args": "a", "kwargs": "k", "name": "n"},
    )


def test_call_forwards_to_bound_methods_partials_and_builtins(registry):
    b = registry.breaker("fwd")

    class Account:
        def __init__(self) -> None:
            self.balance = 0

        def deposit(self, amount: int, *, note: str = "") -> int:
            self.balance += amount
            return self.balance

    acct = Account()
    assert b.call(acct.deposit, 5) == 5
    assert b.call(acct.deposit, amount=7, note="x") == 12
    assert b.call(functools.partial(acct.deposit, 3)) == 15
    assert b.call(max, 3, 9, 4) == 9
    assert b.call(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
    assert b.call(dict, a=1) == {"a": 1}


def test_call_returns_the_result_object_and_reraises_the_same_exception(registry):
    b = registry.breaker("same")
    result = object()
    assert b.call(lambda: result) is result
    err = Boom("this one")

    def raise_it():
        raise err

    with pytest.raises(Boom) as info:
        b.call(raise_it)
    assert info.value is err


def test_call_counts_outcomes_like_registry_call(registry):
    b = registry.breaker("db", failure_threshold=3)
    trip(b, 2)
    b.call(lambda: None)  # a success clears the consecutive failures
    trip(b, 2)
    assert b.state is State.CLOSED
    trip(b, 1)
    assert b.state is State.OPEN


def test_call_on_open_breaker_raises_without_calling(registry, clock):
    b = registry.breaker("db", failure_threshold=1, reset_timeout=30.0)
    trip(b, 1)
    clock.advance(10.0)
    called = []
    with pytest.raises(CircuitOpenError) as info:
        b.call(called.append, 1)
    assert called == []
    assert info.value.name == "db"
    assert info.value.retry_after == pytest.approx(20.0)


def test_call_with_success_predicate_returns_result_but_counts_failure(registry):
    b = registry.breaker("pred", failure_threshold=2, success=lambda r: r != "bad")
    assert b.call(lambda: "bad") == "bad"
    assert b.call(lambda: "bad") == "bad"
    assert b.state is State.OPEN


def test_call_rejects_a_non_callable_without_counting(registry):
    b = registry.breaker("db", failure_threshold=1)
    with pytest.raises(TypeError):
        b.call(42)
    assert b.state is State.CLOSED
    assert b.metrics().calls == 0


def test_fn_may_reenter_through_the_same_handle(registry):
    b = registry.breaker("db")
    assert b.call(lambda: b.call(lambda: b.call(lambda: "deep"))) == "deep"


def test_deleted_breaker_handle_keeps_its_own_breaker(registry):
    old = registry.breaker("db", failure_threshold=1)
    registry.delete("db")
    assert "db" not in registry
    # The old handle still works, on its own (now unregistered) breaker.
    assert old.call(lambda: "still works") == "still works"
    trip(old, 1)
    assert old.state is State.OPEN
    assert old.name == "db"
    with pytest.raises(CircuitOpenError):
        old.call(lambda: None)
    # ... which the registry no longer knows.
    assert "db" not in registry
    assert registry.state("db") is State.CLOSED
    assert registry.call("db", lambda: "fresh") == "fresh"


def test_breaker_after_delete_makes_a_new_breaker(registry):
    old = registry.breaker("db", failure_threshold=1)
    trip(old, 1)
    registry.delete("db")
    new = registry.breaker("db", failure_threshold=2)
    assert new.state is State.CLOSED
    assert old.state is State.OPEN
    trip(new, 1)
    assert new.state is State.CLOSED, "the new breaker has its own options"
    trip(new, 1)
    assert new.state is State.OPEN
    registry.reset("db")
    assert new.state is State.CLOSED
    assert old.state is State.OPEN, "reset by name reaches only the registered breaker"


def test_handles_of_distinct_registries_are_independent(clock):
    a = Registry(clock=clock).breaker("db", failure_threshold=1)
    b = Registry(clock=clock).breaker("db", failure_threshold=1)
    trip(a, 1)
    assert a.state is State.OPEN
    assert b.state is State.CLOSED


def test_handle_outlives_its_registry(clock):
    registry = Registry(clock=clock)
    b = registry.breaker("db", failure_threshold=1)
    del registry
    trip(b, 1)
    assert b.state is State.OPEN
    clock.advance(30.0)
    assert b.call(lambda: "probe") == "probe"
    assert b.state is State.CLOSED


def test_breaker_name_must_be_str(registry):
    with pytest.raises(TypeError):
        registry.breaker(b"db")
    with pytest.raises(TypeError):
        registry.breaker(None)
    assert len(registry) == 0


def test_default_registry_breaker(name):
    b = panelboard.breaker(name, failure_threshold=1)
    assert name in panelboard.default_registry()
    trip(b, 1)
    assert panelboard.state(name) is State.OPEN
    assert panelboard.breaker(name).state is State.OPEN


def test_handle_repr_names_breaker_and_state(registry):
    b = registry.breaker("db", failure_threshold=1)
    assert "db" in repr(b) and "closed" in repr(b)
    trip(b, 1)
    assert "open" in repr(b)


def test_calls_through_one_handle_from_16_threads(registry):
    b = registry.breaker("shared", failure_threshold=10**6)
    barrier = threading.Barrier(16, timeout=10)
    errors = []
    per_thread = 200

    def work(i):
        try:
            barrier.wait()
            for j in range(per_thread):
                assert b.call(lambda x, *, y: x + y, i, y=j) == i + j
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_threads(work, n=16, timeout=30)
    assert errors == []
    assert b.metrics().successes == 16 * per_thread
