"""The leases of handed-out tasks, in memory: a heap ordered by expiry, so the loop looks only at due ones.

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
from dataclasses import dataclass

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
