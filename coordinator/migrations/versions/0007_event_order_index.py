"""The unplanned events read in due order without sorting them all.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

- ``ix_events_order`` (planned, received_at, event_id, not_before) replaces
  ``ix_events_planned`` (planned, received_at) and ``ix_events_due`` (planned,
  not_before).  ``Journal.unplanned_events`` asks for the first due unplanned events,
  ``ORDER BY received_at, event_id``; with ``ix_events_due`` there the databases found
  the due rows by ``not_before`` and sorted every one of them for each read (0.69 s at
  95,000 waiting events after a first reconciler pass on SQLite, several times a
  second while planning).  The new index gives the rows in that order, with
  ``not_before`` in it so that deferred events are skipped without reading their rows,
  and the read stops at its limit.  Its prefix also serves what ``ix_events_planned``
  did (the retention purge of planned events by ``received_at``, the count of the
  unplanned ones); nothing else read ``ix_events_due``.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_order", "events", ["planned", "received_at", "event_id", "not_before"])
    op.drop_index("ix_events_due", table_name="events")
    op.drop_index("ix_events_planned", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_planned", "events", ["planned", "received_at"])
    op.create_index("ix_events_due", "events", ["planned", "not_before"])
    op.drop_index("ix_events_order", table_name="events")
