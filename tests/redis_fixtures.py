"""A real ``redis-server`` for the Redis-sharing tests (issue 13), and the fixtures that break it.

``conftest.py`` imports the fixtures from here:

- ``redis_server``: a running ``RedisServer`` on a free loopback port, persistence off, its own
  temporary directory; stopped after the test whatever happened (also if the test paused it).
- ``redis_server_factory``: ``make(**options)`` starts more servers (``password=``, ``unix_socket=True``,
  ``tls=True``), all stopped after the test.
- ``redis_url``: the URL of ``redis_server``; ``namespace``: a fresh namespace for the test.

A ``RedisServer`` can ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT: a hung server), ``stop()`` and
``start()`` again on the same port (down, then back), ``restart_empty()`` (back with no data: no
persistence), ``debug_sleep(seconds)`` (a slow server, from a thread), ``flush_scripts()``
(``SCRIPT FLUSH`` and ``FUNCTION FLUSH``), ``kill_clients()`` (``CLIENT KILL`` of every client but its
own), ``commands()`` (the ``INFO commandstats`` call counts) and ``admin()`` (a redis-py client).

Every wait is bounded; only loopback addresses and unix sockets are used. When ``redis-server`` is
not installed the tests that need it are skipped, except under CI (``CI`` set), where they fail:
``.ci/run`` and ``make test`` install it.

``PANELBOARD_REDIS_SERVER`` names another server binary to start instead, one that takes
``redis-server``'s options: ``make test-valkey`` runs these suites with ``valkey-server``
(``RedisServer.name`` and ``.version`` say which server answered).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest

START_TIMEOUT = 10.0  # seconds for a server to answer PING after its start
STOP_TIMEOUT = 5.0  # seconds for a server to exit after SIGTERM before it is killed

#: Names the server binary the fixtures start (default ``redis-server``; ``valkey-server`` for Valkey).
SERVER_ENV = "PANELBOARD_REDIS_SERVER"
#: How each server is installed when it is missing.
INSTALL_HINTS = {"redis-server": "make redis-server", "valkey-server": "make valkey-server"}

_live: set[RedisServer] = set()


def server_command() -> str:
    """The server binary the fixtures start: ``$PANELBOARD_REDIS_SERVER``, else ``redis-server``."""
    return os.environ.get(SERVER_ENV) or "redis-server"


def redis_server_binary() -> str:
    """The path of the server binary; skips (or fails under CI) when it is not installed."""
    command = server_command()
    path = shutil.which(command)
    if path is None:
        hint = INSTALL_HINTS.get(Path(command).name, f"or unset {SERVER_ENV}")
        message = f"{command} is not installed ({hint}; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def redis_client_module() -> Any:
    """``redis`` (redis-py); skips (or fails under CI) when it is not installed."""
    if os.environ.get("CI"):
        import redis

        return redis
    return pytest.importorskip("redis", reason="redis-py is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (the server's and the clients' CA)."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


class RedisServer:
    """One ``redis-server`` (or ``$PANELBOARD_REDIS_SERVER``) process: loopback TCP (or a unix
    socket, or TLS), no persistence. ``name`` and ``version`` are what the server reports once
    started (``INFO server``): ``redis 7.0.15``, ``valkey 8.0.1``."""

    def __init__(self, *, password: str | None = None, unix_socket: bool = False, tls: bool = False) -> None:
        self.binary = redis_server_binary()
        self.redis = redis_client_module()
        # A short path of its own: a unix socket's path must fit in 108 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="pb-redis-"))
        self.password = password
        self.unix_socket = str(self.directory / "redis.sock") if unix_socket else None
        self.tls = tls
        self.port = 0 if unix_socket else free_port()
        self.certificate: Path | None = None
        self._key: Path | None = None
        if tls:
            self.certificate, self._key = make_certificate(self.directory)
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._admin: Any = None
        self.name = ""
        self.version = ""

    # ----------------------------------------------------------------------------------------------
    # Addresses

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.unix_socket:
            return f"unix://{auth}{self.unix_socket}?db=0"
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.certificate}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def url_with(self, *, user: str | None = None, password: str | None = None) -> str:
        """A TCP URL with other credentials (``user`` for an ACL user)."""
        auth = ""
        if user is not None or password is not None:
            auth = f"{user or ''}:{password or ''}@"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    # ----------------------------------------------------------------------------------------------
    # Life cycle

    def arguments(self) -> list[str]:
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(0 if self.tls or self.unix_socket else self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
            "--daemonize",
            "no",
            "--enable-debug-command",
            "yes",
            "--databases",
            "2",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.unix_socket:
            args += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        if self.tls:
            assert self.certificate is not None and self._key is not None
            args += [
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.certificate),
                "--tls-key-file",
                str(self._key),
                "--tls-ca-cert-file",
                str(self.certificate),
                "--tls-auth-clients",
                "no",
            ]
        return args

    def start(self) -> RedisServer:
        """Starts the server (on the same port as before, if it ran before) and waits until it answers."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            self.arguments(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _live.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.log()
                self.process = None
                raise RuntimeError(f"{self.binary} exited at start: {err}\n{log}")
            try:
                if self.admin().ping():
                    self._identify()
                    return self
            except Exception:
                self._drop_admin()
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} did not answer within {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.02)

    def _identify(self) -> None:
        # Valkey reports `server_name:valkey` and `valkey_version` (and a Redis-compatible
        # `redis_version`); Redis has neither of the first two.
        info = self.admin().info("server")
        self.name = str(info.get("server_name") or "redis")
        self.version = str(info.get(f"{self.name}_version") or info.get("redis_version", "?"))

    def stop(self) -> None:
        """Stops the server (resuming it first if it is paused); kills it if it does not exit in time."""
        self._drop_admin()
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if self.paused:
                process.send_signal(signal.SIGCONT)
                self.paused = False
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        finally:
            if process.stderr:
                process.stderr.close()
            _live.discard(self)

    def restart_empty(self) -> None:
        """Stops the server and starts a new one on the same address: with persistence off, it is empty."""
        self.stop()
        self.start()  # clients may write to it at once: no check of its emptiness here

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.directory / "redis.log").read_text()[-4000:]
        except OSError:
            return ""

    # ----------------------------------------------------------------------------------------------
    # Faults

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connections stay open, nothing answers)."""
        assert self.process is not None
        self._drop_admin()
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def debug_sleep(self, seconds: float) -> Callable[[], None]:
        """``DEBUG SLEEP seconds`` from a thread of its own (the whole server is busy meanwhile);
        returns a joiner."""
        client = self.new_client(socket_timeout=seconds + 10.0)
        started = threading.Event()

        def sleep() -> None:
            started.set()
            try:
                client.execute_command("DEBUG", "SLEEP", seconds)
            finally:
                client.close()

        thread = threading.Thread(target=sleep, daemon=True)
        thread.start()
        started.wait(5.0)

        def join() -> None:
            thread.join(seconds + 15.0)
            assert not thread.is_alive(), "DEBUG SLEEP did not return"

        return join

    def flush_scripts(self, *, scripts: bool = True, functions: bool = True) -> None:
        if scripts:
            self.admin().script_flush()
        if functions:
            self.admin().function_flush()

    def kill_clients(self) -> int:
        """``CLIENT KILL TYPE normal SKIPME yes``: drops every client connection but the admin's."""
        return int(self.admin().execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))

    # ----------------------------------------------------------------------------------------------
    # Inspection

    def new_client(self, **options: Any) -> Any:
        options.setdefault("socket_timeout", 5.0)
        options.setdefault("socket_connect_timeout", 5.0)
        if self.unix_socket:
            return self.redis.Redis(unix_socket_path=self.unix_socket, password=self.password, **options)
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.certificate))
        return self.redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **options)

    def admin(self) -> Any:
        if self._admin is None:
            self._admin = self.new_client()
        return self._admin

    def _drop_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:
                pass

    def commands(self) -> dict[str, int]:
        """Calls per command since the last ``reset_stats()`` (``INFO commandstats``), leaving out the
        tests' own inspection commands (``INFO``, ``CONFIG``)."""
        stats = self.admin().info("commandstats")
        counts = {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}
        for own in ("info", "config|resetstat", "config"):
            counts.pop(own, None)
        return counts

    def monitor(self) -> Monitor:
        """A ``MONITOR`` connection counting, on a thread of its own, the commands clients send (those
        a script runs inside the server are not counted); TCP servers only."""
        return Monitor(self.port, self.password)

    def reset_stats(self) -> None:
        self.admin().config_resetstat()

    def keys(self, pattern: str = "*") -> list[bytes]:
        return sorted(self.admin().scan_iter(match=pattern, count=1000))

    def __hash__(self) -> int:
        return id(self)


class Monitor:
    """``with server.monitor() as m: ...`` then ``m.sent``: how many commands each client-sent command
    name had (lower case) while the block ran. Commands run by a Lua script are left out (MONITOR
    tags them ``lua``), and so are ``info``, ``config`` and ``ping`` (the tests' own)."""

    OWN = ("info", "config", "ping", "hello", "client")

    def __init__(self, port: int, password: str | None) -> None:
        self.port, self.password = port, password
        self.sent: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def __enter__(self) -> Monitor:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5.0)
        if self.password:
            sock.sendall(f"AUTH {self.password}\r\n".encode())
        sock.sendall(b"MONITOR\r\n")
        sock.settimeout(0.05)
        self._sock = sock
        buffer = bytearray()
        answers = 2 if self.password else 1

        def read() -> None:
            nonlocal answers
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer.extend(chunk)
                while (end := buffer.find(b"\r\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 2]
                    if answers:
                        assert line.startswith(b"+OK"), line
                        answers -= 1
                        if not answers:
                            self._ready.set()
                    else:
                        self._count(line)

        self._ready = threading.Event()
        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()
        assert self._ready.wait(5.0), "MONITOR did not start"
        return self

    def _count(self, line: bytes) -> None:
        # +1690000000.123456 [0 127.0.0.1:53412] "evalsha" "..." ; [0 lua] for a script's commands
        try:
            source = line[line.index(b"[") + 1 : line.index(b"]")]
            command = line[line.index(b"]") + 3 :].split(b'"', 1)[0].decode().lower()
        except ValueError:
            return
        if source.endswith(b" lua") or command in self.OWN:
            return
        self.sent[command] = self.sent.get(command, 0) + 1

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.05)  # the last lines arrive
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._sock is not None:
            self._sock.close()

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def _stop_leftovers() -> None:
    for server in list(_live):
        server.stop()


atexit.register(_stop_leftovers)


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def make(**options: Any) -> RedisServer:
        server = RedisServer(**options)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_server_factory()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    return f"pbtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def registries() -> Iterator[Any]:
    """``make(url, namespace, **defaults)``: Redis-synced registries, closed after the test."""
    made: list[Any] = []

    def make(url: str, namespace: str, **defaults: Any) -> Any:
        registry = helpers.redis_registry(url, namespace, **defaults)
        made.append(registry)
        return registry

    try:
        yield make
    finally:
        for registry in made:
            helpers.close_registry(registry)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record the ``panelboard`` logger emits during the test, at any level."""
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    logger = logging.getLogger("panelboard")
    handler = Keep(logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield kept
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture(scope="module")
def fleet() -> Iterator[helpers.Fleet]:
    """Eight spawned processes for a test module's fleet runs (``helpers.Fleet``)."""
    fleet = helpers.Fleet(8)
    try:
        yield fleet
    finally:
        fleet.close()
