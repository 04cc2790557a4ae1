"""panelboard.prometheus (a real scrape over HTTP) and panelboard.opentelemetry (an in-memory reader)."""

from __future__ import annotations

import importlib
import urllib.request

import pytest
from panelboard import Registry, State


@pytest.fixture
def breakers(clock):
    registry = Registry(clock=clock, failure_threshold=2, reset_timeout=5.0)
    api = registry.breaker("api")
    assert api.call(lambda: "ok") == "ok"
    for _ in range(2):
        p = api.try_acquire()
        p.failure()
    assert api.try_acquire() is None  # rejected
    clock.advance(2.0)
    db = registry.breaker("db")
    db.try_acquire().ignore()
    return registry


def scrape(collector) -> str:
    prometheus_client = pytest.importorskip("prometheus_client")
    target = prometheus_client.CollectorRegistry()
    target.register(collector)
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=target)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_prometheus_scrape_shows_state_calls_openings_and_retry_after(breakers):
    pytest.importorskip("prometheus_client")
    collector = importlib.import_module("panelboard.prometheus").BreakerCollector(breakers)
    text = scrape(collector)
    lines = set(text.splitlines())
    assert 'panelboard_circuit_breaker_state{breaker="api",state="open"} 1.0' in lines
    assert 'panelboard_circuit_breaker_state{breaker="api",state="closed"} 0.0' in lines
    assert 'panelboard_circuit_breaker_state{breaker="db",state="closed"} 1.0' in lines
    for outcome, value in (("success", 1), ("failure", 2), ("ignored", 0), ("rejected", 1)):
        assert (
            f'panelboard_circuit_breaker_calls_total{{breaker="api",outcome="{outcome}"}} {value:.1f}'
            in lines
        )
    assert 'panelboard_circuit_breaker_calls_total{breaker="db",outcome="ignored"} 1.0' in lines
    assert 'panelboard_circuit_breaker_opened_total{breaker="api"} 1.0' in lines
    assert 'panelboard_circuit_breaker_retry_after_seconds{breaker="api"} 3.0' in lines
    assert "# TYPE panelboard_circuit_breaker_state gauge" in lines
    assert "# TYPE panelboard_circuit_breaker_calls_total counter" in lines


def test_prometheus_reads_live_state_at_each_scrape(breakers, clock):
    pytest.importorskip("prometheus_client")
    collector = importlib.import_module("panelboard.prometheus").BreakerCollector(breakers, namespace="svc")
    clock.advance(3.0)
    text = scrape(collector)
    assert 'svc_circuit_breaker_state{breaker="api",state="half_open"} 1.0' in text.splitlines()
    collector_type = importlib.import_module("panelboard.prometheus").BreakerCollector
    # Names prometheus_client would silently rewrite (a leading digit, non-ASCII letters or digits).
    for bad in ("a-b", "1abc", "\u00e9", "\u0663x", "a b"):
        with pytest.raises(ValueError, match="namespace"):
            collector_type(breakers, namespace=bad)
    with pytest.raises(TypeError, match="namespace"):
        collector_type(breakers, namespace=b"svc")
    assert collector_type(breakers, namespace="_ok9") is not None


def points(reader):
    found = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "panelboard"
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found[(metric.name, tuple(sorted(point.attributes.items())))] = point.value
    return found


def test_opentelemetry_observable_instruments(breakers, clock):
    pytest.importorskip("opentelemetry.sdk.metrics", reason="opentelemetry-sdk is not installed here")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instruments = importlib.import_module("panelboard.opentelemetry").instrument(breakers, provider)
        assert len(instruments) == 4
        found = points(reader)
        name = ("circuitbreaker.name", "api")
        assert found[("circuitbreaker.state", (name, ("circuitbreaker.state", "open")))] == 1
        assert found[("circuitbreaker.state", (name, ("circuitbreaker.state", "closed")))] == 0
        for outcome, value in (("success", 1), ("failure", 2), ("ignored", 0), ("rejected", 1)):
            assert found[("circuitbreaker.calls", (name, ("circuitbreaker.outcome", outcome)))] == value
        assert found[("circuitbreaker.opened", (name,))] == 1
        assert found[("circuitbreaker.retry_after", (name,))] == pytest.approx(3.0)
        clock.advance(3.0)
        breakers.reset("db")
        found = points(reader)  # collected again: the live state
        assert found[("circuitbreaker.state", (name, ("circuitbreaker.state", "half_open")))] == 1
        assert breakers.state("api") is State.HALF_OPEN
    finally:
        provider.shutdown()
