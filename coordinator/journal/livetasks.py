"""Journal, the rows of running tasks kept in memory: a report is checked without reading its task.

Every report of an agent (``ack``, ``progress``, ``done``, ``failed``) and every
registration result names a task and an attempt that the journal must check before
it changes anything.  Reading the task row for that (and unpacking the image record
in its payload) was two to four statements per report, twice per message.  This
table keeps the row of each task this coordinator handed out, from its assignment to
its registration, as the journal last wrote it (a row whose write rolls back is dropped,
``JournalBase.on_rollback``), and drops it once the task is anywhere else.

The table is a shortcut for the positive case only, never the truth: a report it
accepts still goes through the compare-and-set ``UPDATE ... WHERE state AND
attempt`` of ``TaskStateMixin._set_task``, so a row another process changed meanwhile
(``glance-sync-manage``) makes that update touch nothing and the report is stale, as
it would have been with a fresh read.  Whatever the table does not hold, or holds in
another state or attempt, is read from the journal as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from coordinator.journal.base import TaskRow, task_copy, unpack
from glancesync.states import SyncState

S = SyncState
# The states a task is kept in: handed out, then waiting for its registration.
KEPT = frozenset({S.ASSIGNED, S.TRANSFERRING, S.REGISTERING})
_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskRow))


class LiveTaskMixin:
    """The journal's table of running tasks (task_id -> TaskRow as committed)."""

    _live_table: dict[str, TaskRow] | None = None

    def _live(self) -> dict[str, TaskRow]:
        if self._live_table is None:
            self._live_table = {}
        return self._live_table

    def _live_row(self, task_id: str, attempt: int | None, states: Iterable[SyncState]) -> TaskRow | None:
        """A copy of ``task_id``'s kept row when it is in one of ``states`` (and ``attempt``); else None."""
        task = self._live().get(task_id)
        if task is None or task.state not in states or (attempt is not None and task.attempt != attempt):
            return None
        return task_copy(task)

    def _live_changed(self, task: TaskRow, new: SyncState, values: dict[str, Any]) -> None:
        """Carry a task change into the table at once (``values`` as written to the row).

        At once, not on commit: a later call of the same batch (``ack`` then ``done`` of one
        task in one loop iteration) must see it.  Should the change roll back, its row is
        dropped (``on_rollback``) and read from the journal when next needed.
        """
        table = self._live()
        if new not in KEPT:
            table.pop(task.task_id, None)
        else:
            fields = {k: v for k, v in values.items() if k in _FIELDS}
            fields["state"] = new
            if "report" in fields and isinstance(fields["report"], bytes):
                fields["report"] = unpack(fields["report"])
            table[task.task_id] = task_copy(task, **fields)
        self.on_rollback(lambda: self._live_stale(task.task_id))

    def _live_stale(self, task_id: str) -> None:
        """The journal refused a change the table allowed: drop the row (read again next time)."""
        self._live().pop(task_id, None)

    def held_task(self, task_id: str) -> TaskRow | None:
        """``task(task_id)``, from the table when it holds the task (a report's check reads nothing)."""
        task = self._live_row(task_id, None, KEPT)
        if task is None:
            return self.task(task_id)
        return self._with_lease(task)
