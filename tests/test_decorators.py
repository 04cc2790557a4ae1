"""``@breaker`` on ``def`` and ``async def`` functions and on methods (issue 3).

Every call of the decorated function goes through the breaker; ``functools.wraps`` metadata
(``__name__``, ``__doc__``, ``__wrapped__``, ...) is kept, and decorated methods bind like functions.
"""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest
from helpers import Boom, cancel_while_running, run_threads
from panelboard import Breaker, CircuitOpenError, State


@pytest.fixture
def b(registry) -> Breaker:
    return registry.breaker("svc", failure_threshold=2, reset_timeout=10.0)


# --- def ------------------------------------------------------------------------------------------


def test_sync_function_metadata_is_kept(b):
    def charge(card: str, amount: int = 1) -> str:
        """Charge a card."""
        return f"{card}:{amount}"

    charge.custom = "attr"
    guarded = b(charge)
    assert guarded.__name__ == "charge"
    assert guarded.__qualname__ == charge.__qualname__
    assert guarded.__doc__ == "Charge a card."
    assert guarded.__module__ == __name__
    assert guarded.__wrapped__ is charge
    assert guarded.__annotations__ == charge.__annotations__
    assert guarded.custom == "attr", "functools.wraps copies __dict__"
    assert inspect.signature(guarded) == inspect.signature(charge)
    assert not inspect.iscoroutinefunction(guarded)


def test_sync_function_arguments_and_result_are_forwarded(b):
    @b
    def f(*args, **kwargs):
        return args, kwargs

    assert f() == ((), {})
    assert f(1, 2) == ((1, 2), {})
    assert f(1, x=2) == ((1,), {"x": 2})
    assert f(fn=1, func=2, self=3) == ((), {"fn": 1, "func": 2, "self": 3})
    many = tuple(range(30))
    assert f(*many, **{f"k{i}": i for i in range(10)}) == (many, {f"k{i}": i for i in range(10)})


def test_sync_function_outcomes_are_counted_and_exceptions_propagate(b):
    err = Boom("x")

    @b
    def f(fail: bool):
        if fail:
            raise err
        return "ok"

    assert f(False) == "ok"
    with pytest.raises(Boom) as info:
        f(True)
    assert info.value is err
    assert b.state is State.CLOSED
    with pytest.raises(Boom):
        f(True)
    assert b.state is State.OPEN
    m = b.metrics()
    assert (m.successes, m.failures) == (1, 2)


def test_sync_function_rejected_while_open_without_running(b, clock):
    ran = []

    @b
    def f():
        ran.append(1)
        raise Boom()

    for _ in range(2):
        with pytest.raises(Boom):
            f()
    with pytest.raises(CircuitOpenError) as info:
        f()
    assert ran == [1, 1]
    assert info.value.name == "svc"
    clock.advance(10.0)
    with pytest.raises(Boom):
        f()  # the half-open probe runs it
    assert ran == [1, 1, 1]
    assert b.state is State.OPEN


def test_guarded_function_exposes_its_breaker(b):
    @b
    def f():
        raise Boom()

    assert isinstance(f.breaker, Breaker)
    assert f.breaker.name == "svc"
    with pytest.raises(Boom):
        f()
    # The same breaker as the decorating handle, not a copy.
    assert b.metrics().failures == 1
    with pytest.raises(Boom):
        b.call(f.__wrapped__)
    assert f.breaker.state is State.OPEN


def test_one_breaker_guards_several_functions(b):
    @b
    def a():
        raise Boom()

    @b
    def c():
        raise Boom()

    with pytest.raises(Boom):
        a()
    with pytest.raises(Boom):
        c()
    assert b.state is State.OPEN


def test_decorating_a_non_callable_is_a_type_error(b):
    with pytest.raises(TypeError):
        b(42)


# --- async def ------------------------------------------------------------------------------------


def test_async_function_metadata_is_kept(b):
    async def fetch(url: str) -> str:
        """Fetch a URL."""
        return url

    guarded = b(fetch)
    assert inspect.iscoroutinefunction(guarded)
    assert guarded.__name__ == "fetch"
    assert guarded.__qualname__ == fetch.__qualname__
    assert guarded.__doc__ == "Fetch a URL."
    assert guarded.__wrapped__ is fetch
    assert inspect.signature(guarded) == inspect.signature(fetch)
    assert guarded.breaker.name == "svc"


async def test_async_function_arguments_result_and_failures(b):
    @b
    async def fetch(x, *, y, fn=None):
        await asyncio.sleep(0)
        if x < 0:
            raise Boom(x)
        return x + y, fn

    assert await fetch(1, y=2, fn="f") == (3, "f")
    with pytest.raises(Boom):
        await fetch(-1, y=0)
    with pytest.raises(Boom):
        await fetch(-2, y=0)
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        await fetch(1, y=2)
    m = b.metrics()
    assert (m.successes, m.failures, m.rejected) == (1, 2, 1)


async def test_async_function_is_not_admitted_until_awaited(b):
    @b
    async def f():
        return 1

    coro = f()
    assert b.metrics().calls == 0
    assert await coro == 1
    assert b.metrics().successes == 1


async def test_async_function_cancellation_is_ignored(b):
    started = asyncio.Event()

    @b
    async def hang():
        started.set()
        await asyncio.Event().wait()

    await cancel_while_running(hang, started)
    assert b.state is State.CLOSED
    m = b.metrics()
    assert (m.failures, m.ignored) == (0, 3)


async def test_decorating_an_async_callable_object_counts_the_awaited_outcome(b):
    class Endpoint:
        async def __call__(self, x):
            await asyncio.sleep(0)
            raise Boom(x)

    guarded = b(Endpoint())
    for i in range(2):
        with pytest.raises(Boom):
            await guarded(i)
    assert b.metrics().failures == 2
    assert b.state is State.OPEN


# --- methods --------------------------------------------------------------------------------------


def test_decorated_methods_receive_self(registry):
    b = registry.breaker("methods", failure_threshold=1)

    class Client:
        def __init__(self, base: str) -> None:
            self.base = base

        @b
        def get(self, path: str, *, fn: str = "") -> str:
            """GET a path."""
            return self.base + path + fn

        @b
        async def aget(self, path: str) -> str:
            return self.base + path

        @b
        def broken(self) -> None:
            raise Boom(self.base)

    c = Client("http://x")
    assert c.get("/a") == "http://x/a"
    assert c.get("/a", fn="!") == "http://x/a!"
    assert Client.get(c, "/b") == "http://x/b"
    assert asyncio.run(c.aget("/c")) == "http://x/c"
    assert Client.get.__name__ == "get"
    assert Client.get.__doc__ == "GET a path."
    assert c.get.__name__ == "get"
    assert c.get.__self__ is c, "bound like a function"
    other = Client("http://y")
    assert other.get("/") == "http://y/"
    assert b.metrics().successes == 5
    with pytest.raises(Boom):
        c.broken()
    with pytest.raises(CircuitOpenError):
        other.get("/")


def test_decorated_static_and_class_methods(b):
    class K:
        @staticmethod
        @b
        def s(x):
            return x

        @classmethod
        @b
        def c(cls, x):
            return cls, x

    assert K.s(1) == 1
    assert K().s(2) == 2
    assert K.c(3) == (K, 3)
    assert b.metrics().successes == 3


def test_decorated_function_from_16_threads(b):
    @b
    def add(x, y):
        return x + y

    barrier = threading.Barrier(16, timeout=10)
    results = [None] * 16

    def work(i):
        barrier.wait()
        results[i] = sum(add(i, j) for j in range(100))

    run_threads(work, n=16, timeout=30)
    assert results == [100 * i + sum(range(100)) for i in range(16)]
    assert b.metrics().successes == 1600
