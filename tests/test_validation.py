"""Bad input (issue 2): the right exception, naming the argument, and nothing created or changed."""

from __future__ import annotations

import math

import panelboard
import pytest
from helpers import Boom, fail, fail_n, names_of, ok, run_python
from panelboard import ManualClock, Registry, State

BAD_NAMES = [None, 1, 1.5, b"svc", bytearray(b"svc"), ("svc",), ["svc"], object()]

BAD_COUNTS = [0, -1, 1.5, 3.0, True, False, "3", None, 2**64, -(2**64), [1]]
BAD_TIMEOUTS = [math.nan, math.inf, -math.inf, -1, -0.001, "1", True, False, None, 1j, [1.0]]

BAD_OPTIONS = (
    [("failure_threshold", v) for v in BAD_COUNTS]
    + [("half_open_max_calls", v) for v in BAD_COUNTS]
    + [("reset_timeout", v) for v in BAD_TIMEOUTS]
    + [("success", v) for v in [1, "not callable", True, object()]]
)


def option_id(item):
    return f"{item[0]}={item[1]!r}"


# --------------------------------------------------------------------------------------------------
# name


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_non_str_name_is_type_error(api, bad):
    runs = []
    before = len(api.list())
    with pytest.raises(TypeError):
        api.call(bad, lambda: runs.append(1))
    with pytest.raises(TypeError):
        api.call(bad, lambda: runs.append(1), failure_threshold=1)
    with pytest.raises(TypeError):
        api.state(bad)
    with pytest.raises(TypeError):
        api.reset(bad)
    with pytest.raises(TypeError):
        api.delete(bad)
    assert runs == []
    assert len(api.list()) == before


def test_str_subclass_name_is_a_name(registry):
    class Name(str):
        pass

    assert registry.call(Name("svc"), ok) == "ok"
    assert registry.state("svc") is State.CLOSED
    assert [n for n, _ in registry.list()] == ["svc"]


# --------------------------------------------------------------------------------------------------
# fn


@pytest.mark.parametrize("bad", [None, 1, "ok", b"x", [ok]], ids=repr)
def test_fn_not_callable_is_type_error_and_creates_nothing(api, name, bad):
    with pytest.raises(TypeError, match="fn"):
        api.call(name, bad)
    with pytest.raises(TypeError, match="fn"):
        api.call(name, bad, failure_threshold=2)
    assert name not in names_of(api)


def test_fn_not_callable_leaves_existing_breaker_unchanged(api, name):
    fail_n = lambda: pytest.raises(Boom)  # noqa: E731
    with fail_n():
        api.call(name, fail, failure_threshold=2, reset_timeout=1000)
    with pytest.raises(TypeError):
        api.call(name, None)
    assert api.state(name) is State.CLOSED  # no failure counted for the rejected call
    with fail_n():
        api.call(name, fail)
    assert api.state(name) is State.OPEN


# --------------------------------------------------------------------------------------------------
# options of call


@pytest.mark.parametrize("option", BAD_OPTIONS, ids=option_id)
def test_bad_option_names_argument_and_creates_nothing(api, name, option):
    arg, value = option
    runs = []
    with pytest.raises((TypeError, ValueError)) as info:
        api.call(name, lambda: runs.append(1), **{arg: value})
    assert arg in str(info.value)
    assert runs == [], "fn must not run when an argument is rejected"
    assert name not in names_of(api)
    assert api.state(name) is State.CLOSED
    if isinstance(api, Registry):
        assert name not in api
        assert len(api) == 0


@pytest.mark.parametrize("option", BAD_OPTIONS, ids=option_id)
def test_bad_option_leaves_existing_breaker_unchanged(registry, clock, option):
    arg, value = option
    fail_n(registry, "svc", 1, failure_threshold=2, reset_timeout=10, half_open_max_calls=1)
    runs = []
    with pytest.raises((TypeError, ValueError)) as info:
        registry.call("svc", lambda: runs.append(1), **{arg: value})
    assert arg in str(info.value)
    assert runs == []
    # Same breaker, same count (1 of 2), same options.
    assert registry.state("svc") is State.CLOSED
    fail_n(registry, "svc", 1)
    assert registry.state("svc") is State.OPEN
    with pytest.raises(panelboard.CircuitOpenError) as err:
        registry.call("svc", ok)
    assert err.value.retry_after == 10.0


@pytest.mark.parametrize(
    "option",
    [
        ("failure_threshold", 1),
        ("failure_threshold", 1000),
        ("half_open_max_calls", 1),
        ("half_open_max_calls", 100),
        ("reset_timeout", 0),
        ("reset_timeout", 0.0),
        ("reset_timeout", 1),
        ("reset_timeout", 2.5),
        ("reset_timeout", 86400 * 365),
        ("success", None),
        ("success", bool),
        ("success", lambda r: True),
    ],
    ids=option_id,
)
def test_good_options_accepted(api, name, option):
    assert api.call(name, ok, **{option[0]: option[1]}) == "ok"
    assert name in names_of(api)


def test_int_subclass_threshold_accepted(registry):
    import enum

    class N(enum.IntEnum):
        TWO = 2

    fail_n(registry, "svc", 1, failure_threshold=N.TWO)
    assert registry.state("svc") is State.CLOSED
    fail_n(registry, "svc", 1)
    assert registry.state("svc") is State.OPEN


def test_unknown_option_is_type_error_and_creates_nothing(api, name):
    runs = []
    with pytest.raises(TypeError):
        api.call(name, lambda: runs.append(1), failure_treshold=3)
    assert runs == []
    assert name not in names_of(api)


def test_several_bad_options_nothing_created(api, name):
    with pytest.raises((TypeError, ValueError)):
        api.call(name, ok, failure_threshold=2, reset_timeout=-5)
    with pytest.raises((TypeError, ValueError)):
        api.call(name, ok, failure_threshold=0, reset_timeout=5)
    assert name not in names_of(api)


def test_positional_options_are_rejected(api, name):
    with pytest.raises(TypeError):
        api.call(name, ok, 3)
    assert name not in names_of(api)


# --------------------------------------------------------------------------------------------------
# Registry(**defaults) and ManualClock


@pytest.mark.parametrize("option", BAD_OPTIONS, ids=option_id)
def test_registry_defaults_validated(option):
    arg, value = option
    with pytest.raises((TypeError, ValueError)) as info:
        Registry(**{arg: value})
    assert arg in str(info.value)


def test_registry_unknown_keyword_is_type_error():
    with pytest.raises(TypeError):
        Registry(failure_treshold=3)
    with pytest.raises(TypeError):
        Registry(ManualClock())  # keyword-only


@pytest.mark.parametrize("bad", ["clock", 1.0, object(), panelboard], ids=repr)
def test_registry_bad_clock_is_type_error(bad):
    with pytest.raises(TypeError, match="clock"):
        Registry(clock=bad)


def test_registry_clock_none_is_the_default():
    r = Registry(clock=None)
    assert r.call("svc", ok) == "ok"


def test_registry_defaults_apply_to_new_breakers():
    clock = ManualClock()
    r = Registry(clock=clock, failure_threshold=1, reset_timeout=4)
    fail_n(r, "svc", 1)
    assert r.state("svc") is State.OPEN
    with pytest.raises(panelboard.CircuitOpenError) as info:
        r.call("svc", ok)
    assert info.value.retry_after == 4.0
    # Options of the creating call override the defaults.
    fail_n(r, "other", 1, failure_threshold=2)
    assert r.state("other") is State.CLOSED


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1, -0.5, "1", None, True], ids=repr)
def test_manual_clock_advance_validated(bad):
    c = ManualClock()
    with pytest.raises((TypeError, ValueError)):
        c.advance(bad)
    assert c.now() == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0", True], ids=repr)
def test_manual_clock_start_validated(bad):
    with pytest.raises((TypeError, ValueError)):
        ManualClock(bad)


# --------------------------------------------------------------------------------------------------
# self of the fast entry points

# `Breaker.call`, `Breaker.acall` and `Registry.call` do not check the type of `self`: CPython calls
# a method descriptor's function only with an instance of its class (src/py/ffi/entry.rs). Every
# way of handing them another object must stay a TypeError, never a crash, so the attempts run in a
# child interpreter, each call site first specialised (3.11+) on a real instance.
FOREIGN_SELF = """
import functools, operator, types
import panelboard
from panelboard import Breaker, Registry

registry = Registry()
breaker = registry.breaker("svc")
guarded = breaker(lambda: "ok")
fn = lambda: "ok"

class Plain:
    pass

class Borrowing:  # a class that borrowed the descriptors
    call = Breaker.__dict__["call"]
    acall = Breaker.__dict__["acall"]

def unbound(x): return Breaker.call(x, fn)
def unbound_acall(x): return Breaker.acall(x, fn)
def unbound_registry(x): return Registry.call(x, "svc", fn)
def unbound_registry_keywords(x): return Registry.call(x, name="svc", fn=fn)
def method(x): return x.call(fn)
def bound_by_get(x): return Breaker.__dict__["call"].__get__(x)(fn)
def method_type(x): return types.MethodType(Breaker.call, x)(fn)
def descriptor_dunder_call(x): return Breaker.call.__call__(x, fn)
def partial(x): return functools.partial(Registry.call, x)("svc", fn)
def method_caller(x): return operator.methodcaller("call", fn)(x)
def guarded_call(x): return type(guarded).__call__(x)

attempts = [
    (unbound, breaker), (unbound_acall, breaker), (unbound_registry, registry),
    (unbound_registry_keywords, registry), (method, breaker), (bound_by_get, breaker),
    (method_type, breaker), (descriptor_dunder_call, breaker), (partial, registry),
    (method_caller, breaker), (guarded_call, guarded),
]
foreign = [object(), Plain(), registry, breaker, guarded, Borrowing(), None, Breaker, 1]
refused = 0
for attempt, genuine in attempts:
    for _ in range(64):  # specialised on the genuine instance
        result = attempt(genuine)
        if hasattr(result, "close"):
            result.close()
    for x in foreign:
        if type(x) is type(genuine):
            continue
        try:
            attempt(x)
        except (TypeError, AttributeError):
            refused += 1
        else:
            raise AssertionError(f"{attempt.__name__} accepted {x!r}")
# The class's own methods, swapped between the classes, still check.
Breaker.call = Registry.__dict__["call"]
try:
    breaker.call("svc", fn)
except TypeError:
    refused += 1
print(refused, breaker.metrics().calls)
"""


def test_a_fast_method_handed_a_foreign_self_is_a_type_error():
    result = run_python("-c", FOREIGN_SELF, timeout=60)
    assert result.returncode == 0, result.stderr
    refused, calls = map(int, result.stdout.split())
    assert refused == 11 * 8 + 1, result.stdout
    # Only the genuine calls were counted (one breaker: `registry.call("svc")` included; the
    # coroutines of `acall` are closed unawaited).
    assert calls == 64 * 10
