"""OpenTelemetry metrics for a registry's breakers: observable instruments.

``instrument(registry, meter_provider=None)`` creates, on the meter ``panelboard``, observable
instruments whose callbacks read ``registry.snapshot()`` when the SDK collects: a call through a
breaker does no extra work. Attributes follow the names proposed in the semantic-conventions
discussion (``circuitbreaker.name``, ``circuitbreaker.state``):

- ``circuitbreaker.state`` (gauge): 1 for the breaker's state, 0 for the others
- ``circuitbreaker.calls`` (counter, ``{call}``): by ``circuitbreaker.outcome``: ``success``,
  ``failure``, ``ignored``, ``rejected``
- ``circuitbreaker.opened`` (counter, ``{open}``): times the breaker opened
- ``circuitbreaker.retry_after`` (gauge, ``s``): seconds until an open breaker goes half-open

``opentelemetry-api`` is imported when ``instrument`` is called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._core import Registry
from ._http import resolve_registry
from ._types import State

__all__ = ["instrument"]

NAME = "circuitbreaker.name"
STATE = "circuitbreaker.state"
OUTCOME = "circuitbreaker.outcome"


def instrument(registry: Registry | None = None, meter_provider: Any = None) -> list[Any]:
    """Registers the instruments for ``registry`` (default: the default registry) with
    ``meter_provider`` (default: the global one) and returns them."""
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    registry = resolve_registry(registry)
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("panelboard")

    def states(options: CallbackOptions) -> Iterable[Observation]:
        for name, m in registry.snapshot().items():
            for member in State:
                yield Observation(1 if m.state is member else 0, {NAME: name, STATE: member.value})

    def calls(options: CallbackOptions) -> Iterable[Observation]:
        for name, m in registry.snapshot().items():
            yield Observation(m.successes, {NAME: name, OUTCOME: "success"})
            yield Observation(m.failures, {NAME: name, OUTCOME: "failure"})
            yield Observation(m.ignored, {NAME: name, OUTCOME: "ignored"})
            yield Observation(m.rejected, {NAME: name, OUTCOME: "rejected"})

    def opened(options: CallbackOptions) -> Iterable[Observation]:
        for name, m in registry.snapshot().items():
            yield Observation(m.times_opened, {NAME: name})

    def retry_after(options: CallbackOptions) -> Iterable[Observation]:
        for name, m in registry.snapshot().items():
            yield Observation(m.retry_after, {NAME: name})

    return [
        meter.create_observable_gauge(
            "circuitbreaker.state",
            [states],
            unit="1",
            description="1 for the breaker's state, 0 for the others",
        ),
        meter.create_observable_counter(
            "circuitbreaker.calls", [calls], unit="{call}", description="Calls through the breaker by outcome"
        ),
        meter.create_observable_counter(
            "circuitbreaker.opened", [opened], unit="{open}", description="Times the breaker opened"
        ),
        meter.create_observable_gauge(
            "circuitbreaker.retry_after",
            [retry_after],
            unit="s",
            description="Seconds until an open breaker lets a probe through",
        ),
    ]
