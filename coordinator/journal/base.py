"""Shared pieces of the journal: the engine, row types, msgpack blobs and the transaction helper.

See ``coordinator.journal`` for what the journal promises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import sqlalchemy as sa
from oslo_db import exception as db_exc
from sqlalchemy.engine import Connection, Engine

from coordinator.journal import engine
from glancesync.exceptions import JournalError
from glancesync.states import FINAL_STATES, SyncState

S = SyncState
LIVE_TASK_STATES = (S.ASSIGNED.value, S.TRANSFERRING.value)
FINAL_TASK_STATES = tuple(s.value for s in FINAL_STATES)


def pack(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # too deep, too large, not packable
        raise JournalError(detail=f"cannot store a value: {type(exc).__name__}", retryable=False) from None


# The BigInteger columns (bytes_done, bytes_total) are signed 64-bit on every database.
MAX_BIGINT = 2**63 - 1


class ShortWrite(Exception):
    """A bulk statement touched fewer rows than it was given: its caller rolls back and goes one at a time."""


def execute_all(conn: Connection, statement: Any, rows: list[dict[str, Any]]) -> None:
    """``statement`` once per row as one executemany; ShortWrite unless every row was touched."""
    if conn.dialect.supports_sane_multi_rowcount:
        touched = conn.execute(statement, rows).rowcount
    else:  # psycopg2 reports no row count for an executemany
        touched = sum(conn.execute(statement, row).rowcount for row in rows)
    if touched != len(rows):
        raise ShortWrite


def byte_count(name: str, value: Any) -> int:
    """``value`` if a BigInteger column takes it; a JournalError (not retryable) otherwise.

    The protocol already bounds what agents report; this keeps any other caller from
    reaching the driver with a number it cannot bind.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BIGINT:
        raise JournalError(detail=f"{name} {str(value)[:32]} is not a byte count between 0 and 2**63-1",
                           retryable=False)
    return value


def unpack(blob: bytes | None) -> Any:
    return None if blob is None else msgpack.unpackb(blob, raw=False)


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
    # Failed tries of this task's registration and when the first of them failed.
    register_retries: int = 0
    register_failing_since: float | None = None
    # The event that planned it, whose row holds its image record (coordinator/journal/images.py).
    event_id: str | None = field(repr=False, default=None)


_TASK_FIELDS = frozenset(TaskRow.__dataclass_fields__)


def task_copy(task: TaskRow, **changes: Any) -> TaskRow:
    """``dataclasses.replace(task, **changes)`` without running ``__init__`` again.

    The loop copies task rows several times per report (the table of running tasks
    hands out copies, a batch builds its outcomes); ``dataclasses.replace`` was a tenth
    of the loop's time in a profile of bench/control.py.  A copy of the instance dict is
    the same shallow copy; an unknown field is refused as ``replace`` would.
    """
    if not changes.keys() <= _TASK_FIELDS:
        raise TypeError(f"TaskRow has no field(s) {', '.join(sorted(changes.keys() - _TASK_FIELDS))}")
    copy = object.__new__(TaskRow)
    copy.__dict__.update(task.__dict__)
    if changes:
        copy.__dict__.update(changes)
    return copy


@dataclass(frozen=True)
class EventRow:
    event_id: str
    kind: str
    image_id: str
    body: dict[str, Any]
    received_at: float
    # The peer that sent it (event socket) or the coordinator's own side; None in old rows.
    sender: str | None = None
    # When it is due for (another) fetch, and how many fetches of it failed so far.
    not_before: float = 0.0
    fetch_tries: int = 0


@dataclass(frozen=True)
class RegionRecord:
    """What the planner needs to know of an (image, region)."""

    state: SyncState
    task_kind: str | None
    os_hash_value: str | None


def task_from_row(row: Any) -> TaskRow:
    m = row._mapping
    return TaskRow(
        task_id=m["task_id"], seq=m["seq"], image_id=m["image_id"], region=m["region"], kind=m["kind"],
        state=SyncState(m["state"]), attempt=m["attempt"], agent_id=m["agent_id"],
        lease_expires=m["lease_expires"], not_before=m["not_before"], retries=m["retries"],
        bytes_done=m["bytes_done"], bytes_total=m["bytes_total"], last_error=m["last_error"],
        payload=unpack(m["payload"]), report=unpack(m["report"]),
        register_retries=m["register_retries"] or 0, register_failing_since=m["register_failing_since"],
        event_id=m["event_id"],
    )


def region_state_for(task: TaskRow, task_state: SyncState) -> SyncState:
    """The (image, region) state that a task in ``task_state`` gives its region."""
    if task.kind != "delete":
        return task_state
    if task_state in (S.FAILED, S.DELETED):
        return task_state
    return S.DELETING


class JournalBase:
    """The engine and the one transaction helper every part of the journal goes through.

    ``options`` are the ``[database]`` options (``conf.database``) beside the URL:
    pool, connection retries, ``sqlite_synchronous``... (coordinator/journal/engine.py).
    Connections come from oslo.db's enginefacade; a ``batch`` holds one of them for
    its whole transaction and runs every journal call inside as a savepoint on it.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self._facade = engine.facade(url, options)
        self.engine: Engine = self._facade.writer.get_engine()
        # The connection of the open batch, if any (``batch``), and the database error that
        # broke its transaction (the batch then rolls back whole instead of committing).
        self._batch_conn: Connection | None = None
        self._batch_broken: JournalError | None = None
        # What to do once each open transaction level commits (``on_commit``), innermost last.
        self._effects: list[list[Callable[[], None]]] = []
        # What to undo if each open transaction level rolls back (``on_rollback``), innermost last.
        self._undos: list[list[Callable[[], None]]] = []
        # Progress reports not written yet: task_id -> (attempt, image_id, region, done, total, at).
        self._progress: dict[str, tuple[int, str, str, int, int, float]] = {}
        # Transactions (savepoints in a batch) that may have written and did not roll back: the
        # loop runs its queries again only when this moved (coordinator/wakeups.py). A batch that
        # rolls back later leaves it counted: one query run for nothing, never one missed.
        self.writes = 0

    def close(self) -> None:
        self._facade.dispose_pool()

    def on_commit(self, effect: Callable[[], None]) -> None:
        """Run ``effect`` once what was written so far is committed; never if it rolls back.

        The journal's in-memory tables (leases, status counters) change only this way,
        so they always show committed state, even when a batch fails.
        """
        if self._effects:
            self._effects[-1].append(effect)
        else:
            effect()

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` if what was written so far rolls back (a savepoint or the whole batch).

        For in-memory shortcuts changed at once (the rows of running tasks): a call later
        in the same batch must see what an earlier one wrote, before the commit.
        """
        if self._undos:
            self._undos[-1].append(undo)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every journal call inside; each call is a savepoint in it.

        A call that fails (a stale attempt) rolls back its own savepoint only; the
        batch commits once at the end, so a loop iteration costs one commit (one fsync)
        whatever it did.  Nothing written inside is durable before ``batch`` returns:
        a caller acknowledges to a peer only after that (doc/control-plane.md).

        A database error inside (a deadlock, a lost connection; not a stale attempt nor
        a value that never fits) may have ended the transaction under the savepoints:
        MariaDB rolls back a deadlock victim's whole transaction.  The batch then rolls
        back whole and raises it, even when the caller caught it and went on.
        """
        if self._batch_conn is not None:
            yield
            return
        try:
            with self.transaction(write=False) as conn:  # its calls count their own writes
                self._batch_conn, self._batch_broken = conn, None
                try:
                    yield
                    if self._batch_broken is not None:
                        raise self._batch_broken
                finally:
                    self._batch_conn = None
        except BaseException:
            self.forget_memory()
            raise

    def forget_memory(self) -> None:
        """Drop the in-memory tables; they are read from the journal again on next use."""

    def check_fence(self, conn: Connection) -> None:
        """Checked at the start of every top-level transaction; the leader lease's fence overrides it."""

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        if self._batch_conn is not None:
            with self._batch_conn.begin_nested():
                yield self._batch_conn
        else:
            with engine.transaction(self._facade) as conn:
                yield conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads only: in a batch its own, without a savepoint; else a transaction.

        A read leaves nothing to roll back, so inside a batch it costs no SAVEPOINT and RELEASE
        (two statements, a good part of a loop iteration's).  A database error in it breaks the
        batch (on PostgreSQL the transaction is aborted), which then rolls back whole.
        """
        if self._batch_conn is None:
            with self.transaction(write=False) as conn:
                yield conn
            return
        try:
            yield self._batch_conn
        except (sa.exc.SQLAlchemyError, db_exc.DBError, OverflowError) as exc:
            error = _journal_error(exc)
            if self._batch_broken is None:
                self._batch_broken = JournalError(detail=f"the batch's transaction broke ({error})")
            raise error from exc

    @property
    def in_batch(self) -> bool:
        """Whether a ``batch`` is open (a write then is a savepoint, not a transaction of its own)."""
        return self._batch_conn is not None

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[Connection]:
        """One transaction (a savepoint inside a batch): committed on success, rolled back on any error.

        ``write=False``: it only reads, and does not count in ``writes``.

        Database errors become a JournalError whose cause is oslo.db's exception
        (``DBDeadlock``, ``DBDuplicateEntry``...), which ``engine.retry_on_deadlock`` reads.
        """
        effects: list[Callable[[], None]] = []
        undos: list[Callable[[], None]] = []
        self._effects.append(effects)
        top = self._batch_conn is None
        self._undos.append(undos)
        try:
            with self._begin() as conn:
                if top:  # a pair's active coordinator: is the lease still ours (leader.py)?
                    self.check_fence(conn)
                yield conn
        except BaseException as exc:
            for undo in reversed(undos):
                undo()
            if isinstance(exc, (sa.exc.SQLAlchemyError, db_exc.DBError, OverflowError)):
                error = _journal_error(exc)
                if self._batch_conn is not None and error.retryable and self._batch_broken is None:
                    self._batch_broken = JournalError(detail=f"the batch's transaction broke ({error})")
                raise error from exc
            raise
        finally:
            self._effects.pop()
            self._undos.pop()
        if write:
            self.writes += 1
        if self._undos:  # the enclosing level may still roll back
            self._undos[-1].extend(undos)
        for effect in effects:  # committed (or, in a batch, part of what the batch commits)
            self.on_commit(effect)


def _journal_error(exc: BaseException) -> JournalError:
    """The JournalError for a database error: retryable unless a value can never fit its column."""
    inner = getattr(exc, "inner_exception", None) or exc
    if isinstance(exc, db_exc.DBDataError) or isinstance(inner, (OverflowError, sa.exc.DataError)):
        # The driver or the server cannot take a value (sqlite3 raises OverflowError for
        # 2**63, PostgreSQL "out of range"): the same value fails every time.
        return JournalError(detail=f"a value does not fit its column: {str(inner).splitlines()[0][:300]}",
                            retryable=False)
    return JournalError(detail=f"{type(inner).__name__}: {str(inner).splitlines()[0][:300]}")
