"""panelboard.grpc against real grpc servers on loopback (generic handlers, raw bytes), sync and aio."""

from __future__ import annotations

import importlib
import time
from concurrent import futures

import pytest
from panelboard import CircuitOpenError, Registry, State

grpc = pytest.importorskip("grpc", reason="grpcio is not installed here (no wheel for this interpreter)")
from grpc import aio  # noqa: E402

SERVICE = "test.Svc"
ECHO, STREAM, COLLECT, CHAT = (f"/{SERVICE}/{m}" for m in ("Echo", "Stream", "Collect", "Chat"))


def answer(request: bytes, context) -> bytes:
    """b"ok" answers, b"<CODE>" aborts with that status code, b"slow" takes a second."""
    if request == b"slow":
        time.sleep(1.0)
    elif request != b"ok":
        context.abort(getattr(grpc.StatusCode, request.decode()), "told to fail")
    return request


def handlers():
    def echo(request, context):
        return answer(request, context)

    def stream(request, context):
        yield b"first"
        yield answer(request, context)

    def collect(requests, context):
        return b"".join(answer(r, context) for r in requests)

    def chat(requests, context):
        for r in requests:
            yield answer(r, context)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )


@pytest.fixture
def pb_grpc():
    return importlib.import_module("panelboard.grpc")


@pytest.fixture
def target():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(5.0)


@pytest.fixture
def registry(clock):
    return Registry(clock=clock, failure_threshold=2, reset_timeout=5.0)


@pytest.fixture
def channel(pb_grpc, registry, target):
    with grpc.insecure_channel(target) as plain:
        yield grpc.intercept_channel(plain, *pb_grpc.interceptors(registry))


def wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_unary_failures_open_the_breaker_and_the_rejection_is_unavailable(registry, channel):
    echo = channel.unary_unary(ECHO)
    assert echo(b"ok", timeout=5) == b"ok"
    with pytest.raises(grpc.RpcError) as info:
        echo(b"NOT_FOUND", timeout=5)  # the service's answer: a success for the breaker
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            echo(b"UNAVAILABLE", timeout=5)
    assert registry.state(ECHO) is State.OPEN
    with pytest.raises(grpc.RpcError) as info:
        echo(b"ok", timeout=5)
    err = info.value
    assert isinstance(err, CircuitOpenError) and err.name == ECHO
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "retry after 5.000s" in err.details()
    m = registry.snapshot()[ECHO]
    assert (m.successes, m.failures, m.rejected) == (2, 2, 1)
    with pytest.raises(grpc.RpcError):  # with_call and future() get the same answer
        echo.with_call(b"ok", timeout=5)
    assert echo.future(b"ok", timeout=5).exception().code() == grpc.StatusCode.UNAVAILABLE


def test_deadline_exceeded_is_a_failure_and_cancellation_is_ignored(registry, channel):
    echo = channel.unary_unary(ECHO)
    with pytest.raises(grpc.RpcError) as info:
        echo(b"slow", timeout=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    pending = echo.future(b"slow", timeout=5)
    assert pending.cancel()
    wait_for(lambda: registry.snapshot()[ECHO].calls == 2)
    m = registry.snapshot()[ECHO]
    assert (m.failures, m.ignored) == (1, 1)


def test_future_callers_are_not_blocked_and_the_outcome_comes_at_completion(registry, channel):
    echo = channel.unary_unary(ECHO)
    started = time.monotonic()
    pending = echo.future(b"slow", timeout=5)
    assert time.monotonic() - started < 0.5
    assert registry.snapshot()[ECHO].calls == 0
    assert pending.result() == b"slow"
    wait_for(lambda: registry.snapshot()[ECHO].successes == 1)


def test_streaming_shapes_settle_when_the_stream_ends(registry, channel):
    stream = channel.unary_stream(STREAM)
    assert list(stream(b"ok", timeout=5)) == [b"first", b"ok"]
    responses = stream(b"INTERNAL", timeout=5)
    assert next(responses) == b"first"
    with pytest.raises(grpc.RpcError):
        next(responses)
    wait_for(lambda: registry.snapshot()[STREAM].calls == 2)
    m = registry.snapshot()[STREAM]
    assert (m.successes, m.failures) == (1, 1)

    collect = channel.stream_unary(COLLECT)
    assert collect(iter([b"ok", b"ok"]), timeout=5) == b"okok"
    with pytest.raises(grpc.RpcError):
        collect(iter([b"ok", b"RESOURCE_EXHAUSTED"]), timeout=5)
    chat = channel.stream_stream(CHAT)
    assert list(chat(iter([b"ok", b"ok"]), timeout=5)) == [b"ok", b"ok"]
    with pytest.raises(grpc.RpcError):
        list(chat(iter([b"UNKNOWN"]), timeout=5))
    wait_for(lambda: registry.snapshot()[CHAT].calls == 2)
    for method in (COLLECT, CHAT):
        m = registry.snapshot()[method]
        assert (m.successes, m.failures) == (1, 1), method


def test_an_open_breaker_rejects_streams_too(registry, channel):
    registry.force_open(STREAM)
    with pytest.raises(grpc.RpcError) as info:
        list(channel.unary_stream(STREAM)(b"ok", timeout=5))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    registry.force_open(CHAT)
    with pytest.raises(CircuitOpenError):
        list(channel.stream_stream(CHAT)(iter([b"ok"]), timeout=5))


def test_one_breaker_per_target(pb_grpc, registry, target):
    with grpc.insecure_channel(target) as plain:
        channel = grpc.intercept_channel(plain, *pb_grpc.interceptors(registry, per="target", target=target))
        channel.unary_unary(ECHO)(b"ok", timeout=5)
        list(channel.unary_stream(STREAM)(b"ok", timeout=5))
    wait_for(lambda: registry.snapshot()[target].calls == 2)
    assert list(registry.snapshot()) == [target]


def test_bad_arguments_are_rejected(pb_grpc):
    with pytest.raises(ValueError, match="per"):
        pb_grpc.interceptors(per="host")
    with pytest.raises(ValueError, match="target"):
        pb_grpc.aio_interceptors(per="target")
    with pytest.raises(ValueError, match="failure_codes"):
        pb_grpc.interceptors(failure_codes=["NOPE"])
    with pytest.raises(TypeError, match="registry"):
        pb_grpc.interceptors(registry={})


# -- aio ------------------------------------------------------------------------------------------


@pytest.fixture
async def aio_target():
    server = aio.server()
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


async def settled(registry, name, calls):
    import asyncio

    for _ in range(500):
        if name in registry.snapshot() and registry.snapshot()[name].calls >= calls:
            return registry.snapshot()[name]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {calls} calls")


async def test_aio_all_four_shapes_and_the_open_error(pb_grpc, registry, aio_target):
    async with aio.insecure_channel(aio_target, interceptors=pb_grpc.aio_interceptors(registry)) as channel:
        echo = channel.unary_unary(ECHO)
        assert await echo(b"ok", timeout=5) == b"ok"
        for _ in range(2):
            with pytest.raises(aio.AioRpcError):
                await echo(b"UNAVAILABLE", timeout=5)
        await settled(registry, ECHO, 3)
        with pytest.raises(aio.AioRpcError) as info:
            await echo(b"ok", timeout=5)
        err = info.value
        assert isinstance(err, CircuitOpenError) and err.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry after" in err.details()

        responses = [r async for r in channel.unary_stream(STREAM)(b"ok", timeout=5)]
        assert responses == [b"first", b"ok"]
        collect = channel.stream_unary(COLLECT)
        assert await collect(iter([b"ok", b"ok"]), timeout=5) == b"okok"
        chat = channel.stream_stream(CHAT)
        with pytest.raises(aio.AioRpcError):
            async for _ in chat(iter([b"DEADLINE_EXCEEDED"]), timeout=5):
                pass
        assert (await settled(registry, STREAM, 1)).successes == 1
        assert (await settled(registry, COLLECT, 1)).successes == 1
        assert (await settled(registry, CHAT, 1)).failures == 1
    m = registry.snapshot()[ECHO]
    assert (m.successes, m.failures, m.rejected) == (1, 2, 1)
