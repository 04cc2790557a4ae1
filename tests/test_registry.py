"""The core contract of issue 2, line by line: ``call``, outcomes, recording, generations, ``state``,
``list``, ``reset``, ``delete``, on the default registry (module functions) and on ``Registry``
instances. Time-dependent behaviour is checked exactly with a ``ManualClock``."""

from __future__ import annotations

import asyncio
import functools

import panelboard
import pytest
from helpers import Boom, CustomBase, assert_half_opens_after, fail, fail_n, hold_in_call, names_of, ok
from panelboard import CircuitOpenError, ManualClock, Registry, State


def listed_state(api, name):
    found = [s for n, s in api.list() if n == name]
    assert len(found) == 1, f"{name!r} listed {len(found)} times"
    return found[0]


# --------------------------------------------------------------------------------------------------
# Public surface


def test_public_names_exist():
    for attr in ("init", "call", "state", "reset", "delete", "list"):
        assert callable(getattr(panelboard, attr))
    for attr in ("call", "state", "reset", "delete", "list"):
        assert callable(getattr(Registry(), attr))
    assert issubclass(CircuitOpenError, Exception)
    assert issubclass(State, str)
    assert State.CLOSED == "closed" and State.OPEN == "open" and State.HALF_OPEN == "half_open"


def test_init_is_idempotent_and_optional(name):
    assert panelboard.call(name, ok) == "ok"  # works before init
    assert panelboard.init() is None
    assert panelboard.init() is None
    assert panelboard.state(name) is State.CLOSED
    assert panelboard.call(name, ok) == "ok"


def test_manual_clock_basics():
    c = ManualClock()
    assert c.now() == 0.0
    c.advance(1.5)
    assert c.now() == 1.5
    c = ManualClock(100.0)
    c.advance(0.25)
    assert c.now() == 100.25


def test_registries_are_isolated(name):
    a, b = Registry(), Registry()
    fail_n(a, name, 1, failure_threshold=1, reset_timeout=1000)
    assert a.state(name) is State.OPEN
    assert b.state(name) is State.CLOSED
    assert panelboard.state(name) is State.CLOSED
    assert name not in names_of(b) and name not in names_of(panelboard)


# --------------------------------------------------------------------------------------------------
# call: creation, closed, open, half-open


def test_call_returns_result_and_creates_breaker(api, name):
    assert name not in names_of(api)
    sentinel = object()
    assert api.call(name, lambda: sentinel) is sentinel
    assert listed_state(api, name) is State.CLOSED
    assert api.state(name) is State.CLOSED


def test_default_options(registry, clock):
    # failure_threshold=5, reset_timeout=30.0, half_open_max_calls=1, success=None
    assert registry.call("svc", lambda: None) is None  # a falsy result is a success
    fail_n(registry, "svc", 4)
    assert registry.state("svc") is State.CLOSED
    fail_n(registry, "svc", 1)
    assert registry.state("svc") is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        registry.call("svc", ok)
    assert info.value.retry_after == 30.0
    clock.advance(29.999)
    assert registry.state("svc") is State.OPEN
    clock.advance(0.001)
    assert registry.state("svc") is State.HALF_OPEN
    nested = []

    def probe():
        with pytest.raises(CircuitOpenError):
            registry.call("svc", ok)  # the one permit is held by this probe
        nested.append(1)
        return "probed"

    assert registry.call("svc", probe) == "probed"
    assert nested == [1]
    assert registry.state("svc") is State.CLOSED


def test_default_options_default_registry(name):
    fail_n(panelboard, name, 4)
    assert panelboard.state(name) is State.CLOSED
    fail_n(panelboard, name, 1)
    assert panelboard.state(name) is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        panelboard.call(name, ok)
    assert 29.0 < info.value.retry_after <= 30.0


def test_call_accepts_name_and_fn_by_keyword(api, name):
    assert api.call(name, fn=ok) == "ok"
    assert api.call(name=name, fn=ok, failure_threshold=2) == "ok"


def test_fn_takes_no_arguments_partial_works(api, name):
    assert api.call(name, functools.partial(pow, 2, 10)) == 1024


def test_closed_runs_fn_every_time(api, name):
    runs = []
    for i in range(5):
        assert api.call(name, lambda i=i: runs.append(i) or i) == i
    assert runs == [0, 1, 2, 3, 4]


def test_first_call_options_win_failure_threshold(api, name):
    api.call(name, ok, failure_threshold=3, reset_timeout=1000)
    # A later call asking for threshold 1 is ignored: two failures keep it closed.
    fail_n(api, name, 2, failure_threshold=1)
    assert api.state(name) is State.CLOSED
    fail_n(api, name, 1, failure_threshold=100)
    assert api.state(name) is State.OPEN


def test_first_call_options_win_when_first_call_fails(api, name):
    fail_n(api, name, 1, failure_threshold=1, reset_timeout=1000)
    assert api.state(name) is State.OPEN


def test_first_call_options_win_reset_timeout(registry, clock):
    registry.call("svc", ok, failure_threshold=1, reset_timeout=10)
    fail_n(registry, "svc", 1, reset_timeout=1)
    clock.advance(5)
    with pytest.raises(CircuitOpenError) as info:
        registry.call("svc", ok, reset_timeout=0)
    assert info.value.retry_after == 5.0


def test_first_call_options_win_success_predicate(api, name):
    api.call(name, ok, failure_threshold=1, reset_timeout=1000)  # no predicate
    # A later predicate that rejects everything is ignored.
    assert api.call(name, ok, success=lambda r: False) == "ok"
    assert api.state(name) is State.CLOSED


def test_first_call_options_win_half_open_max_calls(registry, clock):
    registry.call("svc", ok, failure_threshold=1, reset_timeout=1, half_open_max_calls=1)
    fail_n(registry, "svc", 1)
    clock.advance(1)
    rejected = []

    def probe():
        # The probe's permit is held while it runs; a second probe is rejected even though this
        # call asks for 5 permits.
        with pytest.raises(CircuitOpenError) as info:
            registry.call("svc", ok, half_open_max_calls=5)
        rejected.append(info.value)
        return "probed"

    assert registry.call("svc", probe, half_open_max_calls=5) == "probed"
    assert len(rejected) == 1
    assert registry.state("svc") is State.CLOSED


def test_open_rejects_without_running_fn(registry, clock):
    fail_n(registry, "svc", 2, failure_threshold=2, reset_timeout=10)
    assert registry.state("svc") is State.OPEN
    clock.advance(2.5)
    runs = []
    with pytest.raises(CircuitOpenError) as info:
        registry.call("svc", lambda: runs.append(1))
    assert runs == []
    err = info.value
    assert isinstance(err, Exception)
    assert err.name == "svc"
    assert type(err.retry_after) is float
    assert err.retry_after == 7.5
    assert err.args == ("svc", 7.5), "args as if raised as CircuitOpenError(name, retry_after)"
    assert err.args == CircuitOpenError("svc", 7.5).args
    again = eval(repr(err), {"CircuitOpenError": CircuitOpenError})  # repr reads back
    assert (again.name, again.retry_after, again.args) == ("svc", 7.5, ("svc", 7.5))
    with pytest.raises(TypeError):
        CircuitOpenError("svc", retry_after=7.5)  # positional only, as the stub says
    clock.advance(7.499)
    with pytest.raises(CircuitOpenError) as info:
        registry.call("svc", lambda: runs.append(1))
    assert info.value.retry_after == 0.001
    assert runs == []
    assert registry.state("svc") is State.OPEN


def test_open_rejects_on_default_clock(api, name):
    fail_n(api, name, 1, failure_threshold=1, reset_timeout=1000)
    runs = []
    with pytest.raises(CircuitOpenError) as info:
        api.call(name, lambda: runs.append(1))
    assert runs == []
    assert info.value.name == name
    assert 0.0 < info.value.retry_after <= 1000.0


def test_open_until_timeout_then_half_open_edge_inclusive(registry, clock):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=2)
    clock.advance(1.999)
    assert registry.state("svc") is State.OPEN
    with pytest.raises(CircuitOpenError):
        registry.call("svc", ok)
    clock.advance(0.001)  # now - opened_at == reset_timeout: no longer "< reset_timeout"
    assert registry.call("svc", ok) == "ok"
    assert registry.state("svc") is State.CLOSED


def test_reset_timeout_zero_is_half_open_at_once(api, name):
    fail_n(api, name, 1, failure_threshold=1, reset_timeout=0)
    assert api.state(name) is State.HALF_OPEN
    assert api.call(name, ok) == "ok"
    assert api.state(name) is State.CLOSED


@pytest.mark.parametrize("max_calls", [1, 2, 3])
def test_half_open_admits_exactly_max_calls(registry, clock, max_calls):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=5, half_open_max_calls=max_calls)
    clock.advance(5)
    admitted = []
    rejections = []

    def probe():
        admitted.append(1)
        # Every enclosing probe still holds its permit: nest until rejected.
        try:
            registry.call("svc", probe)
        except CircuitOpenError as err:
            rejections.append(err)
        return "done"

    assert registry.call("svc", probe) == "done"
    assert len(admitted) == max_calls
    assert len(rejections) == 1
    assert rejections[0].name == "svc"
    assert rejections[0].retry_after == 0.0  # half-open and full: no known time
    assert registry.state("svc") is State.CLOSED


def test_half_open_admits_exactly_max_calls_default_clock(api, name):
    fail_n(api, name, 1, failure_threshold=1, reset_timeout=0, half_open_max_calls=2)
    admitted = []

    def probe():
        admitted.append(1)
        try:
            api.call(name, probe)
        except CircuitOpenError:
            pass
        return "done"

    assert api.call(name, probe) == "done"
    assert len(admitted) == 2


# --------------------------------------------------------------------------------------------------
# Outcomes


def test_success_predicate_falsy_is_failure_but_result_returned(api, name):
    seen = []

    def is_ok(result):
        seen.append(result)
        return result == "ok"

    opts = dict(failure_threshold=2, reset_timeout=1000, success=is_ok)
    assert api.call(name, lambda: "bad", **opts) == "bad"
    assert api.state(name) is State.CLOSED
    assert api.call(name, lambda: "bad") == "bad"
    assert api.state(name) is State.OPEN
    assert seen == ["bad", "bad"]


def test_success_predicate_truthy_is_success(api, name):
    opts = dict(failure_threshold=2, reset_timeout=1000, success=lambda r: r)
    assert api.call(name, lambda: 0, **opts) == 0  # falsy result: failure (count 1)
    assert api.call(name, lambda: [1]) == [1]  # truthy: success, count 0
    assert api.call(name, lambda: "") == ""  # count 1
    assert api.state(name) is State.CLOSED
    assert api.call(name, lambda: None) is None  # count 2: opens
    assert api.state(name) is State.OPEN


def test_success_predicate_raising_propagates_and_counts_as_failure(api, name):
    raised = []

    def predicate(result):
        err = LookupError(f"cannot judge {result!r}")
        raised.append(err)
        raise err

    runs = []
    opts = dict(failure_threshold=2, reset_timeout=1000, success=predicate)
    for expected_state in (State.CLOSED, State.OPEN):
        with pytest.raises(LookupError) as info:
            api.call(name, lambda: runs.append(1) or "value", **opts)
        assert info.value is raised[-1]
        assert api.state(name) is expected_state
    assert len(runs) == 2


def test_exception_is_failure_and_same_object_reraised(api, name):
    errors = []

    def raise_new():
        err = Boom("x")
        errors.append(err)
        raise err

    with pytest.raises(Boom) as info:
        api.call(name, raise_new, failure_threshold=2, reset_timeout=1000)
    assert info.value is errors[0]
    assert api.state(name) is State.CLOSED
    with pytest.raises(Boom) as info:
        api.call(name, raise_new)
    assert info.value is errors[1]
    assert api.state(name) is State.OPEN


@pytest.mark.parametrize("exc_type", [ValueError, RuntimeError, OSError, StopIteration, CircuitOpenError])
def test_any_exception_subclass_is_failure(registry, exc_type):
    err = exc_type("svc") if exc_type is not CircuitOpenError else CircuitOpenError("other", 1.0)

    def raiser():
        raise err

    with pytest.raises(exc_type) as info:
        registry.call("svc", raiser, failure_threshold=1, reset_timeout=10)
    assert info.value is err
    assert registry.state("svc") is State.OPEN


BASE_EXCEPTIONS = [
    KeyboardInterrupt,
    SystemExit,
    asyncio.CancelledError,
    GeneratorExit,
    CustomBase,
]


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda t: t.__name__)
def test_base_exception_is_ignored_and_reraised_while_closed(api, name, exc_type):
    err = exc_type()

    def raiser():
        raise err

    # failure, ignored, failure: the ignored outcome neither counts as a failure ...
    fail_n(api, name, 1, failure_threshold=2, reset_timeout=1000)
    for _ in range(3):
        with pytest.raises(exc_type) as info:
            api.call(name, raiser)
        assert info.value is err
    assert api.state(name) is State.CLOSED
    # ... nor as a success (which would reset the count): one more failure opens it.
    fail_n(api, name, 1)
    assert api.state(name) is State.OPEN


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda t: t.__name__)
def test_base_exception_in_half_open_releases_permit(registry, clock, exc_type):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=1, half_open_max_calls=1)
    clock.advance(1)
    err = exc_type()

    def raiser():
        raise err

    for _ in range(3):  # each time the single permit comes back
        with pytest.raises(exc_type) as info:
            registry.call("svc", raiser)
        assert info.value is err
        assert registry.state("svc") is State.HALF_OPEN
    assert registry.call("svc", ok) == "ok"
    assert registry.state("svc") is State.CLOSED


def test_predicate_sees_result_of_each_call_once(api, name):
    seen = []
    api.call(name, lambda: 1, success=lambda r: seen.append(r) or True)
    api.call(name, lambda: 2)
    assert seen == [1, 2]


def test_predicate_not_called_on_exception(api, name):
    seen = []
    with pytest.raises(Boom):
        api.call(name, fail, success=lambda r: seen.append(r) or True)
    assert seen == []


# --------------------------------------------------------------------------------------------------
# Recording


def test_success_resets_consecutive_failures(api, name):
    opts = dict(failure_threshold=3, reset_timeout=1000)
    fail_n(api, name, 2, **opts)
    api.call(name, ok)
    fail_n(api, name, 2)
    assert api.state(name) is State.CLOSED
    fail_n(api, name, 1)
    assert api.state(name) is State.OPEN


def test_opens_at_threshold_with_opened_at_now(registry, clock):
    opts = dict(failure_threshold=3, reset_timeout=10)
    fail_n(registry, "svc", 1, **opts)
    clock.advance(1)
    fail_n(registry, "svc", 1)
    clock.advance(4)
    assert registry.state("svc") is State.CLOSED
    fail_n(registry, "svc", 1)  # opens at t=5
    assert registry.state("svc") is State.OPEN
    assert_half_opens_after(registry, clock, 10.0)


def test_half_open_success_closes_with_count_zero(registry, clock):
    fail_n(registry, "svc", 3, failure_threshold=3, reset_timeout=1)
    clock.advance(1)
    assert registry.call("svc", ok) == "ok"
    assert registry.state("svc") is State.CLOSED
    fail_n(registry, "svc", 2)
    assert registry.state("svc") is State.CLOSED
    fail_n(registry, "svc", 1)
    assert registry.state("svc") is State.OPEN


def test_half_open_failure_reopens_with_fresh_opened_at(registry, clock):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=10)
    clock.advance(12)
    assert registry.state("svc") is State.HALF_OPEN
    fail_n(registry, "svc", 1)  # probe fails at t=12
    assert registry.state("svc") is State.OPEN
    assert_half_opens_after(registry, clock, 10.0)


def test_half_open_falsy_result_reopens(registry, clock):
    opts = dict(failure_threshold=1, reset_timeout=1, success=lambda r: r == "ok")
    fail_n(registry, "svc", 1, **opts)
    clock.advance(1)
    assert registry.call("svc", lambda: "bad") == "bad"
    assert registry.state("svc") is State.OPEN


def test_half_open_predicate_raising_reopens(registry, clock):
    def predicate(result):
        raise LookupError(result)

    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=1, success=predicate)
    clock.advance(1)
    with pytest.raises(LookupError):
        registry.call("svc", ok)
    assert registry.state("svc") is State.OPEN


# --------------------------------------------------------------------------------------------------
# Generations: stale outcomes are dropped


def test_stale_failure_after_reset_inside_fn_is_dropped(api, name):
    opts = dict(failure_threshold=2, reset_timeout=1000)
    api.call(name, ok, **opts)

    def slow():
        fail_n(api, name, 1)  # count 1
        api.reset(name)  # count 0, new generation
        fail_n(api, name, 1)  # count 1 in the new generation
        raise Boom("late")  # admitted in the old generation: must not make it 2

    with pytest.raises(Boom, match="late"):
        api.call(name, slow)
    assert api.state(name) is State.CLOSED
    fail_n(api, name, 1)
    assert api.state(name) is State.OPEN


@pytest.mark.parametrize("late", ["success", "failure"])
def test_stale_outcome_from_closed_after_trip_and_half_open_is_dropped(registry, clock, late):
    registry.call("svc", ok, failure_threshold=1, reset_timeout=1)

    def slow():
        fail_n(registry, "svc", 1)  # trips it while this call is in flight
        clock.advance(1)
        assert registry.state("svc") is State.HALF_OPEN
        if late == "failure":
            raise Boom("late")
        return "late"

    if late == "failure":
        with pytest.raises(Boom):
            registry.call("svc", slow)
    else:
        assert registry.call("svc", slow) == "late"
    # Neither closed (success) nor reopened (failure) by an outcome admitted while closed.
    assert registry.state("svc") is State.HALF_OPEN
    assert registry.call("svc", ok) == "ok"  # the probe permit is still there
    assert registry.state("svc") is State.CLOSED


def test_stale_probe_outcome_after_reopen_is_dropped(registry, clock):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=1, half_open_max_calls=2)
    clock.advance(1)

    def first_probe():
        fail_n(registry, "svc", 1)  # the second probe fails: open again
        assert registry.state("svc") is State.OPEN
        clock.advance(1)
        assert registry.state("svc") is State.HALF_OPEN
        return "late"  # from the previous half-open period: must not close it

    assert registry.call("svc", first_probe) == "late"
    assert registry.state("svc") is State.HALF_OPEN


def test_stale_success_from_slow_thread_does_not_close(registry, clock):
    finish_slow = hold_in_call(registry.call, "svc", result="late", failure_threshold=2, reset_timeout=1)
    try:
        fail_n(registry, "svc", 2)
        assert registry.state("svc") is State.OPEN
        clock.advance(1)
        assert registry.state("svc") is State.HALF_OPEN
    finally:
        assert finish_slow() == "late"
    assert registry.state("svc") is State.HALF_OPEN


def test_stale_failure_from_slow_thread_after_reset_is_dropped(registry, clock):
    finish_slow = hold_in_call(
        registry.call, "svc", result=Boom("late"), failure_threshold=2, reset_timeout=1
    )
    try:
        fail_n(registry, "svc", 1)
        registry.reset("svc")
        fail_n(registry, "svc", 1)
    finally:
        with pytest.raises(Boom, match="late"):
            finish_slow()
    assert registry.state("svc") is State.CLOSED
    fail_n(registry, "svc", 1)
    assert registry.state("svc") is State.OPEN


# --------------------------------------------------------------------------------------------------
# state and list


def test_state_is_lazily_half_open_after_timeout(registry, clock):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=3)
    assert registry.state("svc") is State.OPEN
    assert listed_state(registry, "svc") is State.OPEN
    clock.advance(3)
    # No call happened: the state is computed when read.
    assert registry.state("svc") is State.HALF_OPEN
    assert listed_state(registry, "svc") is State.HALF_OPEN


def test_list_reports_half_open_before_state_is_read(registry, clock):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=3)
    clock.advance(3)
    assert listed_state(registry, "svc") is State.HALF_OPEN


def test_state_of_unknown_name_is_closed_and_not_created(api, name):
    assert api.state(name) is State.CLOSED
    assert name not in names_of(api)
    if isinstance(api, Registry):
        assert name not in api


def test_list_every_breaker_with_its_state(registry, clock):
    assert registry.list() == []
    registry.call("healthy", ok)
    fail_n(registry, "down", 1, failure_threshold=1, reset_timeout=100)
    fail_n(registry, "recovering", 1, failure_threshold=1, reset_timeout=1)
    clock.advance(1)
    listing = registry.list()
    assert isinstance(listing, list)
    assert all(isinstance(item, tuple) and len(item) == 2 for item in listing)
    assert all(type(n) is str and isinstance(s, State) for n, s in listing)
    assert sorted(listing) == [
        ("down", State.OPEN),
        ("healthy", State.CLOSED),
        ("recovering", State.HALF_OPEN),
    ]


def test_default_list_contains_our_breakers(name):
    other = name + "-other"
    try:
        panelboard.call(name, ok)
        fail_n(panelboard, other, 1, failure_threshold=1, reset_timeout=1000)
        listing = dict(panelboard.list())
        assert listing[name] is State.CLOSED
        assert listing[other] is State.OPEN
    finally:
        panelboard.delete(other)
    assert other not in names_of(panelboard)


def test_names_are_exact_strings(registry):
    for n in ["", " ", "a", "A", "ü", "名前", "a\x00b", "x" * 10_000, "\ud800"]:
        registry.call(n, ok)
    listed = {n for n, _ in registry.list()}
    assert listed == {"", " ", "a", "A", "ü", "名前", "a\x00b", "x" * 10_000, "\ud800"}


# --------------------------------------------------------------------------------------------------
# reset


def test_reset_closes_an_open_breaker(api, name):
    fail_n(api, name, 2, failure_threshold=2, reset_timeout=1000)
    assert api.state(name) is State.OPEN
    assert api.reset(name) is None
    assert api.state(name) is State.CLOSED
    assert api.call(name, ok) == "ok"


def test_reset_clears_failure_count(api, name):
    fail_n(api, name, 2, failure_threshold=3, reset_timeout=1000)
    api.reset(name)
    fail_n(api, name, 2)
    assert api.state(name) is State.CLOSED
    fail_n(api, name, 1)
    assert api.state(name) is State.OPEN


def test_reset_keeps_options(registry, clock):
    fail_n(registry, "svc", 2, failure_threshold=2, reset_timeout=7)
    registry.reset("svc")
    fail_n(registry, "svc", 1, failure_threshold=1)
    assert registry.state("svc") is State.CLOSED
    fail_n(registry, "svc", 1)
    with pytest.raises(CircuitOpenError) as info:
        registry.call("svc", ok)
    assert info.value.retry_after == 7.0


def test_reset_drops_half_open_permits(registry, clock):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=1, half_open_max_calls=1)
    clock.advance(1)
    inner = []

    def held_probe():
        # This probe holds the only permit. Reset, trip, and go half-open again: the new period
        # must have its permit available.
        registry.reset("svc")
        assert registry.state("svc") is State.CLOSED
        fail_n(registry, "svc", 1)
        clock.advance(1)
        inner.append(registry.call("svc", lambda: "new probe"))
        assert registry.state("svc") is State.CLOSED
        raise Boom("late")  # stale: must not reopen the breaker

    with pytest.raises(Boom):
        registry.call("svc", held_probe)
    assert inner == ["new probe"]
    assert registry.state("svc") is State.CLOSED


def test_reset_from_half_open_closes(registry, clock):
    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=1)
    clock.advance(1)
    assert registry.state("svc") is State.HALF_OPEN
    registry.reset("svc")
    assert registry.state("svc") is State.CLOSED


def test_reset_unknown_name_is_noop_and_does_not_create(api, name):
    assert api.reset(name) is None
    assert name not in names_of(api)
    assert api.state(name) is State.CLOSED


# --------------------------------------------------------------------------------------------------
# delete


def test_delete_forgets_breaker(api, name):
    fail_n(api, name, 1, failure_threshold=1, reset_timeout=1000)
    assert api.delete(name) is None
    assert name not in names_of(api)
    assert api.state(name) is State.CLOSED
    assert name not in names_of(api)


def test_new_call_after_delete_creates_fresh_breaker_with_new_options(api, name):
    fail_n(api, name, 1, failure_threshold=1, reset_timeout=1000)
    api.delete(name)
    fail_n(api, name, 2, failure_threshold=3, reset_timeout=1000)
    assert api.state(name) is State.CLOSED
    fail_n(api, name, 1)
    assert api.state(name) is State.OPEN


def test_delete_unknown_name_is_noop(api, name):
    assert api.delete(name) is None
    assert api.delete(name) is None
    assert name not in names_of(api)


@pytest.mark.parametrize("late", ["success", "failure"])
def test_delete_while_call_in_flight_finishes_normally(api, name, late):
    err = Boom("late")

    def slow():
        api.delete(name)
        assert name not in names_of(api)
        if late == "failure":
            raise err
        return "late"

    if late == "failure":
        with pytest.raises(Boom) as info:
            api.call(name, slow, failure_threshold=1, reset_timeout=1000)
        assert info.value is err
    else:
        assert api.call(name, slow, failure_threshold=1, reset_timeout=1000) == "late"
    # Finishing the call does not bring the deleted breaker back.
    assert name not in names_of(api)
    assert api.state(name) is State.CLOSED


def test_in_flight_outcome_after_delete_does_not_touch_new_breaker(api, name):
    def slow():
        api.delete(name)
        api.call(name, ok, failure_threshold=1, reset_timeout=1000)  # a fresh breaker, threshold 1
        raise Boom("late")  # belongs to the deleted breaker

    with pytest.raises(Boom):
        api.call(name, slow, failure_threshold=5, reset_timeout=1000)
    assert api.state(name) is State.CLOSED
    fail_n(api, name, 1)
    assert api.state(name) is State.OPEN


def test_delete_from_another_thread_while_in_flight(registry):
    finish_slow = hold_in_call(registry.call, "svc", result=Boom("late"), failure_threshold=1)
    try:
        registry.delete("svc")
        assert registry.list() == []
    finally:
        with pytest.raises(Boom, match="late"):
            finish_slow()
    assert registry.list() == []
    assert registry.state("svc") is State.CLOSED


# --------------------------------------------------------------------------------------------------
# fn may use the registry, including its own breaker


def test_fn_may_call_registry_on_same_name(api, name):
    def outer():
        assert api.state(name) is State.CLOSED
        assert api.call(name, lambda: "inner") == "inner"
        assert name in names_of(api)
        api.reset(name)
        return "outer"

    assert api.call(name, outer) == "outer"
    assert api.state(name) is State.CLOSED


def test_fn_runs_exactly_once_per_admitted_call(registry, clock):
    runs = []

    def counted(outcome):
        runs.append(outcome)
        if outcome == "fail":
            raise Boom()
        if outcome == "base":
            raise CustomBase()
        return outcome

    opts = dict(failure_threshold=2, reset_timeout=1, success=lambda r: r != "bad")
    admitted = rejected = 0
    pattern = ["ok", "fail", "bad", "ok", "base", "fail", "fail", "ok", "bad", "fail"] * 3
    for i, outcome in enumerate(pattern):
        if i % 4 == 0:
            clock.advance(0.5)
        try:
            registry.call("svc", functools.partial(counted, outcome), **opts)
            admitted += 1
        except CircuitOpenError:
            rejected += 1
        except (Boom, CustomBase):
            admitted += 1
    assert len(runs) == admitted
    assert admitted + rejected == len(pattern)
    assert rejected > 0


def test_star_import_gives_the_api_without_shadowing_builtins():
    import builtins

    namespace: dict = {}
    exec("from panelboard import *", namespace)
    assert {
        "Registry",
        "State",
        "CircuitOpenError",
        "ManualClock",
        "call",
        "state",
        "reset",
        "delete",
    } <= set(namespace)
    shadowed = {n for n in namespace if n != "__builtins__" and hasattr(builtins, n)}
    assert not shadowed, f"`from panelboard import *` shadows builtins: {shadowed}"
    assert panelboard.list is not None  # still there as panelboard.list(), as in the reference


def test_manual_clock_signature_shows_its_default():
    import inspect

    assert str(inspect.signature(ManualClock)) == "(start=0.0)"
    assert ManualClock().now() == 0.0


class SubclassedOpenError(CircuitOpenError):
    pass


def test_circuit_open_error_pickles_and_copies_with_its_type_and_attributes(registry, clock):
    import copy
    import pickle

    fail_n(registry, "svc", 1, failure_threshold=1, reset_timeout=10)
    with pytest.raises(CircuitOpenError) as info:
        registry.call("svc", lambda: None)
    raised = info.value
    for back in (pickle.loads(pickle.dumps(raised)), copy.copy(raised)):
        assert type(back) is CircuitOpenError
        assert (back.name, back.retry_after, back.args) == ("svc", 10.0, ("svc", 10.0))
    mine = SubclassedOpenError("svc", 2.5)
    mine.detail = "extra"
    for back in (pickle.loads(pickle.dumps(mine)), copy.copy(mine)):
        assert type(back) is SubclassedOpenError
        assert (back.name, back.retry_after, back.detail) == ("svc", 2.5, "extra")


def test_a_str_subclass_name_is_the_same_name_even_with_lone_surrogates(registry):
    class Loud(str):
        def encode(self, *args, **kwargs):  # never used for the key
            return b"something else"

    for text in ("plain", "lone \ud800 surrogate"):
        b = registry.breaker(Loud(text), failure_threshold=1)
        assert b.name == text
        registry.force_open(text)
        assert registry.state(Loud(text)) is State.FORCED_OPEN
    assert sorted(n for n, _ in registry.list()) == sorted(["plain", "lone \ud800 surrogate"])
