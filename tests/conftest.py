"""Shared fixtures.

- ``clock``: a fresh ``ManualClock`` at 0.0.
- ``registry``: an isolated ``Registry`` driven by ``clock``.
- ``name``: a unique breaker name; deleted from the default registry after the test.
- ``server``: a running ``panelboard._flaky_server.FlakyServer`` on loopback, stopped after
  the test (the HTTP integrations' upstream).
- ``table``: a unique shared-memory table name (issue 12), unlinked after the test.
- ``frequent_switches``: on GIL builds, threads switch every few microseconds, so that schedules
  really interleave (``pytestmark = pytest.mark.usefixtures("frequent_switches")``).
- ``redis_server``, ``redis_server_factory``, ``redis_url``, ``namespace``: a real ``redis-server`` on
  loopback and a fresh namespace (``tests/redis_fixtures.py``).
- ``api``: parametrised over the module-level functions (default registry, with ``name`` cleaned
  up) and an isolated ``Registry``; both offer ``call``, ``state``, ``reset``, ``delete``, ``list``.
  The default registry reads the monotonic clock, so tests using ``api`` must not depend on time
  passing (use ``reset_timeout=0`` for "immediately half-open", a large one for "stays open").
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import panelboard
import pytest
from hypothesis import HealthCheck, settings
from panelboard._flaky_server import FlakyServer

# Plain `assert`s in the shared helpers and the reference model explain their failures too: registered
# before anything imports them (redis_fixtures below imports helpers).
pytest.register_assert_rewrite("helpers", "model")

# A real redis-server for the Redis-sharing tests (tests/redis_fixtures.py says what each one does).
from redis_fixtures import (  # noqa: E402, F401
    fleet,
    namespace,
    records,
    redis_server,
    redis_server_factory,
    redis_url,
    registries,
)

# CI machines are small and busy: a slow example is not a failure. Tests that set their own
# `settings` keep these for whatever they leave out.
settings.register_profile("panelboard", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("panelboard")


@pytest.fixture
def clock() -> panelboard.ManualClock:
    return panelboard.ManualClock()


@pytest.fixture
def registry(clock: panelboard.ManualClock) -> panelboard.Registry:
    return panelboard.Registry(clock=clock)


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    with FlakyServer() as server:
        yield server


@pytest.fixture
def name():
    value = f"test-{uuid.uuid4().hex}"
    yield value
    panelboard.delete(value)


@pytest.fixture
def table() -> Iterator[str]:
    from helpers import shared_table  # after register_assert_rewrite above

    with shared_table() as value:
        yield value


@pytest.fixture
def frequent_switches():
    """With a GIL, switch threads every few microseconds, so that operations really interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.fixture(params=["default", "instance"])
def api(request, name):
    if request.param == "default":
        return panelboard
    return panelboard.Registry()
