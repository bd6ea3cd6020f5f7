"""Operators' requests, served inside the coordinator's loop: cancel, resync of failed regions, sync on demand.

``glance-sync-manage cancel|resync --failed|sync`` sends one ``operator`` message
(glancesync.protocol; an ``operator`` key under CURVE, glancesync.roles) to the
client socket and prints the ``operator_reply``.  The loop applies each request
itself, so it stays the only writer of the task state it owns:

- ``cancel``: the image's copies not yet registering become ``cancelled`` in the
  journal (compare-and-set), and each agent that holds one gets ``cancel`` with
  ``discard``: it kills the worker and removes the partial file.  Nothing retries a
  cancelled region; only an operator's resync or sync, or a delete, moves it on.
- ``resync_failed``: one operator event per image with failed regions (of the named
  regions, when given), journaled like any event; the planner gives those regions
  a new copy.
- ``sync``: one operator event naming the regions; under ``ON_DEMAND`` that is the
  only way an image moves.

Operator events carry ``operator: true`` and maybe ``regions`` in their journaled
body (a wire event cannot: the protocol keeps only its schema's fields);
``event_targets`` turns them into the planner's inputs.  ``step`` also cancels a
copy that an agent runs while a delete of the same image waits behind it: a delete
of the cascading image stops its running copies.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from coordinator import planner, reconciler
from coordinator.agents import Agents
from coordinator.journal import Cancelled, Journal, RegionRecord
from coordinator.journal.operations import TARGETING_PREFIX
from glancesync import strategy as strategies
from glancesync.exceptions import ProtocolError
from glancesync.states import SyncState

LOG = logging.getLogger(__name__)
ORIGIN = "operator"
# Sends one message to an agent; False when it could not be handed to the socket.
Send = Callable[[bytes, str, dict[str, Any]], bool]
# Event ids of resync --failed: those copies follow the strategy, unlike a sync's.
RESYNC_PREFIX = "resync-failed"
DELETE_REASON = "cancelled: the image was deleted in the cascading glance"


def event_targets(body: Mapping[str, Any], known: Iterable[str], strategy: str,
                  existing: Mapping[str, RegionRecord]) -> tuple[list[str], str, bool]:
    """(regions, strategy, operator) for the planner, from an event's journaled body.

    An operator event naming regions sends the image there whatever the strategy; one
    naming none (``resync IMAGE``) follows the strategy, and under ``ON_DEMAND`` goes
    to the regions already asked for.  Any other event: the strategy, unchanged.
    """
    regions = list(known)
    if body.get("operator") is not True:
        return regions, strategy, False
    asked = body.get("regions") or []
    if asked:
        return [r for r in regions if r in asked], strategies.ALL, True
    if strategies.canonical(strategy) == strategies.ON_DEMAND:
        return [r for r in regions if r in existing], strategies.ALL, True
    return regions, strategy, True


def targeting_error(image: Mapping[str, Any] | None, known: Iterable[str], strategy: str,
                    event_id: str, refused: Iterable[str] = ()) -> str | None:
    """The plan_error that keeps a targeting problem (glance_sync_regions, or a target whose copy
    was deleted: ``refused``) for status, logged once."""
    problems = [*planner.targeting_problems(image, known, strategy), *refused]
    if not problems:
        return None
    image_id = (image or {}).get("id")
    LOG.warning("event %s: image %s names regions that are not synced: %s", event_id, image_id, "; ".join(problems))
    return TARGETING_PREFIX + "; ".join(problems)


def operator_event(image_id: str, regions: list[str] | None, who: str, prefix: str = ORIGIN) -> dict[str, Any]:
    """The journaled body of an operator's resync or sync of ``image_id``."""
    body = reconciler.synthetic_event(f"{prefix}-{uuid.uuid4().hex}", "uploaded", image_id, who)
    body["operator"] = True
    if regions:
        body["regions"] = list(regions)
    return body


class OperatorDesk:
    def __init__(self, journal: Journal, agents: Agents, known: Collection[str], send: Send) -> None:
        self.journal = journal
        self.agents = agents
        # The live regions (coordinator/regioncatalog.py): read at each request, never copied.
        self.known = known
        self.send = send

    def request(self, body: dict[str, Any], now: float, who: str) -> dict[str, Any]:
        """Serve one ``operator`` message; the ``data`` of its reply, or ProtocolError (bad_request)."""
        regions = list(dict.fromkeys(body.get("regions") or []))
        for name in regions:
            why = strategies.problem(name, list(self.known))
            if why is not None:
                raise ProtocolError(code="bad_request", detail=why)
        action, image_id = body["action"], body.get("image_id")
        if action in ("cancel", "sync") and not image_id:
            raise ProtocolError(code="bad_request", detail=f"{action} needs an image id")
        if action == "cancel":
            return self.cancel(image_id, regions, now, who)
        if action == "sync":
            if not regions:
                raise ProtocolError(code="bad_request", detail="sync needs at least one region")
            return self._journal_sync(image_id, regions, now, who)
        return self.resync_failed(regions, now, who)

    def cancel(self, image_id: str, regions: list[str], now: float, who: str) -> dict[str, Any]:
        reason = f"cancelled by an operator ({who})"
        done: list[Cancelled] = []
        for region in regions or [None]:
            done += self.journal.cancel_copies(image_id, region, reason, now)
        cancelled = [self._stop(c, reason) for c in done]
        names = {c["region"] for c in cancelled}
        _known, rows = self.journal.image_view(image_id)
        untouched = [{"region": r, "state": rows[r]["state"] if r in rows else None,
                      "reason": _why_not(rows.get(r))}
                     for r in (regions or sorted(rows)) if r not in names]
        LOG.warning("image %s: %d copy task(s) cancelled by %s%s", image_id, len(cancelled), who,
                    f" in {', '.join(sorted(names))}" if names else "")
        return {"image_id": image_id, "cancelled": cancelled, "not_cancelled": untouched}

    def _stop(self, cancelled: Cancelled, reason: str) -> dict[str, Any]:
        """Tell the agent that holds a cancelled task to kill its worker and remove the partial file."""
        told = False
        if cancelled.agent_id is not None:
            session = self.agents.holder(cancelled.task_id)
            self.agents.released(cancelled.task_id)
            if session is not None and session.online:
                told = self.send(session.routing_id, "cancel", {
                    "task_id": cancelled.task_id, "attempt": cancelled.attempt, "reason": reason, "discard": True})
        return {"region": cancelled.region, "task_id": cancelled.task_id, "agent_id": cancelled.agent_id,
                "agent_told": told}

    def _journal_sync(self, image_id: str, regions: list[str], now: float, who: str,
                      prefix: str = ORIGIN) -> dict[str, Any]:
        # An ``operator-`` event id marks a copy asked for by name (never removed as untargeted).
        body = operator_event(image_id, regions, who, prefix)
        self.journal.record_event(body["event_id"], "uploaded", image_id, body, now, who)
        LOG.info("event %s: sync of image %s to %s asked by %s", body["event_id"], image_id, ", ".join(regions), who)
        return {"image_id": image_id, "regions": regions, "event_id": body["event_id"]}

    def resync_failed(self, regions: list[str], now: float, who: str) -> dict[str, Any]:
        failed: dict[str, list[str]] = {}
        for region in regions or [None]:
            for image_id, names in self.journal.failed_regions(region).items():
                failed.setdefault(image_id, []).extend(n for n in names if n in self.known)
        images = [self._journal_sync(image_id, names, now, who, RESYNC_PREFIX)
                  for image_id, names in failed.items() if names]
        LOG.info("resync of failed regions asked by %s: %d image(s)", who, len(images))
        return {"images": images, "regions": sorted(regions)}

    def cancelled(self, task_id: str) -> bool:
        """True when ``task_id`` was cancelled for good: an agent that still runs it drops its partial file."""
        task = self.journal.task(task_id)
        return task is not None and task.state == SyncState.CANCELLED

    def step(self, now: float) -> None:
        """A delete of the cascading image cancels the copies its regions still run."""
        for task in self.journal.copies_behind_deletes():
            if not self.journal.cancel_task(task, DELETE_REASON, now):
                continue
            LOG.warning("task %s (%s %s -> %s): %s", task.task_id, task.kind, task.image_id, task.region,
                        DELETE_REASON)
            self._stop(Cancelled(task.task_id, task.attempt, task.image_id, task.region, task.agent_id),
                       DELETE_REASON)


def _why_not(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "no copy of the image is planned in this region"
    state = row.get("state")
    if state == SyncState.REGISTERING:
        return "too late: the copy is made and being registered"
    if state == SyncState.CANCELLED:
        return "already cancelled"
    return f"nothing in flight ({state})"
