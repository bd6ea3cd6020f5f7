"""Indexes that follow the loop's queries.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

- ``ix_tasks_dispatch_seq`` (region, state, seq) replaces ``ix_tasks_dispatch``
  (region, state, not_before): dispatch asks, per region, for the first pending
  tasks in ``seq`` order up to the agents' credits; with ``seq`` in the index the
  database walks them in order and stops at the limit, instead of sorting every
  pending task of the region on every loop iteration.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tasks_dispatch", table_name="tasks")
    op.create_index("ix_tasks_dispatch_seq", "tasks", ["region", "state", "seq"])


def downgrade() -> None:
    op.drop_index("ix_tasks_dispatch_seq", table_name="tasks")
    op.create_index("ix_tasks_dispatch", "tasks", ["region", "state", "not_before"])
