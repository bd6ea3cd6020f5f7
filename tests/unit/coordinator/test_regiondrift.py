"""Drift per (image, region): each rule of coordinator/regiondrift.py, and the planner's drift event."""

from __future__ import annotations

from coordinator import planner, reconciler, regiondrift
from coordinator.journal import RegionRecord
from glancesync.protocol import cascaded_url
from glancesync.states import SyncState

from .conftest import IMAGE_ID, REGIONS, image_record

NOW = 100_000.0
ONE, TWO = REGIONS
POLICY = regiondrift.Policy(REGIONS, "ALL", NOW, failed_retry_after=3600.0)


def cascading(**extra) -> dict:
    record = image_record(**extra)
    record["locations"] = [*record["locations"], *({"url": cascaded_url(r, IMAGE_ID), "metadata": {}} for r in REGIONS)]
    return record


def copy_of(image: dict, **extra) -> dict:
    return {**{k: v for k, v in image.items() if k != "locations"}, **extra}


def synced(at: float = NOW - 10) -> regiondrift.Fact:
    return regiondrift.Fact(SyncState.SYNCED, at)


def repairs(image: dict, regional: dict, facts: dict, policy=POLICY) -> dict[str, tuple[str, str]]:
    found = regiondrift.find_repairs({IMAGE_ID: image}, regional, {IMAGE_ID: facts}, policy)
    assert all(r.image_id == IMAGE_ID for r in found)
    return {r.region: (r.action, r.reason) for r in found}


def test_a_converged_image_needs_nothing() -> None:
    image = cascading()
    assert repairs(image, {r: {IMAGE_ID: copy_of(image)} for r in REGIONS}, {r: synced() for r in REGIONS}) == {}


def test_a_region_never_planned_gets_a_copy_a_deactivated_image_does_not() -> None:
    image = cascading()
    found = repairs(image, {ONE: {IMAGE_ID: copy_of(image)}, TWO: {}}, {ONE: synced()})
    assert found == {TWO: ("copy", "no copy was ever planned for this region")}
    assert repairs(cascading(status="deactivated"), {ONE: {}, TWO: {}}, {}) == {}


def test_a_copy_deleted_by_hand_in_a_region_is_copied_again() -> None:
    image = cascading()
    gone = copy_of(image, status="deleted")
    found = repairs(image, {ONE: {}, TWO: {IMAGE_ID: gone}}, {ONE: synced(), TWO: synced()})
    assert {r: action for r, (action, _) in found.items()} == {ONE: "copy", TWO: "copy"}
    assert "no longer has the image" in found[ONE][1]


def test_drifted_metadata_and_status_are_updated() -> None:
    image = cascading(os_distro="debian")
    regional = {ONE: {IMAGE_ID: copy_of(image, os_distro="ubuntu", extra="x")},
                TWO: {IMAGE_ID: copy_of(image, status="deactivated")}}
    found = repairs(image, regional, {ONE: synced(), TWO: synced()})
    assert found[ONE] == ("update", "metadata differs: extra, os_distro")
    assert found[TWO] == ("update", "the copy is deactivated, the cascading image active")


def test_a_lost_location_is_registered_again_through_a_copy() -> None:
    image = cascading()
    image["locations"] = [loc for loc in image["locations"] if loc["url"] != cascaded_url(TWO, IMAGE_ID)]
    found = repairs(image, {r: {IMAGE_ID: copy_of(image)} for r in REGIONS}, {r: synced() for r in REGIONS})
    assert found == {TWO: ("copy", f"location {cascaded_url(TWO, IMAGE_ID)} is missing")}
    # A glance that shows no locations at all says nothing about them.
    del image["locations"]
    assert repairs(image, {r: {IMAGE_ID: copy_of(image)} for r in REGIONS}, {r: synced() for r in REGIONS}) == {}


def test_other_bytes_under_the_same_id_are_left_to_an_operator() -> None:
    image = cascading()
    found = repairs(image, {ONE: {IMAGE_ID: copy_of(image, checksum="0" * 32)}, TWO: {IMAGE_ID: copy_of(image)}},
                    {ONE: synced(), TWO: synced()})
    assert found == {ONE: ("operator", "the regional image has this id and other bytes; an operator must resolve it")}
    assert regiondrift.acted_on(regiondrift.find_repairs(
        {IMAGE_ID: image}, {ONE: {IMAGE_ID: copy_of(image, checksum="0" * 32)}, TWO: {}},
        {IMAGE_ID: {ONE: synced(), TWO: synced()}}, POLICY)) == {IMAGE_ID: {TWO: "copy"}}


def test_failed_regions_are_retried_on_the_slow_schedule_only() -> None:
    image = cascading()
    regional = {r: {} for r in REGIONS}
    facts = {ONE: regiondrift.Fact(SyncState.FAILED, NOW - 3600), TWO: regiondrift.Fact(SyncState.FAILED, NOW - 60)}
    found = repairs(image, regional, facts)
    assert found == {ONE: ("copy", "failed 3600 s ago; tried again")}
    never = regiondrift.Policy(REGIONS, "ALL", NOW, failed_retry_after=0)
    assert repairs(image, regional, facts, never) == {}


def test_in_flight_deleted_and_unlisted_regions_are_not_judged() -> None:
    image = cascading()
    facts = {ONE: regiondrift.Fact(SyncState.TRANSFERRING, NOW), TWO: regiondrift.Fact(SyncState.DELETED, NOW)}
    assert repairs(image, {ONE: {}, TWO: {}}, facts) == {}
    # TWO's listing failed this pass: not an empty region.
    assert repairs(image, {ONE: {IMAGE_ID: copy_of(image)}, TWO: None}, {ONE: synced(), TWO: synced()}) == {}


def test_a_copy_the_strategy_no_longer_targets_becomes_a_delete() -> None:
    image = cascading(glance_sync_regions=ONE)
    user = regiondrift.Policy(REGIONS, "USER", NOW)
    found = repairs(image, {r: {IMAGE_ID: copy_of(image)} for r in REGIONS}, {r: synced() for r in REGIONS}, user)
    assert found == {TWO: ("unwanted", "strategy USER no longer targets this region")}
    assert regiondrift.acted_on(regiondrift.find_repairs(
        {IMAGE_ID: image}, {r: {IMAGE_ID: copy_of(image)} for r in REGIONS},
        {IMAGE_ID: {r: synced() for r in REGIONS}}, user)) == {IMAGE_ID: {TWO: "delete"}}


def test_copies_an_operator_asked_for_are_never_unwanted() -> None:
    image = cascading()
    for name in ("None", "ON_DEMAND", "nova"):
        policy = regiondrift.Policy(REGIONS, name, NOW)
        assert repairs(image, {r: {IMAGE_ID: copy_of(image)} for r in REGIONS}, {TWO: synced()}, policy) == {}


def test_drift_events_name_their_repairs_and_the_planner_follows_them(stores) -> None:
    found = [regiondrift.Repair(IMAGE_ID, ONE, "copy", "gone"), regiondrift.Repair(IMAGE_ID, TWO, "update", "meta")]
    bodies = reconciler.synthetic_events([], [], 7, found)
    assert [(b["event_id"], b["kind"], b["repairs"]) for b in bodies] == [
        (f"reconcile-drift-{IMAGE_ID}-7", "drift", {ONE: "copy", TWO: "update"})]
    image = image_record(store_dir=stores.store.store_dir)
    existing = {r: RegionRecord(SyncState.SYNCED, "copy", image["os_hash_value"]) for r in REGIONS}
    plan = planner.plan("drift", IMAGE_ID, image, REGIONS, "ALL", existing, stores.source_path,
                        repairs=bodies[0]["repairs"])
    # A synced region whose copy is gone gets a copy anyway; the other an update.
    assert sorted((t.region, t.kind) for t in plan.tasks) == [(ONE, "copy"), (TWO, "update")]
    busy = dict(existing, **{ONE: RegionRecord(SyncState.TRANSFERRING, "copy", None)})
    plan = planner.plan("drift", IMAGE_ID, image, REGIONS, "ALL", busy, stores.source_path,
                        repairs=bodies[0]["repairs"])
    assert [(t.region, t.kind) for t in plan.tasks] == [(TWO, "update")]  # never over a running copy
