"""The reconciler's passes on the loop: started when due, their events journaled a slice at a time.

A pass is started every ``reconcile_interval`` (the first one soon after start): its
journal reads (a journal connection of its own) and the glance listings run in the
glance pool, never on the loop (reconciler.py compares them).  When its comparison is
back, the deletes and removals it asks for pass the safety limits
(reconciler.limit_deletes, reconciler.limit_removals) and its synthetic events are
journaled like any other event, a bounded slice per loop iteration
(``journal_slice``), each slice counted only once its batch commits; the event desk
(eventdesk.py) plans them.  The pass's times feed coordinator/metrics.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from oslo_config import cfg

from coordinator import reconciler, regiondrift
from coordinator.journal import Journal
from coordinator.regioncatalog import LiveRegions
from coordinator.registrar import ReconcileResult, Registrar

LOG = logging.getLogger(__name__)
# The first reconciler pass comes soon after start (events may have been lost while
# the coordinator was down), later ones every reconcile_interval.
FIRST_RECONCILE_AFTER = 60.0


class ReconcilerPasses:
    """Starts the reconciler's passes and journals their events; the loop calls it each iteration."""

    def __init__(self, conf: cfg.ConfigOpts, journal: Journal, registrar: Registrar, regions: LiveRegions,
                 rules: dict[str, tuple[str, ...]], open_reader: Callable[[], Journal] | None = None) -> None:
        self.conf = conf
        self.journal = journal
        self.registrar = registrar
        self.regions = regions  # the regions synced now: a pass compares these only
        self.rules = rules
        interval = conf.coordinator.reconcile_interval
        self.next_reconcile: float | None = (
            time.time() + min(interval, FIRST_RECONCILE_AFTER) if interval > 0 else None)
        self.reconciling = False
        # For coordinator/metrics.py: when the running pass started, and the last finished
        # pass as (ended at, seconds it took, succeeded).
        self.reconcile_started: float | None = None
        self.last_pass: tuple[float, float, bool] | None = None
        # The finished pass whose events are being journaled, a slice per iteration.
        self.journaling: reconciler.Journaling | None = None
        self.pass_longest = 0.0  # seconds of the longest loop iteration during the running pass
        # A journal of its own for the pass's reads, in the glance pool (never the loop's).
        self.open_reader = open_reader or (lambda: Journal(conf.database.connection, conf.database))

    def reconcile(self, now: float) -> None:
        """Start a pass when one is due: it reads the journal and lists the glances in the pool."""
        if self.next_reconcile is None or self.reconciling or now < self.next_reconcile or not self.regions.ready:
            return
        self.reconciling = True
        self.reconcile_started = now
        self.pass_longest = 0.0
        policy = regiondrift.Policy(tuple(self.regions), self.conf.sync_strategy, now,
                                    self.conf.coordinator.reconcile_failed_retry_interval, self.rules,
                                    snapshot_regions=tuple(self.conf.snapshot_region_names))
        open_reader = self.open_reader

        def read() -> reconciler.Inputs:
            # Its own connection, off the loop thread: at 100k images these reads take seconds.
            reader = open_reader()
            try:
                return reconciler.read_inputs(reader, policy)
            finally:
                reader.close()

        self.registrar.reconcile(read)
        LOG.info("reconciler: pass started over %d region(s)", len(policy.regions))

    def reconciled(self, result: ReconcileResult, now: float) -> None:
        """A pass's comparison is back: its events are journaled by ``journal_slice``, a slice per iteration."""
        if result.drift is None:
            LOG.error("reconciler: pass failed, next in %ss: %s", self.conf.coordinator.reconcile_interval,
                      result.error)
            self._pass_over(now, False)
            return
        # When this fails the JournalError keeps the result for the next iteration.
        self.journaling = self._prepare(result.drift)

    def journal_slice(self, now: float) -> None:
        """Journal the finished pass's next slices: one, then more while reconciler.JOURNAL_SECONDS last."""
        work = self.journaling
        if work is None:
            return
        if work.generation is None:
            generation = self.journal.next_reconcile_pass()
            self.journal.on_commit(lambda: setattr(work, "generation", generation))
            return
        began, offset, slices, made, last = time.monotonic(), work.offset, 0, [], False

        def committed() -> None:
            work.advance(offset, slices, len(made), last)
            for body in made:
                if body["kind"] == "drift":
                    LOG.warning("reconciler: image %s drifted; repairs %s", body["image_id"], body["repairs"])
                else:
                    LOG.warning("reconciler: %s event made for image %s (its own event was lost)",
                                body["kind"], body["image_id"])
            if work.done and self.journaling is work:
                self.journaling = None
                LOG.info("reconciler: pass %d done in %.1f s: %d event(s) journaled in %d slice(s); longest loop "
                         "iteration during it %.0f ms", work.generation, now - (self.reconcile_started or now),
                         work.made, work.slices, self.pass_longest * 1000)
                self._pass_over(now, True)

        try:
            while not last and (not slices or time.monotonic() - began < reconciler.JOURNAL_SECONDS):
                chunk, held = work.slice_at(offset)
                made += self.journal.record_reconcile(chunk, held, now, reconciler.ORIGIN)
                offset, slices, last = offset + len(chunk), slices + 1, held is not None
        finally:
            if slices:  # advanced only once the batch commits: slices rolled back are written again
                self.journal.on_commit(committed)

    def note_iteration(self, took: float) -> None:
        """The loop's iteration times, for the longest one during a pass (its last log line)."""
        if self.reconciling and took > self.pass_longest:
            self.pass_longest = took

    def _pass_over(self, now: float, ok: bool) -> None:
        self.reconciling = False
        self.next_reconcile = now + self.conf.coordinator.reconcile_interval
        self.last_pass = (now, now - (self.reconcile_started or now), ok)

    def _prepare(self, drift: reconciler.Drift) -> reconciler.Journaling:
        c = self.conf.coordinator
        confirmed = {h.image_id for h in self.journal.held_deletes() if h.confirmed_at is not None}
        deletes = reconciler.limit_deletes(drift.vanished, drift.tracked, confirmed, c.reconcile_max_deletes,
                                           c.reconcile_max_delete_percent)
        acted, held_removals = reconciler.limit_removals(drift.repairs, drift.tracked, c.reconcile_max_deletes,
                                                         c.reconcile_max_delete_percent)
        for repair in drift.repairs:
            if repair.action not in regiondrift.ACTED_ON or (
                    repair.action == "unwanted" and repair.image_id in held_removals):
                LOG.warning("reconciler: image %s in %s not repaired (%s): %s", repair.image_id, repair.region,
                            repair.action, repair.reason)
        if held_removals:
            LOG.error("reconciler: %d image(s) have copies in regions the strategy no longer targets, over the "
                      "safety limit (reconcile_max_deletes %d, reconcile_max_delete_percent %s): none removed "
                      "(check sync_strategy and sync_user_rules; raise the limits for one pass to remove them)",
                      len(held_removals), c.reconcile_max_deletes, c.reconcile_max_delete_percent)
        if deletes.held:
            LOG.error("reconciler: %d of %d tracked image(s) are gone from the cascading glance, over the "
                      "safety limit (reconcile_max_deletes %d, reconcile_max_delete_percent %s): no regional "
                      "copy deleted, deletions held until 'glance-sync-manage reconcile --confirm-deletes' "
                      "(check the cascading endpoint, its database and the coordinator's admin role first)",
                      len(deletes.held), drift.tracked, c.reconcile_max_deletes, c.reconcile_max_delete_percent)
        return reconciler.Journaling(drift.missing, deletes.delete, acted, deletes.held)
