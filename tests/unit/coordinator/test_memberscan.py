"""Member drift of shared images: which pairs a pass asks about (regiondrift), what it asks and
how it judges the answers (memberscan), and a whole scan against fake glances."""

from __future__ import annotations

import logging

from glanceclient import exc as glance_exc

from coordinator import memberscan, planner, reconciler, regiondrift
from coordinator.journal import RegionRecord
from glancesync.protocol import cascaded_url
from glancesync.states import SyncState

from .conftest import IMAGE_ID, REGIONS, ListingHttp, image_record

NOW = 100_000.0
ONE, TWO = REGIONS
POLICY = regiondrift.Policy(REGIONS, "ALL", NOW)
A, B = "a" * 32, "b" * 32


def shared(**extra) -> dict:
    record = image_record(visibility="shared", **extra)
    record["locations"] = [*record["locations"], *({"url": cascaded_url(r, IMAGE_ID), "metadata": {}} for r in REGIONS)]
    return record


def copy_of(image: dict, **extra) -> dict:
    return {**{k: v for k, v in image.items() if k != "locations"}, **extra}


def synced() -> dict[str, regiondrift.Fact]:
    return {r: regiondrift.Fact(SyncState.SYNCED, NOW - 10) for r in REGIONS}


def member(member_id: str, status: str = "pending") -> dict[str, str]:
    return {"member_id": member_id, "status": status}


def test_only_synced_shared_copies_with_nothing_else_to_repair_are_asked_about() -> None:
    image = shared()
    listings = {r: {IMAGE_ID: copy_of(image)} for r in REGIONS}
    candidates = regiondrift.member_candidates({IMAGE_ID: image}, listings, {IMAGE_ID: synced()}, POLICY, [])
    assert candidates == {IMAGE_ID: [ONE, TWO]}
    # Another repair of ONE (an update applies the members anyway), TWO in flight: none asked.
    busy = [regiondrift.Repair(IMAGE_ID, ONE, "update", "metadata differs: os_distro")]
    facts = dict(synced(), **{TWO: regiondrift.Fact(SyncState.TRANSFERRING, NOW)})
    assert regiondrift.member_candidates({IMAGE_ID: image}, listings, {IMAGE_ID: facts}, POLICY, busy) == {}
    # A private image has no members in glance; a copy listed private is a metadata repair first;
    # a region whose listing failed is not judged.
    private = dict(image, visibility="private")
    assert regiondrift.member_candidates({IMAGE_ID: private}, listings, {IMAGE_ID: synced()}, POLICY, []) == {}
    odd = {ONE: {IMAGE_ID: copy_of(image, visibility="private")}, TWO: None}
    assert regiondrift.member_candidates({IMAGE_ID: image}, odd, {IMAGE_ID: synced()}, POLICY, []) == {}


def test_member_differences_name_missing_extra_and_other_statuses() -> None:
    assert regiondrift.member_differences([member(A, "accepted")], [member(A, "accepted")]) is None
    assert regiondrift.member_differences([], []) is None
    why = regiondrift.member_differences([member(A, "accepted"), member(B)], [member(A), member("c" * 32)])
    assert why == f"members differ: missing {B}; extra {'c' * 32}; status of {A} pending, not accepted"


class Members:
    def __init__(self, by_image: dict[str, list[dict]] | None = None, error: Exception | None = None) -> None:
        self.by_image, self.error, self.calls = by_image or {}, error, 0

    def list(self, image_id: str):
        self.calls += 1
        if self.error is not None:
            raise self.error
        if image_id not in self.by_image:
            raise glance_exc.HTTPNotFound("no image")
        return iter(self.by_image[image_id])


class Client:
    def __init__(self, members: Members, images=None) -> None:
        self.image_members, self.images = members, images
        self.http_client = ListingHttp(images)


def test_find_repairs_regions_whose_members_differ_and_skips_what_did_not_answer(caplog) -> None:
    cascading = Client(Members({IMAGE_ID: [member(A, "accepted")]}))
    regional = {ONE: Client(Members({IMAGE_ID: [member(A)]})), TWO: Client(Members({IMAGE_ID: [member(A, "accepted")]}))}
    found = memberscan.find(cascading, regional.__getitem__, {IMAGE_ID: [ONE, TWO]}, "http://c")
    assert found == [regiondrift.Repair(IMAGE_ID, ONE, "update", f"members differ: status of {A} pending, not accepted")]

    down = {ONE: Client(Members(error=glance_exc.HTTPServiceUnavailable("down"))), TWO: regional[TWO]}
    other = "9" * 8 + IMAGE_ID[8:]
    with caplog.at_level(logging.WARNING):
        found = memberscan.find(Client(Members({IMAGE_ID: [], other: []})), down.__getitem__,
                                {IMAGE_ID: [ONE, TWO], other: [ONE]}, "http://c")
    # ONE did not answer: not judged, and not asked again this pass; TWO has an extra member.
    assert found == [regiondrift.Repair(IMAGE_ID, TWO, "update", f"members differ: extra {A}")]
    assert down[ONE].image_members.calls == 1
    assert sum("members in region RegionOne not listed" in r.getMessage() for r in caplog.records) == 1


def test_find_builds_one_regional_client_per_region_for_the_pass() -> None:
    other = "9" * 8 + IMAGE_ID[8:]
    built: list[str] = []

    def factory(region: str) -> Client:
        built.append(region)
        return Client(Members({IMAGE_ID: [], other: []}))

    cascading = Client(Members({IMAGE_ID: [], other: []}))
    assert memberscan.find(cascading, factory, {IMAGE_ID: [ONE, TWO], other: [ONE, TWO]}, "http://c") == []
    assert built == [ONE, TWO]


def test_find_stops_when_the_cascading_glance_does_not_answer_and_skips_vanished_images() -> None:
    regional = Client(Members({IMAGE_ID: [member(A)]}))
    broken = Client(Members(error=glance_exc.HTTPServiceUnavailable("down")))
    assert memberscan.find(broken, lambda r: regional, {IMAGE_ID: [ONE]}, "http://c") == []
    assert regional.image_members.calls == 0
    odd = Client(Members({IMAGE_ID: [{"id": "no member_id"}]}))  # an answer of another shape
    assert memberscan.find(odd, lambda r: regional, {IMAGE_ID: [ONE]}, "http://c") == []
    gone = Client(Members({}))  # 404: the image went away since the listing
    assert memberscan.find(gone, lambda r: regional, {IMAGE_ID: [ONE]}, "http://c") == []
    vanished = Client(Members({}))  # the regional copy went away: the next pass judges it
    assert memberscan.find(Client(Members({IMAGE_ID: []})), lambda r: vanished, {IMAGE_ID: [ONE]}, "x") == []


class Images:
    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def list(self, filters: dict, page_size: int = 20):
        return iter([] if filters.get("os_hidden") else self.records)

    def get(self, image_id: str) -> dict:
        return next(r for r in self.records if r["id"] == image_id)


def test_a_pass_finds_member_drift_and_the_planner_turns_it_into_an_update_with_the_members(stores) -> None:
    image = shared()
    cascading = Client(Members({IMAGE_ID: [member(A, "accepted")]}), Images([image]))
    regions = {ONE: Client(Members({IMAGE_ID: [member(A, "accepted")]}), Images([copy_of(image)])),
               TWO: Client(Members({IMAGE_ID: []}), Images([copy_of(image)]))}
    facts = {IMAGE_ID: {r: ("synced", NOW - 10) for r in REGIONS}}
    inputs = reconciler.Inputs({IMAGE_ID}, {IMAGE_ID}, facts, POLICY)
    drift = reconciler.scan(cascading, regions.__getitem__, inputs, "http://c")
    assert drift.repairs == [regiondrift.Repair(IMAGE_ID, TWO, "update", f"members differ: missing {A}")]
    (body,) = reconciler.synthetic_events([], [], 3, drift.repairs)
    assert body["repairs"] == {TWO: "update"}
    record = image_record(store_dir=stores.store.store_dir, visibility="shared")
    existing = {r: RegionRecord(SyncState.SYNCED, "copy", record["os_hash_value"]) for r in REGIONS}
    plan = planner.plan("drift", IMAGE_ID, record, REGIONS, "ALL", existing, stores.source_path,
                        members=[member(A, "accepted")], repairs=body["repairs"])
    assert [(t.region, t.kind, t.payload["members"]) for t in plan.tasks] == [(TWO, "update", [member(A, "accepted")])]
    # Converged: nothing.
    regions[TWO] = regions[ONE]
    assert reconciler.scan(cascading, regions.__getitem__, inputs, "http://c").repairs == []
