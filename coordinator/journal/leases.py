"""Journal, leases of handed-out tasks: a heap in memory ordered by expiry, so the loop looks only at due ones.

``Leases`` is the table itself (no SQL); ``LeaseMixin`` is the journal's side of it.

The journal is still the truth about who holds a task (``tasks.state``, ``agent_id``,
``attempt``); this table only says when each handed-out task's lease runs out.  It is
built from the journal on first use (one query over the handed-out tasks), changed
only once a transaction that hands out, renews or takes back a task has committed
(``JournalBase.on_commit``), and renewals stay here: the journal keeps the lease of
the hand-out, and a restart gives every handed-out task a fresh ``lease_timeout``
anyway (``Journal.extend_leases``), so a renewal written to disk would never be read.

Entries are never removed from the heap in place: a renewal pushes a new entry and
the old one is skipped when it surfaces (it no longer matches ``current``).  The heap
is rebuilt when stale entries outnumber live ones four to one.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from coordinator.journal.base import LIVE_TASK_STATES, TaskRow, task_from_row
from coordinator.schema import tasks
from glancesync.states import SyncState

# Seconds after which a lapsed lease that was reported but not taken back (the journal
# refused the change) is reported again.
RETRY_LAPSED_AFTER = 5.0


@dataclass(frozen=True)
class Lease:
    attempt: int
    agent_id: str | None
    expires: float


class Leases:
    def __init__(self) -> None:
        self.current: dict[str, Lease] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self.current)

    def set(self, task_id: str, attempt: int, agent_id: str | None, expires: float | None) -> None:
        """``task_id`` is handed out (attempt, agent) until ``expires``; None: no lease, never lapses."""
        if expires is None:
            self.current.pop(task_id, None)
            return
        self.current[task_id] = Lease(attempt, agent_id, expires)
        heapq.heappush(self._heap, (expires, next(self._order), task_id))
        if len(self._heap) > 4 * len(self.current) + 64:
            self._compact()

    def drop(self, task_id: str) -> None:
        self.current.pop(task_id, None)

    def renew(self, agent_id: str, task_ids: set[str] | list[str], expires: float) -> int:
        """Extend the leases ``agent_id`` holds among ``task_ids``; how many were extended."""
        renewed = 0
        for task_id in task_ids:
            lease = self.current.get(task_id)
            if lease is not None and lease.agent_id == agent_id and lease.expires < expires:
                self.set(task_id, lease.attempt, agent_id, expires)
                renewed += 1
        return renewed

    def lapsed(self, now: float) -> list[tuple[str, Lease]]:
        """Leases that ran out before ``now``; each is reported again after RETRY_LAPSED_AFTER
        unless the task is taken back (``drop``) or handed out anew meanwhile."""
        due = []
        while self._heap and self._heap[0][0] < now:
            expires, _order, task_id = heapq.heappop(self._heap)
            lease = self.current.get(task_id)
            if lease is None or lease.expires != expires:
                continue  # renewed, taken back or handed out again since
            due.append((task_id, lease))
        for task_id, lease in due:
            self.set(task_id, lease.attempt, lease.agent_id, now + RETRY_LAPSED_AFTER)
        return due

    def _compact(self) -> None:
        self._heap = [(lease.expires, next(self._order), task_id) for task_id, lease in self.current.items()]
        heapq.heapify(self._heap)


class LeaseMixin:
    """The journal's side of the lease table: read it once, keep it on commit, answer from it."""

    _lease_table: Leases | None = None

    # -- leases (in memory, coordinator.journal.leases) ---------------------------------

    def _leases(self) -> Leases:
        if self._lease_table is None:
            table = Leases()
            query = sa.select(tasks.c.task_id, tasks.c.attempt, tasks.c.agent_id, tasks.c.lease_expires).where(
                tasks.c.state.in_(LIVE_TASK_STATES))
            with self.reading() as conn:
                for row in conn.execute(query):
                    table.set(row.task_id, row.attempt, row.agent_id, row.lease_expires)
            self._lease_table = table
        return self._lease_table

    def _lease_changed(self, task: TaskRow, new: SyncState, values: dict[str, Any]) -> None:
        """Carry a committed task change into the lease table."""
        if self._lease_table is None:
            return  # read from the journal on first use
        if new not in (SyncState.ASSIGNED, SyncState.TRANSFERRING):
            self.on_commit(lambda: self._lease_table.drop(task.task_id))
        elif {"attempt", "agent_id", "lease_expires"} & values.keys():
            attempt = values.get("attempt", task.attempt)
            agent_id = values.get("agent_id", task.agent_id)
            expires = values.get("lease_expires", task.lease_expires)
            self.on_commit(lambda: self._lease_table.set(task.task_id, attempt, agent_id, expires))

    def lapsed(self, now: float) -> list[TaskRow]:
        """Handed-out tasks whose lease ran out before ``now``: from the lease heap, O(due leases)."""
        due = dict(self._leases().lapsed(now))
        if not due:
            return []
        found = []
        ids = list(due)
        with self.reading() as conn:
            for start in range(0, len(ids), 500):
                query = sa.select(tasks).where(tasks.c.task_id.in_(ids[start:start + 500]),
                                               tasks.c.state.in_(LIVE_TASK_STATES))
                found += [task_from_row(r) for r in conn.execute(query).all()]
        lapsed = []
        for task in found:
            if task.attempt == due.pop(task.task_id).attempt:
                task.lease_expires = now
                lapsed.append(task)
        for task_id in due:  # no longer handed out (another process took it back)
            self._leases().drop(task_id)
        return lapsed

    def renew_leases(self, agent_id: str, task_ids: Iterable[str], lease_expires: float) -> int:
        """Extend the leases ``agent_id`` holds among ``task_ids``: in memory only (module docstring
        of coordinator.journal.leases: a restart renews every lease anyway)."""
        return self._leases().renew(agent_id, list(task_ids), lease_expires)

    def extend_leases(self, until: float) -> int:
        """Let every handed-out task's lease run at least ``until`` (a restart's grace period)."""
        with self.transaction() as conn:
            count = conn.execute(tasks.update().where(
                tasks.c.state.in_(LIVE_TASK_STATES),
                sa.or_(tasks.c.lease_expires.is_(None), tasks.c.lease_expires < until),
            ).values(lease_expires=until)).rowcount

        def reload() -> None:
            self._lease_table = None  # read again, with the extended leases, on next use

        self.on_commit(reload)
        return count
