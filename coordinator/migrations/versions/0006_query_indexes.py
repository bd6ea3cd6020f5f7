"""Indexes for the journal queries that had none.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

- ``ix_tasks_kind_event`` (kind, event_id): ``Journal.asked_regions`` without an image
  (every reconciler pass) looks for the copies an operator asked for, ``kind = 'copy'
  AND event_id LIKE 'operator-%'``; it read the whole tasks table.  On PostgreSQL
  ``event_id`` uses ``varchar_pattern_ops``, so that the prefix match is a range of the
  index whatever the database's collation (MySQL's binary collation and SQLite's
  ``kind`` equality need nothing more).
- ``ix_image_regions_state`` (state): ``Journal.failed_regions`` without a region (the
  operator's ``resync --failed``) looks for the failed rows among every (image, region).
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_kind_event", "tasks", ["kind", "event_id"],
                    postgresql_ops={"event_id": "varchar_pattern_ops"})
    op.create_index("ix_image_regions_state", "image_regions", ["state"])


def downgrade() -> None:
    op.drop_index("ix_image_regions_state", table_name="image_regions")
    op.drop_index("ix_tasks_kind_event", table_name="tasks")
