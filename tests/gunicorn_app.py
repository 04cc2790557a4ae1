"""The WSGI app tests/test_gunicorn.py serves with real gunicorn workers: every request calls a
local upstream through one breaker of a shared table, so that the workers share it (issue 12).

Configured by the environment the test sets: ``PANELBOARD_TEST_TABLE`` (the table),
``PANELBOARD_TEST_UPSTREAM`` (the upstream's URL), ``PANELBOARD_TEST_OPTIONS`` (the breaker's
options, as JSON). Answers 200 with the upstream's body, 502 when the upstream failed (a failure
counted), 503 when the breaker rejected the call without calling the upstream; every answer says
which worker made it (``X-Worker-Pid``) and, for a 503, how long until the breaker half-opens
(``X-Retry-After``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from panelboard import CircuitOpenError, Registry

registry = Registry(
    shared=os.environ["PANELBOARD_TEST_TABLE"], **json.loads(os.environ["PANELBOARD_TEST_OPTIONS"])
)
upstream = registry.breaker("upstream")
UPSTREAM_URL = os.environ["PANELBOARD_TEST_UPSTREAM"]


def fetch() -> bytes:
    with urllib.request.urlopen(UPSTREAM_URL, timeout=10) as response:
        return bytes(response.read())


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    headers = [("X-Worker-Pid", str(os.getpid())), ("Content-Type", "text/plain")]
    try:
        body = upstream.call(fetch)
        status = "200 OK"
    except CircuitOpenError as err:
        status, body = "503 Service Unavailable", b"circuit open"
        headers.append(("X-Retry-After", f"{err.retry_after:.3f}"))
    except (urllib.error.URLError, OSError) as err:
        status, body = "502 Bad Gateway", str(err).encode()
    headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]
