"""An agent's Prometheus series: counted on the loop thread, published as a snapshot.

The service calls ``worker_event`` for what its workers report (progress, results)
and ``tick`` once per loop iteration; ``tick`` marks the loop alive for ``/healthz``
and, every ``PUBLISH_SECONDS``, publishes an immutable ``Snapshot`` of the counters
and of the session's state.  The collector (on the HTTP thread of glancesync.metrics)
reads only the published snapshot, so a scrape never waits for the loop.

Bytes moved are the bytes the workers fetched, from their progress reports (a retry
that resumes a partial file counts only what it adds).  Every series and label is
listed in doc/metrics.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from glancesync.metrics import Health, failure_kind, service_families

# Seconds between two snapshots (and the window of the transfer rate).
PUBLISH_SECONDS = 2.0


@dataclass(frozen=True)
class Snapshot:
    """What one scrape shows; built on the loop thread, never changed afterwards."""

    taken_at: float | None = None
    bytes_moved: int = 0
    rate: float = 0.0
    finished: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    running: int = 0
    capacity: int = 0
    unacked: int = 0
    connected: bool = False
    silence: float = 0.0


class AgentMetrics:
    """The counters, the published snapshot, and the Prometheus collector reading it."""

    def __init__(self, region: str, agent_id: str, max_loop_age: float = 60.0,
                 publish_every: float = PUBLISH_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.region, self.agent_id = region, agent_id
        self.health = Health(max_loop_age, clock)
        self.publish_every = publish_every
        self.snapshot = Snapshot()
        self.bytes_moved = 0
        self.finished: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._progress: dict[str, int] = {}

    # -- on the loop thread ---------------------------------------------------------

    def worker_event(self, kind: str, task: dict[str, Any], body: dict[str, Any]) -> None:
        """A worker's ``progress`` or ``result`` (agent.pool.PoolEvent's fields)."""
        task_id = task["task_id"]
        if kind == "progress":
            self._moved(task_id, int(body.get("bytes_done") or 0))
            return
        if body.get("outcome") == "done":
            if isinstance(body.get("size"), int) and task.get("kind") == "copy":
                self._moved(task_id, body["size"])
            self.finished["done"] += 1
        else:
            self.finished["failed"] += 1
            self.failures[failure_kind(str(body.get("reason") or ""))] += 1
        self._progress.pop(task_id, None)

    def _moved(self, task_id: str, bytes_done: int) -> None:
        last = self._progress.get(task_id, 0)
        # Less than before: the transfer started over; else only the bytes added since.
        self.bytes_moved += bytes_done - last if bytes_done >= last else bytes_done
        self._progress[task_id] = bytes_done

    def tick(self, now: float, service: Any) -> None:
        """Once per loop iteration (``now``: the loop's monotonic clock); ``service``: the AgentService."""
        self.health.beat()
        previous = self.snapshot
        if previous.taken_at is not None and now - previous.taken_at < self.publish_every:
            return
        elapsed = now - previous.taken_at if previous.taken_at is not None else 0.0
        self.snapshot = Snapshot(
            taken_at=now, bytes_moved=self.bytes_moved,
            rate=(self.bytes_moved - previous.bytes_moved) / elapsed if elapsed > 0 else 0.0,
            finished=dict(self.finished), failures=dict(self.failures), running=len(service.attempts),
            capacity=service.capacity, unacked=len(service.results), connected=bool(service.welcomed),
            silence=max(0.0, now - service.liveness.last_heard))

    # -- on the HTTP thread ------------------------------------------------------------

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def collect(self) -> Iterator[Metric]:
        snap, labels, values = self.snapshot, ["region", "agent"], [self.region, self.agent_id]
        yield from service_families("agent", self.health)

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=labels)
            family.add_metric(values, value)
            return family

        moved = CounterMetricFamily("glancesync_agent_transferred_bytes",
                                    "Bytes this agent's workers fetched for copies.", labels=labels)
        moved.add_metric(values, snap.bytes_moved)
        yield moved
        yield gauge("glancesync_agent_transfer_rate_bytes_per_second",
                    "Bytes fetched per second over the last snapshot interval.", snap.rate)
        finished = CounterMetricFamily("glancesync_agent_tasks_finished", "Tasks this agent's workers finished.",
                                       labels=[*labels, "outcome"])
        for outcome in ("done", "failed"):
            finished.add_metric([*values, outcome], snap.finished.get(outcome, 0))
        yield finished
        failures = CounterMetricFamily("glancesync_agent_task_failures", "Tasks failed in this agent, by kind.",
                                       labels=[*labels, "kind"])
        for kind, count in sorted(snap.failures.items()):
            failures.add_metric([*values, kind], count)
        yield failures
        yield gauge("glancesync_agent_tasks_running", "Tasks running in worker processes.", snap.running)
        yield gauge("glancesync_agent_capacity", "Worker processes ([agent] workers).", snap.capacity)
        yield gauge("glancesync_agent_results_unacked", "Results waiting for the coordinator's ack.", snap.unacked)
        yield gauge("glancesync_agent_connected", "1 while the coordinator has welcomed this agent's session.",
                    1 if snap.connected else 0)
        yield gauge("glancesync_agent_coordinator_silence_seconds",
                    "Seconds since the agent last heard from the coordinator.", snap.silence)
