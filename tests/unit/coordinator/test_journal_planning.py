"""Journal.plan_event: an image planned for its new regions goes in as two bulk inserts whose rows are
those the one-task-at-a-time path writes."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from coordinator.journal import Journal, NewTask
from coordinator.journal.base import unpack
from coordinator.journal.images import shared_image
from coordinator.schema import events, image_regions, tasks

from .conftest import IMAGE_ID, image_record

NOW = 1_000_000.0
REGIONS = [f"R{n:02d}" for n in range(40)]
PAYLOAD = {"image": image_record(), "source": {"type": "sftp", "path": "/x"}}


def rows(journal: Journal) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The tasks (by seq) and the regional records (by region), ids replaced by the region they name."""
    with journal.engine.connect() as conn:
        task_rows = [dict(r._mapping) for r in conn.execute(sa.select(tasks).order_by(tasks.c.seq))]
        records = [dict(r._mapping) for r in conn.execute(sa.select(image_regions).order_by(image_regions.c.region))]
    region_of = {t["task_id"]: t["region"] for t in task_rows}
    for t in task_rows:
        t["task_id"], t["payload"] = None, unpack(t["payload"])
    for r in records:
        r["task_id"] = region_of.get(r["task_id"])
    return task_rows, records


def inserts_of(journal: Journal, call) -> list[tuple[str, int]]:
    """(table, rows) of each INSERT ``call`` sends."""
    seen: list[tuple[str, int]] = []

    def record(_conn, _cursor, statement, parameters, _context, many) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            seen.append((statement.split()[2], len(parameters) if many else 1))

    sa.event.listen(journal.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        sa.event.remove(journal.engine, "before_cursor_execute", record)
    return seen


def test_new_regions_go_in_as_one_bulk_insert_per_table_with_the_rows_of_the_single_path(
        journal: Journal, tmp_path) -> None:
    new = [NewTask(r, "copy", PAYLOAD) for r in REGIONS]
    journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
    made = inserts_of(journal, lambda: journal.plan_event("e1", IMAGE_ID, new, {}, NOW + 1, record=(5.0, True)))
    assert sorted(made) == sorted([("image_records", 1), ("tasks", len(REGIONS)), ("image_regions", len(REGIONS))])

    # The same plan written a task at a time (the path of regions the image already has a record in).
    from coordinator import manage

    url = f"sqlite:///{tmp_path / 'single.sqlite'}"
    manage.db_sync(url)
    single = Journal(url)
    try:
        single.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
        with single.transaction() as conn:
            for task in new:
                conn.execute(image_regions.insert().values(
                    image_id=IMAGE_ID, region=task.region, state="pending", attempts=0, bytes_done=0,
                    bytes_total=0, updated_at=NOW + 1))
                # The bulk path keeps the image record once, in the event's row: so does this one.
                single._add_task(conn, "e1", IMAGE_ID, task, NOW + 1, shared_image(new))
        assert rows(journal) == rows(single)
    finally:
        single.close()


def test_planning_reads_in_a_batch_add_no_savepoint_and_a_failed_one_rolls_the_batch_back(journal: Journal) -> None:
    from glancesync.exceptions import JournalError

    statements: list[str] = []
    sa.event.listen(journal.engine, "before_cursor_execute",
                    lambda _c, _cu, statement, *_rest: statements.append(statement.split()[0].upper()))
    with journal.batch():
        journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
        written = len(statements)
        due = journal.unplanned_events(NOW)
        journal.unplanned_event("e1")
        journal.image_record_state(IMAGE_ID)
        journal.deleted_event(IMAGE_ID)
        journal.region_records(IMAGE_ID)
        journal.asked_regions(IMAGE_ID)
        reads = statements[written:]
    assert [e.event_id for e in due] == ["e1"]  # the batch's own write is seen
    assert reads == ["SELECT"] * 6, reads  # no SAVEPOINT / RELEASE around them

    try:
        with journal.batch():
            journal.record_event("e2", "uploaded", IMAGE_ID, {}, NOW)
            try:
                with journal.reading() as conn:
                    conn.exec_driver_sql("SELECT nothing FROM nowhere")
            except JournalError:
                pass  # caught by its caller: the batch still rolls back whole
        raise AssertionError("the batch committed over a failed read")
    except JournalError as exc:
        assert "batch" in str(exc)
    assert journal.unplanned_event("e2") is None and journal.unplanned_event("e1") is not None


def _event_ids(journal: Journal) -> list[str]:
    with journal.engine.connect() as conn:
        return sorted(conn.scalars(sa.select(events.c.event_id)))


def test_record_events_recognises_duplicates_in_the_journal_and_in_the_batch(journal: Journal) -> None:
    journal.record_event("old", "uploaded", IMAGE_ID, {}, NOW)
    items = [(i, "uploaded", IMAGE_ID, {"event_id": i}, "proxy") for i in ("e1", "old", "e1", "e2")]
    assert journal.record_events(items, NOW) == [True, False, False, True]
    assert _event_ids(journal) == ["e1", "e2", "old"]
    assert journal.unplanned_event("e1").sender == "proxy"


def test_record_events_stored_meanwhile_by_another_coordinator_fall_back_one_by_one(
        journal: Journal, monkeypatch) -> None:
    real, calls = journal._insert_events, []

    def racing(conn, rows):
        calls.append(len(rows))
        if len(calls) == 1:  # the pair's other coordinator stores e2 between the read and the insert
            conn.execute(events.insert(), {"event_id": "e2", "kind": "uploaded", "image_id": IMAGE_ID,
                                           "payload": b"\x80", "received_at": NOW, "planned": False})
        return real(conn, rows)

    monkeypatch.setattr(journal, "_insert_events", racing)
    items = [(i, "uploaded", IMAGE_ID, {}, None) for i in ("e1", "e2", "e3")]
    with journal.batch():
        assert journal.record_events(items, NOW) == [True, False, True]
    assert calls == [3, 1, 1, 1] and _event_ids(journal) == ["e1", "e2", "e3"]
