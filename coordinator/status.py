"""The data of ``status_reply``: a summary of every region, or the view of one image.

The shapes are a contract with glancesync.status (the status tool)::

    summary: {"coordinator": {"version", "started_at", "now"},
              "regions": {region: {"queued", "in_flight", "synced", "failed",
                                   "agents": [{"agent_id", "online", "last_heartbeat",
                                               "capacity", "credits", "tasks"}]}},
              "deletions_held": {"images", "confirmed", "since"}}
    image:   {"image_id", "known", "planned", "settled", "now",
              "regions": {region: {"state", "task_kind", "task_id",
              "bytes_done", "bytes_total", "attempts", "last_error", "agent_id",
              "updated_at", "synced_at", "copy_registered", "metadata_applied"}}}

``known``: some event or region names the image.  ``planned``: known, and every event
received for it has been planned, so ``regions`` lists all the work there is.
``planned`` false means more may come (an event still waits for planning).

``settled``: planned, and the cascading glance has let the journal see the image's
final shape: some event was planned from an *active* record of it, or a ``deleted``
event was planned as a delete (glance said it is gone).  An image created but not
uploaded yet, or whose import still runs, is planned (its ``created`` event asks for
nothing) but not settled: more events are on their way.  Only a settled image with
no regions means nothing to do (sync_strategy None, USER with no region).

``copy_registered`` / ``metadata_applied``: the two facts a region's ``synced`` needs
(a verified copy whose location is registered; the newest planned metadata applied).

Regions are those of glance_store.yaml plus any region an agent announced.
``deletions_held``: images whose regional copies the reconciler's safety limit holds
back, how many of them an operator confirmed, and since when (None when none).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordinator.agents import Agents
from coordinator.journal import Journal
from glancesync import __version__

_EMPTY_COUNTS = {"queued": 0, "in_flight": 0, "synced": 0, "failed": 0}


def summary(journal: Journal, agents: Agents, regions: Iterable[str], started_at: float,
            now: float) -> dict[str, Any]:
    counts = journal.region_counts()
    sessions = agents.by_region()
    names = list(regions)
    listed = set(names)
    names += sorted(name for name in sessions if name not in listed)
    data: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = dict(counts.get(name, _EMPTY_COUNTS))
        entry["agents"] = [s.status() for s in sorted(sessions.get(name, []), key=lambda s: s.agent_id)]
        data[name] = entry
    return {"coordinator": {"version": __version__, "started_at": started_at, "now": now}, "regions": data,
            "deletions_held": deletions_held(journal)}


def deletions_held(journal: Journal) -> dict[str, Any]:
    held = journal.held_deletes_known()
    return {"images": len(held), "confirmed": sum(1 for h in held if h.confirmed_at is not None),
            "since": min((h.held_at for h in held), default=None)}


def image(journal: Journal, image_id: str, now: float) -> dict[str, Any]:
    known, regions = journal.image_view(image_id)
    planned = known and journal.unplanned_count(image_id) == 0
    return {"image_id": image_id, "known": known, "planned": planned,
            "settled": planned and settled(journal, image_id), "regions": regions, "now": now}


def settled(journal: Journal, image_id: str) -> bool:
    """An event was planned from an active record of the image, or its delete was planned."""
    _updated_at, active_at = journal.image_record_state(image_id)
    return active_at is not None or journal.deleted_event(image_id)


def build(journal: Journal, agents: Agents, regions: Iterable[str], started_at: float,
          body: dict[str, Any], now: float) -> dict[str, Any]:
    """The ``data`` of the reply to a ``status_query`` body; ``now`` is the coordinator's clock,
    so a client renders ages right even when its own clock differs."""
    if body.get("view") == "image" and body.get("image_id"):
        return image(journal, body["image_id"], now)
    return summary(journal, agents, regions, started_at, now)
