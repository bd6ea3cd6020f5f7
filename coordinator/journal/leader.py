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

**A frozen holder** (SIGSTOP, a VM paused, a process stuck in swap) may stop in the middle
of a transaction, with the lease row locked: the taker's UPDATE would wait for as long as
the database keeps that connection, hours for a silent TCP peer.  The server must end
such a session itself.  :meth:`LeaderMixin.bound_sessions` sets, on every connection of
a pair's journal, a bound of ``lease - renew interval`` seconds on

- a transaction left idle: PostgreSQL's ``idle_in_transaction_session_timeout``, MariaDB's
  ``idle_transaction_timeout``; the server closes the session and rolls its transaction
  back, which frees the row;
- a lock wait: PostgreSQL's ``lock_timeout``, MariaDB's ``innodb_lock_wait_timeout``; a
  taker's try ends (no lease this time) and the next try comes one renew interval later.

A holder frozen mid-transaction thus holds the row at most that long after it froze,
which is no later than its lease's expiry (it renewed at most one interval before
freezing), and the taker takes over within one lease plus one interval, as when the
holder crashed.  When the frozen holder wakes, its open transaction is gone (its
statements fail: nothing of it commits), and its next transaction meets the fence.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from oslo_db import exception as db_exc
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect

from coordinator.schema import leader
from glancesync.exceptions import JournalError

LEASE_NAME = "journal"
_ROW = leader.c.name == LEASE_NAME


def session_bounds(dialect: Dialect, seconds: float) -> list[str]:
    """The statements bounding a session's idle transaction and its lock waits to ``seconds`` (see above)."""
    if dialect.name == "postgresql":
        ms = max(1, int(seconds * 1000))
        return [f"SET idle_in_transaction_session_timeout = {ms}", f"SET lock_timeout = {ms}"]
    if dialect.name == "mysql" and getattr(dialect, "is_mariadb", False):
        whole = max(1, int(seconds))  # MariaDB takes whole seconds
        return [f"SET SESSION idle_transaction_timeout = {whole}", f"SET SESSION innodb_lock_wait_timeout = {whole}"]
    return []  # SQLite: one writer, no sessions to end; MySQL has no idle-transaction bound


def _lock_wait_ended(exc: JournalError) -> bool:
    """Whether a statement failed because its lock wait reached the session's bound."""
    # MariaDB's 1205 "Lock wait timeout exceeded" comes as oslo.db's DBDeadlock; PostgreSQL
    # says "canceling statement due to lock timeout".
    return isinstance(exc.__cause__, db_exc.DBDeadlock) or "lock timeout" in str(exc)


class LeaseLost(JournalError):
    """This coordinator no longer holds the leader lease: it must stop acting."""

    message = "leader lease lost: %(detail)s"
    retryable = False


class LeaderMixin:
    # (holder, generation) every top-level transaction checks; None: no pair, no fence.
    _fence: tuple[str, int] | None = None
    # Why the fence failed, once it did (the service then steps down).
    fence_broken: str | None = None

    def bound_sessions(self, seconds: float) -> list[str]:
        """Bound every session of this journal's engine: idle transactions and lock waits end after ``seconds``.

        Set on each new connection, and the pool started over, so that no connection
        opened before goes without.  The statements set (none on SQLite or MySQL).
        """
        engine: Any = self.engine  # type: ignore[attr-defined]
        statements = session_bounds(engine.dialect, seconds)
        if not statements:
            return statements

        @event.listens_for(engine, "connect")
        def _bound(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            for statement in statements:
                cursor.execute(statement)
            cursor.close()
            dbapi_conn.commit()  # psycopg2 opened a transaction: a rollback would undo the SETs

        engine.dispose()
        return statements

    def take_leader(self, holder: str, now: float, lease: float) -> int | None:
        """Take the lease if it is free or lapsed: the new generation, or None (another holds it).

        None too when the holder's lock on the row outlasted this session's lock wait
        (a holder frozen mid-transaction): the next try comes after the server ended it.
        """
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
            if _lock_wait_ended(exc):
                return None
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
