"""What a Redis-synced registry sends and stores (issue 13), against a real ``redis-server``.

- The hot path sends nothing: the commands the server receives (``INFO commandstats``) depend on
  time and ``sync_interval``, not on the number of calls.
- Bounded footprint: a breaker's key count and ``MEMORY USAGE`` stay the same after 100,000 calls;
  every key lives under the namespace, carries the breaker in a hash tag (one cluster slot per
  breaker) and expires.
- Garbage written into our keys is ignored with a warning, never trusted or crashed on.
- Breaker names with any characters are safe.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import (
    SYNC_INTERVAL,
    Boom,
    fail,
    ok,
    sync_status,
    sync_warnings,
    wait_synced,
    wait_until,
)
from panelboard import CircuitOpenError, State
from redis_fixtures import RedisServer

CONVERGENCE_BOUND = 5.0
PROPAGATION_BOUND = SYNC_INTERVAL + 0.25


# --------------------------------------------------------------------------------------------------
# Cluster hash slots (the Redis Cluster specification: CRC16/XMODEM of the hash tag, mod 16384)


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def hash_tag(key: bytes) -> bytes | None:
    """The part of ``key`` Redis Cluster hashes: between the first ``{`` and the next ``}``, when
    that is not empty; None when the key has no such tag (the whole key is hashed)."""
    start = key.find(b"{")
    if start < 0:
        return None
    end = key.find(b"}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def slot(key: bytes) -> int:
    tag = hash_tag(key)
    return crc16(key if tag is None else tag) % 16384


def test_the_slot_computation_matches_the_cluster_specification() -> None:
    # The specification's own examples: "123456789" -> 0x31C3; tags as it describes them.
    assert crc16(b"123456789") == 0x31C3
    assert hash_tag(b"{user1000}.following") == b"user1000"
    assert hash_tag(b"foo{}{bar}") is None
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert slot(b"{user1000}.following") == slot(b"{user1000}.followers")


def assert_keys_are_ours(server: RedisServer, namespace: str) -> dict[bytes, list[bytes]]:
    """Every key under the namespace carries a hash tag; returns the keys grouped by tag."""
    keys = server.keys("*")
    assert keys, "nothing was written to Redis"
    groups: dict[bytes, list[bytes]] = {}
    for key in keys:
        assert key.startswith(namespace.encode()), f"a key outside the namespace: {key!r}"
        tag = hash_tag(key)
        assert tag is not None, f"a key without a hash tag (not cluster-safe): {key!r}"
        groups.setdefault(tag, []).append(key)
    return groups


# --------------------------------------------------------------------------------------------------
# The hot path sends nothing


def commands_while(
    server: RedisServer, seconds: float, call: Any, *, pace: float | None
) -> tuple[int, int, int]:
    """Calls ``call()`` for ``seconds`` (every ``pace`` seconds, or as fast as possible); returns the
    calls made, the commands clients sent meanwhile (``MONITOR``) and every command the server ran,
    those of scripts included (``INFO commandstats``)."""
    server.reset_stats()
    calls = 0
    with server.monitor() as monitor:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            call()
            calls += 1
            if pace is not None:
                time.sleep(pace)
            elif calls % 1000 == 0:
                time.sleep(0.0005)  # let the worker run
    return calls, monitor.total, sum(server.commands().values())


#: Commands one process may send per second for one active breaker: one sync every sync_interval,
#: and room for a push on change in between.
SENT_BOUND = 1.5 / SYNC_INTERVAL


@pytest.mark.parametrize(
    "options",
    [{}, {"failure_rate": 0.5, "slow_call_rate": 0.5, "slow_call_duration": 1.0}],
    ids=["consecutive", "rate-rules"],
)
def test_the_hot_path_sends_nothing(
    redis_server: RedisServer, namespace: str, registries: Any, options: dict[str, Any]
) -> None:
    """As many commands reach Redis in a second with 100 calls as with hundreds of thousands: they
    come from the periodic sync (about 1 / sync_interval), not from the calls (with rate rules too:
    the window's counts travel in the same script call)."""
    a = registries(redis_server.url, namespace)
    b = a.breaker("hot", **options)
    b.call(ok)
    wait_synced(a)
    few, sent_few, ran_few = commands_while(redis_server, 1.0, lambda: b.call(ok), pace=0.01)
    many, sent_many, ran_many = commands_while(redis_server, 1.0, lambda: b.call(ok), pace=None)
    print(
        f"\nhot path: {few} calls -> {sent_few} commands sent ({ran_few} run with the script's); "
        f"{many} calls -> {sent_many} sent ({ran_many} run) in 1 s"
    )
    assert many >= 50 * few
    assert sent_few <= SENT_BOUND and sent_many <= SENT_BOUND
    assert sent_many >= 0.5 / SYNC_INTERVAL  # the periodic sync runs (the count is not of nothing)
    assert ran_many <= 2 * ran_few + 10


def test_rejections_send_nothing_either(redis_server: RedisServer, namespace: str, registries: Any) -> None:
    a = registries(redis_server.url, namespace)
    b = a.breaker("open", failure_threshold=1, reset_timeout=600.0)
    with pytest.raises(Boom):
        b.call(fail)
    wait_synced(a)

    def rejected() -> None:
        with pytest.raises(CircuitOpenError):
            b.call(ok)

    many, sent, ran = commands_while(redis_server, 1.0, rejected, pace=None)
    print(f"\nrejections: {many} calls -> {sent} commands sent ({ran} run) in 1 s")
    assert many >= 10_000
    assert sent <= SENT_BOUND


@pytest.mark.parametrize("breakers", [1, 10])
def test_a_flapping_breaker_sends_about_one_sync_per_interval(
    redis_server: RedisServer, namespace: str, registries: Any, breakers: int
) -> None:
    """A dependency that is down, called as fast as possible, through breakers that trip, go
    half-open at once (reset_timeout=0), probe and reopen all the time: the changes are batched, so
    a process sends about 1 / sync_interval commands per second per breaker at most (issue 13's
    bound, with room for a push on change), however many transitions it makes."""
    a = registries(redis_server.url, namespace, failure_threshold=3, reset_timeout=0.0)
    handles = [a.breaker(f"flapping-{i}") for i in range(breakers)]
    wait_synced(a)

    def fail_everywhere() -> None:
        for b in handles:
            try:
                b.call(fail)
            except (Boom, CircuitOpenError):
                pass

    # Paced like a program between requests, so that the worker gets to run as often as it wants.
    calls, sent, ran = commands_while(redis_server, 1.0, fail_everywhere, pace=0.0002)
    opened = sum(b.metrics().times_opened for b in handles)
    print(
        f"\nflapping x{breakers}: {calls * breakers} calls, {opened} openings -> {sent} commands sent ({ran} run) in 1 s"
    )
    assert opened >= 5 * breakers  # it really flapped
    assert sent <= breakers * 2 / SYNC_INTERVAL


# --------------------------------------------------------------------------------------------------
# Bounded footprint


def churn(b: Any, calls: int) -> None:
    """``calls`` calls, 3 failures then 2 successes over and over (``failure_threshold=4``: each one
    is counted and synced), and every 10,000 calls 4 failures in a row that open the breaker, a pause
    (it goes half-open, ``reset_timeout=0.05``) and a probe that closes it again."""
    for i in range(calls):
        try:
            b.call(fail if i % 5 < 3 else ok)
        except (Boom, CircuitOpenError):
            pass
        if i % 10_000 == 9_999:
            for _ in range(4):
                try:
                    b.call(fail)
                except (Boom, CircuitOpenError):
                    pass
            wait_until(lambda: probe_closes(b), 5.0, "a probe closed the breaker again")


def probe_closes(b: Any) -> bool:
    try:
        b.call(ok)
    except CircuitOpenError:
        pass
    return b.state is State.CLOSED


def footprint(server: RedisServer) -> tuple[int, int]:
    keys = server.keys("*")
    return len(keys), sum(int(server.admin().memory_usage(k, samples=0) or 0) for k in keys)


KEYS_PER_BREAKER = 3
#: With a rate rule, the fleet's window beside them: a hash of at most 3 counts per bucket.
KEYS_PER_RATE_BREAKER = 4
WINDOW_FIELDS = 3 * 11 + 2
#: Keys of the namespace itself (an index of the breakers' names), beside the breakers' own.
NAMESPACE_KEYS = 1
MEMORY_PER_BREAKER = 1024  # bytes, MEMORY USAGE of all its keys


def test_footprint_stays_bounded_after_100000_calls(
    redis_server: RedisServer, namespace: str, registries: Any
) -> None:
    a = registries(redis_server.url, namespace)
    b = a.breaker("busy", failure_threshold=4, reset_timeout=0.05)
    churn(b, 1_000)
    time.sleep(6 * SYNC_INTERVAL)
    keys_before, memory_before = footprint(redis_server)
    churn(b, 100_000)
    time.sleep(6 * SYNC_INTERVAL)
    keys_after, memory_after = footprint(redis_server)
    print(
        f"\nfootprint: {keys_before} keys / {memory_before} B after 1,000 calls, {keys_after} / {memory_after} B after 100,000"
    )
    metrics = b.metrics()
    assert metrics.calls + metrics.rejected >= 100_000
    assert metrics.failures >= 50_000 and metrics.times_opened >= 10  # counted, synced, tripped
    # A state hash, an open timer while open, the probe leases while half-open: never more, whatever
    # the number of calls (an entry per call would be 100,000 keys or members).
    assert (
        keys_before <= KEYS_PER_BREAKER + NAMESPACE_KEYS and keys_after <= KEYS_PER_BREAKER + NAMESPACE_KEYS
    )
    assert memory_before <= MEMORY_PER_BREAKER and memory_after <= MEMORY_PER_BREAKER
    for key in redis_server.keys("*"):
        assert redis_server.admin().pttl(key) > 0, f"{key!r} never expires"
    groups = assert_keys_are_ours(redis_server, namespace)
    # One breaker, one hash tag; beside it at most one namespace-wide key (an index of the names).
    assert 1 <= len(groups) <= 1 + NAMESPACE_KEYS, groups


def test_footprint_with_a_rate_rule_stays_bounded_after_100000_calls(
    redis_server: RedisServer, namespace: str, registries: Any
) -> None:
    """The fleet's window adds one key, a hash with a field per count per bucket (never per call),
    pruned as the window moves and expiring a window after its last count."""
    a = registries(redis_server.url, namespace)
    # 60% failures never reach the 90% rate: the window keeps counting for the whole run, over
    # many 50 ms buckets.
    b = a.breaker(
        "busy-rate", failure_threshold=4, reset_timeout=0.05, failure_rate=0.9, min_calls=5, window=1.0
    )
    window_key = f"{namespace}:{{b{b'busy-rate'.hex()}}}:window"
    churn(b, 1_000)
    time.sleep(6 * SYNC_INTERVAL)
    keys_before, memory_before = footprint(redis_server)
    churn(b, 100_000)
    # Then 2.5 s of calls that never trip: the window (1 s, buckets of 100 ms) moves over 25
    # buckets, more than it may hold. Paced, so that the worker runs on a loaded machine too.
    fields = 0
    end = time.monotonic() + 2.5
    i = 0
    while time.monotonic() < end:
        for _ in range(50):
            try:
                b.call(fail if i % 5 < 3 else ok)
            except (Boom, CircuitOpenError):
                pass
            i += 1
        fields = max(fields, redis_server.admin().hlen(window_key))
        time.sleep(0.001)
    time.sleep(6 * SYNC_INTERVAL)
    keys_after, memory_after = footprint(redis_server)
    print(
        f"\nfootprint with a rate rule: {keys_before} keys / {memory_before} B after 1,000 calls, "
        f"{keys_after} / {memory_after} B after 100,000; at most {fields} window fields"
    )
    assert b.metrics().calls + b.metrics().rejected >= 100_000
    # Calls and failures of up to 10 buckets (here, of at least 3), the generation and the width:
    # buckets that left the window were deleted (25 buckets' fields would be 52).
    assert 2 * 3 + 2 <= fields <= WINDOW_FIELDS, "the fleet's window spanned few buckets, or grew"
    assert a.sync_status()["malformed"] == 0
    assert keys_after <= KEYS_PER_RATE_BREAKER + NAMESPACE_KEYS
    assert memory_before <= 2 * MEMORY_PER_BREAKER and memory_after <= 2 * MEMORY_PER_BREAKER
    for key in redis_server.keys("*"):
        assert redis_server.admin().pttl(key) > 0, f"{key!r} never expires"
    assert len(assert_keys_are_ours(redis_server, namespace)) <= 1 + NAMESPACE_KEYS


# --------------------------------------------------------------------------------------------------
# Names


NAMES = [
    "plain",
    "with space",
    "a{b}c",
    "a{b}d",
    "{",
    "}",
    "}{",
    "{}",
    "x:y:z",
    "*?[]^\\",
    "new\nline\r\n",
    "nul\x00byte",
    "ünïcødé ☃ 🙂",
    "tab\tchar",
    "n" * 4000,
    "%s%n%x",
    "'; DEL *; --",
]


def test_names_with_any_characters_are_safe(
    redis_server: RedisServer, namespace: str, registries: Any
) -> None:
    """Every breaker keeps its own keys (one hash tag each, none shared), and an opening reaches the
    other registry for exactly the breakers that opened."""
    a, b = registries(redis_server.url, namespace), registries(redis_server.url, namespace)
    for name in NAMES:
        a.breaker(name, failure_threshold=1, reset_timeout=600.0).call(ok)
        b.breaker(name, failure_threshold=1, reset_timeout=600.0)
    opened = NAMES[::2]
    for name in opened:
        with pytest.raises(Boom):
            a.call(name, fail)
    want = {name: State.OPEN if name in opened else State.CLOSED for name in NAMES}
    wait_until(lambda: {n: b.state(n) for n in NAMES} == want, CONVERGENCE_BOUND, "b agrees with a")
    time.sleep(6 * SYNC_INTERVAL)
    assert {n: b.state(n) for n in NAMES} == want
    groups = assert_keys_are_ours(redis_server, namespace)
    assert len(NAMES) <= len(groups) <= len(NAMES) + NAMESPACE_KEYS, sorted(groups)
    assert sorted(n for n, _ in b.list()) == sorted(NAMES)


def test_namespaces_do_not_share_breakers(redis_server: RedisServer, namespace: str, registries: Any) -> None:
    a = registries(redis_server.url, namespace)
    other = registries(redis_server.url, namespace + "-other")
    same = registries(redis_server.url, namespace)
    for r in (a, other, same):
        r.breaker("shared-name", failure_threshold=1, reset_timeout=600.0).call(ok)
    with pytest.raises(Boom):
        a.call("shared-name", fail)
    wait_until(lambda: same.state("shared-name") is State.OPEN, CONVERGENCE_BOUND)
    time.sleep(6 * SYNC_INTERVAL)
    assert other.state("shared-name") is State.CLOSED


# --------------------------------------------------------------------------------------------------
# Garbage in our keys


def write_garbage(server: RedisServer, key: bytes, kind: str) -> None:
    admin = server.admin()
    if kind == "wrong-type":
        ttl = admin.pttl(key)
        # In one transaction: the sync threads write these keys all the time, and one that
        # re-created the hash between a DEL and the RPUSH would make the RPUSH fail.
        replace = admin.pipeline(transaction=True)
        replace.delete(key)
        replace.rpush(key, "garbage", "\xff\xfe")
        if ttl > 0:
            replace.pexpire(key, ttl)
        replace.execute()
        return
    key_type = admin.type(key)
    if key_type == b"hash":
        for field in admin.hkeys(key):
            admin.hset(key, field, "-1e999 not a number \xff" if kind == "bad-values" else "")
    else:
        admin.set(key, "garbage \x00\xff" if kind == "bad-values" else "", keepttl=True)


@pytest.mark.parametrize("kind", ["bad-values", "empty-values", "wrong-type"])
def test_garbage_in_our_keys_is_ignored_with_a_warning(
    redis_server: RedisServer, namespace: str, registries: Any, records: Any, kind: str
) -> None:
    a, b = registries(redis_server.url, namespace), registries(redis_server.url, namespace)
    for r in (a, b):
        r.breaker("victim", failure_threshold=2, reset_timeout=600.0).call(ok)
    with pytest.raises(Boom):
        a.call("victim", fail)
    time.sleep(6 * SYNC_INTERVAL)
    keys = redis_server.keys("*")
    assert keys
    for key in keys:
        write_garbage(redis_server, key, kind)
    # Calls go on without an exception from Redis; the breaker keeps its local state.
    end = time.monotonic() + 10 * SYNC_INTERVAL
    while time.monotonic() < end:
        for r in (a, b):
            assert r.call("victim", ok) == "ok"
        time.sleep(0.005)
    assert a.state("victim") is State.CLOSED and b.state("victim") is State.CLOSED
    wait_until(lambda: sync_warnings(records), 5.0, "a warning about the malformed value")
    print(f"\n{kind}: {[r.getMessage() for r in sync_warnings(records)][:2]}")
    # Once the garbage is gone the fleet syncs again.
    redis_server.admin().delete(*keys)
    wait_until(lambda: redis_server.keys("*"), CONVERGENCE_BOUND, "the state was published again")
    wait_synced(a)
    wait_synced(b)
    for _ in range(2):
        with pytest.raises(Boom):
            a.call("victim", fail)
    wait_until(
        lambda: b.state("victim") is State.OPEN, CONVERGENCE_BOUND, "b saw the opening after the garbage"
    )
    assert sync_status(a)["connected"] and sync_status(b)["connected"]
