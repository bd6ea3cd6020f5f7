"""The data of ``status_reply``: a summary of every region, or the view of one image.

The shapes are a contract with glancesync.status (the status tool)::

    summary: {"coordinator": {"version", "started_at", "now", "sync_strategy", "role",
                              "lease": {"holder", "generation", "expires"}},
              "regions": {region: {"queued", "in_flight", "synced", "failed",
                                   "agents": [{"agent_id", "online", "last_heartbeat",
                                               "capacity", "credits", "tasks"}]}},
              "deletions_held": {"images", "confirmed", "since"}}
    image:   {"image_id", "known", "planned", "settled", "now", "targeting_error", "note",
              "regions": {region: {"state", "task_kind", "task_id",
              "bytes_done", "bytes_total", "attempts", "last_error", "agent_id",
              "updated_at", "synced_at", "copy_registered", "metadata_applied",
              "retry_at", "phase", "rate_bytes_per_s", "eta_seconds"}}}

``known``: some event or region names the image.  ``planned``: known, and every event
received for it has been planned, so ``regions`` lists all the work there is.
``planned`` false means more may come (an event still waits for planning).

``settled``: planned, and the cascading glance has let the journal see the image's
final shape: some event was planned from an *active* record of it, or a ``deleted``
event was planned as a delete (glance said it is gone).  An image created but not
uploaded yet, or whose import still runs, is planned (its ``created`` event asks for
nothing) but not settled: more events are on their way.  Only a settled image with
no regions means nothing to do (sync_strategy None, USER with no region).

``phase``: what the region's pair is doing (queued, waiting for ``retry_at``,
starting, fetching, uploading, registering, deleting; None once final), with the
rate and ETA of a transfer from its agent's progress reports (coordinator.rates).

``copy_registered`` / ``metadata_applied``: the two facts a region's ``synced`` needs
(a verified copy whose location is registered; the newest planned metadata applied).

``targeting_error``: why the newest plan left out regions the image names in
``glance_sync_regions`` (unknown, or known in another case), or None; ``--wait``
never reports success while it is set.  ``note``: what the newest plan noted that is
no error (a snapshot whose cascading image stays queued, doc/snapshots.md), or None;
``--wait`` ignores it.  ``sync_strategy``: the strategy in force.

``role``: ``single`` (no pair: no lease, no ``lease``) or ``active`` (the pair's
member holding the lease; ``lease`` is its row as last renewed).  Only the active
coordinator answers: the passive one binds no socket until it takes the lease.

Regions are those of glance_store.yaml plus any region an agent announced.
``deletions_held``: images whose regional copies the reconciler's safety limit holds
back, how many of them an operator confirmed, and since when (None when none).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordinator.agents import Agents
from coordinator.journal import Journal
from coordinator.leadership import LeaseView
from coordinator.rates import Rates
from glancesync import __version__
from glancesync.states import SyncState as S

_EMPTY_COUNTS = {"queued": 0, "in_flight": 0, "synced": 0, "failed": 0}


def summary(journal: Journal, agents: Agents, regions: Iterable[str], started_at: float,
            now: float, strategy: str = "", lease: LeaseView | None = None) -> dict[str, Any]:
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
    return {"coordinator": coordinator(started_at, now, strategy, lease),
            "regions": data,
            "deletions_held": deletions_held(journal)}


def coordinator(started_at: float, now: float, strategy: str, lease: LeaseView | None) -> dict[str, Any]:
    """The summary's ``coordinator``: what runs, since when, and its role (single, or the pair's active one)."""
    data: dict[str, Any] = {"version": __version__, "started_at": started_at, "now": now, "sync_strategy": strategy,
                            "role": "single" if lease is None else lease.role}
    if lease is not None:
        data["lease"] = lease.status()
    return data


def deletions_held(journal: Journal) -> dict[str, Any]:
    held = journal.held_deletes_known()
    return {"images": len(held), "confirmed": sum(1 for h in held if h.confirmed_at is not None),
            "since": min((h.held_at for h in held), default=None)}


def image(journal: Journal, image_id: str, now: float, rates: Rates | None = None) -> dict[str, Any]:
    known, regions = journal.image_view(image_id)
    planned = known and journal.unplanned_count(image_id) == 0
    for row in regions.values():
        row.update(activity(row, rates or Rates(), now))
    return {"image_id": image_id, "known": known, "planned": planned,
            "settled": planned and settled(journal, image_id), "regions": regions, "now": now,
            "targeting_error": journal.targeting_error(image_id), "note": journal.plan_note(image_id)}


# The phase of a region whose state says it all (doc/status.md); None: final states.
_STATE_PHASES = {S.ASSIGNED: "starting", S.REGISTERING: "registering", S.DELETING: "deleting"}


def activity(row: dict[str, Any], rates: Rates, now: float) -> dict[str, Any]:
    """``phase``, ``rate_bytes_per_s``, ``eta_seconds`` of one region row, and its bytes as they stand.

    A pending row waits for its retry (``waiting``, until ``retry_at``) or for an
    agent (``queued``); the bytes of its earlier attempt are not its progress.
    """
    state = row.get("state")
    fields: dict[str, Any] = {"phase": None, "rate_bytes_per_s": None, "eta_seconds": None}
    if state == S.PENDING:
        waiting = (row.get("retry_at") or 0) > now
        fields.update(phase="waiting" if waiting else "queued", bytes_done=0,
                      retry_at=row.get("retry_at") if waiting else None)
    elif state == S.TRANSFERRING:
        seen = rates.view(row.get("task_id"), row.get("attempts"), now)
        # An agent that names no phase (older than the overlapped copy): just "transferring".
        fields["phase"] = (seen or {}).get("phase") or "transferring"
        if seen is not None:
            fields.update(rate_bytes_per_s=seen["rate_bytes_per_s"], eta_seconds=seen["eta_seconds"])
    else:
        fields["phase"] = _STATE_PHASES.get(state)
    return fields


def settled(journal: Journal, image_id: str) -> bool:
    """An event was planned from an active record of the image, or its delete was planned."""
    _updated_at, active_at = journal.image_record_state(image_id)
    return active_at is not None or journal.deleted_event(image_id)


def build(journal: Journal, agents: Agents, regions: Iterable[str], started_at: float,
          body: dict[str, Any], now: float, strategy: str = "", rates: Rates | None = None,
          lease: LeaseView | None = None) -> dict[str, Any]:
    """The ``data`` of the reply to a ``status_query`` body; ``now`` is the coordinator's clock,
    so a client renders ages right even when its own clock differs."""
    if body.get("view") == "image" and body.get("image_id"):
        return image(journal, body["image_id"], now, rates)
    return summary(journal, agents, regions, started_at, now, strategy, lease)
