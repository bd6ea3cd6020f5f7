"""The leader lease of an active/passive coordinator pair.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

- ``leader``: one row, ``name = 'journal'``, created here so that taking the lease is
  always an UPDATE (a compare-and-set) and two coordinators never race to insert it.
  ``holder`` is the coordinator holding it, ``expires`` when another may take it,
  ``generation`` grows with every takeover (doc/database.md, "The active/passive pair").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As in 0001: InnoDB and a binary utf8mb4 collation on MySQL.
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    table = op.create_table(
        "leader",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=True),
        sa.Column("expires", sa.Double, nullable=False, server_default="0"),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        **MYSQL_TABLE,
    )
    op.bulk_insert(table, [{"name": "journal", "holder": None, "expires": 0.0, "generation": 0}])


def downgrade() -> None:
    op.drop_table("leader")
