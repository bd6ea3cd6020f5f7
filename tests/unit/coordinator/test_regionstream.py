"""A reconciler pass compares each region's listing as its pages come (regiondrift.RegionJudge):
the same decisions as over listings held whole, and no region's records kept once it is judged."""

from __future__ import annotations

import gc
import uuid
import weakref
from typing import Any

import pytest

from coordinator import reconciler, regiondrift
from glancesync.protocol import cascaded_url
from glancesync.states import SyncState

from .conftest import image_record

NOW = 100_000.0
A, B, C, DOWN = "RegionA", "RegionB", "RegionC", "RegionDown"
REGIONS = (A, B, C, DOWN)
POLICY = regiondrift.Policy(REGIONS, "USER", NOW, failed_retry_after=3600.0)
IDS = [str(uuid.UUID(int=n + 1)) for n in range(6)]
KEPT, MISSING, DRIFTED, GONE, NARROWED, UNKNOWN = IDS


class Record(dict):
    """A listing entry that can be watched with a weakref (a plain dict cannot)."""


def cascading(image_id: str, regions: str = f"{A},{B},{C},{DOWN}", **extra: Any) -> dict[str, Any]:
    record = image_record(image_id, glance_sync_regions=regions, **extra)
    record["locations"] = [*record["locations"], *({"url": cascaded_url(r, image_id), "metadata": {}}
                                                   for r in REGIONS)]
    return record


def copy_of(image: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**{k: v for k, v in image.items() if k != "locations"}, **extra}


IMAGES = {KEPT: cascading(KEPT), MISSING: cascading(MISSING), DRIFTED: cascading(DRIFTED),
          NARROWED: cascading(NARROWED, regions=A)}
# What each region's glance lists (GONE is no longer in the cascading glance; UNKNOWN was never journaled).
LISTINGS: dict[str, list[dict[str, Any]]] = {
    A: [copy_of(IMAGES[KEPT]), copy_of(IMAGES[MISSING]), copy_of(IMAGES[DRIFTED], name="renamed"),
        copy_of(IMAGES[NARROWED]), copy_of(cascading(GONE)), copy_of(cascading(UNKNOWN))],
    B: [copy_of(IMAGES[KEPT]), copy_of(IMAGES[DRIFTED], checksum="d" * 32), copy_of(IMAGES[NARROWED]),
        copy_of(IMAGES[MISSING], status="deleted")],
    C: [copy_of(IMAGES[KEPT]), copy_of(IMAGES[DRIFTED], status="deactivated")],
    DOWN: [copy_of(IMAGES[KEPT])],
}
FACTS = {image_id: {r: ("synced", NOW - 10) for r in REGIONS} for image_id in (KEPT, MISSING, DRIFTED, GONE)}
FACTS[NARROWED] = {A: ("synced", NOW - 10), B: ("synced", NOW - 10)}
FACTS[MISSING][C] = ("failed", NOW - 7200)
# Every decision the pass makes over these listings; nothing for DOWN, whose listing failed.
EXPECTED = {
    (MISSING, B, "copy"),  # listed deleted in B
    (MISSING, C, "copy"),  # failed two hours ago: due again
    (DRIFTED, A, "update"),  # renamed
    (DRIFTED, B, "operator"),  # other bytes under the same id
    (DRIFTED, C, "update"),  # deactivated there, active in the cascading glance
    (NARROWED, B, "unwanted"),  # B no longer named in glance_sync_regions
}


class Pages:
    """A region's glance: paged listings built fresh per request (as JSON would be), each record watched."""

    def __init__(self, region: str, watched: dict[str, list[weakref.ref]], on_first_get) -> None:
        self.region, self.watched, self.on_first_get = region, watched, on_first_get
        self.http_client = self
        self.gets = 0

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[None, dict[str, Any]]:
        if not self.gets:
            self.on_first_get(self.region)
        self.gets += 1
        if self.region == DOWN and self.gets > 1:
            raise ConnectionError("the regional glance went away during its listing")
        records = [] if "os_hidden=true" in url else LISTINGS[self.region]
        start = 0
        if "marker=" in url:
            marker = url.split("marker=")[1].split("&")[0]
            start = 1 + next(n for n, r in enumerate(records) if r["id"] == marker)
        page = [Record(r) for r in records[start:start + reconciler.PAGE_SIZE]]
        self.watched.setdefault(self.region, []).extend(weakref.ref(r) for r in page)
        body: dict[str, Any] = {"images": page}
        if start + reconciler.PAGE_SIZE < len(records):
            body["next"] = "/v2/images?next"
        return None, body


def inputs() -> reconciler.Inputs:
    known = set(FACTS) | {UNKNOWN}
    return reconciler.Inputs(known, set(FACTS), FACTS, POLICY)


def alive(watched: dict[str, list[weakref.ref]], regions) -> int:
    gc.collect()
    return sum(1 for region in regions for ref in watched.get(region, []) if ref() is not None)


@pytest.fixture(autouse=True)
def small_pages(monkeypatch) -> None:
    monkeypatch.setattr(reconciler, "PAGE_SIZE", 2)  # several pages per region


def test_streamed_regions_make_the_decisions_of_whole_listings() -> None:
    watched: dict[str, list[weakref.ref]] = {}
    clients = {r: Pages(r, watched, lambda region: None) for r in REGIONS}
    found = reconciler.region_drift(IMAGES, clients.__getitem__, inputs())
    assert {(r.image_id, r.region, r.action) for r in found} == EXPECTED
    assert found == sorted(found, key=lambda r: (r.image_id, r.region))
    assert clients[A].gets > 2 and clients[DOWN].gets == 2  # paged, and DOWN failed part way
    # The same rule over listings held whole (DOWN's failed: None).
    whole = {r: {i["id"]: i for i in LISTINGS[r]} for r in (A, B, C)}
    journal = {i: {r: regiondrift.Fact(SyncState(s), at) for r, (s, at) in f.items()} for i, f in FACTS.items()}
    held = regiondrift.find_repairs(IMAGES, {**whole, DOWN: None}, journal, POLICY)
    assert sorted(held, key=lambda r: (r.image_id, r.region)) == found


def test_a_region_listed_later_replaces_nothing_and_a_missing_listing_judges_every_copy_missing() -> None:
    journal = {KEPT: {r: regiondrift.Fact(SyncState.SYNCED, NOW - 10) for r in REGIONS}}
    judge = regiondrift.RegionJudge(A, regiondrift.subjects(IMAGES, journal, POLICY), POLICY)
    judge.see(KEPT, copy_of(IMAGES[KEPT], checksum="e" * 32))
    judge.see(KEPT, copy_of(IMAGES[KEPT]))  # the same id listed again (hidden pass): the last one counts
    assert judge.finish() == ([], [])
    empty = regiondrift.RegionJudge(A, regiondrift.subjects(IMAGES, journal, POLICY), POLICY)
    ((repair,), _members) = empty.finish()
    assert (repair.image_id, repair.action) == (KEPT, "copy")


def test_a_pass_holds_one_regions_records_at_a_time_and_none_after_it() -> None:
    watched: dict[str, list[weakref.ref]] = {}
    held_when_listing: dict[str, int] = {}

    def on_first_get(region: str) -> None:
        # Every region listed before this one: judged, so its records must be gone.
        held_when_listing[region] = alive(watched, REGIONS[:REGIONS.index(region)])

    clients = {r: Pages(r, watched, on_first_get) for r in REGIONS}
    found = reconciler.region_drift(IMAGES, clients.__getitem__, inputs())
    assert {(r.image_id, r.region, r.action) for r in found} == EXPECTED
    assert sum(len(refs) for refs in watched.values()) >= 12  # the records were made and watched
    assert held_when_listing == {A: 0, B: 0, C: 0, DOWN: 0}
    assert alive(watched, REGIONS) == 0
    # Nothing of the listings is kept by a judge either: only verdicts and ids.
    judge = regiondrift.RegionJudge(A, regiondrift.subjects(IMAGES, {KEPT: {}}, POLICY), POLICY)
    record = Record(copy_of(IMAGES[KEPT]))
    ref = weakref.ref(record)
    judge.see(KEPT, record)
    del record
    gc.collect()
    assert ref() is None


def test_subjects_share_equal_target_sets_and_skip_images_gone_from_the_cascading_glance() -> None:
    journal = {i: {} for i in (KEPT, MISSING, GONE, NARROWED)}
    known = regiondrift.subjects(IMAGES, journal, POLICY)
    assert set(known) == {KEPT, MISSING, NARROWED}
    assert known[KEPT].targets is known[MISSING].targets
    assert known[NARROWED].targets == frozenset({A})
