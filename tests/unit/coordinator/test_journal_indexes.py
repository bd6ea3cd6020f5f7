"""The journal's queries use an index (migration 0006): each database's own plan says so.

Collected again by tests/functional/test_journal_sql.py, so the plans of PostgreSQL and
MariaDB are read too.  Each test records the SELECT a journal call runs and asks the
database to EXPLAIN it: SQLite's ``EXPLAIN QUERY PLAN``, PostgreSQL's ``EXPLAIN`` with
sequential scans priced out (tables this small would be scanned anyway), MariaDB's
``EXPLAIN`` whose ``possible_keys`` lists the indexes the query can use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from coordinator.journal import Journal, NewTask

from .conftest import IMAGE_ID, image_record

NOW = 1_000_000.0


def populated(journal: Journal) -> Journal:
    """Copies of ordinary events to 300 regions, one copy an operator asked for."""
    payload = {"image": image_record(), "source": {"type": "sftp", "path": "/x"}}
    journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
    journal.plan_event("e1", IMAGE_ID, [NewTask(f"R{n}", "copy", payload) for n in range(300)], {}, NOW)
    other = IMAGE_ID[:-1] + "f"
    journal.record_event("operator-1", "uploaded", other, {}, NOW)
    journal.plan_event("operator-1", other, [NewTask("R0", "copy", payload)], {}, NOW)
    if journal.engine.dialect.name == "postgresql":
        with journal.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE tasks, image_regions")
    return journal


def plan_of(journal: Journal, call: Callable[[], Any], table: str) -> str:
    """The plan, as text, of the last SELECT from ``table`` that ``call`` runs on ``journal``."""
    seen: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT") and f"FROM {table}" in statement:
            seen.append((statement, parameters))

    sa.event.listen(journal.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        sa.event.remove(journal.engine, "before_cursor_execute", record)
    assert seen, f"no SELECT from {table}"
    statement, parameters = seen[-1]
    dialect = journal.engine.dialect.name
    raw = journal.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if dialect == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        else:
            if dialect == "postgresql":
                cursor.execute("SET LOCAL enable_seqscan = off")  # this transaction only
            cursor.execute("EXPLAIN " + statement, parameters)
        rows = cursor.fetchall()
    finally:
        raw.rollback()
        raw.close()
    return "\n".join(" ".join(str(cell) for cell in row) for row in rows)


def test_the_operators_asked_copies_are_found_by_index(journal: Journal) -> None:
    assert populated(journal).asked_regions() == {IMAGE_ID[:-1] + "f": {"R0"}}
    plan = plan_of(journal, journal.asked_regions, "tasks")
    assert "ix_tasks_kind_event" in plan, plan


def test_failed_pairs_of_every_region_are_found_by_index(journal: Journal) -> None:
    plan = plan_of(populated(journal), journal.failed_regions, "image_regions")
    assert "ix_image_regions_state" in plan, plan


def test_an_agents_tasks_are_found_by_index_that_holds_only_handed_out_tasks(journal: Journal) -> None:
    # ix_tasks_agent is partial (agent_id IS NOT NULL, migration 0008) on SQLite and PostgreSQL:
    # a query naming an agent must still use it.
    populated(journal)
    task = journal.dispatchable("R1", NOW)[0]
    assert journal.assign(task.task_id, "agent-1", NOW, NOW + 60)
    assert [t.task_id for t in journal.agent_tasks("agent-1")] == [task.task_id]
    plan = plan_of(journal, lambda: journal.agent_tasks("agent-1"), "tasks")
    assert "ix_tasks_agent" in plan, plan


def test_due_unplanned_events_are_read_in_order_from_the_index_without_a_sort(journal: Journal) -> None:
    # Due ones and deferred ones, received in an order other than their ids'.
    for n in range(60):
        journal.record_event(f"e{59 - n:02d}", "uploaded", IMAGE_ID, {}, NOW + n // 2)
        if n % 3 == 0:
            journal.defer_event(f"e{59 - n:02d}", NOW + 500)
    journal.record_event("planned", "uploaded", IMAGE_ID, {}, NOW - 10)
    journal.plan_event("planned", IMAGE_ID, [], {}, NOW)
    if journal.engine.dialect.name == "postgresql":
        with journal.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE events")
    due = journal.unplanned_events(NOW + 100, limit=5)
    # Oldest first, ties by event id, the deferred and the planned left out.
    assert [e.event_id for e in due] == ["e58", "e57", "e54", "e55", "e52"]
    plan = plan_of(journal, lambda: journal.unplanned_events(NOW + 100, limit=5), "events")
    assert "ix_events_order" in plan, plan
    dialect = journal.engine.dialect.name
    if dialect == "sqlite":
        assert "TEMP B-TREE" not in plan, plan
    elif dialect == "postgresql":
        assert "Sort" not in plan, plan


def test_a_planned_delete_of_an_image_is_looked_up_by_its_image_not_among_every_planned_event(
        journal: Journal) -> None:
    # Asked once per planned event; before 0007 SQLite walked ix_events_due (planned = 1), every planned event.
    for n in range(40):
        journal.record_event(f"e{n}", "uploaded", f"{n:08d}" + IMAGE_ID[8:], {}, NOW)
        journal.plan_event(f"e{n}", f"{n:08d}" + IMAGE_ID[8:], [], {}, NOW)
    journal.record_event("d", "deleted", IMAGE_ID, {}, NOW)
    journal.plan_event("d", IMAGE_ID, [], {}, NOW)
    if journal.engine.dialect.name == "postgresql":
        with journal.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE events")
    assert journal.deleted_event(IMAGE_ID) and not journal.deleted_event("00000001" + IMAGE_ID[8:])
    plan = plan_of(journal, lambda: journal.deleted_event(IMAGE_ID), "events")
    assert "ix_events_image_kind" in plan, plan


def test_events_of_given_images_or_ids_are_read_by_their_index_not_among_every_unplanned_one(
        journal: Journal) -> None:
    # A reconciler slice asks which of its images have an event waiting, planning reads its answers'
    # events by id: with ``planned`` in the SQL, SQLite walked ix_events_order's every unplanned event.
    ids = [f"{n:08d}" + IMAGE_ID[8:] for n in range(60)]
    for n, image_id in enumerate(ids):
        journal.record_event(f"e{n}", "uploaded", image_id, {}, NOW)
    journal.plan_event("e0", ids[0], [], {}, NOW)
    if journal.engine.dialect.name == "postgresql":
        with journal.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE events")

    def waiting() -> set[tuple[str, str]]:
        with journal.transaction() as conn:
            return journal._waiting(conn, set(ids[:3]))

    assert waiting() == {(ids[1], "uploaded"), (ids[2], "uploaded")}
    plan = plan_of(journal, waiting, "events")
    assert "ix_events_image_kind" in plan and "ix_events_order" not in plan, plan
    assert set(journal.unplanned_events_by_id(["e0", "e1", "e2"])) == {"e1", "e2"}
    plan = plan_of(journal, lambda: journal.unplanned_events_by_id(["e0", "e1", "e2"]), "events")
    assert "ix_events_order" not in plan, plan
