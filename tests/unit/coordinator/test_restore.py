"""A region whose copy was deleted and that is a target again: copied again once the id may have been
purged there (reconciler, planner, journal), never by an ordinary event."""

from __future__ import annotations

from coordinator import planner, regiondrift
from coordinator.journal import Journal, NewTask, RegionRecord
from glancesync.protocol import cascaded_url
from glancesync.states import SyncState
from glancesync.storemap import StoreMap

from .conftest import IMAGE_ID, REGIONS, image_record

NOW = 100_000.0
ONE, TWO = REGIONS
POLICY = regiondrift.Policy(REGIONS, "ALL", NOW, failed_retry_after=3600.0)


def cascading(**extra) -> dict:
    record = image_record(**extra)
    record["locations"] = [*record["locations"], {"url": cascaded_url(ONE, IMAGE_ID), "metadata": {}}]
    return record


def judged(image: dict, deleted_at: float, policy: regiondrift.Policy = POLICY) -> list[tuple[str, str, str]]:
    listing = {ONE: {IMAGE_ID: {k: v for k, v in image.items() if k != "locations"}}, TWO: {}}
    facts = {ONE: regiondrift.Fact(SyncState.SYNCED, NOW - 10), TWO: regiondrift.Fact(SyncState.DELETED, deleted_at)}
    return [(r.region, r.action, r.reason) for r in regiondrift.find_repairs({IMAGE_ID: image}, listing,
                                                                             {IMAGE_ID: facts}, policy)]


def test_a_deleted_target_is_tried_again_on_the_slow_schedule_only() -> None:
    image = cascading()
    [(region, action, reason)] = judged(image, NOW - 3600)
    assert (region, action) == (TWO, "copy")
    assert "was deleted 3600 s ago" in reason and "purged the id" in reason
    assert judged(image, NOW - 60) == []  # too recent: the targeting reason stays
    assert judged(image, NOW - 7200, regiondrift.Policy(REGIONS, "ALL", NOW, failed_retry_after=0)) == []
    assert judged(cascading(status="deactivated"), NOW - 7200) == []  # no bytes to copy


def test_a_deleted_region_that_is_no_target_is_left_alone() -> None:
    image = cascading(glance_sync_regions=ONE)
    assert judged(image, NOW - 7200, regiondrift.Policy(REGIONS, "USER", NOW, failed_retry_after=3600)) == []
    for name in ("None", "ON_DEMAND"):  # only an operator's sync asks for a copy there
        assert judged(image, NOW - 7200, regiondrift.Policy(REGIONS, name, NOW, failed_retry_after=3600)) == []


def plan(stores: StoreMap, kind: str, existing: dict, **kw) -> planner.Plan:
    image = image_record(store_dir=stores.store.store_dir)
    return planner.plan(kind, IMAGE_ID, image, REGIONS, "ALL", existing, stores.source_path, **kw)


def test_only_a_drift_copy_or_an_operator_copies_over_a_deleted_region(stores: StoreMap) -> None:
    existing = {ONE: RegionRecord(SyncState.SYNCED, "copy", "h" * 128), TWO: RegionRecord(SyncState.DELETED, "delete", None)}
    for kind in ("uploaded", "updated", "reactivated"):
        result = plan(stores, kind, existing)
        assert TWO not in {t.region for t in result.tasks}
        assert len(result.problems) == 1 and "purges the id" in result.problems[0]
    for result in (plan(stores, "drift", existing, repairs={TWO: "copy"}), plan(stores, "uploaded", existing,
                                                                                   operator=True)):
        [task] = [t for t in result.tasks if t.region == TWO]
        assert task.kind == "copy" and task.payload[planner.RESTORE] is True
        assert result.problems == []  # a copy is on its way: no targeting reason
    fresh = plan(stores, "drift", {ONE: existing[ONE]}, repairs={TWO: "copy"})
    assert planner.RESTORE not in fresh.tasks[0].payload  # an ordinary copy is not a restore


def test_the_journal_lets_only_a_restore_copy_move_a_deleted_region(journal: Journal) -> None:
    image = image_record()
    journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
    [delete_id] = journal.plan_event("e1", IMAGE_ID, [NewTask(ONE, "delete", {"image": image, "source": None})], {},
                                     NOW)
    journal.assign(delete_id, "a", NOW, NOW + 10)
    journal.done(delete_id, 1, {}, NOW)
    journal.finish(delete_id, 1, NOW)
    source = {"type": "sftp", "path": "/x"}
    for n, payload in enumerate(({"image": image, "source": source}, {"image": image, "source": None})):
        kind = "copy" if n == 0 else "update"
        journal.record_event(f"e{n + 2}", "drift", IMAGE_ID, {}, NOW)
        [task_id] = journal.plan_event(f"e{n + 2}", IMAGE_ID, [NewTask(ONE, kind, payload)], {}, NOW)
        assert journal.task(task_id).state == SyncState.FAILED
        assert journal.image_view(IMAGE_ID)[1][ONE]["state"] == "deleted"
    journal.record_event("e9", "drift", IMAGE_ID, {}, NOW)
    restore = {"image": image, "source": source, planner.RESTORE: True}
    [task_id] = journal.plan_event("e9", IMAGE_ID, [NewTask(ONE, "copy", restore)], {}, NOW + 1)
    assert journal.task(task_id).state == SyncState.PENDING
    assert journal.image_view(IMAGE_ID)[1][ONE]["state"] == "pending"
