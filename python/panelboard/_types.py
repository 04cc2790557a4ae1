"""Pure-Python types of the public API."""

from __future__ import annotations

import enum

__all__ = ["State"]


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
