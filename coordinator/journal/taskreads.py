"""Journal, the reads of tasks: the hand-out's query, registrations due, one task, an agent's tasks."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from coordinator.journal.base import FINAL_TASK_STATES, LIVE_TASK_STATES, TaskRow, task_from_row
from coordinator.schema import events, tasks
from glancesync.states import SyncState

S = SyncState

# The loop's reads of registrations, built once: only the bound values change.
_REGISTRATIONS_DUE = (sa.select(tasks.c.task_id).where(
    tasks.c.state == S.REGISTERING.value, tasks.c.not_before <= sa.bindparam("now", type_=tasks.c.not_before.type))
    .order_by(tasks.c.not_before, tasks.c.seq))
_REGISTERING_ROWS = sa.select(tasks).where(
    tasks.c.task_id.in_(sa.bindparam("ids", expanding=True)), tasks.c.state == S.REGISTERING.value)
# The hand-out's query for each number of regions it serves at once, built once: only its
# bound values change between loop iterations (building and hashing the statement anew each
# time cost more than running it).
_DISPATCH_QUERIES: dict[int, Any] = {}


def _dispatch_query(count: int) -> Any:
    """``count`` LIMITed selects of due pending tasks, one per region, as one UNION ALL.

    Bound values: ``now``, and ``region_<i>`` and ``limit_<i>`` for each part.  Each part
    walks ix_tasks_dispatch_seq in seq order and stops at its limit; ``not_before + 0``
    keeps the planner off ix_tasks_state_due, which would read every pending task of every
    region and sort them.
    """
    query = _DISPATCH_QUERIES.get(count)
    if query is not None:
        return query
    earlier = tasks.alias("earlier")
    blocked = sa.exists().where(
        earlier.c.image_id == tasks.c.image_id, earlier.c.region == tasks.c.region,
        earlier.c.seq < tasks.c.seq, earlier.c.state.not_in(FINAL_TASK_STATES))
    now = sa.bindparam("now", type_=tasks.c.not_before.type)
    parts = [sa.select(tasks).where(tasks.c.region == sa.bindparam(f"region_{index}", type_=tasks.c.region.type),
                                    tasks.c.state == S.PENDING.value, tasks.c.not_before + 0 <= now, ~blocked)
             .order_by(tasks.c.seq).limit(sa.bindparam(f"limit_{index}", type_=sa.Integer())).subquery()
             for index in range(count)]
    query = sa.union_all(*[sa.select(part) for part in parts]) if count > 1 else sa.select(parts[0])
    _DISPATCH_QUERIES[count] = query
    return query


class TaskReadsMixin:
    """Reads of the tasks table; the rows come with their image record and in-memory lease."""

    def task(self, task_id: str) -> TaskRow | None:
        with self.reading() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).first()
            task = None if row is None else self._with_images(conn, [task_from_row(row)])[0]
        return None if task is None else self._with_lease(task)

    def _with_lease(self, task: TaskRow) -> TaskRow:
        """``task`` with its lease as renewed in memory (the journal keeps the hand-out's)."""
        lease = self._leases().current.get(task.task_id)
        if lease is not None and lease.attempt == task.attempt and task.state in (S.ASSIGNED, S.TRANSFERRING):
            task.lease_expires = lease.expires
        return task

    def dispatchable(self, region: str, now: float, limit: int = 10) -> list[TaskRow]:
        """Pending tasks of ``region`` due by ``now`` with no earlier unfinished task of their image."""
        return self.dispatchable_by_region({region: limit}, now).get(region, [])

    def dispatchable_by_region(self, wants: dict[str, int], now: float) -> dict[str, list[TaskRow]]:
        """``dispatchable`` for several regions (region -> limit) in one query per 200 regions."""
        found: dict[str, list[TaskRow]] = {}
        regions = [(region, limit) for region, limit in wants.items() if limit > 0]
        with self.reading() as conn:
            for start in range(0, len(regions), 200):
                chunk = regions[start:start + 200]
                params: dict[str, Any] = {"now": now}
                for index, (region, limit) in enumerate(chunk):
                    params[f"region_{index}"], params[f"limit_{index}"] = region, limit
                rows = conn.execute(_dispatch_query(len(chunk)), params).all()
                for task in self._with_images(conn, [task_from_row(row) for row in rows]):
                    found.setdefault(task.region, []).append(task)
        for rows in found.values():
            rows.sort(key=lambda t: t.seq)
        return found

    def registrations_due(self, now: float, skip: Collection[str] = ()) -> list[TaskRow]:
        """Tasks in ``registering`` whose next registration try is due by ``now``, but those in ``skip``.

        The loop asks every iteration while many registrations are in the pool (``skip``): their
        ids are read, not their rows (payload and report unpacked), so that costs next to nothing.
        """
        with self.reading() as conn:
            due = [task_id for task_id in conn.execute(_REGISTRATIONS_DUE, {"now": now}).scalars()
                   if task_id not in skip]
            found = {}
            for start in range(0, len(due), 500):
                found.update((t.task_id, t) for t in self._with_images(conn, [task_from_row(r) for r in conn.execute(
                    _REGISTERING_ROWS, {"ids": due[start:start + 500]}).all()]))
        return [found[task_id] for task_id in due if task_id in found]

    def agent_tasks(self, agent_id: str, region: str | None = None) -> list[TaskRow]:
        query = sa.select(tasks).where(tasks.c.agent_id == agent_id, tasks.c.state.in_(LIVE_TASK_STATES))
        if region is not None:
            query = query.where(tasks.c.region == region)
        with self.reading() as conn:
            return [task_from_row(r) for r in conn.execute(query).all()]

    def next_due(self, now: float) -> tuple[float | None, float | None]:
        """The earliest ``not_before`` after ``now`` of an unplanned event and of a pending task.

        A restarted loop is told them (wakeups.ChangeGate.wake_at): what a stopped one
        deferred is then planned or handed out when it is due, not up to a recheck later.
        """
        with self.reading() as conn:
            event = conn.execute(sa.select(sa.func.min(events.c.not_before)).where(
                events.c.planned == sa.false(), events.c.not_before > now)).scalar()
            task = conn.execute(sa.select(sa.func.min(tasks.c.not_before)).where(
                tasks.c.state == S.PENDING.value, tasks.c.not_before > now)).scalar()
        return event, task

    def registering(self) -> list[TaskRow]:
        """Tasks whose registration was under way (e.g. when a previous coordinator stopped)."""
        query = sa.select(tasks).where(tasks.c.state == S.REGISTERING.value).order_by(tasks.c.seq)
        with self.reading() as conn:
            return self._with_images(conn, [task_from_row(r) for r in conn.execute(query).all()])
