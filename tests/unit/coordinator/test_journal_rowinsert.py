"""plan_many's bulk inserts as driver tuples (journal/rowinsert.py): the rows, region counts and
fallback plan_event gives, for the planner's own plans of several images and regions."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from coordinator import planner
from coordinator.journal import Journal, NewTask, PlannedEvent, planmany, rowinsert
from coordinator.schema import tasks
from glancesync.exceptions import GlanceSyncError, JournalError
from glancesync.storemap import StoreMap

from .conftest import image_record
from .test_journal_planmany import _image
from .test_journal_planmany import _rows as _plain_rows
from .test_loop_cost import NOW

REGIONS = ["RegionOne", "RegionTwo", "RegionThree", "RegionFour", "RegionFive"]
MEMBERS = [{"member_id": "p-b", "status": "accepted"}]


def _planned(journal: Journal, stores: StoreMap, prefix: str) -> list[PlannedEvent]:
    """The planner's plans of new images: every region, targeted ones, a typo'd target, a shared image,
    one with no target at all, and deletes."""
    shapes: list[tuple[str, dict[str, Any], list[dict[str, str]] | None]] = [
        ("ALL", {}, None),
        ("ALL", {}, MEMBERS),
        ("USER", {"glance_sync_regions": "RegionTwo,RegionFour"}, None),
        ("USER", {"glance_sync_regions": "RegionThree, regionfive"}, MEMBERS),  # one name is no region
        ("USER", {}, None),  # targets nothing: planned with no task
        ("ALL", {"name": "another"}, None),
    ]
    plans = []
    for n, (strategy, extra, members) in enumerate(shapes):
        image_id, event_id = _image(prefix, n), f"{prefix}-e{n}"
        journal.record_event(event_id, "uploaded", image_id, {"event_id": event_id}, NOW)
        image = image_record(image_id, store_dir=stores.store.store_dir, **extra)
        plan = planner.plan("uploaded", image_id, image, REGIONS, strategy, {}, stores.source_path, members=members)
        plans.append(PlannedEvent(event_id, image_id, plan.tasks, {}, None, (1000.0 + n, n % 2 == 0)))
    image_id, event_id = _image(prefix, len(shapes)), f"{prefix}-e{len(shapes)}"
    journal.record_event(event_id, "deleted", image_id, {"event_id": event_id}, NOW)
    record = {"id": image_id, "status": "deleted"}
    plans.append(PlannedEvent(event_id, image_id, [NewTask(r, "delete", {"image": record, "source": None})
                                                   for r in REGIONS[:3]], {}, None, None))
    return plans


def _rows(journal: Journal, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """``_plain_rows``, with the image id in each copy's source path made comparable too."""
    rows = _plain_rows(journal, prefix)
    for task in rows["tasks"]:
        source = task["payload"].get("source") or {}
        if "path" in source:
            source["path"] = source["path"].replace(f"/{prefix}", "/X")
    return rows


def _one_by_one(journal: Journal, plans: list[PlannedEvent]) -> None:
    for p in plans:
        journal.plan_event(p.event_id, p.image_id, p.new_tasks, p.failures, NOW + 1, error=p.error, record=p.record)


def test_bulk_planning_writes_the_rows_and_counts_plan_event_writes(journal: Journal, stores: StoreMap) -> None:
    journal.region_counts()  # the counters kept in memory from here on, by both paths
    plans = _planned(journal, stores, "a")
    sizes = [len(p.new_tasks) for p in plans]
    assert sizes == [5, 5, 2, 1, 0, 5, 3]
    with journal.batch():
        outcomes = journal.plan_many(plans, NOW + 1)
    assert [len(o) for o in outcomes] == sizes  # type: ignore[arg-type]
    counted = journal.region_counts()
    _one_by_one(journal, _planned(journal, stores, "b"))
    together, alone = _rows(journal, "a"), _rows(journal, "b")
    assert len(together["tasks"]) == sum(sizes)
    assert together == alone
    # The second, one-by-one set doubled every count the bulk set made.
    assert journal.region_counts() == {r: {k: 2 * v for k, v in c.items()} for r, c in counted.items()}
    assert counted["RegionThree"]["queued"] == 4 and counted["RegionFive"]["queued"] == 3  # "regionfive": no region


def test_bulk_tasks_take_consecutive_seq_in_the_events_order(journal: Journal, stores: StoreMap) -> None:
    plans = _planned(journal, stores, "s")
    with journal.batch():
        outcomes = journal.plan_many(plans, NOW + 1)
    with journal.engine.connect() as conn:
        seq = dict(conn.execute(sa.select(tasks.c.task_id, tasks.c.seq)).all())
    in_order = [seq[task_id] for outcome in outcomes for task_id in outcome]  # type: ignore[union-attr]
    assert in_order == list(range(in_order[0], in_order[0] + len(in_order)))


def test_a_failing_bulk_insert_falls_back_to_one_by_one_with_the_same_rows(
        journal: Journal, stores: StoreMap, monkeypatch) -> None:
    calls = []

    def refused(conn, table, columns, rows):
        calls.append(table.name)
        raise JournalError(detail="the database refused the insert", retryable=False)

    monkeypatch.setattr(planmany, "insert_rows", refused)
    with journal.batch():
        outcomes = journal.plan_many(_planned(journal, stores, "f"), NOW + 1)
    assert calls == ["tasks"]  # the bulk path was taken, then rolled back
    assert not any(isinstance(o, GlanceSyncError) for o in outcomes)
    assert journal.unplanned_events() == []
    _one_by_one(journal, _planned(journal, stores, "g"))
    assert _rows(journal, "f") == _rows(journal, "g")


def test_insert_rows_writes_what_a_core_insert_writes(journal: Journal) -> None:
    columns = planmany.TASK_COLUMNS
    values = dict(task_id="t1", seq=7, image_id="i", region="R", kind="copy", state="pending", attempt=0,
                  not_before=0.0, retries=0, bytes_done=0, bytes_total=0, payload=b"\x80", register_retries=0,
                  event_id="e", created_at=1.5, updated_at=2.5)
    with journal.engine.begin() as conn:
        rowinsert.insert_rows(conn, tasks, columns, [tuple(values[c] for c in columns)])
        conn.execute(tasks.insert(), [{**values, "task_id": "t2", "seq": 8}])
        one, two = (dict(r._mapping) for r in conn.execute(sa.select(tasks).order_by(tasks.c.seq)))
    assert {**one, "task_id": "t2", "seq": 8} == two


def test_insert_rows_refuses_a_column_list_that_leaves_out_a_python_default(journal: Journal) -> None:
    columns = tuple(c for c in planmany.TASK_COLUMNS if c != "register_retries")
    with journal.engine.begin() as conn, pytest.raises(ValueError, match="register_retries"):
        rowinsert.insert_rows(conn, tasks, columns, [tuple(range(len(columns)))])
