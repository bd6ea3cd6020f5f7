"""Initial journal schema: events, tasks, image_regions.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

The tables exactly as they were at this revision (frozen here when revision 0002
changed coordinator/schema.py): a migration must create the same schema whatever
schema.py says today.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("planned", sa.Boolean, nullable=False, default=False),
    sa.Column("planned_at", sa.Float, nullable=True),
    sa.Column("plan_error", sa.Text, nullable=True),
    sa.Index("ix_events_planned", "planned", "received_at"),
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
    sa.Column("lease_expires", sa.Float, nullable=True),
    sa.Column("not_before", sa.Float, nullable=False, default=0.0),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_total", sa.BigInteger, nullable=False, default=0),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    # The agent's ``done`` body, kept so that a registration cut short by a
    # coordinator restart can be redone without asking the agent again.
    sa.Column("report", sa.LargeBinary, nullable=True),
    sa.Column("event_id", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Index("ix_tasks_dispatch", "region", "state", "not_before"),
    sa.Index("ix_tasks_image_region", "image_id", "region", "seq"),
    sa.Index("ix_tasks_agent", "agent_id", "state"),
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
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("synced_at", sa.Float, nullable=True),
    sa.Index("ix_image_regions_region_state", "region", "state"),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
