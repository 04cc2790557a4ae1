"""A local HTTP service that can be told to fail, stall or cut a body: for the demo and the tests.

Standard library only (``http.server.ThreadingHTTPServer`` on loopback, an ephemeral port). Paths:

- ``/ok``: 200, body ``ok``
- ``/status/<code>``: that status, body ``status <code>``
- ``/stall/<seconds>``: answers 200 after that long (or as soon as the server stops)
- ``/cut``: announces a 100 kB body, sends 1 kB of it and closes the connection
- ``/chunks/<n>``: a body of ``n`` 1 kB chunks, sent one by one
- ``/hold/<seconds>``: a 2 kB body whose second half comes after that long (or when the server stops)
- anything else: the status that ``behaviour(path)`` returns (200 when there is none)
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class FlakyServer:
    def __init__(self, behaviour: Callable[[str], int] | None = None) -> None:
        self.behaviour = behaviour
        self.hits: Counter[str] = Counter()
        self._hits_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, path: str) -> None:
        with self._hits_lock:
            self.hits[path] += 1

    def start(self) -> FlakyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases stalled handlers
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5.0)
        self._httpd.server_close()

    def __enter__(self) -> FlakyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up (a cut body, a timeout, a stream closed early) is part of the plan.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _handler(server: FlakyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as separate writes: without this, Nagle's algorithm and the
            # client's delayed ACK hold every response back for tens of milliseconds.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            server.count(path)
            parts = path.strip("/").split("/")
            if parts[0] == "ok":
                self._send(200, b"ok")
            elif parts[0] == "status" and len(parts) == 2:
                self._send(int(parts[1]), f"status {parts[1]}".encode())
            elif parts[0] == "stall" and len(parts) == 2:
                server._stopping.wait(float(parts[1]))
                self._send(200, b"late")
            elif parts[0] == "cut":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"x" * 1024)
                self.wfile.flush()
                self.close_connection = True
            elif parts[0] == "hold" and len(parts) == 2:
                self.send_response(200)
                self.send_header("Content-Length", "2048")
                self.end_headers()
                self.wfile.write(b"z" * 1024)
                self.wfile.flush()
                server._stopping.wait(float(parts[1]))
                self.wfile.write(b"z" * 1024)
            elif parts[0] == "chunks" and len(parts) == 2:
                n = int(parts[1])
                self.send_response(200)
                self.send_header("Content-Length", str(n * 1024))
                self.end_headers()
                try:
                    for _ in range(n):
                        self.wfile.write(b"y" * 1024)
                        self.wfile.flush()
                except OSError:
                    self.close_connection = True  # the client stopped reading
            else:
                status = server.behaviour(path) if server.behaviour is not None else 200
                self._send(status, b"ok" if status < 400 else b"unavailable")

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

    return Handler
