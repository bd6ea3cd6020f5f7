"""Journal, the reconciler's memory: its pass counter, the deletions it holds back, its findings.

A pass that would delete more regional copies than the safety limit allows deletes
none and records the images here (``held_deletes``); they wait until an operator
confirms them (``glance-sync-manage reconcile --confirm-deletes``), and the next
pass then makes their ``deleted`` events, each still confirmed by a 404 at that
time.  A pass's synthetic events are written in slices, one per loop iteration; the
new set of held images goes with the last one, so a confirmation is never lost: a
crash between slices leaves it recorded, and the next pass makes its event again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.journal.base import pack
from coordinator.journal.engine import retry_on_deadlock
from coordinator.schema import events, held_deletes, reconciler_state


@dataclass(frozen=True)
class HeldDelete:
    image_id: str
    held_at: float
    confirmed_at: float | None


class HoldsMixin:
    """The reconciler's pass counter, its held deletions and its synthetic events."""

    @retry_on_deadlock
    def next_reconcile_pass(self) -> int:
        """Count a new reconciler pass; its number (1, 2, ...) is the generation of its event ids."""
        with self.transaction() as conn:
            passes = conn.execute(sa.select(reconciler_state.c.passes).where(reconciler_state.c.id == 1)).scalar()
            if passes is None:
                conn.execute(reconciler_state.insert().values(id=1, passes=1))
                return 1
            conn.execute(reconciler_state.update().where(reconciler_state.c.id == 1).values(passes=passes + 1))
            return passes + 1

    _held_table: list[HeldDelete] | None = None

    def held_deletes(self) -> list[HeldDelete]:
        query = sa.select(held_deletes).order_by(held_deletes.c.held_at, held_deletes.c.image_id)
        with self.transaction() as conn:
            return [HeldDelete(r.image_id, r.held_at, r.confirmed_at) for r in conn.execute(query).all()]

    def held_deletes_known(self) -> list[HeldDelete]:
        """``held_deletes`` as last read (for the status summary, which runs no SQL once it is read).

        Changes made through this journal show at once; ``glance-sync-manage`` confirms
        from another process, which shows after the next ``reread_held_deletes``.
        """
        if self._held_table is None:
            self._held_table = self.held_deletes()
        return self._held_table

    def reread_held_deletes(self) -> None:
        self._held_table = self.held_deletes()

    def _held_changed(self) -> None:
        def forget() -> None:
            self._held_table = None

        self.on_commit(forget)

    @retry_on_deadlock
    def confirm_held_deletes(self, now: float) -> int:
        """The operator's go-ahead for every held deletion; how many were newly confirmed."""
        with self.transaction() as conn:
            count = conn.execute(held_deletes.update().where(held_deletes.c.confirmed_at.is_(None))
                                 .values(confirmed_at=now)).rowcount
        self._held_changed()
        return count

    @retry_on_deadlock
    def record_reconcile(self, bodies: Iterable[dict[str, Any]], held: Iterable[str] | None, now: float,
                         sender: str) -> list[dict[str, Any]]:
        """Journal a pass's synthetic events and replace the held set by ``held``; the events made.

        A pass is journaled in slices (reconciler.Journaling): ``held`` None leaves the
        held set and the time of the last pass alone, for every slice but the last.

        An event is skipped when an event of the same kind for the same image still waits
        for planning (an earlier pass's, or a real one): a second pass before the first was
        planned makes no second event, while a pass after it may try again.
        """
        made, rows = [], []
        bodies = list(bodies)
        with self.transaction() as conn:
            # One read and one insert per slice, not two statements per event.
            waiting = self._waiting(conn, {body["image_id"] for body in bodies})
            for body in bodies:
                if (body["image_id"], body["kind"]) in waiting:
                    continue
                waiting.add((body["image_id"], body["kind"]))
                rows.append({"event_id": body["event_id"], "kind": body["kind"], "image_id": body["image_id"],
                             "payload": pack(body), "received_at": now, "planned": False, "sender": sender})
                made.append(body)
            if rows:
                conn.execute(events.insert(), rows)
            if held is None:
                return made
            keep = set(held)
            since = {r.image_id: r.held_at for r in conn.execute(sa.select(held_deletes)).all()}
            conn.execute(held_deletes.delete())
            for image_id in sorted(keep):
                conn.execute(held_deletes.insert().values(image_id=image_id, held_at=since.get(image_id, now)))
            conn.execute(reconciler_state.update().where(reconciler_state.c.id == 1).values(last_pass_at=now))
        self._held_changed()
        return made

    @staticmethod
    def _waiting(conn: Connection, image_ids: set[str]) -> set[tuple[str, str]]:
        """(image id, kind) of the events of ``image_ids`` that still wait for planning."""
        if not image_ids:
            return set()
        # ``planned`` is tested here, not in SQL: with it there SQLite walks ix_events_order's every
        # unplanned event (0.1 s per slice while a first pass's 100,000 wait), not the few of these images.
        query = sa.select(events.c.image_id, events.c.kind, events.c.planned).where(
            events.c.image_id.in_(sorted(image_ids)))
        return {(image_id, kind) for image_id, kind, planned in conn.execute(query) if not planned}
