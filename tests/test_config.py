"""Configuration (issue 3): ``success_threshold``, ``failure_on``, ``ignore``, ``probe_timeout``
(keyword-only, validated like the core options, accepted by ``call``, ``breaker`` and ``configure``),
``Registry(clock=..., **defaults)`` and ``registry.configure`` (creates, or changes an existing breaker
atomically; ``call`` keeps first-creation-wins)."""

from __future__ import annotations

import math
import threading

import pytest
from helpers import Boom, ClientError, fail_with, open_then_half_open, raiser, run_threads
from panelboard import ManualClock, Registry, State


class NotFound(ClientError):
    pass


# --- success_threshold ----------------------------------------------------------------------------


def test_success_threshold_needs_that_many_probe_successes(registry, clock):
    b = registry.breaker("s", failure_threshold=1, reset_timeout=1.0, success_threshold=3)
    open_then_half_open(b, clock, 1.0)
    for i in range(2):
        assert b.call(lambda: "ok") == "ok"
        assert b.state is State.HALF_OPEN, f"after {i + 1} successes"
    b.call(lambda: "ok")
    assert b.state is State.CLOSED


def test_success_threshold_with_parallel_probes(registry, clock):
    b = registry.breaker(
        "s", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=2, success_threshold=2
    )
    open_then_half_open(b, clock, 1.0)
    p1, p2 = b.try_acquire(), b.try_acquire()
    assert b.try_acquire() is None
    p1.success()
    assert b.state is State.HALF_OPEN
    p2.success()
    assert b.state is State.CLOSED


def test_a_failure_before_success_threshold_reopens_and_starts_over(registry, clock):
    b = registry.breaker("s", failure_threshold=1, reset_timeout=1.0, success_threshold=2)
    open_then_half_open(b, clock, 1.0)
    b.call(lambda: None)
    fail_with(b, Boom())
    assert b.state is State.OPEN
    clock.advance(1.0)
    b.call(lambda: None)
    assert b.state is State.HALF_OPEN, "successes of the previous half-open period do not count"
    b.call(lambda: None)
    assert b.state is State.CLOSED


def test_ignored_probes_do_not_count_towards_success_threshold(registry, clock):
    b = registry.breaker("s", failure_threshold=1, reset_timeout=1.0, success_threshold=2)
    open_then_half_open(b, clock, 1.0)
    b.call(lambda: None)
    b.try_acquire().ignore()
    assert b.state is State.HALF_OPEN
    b.call(lambda: None)
    assert b.state is State.CLOSED


# --- failure_on / ignore --------------------------------------------------------------------------


def test_failure_on_counts_only_matching_exceptions(registry):
    b = registry.breaker("f", failure_threshold=2, failure_on=ConnectionError)
    fail_with(b, ValueError(), times=5)
    assert b.state is State.CLOSED
    assert b.metrics().ignored == 5
    fail_with(b, ConnectionRefusedError())  # a subclass matches
    fail_with(b, ConnectionError())
    assert b.state is State.OPEN


def test_failure_on_tuple(registry):
    b = registry.breaker("f", failure_threshold=3, failure_on=(ConnectionError, TimeoutError))
    fail_with(b, ConnectionError(), KeyError(), TimeoutError())
    assert b.metrics().consecutive_failures == 2
    fail_with(b, TimeoutError())
    assert b.state is State.OPEN


def test_ignored_exceptions_do_not_reset_the_failure_count(registry):
    b = registry.breaker("f", failure_threshold=2, failure_on=Boom)
    fail_with(b, Boom(), KeyError())
    assert b.metrics().consecutive_failures == 1
    fail_with(b, Boom())
    assert b.state is State.OPEN


def test_ignore_wins_over_failure_on(registry):
    b = registry.breaker("i", failure_threshold=1, ignore=ClientError)
    fail_with(b, ClientError(), times=3)
    fail_with(b, NotFound(), times=3)  # a subclass is ignored too
    assert b.state is State.CLOSED
    assert b.metrics().ignored == 6
    fail_with(b, Boom())
    assert b.state is State.OPEN


def test_ignore_tuple_with_failure_on(registry):
    b = registry.breaker(
        "i", failure_threshold=1, failure_on=(ClientError, Boom), ignore=(NotFound, KeyError)
    )
    fail_with(b, NotFound())
    fail_with(b, KeyError())
    assert b.state is State.CLOSED
    fail_with(b, ClientError())
    assert b.state is State.OPEN


def test_empty_ignore_tuple_ignores_nothing(registry):
    b = registry.breaker("i", failure_threshold=1, ignore=())
    fail_with(b, ClientError())
    assert b.state is State.OPEN


def test_base_exceptions_stay_ignored_with_custom_failure_on(registry):
    b = registry.breaker("i", failure_threshold=1, failure_on=Exception, ignore=KeyError)
    with pytest.raises(KeyboardInterrupt):
        b.call(raiser(KeyboardInterrupt()))
    assert b.state is State.CLOSED


def test_ignored_probe_releases_its_half_open_slot(registry, clock):
    b = registry.breaker("i", failure_threshold=1, reset_timeout=1.0, ignore=ClientError)
    open_then_half_open(b, clock, 1.0)
    fail_with(b, ClientError())
    assert b.state is State.HALF_OPEN
    b.call(lambda: None)
    assert b.state is State.CLOSED


def test_failure_on_and_ignore_in_registry_call(registry):
    registry.call("r", lambda: None, failure_threshold=1, failure_on=Boom, ignore=NotFound)
    for exc in (NotFound(), KeyError()):
        with pytest.raises(type(exc)):
            registry.call("r", raiser(exc))
    assert registry.state("r") is State.CLOSED
    with pytest.raises(Boom):
        registry.call("r", raiser(Boom()))
    assert registry.state("r") is State.OPEN


# --- probe_timeout --------------------------------------------------------------------------------


def test_probe_timeout_reclaims_a_hung_probe(registry, clock):
    b = registry.breaker("p", failure_threshold=1, reset_timeout=10.0, probe_timeout=5.0)
    open_then_half_open(b, clock, 10.0)
    hung = b.try_acquire()  # a probe that will never report in time
    assert hung is not None
    clock.advance(4.999)
    assert b.try_acquire() is None, "not reclaimed before probe_timeout"
    clock.advance(0.001)
    fresh = b.try_acquire()
    assert fresh is not None, "reclaimed at probe_timeout"
    assert b.try_acquire() is None, "still one probe at a time"
    hung.failure()  # the hung probe finally answers: stale, changes nothing
    assert b.state is State.HALF_OPEN
    fresh.success()
    assert b.state is State.CLOSED


def test_probe_timeout_reclaims_hung_probe_of_guarded_call(registry, clock):
    b = registry.breaker("p", failure_threshold=1, reset_timeout=1.0, probe_timeout=2.0)
    open_then_half_open(b, clock, 1.0)
    order = []

    def hung_probe():
        # While this probe hangs, time passes and another caller takes over.
        clock.advance(2.0)
        order.append(b.call(lambda: "second probe"))
        raise Boom("late failure")

    with pytest.raises(Boom):
        b.call(hung_probe)
    assert order == ["second probe"]
    assert b.state is State.CLOSED, "the reclaimed probe's late failure is stale"


def test_probe_timeout_reclaims_probes_hung_in_other_threads(registry, clock):
    b = registry.breaker(
        "p", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=2, probe_timeout=5.0
    )
    open_then_half_open(b, clock, 1.0)
    hung = threading.Barrier(3, timeout=30)
    release = threading.Event()
    late = []

    def hang():
        hung.wait()
        assert release.wait(30)
        raise Boom("late")

    def probe(i):
        try:
            b.call(hang)
        except Boom:
            late.append(i)

    probes = [threading.Thread(target=probe, args=(i,), daemon=True) for i in range(2)]
    for t in probes:
        t.start()
    try:
        hung.wait()  # both probe slots are held by calls that do not return
        assert b.try_acquire() is None
        clock.advance(4.999)
        assert b.try_acquire() is None, "reclaimed before probe_timeout"
        clock.advance(0.001)
        storm = threading.Barrier(16, timeout=30)
        admitted = []

        def arrive(i):
            storm.wait()
            p = b.try_acquire()
            if p is not None:
                admitted.append(p)

        run_threads(arrive, n=16)
        assert len(admitted) == 2, "the reclaimed slots, exactly, to 16 racing callers"
        admitted[0].success()
        assert b.state is State.CLOSED
        admitted[1].success()
    finally:
        release.set()
        for t in probes:
            t.join(30)
    assert sorted(late) == [0, 1]
    assert b.state is State.CLOSED, "the hung probes' late failures are stale"
    assert b.metrics().consecutive_failures == 0


def test_without_probe_timeout_a_hung_probe_blocks_half_open(registry, clock):
    b = registry.breaker("p", failure_threshold=1, reset_timeout=1.0)
    open_then_half_open(b, clock, 1.0)
    hung = b.try_acquire()
    clock.advance(10**6)
    assert b.try_acquire() is None
    hung.ignore()
    assert b.try_acquire() is not None


def test_probe_timeout_reclaims_every_hung_probe(registry, clock):
    b = registry.breaker(
        "p", failure_threshold=1, reset_timeout=1.0, half_open_max_calls=3, probe_timeout=1.0
    )
    open_then_half_open(b, clock, 1.0)
    hung = [b.try_acquire() for _ in range(3)]
    assert all(hung) and b.try_acquire() is None
    clock.advance(1.0)
    fresh = [b.try_acquire() for _ in range(3)]
    assert all(fresh), "all three slots come back"
    assert b.try_acquire() is None
    for p in hung:
        p.failure()
    assert b.state is State.HALF_OPEN
    fresh[0].success()
    assert b.state is State.CLOSED


def test_probe_timeout_set_by_configure_applies_to_a_probe_already_out(registry, clock):
    b = registry.breaker("p", failure_threshold=1, reset_timeout=1.0)
    open_then_half_open(b, clock, 1.0)
    hung = b.try_acquire()
    registry.configure("p", probe_timeout=3.0)
    assert b.try_acquire() is None
    clock.advance(3.0)
    assert b.try_acquire() is not None
    del hung


# --- validation -----------------------------------------------------------------------------------


BAD_OPTIONS = [
    ({"success_threshold": 0}, ValueError),
    ({"success_threshold": -1}, ValueError),
    ({"success_threshold": 1.0}, TypeError),
    ({"success_threshold": True}, TypeError),
    ({"success_threshold": 65536}, ValueError),
    ({"failure_on": 3}, TypeError),
    ({"failure_on": ValueError()}, TypeError),
    ({"failure_on": "ValueError"}, TypeError),
    ({"failure_on": int}, TypeError),
    ({"failure_on": [ValueError]}, TypeError),
    ({"failure_on": (ValueError, 3)}, TypeError),
    ({"ignore": KeyError()}, TypeError),
    ({"ignore": [KeyError]}, TypeError),
    ({"ignore": (KeyError, object)}, TypeError),
    ({"ignore": None}, TypeError),
    ({"probe_timeout": 0}, ValueError),
    ({"probe_timeout": -1.0}, ValueError),
    ({"probe_timeout": math.nan}, ValueError),
    ({"probe_timeout": math.inf}, ValueError),
    ({"probe_timeout": "5"}, TypeError),
    ({"probe_timeout": True}, TypeError),
    ({"failure_threshold": 0}, ValueError),
    ({"reset_timeout": -1}, ValueError),
    ({"half_open_max_calls": 0}, ValueError),
    ({"success": 3}, TypeError),
    ({"failure_treshold": 3}, TypeError),
]


@pytest.mark.parametrize(("options", "error"), BAD_OPTIONS, ids=lambda v: repr(v))
def test_bad_options_are_rejected_naming_the_argument_and_create_nothing(registry, options, error):
    (arg,) = options
    entry_points = {
        "breaker": lambda: registry.breaker("x", **options),
        "configure": lambda: registry.configure("x", **options),
        "call": lambda: registry.call("x", lambda: None, **options),
    }
    for where, attempt in entry_points.items():
        with pytest.raises(error) as info:
            attempt()
        assert arg in str(info.value), f"{where}: {info.value}"
        assert "x" not in registry, where
    with pytest.raises(error) as info:
        Registry(**options)
    assert arg in str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"success_threshold": 65535},
        {"failure_on": BaseException},
        {"failure_on": ()},
        {"ignore": ()},
        {"probe_timeout": None},
        {"probe_timeout": 1},
        {"probe_timeout": 0.001},
        {"success": None},
    ],
    ids=repr,
)
def test_good_options_are_accepted_everywhere(registry, options):
    registry.breaker("a", **options)
    registry.configure("b", **options)
    registry.call("c", lambda: None, **options)
    Registry(**options)
    assert {"a", "b", "c"} <= {n for n, _ in registry.list()}


def test_options_are_keyword_only(registry):
    with pytest.raises(TypeError):
        registry.breaker("x", 3)
    with pytest.raises(TypeError):
        registry.configure("x", 3)
    with pytest.raises(TypeError):
        Registry(ManualClock())
    assert len(registry) == 0


# --- Registry(clock=..., **defaults) --------------------------------------------------------------


def test_registry_defaults_apply_to_new_breakers(clock):
    registry = Registry(clock=clock, failure_threshold=2, reset_timeout=5.0, ignore=ClientError)
    b = registry.breaker("d")
    fail_with(b, ClientError(), times=3)
    assert b.state is State.CLOSED
    fail_with(b, Boom(), times=2)
    assert b.state is State.OPEN
    clock.advance(4.999)
    assert b.state is State.OPEN
    clock.advance(0.001)
    assert b.state is State.HALF_OPEN
    # call / configure / force_open create with the defaults too.
    with pytest.raises(Boom):
        registry.call("by-call", raiser(Boom()))
    assert registry.state("by-call") is State.CLOSED
    with pytest.raises(Boom):
        registry.call("by-call", raiser(Boom()))
    assert registry.state("by-call") is State.OPEN
    c = registry.configure("by-configure", reset_timeout=1.0)
    fail_with(c, Boom(), times=2)
    assert c.state is State.OPEN, "failure_threshold=2 from the defaults"
    clock.advance(1.0)
    assert c.state is State.HALF_OPEN, "reset_timeout from configure"


def test_per_breaker_options_override_one_default_and_keep_the_others(clock):
    registry = Registry(clock=clock, failure_threshold=3, success_threshold=2, reset_timeout=2.0)
    b = registry.breaker("o", failure_threshold=1)
    fail_with(b, Boom())
    assert b.state is State.OPEN
    clock.advance(2.0)
    b.call(lambda: None)
    assert b.state is State.HALF_OPEN, "success_threshold=2 kept from the defaults"
    b.call(lambda: None)
    assert b.state is State.CLOSED


def test_registry_default_probe_timeout_and_success(clock):
    registry = Registry(clock=clock, failure_threshold=1, reset_timeout=1.0, probe_timeout=1.0, success=bool)
    b = registry.breaker("x")
    assert b.call(lambda: 0) == 0  # falsy result: a failure by the default predicate
    assert b.state is State.OPEN
    clock.advance(1.0)
    hung = b.try_acquire()
    clock.advance(1.0)
    assert b.try_acquire() is not None
    del hung


def test_registry_clock_is_shared_with_the_manual_clock(clock):
    r1 = Registry(clock=clock, failure_threshold=1, reset_timeout=3.0)
    r2 = Registry(clock=clock, failure_threshold=1, reset_timeout=3.0)
    fail_with(r1.breaker("a"), Boom())
    fail_with(r2.breaker("a"), Boom())
    clock.advance(3.0)
    assert r1.state("a") is State.HALF_OPEN
    assert r2.state("a") is State.HALF_OPEN


def test_registry_rejects_a_bad_clock():
    with pytest.raises(TypeError):
        Registry(clock=1.0)
    with pytest.raises(TypeError):
        Registry(clock=lambda: 0.0)
    Registry(clock=None)


def test_manual_clock_start_and_advance():
    c = ManualClock(start=100.0)
    assert c.now() == 100.0
    c.advance(1.5)
    assert c.now() == pytest.approx(101.5)
    with pytest.raises(ValueError):
        c.advance(-1)
    assert ManualClock().now() == 0.0


# --- registry.configure ---------------------------------------------------------------------------


def test_configure_creates_a_new_breaker_with_options(registry):
    b = registry.configure("c", failure_threshold=1)
    assert "c" in registry
    assert b.name == "c"
    fail_with(b, Boom())
    assert registry.state("c") is State.OPEN


def test_configure_changes_an_existing_breaker(registry, clock):
    handle = registry.breaker("c", failure_threshold=10, reset_timeout=100.0)
    fail_with(handle, Boom(), times=3)
    returned = registry.configure("c", failure_threshold=4)
    fail_with(returned, Boom())
    assert handle.state is State.OPEN, "same breaker; the count so far is kept"
    clock.advance(99.0)
    assert handle.state is State.OPEN, "reset_timeout was not given, so it is unchanged"
    registry.configure("c", reset_timeout=1.0)
    assert handle.state is State.HALF_OPEN, "the new reset_timeout applies to the open breaker"


def test_configure_changes_classification(registry):
    b = registry.breaker("c", failure_threshold=1)
    registry.configure("c", ignore=ClientError)
    fail_with(b, ClientError())
    assert b.state is State.CLOSED
    registry.configure("c", failure_on=Boom, ignore=())
    fail_with(b, ClientError())
    assert b.state is State.CLOSED, "ClientError is not in failure_on"
    fail_with(b, Boom())
    assert b.state is State.OPEN


def test_configure_can_clear_success_predicate_and_probe_timeout(registry, clock):
    b = registry.breaker(
        "c", failure_threshold=1, reset_timeout=1.0, success=lambda r: r > 0, probe_timeout=1.0
    )
    registry.configure("c", success=None, probe_timeout=None)
    assert b.call(lambda: 0) == 0
    assert b.state is State.CLOSED, "no predicate any more"
    fail_with(b, Boom())
    clock.advance(1.0)
    hung = b.try_acquire()
    clock.advance(100.0)
    assert b.try_acquire() is None, "no probe_timeout any more"
    del hung


def test_configure_with_a_bad_option_changes_nothing(registry):
    b = registry.breaker("c", failure_threshold=5)
    with pytest.raises(ValueError):
        registry.configure("c", failure_threshold=1, reset_timeout=-1.0)
    with pytest.raises(TypeError):
        registry.configure("c", failure_threshold=1, bogus=2)
    fail_with(b, Boom(), times=4)
    assert b.state is State.CLOSED, "the valid part of a rejected configure was not applied"


def test_call_keeps_first_creation_wins_but_configure_changes(registry):
    registry.call("c", lambda: None, failure_threshold=3)
    for _ in range(2):
        with pytest.raises(Boom):
            registry.call("c", raiser(Boom()), failure_threshold=1)
    assert registry.state("c") is State.CLOSED, "call's later options are ignored"
    registry.configure("c", failure_threshold=1)
    with pytest.raises(Boom):
        registry.call("c", raiser(Boom()))
    assert registry.state("c") is State.OPEN


def test_default_registry_configure(name):
    import panelboard

    b = panelboard.configure(name, failure_threshold=1, ignore=ClientError)
    assert b.name == name
    fail_with(b, ClientError())
    assert panelboard.state(name) is State.CLOSED
    panelboard.configure(name, ignore=())
    fail_with(b, ClientError())
    assert panelboard.state(name) is State.OPEN


def test_configure_racing_creation_always_applies_its_options(registry):
    # For each name, one thread creates it with the defaults while another configures it, released
    # together. Whichever creates it, configure's options hold afterwards. (Before the fix, on
    # 3.13t, a configure that lost the creation race returned the other breaker unchanged: about
    # 1 name in 200.)
    names = [f"race-{i}" for i in range(2000)]
    together = threading.Barrier(2, timeout=30)

    def work(i):
        for n in names:
            together.wait()
            if i:
                registry.breaker(n)
            else:
                registry.configure(n, failure_threshold=1)

    run_threads(work, n=2)
    for n in names:
        fail_with(registry.breaker(n), Boom())
    unapplied = [n for n in names if registry.state(n) is not State.OPEN]
    assert not unapplied, f"configure(failure_threshold=1) lost for {len(unapplied)} names"


def test_concurrent_configures_leave_one_whole_configuration_in_force(registry):
    # Two threads keep swapping between two whole configurations. Afterwards, the breaker must
    # behave as one of them, all of it: never half of each, and in particular never the limits of
    # the one with a predicate without its predicate (the fast path skips a cached "no predicate").
    def never_ok(result):
        return False

    for round_ in range(200):
        name = f"p{round_}"
        b = registry.breaker(name)
        start = threading.Barrier(2, timeout=30)

        def work(i):
            start.wait()
            for _ in range(20):
                if i:
                    registry.configure(name, success=never_ok, failure_threshold=1)
                else:
                    registry.configure(name, success=None, failure_threshold=1000)

        run_threads(work, n=2)
        b.call(lambda: 1)
        if b.state is State.CLOSED:  # success=None, failure_threshold=1000 in force
            fail_with(b, Boom())
            assert b.state is State.CLOSED, f"round {round_}: the predicate in force was skipped"
        else:
            assert b.metrics().failures == 1


@pytest.mark.parametrize("bad", [KeyboardInterrupt, (ValueError, SystemExit)])
def test_failure_on_rejects_base_exceptions_that_are_always_ignored(bad):
    registry = Registry()
    with pytest.raises(ValueError, match="failure_on"):
        registry.breaker("x", failure_on=bad)
    assert "x" not in registry


# --- breakers configured alike share their options (issue 11, memory per breaker) -----------------


def test_configuring_one_of_the_breakers_made_alike_leaves_the_others_as_they_were(clock):
    # Breakers made with the same options share one configuration (the registry defaults, or the
    # same call options): configure must change the one breaker only (copy on configure).
    registry = Registry(clock=clock, failure_threshold=2, reset_timeout=5.0)
    by_defaults = [registry.breaker(f"d{i}") for i in range(3)]
    by_options = [registry.breaker(f"o{i}", failure_threshold=3, failure_rate=0.5) for i in range(3)]
    registry.configure("d0", failure_threshold=1, reset_timeout=1.0)
    registry.configure("o0", failure_threshold=1, failure_rate=None)
    for b in (by_defaults[0], by_options[0]):
        fail_with(b, Boom())
        assert b.state is State.OPEN, b.name
    for b in by_defaults[1:]:
        fail_with(b, Boom())
        assert b.state is State.CLOSED, f"{b.name} kept failure_threshold=2"
        fail_with(b, Boom())
        assert b.state is State.OPEN
    clock.advance(1.0)
    assert by_defaults[0].state is State.HALF_OPEN
    assert [b.state for b in by_defaults[1:]] == [State.OPEN] * 2, "reset_timeout=5.0 kept"
    for b in by_options[1:]:
        fail_with(b, Boom(), times=2)
        assert b.state is State.CLOSED, f"{b.name} kept failure_threshold=3"
        assert b.metrics().window_calls == 2, f"{b.name} kept its rate rule"


@pytest.mark.parametrize("options", [{}, {"ignore": ClientError}, {"success": bool}])
def test_failure_on_exception_given_explicitly_is_the_default(registry, options):
    explicit = registry.breaker("explicit", failure_threshold=1, failure_on=Exception, **options)
    default = registry.breaker("default", failure_threshold=1, **options)
    for b in (explicit, default):
        fail_with(b, KeyboardInterrupt())
        assert (b.state, b.metrics().ignored) == (State.CLOSED, 1), "a BaseException is ignored"
        fail_with(b, ClientError())
        if "ignore" in options:
            assert (b.state, b.metrics().ignored) == (State.CLOSED, 2), (b.name, options)
        else:
            assert (b.state, b.metrics().failures) == (State.OPEN, 1), (b.name, options)
