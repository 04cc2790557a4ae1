"""What the HTTP client integrations share: breaker names by origin and the default statuses.

Imports no HTTP library (``panelboard.httpx`` and ``panelboard.aiohttp`` do, when used).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._core import Permit, Registry

#: Statuses counted as failures by default: the server or something in front of it is in trouble.
#: The response is still returned to the caller unchanged; only the breaker counts it.
FAILURE_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host:port``, the port always spelled out (``http://127.0.0.1:8080``)."""
    scheme = scheme.lower()
    if port is None:
        port = _DEFAULT_PORTS.get(scheme, 0)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address, bracketed as in a URL
    return f"{scheme}://{host.lower()}:{port}"


def resolve_registry(registry: Registry | None) -> Registry:
    if registry is None:
        from . import default_registry

        return default_registry()
    if not isinstance(registry, Registry):
        raise TypeError(f"registry must be a panelboard.Registry or None, not {type(registry).__name__}")
    return registry


def check_statuses(failure_statuses: Iterable[int]) -> frozenset[int]:
    statuses = frozenset(failure_statuses)
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"failure_statuses must hold HTTP statuses (100-599), got {status!r}")
    return statuses


def check_name(name: Callable[[Any], str]) -> Callable[[Any], str]:
    if not callable(name):
        raise TypeError(f"name must be a callable of the request, not {type(name).__name__}")
    return name


def check_options(options: Mapping[str, Any] | None, registry: Registry) -> dict[str, Any]:
    """Breaker options for every breaker the integration creates, validated once here (by creating
    and dropping a throwaway breaker in a scratch registry) so that a typo fails at construction."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of breaker options, not {type(options).__name__}")
    Registry().breaker("panelboard.options-check", **options)
    return dict(options)


def settle_transport_error(
    permit: Permit,
    exc: BaseException,
    failures: tuple[type[BaseException], ...],
    ignored: tuple[type[BaseException], ...],
) -> None:
    """Settles `permit` for an exception from an HTTP client library: a failure when it is one of
    the library's transport `failures` and not one of its `ignored` caller-side errors; otherwise
    (cancellation, KeyboardInterrupt, caller bugs, errors of other code) ignored."""
    if isinstance(exc, Exception) and not isinstance(exc, ignored) and isinstance(exc, failures):
        permit.failure()
    else:
        permit.ignore()


class Outcome:
    """The permit of one request until its response body is done; settles it exactly once.

    ``done()``: the body was read to the end or closed without an error, so the status decides.
    ``error(exc)``: the body failed; ``settle_error(permit, exc)`` classifies the exception.
    """

    __slots__ = ("failed_status", "permit", "settle_error")

    def __init__(
        self, permit: Permit, failed_status: bool, settle_error: Callable[[Permit, BaseException], None]
    ) -> None:
        self.permit: Permit | None = permit
        self.failed_status = failed_status
        self.settle_error = settle_error

    def done(self) -> None:
        permit, self.permit = self.permit, None
        if permit is not None and not permit.settled:
            try:
                if self.failed_status:
                    permit.failure()
                else:
                    permit.success()
            except RuntimeError:
                pass  # another thread closing the same response settled it first: it counts once

    def error(self, exc: BaseException) -> None:
        permit, self.permit = self.permit, None
        if permit is not None and not permit.settled:
            try:
                self.settle_error(permit, exc)
            except RuntimeError:
                pass
