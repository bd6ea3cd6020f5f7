"""Journal, the image record of planned tasks: stored once per event, not once per task.

Every task an event plans carries the glance record it was planned from (``image`` in
its payload: the agent's ``task`` message sends it, a snapshot's registration verifies
against it).  All tasks of one event plan from the same record, so ``plan_event`` keeps
it once, in the events row the tasks point at (``tasks.event_id``), under
``PLANNED_IMAGE`` in that row's payload, and stores each task's payload without it.
A task whose record differs from the event's (none does today) keeps its own.

Reading puts it back: the rows handed out, registered or looked up (``dispatchable``,
``registrations_due``, ``registering``, ``task``) get ``payload["image"]`` from their
event, one query for the events of a whole read, and the records of recent events are
kept in memory (a planned event's record never changes).  Tasks journaled before this
(their payload holds the record) are read as they are.  Retention keeps an event while
a task still points at it (``RetentionMixin.purge``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.journal.base import NewTask, TaskRow, pack, unpack
from coordinator.schema import events

# The key of an events row's payload that holds the image record its tasks were planned from.
PLANNED_IMAGE = "planned_image"
# Records of this many events are kept in memory (a record is a few kilobytes).
CACHED_EVENTS = 2048

# The events' records for a read's tasks, built once (the ids are bound at each execution).
_RECORDS = sa.select(events.c.event_id, events.c.payload).where(
    events.c.event_id.in_(sa.bindparam("ids", expanding=True)))

def shared_image(new_tasks: Iterable[NewTask]) -> dict[str, Any] | None:
    """The record an event's tasks are planned from (the first task's), or None when none carries one."""
    return next((new.payload["image"] for new in new_tasks if isinstance(new.payload.get("image"), dict)), None)


def stored_payload(payload: dict[str, Any], shared: dict[str, Any] | None) -> bytes:
    """A task's payload as journaled: without the record when it is the event's."""
    if shared is not None and payload.get("image") == shared:
        payload = {k: v for k, v in payload.items() if k != "image"}
    return pack(payload)


class ImageRecordMixin:
    """The events' image records, read back into the tasks that point at them."""

    _image_cache: dict[str, dict[str, Any]] | None = None

    @staticmethod
    def _event_payload_with(conn: Connection, event_id: str, image: dict[str, Any]) -> bytes | None:
        """The event's payload with ``image`` added (None when the event row is not there)."""
        payload = conn.execute(sa.select(events.c.payload).where(events.c.event_id == event_id)).scalar()
        if payload is None:
            return None
        return pack({**(unpack(payload) or {}), PLANNED_IMAGE: image})

    def _with_images(self, conn: Connection, found: list[TaskRow]) -> list[TaskRow]:
        """``found`` with the image record of each task that stores none, from its event."""
        cache = self._image_cache
        if cache is None:
            cache = self._image_cache = {}
        wanted = sorted({t.event_id for t in found if "image" not in t.payload and t.event_id is not None} - cache.keys())
        for start in range(0, len(wanted), 500):
            for event_id, payload in conn.execute(_RECORDS, {"ids": wanted[start:start + 500]}).all():
                record = (unpack(payload) or {}).get(PLANNED_IMAGE)
                if isinstance(record, dict):
                    while len(cache) >= CACHED_EVENTS:
                        del cache[next(iter(cache))]  # the oldest first
                    cache[event_id] = record
        for task in found:
            if "image" not in task.payload and task.event_id in cache:
                task.payload["image"] = cache[task.event_id]
        return found
