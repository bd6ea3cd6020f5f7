"""Journal, the task state machine: compare-and-set of tasks and of the (image, region) they drive.

A change that finds another state or attempt than expected raises ``StaleAttempt``
and its transaction rolls back.  Tasks of one (image, region) run one at a time in
``seq`` order; ``image_regions.task_id`` follows the task that currently drives it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.journal.base import (
    FINAL_TASK_STATES,
    TaskRow,
    byte_count,
    pack,
    region_state_for,
    task_copy,
    task_from_row,
    unpack,
)
from coordinator.journal.engine import retry_on_deadlock
from coordinator.schema import image_regions, tasks
from glancesync.exceptions import StaleAttempt
from glancesync.states import SyncState, can_move

S = SyncState
_RegionRow = collections.namedtuple("_RegionRow", "state task_id")
# Keyword values of ``_set_task`` that go to the (image, region) row only.
_REGION_ONLY = ("os_hash_value", "copy_registered_at", "metadata_applied_at")


def split_change(new: SyncState, now: float, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task change's columns: (the task row's, the values its (image, region) row mirrors).

    ``values`` loses the region-only facts; the task's gets its new state and ``updated_at``.
    """
    region_only = {k: values.pop(k) for k in _REGION_ONLY if k in values}
    values.update(state=new.value, updated_at=now)
    mirrored = {k: values[k] for k in ("last_error", "bytes_done", "bytes_total") if k in values}
    if "attempt" in values:
        mirrored["attempts"] = values["attempt"]
    mirrored.update({k: v for k, v in region_only.items() if v is not None or k != "os_hash_value"})
    return values, mirrored


class TaskStateMixin:
    """Tasks: hand-out, reports, leases, retries; every change a compare-and-set.

    Uses ``LeaseMixin`` (leases.py) of the same journal for the lease table.
    """

    # -- image_regions ----------------------------------------------------------

    @staticmethod
    def _region(conn: Connection, image_id: str, region: str) -> SyncState | None:
        state = conn.execute(sa.select(image_regions.c.state).where(
            image_regions.c.image_id == image_id, image_regions.c.region == region)).scalar()
        return None if state is None else SyncState(state)

    def _move_region(self, conn: Connection, image_id: str, region: str, expected: SyncState, new: SyncState,
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
        self._count_region(region, expected.value, new.value)

    def _advance(self, conn: Connection, image_id: str, region: str, now: float,
                 finished: SyncState | None = None) -> None:
        """Point the (image, region) at its earliest unfinished task, if the current one is done.

        ``finished``: the region's state, when the caller just moved it with the final change
        of the task that drives it (nothing to read to know that the current task is done).
        """
        if finished is not None:
            row = _RegionRow(finished.value, None)
        else:
            row = conn.execute(sa.select(image_regions.c.state, image_regions.c.task_id).where(
                image_regions.c.image_id == image_id, image_regions.c.region == region)).first()
        if row is not None and row.task_id is not None:
            state = conn.execute(sa.select(tasks.c.state).where(tasks.c.task_id == row.task_id)).scalar()
            if state not in FINAL_TASK_STATES:
                return
        nxt = conn.execute(sa.select(tasks).where(
            tasks.c.image_id == image_id, tasks.c.region == region, tasks.c.state.not_in(FINAL_TASK_STATES),
        ).order_by(tasks.c.seq).limit(1)).first()
        if nxt is None:
            return
        task = task_from_row(nxt)
        target = S.DELETING if task.kind == "delete" else S.PENDING
        fields: dict[str, Any] = dict(task_id=task.task_id, last_error=None, attempts=0, bytes_done=0,
                                      bytes_total=0)
        # A new copy brings (maybe other) bytes and metadata, an update new metadata, a delete
        # removes both: from now on, that fact no longer holds.
        if task.kind in ("copy", "delete"):
            fields.update(copy_registered_at=None, metadata_applied_at=None)
        elif task.kind == "update":
            fields["metadata_applied_at"] = None
        if row is None:
            conn.execute(image_regions.insert().values(image_id=image_id, region=region, state=target.value,
                                                       updated_at=now, **fields))
            self._count_region(region, None, target.value)
            return
        current = SyncState(row.state)
        # A deleted region refuses all work but a copy planned as a restore (planner.RESTORE: glance
        # takes the id back only once an operator purged it, and the agent's create tells).
        restorable = current != S.DELETED or (task.kind == "copy" and task.payload.get("restore") is True)
        if restorable and (current == target or can_move(current, target)):
            self._move_region(conn, image_id, region, current, target, now, **fields)
            return
        self._set_task(conn, task, S.FAILED, now, last_error="the image was deleted in this region",
                       finished_at=now)
        self._advance(conn, image_id, region, now)

    # -- tasks ----------------------------------------------------------------------

    def _set_task(self, conn: Connection, task: TaskRow, new: SyncState, now: float,
                  **values: Any) -> SyncState | None:
        """Compare-and-set one task (same state and attempt) and carry its region along.

        Returns the region's new state when this task drives its region, else None.
        """
        if not can_move(task.state, new):
            raise StaleAttempt(task_id=task.task_id, attempt=task.attempt)
        values, mirrored = split_change(new, now, values)
        result = conn.execute(tasks.update().where(
            tasks.c.task_id == task.task_id, tasks.c.state == task.state.value,
            tasks.c.attempt == task.attempt).values(**values))
        if result.rowcount != 1:
            self._live_stale(task.task_id)
            raise StaleAttempt(task_id=task.task_id, attempt=task.attempt)
        self._task_changed(task, new, values)
        region_state = region_state_for(task, new)
        if not (task.kind == "update" and new == S.SYNCED):
            # The common case in one statement: the region still follows this task, in the state
            # the task's old state gave it. Anything else is read and judged below.
            expected = region_state_for(task, task.state)
            if self._region_follows(conn, task, expected, region_state, now, mirrored):
                return region_state
        region_row = conn.execute(sa.select(image_regions.c.state, image_regions.c.task_id).where(
            image_regions.c.image_id == task.image_id, image_regions.c.region == task.region)).first()
        if region_row is None or region_row.task_id != task.task_id:
            return None
        if task.kind == "update" and new == S.SYNCED:
            region_state = self._after_update(conn, task, mirrored)
        self._move_region(conn, task.image_id, task.region, SyncState(region_row.state),
                          region_state, now, **mirrored)
        return region_state

    def _task_changed(self, task: TaskRow, new: SyncState, values: dict[str, Any]) -> None:
        """The in-memory side of a task change just written (leases, running tasks, progress)."""
        self._lease_changed(task, new, values)
        self._live_changed(task, new, values)
        if new not in (S.ASSIGNED, S.TRANSFERRING):
            self.on_commit(lambda: self._progress.pop(task.task_id, None))

    def _region_follows(self, conn: Connection, task: TaskRow, expected: SyncState, new: SyncState, now: float,
                        mirrored: dict[str, Any]) -> bool:
        """Move the region ``expected`` -> ``new`` if ``task`` drives it and it is ``expected``; whether it did."""
        if expected != new and not can_move(expected, new):
            return False
        values = dict(mirrored, state=new.value, updated_at=now)
        if new == S.SYNCED:
            values["synced_at"] = now
        result = conn.execute(image_regions.update().where(
            image_regions.c.image_id == task.image_id, image_regions.c.region == task.region,
            image_regions.c.task_id == task.task_id, image_regions.c.state == expected.value).values(**values))
        if result.rowcount != 1:
            return False
        self._count_region(task.region, expected.value, new.value)
        return True

    @staticmethod
    def _after_update(conn: Connection, task: TaskRow, mirrored: dict[str, Any]) -> SyncState:
        """The region's state once an update applied its metadata: synced only over a registered copy.

        The agent may update a regional image whose copy was never verified and
        registered (its registration failed for good while the update waited behind
        it): the metadata is there, the location is not, and that is not ``synced``.
        """
        registered = conn.execute(sa.select(image_regions.c.copy_registered_at).where(
            image_regions.c.image_id == task.image_id, image_regions.c.region == task.region)).scalar()
        if registered is not None:
            return S.SYNCED
        mirrored["last_error"] = ("metadata applied, but the region has no verified and registered copy "
                                  "(its copy or its registration failed)")
        return S.FAILED

    def _current(self, conn: Connection, task_id: str, attempt: int | None,
                 states: Iterable[SyncState]) -> TaskRow:
        states = set(states)
        kept = self._live_row(task_id, attempt, states)
        if kept is not None:  # the compare-and-set of ``_set_task`` still checks it
            return kept
        row = conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).first()
        if row is None:
            raise StaleAttempt(task_id=task_id, attempt=attempt)
        [task] = self._with_images(conn, [task_from_row(row)])
        if (attempt is not None and task.attempt != attempt) or task.state not in states:
            raise StaleAttempt(task_id=task_id, attempt=attempt)
        return task

    @retry_on_deadlock
    def assign(self, task_id: str, agent_id: str, now: float, lease_expires: float,
               known: TaskRow | None = None) -> TaskRow:
        """Hand a pending task to an agent: attempt + 1, leased until ``lease_expires``.

        ``known``: the task's row as the caller just read it (``dispatchable``), so it is not
        read again; the compare-and-set still checks that it is pending at that attempt.
        """
        with self.transaction() as conn:
            if known is not None and known.task_id == task_id and known.state == S.PENDING:
                task = task_copy(known)
            else:
                task = self._current(conn, task_id, None, [S.PENDING])
            self._set_task(conn, task, S.ASSIGNED, now, attempt=task.attempt + 1, agent_id=agent_id,
                           lease_expires=lease_expires, bytes_done=0, last_error=None)
        return task_copy(task, state=S.ASSIGNED, attempt=task.attempt + 1, agent_id=agent_id,
                                   lease_expires=lease_expires, bytes_done=0, last_error=None)

    @retry_on_deadlock
    def ack(self, task_id: str, attempt: int, now: float) -> None:
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED])
            self._set_task(conn, task, S.TRANSFERRING, now, started_at=now)

    @retry_on_deadlock
    def done(self, task_id: str, attempt: int, report: dict[str, Any], now: float, acked: bool = False) -> TaskRow:
        """The agent finished: copy and delete go on to registering, update is synced at once.

        ``acked``: the attempt's ``ack`` came with this report and is written with it (``started_at``).
        """
        if report.get("size") is not None:
            byte_count("size", report["size"])
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED, S.TRANSFERRING])
            start = {"started_at": now} if acked and task.state == S.ASSIGNED else {}
            if task.kind == "update":
                self._set_task(conn, task, S.SYNCED, now, finished_at=now, lease_expires=None,
                               metadata_applied_at=now, **start)
                self._advance(conn, task.image_id, task.region, now)
                return task_copy(task, state=S.SYNCED, lease_expires=None)
            size = report.get("size")
            extra = {"bytes_done": size, "bytes_total": size} if isinstance(size, int) else {}
            self._set_task(conn, task, S.REGISTERING, now, report=pack(report), lease_expires=None,
                           not_before=0.0, register_retries=0, register_failing_since=None, **extra, **start)
        return task_copy(task, state=S.REGISTERING, report=unpack(pack(report)), lease_expires=None,
                                   not_before=0.0, register_retries=0, register_failing_since=None, **extra)

    @retry_on_deadlock
    def finish(self, task_id: str, attempt: int, now: float, os_hash_value: str | None = None) -> None:
        """Registration succeeded: the copy is synced, or the delete is complete."""
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.REGISTERING])
            if task.kind == "delete":
                self._set_task(conn, task, S.DELETING, now)
                task.state = S.DELETING
                self._set_task(conn, task, S.DELETED, now, finished_at=now)
                self._advance(conn, task.image_id, task.region, now)
            else:
                moved = self._set_task(conn, task, S.SYNCED, now, finished_at=now, os_hash_value=os_hash_value,
                                       copy_registered_at=now, metadata_applied_at=now)
                self._advance(conn, task.image_id, task.region, now, finished=moved)

    @retry_on_deadlock
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

    @retry_on_deadlock
    def defer_registration(self, task_id: str, attempt: int, reason: str, now: float, due: float) -> None:
        """A registration that failed for a reason that may pass: stay ``registering``, try again at ``due``.

        The verified regional copy is kept; the transfer's retries are not touched.
        """
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.REGISTERING])
            result = conn.execute(tasks.update().where(
                tasks.c.task_id == task_id, tasks.c.state == S.REGISTERING.value, tasks.c.attempt == attempt,
            ).values(not_before=due, register_retries=task.register_retries + 1, last_error=reason,
                     register_failing_since=sa.func.coalesce(tasks.c.register_failing_since, now),
                     updated_at=now))
            if result.rowcount != 1:
                raise StaleAttempt(task_id=task_id, attempt=attempt)
            self._live_stale(task_id)  # its retries changed: read it again
            conn.execute(image_regions.update().where(
                image_regions.c.image_id == task.image_id, image_regions.c.region == task.region,
                image_regions.c.task_id == task_id).values(last_error=reason, updated_at=now))

    @retry_on_deadlock
    def requeue(self, task_id: str, attempt: int, now: float, reason: str) -> None:
        """Put a handed-out task back in its queue (lease lapsed, agent reconnected without it)."""
        with self.transaction() as conn:
            task = self._current(conn, task_id, attempt, [S.ASSIGNED, S.TRANSFERRING])
            self._set_task(conn, task, S.PENDING, now, last_error=reason, agent_id=None, lease_expires=None)
