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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = "closed", "open", "half_open", "forced_open", "disabled"
SUCCESS, FAILURE, IGNORED = "success", "failure", "ignored"


@dataclass(frozen=True)
class Limits:
    """A breaker's numeric options, durations in whole milliseconds (README defaults)."""

    failure_threshold: int = 5
    reset_timeout_ms: int = 30_000
    half_open_max_calls: int = 1
    success_threshold: int = 1
    probe_timeout_ms: int | None = None


class Word(NamedTuple):
    mode: str
    generation: int
    failures: int = 0  # closed: consecutive failures
    opened_at: int = 0  # open: when it opened
    in_flight: int = 0  # half-open: permits held
    successes: int = 0  # half-open: probe successes so far
    stamp: int = 0  # half-open with probe_timeout: when the newest permit was handed out


INITIAL = Word(CLOSED, 0)


def _next(word: Word, mode: str, **fields: int) -> Word:
    """A transition: a new generation, so outcomes admitted before it go stale."""
    return Word(mode, word.generation + 1, **fields)


def _permit_stamp(limits: Limits, now: int) -> int:
    return now if limits.probe_timeout_ms is not None else 0


def observe(limits: Limits, word: Word, now: int) -> Word:
    """The word a reader sees at ``now``: open past its timeout is half-open with no permit out."""
    if word.mode == OPEN and now - word.opened_at >= limits.reset_timeout_ms:
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
        if now - word.opened_at < limits.reset_timeout_ms:
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


def record(limits: Limits, word: Word, ticket: int, outcome: str, now: int) -> Word:
    """The word after an outcome (SUCCESS, FAILURE or IGNORED) of a call admitted under ``ticket``."""
    if ticket != word.generation:
        return word  # stale: admitted before a transition
    mode = word.mode
    if mode == CLOSED:
        if outcome == SUCCESS:
            return word._replace(failures=0)
        if outcome == FAILURE:
            if word.failures + 1 >= limits.failure_threshold:
                return _next(word, OPEN, opened_at=now)
            return word._replace(failures=word.failures + 1)
        return word
    if mode == HALF_OPEN:
        if outcome == SUCCESS:
            if word.successes + 1 >= limits.success_threshold:
                return _next(word, CLOSED)
            return word._replace(in_flight=max(word.in_flight - 1, 0), successes=word.successes + 1)
        if outcome == FAILURE:
            return _next(word, OPEN, opened_at=now)
        return word._replace(in_flight=max(word.in_flight - 1, 0))
    return word  # disabled records nothing; open and forced-open admit nothing


def set_mode(word: Word, mode: str) -> Word:
    """reset (CLOSED), force_open (FORCED_OPEN), disable (DISABLED): a new generation, permits dropped."""
    return _next(word, mode)


def retry_after_ms(limits: Limits, word: Word, now: int) -> int:
    """Milliseconds until an open breaker goes half-open; 0 in every other mode."""
    if word.mode != OPEN:
        return 0
    return max(limits.reset_timeout_ms - (now - word.opened_at), 0)


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

    def observe(self, now: int) -> str:
        self.word = observe(self.limits, self.word, now)
        return self.word.mode

    def admit(self, now: int) -> int | None:
        """The generation the call is admitted under, or None (counted as rejected)."""
        self.word, ticket = admit(self.limits, self.word, now)
        if ticket is None:
            self.rejected += 1
        return ticket

    def record(self, ticket: int, outcome: str, now: int) -> None:
        counter = {SUCCESS: "successes", FAILURE: "failures", IGNORED: "ignored"}[outcome]
        setattr(self, counter, getattr(self, counter) + 1)
        before, self.word = self.word, record(self.limits, self.word, ticket, outcome, now)
        self.times_opened += opened(before, self.word)

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
