"""Circuit breakers for httpx and httpx2: ``BreakerTransport`` and ``AsyncBreakerTransport``.

One module serves both libraries, which share the transport API: the library is the one the request
belongs to (an ``httpx2.Client`` sends ``httpx2.Request`` objects), and neither is imported until a
request arrives. With ``inner=None`` the inner transport is that library's ``HTTPTransport()``
(``AsyncHTTPTransport()``), made on the first request.

A request takes a permit from its origin's breaker; the response is returned unchanged, with its
stream wrapped so that the outcome is recorded when the body is done: a read error mid-body is a
failure, a body read to the end or closed early without error counts by the status. A permit that is
dropped without an outcome (a response never closed) counts as ignored, so nothing leaks.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    # Typed as transports of both libraries, so that `httpx.Client(transport=...)` and
    # `httpx2.Client(transport=...)` type-check; at runtime neither is imported here.
    import httpx
    import httpx2

    class _SyncBase(httpx.BaseTransport, httpx2.BaseTransport): ...

    class _AsyncBase(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport): ...
else:
    _SyncBase = object
    _AsyncBase = object

__all__ = ["FAILURE_STATUSES", "AsyncBreakerTransport", "BreakerTransport", "by_origin", "open_error_type"]

_LIBRARIES = ("httpx", "httpx2")


def by_origin(request: Any) -> str:
    """The default breaker name: the request's origin, ``scheme://host:port``."""
    url = request.url
    return origin(url.scheme, url.host, url.port)


class _Library:
    """What the transports need from one of httpx / httpx2, built once per library."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.open_error = _combined_open_error(module)
        # Not the server's doing: a full connection pool, a malformed request, an unsupported scheme.
        self.ignored: tuple[type[BaseException], ...] = (
            module.PoolTimeout,
            module.LocalProtocolError,
            module.UnsupportedProtocol,
        )
        # Connection, timeout, read/write, protocol and proxy errors.
        self.failures: tuple[type[BaseException], ...] = (module.TransportError, OSError)
        self.sync_stream = _sync_stream_type(module.SyncByteStream)
        self.async_stream = _async_stream_type(module.AsyncByteStream)

    def settle_error(self, permit: Permit, exc: BaseException) -> None:
        settle_transport_error(permit, exc, self.failures, self.ignored)


_libraries: dict[str, _Library] = {}
_libraries_lock = threading.Lock()


_by_request_type: dict[type, _Library] = {}


def _library_of(request: Any) -> _Library:
    """The library a request belongs to: the first httpx/httpx2 class in its type's MRO."""
    kind = type(request)
    library = _by_request_type.get(kind)
    if library is None:
        for cls in kind.__mro__:
            root = cls.__module__.partition(".")[0]
            if root in _LIBRARIES:
                library = _by_request_type.setdefault(kind, _library(root))
                break
        else:
            raise TypeError(f"not an httpx or httpx2 request: {kind.__name__}")
    return library


def _library(root: str) -> _Library:
    library = _libraries.get(root)
    if library is None:
        import importlib

        module = importlib.import_module(root)
        with _libraries_lock:
            library = _libraries.setdefault(root, _Library(module))
    return library


def open_error_type(module: ModuleType) -> type[CircuitOpenError]:
    """The exception an open breaker raises for ``module`` (``httpx`` or ``httpx2``): a subclass of both
    ``panelboard.CircuitOpenError`` and the library's ``TransportError``."""
    if getattr(module, "__name__", None) not in _LIBRARIES:
        raise TypeError("module must be httpx or httpx2")
    return _library(module.__name__).open_error


def _combined_open_error(module: ModuleType) -> type[CircuitOpenError]:
    transport_error: type[Exception] = module.TransportError

    class CircuitOpenTransportError(CircuitOpenError, transport_error):  # type: ignore[misc,valid-type]
        """An open breaker refused the request: ``except httpx.HTTPError`` and
        ``except panelboard.CircuitOpenError`` both catch it."""

        def __new__(cls, name: str, retry_after: float = 0.0, *, request: Any = None) -> Any:
            # The native constructor takes no keywords; the name and retry time live natively.
            return CircuitOpenError.__new__(cls, name, retry_after)

        def __init__(self, name: str, retry_after: float = 0.0, *, request: Any = None) -> None:
            transport_error.__init__(self, str(self), request=request)  # type: ignore[call-arg]
            # As CircuitOpenError's own: what pickling and copying rebuild it from.
            self.args = (name, retry_after)

        def __reduce__(self) -> tuple[Any, ...]:
            # The class is made at runtime: pickles name the library instead.
            return (_rebuild_open_error, (module.__name__, self.name, self.retry_after, self._request))

    CircuitOpenTransportError.__module__ = __name__
    CircuitOpenTransportError.__qualname__ = f"CircuitOpenTransportError[{module.__name__}]"
    return CircuitOpenTransportError


def _rebuild_open_error(root: str, name: str, retry_after: float, request: Any) -> CircuitOpenError:
    return _library(root).open_error(name, retry_after, request=request)  # type: ignore[call-arg]


def _sync_stream_type(base: type) -> type:
    class BreakerStream(base):  # type: ignore[misc,valid-type]
        def __init__(self, stream: Iterable[bytes], outcome: Outcome) -> None:
            self._stream = stream
            self._outcome = outcome

        def __iter__(self) -> Iterator[bytes]:
            try:
                yield from self._stream
            except GeneratorExit:  # the caller stopped reading: counts as closed early
                self._outcome.done()
                raise
            except BaseException as exc:
                self._outcome.error(exc)
                raise
            self._outcome.done()

        def close(self) -> None:
            try:
                close = getattr(self._stream, "close", None)
                if close is not None:
                    close()
            except BaseException as exc:
                self._outcome.error(exc)
                raise
            self._outcome.done()

    return BreakerStream


def _async_stream_type(base: type) -> type:
    class AsyncBreakerStream(base):  # type: ignore[misc,valid-type]
        def __init__(self, stream: Any, outcome: Outcome) -> None:
            self._stream = stream
            self._outcome = outcome

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                async for chunk in self._stream:
                    yield chunk
            except GeneratorExit:
                self._outcome.done()
                raise
            except BaseException as exc:
                self._outcome.error(exc)
                raise
            self._outcome.done()

        async def aclose(self) -> None:
            try:
                aclose = getattr(self._stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            except BaseException as exc:
                self._outcome.error(exc)
                raise
            self._outcome.done()

    return AsyncBreakerStream


class _Common:
    # The inner transport's sending method, and what a wrong `inner` is told (set by each transport).
    _SENDS: str
    _INNER_KIND: str

    def __init__(
        self,
        inner: Any = None,
        *,
        registry: Registry | None = None,
        name: Callable[[Any], str] = by_origin,
        failure_statuses: Iterable[int] = FAILURE_STATUSES,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if inner is not None and not callable(getattr(inner, self._SENDS, None)):
            raise TypeError(f"inner must be {self._INNER_KIND} (with {self._SENDS})")
        self._registry = resolve_registry(registry)
        self._name = check_name(name)
        self._failure_statuses = check_statuses(failure_statuses)
        self._options = check_options(options, self._registry)
        self._inner = inner
        # With no `inner`, each library gets its own default transport: one BreakerTransport may
        # serve an httpx client and an httpx2 client, and each request goes out through its own.
        self._default_inners: dict[str, Any] = {}
        self._inner_lock = threading.Lock()

    def _admit(self, request: Any) -> tuple[_Library, Permit]:
        library = _library_of(request)
        name = self._name(request)
        breaker = self._registry.breaker(name, **self._options)
        permit = breaker.try_acquire()
        if permit is None:
            raise library.open_error(name, breaker.metrics().retry_after, request=request)
        return library, permit

    def _inner_for(self, library: _Library, kind: str) -> Any:
        if self._inner is not None:
            return self._inner
        key = library.module.__name__
        inner = self._default_inners.get(key)
        if inner is None:
            with self._inner_lock:
                inner = self._default_inners.get(key)
                if inner is None:
                    inner = self._default_inners[key] = getattr(library.module, kind)()
        return inner

    def _inners(self) -> list[Any]:
        """The transports to close: the one given, or the defaults made so far."""
        if self._inner is not None:
            return [self._inner]
        with self._inner_lock:
            return list(self._default_inners.values())


class BreakerTransport(_Common, _SyncBase):
    """An httpx/httpx2 transport that sends each request through its origin's breaker.

    ``inner``: the transport that sends the request (default: the library's ``HTTPTransport()``).
    ``registry``: the registry holding the breakers (default: panelboard's default registry).
    ``name``: the breaker name for a request (default: its origin, ``scheme://host:port``).
    ``failure_statuses``: response statuses counted as failures (the response is still returned).
    ``options``: breaker options for the breakers this transport creates (``failure_threshold=...``).
    While a breaker is open its requests raise an exception that is both
    ``panelboard.CircuitOpenError`` and the library's ``TransportError``.
    """

    _SENDS = "handle_request"
    _INNER_KIND = "an httpx/httpx2 transport"

    def handle_request(self, request: Any) -> Any:
        library, permit = self._admit(request)
        try:
            response = self._inner_for(library, "HTTPTransport").handle_request(request)
        except BaseException as exc:
            library.settle_error(permit, exc)
            raise
        outcome = Outcome(permit, response.status_code in self._failure_statuses, library.settle_error)
        if response.is_closed:  # a body already in memory (a mock, a cache): done now
            outcome.done()
        else:
            response.stream = library.sync_stream(response.stream, outcome)
        return response

    def close(self) -> None:
        for inner in self._inners():
            inner.close()

    def __enter__(self) -> BreakerTransport:
        if self._inner is not None and hasattr(self._inner, "__enter__"):
            self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._inner is None:
            self.close()  # the default transports: what their own __exit__ does
        elif hasattr(self._inner, "__exit__"):
            self._inner.__exit__(exc_type, exc_value, traceback)


class AsyncBreakerTransport(_Common, _AsyncBase):
    """The asyncio twin of ``BreakerTransport``, for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``
    (default inner transport: the library's ``AsyncHTTPTransport()``). Cancellation is ignored."""

    _SENDS = "handle_async_request"
    _INNER_KIND = "an async httpx/httpx2 transport"

    async def handle_async_request(self, request: Any) -> Any:
        library, permit = self._admit(request)
        try:
            response = await self._inner_for(library, "AsyncHTTPTransport").handle_async_request(request)
        except BaseException as exc:
            library.settle_error(permit, exc)
            raise
        outcome = Outcome(permit, response.status_code in self._failure_statuses, library.settle_error)
        if response.is_closed:  # a body already in memory (a mock, a cache): done now
            outcome.done()
        else:
            response.stream = library.async_stream(response.stream, outcome)
        return response

    async def aclose(self) -> None:
        for inner in self._inners():
            await inner.aclose()

    async def __aenter__(self) -> AsyncBreakerTransport:
        if self._inner is not None and hasattr(self._inner, "__aenter__"):
            await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._inner is None:
            await self.aclose()  # the default transports: what their own __aexit__ does
        elif hasattr(self._inner, "__aexit__"):
            await self._inner.__aexit__(exc_type, exc_value, traceback)
