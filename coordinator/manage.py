"""``glance-sync-manage``: journal schema upgrades, key and secret generation, resync, purge, reconcile,
and the operator requests (cancel, resync --failed, sync: coordinator/manage_ops.py).

::

    glance-sync-manage [--config-file F] db_sync       # alembic upgrade head
    glance-sync-manage [--config-file F] db_version    # current and head revisions
    glance-sync-manage keygen --dir D --name N         # D/N.key and D/N.key_secret (0600)
    glance-sync-manage gensecret --file F              # the loop-guard secret (0600, new file only)
    glance-sync-manage [--config-file F] keygen --dir D --name N --role R [--region X] [--allowed-dir A]
                                                       # ... and N.key on the allow-list as role R
    glance-sync-manage [--config-file F] resync IMAGE_ID  # sync it again where it failed or is missing
    glance-sync-manage [--config-file F] resync --failed [--region R]   # every failed region, in bulk
    glance-sync-manage [--config-file F] cancel IMAGE_ID [--region R]   # stop its in-flight copies
    glance-sync-manage [--config-file F] sync IMAGE_ID --regions A,B    # copy it there now
    glance-sync-manage [--config-file F] purge [--days N] # forget history older than N days (30)
    glance-sync-manage [--config-file F] reconcile [--confirm-deletes]
                                        # show (and confirm) the deletions the reconciler holds
    glance-sync-manage [--config-file F] plan [IMAGE_ID] [--json]
                                        # what the next reconciler pass would do (planview.py)

Each command is an argparse sub-command with its own ``--help``; ``--help`` or no
argument lists them, one line each.  A bad argument is one line on stderr and exit
code 2 (``glancesync.cli.Parser``); only ``--config-file``/``--config-dir`` reach
oslo.config, which reads the files.

The migrations live in ``coordinator/migrations`` and run programmatically: no
alembic.ini, and the database URL (which may hold a password) reaches alembic only
in memory.  ``schema_revisions`` is also what the coordinator checks at start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from coordinator import journal, manage_ops, operator, planview
from glancesync import __version__, cli, config, keys, marker, roles, untrusted
from glancesync.exceptions import GlanceSyncError

PROG = "glance-sync-manage"
DEFAULT_PURGE_DAYS = 30
MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


EPILOG = """\
Every command reads --config-file (before or after the command word) when it needs the
journal or [curve]; keygen without --role and gensecret need none.
'%(prog)s COMMAND --help' shows a command's own options.

cancel, resync --failed and sync ask the running coordinator (an operator key under
CURVE; doc/operator-commands.md) and print its reply, as JSON with --json.

exit codes: 0 done; 1 the command failed (database, files, the coordinator refused or
did not answer, cancel found nothing to cancel) or, for db_version, the schema is not
at head; 2 a bad argument or configuration (one line on stderr).
"""


def build_parser() -> cli.Parser:
    """The command line: one sub-command per task, each with its own --help."""
    parser = cli.Parser(prog=PROG, description="The journal's schema, keys, secrets and repairs of the glance sync "
                        "coordinator.", epilog=EPILOG)
    cli.add_config_options(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)

    def command(name: str, summary: str, description: str = "") -> cli.Parser:
        found = sub.add_parser(name, help=summary, description=textwrap.fill(description or summary, 79))
        # --config-file also after the command word, as "db_version --config-file F" always worked.
        cli.add_config_options(found, prefix="sub_")
        return found

    command("db_sync", "create or upgrade the journal schema to the newest revision (alembic)")
    command("db_version", "print the journal's schema revision and the newest one (exit 1 when behind)")
    keygen = command("keygen", "make a CurveZMQ key pair, and with --role put its public key on the allow-list",
                     "Make NAME.key and NAME.key_secret (mode 0600) in DIR; with --role, also copy NAME.key "
                     "to the coordinator's allow-list as that role.")
    keygen.add_argument("--dir", required=True, help="directory for the key files (created 0700)")
    keygen.add_argument("--name", required=True, help="key name: NAME.key and NAME.key_secret")
    keygen.add_argument("--role", choices=roles.ROLES,
                        help="also put NAME.key on the coordinator's allow-list with this role")
    keygen.add_argument("--region", help="with --role agent: the region the agent serves (required)")
    keygen.add_argument("--allowed-dir", help="the allow-list directory (default: [curve] allowed_clients_dir)")
    gensecret = command("gensecret", "make the loop-guard secret shared by the coordinator and glance-api")
    gensecret.add_argument("--file", required=True,
                           help="new file for the secret shared by the coordinator and glance_proxy (mode 0600)")
    resync = command("resync", "sync an image again wherever it failed, is cancelled or missing; or, with "
                     "--failed, every failed region",
                     "With IMAGE_ID: journal an operator event for it; the running coordinator gives every "
                     "target region that failed, was cancelled or has no copy a new copy task (synced regions "
                     "are left alone). With --failed: ask the running coordinator to do so for every failed "
                     "(image, region), or those of the regions given with --region.")
    resync.add_argument("image_id", metavar="IMAGE_ID", nargs="?", help="id of the cascading image to sync again")
    resync.add_argument("--failed", action="store_true", help="every image with a failed region, in bulk")
    resync.add_argument("--region", action="append", default=[], metavar="R",
                        help="with --failed: only failed regions of this name (may be repeated)")
    manage_ops.add_client_options(resync)
    manage_ops.add_parsers(command)
    purge = command("purge", f"forget planned events and finished tasks older than --days (default "
                    f"{DEFAULT_PURGE_DAYS})")
    purge.add_argument("--days", type=int, default=DEFAULT_PURGE_DAYS,
                       help=f"keep the last DAYS days of history (default {DEFAULT_PURGE_DAYS}, at least 1)")
    reconcile = command("reconcile", "list the regional deletions the reconciler holds back, or confirm them",
                        "List the regional deletions the reconciler holds back (its safety limit), or "
                        "confirm them.")
    reconcile.add_argument("--confirm-deletes", action="store_true",
                           help="let the next reconciler pass delete the regional copies of the held images "
                           "that the cascading glance still answers 404 for")
    plan = command("plan", "print what the next reconciler pass would do, without doing it",
                   "List the cascading glance and every region with the coordinator's configuration, compare "
                   "them with the journal as a reconciler pass does, and print one line per finding: image, "
                   "region ('*' for the whole image), action (sync, delete, delete-held, copy, update, "
                   "operator, unwanted) and why. Prints nothing on a converged system. Nothing is changed.")
    plan.add_argument("image_id", metavar="IMAGE_ID", nargs="?", help="only the findings of this image")
    plan.add_argument("--json", action="store_true", help="print a JSON list of {image_id, region, action, reason}")
    return parser


def alembic_config(url: str, options: Mapping[str, Any] | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS_DIR)
    cfg.attributes["url"] = url
    cfg.attributes["options"] = options
    return cfg


def db_sync(url: str, options: Mapping[str, Any] | None = None) -> None:
    """Create or upgrade the journal schema to the newest revision (``options``: ``conf.database``)."""
    command.upgrade(alembic_config(url, options), "head")


def schema_revisions(url: str, options: Mapping[str, Any] | None = None) -> tuple[str | None, str | None]:
    """(current revision of the database, head revision of the code)."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = journal.make_engine(url, options)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return current, head


def _keygen(conf_args: list[str], ns: argparse.Namespace) -> int:
    target = None
    if ns.role or ns.region or ns.allowed_dir:
        allowed = ns.allowed_dir or _allowed_clients_dir(conf_args)
        try:
            if not ns.role:
                raise ValueError("--region and --allowed-dir go with --role")
            target = roles.key_path(allowed, ns.role, ns.name, ns.region)
        except ValueError as exc:
            config.fail(PROG, f"keygen: {exc}", code=2)
        if os.path.exists(target):
            config.fail(PROG, f"keygen: {target} exists; remove it first to replace that key", code=2)
    try:
        public, secret = keys.generate(ns.dir, ns.name)
        if target is not None:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            shutil.copyfile(public, target)
    except (OSError, GlanceSyncError) as exc:  # an unwritable or missing directory, a bad name
        config.fail(PROG, f"keygen failed: {exc}")
    print(f"public key: {public}")
    print(f"secret key: {secret}")
    if target is not None:
        where = f"region {ns.region}" if ns.region else ns.role
        print(f"allowed as {ns.role} ({where}): {target}; the coordinator picks it up within "
              "[curve] reload_interval, or at once on SIGHUP")
    return 0


def _gensecret(conf_args: list[str], ns: argparse.Namespace) -> int:
    try:
        marker.write_secret(ns.file)
    except OSError as exc:  # the file exists already, or its directory is missing or unwritable
        config.fail(PROG, f"gensecret failed: {ns.file}: {exc.strerror or exc}")
    print(f"secret written to {ns.file} (mode 0600); copy it to the glance-api host and the coordinator "
          "host and name it in [DEFAULT] sync_internal_secret_file")
    return 0


def _allowed_clients_dir(conf_args: list[str]) -> str:
    conf = config.load(conf_args, PROG, setup_logging=False)
    if not conf.curve.allowed_clients_dir:
        config.fail(PROG, "keygen: --role needs --allowed-dir or [curve] allowed_clients_dir in the config",
                    code=2)
    return str(conf.curve.allowed_clients_dir)


def resync(url: str, image_id: str, now: float, options: Mapping[str, Any] | None = None) -> str:
    """Journal an ``uploaded`` event for ``image_id``; the running coordinator plans it.

    The planner gives every target region that is failed or has no copy a new copy
    task, and leaves synced regions alone: the operator's way back after fixing what
    made a sync fail (a host key, a full disk, a region's glance).
    """
    # An operator's event: it also restarts a region whose copy was cancelled.
    body = operator.operator_event(image_id, None, PROG, prefix="resync")
    store = journal.Journal(url, options)
    try:
        store.record_event(body["event_id"], "uploaded", image_id, body, now, PROG)
    finally:
        store.close()
    return str(body["event_id"])


def _resync(conf_args: list[str], ns: argparse.Namespace) -> int:
    if ns.failed or ns.region:
        if not ns.failed or ns.image_id:
            config.fail(PROG, "resync: either IMAGE_ID, or --failed [--region R]", code=2)
        return manage_ops.resync_failed(conf_args, ns)
    if ns.image_id is None:
        config.fail(PROG, "resync: IMAGE_ID or --failed is required", code=2)
    if not untrusted.is_image_id(ns.image_id):
        config.fail(PROG, f"resync: {untrusted.quote(ns.image_id)} is not an image id: expected "
                    f"{untrusted.IMAGE_ID_FORM}", code=2)
    conf = config.load(conf_args, PROG, setup_logging=False)
    try:
        event_id = resync(conf.database.connection, ns.image_id, time.time(), conf.database)
    except Exception as exc:  # any database error: one line, exit 1
        config.fail(PROG, f"resync failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    if ns.json:
        print(json.dumps({"image_id": ns.image_id, "event_id": event_id}))
        return 0
    print(f"resync of image {ns.image_id} journaled as event {event_id}; the coordinator plans it next")
    return 0


def _purge(conf_args: list[str], ns: argparse.Namespace) -> int:
    if ns.days < 1:
        config.fail(PROG, f"purge: --days must be at least 1, not {ns.days}", code=2)
    conf = config.load(conf_args, PROG, setup_logging=False)
    store = None
    try:
        store = journal.Journal(conf.database.connection, conf.database)
        gone_events, gone_tasks = store.purge(time.time() - ns.days * 86400)
    except Exception as exc:  # any database error: one line, exit 1
        config.fail(PROG, f"purge failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    finally:
        if store is not None:
            store.close()
    print(f"purged {gone_events} planned event(s) and {gone_tasks} finished task(s) older than {ns.days} day(s)")
    return 0


def _reconcile(conf_args: list[str], ns: argparse.Namespace) -> int:
    conf = config.load(conf_args, PROG, setup_logging=False)
    store = None
    try:
        store = journal.Journal(conf.database.connection, conf.database)
        confirmed = store.confirm_held_deletes(time.time()) if ns.confirm_deletes else 0
        held = store.held_deletes()
    except Exception as exc:  # any database error: one line, exit 1
        config.fail(PROG, f"reconcile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    finally:
        if store is not None:
            store.close()
    if not held:
        print("no deletions held")
        return 0
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))  # noqa: E731
    print(f"deletions held: {len(held)} image(s)")
    for h in held:
        state = f"confirmed {stamp(h.confirmed_at)}" if h.confirmed_at is not None else "waiting for confirmation"
        print(f"  {h.image_id}  held since {stamp(h.held_at)}  {state}")
    if ns.confirm_deletes:
        print(f"confirmed {confirmed} held deletion(s): the next reconciler pass deletes the regional copies "
              "of those the cascading glance still answers 404 for")
    elif any(h.confirmed_at is None for h in held):
        print("check the cascading glance first (endpoint, database, the coordinator's admin role), then run "
              f"'{PROG} reconcile --confirm-deletes'")
    return 0


def _plan(conf_args: list[str], ns: argparse.Namespace) -> int:
    if ns.image_id is not None and not untrusted.is_image_id(ns.image_id):
        config.fail(PROG, f"plan: {untrusted.quote(ns.image_id)} is not an image id: expected "
                    f"{untrusted.IMAGE_ID_FORM}", code=2)
    conf = config.load(conf_args, PROG, setup_logging=False)
    try:
        out = planview.run(conf, ns.image_id, ns.json)
    except Exception as exc:  # a glance that does not answer, a database error: one line, exit 1
        config.fail(PROG, f"plan failed: {type(exc).__name__}: {untrusted.printable(str(exc).splitlines()[0][:300])}")
    if out:
        print(out)
    return 0


def _schema(conf_args: list[str], ns: argparse.Namespace) -> int:
    """db_sync and db_version: (upgrade and) print the schema revisions."""
    conf = config.load(conf_args, PROG, setup_logging=False)
    url = conf.database.connection
    try:
        if ns.command == "db_sync":
            db_sync(url, conf.database)
        current, head = schema_revisions(url, conf.database)
    except Exception as exc:  # any database or migration error: one line, exit 1
        config.fail(PROG, f"{ns.command} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    print(f"journal schema: current={current} head={head}")
    return 0 if ns.command == "db_sync" or current == head else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point: the exit code, or SystemExit from a command's one-line failure."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args:
        # Nothing asked: what there is to ask, and a usage error's code for a script.
        parser.print_help()
        return 2
    try:
        ns = parser.parse_args(args)
    except cli.UsageError as exc:
        config.fail(PROG, str(exc), code=2)
    conf_args = cli.config_argv((ns.config_file or []) + (ns.sub_config_file or []),
                                (ns.config_dir or []) + (ns.sub_config_dir or []))
    handlers = {"db_sync": _schema, "db_version": _schema, "keygen": _keygen, "gensecret": _gensecret,
                "resync": _resync, "purge": _purge, "reconcile": _reconcile, "cancel": manage_ops.cancel,
                "sync": manage_ops.sync, "plan": _plan}
    return handlers[ns.command](conf_args, ns)


if __name__ == "__main__":
    sys.exit(main())
