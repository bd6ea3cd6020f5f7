"""Snapshot sync in the coordinator: recognising a snapshot, planning it, waiting for it, registering it."""

from __future__ import annotations

import pytest

from coordinator import glancejobs, planner, snapshot
from coordinator.journal import RegionRecord
from glancesync import protocol
from glancesync.protocol import cascaded_url
from glancesync.states import SyncState
from glancesync.storemap import RegionSource, SshStore

from .conftest import IMAGE_ID, NOW, REGIONS, make_conf, start_service
from .test_service import dealer, pump, receive

SHA = "5" * 128


def cascading_snapshot(status: str = "queued", region: str = "RegionOne") -> dict:
    """The cascading image of a snapshot: no bytes of its own, one cascaded:// location."""
    return {"id": IMAGE_ID, "name": "snap", "status": status, "size": None, "checksum": None,
            "os_hash_algo": None, "os_hash_value": None, "disk_format": "raw", "container_format": "bare",
            "visibility": "private", "image_type": "snapshot",
            "locations": [{"url": cascaded_url(region, IMAGE_ID), "metadata": {}}]}


def regional_snapshot(status: str = "active", url: str | None = None) -> dict:
    record = {"id": IMAGE_ID, "name": "snap", "status": status, "disk_format": "raw", "container_format": "bare",
              "visibility": "private", "image_type": "snapshot"}
    if status == "active":
        record.update(size=2048, checksum="a" * 32, os_hash_algo="sha512", os_hash_value=SHA)
    record["locations"] = [{"url": url, "metadata": {}}] if url else []
    return record


def made(status: str = "active", url: str | None = None) -> snapshot.Snapshot:
    return snapshot.Snapshot("RegionOne", regional_snapshot(status, url))


# -- recognising ------------------------------------------------------------------


def test_a_snapshot_is_an_image_with_cascaded_locations_and_no_file_location() -> None:
    assert snapshot.source_region(cascading_snapshot()) == "RegionOne"
    assert snapshot.source_region(cascading_snapshot("active", "RegionTwo"), REGIONS) == "RegionTwo"
    with_file = cascading_snapshot()
    with_file["locations"].append({"url": f"file:///srv/store/{IMAGE_ID}", "metadata": {}})
    assert snapshot.source_region(with_file) is None
    other_id = cascading_snapshot()
    other_id["locations"] = [{"url": cascaded_url("RegionOne", "someone-else"), "metadata": {}}]
    assert snapshot.source_region(other_id) is None
    assert snapshot.source_region(cascading_snapshot(region="Elsewhere"), REGIONS) is None
    assert snapshot.source_region({**cascading_snapshot(), "locations": []}) is None


def test_the_recorded_values_are_the_regional_glances() -> None:
    record = snapshot.recorded(cascading_snapshot(), regional_snapshot())
    assert (record["status"], record["size"], record["checksum"], record["os_hash_value"]) == (
        "active", 2048, "a" * 32, SHA)
    assert record["image_type"] == "snapshot" and record["locations"] == cascading_snapshot()["locations"]
    assert snapshot.recorded(cascading_snapshot("deactivated"), regional_snapshot())["status"] == "deactivated"


def test_waiting_lasts_while_the_regional_image_is_missing_or_on_its_way() -> None:
    assert snapshot.waiting(snapshot.Snapshot("RegionOne", None))
    for status in ("queued", "saving", "importing"):
        assert snapshot.waiting(made(status))
    assert not snapshot.waiting(made("active")) and not snapshot.waiting(made("deactivated"))
    reason = snapshot.timeout_reason(made("queued"), IMAGE_ID, 300)
    assert "still queued 300 s" in reason and "snapshot_timeout" in reason and "RegionOne" in reason


# -- sources ---------------------------------------------------------------------------


def region_store(store_dir: str = "/srv/r1") -> dict[str, RegionSource]:
    return {"RegionOne": RegionSource(store=SshStore(None, None, None, None, None, store_dir=store_dir))}


def test_the_source_is_the_regions_store_when_mapped_else_its_glance() -> None:
    url = f"file:///srv/r1/images/{IMAGE_ID}"
    assert snapshot.source(made(url=url), region_store(), IMAGE_ID) == {
        "type": "sftp", "region": "RegionOne", "path": f"/srv/r1/images/{IMAGE_ID}"}
    assert snapshot.source(made(url=url), {}, IMAGE_ID) == {"type": "glance", "region": "RegionOne"}
    assert snapshot.source(made(), region_store(), IMAGE_ID) == {"type": "glance", "region": "RegionOne"}


def test_a_location_outside_the_regions_store_is_refused() -> None:
    source, why = snapshot.plan_source(made(url=f"file:///etc/{IMAGE_ID}"), region_store(), IMAGE_ID)
    assert source is None and "outside the store directory" in why
    source, why = snapshot.plan_source(made("deactivated"), {}, IMAGE_ID)
    assert source is None and "deactivated, not active" in why


def test_another_projects_image_is_never_spread_under_the_cascading_owner() -> None:
    theirs = snapshot.Snapshot("RegionOne", {**regional_snapshot(), "owner": "p2"})
    source, why = snapshot.plan_source(theirs, {}, IMAGE_ID, "p1")
    assert source is None and "belongs to project p2" in why
    assert snapshot.plan_source(theirs, {}, IMAGE_ID, "p2")[1] is None


# -- planning --------------------------------------------------------------------------


def plan(kind: str = "updated", strategy: str = "ALL", existing=None, snap=None, **extra) -> planner.Plan:
    return planner.plan(kind, IMAGE_ID, cascading_snapshot(), REGIONS, strategy, existing or {},
                        lambda *_: pytest.fail("a snapshot is never read from the cascading store"),
                        snapshot=snap or made(), **extra)


@pytest.mark.parametrize("kind", ["created", "updated", "locations_changed", "uploaded"])
def test_a_snapshot_is_copied_from_its_region_with_the_recorded_values(kind: str) -> None:
    result = plan(kind)
    assert {t.region: t.kind for t in result.tasks} == {"RegionOne": "copy", "RegionTwo": "copy"}
    for task in result.tasks:
        assert task.payload["source"] == {"type": "glance", "region": "RegionOne"}
        image = task.payload["image"]
        assert (image["status"], image["size"], image["os_hash_value"]) == ("active", 2048, SHA)


def test_snapshot_region_names_choose_the_targets_and_the_own_region_is_always_one() -> None:
    result = plan(strategy="None", snapshot_regions=["RegionTwo"])
    assert sorted(t.region for t in result.tasks) == ["RegionOne", "RegionTwo"]
    assert [t.region for t in plan(strategy="None").tasks] == ["RegionOne"]
    assert planner.target_regions(cascading_snapshot(), REGIONS, "USER") == ["RegionOne"]


def test_the_own_region_is_never_removed_as_untargeted() -> None:
    synced = {r: RegionRecord(SyncState.SYNCED, "copy", SHA) for r in REGIONS}
    image = {**cascading_snapshot("active"), "glance_sync_regions": "RegionTwo"}
    result = planner.plan("updated", IMAGE_ID, image, REGIONS, "USER", synced, lambda *_: "", snapshot=made())
    assert [t for t in result.tasks if t.kind == "delete"] == []


def test_a_synced_snapshot_is_not_copied_again() -> None:
    synced = {r: RegionRecord(SyncState.SYNCED, "copy", SHA) for r in REGIONS}
    assert [t.kind for t in plan(existing=synced).tasks] == ["update", "update"]


def test_a_snapshot_that_cannot_be_read_fails_its_targets_with_the_reason() -> None:
    result = plan("created", snap=made("deactivated"))
    assert result.tasks == [] and set(result.failures) == set(REGIONS)
    assert all("deactivated, not active" in why for why in result.failures.values())


# -- the loop: waiting, timeout, registration ---------------------------------------------------


def snapshot_event(journal, event_id: str = "snap-1", now: float = NOW) -> None:
    body = {"event_id": event_id, "kind": "updated", "image_id": IMAGE_ID, "image": None}
    journal.record_event(event_id, "updated", IMAGE_ID, body, now)


def waiting_for(journal, event_id: str = "snap-1") -> bool:
    event = journal.unplanned_event(event_id)
    return event is not None and event.not_before > NOW


@pytest.fixture
def snap_service(conf, stores, journal, client, regional, ctx):
    client.images.records[IMAGE_ID] = cascading_snapshot()
    regional.images.records[IMAGE_ID] = regional_snapshot("queued")
    svc = start_service(conf, stores, journal, client, regional, ctx)
    yield svc
    svc.shutdown()


def test_the_loop_waits_for_the_regional_image_then_plans_copies(snap_service, journal, regional) -> None:
    svc = snap_service
    snapshot_event(journal)
    pump(svc, NOW, until=lambda: waiting_for(journal))
    assert journal.region_records(IMAGE_ID) == {}
    gets = len(regional.images.gets)
    pump(svc, NOW + 0.5)  # before snapshot_sleep_interval: the regional image is not read again
    assert len(regional.images.gets) == gets
    regional.images.records[IMAGE_ID] = regional_snapshot("active")
    later = NOW + svc.conf.snapshot_sleep_interval + 1
    pump(svc, later, until=lambda: set(journal.region_records(IMAGE_ID)) == set(REGIONS))
    for region in REGIONS:
        (task,) = journal.dispatchable(region, later)
        assert task.payload["source"] == {"type": "glance", "region": "RegionOne"}
        assert task.payload["image"]["os_hash_value"] == SHA


def test_an_agent_reading_peer_sources_gets_the_snapshots_own_source(snap_service, journal, regional, ctx) -> None:
    """A snapshot's copy is never routed along the peer tree: its only source is its region."""
    svc = snap_service
    regional.images.records[IMAGE_ID] = regional_snapshot("active")
    snapshot_event(journal)
    pump(svc, NOW, until=lambda: set(journal.region_records(IMAGE_ID)) == set(REGIONS))
    sock = dealer(ctx, svc.conf.coordinator.agent_port)
    sock.send(protocol.encode("hello", {"region": "RegionTwo", "agent_id": "a2", "capacity": 2, "version": "t",
                                        "in_flight": [], "features": ["sources"]}))
    receive(sock, svc, NOW, "welcome")
    sock.send(protocol.encode("ready", {"credits": 1}))
    task = receive(sock, svc, NOW, "task").body
    assert task["source"] == {"type": "glance", "region": "RegionOne"}
    assert not task.get("sources")


def test_a_regional_image_still_queued_after_snapshot_timeout_fails_every_target(snap_service, journal) -> None:
    svc = snap_service
    snapshot_event(journal)
    pump(svc, NOW, until=lambda: waiting_for(journal))
    late = NOW + svc.conf.snapshot_timeout + 1
    pump(svc, late, until=lambda: journal.unplanned_event("snap-1") is None)
    _known, view = journal.image_view(IMAGE_ID)
    assert {r: v["state"] for r, v in view.items()} == {r: "failed" for r in REGIONS}
    assert all("still queued" in v["last_error"] and "snapshot_timeout" in v["last_error"] for v in view.values())


def test_a_queued_snapshot_whose_events_were_lost_is_found_by_a_pass_and_waited_for(
        tmp_path, db_url, store_yaml, stores, journal, client, regional, ctx) -> None:
    from .test_eventdesk import reconciling_service, run_pass

    client.images.records[IMAGE_ID] = cascading_snapshot()
    regional.images.records[IMAGE_ID] = regional_snapshot("queued")
    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx, regional=regional)
    try:
        now = run_pass(svc, NOW)
        (event,) = journal.unplanned_events()
        assert (event.kind, event.sender) == ("uploaded", "reconciler")
        pump(svc, now, until=lambda: (journal.unplanned_event(event.event_id) or event).not_before > now)
        assert journal.region_records(IMAGE_ID) == {}  # waiting for RegionOne's image, nothing planned
        regional.images.records[IMAGE_ID] = regional_snapshot("active")
        later = now + svc.conf.snapshot_sleep_interval + 1
        pump(svc, later, until=lambda: set(journal.region_records(IMAGE_ID)) == set(REGIONS))
        assert all(task.payload["source"] == {"type": "glance", "region": "RegionOne"}
                   for region in REGIONS for task in journal.dispatchable(region, later))
    finally:
        svc.shutdown()


def test_a_snapshot_with_no_target_but_its_region_stays_queued_and_status_says_why(
        tmp_path, db_url, store_yaml, stores, journal, client, regional, ctx) -> None:
    from coordinator import status
    from glancesync import status_render

    conf = make_conf(tmp_path, db_url, store_yaml, DEFAULT={"sync_strategy": "None"})
    client.images.records[IMAGE_ID] = cascading_snapshot()
    regional.images.records[IMAGE_ID] = regional_snapshot("active")
    svc = start_service(conf, stores, journal, client, regional, ctx)
    try:
        snapshot_event(journal)
        pump(svc, NOW, until=lambda: set(journal.region_records(IMAGE_ID)) == {"RegionOne"})
    finally:
        svc.shutdown()
    view = status.image(journal, IMAGE_ID, NOW)
    assert view["targeting_error"] is None  # not a failure: --wait is not held by it
    assert "stays queued" in view["note"] and "no target but RegionOne" in view["note"]
    assert f"glance-sync-manage sync {IMAGE_ID} --regions" in view["note"]
    assert any(line.startswith("note: the cascading image stays queued")
               for line in status_render.render_image(view, NOW).splitlines())


def test_a_snapshot_with_another_target_has_no_queued_note() -> None:
    image = cascading_snapshot()
    assert snapshot.stays_queued(image, made(), ["RegionOne", "RegionTwo"]) is None
    assert snapshot.stays_queued(image, made(), ["RegionOne"]) is not None
    assert snapshot.stays_queued(cascading_snapshot("active"), made(), ["RegionOne"]) is None
    assert snapshot.stays_queued(image, made("queued"), ["RegionOne"]) is None  # still on its way


def planned_copy(tmp_path, db_url, store_yaml, stores, journal, client, regional, ctx, region: str = "RegionTwo"):
    conf = make_conf(tmp_path, db_url, store_yaml, DEFAULT={"snapshot_region_names": "RegionTwo"})
    client.images.records[IMAGE_ID] = cascading_snapshot()
    regional.images.records[IMAGE_ID] = regional_snapshot("active")
    svc = start_service(conf, stores, journal, client, regional, ctx)
    try:
        snapshot_event(journal)
        pump(svc, NOW, until=lambda: set(journal.region_records(IMAGE_ID)) == set(REGIONS))
        (task,) = journal.dispatchable(region, NOW)
        return svc.registrar, task
    finally:
        svc.shutdown()


def test_a_snapshot_copy_is_verified_against_the_recorded_values_and_activates_the_cascading_image(
        tmp_path, db_url, store_yaml, stores, journal, client, regional, ctx) -> None:
    registrar, task = planned_copy(tmp_path, db_url, store_yaml, stores, journal, client, regional, ctx)
    (result,) = glancejobs.register_batch(registrar._clients(), IMAGE_ID, [task])
    assert result.ok and result.os_hash_value == SHA
    image = client.images.records[IMAGE_ID]
    assert (image["status"], image["checksum"], image["os_hash_value"]) == ("active", "a" * 32, SHA)
    assert [loc["url"] for loc in image["locations"]] == [cascaded_url(r, IMAGE_ID) for r in REGIONS]


def test_a_copy_with_other_bytes_than_the_recorded_snapshot_is_not_registered(
        tmp_path, db_url, store_yaml, stores, journal, client, regional, ctx) -> None:
    registrar, task = planned_copy(tmp_path, db_url, store_yaml, stores, journal, client, regional, ctx)
    regional.images.records[IMAGE_ID]["os_hash_value"] = "6" * 128
    (result,) = glancejobs.register_batch(registrar._clients(), IMAGE_ID, [task])
    assert not result.ok and not result.retryable and "os_hash_value" in result.reason
    assert client.images.records[IMAGE_ID]["status"] == "queued"
    assert len(client.images.records[IMAGE_ID]["locations"]) == 1


@pytest.mark.parametrize("names, words", [("regiontwo", "did you mean 'RegionTwo'"), ("RegionTwo,Mars", "'Mars'")])
def test_a_snapshot_region_that_is_no_region_stops_the_coordinator_at_start(tmp_path, db_url, store_yaml, capsys,
                                                                             names, words) -> None:
    from coordinator import cmd

    make_conf(tmp_path, db_url, store_yaml, DEFAULT={"snapshot_region_names": names})
    with pytest.raises(SystemExit) as info:
        cmd.main(["--config-file", str(tmp_path / "coordinator.conf")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and words in err and "snapshot_region_names" in err


@pytest.mark.parametrize("locations", [True, "cascaded://RegionOne/x", {"url": "cascaded://RegionOne/x"}, 3])
def test_locations_that_are_not_a_list_name_no_region(locations) -> None:
    # Found by test_fuzz.py: a record whose locations were a bool stopped the planner with a TypeError.
    image = {"id": IMAGE_ID, "status": "queued", "locations": locations}
    assert snapshot.source_region(image, REGIONS) is None
    plan = planner.plan("created", IMAGE_ID, image, REGIONS, "ALL", {}, lambda _url: None)
    assert plan.tasks == []
