"""Model-based test (issue 2): a hypothesis state machine drives a real ``Registry`` with a
``ManualClock`` and a small pure-Python reference model of the breaker with the same random
sequence of calls (success, falsy result, exception, raising predicate, ignored BaseException),
held permits resolved later, clock advances, resets and deletes, and compares them after every
step: ``state()`` of every name, ``list()``, and each live breaker's counters.

The model follows the issue text, not the implementation: closed / open / half-open, consecutive
failures, ``opened_at``, probes in flight, and a generation that every transition (and reset)
moves on, so that outcomes admitted in an older generation change nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

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


class Boom(Exception):
    pass


class PredicateError(Exception):
    pass


class Ignored(BaseException):
    pass


def predicate(result):
    if result == "explode":
        raise PredicateError(result)
    return result != "bad"


OUTCOMES = ["ok", "bad", "explode", "raise", "base"]


@dataclass
class Ticket:
    generation: int
    probe: bool


@dataclass
class ModelBreaker:
    threshold: int
    timeout_ms: int
    max_probes: int
    has_predicate: bool
    mode: str = "closed"
    failures: int = 0
    opened_at: int = 0
    in_flight: int = 0
    generation: int = 0
    counts: dict = field(default_factory=lambda: dict(successes=0, failures=0, ignored=0, rejected=0))

    def _transition(self, mode):
        self.mode = mode
        self.generation += 1
        self.failures = 0
        self.in_flight = 0

    def observe(self, now):
        """The state a reader sees now: open past its timeout is half-open with no probe out."""
        if self.mode == "open" and now - self.opened_at >= self.timeout_ms:
            self._transition("half_open")
        return self.mode

    def retry_after(self, now):
        if self.observe(now) != "open":
            return 0.0
        return (self.timeout_ms - (now - self.opened_at)) / 1000

    def admit(self, now):
        """A ticket, or the retry_after of the rejection."""
        mode = self.observe(now)
        if mode == "closed":
            return Ticket(self.generation, probe=False)
        if mode == "half_open" and self.in_flight < self.max_probes:
            self.in_flight += 1
            return Ticket(self.generation, probe=True)
        self.counts["rejected"] += 1
        return self.retry_after(now)

    def record(self, ticket, outcome, now):
        self.counts[{"success": "successes", "failure": "failures", "ignored": "ignored"}[outcome]] += 1
        if ticket.generation != self.generation:
            return  # stale
        if self.mode == "closed":
            if outcome == "success":
                self.failures = 0
            elif outcome == "failure":
                self.failures += 1
                if self.failures >= self.threshold:
                    self._transition("open")
                    self.opened_at = now
        elif self.mode == "half_open":
            if outcome == "success":
                self._transition("closed")
            elif outcome == "failure":
                self._transition("open")
                self.opened_at = now
            else:
                self.in_flight -= 1
        else:  # pragma: no cover - no ticket of an open generation exists
            raise AssertionError("outcome recorded against an open breaker's generation")

    def reset(self):
        self._transition("closed")

    def classify(self, outcome):
        """What a call whose fn behaves as `outcome` records, and what the caller sees."""
        if outcome == "raise":
            return "failure", Boom
        if outcome == "base":
            return "ignored", Ignored
        if not self.has_predicate or outcome == "ok":
            return "success", None
        if outcome == "bad":
            return "failure", None
        return "failure", PredicateError  # "explode": the predicate raises


options_strategy = st.fixed_dictionaries(
    {
        "failure_threshold": st.integers(1, 3),
        "timeout_ms": st.sampled_from([0, 1, 3, 10]),
        "half_open_max_calls": st.integers(1, 2),
        "predicate": st.booleans(),
    }
)


def as_kwargs(options):
    kwargs = dict(
        failure_threshold=options["failure_threshold"],
        reset_timeout=options["timeout_ms"] / 1000,
        half_open_max_calls=options["half_open_max_calls"],
    )
    if options["predicate"]:
        kwargs["success"] = predicate
    return kwargs


def new_model(options):
    return ModelBreaker(
        threshold=options["failure_threshold"],
        timeout_ms=options["timeout_ms"],
        max_probes=options["half_open_max_calls"],
        has_predicate=options["predicate"],
    )


MODE_TO_STATE = {"closed": State.CLOSED, "open": State.OPEN, "half_open": State.HALF_OPEN}


class RegistryMachine(RuleBasedStateMachine):
    permits = Bundle("permits")

    def __init__(self):
        super().__init__()
        self.clock = ManualClock()
        self.registry = Registry(clock=self.clock)
        self.now = 0  # ms
        self.models: dict[str, ModelBreaker] = {}
        self.held = {}  # permit id -> (permit, model breaker, ticket)
        self.next_permit = 0

    def model_for(self, name, options):
        if name not in self.models:
            self.models[name] = new_model(options)
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
        model = self.model_for(name, options)
        admission = model.admit(self.now)
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
            assert not isinstance(admission, Ticket), "rejected, the model admits"
            assert runs == []
            assert err.name == name
            assert err.retry_after == admission
            return
        except (Boom, Ignored, PredicateError) as err:
            raised = type(err)
        else:
            raised = None
            assert result == outcome
        assert isinstance(admission, Ticket), f"admitted, the model rejects ({admission})"
        assert runs == [1]
        recorded, expected_raise = model.classify(outcome)
        assert raised is expected_raise
        model.record(admission, recorded, self.now)

    @rule(target=permits, name=st.sampled_from(NAMES), options=options_strategy)
    def acquire(self, name, options):
        model = self.model_for(name, options)
        admission = model.admit(self.now)
        permit = self.registry.breaker(name, **as_kwargs(options)).try_acquire()
        if not isinstance(admission, Ticket):
            assert permit is None, "try_acquire admitted, the model rejects"
            return -1
        assert permit is not None, "try_acquire rejected, the model admits"
        key = self.next_permit
        self.next_permit += 1
        self.held[key] = (permit, model, admission)
        return key

    @rule(key=consumes(permits), outcome=st.sampled_from(["success", "failure", "ignored"]))
    def resolve(self, key, outcome):
        if key < 0:
            return
        permit, model, ticket = self.held.pop(key)
        {"success": permit.success, "failure": permit.failure, "ignored": permit.ignore}[outcome]()
        model.record(ticket, outcome, self.now)

    @rule(ms=st.integers(0, 12))
    def advance(self, ms):
        self.clock.advance(ms / 1000)
        self.now += ms

    @rule(name=st.sampled_from(NAMES))
    def reset(self, name):
        assert self.registry.reset(name) is None
        if name in self.models:
            self.models[name].reset()

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name):
        assert self.registry.delete(name) is None
        self.models.pop(name, None)

    # ------------------------------------------------------------------------------ invariants

    @invariant()
    def states_match(self):
        for name in NAMES:
            model = self.models.get(name)
            expected = MODE_TO_STATE[model.observe(self.now)] if model else State.CLOSED
            assert self.registry.state(name) is expected, name
        expected_list = {(n, MODE_TO_STATE[m.observe(self.now)]) for n, m in self.models.items()}
        listing = self.registry.list()
        assert len(listing) == len(expected_list)
        assert set(listing) == expected_list

    @invariant()
    def counters_match(self):
        for name, model in self.models.items():
            assert name in self.registry
            m = self.registry.breaker(name).metrics()
            mode = model.observe(self.now)
            assert m.state is MODE_TO_STATE[mode]
            assert m.consecutive_failures == (model.failures if mode == "closed" else 0)
            for counter, value in model.counts.items():
                assert getattr(m, counter) == value, counter
            assert m.calls == model.counts["successes"] + model.counts["failures"] + model.counts["ignored"]
            assert m.retry_after == model.retry_after(self.now)


RegistryMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRegistryMachine = RegistryMachine.TestCase
