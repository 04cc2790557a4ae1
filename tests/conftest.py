"""Shared fixtures.

- ``clock``: a fresh ``ManualClock`` at 0.0.
- ``registry``: an isolated ``Registry`` driven by ``clock``.
- ``name``: a unique breaker name; deleted from the default registry after the test.
- ``api``: parametrised over the module-level functions (default registry, with ``name`` cleaned
  up) and an isolated ``Registry``; both offer ``call``, ``state``, ``reset``, ``delete``, ``list``.
  The default registry reads the monotonic clock, so tests using ``api`` must not depend on time
  passing (use ``reset_timeout=0`` for "immediately half-open", a large one for "stays open").
"""

from __future__ import annotations

import uuid

import panelboard
import pytest
from hypothesis import HealthCheck, settings

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
def name():
    value = f"test-{uuid.uuid4().hex}"
    yield value
    panelboard.delete(value)


@pytest.fixture(params=["default", "instance"])
def api(request, name):
    if request.param == "default":
        return panelboard
    return panelboard.Registry()
