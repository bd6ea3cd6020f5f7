"""Member drift of shared images, for a reconciler pass: the one part of drift a listing cannot show.

A glance listing carries no members, so for every pair ``regiondrift.member_candidates``
names (a shared image, synced in a target region, nothing else to repair there) a pass
asks: one members listing of the cascading image, and one of each regional copy, with
that region's credentials.  A copy whose members or member statuses differ gets an
``update`` repair; the planner's update task carries the cascading image's members and
the agent makes the copy's equal (agent/apply.py), the usual way.

What is not answered is not judged: a cascading glance that fails a members listing
ends this part of the pass (one WARNING); a region that fails one is skipped for the
rest of the pass (one WARNING); a copy gone meanwhile (404) is left to the next pass.

Cost: one request per shared image the journal holds, plus one per region holding a
synced copy of it; nothing for images that are not shared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from coordinator import regiondrift
from glancesync import glance
from glancesync.exceptions import GlanceSyncError

LOG = logging.getLogger(__name__)


def _members(client: Any, image_id: str, endpoint: str) -> list[dict[str, str]] | None:
    """An image's members as ``[{"member_id", "status"}]``; None when glance answers 404."""
    listed = glance.call(lambda: list(client.image_members.list(image_id)), endpoint, missing=None)
    if listed is None:
        return None
    return [{"member_id": str(m["member_id"]), "status": str(m["status"])} for m in listed]


def _why(exc: Exception, endpoint: str) -> Exception:
    return exc if isinstance(exc, GlanceSyncError) else glance.translate(exc, endpoint)


def find(client: Any, regional_client: Callable[[str], Any], candidates: Mapping[str, list[str]],
         endpoint: str) -> list[regiondrift.Repair]:
    """The ``update`` repairs of the candidates whose regional members differ (see the module doc)."""
    repairs: list[regiondrift.Repair] = []
    unanswered: set[str] = set()
    # One client per region for the whole pass (plan's factory builds a new session per call).
    clients: dict[str, Any] = {}
    for image_id in sorted(candidates):
        try:
            want = _members(client, image_id, endpoint)
        except Exception as exc:  # an error or an answer of another shape: not judged, never a failed pass
            LOG.warning("reconciler: members of the cascading images not listed, not judged this pass: %s",
                        _why(exc, endpoint))
            return repairs
        if want is None:
            continue  # gone meanwhile: the deleted path of the next pass takes it
        for region in candidates[image_id]:
            if region in unanswered:
                continue
            try:
                if region not in clients:
                    clients[region] = regional_client(region)
                have = _members(clients[region], image_id, region)
            except Exception as exc:
                unanswered.add(region)
                LOG.warning("reconciler: members in region %s not listed, not judged this pass: %s", region,
                            _why(exc, region))
                continue
            why = None if have is None else regiondrift.member_differences(want, have)
            if why:
                repairs.append(regiondrift.Repair(image_id, region, "update", why))
    return repairs
