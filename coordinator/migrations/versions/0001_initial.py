"""Initial journal schema: events, tasks, image_regions.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

It creates the tables of ``coordinator.schema`` as they are at this revision.  When
schema.py changes, freeze this file first (copy the table definitions in here) and
write the change as revision 0002.
"""

from __future__ import annotations

from alembic import op

from coordinator import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.metadata.create_all(op.get_bind())


def downgrade() -> None:
    schema.metadata.drop_all(op.get_bind())
