"""Prometheus metrics for a registry's breakers: a ``prometheus_client`` collector.

``prometheus_client.REGISTRY.register(BreakerCollector(registry))``. Everything is read from
``registry.snapshot()`` at scrape time: a call through a breaker does no extra work. Families (with
the default ``namespace="panelboard"``):

- ``panelboard_circuit_breaker_state{breaker, state}``: 1 for the breaker's state, 0 for the others
- ``panelboard_circuit_breaker_calls_total{breaker, outcome}``: ``success``, ``failure``,
  ``ignored`` and ``rejected`` calls
- ``panelboard_circuit_breaker_opened_total{breaker}``: times the breaker opened
- ``panelboard_circuit_breaker_retry_after_seconds{breaker}``: seconds until an open breaker goes
  half-open (0 otherwise)

``prometheus_client`` is imported at the first scrape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ._core import Registry
from ._http import resolve_registry
from ._types import State

__all__ = ["BreakerCollector"]

_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class BreakerCollector:
    """A custom collector (``collect()``) over the breakers of ``registry`` (default: the default one)."""

    def __init__(self, registry: Registry | None = None, *, namespace: str = "panelboard") -> None:
        self._registry = resolve_registry(registry)
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
        # Prometheus metric names are ASCII: prometheus_client would silently rewrite anything else.
        if namespace and not _METRIC_NAME.fullmatch(namespace):
            raise ValueError(
                f"namespace must be an ASCII letter or '_' then letters, digits or '_' (or ''), got {namespace!r}"
            )
        self._prefix = f"{namespace}_circuit_breaker" if namespace else "circuit_breaker"

    def describe(self) -> list[Any]:
        # No families up front: registering the collector does not take a snapshot.
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        prefix = self._prefix
        snapshot = sorted(self._registry.snapshot().items())
        state = GaugeMetricFamily(
            f"{prefix}_state",
            "1 for the breaker's current state, 0 for the others",
            labels=["breaker", "state"],
        )
        calls = CounterMetricFamily(
            f"{prefix}_calls", "Calls through the breaker by outcome", labels=["breaker", "outcome"]
        )
        opened = CounterMetricFamily(f"{prefix}_opened", "Times the breaker opened", labels=["breaker"])
        retry_after = GaugeMetricFamily(
            f"{prefix}_retry_after_seconds",
            "Seconds until an open breaker lets a probe through (0 when it admits calls)",
            labels=["breaker"],
        )
        for name, m in snapshot:
            for member in State:
                state.add_metric([name, member.value], 1.0 if m.state is member else 0.0)
            calls.add_metric([name, "success"], m.successes)
            calls.add_metric([name, "failure"], m.failures)
            calls.add_metric([name, "ignored"], m.ignored)
            calls.add_metric([name, "rejected"], m.rejected)
            opened.add_metric([name], m.times_opened)
            retry_after.add_metric([name], m.retry_after)
        yield state
        yield calls
        yield opened
        yield retry_after
