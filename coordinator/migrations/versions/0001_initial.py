"""Initial journal schema: events, tasks, image_regions.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

The tables exactly as they were at this revision (frozen here when revision 0002
changed coordinator/schema.py): a migration must create the same schema whatever
schema.py says today.  Explicit operations, portable to SQLite, PostgreSQL and
MariaDB/MySQL: times as doubles, blobs as MEDIUMBLOB and InnoDB tables with a binary
utf8mb4 collation on MySQL (see coordinator/schema.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BLOB = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("image_id", sa.String(64), nullable=False),
        sa.Column("payload", BLOB, nullable=False),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("planned", sa.Boolean, nullable=False, default=False),
        sa.Column("planned_at", sa.Double, nullable=True),
        sa.Column("plan_error", sa.Text, nullable=True),
        **MYSQL_TABLE,
    )
    op.create_index("ix_events_planned", "events", ["planned", "received_at"])
    op.create_table(
        "tasks",
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
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double, nullable=True),
        sa.Column("finished_at", sa.Double, nullable=True),
        **MYSQL_TABLE,
    )
    op.create_index("ix_tasks_dispatch", "tasks", ["region", "state", "not_before"])
    op.create_index("ix_tasks_image_region", "tasks", ["image_id", "region", "seq"])
    op.create_index("ix_tasks_agent", "tasks", ["agent_id", "state"])
    op.create_table(
        "image_regions",
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
        **MYSQL_TABLE,
    )
    op.create_index("ix_image_regions_region_state", "image_regions", ["region", "state"])


def downgrade() -> None:
    op.drop_table("image_regions")
    op.drop_table("tasks")
    op.drop_table("events")
