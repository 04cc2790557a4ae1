"""gunicorn end to end (issue 12): real ``gunicorn`` with 4 sync workers on a loopback port serves
tests/gunicorn_app.py, whose handler calls a failing local upstream (a real HTTP server on loopback)
through a breaker of a shared table. After ``failure_threshold`` upstream failures in total, every
worker answers without calling the upstream, and the upstream sees exactly ``half_open_max_calls``
probes per half-open period.

gunicorn is installed by the test setup (``make venv``); it runs on POSIX systems only, so the test
skips elsewhere, and fails (never skips) on Linux when gunicorn is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest
from helpers import TESTS, wait_until
from panelboard import Registry, State
from panelboard._flaky_server import FlakyServer

if os.name != "posix":
    pytest.skip("gunicorn runs on POSIX systems only", allow_module_level=True)
if importlib.util.find_spec("gunicorn") is None and not sys.platform.startswith("linux"):
    pytest.skip("gunicorn is not installed on this platform", allow_module_level=True)

WORKERS = 4
FAILURE_THRESHOLD = 3
PROBES = 2
RESET_TIMEOUT = 1.5
UPSTREAM_DELAY = 0.3  # each upstream call takes this long, so that probes overlap
BATCH_WAIT = 5.0  # how long the upstream holds a probe for the others of its half-open period


class Upstream:
    """A FlakyServer whose every answer takes UPSTREAM_DELAY and has the status set here.

    With ``batching`` on, the upstream holds each request until PROBES requests are held (or
    BATCH_WAIT seconds have passed), then answers them all: so the probes of one half-open period,
    however slowly a busy machine schedules them, are all in flight together, and each request is
    recorded with the batch it was answered in."""

    def __init__(self) -> None:
        self.status = 500
        self.delay = UPSTREAM_DELAY
        self.batching = False
        self.batches: list[int] = []  # the batch of each request, in arrival order
        self._batch = 0
        self._held = 0
        self._cond = threading.Condition()
        self.server = FlakyServer(self._behaviour)

    def _behaviour(self, path: str) -> int:
        with self._cond:
            batch = self._batch
            self.batches.append(batch)
            if self.batching:
                self._held += 1
                if self._held < PROBES:
                    self._cond.wait_for(lambda: self._batch != batch, timeout=BATCH_WAIT)
                if self._batch == batch:  # complete, or waited long enough: answer this batch
                    self._held, self._batch = 0, batch + 1
                    self._cond.notify_all()
            else:
                self._batch += 1
        time.sleep(self.delay)
        return self.status

    def hits(self) -> int:
        with self._cond:
            return len(self.batches)


@contextlib.contextmanager
def gunicorn(table: str, upstream_url: str, preload: bool) -> Iterator[tuple[str, list[int]]]:
    """Starts gunicorn; yields (its URL, its workers' pids); stops it and every worker."""
    assert importlib.util.find_spec("gunicorn") is not None, "gunicorn is missing: `make venv` installs it"
    options = dict(
        failure_threshold=FAILURE_THRESHOLD,
        reset_timeout=RESET_TIMEOUT,
        half_open_max_calls=PROBES,
        probe_timeout=30.0,
    )
    env = dict(
        os.environ,
        PANELBOARD_TEST_TABLE=table,
        PANELBOARD_TEST_UPSTREAM=upstream_url + "/upstream",
        PANELBOARD_TEST_OPTIONS=json.dumps(options),
    )
    command = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--worker-class", "sync"]
    command += ["--bind", "127.0.0.1:0", "--pythonpath", str(TESTS), "--log-level", "info"]
    command += ["--graceful-timeout", "2", "--timeout", "60"]
    command += ["--preload"] if preload else []
    command += control_socket_off()
    command += ["gunicorn_app:app"]
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )
    log: list[str] = []
    ready = threading.Event()
    url: list[str] = []
    pids: list[int] = []

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            if "Listening at: " in line:
                url.append(line.split("Listening at: ", 1)[1].split()[0])
            if "Booting worker with pid: " in line:
                pids.append(int(line.rsplit(":", 1)[1]))
                if len(pids) == WORKERS:
                    ready.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        if not ready.wait(60):
            raise AssertionError("gunicorn did not start its workers:\n" + "".join(log))
        yield url[0], pids
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        reader.join(5)
        for pid in pids:
            wait_until(lambda pid=pid: not _alive(pid), 15, f"gunicorn worker {pid} to exit")


def control_socket_off() -> list[str]:
    """gunicorn 24+ opens a control socket at one fixed path in $HOME by default, which two
    servers at once (parallel test runs) would fight over: off where the option exists."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def get(url: str) -> tuple[int, int, float | None]:
    """(status, worker pid, retry-after or None) of one GET."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers = response.status, response.headers
            response.read()
    except urllib.error.HTTPError as err:
        status, headers = err.code, err.headers
        err.read()
    retry_after = headers.get("X-Retry-After")
    return status, int(headers["X-Worker-Pid"]), None if retry_after is None else float(retry_after)


@pytest.mark.parametrize("preload", [False, True], ids=["import-in-each-worker", "preload"])
def test_gunicorn_workers_share_one_breaker(table, preload):
    upstream = Upstream()
    with upstream.server, gunicorn(table, upstream.server.url, preload) as (url, pids):
        # Closed: each request calls the upstream, which fails; one at a time, so that exactly
        # failure_threshold calls are admitted before the breaker opens host-wide.
        for _ in range(FAILURE_THRESHOLD):
            assert get(url)[0] == 502
        assert upstream.hits() == FAILURE_THRESHOLD
        # Open: every worker answers without calling the upstream.
        answered_by: set[int] = set()
        deadline = time.monotonic() + RESET_TIMEOUT * 0.8
        while time.monotonic() < deadline or len(answered_by) < WORKERS:
            status, pid, retry_after = get(url)
            assert status == 503 and retry_after is not None, (status, pid)
            answered_by.add(pid)
            if len(answered_by) == WORKERS:
                break
            assert time.monotonic() < deadline, f"only workers {answered_by} of {pids} answered"
        assert answered_by == set(pids)
        assert upstream.hits() == FAILURE_THRESHOLD, "no worker called the upstream while open"
        assert Registry(shared=table).state("upstream") is State.OPEN

        # Half-open periods under load from 8 clients: each lets exactly PROBES calls through.
        hits_before = upstream.hits()
        upstream.batching = True
        statuses: list[int] = []
        lock = threading.Lock()
        stop_after = time.monotonic() + 2.6 * (RESET_TIMEOUT + UPSTREAM_DELAY)

        def client() -> None:
            while True:
                status, _, retry_after = get(url)
                with lock:
                    statuses.append(status)
                # Stop only well inside an open period: the last half-open period is complete.
                if time.monotonic() > stop_after and retry_after is not None and retry_after > 0.3:
                    return

        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "the clients hung"
        upstream.batching = False
        groups = [count for _, count in sorted(Counter(upstream.batches[hits_before:]).items())]
        assert len(groups) >= 2, groups
        assert groups == [PROBES] * len(groups), f"probes per half-open period: {groups}"
        assert statuses.count(502) == sum(groups)
        assert set(statuses) == {502, 503}

        # The upstream recovers: the next probes close the breaker, and every worker calls it again.
        upstream.status, upstream.delay = 200, 0.0
        wait_until(lambda: get(url)[0] == 200, 10 * RESET_TIMEOUT, "a probe success")
        assert Registry(shared=table).state("upstream") is State.CLOSED
        served_by = set()
        deadline = time.monotonic() + 30
        while served_by != set(pids) and time.monotonic() < deadline:
            status, pid, _ = get(url)
            assert status == 200
            served_by.add(pid)
        assert served_by == set(pids)
