"""Every entry point works the same on a shared registry (issue 12): what this process does through
it is seen by another process that opened the same table (a forked ``helpers.Worker``), and what the
other process does is seen here."""

from __future__ import annotations

import asyncio
import os

import pytest
from helpers import Boom, Worker, afail, fail, names_of, shared_table
from panelboard import CircuitOpenError, Registry, State

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX shared memory and fork")

OPTIONS = dict(failure_threshold=2, reset_timeout=600.0)


@pytest.fixture(scope="module")
def shared():
    """(registry here, a worker process with the same table open)."""
    with shared_table() as table:
        registry = Registry(shared=table, **OPTIONS)
        peer = Worker("fork", table, **OPTIONS).started()
        try:
            yield registry, peer
        finally:
            peer.stop()


@pytest.fixture
def dep(request):
    return f"dep-{request.node.name}"


def peer_metrics(peer, name):
    m = peer.eval(f"metrics(registry.breaker({name!r}).metrics())")
    return m.calls, m.successes, m.failures, m.ignored, m.rejected, m.state


def one_failure_by_call(registry, name):
    with pytest.raises(Boom):
        registry.call(name, fail)


def one_failure_by_handle(registry, name):
    with pytest.raises(Boom):
        registry.breaker(name).call(fail)


def one_failure_by_decorator(registry, name):
    @registry.breaker(name)
    def guarded():
        raise Boom()

    with pytest.raises(Boom):
        guarded()


def one_failure_by_async_decorator(registry, name):
    @registry.breaker(name)
    async def guarded():
        await afail()

    with pytest.raises(Boom):
        asyncio.run(guarded())


def one_failure_by_acall(registry, name):
    with pytest.raises(Boom):
        asyncio.run(registry.breaker(name).acall(afail))


def one_failure_by_with(registry, name):
    with pytest.raises(Boom):
        with registry.breaker(name):
            raise Boom()


def one_failure_by_async_with(registry, name):
    async def main():
        async with registry.breaker(name):
            raise Boom()

    with pytest.raises(Boom):
        asyncio.run(main())


def one_failure_by_permit(registry, name):
    permit = registry.breaker(name).try_acquire()
    assert permit is not None
    permit.failure()


def one_failure_by_generator(registry, name):
    @registry.breaker(name)
    def rows():
        yield 1
        raise Boom()

    with pytest.raises(Boom):
        list(rows())


FAILING_ENTRY_POINTS = [
    one_failure_by_call,
    one_failure_by_handle,
    one_failure_by_decorator,
    one_failure_by_async_decorator,
    one_failure_by_acall,
    one_failure_by_with,
    one_failure_by_async_with,
    one_failure_by_permit,
    one_failure_by_generator,
]


@pytest.mark.parametrize("entry_point", FAILING_ENTRY_POINTS, ids=lambda f: f.__name__)
def test_outcomes_recorded_here_are_the_other_processes(shared, dep, entry_point):
    registry, peer = shared
    entry_point(registry, dep)
    assert peer_metrics(peer, dep) == (1, 0, 1, 0, 0, State.CLOSED)
    entry_point(registry, dep)  # the 2nd failure: failure_threshold=2, host-wide
    assert peer.eval(f"registry.state({dep!r})") is State.OPEN
    assert (
        peer.exec(
            f"try:\n    registry.call({dep!r}, ok)\nexcept panelboard.CircuitOpenError:\n    result = 'no'"
        )
        == "no"
    )
    # ... and the other process's rejection is counted here.
    m = registry.breaker(dep).metrics()
    assert (m.failures, m.rejected, m.times_opened) == (2, 1, 1)
    with pytest.raises(CircuitOpenError):
        registry.call(dep, lambda: None)


def test_successes_and_ignored_outcomes_are_shared(shared, dep):
    registry, peer = shared
    b = registry.breaker(dep)
    assert b.call(lambda: 7) == 7
    b.try_acquire().ignore()
    with pytest.raises(KeyboardInterrupt):
        b.call(lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert peer_metrics(peer, dep) == (3, 1, 0, 2, 0, State.CLOSED)


def test_configure_here_applies_in_the_other_process(shared, dep):
    registry, peer = shared
    registry.configure(dep, failure_threshold=1)
    assert peer.exec(f"try:\n    registry.call({dep!r}, fail)\nexcept Boom:\n    result = 1") == 1
    assert registry.state(dep) is State.OPEN


def test_force_open_disable_reset_reach_the_other_process(shared, dep):
    registry, peer = shared
    registry.force_open(dep)
    assert peer.eval(f"registry.state({dep!r})") is State.FORCED_OPEN
    registry.disable(dep)
    assert peer.eval(f"registry.state({dep!r})") is State.DISABLED
    peer.eval(f"registry.force_open({dep!r})")
    assert registry.state(dep) is State.FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        registry.breaker(dep).call(lambda: None)
    registry.reset(dep)
    assert peer.eval(f"registry.state({dep!r})") is State.CLOSED


def test_delete_list_and_snapshot_see_every_process_names(shared, dep):
    registry, peer = shared
    peer.eval(f"registry.call({dep + '-peer'!r}, ok)")
    registry.call(dep, lambda: None)
    assert {dep, dep + "-peer"} <= names_of(registry)
    assert {dep, dep + "-peer"} <= {n for n, _ in peer.eval("registry.list()")}
    snapshot = registry.snapshot()
    assert snapshot[dep + "-peer"].successes == 1
    assert snapshot[dep].successes == 1
    peer.eval(f"registry.delete({dep!r})")
    assert dep not in names_of(registry)
    assert dep not in registry.snapshot()
    registry.delete(dep + "-peer")
    assert dep + "-peer" not in {n for n, _ in peer.eval("registry.list()")}


def test_an_old_handle_keeps_working_after_another_process_deletes_its_name(shared, dep):
    registry, peer = shared
    old = registry.breaker(dep)
    peer.eval(f"registry.delete({dep!r})")
    assert old.call(lambda: "still") == "still"  # works on its own breaker, as on a local registry
    assert old.shared is False, "the deleted breaker now lives in this process only"
    fresh = registry.breaker(dep)
    assert fresh.metrics().calls == 0, "a new breaker for the name"
    with pytest.raises(Boom):
        old.call(fail)
    assert fresh.metrics().failures == 0


def test_metrics_retry_after_is_the_same_in_every_process(shared, dep):
    registry, peer = shared
    for _ in range(2):
        with pytest.raises(Boom):
            registry.call(dep, fail)
    here = registry.breaker(dep).metrics().retry_after
    there = peer.eval(f"metrics(registry.breaker({dep!r}).metrics()).retry_after")
    assert 590.0 < there <= here + 0.5
