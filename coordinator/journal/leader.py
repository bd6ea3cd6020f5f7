"""Journal, leader lease: which coordinator of an active/passive pair may act, and the fence on its writes.

One row of ``leader`` (``name = 'journal'``, made by migration 0005) holds the lease:
``holder``, ``expires`` (the holder's wall clock) and ``generation``, which grows with
every takeover.  Every statement is a compare-and-set on that row:

- **take**: ``UPDATE ... SET holder = me, generation = generation + 1 WHERE expires < now``;
  one row changed means the lease is ours, under a generation no one held before;
- **renew**: ``UPDATE ... SET expires = now + lease WHERE holder = me AND generation = g``;
  no row changed means another coordinator took over;
- **fence**: once :meth:`LeaderMixin.fence_with` is called, every top-level transaction of
  this journal (a loop iteration's batch, a dispatch, a lone write) begins with
  ``SELECT ... FOR UPDATE`` of the row and checks holder and generation.  The row lock is
  held until that transaction ends, so a taker's UPDATE waits for it: a former holder
  that paused mid-iteration either commits before the takeover or finds the new
  generation and rolls back (``LeaseLost``).  SQLite ignores ``FOR UPDATE``; it has one
  writer at a time anyway, and is not meant for a pair (doc/database.md).

A missing row (a journal emptied by hand) is created by the first take; two takers
racing to insert it get one winner (the primary key) and one refusal.
"""

from __future__ import annotations

import sqlalchemy as sa
from oslo_db import exception as db_exc
from sqlalchemy.engine import Connection

from coordinator.schema import leader
from glancesync.exceptions import JournalError

LEASE_NAME = "journal"
_ROW = leader.c.name == LEASE_NAME


class LeaseLost(JournalError):
    """This coordinator no longer holds the leader lease: it must stop acting."""

    message = "leader lease lost: %(detail)s"
    retryable = False


class LeaderMixin:
    # (holder, generation) every top-level transaction checks; None: no pair, no fence.
    _fence: tuple[str, int] | None = None
    # Why the fence failed, once it did (the service then steps down).
    fence_broken: str | None = None

    def take_leader(self, holder: str, now: float, lease: float) -> int | None:
        """Take the lease if it is free or lapsed: the new generation, or None (another holds it)."""
        values = {"holder": holder, "expires": now + lease, "generation": leader.c.generation + 1}
        try:
            with self.transaction() as conn:
                if conn.execute(leader.update().where(_ROW, leader.c.expires < now).values(**values)).rowcount:
                    return conn.execute(sa.select(leader.c.generation).where(_ROW)).scalar_one()
                if conn.execute(sa.select(leader.c.name).where(_ROW)).first() is not None:
                    return None
                conn.execute(leader.insert().values(name=LEASE_NAME, holder=holder, expires=now + lease,
                                                    generation=1))
                return 1
        except JournalError as exc:
            if isinstance(exc.__cause__, db_exc.DBDuplicateEntry) or "IntegrityError" in str(exc):
                return None  # another coordinator inserted the row first: it holds the lease
            raise

    def renew_leader(self, holder: str, generation: int, now: float, lease: float) -> bool:
        """Push the lease's expiry to ``now + lease``; False when it is no longer ours."""
        with self.transaction() as conn:
            return bool(conn.execute(leader.update().where(
                _ROW, leader.c.holder == holder, leader.c.generation == generation,
            ).values(expires=now + lease)).rowcount)

    def release_leader(self, holder: str, generation: int) -> bool:
        """Give the lease up at once (a clean stop), so the passive coordinator need not wait for it to lapse."""
        self._fence = None
        with self.transaction() as conn:
            return bool(conn.execute(leader.update().where(
                _ROW, leader.c.holder == holder, leader.c.generation == generation,
            ).values(holder=None, expires=0.0)).rowcount)

    def leader_row(self) -> tuple[str | None, float, int] | None:
        """(holder, expires, generation) of the lease, or None when the row is missing."""
        with self.transaction() as conn:
            row = conn.execute(sa.select(leader.c.holder, leader.c.expires, leader.c.generation).where(_ROW)).first()
        return None if row is None else (row.holder, row.expires, row.generation)

    def fence_with(self, holder: str, generation: int) -> None:
        """From now on, every top-level transaction first checks that (holder, generation) still holds the lease."""
        self._fence, self.fence_broken = (holder, generation), None

    def check_fence(self, conn: Connection) -> None:
        """Lock the lease row for this transaction and raise LeaseLost when it is not ours any more."""
        if self._fence is None:
            return
        if self.fence_broken is not None:
            raise LeaseLost(detail=self.fence_broken)
        holder, generation = self._fence
        row = conn.execute(sa.select(leader.c.holder, leader.c.generation).where(_ROW).with_for_update()).first()
        if row is None or (row.holder, row.generation) != (holder, generation):
            now_held = "nobody" if row is None or row.holder is None else f"{row.holder} (generation {row.generation})"
            self.fence_broken = f"held by {now_held}, not by {holder} (generation {generation})"
            raise LeaseLost(detail=self.fence_broken)
