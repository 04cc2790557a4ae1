"""panelboard.httpx against a real HTTP server on loopback, through real httpx and httpx2 clients."""

from __future__ import annotations

import asyncio
import gc
import importlib
import socket
import sys

import panelboard
import pytest
from panelboard import CircuitOpenError, Registry, State

LIBRARIES = ["httpx", "httpx2"]


@pytest.fixture(params=LIBRARIES)
def lib(request):
    return pytest.importorskip(request.param, reason=f"{request.param} is not installed here")


@pytest.fixture
def pb_httpx():
    return importlib.import_module("panelboard.httpx")


@pytest.fixture
def registry(clock):
    return Registry(clock=clock, failure_threshold=2, reset_timeout=5.0)


def client(lib, pb_httpx, registry, **kwargs):
    transport_options = {k: kwargs.pop(k) for k in ("name", "failure_statuses", "options") if k in kwargs}
    inner = kwargs.pop("inner", None)
    transport = pb_httpx.BreakerTransport(inner, registry=registry, **transport_options)
    return lib.Client(transport=transport, timeout=kwargs.pop("timeout", 2.0), **kwargs)


def fail_then_wait(c, server, clock, *, status: int, seconds: float) -> None:
    """Opens `server`'s breaker (failure_threshold=2) with two failed statuses through `c`, then
    moves `clock` on by `seconds`."""
    for _ in range(2):
        c.get(f"{server.url}/status/{status}")
    clock.advance(seconds)


def metrics(registry, server):
    return registry.snapshot()[server.url]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_breaker_per_origin_named_scheme_host_port(lib, pb_httpx, registry, server):
    with client(lib, pb_httpx, registry) as c:
        assert c.get(server.url + "/ok").text == "ok"
        assert c.get(f"http://localhost:{server.port}/ok").text == "ok"
    names = set(registry.snapshot())
    assert names == {f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}"}
    m = metrics(registry, server)
    assert (m.calls, m.successes, m.failures) == (1, 1, 0)


def test_failure_statuses_open_the_breaker_and_the_response_is_returned_unchanged(
    lib, pb_httpx, registry, server
):
    with client(lib, pb_httpx, registry) as c:
        for _ in range(2):
            response = c.get(server.url + "/status/503")
            assert response.status_code == 503 and response.text == "status 503"
        assert registry.state(server.url) is State.OPEN
        hits = server.hits["/ok"]
        with pytest.raises(CircuitOpenError) as info:
            c.get(server.url + "/ok")
    err = info.value
    assert isinstance(err, lib.TransportError) and isinstance(err, lib.HTTPError)
    assert err.name == server.url and err.retry_after == pytest.approx(5.0)
    assert err.request.url == server.url + "/ok"
    assert server.hits["/ok"] == hits  # the request never left
    m = metrics(registry, server)
    assert (m.failures, m.rejected, m.times_opened) == (2, 1, 1)


def test_statuses_are_configurable(lib, pb_httpx, registry, server):
    with client(lib, pb_httpx, registry, failure_statuses={404}) as c:
        c.get(server.url + "/status/503")
        c.get(server.url + "/status/404")
    m = metrics(registry, server)
    assert (m.successes, m.failures) == (1, 1)


def test_the_open_error_is_caught_by_except_http_error(lib, pb_httpx, registry, server):
    registry.force_open(server.url)
    with client(lib, pb_httpx, registry) as c:
        try:
            c.get(server.url + "/ok")
        except lib.HTTPError as exc:
            caught = exc
    assert isinstance(caught, CircuitOpenError)
    assert server.hits["/ok"] == 0


def test_connection_refused_is_a_failure(lib, pb_httpx, registry):
    url = f"http://127.0.0.1:{closed_port()}"
    with client(lib, pb_httpx, registry) as c:
        for _ in range(2):
            with pytest.raises(lib.ConnectError):
                c.get(url + "/ok")
        with pytest.raises(CircuitOpenError):
            c.get(url + "/ok")
    assert registry.snapshot()[url].failures == 2


def test_read_timeout_is_a_failure(lib, pb_httpx, registry, server):
    with client(lib, pb_httpx, registry, timeout=0.2) as c:
        with pytest.raises(lib.ReadTimeout):
            c.get(server.url + "/stall/3")
    assert metrics(registry, server).failures == 1


def test_body_cut_mid_stream_is_one_failure(lib, pb_httpx, registry, server):
    with client(lib, pb_httpx, registry) as c:
        with pytest.raises((lib.RemoteProtocolError, lib.ReadError)):
            c.get(server.url + "/cut")
        with c.stream("GET", server.url + "/cut") as response:
            assert response.status_code == 200  # the status was fine: nothing counted yet
            assert metrics(registry, server).calls == 1  # only the first one
            with pytest.raises((lib.RemoteProtocolError, lib.ReadError)):
                response.read()
    m = metrics(registry, server)
    assert (m.calls, m.failures) == (2, 2)
    assert registry.state(server.url) is State.OPEN


def test_stream_closed_early_counts_by_status_once(lib, pb_httpx, registry, server):
    with client(lib, pb_httpx, registry) as c:
        with c.stream("GET", server.url + "/chunks/200") as response:
            for _ in response.iter_bytes():
                break  # the caller stops reading: closed early, without an error
        m = metrics(registry, server)
        assert (m.calls, m.successes) == (1, 1)
        with c.stream("GET", server.url + "/status/503") as response:
            pass  # a failed status closed without reading
        m = metrics(registry, server)
        assert (m.calls, m.successes, m.failures) == (2, 1, 1)


def test_a_half_open_probe_settles_when_its_body_is_done(lib, pb_httpx, clock, registry, server):
    registry.force_open(server.url)
    registry.reset(server.url)
    with client(lib, pb_httpx, registry) as c:
        fail_then_wait(c, server, clock, status=500, seconds=5.0)
        with c.stream("GET", server.url + "/hold/0.3") as probe:
            assert registry.state(server.url) is State.HALF_OPEN
            with pytest.raises(CircuitOpenError):  # the one probe slot is taken until the body is done
                c.get(server.url + "/ok")
            probe.read()
        assert registry.state(server.url) is State.CLOSED


def test_pool_timeout_and_unsupported_protocol_are_ignored(lib, pb_httpx, registry, server):
    limits = lib.Limits(max_connections=1)
    inner = lib.HTTPTransport(limits=limits)
    timeout = lib.Timeout(2.0, pool=0.1)
    with client(lib, pb_httpx, registry, inner=inner, timeout=timeout) as c:
        with c.stream("GET", server.url + "/chunks/200"):
            with pytest.raises(lib.PoolTimeout):
                c.get(server.url + "/ok")
        with pytest.raises(lib.UnsupportedProtocol):
            c.get("ftp://127.0.0.1/x")
    m = metrics(registry, server)
    assert (m.successes, m.failures, m.ignored) == (1, 0, 1)
    assert registry.snapshot()["ftp://127.0.0.1:0"].ignored == 1


def test_a_response_never_closed_releases_its_permit_as_ignored(lib, pb_httpx, clock, registry, server):
    registry.configure(server.url, reset_timeout=1.0)
    registry.force_open(server.url)
    registry.reset(server.url)
    with client(lib, pb_httpx, registry) as c:
        fail_then_wait(c, server, clock, status=502, seconds=1.0)
        response = c.send(c.build_request("GET", server.url + "/ok"), stream=True)
        assert registry.state(server.url) is State.HALF_OPEN
        del response
        gc.collect()
        assert metrics(registry, server).ignored == 1
        assert c.get(server.url + "/ok").text == "ok"  # the slot was released: the probe goes through
    assert registry.state(server.url) is State.CLOSED


def test_name_is_a_callable_of_the_request_and_options_apply(lib, pb_httpx, registry, server):
    def by_path(request):
        return "api" + request.url.path

    with client(lib, pb_httpx, registry, name=by_path, options={"failure_threshold": 1}) as c:
        c.get(server.url + "/status/500")
        c.get(server.url + "/ok")
    assert registry.state("api/status/500") is State.OPEN
    assert registry.state("api/ok") is State.CLOSED


def test_default_registry_and_default_inner_transport(lib, pb_httpx, server):
    try:
        with lib.Client(transport=pb_httpx.BreakerTransport(), timeout=2.0) as c:
            assert c.get(server.url + "/ok").text == "ok"
        assert panelboard.snapshot()[server.url].successes == 1
    finally:
        panelboard.delete(server.url)


def test_bad_arguments_are_rejected(pb_httpx):
    with pytest.raises(TypeError, match="registry"):
        pb_httpx.BreakerTransport(registry="default")
    with pytest.raises(ValueError, match="failure_statuses"):
        pb_httpx.BreakerTransport(failure_statuses={700})
    with pytest.raises(TypeError, match="inner"):
        pb_httpx.BreakerTransport(object())
    with pytest.raises(TypeError, match="name"):
        pb_httpx.AsyncBreakerTransport(name="origin")
    with pytest.raises(ValueError, match="failure_threshold"):
        pb_httpx.BreakerTransport(options={"failure_threshold": 0})
    with pytest.raises(TypeError, match="not an httpx or httpx2 request"):
        pb_httpx.BreakerTransport().handle_request(object())


def test_open_error_type_is_cached_per_library_and_pickles(lib, pb_httpx):
    import pickle

    cls = pb_httpx.open_error_type(lib)
    assert cls is pb_httpx.open_error_type(lib)
    assert issubclass(cls, CircuitOpenError) and issubclass(cls, lib.TransportError)
    err = cls("svc", 2.5, request=lib.Request("GET", "http://127.0.0.1:1/"))
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls and (copy.name, copy.retry_after) == ("svc", 2.5)
    assert "svc" in str(err)


# -- async -------------------------------------------------------------------------------------


def aclient(lib, pb_httpx, registry, timeout=2.0):
    return lib.AsyncClient(transport=pb_httpx.AsyncBreakerTransport(registry=registry), timeout=timeout)


async def test_async_statuses_errors_and_the_open_error(lib, pb_httpx, registry, server):
    async with aclient(lib, pb_httpx, registry) as c:
        assert (await c.get(server.url + "/ok")).text == "ok"
        with pytest.raises((lib.RemoteProtocolError, lib.ReadError)):
            await c.get(server.url + "/cut")
        assert (await c.get(server.url + "/status/429")).status_code == 429
        with pytest.raises(CircuitOpenError) as info:
            await c.get(server.url + "/ok")
    assert isinstance(info.value, lib.TransportError)
    m = metrics(registry, server)
    assert (m.successes, m.failures, m.rejected) == (1, 2, 1)


async def test_async_stream_closed_early_and_cancellation_is_ignored(lib, pb_httpx, registry, server):
    async with aclient(lib, pb_httpx, registry) as c:
        async with c.stream("GET", server.url + "/chunks/200") as response:
            async for _ in response.aiter_bytes():
                break
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.get(server.url + "/stall/3"), 0.2)
    m = metrics(registry, server)
    assert (m.successes, m.failures, m.ignored) == (1, 0, 1)


async def test_async_read_timeout_is_a_failure(lib, pb_httpx, registry, server):
    async with aclient(lib, pb_httpx, registry, timeout=0.2) as c:
        with pytest.raises(lib.ReadTimeout):
            await c.get(server.url + "/stall/3")
    assert metrics(registry, server).failures == 1


def test_a_response_already_read_by_the_inner_transport_counts_at_once(lib, pb_httpx, registry):
    def service(request):
        return lib.Response(503 if request.url.path == "/down" else 200, text="in memory")

    transport = pb_httpx.BreakerTransport(lib.MockTransport(service), registry=registry)
    with lib.Client(transport=transport) as c:
        assert c.get("http://mock.test/ok").text == "in memory"
        c.get("http://mock.test/down")
    m = registry.snapshot()["http://mock.test:80"]
    assert (m.successes, m.failures) == (1, 1)


def test_threads_sharing_one_client_count_every_response_once(lib, pb_httpx, server):
    from helpers import run_threads

    registry = Registry(failure_threshold=10_000)  # stays closed: every request is sent and counted
    per_thread = 25
    # httpcore's connection pool is not free-threading safe (seen on 3.13t: `has_expired` reads a
    # connection's `_expire_at` while another thread clears it, a TypeError inside httpcore). With
    # the GIL disabled each thread gets its own client; they still share the registry's breaker.
    shared = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True
    with client(lib, pb_httpx, registry) as c:

        def work(i: int) -> None:
            own = c if shared else client(lib, pb_httpx, registry)
            try:
                for k in range(per_thread):
                    path = "/status/503" if (i + k) % 5 == 0 else "/ok"
                    if k % 2:
                        with own.stream("GET", server.url + path) as response:
                            response.read()
                    else:
                        own.get(server.url + path)
            finally:
                if own is not c:
                    own.close()

        run_threads(work, n=8, timeout=60)
    m = registry.snapshot()[server.url]
    assert m.calls == 8 * per_thread
    assert m.failures == server.hits["/status/503"] and m.successes == server.hits["/ok"]


def test_one_default_transport_serves_httpx_and_httpx2_clients_each_through_its_own_library(server):
    httpx = pytest.importorskip("httpx", reason="httpx is not installed here")
    httpx2 = pytest.importorskip("httpx2", reason="httpx2 is not installed here")
    from panelboard.httpx import BreakerTransport

    registry = Registry()
    transport = BreakerTransport(registry=registry)
    with (
        httpx.Client(transport=transport, timeout=2.0) as c1,
        httpx2.Client(transport=transport, timeout=2.0) as c2,
    ):
        for c, lib in ((c1, httpx), (c2, httpx2), (c1, httpx)):
            response = c.get(server.url + "/ok")
            assert response.status_code == 200 and isinstance(response, lib.Response)
    assert registry.snapshot()[server.url].successes == 3
