"""The planner: which tasks an image event asks for.  Pure: no I/O, no clock, no config object.

Input: the event kind, the cascading image record as glance returns it (with
``locations``), the known regions, the sync strategy and what the journal already
holds for each (image, region).  Output: a ``Plan`` of new tasks and of regions that
fail at once (a source we refuse to read from, an image that never became active).

- ``uploaded`` / ``imported`` / ``created`` of an *active* image: ``copy`` to every
  target region that does not hold (or is not already getting) the same bytes.
- ``updated`` / ``tags_changed`` / ``members_changed`` / ``deactivated`` / ``reactivated``: ``update`` for
  every region that has or is getting the image; ``updated`` and ``reactivated`` of an
  active image also copy to new targets (``glance_sync_regions`` may have changed).
  ``updated`` also deletes the synced copies in regions no longer targeted (``removals``):
  a deliberate delete, never under ``None``/``ON_DEMAND`` (those copies an operator asked for),
  never while ``glance_sync_regions`` names a region that is not one (a typo).
- ``deleted``: ``delete`` for every region with a record that is not deleted already,
  but only when ``image`` (the coordinator's own fetch) says glance no longer has it:
  None (404) or a status in ``GONE_STATUSES``.  A regional delete is final (glance
  never takes a deleted id back), so for an image glance still shows the plan is
  ``refused`` and holds no task, whoever sent the event.
- ``drift`` (a reconciler pass's event, coordinator/regiondrift.py): the repairs it names
  per region, ``copy`` also where the journal says synced (the copy is gone from the
  region, or its location from the cascading image: the agent confirms or restores
  it), ``update`` where the region holds the image, ``delete`` of a synced copy the
  strategy no longer targets (the reconciler's ``unwanted``, within its safety limit).

A snapshot (coordinator/snapshot.py: the cascading image's bytes are in the region
that made it) is planned from ``Snapshot``, the regional image the coordinator read:
the copies carry its recorded size and hashes and name that region as their source;
``created`` and ``locations_changed`` of a snapshot copy like ``uploaded``.  Its
targets are ``snapshot_regions`` when given, else the strategy's, and always its own
region (whose task only confirms the copy there, so it is never removed as untargeted).

A target whose record is ``deleted`` (or ``deleting``) gets no copy from an event: Glance
never takes a deleted id back until an operator purges it in that region.  ``Plan.problems``
says so, for status's targeting error.  Only an operator's resync or sync and a reconciler
``drift`` copy try again (the agent's create tells whether the id was purged).

Copy and update tasks of a shared image carry its ``members`` (the coordinator's own
listing, fetched with the image), so every region shares it with the same projects.

Targets by ``sync_strategy`` (glancesync.strategy): ``ALL`` every region, ``None``
and ``ON_DEMAND`` none, ``USER`` the regions named in the image property
``glance_sync_regions`` (comma-separated) that glance_store.yaml knows, plus those a
``sync_user_rules`` rule gives the owner's project; ``targeting_problems`` names the
others.  An operator's request (``operator=True``: resync, sync) also copies to a
``cancelled`` region, which no other event brings back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator import snapshot as snapshots
from coordinator.journal import NewTask, RegionRecord
from glancesync import strategy as strategies
from glancesync.exceptions import SourceRefused
from glancesync.states import ACTIVE_STATES, SyncState

USER_REGIONS_PROPERTY = "glance_sync_regions"
COPY_EVENTS = frozenset({"uploaded", "imported", "created"})
UPDATE_EVENTS = frozenset({"updated", "tags_changed", "deactivated", "reactivated", "members_changed"})
# Events after which an active image may need copies to regions that lack it.
RECOPY_EVENTS = frozenset({"updated", "reactivated"})
# Statuses of an image glance has let go of; any other status means it still exists.
GONE_STATUSES = frozenset({"deleted", "killed", "pending_delete"})
# A copy task's payload key: it is planned over a deleted region (coordinator-side only, never sent).
RESTORE = "restore"
# (image_id, file:// url) -> absolute path in the cascading store; storemap.source_path.
SourcePath = Callable[[str, str], str]
# Events that make a snapshot's copies once its regional image is active.
SNAPSHOT_COPY_EVENTS = frozenset({"created", "locations_changed"})


@dataclass(frozen=True)
class FromRegion:
    """A snapshot's source as planned: where copies read (``source``) or why none can be made."""

    source: dict[str, Any] | None
    why: str | None = None


@dataclass
class Plan:
    tasks: list[NewTask] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    # Why the event was refused (nothing planned), e.g. a delete of an image glance still has.
    refused: str | None = None
    # Targets that get no copy and why (their copy was deleted: glance refuses the id).
    problems: list[str] = field(default_factory=list)


def image_gone(image: Mapping[str, Any] | None) -> bool:
    """True when the cascading glance no longer has the image (404, or a status in GONE_STATUSES)."""
    return image is None or image.get("status") in GONE_STATUSES


def target_regions(image: Mapping[str, Any], regions: Iterable[str], strategy: str,
                   rules: Mapping[str, Iterable[str]] | None = None,
                   snapshot_regions: Iterable[str] = ()) -> list[str]:
    """The regions ``strategy`` sends ``image`` to, in glance_store.yaml order.

    A snapshot goes to ``snapshot_regions`` (when not empty) instead, and always to its own region.
    """
    known = list(regions)
    made_in = snapshots.source_region(image, known)
    if made_in is not None:
        wanted = set(snapshot_regions) or set(_by_strategy(image, known, strategy, rules))
        return [name for name in known if name in wanted or name == made_in]
    return _by_strategy(image, known, strategy, rules)


def _by_strategy(image: Mapping[str, Any], known: list[str], strategy: str,
                 rules: Mapping[str, Iterable[str]] | None) -> list[str]:
    strategy = strategies.canonical(strategy)
    if strategy == strategies.ALL:
        return known
    if strategy == strategies.USER:
        wanted = set(strategies.split_names(image.get(USER_REGIONS_PROPERTY)))
        wanted.update((rules or {}).get(str(image.get("owner") or ""), ()))
        return [name for name in known if name in wanted]
    return []


def targeting_problems(image: Mapping[str, Any] | None, regions: Iterable[str], strategy: str) -> list[str]:
    """Why names of ``glance_sync_regions`` are no region (USER only): unknown, or known in another case."""
    if image is None or strategies.canonical(strategy) != strategies.USER:
        return []
    known = list(regions)
    regions_known = set(known)  # most names are regions: a set lookup each, not a walk of the list
    found = (strategies.problem(name, known) for name in strategies.split_names(image.get(USER_REGIONS_PROPERTY))
             if name not in regions_known)
    return [why for why in found if why is not None]


def removals(targets: Iterable[str], strategy: str, existing: Mapping[str, RegionRecord],
             asked: Iterable[str] = ()) -> list[str]:
    """Regions holding a synced copy that ``strategy`` no longer targets: their copy is to be deleted.

    Never under ``None`` or ``ON_DEMAND`` (there every copy is one an operator asked for),
    nor in a region of ``asked`` (an operator's ``sync`` sent the copy there).
    """
    if strategies.canonical(strategy) in (strategies.NONE, strategies.ON_DEMAND):
        return []
    wanted = set(targets) | set(asked)
    return [r for r, rec in existing.items() if r not in wanted and rec.state == SyncState.SYNCED]


def deleted_targets(targets: Iterable[str], existing: Mapping[str, RegionRecord], image_id: str) -> list[str]:
    """Why targets whose copy was deleted get none again (glance never re-creates a deleted id)."""
    return [f"region {r!r}: the copy of image {image_id} there was deleted (its targets changed) and glance "
            f"never creates a deleted id again; not copied until an operator purges the id in {r}'s glance "
            "(doc/runbook.md)"
            for r in targets
            if r in existing and existing[r].state in (SyncState.DELETED, SyncState.DELETING)]


def _deletes(image: Mapping[str, Any], regions: Iterable[str]) -> list[NewTask]:
    return [NewTask(region, "delete", {"image": dict(image), "source": None})
            for region in regions]


def file_location(image: Mapping[str, Any]) -> str | None:
    """The image's first ``file://`` location URL, if glance showed one."""
    for location in image.get("locations") or []:
        url = location.get("url") if isinstance(location, Mapping) else None
        if isinstance(url, str) and url.startswith("file://"):
            return url
    direct = image.get("direct_url")
    return direct if isinstance(direct, str) and direct.startswith("file://") else None


def _needs_copy(record: RegionRecord | None, image: Mapping[str, Any], operator: bool = False) -> bool:
    if record is None:
        return True
    if record.state == SyncState.CANCELLED:
        return operator  # an operator stopped it: only an operator starts it again
    if record.state == SyncState.DELETED:
        # Glance takes a deleted id back only once an operator purged it: only an operator asks.
        return operator
    if record.state == SyncState.DELETING:
        return False  # a region mid-delete must finish first
    if record.state == SyncState.SYNCED:
        return record.os_hash_value != image.get("os_hash_value")
    if record.state in ACTIVE_STATES and record.task_kind == "copy":
        return False
    return True


def _payload(image: Mapping[str, Any], source: dict[str, Any] | None,
             members: list[dict[str, str]] | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"image": dict(image), "source": source}
    if members is not None:
        payload["members"] = members
    return payload


def _copies(image: Mapping[str, Any], targets: list[str], existing: Mapping[str, RegionRecord],
            source_path: SourcePath, members: list[dict[str, str]] | None = None, operator: bool = False,
            needs: Callable[[RegionRecord | None, Mapping[str, Any]], bool] | None = None,
            from_region: FromRegion | None = None) -> Plan:
    plan = Plan()
    needs = needs or (lambda record, img: _needs_copy(record, img, operator))
    needed = [region for region in targets if needs(existing.get(region), image)]
    if not needed:
        return plan
    image_id = str(image.get("id"))
    if from_region is not None:  # a snapshot: never the cascading store
        if from_region.source is None:
            plan.failures = {region: str(from_region.why) for region in needed}
        else:
            plan.tasks = [NewTask(region, "copy", _payload(image, from_region.source, members)) for region in needed]
        return plan
    try:
        url = file_location(image)
        if url is None:
            raise SourceRefused(image_id=image_id, detail="the image has no file:// location to copy from")
        source = {"type": "sftp", "path": source_path(image_id, url)}
    except SourceRefused as exc:
        plan.failures = {region: str(exc) for region in needed}
        return plan
    plan.tasks = [NewTask(region, "copy", _restore(_payload(image, source, members), existing.get(region)))
                  for region in needed]
    return plan


def _restore(payload: dict[str, Any], record: RegionRecord | None) -> dict[str, Any]:
    """Mark a copy over a deleted region (the journal lets only such a copy move it on)."""
    if record is not None and record.state == SyncState.DELETED:
        payload[RESTORE] = True
    return payload


def _may_repair(record: RegionRecord | None, image: Mapping[str, Any]) -> bool:
    """A drift copy: also over a synced record (its copy or location went missing) or a deleted one
    (the id may have been purged), never mid-task."""
    return record is None or record.state in (SyncState.SYNCED, SyncState.FAILED, SyncState.DELETED)


def _repairs(image: Mapping[str, Any], repairs: Mapping[str, str], existing: Mapping[str, RegionRecord],
             source_path: SourcePath, members: list[dict[str, str]] | None, removable: list[str],
             from_region: FromRegion | None = None) -> Plan:
    copy_to = [r for r, action in repairs.items() if action == "copy"]
    result = Plan()
    if copy_to and image.get("status") == "active":
        result = _copies(image, copy_to, existing, source_path, members, needs=_may_repair, from_region=from_region)
    result.tasks += [NewTask(region, "update", _payload(image, None, members))
                     for region, action in repairs.items()
                     if action == "update" and region in existing and _holds_image(existing[region])]
    result.tasks += _deletes(image, [r for r, action in repairs.items() if action == "delete" and r in removable])
    return result


def _holds_image(record: RegionRecord) -> bool:
    return record.state == SyncState.SYNCED or (
        record.state in ACTIVE_STATES and record.state != SyncState.DELETING)


def plan(kind: str, image_id: str, image: Mapping[str, Any] | None, regions: Iterable[str], strategy: str,
         existing: Mapping[str, RegionRecord], source_path: SourcePath,
         rules: Mapping[str, Iterable[str]] | None = None, operator: bool = False,
         members: list[dict[str, str]] | None = None, repairs: Mapping[str, str] | None = None,
         asked: Iterable[str] = (), snapshot: snapshots.Snapshot | None = None,
         snapshot_regions: Iterable[str] = (), sources: Mapping[str, Any] | None = None) -> Plan:
    """The tasks an event of ``kind`` asks for; ``image`` is what glance answered now (None: 404).

    ``operator``: the event is an operator's resync or sync, which may restart a cancelled region.
    ``members``: the shared image's members as the coordinator listed them (None: not shared).
    ``repairs``: a ``drift`` event's region -> ``copy`` | ``update`` | ``delete``.
    ``asked``: regions an operator's sync sent the image to; never removed as untargeted.
    ``snapshot``: the region that made this snapshot and its image there (coordinator/snapshot.py),
    ``snapshot_regions`` its targets (empty: the strategy's), ``sources`` glance_store.yaml's
    ``regions.<name>.source`` entries.
    """
    regions = list(regions)
    if kind == "deleted":
        if not image_gone(image):
            return Plan(refused=f"glance still has the image (status {image.get('status')})")
        record = dict(image) if image else {"id": image_id}
        return Plan(tasks=[NewTask(region, "delete", {"image": record, "source": None})
                           for region, rec in existing.items()
                           if rec.state not in (SyncState.DELETED, SyncState.DELETING)])
    if image is None:
        # Gone from the cascading glance: the ``deleted`` event that follows cleans up.
        return Plan()
    targets = target_regions(image, regions, strategy, rules, snapshot_regions)
    from_region = None
    if snapshot is not None:
        image, kind, from_region = _as_snapshot(image, kind, snapshot, sources or {})
        # The region that made it holds it: never a removal, whatever the strategy says.
        asked = [*asked, snapshot.region]
    # A name that is no region (a typo) removes nothing: fixing it must not cost a copy.
    removable = [] if targeting_problems(image, regions, strategy) else removals(targets, strategy, existing, asked)
    result = _plan_image(kind, image, targets, removable, existing, source_path, operator, members, repairs,
                         from_region)
    copied = {t.region for t in result.tasks if t.kind == "copy"}
    result.problems = deleted_targets([r for r in targets if r not in copied], existing, image_id)
    return result


def _as_snapshot(image: Mapping[str, Any], kind: str, snapshot: snapshots.Snapshot,
                 sources: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, FromRegion]:
    """The record, event kind and source a snapshot is planned with: the regional glance's values."""
    source, why = snapshots.plan_source(snapshot, sources, str(image.get("id")), image.get("owner"))
    if snapshot.regional is not None and why is None:
        image = snapshots.recorded(image, snapshot.regional)
    return image, "uploaded" if kind in SNAPSHOT_COPY_EVENTS else kind, FromRegion(source, why)


def _plan_image(kind: str, image: Mapping[str, Any], targets: list[str], removable: list[str],
                existing: Mapping[str, RegionRecord], source_path: SourcePath, operator: bool,
                members: list[dict[str, str]] | None, repairs: Mapping[str, str] | None,
                from_region: FromRegion | None = None) -> Plan:
    image_id = str(image.get("id"))
    if kind == "drift":
        # Judged against a listing a moment ago; re-checked here against this fetch.
        wanted = set(targets)
        return _repairs(image, {r: a for r, a in (repairs or {}).items() if r in wanted or a == "delete"},
                        existing, source_path, members, removable, from_region)
    active = image.get("status") == "active"
    if kind in COPY_EVENTS:
        if active or (from_region is not None and from_region.source is None):  # a snapshot says why not
            return _copies(image, targets, existing, source_path, members, operator, from_region=from_region)
        if kind == "created":
            return Plan()  # the upload or import event comes later
        status = image.get("status")
        return Plan(failures={r: f"image {image_id} is {status}, not active; nothing to copy"
                              for r in targets if _needs_copy(existing.get(r), image, operator)})
    if kind not in UPDATE_EVENTS:
        return Plan()  # locations_changed: our own registrations, or nothing to sync
    removed = removable if kind == "updated" else []
    result = Plan(tasks=[NewTask(region, "update", _payload(image, None, members))
                         for region, rec in existing.items() if _holds_image(rec) and region not in removed])
    result.tasks += _deletes(image, removed)
    if active and kind in RECOPY_EVENTS:
        fresh = [r for r in targets if r not in existing or existing[r].state == SyncState.FAILED]
        copies = _copies(image, fresh, existing, source_path, members, from_region=from_region)
        result.tasks += copies.tasks
        result.failures.update(copies.failures)
    return result
