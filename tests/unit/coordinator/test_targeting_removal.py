"""Removing a region from an image's targets deletes that copy: planner, drift events and the safety limit."""

from __future__ import annotations

from coordinator import planner, reconciler, regiondrift
from coordinator.journal import RegionRecord
from glancesync.protocol import cascaded_url
from glancesync.states import SyncState
from glancesync.storemap import StoreMap

from .conftest import IMAGE_ID, REGIONS, image_record

ONE, TWO = REGIONS


def record(state: SyncState, image: dict) -> RegionRecord:
    return RegionRecord(state, "copy", image["os_hash_value"])


def plan(stores: StoreMap, kind: str, image: dict, existing: dict, strategy: str = "USER", **kw) -> planner.Plan:
    return planner.plan(kind, IMAGE_ID, image, REGIONS, strategy, existing, stores.source_path, **kw)


def kinds(result: planner.Plan) -> dict[str, str]:
    return {t.region: t.kind for t in result.tasks}


def test_an_update_that_drops_a_region_deletes_its_copy_and_updates_the_other(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir, glance_sync_regions=ONE)
    existing = {r: record(SyncState.SYNCED, image) for r in REGIONS}
    result = plan(stores, "updated", image, existing)
    assert kinds(result) == {ONE: "update", TWO: "delete"}
    assert result.problems == []


def test_a_rule_keeps_a_region_the_property_no_longer_names(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir, glance_sync_regions=ONE, owner="p1")
    existing = {r: record(SyncState.SYNCED, image) for r in REGIONS}
    assert kinds(plan(stores, "updated", image, existing, rules={"p1": (TWO,)})) == {ONE: "update", TWO: "update"}


def test_only_synced_copies_are_removed_and_only_by_updated(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir, glance_sync_regions=ONE)
    existing = {ONE: record(SyncState.SYNCED, image), TWO: record(SyncState.TRANSFERRING, image)}
    assert kinds(plan(stores, "updated", image, existing)) == {ONE: "update", TWO: "update"}
    synced = {r: record(SyncState.SYNCED, image) for r in REGIONS}
    for kind in ("tags_changed", "deactivated", "members_changed"):
        assert "delete" not in kinds(plan(stores, kind, image, synced)).values()


def test_copies_an_operator_asked_for_are_never_removed(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir)
    existing = {TWO: record(SyncState.SYNCED, image)}
    for strategy in ("None", "ON_DEMAND", "nova"):
        assert kinds(plan(stores, "updated", image, existing, strategy)) == {TWO: "update"}
        assert kinds(plan(stores, "drift", image, existing, strategy, repairs={TWO: "delete"})) == {}


def test_a_region_added_back_after_its_delete_is_a_problem_not_a_copy(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir, glance_sync_regions=f"{ONE},{TWO}")
    existing = {ONE: record(SyncState.SYNCED, image), TWO: record(SyncState.DELETED, image)}
    result = plan(stores, "updated", image, existing)
    assert kinds(result) == {ONE: "update"}
    assert len(result.problems) == 1 and f"region {TWO!r}" in result.problems[0]
    assert "purges the id" in result.problems[0]
    assert plan(stores, "tags_changed", image, existing).problems == result.problems


def test_a_drift_delete_is_rechecked_against_the_fresh_record(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir, glance_sync_regions=ONE)
    existing = {r: record(SyncState.SYNCED, image) for r in REGIONS}
    assert kinds(plan(stores, "drift", image, existing, repairs={TWO: "delete"})) == {TWO: "delete"}
    # Targeted again by the time the event is planned: nothing is deleted.
    again = dict(image, glance_sync_regions=f"{ONE},{TWO}")
    assert kinds(plan(stores, "drift", again, existing, repairs={TWO: "delete"})) == {}
    # Not synced (a copy in flight): not removed by this event.
    busy = dict(existing, **{TWO: record(SyncState.PENDING, image)})
    assert kinds(plan(stores, "drift", image, busy, repairs={TWO: "delete"})) == {}


def test_removals_past_the_safety_limit_are_held_the_others_acted_on() -> None:
    found = [regiondrift.Repair(f"img-{i}", TWO, "unwanted", "untargeted") for i in range(3)]
    found.append(regiondrift.Repair("img-9", ONE, "copy", "missing"))
    acted, held = reconciler.limit_removals(found, tracked=100, max_deletes=2, max_percent=0)
    assert held == ["img-0", "img-1", "img-2"]
    assert [r.action for r in acted] == ["copy"]
    acted, held = reconciler.limit_removals(found, tracked=100, max_deletes=3, max_percent=0)
    assert held == [] and acted == found
    bodies = reconciler.synthetic_events([], [], 4, acted)
    assert {b["image_id"]: b["repairs"] for b in bodies}["img-0"] == {TWO: "delete"}


def test_a_copy_an_operator_synced_to_is_never_removed_as_untargeted(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir, glance_sync_regions=ONE)
    existing = {r: record(SyncState.SYNCED, image) for r in REGIONS}
    assert kinds(plan(stores, "updated", image, existing, asked={TWO})) == {ONE: "update", TWO: "update"}
    assert kinds(plan(stores, "drift", image, existing, repairs={TWO: "delete"}, asked={TWO})) == {}
    facts = {r: regiondrift.Fact(SyncState.SYNCED, 1.0) for r in REGIONS}
    listing = {r: {IMAGE_ID: {k: v for k, v in image.items() if k != "locations"}} for r in REGIONS}
    asked = regiondrift.Policy(REGIONS, "USER", 10.0, asked={IMAGE_ID: {TWO}})
    assert [r.action for r in regiondrift.find_repairs({IMAGE_ID: image}, listing, {IMAGE_ID: facts}, asked)
            if r.action == "unwanted"] == []


def test_the_journal_knows_which_regions_an_operator_synced_to(journal) -> None:
    image = image_record()
    for event_id, region in (("operator-1", TWO), ("resync-failed-2", ONE), ("e3", ONE)):
        journal.record_event(event_id, "uploaded", IMAGE_ID, {"event_id": event_id}, 1.0)
        journal.plan_event(event_id, IMAGE_ID, [planner.NewTask(region, "copy", {"image": image, "source": None})],
                           {}, 1.0)
    assert journal.asked_regions() == {IMAGE_ID: {TWO}}
    assert journal.asked_regions(IMAGE_ID) == {IMAGE_ID: {TWO}}
    assert journal.asked_regions("other") == {}


def test_a_mistyped_region_name_removes_nothing(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir, glance_sync_regions=f"{ONE}, {TWO.lower()}")
    existing = {r: record(SyncState.SYNCED, image) for r in REGIONS}
    assert kinds(plan(stores, "updated", image, existing)) == {ONE: "update", TWO: "update"}
    assert kinds(plan(stores, "drift", image, existing, repairs={TWO: "delete"})) == {}
    facts = {r: regiondrift.Fact(SyncState.SYNCED, 1.0) for r in REGIONS}
    listing = {r: {IMAGE_ID: {k: v for k, v in image.items() if k != "locations"}} for r in REGIONS}
    policy = regiondrift.Policy(REGIONS, "USER", 10.0)
    assert [r for r in regiondrift.find_repairs({IMAGE_ID: image}, listing, {IMAGE_ID: facts}, policy)
            if r.action == "unwanted"] == []


def test_a_strategy_change_replans_every_image_at_the_next_pass() -> None:
    ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(3)]
    images = {i: image_record(image_id=i, glance_sync_regions=ONE) for i in ids}
    for i, img in images.items():
        img["locations"] = [*img["locations"], *({"url": cascaded_url(r, i), "metadata": {}} for r in REGIONS)]
    listing = {r: {i: {k: v for k, v in img.items() if k != "locations"} for i, img in images.items()}
               for r in REGIONS}
    # Synced everywhere under ALL; the coordinator restarts with USER: every copy in TWO is unwanted.
    everywhere = {i: {r: regiondrift.Fact(SyncState.SYNCED, 1.0) for r in REGIONS} for i in images}
    found = regiondrift.find_repairs(images, listing, everywhere, regiondrift.Policy(REGIONS, "USER", 10.0))
    assert {(r.image_id, r.region, r.action) for r in found} == {(i, TWO, "unwanted") for i in images}
    # Synced in ONE only under USER; back to ALL: every image is copied to TWO.
    in_one = {i: {ONE: regiondrift.Fact(SyncState.SYNCED, 1.0)} for i in images}
    found = regiondrift.find_repairs(images, {ONE: listing[ONE], TWO: {}}, in_one,
                                     regiondrift.Policy(REGIONS, "ALL", 10.0))
    assert {(r.image_id, r.region, r.action) for r in found} == {(i, TWO, "copy") for i in images}
