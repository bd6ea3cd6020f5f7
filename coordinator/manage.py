"""``glance-sync-manage``: journal schema upgrades and CurveZMQ key generation.

::

    glance-sync-manage [--config-file F] db_sync       # alembic upgrade head
    glance-sync-manage [--config-file F] db_version    # current and head revisions
    glance-sync-manage keygen --dir D --name N         # D/N.key and D/N.key_secret (0600)

The migrations live in ``coordinator/migrations`` and run programmatically: no
alembic.ini, and the database URL (which may hold a password) reaches alembic only
in memory.  ``schema_revisions`` is also what the coordinator checks at start.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from coordinator import journal
from glancesync import config, keys
from glancesync.exceptions import GlanceSyncError

PROG = "glance-sync-manage"
COMMANDS = ("db_sync", "db_version", "keygen")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd, conf_args, cmd_args = _split(args)
    if cmd is None:
        config.fail(PROG, f"a command is required: {', '.join(COMMANDS)}", code=2)
    if cmd == "keygen":
        return _keygen(cmd_args)
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
