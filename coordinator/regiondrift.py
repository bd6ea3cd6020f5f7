"""Drift per (image, region): what a reconciler pass repairs.  Pure: no I/O, no clock.

``reconciler.py`` finds images the journal never heard of and images gone from the
cascading glance.  This module compares, for every image the journal knows, what
should be (the strategy's targets and the cascading record) with what is (the
region's own listing, the journal's state, the cascading image's locations), and
says what to do about each difference:

- ``copy``: an active image that a target region should hold and does not: no copy
  was ever planned there (a region added later, a lost ``uploaded`` after a seen
  ``created``); the copy failed, or was deleted (the region was untargeted, then
  targeted again), long enough ago (``failed_retry_after``: a deleted id comes back
  only once an operator purged it in that region, and the agent's create tells); the
  journal says ``synced`` but the region's glance no longer lists it (deleted by
  hand: the agent restores it under the same id, or reports that glance refuses a
  deleted id); or its ``cascaded://`` location is missing from the cascading image
  (the agent finds its verified copy, and the coordinator registers it again).
- ``update``: a synced copy whose status (active / deactivated) or copied metadata
  differs from the cascading image's (``glancesync.imagediff``).
- ``operator``: a difference the service must not repair by itself: a regional image
  with the same id and other bytes.
- ``update`` too for a synced copy of a shared image whose members or member statuses
  differ from the cascading image's (``member_candidates`` names the pairs to ask
  about, since a listing carries no members; coordinator/memberscan.py asks and
  ``member_differences`` compares).
- nothing for a region an operator cancelled (``cancelled`` waits for resync or sync).
- ``unwanted``: a copy this service made (the journal says ``synced``) in a region
  the strategy no longer targets (a strategy or rule changed, or an ``updated`` event
  was lost).  It becomes a ``delete`` of that copy (and of its location), within the
  reconciler's safety limit (reconciler.limit_removals); never under ``None`` or
  ``ON_DEMAND``, whose copies an operator asked for, nor for a copy an operator's
  ``sync`` made under another strategy (``Policy.asked``).

``copy``, ``update`` and ``unwanted`` become events (``unwanted`` as a ``delete``
repair).  A region whose listing failed this pass is judged not at all: an
unanswered listing is not an empty one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator import planner, snapshot
from glancesync import imagediff, protocol
from glancesync import strategy as strategies
from glancesync.states import ACTIVE_STATES, SyncState

ACTIONS = ("copy", "update", "operator", "unwanted")
# Actions a pass turns into events, with the repair each event names; the others are reported only.
ACTED_ON = {"copy": "copy", "update": "update", "unwanted": "delete"}
# Statuses of a cascading image whose copies the regions should hold.
HELD_STATUSES = frozenset({"active", "deactivated"})
GONE = frozenset({"deleted", "killed", "pending_delete"})


@dataclass(frozen=True, slots=True)
class Fact:
    """What the journal says of one (image, region)."""

    state: SyncState
    updated_at: float


@dataclass(frozen=True)
class Repair:
    image_id: str
    region: str
    action: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"image_id": self.image_id, "region": self.region, "action": self.action, "reason": self.reason}


@dataclass(frozen=True)
class Policy:
    """What decides the targets and the retry of failed copies."""

    regions: tuple[str, ...]
    strategy: str
    now: float
    # Seconds after which a failed (image, region) is copied again; 0: never.
    failed_retry_after: float = 0.0
    # USER's sync_user_rules: owner project -> regions.
    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # image id -> regions an operator's sync sent a copy to: never unwanted.
    asked: Mapping[str, Collection[str]] = field(default_factory=dict)
    # snapshot_region_names: a snapshot's targets when not empty (coordinator/snapshot.py).
    snapshot_regions: tuple[str, ...] = ()

    def targets(self, image: Mapping[str, Any], facts: Mapping[str, Fact]) -> list[str]:
        """The regions ``image`` should be in.  With ``None`` or ``ON_DEMAND`` no region is a
        target by strategy: the copies an operator asked for (journaled) are kept up to date,
        none is added and none is unwanted."""
        made_in = snapshot.source_region(image, self.regions)
        if made_in is None or not self.snapshot_regions:
            if strategies.canonical(self.strategy) in (strategies.NONE, strategies.ON_DEMAND):
                # A deleted copy is no longer one an operator asked for; a sync asks again.
                return [r for r in self.regions
                        if (r in facts and facts[r].state != SyncState.DELETED) or r == made_in]
        return planner.target_regions(image, self.regions, self.strategy, self.rules, self.snapshot_regions)


def _same_bytes(cascading: Mapping[str, Any], regional: Mapping[str, Any]) -> bool:
    for key in ("size", "checksum"):
        if cascading.get(key) is not None and regional.get(key) is not None and cascading[key] != regional[key]:
            return False
    same_algo = cascading.get("os_hash_algo") == regional.get("os_hash_algo")
    return not same_algo or cascading.get("os_hash_value") == regional.get("os_hash_value")


def _registered(image: Mapping[str, Any], region: str) -> bool | None:
    """Whether the cascading image lists this region's location; None when glance shows no locations."""
    if "locations" not in image:
        return None
    url = protocol.cascaded_url(region, str(image.get("id")))
    return any(isinstance(loc, Mapping) and loc.get("url") == url for loc in image.get("locations") or [])


def _synced_drift(image: Mapping[str, Any], region: str, regional: Mapping[str, Any] | None) -> tuple[str, str] | None:
    active = image.get("status") == "active"
    if regional is None or regional.get("status") in GONE:
        if not active:
            return None
        return "copy", "the journal says synced but the region's glance no longer has the image"
    if not _same_bytes(image, regional):
        return "operator", "the regional image has this id and other bytes; an operator must resolve it"
    if regional.get("status") in HELD_STATUSES and regional.get("status") != image.get("status"):
        return "update", f"the copy is {regional.get('status')}, the cascading image {image.get('status')}"
    changes, removes = imagediff.property_changes(dict(image), dict(regional))
    if changes or removes:
        return "update", "metadata differs: " + ", ".join(sorted([*changes, *removes]))
    if active and regional.get("status") == "active" and _registered(image, region) is False:
        return "copy", f"location {protocol.cascaded_url(region, str(image.get('id')))} is missing"
    return None


def _judge(image: Mapping[str, Any], region: str, fact: Fact | None, regional: Mapping[str, Any] | None,
           policy: Policy) -> tuple[str, str] | None:
    active = image.get("status") == "active"
    if fact is None:
        return ("copy", "no copy was ever planned for this region") if active else None
    if fact.state in ACTIVE_STATES or fact.state == SyncState.CANCELLED:
        return None  # in flight, or stopped by an operator until one asks again
    waited = policy.now - fact.updated_at
    due = active and policy.failed_retry_after > 0 and waited >= policy.failed_retry_after
    if fact.state == SyncState.FAILED:
        return ("copy", f"failed {waited:.0f} s ago; tried again") if due else None
    if fact.state == SyncState.DELETED:
        # Glance refuses the id (409) until an operator purges it there: the agent's create
        # is the test, and a refusal leaves the region failed with that reason.
        return ("copy", f"the copy here was deleted {waited:.0f} s ago and the region is a target again; "
                        "tried again in case an operator purged the id") if due else None
    return _synced_drift(image, region, regional)


@dataclass(frozen=True, slots=True)
class Subject:
    """What a pass judges one image by in every region, worked out once per pass."""

    image: Mapping[str, Any]
    facts: Mapping[str, Fact]
    targets: frozenset[str]
    typo: bool  # glance_sync_regions names a region that is not one: nothing is unwanted until it is fixed


def subjects(cascading: Mapping[str, Mapping[str, Any]], journal: Mapping[str, Mapping[str, Fact]],
             policy: Policy) -> dict[str, Subject]:
    """image id -> Subject, for the images the journal knows that the cascading glance holds.

    Equal target sets are shared: at 100,000 images most images have one of a few.
    """
    found: dict[str, Subject] = {}
    interned: dict[frozenset[str], frozenset[str]] = {}
    for image_id, facts in journal.items():
        image = cascading.get(image_id)
        if image is None or image.get("status") not in HELD_STATUSES:
            continue
        targets = frozenset(policy.targets(image, facts))
        typo = bool(planner.targeting_problems(image, policy.regions, policy.strategy))
        found[image_id] = Subject(image, facts, interned.setdefault(targets, targets), typo)
    return found


class RegionJudge:
    """One region's drift, judged record by record as its listing streams in.

    Only a verdict per listed image is kept (and the ids of listed shared copies whose
    members are worth asking about), never the regional records: a pass holds one
    region's verdicts at a time, not every region's listing.  ``finish`` judges the
    images the listing did not show.  A listing that fails part way is dropped whole
    by the caller: an unanswered listing is not an empty one.
    """

    def __init__(self, region: str, subjects: Mapping[str, Subject], policy: Policy) -> None:
        self.region = region
        self.subjects = subjects
        self.policy = policy
        self.verdicts: dict[str, tuple[str, str] | None] = {}
        self.shared: set[str] = set()

    def see(self, image_id: str, record: Mapping[str, Any]) -> None:
        """A record of the region's listing (a later record of the same id replaces the earlier)."""
        subject = self.subjects.get(image_id)
        if subject is None:
            return
        self.verdicts[image_id] = self._verdict(image_id, subject, record)
        if record.get("status") in HELD_STATUSES and record.get("visibility") == "shared":
            self.shared.add(image_id)
        else:
            self.shared.discard(image_id)

    def finish(self) -> tuple[list[Repair], list[str]]:
        """The region's repairs, and the images whose members to compare here (``member_candidates``)."""
        repairs, members = [], []
        for image_id, subject in self.subjects.items():
            verdict = (self.verdicts[image_id] if image_id in self.verdicts
                       else self._verdict(image_id, subject, None))
            if verdict:
                repairs.append(Repair(image_id, self.region, *verdict))
            elif (image_id in self.shared and subject.image.get("visibility") == "shared"
                  and self.region in subject.targets and self.region in subject.facts
                  and subject.facts[self.region].state == SyncState.SYNCED):
                members.append(image_id)
        return repairs, members

    def _verdict(self, image_id: str, subject: Subject, record: Mapping[str, Any] | None) -> tuple[str, str] | None:
        region, policy, fact = self.region, self.policy, subject.facts.get(self.region)
        if region in subject.targets:
            return _judge(subject.image, region, fact, record, policy)
        if (fact is not None and fact.state == SyncState.SYNCED and not subject.typo
                and region not in policy.asked.get(image_id, ())):
            return "unwanted", f"strategy {policy.strategy} no longer targets this region"
        return None


def _judged(
    cascading: Mapping[str, Mapping[str, Any]],
    regional: Mapping[str, Mapping[str, Mapping[str, Any]] | None],
    journal: Mapping[str, Mapping[str, Fact]],
    policy: Policy,
) -> tuple[list[Repair], dict[str, list[str]]]:
    known = subjects(cascading, journal, policy)
    repairs: list[Repair] = []
    members: dict[str, list[str]] = {}
    for region in policy.regions:
        listing = regional.get(region)
        if listing is None:
            continue
        judge = RegionJudge(region, known, policy)
        for image_id, record in listing.items():
            judge.see(image_id, record)
        found, shared = judge.finish()
        repairs += found
        for image_id in shared:
            members.setdefault(image_id, []).append(region)
    order = {region: index for index, region in enumerate(policy.regions)}
    repairs.sort(key=lambda r: (r.image_id, order[r.region]))
    return repairs, dict(sorted(members.items()))


def find_repairs(
    cascading: Mapping[str, Mapping[str, Any]],
    regional: Mapping[str, Mapping[str, Mapping[str, Any]] | None],
    journal: Mapping[str, Mapping[str, Fact]],
    policy: Policy,
) -> list[Repair]:
    """Every repair for the images the journal knows, sorted by image then region.

    ``cascading``: id -> record of the cascading listing; ``regional``: region -> id ->
    record of that region's listing (None: the listing failed); ``journal``: id ->
    region -> Fact, for every image the journal has regional records of.  A pass
    streams its listings through ``RegionJudge`` instead; this is the same rule over
    listings held whole.
    """
    return _judged(cascading, regional, journal, policy)[0]


def acted_on(repairs: Iterable[Repair]) -> dict[str, dict[str, str]]:
    """image id -> region -> repair (``copy``, ``update``, ``delete``), for the repairs a pass acts on."""
    by_image: dict[str, dict[str, str]] = {}
    for repair in repairs:
        if repair.action in ACTED_ON:
            by_image.setdefault(repair.image_id, {})[repair.region] = ACTED_ON[repair.action]
    return by_image


def member_candidates(
    cascading: Mapping[str, Mapping[str, Any]],
    regional: Mapping[str, Mapping[str, Mapping[str, Any]] | None],
    journal: Mapping[str, Mapping[str, Fact]],
    policy: Policy,
    repairs: Iterable[Repair],
) -> dict[str, list[str]]:
    """image id -> regions whose members a pass compares.

    Only a shared image (glance keeps members for no other), synced in a target region
    whose listing shows the copy shared too, with no other repair planned there: an
    ``update`` applies the members anyway, and a copy of another visibility is an
    ``update`` of its metadata first.  ``repairs`` (the pass's other ones) leaves out
    pairs busy otherwise.
    """
    busy = {(r.image_id, r.region) for r in repairs}
    found = {image_id: [r for r in regions if (image_id, r) not in busy]
             for image_id, regions in _judged(cascading, regional, journal, policy)[1].items()}
    return {image_id: regions for image_id, regions in found.items() if regions}


def member_differences(want: Iterable[Mapping[str, str]], have: Iterable[Mapping[str, str]]) -> str | None:
    """Why a copy's members (``have``) are not the cascading image's (``want``); None when equal.

    Members are ``{"member_id", "status"}``; a status differs too (glance lets an admin set
    any member's status, and the agent's regional credentials are admin).
    """
    wanted = {m["member_id"]: m["status"] for m in want}
    held = {m["member_id"]: m["status"] for m in have}
    parts = []
    missing, extra = sorted(wanted.keys() - held.keys()), sorted(held.keys() - wanted.keys())
    if missing:
        parts.append("missing " + ", ".join(missing))
    if extra:
        parts.append("extra " + ", ".join(extra))
    other = sorted(m for m in wanted.keys() & held.keys() if wanted[m] != held[m])
    if other:
        parts.append("status of " + ", ".join(f"{m} {held[m]}, not {wanted[m]}" for m in other))
    return "members differ: " + "; ".join(parts) if parts else None
