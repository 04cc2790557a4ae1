"""panelboard.aiohttp against a real HTTP server on loopback, through a real aiohttp client."""

from __future__ import annotations

import asyncio
import importlib
import socket

import pytest
from panelboard import CircuitOpenError, Registry, State

aiohttp = pytest.importorskip("aiohttp", minversion="3.12", reason="aiohttp >= 3.12 is not installed here")


@pytest.fixture
def middleware():
    return importlib.import_module("panelboard.aiohttp").breaker_middleware


@pytest.fixture
def registry(clock):
    return Registry(clock=clock, failure_threshold=2, reset_timeout=5.0)


def session(middleware, registry, total=2.0, **kwargs):
    return aiohttp.ClientSession(
        middlewares=(middleware(registry, **kwargs),), timeout=aiohttp.ClientTimeout(total=total)
    )


def metrics(registry, server):
    return registry.snapshot()[server.url]


async def test_statuses_count_and_the_open_error_is_a_client_error(middleware, registry, server):
    async with session(middleware, registry) as s:
        async with s.get(server.url + "/ok") as response:
            assert await response.text() == "ok"
        for _ in range(2):
            async with s.get(server.url + "/status/503") as response:
                assert response.status == 503 and await response.text() == "status 503"
        assert registry.state(server.url) is State.OPEN
        with pytest.raises(CircuitOpenError) as info:
            await s.get(server.url + "/ok")
    assert isinstance(info.value, aiohttp.ClientConnectionError)
    assert info.value.retry_after == pytest.approx(5.0)
    assert server.hits["/ok"] == 1
    m = metrics(registry, server)
    assert (m.successes, m.failures, m.rejected) == (1, 2, 1)


async def test_connection_refused_and_timeouts_are_failures(middleware, registry, server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with session(middleware, registry, total=0.2) as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(refused + "/ok")
        with pytest.raises(asyncio.TimeoutError):
            await s.get(server.url + "/stall/3")
    assert registry.snapshot()[refused].failures == 1
    assert metrics(registry, server).failures == 1


async def test_body_cut_mid_stream_is_one_failure(middleware, registry, server):
    async with session(middleware, registry) as s:
        async with s.get(server.url + "/cut") as response:
            assert response.status == 200
            assert registry.snapshot()[server.url].calls == 0  # nothing counted before the body is done
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    m = metrics(registry, server)
    assert (m.calls, m.failures) == (1, 1)


async def test_released_early_counts_by_status_once(middleware, registry, server):
    async with session(middleware, registry) as s:
        async with s.get(server.url + "/chunks/200") as response:
            await response.content.read(1024)  # then leave without reading the rest
        async with s.get(server.url + "/status/500"):
            pass
        async with s.get(server.url + "/ok") as response:
            await response.read()
    m = metrics(registry, server)
    assert (m.calls, m.successes, m.failures) == (3, 2, 1)


async def test_cancellation_and_invalid_urls_are_ignored(middleware, registry, server):
    async with session(middleware, registry) as s:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(s.get(server.url + "/stall/3"), 0.2)
    m = metrics(registry, server)
    assert (m.failures, m.ignored) == (0, 1)


async def test_a_probe_holds_its_slot_until_the_body_is_done(middleware, clock, registry, server):
    async with session(middleware, registry) as s:
        for _ in range(2):
            async with s.get(server.url + "/status/502"):
                pass
        clock.advance(5.0)
        async with s.get(server.url + "/hold/0.3") as probe:
            assert registry.state(server.url) is State.HALF_OPEN
            with pytest.raises(CircuitOpenError):
                await s.get(server.url + "/ok")
            await probe.read()
    assert registry.state(server.url) is State.CLOSED


async def test_name_and_statuses_are_configurable(middleware, registry, server):
    async with session(middleware, registry, name=lambda r: "svc", failure_statuses={404}) as s:
        for path in ("/status/404", "/status/503"):
            async with s.get(server.url + path) as response:
                await response.read()
    m = registry.snapshot()["svc"]
    assert (m.successes, m.failures) == (1, 1)


def test_bad_arguments_are_rejected(middleware):
    with pytest.raises(TypeError, match="registry"):
        middleware(object())
    with pytest.raises(ValueError, match="failure_statuses"):
        middleware(failure_statuses={99})
    with pytest.raises(ValueError, match="reset_timeout"):
        middleware(options={"reset_timeout": -1})
