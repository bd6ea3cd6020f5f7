"""What the coordinator's and the agents' metrics endpoints share: failure kinds, the loop's
health, and the small HTTP server that serves ``/metrics`` and ``/healthz`` off the loop.

The server runs in its own daemon threads (prometheus_client's threading WSGI server),
so a scrape never waits for the loop and the loop never waits for a scrape: the loop
only calls ``Health.beat()`` and publishes snapshots that the collectors read
(coordinator/metrics.py, agent/metrics.py).

``/healthz`` answers ``200`` while the loop iterated within ``max_age`` seconds and
``503`` otherwise (not started yet, stalled, or stopped), always with a one-line body
saying which.  Any other path than ``/metrics`` and ``/healthz`` is a ``404``.

Failure reasons are free text (an exception's message, the agent's report); a label
must come from a small fixed set, so ``failure_kind`` maps each reason to one of
``FAILURE_KINDS`` by the first rule that matches.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from glancesync import __version__
from glancesync.exceptions import ConfigError

# (kind, pattern) in order: the first pattern found in a reason names its kind.
_RULES: tuple[tuple[str, str], ...] = (
    ("lease_lapsed", r"lease of agent .* lapsed"),
    ("busy", r"no free worker slot|is busy here|cannot start a worker"),
    ("verification", r"mismatch|cannot be verified|cannot be compared|hashing algorithm|changed size"),
    ("timeout", r"timed out|timeout|no new byte"),
    ("worker_died", r"worker process exited|exit code"),
    ("source", r"source refused|cannot connect to|not found on|sftp|ssh|reading "),
    ("registration", r"registration|location|no such image"),
    ("glance", r"glance"),
)
FAILURE_KINDS: tuple[str, ...] = tuple(kind for kind, _ in _RULES) + ("other",)
_COMPILED = tuple((kind, re.compile(pattern, re.IGNORECASE)) for kind, pattern in _RULES)


def failure_kind(reason: str) -> str:
    """The kind (one of FAILURE_KINDS) of a failure ``reason``."""
    for kind, pattern in _COMPILED:
        if pattern.search(reason or ""):
            return kind
    return "other"


class Health:
    """When the loop last iterated, read by ``/healthz`` from another thread.

    ``clock`` is monotonic seconds (injected in tests); ``beat()`` is all the loop calls.
    """

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.clock = clock
        self.last_beat: float | None = None
        self.waiting = "the loop has not started yet"
        self.stopped: str | None = None

    def beat(self) -> None:
        self.last_beat = self.clock()

    def not_started(self, why: str) -> None:
        """Say what the service waits for before its loop starts (shown in the 503)."""
        self.waiting = why

    def stop(self, why: str) -> None:
        self.stopped = why

    def check_age(self) -> float | None:
        """Seconds since the last iteration; None before the first."""
        last = self.last_beat
        return None if last is None else self.clock() - last

    def check(self) -> tuple[bool, str]:
        """(healthy, one line saying why)."""
        if self.stopped is not None:
            return False, f"loop stopped: {self.stopped}"
        if self.last_beat is None:
            return False, f"not ready: {self.waiting}"
        age = self.clock() - self.last_beat
        if age > self.max_age:
            return False, f"loop stalled: last iteration {age:.1f} s ago (limit {self.max_age:g} s)"
        return True, f"ok: last iteration {age:.1f} s ago"


class _QuietHandler(WSGIRequestHandler):
    """No access log: a scrape every few seconds would flood the service's log."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return


class MetricsServer:
    """``/metrics`` of ``registry`` and ``/healthz`` of ``health`` on ``host:port``, in threads."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        self.host, self.port = host, port
        self.health = health
        self._metrics_app = make_wsgi_app(registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        """Bind and serve; a ConfigError when the address cannot be bound (the service refuses to start)."""
        try:
            self._server = make_server(self.host, self.port, self.app, ThreadingWSGIServer,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(source=f"metrics endpoint {self.host}:{self.port}",
                              detail=exc.strerror or str(exc)) from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            healthy, line = self.health.check()
            start_response("200 OK" if healthy else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{line}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]


def serve(group: Any, registry: CollectorRegistry, health: Health) -> MetricsServer | None:
    """Start the endpoint of an option group (``metrics_bind_host``, ``metrics_port``);
    None when metrics are off (port 0)."""
    if not group.metrics_port:
        return None
    return MetricsServer(group.metrics_bind_host, group.metrics_port, registry, health).start()


def service_families(service: str, health: Health) -> Iterator[Metric]:
    """The series every service exports: its build and the age of its loop's last iteration."""
    info = GaugeMetricFamily("glancesync_build_info", "Version of the running service.", labels=["service", "version"])
    info.add_metric([service, __version__], 1)
    yield info
    age = health.check_age()
    yield GaugeMetricFamily("glancesync_loop_last_iteration_age_seconds",
                            "Seconds since the poll loop last iterated (-1 before its first iteration).",
                            value=-1.0 if age is None else age)
