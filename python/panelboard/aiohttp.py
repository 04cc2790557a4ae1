"""Circuit breakers for aiohttp (>= 3.12): a client middleware.

``ClientSession(middlewares=(breaker_middleware(),))`` sends each request through its origin's
breaker, with the rules of ``panelboard.httpx``: connection, timeout and payload errors and the
statuses 408, 429, 500, 502, 503, 504 are failures (the response is still returned unchanged);
invalid URLs and cancellation are ignored. The outcome is recorded when the response body is done:
read to the end or released early without an error, the status decides; an error while the body is
read is a failure. ``aiohttp`` is imported when ``breaker_middleware()`` is called.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

from ._core import CircuitOpenError, Permit, Registry
from ._http import (
    FAILURE_STATUSES,
    Outcome,
    check_name,
    check_options,
    check_statuses,
    origin,
    resolve_registry,
    settle_transport_error,
)

__all__ = ["FAILURE_STATUSES", "breaker_middleware", "by_origin", "open_error_type"]

Middleware = Callable[[Any, Callable[[Any], Awaitable[Any]]], Awaitable[Any]]


def by_origin(request: Any) -> str:
    """The default breaker name: the request's origin, ``scheme://host:port``."""
    url = request.url
    return origin(url.scheme, url.host or "", url.port)


class _Aiohttp:
    """What the middleware needs from aiohttp, built once."""

    def __init__(self, aiohttp: ModuleType) -> None:
        self.open_error = _combined_open_error(aiohttp)
        self.ignored: tuple[type[BaseException], ...] = (
            aiohttp.InvalidURL,
            aiohttp.NonHttpUrlClientError,
            aiohttp.RedirectClientError,
        )
        # Connection errors include aiohttp's timeouts (ServerTimeoutError); a total timeout raises
        # the builtin TimeoutError, an OSError.
        self.failures: tuple[type[BaseException], ...] = (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            OSError,
        )
        # What a caller's early `release()`/`close()` puts into the body stream: exactly this type.
        self.closed_early: type[BaseException] = aiohttp.ClientConnectionError
        self.stream_reader: type = aiohttp.StreamReader
        self.watched_reader = _watched_reader_type(aiohttp.StreamReader)

    def settle_error(self, permit: Permit, exc: BaseException) -> None:
        settle_transport_error(permit, exc, self.failures, self.ignored)

    def watch(self, content: Any, outcome: Outcome) -> None:
        """Settles ``outcome`` when the body stream ``content`` reaches its end or fails."""
        end = _EndOfBody(outcome, self.closed_early)
        failed = content.exception()
        if failed is not None:  # the body failed before the middleware saw the response
            end.failed(failed)
            return
        if type(content) is self.stream_reader:
            # Same layout, two overridden methods: the reader reports errors as well as its end.
            content.__class__ = self.watched_reader
        content.on_eof(end)


class _EndOfBody:
    """The reader's end-of-body callback; the watched reader also finds it when the body fails."""

    __slots__ = ("closed_early", "outcome")

    def __init__(self, outcome: Outcome, closed_early: type[BaseException]) -> None:
        self.outcome = outcome
        self.closed_early = closed_early

    def __call__(self) -> None:
        self.outcome.done()

    def failed(self, exc: BaseException) -> None:
        if type(exc) is self.closed_early:
            self.outcome.done()  # released by the caller before the end, without an error
        else:
            self.outcome.error(exc)


def _watched_reader_type(stream_reader: type) -> type:
    class WatchedStreamReader(stream_reader):  # type: ignore[misc,valid-type]
        __slots__ = ()  # the layout of StreamReader, so that a live reader can become one

        def set_exception(self, exc: BaseException, *args: Any, **kwargs: Any) -> None:
            for callback in tuple(self._eof_callbacks):
                if isinstance(callback, _EndOfBody):
                    callback.failed(exc)
            super().set_exception(exc, *args, **kwargs)

    return WatchedStreamReader


_state: dict[str, _Aiohttp] = {}
_state_lock = threading.Lock()


def _aiohttp() -> _Aiohttp:
    found = _state.get("aiohttp")
    if found is None:
        import aiohttp

        with _state_lock:
            found = _state.setdefault("aiohttp", _Aiohttp(aiohttp))
    return found


def open_error_type() -> type[CircuitOpenError]:
    """The exception an open breaker raises: both ``panelboard.CircuitOpenError`` and
    ``aiohttp.ClientConnectionError`` (so ``except aiohttp.ClientError`` keeps working)."""
    return _aiohttp().open_error


def _combined_open_error(aiohttp: ModuleType) -> type[CircuitOpenError]:
    connection_error: type[Exception] = aiohttp.ClientConnectionError

    class CircuitOpenClientError(CircuitOpenError, connection_error):  # type: ignore[misc,valid-type]
        """An open breaker refused the request."""

        def __reduce__(self) -> tuple[Any, ...]:
            return (_rebuild_open_error, (self.name, self.retry_after))

    CircuitOpenClientError.__module__ = __name__
    return CircuitOpenClientError


def _rebuild_open_error(name: str, retry_after: float) -> CircuitOpenError:
    return _aiohttp().open_error(name, retry_after)


def breaker_middleware(
    registry: Registry | None = None,
    *,
    name: Callable[[Any], str] = by_origin,
    failure_statuses: Iterable[int] = FAILURE_STATUSES,
    options: Mapping[str, Any] | None = None,
) -> Middleware:
    """An aiohttp client middleware sending each request through a breaker of ``registry`` (default:
    panelboard's default registry), named by ``name(request)`` (default: ``scheme://host:port``).
    ``options`` are breaker options for the breakers it creates."""
    registry = resolve_registry(registry)
    name = check_name(name)
    statuses = check_statuses(failure_statuses)
    breaker_options = check_options(options, registry)
    aio = _aiohttp()

    async def panelboard_breaker(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        breaker_name = name(request)
        breaker = registry.breaker(breaker_name, **breaker_options)
        permit = breaker.try_acquire()
        if permit is None:
            raise aio.open_error(breaker_name, breaker.metrics().retry_after)
        try:
            response = await handler(request)
        except BaseException as exc:
            aio.settle_error(permit, exc)
            raise
        aio.watch(response.content, Outcome(permit, response.status in statuses, aio.settle_error))
        return response

    return panelboard_breaker
