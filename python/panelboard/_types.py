"""Pure-Python types of the public API."""

from __future__ import annotations

import enum
from typing import TypedDict

__all__ = ["State", "SyncStatus"]


class State(str, enum.Enum):
    """A breaker's state. Compares equal to its string value (``State.OPEN == "open"``)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    #: Set by ``Registry.force_open``: rejects every call until ``reset``.
    FORCED_OPEN = "forced_open"
    #: Set by ``Registry.disable``: admits every call until ``reset``; metrics still count.
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


class SyncStatus(TypedDict):
    """``Registry.sync_status()`` of a registry made with ``redis=`` (docs/redis.md)."""

    #: Whether the last sync round reached Redis.
    connected: bool
    #: ``time.time()`` of the last successful round; ``None`` before the first one.
    last_sync: float | None
    #: Rounds that failed (Redis down, slow, hung, refused), since the registry was made.
    errors: int
    #: Outages so far: runs of failed rounds, each announced by one warning.
    outages: int
    #: ``"ExceptionType: message"`` of the last failed round; ``None`` if none failed.
    last_error: str | None
    #: Successful rounds.
    rounds: int
    #: Commands sent to Redis (script calls, script loads, pings).
    commands: int
    #: Values read from Redis that were malformed and ignored.
    malformed: int
    #: Breakers the worker syncs.
    breakers: int
    namespace: str
    sync_interval: float
    #: Whether ``close()`` was called (the breakers then go on locally).
    closed: bool
