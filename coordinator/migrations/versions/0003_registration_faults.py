"""Registration retried apart from the transfer, separate copy / metadata facts, due-ordered planning.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

- ``events.not_before`` / ``events.fetch_tries`` and ``ix_events_due``: unplanned
  events are read due-first, so events in backoff never block ready ones, and the
  backoff survives a restart.
- ``tasks.register_retries`` / ``tasks.register_failing_since``: a registration that
  fails keeps its verified copy and is retried on its own backoff and horizon;
  ``ix_tasks_state_due`` finds the registrations due.
- ``image_regions.copy_registered_at`` / ``image_regions.metadata_applied_at``: the
  two facts ``synced`` needs.  Existing synced rows had both, so they get their
  ``synced_at``.
- ``image_records``: per image, the newest glance ``updated_at`` planned from and
  when it was first planned from an active record.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# As in 0001: InnoDB and a binary utf8mb4 collation on MySQL.
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("not_before", sa.Double, nullable=False, server_default="0"))
        batch.add_column(sa.Column("fetch_tries", sa.Integer, nullable=False, server_default="0"))
        batch.create_index("ix_events_due", ["planned", "not_before"])
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("register_retries", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("register_failing_since", sa.Double, nullable=True))
        batch.create_index("ix_tasks_state_due", ["state", "not_before"])
    with op.batch_alter_table("image_regions") as batch:
        batch.add_column(sa.Column("copy_registered_at", sa.Double, nullable=True))
        batch.add_column(sa.Column("metadata_applied_at", sa.Double, nullable=True))
    op.execute("UPDATE image_regions SET copy_registered_at = synced_at, metadata_applied_at = synced_at "
               "WHERE state = 'synced'")
    op.create_table(
        "image_records",
        sa.Column("image_id", sa.String(64), primary_key=True),
        sa.Column("updated_at", sa.Double, nullable=True),
        sa.Column("active_at", sa.Double, nullable=True),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    op.drop_table("image_records")
    with op.batch_alter_table("image_regions") as batch:
        batch.drop_column("metadata_applied_at")
        batch.drop_column("copy_registered_at")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_state_due")
        batch.drop_column("register_failing_since")
        batch.drop_column("register_retries")
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_due")
        batch.drop_column("fetch_tries")
        batch.drop_column("not_before")
