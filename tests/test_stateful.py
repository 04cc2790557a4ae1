"""Model-based test (issue 2): a hypothesis state machine drives a real ``Registry`` with a
``ManualClock`` and the reference model of the breaker (``tests/model.py``, shared with
``tests/test_concurrent_model.py``) with the same random sequence of calls (success, falsy result,
exception, raising predicate, ignored BaseException), held permits resolved later, clock advances,
resets, force-opens, disables and deletes, and compares them after every step: ``state()`` of
every name, ``list()``, and each live breaker's counters.

The model follows the README, not the implementation: closed / open / half-open / forced-open /
disabled, consecutive failures, ``opened_at``, probes in flight and probe successes, reclaimed hung
probes, and a generation that every transition (and reset) moves on, so that outcomes admitted in
an older generation change nothing."""

from __future__ import annotations

import model
from helpers import Boom
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)
from panelboard import CircuitOpenError, ManualClock, Registry, State

NAMES = ["a", "b", "c"]


class PredicateError(Exception):
    pass


class Ignored(BaseException):
    pass


def predicate(result):
    if result == "explode":
        raise PredicateError(result)
    return result != "bad"


OUTCOMES = ["ok", "bad", "explode", "raise", "base"]


def classify(outcome, has_predicate):
    """What a call whose fn behaves as `outcome` records, and what the caller sees."""
    if outcome == "raise":
        return model.FAILURE, Boom
    if outcome == "base":
        return model.IGNORED, Ignored
    if not has_predicate or outcome == "ok":
        return model.SUCCESS, None
    if outcome == "bad":
        return model.FAILURE, None
    return model.FAILURE, PredicateError  # "explode": the predicate raises


options_strategy = st.fixed_dictionaries(
    {
        "failure_threshold": st.integers(1, 3),
        "timeout_ms": st.sampled_from([0, 1, 3, 10]),
        "half_open_max_calls": st.integers(1, 2),
        "success_threshold": st.integers(1, 2),
        "probe_timeout_ms": st.sampled_from([None, None, 2, 5]),
        "predicate": st.booleans(),
    }
)


def as_kwargs(options):
    kwargs = dict(
        failure_threshold=options["failure_threshold"],
        reset_timeout=options["timeout_ms"] / 1000,
        half_open_max_calls=options["half_open_max_calls"],
        success_threshold=options["success_threshold"],
    )
    if options["probe_timeout_ms"] is not None:
        kwargs["probe_timeout"] = options["probe_timeout_ms"] / 1000
    if options["predicate"]:
        kwargs["success"] = predicate
    return kwargs


# What a name gets when force_open or disable creates it: a plain Registry's defaults.
DEFAULT_OPTIONS = dict(
    failure_threshold=5,
    timeout_ms=30_000,
    half_open_max_calls=1,
    success_threshold=1,
    probe_timeout_ms=None,
    predicate=False,
)


def new_model(options):
    return model.Breaker(
        model.Limits(
            failure_threshold=options["failure_threshold"],
            reset_timeout_ms=options["timeout_ms"],
            half_open_max_calls=options["half_open_max_calls"],
            success_threshold=options["success_threshold"],
            probe_timeout_ms=options["probe_timeout_ms"],
        )
    )


class RegistryMachine(RuleBasedStateMachine):
    permits = Bundle("permits")

    def __init__(self):
        super().__init__()
        self.clock = ManualClock()
        self.registry = Registry(clock=self.clock)
        self.now = 0  # ms
        self.models: dict[str, model.Breaker] = {}
        self.with_predicate: dict[str, bool] = {}  # the options a name was created with
        self.held = {}  # permit id -> (permit, model breaker, ticket)
        self.next_permit = 0

    def model_for(self, name, options):
        if name not in self.models:
            self.models[name] = new_model(options)
            self.with_predicate[name] = options["predicate"]
        return self.models[name]

    # ---------------------------------------------------------------------------------- rules

    @rule(name=st.sampled_from(NAMES), outcome=st.sampled_from(OUTCOMES), options=options_strategy)
    def call(self, name, outcome, options):
        self._call(name, outcome, options)

    @rule(
        ms=st.integers(1, 12),
        name=st.sampled_from(NAMES),
        outcome=st.sampled_from(OUTCOMES),
        options=options_strategy,
    )
    def advance_then_call(self, ms, name, outcome, options):
        # Calls right after the clock moves, before any state() read: the admission itself must
        # notice that an open breaker's timeout ran out.
        self.advance(ms)
        self._call(name, outcome, options)

    def _call(self, name, outcome, options):
        ref = self.model_for(name, options)
        ticket = ref.admit(self.now)
        runs = []

        def fn():
            runs.append(1)
            if outcome == "raise":
                raise Boom()
            if outcome == "base":
                raise Ignored()
            return outcome

        try:
            result = self.registry.call(name, fn, **as_kwargs(options))
        except CircuitOpenError as err:
            assert ticket is None, "rejected, the model admits"
            assert runs == []
            assert err.name == name
            assert err.retry_after == ref.retry_after(self.now)
            return
        except (Boom, Ignored, PredicateError) as err:
            raised = type(err)
        else:
            raised = None
            assert result == outcome
        assert ticket is not None, f"admitted, the model rejects (retry_after {ref.retry_after(self.now)})"
        assert runs == [1]
        recorded, expected_raise = classify(outcome, self.with_predicate[name])
        assert raised is expected_raise
        ref.record(ticket, recorded, self.now)

    @rule(target=permits, name=st.sampled_from(NAMES), options=options_strategy)
    def acquire(self, name, options):
        ref = self.model_for(name, options)
        ticket = ref.admit(self.now)
        permit = self.registry.breaker(name, **as_kwargs(options)).try_acquire()
        if ticket is None:
            assert permit is None, "try_acquire admitted, the model rejects"
            return -1
        assert permit is not None, "try_acquire rejected, the model admits"
        key = self.next_permit
        self.next_permit += 1
        self.held[key] = (permit, ref, ticket)
        return key

    @rule(key=consumes(permits), outcome=st.sampled_from([model.SUCCESS, model.FAILURE, model.IGNORED]))
    def resolve(self, key, outcome):
        if key < 0:
            return
        permit, ref, ticket = self.held.pop(key)
        {model.SUCCESS: permit.success, model.FAILURE: permit.failure, model.IGNORED: permit.ignore}[
            outcome
        ]()
        ref.record(ticket, outcome, self.now)

    @rule(ms=st.integers(0, 12))
    def advance(self, ms):
        self.clock.advance(ms / 1000)
        self.now += ms

    @rule(name=st.sampled_from(NAMES))
    def reset(self, name):
        assert self.registry.reset(name) is None
        if name in self.models:
            self.models[name].set_mode(model.CLOSED)

    @rule(name=st.sampled_from(NAMES), mode=st.sampled_from([model.FORCED_OPEN, model.DISABLED]))
    def manual(self, name, mode):
        # Creates the breaker with the registry's defaults if the name is new.
        ref = self.model_for(name, DEFAULT_OPTIONS)
        switch = self.registry.force_open if mode == model.FORCED_OPEN else self.registry.disable
        assert switch(name) is None
        ref.set_mode(mode)

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name):
        assert self.registry.delete(name) is None
        self.models.pop(name, None)

    # ------------------------------------------------------------------------------ invariants

    @invariant()
    def states_match(self):
        for name in NAMES:
            ref = self.models.get(name)
            expected = State(ref.observe(self.now)) if ref else State.CLOSED
            assert self.registry.state(name) is expected, name
        expected_list = {(n, State(m.observe(self.now))) for n, m in self.models.items()}
        listing = self.registry.list()
        assert len(listing) == len(expected_list)
        assert set(listing) == expected_list

    @invariant()
    def counters_match(self):
        for name, ref in self.models.items():
            assert name in self.registry
            m = self.registry.breaker(name).metrics()
            mode = ref.observe(self.now)
            assert m.state is State(mode)
            assert m.consecutive_failures == (ref.consecutive_failures if mode == model.CLOSED else 0)
            for counter in ("successes", "failures", "ignored", "rejected", "times_opened"):
                assert getattr(m, counter) == getattr(ref, counter), counter
            assert m.calls == ref.calls
            assert m.retry_after == ref.retry_after(self.now)


RegistryMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRegistryMachine = RegistryMachine.TestCase
