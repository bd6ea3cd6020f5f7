"""The journal's tables, as SQLAlchemy Core metadata shared by journal.py and the migrations.

Seven tables:

``events``
    every image event received, keyed by the sender's event id so that a resend
    after a lost ack is recognised; ``planned`` flips once its tasks exist.
    ``not_before`` is when an unplanned event is due for (another) fetch of its
    image and ``fetch_tries`` how many fetches failed: planning reads due events
    only, so events in backoff never block ready ones, and a restart keeps the backoff.
``tasks``
    one unit of work for one (image, region): copy, update or delete.  ``seq``
    orders the tasks of an (image, region); they run one at a time in that order.
    ``attempt`` grows on every hand-out so that reports of an old attempt can be
    told apart and ignored.  A task in ``registering`` whose registration failed
    waits for ``not_before``; ``register_retries`` and ``register_failing_since``
    drive the registration's own backoff and horizon (doc/states.md).
``image_regions``
    the state of one image in one region, as status shows it; ``task_id`` is the
    task that currently drives it.  Two separate facts: ``copy_registered_at``
    (a copy was verified and its location registered) and ``metadata_applied_at``
    (the newest planned metadata is in the regional image); ``synced`` needs both.
``held_deletes``
    images whose regional copies a reconciler pass would have deleted but held
    back (the pass was over the safety limit); ``confirmed_at`` is set by
    ``glance-sync-manage reconcile --confirm-deletes``.
``image_records``
    per image, the newest glance ``updated_at`` an event was planned from (an
    older record fetched late is never applied over it) and when an event was
    first planned from an *active* record (the image is "settled", status.py).
``reconciler``
    one row: how many reconciler passes have run (the generation in the ids of
    their synthetic events) and when the last one finished.
``leader``
    one row (``name = 'journal'``): the lease of the active coordinator of a pair
    (``holder``, ``expires``) and ``generation``, which grows with every takeover and
    fences the writes of a former holder (coordinator/journal/leader.py).

Times are float seconds since the epoch (wall clock: they must survive a restart),
stored as doubles.
Blobs are msgpack.  Any change here needs a new migration in migrations/versions/.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

# Portable on SQLite, PostgreSQL and MariaDB/MySQL (doc/database.md):
# - times are sa.Double: MySQL's FLOAT is single precision, steps of 128 s at today's epoch;
# - blobs hold a whole image record: MEDIUMBLOB (16 MiB) on MySQL, whose BLOB stops at 64 KiB;
# - MySQL tables are InnoDB with a binary utf8mb4 collation, so that ids and region names
#   compare byte for byte as on the other databases (the server's default collation
#   would take "RegionOne" and "regionone" for the same key).
BLOB = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

# The predicates of the partial indexes (migration 0008), written as the queries that use
# them write theirs: SQLite takes a partial index only for a query with the same term.
# The event ids of an operator's sync (ASKED_PREFIX of coordinator/journal/views.py); SQLite's
# query matches them with GLOB (case-sensitive, as the servers' LIKE is here).
ASKED_SQL = "event_id LIKE 'operator-%'"
ASKED_SQLITE = "event_id GLOB 'operator-*'"
FAILED_SQL = "state = 'failed'"

events = sa.Table(
    "events",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("payload", BLOB, nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("planned", sa.Boolean, nullable=False, default=False),
    sa.Column("planned_at", sa.Double, nullable=True),
    sa.Column("plan_error", sa.Text, nullable=True),
    # Who sent it: the peer of the event socket, or the coordinator's own side
    # (reconciler, glance-sync-manage). Named in the log when a delete is refused.
    sa.Column("sender", sa.String(255), nullable=True),
    sa.Column("not_before", sa.Double, nullable=False, default=0.0, server_default="0"),
    sa.Column("fetch_tries", sa.Integer, nullable=False, default=0, server_default="0"),
    # The unplanned events in due order (Journal.unplanned_events), read without a sort;
    # not_before in it skips the deferred ones without their rows (migration 0007).
    sa.Index("ix_events_order", "planned", "received_at", "event_id", "not_before"),
    sa.Index("ix_events_image_kind", "image_id", "kind"),
    **MYSQL_TABLE,
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False, unique=True),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("region", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("agent_id", sa.String(255), nullable=True),
    sa.Column("lease_expires", sa.Double, nullable=True),
    sa.Column("not_before", sa.Double, nullable=False, default=0.0),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_total", sa.BigInteger, nullable=False, default=0),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("payload", BLOB, nullable=False),
    # The agent's ``done`` body, kept so that a registration cut short by a
    # coordinator restart can be redone without asking the agent again.
    sa.Column("report", BLOB, nullable=True),
    sa.Column("register_retries", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("register_failing_since", sa.Double, nullable=True),
    sa.Column("event_id", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double, nullable=True),
    sa.Column("finished_at", sa.Double, nullable=True),
    # Dispatch: a region's pending tasks in seq order, up to the agents' credits.
    sa.Index("ix_tasks_dispatch_seq", "region", "state", "seq"),
    sa.Index("ix_tasks_image_region", "image_id", "region", "seq"),
    # Only the tasks an agent was given: a planned task has none (migration 0008).
    sa.Index("ix_tasks_agent", "agent_id", "state", sqlite_where=sa.text("agent_id IS NOT NULL"),
             postgresql_where=sa.text("agent_id IS NOT NULL")),
    # Registrations due for another try, read every loop iteration.
    sa.Index("ix_tasks_state_due", "state", "not_before"),
    # The copies an operator asked for (Journal.asked_regions: event_id LIKE 'operator-%');
    # the pattern opclass lets PostgreSQL range-scan a prefix whatever its collation.  Only
    # those rows on SQLite and PostgreSQL, with the query's own pattern (migration 0008);
    # MySQL has no partial index and keeps every row.
    sa.Index("ix_tasks_kind_event", "kind", "event_id", postgresql_ops={"event_id": "varchar_pattern_ops"},
             sqlite_where=sa.text(ASKED_SQLITE), postgresql_where=sa.text(ASKED_SQL)),
    **MYSQL_TABLE,
)

image_regions = sa.Table(
    "image_regions",
    metadata,
    sa.Column("image_id", sa.String(64), primary_key=True),
    sa.Column("region", sa.String(255), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("task_id", sa.String(64), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_total", sa.BigInteger, nullable=False, default=0),
    # The os_hash_value of the verified regional copy, so a repeated upload event
    # for the same bytes makes no new copy.
    sa.Column("os_hash_value", sa.String(256), nullable=True),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("synced_at", sa.Double, nullable=True),
    sa.Column("copy_registered_at", sa.Double, nullable=True),
    sa.Column("metadata_applied_at", sa.Double, nullable=True),
    # No (region, state) index: only the status counters read once at start grouped by them, a
    # scan of the table; on SQLite it held 70 bytes per row (migration 0008).
    # Failed pairs of every region (Journal.failed_regions, resync --failed): only those on
    # SQLite and PostgreSQL (migration 0008).
    sa.Index("ix_image_regions_state", "state", sqlite_where=sa.text(FAILED_SQL),
             postgresql_where=sa.text(FAILED_SQL)),
    # On SQLite the rows live in the primary key's b-tree: no rowid, no second copy of
    # (image_id, region) in an index of its own (migration 0008).
    sqlite_with_rowid=False,
    **MYSQL_TABLE,
)

image_records = sa.Table(
    "image_records",
    metadata,
    sa.Column("image_id", sa.String(64), primary_key=True),
    # The cascading record's updated_at, as seconds since the epoch.
    sa.Column("updated_at", sa.Double, nullable=True),
    sa.Column("active_at", sa.Double, nullable=True),
    **MYSQL_TABLE,
)

held_deletes = sa.Table(
    "held_deletes",
    metadata,
    sa.Column("image_id", sa.String(64), primary_key=True),
    sa.Column("held_at", sa.Double, nullable=False),
    sa.Column("confirmed_at", sa.Double, nullable=True),
    **MYSQL_TABLE,
)

reconciler_state = sa.Table(
    "reconciler",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("passes", sa.Integer, nullable=False, default=0),
    sa.Column("last_pass_at", sa.Double, nullable=True),
    **MYSQL_TABLE,
)

leader = sa.Table(
    "leader",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # The coordinator holding the lease: host name and a random suffix made at start.
    sa.Column("holder", sa.String(255), nullable=True),
    # Seconds since the epoch (the holder's clock) after which another may take it.
    sa.Column("expires", sa.Double, nullable=False, default=0.0, server_default="0"),
    sa.Column("generation", sa.Integer, nullable=False, default=0, server_default="0"),
    **MYSQL_TABLE,
)
