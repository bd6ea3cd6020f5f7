"""A smaller journal per (image, region): partial indexes, image_regions without a rowid on SQLite.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

An image planned for 500 regions writes 500 task rows and 500 (image, region) rows;
at 100,000 images that was about 870 bytes per (image, region) on SQLite, most of it
in indexes holding rows no query of theirs looks for (bench/scale.py prints the
breakdown per table and index):

- ``ix_tasks_kind_event`` (kind, event_id) serves only ``Journal.asked_regions``, the
  copies an operator asked for (``event_id LIKE 'operator-%'``, GLOB on SQLite), yet
  held every task's event id.  It now holds those rows only, its predicate the
  query's own pattern (SQLite takes a partial index only for a query with that term).
- ``ix_tasks_agent`` (agent_id, state): a planned task has no agent; ``WHERE agent_id
  IS NOT NULL`` (every query of it names an agent, which implies the predicate).
- ``ix_image_regions_state`` (state) serves ``Journal.failed_regions``: ``WHERE state =
  'failed'``.
- On SQLite ``image_regions`` becomes a ``WITHOUT ROWID`` table: its rows are kept in
  the primary key's b-tree instead of a rowid table plus an index repeating (image_id,
  region).  The table is copied into the new one (alembic's batch mode), rows unchanged.
- ``ix_image_regions_region_state`` (region, state) goes, on every database: only the
  status counters read at start (rows per region and state, then kept in memory) grouped
  by it, now a scan of the table once; without a rowid it would have carried the whole
  key (70 bytes per row at 500 regions per image).

PostgreSQL takes the same partial indexes; MySQL/MariaDB has none and keeps the full
ones (its tables are clustered on their primary key already).  Downgrade puts the
full indexes and the rowid table back.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ASKED_SQL = "event_id LIKE 'operator-%'"
ASKED_SQLITE = "event_id GLOB 'operator-*'"
FAILED_SQL = "state = 'failed'"
AGENT_SQL = "agent_id IS NOT NULL"


def _indexes(partial: bool) -> None:
    """The three indexes, partial (upgrade) or whole (downgrade)."""
    def where(sql: str, sqlite_sql: str | None = None) -> dict[str, object]:
        if not partial:
            return {}
        return {"sqlite_where": sa.text(sqlite_sql or sql), "postgresql_where": sa.text(sql)}

    op.create_index("ix_tasks_agent", "tasks", ["agent_id", "state"], **where(AGENT_SQL))
    op.create_index("ix_tasks_kind_event", "tasks", ["kind", "event_id"],
                    postgresql_ops={"event_id": "varchar_pattern_ops"}, **where(ASKED_SQL, ASKED_SQLITE))
    op.create_index("ix_image_regions_state", "image_regions", ["state"], **where(FAILED_SQL))


def _drop_indexes() -> None:
    op.drop_index("ix_image_regions_state", table_name="image_regions")
    op.drop_index("ix_tasks_kind_event", table_name="tasks")
    op.drop_index("ix_tasks_agent", table_name="tasks")


def _image_regions_rowid(rowid: bool) -> None:
    """SQLite: copy image_regions into a table with (or without) a rowid."""
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("image_regions", recreate="always",
                              table_kwargs={"sqlite_with_rowid": rowid}):
        pass


def upgrade() -> None:
    _drop_indexes()
    op.drop_index("ix_image_regions_region_state", table_name="image_regions")
    _image_regions_rowid(False)
    _indexes(partial=True)


def downgrade() -> None:
    _drop_indexes()
    _image_regions_rowid(True)
    _indexes(partial=False)
    op.create_index("ix_image_regions_region_state", "image_regions", ["region", "state"])
