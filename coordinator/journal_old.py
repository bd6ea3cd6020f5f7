"""The journal: the coordinator's only source of truth, and the only module that speaks SQL.

Everything the coordinator promises is written here first: an event is acked only
after its row is committed, a task exists only as a row, and every state change is a
compare-and-set (``UPDATE ... WHERE state = :expected``) checked against
``glancesync.states.can_move``.  A change that finds another state than expected
raises ``StaleAttempt`` and its transaction rolls back, so a late report of an old
attempt can never overwrite newer work.

Tasks of one (image, region) run one at a time in ``seq`` order; ``image_regions``
follows the task that currently drives it (``image_regions.task_id``).

SQLite runs in WAL mode with ``synchronous=FULL``: every commit fsyncs the WAL, so
a committed row survives kill -9 and also a power cut.  NORMAL would survive only
the kill, and an ack tells the sender it may forget the event, so the stronger
promise is worth one fsync per commit at control-message rates.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from coordinator.schema import events, image_regions, tasks
from glancesync.exceptions import JournalError, StaleAttempt
from glancesync.states import FINAL_STATES, SyncState, can_move

S = SyncState
_LIVE_TASK = (S.ASSIGNED.value, S.TRANSFERRING.value)
_FINAL = tuple(s.value for s in FINAL_STATES)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(blob: bytes | None) -> Any:
    return None if blob is None else msgpack.unpackb(blob, raw=False)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, FULL sync and a busy timeout."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True)
class NewTask:
    """A task the planner asks for."""

    region: str
    kind: str
    payload: dict[str, Any]


@dataclass
class TaskRow:
    task_id: str
    seq: int
    image_id: str
    region: str
    kind: str
    state: SyncState
    attempt: int
    agent_id: str | None
    lease_expires: float | None
    not_before: float
    retries: int
    bytes_done: int
    bytes_total: int
    last_error: str | None
    payload: dict[str, Any] = field(repr=False)
    report: dict[str, Any] | None = field(repr=False, default=None)


@dataclass(frozen=True)
class EventRow:
    event_id: str
    kind: str
    image_id: str
    body: dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class RegionRecord:
    """What the planner needs to know of an (image, region)."""

    state: SyncState
    task_kind: str | None
    os_hash_value: str | None


def _task(row: Any) -> TaskRow:
    m = row._mapping
    return TaskRow(
        task_id=m["task_id"], seq=m["seq"], image_id=m["image_id"], region=m["region"], kind=m["kind"],
        state=SyncState(m["state"]), attempt=m["attempt"], agent_id=m["agent_id"],
        lease_expires=m["lease_expires"], not_before=m["not_before"], retries=m["retries"],
        bytes_done=m["bytes_done"], bytes_total=m["bytes_total"], last_error=m["last_error"],
        payload=unpack(m["payload"]), report=unpack(m["report"]),
    )


def _region_state(task: TaskRow, task_state: SyncState) -> SyncState:
    """The (image, region) state that a task in ``task_state`` gives its region."""
    if task.kind != "delete":
        return task_state
    if task_state in (S.FAILED, S.DELETED):
        return task_state
    return S.DELETING


class Journal:
    """All reads and writes of the journal; safe to share within one thread."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.engine = engine or make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: committed on success, rolled back on any error."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise JournalError(detail=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc

    # -- events ---------------------------------------------------------------

    def record_event(self, event_id: str, kind: str, image_id: str, body: dict[str, Any], now: float) -> bool:
        """Store an event durably; False when that event id was already recorded."""
        with self.transaction() as conn:
            if conn.execute(sa.select(events.c.event_id).where(events.c.event_id == event_id)).first():
                return False
            try:
                conn.execute(events.insert().values(
                    event_id=event_id, kind=kind, image_id=image_id, payload=pack(body), received_at=now,
                    planned=False,
                ))
            except sa.exc.IntegrityError:
                # Another coordinator of an active/passive pair stored it first.
                return False
        return True

    def unplanned_events(self, limit: int = 100) -> list[EventRow]:
        query = (sa.select(events).where(events.c.planned.is_(False))
                 .order_by(events.c.received_at, events.c.event_id).limit(limit))
        with self.transaction() as conn:
            rows = conn.execute(query).all()
        return [EventRow(r.event_id, r.kind, r.image_id, unpack(r.payload), r.received_at) for r in rows]

    def region_records(self, image_id: str) -> dict[str, RegionRecord]:
        query = (sa.select(image_regions.c.region, image_regions.c.state, image_regions.c.os_hash_value,
                           tasks.c.kind)
                 .select_from(image_regions.outerjoin(tasks, tasks.c.task_id == image_regions.c.task_id))
                 .where(image_regions.c.image_id == image_id))
        with self.transaction() as conn:
            rows = conn.execute(query).all()
        return {r.region: RegionRecord(SyncState(r.state), r.kind, r.os_hash_value) for r in rows}

    def plan_event(self, event_id: str, image_id: str, new_tasks: Iterable[NewTask],
                   failures: dict[str, str], now: float, error: str | None = None) -> list[str]:
        """Create an event's tasks, fail refused regions and mark the event planned, all at once."""
        created = []
        with self.transaction() as conn:
            for new in new_tasks:
                created.append(self._add_task(conn, event_id, image_id, new, now))
            for region, reason in failures.items():
                self._fail_region(conn, image_id, region, reason, now)
            conn.execute(events.update().where(events.c.event_id == event_id)
                         .values(planned=True, planned_at=now, plan_error=error))
        return created

    def _add_task(self, conn: Connection, event_id: str, image_id: str, new: NewTask, now: float) -> str:
        seq = (conn.execute(sa.select(sa.func.max(tasks.c.seq))).scalar() or 0) + 1
        task_id = uuid.uuid4().hex
        conn.execute(tasks.insert().values(
            task_id=task_id, seq=seq, image_id=image_id, region=new.region, kind=new.kind,
            state=S.PENDING.value, attempt=0, not_before=0.0, retries=0, bytes_done=0, bytes_total=0,
            payload=pack(new.payload), event_id=event_id, created_at=now, updated_at=now,
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
            current = S.PENDING
        if can_move(current, S.FAILED):
            self._move_region(conn, image_id, region, current, S.FAILED, now, last_error=reason)

    # -- image_regions ----------------------------------------------------------

    @staticmethod
    def _region(conn: Connection, image_id: str, region: str) -> SyncState | None:
        state = conn.execute(sa.select(image_regions.c.state).where(
            image_regions.c.image_id == image_id, image_regions.c.region == region)).scalar()
        return None if state is None else SyncState(state)

    @staticmethod
    def _move_region(conn: Connection, image_id: str, region: str, expected: SyncState, new: SyncState,
                     now: float, **values: Any) -> None:
        """Compare-and-set of an (image, region) state; staying in a state only updates fields."""
        if expected != new and not can_move(expected, new):
            raise StaleAttempt(f"{image_id}/{region}: {expected} -> {new} is not allowed",
                               task_id=values.get("task_id"), attempt=None)
        values.update(state=new.value, updated_at=now)
        if new == S.SYNCED:
            values["synced_at"] = now
        result = conn.execute(image_regions.update().where(
            image_regions.c.image_id == image_id, image_regions.c.region == region,
            image_regions.c.state == expected.value).values(**values))
        if result.rowcount != 1:
            raise StaleAttempt(f"{image_id}/{region} is no longer {expected}", task_id=None, attempt=None)

    def _advance(self, conn: Connection, image_id: str, region: str, now: float) -> None:
        """Point the (image, region) at its earliest unfinished task, if the current one is done."""
        row = conn.execute(sa.select(image_regions.c.state, image_regions.c.task_id).where(
            image_regions.c.image_id == image_id, image_regions.c.region == region)).first()
        if row is not None and row.task_id is not None:
            state = conn.execute(sa.select(tasks.c.state).where(tasks.c.task_id == row.task_id)).scalar()
            if state not in _FINAL:
                return
        nxt = conn.execute(sa.select(tasks).where(
            tasks.c.image_id == image_id, tasks.c.region == region, tasks.c.state.not_in(_FINAL),
        ).order_by(tasks.c.seq).limit(1)).first()
        if nxt is None:
            return
        task = _task(nxt)
        target = S.DELETING if task.kind == "delete" else S.PENDING
        fields = dict(task_id=task.task_id, last_error=None, attempts=0, bytes_done=0, bytes_total=0)
        if row is None:
            conn.execute(image_regions.insert().values(image_id=image_id, region=region, state=target.value,
                                                       updated_at=now, **fields))
            return
        current = SyncState(row.state)
        if current == target or can_move(current, target):
            self._move_region(conn, image_id, region, current, target, now, **fields)
            return
        # Only a deleted region refuses new work: glance never lets that id come back.
        self._set_task(conn, task, S.FAILED, now, last_error="the image was deleted in this region",
                       finished_at=now)
        self._advance(conn, image_id, region, now)

    # -- tasks ----------------------------------------------------------------------

    def _set_task(self, conn: Connection, task: TaskRow, new: SyncState, now: float, **values: Any) -> None:
        """Compare-and-set one task (same state and attempt) and carry its region along."""
        if not can_move(task.state, new):
            raise StaleAttempt(task_id=task.task_id, attempt=task.attempt)
        os_hash_value = values.pop("os_hash_value", None)
        values.update(state=new.value, updated_at=now)
        result = conn.execute(tasks.update().where(
            tasks.c.task_id == task.task_id, tasks.c.state == task.state.value,
            tasks.c.attempt == task.attempt).values(**values))
        if result.rowcount != 1:
            raise StaleAttempt(task_id=task.task_id, attempt=task.attempt)
        region_row = conn.execute(sa.select(image_regions.c.state, image_regions.c.task_id).where(
            image_regions.c.image_id == task.image_id, image_regions.c.region == task.region)).first()
        if region_row is None or region_row.task_id != task.task_id:
            return
        mirrored = {k: values[k] for k in ("last_error", "bytes_done", "bytes_total") if k in values}
        if "attempt" in values:
            mirrored["attempts"] = values["attempt"]
        if os_hash_value is not None:
            mirrored["os_hash_value"] = os_hash_value
        self._move_region(conn, task.image_id, task.region, SyncState(region_row.state),
                          _region_state(task, new), now, **mirrored)

    def _current(self, conn: Connection, task_id: str, attempt: int | None,
                 states: Iterable[SyncState]) -> TaskRow:
        row = conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).first()
        if row is None:
            raise StaleAttempt(task_id=task_id, attempt=attempt)
        task = _task(row)
        if (attempt is not None and task.attempt != attempt) or task.state not in set(states):
            raise StaleAttempt(task_id=task_id, attempt=attempt)
        return task

    def task(self, task_id: str) -> TaskRow | None:
        with self.transaction() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).first()
        return None if row is None else _task(row)

    def dispatchable(self, region: str, now: float, limit: int = 10) -> list[TaskRow]:
        """Pending tasks of ``region`` due by ``now`` with no earlier unfinished task of their image."""
        earlier = tasks.alias("earlier")
        blocked = sa.exists().where(
            earlier.c.image_id == tasks.c.image_id, earlier.c.region == tasks.c.region,
            earlier.c.seq < tasks.c.seq, earlier.c.state.not_in(_FINAL))
        query = (sa.select(tasks).where(tasks.c.region == region, tasks.c.state == S.PENDING.value,
                                        tasks.c.not_before <= now, ~blocked)
                 .order_by(tasks.c.seq).limit(limit))
        with self.transaction() as conn:
            return [_task(r) for r in conn.execute(query).all()]

    def assign(self, task_id: str, agent_id: str, now: float, lease_expires: float) -> TaskRow:
        """Hand a pending task to an agent: attempt + 1, leased until ``lease_expires``."""
        with self.transaction() as conn:
            task = self._current(conn, task_id, None, [S.PENDING])
            self._set_task(conn, task, S.ASSIGNED, now, attempt=task.attempt + 1, agent_id=agent_id,
                           lease_expires=lease_expires, bytes_done=0, last_error=None)
            return _task(conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).one())

    def ack(self, task_id: str, attempt: int, now: float) -> None:
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED])
            self._set_task(conn, task, S.TRANSFERRING, now, started_at=now)

    def progress(self, task_id: str, attempt: int, bytes_done: int, bytes_total: int, now: float) -> None:
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED, S.TRANSFERRING])
            conn.execute(tasks.update().where(tasks.c.task_id == task_id, tasks.c.attempt == attempt)
                         .values(bytes_done=bytes_done, bytes_total=bytes_total, updated_at=now))
            conn.execute(image_regions.update().where(
                image_regions.c.image_id == task.image_id, image_regions.c.region == task.region,
                image_regions.c.task_id == task_id).values(bytes_done=bytes_done, bytes_total=bytes_total,
                                                           updated_at=now))

    def done(self, task_id: str, attempt: int, report: dict[str, Any], now: float) -> TaskRow:
        """The agent finished: copy and delete go on to registering, update is synced at once."""
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED, S.TRANSFERRING])
            if task.kind == "update":
                self._set_task(conn, task, S.SYNCED, now, finished_at=now, lease_expires=None)
                self._advance(conn, task.image_id, task.region, now)
            else:
                size = report.get("size")
                extra = {"bytes_done": size, "bytes_total": size} if isinstance(size, int) else {}
                self._set_task(conn, task, S.REGISTERING, now, report=pack(report), lease_expires=None,
                               **extra)
            return _task(conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).one())

    def finish(self, task_id: str, attempt: int, now: float, os_hash_value: str | None = None) -> None:
        """Registration succeeded: the copy is synced, or the delete is complete."""
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.REGISTERING])
            if task.kind == "delete":
                self._set_task(conn, task, S.DELETING, now)
                task.state = S.DELETING
                self._set_task(conn, task, S.DELETED, now, finished_at=now)
            else:
                self._set_task(conn, task, S.SYNCED, now, finished_at=now, os_hash_value=os_hash_value)
            self._advance(conn, task.image_id, task.region, now)

    def fail(self, task_id: str, attempt: int, reason: str, now: float,
             retry_at: Callable[[int], float | None]) -> SyncState:
        """A failed attempt: back to pending at ``retry_at(retries)``, or failed when that is None."""
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED, S.TRANSFERRING, S.REGISTERING])
            when = retry_at(task.retries)
            if when is None:
                self._set_task(conn, task, S.FAILED, now, last_error=reason, finished_at=now,
                               lease_expires=None)
                self._advance(conn, task.image_id, task.region, now)
                return S.FAILED
            self._set_task(conn, task, S.PENDING, now, last_error=reason, retries=task.retries + 1,
                           not_before=when, agent_id=None, lease_expires=None)
            return S.PENDING

    def requeue(self, task_id: str, attempt: int, now: float, reason: str) -> None:
        """Put a handed-out task back in its queue (lease lapsed, agent reconnected without it)."""
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED, S.TRANSFERRING])
            self._set_task(conn, task, S.PENDING, now, last_error=reason, agent_id=None, lease_expires=None)

    def agent_tasks(self, agent_id: str) -> list[TaskRow]:
        query = sa.select(tasks).where(tasks.c.agent_id == agent_id, tasks.c.state.in_(_LIVE_TASK))
        with self.transaction() as conn:
            return [_task(r) for r in conn.execute(query).all()]

    def lapsed(self, now: float) -> list[TaskRow]:
        query = sa.select(tasks).where(tasks.c.state.in_(_LIVE_TASK), tasks.c.lease_expires < now)
        with self.transaction() as conn:
            return [_task(r) for r in conn.execute(query).all()]

    def renew_leases(self, agent_id: str, task_ids: Iterable[str], lease_expires: float) -> int:
        ids = list(task_ids)
        if not ids:
            return 0
        with self.transaction() as conn:
            return conn.execute(tasks.update().where(
                tasks.c.agent_id == agent_id, tasks.c.task_id.in_(ids), tasks.c.state.in_(_LIVE_TASK),
            ).values(lease_expires=lease_expires)).rowcount

    def registering(self) -> list[TaskRow]:
        """Tasks whose registration was under way (e.g. when a previous coordinator stopped)."""
        query = sa.select(tasks).where(tasks.c.state == S.REGISTERING.value).order_by(tasks.c.seq)
        with self.transaction() as conn:
            return [_task(r) for r in conn.execute(query).all()]

    # -- status -------------------------------------------------------------------------

    def region_counts(self) -> dict[str, dict[str, int]]:
        """Per region: queued (pending), in_flight, synced and failed (image, region) pairs."""
        groups = {S.PENDING: "queued", S.ASSIGNED: "in_flight", S.TRANSFERRING: "in_flight",
                  S.REGISTERING: "in_flight", S.DELETING: "in_flight", S.SYNCED: "synced", S.FAILED: "failed"}
        query = (sa.select(image_regions.c.region, image_regions.c.state, sa.func.count())
                 .group_by(image_regions.c.region, image_regions.c.state))
        counts: dict[str, dict[str, int]] = {}
        with self.transaction() as conn:
            for region, state, count in conn.execute(query).all():
                bucket = counts.setdefault(region, {"queued": 0, "in_flight": 0, "synced": 0, "failed": 0})
                name = groups.get(SyncState(state))
                if name:
                    bucket[name] += count
        return counts

    def image_view(self, image_id: str) -> tuple[bool, dict[str, dict[str, Any]]]:
        """(known, per-region rows) for one image; known when any event or region names it."""
        query = (sa.select(image_regions, tasks.c.kind, tasks.c.agent_id)
                 .select_from(image_regions.outerjoin(tasks, tasks.c.task_id == image_regions.c.task_id))
                 .where(image_regions.c.image_id == image_id))
        with self.transaction() as conn:
            rows = conn.execute(query).all()
            seen = conn.execute(sa.select(events.c.event_id).where(events.c.image_id == image_id)).first()
        regions = {}
        for r in rows:
            regions[r.region] = {
                "state": r.state, "task_kind": r.kind, "task_id": r.task_id, "bytes_done": r.bytes_done,
                "bytes_total": r.bytes_total, "attempts": r.attempts, "last_error": r.last_error,
                "agent_id": r.agent_id, "updated_at": r.updated_at, "synced_at": r.synced_at,
            }
        return bool(rows) or seen is not None, regions
