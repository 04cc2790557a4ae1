"""The reference model of one breaker, shared by the model-based tests.

``tests/test_stateful.py`` (a hypothesis state machine, one step at a time) and
``tests/test_concurrent_model.py`` (a linearizability search over concurrent schedules) both
compare the extension against this model, so there is one Python oracle to keep in step with the
README, not two.

The model follows the README, not the engine's bit layout: a breaker's whole state is an immutable
``Word`` (a mode, a generation, and the fields that mode needs), and every operation is a pure
function from a word, the configuration and the time (whole milliseconds) to a new word. Words are
tuples, so a search can hash and memoise them; unused fields are always zero, so equal states are
equal words.

- closed: ``failures`` counts consecutive failures; at ``failure_threshold`` the breaker opens;
- open: ``opened_at``; after ``reset_timeout_ms`` it is half-open (an observer turns it, with no
  permit taken; an admission turns it and takes the first permit in the same step);
- half-open: ``in_flight`` permits (at most ``half_open_max_calls``, reserved at admission) and
  ``successes``; ``success_threshold`` probe successes close it, one probe failure reopens it, an
  ignored probe gives its permit back. With ``probe_timeout_ms``, when every permit is taken and
  the newest one (``stamp``) is that old, an admission reclaims them all: a new half-open
  generation whose first permit it takes (probe successes so far are kept, as the engine does);
- forced-open rejects everything, disabled admits everything and records nothing, until a reset;
- every transition, reset, force-open, disable and reclaim moves the generation on, and an outcome
  only counts under the generation its call was admitted in.

Trip policies (issue 11): with ``failure_rate`` or ``slow_call_rate``, a closed word also keeps its
``window``, every counted outcome as ``(finished_at, failed, slow)``. The contract lets the window
forget an outcome anywhere between ``0.9 * window`` and ``1.1 * window`` after it finished, so the
model does not pick one answer there: ``possible_windows`` lists every window the contract allows
(all that must count, plus any newer-first suffix of what may), and ``possible_records`` every word
an outcome may lead to (two when the band, or a success the implementation may sample, leaves the
trip open). ``failure_threshold=None`` turns the consecutive rule off. The open time backs off:
the k-th reopen since the breaker last closed stays open ``min(reset_timeout * backoff**k,
max_reset_timeout)``, drawn within ``[t * (1 - jitter), t]`` (``open_time_range``); the word keeps
the time drawn (``open_for``) and ``reopens`` (k), which closing and every reset set back to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = "closed", "open", "half_open", "forced_open", "disabled"
SUCCESS, FAILURE, IGNORED = "success", "failure", "ignored"


@dataclass(frozen=True)
class Limits:
    """A breaker's numeric options, durations in whole milliseconds (README defaults)."""

    failure_threshold: int | None = 5  # None: no consecutive rule
    reset_timeout_ms: int = 30_000
    half_open_max_calls: int = 1
    success_threshold: int = 1
    probe_timeout_ms: int | None = None
    failure_rate: float | None = None
    slow_call_duration_ms: int | None = None
    slow_call_rate: float | None = None
    window_ms: int = 10_000
    min_calls: int = 10
    backoff: float = 1.0
    max_reset_timeout_ms: int | None = None
    jitter: float = 0.0

    @property
    def has_window(self) -> bool:
        return self.failure_rate is not None or self.slow_call_rate is not None


class Word(NamedTuple):
    mode: str
    generation: int
    failures: int = 0  # closed: consecutive failures
    opened_at: int = 0  # open: when it opened
    in_flight: int = 0  # half-open: permits held
    successes: int = 0  # half-open: probe successes so far
    stamp: int = 0  # half-open with probe_timeout: when the newest permit was handed out
    window: tuple[tuple[int, bool, bool], ...] = ()  # closed with a rate rule: (finished_at, failed, slow)
    reopens: int = 0  # open, half-open: reopens since the breaker last closed (k)
    open_for: int = 0  # open: the open time drawn for this opening, ms


INITIAL = Word(CLOSED, 0)


def _next(word: Word, mode: str, **fields: int) -> Word:
    """A transition: a new generation, so outcomes admitted before it go stale; the window starts
    empty. Open and half-open keep counting reopens; every other mode starts over."""
    if mode == HALF_OPEN:
        fields.setdefault("reopens", word.reopens)
    return Word(mode, word.generation + 1, **fields)


def open_time_ms(limits: Limits, reopens: int) -> int:
    """The open time of the ``reopens``-th reopen since the breaker last closed, before jitter."""
    exponent = limits.backoff**reopens if limits.backoff > 1 else 1.0
    t = limits.reset_timeout_ms * exponent if math.isfinite(exponent) else math.inf
    if limits.max_reset_timeout_ms is not None:
        t = min(t, limits.max_reset_timeout_ms)
    return round(t) if math.isfinite(t) else 2**62


def open_time_range(limits: Limits, reopens: int) -> tuple[int, int]:
    """Whole milliseconds the drawn open time may be: ``[t * (1 - jitter), t]``, give or take the
    rounding to a millisecond."""
    t = open_time_ms(limits, reopens)
    if limits.jitter == 0:
        return t, t
    return math.floor(t * (1 - limits.jitter)) - 1, t + 1


def _open(limits: Limits, word: Word, now: int, reopens: int) -> Word:
    """Open (a trip from closed, ``reopens=0``, or a probe failure): the nominal open time; a test
    with jitter replaces ``open_for`` by the time the breaker reports it drew."""
    return _next(word, OPEN, opened_at=now, reopens=reopens, open_for=open_time_ms(limits, reopens))


# --- the window --------------------------------------------------------------------------------------


def _age_class(limits: Limits, age: int) -> str:
    """ "in" (must count), "out" (must not) or "maybe", for an outcome that finished ``age`` ms ago."""
    if 10 * age < 9 * limits.window_ms:
        return "in"
    if 10 * age > 11 * limits.window_ms:
        return "out"
    return "maybe"


def possible_windows(limits: Limits, window: tuple, now: int) -> list[tuple[int, int, int]]:
    """Every ``(calls, failures, slow)`` the contract allows the window to hold at ``now``: what
    must count, plus any newer-first run of what may (a window forgets its oldest outcomes first)."""
    sure = [e for e in window if _age_class(limits, now - e[0]) == "in"]
    maybe = sorted((e for e in window if _age_class(limits, now - e[0]) == "maybe"), key=lambda e: -e[0])
    out = []
    for keep in range(len(maybe) + 1):
        events = sure + maybe[:keep]
        out.append((len(events), sum(e[1] for e in events), sum(e[2] for e in events)))
    return sorted(set(out))


def rate_rule_met(limits: Limits, counts: tuple[int, int, int]) -> bool:
    """Whether a window holding ``(calls, failures, slow)`` trips a rate rule: ``failures / calls >=
    failure_rate`` or ``slow / calls >= slow_call_rate``, with at least ``min_calls`` calls."""
    calls, failures, slow = counts
    if calls < limits.min_calls or calls == 0:
        return False
    if limits.failure_rate is not None and failures / calls >= limits.failure_rate:
        return True
    return limits.slow_call_rate is not None and slow / calls >= limits.slow_call_rate


def is_slow(limits: Limits, duration_ms: int) -> bool:
    """Slow: strictly longer than ``slow_call_duration`` (whatever the outcome)."""
    return limits.slow_call_duration_ms is not None and duration_ms > limits.slow_call_duration_ms


def _prune(limits: Limits, window: tuple, now: int) -> tuple:
    return tuple(e for e in window if _age_class(limits, now - e[0]) != "out")


def _permit_stamp(limits: Limits, now: int) -> int:
    return now if limits.probe_timeout_ms is not None else 0


def observe(limits: Limits, word: Word, now: int) -> Word:
    """The word a reader sees at ``now``: open past its timeout is half-open with no permit out."""
    if word.mode == OPEN and now - word.opened_at >= word.open_for:
        return _next(word, HALF_OPEN)
    return word


def admit(limits: Limits, word: Word, now: int) -> tuple[Word, int | None]:
    """-> (word after, the generation the call is admitted under, or None when rejected)."""
    mode = word.mode
    if mode in (CLOSED, DISABLED):
        return word, word.generation
    if mode == FORCED_OPEN:
        return word, None
    if mode == OPEN:
        if now - word.opened_at < word.open_for:
            return word, None
        word = _next(word, HALF_OPEN, in_flight=1, stamp=_permit_stamp(limits, now))
        return word, word.generation
    if word.in_flight < limits.half_open_max_calls:
        word = word._replace(in_flight=word.in_flight + 1, stamp=_permit_stamp(limits, now))
        return word, word.generation
    timeout = limits.probe_timeout_ms
    if timeout is not None and now - word.stamp >= timeout:
        # Every permit is taken and the newest is probe_timeout old: reclaim them all.
        word = _next(word, HALF_OPEN, in_flight=1, successes=word.successes, stamp=now)
        return word, word.generation
    return word, None


def possible_records(
    limits: Limits,
    word: Word,
    ticket: int,
    outcome: str,
    now: int,
    duration_ms: int = 0,
    success_may_defer: bool = False,
) -> list[Word]:
    """Every word the contract allows after an outcome of a call admitted under ``ticket`` that took
    ``duration_ms``: one, or two (no trip first, then the trip) where the window's tolerance band
    leaves a rate trip open, or where the outcome is a fast success that the implementation may
    sample (``success_may_defer``: the test decides how many such successes the documented bound
    allows)."""
    if ticket != word.generation:
        return [word]  # stale: admitted before a transition
    mode = word.mode
    if mode == CLOSED:
        if outcome == IGNORED:
            return [word]
        failed = outcome == FAILURE
        if failed and limits.failure_threshold is not None and word.failures + 1 >= limits.failure_threshold:
            return [_open(limits, word, now, 0)]
        consecutive = word.failures + 1 if failed else 0
        if not limits.has_window:
            return [word._replace(failures=consecutive)]
        slow = is_slow(limits, duration_ms)
        window = _prune(limits, word.window, now) + ((now, failed, slow),)
        stays = word._replace(failures=consecutive, window=window)
        verdicts = {rate_rule_met(limits, counts) for counts in possible_windows(limits, window, now)}
        if verdicts == {False}:
            return [stays]
        tripped = _open(limits, word, now, 0)
        if verdicts == {True} and not (success_may_defer and not failed and not slow):
            return [tripped]
        return [stays, tripped]
    if mode == HALF_OPEN:
        if outcome == SUCCESS:
            if word.successes + 1 >= limits.success_threshold:
                return [_next(word, CLOSED)]
            return [word._replace(in_flight=max(word.in_flight - 1, 0), successes=word.successes + 1)]
        if outcome == FAILURE:
            return [_open(limits, word, now, word.reopens + 1)]
        return [word._replace(in_flight=max(word.in_flight - 1, 0))]
    return [word]  # disabled records nothing; open and forced-open admit nothing


def record(limits: Limits, word: Word, ticket: int, outcome: str, now: int, duration_ms: int = 0) -> Word:
    """The word after an outcome (SUCCESS, FAILURE or IGNORED) of a call admitted under ``ticket``;
    where the contract leaves a rate trip open, the word without the trip."""
    return possible_records(limits, word, ticket, outcome, now, duration_ms)[0]


def window_counts(limits: Limits, word: Word, now: int) -> list[tuple[int, int, int]]:
    """What ``metrics()`` may report as ``(window_calls, window_failures, window_slow)`` at ``now``."""
    if word.mode != CLOSED:
        return [(0, 0, 0)]
    return possible_windows(limits, word.window, now)


def set_mode(word: Word, mode: str) -> Word:
    """reset (CLOSED), force_open (FORCED_OPEN), disable (DISABLED): a new generation, permits dropped."""
    return _next(word, mode)


def retry_after_ms(limits: Limits, word: Word, now: int) -> int:
    """Milliseconds until an open breaker goes half-open; 0 in every other mode."""
    if word.mode != OPEN:
        return 0
    return max(word.open_for - (now - word.opened_at), 0)


def opened(before: Word, after: Word) -> int:
    """1 if going from ``before`` to ``after`` is a trip to OPEN (what ``times_opened`` counts)."""
    return int(after.mode == OPEN and before.mode != OPEN)


@dataclass
class Breaker:
    """One breaker with its counters, for tests that step it one operation at a time."""

    limits: Limits
    word: Word = INITIAL
    successes: int = 0
    failures: int = 0
    ignored: int = 0
    rejected: int = 0
    times_opened: int = 0
    slow_calls: int = 0

    def observe(self, now: int) -> str:
        self.word = observe(self.limits, self.word, now)
        return self.word.mode

    def admit(self, now: int) -> int | None:
        """The generation the call is admitted under, or None (counted as rejected)."""
        self.word, ticket = admit(self.limits, self.word, now)
        if ticket is None:
            self.rejected += 1
        return ticket

    def record(self, ticket: int, outcome: str, now: int, duration_ms: int = 0) -> None:
        counter = {SUCCESS: "successes", FAILURE: "failures", IGNORED: "ignored"}[outcome]
        setattr(self, counter, getattr(self, counter) + 1)
        if outcome != IGNORED and is_slow(self.limits, duration_ms):
            self.slow_calls += 1
        before, self.word = self.word, record(self.limits, self.word, ticket, outcome, now, duration_ms)
        self.times_opened += opened(before, self.word)

    def settle(self, before: Word, after: Word) -> None:
        """Follows the implementation where the contract allowed more than one word."""
        self.word = after
        self.times_opened += opened(before, after)

    def set_mode(self, mode: str) -> None:
        self.word = set_mode(self.word, mode)

    def retry_after(self, now: int) -> float:
        """Seconds, as ``Metrics.retry_after`` and ``CircuitOpenError.retry_after`` report them."""
        self.observe(now)
        return retry_after_ms(self.limits, self.word, now) / 1000

    @property
    def calls(self) -> int:
        return self.successes + self.failures + self.ignored

    @property
    def consecutive_failures(self) -> int:
        return self.word.failures
