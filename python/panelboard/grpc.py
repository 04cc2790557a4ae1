"""Circuit breakers for gRPC clients (grpcio): interceptors for all four call shapes, sync and aio.

``grpc.intercept_channel(channel, *interceptors())`` and
``grpc.aio.insecure_channel(target, interceptors=aio_interceptors())``. One breaker per method
(``per="method"``, named by the method, ``/package.Service/Method``) or per target (``per="target"``,
named ``target``, which must then be given). The outcome is taken from the call's completion (a done
callback, so a ``.future()`` caller is never blocked): the status codes in ``failure_codes`` are
failures, ``CANCELLED`` is ignored, every other code (``OK``, ``NOT_FOUND``, ...) is a success. An
open breaker answers with an ``RpcError`` whose code is ``UNAVAILABLE`` and whose details carry the
retry time; it is also a ``panelboard.CircuitOpenError``. ``grpc`` is imported when these functions
are called.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ._core import CircuitOpenError, Permit, Registry
from ._http import check_options, resolve_registry

__all__ = ["DEFAULT_FAILURE_CODES", "aio_interceptors", "interceptors"]

#: Status code names counted as failures by default.
DEFAULT_FAILURE_CODES: frozenset[str] = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN"}
)


class _Policy:
    """Names breakers, admits calls and classifies their codes; shared by the sync and aio kinds."""

    def __init__(
        self,
        registry: Registry | None,
        per: str,
        target: str | None,
        failure_codes: Iterable[Any],
        options: Any,
    ) -> None:
        import grpc

        self.grpc = grpc
        self.registry = resolve_registry(registry)
        if per not in ("method", "target"):
            raise ValueError(f"per must be 'method' or 'target', not {per!r}")
        if target is not None and not isinstance(target, str):
            raise TypeError(f"target must be a str, not {type(target).__name__}")
        if per == "target" and not target:
            raise ValueError("per='target' needs the channel's target: target='host:port'")
        self.per = per
        self.target = target
        codes = set()
        for code in failure_codes:
            if isinstance(code, str) and isinstance(getattr(grpc.StatusCode, code, None), grpc.StatusCode):
                code = getattr(grpc.StatusCode, code)
            if not isinstance(code, grpc.StatusCode):
                raise ValueError(
                    f"failure_codes must hold grpc.StatusCode members or their names, got {code!r}"
                )
            codes.add(code)
        self.failure_codes = frozenset(codes)
        self.options = check_options(options, self.registry)

    def name(self, details: Any) -> str:
        if self.per == "target":
            return self.target  # type: ignore[return-value]
        method = details.method
        if isinstance(method, bytes):
            method = method.decode("utf-8", "replace")
        return f"{self.target}{method}" if self.target else str(method)

    def admit(self, details: Any) -> tuple[str, Permit | None, float]:
        name = self.name(details)
        breaker = self.registry.breaker(name, **self.options)
        permit = breaker.try_acquire()
        if permit is None:
            return name, None, breaker.metrics().retry_after
        return name, permit, 0.0

    def settle_code(self, permit: Permit, code: Any) -> None:
        if permit.settled:
            return
        if code in self.failure_codes:
            permit.failure()
        elif code == self.grpc.StatusCode.CANCELLED or code is None:
            permit.ignore()
        else:
            permit.success()

    def settle_error(self, permit: Permit, exc: BaseException) -> None:
        code = getattr(exc, "code", None)
        if isinstance(exc, Exception) and callable(code):
            try:
                self.settle_code(permit, code())
                return
            except Exception:
                pass
        permit.ignore()  # not an RPC's answer: cancellation, a serializer bug, ...

    def settle_call(self, permit: Permit, call: Any) -> None:
        try:
            code = call.code()
        except Exception:
            code = None
        self.settle_code(permit, code)


def _details(name: str, retry_after: float) -> str:
    return f"circuit breaker {name!r} is open; retry after {retry_after:.3f}s"


# -- sync -----------------------------------------------------------------------------------------

_made: dict[str, Any] = {}
_made_lock = threading.Lock()


def _once(key: str, make: Callable[[], Any]) -> Any:
    found = _made.get(key)
    if found is None:
        with _made_lock:
            found = _made.get(key)
            if found is None:
                found = _made[key] = make()
    return found


def _open_rpc_error_type() -> type:
    import grpc

    class CircuitOpenRpcError(CircuitOpenError, grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
        """An open breaker refused the call: an RpcError (UNAVAILABLE) and a finished Call/Future,
        as grpc's own failed outcomes; iterating it (a streaming response) raises it."""

        def code(self) -> Any:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return _details(self.name, self.retry_after)

        def initial_metadata(self) -> Any:
            return None

        def trailing_metadata(self) -> Any:
            return None

        def is_active(self) -> bool:
            return False

        def time_remaining(self) -> Any:
            return None

        def cancel(self) -> bool:
            return False

        def cancelled(self) -> bool:
            return False

        def running(self) -> bool:
            return False

        def done(self) -> bool:
            return True

        def result(self, timeout: Any = None) -> Any:
            raise self

        def exception(self, timeout: Any = None) -> Any:
            return self

        def traceback(self, timeout: Any = None) -> Any:
            return None

        def add_callback(self, callback: Any) -> bool:
            return False

        def add_done_callback(self, fn: Callable[[Any], object]) -> None:
            fn(self)

        def __iter__(self) -> Any:
            return self

        def __next__(self) -> Any:
            raise self

        def __reduce__(self) -> tuple[Any, ...]:
            return (_rebuild, ("sync", self.name, self.retry_after))

    CircuitOpenRpcError.__module__ = __name__
    return CircuitOpenRpcError


def _aio_open_rpc_error_type() -> type:
    import grpc
    from grpc.aio import AioRpcError

    class CircuitOpenAioRpcError(CircuitOpenError, AioRpcError):  # type: ignore[misc]
        """An open breaker refused the call: an ``AioRpcError`` with ``UNAVAILABLE``."""

        def __new__(cls, name: str, retry_after: float = 0.0, *args: Any) -> Any:
            return CircuitOpenError.__new__(cls, name, retry_after)

        def __init__(self, name: str, retry_after: float = 0.0, *args: Any) -> None:
            AioRpcError.__init__(self, grpc.StatusCode.UNAVAILABLE, None, None, _details(name, retry_after))
            self.args = (name, retry_after)

        def __str__(self) -> str:
            return CircuitOpenError.__str__(self)

        def __reduce__(self) -> tuple[Any, ...]:
            return (_rebuild, ("aio", self.name, self.retry_after))

    CircuitOpenAioRpcError.__module__ = __name__
    return CircuitOpenAioRpcError


def _rebuild(kind: str, name: str, retry_after: float) -> CircuitOpenError:
    return open_error_type(aio=kind == "aio")(name, retry_after)  # type: ignore[call-arg]


def open_error_type(*, aio: bool = False) -> type[CircuitOpenError]:
    """The exception an open breaker answers with (sync or aio): ``CircuitOpenError`` and ``RpcError``."""
    if aio:
        return _once("aio", _aio_open_rpc_error_type)  # type: ignore[no-any-return]
    return _once("sync", _open_rpc_error_type)  # type: ignore[no-any-return]


def _sync_interceptor_type() -> type:
    import grpc

    class BreakerInterceptor(
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
        grpc.StreamStreamClientInterceptor,
    ):
        def __init__(self, policy: _Policy) -> None:
            self._policy = policy
            self._open_error = open_error_type()

        def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
            policy = self._policy
            name, permit, retry_after = policy.admit(details)
            if permit is None:
                return self._open_error(name, retry_after)
            try:
                call = continuation(details, request)
            except BaseException as exc:
                policy.settle_error(permit, exc)
                raise
            # Runs at once for a finished call, else on grpc's thread when the call completes.
            call.add_done_callback(lambda done: policy.settle_call(permit, done))
            return call

        intercept_unary_unary = _intercept
        intercept_unary_stream = _intercept
        intercept_stream_unary = _intercept
        intercept_stream_stream = _intercept

    return BreakerInterceptor


def interceptors(
    registry: Registry | None = None,
    *,
    per: str = "method",
    target: str | None = None,
    failure_codes: Iterable[Any] = DEFAULT_FAILURE_CODES,
    options: Any = None,
) -> tuple[Any, ...]:
    """Client interceptors for ``grpc.intercept_channel(channel, *interceptors(...))`` covering the four
    call shapes. ``target`` (the channel's ``host:port``) names the breaker with ``per="target"`` and
    prefixes the method name with ``per="method"``; ``options`` are breaker options."""
    policy = _Policy(registry, per, target, failure_codes, options)
    return (_once("interceptor", _sync_interceptor_type)(policy),)


# -- aio ------------------------------------------------------------------------------------------


def _aio_interceptor_types() -> tuple[type, ...]:
    from grpc import aio

    class _Base:
        def __init__(self, policy: _Policy) -> None:
            self._policy = policy
            self._open_error = open_error_type(aio=True)
            self._pending: set[asyncio.Future[None]] = set()

        async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
            policy = self._policy
            name, permit, retry_after = policy.admit(details)
            if permit is None:
                raise self._open_error(name, retry_after)
            try:
                call = await continuation(details, request)
            except BaseException as exc:
                policy.settle_error(permit, exc)
                raise
            call.add_done_callback(lambda done: self._settle_later(permit, done))
            return call

        def _settle_later(self, permit: Permit, call: Any) -> None:
            # An aio call's code() is a coroutine; the call is done, so it answers at once.
            async def settle() -> None:
                try:
                    code = await call.code()
                except BaseException:
                    code = None
                policy = self._policy
                policy.settle_code(permit, code)

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not called on the channel's loop: the code cannot be read
                permit.ignore()
                return
            task = loop.create_task(settle())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    class UnaryUnary(_Base, aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await self._intercept(continuation, details, request)

    class UnaryStream(_Base, aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return await self._intercept(continuation, details, request)

    class StreamUnary(_Base, aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await self._intercept(continuation, details, request)

    class StreamStream(_Base, aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return await self._intercept(continuation, details, request)

    return (UnaryUnary, UnaryStream, StreamUnary, StreamStream)


def aio_interceptors(
    registry: Registry | None = None,
    *,
    per: str = "method",
    target: str | None = None,
    failure_codes: Iterable[Any] = DEFAULT_FAILURE_CODES,
    options: Any = None,
) -> list[Any]:
    """Client interceptors for ``grpc.aio.insecure_channel(target, interceptors=aio_interceptors(...))``,
    one per call shape, sharing one policy; the arguments are those of ``interceptors``."""
    policy = _Policy(registry, per, target, failure_codes, options)
    return [kind(policy) for kind in _once("aio-interceptors", _aio_interceptor_types)]
