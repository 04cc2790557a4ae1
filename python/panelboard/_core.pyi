"""Type stub of the native module ``panelboard._core`` (written by hand; checked by ``make stubtest``).

Every option below is keyword-only and validated at runtime (``TypeError``/``ValueError`` naming the
argument). The runtime signatures take ``**options``; the stub lists the accepted names so that a
misspelt option is a type error.
"""

import builtins
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Concatenate, Generic, Literal, Protocol, Self, TypeVar, final, overload

from typing_extensions import ParamSpec, disjoint_base

from panelboard._types import State, SyncStatus

__all__ = [
    "Registry",
    "Breaker",
    "Guarded",
    "GuardedCoroutine",
    "Permit",
    "Metrics",
    "ManualClock",
    "CircuitOpenError",
    # The Redis sync worker's private entry points (PyO3 lists every function it adds).
    "_fleet_breakers",
    "_fleet_read",
    "_fleet_install",
    "_fleet_gate",
    "unlink_shared",
    "shared_table_rows",
]

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)
_S = TypeVar("_S")
_R = TypeVar("_R")
_P = ParamSpec("_P")
_Q = ParamSpec("_Q")

#: What ``failure_on`` and ``ignore`` accept: one exception class or a tuple of them.
_ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]
#: ``listener(name, old, new)``; its return value is ignored.
_Listener = Callable[[str, State, State], object]
_ListenerT = TypeVar("_ListenerT", bound=_Listener)

@final
class ManualClock:
    """A clock that moves only when told to, shared by the registries given it."""

    def __new__(cls, start: float = 0.0) -> Self:
        """A clock reading ``start`` seconds (default 0.0)."""

    def advance(self, seconds: float) -> None:
        """Moves the clock forward by ``seconds`` (>= 0)."""

    def now(self) -> float:
        """The current time in seconds."""

@disjoint_base
class CircuitOpenError(Exception):
    """Raised instead of calling the function while the breaker rejects calls."""

    def __new__(cls, name: str, retry_after: float = 0.0, /, *_args: object) -> Self: ...
    @property
    def name(self) -> str:
        """The breaker's name."""

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker goes half-open; 0.0 if that is not known."""

@final
class Metrics:
    """An immutable snapshot of one breaker's counters and state."""

    @property
    def state(self) -> State: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def calls(self) -> int:
        """Finished calls: ``successes + failures + ignored``."""

    @property
    def successes(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def ignored(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def times_opened(self) -> int: ...
    @property
    def retry_after(self) -> float: ...
    @property
    def slow_calls(self) -> int:
        """Calls that took longer than ``slow_call_duration`` (whatever their outcome), ever."""

    @property
    def window_calls(self) -> int:
        """Calls (successes and failures) in the current window of the rate rules."""

    @property
    def window_failures(self) -> int: ...
    @property
    def window_slow(self) -> int: ...
    @property
    def failure_rate(self) -> float | None:
        """``window_failures / window_calls``; ``None`` when the window holds no calls."""

    @property
    def slow_call_rate(self) -> float | None:
        """``window_slow / window_calls``; ``None`` when the window holds no calls."""

@final
class Permit:
    """Permission for one call; report exactly one outcome (a second raises ``RuntimeError``).

    A permit dropped without an outcome counts as ignored, which releases its half-open slot.
    """

    def success(self) -> None: ...
    def failure(self) -> None: ...
    def ignore(self) -> None: ...
    @property
    def settled(self) -> bool:
        """True once an outcome has been reported."""

@final
class GuardedCoroutine(Coroutine[Any, Any, _T_co]):
    """What ``Breaker.acall`` and a decorated ``async def`` function return: a native awaitable,
    registered as a ``collections.abc.Coroutine``. It admits the call when it is first awaited (a
    rejection raises ``CircuitOpenError`` there), drives ``fn``'s coroutine, and records the outcome
    once; ``close()``, or collection before it finishes, counts the call as ignored."""

    def __await__(self) -> Self: ...  # type: ignore[override]
    def __next__(self) -> Any: ...
    def send(self, value: Any, /) -> Any: ...
    @overload
    def throw(
        self, typ: type[BaseException], val: BaseException | object = None, tb: TracebackType | None = None, /
    ) -> Any: ...
    @overload
    def throw(self, typ: BaseException, val: None = None, tb: TracebackType | None = None, /) -> Any: ...
    def close(self) -> None: ...

@final
class Guarded(Generic[_P, _T_co]):
    """A function decorated with a breaker: calling it calls the function through the breaker. For
    an ``async def`` function, calling it returns a ``GuardedCoroutine`` (``_AsyncGuarded``).

    Generic only in the stub: annotate with ``"Guarded[...]"`` strings or ``from __future__ import
    annotations``.
    """

    __wrapped__: Callable[_P, _T_co]
    __name__: str
    __qualname__: str
    __doc__: str | None
    __module__: str
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _T_co: ...
    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> Self: ...
    @overload
    def __get__(
        self: Guarded[Concatenate[_S, _Q], _T], instance: _S, owner: type[Any] | None = None, /
    ) -> Callable[_Q, _T]: ...
    @property
    def breaker(self) -> Breaker: ...
    def __reduce__(self) -> str:
        """Pickled and copied by reference to its module-level name, as functions are."""

class _GeneratorGuarded(Protocol[_P, _T_co]):
    """What decorating a generator or async-generator function returns: a function of the same kind
    (made with ``functools.wraps``) with a ``breaker`` attribute, guarded over the whole iteration."""

    @property
    def __wrapped__(self) -> Callable[_P, _T_co]: ...
    __name__: str
    __qualname__: str
    breaker: Breaker
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _T_co: ...
    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> Self: ...
    @overload
    def __get__(
        self: _GeneratorGuarded[Concatenate[_S, _Q], _T], instance: _S, owner: type[Any] | None = None, /
    ) -> Callable[_Q, _T]: ...

class _AsyncGuarded(Protocol[_P, _T_co]):
    """What decorating an ``async def`` function returns: a coroutine function (a native ``Guarded``
    with the metadata ``functools.wraps`` copies, for which ``inspect.iscoroutinefunction`` is true;
    a plain Python function for ``@breaker(timeout=...)``) with a ``breaker`` attribute."""

    @property
    def __wrapped__(self) -> Callable[_P, Awaitable[_T_co]]: ...
    __name__: str
    __qualname__: str
    breaker: Breaker
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> Coroutine[Any, Any, _T_co]: ...
    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> Self: ...
    @overload
    def __get__(
        self: _AsyncGuarded[Concatenate[_S, _Q], _T], instance: _S, owner: type[Any] | None = None, /
    ) -> Callable[_Q, Coroutine[Any, Any, _T]]: ...

@final
class Breaker:
    """A handle on one breaker. Calling through it does no name lookup; it keeps working on its own
    breaker after that breaker is deleted from the registry."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def shared(self) -> bool:
        """Whether this breaker lives in a shared table (``False`` for a local registry's, for a
        shared registry's made while its table was full, and once its name is deleted)."""

    def call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Calls ``fn(*args, **kwargs)`` through the breaker."""

    @overload
    async def acall(
        self, fn: Callable[..., Awaitable[_T]], /, *args: Any, timeout: float | None, **kwargs: Any
    ) -> _T:
        """Awaits ``fn(*args, **kwargs)`` through the breaker, cancelled after ``timeout`` seconds:
        ``TimeoutError``, counted as a failure. ``timeout`` is the breaker's own keyword, never
        passed to ``fn`` (a ``ParamSpec`` cannot express a keyword of its own next to ``fn``'s
        arguments, so with ``timeout`` the arguments are not checked against ``fn``)."""

    @overload
    async def acall(self, fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Awaits ``fn(*args, **kwargs)`` through the breaker; ``CancelledError`` is ignored."""

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, func: Callable[_P, Coroutine[Any, Any, _T]], /, *, timeout: float | None = None
    ) -> _AsyncGuarded[_P, _T]: ...
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, func: Callable[_P, Generator[_T, _S, _R]], /
    ) -> _GeneratorGuarded[_P, Generator[_T, _S, _R]]: ...
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, func: Callable[_P, AsyncGenerator[_T, _S]], /
    ) -> _GeneratorGuarded[_P, AsyncGenerator[_T, _S]]: ...
    @overload
    def __call__(self, func: Callable[_P, _T], /) -> Guarded[_P, _T]: ...
    @overload
    def __call__(
        self, *, timeout: float | None = None
    ) -> Callable[[Callable[_P, Coroutine[Any, Any, _T]]], _AsyncGuarded[_P, _T]]:
        """``@breaker(timeout=seconds)``: the decorator for an ``async def`` function."""
    def try_acquire(self) -> Permit | None:
        """A permit, or ``None`` when the breaker rejects the call (never raises for an open breaker)."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> Literal[False]: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> Literal[False]: ...
    def metrics(self) -> Metrics: ...

@final
class Registry:
    """Named circuit breakers; ``call`` creates a breaker on first use of a name.

    Keyword options given here are the registry-wide defaults for new breakers.
    """

    def __new__(
        cls,
        *,
        clock: ManualClock | None = None,
        redis: str | None = None,
        namespace: str | None = None,
        sync_interval: float | None = None,
        shared: str | None = None,
        capacity: int | None = None,
        mode: int | None = None,
        failure_threshold: int | None = ...,
        reset_timeout: float = ...,
        half_open_max_calls: int = ...,
        success: Callable[[Any], object] | None = ...,
        success_threshold: int = ...,
        failure_on: _ExceptionTypes = ...,
        ignore: _ExceptionTypes = ...,
        probe_timeout: float | None = ...,
        failure_rate: float | None = ...,
        slow_call_duration: float | None = ...,
        slow_call_rate: float | None = ...,
        window: float = ...,
        min_calls: int = ...,
        backoff: float = ...,
        max_reset_timeout: float | None = ...,
        jitter: float = ...,
    ) -> Self: ...
    def call(
        self,
        name: str,
        fn: Callable[[], _T],
        *,
        failure_threshold: int | None = ...,
        reset_timeout: float = ...,
        half_open_max_calls: int = ...,
        success: Callable[[Any], object] | None = ...,
        success_threshold: int = ...,
        failure_on: _ExceptionTypes = ...,
        ignore: _ExceptionTypes = ...,
        probe_timeout: float | None = ...,
        failure_rate: float | None = ...,
        slow_call_duration: float | None = ...,
        slow_call_rate: float | None = ...,
        window: float = ...,
        min_calls: int = ...,
        backoff: float = ...,
        max_reset_timeout: float | None = ...,
        jitter: float = ...,
    ) -> _T:
        """Calls ``fn()`` through the breaker ``name``, creating it with the options if the name is new
        (options of later calls are validated but ignored)."""

    def breaker(
        self,
        name: str,
        /,
        *,
        failure_threshold: int | None = ...,
        reset_timeout: float = ...,
        half_open_max_calls: int = ...,
        success: Callable[[Any], object] | None = ...,
        success_threshold: int = ...,
        failure_on: _ExceptionTypes = ...,
        ignore: _ExceptionTypes = ...,
        probe_timeout: float | None = ...,
        failure_rate: float | None = ...,
        slow_call_duration: float | None = ...,
        slow_call_rate: float | None = ...,
        window: float = ...,
        min_calls: int = ...,
        backoff: float = ...,
        max_reset_timeout: float | None = ...,
        jitter: float = ...,
    ) -> Breaker:
        """A handle on the breaker ``name`` (created with the options if new)."""

    def configure(
        self,
        name: str,
        /,
        *,
        failure_threshold: int | None = ...,
        reset_timeout: float = ...,
        half_open_max_calls: int = ...,
        success: Callable[[Any], object] | None = ...,
        success_threshold: int = ...,
        failure_on: _ExceptionTypes = ...,
        ignore: _ExceptionTypes = ...,
        probe_timeout: float | None = ...,
        failure_rate: float | None = ...,
        slow_call_duration: float | None = ...,
        slow_call_rate: float | None = ...,
        window: float = ...,
        min_calls: int = ...,
        backoff: float = ...,
        max_reset_timeout: float | None = ...,
        jitter: float = ...,
    ) -> Breaker:
        """Creates the breaker with the options, or atomically changes the given options of an
        existing one."""

    def state(self, name: str) -> State:
        """The state of ``name``; ``State.CLOSED`` for an unknown name (which is not created)."""

    def reset(self, name: str) -> None: ...
    def delete(self, name: str) -> None: ...
    def list(self) -> builtins.list[tuple[str, State]]: ...
    def force_open(self, name: str) -> None: ...
    def disable(self, name: str) -> None: ...
    def on_state_change(self, listener: _ListenerT) -> _ListenerT: ...
    def remove_listener(self, listener: _Listener) -> None: ...
    def snapshot(self) -> dict[str, Metrics]: ...
    def sync_status(self) -> SyncStatus | None:
        """The Redis sync of a registry made with ``redis=`` (``connected``, ``last_sync``, error
        counts: see ``SyncStatus``); ``None`` for a local registry."""

    def close(self) -> None:
        """Stops the Redis sync worker after one last round; the breakers go on locally.
        Idempotent; nothing to do for a local registry."""

    def __len__(self) -> int: ...
    def __contains__(self, key: str, /) -> bool: ...
    @property
    def shared(self) -> str | None:
        """The name of the shared table this registry's breakers live in, ``None`` for a local one."""

# The process-wide default registry and its exported methods (`panelboard.call`, ...), made once.
_default_registry: Registry
_default_methods: dict[str, Callable[..., Any]]

# The Redis sync worker's private entry points (panelboard/_redis_worker.py, src/py/fleet.rs).
def _fleet_breakers(registry: Registry, /) -> builtins.list[tuple[str, int, Breaker]]: ...
def _fleet_read(
    breaker: Breaker, /
) -> tuple[
    int,
    int,
    int,
    int,
    int,
    int,
    tuple[
        int,
        int,
        int,
        int,
        int,
        int,
        tuple[float | None, int | None, float | None, int, int, float, int | None, float],
    ],
    int,
    int,
    tuple[int, int, float, float, builtins.list[tuple[int, int, int, int]]] | None,
]: ...
def _fleet_install(
    breaker: Breaker, expected: int, target: int, arg: int, reopens: int = 0, /
) -> tuple[bool, int, int]: ...
def _fleet_gate(breaker: Breaker, generation: int, leases: int, /) -> None: ...
def unlink_shared(name: str) -> bool:
    """Removes the shared table ``name`` (``True`` if it existed); processes that have it open keep
    using their mapping."""

def shared_table_rows(name: str) -> list[dict[str, Any]]:
    """Every live breaker of the existing shared table ``name`` (read only; see
    docs/shared-memory.md for the keys)."""
