"""Journal, retention: forgetting what no longer matters, so the journal stops growing.

Only history goes: events already planned and tasks in a final state, received or
finished before a cut-off, and never the task an (image, region) still points at
(status shows its kind and agent), nor an event a task still points at (its row holds
the task's image record, coordinator/journal/images.py).  ``image_regions`` rows stay: they are the sync
state itself, and the reconciler's memory of which images it already knows.  An
event replayed after its row was purged is planned again, which is harmless: the
planner leaves synced regions alone.
"""

from __future__ import annotations

import sqlalchemy as sa

from coordinator.journal.engine import retry_on_deadlock
from coordinator.schema import events, image_regions, tasks
from glancesync.states import FINAL_STATES


class RetentionMixin:
    @retry_on_deadlock
    def purge(self, before: float) -> tuple[int, int]:
        """Delete planned events received and final tasks finished before ``before``;
        (events, tasks) deleted."""
        current = sa.select(image_regions.c.task_id).where(image_regions.c.task_id.is_not(None))
        with self.transaction() as conn:
            gone_tasks = conn.execute(tasks.delete().where(
                tasks.c.state.in_([s.value for s in FINAL_STATES]),
                sa.func.coalesce(tasks.c.finished_at, tasks.c.updated_at) < before,
                tasks.c.task_id.not_in(current),
            )).rowcount
            # An event a task still points at holds that task's image record (journal/images.py).
            pointed = sa.select(tasks.c.event_id).where(tasks.c.event_id.is_not(None))
            gone_events = conn.execute(events.delete().where(
                events.c.planned.is_(True), events.c.received_at < before, events.c.event_id.not_in(pointed),
            )).rowcount
        return gone_events, gone_tasks
