"""How the journal reaches its database: oslo.db's enginefacade, the ``[database]`` options, deadlock retry.

One :func:`facade` per journal (not oslo.db's global one: tests and the manage commands
open several journals in one process).  It is configured from the standard oslo.db
``[database]`` options (``connection``, ``max_pool_size``, ``max_retries``,
``mysql_sql_mode``...), so the engine, its pool, its connection retries at start and
the translation of driver errors into ``oslo_db.exception`` (``DBDeadlock``,
``DBDuplicateEntry``, ``DBConnectionError``) are oslo.db's.

SQLite keeps the journal's promise on top of that: every connection runs in WAL mode
with ``synchronous=FULL`` (each commit fsyncs, so a committed row survives kill -9
and a power cut) and waits up to ``SQLITE_BUSY_TIMEOUT`` for another writer.  Only
``[database] sqlite_synchronous = False`` turns the fsync off (oslo.db then sets
``synchronous=OFF``), for operators who trade durability for speed knowingly.

SQLite's savepoints (``Journal.batch`` runs each call as one) need the transaction
begun by an explicit BEGIN: the sqlite3 module would otherwise begin one only before
the first write, so a leading SAVEPOINT would open, and its RELEASE commit, the whole
batch.  oslo.db's SQLite setup already does this (``isolation_level = None`` on each
connection and its own ``BEGIN`` on SQLAlchemy's begin); our pragmas are added beside it.

PostgreSQL and MariaDB/MySQL abort one of two transactions that deadlock;
:func:`retry_on_deadlock` runs such a write again, a few times with a short jittered
backoff, since its transaction rolled back whole (the journal's in-memory tables
change only once a write commits, through ``on_commit``, so a retry never applies
them twice).  Inside a ``batch`` a write is a savepoint of the batch's transaction,
and retrying it is not meaningful: MariaDB rolls back the whole transaction of a
deadlock victim (the savepoint is gone), PostgreSQL keeps the locks the batch took.
There the error goes up at once; the batch rolls back whole, its acks are withheld
and the loop's next iteration does the work again (doc/control-plane.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from oslo_db import api as db_api
from oslo_db import exception as db_exc
from oslo_db.sqlalchemy import enginefacade
from sqlalchemy import event, pool
from sqlalchemy.engine import Engine

from glancesync.exceptions import JournalError

# Seconds a statement waits for another writer (glance-sync-manage) before it fails.
# The poll loop waits with it, so it stays well under the agents' liveness (three
# heartbeats, 15 s by default); a failed step is logged and tried on the next tick.
SQLITE_BUSY_TIMEOUT = 5.0
# SQLite connections kept open: the loop thread, the registrar's workers and a status query.
SQLITE_POOL_SIZE = 4

# A deadlock is retried at most this many times, first after up to 50 ms, then
# doubling (jittered) up to 0.5 s: at most about 2 s of the loop, well within the
# agents' liveness, before the error reaches the caller as a retryable JournalError.
DEADLOCK_RETRIES = 5
DEADLOCK_FIRST_WAIT = 0.05
DEADLOCK_MAX_WAIT = 0.5

# The [database] options of oslo.db the facade reads (the rest of the group, e.g.
# the db_* reconnect options of oslo.db's DBAPI, does not apply to it).
_FACADE_KEYS = (
    "connection", "slave_connection", "sqlite_synchronous", "mysql_sql_mode", "mysql_wsrep_sync_wait",
    "connection_recycle_time", "max_pool_size", "max_overflow", "pool_timeout", "max_retries",
    "retry_interval", "connection_debug", "connection_trace", "connection_parameters",
)


class _Scope:
    """A context object for enginefacade: one per transaction, so no transaction nests in another."""


def facade(url: str, options: Mapping[str, Any] | None = None) -> Any:
    """An enginefacade transaction context manager for ``url``.

    ``options`` is the ``[database]`` group (``conf.database``) or any mapping of
    oslo.db option names; ``url`` wins over its ``connection``.
    """
    kw = {key: options[key] for key in _FACADE_KEYS if options is not None and key in options}
    kw["connection"] = url
    # oslo.db's default sleep(0) on every connection check-in lets eventlet switch green
    # threads; the coordinator has none, and on a busy host each sleep(0) costs milliseconds.
    kw["thread_checkin"] = False
    context = enginefacade.transaction_context()
    context.configure(**kw)
    if url.startswith("sqlite"):
        sync = kw.get("sqlite_synchronous", True)
        context.append_on_engine_create(lambda engine: _sqlite_setup(engine, sync))
    return context


def _sqlite_setup(engine: Engine, synchronous: bool) -> None:
    """The journal's pragmas on every connection, and connections kept open between transactions."""
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        if synchronous:
            cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    old = engine.pool
    if isinstance(old, pool.NullPool):
        # oslo.db gives a file database a NullPool: a new sqlite3 connection, its pragmas
        # and its schema read for every transaction, ten times the CPU of the transaction
        # itself.  A QueuePool keeps them; its events (oslo.db's and ours) carry over.
        engine.pool = pool.QueuePool(old._creator, pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_POOL_SIZE,
                                     recycle=old._recycle, _dispatch=old.dispatch, dialect=old._dialect)
    # oslo.db opened (and pooled, for an in-memory database) a first connection before
    # this listener existed: start over so that every connection has the pragmas.
    old.dispose()


def make_engine(url: str, options: Mapping[str, Any] | None = None) -> Engine:
    """The writer engine of a new :func:`facade` (alembic and the schema checks use it)."""
    return facade(url, options).writer.get_engine()


def transaction(context: Any) -> Any:
    """A context manager: one writer transaction on ``context``'s engine (commit, or rollback on error)."""
    return context.writer.connection.using(_Scope())


def _deadlocked(exc: BaseException) -> bool:
    return isinstance(exc, JournalError) and isinstance(exc.__cause__, db_exc.DBDeadlock)


_retry = db_api.wrap_db_retry(
    max_retries=DEADLOCK_RETRIES, retry_interval=DEADLOCK_FIRST_WAIT, inc_retry_interval=True,
    max_retry_interval=DEADLOCK_MAX_WAIT, retry_on_deadlock=True, exception_checker=_deadlocked,
)


def retry_on_deadlock(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates the journal's write methods: each is one transaction, run again whole
    when the database chose it as a deadlock victim; inside a batch, run once (see above)."""
    retried = _retry(method)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "in_batch", False):
            return method(self, *args, **kwargs)
        return retried(self, *args, **kwargs)

    return call
