"""Shared pieces of the journal: the engine, row types, msgpack blobs and the transaction helper.

See ``coordinator.journal`` for what the journal promises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
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
_LIVE_TASK = (S.ASSIGNED.value, S.TRANSFERRING.value)
_FINAL = tuple(s.value for s in FINAL_STATES)


def pack(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # too deep, too large, not packable
        raise JournalError(detail=f"cannot store a value: {type(exc).__name__}", retryable=False) from None


# The BigInteger columns (bytes_done, bytes_total) are signed 64-bit on every database.
MAX_BIGINT = 2**63 - 1


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


def _task(row: Any) -> TaskRow:
    m = row._mapping
    return TaskRow(
        task_id=m["task_id"], seq=m["seq"], image_id=m["image_id"], region=m["region"], kind=m["kind"],
        state=SyncState(m["state"]), attempt=m["attempt"], agent_id=m["agent_id"],
        lease_expires=m["lease_expires"], not_before=m["not_before"], retries=m["retries"],
        bytes_done=m["bytes_done"], bytes_total=m["bytes_total"], last_error=m["last_error"],
        payload=unpack(m["payload"]), report=unpack(m["report"]),
        register_retries=m["register_retries"] or 0, register_failing_since=m["register_failing_since"],
    )


def _region_state(task: TaskRow, task_state: SyncState) -> SyncState:
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
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self._facade = engine.facade(url, options)
        self.engine: Engine = self._facade.writer.get_engine()

    def close(self) -> None:
        self._facade.dispose_pool()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: committed on success, rolled back on any error.

        Database errors become a JournalError whose cause is oslo.db's exception
        (``DBDeadlock``, ``DBDuplicateEntry``...), which ``engine.retry_on_deadlock`` reads.
        """
        try:
            with engine.transaction(self._facade) as conn:
                yield conn
        except (sa.exc.SQLAlchemyError, db_exc.DBError, OverflowError) as exc:
            raise _journal_error(exc) from exc


def _journal_error(exc: BaseException) -> JournalError:
    """The JournalError for a database error: retryable unless a value can never fit its column."""
    inner = getattr(exc, "inner_exception", None) or exc
    if isinstance(exc, db_exc.DBDataError) or isinstance(inner, (OverflowError, sa.exc.DataError)):
        # The driver or the server cannot take a value (sqlite3 raises OverflowError for
        # 2**63, PostgreSQL "out of range"): the same value fails every time.
        return JournalError(detail=f"a value does not fit its column: {str(inner).splitlines()[0][:300]}",
                            retryable=False)
    return JournalError(detail=f"{type(inner).__name__}: {str(inner).splitlines()[0][:300]}")
