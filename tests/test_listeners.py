"""State-change listeners (issue 3): ``registry.on_state_change(listener)`` (returns the listener, so
usable as a decorator) and ``registry.remove_listener(listener)``. ``listener(name, old, new)`` runs
exactly once per transition, on the thread that made it, after it and outside every lock (so it may
call the registry); its exceptions are logged on the ``panelboard`` logger and never reach the
caller; the lazy open -> half-open change is reported when it is first observed."""

from __future__ import annotations

import logging
import textwrap
import threading

import pytest
from helpers import Boom, fail, run_python, run_threads
from panelboard import Registry, State


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, State, State]] = []
        self.threads: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, name, old, new):
        with self.lock:
            self.events.append((name, old, new))
            self.threads.append(threading.get_ident())


@pytest.fixture
def rec(registry) -> Recorder:
    recorder = Recorder()
    assert registry.on_state_change(recorder) is recorder
    return recorder


def test_every_transition_is_reported_once_in_order(registry, clock, rec):
    b = registry.breaker("svc", failure_threshold=2, reset_timeout=5.0)
    for _ in range(2):
        with pytest.raises(Boom):
            b.call(fail)
    clock.advance(5.0)
    with pytest.raises(Boom):
        b.call(fail)  # the probe fails: half_open -> open
    clock.advance(5.0)
    b.call(lambda: None)  # the probe succeeds: half_open -> closed
    registry.force_open("svc")
    registry.disable("svc")
    registry.reset("svc")
    assert rec.events == [
        ("svc", State.CLOSED, State.OPEN),
        ("svc", State.OPEN, State.HALF_OPEN),
        ("svc", State.HALF_OPEN, State.OPEN),
        ("svc", State.OPEN, State.HALF_OPEN),
        ("svc", State.HALF_OPEN, State.CLOSED),
        ("svc", State.CLOSED, State.FORCED_OPEN),
        ("svc", State.FORCED_OPEN, State.DISABLED),
        ("svc", State.DISABLED, State.CLOSED),
    ]
    assert all(type(name) is str for name, _, _ in rec.events)


def test_no_event_without_a_change_of_state(registry, rec):
    b = registry.breaker("svc", failure_threshold=3)
    b.call(lambda: None)
    with pytest.raises(Boom):
        b.call(fail)
    b.call(lambda: None)
    registry.reset("svc")  # closed -> closed
    registry.reset("unknown")
    assert rec.events == []


def test_lazy_open_to_half_open_is_reported_when_first_observed(registry, clock, rec):
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=5.0)
    with pytest.raises(Boom):
        b.call(fail)
    rec.events.clear()
    clock.advance(60.0)
    assert rec.events == [], "nothing is reported until someone looks"
    assert registry.state("svc") is State.HALF_OPEN
    assert rec.events == [("svc", State.OPEN, State.HALF_OPEN)]
    # Later observations report nothing more.
    assert b.state is State.HALF_OPEN
    registry.list()
    registry.snapshot()
    b.metrics()
    assert len(rec.events) == 1


@pytest.mark.parametrize(
    "observe", ["state", "handle_state", "list", "snapshot", "metrics", "try_acquire", "call"]
)
def test_each_way_of_observing_reports_the_lazy_change(registry, clock, rec, observe):
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=5.0)
    with pytest.raises(Boom):
        b.call(fail)
    clock.advance(5.0)
    rec.events.clear()
    {
        "state": lambda: registry.state("svc"),
        "handle_state": lambda: b.state,
        "list": registry.list,
        "snapshot": registry.snapshot,
        "metrics": b.metrics,
        "try_acquire": lambda: b.try_acquire(),
        "call": lambda: b.call(lambda: None),
    }[observe]()
    assert rec.events[0] == ("svc", State.OPEN, State.HALF_OPEN)
    assert rec.events.count(("svc", State.OPEN, State.HALF_OPEN)) == 1


def test_listener_runs_after_the_transition(registry, rec):
    seen = []
    registry.on_state_change(lambda name, old, new: seen.append((registry.state(name), new)))
    b = registry.breaker("svc", failure_threshold=1)
    with pytest.raises(Boom):
        b.call(fail)
    assert seen == [(State.OPEN, State.OPEN)]


def test_listener_runs_on_the_thread_that_made_the_transition(registry, rec):
    b = registry.breaker("svc", failure_threshold=1)
    idents = []

    def trip(_):
        idents.append(threading.get_ident())
        with pytest.raises(Boom):
            b.call(fail)

    run_threads(trip, n=1)
    assert rec.events == [("svc", State.CLOSED, State.OPEN)]
    assert rec.threads == idents
    assert idents[0] != threading.get_ident()


def test_listener_exactly_once_when_16_threads_race_a_trip(registry, rec):
    """16 threads fail at once against failure_threshold=16: exactly one closed -> open event, on
    one of the worker threads, and every later failure is a rejection or a stale outcome."""
    for round_ in range(20):
        name = f"svc-{round_}"
        b = registry.breaker(name, failure_threshold=16)
        barrier = threading.Barrier(16, timeout=10)
        workers = set()

        def work(i):
            workers.add(threading.get_ident())
            barrier.wait()
            with pytest.raises(Boom):
                b.call(fail)

        run_threads(work)
        events = [e for e in rec.events if e[0] == name]
        assert events == [(name, State.CLOSED, State.OPEN)], f"round {round_}"
        thread = rec.threads[rec.events.index(events[0])]
        assert thread in workers


def test_listener_exactly_once_when_16_threads_race_other_transitions(registry, clock, rec):
    """16 threads race the lazy open -> half-open observation, then a half-open storm of probes
    (one admitted; its success closes the breaker): one event per transition."""
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=1.0)
    for round_ in range(10):
        with pytest.raises(Boom):
            b.call(fail)
        clock.advance(1.0)
        rec.events.clear()
        barrier = threading.Barrier(16, timeout=10)
        go = threading.Barrier(16, timeout=10)

        def work(i):
            barrier.wait()
            b.state  # noqa: B018 - observing is what reports open -> half-open
            go.wait()
            p = b.try_acquire()
            if p is not None:
                p.success()

        run_threads(work)
        assert rec.events == [
            ("svc", State.OPEN, State.HALF_OPEN),
            ("svc", State.HALF_OPEN, State.CLOSED),
        ], f"round {round_}"


def test_listener_exactly_once_when_16_threads_race_force_open_and_reset(registry, rec):
    registry.breaker("svc")
    barrier = threading.Barrier(16, timeout=10)

    def work(i):
        barrier.wait()
        registry.force_open("svc")

    run_threads(work)
    assert rec.events == [("svc", State.CLOSED, State.FORCED_OPEN)]


def test_listener_may_call_the_registry(registry, clock):
    b = registry.breaker("svc", failure_threshold=1, reset_timeout=1.0)
    seen = []

    def reentrant(name, old, new):
        seen.append((name, new, registry.state(name)))
        registry.list()
        registry.snapshot()
        registry.breaker("other").call(lambda: None)
        registry.call(name + "-side", lambda: None)
        if new is State.OPEN:
            registry.reset(name)  # a transition from inside a listener
        if name == "svc" and new is State.CLOSED:
            registry.delete("other")

    registry.on_state_change(reentrant)

    def trip(_):
        with pytest.raises(Boom):
            b.call(fail)

    run_threads(trip, n=1)  # joined with a timeout: a deadlock fails instead of hanging
    assert ("svc", State.OPEN, State.OPEN) in seen
    assert ("svc", State.CLOSED, State.CLOSED) in seen
    assert b.state is State.CLOSED, "the listener reset it"
    assert "other" not in registry


def test_listener_may_register_and_remove_listeners(registry):
    b = registry.breaker("svc", failure_threshold=1)
    late = Recorder()

    def adder(name, old, new):
        registry.on_state_change(late)
        registry.remove_listener(adder)

    registry.on_state_change(adder)
    with pytest.raises(Boom):
        b.call(fail)
    registry.reset("svc")
    assert late.events == [("svc", State.OPEN, State.CLOSED)]


def test_listener_exception_is_logged_and_never_reaches_the_caller(registry, rec, caplog):
    def broken(name, old, new):
        raise ValueError("listener bug")

    registry.on_state_change(broken)
    after = Recorder()
    registry.on_state_change(after)
    b = registry.breaker("svc", failure_threshold=1)
    with caplog.at_level(logging.ERROR, logger="panelboard"):
        with pytest.raises(Boom):  # the caller sees its own exception only
            b.call(fail)
        registry.reset("svc")  # no exception at all
    errors = [r for r in caplog.records if r.name == "panelboard"]
    assert len(errors) == 2
    for record in errors:
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ValueError)
        assert "listener bug" in str(record.exc_info[1])
    assert "broken" in errors[0].getMessage()
    # Listeners before and after the broken one still ran.
    assert (
        rec.events
        == after.events
        == [
            ("svc", State.CLOSED, State.OPEN),
            ("svc", State.OPEN, State.CLOSED),
        ]
    )


def test_listener_base_exception_is_logged_too(registry, caplog):
    class Fatal(BaseException):
        pass

    def broken(name, old, new):
        raise Fatal()

    registry.on_state_change(broken)
    with caplog.at_level(logging.ERROR, logger="panelboard"):
        registry.force_open("svc")
    assert registry.state("svc") is State.FORCED_OPEN
    assert any(isinstance(r.exc_info[1], Fatal) for r in caplog.records if r.exc_info)


def test_on_state_change_as_a_decorator(registry):
    seen = []

    @registry.on_state_change
    def listener(name, old, new):
        seen.append(new)

    assert callable(listener) and listener.__name__ == "listener"
    registry.force_open("svc")
    assert seen == [State.FORCED_OPEN]


def test_remove_listener(registry, rec):
    other = Recorder()
    registry.on_state_change(other)
    registry.force_open("svc")
    registry.remove_listener(rec)
    registry.reset("svc")
    assert len(rec.events) == 1
    assert len(other.events) == 2
    with pytest.raises(ValueError):
        registry.remove_listener(rec)
    with pytest.raises(ValueError):
        registry.remove_listener(lambda *a: None)


def test_remove_listener_accepts_the_same_bound_method(registry):
    class Watcher:
        def __init__(self) -> None:
            self.seen = []

        def on_change(self, name, old, new):
            self.seen.append(new)

    w = Watcher()
    registry.on_state_change(w.on_change)
    registry.remove_listener(w.on_change)  # equal (==) to the registered one, not identical
    registry.force_open("svc")
    assert w.seen == []


def test_a_listener_added_twice_runs_twice_until_removed_twice(registry):
    rec = Recorder()
    registry.on_state_change(rec)
    registry.on_state_change(rec)
    registry.force_open("svc")
    assert len(rec.events) == 2
    registry.remove_listener(rec)
    registry.reset("svc")
    assert len(rec.events) == 3
    registry.remove_listener(rec)
    registry.force_open("svc")
    assert len(rec.events) == 3


def test_on_state_change_rejects_a_non_callable(registry):
    with pytest.raises(TypeError):
        registry.on_state_change(42)


def test_listeners_belong_to_their_registry(clock):
    r1, r2 = Registry(clock=clock), Registry(clock=clock)
    rec = Recorder()
    r1.on_state_change(rec)
    r2.force_open("svc")
    assert rec.events == []
    r1.force_open("svc")
    assert rec.events == [("svc", State.CLOSED, State.FORCED_OPEN)]


def test_listener_is_called_for_a_deleted_breakers_handle(registry, rec):
    # The handle's breaker keeps its registry's listeners after delete.
    b = registry.breaker("svc", failure_threshold=1)
    registry.delete("svc")
    with pytest.raises(Boom):
        b.call(fail)
    assert rec.events == [("svc", State.CLOSED, State.OPEN)]


def test_adding_and_removing_listeners_while_transitions_happen(registry):
    """Listeners added and removed from 8 threads while 8 others make transitions: nothing is lost
    for a listener that stays registered the whole time, and nothing hangs."""
    steady = Recorder()
    registry.on_state_change(steady)
    barrier = threading.Barrier(16, timeout=10)
    flips = 200

    def work(i):
        barrier.wait()
        if i < 8:
            for _ in range(flips):
                registry.force_open(f"svc-{i}")
                registry.reset(f"svc-{i}")
        else:
            for _ in range(100):
                extra = Recorder()
                registry.on_state_change(extra)
                registry.remove_listener(extra)

    run_threads(work)
    assert len(steady.events) == 8 * flips * 2


def test_default_registry_listeners(name):
    import panelboard

    seen = []

    @panelboard.on_state_change
    def listener(n, old, new):
        if n == name:
            seen.append((old, new))

    try:
        panelboard.force_open(name)
    finally:
        panelboard.remove_listener(listener)
    panelboard.reset(name)
    assert seen == [(State.CLOSED, State.FORCED_OPEN)]


def test_logging_configured_after_the_import_still_shows_listener_errors():
    # logging.config.dictConfig() disables every logger that exists when it runs (its default
    # disable_existing_loggers=True), so importing panelboard must not create its logger.
    script = textwrap.dedent(
        """
        import logging.config, sys
        import panelboard

        logging.config.dictConfig({
            "version": 1,
            "handlers": {"out": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}},
            "root": {"handlers": ["out"], "level": "ERROR"},
        })
        registry = panelboard.Registry()

        @registry.on_state_change
        def broken(name, old, new):
            raise RuntimeError("listener bug")

        registry.force_open("svc")
        """
    )
    proc = run_python("-c", script, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "state-change listener" in proc.stdout and "listener bug" in proc.stdout, proc.stdout
