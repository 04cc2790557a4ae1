"""``Registry(redis=..., namespace=..., sync_interval=...)``: breakers shared by a fleet through Redis
or Valkey (issue 13; the protocol and its bounds are in docs/redis.md).

Imported by the registry only when it is made with ``redis=``, so ``import panelboard`` never
imports redis-py. Holds the validation of the options, the one Lua script every round runs, and
the process-wide bookkeeping of workers (stopped at exit, restarted in a forked child).
"""

from __future__ import annotations

import atexit
import math
import os
import secrets
import threading
import weakref
from typing import Any

from ._redis_worker import Worker

DEFAULT_NAMESPACE = "panelboard"
DEFAULT_SYNC_INTERVAL = 0.05
MAX_SYNC_INTERVAL = 3600.0

_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
_workers_lock = threading.Lock()


def _type_name(value: object) -> str:
    return type(value).__name__


def _options(url: object, namespace: object, sync_interval: object) -> tuple[str, str, float]:
    if not isinstance(url, str):
        raise TypeError(f"redis must be a URL str (redis://, rediss://, unix://), not {_type_name(url)}")
    if not url:
        raise ValueError("redis must be a URL (redis://, rediss://, unix://), not an empty string")
    if namespace is None:
        namespace = DEFAULT_NAMESPACE
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {_type_name(namespace)}")
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(
            f"namespace must be a non-empty str without braces (they mark Redis hash tags), got {namespace!r}"
        )
    if sync_interval is None:
        sync_interval = DEFAULT_SYNC_INTERVAL
    if isinstance(sync_interval, bool) or not isinstance(sync_interval, (int, float)):
        raise TypeError(f"sync_interval must be a number of seconds, not {_type_name(sync_interval)}")
    interval = float(sync_interval)
    if not math.isfinite(interval) or not 0 < interval <= MAX_SYNC_INTERVAL:
        raise ValueError(
            f"sync_interval must be > 0 and <= {MAX_SYNC_INTERVAL:g} seconds, got {sync_interval!r}"
        )
    return url, namespace, interval


def start(registry: Any, url: object, namespace: object, sync_interval: object) -> Worker:
    """Makes the client and starts the worker of a new registry. Nothing touches the network here:
    a Redis that is down at start only delays the first sync."""
    url, namespace, interval = _options(url, namespace, sync_interval)
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as error:
        raise ImportError(
            "Registry(redis=...) needs the redis-py client: pip install 'panelboard[redis]'"
        ) from error
    # A hung or stopped server must only ever stall the worker, and only this long.
    timeout = min(max(4 * interval, 0.25), 5.0)
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
    except ValueError as error:
        raise ValueError(f"redis: {error}") from None
    worker = Worker(registry, client, redis, namespace, interval, timeout, secrets.token_hex(8), SCRIPT)
    # A transition is pushed at once; plain failures wait for the next round.
    registry.on_state_change(worker.wake)
    with _workers_lock:
        _workers.add(worker)
    worker.start()
    return worker


@atexit.register
def _close_all() -> None:
    for worker in list(_workers):
        worker.close()


def _after_fork_in_child() -> None:
    global _workers_lock
    _workers_lock = threading.Lock()
    for worker in list(_workers):
        worker.after_fork_in_child(secrets.token_hex(8))


os.register_at_fork(after_in_child=_after_fork_in_child)

SCRIPT = """\
-- panelboard fleet sync (issue 13, docs/redis.md): one call applies a batch of breakers.
--
-- KEYS, four per breaker: state hash, open timer (a key whose expiry, on the server's clock, is
-- the end of the open period), leases (sorted set: one member per lease, scored by its expiry),
-- window (hash: the fleet's rate-rule counts per bucket of the server's clock); then the
-- namespace's index (sorted set: hex name -> server time it was published).
-- ARGV[1] process token, ARGV[2] tombstone TTL (ms), ARGV[3] index cursor (-1: no discovery this
-- round), then FIELDS values per breaker (see below).
-- Reply, per breaker: {g, mode, f, open_pttl, my_leases, cv, ft, rt, hm, st, pt, garbage, k,
-- fr, sd, sr, w, mc, bo, mr, jt},
-- then {new cursor, hex names published after the cursor...}
--   mode: 0 closed, 1 open (timer running), 2 half-open (open, timer over: probes by lease),
--         3 forced open, 4 disabled, 5 deleted.
-- Every transition is a compare-and-swap on the breaker's generation `g`: an op carries the
-- generation its sender last saw (-1: its first sync, which matches any) and is applied only if
-- `g` still has that value; operator commands (reset, force_open, disable, delete) always apply.
-- A breaker that nothing changes costs one HMGET per round (two while open): reads never write.
local FIELDS = 27
local STATE_TTL = 86400000 -- a breaker nobody changes for a day is forgotten (and re-published)
local token = ARGV[1]
local tomb_ttl = tonumber(ARGV[2]) or 60000
local cursor = tonumber(ARGV[3]) or -1
local index = KEYS[#KEYS]
local clock = nil
local function now()
  if clock == nil then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end

local function int(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n ~= math.floor(n) or n < -1 or n > 1e15 then return nil end
  return n
end

-- The engine's limits (crates/engine/src/machine.rs): a value outside them is garbage, never
-- used. ft -1 is "no consecutive-failure rule" (failure_threshold=None), pt -1 "no probe_timeout".
local MAX_DURATION_MS = 34359738368 -- 2^35
local MAX_FAILURE_THRESHOLD = 4294967295 -- 2^32 - 1
local MAX_PROBE_COUNT = 65535
local MAX_REOPENS = 2047 -- the engine's open-time word keeps 11 bits of reopen count
local BUCKETS = 10 -- buckets of the fleet's window, a tenth of it each (the engine's local window has nine)
local MAX_WINDOW_FIELDS = 3 * (BUCKETS + 1) + 2
-- The trip-policy options (issue 11), as whole numbers: fr failure_rate and sr slow_call_rate in
-- billionths (-1: off), sd slow_call_duration in µs (-1: none), w window in µs, mc min_calls, bo
-- backoff in millionths, mr max_reset_timeout in ms (-1: none), jt jitter in billionths.
local RATIO = 1000000000
local MAX_DURATION_US = MAX_DURATION_MS * 1000
local MIN_WINDOW_US = 100
local POLICY_DEFAULTS = {-1, -1, -1, 10000000, 10, 1000000, -1, 0}
local function limits_ok(ft, rt, hm, st, pt, p)
  if not (ft ~= nil and rt ~= nil and hm ~= nil and st ~= nil and pt ~= nil
    and (ft == -1 or (ft >= 1 and ft <= MAX_FAILURE_THRESHOLD))
    and rt >= 0 and rt <= MAX_DURATION_MS
    and hm >= 1 and hm <= MAX_PROBE_COUNT and st >= 1 and st <= MAX_PROBE_COUNT
    and (pt == -1 or (pt >= 1 and pt <= MAX_DURATION_MS))) then return false end
  for j = 1, 8 do if p[j] == nil then return false end end
  local fr, sd, sr, w, mc, bo, mr, jt = p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]
  return (fr == -1 or (fr >= 1 and fr <= RATIO))
    and (sd == -1 or (sd >= 1 and sd <= MAX_DURATION_US))
    and (sr == -1 or (sr >= 1 and sr <= RATIO))
    and w >= MIN_WINDOW_US and w <= MAX_DURATION_US
    and mc >= 1 and mc <= MAX_FAILURE_THRESHOLD
    and bo >= 1000000 and bo <= 1e15
    and (mr == -1 or (mr >= rt and mr <= MAX_DURATION_MS))
    and jt >= 0 and jt < RATIO
    and (ft ~= -1 or fr ~= -1 or sr ~= -1) -- a breaker needs a trip rule
    and (sr == -1 or sd ~= -1) -- slow_call_rate needs slow_call_duration
end

local out = {}

-- The fleet's window of a breaker at generation `g`: adds the sender's new counts (dc calls, df
-- failures, ds slow) to the bucket of the server's time and returns the window's sums (calls,
-- failures, slow) and whether garbage was found. One hash per breaker: `g` the generation the
-- counts belong to (another generation's window is dropped: a transition starts an empty one),
-- `w` the bucket width in ms (the fleet's window's when it was started; a window of another width
-- only starts with the next generation), and `c<i>`, `f<i>`, `s<i>` the counts of bucket i (server ms / w). Buckets
-- that left the window are deleted as the window moves, and the key expires one window after its
-- last count: a bounded number of fields, never an entry per call.
local function window_add(wk, g, bw, dc, df, ds)
  local bad = false
  local fields = {}
  local len = redis.pcall('HLEN', wk)
  if type(len) ~= 'number' or len > MAX_WINDOW_FIELDS then
    bad = true
    redis.call('DEL', wk)
  elseif len > 0 then
    local h = redis.call('HGETALL', wk)
    for j = 1, #h, 2 do fields[h[j]] = h[j + 1] end
  end
  local width, wg = int(fields['w']), int(fields['g'])
  if fields['w'] and (width == nil or width < 1 or width > MAX_DURATION_MS) then bad = true; width = nil end
  if fields['g'] and wg == nil then bad = true end
  if width == nil or wg ~= g then
    if next(fields) ~= nil then redis.call('DEL', wk) end
    fields = {}
    width = bw
    redis.call('HSET', wk, 'g', g, 'w', width)
  end
  local idx = math.floor(now() / width)
  local sums = {c = 0, f = 0, s = 0}
  local drop = {}
  for name, value in pairs(fields) do
    if name ~= 'g' and name ~= 'w' then
      local kind, at = string.match(name, '^([cfs])(%d+)$')
      local n = int(value)
      at = tonumber(at)
      if kind == nil or at == nil or n == nil or n < 0 then
        bad = true
        drop[#drop + 1] = name
      elseif at <= idx - BUCKETS or at > idx then
        drop[#drop + 1] = name -- left the window (or from before a step back of the clock)
      else
        sums[kind] = sums[kind] + n
      end
    end
  end
  if #drop > 0 then redis.call('HDEL', wk, unpack(drop)) end
  redis.call('HINCRBY', wk, 'c' .. idx, dc)
  sums.c = sums.c + dc
  if df > 0 then redis.call('HINCRBY', wk, 'f' .. idx, df); sums.f = sums.f + df end
  if ds > 0 then redis.call('HINCRBY', wk, 's' .. idx, ds); sums.s = sums.s + ds end
  redis.call('PEXPIRE', wk, width * (BUCKETS + 1))
  return sums.c, sums.f, sums.s, bad
end

for i = 0, ((#KEYS - 1) / 4) - 1 do
  local sk, ok_, lk, wk = KEYS[4 * i + 1], KEYS[4 * i + 2], KEYS[4 * i + 3], KEYS[4 * i + 4]
  local a = 4 + i * FIELDS
  local op, fg, add, reset, want = int(ARGV[a]), int(ARGV[a + 1]), int(ARGV[a + 2]), int(ARGV[a + 3]), int(ARGV[a + 4])
  local lmode, lcount, lremain, cfgch = int(ARGV[a + 5]), int(ARGV[a + 6]), int(ARGV[a + 7]), int(ARGV[a + 8])
  local cft, crt, chm, cst, cpt = int(ARGV[a + 9]), int(ARGV[a + 10]), int(ARGV[a + 11]), int(ARGV[a + 12]), int(ARGV[a + 13])
  -- The sender's open period's reopen count (backoff), its draw for a trip from closed, the
  -- counts its window gained since its last round, and its trip-policy options (cp: what it
  -- publishes with the five above).
  local lreopens, trip = int(ARGV[a + 14]), int(ARGV[a + 15])
  local dc, df, ds = int(ARGV[a + 16]), int(ARGV[a + 17]), int(ARGV[a + 18])
  local cp = {}
  for j = 1, 8 do cp[j] = int(ARGV[a + 18 + j]) end
  if lreopens == nil or lreopens < 0 or lreopens > MAX_REOPENS then lreopens = 0 end
  if trip == nil or trip < 0 or trip > MAX_DURATION_MS then trip = nil end
  if not (dc and df and ds and dc > 0 and df >= 0 and ds >= 0 and df <= dc and ds <= dc) then dc = 0 end

  -- Garbage in our keys (someone else wrote them): dropped and re-published, never trusted.
  local garbage = 0
  local g, m, f, cv, ft, rt, hm, st, pt, e, k
  local p = {}
  local h = redis.pcall('HMGET', sk, 'g', 'm', 'f', 'cv', 'ft', 'rt', 'hm', 'st', 'pt', 'e', 'k',
    'fr', 'sd', 'sr', 'w', 'mc', 'bo', 'mr', 'jt')
  if type(h) == 'table' and h.err == nil then
    g, m, f, cv = int(h[1]), int(h[2]), int(h[3]), int(h[4])
    ft, rt, hm, st, pt, e = int(h[5]), int(h[6]), int(h[7]), int(h[8]), int(h[9]), int(h[10])
    k = 0
    if h[11] then k = int(h[11]) end -- missing in a state written before reopens were kept
    -- Missing in a state written before the trip-policy options travelled: their defaults.
    for j = 1, 8 do
      if h[11 + j] then p[j] = int(h[11 + j]) else p[j] = POLICY_DEFAULTS[j] end
    end
    if not (g and m and f and cv and ft and rt and hm and st and pt and e and k)
      or m < 0 or m > 5 or f < 0 or k < 0 or k > MAX_REOPENS or not limits_ok(ft, rt, hm, st, pt, p) then
      for j = 1, 19 do if h[j] then garbage = 1 end end
      g = nil
    elseif m == 5 and fg == -1 and op ~= 5 then
      g = nil -- a tombstone, and a breaker made since under that name: it starts afresh
    end
  else
    garbage = 1
  end

  local dirty = false
  -- The open period: `px` when the sender drew one (backoff, jitter: its local trip or probe
  -- failure, or its draw for a trip of the fleet's counts), else the fleet's reset_timeout; it
  -- is the `reopens`-th reopen since the breaker closed (kept as `k`, so that the next prober
  -- backs off from it, whichever process it is).
  local open_ms = rt
  local function open_now(px, reopens)
    m = 1
    g = g + 1
    f = 0
    k = reopens or 0
    open_ms = rt
    if px and px > 0 and px <= MAX_DURATION_MS then open_ms = px end
    if open_ms > 0 then redis.call('SET', ok_, g, 'PX', open_ms) else redis.call('DEL', ok_) end
    redis.call('DEL', lk)
    dirty = true
  end

  if g == nil then
    -- Missing (a new breaker, Redis restarted empty, expired) or garbage: publish the sender's
    -- own state. The generation starts at the server's time so it never repeats an older one.
    redis.call('DEL', sk, ok_, lk, wk)
    g = now()
    e = g
    f = 0
    k = 0
    if lmode == 0 then m = 0; f = lcount or 0
    elseif lmode == 1 or lmode == 2 then
      m = 1
      k = lreopens
      if lmode == 1 and lremain and lremain > 0 then redis.call('SET', ok_, g, 'PX', lremain) end
    elseif lmode == 3 or lmode == 4 then m = lmode
    else m = 0 end
    cv, ft, rt, hm, st, pt = 1, 5, 30000, 1, 1, -1
    p = POLICY_DEFAULTS
    if limits_ok(cft, crt, chm, cst, cpt, cp) then ft, rt, hm, st, pt, p = cft, crt, chm, cst, cpt, cp end
    if op == 5 then m = 5 end
    op = 0
    if m ~= 5 then
      local hexname = string.match(sk, '{b(%x*)}$')
      if hexname then
        if type(redis.pcall('ZADD', index, now(), hexname)) ~= 'number' then
          garbage = 1
          redis.call('DEL', index)
          redis.call('ZADD', index, now(), hexname)
        end
        redis.call('PEXPIRE', index, STATE_TTL)
      end
    end
    fg = g
    add = 0
    dirty = true
  end

  if cfgch == 1 and limits_ok(cft, crt, chm, cst, cpt, cp) then
    cv = cv + 1
    ft, rt, hm, st, pt, p = cft, crt, chm, cst, cpt, cp
    dirty = true
  end

  -- A generation from before the current epoch (the state was lost: Redis restarted empty,
  -- the key expired or held garbage), while nothing has changed since the state was re-published,
  -- has nothing to conflict with: the sender's change applies, and so does its state when it is
  -- more cautious than the one re-published first (a process that connected first after a restart
  -- must not close a breaker the others hold open). Once the fleet moved on (a reset, a trip),
  -- a process that comes back late adopts that instead.
  local stale_epoch = fg ~= -1 and fg < e and g == e
  local matches = (fg == -1) or (fg == g) or stale_epoch
  if stale_epoch and m == 0 and lmode and lmode ~= 0 then
    if lmode == 1 or lmode == 2 then
      m = 1
      g = g + 1
      f = 0
      k = lreopens
      if lmode == 1 and lremain and lremain > 0 then redis.call('SET', ok_, g, 'PX', lremain) end
    elseif lmode == 3 or lmode == 4 then
      m = lmode
      g = g + 1
      f = 0
      k = 0
    end
    dirty = true
    if op ~= 4 and op ~= 5 then op = 0 end
    matches = true
    fg = g
  end

  -- The open timer: its remaining time, on the server's clock (-2: none; -1: garbage, no expiry;
  -- beyond the longest open period, garbage too: no client sets one, and trusted it would hold
  -- the whole fleet open for years).
  local pttl = -2
  if m == 1 then
    pttl = redis.call('PTTL', ok_)
    if pttl == -1 or pttl > MAX_DURATION_MS then garbage = 1; redis.call('DEL', ok_); pttl = -2 end
  end
  local timer = pttl > 0
  local moved = false
  if op == 4 and lmode and (lmode == 0 or lmode == 3 or lmode == 4) then
    m = lmode; g = g + 1; f = 0; k = 0; moved = true; dirty = true
    redis.call('DEL', ok_, lk)
  elseif op == 5 then
    m = 5; g = g + 1; f = 0; k = 0; moved = true; dirty = true
    redis.call('DEL', ok_, lk, wk)
    local hexname = string.match(sk, '{b(%x*)}$')
    if hexname then redis.call('ZREM', index, hexname) end
  elseif matches then
    if op == 1 and m == 0 then open_now(lremain, lreopens); moved = true
    elseif op == 2 and m == 1 and not timer then
      m = 0; g = g + 1; f = 0; k = 0; moved = true; dirty = true
      redis.call('DEL', lk)
    elseif op == 3 and m == 1 and not timer then open_now(lremain, lreopens); moved = true
    end
  end
  -- Failures count only under the generation they were admitted in.
  if matches and not moved and m == 0 and add and (add > 0 or reset == 1) then
    if reset == 1 then f = add else f = f + add end
    if ft > 0 and f >= ft then open_now(trip, 0); moved = true end
    dirty = true
  end
  -- The rate rules judge the fleet's window (the fleet's stored rules on everyone's counts), with
  -- the same compare-and-swap on `g`: counts of another generation never land in this one's window.
  -- Buckets: a tenth of the window, in whole milliseconds of the server's clock.
  local fr, sr, mc = p[1], p[3], p[5]
  if matches and not moved and m == 0 and dc > 0 and (fr > 0 or sr > 0) then
    local bw = math.max(math.ceil(p[4] / BUCKETS / 1000), 1)
    local calls, fails, slow, bad = window_add(wk, g, bw, dc, df, ds)
    if bad then garbage = 1 end
    if calls >= mc and ((fr > 0 and fails / calls >= fr / RATIO) or (sr > 0 and slow / calls >= sr / RATIO)) then
      open_now(trip, 0)
      moved = true
      redis.call('DEL', wk)
    end
  end
  if moved and m == 1 then
    pttl = open_ms
    timer = open_ms > 0
  end
  if pttl < 0 then pttl = 0 end

  -- Probe leases: at most `hm` live in the whole fleet. `want` > 0: the leases the sender wants
  -- (its own are renewed, up to probe_timeout after their grant when that is set); -1: count its
  -- leases, renew none. A dead prober renews nothing: its lease lapses.
  local mine = 0
  if m == 1 and not timer and want and want ~= 0 then
    local live = redis.pcall('ZREMRANGEBYSCORE', lk, '-inf', now())
    if type(live) == 'table' and live.err then garbage = 1; redis.call('DEL', lk) end
    local members = redis.call('ZRANGE', lk, 0, -1)
    local prefix = token .. ':'
    local ttl = pt
    if ttl <= 0 then ttl = math.max(rt, 1000) end
    for _, member in ipairs(members) do
      if string.sub(member, 1, #prefix) == prefix then
        mine = mine + 1
        if want > 0 then
          local granted_at = tonumber(string.match(member, ':(%d+):%d+$'))
          if pt <= 0 or (granted_at and now() - granted_at < pt) then
            redis.call('ZADD', lk, 'XX', now() + ttl, member)
          end
        end
      end
    end
    if want > mine and matches then
      local grant = math.min(want - mine, hm - #members)
      if grant > 0 then
        for n = 1, grant do
          redis.call('ZADD', lk, now() + ttl, prefix .. g .. ':' .. now() .. ':' .. n)
        end
        redis.call('PEXPIRE', lk, ttl)
        mine = mine + grant
      end
    end
  end

  if dirty then
    redis.call('HSET', sk, 'g', g, 'm', m, 'f', f, 'cv', cv, 'ft', ft, 'rt', rt, 'hm', hm, 'st', st, 'pt', pt, 'e', e, 'k', k,
      'fr', p[1], 'sd', p[2], 'sr', p[3], 'w', p[4], 'mc', p[5], 'bo', p[6], 'mr', p[7], 'jt', p[8])
    if m == 5 then redis.call('PEXPIRE', sk, tomb_ttl) else redis.call('PEXPIRE', sk, STATE_TTL) end
  end

  local mode = m
  if m == 1 and not timer then mode = 2 end
  out[i + 1] = {g, mode, f, pttl, mine, cv, ft, rt, hm, st, pt, garbage, k, p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]}
end

-- Discovery: breakers other processes published since the cursor (forgotten after a day). Only
-- entries scored before the server's current millisecond count (one published later in this
-- millisecond is found next round): the cursor never passes the server's clock, so an entry that
-- anyone scored in the far future cannot hide later publications. Entries beyond now + a minute
-- (a clock step's slack) are no publication: garbage, removed.
local found = {cursor}
if cursor >= 0 then
  local ok, entries = pcall(redis.call, 'ZRANGEBYSCORE', index, '(' .. cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, 1000)
  if ok and type(entries) == 'table' then
    for k = 1, #entries, 2 do
      local score = tonumber(entries[k + 1])
      if score and score < now() then
        found[#found + 1] = entries[k]
        if score > found[1] then found[1] = score end
      elseif not score or score > now() + 60000 then
        redis.call('ZREM', index, entries[k])
      end
    end
  else
    redis.call('DEL', index)
  end
end
out[#out + 1] = found
return out
"""
