"""``glance-sync-manage plan``: what the next reconciler pass would do, without doing it.

It reads the journal and lists the cascading glance and every region with the
coordinator's own configuration and credentials, then runs the same comparison as a
pass (reconciler.scan: images unknown to the journal, images gone from the cascading
glance under the safety limit, and the per-(image, region) drift of regiondrift.py).
Nothing is journaled and no glance is changed.  On a converged system it prints
nothing; ``--json`` prints a list (empty when converged).

One row per finding: the image, the region (``*`` for a finding about the whole
image), the action and why.  Actions: ``sync`` (a copy everywhere the strategy says),
``delete`` (of every regional copy), ``delete-held`` (over the safety limit, waiting
for ``glance-sync-manage reconcile --confirm-deletes``), and the per-region ``copy``,
``update``, ``operator`` and ``unwanted`` of coordinator/regiondrift.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

from oslo_config import cfg

from coordinator import reconciler, regioncatalog, regiondrift
from coordinator.journal import Journal
from coordinator.registrar import cascading_endpoint
from glancesync import glance, storemap, strategy

ALL_REGIONS = "*"


def findings(drift: reconciler.Drift, held: reconciler.DeletePlan) -> list[dict[str, str]]:
    """The rows of a pass's result, sorted by image then region."""
    rows = [{"image_id": i, "region": ALL_REGIONS, "action": "sync", "reason": _unknown_reason(i, drift)}
            for i in drift.missing]
    rows += [{"image_id": i, "region": ALL_REGIONS, "action": "delete",
              "reason": "gone from the cascading glance (404)"} for i in held.delete]
    rows += [{"image_id": i, "region": ALL_REGIONS, "action": "delete-held",
              "reason": "gone from the cascading glance (404); over the reconciler's safety limit"}
             for i in held.held]
    rows += [r.as_dict() for r in drift.repairs]
    return sorted(rows, key=lambda r: (r["image_id"], r["region"]))


def _unknown_reason(image_id: str, drift: reconciler.Drift) -> str:
    if image_id in drift.queued_snapshots:
        return "queued snapshot in the cascading glance, unknown to the journal (waits for its regional image)"
    return "active in the cascading glance, unknown to the journal"


def compute(conf: cfg.ConfigOpts, now: float, image_id: str | None = None) -> list[dict[str, str]]:
    """The findings of a pass run now (optionally only those of ``image_id``)."""
    stores = storemap.load(conf.glance_store_config, storemap.Role.COORDINATOR)
    endpoint = cascading_endpoint(conf, stores)
    # The regions the coordinator syncs (region_source): the catalog is read here, once.
    live = regioncatalog.live_regions(conf.coordinator, stores, endpoint)
    live.read_now()
    store = Journal(conf.database.connection, conf.database)
    try:
        c = conf.coordinator
        rules = strategy.parse_rules(conf.sync_user_rules, stores.regions)
        policy = regiondrift.Policy(tuple(live), conf.sync_strategy, now, c.reconcile_failed_retry_interval, rules,
                                    snapshot_regions=tuple(conf.snapshot_region_names))
        inputs = reconciler.read_inputs(store, policy)
        confirmed = {h.image_id for h in store.held_deletes() if h.confirmed_at is not None}
    finally:
        store.close()
    drift = reconciler.scan(glance.make_client(endpoint),
                            lambda region: glance.make_client(stores.region(region).glance), inputs,
                            endpoint.url or "cascading glance")
    held = reconciler.limit_deletes(drift.vanished, drift.tracked, confirmed, c.reconcile_max_deletes,
                                    c.reconcile_max_delete_percent)
    rows = findings(drift, held)
    return [r for r in rows if image_id is None or r["image_id"] == image_id]


def render(rows: list[dict[str, Any]], as_json: bool) -> str:
    """The command's output: JSON, or one line per finding (nothing when converged)."""
    if as_json:
        return json.dumps(rows, indent=2)
    if not rows:
        return ""
    width = max(len(r["region"]) for r in rows)
    return "\n".join(f"{r['image_id']}  {r['region']:<{width}}  {r['action']:<11}  {r['reason']}" for r in rows)


def run(conf: cfg.ConfigOpts, image_id: str | None, as_json: bool) -> str:
    return render(compute(conf, time.time(), image_id), as_json)
