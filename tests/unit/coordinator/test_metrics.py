"""The coordinator's series, over the real service loop: they follow a sync, and a scrape reads
only the snapshot the loop published."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import CoordinatorMetrics, Snapshot
from glancesync import protocol
from glancesync.exceptions import JournalError
from glancesync.states import SyncState

from .conftest import IMAGE_ID, NOW
from .test_eventdesk import reconciling_service
from .test_service import agent, arrived, planned, pump, receive, report, run_copy, send_event, state


def scrape(metrics: CoordinatorMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry()).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def published(service):
    """The service's metrics, publishing a snapshot at every iteration."""
    service.metrics.publish_every = 0.0
    return service.metrics


def test_series_follow_a_sync(ctx, service, journal, published) -> None:
    pump(service, NOW)
    before = scrape(published)
    assert value(before, "glancesync_region_queue_depth", region="RegionOne") == 0
    assert value(before, "glancesync_region_synced", region="RegionOne") == 0
    assert value(before, "glancesync_transferred_bytes_total", region="RegionOne") == 0
    send_event(ctx, service)
    pump(service, NOW, lambda: planned(service))
    pump(service, NOW + 30)
    queued = scrape(published)
    assert value(queued, "glancesync_region_queue_depth", region="RegionOne") == 1
    assert value(queued, "glancesync_region_lag_seconds", region="RegionOne") == pytest.approx(30, abs=1)
    assert value(queued, "glancesync_events_received_total", outcome="new") == 1
    sock = agent(ctx, service, credits=1, now=NOW + 30)
    task = receive(sock, service, NOW + 30, "task").body
    sock.send(protocol.encode("ack", {"task_id": task["task_id"], "attempt": 1}))
    sock.send(protocol.encode("progress", {"task_id": task["task_id"], "attempt": 1, "bytes_done": 400,
                                           "bytes_total": 1024}))
    pump(service, NOW + 30, lambda: state(journal) == "transferring")
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW + 31, lambda: state(journal) == "synced")
    pump(service, NOW + 31)
    after = scrape(published)
    assert value(after, "glancesync_region_synced", region="RegionOne") == 1
    assert value(after, "glancesync_region_queue_depth", region="RegionOne") == 0
    assert value(after, "glancesync_region_lag_seconds", region="RegionOne") == 0
    assert value(after, "glancesync_transferred_bytes_total", region="RegionOne") == 1024  # 400, then the rest
    assert value(after, "glancesync_agents_online", region="RegionOne") == 1
    assert value(after, "glancesync_agent_up", region="RegionOne", agent="a1") == 1
    assert value(after, "glancesync_agent_last_heartbeat_timestamp_seconds", region="RegionOne",
                 agent="a1") == pytest.approx(NOW + 31)
    assert value(after, "glancesync_journal_size_bytes") > 0
    assert value(after, "glancesync_loop_last_iteration_age_seconds") >= 0
    send_event(ctx, service, now=NOW + 31)  # the same event id again
    pump(service, NOW + 31)
    assert value(scrape(published), "glancesync_events_received_total", outcome="duplicate") == 1


def test_failures_are_counted_by_region_and_kind(ctx, service, journal, published, regional) -> None:
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("failed", {"task_id": task["task_id"], "attempt": 1,
                                         "reason": "transfer of x failed: cannot connect to sshd", "retryable": True}))
    pump(service, NOW, lambda: journal.task(task["task_id"]).state == SyncState.PENDING)
    later = NOW + 5  # the retry's backoff; the agent, silent since NOW, is heard again only by this frame
    sock.send(protocol.encode("ready", {"credits": 1}))
    arrived(service.agent_sock)  # an iteration at ``later`` without it would take the agent for gone
    second = receive(sock, service, later, "task").body
    regional.images.records[IMAGE_ID]["checksum"] = "0" * 32  # the registration finds other bytes
    sock.send(protocol.encode("done", report(second)))
    pump(service, later, lambda: journal.task(task["task_id"]).state == SyncState.FAILED)
    pump(service, later)
    samples = scrape(published)
    assert value(samples, "glancesync_task_failures_total", region="RegionOne", kind="source") == 1
    assert value(samples, "glancesync_task_failures_total", region="RegionOne", kind="verification") == 1
    assert value(samples, "glancesync_region_failed", region="RegionOne") == 1


def test_a_lapsed_lease_counts_as_a_failure(ctx, service, journal, published) -> None:
    _sock, task = run_copy(ctx, service)
    pump(service, NOW + 11, lambda: journal.task(task["task_id"]).state == SyncState.PENDING)
    pump(service, NOW + 11)
    samples = scrape(published)
    assert value(samples, "glancesync_task_failures_total", region="RegionOne", kind="lease_lapsed") == 1
    assert value(samples, "glancesync_agent_up", region="RegionOne", agent="a1") == 0
    assert value(samples, "glancesync_agents_online", region="RegionOne") == 0


@pytest.mark.parametrize("works", [True, False])
def test_the_reconcilers_last_pass(tmp_path, db_url, store_yaml, stores, journal, client, ctx, works) -> None:
    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx, reconcile_interval=60)
    try:
        if not works:
            client.images.list = lambda filters: (_ for _ in ()).throw(RuntimeError("listing broke"))
        svc.metrics.publish_every = 0.0
        start = svc.passes.next_reconcile + 1
        pump(svc, start, until=lambda: svc.passes.reconciling)
        pump(svc, start + 2.5, until=lambda: not svc.passes.reconciling)
        pump(svc, start + 2.5)
        samples = scrape(svc.metrics)
    finally:
        svc.shutdown()
    assert value(samples, "glancesync_reconciler_last_pass_timestamp_seconds") == start + 2.5
    assert value(samples, "glancesync_reconciler_last_pass_duration_seconds") == 2.5
    assert value(samples, "glancesync_reconciler_last_pass_success") == (1 if works else 0)


def test_snapshots_are_published_at_most_every_interval(ctx, service) -> None:
    metrics = service.metrics
    pump(service, NOW)
    first = metrics.snapshot
    assert first.taken_at == NOW
    send_event(ctx, service, now=NOW + 1)
    pump(service, NOW + 1, lambda: planned(service))
    assert metrics.snapshot is first  # not due yet: the loop did not query again
    pump(service, NOW + metrics.publish_every)
    assert metrics.snapshot.regions["RegionOne"]["queued"] == 1


def test_a_scrape_reads_only_the_published_snapshot(service) -> None:
    metrics = service.metrics
    metrics.snapshot = Snapshot(taken_at=NOW, regions={"RegionOne": {"queued": 3, "in_flight": 0, "synced": 0,
                                                                    "failed": 0}})

    class Broken:
        def __getattr__(self, name: str):
            raise AssertionError(f"a scrape touched the journal ({name})")

    service.journal, journal = Broken(), service.journal
    try:
        assert value(scrape(metrics), "glancesync_region_queue_depth", region="RegionOne") == 3
    finally:
        service.journal = journal


def test_journal_rows_when_the_journal_is_not_a_file(journal) -> None:
    assert journal.sqlite_bytes() > 0
    journal.record_event("e1", "uploaded", IMAGE_ID, {"event_id": "e1"}, NOW, "test")
    assert journal.row_counts() == {"events": 1, "tasks": 0, "image_regions": 0}  # SQLite: counted
    metrics = CoordinatorMetrics()
    metrics.snapshot = Snapshot(taken_at=NOW, journal_rows={"events": 4, "tasks": 2, "image_regions": 2})
    samples = scrape(metrics)
    assert value(samples, "glancesync_journal_rows", table="events") == 4
    assert ("glancesync_journal_size_bytes", ()) not in samples


def test_a_journal_that_cannot_answer_keeps_the_last_snapshot(service, published, monkeypatch, caplog) -> None:
    pump(service, NOW)
    kept = published.snapshot

    def broken() -> dict:
        raise JournalError(detail="database is locked")

    monkeypatch.setattr(service.journal, "region_counts", broken)
    pump(service, NOW + 10)
    assert published.snapshot is kept
    assert caplog.text.count("metrics keep the snapshot of 10 s ago: journal: database is locked") == 1
    assert published.health.check()[0]  # the loop still iterates: healthy
    monkeypatch.undo()
    pump(service, NOW + 11)
    assert published.snapshot.taken_at == NOW + 11
