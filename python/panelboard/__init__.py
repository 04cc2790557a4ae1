"""panelboard: a lock-free circuit-breaker registry with its hot path in Rust.

The module-level functions work on one process-wide default registry, like the reference
``Tinkex.CircuitBreaker.Registry``; create a ``Registry`` for an isolated one (tests, a clock).
"""

from __future__ import annotations

from typing import TypeVar, cast

from . import _core
from ._core import (
    Breaker,
    CircuitOpenError,
    Guarded,
    ManualClock,
    Metrics,
    Permit,
    Registry,
    unlink_shared,
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
    "unlink_shared",
]

# Made once per process by `_core`; on free-threaded CPython 3.13 the registry and the functions
# below are immortal, as CPython makes top-level functions, so threads calling them share no
# reference count (src/py/default_api.rs).
_default: Registry = _core._default_registry


def default_registry() -> Registry:
    """The process-wide registry the module-level functions use."""
    return _default


def init() -> None:
    """Initialise the default registry. Idempotent; everything also works without it."""


_M = TypeVar("_M")


def _exported(name: str, typed_as: _M) -> _M:
    """`_core`'s bound method `name` of the default registry (typed as `typed_as`, the same method)."""
    return cast(_M, _core._default_methods[name])


# Bound methods of the native registry: calling them adds no Python frame.
call = _exported("call", _default.call)
breaker = _exported("breaker", _default.breaker)
configure = _exported("configure", _default.configure)
state = _exported("state", _default.state)
reset = _exported("reset", _default.reset)
delete = _exported("delete", _default.delete)
list = _exported("list", _default.list)  # noqa: A001 - the reference module's name
force_open = _exported("force_open", _default.force_open)
disable = _exported("disable", _default.disable)
on_state_change = _exported("on_state_change", _default.on_state_change)
remove_listener = _exported("remove_listener", _default.remove_listener)
snapshot = _exported("snapshot", _default.snapshot)
