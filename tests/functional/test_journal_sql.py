"""The journal on SQLite, a real PostgreSQL and a real MariaDB: the same tests, migrations, and models.

Every test here runs once per backend.  The journal's own tests
(tests/unit/coordinator/test_journal.py, the batch tests of test_loop_cost.py, the index plans of
test_journal_indexes.py and the leader lease's tests of test_leader.py) are collected here again, so each change to
them also runs on the servers; SQLite-only ones (pragmas) stay in the unit suite.
Besides: ``db_sync`` from nothing and back down, the models of coordinator/schema.py
against what the migrations made (alembic's autogenerate comparison, types
included), and the portability traps a SQLite-only suite cannot see (single-precision
FLOAT, 64 KiB BLOB, case-insensitive keys on MariaDB).

Each test gets a database of its own: a copy of a template that ``db_sync`` migrated
once per server (tests/harness/sqlserver.py).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from coordinator import manage, schema
from coordinator.journal import Journal, LeaseLost, NewTask, make_engine
from coordinator.journal import engine as engine_module
from glancesync.exceptions import JournalError
from glancesync.states import SyncState
from tests.functional import helpers
from tests.harness.sqlserver import SqlServer
from tests.unit.coordinator import test_journal as unit
from tests.unit.coordinator import test_journal_bulk as bulk
from tests.unit.coordinator import test_journal_images as images
from tests.unit.coordinator import test_journal_indexes as indexes
from tests.unit.coordinator import test_journal_planmany as planmany
from tests.unit.coordinator import test_journal_planning as planning
from tests.unit.coordinator import test_leader as leader_lease
from tests.unit.coordinator import test_loop_cost as loop_cost
from tests.unit.coordinator.conftest import IMAGE_ID, image_record

BACKENDS = ("sqlite", "postgresql", "mariadb")
# Tests of SQLite's own settings, meaningless on a server.
SQLITE_ONLY = {"test_sqlite_runs_in_wal_with_full_sync"}
_names = itertools.count(1)

for _name in dir(unit):
    if _name.startswith("test_") and _name not in SQLITE_ONLY:
        globals()[_name] = getattr(unit, _name)
# The loop's batch (each call a savepoint in one transaction per iteration) and its in-memory
# tables, on each server too: those of its tests that need only a journal.
for _name in ("test_a_batch_is_one_commit_and_a_stale_call_undoes_only_its_own_writes",
              "test_a_renewal_is_not_written_but_keeps_the_task_from_lapsing", "test_lapsed_reads_only_the_due_tasks",
              "test_dispatch_to_many_sessions_is_one_query_and_one_commit",
              "test_progress_is_shown_at_once_and_written_later",
              "test_status_counts_are_kept_in_memory_and_match_the_journal"):
    globals()[_name] = getattr(loop_cost, _name)
# A loop iteration's reports written per kind (journal/bulk.py), the image record kept once per
# event (journal/images.py) and its planned events written together (journal/planmany.py): the
# row counts of executemany and the fallback differ per driver.
for _module in (bulk, images, planmany):
    for _name in dir(_module):
        if _name.startswith("test_"):
            globals()[_name] = getattr(_module, _name)
# Planning's reads in the loop's batch: no savepoint, and a failed one (which ends a PostgreSQL
# transaction) rolls the batch back whole.
test_planning_reads_in_a_batch_add_no_savepoint_and_a_failed_one_rolls_the_batch_back = \
    planning.test_planning_reads_in_a_batch_add_no_savepoint_and_a_failed_one_rolls_the_batch_back
# The journal's queries use their indexes, by each database's own plan.
for _name in dir(indexes):
    if _name.startswith("test_"):
        globals()[_name] = getattr(indexes, _name)
# The leader lease of a coordinator pair and its fence: a pair runs on a server.
for _name in dir(leader_lease):
    if _name.startswith("test_"):
        globals()[_name] = getattr(leader_lease, _name)
other = leader_lease.other  # the second coordinator's journal (a fixture)


def new_database(backend: str, tmp_path: Path, servers: dict[str, SqlServer] | None, *,
                 migrated: bool) -> str:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'journal.sqlite'}"
        if migrated:
            manage.db_sync(url)
        return url
    assert servers is not None
    return servers[backend].database(f"journal_{next(_names)}", migrated=migrated, migrate=manage.db_sync)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def servers(backend: str, request: pytest.FixtureRequest) -> dict[str, SqlServer] | None:
    """The running servers (started once, in parallel, by the first test that needs one)."""
    return None if backend == "sqlite" else request.getfixturevalue("sql_servers")


@pytest.fixture
def db_url(backend: str, tmp_path: Path, servers: dict[str, SqlServer] | None) -> Iterator[str]:
    """A journal database of its own at the newest schema, with no rows."""
    url = new_database(backend, tmp_path, servers, migrated=True)
    yield url
    if servers is not None:
        servers[backend].release(url)


@pytest.fixture
def empty_url(backend: str, tmp_path: Path, servers: dict[str, SqlServer] | None) -> str:
    """A database of its own with no table at all."""
    return new_database(backend, tmp_path, servers, migrated=False)


@pytest.fixture
def journal(db_url: str) -> Iterator[Journal]:
    j = Journal(db_url)
    yield j
    j.close()


def schema_diff(url: str) -> list:
    """What alembic's autogenerate finds between coordinator/schema.py and the database (types too)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, schema.metadata)
    finally:
        engine.dispose()


def test_db_sync_builds_the_schema_from_nothing_and_again_is_a_no_op(empty_url: str) -> None:
    assert manage.schema_revisions(empty_url)[0] is None
    manage.db_sync(empty_url)
    current, head = manage.schema_revisions(empty_url)
    assert current == head and head is not None
    manage.db_sync(empty_url)
    assert manage.schema_revisions(empty_url) == (head, head)
    engine = make_engine(empty_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) >= set(schema.metadata.tables)
    finally:
        engine.dispose()


def test_the_models_match_what_the_migrations_make(empty_url: str) -> None:
    manage.db_sync(empty_url)
    assert schema_diff(empty_url) == []


def test_every_migration_goes_down_to_nothing_and_up_again(empty_url: str) -> None:
    manage.db_sync(empty_url)
    command.downgrade(manage.alembic_config(empty_url), "base")
    engine = make_engine(empty_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    manage.db_sync(empty_url)
    assert schema_diff(empty_url) == []


def test_times_keep_their_fractions_of_a_second(journal: Journal) -> None:
    # MySQL's FLOAT is single precision: 1764530000.25 would come back as 1764530048.0.
    now = 1_764_530_000.25
    journal.record_event("e1", "uploaded", IMAGE_ID, {}, now)
    [event] = journal.unplanned_events()
    assert event.received_at == now
    [task_id] = journal.plan_event("e1", IMAGE_ID, [unit.copy_task()], {}, now)
    assert journal.assign(task_id, "a", now, now + 0.5).lease_expires == now + 0.5
    assert journal.lapsed(now + 0.25) == [] and [t.task_id for t in journal.lapsed(now + 0.75)] == [task_id]


def test_ids_and_region_names_compare_byte_for_byte(journal: Journal) -> None:
    # MariaDB's default collation ignores case: these would be one event and one region.
    assert journal.record_event("Event-1", "uploaded", IMAGE_ID, {}, unit.NOW) is True
    assert journal.record_event("event-1", "uploaded", IMAGE_ID, {}, unit.NOW) is True
    journal.plan_event("Event-1", IMAGE_ID, [unit.copy_task("RegionOne"), unit.copy_task("regionone")], {},
                       unit.NOW)
    assert set(journal.image_view(IMAGE_ID)[1]) == {"RegionOne", "regionone"}


def test_a_large_image_record_is_stored_whole(journal: Journal) -> None:
    # An image with many long properties: past the 64 KiB of MySQL's BLOB.
    record = image_record(**{f"prop_{i}": "v" * 1000 for i in range(200)})
    journal.record_event("e1", "uploaded", IMAGE_ID, {"image": record}, unit.NOW)
    new = NewTask("RegionOne", "copy", {"image": record, "source": {"type": "sftp", "path": "/x"}})
    [task_id] = journal.plan_event("e1", IMAGE_ID, [new], {}, unit.NOW)
    assert journal.task(task_id).payload["image"] == record


def _lock_waits(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                return conn.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE NOT granted").scalar()
            return conn.exec_driver_sql("SELECT count(*) FROM information_schema.INNODB_LOCK_WAITS").scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_a_write_the_server_aborts_as_deadlock_victim_runs_again(
        journal: Journal, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    [task_id] = unit.plan(journal, unit.copy_task())
    journal.assign(task_id, "a", unit.NOW, unit.NOW + 10)
    tries = []
    real = engine_module.transaction
    monkeypatch.setattr(engine_module, "transaction", lambda context: tries.append(1) or real(context))
    other = make_engine(db_url)
    result: dict[str, object] = {}
    # done() updates the task's row, then its region's row; the other transaction takes the
    # region's row first and then asks for the task's: a deadlock.  It writes more rows, so
    # that MariaDB (which rolls back the smaller transaction) picks the journal too.
    with other.connect() as conn:
        tx = conn.begin()
        conn.execute(schema.held_deletes.insert(), [{"image_id": f"w{i}", "held_at": 0.0} for i in range(300)])
        conn.execute(schema.image_regions.update().where(schema.image_regions.c.image_id == IMAGE_ID)
                     .values(updated_at=schema.image_regions.c.updated_at))
        worker = threading.Thread(target=lambda: result.update(task=journal.done(task_id, 1, {}, unit.NOW)))
        worker.start()
        helpers.wait_until(lambda: _lock_waits(db_url) > 0, 30, "the journal waiting for the region's row")
        conn.execute(schema.tasks.update().where(schema.tasks.c.task_id == task_id)
                     .values(updated_at=schema.tasks.c.updated_at))
        tx.commit()
    other.dispose()
    worker.join(60)
    assert len(tries) >= 2, "the journal's write was not the victim, or not run again"
    assert getattr(result.get("task"), "state", None) == SyncState.REGISTERING, result
    assert journal.task(task_id).state == SyncState.REGISTERING


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_a_holder_frozen_mid_transaction_is_ended_by_the_server_and_then_fenced(db_url: str) -> None:
    # A holder "frozen" inside a loop iteration's batch: its session idles in a transaction with
    # the lease row locked (the fence's FOR UPDATE).  The server ends that session after the bound,
    # the taker (whose lock waits are bounded too, so its tries end) takes the lease, and the
    # holder, once awake, commits nothing: its open iteration fails, its next one meets the fence.
    holder, taker = Journal(db_url), Journal(db_url)
    frozen, wake, failed = threading.Event(), threading.Event(), []
    try:
        assert holder.bound_sessions(1.0) and taker.bound_sessions(1.0)
        generation = holder.take_leader("a", 100.0, 15.0)
        holder.fence_with("a", generation)

        def iteration() -> None:
            try:
                with holder.batch():
                    holder.record_event("e1", "uploaded", "i1", {"event_id": "e1"}, 101.0, "t")
                    frozen.set()
                    wake.wait(120)
                    holder.record_event("e2", "uploaded", "i2", {"event_id": "e2"}, 101.0, "t")
            except JournalError as exc:
                failed.append(exc)

        thread = threading.Thread(target=iteration)
        thread.start()
        assert frozen.wait(60)
        # The lease lapsed long ago on the taker's clock: only the frozen session's lock is in the way.
        took = helpers.wait_until(lambda: taker.take_leader("b", 1000.0, 15.0), 60, "the takeover past the lock")
        wake.set()
        thread.join(60)
        assert took == generation + 1 and taker.leader_row()[0] == "b"
        assert len(failed) == 1 and not isinstance(failed[0], LeaseLost), failed  # its session was ended
        with pytest.raises(LeaseLost):
            holder.record_event("e3", "uploaded", "i3", {"event_id": "e3"}, 102.0, "t")
        with taker.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 0  # nothing of a's landed
    finally:
        wake.set()
        holder.close()
        taker.close()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_the_database_options_reach_the_servers_engine(db_url: str) -> None:
    journal = Journal(db_url, {"max_pool_size": 3, "max_overflow": 2})
    try:
        assert (journal.engine.pool.size(), journal.engine.pool._max_overflow) == (3, 2)
        with journal.transaction() as conn:
            if conn.dialect.name == "mysql":
                # oslo.db's default mysql_sql_mode: a value that does not fit is an error, not cut.
                assert "STRICT_ALL_TABLES" in conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()
                assert conn.exec_driver_sql("SELECT @@character_set_client").scalar() == "utf8mb4"
    finally:
        journal.close()


@pytest.mark.parametrize("kind", ("postgresql", "mariadb"))
def test_a_released_database_comes_back_with_the_leader_row_as_migrated(kind: str, sql_servers) -> None:
    """The harness's reuse (SqlServer.release): a database given back after a test that held the lease
    is handed out again with the lease's row as migration 0005 made it, free to take, not missing."""
    server = sql_servers[kind]
    url = server.database(f"journal_{next(_names)}", migrated=True, migrate=manage.db_sync)
    journal = Journal(url)
    try:
        assert journal.take_leader("a", 1000.0, 15.0) == 1
        journal.record_event("e1", "uploaded", IMAGE_ID, {}, 1000.0)
    finally:
        journal.close()
    server.release(url)
    again = server.database(f"journal_{next(_names)}", migrated=True, migrate=manage.db_sync)
    assert again == url  # the released one, reused
    journal = Journal(again)
    try:
        assert journal.leader_row() == (None, 0.0, 0)
        assert journal.unplanned_event("e1") is None  # every other row went
        assert journal.take_leader("b", 1.0, 15.0) == 1  # an UPDATE of the migrated row, at generation 1 again
    finally:
        journal.close()
        server.release(again)
