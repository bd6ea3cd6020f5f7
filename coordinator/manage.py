"""``glance-sync-manage``: journal schema upgrades, CurveZMQ key generation, resync, purge.

::

    glance-sync-manage [--config-file F] db_sync       # alembic upgrade head
    glance-sync-manage [--config-file F] db_version    # current and head revisions
    glance-sync-manage keygen --dir D --name N         # D/N.key and D/N.key_secret (0600)
    glance-sync-manage [--config-file F] resync IMAGE_ID  # sync it again where it failed or is missing
    glance-sync-manage [--config-file F] purge [--days N] # forget history older than N days (30)

The migrations live in ``coordinator/migrations`` and run programmatically: no
alembic.ini, and the database URL (which may hold a password) reaches alembic only
in memory.  ``schema_revisions`` is also what the coordinator checks at start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Sequence

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from coordinator import journal, reconciler
from glancesync import config, keys, untrusted
from glancesync.exceptions import GlanceSyncError

PROG = "glance-sync-manage"
COMMANDS = ("db_sync", "db_version", "keygen", "resync", "purge")
DEFAULT_PURGE_DAYS = 30
MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS_DIR)
    cfg.attributes["url"] = url
    return cfg


def db_sync(url: str) -> None:
    """Create or upgrade the journal schema to the newest revision."""
    command.upgrade(alembic_config(url), "head")


def schema_revisions(url: str) -> tuple[str | None, str | None]:
    """(current revision of the database, head revision of the code)."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = journal.make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return current, head


def _split(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(command, oslo.config arguments, command arguments): the command word splits them."""
    for index, token in enumerate(argv):
        if token in COMMANDS:
            return token, argv[:index], argv[index + 1:]
    return None, argv, []


def _keygen(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} keygen")
    parser.add_argument("--dir", required=True, help="directory for the key files (created 0700)")
    parser.add_argument("--name", required=True, help="key name: NAME.key and NAME.key_secret")
    ns = parser.parse_args(args)
    try:
        public, secret = keys.generate(ns.dir, ns.name)
    except (OSError, GlanceSyncError) as exc:  # an unwritable or missing directory, a bad name
        config.fail(PROG, f"keygen failed: {exc}")
    print(f"public key: {public}")
    print(f"secret key: {secret}")
    return 0


def resync(url: str, image_id: str, now: float) -> str:
    """Journal an ``uploaded`` event for ``image_id``; the running coordinator plans it.

    The planner gives every target region that is failed or has no copy a new copy
    task, and leaves synced regions alone: the operator's way back after fixing what
    made a sync fail (a host key, a full disk, a region's glance).
    """
    event_id = f"resync-{uuid.uuid4().hex}"
    body = reconciler.synthetic_event(event_id, "uploaded", image_id, PROG)
    store = journal.Journal(url)
    try:
        store.record_event(event_id, "uploaded", image_id, body, now)
    finally:
        store.close()
    return event_id


def _resync(conf_args: list[str], args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} resync")
    parser.add_argument("image_id", help="id of the cascading image to sync again")
    ns = parser.parse_args(args)
    if not untrusted.is_image_id(ns.image_id):
        config.fail(PROG, f"resync: {untrusted.quote(ns.image_id)} is not an image id: expected "
                    f"{untrusted.IMAGE_ID_FORM}", code=2)
    conf = config.load(conf_args, PROG, setup_logging=False)
    try:
        event_id = resync(conf.database.connection, ns.image_id, time.time())
    except Exception as exc:  # any database error: one line, exit 1
        config.fail(PROG, f"resync failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    print(f"resync of image {ns.image_id} journaled as event {event_id}; the coordinator plans it next")
    return 0


def _purge(conf_args: list[str], args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} purge")
    parser.add_argument("--days", type=int, default=DEFAULT_PURGE_DAYS,
                        help=f"keep the last DAYS days of history (default {DEFAULT_PURGE_DAYS}, at least 1)")
    ns = parser.parse_args(args)
    if ns.days < 1:
        config.fail(PROG, f"purge: --days must be at least 1, not {ns.days}", code=2)
    conf = config.load(conf_args, PROG, setup_logging=False)
    store = None
    try:
        store = journal.Journal(conf.database.connection)
        gone_events, gone_tasks = store.purge(time.time() - ns.days * 86400)
    except Exception as exc:  # any database error: one line, exit 1
        config.fail(PROG, f"purge failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    finally:
        if store is not None:
            store.close()
    print(f"purged {gone_events} planned event(s) and {gone_tasks} finished task(s) older than {ns.days} day(s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd, conf_args, cmd_args = _split(args)
    if cmd is None:
        config.fail(PROG, f"a command is required: {', '.join(COMMANDS)}", code=2)
    if cmd == "keygen":
        return _keygen(cmd_args)
    if cmd == "resync":
        return _resync(conf_args, cmd_args)
    if cmd == "purge":
        return _purge(conf_args, cmd_args)
    conf = config.load(conf_args + cmd_args, PROG, setup_logging=False)
    url = conf.database.connection
    try:
        if cmd == "db_sync":
            db_sync(url)
        current, head = schema_revisions(url)
    except Exception as exc:  # any database or migration error: one line, exit 1
        config.fail(PROG, f"{cmd} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    print(f"journal schema: current={current} head={head}")
    return 0 if cmd == "db_sync" or current == head else 1


if __name__ == "__main__":
    sys.exit(main())
