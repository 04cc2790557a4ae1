"""Trip policies (issue 11), from the user's side: a failure rate and a slow-call rate over a sliding
time window with a minimum number of calls, the consecutive rule made optional, and an open time
that backs off (with jitter) while a dependency keeps failing its probes.

Every time-dependent test runs on a ``ManualClock``. The window's edge is only pinned down to
``window +- window/10`` by the contract, so tests look at outcomes that are clearly inside
(younger than ``0.9 * window``) or clearly outside (older than ``1.1 * window``) of it; the
randomized test at the end checks everything against ``tests/model.py``, which knows the band.
"""

from __future__ import annotations

import asyncio
import math
import time

import model
import panelboard
import pytest
from helpers import (
    Boom,
    ClientError,
    CustomBase,
    fail,
    ok,
    open_time,
    outcomes,
    raiser,
    taking,
    window_of,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from panelboard import CircuitOpenError, ManualClock, Registry, State

RATE = dict(failure_threshold=None)  # the rate rules alone: the consecutive rule off

# The documented bound (README, "Choosing a trip policy"): a success that lifts the window to
# min_calls with the rate already at or above the threshold trips at once, or by the time this many
# more calls have been recorded.
SUCCESS_TRIP_BOUND = 0


# --------------------------------------------------------------------------------------------------
# Options: accepted everywhere, and every bad value rejected naming the option, changing nothing

GOOD_OPTIONS = [
    {"failure_rate": 0.5},
    {"failure_rate": 1},
    {"failure_rate": 1.0},
    {"failure_rate": 1e-9},
    {"failure_rate": 0.5, "failure_threshold": None},
    {"failure_rate": 0.5, "window": 60.0, "min_calls": 1},
    {"failure_rate": 0.5, "window": 1, "min_calls": 1000},
    {"slow_call_duration": 2},
    {"slow_call_duration": 0.25, "slow_call_rate": 0.5},
    {"slow_call_duration": 1.0, "slow_call_rate": 1.0, "failure_threshold": None},
    {"window": 30.0},
    {"min_calls": 1},
    {"backoff": 1},
    {"backoff": 1.0},
    {"backoff": 2.5},
    {"backoff": 2, "max_reset_timeout": 300.0},
    {"max_reset_timeout": 30.0},  # equal to the default reset_timeout
    {"max_reset_timeout": 600},
    {"reset_timeout": 5.0, "max_reset_timeout": 5.0},
    {"jitter": 0},
    {"jitter": 0.0},
    {"jitter": 0.5},
    {"jitter": 0.999},
    {"failure_rate": None, "slow_call_rate": None, "slow_call_duration": None, "max_reset_timeout": None},
]


@pytest.mark.parametrize("options", GOOD_OPTIONS, ids=repr)
def test_policy_options_are_accepted_by_every_entry_point(registry, options):
    registry.breaker("a", **options)
    registry.configure("b", **options)
    assert registry.call("c", ok, **options) == "ok"
    Registry(**options).breaker("d")
    assert {"a", "b", "c"} <= {n for n, _ in registry.list()}
    registry.configure("a", **options)  # and again on a live breaker


def test_policy_options_are_accepted_by_the_module_functions(name):
    assert panelboard.call(name, ok, failure_rate=0.5, failure_threshold=None, min_calls=3) == "ok"
    panelboard.configure(name, backoff=2.0, max_reset_timeout=120.0, jitter=0.1)
    assert panelboard.breaker(name, slow_call_duration=1.0, slow_call_rate=0.5).state is State.CLOSED


RATE_VALUE_ERRORS = [0, 0.0, -0.0, -0.5, 1.0000001, 1.5, 2, math.nan, math.inf, -math.inf]
RATE_TYPE_ERRORS = ["0.5", [0.5], 1j, ...]
DURATION_VALUE_ERRORS = [-1, -0.001, math.nan, math.inf, -math.inf]
DURATION_TYPE_ERRORS = ["1", [1.0], 1j]

# (options, the error, the option names an error message may name)
BAD_POLICY_OPTIONS = (
    [({"failure_rate": v}, ValueError, ("failure_rate",)) for v in RATE_VALUE_ERRORS]
    + [({"failure_rate": v}, TypeError, ("failure_rate",)) for v in RATE_TYPE_ERRORS]
    + [({"failure_rate": True}, (TypeError, ValueError), ("failure_rate",))]
    + [
        ({"slow_call_rate": v, "slow_call_duration": 1.0}, ValueError, ("slow_call_rate",))
        for v in RATE_VALUE_ERRORS
    ]
    + [
        ({"slow_call_rate": v, "slow_call_duration": 1.0}, TypeError, ("slow_call_rate",))
        for v in RATE_TYPE_ERRORS
    ]
    + [({"slow_call_duration": v}, ValueError, ("slow_call_duration",)) for v in DURATION_VALUE_ERRORS]
    + [({"slow_call_duration": v}, TypeError, ("slow_call_duration",)) for v in DURATION_TYPE_ERRORS]
    + [({"slow_call_duration": True}, (TypeError, ValueError), ("slow_call_duration",))]
    + [({"window": v}, ValueError, ("window",)) for v in [0, 0.0, *DURATION_VALUE_ERRORS]]
    + [({"window": v}, TypeError, ("window",)) for v in DURATION_TYPE_ERRORS]
    + [({"window": True}, (TypeError, ValueError), ("window",))]
    + [({"min_calls": v}, ValueError, ("min_calls",)) for v in [0, -1]]
    + [({"min_calls": -(2**64)}, (TypeError, ValueError), ("min_calls",))]
    + [({"min_calls": v}, TypeError, ("min_calls",)) for v in [1.5, 2.0, "3", [3], math.nan]]
    + [({"min_calls": True}, (TypeError, ValueError), ("min_calls",))]
    + [({"backoff": v}, ValueError, ("backoff",)) for v in [0.999, 0.5, 0, -2, math.nan, -math.inf]]
    + [({"backoff": v}, TypeError, ("backoff",)) for v in ["2", [2.0], 2j]]
    + [({"backoff": True}, (TypeError, ValueError), ("backoff",))]
    + [({"max_reset_timeout": v}, ValueError, ("max_reset_timeout",)) for v in [29.999, 1, 0, -1, math.nan]]
    + [({"max_reset_timeout": v}, TypeError, ("max_reset_timeout",)) for v in ["60", [60.0]]]
    + [({"reset_timeout": 10.0, "max_reset_timeout": 9.999}, ValueError, ("max_reset_timeout",))]
    + [({"jitter": v}, ValueError, ("jitter",)) for v in [1, 1.0, 1.5, -0.01, math.nan, math.inf]]
    + [({"jitter": v}, TypeError, ("jitter",)) for v in ["0.1", [0.1]]]
    + [({"jitter": True}, (TypeError, ValueError), ("jitter",))]
    # Combinations: a slow-call rate needs its duration; at least one trip rule must remain.
    + [({"slow_call_rate": 0.5}, ValueError, ("slow_call_rate", "slow_call_duration"))]
    + [
        (
            {"slow_call_rate": 0.5, "slow_call_duration": None},
            ValueError,
            ("slow_call_rate", "slow_call_duration"),
        )
    ]
    + [({"failure_threshold": None}, ValueError, ("failure_threshold",))]
    + [({"failure_threshold": None, "failure_rate": None}, ValueError, ("failure_threshold", "failure_rate"))]
    + [
        (
            {"failure_threshold": None, "slow_call_duration": 1.0},
            ValueError,
            ("failure_threshold", "slow_call_rate"),
        )
    ]
    + [({"failure_threshold": None, "window": 5.0, "min_calls": 3}, ValueError, ("failure_threshold",))]
)


BAD_IDS = [repr(options) for options, _, _ in BAD_POLICY_OPTIONS]


def assert_names_an_option(err: BaseException, names: tuple[str, ...]) -> None:
    assert any(n in str(err) for n in names), f"{err!r} names none of {names}"


@pytest.mark.parametrize(("options", "error", "names"), BAD_POLICY_OPTIONS, ids=BAD_IDS)
def test_bad_policy_options_are_rejected_naming_the_option_and_create_nothing(
    registry, options, error, names
):
    runs = []
    attempts = {
        "breaker": lambda: registry.breaker("x", **options),
        "configure": lambda: registry.configure("x", **options),
        "call": lambda: registry.call("x", lambda: runs.append(1), **options),
        "Registry": lambda: Registry(**options),
    }
    for where, attempt in attempts.items():
        with pytest.raises(error) as info:
            attempt()
        assert_names_an_option(info.value, names)
        assert "x" not in registry, where
    assert runs == [], "fn must not run when an option is rejected"
    assert len(registry) == 0


@pytest.mark.parametrize(("options", "error", "names"), BAD_POLICY_OPTIONS, ids=BAD_IDS)
def test_bad_policy_options_leave_a_live_breaker_unchanged(registry, clock, options, error, names):
    b = registry.breaker("x", failure_threshold=2)  # reset_timeout 30 s: the caps below it are bad
    outcomes(b, "F")
    for attempt in (lambda: registry.configure("x", **options), lambda: registry.call("x", ok, **options)):
        with pytest.raises(error) as info:
            attempt()
        assert_names_an_option(info.value, names)
    assert b.state is State.CLOSED and b.metrics().consecutive_failures == 1
    outcomes(b, "F")
    assert b.state is State.OPEN
    assert open_time(b) == 30.0


def test_reconfiguring_away_the_last_trip_rule_is_rejected_and_changes_nothing(registry):
    b = registry.breaker("x", failure_rate=0.5, min_calls=2, **RATE)
    for options in ({"failure_rate": None}, {"failure_threshold": None, "failure_rate": None}):
        with pytest.raises(ValueError) as info:
            registry.configure("x", **options)
        assert_names_an_option(info.value, ("failure_rate", "failure_threshold"))
    outcomes(b, "SF")  # the rate rule is still the one in force
    assert b.state is State.OPEN


def test_reconfiguring_reset_timeout_above_the_cap_is_rejected_and_changes_nothing(registry, clock):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=10.0, max_reset_timeout=20.0, backoff=2.0)
    with pytest.raises(ValueError) as info:
        registry.configure("x", reset_timeout=30.0)
    assert_names_an_option(info.value, ("reset_timeout", "max_reset_timeout"))
    with pytest.raises(ValueError):
        registry.configure("x", max_reset_timeout=5.0)
    outcomes(b, "F")
    assert open_time(b) == 10.0


def test_a_slow_call_rate_may_use_a_duration_from_the_registry_defaults(clock):
    registry = Registry(clock=clock, slow_call_duration=1.0)
    b = registry.breaker("x", slow_call_rate=0.5, min_calls=2, **RATE)
    b.call(taking(clock, 1.5))
    b.call(ok)
    assert b.state is State.OPEN
    with pytest.raises(ValueError):
        Registry(slow_call_rate=0.5)  # a default rate with no duration anywhere


def test_a_default_rate_rule_lets_a_breaker_turn_the_consecutive_rule_off(clock):
    registry = Registry(clock=clock, failure_rate=0.5, min_calls=4)
    b = registry.breaker("x", failure_threshold=None)
    outcomes(b, "FFF")
    assert b.state is State.CLOSED  # no consecutive rule, and 3 calls < min_calls
    outcomes(b, "S")
    assert b.state is State.OPEN  # 3/4 >= 0.5
    with pytest.raises(ValueError) as info:
        registry.breaker("y", failure_threshold=None, failure_rate=None)
    assert_names_an_option(info.value, ("failure_threshold", "failure_rate"))
    assert "y" not in registry


# --------------------------------------------------------------------------------------------------
# The failure rate


@pytest.mark.parametrize(
    ("rate", "min_calls", "closed", "trips"),
    [
        (0.5, 10, "SSSSS FFFF", "F"),  # 5/10 at the 10th call
        (0.5, 4, "SFS", "F"),  # 2/4 at min_calls
        (0.5, 10, "SFSFSFSFS S F", "F"),  # 4/9, 4/10, 5/11, then 6/12
        (0.3, 10, "SSSSSSS FF", "F"),  # exactly 3/10
        (0.1, 10, "SSSSSSSSS", "F"),  # exactly 1/10
        (0.2, 10, "SSSSSSSS F", "F"),  # exactly 2/10
        (0.25, 8, "SSSSSS F", "F"),  # exactly 2/8
        (1.0, 3, "FF", "F"),  # every call failed
        (1, 3, "FF", "F"),
        (0.75, 4, "FFSSSSS" + "F" * 12, "F"),  # 2/4 ... 14/19, then exactly 15/20
    ],
)
def test_failure_rate_trips_exactly_when_the_ratio_reaches_it_with_min_calls(
    registry, rate, min_calls, closed, trips
):
    b = registry.breaker("x", failure_rate=rate, min_calls=min_calls, **RATE)
    for letter in closed.replace(" ", ""):
        outcomes(b, letter)
        assert b.state is State.CLOSED, f"{b.metrics()} after {letter}"
    outcomes(b, trips)
    assert b.state is State.OPEN, b.metrics()
    assert b.metrics().times_opened == 1


def test_a_rate_below_the_threshold_never_trips(registry):
    b = registry.breaker("x", failure_rate=0.5, min_calls=4, **RATE)
    outcomes(b, "SSFS" * 50 + "SF" * 50)  # 1/4, then climbing towards 1/2 but never reaching it
    m = b.metrics()
    assert (m.state, m.times_opened) == (State.CLOSED, 0)
    assert window_of(m) == (300, 100, 0)
    assert m.failure_rate == pytest.approx(100 / 300)


def test_min_calls_holds_a_rate_of_one_back(registry):
    b = registry.breaker("x", failure_rate=0.1, min_calls=20, **RATE)
    outcomes(b, "F" * 19)
    m = b.metrics()
    assert m.state is State.CLOSED and m.failure_rate == 1.0 and m.window_calls == 19
    outcomes(b, "F")
    assert b.state is State.OPEN


def test_a_success_that_lifts_the_window_to_min_calls_trips(registry):
    """A rate evaluated only on failures never trips here (deno std #7308, smallrye #22)."""
    b = registry.breaker("x", failure_rate=0.5, min_calls=10, **RATE)
    outcomes(b, "F" * 9)
    assert b.state is State.CLOSED
    for _ in range(SUCCESS_TRIP_BOUND + 1):
        outcomes(b, "S")  # 9/10, 9/11, ...: the rate stays above 0.5 for 8 more successes
        if b.state is State.OPEN:
            break
    assert b.state is State.OPEN, f"{b.metrics()}: no trip within {SUCCESS_TRIP_BOUND} calls of the bound"
    assert b.metrics().times_opened == 1


def test_a_success_lifting_the_window_to_min_calls_trips_the_slow_call_rate_too(registry, clock):
    b = registry.breaker("x", slow_call_duration=1.0, slow_call_rate=0.5, min_calls=4, **RATE)
    for _ in range(3):
        b.call(taking(clock, 2.0))
    assert b.state is State.CLOSED
    for _ in range(SUCCESS_TRIP_BOUND + 1):
        b.call(ok)  # fast: 3/4 slow
        if b.state is State.OPEN:
            break
    assert b.state is State.OPEN, b.metrics()


def test_on_the_monotonic_clock_fast_successes_count_at_once_and_trip():
    """On the real clock a wide window times the successes of its healthy path with the ticker's
    published reading, which lags the exact clock that failures and metrics read: every success still shows in
    the window at once, and the success that lifts it to ``min_calls`` (with a failure in it, so
    judged on that path) trips it, for an open time read exactly."""
    registry = Registry()
    b = registry.breaker("x", failure_rate=0.5, min_calls=20, window=10.0, reset_timeout=60.0, **RATE)
    for n in range(1, 4):
        b.call(ok)
        assert window_of(b.metrics()) == (n, 0, 0)
    registry.reset("x")
    outcomes(b, "F" * 10 + "S" * 9)  # the 8 successes after the first are on the fast path
    assert window_of(b.metrics()) == (19, 10, 0) and b.state is State.CLOSED
    b.call(ok)  # 10 / 20 >= 0.5 at min_calls
    assert b.state is State.OPEN, b.metrics()
    assert b.metrics().times_opened == 1
    assert 50.0 < b.metrics().retry_after <= 60.0  # read exactly at the trip (a loaded machine may stall)


def test_on_the_monotonic_clock_the_window_forgets_a_window_later():
    """On the real clock, the successes of the healthy path (a published reading) and the failures
    (an exact one) land in the same time frame as what forgets them: both still
    count while less than ``window - window/10`` has passed, and neither once more than
    ``window + window/10`` has."""
    window = 1.0
    registry = Registry()
    b = registry.breaker("x", failure_rate=1.0, min_calls=100, window=window, **RATE)
    started = time.monotonic()
    outcomes(b, "S" * 3 + "F")
    held = window_of(b.metrics())
    if time.monotonic() - started < window * 0.9:  # else the machine stalled the test itself
        assert held == (4, 1, 0)
    time.sleep(max(0.0, started + window * 1.1 + 0.05 - time.monotonic()))
    assert window_of(b.metrics()) == (0, 0, 0) and b.metrics().failure_rate is None


def test_min_calls_one_trips_on_the_first_failure_at_rate_one(registry):
    b = registry.breaker("x", failure_rate=1.0, min_calls=1, **RATE)
    outcomes(b, "F")
    assert b.state is State.OPEN


def test_a_window_of_one_call(registry, clock):
    """min_calls=1 and calls further apart than the window: each call is judged alone (window size 1
    crashed resilience4j, #2334, #2379)."""
    b = registry.breaker("x", failure_rate=0.5, min_calls=1, window=1.0, **RATE)
    for _ in range(5):
        outcomes(b, "S")
        assert window_of(b.metrics()) == (1, 0, 0)
        clock.advance(1.2)
    assert window_of(b.metrics()) == (0, 0, 0) and b.metrics().failure_rate is None
    outcomes(b, "F")
    assert b.state is State.OPEN


@pytest.mark.parametrize("window", [0.001, 0.011, 0.015, 0.025])
def test_a_tiny_window_is_refused_or_forgets_within_a_tenth_of_itself(registry, clock, window):
    """A window of a few milliseconds is either refused (a ValueError naming ``window``) or keeps the
    contract: what finished more than ``window + window/10`` ago never counts."""
    try:
        b = registry.breaker("x", failure_rate=0.5, min_calls=2, window=window, **RATE)
    except ValueError as err:
        assert "window" in str(err)
        assert "x" not in registry
        return
    gap = math.floor(window * 1.1 * 1000 + 1) / 1000  # whole ms, more than 1.1 x window
    for _ in range(10):
        outcomes(b, "F")
        assert window_of(b.metrics()) == (1, 1, 0)
        clock.advance(gap)
    assert b.state is State.CLOSED
    outcomes(b, "FF")
    assert b.state is State.OPEN


def test_consecutive_and_rate_rules_combine_with_or(registry):
    by_count = registry.breaker("count", failure_threshold=3, failure_rate=0.9, min_calls=100)
    outcomes(by_count, "FFF")
    assert by_count.state is State.OPEN
    by_rate = registry.breaker("rate", failure_threshold=5, failure_rate=0.5, min_calls=4)
    outcomes(by_rate, "FSF")
    assert by_rate.state is State.CLOSED
    outcomes(by_rate, "F")  # 3/4 with at most 2 in a row
    assert by_rate.state is State.OPEN
    default = registry.breaker("default", failure_rate=0.99)  # failure_threshold keeps its 5
    outcomes(default, "S" * 20 + "FFFFF")
    assert default.state is State.OPEN


def test_ignored_outcomes_and_rejections_do_not_count(registry):
    b = registry.breaker("x", failure_rate=0.5, min_calls=2, ignore=ClientError, **RATE)
    for exc in (ClientError(), CustomBase(), ClientError()):
        with pytest.raises(type(exc)):
            b.call(raiser(exc))
    p = b.try_acquire()
    p.ignore()
    with b:
        pass
    m = b.metrics()
    assert window_of(m) == (1, 0, 0) and m.ignored == 4
    outcomes(b, "F")
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    assert b.try_acquire() is None
    assert window_of(b.metrics()) == (0, 0, 0)


def test_a_falsy_result_counts_as_a_failure_in_the_window(registry):
    b = registry.breaker("x", failure_rate=0.5, min_calls=2, success=bool, **RATE)
    assert b.call(lambda: 0) == 0
    assert window_of(b.metrics()) == (1, 1, 0)
    b.call(lambda: 1)
    assert b.state is State.OPEN


@pytest.mark.parametrize("way", ["call", "decorated", "with", "permit", "acall", "registry"])
def test_every_way_of_calling_records_into_the_window(registry, way):
    b = registry.breaker("x", failure_rate=1.0, min_calls=3, **RATE)

    def one_failure():
        if way == "call":
            with pytest.raises(Boom):
                b.call(fail)
        elif way == "decorated":
            with pytest.raises(Boom):
                b(fail)()
        elif way == "with":
            with pytest.raises(Boom), b:
                raise Boom()
        elif way == "permit":
            b.try_acquire().failure()
        elif way == "acall":

            async def afail():
                raise Boom()

            with pytest.raises(Boom):
                asyncio.run(b.acall(afail))
        else:
            with pytest.raises(Boom):
                registry.call("x", fail)

    for expected in (1, 2):
        one_failure()
        assert window_of(b.metrics()) == (expected, expected, 0)
    one_failure()
    assert b.state is State.OPEN


# --------------------------------------------------------------------------------------------------
# The window forgets (window +- window/10), and starts empty at every state change


def test_the_window_keeps_what_is_younger_than_nine_tenths_of_it(registry, clock):
    b = registry.breaker("x", failure_rate=1.0, min_calls=4, window=10.0, **RATE)
    outcomes(b, "FFF")
    clock.advance(8.999)
    assert window_of(b.metrics()) == (3, 3, 0)
    outcomes(b, "F")
    assert b.state is State.OPEN


def test_the_window_forgets_what_is_older_than_eleven_tenths_of_it(registry, clock):
    b = registry.breaker("x", failure_rate=1.0, min_calls=4, window=10.0, **RATE)
    outcomes(b, "FFF")
    clock.advance(11.001)
    assert window_of(b.metrics()) == (0, 0, 0)
    assert b.metrics().failure_rate is None
    outcomes(b, "F")
    assert b.state is State.CLOSED and window_of(b.metrics()) == (1, 1, 0)


def test_the_window_slides(registry, clock):
    """Two calls a second for 30 s, a failure every other second: at each moment the window holds
    the calls younger than 9 s, perhaps some up to 11 s old, and none older."""
    b = registry.breaker("x", failure_rate=0.5, min_calls=10, window=10.0, **RATE)
    for second in range(30):
        outcomes(b, "SF" if second % 2 else "SS")
        clock.advance(1.0)
        m = b.metrics()
        ages = [age for age in range(1, second + 2)]  # the calls made `age` seconds ago

        def count(max_age, per_second):
            return sum(per_second(second + 1 - age) for age in ages if age <= max_age)

        calls = lambda t: 2  # noqa: E731
        failures = lambda t: t % 2  # noqa: E731
        assert count(8, calls) <= m.window_calls <= count(11, calls), m
        assert count(8, failures) <= m.window_failures <= count(11, failures), m
    assert (b.state, b.metrics().times_opened) == (State.CLOSED, 0)


@pytest.mark.parametrize(
    "gap",
    # an hour, 30 days, 2^32 ms, 2^36 ms (the state word's clock wraps), 2^24 one-second buckets
    # and 10 x 2^24 of them (where an earlier layout's 24-bit bucket index wrapped, onto the same
    # one of ten slots: about 5.3 years), and a bit more than 2^37 ms; today's 26-bit tags come
    # back to the same one of nine slots after 9 x 2^26 buckets of 1.125 s, 21 years, the
    # documented limit of the tags (crates/engine/src/window.rs)
    [3600.0, 86400.0 * 30, 2**32 / 1000, 2**36 / 1000, 2.0**24, 10 * 2.0**24, 2**37 / 1000 + 5.0],
)
def test_a_long_idle_gap_forgets_everything(registry, clock, gap):
    """A time far beyond the window, including multiples of the powers of two a clock or bucket
    index could wrap at, never brings old outcomes back."""
    b = registry.breaker("x", failure_rate=0.5, min_calls=4, window=10.0, **RATE)
    outcomes(b, "FFF")
    clock.advance(gap)
    assert window_of(b.metrics()) == (0, 0, 0)
    outcomes(b, "F")
    assert b.state is State.CLOSED, b.metrics()
    assert window_of(b.metrics()) == (1, 1, 0)


def test_a_trip_and_a_close_start_an_empty_window(registry, clock):
    b = registry.breaker("x", failure_rate=1.0, min_calls=4, reset_timeout=5.0, **RATE)
    outcomes(b, "FFFF")
    assert b.state is State.OPEN
    assert window_of(b.metrics()) == (0, 0, 0)
    clock.advance(5.0)
    outcomes(b, "S")  # the probe closes it
    assert b.state is State.CLOSED
    m = b.metrics()
    assert window_of(m) == (0, 0, 0) and m.failure_rate is None
    outcomes(b, "FFF")  # would be 7 failures if the window kept what came before the trip
    assert b.state is State.CLOSED
    outcomes(b, "F")
    assert b.state is State.OPEN


@pytest.mark.parametrize("change", ["reset", "force_open", "disable"])
def test_a_reset_starts_an_empty_window(registry, change):
    b = registry.breaker("x", failure_rate=1.0, min_calls=4, **RATE)
    outcomes(b, "FFF")
    if change != "reset":
        getattr(registry, change)("x")
    registry.reset("x")
    assert window_of(b.metrics()) == (0, 0, 0)
    outcomes(b, "FFF")
    assert b.state is State.CLOSED
    outcomes(b, "F")
    assert b.state is State.OPEN


def test_outcomes_admitted_before_a_reset_never_land_in_the_new_window(registry):
    b = registry.breaker("x", failure_rate=1.0, min_calls=2, **RATE)
    permits = [b.try_acquire() for _ in range(3)]

    def inside_a_block():
        with b:
            yield
            raise Boom()

    block = inside_a_block()
    next(block)  # a `with b:` block entered before the reset, left after it
    registry.reset("x")
    for p in permits:
        p.failure()
    with pytest.raises(Boom):
        next(block)
    m = b.metrics()
    assert window_of(m) == (0, 0, 0) and m.state is State.CLOSED
    outcomes(b, "F")
    assert b.state is State.CLOSED  # 1 call < min_calls: the stale failures are not there


def test_a_permit_from_256_resets_ago_never_lands_in_the_window(registry):
    """Generations far apart (a multiple of any small tag width) are still different generations."""
    b = registry.breaker("x", failure_rate=1.0, min_calls=1, **RATE)
    for resets in (256, 65_536 - 256):
        p = b.try_acquire()
        for _ in range(resets):
            registry.reset("x")
        p.failure()
        m = b.metrics()
        assert m.state is State.CLOSED and window_of(m) == (0, 0, 0), m


def test_outcomes_admitted_before_a_trip_never_land_in_the_window_after_it_closes(registry, clock):
    b = registry.breaker("x", failure_rate=1.0, min_calls=3, reset_timeout=1.0, **RATE)
    held = [b.try_acquire() for _ in range(2)]
    outcomes(b, "FFF")
    assert b.state is State.OPEN
    clock.advance(1.0)
    outcomes(b, "S")
    assert b.state is State.CLOSED
    for p in held:
        p.failure()
    assert window_of(b.metrics()) == (0, 0, 0)
    outcomes(b, "FF")
    assert b.state is State.CLOSED


def test_listeners_hear_each_rate_trip_once(registry, clock):
    heard = []
    registry.on_state_change(lambda name, old, new: heard.append((name, old, new)))
    b = registry.breaker("x", failure_rate=0.5, min_calls=4, reset_timeout=1.0, **RATE)
    for _ in range(3):
        outcomes(b, "SFSF")
        assert b.state is State.OPEN
        clock.advance(1.0)
        outcomes(b, "S")
    assert (
        heard
        == [
            ("x", State.CLOSED, State.OPEN),
            ("x", State.OPEN, State.HALF_OPEN),
            ("x", State.HALF_OPEN, State.CLOSED),
        ]
        * 3
    )
    assert b.metrics().times_opened == 3


# --------------------------------------------------------------------------------------------------
# Slow calls


def test_a_call_is_slow_when_strictly_longer_than_slow_call_duration(registry, clock):
    b = registry.breaker("x", slow_call_duration=1.0, slow_call_rate=1.0, min_calls=2, **RATE)
    b.call(taking(clock, 1.0))  # exactly the duration: not slow
    m = b.metrics()
    assert (m.slow_calls, m.window_slow, m.slow_call_rate) == (0, 0, 0.0)
    b.call(taking(clock, 1.001))
    m = b.metrics()
    assert (m.slow_calls, window_of(m), m.slow_call_rate) == (1, (2, 0, 1), 0.5)
    assert b.state is State.CLOSED


def test_a_slow_failure_is_a_failure_and_slow(registry, clock):
    b = registry.breaker("x", slow_call_duration=0.5, failure_threshold=10)
    with pytest.raises(Boom):
        b.call(taking(clock, 0.6, Boom()))
    m = b.metrics()
    assert (m.failures, m.slow_calls) == (1, 1)


def test_slow_successes_trip_the_slow_call_rate(registry, clock):
    b = registry.breaker("x", slow_call_duration=0.2, slow_call_rate=0.5, min_calls=4, **RATE)
    b.call(ok)
    b.call(ok)
    b.call(taking(clock, 0.3))
    assert b.state is State.CLOSED
    b.call(taking(clock, 0.3))  # 2/4 slow, every call a success
    m = b.metrics()
    assert m.state is State.OPEN and (m.failures, m.slow_calls, m.times_opened) == (0, 2, 1)


def test_slow_call_duration_alone_counts_but_never_trips(registry, clock):
    b = registry.breaker("x", slow_call_duration=0.1)
    for _ in range(50):
        b.call(taking(clock, 1.0))
    m = b.metrics()
    assert m.state is State.CLOSED and m.slow_calls == 50


@pytest.mark.parametrize("way", ["call", "decorated", "registry", "with", "permit", "acall", "async_with"])
def test_every_way_of_calling_is_timed_from_admission_to_outcome(registry, clock, way):
    b = registry.breaker("x", slow_call_duration=1.0, slow_call_rate=1.0, min_calls=2, **RATE)
    slow = taking(clock, 2.0)

    async def aslow():
        clock.advance(2.0)
        return "ok"

    if way == "call":
        b.call(slow)
    elif way == "decorated":
        b(slow)()
    elif way == "registry":
        registry.call("x", slow)
    elif way == "with":
        with b:
            clock.advance(2.0)
    elif way == "permit":
        p = b.try_acquire()
        clock.advance(2.0)  # a permit's call is timed from try_acquire to its outcome
        p.success()
    elif way == "acall":
        asyncio.run(b.acall(aslow))
    else:

        async def block():
            async with b:
                clock.advance(2.0)

        asyncio.run(block())
    m = b.metrics()
    assert (m.slow_calls, window_of(m)) == (1, (1, 0, 1))
    b.call(ok)
    assert b.state is State.CLOSED  # 1/2 slow < 1.0
    b.call(slow)
    assert b.state is State.CLOSED  # 2/3
    for _ in range(5):
        b.call(ok)
    assert window_of(b.metrics()) == (8, 0, 2)


def test_a_slow_call_admitted_before_a_reset_is_not_counted_in_the_new_window(registry, clock):
    b = registry.breaker("x", slow_call_duration=1.0, slow_call_rate=0.5, min_calls=1, **RATE)
    p = b.try_acquire()
    registry.reset("x")
    clock.advance(5.0)
    p.success()
    m = b.metrics()
    assert m.state is State.CLOSED and window_of(m) == (0, 0, 0)


# --------------------------------------------------------------------------------------------------
# Backoff and jitter


def reopen(b, clock, seconds):
    """Waits out the open time ``seconds`` exactly, then fails the probe."""
    clock.advance(seconds - 0.001)
    assert b.state is State.OPEN, f"half-open before {seconds} s"
    clock.advance(0.001)
    assert b.state is State.HALF_OPEN, f"still open after {seconds} s"
    outcomes(b, "F")
    assert b.state is State.OPEN


def test_backoff_doubles_the_open_time_at_each_reopen(registry, clock):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=10.0, backoff=2)
    outcomes(b, "F")
    expected = [10.0, 20.0, 40.0, 80.0, 160.0]
    for seconds, following in zip(expected, expected[1:]):
        assert open_time(b) == seconds
        reopen(b, clock, seconds)
        assert open_time(b) == following


def test_max_reset_timeout_caps_the_backoff(registry, clock):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=10.0, backoff=3.0, max_reset_timeout=60.0)
    outcomes(b, "F")
    seen = []
    for _ in range(5):
        seen.append(open_time(b))
        reopen(b, clock, seen[-1])
    assert seen == [10.0, 30.0, 60.0, 60.0, 60.0]


def test_closing_starts_the_backoff_over(registry, clock):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=10.0, backoff=2.0, success_threshold=2)
    outcomes(b, "F")
    reopen(b, clock, 10.0)
    assert open_time(b) == 20.0
    clock.advance(20.0)
    outcomes(b, "S")  # one probe success: half-open still, not closed
    assert b.state is State.HALF_OPEN
    outcomes(b, "F")  # reopens without having closed: backs off further
    assert open_time(b) == 40.0
    clock.advance(40.0)
    outcomes(b, "SS")
    assert b.state is State.CLOSED
    outcomes(b, "F")
    assert open_time(b) == 10.0


@pytest.mark.parametrize("how", ["reset", "force_open"])
def test_reset_starts_the_backoff_over(registry, clock, how):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=10.0, backoff=2.0)
    outcomes(b, "F")
    reopen(b, clock, 10.0)
    reopen(b, clock, 20.0)
    assert open_time(b) == 40.0
    if how == "force_open":
        registry.force_open("x")
    registry.reset("x")
    outcomes(b, "F")
    assert open_time(b) == 10.0


def test_backoff_with_a_rate_trip(registry, clock):
    b = registry.breaker("x", failure_rate=0.5, min_calls=2, reset_timeout=1.0, backoff=1.5, **RATE)
    outcomes(b, "SF")
    assert open_time(b) == 1.0
    reopen(b, clock, 1.0)
    assert open_time(b) == 1.5
    reopen(b, clock, 1.5)
    assert open_time(b) == 2.25


def test_a_huge_backoff_without_a_cap_never_fails_and_never_shrinks(registry, clock):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=1.0, backoff=1000.0)
    outcomes(b, "F")
    previous = 1.0
    for _ in range(12):
        seconds = open_time(b)
        assert math.isfinite(seconds) and seconds >= previous
        previous = seconds
        clock.advance(seconds)
        assert b.state is State.HALF_OPEN
        outcomes(b, "F")
    assert b.state is State.OPEN


def test_jitter_draws_the_open_time_within_its_range_and_half_opens_then(registry, clock):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=10.0, jitter=0.5)
    drawn = []
    for _ in range(40):
        outcomes(b, "F")
        seconds = open_time(b)
        assert 5.0 <= seconds <= 10.0
        drawn.append(seconds)
        clock.advance(seconds - 0.001)
        assert b.state is State.OPEN
        clock.advance(0.001)
        assert b.state is State.HALF_OPEN
        outcomes(b, "S")
    assert min(drawn) < 7.5 < max(drawn), f"not drawn over [5, 10]: {sorted(drawn)}"


def test_jitter_applies_to_the_backed_off_time(registry, clock):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=10.0, backoff=2.0, jitter=0.25)
    outcomes(b, "F")
    for nominal in (10.0, 20.0, 40.0, 80.0):
        seconds = open_time(b)
        assert nominal * 0.75 <= seconds <= nominal
        reopen(b, clock, seconds)


def test_without_jitter_every_open_time_is_exact(registry, clock):
    b = registry.breaker("x", failure_threshold=1, reset_timeout=7.0, jitter=0.0)
    for _ in range(5):
        outcomes(b, "F")
        assert open_time(b) == 7.0
        clock.advance(7.0)
        outcomes(b, "S")


# --------------------------------------------------------------------------------------------------
# metrics()


def test_metrics_report_the_window(registry, clock):
    b = registry.breaker(
        "x", failure_rate=0.9, slow_call_duration=1.0, slow_call_rate=0.9, min_calls=100, **RATE
    )
    m = b.metrics()
    assert window_of(m) == (0, 0, 0)
    assert (m.failure_rate, m.slow_call_rate, m.slow_calls) == (None, None, 0)
    assert all(type(v) is int for v in (*window_of(m), m.slow_calls))
    outcomes(b, "SF")
    b.call(taking(clock, 1.5))
    with pytest.raises(Boom):
        b.call(taking(clock, 1.5, Boom()))
    m = b.metrics()
    assert window_of(m) == (4, 2, 2) and m.slow_calls == 2
    assert type(m.failure_rate) is float and type(m.slow_call_rate) is float
    assert (m.failure_rate, m.slow_call_rate) == (0.5, 0.5)
    assert window_of(registry.snapshot()["x"]) == (4, 2, 2)
    clock.advance(11.001)
    m = b.metrics()
    assert window_of(m) == (0, 0, 0) and (m.failure_rate, m.slow_call_rate) == (None, None)
    assert m.slow_calls == 2, "slow_calls is a total, not the window's"


# --------------------------------------------------------------------------------------------------
# A randomized sequence against the reference model (tests/model.py)


limits_strategy = st.builds(
    dict,
    failure_threshold=st.sampled_from([None, 2, 5]),
    failure_rate=st.sampled_from([None, 0.25, 0.5, 0.75, 1.0]),
    slow=st.sampled_from([None, (500, None), (500, 0.5), (1000, 0.25)]),
    window_ms=st.sampled_from([1000, 10_000]),
    min_calls=st.integers(1, 6),
    reset_timeout_ms=st.sampled_from([1000, 3000]),
    backoff=st.sampled_from([1.0, 1.5, 2.0]),
    max_reset_timeout_ms=st.sampled_from([None, 4000]),
    jitter=st.sampled_from([0.0, 0.5]),
    half_open_max_calls=st.integers(1, 2),
    success_threshold=st.integers(1, 2),
).filter(lambda d: d["failure_threshold"] or d["failure_rate"] or (d["slow"] and d["slow"][1]))

call_step = st.tuples(st.just("call"), st.sampled_from("SSFFFI"), st.sampled_from([0, 0, 0, 500, 501, 1200]))
steps_strategy = st.lists(
    st.one_of(
        call_step,
        call_step,
        call_step,
        call_step,
        st.tuples(st.just("take"), st.just(None), st.just(0)),
        st.tuples(st.just("settle"), st.sampled_from("SFFI"), st.integers(0, 5)),
        st.tuples(
            st.just("advance"),
            st.just(None),
            st.sampled_from([1, 100, 450, 999, 1000, 2000, 3000, 4000, 12_000]),
        ),
        st.tuples(
            st.just("advance"),
            st.just(None),
            st.sampled_from([1, 100, 450, 999, 1000, 2000, 3000, 4000, 12_000]),
        ),
        st.tuples(st.just("reset"), st.just(None), st.just(0)),
        st.tuples(st.just("until_half_open"), st.just(None), st.sampled_from([0, 0, 1])),
        st.tuples(st.just("until_half_open"), st.just(None), st.sampled_from([0, 0, 1])),
    ),
    min_size=10,
    max_size=80,
)


def limits_from(d):
    slow_ms, slow_rate = d["slow"] or (None, None)
    cap = d["max_reset_timeout_ms"]
    if cap is not None and cap < d["reset_timeout_ms"]:
        cap = None
    return model.Limits(
        failure_threshold=d["failure_threshold"],
        reset_timeout_ms=d["reset_timeout_ms"],
        half_open_max_calls=d["half_open_max_calls"],
        success_threshold=d["success_threshold"],
        failure_rate=d["failure_rate"],
        slow_call_duration_ms=slow_ms,
        slow_call_rate=slow_rate,
        window_ms=d["window_ms"],
        min_calls=d["min_calls"],
        backoff=d["backoff"],
        max_reset_timeout_ms=cap,
        jitter=d["jitter"],
    )


def options_from(limits: model.Limits) -> dict:
    seconds = lambda ms: None if ms is None else ms / 1000  # noqa: E731
    return dict(
        failure_threshold=limits.failure_threshold,
        reset_timeout=limits.reset_timeout_ms / 1000,
        half_open_max_calls=limits.half_open_max_calls,
        success_threshold=limits.success_threshold,
        failure_rate=limits.failure_rate,
        slow_call_duration=seconds(limits.slow_call_duration_ms),
        slow_call_rate=limits.slow_call_rate,
        window=limits.window_ms / 1000,
        min_calls=limits.min_calls,
        backoff=limits.backoff,
        max_reset_timeout=seconds(limits.max_reset_timeout_ms),
        jitter=limits.jitter,
    )


STATE = {
    model.CLOSED: State.CLOSED,
    model.OPEN: State.OPEN,
    model.HALF_OPEN: State.HALF_OPEN,
}


class Run:
    """One breaker and its model, stepped together."""

    def __init__(self, limits: model.Limits) -> None:
        self.limits = limits
        self.clock = ManualClock()
        self.registry = Registry(clock=self.clock)
        self.b = self.registry.breaker("x", **options_from(limits))
        self.ref = model.Breaker(limits)
        self.now = 0
        self.held: list[tuple[object, int, int]] = []  # (permit, ticket, admitted at)
        self.deferred = 0  # successes in a row the implementation may have sampled

    def advance(self, ms: int) -> None:
        self.clock.advance(ms / 1000)
        self.now += ms

    def finish(self, ticket: int, outcome: str, duration_ms: int) -> None:
        """Records the outcome in the model, following the implementation where the contract allows
        more than one word."""
        ref, before = self.ref, self.ref.word
        counter = {model.SUCCESS: "successes", model.FAILURE: "failures", model.IGNORED: "ignored"}[outcome]
        setattr(ref, counter, getattr(ref, counter) + 1)
        if outcome != model.IGNORED and model.is_slow(self.limits, duration_ms):
            ref.slow_calls += 1
        may_defer = self.deferred < SUCCESS_TRIP_BOUND
        words = model.possible_records(self.limits, before, ticket, outcome, self.now, duration_ms, may_defer)
        actual = self.b.state
        matching = [w for w in words if STATE[model.observe(self.limits, w, self.now).mode] is actual]
        assert matching, f"{actual} after {outcome} ({duration_ms} ms); the model allows {words}"
        after = matching[0]
        sure = model.possible_records(self.limits, before, ticket, outcome, self.now, duration_ms)
        self.deferred = self.deferred + 1 if len(sure) == 1 and sure[0] != after else 0
        if after.mode == model.OPEN and before.mode != model.OPEN:
            # Follow the open time the breaker drew (jitter), after checking it is allowed.
            drawn = round(self.b.metrics().retry_after * 1000)
            lo, hi = model.open_time_range(self.limits, after.reopens)
            assert lo <= drawn <= hi, f"open for {drawn} ms, the contract allows [{lo}, {hi}]"
            after = after._replace(open_for=drawn)
        ref.settle(before, after)

    def step(self, kind: str, outcome: str | None, arg: int) -> None:
        if kind == "advance":
            self.advance(arg)
        elif kind == "until_half_open":
            # To the end of the open time drawn (or a millisecond short of it), if open
            self.advance(max(round(self.ref.retry_after(self.now) * 1000) - arg, 0))
        elif kind == "reset":
            self.registry.reset("x")
            self.ref.set_mode(model.CLOSED)
        elif kind == "take":
            permit = self.b.try_acquire()
            ticket = self.ref.admit(self.now)
            assert (permit is None) == (ticket is None)
            if permit is not None:
                self.held.append((permit, ticket, self.now))
        elif kind == "settle":
            if not self.held:
                return
            permit, ticket, at = self.held.pop(arg % len(self.held))
            code = {"S": model.SUCCESS, "F": model.FAILURE, "I": model.IGNORED}[outcome]
            {"S": permit.success, "F": permit.failure, "I": permit.ignore}[outcome]()
            self.finish(ticket, code, self.now - at)
        else:
            self.call(outcome, arg)

    def call(self, letter: str, duration_ms: int) -> None:
        if letter == "I":
            duration_ms = 0  # whether an ignored slow call counts in slow_calls is not specified
        ticket = self.ref.admit(self.now)
        exc = {"S": None, "F": Boom(), "I": CustomBase()}[letter]
        fn = taking(self.clock, duration_ms / 1000, "ok" if exc is None else exc)
        if ticket is None:
            with pytest.raises(CircuitOpenError):
                self.b.call(fn)
            return
        if exc is None:
            self.b.call(fn)
        else:
            with pytest.raises(type(exc)):
                self.b.call(fn)
        self.now += duration_ms
        self.finish(ticket, {"S": model.SUCCESS, "F": model.FAILURE, "I": model.IGNORED}[letter], duration_ms)

    def check(self) -> None:
        ref, m = self.ref, self.b.metrics()
        mode = ref.observe(self.now)
        assert m.state is STATE[mode]
        assert (m.successes, m.failures, m.ignored, m.rejected) == (
            ref.successes,
            ref.failures,
            ref.ignored,
            ref.rejected,
        )
        assert (m.times_opened, m.slow_calls) == (ref.times_opened, ref.slow_calls)
        if mode == model.CLOSED and self.limits.failure_threshold is not None:
            assert m.consecutive_failures == ref.word.failures
        assert m.retry_after == pytest.approx(ref.retry_after(self.now), abs=1e-9)
        if self.limits.has_window and mode == model.CLOSED:
            allowed = model.window_counts(self.limits, ref.word, self.now)
            assert window_of(m) in allowed, f"window {window_of(m)}, the model allows {allowed}"
            calls, failures, slow = window_of(m)
            if calls == 0:
                assert (m.failure_rate, m.slow_call_rate) == (None, None)
            else:
                assert m.failure_rate == pytest.approx(failures / calls)
                assert m.slow_call_rate == pytest.approx(slow / calls)


@settings(max_examples=200)
@given(limits=limits_strategy, steps=steps_strategy)
def test_random_sequences_follow_the_model(limits, steps):
    run = Run(limits_from(limits))
    for kind, outcome, arg in steps:
        run.step(kind, outcome, arg)
        run.check()
    while run.held:
        permit, ticket, at = run.held.pop()
        permit.failure()
        run.finish(ticket, model.FAILURE, run.now - at)
        run.check()
