"""panelboard: a lock-free circuit-breaker registry with its hot path in Rust.

The module-level functions work on one process-wide default registry, like the reference
``Tinkex.CircuitBreaker.Registry``; create a ``Registry`` for an isolated one (tests, a clock).
"""

from __future__ import annotations

from ._core import (
    Breaker,
    CircuitOpenError,
    Guarded,
    ManualClock,
    Metrics,
    Permit,
    Registry,
)
from ._types import State, SyncStatus

__all__ = [
    "Breaker",
    "CircuitOpenError",
    "Guarded",
    "ManualClock",
    "Metrics",
    "Permit",
    "Registry",
    "State",
    "SyncStatus",
    "breaker",
    "call",
    "configure",
    "default_registry",
    "delete",
    "disable",
    "force_open",
    "init",
    # `list` is left out, so that `from panelboard import *` does not shadow the builtin.
    "on_state_change",
    "remove_listener",
    "reset",
    "snapshot",
    "state",
]

_default = Registry()


def default_registry() -> Registry:
    """The process-wide registry the module-level functions use."""
    return _default


def init() -> None:
    """Initialise the default registry. Idempotent; everything also works without it."""


# Bound methods of the native registry: calling them adds no Python frame.
call = _default.call
breaker = _default.breaker
configure = _default.configure
state = _default.state
reset = _default.reset
delete = _default.delete
list = _default.list  # noqa: A001 - the reference module's name
force_open = _default.force_open
disable = _default.disable
on_state_change = _default.on_state_change
remove_listener = _default.remove_listener
snapshot = _default.snapshot
