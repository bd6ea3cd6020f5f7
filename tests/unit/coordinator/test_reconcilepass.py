"""A reconciler pass enters the loop in bounded slices (coordinator/reconcilepass.py, reconciler.Journaling).

Its journal reads and listings run in the glance pool; the loop journals at most
``reconciler.JOURNAL_SLICE`` of its synthetic events per iteration, so status keeps
answering while a pass over many images the journal never heard of is written.
"""

from __future__ import annotations

import sqlalchemy as sa

from coordinator import reconciler
from coordinator.schema import events as events_table
from coordinator.schema import held_deletes

from .conftest import NOW, FakeClient, add_listing, image_record
from .test_eventdesk import reconciling_service, run_pass, synced_everywhere
from .test_service import pump

IMAGES = 23
SLICE = 4


def reconciler_events(journal) -> int:
    with journal.transaction() as conn:
        query = sa.select(sa.func.count()).select_from(events_table).where(events_table.c.sender == "reconciler")
        return int(conn.execute(query).scalar())


def test_a_pass_journals_at_most_a_slice_per_iteration_and_completes(
        tmp_path, db_url, store_yaml, stores, journal, client, ctx, monkeypatch) -> None:
    monkeypatch.setattr(reconciler, "JOURNAL_SLICE", SLICE)
    monkeypatch.setattr(reconciler, "JOURNAL_SECONDS", 0.0)  # one slice per iteration
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(IMAGES)]
    client.images.records.clear()
    for image_id in ids:  # a glance the journal never heard of
        client.images.records[image_id] = image_record(image_id, store_dir=stores.store.store_dir)
    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx)
    try:
        svc.events.plan_events = lambda now: None  # planning waits: count only the pass's own events
        now = svc.passes.next_reconcile + 1
        pump(svc, now, until=lambda: svc.passes.journaling is not None)
        counts = [reconciler_events(journal)]
        while svc.passes.reconciling:
            svc.loop(now, poll_seconds=0.001)
            counts.append(reconciler_events(journal))
            # Status is answered between slices.
            assert svc._status({"view": "summary"})
        steps = [b - a for a, b in zip(counts, counts[1:], strict=False)]
        assert max(steps) <= SLICE
        assert counts[-1] == IMAGES
        assert len([s for s in steps if s]) >= -(-IMAGES // SLICE)
        assert {e.image_id for e in journal.unplanned_events(limit=100)} == set(ids)
        assert svc.passes.last_pass is not None and svc.passes.last_pass[2] is True
    finally:
        svc.shutdown()


def test_the_held_set_is_replaced_with_the_last_slice_only(
        tmp_path, db_url, store_yaml, stores, journal, client, ctx, monkeypatch) -> None:
    """A crash between slices must not lose an operator's confirmation (it stays held until the end)."""
    monkeypatch.setattr(reconciler, "JOURNAL_SLICE", 1)
    monkeypatch.setattr(reconciler, "JOURNAL_SECONDS", 0.0)
    gone = [f"00000000-0000-4000-8000-{n:012d}" for n in range(3)]
    for image_id in gone:
        synced_everywhere(journal, image_id)
    client.images.records.clear()
    fresh = [f"11111111-0000-4000-8000-{n:012d}" for n in range(3)]
    for image_id in fresh:
        client.images.records[image_id] = image_record(image_id, store_dir=stores.store.store_dir)
    journal.record_reconcile([], gone, NOW - 10, "reconciler")
    journal.confirm_held_deletes(NOW - 5)
    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx,
                              reconcile_max_deletes=1, reconcile_max_delete_percent=0)
    try:
        svc.events.plan_events = lambda now: None
        now = svc.passes.next_reconcile + 1
        pump(svc, now, until=lambda: svc.passes.journaling is not None)
        seen_held = []
        while svc.passes.reconciling:
            svc.loop(now, poll_seconds=0.001)
            with journal.transaction() as conn:
                seen_held.append(conn.execute(sa.select(sa.func.count()).select_from(held_deletes)).scalar())
        # Confirmed deletes are made (3 events) with the 3 uploads: 6 slices; held until the last.
        assert seen_held[:-1] and set(seen_held[:-1]) == {3}
        assert seen_held[-1] == 0
        kinds = sorted(e.kind for e in journal.unplanned_events(limit=100))
        assert kinds == ["deleted"] * 3 + ["uploaded"] * 3
    finally:
        svc.shutdown()


def test_a_pass_reads_the_journal_off_the_loop_thread(tmp_path, db_url, store_yaml, stores, journal, client,
                                                      ctx) -> None:
    import threading

    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx)
    readers: list[str] = []
    opened = svc.passes.open_reader

    def reader():
        readers.append(threading.current_thread().name)
        return opened()

    svc.passes.open_reader = reader
    try:
        now = svc.passes.next_reconcile + 1
        pump(svc, now, until=lambda: svc.passes.reconciling)
        pump(svc, now, until=lambda: not svc.passes.reconciling)
        assert readers and threading.current_thread().name not in readers
    finally:
        svc.shutdown()


def test_a_pass_while_events_wait_for_planning_makes_no_drift_events(
        tmp_path, db_url, store_yaml, stores, journal, client, ctx) -> None:
    """During a long initial planning, later passes must not double the work with ``copy`` repairs."""
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(5)]
    client.images.records.clear()
    for image_id in ids:
        client.images.records[image_id] = image_record(image_id, store_dir=stores.store.store_dir)
    listed = FakeClient()
    add_listing(listed.images)  # the regions answer, and hold nothing yet
    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx, regional=listed)
    try:
        svc.events.plan_events = lambda now: None  # the first pass's events wait for planning
        now = run_pass(svc, NOW)
        assert reconciler_events(journal) == len(ids)
        run_pass(svc, now)
        assert reconciler_events(journal) == len(ids)
        assert {e.kind for e in journal.unplanned_events(limit=100)} == {"uploaded"}
    finally:
        svc.shutdown()


def test_a_slice_rolled_back_with_its_batch_is_journaled_again(
        tmp_path, db_url, store_yaml, stores, journal, client, ctx, monkeypatch) -> None:
    import pytest

    monkeypatch.setattr(reconciler, "JOURNAL_SLICE", SLICE)
    monkeypatch.setattr(reconciler, "JOURNAL_SECONDS", 0.0)
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(6)]
    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx)
    try:
        desk = svc.passes
        desk.journaling = reconciler.Journaling(ids, [], [], [])
        desk.journal_slice(NOW)  # the pass takes its number
        with pytest.raises(RuntimeError), journal.batch():
            desk.journal_slice(NOW)
            raise RuntimeError("the iteration's commit fails")
        assert reconciler_events(journal) == 0
        assert desk.journaling.offset == 0
        while desk.journaling is not None:
            desk.journal_slice(NOW)
        assert reconciler_events(journal) == len(ids)
    finally:
        svc.shutdown()
