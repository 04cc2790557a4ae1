"""Transitions are logged on the `panelboard` logger: one record each, never one per call."""

from __future__ import annotations

import logging
import sys
import uuid

import panelboard
from panelboard import Registry, State


def transitions(caplog):
    return [r for r in caplog.records if r.name == "panelboard" and hasattr(r, "breaker")]


def test_one_record_per_transition_warning_when_opening(registry, clock, caplog):
    b = registry.breaker("svc", failure_threshold=2, reset_timeout=1.0)
    with caplog.at_level(logging.INFO, logger="panelboard"):
        for _ in range(100):
            b.call(lambda: "ok")  # calls that change nothing log nothing
        for _ in range(2):
            b.try_acquire().failure()  # closed -> open
        assert b.try_acquire() is None  # a rejection is not a transition
        clock.advance(1.0)
        b.try_acquire().failure()  # open -> half_open -> open
        clock.advance(1.0)
        b.try_acquire().success()  # open -> half_open -> closed
        registry.force_open("svc")
        registry.disable("svc")
        registry.reset("svc")
    records = transitions(caplog)
    seen = [(r.breaker, r.old, r.new, r.levelno) for r in records]
    W, I = logging.WARNING, logging.INFO
    assert seen == [
        ("svc", State.CLOSED, State.OPEN, W),
        ("svc", State.OPEN, State.HALF_OPEN, I),
        ("svc", State.HALF_OPEN, State.OPEN, W),
        ("svc", State.OPEN, State.HALF_OPEN, I),
        ("svc", State.HALF_OPEN, State.CLOSED, I),
        ("svc", State.CLOSED, State.FORCED_OPEN, W),
        ("svc", State.FORCED_OPEN, State.DISABLED, I),
        ("svc", State.DISABLED, State.CLOSED, I),
    ]
    assert records[0].getMessage() == "circuit breaker 'svc': closed -> open"


def test_logged_with_listeners_too_and_for_the_default_registry(caplog):
    name = f"log-{uuid.uuid4().hex}"
    heard = []
    registry = Registry()

    @registry.on_state_change
    def listener(n, old, new):
        heard.append((n, old, new))

    try:
        with caplog.at_level(logging.INFO, logger="panelboard"):
            registry.force_open("x")
            panelboard.force_open(name)
            panelboard.reset(name)
    finally:
        panelboard.delete(name)
        registry.remove_listener(listener)
    assert heard == [("x", State.CLOSED, State.FORCED_OPEN)]
    assert [(r.breaker, r.new) for r in transitions(caplog)] == [
        ("x", State.FORCED_OPEN),
        (name, State.FORCED_OPEN),
        (name, State.CLOSED),
    ]


def test_a_silenced_logger_gets_no_records(registry, caplog):
    with caplog.at_level(logging.ERROR, logger="panelboard"):
        registry.force_open("quiet")
        registry.reset("quiet")
    assert transitions(caplog) == []


def test_a_failing_handler_never_reaches_the_caller(registry, monkeypatch):
    class Broken(logging.Handler):
        def emit(self, record):
            raise RuntimeError("handler bug")

        def handleError(self, record):
            raise  # noqa: PLE0704 - re-raise what emit raised

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    logger = logging.getLogger("panelboard")
    handler = Broken()
    logger.addHandler(handler)
    try:
        registry.force_open("loud")  # no exception here
    finally:
        logger.removeHandler(handler)
    assert registry.state("loud") is State.FORCED_OPEN
    assert [type(u.exc_value) for u in unraisable] == [RuntimeError]
