"""Events on their way to tasks: fetching the image, waiting for imports, planning, reconciling.

The coordinator's loop hands this desk each tick; it never waits. An event is
planned once glance has answered for its image (in the glance thread pool):
retryable fetch errors are tried again with backoff (``FETCH_TRIES`` at most), an
imported image is fetched again every ``snapshot_sleep_interval`` until active or
``snapshot_timeout``.  Both waits are the event's ``not_before`` in the journal, and
only due events are read, oldest first, at most ``FETCHES_IN_FLIGHT`` fetches at a
time (their images read with one listing per ``FETCH_BATCH``, not one GET each): events
that wait never block the ones that are ready, and a restart keeps the backoff.  A snapshot (coordinator/snapshot.py) waits the same way for its regional
image: fetched again every ``snapshot_sleep_interval`` while that image is missing or
on its way to active; ``snapshot_timeout`` after the event its targets are ``failed``
with the reason.  Image records are ordered by ``updated_at``: a record older than the newest
one already planned from (fetched before a change, answered after it) is never
applied; its event is fetched again.  A ``deleted`` event is fetched too: events are hints, and
a regional delete is final, so it is planned only when glance itself says the
image is gone (planner.image_gone); for an image glance still shows it is refused,
with one WARNING naming the event, its claimed context and its sender.  The events a
reconciler pass makes (reconcilepass.py) are planned here like any other.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from coordinator import operator, planner, snapshot
from coordinator.journal import EventRow, Journal, PlannedEvent
from coordinator.journal.operations import NOTE_PREFIX
from coordinator.journal.planning import PlanningFacts
from coordinator.regioncatalog import LiveRegions
from coordinator.registrar import FetchResult, Registrar
from glancesync import glance, strategy, untrusted
from glancesync.exceptions import JournalError
from glancesync.liveness import retry_delay
from glancesync.states import SyncState
from glancesync.storemap import StoreMap

LOG = logging.getLogger(__name__)
# Tries of the image fetch an event is planned from before it is planned with no tasks and
# its plan_error. With the task backoff (5 s doubling, capped at max_retry_backoff) that
# rides out a cascading glance outage of about half an hour; an image glance cannot show
# for longer (a 500 on one record) must not keep its event for ever.
FETCH_TRIES = 10
# Events being fetched at once; more due events wait in the journal, in due order.  Their
# images are read FETCH_BATCH to a job, with one listing of the cascading glance
# (glancejobs.fetch_many), so these are a few jobs of the glance pool, not one per event.
FETCHES_IN_FLIGHT = 256
FETCH_BATCH = glance.IDS_PER_LISTING
# Statuses from which an image still becomes active without anyone's help.
ON_THE_WAY = frozenset({"queued", "saving", "importing", "uploading"})
# Task rows one loop iteration plans at most (doc/control-plane.md): at the 47-87 us per row
# measured for the bulk insert on a busy 2-core VM, 0.2-0.35 s, under the loop's
# ITERATION_BUDGET, where 32 images for 500 regions (16,000 rows) held status for seconds.
# The answers beyond it wait, in arrival order, for the next iterations; an image whose plan
# alone is larger is still planned whole (one bulk insert), alone in its iteration.
PLAN_ROWS = 4000


class _OverBudget(Exception):
    """The plan being gathered would take the iteration past PLAN_ROWS: its answer waits."""


class EventDesk:
    def __init__(self, conf: cfg.ConfigOpts, storemap: StoreMap, journal: Journal, registrar: Registrar,
                 regions: LiveRegions | None = None, wake_at: Callable[[float], None] | None = None) -> None:
        self.conf = conf
        # Tells the loop when a deferred event comes due (wakeups.ChangeGate.wake_at).
        self.wake_at = wake_at or (lambda _when: None)
        self.storemap = storemap
        # The regions synced now (region_source): tasks and drift target these only.
        self.regions = regions if regions is not None else LiveRegions(storemap.regions)
        self.journal = journal
        self.registrar = registrar
        self.fetching: set[str] = set()
        # Glance answers of this iteration, planned together by plan_fetched; the plans it gathers.
        self.arrived: list[FetchResult] = []
        self._plans: list[PlannedEvent] | None = None
        self._rows = 0  # task rows gathered by this plan_fetched (PLAN_ROWS)
        self._facts: PlanningFacts | None = None
        # Checked at start (coordinator/cmd.py): here they are known to be valid.
        self.rules = strategy.parse_rules(conf.sync_user_rules, storemap.regions)
        self.strategy_in_force = strategy.describe(strategy.canonical(conf.sync_strategy), self.rules)

    def plan_events(self, now: float) -> None:
        self.plan_fetched(now)
        if not self.regions.ready:  # the catalog not read yet: events wait in the journal
            return
        room = FETCHES_IN_FLIGHT - len(self.fetching)
        if room <= 0 or (self.fetching and room < FETCHES_IN_FLIGHT // 4):
            # Refilled a quarter at a time: one read of the due events per 64 fetches, not one
            # per fetch (it sorted every unplanned one before migration 0007's ix_events_order).
            return
        batch: list[EventRow] = []
        for event in self.journal.unplanned_events(now, limit=room + len(self.fetching)):
            if event.event_id in self.fetching:
                continue
            if not untrusted.is_image_id(event.image_id):
                # Journaled before ids were checked at the door: never let it reach a glance URL.
                LOG.error("event %s: image id %s is not a glance id; no tasks", event.event_id,
                          untrusted.quote(event.image_id))
                self.journal.plan_event(event.event_id, event.image_id, [], {}, now, error="not a glance image id")
                continue
            self.fetching.add(event.event_id)
            batch.append(event)
        for start in range(0, len(batch), FETCH_BATCH):
            self.registrar.fetch_many(batch[start:start + FETCH_BATCH], tuple(self.storemap.regions))

    def _defer(self, event_id: str, not_before: float, fetch_tries: int | None = None) -> None:
        """The event is fetched again at ``not_before``; the loop is told so, to plan it then."""
        self.journal.defer_event(event_id, not_before, fetch_tries)
        self.wake_at(not_before)

    def fetched(self, result: FetchResult, now: float) -> None:
        """A glance answer for an event: planned with the others of this iteration (``plan_fetched``)."""
        self.arrived.append(result)

    def plan_fetched(self, now: float) -> None:
        """Plan the events whose glance answers arrived, together: one journal call for their plans.

        A second answer for an image already planned in the call first writes the plans
        gathered so far, so each plan reads what the one before it wrote (journal/planmany.py).
        Once the plans gathered reach ``PLAN_ROWS`` task rows, the answers left stay in
        ``arrived``, in order, still counted as fetching: ``waiting`` tells the loop.
        """
        results, self.arrived = self.arrived, []
        if not results:
            return
        events = self.journal.unplanned_events_by_id([r.event_id for r in results])
        self._plans, self._rows, done, taken = [], 0, set(), 0
        self._facts = self.journal.planning_facts({e.image_id for e in events.values()})
        try:
            for result in results:
                if self._rows >= PLAN_ROWS:
                    break
                event = events.get(result.event_id)
                if event is not None and any(plan.image_id == event.image_id for plan in self._plans):
                    self._write_plans(now)
                    # What was read before is not what the plans just written left.
                    self._facts = self.journal.planning_facts(
                        {e.image_id for e in events.values() if e.event_id not in done})
                if event is not None and not self._judged(event, result, now):
                    break
                self.fetching.discard(result.event_id)
                taken += 1
                if event is not None:
                    done.add(event.event_id)
            self._write_plans(now)
        except Exception:
            for result in results:
                self.fetching.discard(result.event_id)  # fetched again next time
            taken = len(results)
            raise
        finally:
            self._plans, self._facts = None, None
            # Left for the next iteration, ahead of anything that arrived since.
            self.arrived = results[taken:] + self.arrived

    @property
    def waiting(self) -> bool:
        """Glance answers wait to be planned (past PLAN_ROWS): the loop must not sleep on them."""
        return bool(self.arrived)

    def _judged(self, event: EventRow, result: FetchResult, now: float) -> bool:
        """Judge one answer; False when its plan would take the iteration past PLAN_ROWS."""
        try:
            self._judge(event, result, now)
        except _OverBudget:
            return False
        except JournalError:
            raise  # the iteration's batch is gone: no plan of it can commit
        except Exception:  # one event's bad answer never holds the others back
            LOG.exception("event %s: glance answer could not be planned; fetched again", event.event_id)
        return True

    def _known(self) -> PlanningFacts:
        """What the journal knows of the images being planned (read once per plan_fetched)."""
        assert self._facts is not None, "read outside plan_fetched"
        return self._facts

    def _write_plans(self, now: float) -> None:
        plans, self._plans = self._plans or [], []
        for plan, outcome in zip(plans, self.journal.plan_many(plans, now), strict=True):
            if isinstance(outcome, Exception):  # that event alone: fetched and planned again later
                LOG.error("event %s (image %s) not planned: %s; fetched again", plan.event_id, plan.image_id, outcome)

    def _planned(self, event: EventRow, new_tasks: list[Any], failures: dict[str, str], error: str | None = None,
                 record: tuple[float | None, bool] | None = None) -> None:
        """An event's plan, written with the others of this iteration's answers by ``plan_fetched``."""
        assert self._plans is not None, "planned outside plan_fetched"
        rows = len(new_tasks)
        if rows and self._rows and self._rows + rows > PLAN_ROWS:
            raise _OverBudget  # before anything is logged: it is judged again next iteration
        self._rows += rows
        self._plans.append(PlannedEvent(event.event_id, event.image_id, list(new_tasks), failures, error, record))

    def _judge(self, event: EventRow, result: FetchResult, now: float) -> None:
        tries = event.fetch_tries + 1
        if result.error is not None and result.error.retryable and tries < FETCH_TRIES:
            c = self.conf.coordinator
            delay = retry_delay(tries, max(c.retry_backoff, 1.0), max(c.max_retry_backoff, 1.0))
            self._defer(event.event_id, now + delay, tries)
            LOG.warning("event %s: cannot fetch image %s (%s); retry in %.0f s",
                        event.event_id, event.image_id, result.error, delay)
            return
        if result.error is None and self._still_importing(event, result.image, now):
            return
        if result.error is None and self._snapshot_waits(event, result, now):
            return
        if result.error is not None:
            LOG.error("event %s: image %s cannot be fetched (%d tries): %s; no tasks", event.event_id,
                      event.image_id, tries, result.error)
            self._planned(event, [], {}, error=str(result.error))
            return
        if self._stale(event, result.image, tries, now):
            return
        self._plan(event, result.image, now, result.members, result.snapshot)

    def _still_importing(self, event: EventRow, image: dict[str, Any] | None, now: float) -> bool:
        """An imported image not active yet: fetch it again later, up to snapshot_timeout."""
        status = (image or {}).get("status")
        if event.kind != "imported" or status not in ON_THE_WAY:
            return False
        if now - event.received_at < self.conf.snapshot_timeout:
            self._defer(event.event_id, now + self.conf.snapshot_sleep_interval)
            return True
        reason = f"image is still {status} {self.conf.snapshot_timeout} s after its import (snapshot_timeout)"
        LOG.error("event %s: %s; no tasks", event.event_id, reason)
        self._planned(event, [], {}, error=reason)
        return True

    def _snapshot_waits(self, event: EventRow, result: FetchResult, now: float) -> bool:
        """A snapshot whose regional image is not active yet: fetch again later, up to snapshot_timeout.

        Past it, every target of the image (its own region too) is failed with the reason.
        """
        made = result.snapshot
        if made is None or result.image is None or not snapshot.waiting(made):
            return False
        existing = self._known().region_records(event.image_id)
        if made.regional is None and existing:
            return False  # gone from its region after it was spread: the planner says why, nothing waits
        if now - event.received_at < self.conf.snapshot_timeout:
            self._defer(event.event_id, now + self.conf.snapshot_sleep_interval)
            return True
        reason = snapshot.timeout_reason(made, event.image_id, self.conf.snapshot_timeout)
        targets = planner.target_regions(result.image, self.regions, self.conf.sync_strategy, self.rules,
                                         self.conf.snapshot_region_names)
        # A copy already made stays what it is; only the regions still waiting for one fail.
        failed = {r: reason for r in targets if r not in existing or existing[r].state != SyncState.SYNCED}
        LOG.error("event %s: %s; failed in %s", event.event_id, reason, ", ".join(failed) or "no region")
        self._planned(event, [], failed, error=reason)
        return True

    def _stale(self, event: EventRow, image: dict[str, Any] | None, tries: int, now: float) -> bool:
        """A record older than the newest planned from: fetched before a change, answered after it.

        Applying it would undo the newer change (a deactivate over a reactivate), so it
        makes no tasks; the event is fetched again and planned from what glance says now.
        """
        newest, _active = self._known().records.get(event.image_id, (None, None))
        updated_at = record_time(image)
        if newest is None or updated_at is None or updated_at >= newest:
            return False
        if tries >= FETCH_TRIES:
            reason = "glance keeps answering an image record older than one already applied"
            LOG.error("event %s (%s of %s): %s; no tasks", event.event_id, event.kind, event.image_id, reason)
            self._planned(event, [], {}, error=reason)
            return True
        LOG.warning("event %s (%s of %s): image record of updated_at %s is older than one already applied; "
                    "not applied, fetched again", event.event_id, event.kind, event.image_id,
                    (image or {}).get("updated_at"))
        self._defer(event.event_id, now, tries)
        return True

    def _plan(self, event: EventRow, image: dict[str, Any] | None, now: float,
              members: list[dict[str, str]] | None = None, made: snapshot.Snapshot | None = None) -> None:
        known = self._known()
        if event.kind != "deleted" and event.image_id in known.deleted:
            # Fetched before the delete, answered after it: the record is stale, and copies
            # made from it would outlive the image (its delete was planned without them).
            LOG.info("event %s (%s of %s): the image was deleted since; no tasks", event.event_id, event.kind,
                     event.image_id)
            self._planned(event, [], {}, error="the image was deleted")
            return
        existing = known.region_records(event.image_id)
        # An operator's resync or sync names its regions (coordinator/operator.py).
        regions, strategy_name, by_operator = operator.event_targets(
            event.body, self.regions, self.conf.sync_strategy, existing)
        plan = planner.plan(event.kind, event.image_id, image, regions, strategy_name, existing,
                            self.storemap.source_path, self.rules, by_operator, members,
                            repairs=event.body.get("repairs"),
                            asked=known.asked.get(event.image_id, set()),
                            snapshot=made, snapshot_regions=self.conf.snapshot_region_names,
                            sources=self.storemap.sources)
        if plan.refused:
            context = event.body.get("context") or {}
            LOG.warning("event %s (%s of %s) refused: %s; the delete is not planned in any region "
                        "(claimed context: user %s, project %s; sender %s)", event.event_id, event.kind,
                        event.image_id, plan.refused, context.get("user_id"), context.get("project_id"),
                        event.sender or "unknown")
            self._planned(event, [], {}, error=f"refused: {plan.refused}")
            return
        record = None if image is None else (record_time(image), image.get("status") == "active")
        error = operator.targeting_error(image, self.regions, self.conf.sync_strategy, event.event_id,
                                         plan.problems) or self._queued_note(image, made, existing, plan)
        self._planned(event, plan.tasks, plan.failures, error=error, record=record)
        LOG.info("event %s (%s of %s): %d tasks%s", event.event_id, event.kind, event.image_id,
                 len(plan.tasks), "".join(f"; {r} failed: {why}" for r, why in plan.failures.items()))
        for task in plan.tasks:
            if task.kind == "delete" and event.kind != "deleted":
                LOG.warning("event %s: image %s is no longer targeted in %s (%s); its copy there is deleted",
                            event.event_id, event.image_id, task.region, strategy_name)

    @staticmethod
    def _queued_note(image: dict[str, Any] | None, made: snapshot.Snapshot | None, existing: dict[str, Any],
                     plan: planner.Plan) -> str | None:
        """The plan's note (status shows it, no error) when a snapshot's cascading image stays queued."""
        why = snapshot.stays_queued(image, made, {*existing, *(t.region for t in plan.tasks), *plan.failures})
        if why is None:
            return None
        LOG.warning("image %s: %s", (image or {}).get("id"), why)
        return NOTE_PREFIX + why


def record_time(image: dict[str, Any] | None) -> float | None:
    """A glance record's ``updated_at`` as epoch seconds; None when missing or not a time."""
    value = (image or {}).get("updated_at")
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)  # glance's times are UTC
    return stamp.timestamp()
