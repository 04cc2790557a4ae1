"""Typing examples: every public API of panelboard, written the way a user writes it.

``make typecheck`` runs ``mypy --strict`` on this file, and ``tests/test_typing.py`` both type-checks it
and runs it, so every example here is also known to work.

``assert_type`` pins the types the stub promises. The ``_misuse`` function holds mistakes the stub
must reject: each line carries ``# type: ignore[code]``, and ``--strict`` (warn_unused_ignores) turns
an ignore that is no longer needed into an error, so a stub that got too loose fails the check.
``_misuse`` is type-checked but never run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Coroutine, Generator
from typing import Any, assert_type

import panelboard
from panelboard import (
    Breaker,
    CircuitOpenError,
    ManualClock,
    Metrics,
    Permit,
    Registry,
    State,
)
from panelboard._core import Guarded

log = logging.getLogger("typing_examples")


class PaymentDeclined(Exception):
    pass


class NotFound(Exception):
    pass


# --- README: the module-level functions on the default registry ------------------------------------


def readme_quickstart() -> None:
    panelboard.init()

    def fetch() -> dict[str, int]:
        return {"balance": 10}

    try:
        data = panelboard.call("accounts-api", fetch, failure_threshold=5, reset_timeout=30.0)
        assert_type(data, dict[str, int])
    except CircuitOpenError as err:
        assert_type(err.name, str)
        assert_type(err.retry_after, float)
        log.warning("%s is open, retry in %.1fs", err.name, err.retry_after)

    # fn takes no arguments: use a lambda or functools.partial.
    def add(a: int, b: int) -> int:
        return a + b

    assert_type(panelboard.call("adder", functools.partial(add, 1, 2)), int)
    assert_type(panelboard.call("adder", lambda: add(1, 2)), int)

    assert_type(panelboard.state("accounts-api"), State)
    assert_type(panelboard.list(), list[tuple[str, State]])
    for name, state in panelboard.list():
        assert_type(name, str)
        assert_type(state, State)
    assert_type(panelboard.snapshot(), dict[str, Metrics])
    assert_type(panelboard.default_registry(), Registry)
    panelboard.reset("accounts-api")

    b = panelboard.breaker("accounts-api")
    assert_type(b, Breaker)
    assert_type(panelboard.configure("accounts-api", reset_timeout=5), Breaker)
    panelboard.force_open("maintenance")
    panelboard.disable("maintenance")
    panelboard.reset("maintenance")

    def on_change(name: str, old: State, new: State) -> None:
        log.info("%s: %s -> %s", name, old, new)

    # on_state_change returns its argument with its own type (usable as a decorator).
    returned = panelboard.on_state_change(on_change)
    assert returned is on_change
    assert_type(returned("accounts-api", State.OPEN, State.HALF_OPEN), None)
    panelboard.remove_listener(on_change)
    for name in ("accounts-api", "adder", "maintenance"):
        panelboard.delete(name)


# --- README: handles ------------------------------------------------------------------------------


def charge_card(card: str, amount: int, *, currency: str = "EUR") -> str:
    return f"charged {amount} {currency} to {card}"


def readme_handles(registry: Registry) -> None:
    payments = registry.breaker("payments", failure_threshold=3, reset_timeout=10.0)
    assert_type(payments.name, str)
    assert_type(payments.state, State)
    if payments.state is State.OPEN:
        log.info("payments is open")

    # Arguments are forwarded; the result keeps its type.
    receipt = payments.call(charge_card, "4242", 10, currency="USD")
    assert_type(receipt, str)
    # Even a keyword argument called `fn` reaches the function.
    assert_type(payments.call(lambda fn: fn * 2, fn=21), int)

    # The same breaker again: a handle does no name lookup per call.
    assert registry.breaker("payments").name == payments.name


# --- README: decorators ---------------------------------------------------------------------------


def readme_decorators(registry: Registry) -> None:
    inventory = registry.breaker("inventory")

    @inventory
    def stock(sku: str, *, warehouse: int = 1) -> int:
        """Units of `sku` in stock."""
        return len(sku) + warehouse

    @inventory
    def ping(host: str) -> float:
        return 0.5

    typed: Guarded[[str], float] = ping
    assert_type(typed("localhost"), float)
    assert_type(stock("abc"), int)
    assert_type(stock("abc", warehouse=2), int)
    assert_type(stock.breaker, Breaker)
    assert_type(stock.__wrapped__("x"), int)
    assert stock.__name__ == "stock"
    assert stock.__doc__ == "Units of `sku` in stock."

    @inventory
    async def reserve(sku: str, count: int) -> bool:
        await asyncio.sleep(0)
        return count > 0

    pending = assert_type(reserve("abc", 1), Coroutine[Any, Any, bool])
    assert asyncio.run(pending) is True
    assert_type(reserve.breaker, Breaker)
    assert reserve.__name__ == "reserve"

    class Warehouse:
        def __init__(self, region: str) -> None:
            self.region = region

        @inventory
        def lookup(self, sku: str) -> str:
            return f"{self.region}:{sku}"

        @inventory
        async def alookup(self, sku: str) -> str:
            return f"{self.region}:{sku}"

    w = Warehouse("eu")
    assert_type(w.lookup("abc"), str)
    assert_type(Warehouse.lookup(w, "abc"), str)
    assert_type(Warehouse.lookup.breaker, Breaker)
    assert_type(asyncio.run(w.alookup("abc")), str)
    assert w.lookup("abc") == "eu:abc"


# --- README: context managers ---------------------------------------------------------------------


def readme_context_managers(registry: Registry) -> None:
    search = registry.breaker("search", failure_on=(ConnectionError, TimeoutError))
    try:
        with search as b:
            assert_type(b, Breaker)
            result = "hits"
    except CircuitOpenError:
        result = "cached"
    assert_type(result, str)

    async def query() -> str:
        async with search as b:
            assert_type(b, Breaker)
            await asyncio.sleep(0)
            return "hits"

    assert_type(asyncio.run(query()), str)


# --- README: asyncio ------------------------------------------------------------------------------


async def fetch_profile(user_id: int, *, fields: tuple[str, ...] = ()) -> dict[str, str]:
    await asyncio.sleep(0)
    return {"id": str(user_id), **{f: "" for f in fields}}


def readme_asyncio(registry: Registry) -> None:
    profiles = registry.breaker("profiles")

    async def main() -> dict[str, str]:
        profile = await profiles.acall(fetch_profile, 7, fields=("name",))
        assert_type(profile, dict[str, str])
        return profile

    assert asyncio.run(main())["id"] == "7"

    @profiles(timeout=5.0)
    async def fetch_with_deadline(user_id: int) -> dict[str, str]:
        return await fetch_profile(user_id)

    async def with_timeouts() -> None:
        assert_type(await profiles.acall(fetch_profile, 7, timeout=5.0), dict[str, str])
        assert_type(await fetch_with_deadline(7), dict[str, str])

    asyncio.run(with_timeouts())


# --- README: generators -----------------------------------------------------------------------------


def readme_generators(registry: Registry) -> None:
    feed = registry.breaker("feed")

    @feed
    def rows(n: int) -> Generator[int, None, None]:
        yield from range(n)

    @feed
    async def arows(n: int) -> AsyncGenerator[int, None]:
        for i in range(n):
            yield i

    assert_type(list(rows(3)), list[int])

    async def consume() -> list[int]:
        return [row async for row in arows(2)]

    assert asyncio.run(consume()) == [0, 1]


# --- README: two-step permits ---------------------------------------------------------------------


def readme_permits(registry: Registry) -> None:
    rpc = registry.breaker("rpc")
    permit = rpc.try_acquire()
    assert_type(permit, Permit | None)
    if permit is None:
        return  # rejected, and no exception was raised
    assert_type(permit.settled, bool)
    try:
        charge_card("4242", 1)
    except PaymentDeclined:
        permit.ignore()
    except Exception:
        permit.failure()
        raise
    else:
        permit.success()
    assert permit.settled


# --- README: configuration ------------------------------------------------------------------------


def is_ok(response: Any) -> bool:
    return getattr(response, "status", 200) < 500


def readme_configuration() -> Registry:
    clock = ManualClock(start=100.0)
    assert_type(clock.now(), float)
    clock.advance(1.5)
    clock.advance(2)
    # Registry-wide defaults for new breakers.
    registry = Registry(clock=clock, failure_threshold=3, reset_timeout=5, probe_timeout=2.5)
    assert_type(Registry(), Registry)
    registry.breaker(
        "checkout",
        failure_threshold=2,
        reset_timeout=1.0,
        half_open_max_calls=2,
        success=is_ok,
        success_threshold=2,
        failure_on=Exception,
        ignore=(PaymentDeclined, NotFound),
        probe_timeout=None,
    )
    registry.breaker("catalog", ignore=NotFound, success=lambda r: r is not None)
    # Change an existing breaker's config atomically.
    checkout = registry.configure("checkout", failure_threshold=10, failure_on=(ConnectionError,))
    assert_type(checkout, Breaker)
    assert_type(registry.call("checkout", lambda: 3, success=lambda r: r > 0), int)
    return registry


# --- README: listeners, metrics, manual control ---------------------------------------------------


def readme_listeners_and_metrics(registry: Registry) -> None:
    changes: list[tuple[str, State, State]] = []

    @registry.on_state_change
    def record(name: str, old: State, new: State) -> None:
        changes.append((name, old, new))

    assert_type(record("ledger", State.CLOSED, State.OPEN), None)
    changes.clear()
    registry.on_state_change(lambda name, old, new: log.info("%s %s->%s", name, old, new))

    registry.force_open("ledger")
    assert registry.state("ledger") is State.FORCED_OPEN
    registry.disable("ledger")
    assert registry.state("ledger") is State.DISABLED
    registry.reset("ledger")
    registry.remove_listener(record)

    m = registry.breaker("ledger").metrics()
    assert_type(m, Metrics)
    assert_type(m.state, State)
    assert_type(m.consecutive_failures, int)
    assert_type(m.calls, int)
    assert_type(m.successes, int)
    assert_type(m.failures, int)
    assert_type(m.ignored, int)
    assert_type(m.rejected, int)
    assert_type(m.times_opened, int)
    assert_type(m.retry_after, float)
    for name, metrics in registry.snapshot().items():
        log.info("%s: %d calls, %d rejected", name, metrics.calls, metrics.rejected)

    assert_type(len(registry), int)
    assert_type("ledger" in registry, bool)
    registry.delete("ledger")
    assert_type(registry.list(), list[tuple[str, State]])
    assert changes


# --- The error type -------------------------------------------------------------------------------


def error_type() -> None:
    err = CircuitOpenError("payments", 1.5)
    assert_type(err, CircuitOpenError)
    assert isinstance(err, Exception)
    assert err.name == "payments" and err.retry_after == 1.5

    class Retryable(CircuitOpenError):
        pass

    assert issubclass(Retryable, CircuitOpenError)


# --- Mistakes the stub must reject (type-checked, never run) ---------------------------------------


def _misuse(registry: Registry, b: Breaker, permit: Permit, m: Metrics) -> None:
    def one_arg(x: int) -> int:
        return x

    def bad_listener(name: str) -> None:
        pass

    registry.breaker("x", failure_treshold=3)  # type: ignore[call-arg]
    registry.breaker(42)  # type: ignore[arg-type]
    registry.breaker("x", failure_threshold="3")  # type: ignore[arg-type]
    registry.breaker("x", reset_timeout="30")  # type: ignore[arg-type]
    registry.breaker("x", failure_on=ValueError())  # type: ignore[arg-type]
    registry.breaker("x", ignore=[KeyError])  # type: ignore[arg-type]
    registry.breaker("x", success=3)  # type: ignore[arg-type]
    registry.configure("x", probe_timeout="1")  # type: ignore[arg-type]
    Registry(clock=1.0)  # type: ignore[arg-type]
    Registry(failure_treshold=3)  # type: ignore[call-arg]
    registry.call("x", one_arg)  # type: ignore[arg-type]
    registry.state(None)  # type: ignore[arg-type]
    registry.on_state_change(bad_listener)  # type: ignore[type-var]
    b.call(one_arg, "1")  # type: ignore[arg-type]
    b.call(one_arg)  # type: ignore[call-arg]
    b.call(one_arg, 1, 2)  # type: ignore[call-arg]
    b.call(charge_card, "4242", 1, currency=1)  # type: ignore[arg-type]
    b.acall(one_arg, 1)  # type: ignore[call-overload]
    b.name = "other"  # type: ignore[misc]
    m.calls = 0  # type: ignore[misc]
    text: str = permit.success()  # type: ignore[func-returns-value, assignment]
    count: int = b.state  # type: ignore[assignment]

    @b
    def guarded(x: int) -> int:
        return x

    guarded("1")  # type: ignore[arg-type]
    wrong: str = guarded(1)  # type: ignore[assignment]

    @b
    async def aguarded(x: int) -> int:
        return x

    b(timeout="1")  # type: ignore[call-overload]

    async def use() -> None:
        bad: str = await aguarded(1)  # type: ignore[assignment]
        await b.acall(fetch_profile, 7, timeout="1")  # type: ignore[call-arg]
        await b.acall(fetch_profile, "7")  # type: ignore[call-overload]


def main() -> None:
    registry = readme_configuration()
    readme_quickstart()
    readme_handles(registry)
    readme_decorators(registry)
    readme_context_managers(registry)
    readme_asyncio(registry)
    readme_generators(registry)
    readme_permits(registry)
    readme_listeners_and_metrics(registry)
    error_type()
    print("typing examples ran")


if __name__ == "__main__":
    main()
