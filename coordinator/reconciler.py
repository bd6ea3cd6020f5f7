"""The periodic reconciler: a lost event may delay a sync, never lose it.

Events can go missing before they reach the journal: the glance-api's outbox was
full or its disk was lost, the filter was disabled for a while, glance-api was
changed without the filter.  Every ``reconcile_interval`` seconds the coordinator
therefore lists the cascading glance (in its glance thread pool, never in the poll
loop) and compares it with the image ids its journal holds:

- an image that is active (or deactivated) in the cascading glance and that the
  journal has never heard of gets a synthetic ``uploaded`` event; so does a queued
  snapshot (coordinator/snapshot.py: only ``cascaded://`` locations, naming a region
  we sync), whose planning then waits for its regional image like one with its event
  (a queued image without such a location is only an image being created);
- an image whose regional copies the journal still tracks but that the cascading
  glance no longer has (confirmed by a 404 on GET, not just by its absence from a
  listing) gets a synthetic ``deleted`` event.

Synthetic events go through the journal and the planner like any other: a
``deleted`` one, too, deletes nothing before the planner's own fetch has seen the
image gone.  Their ids carry the image id and the pass number (its *generation*),
so a delete that failed is tried again by a later pass; the journal skips an event
while one of the same kind for the image still waits for planning, so a second pass
before the first was planned makes no duplicate.  On a first deployment beside an
existing glance, the first pass brings every existing image to the regions the
strategy names.

The same pass also lists every region's glance (with that region's credentials)
and finds drift per (image, region) for the images the journal knows
(coordinator/regiondrift.py): missing copies, failed ones due for a retry, drifted
metadata, lost locations, copies in regions no longer targeted, and the members of
shared images (coordinator/memberscan.py).  Those become ``drift`` events naming
their repairs.

Bounded slices.  Nothing of a pass runs long on the poll loop: the journal is read
(``read_inputs``) in the glance pool, on a connection of its own; the listings are
fetched there page by page, each region's compared as its pages come and then
dropped (regiondrift.RegionJudge: one region's verdicts at a time, never every
region's records); only the pass's synthetic events are written on the loop, at most ``JOURNAL_SLICE`` per iteration (``Journaling``), so a first pass over 100,000
images the journal never heard of leaves status answering and heartbeats flowing
(doc/reconciler.md, Cost).

The safety limit (``limit_deletes``): a listing can be wrong as a whole — a
cascading database restored from an old backup, a wrong endpoint, credentials that
do not see every project (another project's private image answers 404 too).  A
pass that would delete more than ``reconcile_max_deletes`` images' copies, or more
than ``reconcile_max_delete_percent`` of the tracked images, deletes none: it holds
them in the journal until an operator confirms (``glance-sync-manage reconcile
--confirm-deletes``); the next pass then deletes those still confirmed gone.  The
same limits apply, on their own, to the removal of copies the strategy no longer
targets (``limit_removals``): a pass over them removes none and logs an ERROR (a
strategy changed by mistake looks like that); they stay reported as ``unwanted``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator import memberscan, regiondrift, snapshot
from glancesync import glance, untrusted
from glancesync.states import SyncState

LOG = logging.getLogger(__name__)
# The sender and context origin of the reconciler's synthetic events.
ORIGIN = "reconciler"

# Images that hold bytes a region can copy; queued/saving/importing ones are still
# on their way and their own event will come.
SYNCABLE_STATUSES = frozenset({"active", "deactivated"})
# Images per listing request (glance.paged_images follows with ``marker``); glance caps a
# page at its api_limit_max (1000 by default).
PAGE_SIZE = 1000
# Synthetic events one slice journals (one read, one bulk insert); an iteration journals
# slices for JOURNAL_SECONDS at most, and always one, and the rest wait for the next ones.
JOURNAL_SLICE = 200
JOURNAL_SECONDS = 0.2


@dataclass(frozen=True)
class Drift:
    """What one pass found: images to copy and images to remove from the regions."""

    missing: list[str] = field(default_factory=list)
    # Of ``missing``, the queued snapshots (their reason differs in ``glance-sync-manage plan``).
    queued_snapshots: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    # How many images had regional copies when the pass began (the safety limit's base).
    tracked: int = 0
    # Per (image, region) differences of images the journal knows (regiondrift.py).
    repairs: list[regiondrift.Repair] = field(default_factory=list)


def synthetic_events(missing: Iterable[str], deleted: Iterable[str], generation: int,
                     repairs: Iterable[regiondrift.Repair] = ()) -> list[dict[str, Any]]:
    """Event bodies (protocol ``event`` fields) of pass ``generation`` for the journal."""
    work = Journaling(list(missing), list(deleted), list(repairs), [], generation)
    return [work.body(index) for index in range(work.total)]


@dataclass(frozen=True)
class DeletePlan:
    """Of the images a pass found gone: those to delete now and those held for an operator."""

    delete: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)


def over_limit(count: int, tracked: int, max_deletes: int, max_percent: float) -> bool:
    """True when deleting ``count`` of ``tracked`` images passes either limit (0 disables one)."""
    if count <= 0:
        return False
    if max_deletes > 0 and count > max_deletes:
        return True
    return max_percent > 0 and count * 100.0 > max_percent * max(tracked, count)


def limit_deletes(vanished: Iterable[str], tracked: int, confirmed: Iterable[str], max_deletes: int,
                  max_percent: float) -> DeletePlan:
    """Apply the safety limit to the images a pass found gone.

    Images an operator confirmed are deleted whatever their number; the others are all
    deleted when they stay within both limits, and all held when they do not.
    """
    ok = set(confirmed)
    gone = sorted(set(vanished))
    approved = [i for i in gone if i in ok]
    others = [i for i in gone if i not in ok]
    if over_limit(len(others), tracked, max_deletes, max_percent):
        return DeletePlan(delete=approved, held=others)
    return DeletePlan(delete=gone)


def limit_removals(repairs: Iterable[regiondrift.Repair], tracked: int, max_deletes: int,
                   max_percent: float) -> tuple[list[regiondrift.Repair], list[str]]:
    """The repairs to act on, and the images whose ``unwanted`` copies the safety limit holds back.

    Within both limits every removal is acted on; past either, none is (they stay reported).
    """
    repairs = list(repairs)
    images = sorted({r.image_id for r in repairs if r.action == "unwanted"})
    if not over_limit(len(images), tracked, max_deletes, max_percent):
        return repairs, []
    return [r for r in repairs if r.action != "unwanted"], images


def synthetic_event(event_id: str, kind: str, image_id: str, origin: str) -> dict[str, Any]:
    """An ``event`` body made by the coordinator's side itself, not seen by glance_proxy."""
    return {"event_id": event_id, "kind": kind, "image_id": image_id, "image": None, "changes": [],
            "context": {"origin": origin}}


def listed_records(client: Any) -> Iterator[dict[str, Any]]:
    """Every record of a glance's listing (raw paged GETs), hidden ones included, a page at a time."""
    # Glance leaves os_hidden images out of a listing unless asked for them.
    for hidden in (False, True):
        for image in glance.paged_images(client, {"visibility": "all", "os_hidden": hidden}, PAGE_SIZE):
            if not untrusted.is_image_id(image.get("id")):
                # Ids become URLs and journal keys: only glance's own form is let in.
                LOG.warning("reconciler: listing entry with id %s ignored", untrusted.quote(image.get("id")))
                continue
            yield image


def list_images(client: Any, full: Callable[[str], bool] | None = None) -> dict[str, dict[str, Any]]:
    """Image id -> record of every image of the cascading glance, hidden ones included.

    With ``full``, only the images it accepts (and queued ones) keep their whole record; the others keep
    their id and status: a pass compares whole records only of the images the journal
    can judge, and at 100,000 images the rest would cost hundreds of MB.
    """
    found: dict[str, dict[str, Any]] = {}
    for image in listed_records(client):
        # A queued image may be a snapshot whose events were lost (queued_snapshot needs its
        # locations); queued images are few, the ones being created.
        if full is None or full(image["id"]) or image.get("status") == "queued":
            found[image["id"]] = image
        else:
            found[image["id"]] = {"id": image["id"], "status": image.get("status")}
    return found


def find_drift(
    listed: dict[str, dict[str, Any]],
    known: Iterable[str],
    tracked: Iterable[str],
    exists: Callable[[str], bool],
    regions: Iterable[str] = (),
) -> Drift:
    """Compare a listing with the journal.

    ``known``: every image id the journal has an event for; ``tracked``: ids with a
    regional copy that is not deleted or being deleted; ``exists``: a GET that tells
    whether the cascading glance still has an image (a listing can miss one that is
    only hidden from it); ``regions``: the regions synced, where a queued snapshot
    must have been made to count.
    """
    known_ids, tracked_ids, synced = set(known), set(tracked), tuple(regions)
    unknown = {i: image for i, image in listed.items() if i not in known_ids}
    queued = sorted(i for i, image in unknown.items() if queued_snapshot(image, synced))
    missing = sorted({i for i, image in unknown.items() if image.get("status") in SYNCABLE_STATUSES} | set(queued))
    vanished = sorted(i for i in tracked_ids - set(listed) if not exists(i))
    return Drift(missing=missing, queued_snapshots=queued, vanished=vanished, tracked=len(tracked_ids))


def queued_snapshot(image: dict[str, Any], regions: Iterable[str]) -> bool:
    """A queued cascading image that is a snapshot of one of ``regions`` (its bytes are on their way there)."""
    return image.get("status") == "queued" and snapshot.source_region(image, regions) is not None


@dataclass(frozen=True)
class Inputs:
    """What a pass reads from the journal (on the loop thread) before it lists the glances."""

    known: set[str]
    tracked: set[str]
    # image id -> region -> (state, updated_at), as Journal.region_facts() gives it.
    facts: dict[str, dict[str, tuple[str, float]]]
    policy: regiondrift.Policy
    # Ids with an event not planned yet: not judged per region (that event's plan decides what they
    # get; a pass during a long initial planning must not double it with drift events).
    waiting: set[str] = field(default_factory=set)


class JournalReads(Protocol):
    """The journal reads a pass starts from (coordinator.journal.Journal has them)."""

    def known_image_ids(self) -> set[str]: ...

    def tracked_image_ids(self) -> set[str]: ...

    def region_facts(self) -> dict[str, dict[str, tuple[str, float]]]: ...

    def asked_regions(self) -> dict[str, set[str]]: ...

    def waiting_image_ids(self) -> set[str]: ...


def read_inputs(journal: JournalReads, policy: regiondrift.Policy) -> Inputs:
    """What a pass needs from the journal; ``policy`` gets the regions operators asked for."""
    policy = dataclasses.replace(policy, asked=journal.asked_regions())
    waiting = journal.waiting_image_ids()  # read first: an event planned meanwhile shows in the facts
    return Inputs(journal.known_image_ids(), journal.tracked_image_ids(), journal.region_facts(), policy, waiting)


@dataclass
class Journaling:
    """A finished pass whose synthetic events the loop journals a slice at a time.

    The pass gets its number (``Journal.next_reconcile_pass``) with the first slice,
    and every step counts only once committed (``advance``): a slice that rolls back
    is written again, under the same number.  Bodies are made a slice at a time, so
    no iteration pays for the whole pass.  ``held`` replaces the journal's held
    deletions with the last slice: until then an operator's confirmation stays
    recorded, so a crash between slices loses none (a confirmed image is at worst
    shown held while its delete event is already journaled).
    """

    missing: list[str]
    deleted: list[str]
    repairs: list[regiondrift.Repair]
    held: list[str]
    generation: int | None = None
    offset: int = 0
    done: bool = False
    slices: int = 0
    made: int = 0  # events journaled (one still waiting to be planned is not made twice)
    drifted: list[tuple[str, dict[str, str]]] = field(init=False)

    def __post_init__(self) -> None:
        self.drifted = sorted(regiondrift.acted_on(self.repairs).items())

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.deleted) + len(self.drifted)

    def body(self, index: int) -> dict[str, Any]:
        """Event number ``index`` of the pass: its uploads, then its deletes, then its drifts."""
        if index < len(self.missing):
            image_id = self.missing[index]
            return synthetic_event(f"reconcile-uploaded-{image_id}-{self.generation}", "uploaded", image_id, ORIGIN)
        index -= len(self.missing)
        if index < len(self.deleted):
            image_id = self.deleted[index]
            return synthetic_event(f"reconcile-deleted-{image_id}-{self.generation}", "deleted", image_id, ORIGIN)
        image_id, by_region = self.drifted[index - len(self.deleted)]
        body = synthetic_event(f"reconcile-drift-{image_id}-{self.generation}", "drift", image_id, ORIGIN)
        return dict(body, repairs=by_region)

    def slice_at(self, offset: int) -> tuple[list[dict[str, Any]], list[str] | None]:
        """The events of the slice from ``offset``, and the held set when it is the last one."""
        end = min(offset + JOURNAL_SLICE, self.total)
        bodies = [self.body(index) for index in range(offset, end)]
        return bodies, (self.held if end >= self.total else None)

    def advance(self, offset: int, slices: int, made: int, last: bool) -> None:
        """Slices up to ``offset`` are committed (with the held set when ``last``)."""
        self.offset = offset
        self.slices += slices
        self.made += made
        self.done = last


MemberScan = Callable[[dict[str, list[str]]], list[regiondrift.Repair]]


def judge_region(regional_client: Callable[[str], Any], region: str,
                 subjects: dict[str, regiondrift.Subject], policy: regiondrift.Policy
                 ) -> tuple[list[regiondrift.Repair], list[str]] | None:
    """One region's repairs and member candidates, its listing compared page by page and dropped as
    it goes (regiondrift.RegionJudge); None when its glance did not answer (judged not at all)."""
    judge = regiondrift.RegionJudge(region, subjects, policy)
    try:
        for record in listed_records(regional_client(region)):
            judge.see(record["id"], record)
    except Exception as exc:
        LOG.warning("reconciler: region %s not listed, its drift not judged this pass: %s", region,
                    glance.translate(exc, region))
        return None
    return judge.finish()


def region_drift(listed: dict[str, dict[str, Any]], regional_client: Callable[[str], Any],
                 inputs: Inputs, members: MemberScan | None = None) -> list[regiondrift.Repair]:
    """The per-(image, region) repairs of every image the journal knows and whose event is not
    waiting for planning, one region at a time; ``members`` asks glance for the members of the
    shared ones (coordinator/memberscan.py)."""
    journal: dict[str, dict[str, regiondrift.Fact]] = {
        image_id: {} for image_id in inputs.known if image_id not in inputs.waiting}
    for image_id, regions in inputs.facts.items():
        if image_id not in inputs.waiting:
            journal[image_id] = {r: regiondrift.Fact(SyncState(state), at) for r, (state, at) in regions.items()}
    subjects = regiondrift.subjects(listed, journal, inputs.policy)
    repairs: list[regiondrift.Repair] = []
    candidates: dict[str, list[str]] = {}
    for region in inputs.policy.regions:
        judged = judge_region(regional_client, region, subjects, inputs.policy)
        if judged is not None:
            repairs += judged[0]
            for image_id in judged[1]:
                candidates.setdefault(image_id, []).append(region)
    if members is not None and candidates:
        repairs += members(dict(sorted(candidates.items())))
    return sorted(repairs, key=lambda r: (r.image_id, r.region))


def scan(client: Any, regional_client: Callable[[str], Any], inputs: Inputs, endpoint: str) -> Drift:
    """One pass against the cascading glance and the regions; raises GlanceError when the cascading
    glance does not answer."""
    judged = inputs.known - inputs.waiting  # the images region_drift compares record by record
    try:
        listed = list_images(client, judged.__contains__)
    except Exception as exc:
        raise glance.translate(exc, endpoint) from exc

    def exists(image_id: str) -> bool:
        return glance.call(lambda: client.images.get(image_id) is not None, endpoint, missing=False)

    drift = find_drift(listed, inputs.known, inputs.tracked, exists, inputs.policy.regions)
    repairs = region_drift(listed, regional_client, inputs,
                           lambda wanted: memberscan.find(client, regional_client, wanted, endpoint))
    drift = dataclasses.replace(drift, repairs=repairs)
    if drift.missing or drift.vanished or repairs:
        LOG.warning("reconciler: %d image(s) unknown to the journal, %d gone from the cascading glance, "
                    "%d (image, region) difference(s)", len(drift.missing), len(drift.vanished), len(repairs))
    return drift
