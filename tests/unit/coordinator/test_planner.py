"""The planner: each event kind and each sync strategy."""

from __future__ import annotations

from coordinator import planner
from coordinator.journal import RegionRecord
from glancesync.states import SyncState
from glancesync.storemap import StoreMap

from .conftest import IMAGE_ID, REGIONS, image_record


def run(stores: StoreMap, kind: str, image, strategy: str = "ALL", existing=None) -> planner.Plan:
    return planner.plan(kind, IMAGE_ID, image, REGIONS, strategy, existing or {}, stores.source_path)


def kinds(result: planner.Plan) -> dict[str, str]:
    return {t.region: t.kind for t in result.tasks}


def test_uploaded_all_copies_everywhere_with_sftp_source(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir)
    result = run(stores, "uploaded", image)
    assert kinds(result) == {"RegionOne": "copy", "RegionTwo": "copy"}
    payload = result.tasks[0].payload
    assert payload["source"] == {"type": "sftp", "path": f"{stores.store.store_dir}/{IMAGE_ID}"}
    assert payload["image"]["id"] == IMAGE_ID


def test_strategy_none_makes_nothing(stores: StoreMap) -> None:
    assert run(stores, "uploaded", image_record(store_dir=stores.store.store_dir), "None").tasks == []


def test_strategy_user_takes_known_regions_of_the_property(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir, glance_sync_regions=" RegionTwo, Nowhere")
    assert kinds(run(stores, "imported", image, "USER")) == {"RegionTwo": "copy"}
    assert run(stores, "imported", image_record(store_dir=stores.store.store_dir), "USER").tasks == []


def test_created_copies_only_an_active_image(stores: StoreMap) -> None:
    queued = image_record(store_dir=stores.store.store_dir, status="queued")
    assert run(stores, "created", queued).tasks == [] and run(stores, "created", queued).failures == {}
    active = image_record(store_dir=stores.store.store_dir)
    assert len(run(stores, "created", active).tasks) == 2


def test_import_that_never_became_active_fails_its_targets(stores: StoreMap) -> None:
    result = run(stores, "imported", image_record(store_dir=stores.store.store_dir, status="importing"))
    assert result.tasks == [] and set(result.failures) == set(REGIONS)


def test_skips_regions_synced_with_the_same_bytes(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir)
    existing = {
        "RegionOne": RegionRecord(SyncState.SYNCED, "copy", image["os_hash_value"]),
        "RegionTwo": RegionRecord(SyncState.SYNCED, "copy", "other-hash"),
    }
    assert kinds(run(stores, "uploaded", image, existing=existing)) == {"RegionTwo": "copy"}
    in_flight = {"RegionOne": RegionRecord(SyncState.TRANSFERRING, "copy", None),
                 "RegionTwo": RegionRecord(SyncState.DELETED, "delete", None)}
    assert run(stores, "uploaded", image, existing=in_flight).tasks == []


def test_source_outside_store_fails_regions_instead_of_raising(stores: StoreMap) -> None:
    image = image_record(locations=[{"url": "file:///etc/shadow", "metadata": {}}])
    result = run(stores, "uploaded", image)
    assert result.tasks == []
    assert set(result.failures) == set(REGIONS)
    assert "outside the store directory" in result.failures["RegionOne"]


def test_no_file_location_fails_regions(stores: StoreMap) -> None:
    image = image_record(locations=[{"url": "rbd://pool/img", "metadata": {}}])
    assert "no file:// location" in run(stores, "uploaded", image).failures["RegionTwo"]


def test_update_kinds_update_regions_that_have_or_get_the_image(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir)
    existing = {"RegionOne": RegionRecord(SyncState.SYNCED, "copy", "x"),
                "RegionTwo": RegionRecord(SyncState.FAILED, "copy", None)}
    for kind in ("tags_changed", "deactivated"):
        assert kinds(run(stores, kind, image, existing=existing)) == {"RegionOne": "update"}
    # updated / reactivated of an active image also copy to a target that lacks it
    result = run(stores, "updated", image, existing=existing)
    assert sorted((t.region, t.kind) for t in result.tasks) == [("RegionOne", "update"), ("RegionTwo", "copy")]
    assert result.tasks[0].payload["source"] is None


def test_deleted_deletes_every_region_with_a_record(stores: StoreMap) -> None:
    existing = {"RegionOne": RegionRecord(SyncState.SYNCED, "copy", "x"),
                "RegionTwo": RegionRecord(SyncState.DELETED, "delete", None)}
    result = run(stores, "deleted", None, existing=existing)
    assert kinds(result) == {"RegionOne": "delete"}
    assert result.tasks[0].payload["image"] == {"id": IMAGE_ID}


def test_image_gone_or_locations_changed_makes_nothing(stores: StoreMap) -> None:
    assert run(stores, "updated", None).tasks == []
    assert run(stores, "locations_changed", image_record(store_dir=stores.store.store_dir)).tasks == []


def test_deleted_of_an_image_glance_still_has_is_refused(stores: StoreMap) -> None:
    existing = {"RegionOne": RegionRecord(SyncState.SYNCED, "copy", "x")}
    for status in ("active", "queued", "deactivated", "saving"):
        image = image_record(store_dir=stores.store.store_dir, status=status)
        result = run(stores, "deleted", image, existing=existing)
        assert result.tasks == [] and "glance still has the image" in (result.refused or ""), status
    for status in ("deleted", "killed", "pending_delete"):
        image = image_record(store_dir=stores.store.store_dir, status=status)
        result = run(stores, "deleted", image, existing=existing)
        assert kinds(result) == {"RegionOne": "delete"} and result.refused is None, status


def test_a_shared_image_carries_its_members_into_copy_and_update_tasks(stores: StoreMap) -> None:
    image = image_record(store_dir=stores.store.store_dir)
    members = [{"member_id": "p-b", "status": "accepted"}]
    copies = planner.plan("uploaded", IMAGE_ID, image, REGIONS, "ALL", {}, stores.source_path, members=members)
    assert [t.payload["members"] for t in copies.tasks] == [members, members]
    existing = {region: RegionRecord(SyncState.SYNCED, "copy", "x") for region in REGIONS}
    updates = planner.plan("members_changed", IMAGE_ID, image, REGIONS, "ALL", existing, stores.source_path,
                           members=members)
    assert kinds(updates) == {"RegionOne": "update", "RegionTwo": "update"}
    assert all(t.payload["members"] == members for t in updates.tasks)
    # Not shared: no members key at all, so an agent leaves the regional members alone.
    assert "members" not in run(stores, "uploaded", image).tasks[0].payload
