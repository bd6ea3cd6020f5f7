"""glance-sync-manage and the coordinator's refusal to start on an old schema."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from coordinator import admincheck, cmd, manage

from .conftest import IMAGE_ID, make_conf


def test_db_sync_brings_the_schema_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    current, head = manage.schema_revisions(url)
    assert current is None and head == "0008"
    manage.db_sync(url)
    manage.db_sync(url)  # twice is fine
    assert manage.schema_revisions(url) == ("0008", "0008")


def test_manage_commands(tmp_path: Path, store_yaml: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    conf_file = tmp_path / "c.conf"
    conf_file.write_text(f"[database]\nconnection = {url}\n")
    assert manage.main(["--config-file", str(conf_file), "db_version"]) == 1
    assert manage.main(["--config-file", str(conf_file), "db_sync"]) == 0
    assert manage.main(["db_version", "--config-file", str(conf_file)]) == 0
    assert "current=0008" in capsys.readouterr().out
    assert manage.main(["keygen", "--dir", str(tmp_path / "keys"), "--name", "coord"]) == 0
    secret = tmp_path / "keys" / "coord.key_secret"
    assert str(secret) in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_coordinator_refuses_an_unsynced_journal(tmp_path: Path, store_yaml: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    make_conf(tmp_path, url, store_yaml)
    assert cmd.main(["--config-file", str(tmp_path / "coordinator.conf")]) == 1
    captured = capsys.readouterr()
    assert "glance-sync-manage db_sync" in captured.out + captured.err


def test_coordinator_refuses_a_broken_store_yaml(tmp_path: Path, db_url: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: [\n")
    make_conf(tmp_path, db_url, bad)
    assert cmd.main(["--config-file", str(tmp_path / "coordinator.conf")]) == 1


def test_keygen_into_an_unusable_directory_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    try:
        code = manage.main(["keygen", "--dir", str(blocker / "keys"), "--name", "coord"])
    except SystemExit as exc:
        code = exc.code
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("glance-sync-manage: keygen failed: ") and len(err.strip().splitlines()) == 1


def test_coordinator_journal_failing_at_start_is_one_line(tmp_path: Path, db_url: str, store_yaml: Path,
                                                          monkeypatch, capsys) -> None:
    from coordinator.service import Service
    from glancesync.exceptions import JournalError

    def locked(self, now):
        raise JournalError(detail="OperationalError: database is locked")

    monkeypatch.setattr(Service, "initialize", locked)
    monkeypatch.setattr(admincheck, "check", lambda client, endpoint: True)
    make_conf(tmp_path, db_url, store_yaml)
    assert cmd.main(["--config-file", str(tmp_path / "coordinator.conf")]) == 1
    captured = capsys.readouterr()
    assert "database is locked" in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err


def test_resync_journals_an_uploaded_event_the_coordinator_will_plan(tmp_path: Path, db_url: str,
                                                                     store_yaml: Path, capsys) -> None:
    from coordinator.journal import Journal

    make_conf(tmp_path, db_url, store_yaml)
    conf = tmp_path / "coordinator.conf"
    assert manage.main(["--config-file", str(conf), "resync", IMAGE_ID]) == 0
    assert "journaled as event resync-" in capsys.readouterr().out
    journal = Journal(db_url)
    try:
        (event,) = journal.unplanned_events()
        assert (event.kind, event.image_id) == ("uploaded", IMAGE_ID)
    finally:
        journal.close()


def test_resync_refuses_a_blank_image_id(tmp_path: Path, db_url: str, store_yaml: Path, capsys) -> None:
    make_conf(tmp_path, db_url, store_yaml)
    conf = tmp_path / "coordinator.conf"
    import pytest

    with pytest.raises(SystemExit) as exited:
        manage.main(["--config-file", str(conf), "resync", " "])
    assert exited.value.code == 2
    assert "is not an image id" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["../../../../etc/passwd", f"../images/{IMAGE_ID}", "img-1",
                                 "\x1b]0;pwned\x07" + "A" * 5000])
def test_resync_refuses_what_is_not_a_glance_id_and_journals_nothing(tmp_path: Path, db_url: str,
                                                                     store_yaml: Path, capsys, bad: str) -> None:
    from coordinator.journal import Journal

    make_conf(tmp_path, db_url, store_yaml)
    with pytest.raises(SystemExit) as exited:
        manage.main(["--config-file", str(tmp_path / "coordinator.conf"), "resync", bad])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "is not an image id" in err and len(err.splitlines()) == 1 and len(err) < 300 and "\x1b" not in err
    journal = Journal(db_url)
    try:
        assert journal.unplanned_events() == []
    finally:
        journal.close()


def test_purge_command(tmp_path: Path, db_url: str, store_yaml: Path, capsys) -> None:
    import pytest

    make_conf(tmp_path, db_url, store_yaml)
    conf = tmp_path / "coordinator.conf"
    assert manage.main(["--config-file", str(conf), "purge", "--days", "7"]) == 0
    assert "purged 0 planned event(s) and 0 finished task(s) older than 7 day(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        manage.main(["--config-file", str(conf), "purge", "--days", "0"])
    assert exited.value.code == 2 and "--days must be at least 1" in capsys.readouterr().err


def test_gensecret_writes_a_private_secret_once(tmp_path: Path, capsys) -> None:
    from glancesync import marker

    path = tmp_path / "internal.secret"
    assert manage.main(["gensecret", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and "sync_internal_secret_file" in out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = marker.load_secret(str(path))
    assert secret.decode() not in out
    # Never over an existing secret: rotation writes a new file and moves it into place.
    try:
        code = manage.main(["gensecret", "--file", str(path)])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and str(path) in err and "Traceback" not in err
    assert marker.load_secret(str(path)) == secret




def test_migration_0003_keeps_synced_regions_synced_and_goes_back(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coordinator import schema

    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    command.upgrade(manage.alembic_config(url), "0002")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO image_regions (image_id, region, state, attempts, bytes_done, "
                             "bytes_total, updated_at, synced_at) VALUES (:i, 'R', 'synced', 1, 0, 0, 5, 5)"),
                     {"i": IMAGE_ID})
    manage.db_sync(url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT copy_registered_at, metadata_applied_at FROM image_regions")).one()
        assert tuple(row) == (5.0, 5.0)  # synced before the upgrade: both facts held
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
    command.downgrade(manage.alembic_config(url), "0002")
    assert manage.schema_revisions(url)[0] == "0002"
    engine.dispose()


def test_migration_0004_follows_the_dispatch_query_and_goes_back(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coordinator import schema
    from coordinator.journal import Journal

    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    command.upgrade(manage.alembic_config(url), "0003")
    manage.db_sync(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
    journal = Journal(url)
    seen: list[tuple[str, tuple]] = []
    sa.event.listen(journal.engine, "before_cursor_execute",
                    lambda _c, _cur, stmt, params, *_a: seen.append((stmt, tuple(params))))
    journal.dispatchable("R", 0.0)
    statement, params = next(s for s in seen if "earlier" in s[0])
    with journal.engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params))
    journal.close()
    assert "ix_tasks_dispatch_seq" in plan and "TEMP B-TREE" not in plan  # walked in seq order, no sort
    command.downgrade(manage.alembic_config(url), "0003")
    assert manage.schema_revisions(url)[0] == "0003"
    engine.dispose()



def test_migration_0005_adds_the_leader_row_and_goes_back(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coordinator import schema

    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    command.upgrade(manage.alembic_config(url), "0004")
    manage.db_sync(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
        rows = conn.execute(sa.select(schema.leader)).all()
    # One row made by the migration: taking the lease is always an UPDATE, never a racing INSERT.
    assert [tuple(r) for r in rows] == [("journal", None, 0.0, 0)]
    command.downgrade(manage.alembic_config(url), "0004")
    assert manage.schema_revisions(url)[0] == "0004"
    with engine.connect() as conn:
        assert "leader" not in sa.inspect(conn).get_table_names()
    engine.dispose()


def test_migration_0006_adds_the_query_indexes_and_goes_back(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coordinator import schema

    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    command.upgrade(manage.alembic_config(url), "0005")
    manage.db_sync(url)
    engine = sa.create_engine(url)

    def indexes(conn: sa.Connection) -> set[str]:
        inspector = sa.inspect(conn)
        return {ix["name"] for table in ("tasks", "image_regions") for ix in inspector.get_indexes(table)}

    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
        assert {"ix_tasks_kind_event", "ix_image_regions_state"} <= indexes(conn)
    command.downgrade(manage.alembic_config(url), "0005")
    assert manage.schema_revisions(url)[0] == "0005"
    with engine.connect() as conn:
        assert not {"ix_tasks_kind_event", "ix_image_regions_state"} & indexes(conn)
    engine.dispose()


def test_migration_0008_keeps_every_row_with_partial_indexes_and_goes_back(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coordinator import schema

    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    command.upgrade(manage.alembic_config(url), "0007")
    engine = sa.create_engine(url)
    task = ("INSERT INTO tasks (task_id, seq, image_id, region, kind, state, attempt, agent_id, not_before, retries, "
            "bytes_done, bytes_total, payload, event_id, created_at, updated_at) VALUES "
            "(:t, :s, :i, :r, 'copy', :st, 1, :a, 0, 0, 0, 9, :p, :e, 5, 6)")
    pair = ("INSERT INTO image_regions (image_id, region, state, task_id, last_error, attempts, bytes_done, "
            "bytes_total, updated_at) VALUES (:i, :r, :st, :t, :err, 1, 0, 9, 6)")
    with engine.begin() as conn:
        conn.execute(sa.text(task), [dict(t="t1", s=1, i=IMAGE_ID, r="R1", st="pending", a=None, p=b"\x80", e="ev-1"),
                                     dict(t="t2", s=2, i=IMAGE_ID, r="R2", st="failed", a="agent-1", p=b"\x81",
                                          e="operator-sync-1")])
        conn.execute(sa.text(pair), [dict(i=IMAGE_ID, r="R1", st="pending", t="t1", err=None),
                                     dict(i=IMAGE_ID, r="R2", st="failed", t="t2", err="boom")])

    def rows(conn: sa.Connection) -> list[list[tuple]]:
        return [[tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2")]
                for table in ("tasks", "image_regions")]

    def entries(conn: sa.Connection, index: str) -> int:  # rows an index holds (dbstat: its cells)
        return conn.exec_driver_sql("SELECT sum(ncell) FROM dbstat WHERE name = ? AND pagetype = 'leaf'",
                                    (index,)).scalar()

    with engine.connect() as conn:
        before = rows(conn)
        assert [entries(conn, ix) for ix in ("ix_tasks_agent", "ix_tasks_kind_event", "ix_image_regions_state")] \
            == [2, 2, 2]
    manage.db_sync(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
        assert rows(conn) == before
        # Each partial index holds only the row its query looks for; image_regions has no rowid.
        assert [entries(conn, ix) for ix in ("ix_tasks_agent", "ix_tasks_kind_event", "ix_image_regions_state")] \
            == [1, 1, 1]
        assert "WITHOUT ROWID" in conn.exec_driver_sql(
            "SELECT sql FROM sqlite_schema WHERE name = 'image_regions'").scalar()
        assert conn.exec_driver_sql("SELECT count(*) FROM sqlite_schema WHERE tbl_name = 'image_regions' "
                                    "AND name LIKE 'sqlite_autoindex%'").scalar() == 0
    command.downgrade(manage.alembic_config(url), "0007")
    assert manage.schema_revisions(url)[0] == "0007"
    with engine.connect() as conn:
        assert rows(conn) == before
        assert [entries(conn, ix) for ix in ("ix_tasks_agent", "ix_tasks_kind_event", "ix_image_regions_state")] \
            == [2, 2, 2]
        assert "WITHOUT ROWID" not in conn.exec_driver_sql(
            "SELECT sql FROM sqlite_schema WHERE name = 'image_regions'").scalar()
    manage.db_sync(url)  # and up again
    assert manage.schema_revisions(url)[0] == "0008"
    engine.dispose()
