"""The Redis sync worker of ``Registry(redis=...)`` (issue 13; the protocol is in docs/redis.md).

One daemon thread per registry. Each round it reads every breaker's local word (no lock, no call
on the hot path), sends the changes of all of them to Redis in one script call (``EVALSHA``, the
script in ``_redis.py``), and installs the fleet's answer into each word with a compare-and-swap
(``_core._fleet_install``), so a local change made meanwhile is never overwritten. Calls never
wait on this thread: when Redis is away, the worker releases every breaker's fleet gate and the
breakers decide locally until it is back.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from . import _core

_log = logging.getLogger("panelboard")

# Ops sent per breaker (see the script).
SYNC, TRIP, PROBE_OK, PROBE_FAIL, SET_MODE, DELETE = range(6)
# Local modes (`_core._fleet_read`) and fleet modes (the script's reply).
CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED, DELETED = range(6)
FIELDS = 27
REPLY_FIELDS = 21
KEYS_PER_BREAKER = 4
# Breakers per script call: bounds the time one call holds Redis.
BATCH = 256
TOMBSTONE_MS = 60_000
# Breakers published by other processes are looked for every this many rounds.
DISCOVERY_ROUNDS = 4
# failure_threshold=None in the engine (NO_FAILURE_THRESHOLD, crates/engine/src/machine.rs).
NO_FAILURE_THRESHOLD = 2**64 - 1
# The engine's limits, which the script checks too (`limits_ok` in _redis.py).
MAX_FAILURE_THRESHOLD = 2**32 - 1
MAX_DURATION_MS = 2**35
MAX_PROBE_COUNT = 65535
MAX_REOPENS = 2047
# A breaker's state hash (docs/redis.md), as the script reads it.
STATE_FIELDS = ("g", "m", "f", "cv", "ft", "rt", "hm", "st", "pt", "e")
# The trip-policy options (issue 11) the fleet shares with the five above, as whole numbers (Lua
# numbers and Redis replies carry no floats safely): failure_rate, slow_call_duration (µs),
# slow_call_rate, window (µs), min_calls, backoff (millionths), max_reset_timeout (ms), jitter;
# ratios in billionths; -1 for None. A state hash without them (written before they travelled)
# has the defaults.
POLICY_FIELDS = ("fr", "sd", "sr", "w", "mc", "bo", "mr", "jt")
POLICY_DEFAULTS = (-1, -1, -1, 10_000_000, 10, 1_000_000, -1, 0)
RATIO_UNIT = 1_000_000_000
BACKOFF_UNIT = 1_000_000
MAX_BACKOFF = 10**15  # the script's largest whole number: a backoff of 10^9
MIN_WINDOW_US = 100


class Track:
    """What the worker knows of one local breaker since its last sync."""

    __slots__ = (
        "cfg_version",
        "core_id",
        "cv",
        "fg",
        "granted",
        "granted_gen",
        "handle",
        "key_prefix",
        "lcount",
        "lgen",
        "lmode",
        "pending",
        "pushed",
        "rejected",
        "warned",
        "wgen",
    )

    def __init__(self, core_id: int, handle: Any, key_prefix: str) -> None:
        self.core_id = core_id
        self.handle = handle
        self.key_prefix = key_prefix
        self.fg = -1  # fleet generation last seen; -1: never synced (matches any)
        self.lgen = 0  # the initial word: closed, generation 0, no failures
        self.lmode = CLOSED
        self.lcount = 0
        self.cv = 0
        self.cfg_version = 0
        self.rejected = 0
        self.granted = 0
        self.granted_gen = -1
        self.warned = False
        # The local window's buckets as last pushed (time index -> calls, failures, slow), of
        # local generation `wgen`; `pending`: what this round's push will make them.
        self.wgen = -1
        self.pushed: dict[int, tuple[int, int, int]] = {}
        self.pending: tuple[int, dict[int, tuple[int, int, int]]] | None = None


def _fleet_threshold(failure_threshold: int) -> int:
    """The engine's failure_threshold as the fleet stores it: None (the engine's u64::MAX, which
    Lua numbers cannot hold) travels as -1, like a probe_timeout of None."""
    return -1 if failure_threshold == NO_FAILURE_THRESHOLD else failure_threshold


def _ratio(value: float | None) -> int:
    return -1 if value is None else min(max(round(value * RATIO_UNIT), 1), RATIO_UNIT)


def _fleet_policy(policy: tuple[Any, ...]) -> tuple[int, ...]:
    """The local trip-policy options (`_fleet_read`) as the fleet stores them (POLICY_FIELDS)."""
    failure_rate, slow_ns, slow_rate, window_us, min_calls, backoff, max_reset_ms, jitter = policy
    return (
        _ratio(failure_rate),
        -1 if slow_ns is None else min(max((slow_ns + 500) // 1000, 1), MAX_DURATION_MS * 1000),
        _ratio(slow_rate),
        window_us,
        min_calls,
        min(round(backoff * BACKOFF_UNIT), MAX_BACKOFF),
        -1 if max_reset_ms is None else max_reset_ms,
        min(round(jitter * RATIO_UNIT), RATIO_UNIT - 1),
    )


def _options_ok(options: tuple[int, ...]) -> bool:
    """Whether the fleet's numeric options (the five, then POLICY_FIELDS) are within the engine's
    limits and fit together (the script's `limits_ok`)."""
    ft, rt, hm, st, pt, fr, sd, sr, w, mc, bo, mr, jt = options
    return (
        (ft == -1 or 1 <= ft <= MAX_FAILURE_THRESHOLD)
        and 0 <= rt <= MAX_DURATION_MS
        and 1 <= hm <= MAX_PROBE_COUNT
        and 1 <= st <= MAX_PROBE_COUNT
        and (pt == -1 or 1 <= pt <= MAX_DURATION_MS)
        and (fr == -1 or 1 <= fr <= RATIO_UNIT)
        and (sd == -1 or 1 <= sd <= MAX_DURATION_MS * 1000)
        and (sr == -1 or 1 <= sr <= RATIO_UNIT)
        and MIN_WINDOW_US <= w <= MAX_DURATION_MS * 1000
        and 1 <= mc <= MAX_FAILURE_THRESHOLD
        and BACKOFF_UNIT <= bo <= MAX_BACKOFF
        and (mr == -1 or rt <= mr <= MAX_DURATION_MS)
        and 0 <= jt < RATIO_UNIT
        and (ft != -1 or fr != -1 or sr != -1)
        and (sr == -1 or sd != -1)
    )


def _published_state(fields: object) -> bool:
    """Whether an HMGET of STATE_FIELDS + POLICY_FIELDS is a live breaker's state within the
    engine's limits (the script's `limits_ok`): what discovery needs before it makes a breaker."""
    if not isinstance(fields, list) or len(fields) != len(STATE_FIELDS) + len(POLICY_FIELDS):
        return False
    base = len(STATE_FIELDS)
    policy = [d if v is None else v for v, d in zip(fields[base:], POLICY_DEFAULTS)]
    try:
        g, m, f, cv, ft, rt, hm, st, pt, e = (int(v) for v in fields[:base])
        options = (ft, rt, hm, st, pt, *(int(v) for v in policy))
    except (TypeError, ValueError):
        return False
    return 0 <= m <= 4 and f >= 0 and _options_ok(options)


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _window_delta(track: Track, mode: int, gen: int, window: Any) -> tuple[int, int, int]:
    """What the sync script needs for the fleet's window: the counts the local window gained since
    the last push (calls, failures, slow; only while closed, of the local generation, bucket by
    bucket: a bucket's counts only grow while it is in the window). The script judges them by the
    fleet's stored rate rules. The buckets as read become `track.pushed` once the round succeeds
    (`Track.pending`)."""
    if window is None:
        track.pending = None
        return 0, 0, 0
    buckets = window[4]
    pushed = track.pushed if track.wgen == gen else {}
    now = {index: (calls, failures, slow) for index, calls, failures, slow in buckets}
    dc = df = ds = 0
    if mode == CLOSED:
        for index, (calls, failures, slow) in now.items():
            before = pushed.get(index, (0, 0, 0))
            dc += max(calls - before[0], 0)
            df += max(failures - before[1], 0)
            ds += max(slow - before[2], 0)
    track.pending = (gen, now)
    return dc, df, ds


class Worker:
    def __init__(
        self,
        registry: Any,
        client: Any,
        redis_module: Any,
        namespace: str,
        interval: float,
        timeout: float,
        token: str,
        script: str,
    ) -> None:
        self._registry = weakref.ref(registry)
        self._client = client
        self._redis = redis_module
        self._namespace = namespace
        self._interval = interval
        self._timeout = timeout
        self._token = token
        self._script = script
        self._sha: str | None = None
        self._tracks: dict[str, Track] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._status_lock = threading.Lock()
        self._connected = False
        self._in_outage = False
        self._last_sync: float | None = None
        self._errors = 0
        self._outages = 0
        self._last_error: str | None = None
        self._rounds = 0
        self._commands = 0
        self._malformed = 0
        self._cursor = 0  # index score up to which other processes' breakers are known
        self._index_key = f"{namespace}:{{index}}"
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"panelboard-redis-sync[{self._namespace}]", daemon=True
        )
        self._thread.start()

    def wake(self, *_args: object) -> None:
        """A state-change listener: a transition is pushed at once, not at the next poll."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout * 2 + 1.0)
        self._release_all()
        with self._status_lock:
            self._connected = False
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not raise
            pass

    def after_fork_in_child(self, token: str) -> None:
        """The worker thread does not survive fork: the child starts its own, with its own
        lease token (redis-py opens new connections in a new process by itself)."""
        self._token = token
        # Locks another thread held at the fork stay held in the child: make new ones.
        stopped = self._stop.is_set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._status_lock = threading.Lock()
        if stopped:
            self._stop.set()
        else:
            self.start()

    def status(self) -> dict[str, object]:
        with self._status_lock:
            return {
                "connected": self._connected,
                "last_sync": self._last_sync,
                "errors": self._errors,
                "outages": self._outages,
                "last_error": self._last_error,
                "rounds": self._rounds,
                "commands": self._commands,
                "malformed": self._malformed,
                "breakers": len(self._tracks),
                "namespace": self._namespace,
                "sync_interval": self._interval,
                "closed": self._stop.is_set(),
            }

    # --- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self._interval
        while True:
            # `close()` gets one last round: what happened locally just before it is pushed.
            stopping = self._stop.is_set()
            self._wake.clear()
            began = time.monotonic()
            registry = self._registry()
            if registry is None:
                break
            try:
                self._round(registry)
            except Exception as error:  # noqa: BLE001 - Redis trouble never leaves this thread
                self._failed(error)
                backoff = min(backoff * 2, max(1.0, self._interval))
            else:
                backoff = self._interval
            del registry
            if stopping:
                break
            if self._connected:
                self._pause(began)
            else:
                self._stop.wait(backoff)
        self._release_all()

    def _pause(self, began: float) -> None:
        """Until the next poll, `sync_interval` after the round began; a transition (the wake
        listener) brings the next round forward, but never to less than two thirds of an interval
        after this one: a flapping breaker costs at most 1.5 rounds per interval."""
        if not self._wake.wait(max(began + self._interval - time.monotonic(), 0.0)):
            return
        rest = began + self._interval * 2 / 3 - time.monotonic()
        if rest > 0:
            self._stop.wait(rest)

    def _failed(self, error: BaseException) -> None:
        self._release_all()
        with self._status_lock:
            self._errors += 1
            self._last_error = f"{type(error).__name__}: {error}"
            first = not self._in_outage
            self._in_outage = True
            self._connected = False
            if first:
                self._outages += 1
        if first:
            _log.warning(
                "panelboard: Redis sync of namespace %r is failing (%s: %s); breakers go on "
                "locally until it is back",
                self._namespace,
                type(error).__name__,
                error,
            )

    def _release_all(self) -> None:
        for track in list(self._tracks.values()):
            _core._fleet_gate(track.handle, -1, 0)

    def _evalsha(self, keys: list[str], args: list[object]) -> Any:
        """One script call. A missing script (Redis restarted, SCRIPT FLUSH) is loaded again and
        the call retried; the hash is never trusted to stay loaded."""
        noscript = self._redis.exceptions.NoScriptError
        self._commands += 1
        if self._sha is not None:
            try:
                return self._client.evalsha(self._sha, len(keys), *keys, *args)
            except noscript:
                self._sha = None
        self._commands += 2
        self._sha = self._client.script_load(self._script)
        return self._client.evalsha(self._sha, len(keys), *keys, *args)

    def _round(self, registry: Any) -> None:
        """One sync of every breaker. Always talks to Redis (a PING when there is no breaker yet),
        so that `connected` means what it says."""
        seen: dict[str, tuple[Track, tuple[Any, ...]]] = {}
        for name, core_id, handle in _core._fleet_breakers(registry):
            track = self._tracks.get(name)
            if track is None or track.core_id != core_id:
                hexname = name.encode("utf-8", "surrogatepass").hex()
                track = Track(core_id, handle, f"{self._namespace}:{{b{hexname}}}")
                self._tracks[name] = track
            seen[name] = (track, _core._fleet_read(handle))
        gone = [name for name in self._tracks if name not in seen]
        work: list[tuple[str, Track, tuple[Any, ...] | None, int]] = []
        keys: list[str] = []
        args: list[object] = []
        for name, (track, read) in seen.items():
            op = self._entry(track, read, keys, args)
            work.append((name, track, read, op))
        for name in gone:
            track = self._tracks[name]
            keys += self._keys(track)
            args += [DELETE, track.fg, 0, 0, 0, CLOSED, 0, 0, 0, 1, 0, 1, 1, -1]
            args += [0, -1, 0, 0, 0, *POLICY_DEFAULTS]
            work.append((name, track, None, DELETE))
        discover = self._rounds % DISCOVERY_ROUNDS == 0
        for start in range(0, max(len(work), 1), BATCH):
            chunk = work[start : start + BATCH]
            cursor = self._cursor if discover and start == 0 else -1
            reply = self._evalsha(
                keys[start * KEYS_PER_BREAKER : (start + len(chunk)) * KEYS_PER_BREAKER] + [self._index_key],
                [self._token, TOMBSTONE_MS, cursor] + args[start * FIELDS : (start + len(chunk)) * FIELDS],
            )
            if not isinstance(reply, list) or len(reply) != len(chunk) + 1:
                raise ValueError("malformed reply from the sync script")
            for (name, track, read, op), answer in zip(chunk, reply):
                self._apply(registry, name, track, read, op, answer)
            if cursor >= 0:
                self._discovered(registry, reply[-1])
        with self._status_lock:
            self._rounds += 1
            self._last_sync = time.time()
            if self._in_outage:
                _log.info("panelboard: Redis sync of namespace %r is back", self._namespace)
            self._in_outage = False
            self._connected = True

    def _discovered(self, registry: Any, found: object) -> None:
        """Makes the breakers other processes published (with this registry's defaults; the
        fleet's numeric configuration arrives with their first sync)."""
        if not isinstance(found, list) or not found or _int(found[0]) is None:
            return
        names: dict[str, str] = {}
        for member in found[1:]:
            try:
                name = bytes.fromhex(member.decode("ascii")).decode("utf-8", "surrogatepass")
            except (AttributeError, ValueError):
                with self._status_lock:
                    self._malformed += 1
                continue
            if name not in self._tracks:
                names[name] = f"{self._namespace}:{{b{member.decode('ascii')}}}"
        # An index entry is only a pointer anyone can write: a breaker is made only for a name
        # whose state hash is there and valid (not a tombstone, not garbage).
        if names:
            pipe = self._client.pipeline(transaction=False)
            for key in names.values():
                pipe.hmget(key, STATE_FIELDS + POLICY_FIELDS)
            self._commands += len(names)
            replies = pipe.execute(raise_on_error=False)
            for name, reply in zip(names, replies):
                if _published_state(reply):
                    registry.breaker(name)
        self._cursor = max(self._cursor, found[0])

    # --- one breaker -----------------------------------------------------------------------

    @staticmethod
    def _keys(track: Track) -> list[str]:
        prefix = track.key_prefix
        return [prefix, prefix + ":open", prefix + ":leases", prefix + ":window"]

    def _entry(self, track: Track, read: tuple[Any, ...], keys: list[str], args: list[object]) -> int:
        _bits, mode, gen, count, rejected, remaining, config, reopens, trip_ms, window = read
        version, ft, rt, hm, st, pt, policy = config
        op, add, reset = SYNC, 0, 0
        if gen == track.lgen and mode == track.lmode:
            if mode == CLOSED:
                if count >= track.lcount:
                    add = count - track.lcount
                else:  # a success cleared the count since the last sync
                    reset, add = 1, count
        elif mode == CLOSED:
            op = PROBE_OK if track.lmode == HALF_OPEN else SET_MODE
        elif mode == OPEN:
            op = PROBE_FAIL if track.lmode == HALF_OPEN else TRIP
        elif mode in (FORCED_OPEN, DISABLED):
            op = SET_MODE
        demand = mode in (OPEN, HALF_OPEN) and rejected > track.rejected
        if demand:
            want = hm
        elif track.granted and mode == HALF_OPEN and count > 0 and gen == track.granted_gen:
            want = track.granted  # probes out: keep (renew) their leases
        elif track.granted:
            want = -1  # count ours, renew none: unused leases lapse
        else:
            want = 0
        track.rejected = rejected
        cfg_changed = 1 if version != track.cfg_version and track.fg != -1 else 0
        keys += self._keys(track)
        args += [op, track.fg, add, reset, want, mode, count, remaining, cfg_changed]
        args += [_fleet_threshold(ft), rt, hm, st, pt, reopens, trip_ms]
        args += _window_delta(track, mode, gen, window)
        args += _fleet_policy(policy)
        return op

    def _apply(
        self,
        registry: Any,
        name: str,
        track: Track,
        read: tuple[Any, ...] | None,
        op: int,
        answer: object,
    ) -> None:
        if track.pending is not None:
            # The window's counts as read went out with this round (whatever the reply says: a
            # count pushed twice could trip the fleet; one lost cannot).
            track.wgen, track.pushed = track.pending
            track.pending = None
        fields = answer if isinstance(answer, list) else []
        values = [_int(v) for v in fields]
        if len(values) != REPLY_FIELDS or any(v is None for v in values):
            self._malformed_state(name, track)
            return
        g, mode, f, pttl, mine, cv, garbage, reopens = (*values[:6], *values[11:13])  # type: ignore[misc]
        options: tuple[int, ...] = (*values[6:11], *values[13:])  # type: ignore[arg-type]
        if garbage:
            self._malformed_state(name, track)
        if not 0 <= reopens <= MAX_REOPENS or pttl < 0 or not _options_ok(options):
            self._malformed_state(name, track)
            return
        if read is None or mode == DELETED:
            self._tracks.pop(name, None)
            if read is not None and op != DELETE:
                # Deleted by another process: delete ours, unless it is a newer breaker.
                for other, core_id, _ in _core._fleet_breakers(registry):
                    if other == name and core_id == track.core_id:
                        registry.delete(name)
                _core._fleet_gate(track.handle, -1, 0)
            return
        bits, lmode, lgen, count, _rejected, remaining, config = read[:7]
        if cv != track.cv:
            track.cv = cv
            self._apply_config(registry, name, track, config, options)
        else:
            track.cfg_version = config[0]
        track.fg = g
        target, arg = {
            CLOSED: (0, f),
            OPEN: (1, pttl),
            HALF_OPEN: (2, 0),
            FORCED_OPEN: (3, 0),
            DISABLED: (4, 0),
        }.get(mode, (None, 0))
        if target is None:
            self._malformed_state(name, track)
            return
        install = lmode != mode
        if not install:
            if mode == CLOSED:
                install = count != min(f, max(config[1] - 1, 0))
            elif mode == OPEN:
                install = abs(remaining - pttl) > max(50, int(self._interval * 1000))
            elif mode == HALF_OPEN:
                # Our leases lapsed while permits of this generation are out: a fresh generation
                # drops them (their late outcomes go stale), as a local probe reclaim does.
                install = track.granted_gen == lgen and mine < track.granted
        if install:
            done, new_bits, new_gen = _core._fleet_install(track.handle, bits, target, arg, reopens)
            if not done:
                # Changed locally meanwhile: that change is pushed next round. Everything up to
                # what was read is pushed already.
                track.lgen, track.lmode, track.lcount = lgen, lmode, count if lmode == CLOSED else 0
                return
            lgen, lmode = new_gen, mode
            count = min(f, max(config[1] - 1, 0)) if mode == CLOSED else 0
        track.lgen, track.lmode, track.lcount = lgen, lmode, count if lmode == CLOSED else 0
        leases = mine if mode == HALF_OPEN else 0
        track.granted, track.granted_gen = leases, lgen
        _core._fleet_gate(track.handle, lgen, leases)

    def _apply_config(
        self,
        registry: Any,
        name: str,
        track: Track,
        local: tuple[Any, ...],
        fleet: tuple[int, ...],
    ) -> None:
        """Applies the fleet's numeric options (a newer config version) with one `configure`: the
        engine validates them together, so a combination it refuses is garbage, never half
        applied."""
        ft, rt, hm, st, pt, fr, sd, sr, w, mc, bo, mr, jt = fleet
        if (_fleet_threshold(local[1]), *local[2:6], *_fleet_policy(local[6])) != fleet:
            try:
                registry.configure(
                    name,
                    failure_threshold=None if ft < 0 else ft,
                    reset_timeout=rt / 1000,
                    half_open_max_calls=hm,
                    success_threshold=st,
                    probe_timeout=None if pt < 0 else pt / 1000,
                    failure_rate=None if fr < 0 else fr / RATIO_UNIT,
                    slow_call_duration=None if sd < 0 else sd / 1_000_000,
                    slow_call_rate=None if sr < 0 else sr / RATIO_UNIT,
                    window=w / 1_000_000,
                    min_calls=mc,
                    backoff=bo / BACKOFF_UNIT,
                    max_reset_timeout=None if mr < 0 else mr / 1000,
                    jitter=jt / RATIO_UNIT,
                )
            except (TypeError, ValueError) as error:
                self._malformed_state(name, track, error)
        track.cfg_version = _core._fleet_read(track.handle)[6][0]

    def _malformed_state(self, name: str, track: Track, error: object = None) -> None:
        with self._status_lock:
            self._malformed += 1
        if not track.warned:
            track.warned = True
            _log.warning(
                "panelboard: malformed state of breaker %r in Redis ignored%s",
                name,
                f" ({error})" if error else "",
            )
