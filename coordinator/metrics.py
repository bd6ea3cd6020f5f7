"""The coordinator's Prometheus series: the loop publishes a snapshot, a scrape reads it.

The loop calls ``tick(now)`` once per iteration (one of its steps): it marks the loop
alive for ``/healthz`` and, every ``PUBLISH_SECONDS``, builds a new ``Snapshot`` from
the journal, the agent sessions and the in-memory counters (``take_snapshot``, the
one function that reads the coordinator's state; when status counters move into
memory, only it changes).  The snapshot is immutable and replaced by one reference
assignment, so the HTTP thread (glancesync.metrics) reads it without a lock and a
scrape never waits for the loop, nor the loop for a scrape.

Counters kept here, on the loop thread: events received (new or duplicate; every one
is acked once committed) and bytes moved per region, from the agents' ``progress``
and ``done`` reports.  Failures by (region, kind) are counted by the task desk.
The lease of an active/passive pair is read from ``leadership.view`` at each scrape
(one immutable reference, as the snapshot; set by the command before it waits, so the
passive coordinator shows it too); a single coordinator leads once its loop has beaten.
Every series and label is listed in doc/metrics.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from coordinator.leadership import LeaseView
from glancesync import protocol
from glancesync.exceptions import JournalError
from glancesync.metrics import Health, service_families

LOG = logging.getLogger(__name__)

# Seconds between two snapshots: a scrape every 15-30 s sees data at most this old, and
# the loop pays for a few indexed queries this often, whatever the scrape rate.
PUBLISH_SECONDS = 5.0
# Seconds between two row counts of a journal that is not a SQLite file (catalog estimates:
# they change slowly).
ROW_COUNT_SECONDS = 60.0
# Tasks whose last progress is remembered (to turn bytes_done into bytes moved); beyond
# this the oldest are forgotten, so tasks whose agent vanished cannot grow it forever.
MAX_TRACKED_TASKS = 10000
_COUNTS = ("queued", "in_flight", "synced", "failed")
_NO_LEASE = LeaseView("passive", "")


@dataclass(frozen=True)
class Snapshot:
    """What one scrape shows; built on the loop thread, never changed afterwards."""

    taken_at: float = 0.0
    regions: dict[str, dict[str, int]] = field(default_factory=dict)
    oldest_pending: dict[str, float] = field(default_factory=dict)
    # (region, agent_id, online, last heartbeat as a wall-clock time)
    agents: tuple[tuple[str, str, bool, float], ...] = ()
    bytes_moved: dict[str, int] = field(default_factory=dict)
    rate: dict[str, float] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    events_unplanned: int = 0
    journal_bytes: int | None = None
    journal_rows: dict[str, int] = field(default_factory=dict)
    # (ended at, duration, succeeded) of the reconciler's last finished pass
    last_pass: tuple[float, float, bool] | None = None


class CoordinatorMetrics:
    """The counters, the published snapshot, and the Prometheus collector reading it."""

    def __init__(self, health: Health | None = None, publish_every: float = PUBLISH_SECONDS) -> None:
        self.health = health or Health(max_age=60.0)
        self.publish_every = publish_every
        self.source: Any = None  # the coordinator Service, set by it
        # A pair's coordinator.leadership.Leadership, once made; ``pair`` says one is coming.
        self.pair = False
        self.leadership: Any = None
        self.snapshot = Snapshot()
        self.events = {"new": 0, "duplicate": 0}
        self.bytes_moved: dict[str, int] = {}
        self._progress: dict[str, int] = {}
        self._published_at: float | None = None
        self._rows_at: float | None = None
        self._rows: dict[str, int] = {}
        self._stale = False  # the last snapshot could not be taken (logged once)

    # -- on the loop thread ---------------------------------------------------------

    def event_received(self, fresh: bool) -> None:
        self.events["new" if fresh else "duplicate"] += 1

    def agent_message(self, region: str, msg: protocol.Message) -> None:
        """Bytes moved, from ``progress`` and ``done``; a task's memory ends with its result."""
        body = msg.body
        if msg.type == "progress":
            self._moved(region, body["task_id"], body["bytes_done"])
        elif msg.type == "done":
            if isinstance(body.get("size"), int):
                self._moved(region, body["task_id"], body["size"])
            self._progress.pop(body["task_id"], None)
        elif msg.type == "failed":
            self._progress.pop(body["task_id"], None)

    def _moved(self, region: str, task_id: str, bytes_done: int) -> None:
        last = self._progress.pop(task_id, 0)
        # Less than before: a new attempt that started over; a retry that resumes a
        # partial file goes on from where the last one was seen.
        delta = bytes_done - last if bytes_done >= last else bytes_done
        self.bytes_moved[region] = self.bytes_moved.get(region, 0) + delta
        self._progress[task_id] = bytes_done
        while len(self._progress) > MAX_TRACKED_TASKS:
            del self._progress[next(iter(self._progress))]

    def tick(self, now: float) -> None:
        """Once per loop iteration: alive for /healthz; a new snapshot when one is due."""
        self.health.beat()
        if self.source is None:
            return
        if self._published_at is not None and now - self._published_at < self.publish_every:
            return
        self._published_at = now
        try:
            self.snapshot = self.take_snapshot(now)
        except JournalError as exc:  # the loop's own steps report the journal; one line here
            if not self._stale:
                age = f"of {now - self.snapshot.taken_at:.0f} s ago" if self.snapshot.taken_at else "(none yet)"
                LOG.warning("metrics keep the snapshot %s: %s", age, exc)
            self._stale = True
            return
        self._stale = False

    def take_snapshot(self, now: float) -> Snapshot:
        """Everything a scrape shows, read from the service: the journal's per-region counts,
        oldest pending tasks, unplanned events and size; the agent sessions; the task desk's
        failures; the reconciler's last pass.  The one place to change when these come from
        in-memory counters instead of the journal."""
        service, previous = self.source, self.snapshot
        journal = service.journal
        counts = journal.region_counts()
        names = list(service.regions)
        sessions = service.agents.by_region()
        names += sorted(name for name in set(counts) | set(sessions) if name not in names)
        journal_bytes = journal.sqlite_bytes()
        if journal_bytes is None and (self._rows_at is None or now - self._rows_at >= ROW_COUNT_SECONDS):
            self._rows_at, self._rows = now, journal.row_counts()
        elapsed = now - previous.taken_at if previous.taken_at else 0.0
        moved = dict(self.bytes_moved)
        rate = {region: (moved.get(region, 0) - previous.bytes_moved.get(region, 0)) / elapsed
                for region in names} if elapsed > 0 else {}
        agents = tuple((s.region, s.agent_id, s.online, s.liveness.last_heard)
                       for region in sorted(sessions) for s in sorted(sessions[region], key=lambda s: s.agent_id))
        return Snapshot(
            taken_at=now,
            regions={name: {k: counts.get(name, {}).get(k, 0) for k in _COUNTS} for name in names},
            oldest_pending=journal.oldest_pending(), agents=agents, bytes_moved=moved, rate=rate,
            failures=dict(service.tasks.failures), events=dict(self.events),
            events_unplanned=journal.unplanned_total(), journal_bytes=journal_bytes,
            journal_rows=dict(self._rows), last_pass=service.passes.last_pass)

    # -- on the HTTP thread ------------------------------------------------------------

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot  # one reference, read once: the loop may publish meanwhile
        yield from service_families("coordinator", self.health)
        yield from leader_families(self.pair, None if self.leadership is None else self.leadership.view,
                                   looping=self.health.last_beat is not None)
        yield GaugeMetricFamily("glancesync_metrics_snapshot_timestamp_seconds",
                                "When the loop published the snapshot these series come from (0: not yet).",
                                value=snap.taken_at)
        yield from _region_families(snap)
        yield from _agent_families(snap)
        yield from _journal_families(snap)


def leader_families(pair: bool, lease: LeaseView | None, looping: bool) -> Iterator[Metric]:
    """Whether this coordinator acts and, in a pair, the lease as it last saw it (a LeaseView; None before).

    A single coordinator acts once its loop has iterated (``looping``): not while it
    still checks the cascading credentials, which may wait long with /metrics up."""
    acting = lease.acting if lease is not None else (looping and not pair)
    yield GaugeMetricFamily("glancesync_coordinator_leader",
                            "1 while this coordinator acts (a single one, or the pair's lease holder), else 0.",
                            value=1 if acting else 0)
    if not pair:
        return
    lease = lease or _NO_LEASE
    yield GaugeMetricFamily("glancesync_coordinator_leader_generation",
                            "Generation of the pair's leader lease as last written or read (0: not read yet).",
                            value=lease.generation or 0)
    yield GaugeMetricFamily("glancesync_coordinator_leader_lease_expiry_timestamp_seconds",
                            "When the pair's leader lease expires unless renewed, as last written or read.",
                            value=lease.expires or 0.0)


def _region_families(snap: Snapshot) -> Iterator[Metric]:
    helps = {"queued": ("glancesync_region_queue_depth", "(image, region) pairs waiting for an agent (pending)."),
             "in_flight": ("glancesync_region_in_flight",
                           "(image, region) pairs handed out, transferring, registering or deleting."),
             "synced": ("glancesync_region_synced", "(image, region) pairs synced."),
             "failed": ("glancesync_region_failed", "(image, region) pairs failed for good.")}
    for key, (name, text) in helps.items():
        family = GaugeMetricFamily(name, text, labels=["region"])
        for region, counts in snap.regions.items():
            family.add_metric([region], counts[key])
        yield family
    lag = GaugeMetricFamily("glancesync_region_lag_seconds",
                            "Age of the region's oldest pending task (0 when none is pending).", labels=["region"])
    moved = CounterMetricFamily("glancesync_transferred_bytes",
                                "Bytes moved to the region, from the agents' progress reports.", labels=["region"])
    rate = GaugeMetricFamily("glancesync_transfer_rate_bytes_per_second",
                             "Bytes moved to the region per second over the last snapshot interval.",
                             labels=["region"])
    for region in snap.regions:
        since = snap.oldest_pending.get(region)
        lag.add_metric([region], max(0.0, snap.taken_at - since) if since is not None else 0.0)
        moved.add_metric([region], snap.bytes_moved.get(region, 0))
        rate.add_metric([region], snap.rate.get(region, 0.0))
    yield from (lag, moved, rate)
    failures = CounterMetricFamily("glancesync_task_failures",
                                   "Failed task attempts (transfers, registrations, lapsed leases) by kind.",
                                   labels=["region", "kind"])
    for (region, kind), count in sorted(snap.failures.items()):
        failures.add_metric([region, kind], count)
    yield failures


def _agent_families(snap: Snapshot) -> Iterator[Metric]:
    online = GaugeMetricFamily("glancesync_agents_online", "Agents online per region.", labels=["region"])
    for region in snap.regions:
        online.add_metric([region], sum(1 for a in snap.agents if a[0] == region and a[2]))
    yield online
    up = GaugeMetricFamily("glancesync_agent_up", "1 while the agent's session is online, else 0.",
                           labels=["region", "agent"])
    heard = GaugeMetricFamily("glancesync_agent_last_heartbeat_timestamp_seconds",
                              "When the coordinator last heard from the agent (any message).",
                              labels=["region", "agent"])
    for region, agent_id, is_online, last in snap.agents:
        up.add_metric([region, agent_id], 1 if is_online else 0)
        heard.add_metric([region, agent_id], last)
    yield from (up, heard)


def _journal_families(snap: Snapshot) -> Iterator[Metric]:
    received = CounterMetricFamily("glancesync_events_received",
                                   "Image events received and acked after their commit, new or duplicate.",
                                   labels=["outcome"])
    for outcome in ("new", "duplicate"):
        received.add_metric([outcome], snap.events.get(outcome, 0))
    yield received
    yield GaugeMetricFamily("glancesync_events_unplanned", "Events journaled and not planned yet.",
                            value=snap.events_unplanned)
    if snap.journal_bytes is not None:
        yield GaugeMetricFamily("glancesync_journal_size_bytes", "Bytes of the SQLite journal and its WAL.",
                                value=snap.journal_bytes)
    rows = GaugeMetricFamily("glancesync_journal_rows", "Rows of the journal's growing tables (not SQLite; "
                             "the database's estimate where it keeps one, read every minute).", labels=["table"])
    for table, count in sorted(snap.journal_rows.items()):
        rows.add_metric([table], count)
    yield rows
    ended, duration, ok = snap.last_pass or (0.0, 0.0, False)
    yield GaugeMetricFamily("glancesync_reconciler_last_pass_timestamp_seconds",
                            "When the reconciler's last pass ended (0: none since start).", value=ended)
    yield GaugeMetricFamily("glancesync_reconciler_last_pass_duration_seconds",
                            "Seconds the reconciler's last pass took.", value=duration)
    yield GaugeMetricFamily("glancesync_reconciler_last_pass_success",
                            "1 when the reconciler's last pass succeeded, else 0.", value=1 if ok else 0)
