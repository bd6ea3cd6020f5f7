"""The shared metrics pieces: failure kinds, the loop's health, and the HTTP endpoint over real sockets."""

from __future__ import annotations

import socket
import types
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from glancesync import metrics
from glancesync.exceptions import ConfigError
from tests.unit.fakeclock import FakeClock


@pytest.mark.parametrize(("reason", "kind"), [
    ("lease of agent a1 lapsed on attempt 2 (the agent died or went silent while running it)", "lease_lapsed"),
    ("no free worker slot", "busy"),
    ("image 1234 is busy here with task t9", "busy"),
    ("checksum mismatch: RegionA has 'aa', the cascading image has 'bb'", "verification"),
    ("timed out after 600 s (scp_copy_timeout); worker terminated", "timeout"),
    ("transfer of X failed: reading /srv/x: no new byte for 300 s", "timeout"),
    ("worker process exited with code -9 before reporting a result", "worker_died"),
    ("transfer of X failed: cannot connect to 10.0.0.1:22: refused", "source"),
    ("registration: glance http://c:9292: 503 Service Unavailable", "registration"),
    ("glance RegionA: 500 internal error", "glance"),
    ("host key unknown", "other"),
    ("", "other"),
])
def test_each_reason_maps_to_one_of_a_few_kinds(reason: str, kind: str) -> None:
    assert metrics.failure_kind(reason) == kind
    assert kind in metrics.FAILURE_KINDS


def test_health_is_ready_only_while_the_loop_iterates() -> None:
    clock = FakeClock(100.0)
    health = metrics.Health(max_age=15.0, clock=clock)
    health.not_started("checking the cascading glance")
    assert health.check() == (False, "not ready: checking the cascading glance")
    health.beat()
    clock.now += 15.0
    healthy, line = health.check()
    assert healthy and line.startswith("ok:")
    clock.now += 0.5
    healthy, line = health.check()
    assert not healthy and line.startswith("loop stalled: last iteration 15.5 s ago")
    health.beat()
    assert health.check()[0]
    health.stop("shutting down")
    assert health.check() == (False, "loop stopped: shutting down")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def served():
    clock = FakeClock(100.0)
    health = metrics.Health(max_age=5.0, clock=clock)
    registry = CollectorRegistry()
    Gauge("glancesync_test_value", "a test gauge", registry=registry).set(7)
    server = metrics.MetricsServer("127.0.0.1", 0, registry, health).start()
    yield server, health, clock
    server.close()


def test_endpoint_serves_metrics_and_health_off_the_caller(served) -> None:
    server, health, clock = served
    status, body = get(server.port, "/healthz")
    assert status == 503 and body == "not ready: the loop has not started yet\n"
    health.beat()
    status, body = get(server.port, "/healthz")
    assert status == 200 and body.startswith("ok:") and body.count("\n") == 1
    clock.now += 6
    assert get(server.port, "/healthz")[0] == 503
    status, body = get(server.port, "/metrics")
    assert status == 200 and "glancesync_test_value 7.0" in body
    assert get(server.port, "/")[0] == 404


def test_a_port_in_use_is_a_config_error(served) -> None:
    server = served[0]
    with pytest.raises(ConfigError, match=f"metrics endpoint 127.0.0.1:{server.port}"):
        metrics.MetricsServer("127.0.0.1", server.port, CollectorRegistry(), metrics.Health(5.0)).start()


def test_port_zero_in_the_options_means_no_endpoint() -> None:
    group = types.SimpleNamespace(metrics_bind_host="127.0.0.1", metrics_port=0)
    assert metrics.serve(group, CollectorRegistry(), metrics.Health(5.0)) is None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    group.metrics_port = port
    server = metrics.serve(group, CollectorRegistry(), metrics.Health(5.0))
    try:
        assert server is not None and get(port, "/healthz")[0] == 503
    finally:
        server.close()
