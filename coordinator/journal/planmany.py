"""Journal, one loop iteration's planned events written together: a statement per table, not per event.

The event desk gathers the events planned from the glance answers of one iteration and
hands them to ``plan_many``.  The common case (a new image: every task is in a region
the image has no record in yet, no region refused) goes in one savepoint for all of
them: one read each of the events' payloads, their image records and their (image,
region) rows, one ``max(seq)``, one insert each of tasks, image_regions and new image
records, and one ``UPDATE events ... WHERE event_id AND NOT planned`` for all
(``executemany``; on PostgreSQL, whose driver counts no rows of an executemany, the
compiled statement once per event).  The rows are those ``plan_event`` writes for each
event in turn, built as tuples (rowinsert.py: on SQLite one ``executemany`` of them, about
half the time of SQLAlchemy's per-row dicts for an image planned for 500 regions).

Each event's plan stays its own: an event that needs more (a region already known, a
refused region, an image twice in the call, an event row missing) takes ``plan_event``;
when the savepoint fails (an event planned meanwhile by another process, a write the
database refuses) it rolls back and every event goes through ``plan_event`` in its own
savepoint, so one failing event never loses the others (its error is in the outcome).

The bulk-planned events' tasks take their ``seq`` before those planned one by one, whatever
the events' order in the call.  That cannot matter: ``seq`` orders the tasks of one (image,
region) (a task waits behind an earlier unfinished one, a copy is cancelled for a delete
queued behind it), and an image with more than one event in the call never takes the bulk
path, so its tasks keep their events' order.  Across images ``seq`` is only the hand-out's
first-come order, and the events of one call came in the order the glance pool answered
them, itself arbitrary (test_journal_planmany.py).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.journal.base import NewTask, ShortWrite, execute_all, pack, unpack
from coordinator.journal.engine import retry_on_deadlock
from coordinator.journal.images import PLANNED_IMAGE, shared_image, stored_payload
from coordinator.journal.rowinsert import insert_rows
from coordinator.schema import events, image_records, image_regions, tasks
from glancesync.exceptions import GlanceSyncError
from glancesync.states import SyncState

S = SyncState
CHUNK = 500  # ids per IN (...) list
PENDING, DELETING = S.PENDING.value, S.DELETING.value
# The columns planning writes; the others start NULL (register_retries too has a Python default).
TASK_COLUMNS = ("task_id", "seq", "image_id", "region", "kind", "state", "attempt", "not_before", "retries",
                "bytes_done", "bytes_total", "payload", "register_retries", "event_id", "created_at", "updated_at")
REGION_COLUMNS = ("image_id", "region", "state", "task_id", "attempts", "bytes_done", "bytes_total", "updated_at")


@dataclasses.dataclass
class PlannedEvent:
    """One event's plan, as ``plan_event`` takes it."""

    event_id: str
    image_id: str
    new_tasks: list[NewTask]
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None
    record: tuple[float | None, bool] | None = None


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[start:start + CHUNK] for start in range(0, len(ids), CHUNK)]


_MARK = events.update().where(events.c.event_id == sa.bindparam("w_event_id"), events.c.planned == sa.false()).values(
    planned=True, planned_at=sa.bindparam("v_planned_at"), plan_error=sa.bindparam("v_plan_error"),
    payload=sa.bindparam("v_payload"))


class PlanManyMixin:
    """The bulk side of ``PlanningMixin.plan_event`` on the same journal."""

    def plan_many(self, plans: Sequence[PlannedEvent], now: float) -> list[list[str] | GlanceSyncError]:
        """Plan each event as ``plan_event`` does; per event, in order: its task ids, or why it failed."""
        images = [p.image_id for p in plans]
        # One event per image in the bulk: an image's events then keep their order in seq (module docstring).
        common = [i for i, p in enumerate(plans) if not p.failures and images.count(p.image_id) == 1
                  and len({t.region for t in p.new_tasks}) == len(p.new_tasks)]
        done: dict[int, list[str]] = {}
        if len(common) > 1:
            try:
                done = self._plan_together([plans[i] for i in common], common, now)
            except ShortWrite:
                done = {}
            except GlanceSyncError:
                if getattr(self, "_batch_broken", None) is not None:
                    raise  # the batch's transaction is gone: nothing one by one could commit
                done = {}
        outcomes: list[list[str] | GlanceSyncError] = []
        for index, p in enumerate(plans):
            if index in done:
                outcomes.append(done[index])
                continue
            try:
                outcomes.append(self.plan_event(p.event_id, p.image_id, p.new_tasks, p.failures, now, error=p.error,
                                                record=p.record))
            except GlanceSyncError as exc:  # a JournalError of this event alone
                outcomes.append(exc)
        return outcomes

    @retry_on_deadlock
    def _plan_together(self, plans: list[PlannedEvent], indexes: list[int], now: float) -> dict[int, list[str]]:
        """The common ones of ``plans`` in one savepoint; {index: task ids} of those written."""
        with self.transaction() as conn:
            payloads = self._unplanned_payloads(conn, [p.event_id for p in plans])
            image_ids = [p.image_id for p in plans]
            known = set()
            for chunk in _chunks(image_ids):
                known.update(conn.execute(sa.select(image_regions.c.image_id).where(
                    image_regions.c.image_id.in_(chunk))).scalars())
            # Only images with no region row and an event row still unplanned: the others take plan_event.
            chosen = [(i, p) for i, p in zip(indexes, plans, strict=True)
                      if p.event_id in payloads and (not p.new_tasks or p.image_id not in known)]
            if not chosen:
                return {}
            created = self._insert_tasks(conn, chosen, payloads, now)
            self._note_records(conn, [p for _, p in chosen], now)
            marks = []
            for _, p in chosen:
                shared = shared_image(p.new_tasks)
                payload = payloads[p.event_id]
                if shared is not None:
                    payload = pack({**(unpack(payload) or {}), PLANNED_IMAGE: shared})
                marks.append({"w_event_id": p.event_id, "v_planned_at": now, "v_plan_error": p.error,
                              "v_payload": payload})
            execute_all(conn, _MARK, marks)
        return created

    @staticmethod
    def _unplanned_payloads(conn: Connection, event_ids: list[str]) -> dict[str, Any]:
        """event id -> payload of those not planned yet; ``planned`` tested here, not in SQL (SQLite
        would walk ix_events_order's every unplanned event instead of the primary key)."""
        found: dict[str, Any] = {}
        for chunk in _chunks(sorted(set(event_ids))):
            found.update((event_id, payload) for event_id, payload, planned in conn.execute(
                sa.select(events.c.event_id, events.c.payload, events.c.planned).where(events.c.event_id.in_(chunk)))
                if not planned)
        return found

    def _insert_tasks(self, conn: Connection, chosen: list[tuple[int, PlannedEvent]], payloads: dict[str, Any],
                      now: float) -> dict[int, list[str]]:
        """The tasks and (image, region) rows ``plan_event`` would write, as tuples in two inserts."""
        seq = (conn.execute(sa.select(sa.func.max(tasks.c.seq))).scalar() or 0) + 1
        rows: list[tuple[Any, ...]] = []
        records: list[tuple[Any, ...]] = []
        created: dict[int, list[str]] = {}
        added: Counter[tuple[str, str]] = Counter()
        for index, p in chosen:
            shared = shared_image(p.new_tasks)
            ids = created[index] = []
            for new in p.new_tasks:
                task_id = uuid.uuid4().hex
                rows.append((task_id, seq, p.image_id, new.region, new.kind, PENDING, 0, 0.0, 0, 0, 0,
                             stored_payload(new.payload, shared), 0, p.event_id, now, now))
                seq += 1
                state = DELETING if new.kind == "delete" else PENDING
                records.append((p.image_id, new.region, state, task_id, 0, 0, 0, now))
                added[new.region, state] += 1
                ids.append(task_id)
        insert_rows(conn, tasks, TASK_COLUMNS, rows)
        insert_rows(conn, image_regions, REGION_COLUMNS, records)
        self._count_added(added)
        return created

    def _count_added(self, added: Counter[tuple[str, str]]) -> None:
        """``_count_region`` of every new row, as one callback on commit instead of one per row."""
        if self._count_table is None or not added:
            return

        def count() -> None:
            if self._count_table is None:
                return
            for (region, state), n in added.items():
                states = self._count_table.setdefault(region, {})
                states[state] = states.get(state, 0) + n

        self.on_commit(count)

    def _note_records(self, conn: Connection, plans: list[PlannedEvent], now: float) -> None:
        """``_note_record`` of every plan that has a record: new rows in one insert."""
        noted = [p for p in plans if p.record is not None]
        if not noted:
            return
        existing: dict[str, Any] = {}
        for chunk in _chunks(sorted({p.image_id for p in noted})):
            existing.update((r.image_id, r) for r in conn.execute(
                sa.select(image_records).where(image_records.c.image_id.in_(chunk))))
        fresh = []
        for p in noted:
            updated_at, active = p.record  # type: ignore[misc]
            if p.image_id in existing:
                self._note_record(conn, p.image_id, updated_at, active, now)  # rare on a first sight
            else:
                fresh.append(dict(image_id=p.image_id, updated_at=updated_at, active_at=now if active else None))
        if fresh:
            conn.execute(image_records.insert(), fresh)
