"""Journal, operators' requests: cancel copies, list failed regions, the targeting reason of an image.

Called only from the coordinator's loop (coordinator/operator.py), so the loop stays
the only writer of task state; every change is a compare-and-set through
``TaskStateMixin._set_task``, like any other transition.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from coordinator.journal.base import TaskRow, task_from_row
from coordinator.journal.engine import retry_on_deadlock
from coordinator.schema import events, image_regions, tasks
from glancesync.exceptions import StaleAttempt
from glancesync.states import CANCELLABLE_STATES, SyncState

S = SyncState
_CANCELLABLE = tuple(s.value for s in CANCELLABLE_STATES)
_HANDED_OUT = (S.ASSIGNED.value, S.TRANSFERRING.value)
# plan_error of an event whose plan left out regions that glance_sync_regions names wrongly.
TARGETING_PREFIX = "targeting: "
# plan_error of an event whose plan is fine but leaves something an operator should know (no error).
NOTE_PREFIX = "note: "


def _copies_behind_deletes() -> sa.Select:
    # Built once (the loop asks whenever the journal changed): it has no value that varies.
    later = tasks.alias("later")
    return sa.select(tasks).where(
        tasks.c.kind != "delete", tasks.c.state.in_(_HANDED_OUT),
        sa.exists().where(later.c.image_id == tasks.c.image_id, later.c.region == tasks.c.region,
                          later.c.seq > tasks.c.seq, later.c.kind == "delete",
                          later.c.state == S.PENDING.value)).order_by(tasks.c.seq)


_COPIES_BEHIND_DELETES = _copies_behind_deletes()


@dataclass(frozen=True)
class Cancelled:
    """A task an operator (or a delete) cancelled; ``agent_id`` is set when an agent held it."""

    task_id: str
    attempt: int
    image_id: str
    region: str
    agent_id: str | None


class OperationsMixin:
    """Cancels, bulk resync listings and the targeting reason; uses the state machine's compare-and-set."""

    @retry_on_deadlock
    def cancel_copies(self, image_id: str, region: str | None, reason: str, now: float) -> list[Cancelled]:
        """Cancel the unfinished copy tasks of ``image_id`` not yet registering, and the updates behind them.

        Delete tasks are never cancelled, nor an update of a region whose copy is made; a
        task already ``registering`` has its bytes in the region and runs on.  Returns
        what was cancelled, handed-out tasks with their agent.
        """
        query = sa.select(tasks).where(tasks.c.image_id == image_id, tasks.c.kind != "delete",
                                       tasks.c.state.in_(_CANCELLABLE))
        if region is not None:
            query = query.where(tasks.c.region == region)
        done: list[Cancelled] = []
        with self.transaction() as conn:
            stopped: set[str] = set()  # regions whose copy is cancelled: their updates have nothing to update
            for row in conn.execute(query.order_by(tasks.c.seq)).all():
                task = task_from_row(row)
                if task.kind != "copy" and task.region not in stopped:
                    continue
                stopped.add(task.region)
                self._cancel(conn, task, reason, now)
                held = task.state.value in _HANDED_OUT
                done.append(Cancelled(task.task_id, task.attempt, task.image_id, task.region,
                                      task.agent_id if held else None))
        return done

    def _cancel(self, conn: sa.engine.Connection, task: TaskRow, reason: str, now: float) -> None:
        self._set_task(conn, task, S.CANCELLED, now, last_error=reason, finished_at=now, lease_expires=None)
        self._advance(conn, task.image_id, task.region, now)

    def copies_behind_deletes(self) -> list[TaskRow]:
        """Handed-out copy or update tasks with a delete of the same (image, region) queued behind them."""
        with self.reading() as conn:
            return [task_from_row(r) for r in conn.execute(_COPIES_BEHIND_DELETES).all()]

    @retry_on_deadlock
    def cancel_task(self, task: TaskRow, reason: str, now: float) -> bool:
        """Cancel one task seen by ``copies_behind_deletes``; False when it moved on meanwhile."""
        try:
            with self.transaction() as conn:
                self._cancel(conn, task, reason, now)
        except StaleAttempt:
            return False
        return True

    def failed_regions(self, region: str | None = None) -> dict[str, list[str]]:
        """image id -> its failed regions (only ``region`` when given), oldest change first."""
        query = sa.select(image_regions.c.image_id, image_regions.c.region).where(
            image_regions.c.state == S.FAILED.value)
        if region is not None:
            query = query.where(image_regions.c.region == region)
        found: dict[str, list[str]] = {}
        with self.reading() as conn:
            for row in conn.execute(query.order_by(image_regions.c.updated_at)).all():
                found.setdefault(row.image_id, []).append(row.region)
        return found

    def targeting_error(self, image_id: str) -> str | None:
        """Why the newest plan of the image left out regions it names (glance_sync_regions), or None."""
        return self._newest_plan_error(image_id, TARGETING_PREFIX)

    def plan_note(self, image_id: str) -> str | None:
        """What the newest plan of the image noted for operators (e.g. a snapshot left queued), or None."""
        return self._newest_plan_error(image_id, NOTE_PREFIX)

    def _newest_plan_error(self, image_id: str, prefix: str) -> str | None:
        query = (sa.select(events.c.plan_error).where(
            events.c.image_id == image_id, events.c.planned.is_(True), events.c.kind != "deleted")
            .order_by(events.c.planned_at.desc(), events.c.received_at.desc()).limit(1))
        with self.reading() as conn:
            error = conn.execute(query).scalar()
        if isinstance(error, str) and error.startswith(prefix):
            return error[len(prefix):]
        return None
