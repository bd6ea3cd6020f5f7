"""How the journal reaches its database: oslo.db's [database] options, SQLite's settings, deadlock
retry, and a schema that compiles portably (the real servers: tests/functional/test_journal_sql.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from oslo_db import exception as db_exc
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.schema import CreateTable

from coordinator import schema
from coordinator.journal import Journal, engine
from glancesync import config
from glancesync.exceptions import JournalError

from .conftest import IMAGE_ID

NOW = 1_000_000.0


def test_the_database_group_holds_oslo_dbs_options_with_the_journals_default(tmp_path) -> None:
    path = tmp_path / "c.conf"
    path.write_text("[database]\nmax_pool_size = 7\nmysql_sql_mode = ANSI\n")
    conf = config.load(["--config-file", str(path)], "test", setup_logging=False)
    assert conf.database.connection == "sqlite:////var/lib/glance-sync/journal.sqlite"
    assert (conf.database.max_pool_size, conf.database.mysql_sql_mode) == (7, "ANSI")
    assert conf.database.sqlite_synchronous is True and conf.database.max_retries == 10


def test_sqlite_connections_are_kept_between_transactions(journal: Journal) -> None:
    seen = set()
    for _ in range(3):
        with journal.transaction() as conn:
            seen.add(id(conn.connection.dbapi_connection))
    assert len(seen) == 1
    assert isinstance(journal.engine.pool, sa.pool.QueuePool)


def test_sqlite_synchronous_false_is_the_operators_way_out_of_fsync(db_url: str) -> None:
    journal = Journal(db_url, {"sqlite_synchronous": False})
    try:
        with journal.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 0  # OFF
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        journal.close()


def _deadlocking(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the next ``times`` transactions fail as a deadlock victim would; count every try."""
    tries = []
    real = engine.transaction
    monkeypatch.setattr("oslo_db.api.time.sleep", lambda _s: None)

    def transaction(context):
        tries.append(1)
        if len(tries) <= times:
            raise db_exc.DBDeadlock(Exception("Deadlock found when trying to get lock"))
        return real(context)

    monkeypatch.setattr(engine, "transaction", transaction)
    return tries


def test_a_write_chosen_as_deadlock_victim_runs_again(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    tries = _deadlocking(monkeypatch, times=2)
    assert journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW) is True
    assert len(tries) == 3
    assert [e.event_id for e in journal.unplanned_events()] == ["e1"]


def test_a_deadlock_that_keeps_coming_back_is_a_retryable_journal_error(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    tries = _deadlocking(monkeypatch, times=100)
    with pytest.raises(JournalError) as info:
        journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
    assert info.value.retryable and len(tries) == engine.DEADLOCK_RETRIES + 1


def test_other_database_errors_are_not_retried(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    tries = []

    def transaction(context):
        tries.append(1)
        raise db_exc.DBConnectionError(Exception("server has gone away"))

    monkeypatch.setattr(engine, "transaction", transaction)
    with pytest.raises(JournalError) as info:
        journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
    assert len(tries) == 1 and "server has gone away" in str(info.value)


def _deadlocking_insert(journal: Journal, monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the next ``times`` event inserts fail as a deadlock victim's statement would; count every try."""
    tries = []
    real = journal._insert_events
    monkeypatch.setattr("oslo_db.api.time.sleep", lambda _s: None)

    def insert(*args, **kwargs):
        tries.append(1)
        if len(tries) <= times:
            raise db_exc.DBDeadlock(Exception("Deadlock found when trying to get lock"))
        return real(*args, **kwargs)

    monkeypatch.setattr(journal, "_insert_events", insert)
    return tries


def test_a_deadlock_inside_a_batch_is_not_retried_and_rolls_the_batch_back(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    journal.record_event("before", "uploaded", IMAGE_ID, {}, NOW)
    tries = _deadlocking_insert(journal, monkeypatch, times=1)
    with pytest.raises(JournalError) as info:
        with journal.batch():
            journal.record_event("e0", "uploaded", IMAGE_ID, {}, NOW)  # the first insert deadlocks
    # A savepoint of a deadlock victim is no unit to retry (MariaDB rolled back the whole
    # transaction): one try, and nothing of the batch is kept.
    assert info.value.retryable and len(tries) == 1
    assert not journal.in_batch
    assert [e.event_id for e in journal.unplanned_events()] == ["before"]


def test_a_batch_whose_caller_goes_on_after_a_deadlock_still_rolls_back_whole(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    effects = []
    tries = _deadlocking_insert(journal, monkeypatch, times=1)
    with pytest.raises(JournalError, match="transaction broke"):
        with journal.batch():
            with pytest.raises(JournalError):  # the loop logs a failing step and runs the next one
                journal.record_event("e0", "uploaded", IMAGE_ID, {}, NOW)
            journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
            journal.on_commit(lambda: effects.append("committed"))
    # On MariaDB the deadlock took the transaction under the savepoints: committing e1
    # alone would keep half an iteration, so nothing is kept and nothing is applied.
    assert len(tries) == 2 and effects == []
    assert journal.unplanned_events() == []


def test_a_deadlock_outside_a_batch_runs_the_write_again(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    tries = _deadlocking_insert(journal, monkeypatch, times=2)
    assert journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW) is True
    assert len(tries) == 3
    assert [e.event_id for e in journal.unplanned_events()] == ["e1"]


@pytest.mark.parametrize("table", sorted(schema.metadata.tables))
def test_every_table_compiles_portably(table: str) -> None:
    t = schema.metadata.tables[table]
    on_mysql = str(CreateTable(t).compile(dialect=mysql.dialect()))
    assert "ENGINE=InnoDB" in on_mysql and "COLLATE utf8mb4_bin" in on_mysql
    assert " FLOAT" not in on_mysql and " BLOB" not in on_mysql  # single precision, 64 KiB
    on_postgresql = str(CreateTable(t).compile(dialect=postgresql.dialect()))
    assert " FLOAT" not in on_postgresql and "REAL" not in on_postgresql
