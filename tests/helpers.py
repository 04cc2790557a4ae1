"""Helpers shared by the tests: import them from here rather than copying them into a test file.

- Exceptions: ``Boom`` (the failure guarded functions raise), ``ClientError`` (one a test
  configures as ignored, say a 4xx), ``CustomBase`` (a ``BaseException`` that is not an
  ``Exception``: an ignored outcome).
- Guarded functions: ``fail`` / ``afail`` (raise ``Boom``), ``ok`` (returns ``"ok"``),
  ``raiser(exc)`` (a function raising ``exc``); ``names_of(api)`` (the names ``list()`` reports).
- Tripping a breaker: ``trip(b, times)``, ``atrip(b)``, ``fail_with(b, *excs, times)``,
  ``raise_in_block(b, exc)`` (a ``with b:`` block that raises),
  ``fail_n(api, name, n, **options)``, ``open_with_permits(b)``, ``open_then_half_open(b, clock,
  timeout)``, ``half_open(registry, clock, name, probes, **options)`` and
  ``assert_half_opens_after(registry, clock, seconds)``.
- Trip policies (issue 11): ``outcomes(b, pattern)`` (one call per letter of ``"SF..."``),
  ``taking(clock, seconds, result)`` (a function whose call takes ``seconds`` on a ``ManualClock``),
  ``window_of(m)`` (a ``Metrics``' window fields as a tuple), ``open_time(b)`` (how long
  an open breaker stays open, checked against both places that report it).
- asyncio: ``cancel_while_running(start, started)``.
- Threads: ``run_threads(target, n)``, ``in_thread(target, *args, **kwargs)`` (returns a
  joiner), ``hold_in_call(call, *args, result)`` (a call held inside its function on another
  thread until the test finishes it). Every wait has a timeout, so a deadlock fails the test
  instead of hanging it. The ``frequent_switches`` fixture (``conftest.py``) makes GIL builds
  interleave threads often.
- Processes: ``fork_and_check(child_checks)`` and ``run_python(*args)``.
- Waiting: ``wait_until(predicate, timeout, what)`` (returns the seconds it took).
- Redis-synced registries (issue 13; the server fixtures are in ``redis_fixtures.py``):
  ``redis_registry(url, namespace, **defaults)``, ``wait_synced(registry)``, ``close_registry(registry)``,
  ``sync_status(registry)`` (a dict: ``connected``, ``last_sync``, ``errors``), ``sync_warnings(records)``
  and ``Fleet`` (N ``multiprocessing`` spawn processes that run one function together, each with its
  index and a shared barrier).
- Shared-memory tables (issue 12): ``shared_table()`` (a unique table name, unlinked afterwards),
  ``segment_path(table)``, ``Worker(method, table, **options)`` (a spawned or forked process with a
  shared ``Registry`` that runs the code the test sends it), ``start_workers(...)`` and
  ``stop_workers(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from panelboard import CircuitOpenError, State

# Where the tests run: beside the source tree, or as a copy of tests/ against an installed wheel
# (`make test-wheels` copies tests/ and pyproject.toml into a temporary directory). Only the few tests
# that read the repository's own files (the source stub, README.md) use these, and fall back or skip
# when the source tree is not there.
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
IN_SOURCE_TREE = (ROOT / "Cargo.toml").is_file() and (
    ROOT / "python" / "panelboard" / "__init__.py"
).is_file()

TIMEOUT = 30.0  # seconds before a thread that has not finished counts as hung


# --------------------------------------------------------------------------------------------------
# Exceptions and guarded functions


class Boom(Exception):
    """The failure the guarded functions raise."""


class ClientError(Exception):
    """An error a breaker can be told to ignore (say, a 4xx)."""


class CustomBase(BaseException):
    """A BaseException that is not an Exception: an ignored outcome."""


def fail(*args: Any, **kwargs: Any) -> Any:
    raise Boom("down")


async def afail(*args: Any, **kwargs: Any) -> Any:
    await asyncio.sleep(0)
    raise Boom()


def ok(*args: Any, **kwargs: Any) -> str:
    return "ok"


def raiser(exc: BaseException) -> Callable[[], Any]:
    def f() -> Any:
        raise exc

    return f


def names_of(api: Any) -> set[str]:
    """The names ``api.list()`` reports (module or ``Registry``)."""
    return {n for n, _ in api.list()}


# --------------------------------------------------------------------------------------------------
# Tripping a breaker


def trip(b: Any, times: int = 1) -> None:
    """``times`` failed calls through the handle ``b``."""
    for _ in range(times):
        with pytest.raises(Boom):
            b.call(fail)


async def atrip(b: Any) -> None:
    """Failed ``acall``s until ``b`` is open."""
    while b.state is not State.OPEN:
        with pytest.raises(Boom):
            await b.acall(afail)


def fail_with(b: Any, *excs: BaseException, times: int = 1) -> None:
    """Calls through ``b`` that raise each of ``excs`` in turn, ``times`` times each (a failure or
    not, as ``b`` is configured); checks that each exception propagates."""
    for exc in excs:
        for _ in range(times):
            with pytest.raises(type(exc)):
                b.call(raiser(exc))


def raise_in_block(b: Any, exc: BaseException | None = None) -> None:
    """Leaves a ``with b:`` block by raising ``exc`` (a ``Boom`` by default); checks it propagates."""
    exc = Boom() if exc is None else exc
    with pytest.raises(type(exc)):
        with b:
            raise exc


def fail_n(api: Any, name: str, n: int, **options: Any) -> None:
    """``n`` failed calls by name, through the module or a ``Registry``."""
    for _ in range(n):
        with pytest.raises(Boom):
            api.call(name, fail, **options)


def open_with_permits(b: Any) -> None:
    """Fails permits until the breaker is open (closed or half-open to start with)."""
    for _ in range(100):
        if b.state is State.OPEN:
            return
        p = b.try_acquire()
        assert p is not None
        p.failure()
    raise AssertionError(f"breaker did not open: {b.metrics()}")


def open_then_half_open(b: Any, clock: Any, timeout: float) -> None:
    """Fails calls until the closed breaker ``b`` opens, then moves ``clock`` by its reset timeout."""
    for _ in range(100):
        if b.state is not State.CLOSED:
            break
        fail_with(b, Boom())
    assert b.state is State.OPEN
    clock.advance(timeout)
    assert b.state is State.HALF_OPEN


def trip_to_half_open(b: Any, clock: Any) -> None:
    """Opens ``b`` (``failure_threshold=1``, ``reset_timeout=1.0``) with one failed permit and lets it
    go half-open."""
    b.try_acquire().failure()
    clock.advance(1.0)
    assert b.state is State.HALF_OPEN


def probe_slot_is_free(b: Any) -> bool:
    """Whether a half-open ``b`` can admit a probe now; gives the slot back."""
    permit = b.try_acquire()
    if permit is None:
        return False
    permit.ignore()
    return True


def half_open(registry: Any, clock: Any, name: str, probes: int = 1, **options: Any) -> Any:
    """A new breaker ``name`` that is half-open now, with ``probes`` slots; returns its handle."""
    b = registry.breaker(name, failure_threshold=1, reset_timeout=1.0, half_open_max_calls=probes, **options)
    trip(b)
    clock.advance(1.0)
    assert b.state == State.HALF_OPEN
    return b


def assert_half_opens_after(registry: Any, clock: Any, seconds: float, name: str = "svc") -> None:
    """``name`` is open now, reports ``seconds`` as retry_after, and goes half-open exactly then."""
    with pytest.raises(CircuitOpenError) as info:
        registry.call(name, ok)
    assert info.value.retry_after == seconds
    clock.advance(seconds - 0.001)
    assert registry.state(name) is State.OPEN
    clock.advance(0.001)
    assert registry.state(name) is State.HALF_OPEN


# --------------------------------------------------------------------------------------------------
# Trip policies (issue 11)


def outcomes(b: Any, pattern: str) -> None:
    """One call through the handle ``b`` per letter: ``S`` succeeds, ``F`` raises ``Boom`` (spaces
    are skipped, for readability)."""
    for letter in pattern.replace(" ", ""):
        if letter == "S":
            assert b.call(ok) == "ok"
        elif letter == "F":
            with pytest.raises(Boom):
                b.call(fail)
        else:
            raise ValueError(f"unknown outcome letter {letter!r}")


def taking(clock: Any, seconds: float, result: Any = "ok") -> Callable[..., Any]:
    """A function that takes ``seconds`` of ``clock``'s time, then returns ``result`` (or raises it,
    if it is an exception)."""

    def fn(*args: Any, **kwargs: Any) -> Any:
        clock.advance(seconds)
        if isinstance(result, BaseException):
            raise result.with_traceback(None)
        return result

    return fn


def window_of(m: Any) -> tuple[int, int, int]:
    """``(window_calls, window_failures, window_slow)`` of a ``Metrics``."""
    return (m.window_calls, m.window_failures, m.window_slow)


def open_time(b: Any) -> float:
    """The seconds an open handle ``b`` reports until it goes half-open: ``metrics().retry_after``,
    checked equal to what a rejected call's ``CircuitOpenError`` says (no time passes in between
    on a ``ManualClock``). The rejected call counts in ``metrics().rejected``."""
    reported = b.metrics().retry_after
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.retry_after == reported
    return reported


async def cancel_while_running(start: Callable[[], Any], started: asyncio.Event, times: int = 3) -> None:
    """``times`` times: runs the coroutine ``start()`` returns as a task, waits until it sets
    ``started``, cancels it, and checks that the ``CancelledError`` propagates."""
    for _ in range(times):
        task = asyncio.create_task(start())
        await started.wait()
        started.clear()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------------------------------
# Threads


def run_threads(target: Callable[[int], object], n: int = 16, timeout: float = 60.0) -> None:
    """Runs target(i) on n threads; re-raises the first error; fails if any thread hangs."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    assert hung == 0, f"{hung} threads still running after {timeout}s (deadlock?)"
    if errors:
        raise errors[0]


def in_thread(target: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
    """Starts target(*args, **kwargs) on a daemon thread; returns a joiner, ``join(timeout, what)``,
    that returns its result, re-raises its error, and fails if it did not finish in time."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = target(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the joiner
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout: float = TIMEOUT, what: str | None = None) -> Any:
        t.join(timeout)
        if what is None:
            what = getattr(target, "__name__", repr(target))
        assert not t.is_alive(), f"{what} did not finish (blocked by a lock held while Python code runs?)"
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return join


def hold_in_call(
    call: Callable[..., Any], *args: Any, result: Any = None, **options: Any
) -> Callable[[], Any]:
    """Starts ``call(*args, fn, **options)`` on another thread, with ``fn`` waiting inside the call
    until the test finishes it; returns once ``fn`` is running. The returned ``finish()`` lets ``fn``
    return ``result`` (or raise it, if it is an exception), joins the thread, and returns what the
    call returned or re-raises what it raised."""
    inside, release = threading.Event(), threading.Event()

    def fn() -> Any:
        inside.set()
        assert release.wait(TIMEOUT), "the held call was never finished"
        if isinstance(result, BaseException):
            raise result
        return result

    join = in_thread(call, *args, fn, **options)

    def finish() -> Any:
        release.set()
        return join()

    if not inside.wait(TIMEOUT):
        finish()  # re-raises the reason the call never got to fn, if there is one
        raise AssertionError("the held call never ran its function")
    return finish


# --------------------------------------------------------------------------------------------------
# Processes


def fork_and_check(
    child_checks: Callable[[], object],
    parent_after_fork: Callable[[], object] | None = None,
    timeout: float = 60.0,
) -> None:
    """Forks; the child runs ``child_checks()`` and exits 0 if it passed, 1 with the traceback on
    the pipe if it failed. The parent runs ``parent_after_fork()`` (if given), then fails the test if
    the child fails or does not finish within ``timeout`` seconds."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the child: that is
        # exactly what the fork tests check does not happen.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code, message = 1, b"child did not report"
        try:
            os.close(read_fd)
            child_checks()
            code, message = 0, b"ok"
        except BaseException:
            message = traceback.format_exc().encode()
        finally:
            try:
                os.write(write_fd, message)
            finally:
                os._exit(code)
    os.close(write_fd)
    if parent_after_fork is not None:
        parent_after_fork()
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child hung (deadlock?); it said: {b''.join(chunks).decode()!r}")
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    report = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, f"child failed:\n{report}"
    assert report == "ok"


def run_python(*args: str, timeout: float = 120, **options: Any) -> subprocess.CompletedProcess[str]:
    """Runs this interpreter with ``args`` (``"-c", script`` or ``"-m", module, ...``), capturing
    its output as text; ``options`` go to ``subprocess.run`` (``env``, ``cwd``)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, **options)


# --------------------------------------------------------------------------------------------------
# Waiting


def wait_until(
    predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "", poll: float = 0.002
) -> float:
    """Polls ``predicate()`` until it is true; returns the seconds that took, fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        elapsed = time.monotonic() - start
        assert elapsed < timeout, f"not within {timeout}s: {what or predicate}"
        time.sleep(poll)
    return time.monotonic() - start


# --------------------------------------------------------------------------------------------------
# Redis-synced registries (issue 13)

#: The sync interval the Redis tests run with, in seconds.
SYNC_INTERVAL = 0.05


def redis_registry(url: str, namespace: str, sync_interval: float = SYNC_INTERVAL, **defaults: Any) -> Any:
    """A ``Registry`` shared through the Redis server at ``url`` under ``namespace``."""
    from panelboard import Registry

    return Registry(redis=url, namespace=namespace, sync_interval=sync_interval, **defaults)


def wait_synced(registry: Any, timeout: float = TIMEOUT) -> None:
    """Waits until a Redis-synced registry is connected, then two sync intervals more (its breakers
    are published and it has seen the others')."""
    wait_until(lambda: sync_status(registry)["connected"], timeout, "connected to Redis")
    time.sleep(2 * SYNC_INTERVAL)


def close_registry(registry: Any) -> None:
    """Stops a Redis-synced registry's background worker."""
    registry.close()


def sync_status(registry: Any) -> dict[str, Any]:
    """``registry.sync_status()`` as a dict with ``connected`` (bool), ``last_sync`` (when the last
    successful sync happened, or None) and ``errors`` (how many syncs failed so far)."""
    status = registry.sync_status()
    fields = (
        dict(status)
        if isinstance(status, dict)
        else {k: getattr(status, k) for k in dir(status) if not k.startswith("_")}
    )

    def first(*names: str) -> Any:
        for name in names:
            if name in fields:
                return fields[name]
        raise AssertionError(f"sync_status() has none of {names}: {status!r}")

    return {
        "connected": bool(first("connected")),
        "last_sync": first("last_sync", "last_success", "last_successful_sync", "last_sync_at"),
        "errors": int(first("errors", "error_count", "errors_total", "failed_syncs")),
        "raw": status,
    }


def sync_warnings(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """The WARNING (or worse) records of the ``panelboard`` logger that are not a breaker's
    transition: what a Redis-synced registry says about Redis (an outage, a malformed value)."""
    return [
        r
        for r in records
        if r.name == "panelboard" and r.levelno >= logging.WARNING and not hasattr(r, "old")
    ]


class Fleet:
    """``size`` processes started with ``multiprocessing``'s spawn method, kept for several tests.

    ``run(fn, *args)`` calls ``fn(index, barrier, *args)`` in every process at once (``index`` from 0
    to size - 1; ``barrier`` a ``multiprocessing.Barrier(size)`` they share) and returns their results
    in index order. ``fn`` must be a module-level function. A process that raises fails the run with
    its traceback; a run that does not finish within ``timeout`` seconds fails and ends the fleet.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.context = multiprocessing.get_context("spawn")
        self.barrier = self.context.Barrier(size, timeout=TIMEOUT)
        self.pool = self.context.Pool(size, initializer=_fleet_init, initargs=(self.barrier,))

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> list[Any]:
        self.barrier.reset()
        pending = self.pool.starmap_async(_fleet_call, [(fn, i, args) for i in range(self.size)], chunksize=1)
        try:
            results = pending.get(timeout)
        except multiprocessing.TimeoutError:
            self.close()
            raise AssertionError(f"the fleet did not finish {fn.__name__} within {timeout}s") from None
        errors = [r[1] for r in results if r[0] == "error"]
        assert not errors, "a fleet process failed:\n" + errors[0]
        return [r[1] for r in results]

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def report(what: str, values: list[float]) -> None:
    """Prints a fleet measurement (shown with ``pytest -s``): count, median and maximum in ms."""
    print(
        f"\n{what}: n={len(values)} median={statistics.median(values) * 1000:.1f} ms "
        f"max={max(values) * 1000:.1f} ms"
    )


def poll(predicate: Callable[[], object], timeout: float, pause: float = 0.001) -> float | None:
    """The monotonic time at which ``predicate()`` first held, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(pause)
    return None


def finish(barrier: Any, registry: Any) -> None:
    """Closes a fleet process's registry once every process is done: a process that acted last must
    not stop its worker (and drop its last push) while the others still wait to see it."""
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    finally:
        close_registry(registry)


def rejects(b: Any) -> bool:
    """Whether ``b`` rejects a call now (a permit it gives is handed back, ignored)."""
    permit = b.try_acquire()
    if permit is None:
        return True
    permit.ignore()
    return False


_fleet_barrier: Any = None


def _fleet_init(barrier: Any) -> None:
    global _fleet_barrier
    _fleet_barrier = barrier


def _fleet_call(fn: Callable[..., Any], index: int, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return ("ok", fn(index, _fleet_barrier, *args))
    except BaseException:  # noqa: BLE001 - reported to the parent
        try:
            _fleet_barrier.abort()  # the others stop waiting for this one
        finally:
            pass
        return ("error", f"process {index}:\n{traceback.format_exc()}")


# Shared-memory tables (issue 12)

# Where POSIX shared-memory objects live on Linux (shm_open("/NAME") is /dev/shm/NAME).
SHM_DIR = Path("/dev/shm")


def segment_path(table: str) -> Path:
    """The file behind a table: the path itself when the name contains a ``/``, else the POSIX
    shared-memory object under /dev/shm."""
    return Path(table) if "/" in table else SHM_DIR / table.lstrip("/")


def unlink_quietly(table: str) -> None:
    import panelboard

    panelboard.unlink_shared(table)  # False when there was none


@contextlib.contextmanager
def shared_table(prefix: str = "pb-test") -> Iterator[str]:
    """A table name no other test uses; the table is unlinked afterwards, whatever happened."""
    table = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        yield table
    finally:
        unlink_quietly(table)


METRICS_FIELDS = (
    "state",
    "consecutive_failures",
    "calls",
    "successes",
    "failures",
    "ignored",
    "rejected",
    "times_opened",
    "retry_after",
)


def plain_metrics(m: Any) -> Any:
    """A ``Metrics`` as a picklable namespace with the same attributes (a worker's answer)."""
    import types

    return types.SimpleNamespace(**{field: getattr(m, field) for field in METRICS_FIELDS})


def _worker_main(conn: Any, table: str, options: dict[str, Any]) -> None:
    """A worker process's loop: opens the shared registry, then runs each ``(kind, source)`` the
        test sends (``"exec"`` a statement block, ``"eval"`` an expression) in one namespace, answering
        ``("ok", value)`` or ``("error", traceback)``. ``events`` is what the process's listener heard,
    ``metrics(m)`` makes a ``Metrics`` picklable."""
    import panelboard

    namespace: dict[str, Any] = {"panelboard": panelboard, "os": os, "time": time, "threading": threading}
    try:
        registry = panelboard.Registry(shared=table, **options)
        events: list[tuple[str, str, str]] = []
        registry.on_state_change(lambda name, old, new: events.append((name, str(old.value), str(new.value))))
        namespace.update(registry=registry, events=events, Boom=Boom, fail=fail, ok=ok, metrics=plain_metrics)
        conn.send(("ok", os.getpid()))
    except BaseException:  # noqa: BLE001 - reported to the test
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            kind, source = conn.recv()
        except EOFError:
            return
        if kind == "quit":
            return
        try:
            if kind == "exec":
                exec(source, namespace)
                value = namespace.pop("result", None)
            else:
                value = eval(source, namespace)
            conn.send(("ok", value))
        except BaseException:  # noqa: BLE001 - reported to the test
            conn.send(("error", traceback.format_exc()))


class Worker:
    """A process started with ``method`` (``"spawn"`` or ``"fork"``) that opens
    ``Registry(shared=table, **options)`` and listens for code to run. ``eval(expr)`` and
    ``exec(block)`` (whose ``result`` variable is returned) run in the worker, re-raising its
    failure here as an ``AssertionError`` with the worker's traceback; every wait is bounded."""

    def __init__(self, method: str, table: str, **options: Any) -> None:
        context = multiprocessing.get_context(method)
        self.conn, child_conn = context.Pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process (3.12+)
            self.process = context.Process(
                target=_worker_main, args=(child_conn, table, options), daemon=True
            )
            self.process.start()
        child_conn.close()
        self.pid: int | None = None

    def started(self, timeout: float = 60.0) -> Worker:
        self.pid = self._answer(timeout, "open the shared registry")
        return self

    def _answer(self, timeout: float, what: str) -> Any:
        if not self.conn.poll(timeout):
            self.kill()
            raise AssertionError(f"worker did not answer within {timeout}s: {what}")
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise AssertionError(f"worker died ({self.process.exitcode}) running: {what}") from None
        if status == "error":
            raise AssertionError(f"in worker {self.process.pid}, running {what!r}:\n{value}")
        return value

    def send(self, kind: str, source: str) -> None:
        self.conn.send((kind, source))

    def eval(self, expression: str, timeout: float = TIMEOUT) -> Any:
        self.send("eval", expression)
        return self._answer(timeout, expression)

    def exec(self, block: str, timeout: float = TIMEOUT) -> Any:
        self.send("exec", block)
        return self._answer(timeout, block)

    def answer(self, timeout: float = TIMEOUT, what: str = "a command sent earlier") -> Any:
        """The answer to a command sent with ``send``."""
        return self._answer(timeout, what)

    def kill(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(("quit", ""))
            self.process.join(timeout)
        self.kill()
        self.conn.close()


def start_workers(method: str, table: str, n: int, **options: Any) -> list[Worker]:
    """``n`` workers, started together and each with its shared registry open."""
    workers = [Worker(method, table, **options) for _ in range(n)]
    try:
        for worker in workers:
            worker.started()
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.stop()
    assert not any(w.process.is_alive() for w in workers), "a worker process outlived the test"
