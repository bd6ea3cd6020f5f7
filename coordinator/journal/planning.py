"""Journal, events and planning: record events (duplicates recognised), list the unplanned ones that
are due, and store an event's tasks and refused regions in the same transaction that marks it planned.

Unplanned events are read in due order: each has a ``not_before`` (0 when it arrives,
later while its fetch backs off or its import is awaited), and only due ones are read,
oldest first, so events that wait never block the ones that are ready; the backoff is
in the journal, so a restart keeps it.  Per image, ``image_records`` remembers the
newest glance ``updated_at`` planned from and whether a plan came from an active record.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from oslo_db import exception as db_exc
from sqlalchemy.engine import Connection

from coordinator.journal.base import EventRow, NewTask, RegionRecord, pack, unpack
from coordinator.journal.engine import retry_on_deadlock
from coordinator.journal.images import shared_image, stored_payload
from coordinator.schema import events, image_records, image_regions, tasks
from glancesync.states import SyncState, can_move

S = SyncState
# Events by id, built once (the ids are bound at each execution).  ``planned`` is tested by
# the caller, not in SQL: there SQLite would walk ix_events_order, not the key.
_EVENTS_BY_ID = sa.select(events).where(events.c.event_id.in_(sa.bindparam("ids", expanding=True)))
# Recording events (those of one loop iteration together), built once.
_EVENTS_KNOWN = sa.select(events.c.event_id).where(events.c.event_id.in_(sa.bindparam("ids", expanding=True)))
_INSERT_EVENT = events.insert()
# An event to record: (event_id, kind, image_id, body, sender).
NewEvent = tuple[str, str, str, dict[str, Any], str | None]


@dataclasses.dataclass
class PlanningFacts:
    """What planning reads of a set of images, read together (``PlanningMixin.planning_facts``)."""

    records: dict[str, tuple[float | None, float | None]]  # image_record_state of each image that has one
    deleted: set[str]  # images whose delete was planned (deleted_event)
    regions: dict[str, dict[str, RegionRecord]]  # region_records of each image that has some
    asked: dict[str, set[str]]  # asked_regions

    def region_records(self, image_id: str) -> dict[str, RegionRecord]:
        return dict(self.regions.get(image_id, {}))


def _event_values(item: NewEvent, now: float) -> dict[str, Any]:
    event_id, kind, image_id, body, sender = item
    return {"event_id": event_id, "kind": kind, "image_id": image_id, "payload": pack(body),
            "received_at": now, "planned": False, "sender": sender}


def _event(r: Any) -> EventRow:
    return EventRow(r.event_id, r.kind, r.image_id, unpack(r.payload), r.received_at, r.sender,
                    r.not_before or 0.0, r.fetch_tries or 0)


class PlanningMixin:
    """Events and planning; uses the state machine of ``TaskStateMixin`` on the same journal."""

    def record_event(self, event_id: str, kind: str, image_id: str, body: dict[str, Any], now: float,
                     sender: str | None = None) -> bool:
        """Store an event durably; False when that event id was already recorded."""
        return self.record_events([(event_id, kind, image_id, body, sender)], now)[0]

    @retry_on_deadlock
    def record_events(self, items: Sequence[NewEvent], now: float) -> list[bool]:
        """``record_event`` of each (event_id, kind, image_id, body, sender), together.

        One read of the ids already known and one insert of the others, in one savepoint:
        a loop iteration's events cost four statements, not four each.  An id seen twice
        (in the journal, or earlier in ``items``) is False.  Only when the insert hits an
        id stored meanwhile (another coordinator of an active/passive pair) is each event
        inserted again on its own.
        """
        ids = list(dict.fromkeys(item[0] for item in items))
        with self.transaction() as conn:
            known: set[str] = set()
            for start in range(0, len(ids), 500):
                known.update(conn.scalars(_EVENTS_KNOWN, {"ids": ids[start:start + 500]}))
            fresh = []
            for item in items:
                fresh.append(item[0] not in known)
                known.add(item[0])
            rows = [_event_values(item, now) for item, new in zip(items, fresh, strict=True) if new]
            if not rows:
                return fresh
            if self._insert_events(conn, rows):
                return fresh
            # Some id was stored meanwhile (nothing of ``rows`` was): each on its own.
            return [new and self._insert_events(conn, [_event_values(item, now)])
                    for item, new in zip(items, fresh, strict=True)]

    @staticmethod
    def _insert_events(conn: Connection, rows: list[dict[str, Any]]) -> bool:
        """Insert ``rows`` in one savepoint; False, and none inserted, when another coordinator stored one first."""
        try:
            # Its own savepoint: on PostgreSQL a failed insert would abort the whole batch.
            with conn.begin_nested():
                conn.execute(_INSERT_EVENT, rows)
        except (sa.exc.IntegrityError, db_exc.DBDuplicateEntry):
            return False
        return True

    def unplanned_events(self, now: float | None = None, limit: int = 100) -> list[EventRow]:
        """Unplanned events due by ``now`` (all when None), oldest first."""
        # ``planned = false``, not ``planned IS false``: MariaDB walks no index for IS.
        query = sa.select(events).where(events.c.planned == sa.false())
        if now is not None:
            query = query.where(events.c.not_before <= now)
        query = query.order_by(events.c.received_at, events.c.event_id).limit(limit)
        with self.reading() as conn:
            rows = conn.execute(query).all()
        return [_event(r) for r in rows]

    @retry_on_deadlock
    def defer_event(self, event_id: str, not_before: float, fetch_tries: int | None = None) -> None:
        """An unplanned event is due again at ``not_before`` (its fetch failed, or its import runs)."""
        values: dict[str, Any] = {"not_before": not_before}
        if fetch_tries is not None:
            values["fetch_tries"] = fetch_tries
        with self.transaction() as conn:
            conn.execute(events.update().where(events.c.event_id == event_id, events.c.planned.is_(False))
                         .values(**values))

    def image_record_state(self, image_id: str) -> tuple[float | None, float | None]:
        """(newest glance updated_at planned from, when first planned from an active record)."""
        with self.reading() as conn:
            row = conn.execute(sa.select(image_records.c.updated_at, image_records.c.active_at)
                               .where(image_records.c.image_id == image_id)).first()
        return (None, None) if row is None else (row.updated_at, row.active_at)

    @staticmethod
    def _note_record(conn: Connection, image_id: str, updated_at: float | None, active: bool, now: float) -> None:
        row = conn.execute(sa.select(image_records).where(image_records.c.image_id == image_id)).first()
        if row is None:
            conn.execute(image_records.insert().values(image_id=image_id, updated_at=updated_at,
                                                       active_at=now if active else None))
            return
        values: dict[str, Any] = {}
        if updated_at is not None and (row.updated_at is None or updated_at > row.updated_at):
            values["updated_at"] = updated_at
        if active and row.active_at is None:
            values["active_at"] = now
        if values:
            conn.execute(image_records.update().where(image_records.c.image_id == image_id).values(**values))

    def unplanned_event(self, event_id: str) -> EventRow | None:
        """The event ``event_id`` if it is recorded and not planned yet."""
        query = sa.select(events).where(events.c.event_id == event_id, events.c.planned.is_(False))
        with self.reading() as conn:
            r = conn.execute(query).first()
        return None if r is None else _event(r)

    def unplanned_events_by_id(self, event_ids: list[str]) -> dict[str, EventRow]:
        """Those of ``event_ids`` recorded and not planned yet, by id (one read per 500 ids)."""
        ids, found = sorted(set(event_ids)), {}
        with self.reading() as conn:
            for start in range(0, len(ids), 500):
                found.update((r.event_id, _event(r)) for r in conn.execute(_EVENTS_BY_ID, {"ids": ids[start:start + 500]})
                             if not r.planned)
        return found

    def planning_facts(self, image_ids: Iterable[str]) -> PlanningFacts:
        """``image_record_state``, ``deleted_event``, ``region_records`` and ``asked_regions`` of
        every image of ``image_ids``: four reads per 500 images instead of four per image."""
        ids = sorted(set(image_ids))
        facts = PlanningFacts({}, set(), {}, self.asked_regions(ids) if ids else {})
        with self.reading() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                for r in conn.execute(sa.select(image_records.c.image_id, image_records.c.updated_at,
                                                image_records.c.active_at).where(image_records.c.image_id.in_(chunk))):
                    facts.records[r.image_id] = (r.updated_at, r.active_at)
                # Tested here, not in SQL, so that it walks ix_events_image_kind, not every planned event.
                facts.deleted.update(r.image_id for r in conn.execute(
                    sa.select(events.c.image_id, events.c.planned, events.c.plan_error).where(
                        events.c.image_id.in_(chunk), events.c.kind == "deleted"))
                    if r.planned and r.plan_error is None)
                for r in conn.execute(
                        sa.select(image_regions.c.image_id, image_regions.c.region, image_regions.c.state,
                                  image_regions.c.os_hash_value, tasks.c.kind)
                        .select_from(image_regions.outerjoin(tasks, tasks.c.task_id == image_regions.c.task_id))
                        .where(image_regions.c.image_id.in_(chunk))):
                    facts.regions.setdefault(r.image_id, {})[r.region] = RegionRecord(
                        SyncState(r.state), r.kind, r.os_hash_value)
        return facts

    def deleted_event(self, image_id: str) -> bool:
        """True once a ``deleted`` event of ``image_id`` was planned as a delete, i.e. after glance
        confirmed the image gone: glance never brings that id back.  A refused or unconfirmed
        ``deleted`` event (planned with a plan_error) does not count, or a forged one would
        stop every later sync of the image."""
        query = sa.select(events.c.event_id).where(
            events.c.image_id == image_id, events.c.kind == "deleted", events.c.planned.is_(True),
            events.c.plan_error.is_(None))
        with self.reading() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def region_records(self, image_id: str) -> dict[str, RegionRecord]:
        query = (sa.select(image_regions.c.region, image_regions.c.state, image_regions.c.os_hash_value,
                           tasks.c.kind)
                 .select_from(image_regions.outerjoin(tasks, tasks.c.task_id == image_regions.c.task_id))
                 .where(image_regions.c.image_id == image_id))
        with self.reading() as conn:
            rows = conn.execute(query).all()
        return {r.region: RegionRecord(SyncState(r.state), r.kind, r.os_hash_value) for r in rows}

    @retry_on_deadlock
    def plan_event(self, event_id: str, image_id: str, new_tasks: Iterable[NewTask],
                   failures: dict[str, str], now: float, error: str | None = None,
                   record: tuple[float | None, bool] | None = None) -> list[str]:
        """Create an event's tasks, fail refused regions and mark the event planned, all at once.

        ``record``: (updated_at, active) of the glance record the plan came from, kept per image.
        """
        created = []
        new_tasks = list(new_tasks)
        # The image record goes once in the event's row, not in every task (journal/images.py).
        shared = shared_image(new_tasks)
        with self.transaction() as conn:
            values: dict[str, Any] = dict(planned=True, planned_at=now, plan_error=error)
            payload = self._event_payload_with(conn, event_id, shared) if shared is not None else None
            if payload is None:
                shared = None  # no event row to keep it in: each task keeps its own
            else:
                values["payload"] = payload
            if record is not None:
                self._note_record(conn, image_id, record[0], record[1], now)
            created = self._add_tasks(conn, event_id, image_id, new_tasks, now, shared)
            for region, reason in failures.items():
                self._fail_region(conn, image_id, region, reason, now)
            conn.execute(events.update().where(events.c.event_id == event_id).values(**values))
        return created

    def _add_tasks(self, conn: Connection, event_id: str, image_id: str, new_tasks: list[NewTask],
                   now: float, shared: dict[str, Any] | None = None) -> list[str]:
        """An event's tasks; for regions the image has no record in yet (the common case of a new
        image) tasks and records go in as two bulk inserts, whatever the number of regions."""
        regions = [new.region for new in new_tasks]
        known = {r.region for r in conn.execute(sa.select(image_regions.c.region).where(
            image_regions.c.image_id == image_id, image_regions.c.region.in_(regions)))} if regions else set()
        fresh = [new for new in new_tasks if new.region not in known and regions.count(new.region) == 1]
        created = [self._add_task(conn, event_id, image_id, new, now, shared) for new in new_tasks if new not in fresh]
        if not fresh:
            return created
        seq = (conn.execute(sa.select(sa.func.max(tasks.c.seq))).scalar() or 0) + 1
        rows, records = [], []
        for offset, new in enumerate(fresh):
            task_id = uuid.uuid4().hex
            rows.append(dict(task_id=task_id, seq=seq + offset, image_id=image_id, region=new.region,
                             kind=new.kind, state=S.PENDING.value, attempt=0, not_before=0.0, retries=0,
                             bytes_done=0, bytes_total=0, payload=stored_payload(new.payload, shared), event_id=event_id,
                             created_at=now, updated_at=now))
            state = S.DELETING if new.kind == "delete" else S.PENDING
            records.append(dict(image_id=image_id, region=new.region, state=state.value, task_id=task_id,
                                attempts=0, bytes_done=0, bytes_total=0, updated_at=now))
            self._count_region(new.region, None, state.value)
            created.append(task_id)
        conn.execute(tasks.insert(), rows)
        conn.execute(image_regions.insert(), records)
        return created

    def _add_task(self, conn: Connection, event_id: str, image_id: str, new: NewTask, now: float,
                  shared: dict[str, Any] | None = None) -> str:
        seq = (conn.execute(sa.select(sa.func.max(tasks.c.seq))).scalar() or 0) + 1
        task_id = uuid.uuid4().hex
        conn.execute(tasks.insert().values(
            task_id=task_id, seq=seq, image_id=image_id, region=new.region, kind=new.kind,
            state=S.PENDING.value, attempt=0, not_before=0.0, retries=0, bytes_done=0, bytes_total=0,
            payload=stored_payload(new.payload, shared), event_id=event_id, created_at=now, updated_at=now,
        ))
        if new.kind == "delete":
            # Work not yet handed out is moot once the image goes away in that region.
            conn.execute(tasks.update()
                         .where(tasks.c.image_id == image_id, tasks.c.region == new.region,
                                tasks.c.state == S.PENDING.value, tasks.c.task_id != task_id)
                         .values(state=S.FAILED.value, last_error="superseded by a delete",
                                 finished_at=now, updated_at=now))
        self._advance(conn, image_id, new.region, now)
        return task_id

    def _fail_region(self, conn: Connection, image_id: str, region: str, reason: str, now: float) -> None:
        current = self._region(conn, image_id, region)
        if current is None:
            conn.execute(image_regions.insert().values(
                image_id=image_id, region=region, state=S.PENDING.value, attempts=0, bytes_done=0,
                bytes_total=0, updated_at=now))
            self._count_region(region, None, S.PENDING.value)
            current = S.PENDING
        if can_move(current, S.FAILED):
            self._move_region(conn, image_id, region, current, S.FAILED, now, last_error=reason)

