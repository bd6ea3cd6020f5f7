"""Delete guard: who sent each event, deletions the reconciler holds back, its pass counter.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

- ``events.sender``: the peer (or the coordinator's own side) that sent the event,
  logged when a ``deleted`` event is refused; ``ix_events_image_kind`` serves the
  "is there a confirmed delete / an unplanned event of this kind" lookups.
- ``held_deletes``: images whose regional copies a reconciler pass held back
  (over ``reconcile_max_deletes`` / ``reconcile_max_delete_percent``), with the
  operator's confirmation.
- ``reconciler``: one row, the number of passes run (the generation of synthetic
  event ids) and when the last one finished.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# As in 0001: InnoDB and a binary utf8mb4 collation on MySQL.
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("sender", sa.String(255), nullable=True))
        batch.create_index("ix_events_image_kind", ["image_id", "kind"])
    op.create_table(
        "held_deletes",
        sa.Column("image_id", sa.String(64), primary_key=True),
        sa.Column("held_at", sa.Double, nullable=False),
        sa.Column("confirmed_at", sa.Double, nullable=True),
        **MYSQL_TABLE,
    )
    op.create_table(
        "reconciler",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("passes", sa.Integer, nullable=False),
        sa.Column("last_pass_at", sa.Double, nullable=True),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    op.drop_table("reconciler")
    op.drop_table("held_deletes")
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_image_kind")
        batch.drop_column("sender")
