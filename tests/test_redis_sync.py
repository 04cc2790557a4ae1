"""The Redis-synced registry's own contract (issue 13, docs/redis.md), beside the fleet, fault and
footprint suites: option validation, the lazy import, the worker's lifecycle (close, garbage
collection), discovery and deletion, against a real ``redis-server`` (``tests/redis_fixtures.py``)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from helpers import SYNC_INTERVAL, Boom, afail, fail, ok, redis_registry, wait_until
from panelboard import CircuitOpenError, ManualClock, Registry, State
from redis_fixtures import server_command

BOUND = 5.0


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("panelboard-redis-sync")]


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"redis": 6379}, TypeError, "redis"),
        ({"redis": ""}, ValueError, "redis"),
        ({"redis": "http://localhost:6379"}, ValueError, "redis"),
        ({"redis": "redis://127.0.0.1:1", "namespace": 3}, TypeError, "namespace"),
        ({"redis": "redis://127.0.0.1:1", "namespace": ""}, ValueError, "namespace"),
        ({"redis": "redis://127.0.0.1:1", "namespace": "a{b}"}, ValueError, "namespace"),
        ({"redis": "redis://127.0.0.1:1", "sync_interval": 0}, ValueError, "sync_interval"),
        ({"redis": "redis://127.0.0.1:1", "sync_interval": -0.5}, ValueError, "sync_interval"),
        ({"redis": "redis://127.0.0.1:1", "sync_interval": float("nan")}, ValueError, "sync_interval"),
        ({"redis": "redis://127.0.0.1:1", "sync_interval": True}, TypeError, "sync_interval"),
        ({"redis": "redis://127.0.0.1:1", "sync_interval": "fast"}, TypeError, "sync_interval"),
        ({"namespace": "checkout"}, ValueError, "namespace"),
        ({"sync_interval": 0.1}, ValueError, "sync_interval"),
        ({"redis": "redis://127.0.0.1:1", "failure_threshold": 0}, ValueError, "failure_threshold"),
        ({"redis": "redis://127.0.0.1:1", "clock": ManualClock()}, TypeError, "clock"),
    ],
)
def test_bad_options_raise_naming_the_argument_and_start_nothing(
    options: dict[str, Any], error: type[Exception], names: str
) -> None:
    before = len(sync_threads())
    with pytest.raises(error, match=names):
        Registry(**options)
    assert len(sync_threads()) == before


def test_a_manual_clock_is_refused_and_nothing_reaches_redis(redis_server: Any, namespace: str) -> None:
    """A fleet's open period runs on the Redis server's clock (a key's expiry), which a ManualClock
    cannot move: ``clock=`` is refused as with ``shared=``, before anything is started or written."""
    with pytest.raises(TypeError, match="clock"):
        Registry(redis=redis_server.url, namespace=namespace, clock=ManualClock(), failure_threshold=1)
    assert not any(t.name.endswith(f"[{namespace}]") for t in sync_threads())
    time.sleep(4 * SYNC_INTERVAL)
    assert redis_server.keys(f"{namespace}*") == []
    # clock=None is the default clock, as on any registry.
    r = Registry(redis=redis_server.url, namespace=namespace, clock=None)
    try:
        r.breaker("x")
        wait_until(lambda: redis_server.keys(f"{namespace}*"), BOUND, "the breaker was published")
    finally:
        r.close()


def test_the_fixtures_start_the_server_they_name(redis_server: Any) -> None:
    """``make test-valkey`` must really run against Valkey: the server that answers is the one
    ``PANELBOARD_REDIS_SERVER`` names (``redis-server`` by default)."""
    expected = "valkey" if "valkey" in server_command() else "redis"
    print(f"\nserver under test: {redis_server.name} {redis_server.version}")
    assert redis_server.name == expected, (server_command(), redis_server.name)
    assert redis_server.version[:1].isdigit(), redis_server.version


def test_import_panelboard_does_not_import_redis() -> None:
    code = "import sys, panelboard; panelboard.Registry(); print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_local_registry_has_no_sync() -> None:
    r = Registry()
    assert r.sync_status() is None
    r.close()
    r.close()
    assert r.call("x", ok) == "ok"


def test_close_pushes_what_happened_just_before(redis_url: str, namespace: str) -> None:
    a = redis_registry(redis_url, namespace, failure_threshold=1, reset_timeout=60.0)
    b = redis_registry(redis_url, namespace, failure_threshold=1, reset_timeout=60.0)
    try:
        b.breaker("svc").call(ok)
        wait_until(lambda: a.sync_status()["connected"] and b.sync_status()["connected"], BOUND)
        with pytest.raises(Boom):
            a.call("svc", fail)
        a.close()  # at once: the opening is pushed by the last round
        status = a.sync_status()
        assert status["closed"] and not status["connected"]
        wait_until(lambda: b.state("svc") is State.OPEN, BOUND, "b saw the opening")
        # After close the breakers go on locally: still open, and calls never fail on Redis.
        with pytest.raises(CircuitOpenError):
            a.call("svc", ok)
        assert a.call("other", ok) == "ok"
    finally:
        a.close()
        b.close()


def test_close_is_idempotent_and_stops_the_worker(redis_url: str, namespace: str) -> None:
    r = redis_registry(redis_url, namespace)
    wait_until(lambda: r.sync_status()["connected"], BOUND)
    thread_names = {t.name for t in sync_threads()}
    assert f"panelboard-redis-sync[{namespace}]" in thread_names
    r.close()
    r.close()
    assert all(not t.name.endswith(f"[{namespace}]") for t in sync_threads())


def test_a_dropped_registry_stops_its_worker(redis_url: str, namespace: str) -> None:
    held = [redis_registry(redis_url, namespace)]
    held[0].breaker("x").call(ok)
    wait_until(lambda: held[0].sync_status()["connected"], BOUND)
    held.clear()
    gc.collect()
    wait_until(
        lambda: all(not t.name.endswith(f"[{namespace}]") for t in sync_threads()),
        BOUND,
        "the worker of a dropped registry stopped",
    )


def test_a_process_that_never_used_a_breaker_learns_it_is_open(redis_url: str, namespace: str) -> None:
    a = redis_registry(redis_url, namespace, failure_threshold=1, reset_timeout=60.0)
    b = redis_registry(redis_url, namespace)
    try:
        with pytest.raises(Boom):
            a.call("payments", fail)
        wait_until(lambda: "payments" in b, BOUND, "b discovered the breaker")
        wait_until(lambda: b.state("payments") is State.OPEN, BOUND, "b saw it open")
        # The fleet's numeric configuration came with it.
        with pytest.raises(CircuitOpenError) as raised:
            b.call("payments", ok)
        assert 50.0 < raised.value.retry_after <= 60.0
    finally:
        a.close()
        b.close()


def test_delete_reaches_others_and_the_name_can_be_used_again(redis_url: str, namespace: str) -> None:
    a = redis_registry(redis_url, namespace, failure_threshold=1, reset_timeout=60.0)
    b = redis_registry(redis_url, namespace, failure_threshold=1, reset_timeout=60.0)
    try:
        a.breaker("gone").call(ok)
        wait_until(lambda: "gone" in b, BOUND)
        time.sleep(4 * SYNC_INTERVAL)
        a.delete("gone")
        wait_until(lambda: "gone" not in b, BOUND, "the deletion reached b")
        # Made again under the same name (the tombstone is still in Redis): a fresh breaker that
        # stays, and whose opening reaches the other process.
        fresh = b.breaker("gone")
        time.sleep(10 * SYNC_INTERVAL)
        assert "gone" in b
        with pytest.raises(Boom):
            fresh.call(fail)
        wait_until(lambda: a.state("gone") is State.OPEN, BOUND, "a saw the new breaker open")
    finally:
        a.close()
        b.close()


def test_an_expired_open_breaker_waits_for_the_fleet_to_probe(redis_url: str, namespace: str) -> None:
    """While the worker is in touch with Redis, a process cannot probe on its own: the second
    registry's probe waits until the first one's lease is gone (half_open_max_calls=1)."""
    a = redis_registry(redis_url, namespace, failure_threshold=1, reset_timeout=0.2, probe_timeout=5.0)
    b = redis_registry(redis_url, namespace, failure_threshold=1, reset_timeout=0.2, probe_timeout=5.0)
    try:
        ba, bb = a.breaker("p"), b.breaker("p")
        wait_until(lambda: a.sync_status()["rounds"] > 2 and b.sync_status()["rounds"] > 2, BOUND)
        with pytest.raises(Boom):
            ba.call(fail)
        wait_until(lambda: bb.state is State.OPEN, BOUND)

        def probe(handle: Any) -> Any:
            deadline = time.monotonic() + BOUND
            while time.monotonic() < deadline:
                permit = handle.try_acquire()
                if permit is not None:
                    return permit
                time.sleep(0.002)
            return None

        held = probe(ba)
        assert held is not None, "no probe was ever admitted"
        # b asks too (its rejections are demand) but the only lease is a's.
        deadline = time.monotonic() + 10 * SYNC_INTERVAL
        while time.monotonic() < deadline:
            assert bb.try_acquire() is None, "a second probe fleet-wide"
            time.sleep(0.005)
        held.success()
        wait_until(lambda: bb.state is State.CLOSED, BOUND, "the probe's success reached b")
    finally:
        a.close()
        b.close()


def state_key(namespace: str, name: str) -> str:
    """The Redis key of a breaker's fleet state (docs/redis.md)."""
    return f"{namespace}:{{b{name.encode().hex()}}}"


def test_failure_threshold_none_stays_off_in_the_fleet(
    redis_server: Any, namespace: str, registries: Any
) -> None:
    """failure_threshold=None (only the rate rule trips) must survive the trip through Redis: the
    fleet must not turn the consecutive-failure rule back on with a default threshold."""
    options = {"failure_threshold": None, "failure_rate": 0.9, "min_calls": 100}
    a = registries(redis_server.url, namespace, **options)
    b = registries(redis_server.url, namespace, **options)
    a.call("svc", ok)
    wait_until(lambda: "svc" in b, BOUND, "b discovered the breaker")
    time.sleep(4 * SYNC_INTERVAL)
    assert redis_server.admin().hget(state_key(namespace, "svc"), "ft") == b"-1"
    for registry in (a, b):
        for _ in range(8):
            with pytest.raises(Boom):
                registry.call("svc", fail)
            time.sleep(SYNC_INTERVAL / 2)
    time.sleep(4 * SYNC_INTERVAL)
    # 16 failures fleet-wide, far below min_calls=100: nothing trips.
    assert a.state("svc") is State.CLOSED and b.state("svc") is State.CLOSED
    assert a.sync_status()["malformed"] == 0 and b.sync_status()["malformed"] == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rt", 10**15),
        ("rt", 2**35 + 1),
        ("pt", 2**35 + 1),
        ("pt", 0),
        ("ft", 2**32),
        ("hm", 65536),
        ("st", 65536),
    ],
)
def test_values_beyond_the_engine_limits_in_redis_are_garbage(
    redis_server: Any, namespace: str, registries: Any, field: str, value: int
) -> None:
    """A configuration value no client accepts, written into a breaker's hash, is never used by the
    script: it is reported and the sender's own state re-published."""
    a = registries(redis_server.url, namespace, failure_threshold=1, reset_timeout=1.0, probe_timeout=1.0)
    a.breaker("svc")
    time.sleep(4 * SYNC_INTERVAL)
    admin, key = redis_server.admin(), state_key(namespace, "svc")
    before = admin.hget(key, field)
    admin.hset(key, mapping={field: value, "cv": int(admin.hget(key, "cv")) + 1})
    wait_until(lambda: a.sync_status()["malformed"] > 0, BOUND, "the garbage was reported")
    wait_until(lambda: admin.hget(key, field) == before, BOUND, "the sender's value re-published")
    with pytest.raises(Boom):
        a.call("svc", fail)
    wait_until(lambda: admin.pttl(key + ":open") > 0, BOUND, "the trip reached Redis")
    assert admin.pttl(key + ":open") <= 1000
    wait_until(lambda: a.state("svc") is not State.OPEN, BOUND, "the 1 s open period ended")


@pytest.mark.parametrize(
    "options", [{}, {"backoff": 2.0, "max_reset_timeout": 10.0}], ids=["fixed", "backoff"]
)
def test_an_open_timer_beyond_the_engine_limits_in_redis_is_garbage(
    redis_server: Any, namespace: str, registries: Any, options: dict[str, Any]
) -> None:
    """An open timer whose expiry no client sets (beyond the longest open period, 2^35 ms), written
    over the fleet's, is never used: reported, and the breaker does not stay open for years."""
    a = registries(redis_server.url, namespace, failure_threshold=1, reset_timeout=1.0, **options)
    a.breaker("svc")
    with pytest.raises(Boom):
        a.call("svc", fail)
    admin, key = redis_server.admin(), state_key(namespace, "svc") + ":open"
    wait_until(lambda: admin.pttl(key) > 0, BOUND, "the trip reached Redis")
    admin.pexpire(key, 2**40)
    wait_until(lambda: a.sync_status()["malformed"] > 0, BOUND, "the garbage was reported")
    wait_until(lambda: a.state("svc") is not State.OPEN, BOUND, "the 1 s open period ended")
    assert a.breaker("svc").metrics().retry_after <= 10.0


def test_index_garbage_neither_hides_breakers_nor_makes_any(
    redis_server: Any, namespace: str, registries: Any
) -> None:
    """The namespace's index is only a pointer anyone can write: a member scored far in the future
    must not move discovery past the server's clock, and a name without a valid state hash is no
    breaker."""
    a, b = registries(redis_server.url, namespace), registries(redis_server.url, namespace)
    b.breaker("x")
    wait_until(lambda: "x" in a, BOUND, "a discovered x")
    admin, index = redis_server.admin(), f"{namespace}:{{index}}"
    server_ms = int(admin.time()[0]) * 1000
    # "not-hex" names no breaker, so no process re-publishes it (with a sane score) before the others
    # see it.
    admin.zadd(index, {"not-hex": 1e17, b"zz".hex(): 1e17, b"jj".hex(): server_ms})
    admin.hset(state_key(namespace, "bad"), mapping={"g": 1, "m": 9})
    admin.zadd(index, {b"bad".hex(): server_ms})
    time.sleep(8 * SYNC_INTERVAL)
    b.force_open("y")
    wait_until(lambda: "y" in a, BOUND, "a discovered y, published after the garbage")
    wait_until(lambda: a.state("y") is State.FORCED_OPEN, BOUND, "a saw y forced open")
    time.sleep(8 * SYNC_INTERVAL)
    assert {"zz", "jj", "bad"}.isdisjoint(name for name, _ in a.list())


def test_a_backed_off_open_period_is_the_fleets(redis_server: Any, namespace: str, registries: Any) -> None:
    """With backoff the reopening after a failed probe lasts reset_timeout * backoff: the fleet's
    open timer is that drawn period, not reset_timeout, and the worker does not shorten it."""
    options = {"failure_threshold": 1, "reset_timeout": 0.3, "backoff": 4.0}
    a, b = (
        registries(redis_server.url, namespace, **options),
        registries(redis_server.url, namespace, **options),
    )
    with pytest.raises(Boom):
        a.call("svc", fail)
    wait_until(lambda: "svc" in b, BOUND, "b discovered the breaker")
    deadline = time.monotonic() + BOUND
    while True:  # the probe (once a lease is granted) fails: reopened for 0.3 * 4 = 1.2 s
        assert time.monotonic() < deadline, "no probe was admitted"
        try:
            a.call("svc", fail)
        except Boom:
            break
        except CircuitOpenError:
            time.sleep(0.01)
    reopened = time.monotonic()
    time.sleep(4 * SYNC_INTERVAL)
    assert a.breaker("svc").metrics().retry_after > 0.7
    assert redis_server.admin().pttl(state_key(namespace, "svc") + ":open") > 700
    time.sleep(max(0.0, reopened + 0.9 - time.monotonic()))
    for registry in (a, b):
        with pytest.raises(CircuitOpenError):
            registry.call("svc", ok)
    wait_until(lambda: a.state("svc") is not State.OPEN, BOUND, "the backed-off period ended")


# --------------------------------------------------------------------------------------------------
# Listeners of a process that attaches after the fleet moved on


class Heard:
    """A state-change listener that keeps what it heard of one breaker, from any thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[tuple[State, State]] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, old: State, new: State) -> None:
        if name == self.name:
            with self._lock:
                self.events.append((old, new))

    def chain(self) -> list[tuple[State, State]]:
        """What was heard, checked to be one change at a time from the state last heard of, starting
        from CLOSED (a fresh breaker): each change heard once, from the state the process saw."""
        with self._lock:
            events = list(self.events)
        previous = State.CLOSED
        for old, new in events:
            assert old is previous and new is not old, f"heard {old} -> {new} after {previous}: {events}"
            previous = new
        return events


def fleet_moved_on(a: Any, name: str, history: str) -> None:
    """Takes breaker ``name`` of registry ``a`` (failure_threshold=1, reset_timeout=0.3) through
    ``history``: the fleet's state a late process then finds."""

    def probe(outcome: Any) -> None:
        deadline = time.monotonic() + BOUND
        while True:
            assert time.monotonic() < deadline, "no probe was admitted"
            permit = a.breaker(name).try_acquire()
            if permit is not None and a.state(name) is State.HALF_OPEN:
                outcome(permit)
                return
            if permit is not None:
                permit.ignore()
            time.sleep(0.005)

    b = a.breaker(name)
    wait_until(lambda: a.sync_status()["rounds"] > 2, BOUND)
    if history == "forced-open":
        a.force_open(name)
        return
    b.try_acquire().failure()  # closed -> open
    if history == "open":
        return
    probe(lambda p: p.failure())  # -> half-open -> open
    if history == "reopened":
        return
    probe(lambda p: p.failure())  # -> half-open -> open
    if history == "half-open":
        wait_until(lambda: a.state(name) is State.HALF_OPEN, BOUND)
        return
    probe(lambda p: p.success())  # -> half-open -> closed
    assert history == "closed-again", history


@pytest.mark.parametrize("history", ["open", "reopened", "half-open", "closed-again", "forced-open"])
@pytest.mark.parametrize("made_by", ["call", "discovery"])
def test_a_late_process_hears_each_change_from_the_state_it_saw(
    redis_server: Any, namespace: str, registries: Any, history: str, made_by: str
) -> None:
    """A process that attaches after several transitions hears one change from CLOSED (its fresh
    breaker) to the fleet's state, not the fleet's last transition, then each later change once:
    the rule of the shared-memory registry (README, "Listeners")."""
    options = {"failure_threshold": 1, "reset_timeout": 0.3}
    a = registries(redis_server.url, namespace, **options)
    fleet_moved_on(a, "svc", history)
    late = registries(redis_server.url, namespace, **options)
    heard = Heard("svc")
    late.on_state_change(heard)
    if made_by == "call":
        late.breaker("svc")
    wait_until(lambda: "svc" in late, BOUND, "the late process has the breaker")
    # Its state is observed all along (each observation may report a change), by two threads.
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            late.state("svc")
            time.sleep(0.001)

    observers = [threading.Thread(target=observe) for _ in range(2)]
    for t in observers:
        t.start()
    try:
        rounds = late.sync_status()["rounds"]
        wait_until(lambda: late.sync_status()["rounds"] > rounds + 2, BOUND, "the late process synced")
        time.sleep(0.6)  # an open period ends meanwhile (reset_timeout 0.3): more changes to hear
    finally:
        stop.set()
        for t in observers:
            t.join(BOUND)
    late.close()  # no more installs: what was heard must end at the state the process sees
    seen = late.state("svc")
    events = heard.chain()
    print(f"\n{history}/{made_by}: heard {[(o.value, n.value) for o, n in events]}")
    assert (events[-1][1] if events else State.CLOSED) is seen, (events, seen)
    if history == "closed-again":
        assert events == [], "nothing changed for the late process: nothing to hear"
    else:
        assert events, "the late process heard nothing"


# --------------------------------------------------------------------------------------------------
# Every entry point works on a Redis-synced registry as on a local one


def by_call(r: Any, name: str) -> None:
    r.call(name, fail)


def by_handle(r: Any, name: str) -> None:
    r.breaker(name).call(fail)


def by_decorator(r: Any, name: str) -> None:
    r.breaker(name)(fail)()


def by_async_decorator(r: Any, name: str) -> None:
    asyncio.run(r.breaker(name)(afail)())


def by_acall(r: Any, name: str) -> None:
    asyncio.run(r.breaker(name).acall(afail))


def by_with(r: Any, name: str) -> None:
    with r.breaker(name):
        raise Boom()


def by_async_with(r: Any, name: str) -> None:
    async def guarded() -> None:
        async with r.breaker(name):
            raise Boom()

    asyncio.run(guarded())


def by_permit(r: Any, name: str) -> None:
    permit = r.breaker(name).try_acquire()
    if permit is None:
        raise CircuitOpenError(name)
    permit.failure()
    raise Boom()  # what the guarded work raised


def by_generator(r: Any, name: str) -> None:
    def rows() -> Any:
        yield 1
        raise Boom()

    list(r.breaker(name)(rows)())


ENTRY_POINTS = [
    by_call,
    by_handle,
    by_decorator,
    by_async_decorator,
    by_acall,
    by_with,
    by_async_with,
    by_permit,
    by_generator,
]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=lambda f: f.__name__)
def test_every_entry_point_counts_for_the_fleet(
    redis_server: Any, namespace: str, registries: Any, entry_point: Any
) -> None:
    """A failure recorded through any entry point in one process counts for the fleet (another
    process's single failure then reaches failure_threshold=2), and once the breaker is open the
    entry point rejects, as on a local registry."""
    options = {"failure_threshold": 2, "reset_timeout": 60.0}
    a, b = (
        registries(redis_server.url, namespace, **options),
        registries(redis_server.url, namespace, **options),
    )
    a.breaker("svc")
    b.breaker("svc")
    wait_until(lambda: a.sync_status()["rounds"] > 2 and b.sync_status()["rounds"] > 2, BOUND)
    with pytest.raises(Boom):
        entry_point(a, "svc")
    assert a.state("svc") is State.CLOSED
    admin = redis_server.admin()
    wait_until(lambda: admin.hget(state_key(namespace, "svc"), "f") == b"1", BOUND, "a's failure in Redis")
    rounds = b.sync_status()["rounds"]
    wait_until(lambda: b.sync_status()["rounds"] > rounds + 1, BOUND, "b pulled the fleet's count")
    with pytest.raises(Boom):
        b.call("svc", fail)
    assert b.state("svc") is State.OPEN, "b's one failure was the fleet's second"
    wait_until(lambda: a.state("svc") is State.OPEN, BOUND, "the opening reached a")
    with pytest.raises(CircuitOpenError):
        entry_point(a, "svc")
