"""Deletes are planned only on glance's word; the reconciler's safety limit; synthetic event ids.

Runs the service loop over real zmq sockets with a fake cascading glance (the
``service`` fixture of conftest.py).
"""

from __future__ import annotations

import logging

from glanceclient import exc as glance_exc

from coordinator.registrar import Registrar
from coordinator.schema import events as events_table
from coordinator.service import Service
from glancesync import protocol
from glancesync.states import SyncState

from .conftest import IMAGE_ID, NOW, ListingHttp, add_listing, image_record, make_conf
from .test_service import dealer, deferred, planned, pump, receive


def synced_everywhere(journal, image_id: str = IMAGE_ID) -> None:
    """Journal an image as synced in both regions, as after a finished copy."""
    from coordinator.journal import NewTask

    journal.record_event(f"up-{image_id}", "uploaded", image_id, {"event_id": f"up-{image_id}"}, NOW)
    tasks = [NewTask(r, "copy", {"image": {"id": image_id}, "source": None}) for r in ("RegionOne", "RegionTwo")]
    journal.plan_event(f"up-{image_id}", image_id, tasks, {}, NOW)
    with journal.transaction() as conn:
        from coordinator.schema import image_regions
        from coordinator.schema import tasks as tasks_table

        conn.execute(tasks_table.update().where(tasks_table.c.image_id == image_id)
                     .values(state=SyncState.SYNCED.value, finished_at=NOW))
        conn.execute(image_regions.update().where(image_regions.c.image_id == image_id)
                     .values(state=SyncState.SYNCED.value, synced_at=NOW, copy_registered_at=NOW,
                             metadata_applied_at=NOW))


def states(journal, image_id: str = IMAGE_ID) -> dict[str, SyncState]:
    return {region: rec.state for region, rec in journal.region_records(image_id).items()}


def plan_error(journal, event_id: str) -> str | None:
    with journal.transaction() as conn:
        return conn.execute(events_table.select().where(events_table.c.event_id == event_id)).one().plan_error


def send_forged_delete(ctx, service, event_id: str = "forged-1"):
    sock = dealer(ctx, service.conf.sync_server_port)
    body = {"event_id": event_id, "kind": "deleted", "image_id": IMAGE_ID, "image": None,
            "context": {"user_id": "mallory", "project_id": "evil-project", "roles": ["admin"]}}
    sock.send(protocol.encode("event", body))
    reply = receive(sock, service, NOW)
    sock.close()
    return reply


def test_a_deleted_event_for_an_image_glance_still_has_deletes_nothing(ctx, service, journal, client,
                                                                      caplog) -> None:
    synced_everywhere(journal)
    caplog.set_level(logging.WARNING, logger="coordinator.eventdesk")
    assert send_forged_delete(ctx, service).type == "event_ack"
    pump(service, NOW, until=lambda: planned(service))
    assert states(journal) == {"RegionOne": SyncState.SYNCED, "RegionTwo": SyncState.SYNCED}
    assert journal.dispatchable("RegionOne", NOW) == [] and journal.dispatchable("RegionTwo", NOW) == []
    assert IMAGE_ID in client.images.gets  # the coordinator asked glance itself
    assert "glance still has the image" in plan_error(journal, "forged-1")
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    line = refusals[0].getMessage()
    for part in ("forged-1", "deleted", IMAGE_ID, "mallory", "evil-project", "sender "):
        assert part in line, line
    assert "sender unknown" not in line  # the peer of the event socket is named


def test_a_refused_delete_does_not_stop_later_syncs_of_the_image(ctx, service, journal, client) -> None:
    assert send_forged_delete(ctx, service).type == "event_ack"
    pump(service, NOW, until=lambda: planned(service))
    journal.record_event("up-1", "uploaded", IMAGE_ID, {"event_id": "up-1"}, NOW + 1)
    pump(service, NOW + 1, until=lambda: planned(service))
    assert states(journal) == {"RegionOne": SyncState.PENDING, "RegionTwo": SyncState.PENDING}


def test_a_deleted_event_is_planned_once_glance_answers_404(ctx, service, journal, client) -> None:
    synced_everywhere(journal)
    del client.images.records[IMAGE_ID]
    assert send_forged_delete(ctx, service, "real-1").type == "event_ack"
    pump(service, NOW, until=lambda: planned(service))
    assert states(journal) == {"RegionOne": SyncState.DELETING, "RegionTwo": SyncState.DELETING}
    assert plan_error(journal, "real-1") is None


def test_a_deleted_or_killed_status_counts_as_gone(ctx, service, journal, client) -> None:
    synced_everywhere(journal)
    client.images.records[IMAGE_ID]["status"] = "killed"
    assert send_forged_delete(ctx, service).type == "event_ack"
    pump(service, NOW, until=lambda: planned(service))
    assert set(states(journal).values()) == {SyncState.DELETING}


def test_a_delete_whose_fetch_fails_waits_for_a_retry(ctx, service, journal, client, monkeypatch) -> None:
    synced_everywhere(journal)

    def unavailable(image_id):
        client.images.gets.append(image_id)
        raise glance_exc.HTTPServiceUnavailable("glance is down")

    monkeypatch.setattr(client.images, "get", unavailable)
    assert send_forged_delete(ctx, service, "later-1").type == "event_ack"
    pump(service, NOW, until=lambda: deferred(journal, "later-1"))
    assert journal.unplanned_event("later-1") is not None
    assert set(states(journal).values()) == {SyncState.SYNCED}
    monkeypatch.undo()
    del client.images.records[IMAGE_ID]
    pump(service, NOW + 3600, until=lambda: planned(service))
    assert set(states(journal).values()) == {SyncState.DELETING}


class Unlisted:
    """A region whose listing fails: its per-region drift is not judged (tests of the cascading side)."""

    class images:  # noqa: N801
        @staticmethod
        def list(filters, page_size=20):
            raise ConnectionError("region not answering")

    http_client = ListingHttp(images)


def reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx, regional=None, **coordinator):
    conf = make_conf(tmp_path, db_url, store_yaml, coordinator=coordinator)
    regional = regional or Unlisted()
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _region: regional)
    svc = Service(conf, stores, journal, registrar, context=ctx)
    svc.initialize(NOW)
    add_listing(client.images)
    return svc


def run_pass(svc, now: float) -> float:
    """Run one reconciler pass to its end; the time after it."""
    now = max(now, svc.passes.next_reconcile) + 1
    pump(svc, now, until=lambda: svc.passes.reconciling)
    pump(svc, now, until=lambda: not svc.passes.reconciling)
    return now


def test_a_pass_over_the_safety_limit_holds_every_delete_until_confirmed(
        tmp_path, db_url, store_yaml, stores, journal, client, ctx, caplog) -> None:
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(4)]
    for image_id in ids:
        synced_everywhere(journal, image_id)
    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx,
                              reconcile_max_deletes=2, reconcile_max_delete_percent=100)
    try:
        caplog.set_level(logging.ERROR, logger="coordinator.reconcilepass")
        now = run_pass(svc, NOW)  # a listing without any of them: a restored backup, a wrong endpoint
        assert [h.image_id for h in journal.held_deletes()] == ids
        assert all(set(states(journal, i).values()) == {SyncState.SYNCED} for i in ids)
        assert [r.levelno for r in caplog.records if "safety limit" in r.getMessage()] == [logging.ERROR]
        now = run_pass(svc, now)  # held again, nothing deleted, no event made
        assert not [e for e in journal.unplanned_events() if e.kind == "deleted"]
        assert all(set(states(journal, i).values()) == {SyncState.SYNCED} for i in ids)
        client.images.records[ids[0]] = image_record(ids[0], store_dir=stores.store.store_dir)  # back
        assert journal.confirm_held_deletes(now) == 4
        now = run_pass(svc, now)
        pump(svc, now, until=lambda: planned(svc))
        assert set(states(journal, ids[0]).values()) == {SyncState.SYNCED}  # glance has it again
        for image_id in ids[1:]:
            assert set(states(journal, image_id).values()) == {SyncState.DELETING}, image_id
        assert journal.held_deletes() == []
    finally:
        svc.shutdown()


def test_a_later_pass_tries_a_failed_delete_again(tmp_path, db_url, store_yaml, stores, journal, client,
                                                 ctx) -> None:
    synced_everywhere(journal)
    del client.images.records[IMAGE_ID]  # deleted in the cascading glance, its event lost
    svc = reconciling_service(tmp_path, db_url, store_yaml, stores, journal, client, ctx,
                              reconcile_max_deletes=0, reconcile_max_delete_percent=0)
    try:
        svc.events.plan_events = lambda now: None  # planning waits: passes see their own events
        now = run_pass(svc, NOW)
        now = run_pass(svc, now)
        deletes = [e for e in journal.unplanned_events() if e.kind == "deleted"]
        assert len(deletes) == 1  # the second pass before planning is a duplicate
        assert deletes[0].sender == "reconciler"
        # Planned, and the delete then failed in RegionOne for good: the image is tracked again.
        del svc.events.plan_events
        svc._queries.stir()  # the stub took the passes' writes as seen (coordinator/wakeups.py)
        pump(svc, now, until=lambda: planned(svc))
        with journal.transaction() as conn:
            from coordinator.schema import image_regions

            conn.execute(image_regions.update().where(image_regions.c.region == "RegionOne")
                         .values(state=SyncState.FAILED.value))
        svc.events.plan_events = lambda now: None
        now = run_pass(svc, now)
        again = [e for e in journal.unplanned_events() if e.kind == "deleted"]
        assert len(again) == 1 and again[0].event_id != deletes[0].event_id
    finally:
        svc.shutdown()


OTHER_ID = "99999999-0000-4000-8000-000000000000"


def test_events_that_wait_do_not_block_later_ones(ctx, service, journal, client, stores) -> None:
    from .conftest import image_record

    client.images.records[IMAGE_ID]["status"] = "importing"
    for n in range(120):  # more than one batch of imports still importing, oldest first
        journal.record_event(f"imp-{n}", "imported", IMAGE_ID, {"event_id": f"imp-{n}"}, NOW - 60 + n / 10)
    client.images.records[OTHER_ID] = image_record(OTHER_ID, store_dir=stores.store.store_dir)
    journal.record_event("later", "uploaded", OTHER_ID, {"event_id": "later"}, NOW)
    pump(service, NOW, until=lambda: journal.unplanned_event("later") is None, rounds=400)
    assert set(journal.region_records(OTHER_ID)) == {"RegionOne", "RegionTwo"}
    # The imports wait in the journal (a restart keeps it), each fetched once so far.
    waiting = journal.unplanned_event("imp-0")
    assert waiting is not None and waiting.not_before > NOW
    assert journal.unplanned_events(NOW) == []


def test_unplanned_events_are_read_due_first_oldest_first(journal) -> None:
    for n in range(3):
        journal.record_event(f"e{n}", "uploaded", IMAGE_ID, {}, NOW + n)
    journal.defer_event("e0", NOW + 60, fetch_tries=1)
    assert [e.event_id for e in journal.unplanned_events(NOW + 10)] == ["e1", "e2"]
    assert [e.event_id for e in journal.unplanned_events(NOW + 60)] == ["e0", "e1", "e2"]
    assert journal.unplanned_event("e0").fetch_tries == 1


def test_a_stale_record_fetched_late_is_not_applied_over_a_newer_one(service, journal, client) -> None:
    from coordinator.registrar import FetchResult

    synced_everywhere(journal)
    newer = dict(client.images.records[IMAGE_ID], updated_at="2026-11-30T10:00:05Z")
    client.images.records[IMAGE_ID] = newer
    journal.record_event("react", "reactivated", IMAGE_ID, {}, NOW)
    pump(service, NOW, until=lambda: journal.unplanned_event("react") is None and not service.events.fetching)
    updates = len(journal.dispatchable("RegionOne", NOW, limit=50))
    journal.record_event("deact", "deactivated", IMAGE_ID, {}, NOW)
    # The deactivate's record, fetched before the reactivate and answered after it:
    stale = dict(newer, status="deactivated", updated_at="2026-11-30T10:00:01Z")
    service.events.fetched(FetchResult("deact", stale), NOW)
    assert journal.unplanned_event("deact") is not None  # not planned from the stale record
    pump(service, NOW, until=lambda: journal.unplanned_event("deact") is None)
    tasks = [t for t in journal.dispatchable("RegionOne", NOW, limit=50)]
    assert all(t.payload["image"]["status"] == "active" for t in tasks) and len(tasks) >= updates
    assert journal.image_record_state(IMAGE_ID)[0] is not None


def test_an_iterations_answers_are_planned_in_a_bounded_number_of_statements(service, journal, stores) -> None:
    from coordinator.registrar import FetchResult

    from .test_loop_cost import Statements

    ids = [f"{n:08d}-2222-3333-4444-555555555555" for n in range(24)]
    for n, image_id in enumerate(ids):
        journal.record_event(f"up-{n}", "uploaded", image_id, {"event_id": f"up-{n}"}, NOW)
        service.events.fetched(FetchResult(f"up-{n}", image_record(image_id, store_dir=stores.store.store_dir)), NOW)
    count = Statements(service.journal)
    with service.journal.batch():  # as in the loop: one transaction per iteration
        service.events.plan_fetched(NOW)
    statements = list(count.seen)
    assert journal.unplanned_events() == []
    assert all(set(journal.region_records(i)) == {"RegionOne", "RegionTwo"} for i in ids)
    # One answer at a time this was about fifteen statements per event (360 here); now a few
    # reads and one savepoint of bulk writes for all of them.
    assert len(statements) <= 20, statements


def test_an_answer_that_cannot_be_planned_does_not_hold_back_the_others(service, journal, stores,
                                                                           monkeypatch) -> None:
    from coordinator import planner
    from coordinator.registrar import FetchResult

    ids = [f"{n:08d}-2222-3333-4444-555555555555" for n in range(4)]
    real = planner.plan

    def plan(kind, image_id, *args, **kwargs):
        if image_id == ids[1]:
            raise ValueError("a record the planner chokes on")
        return real(kind, image_id, *args, **kwargs)

    monkeypatch.setattr(planner, "plan", plan)
    for n, image_id in enumerate(ids):
        journal.record_event(f"up-{n}", "uploaded", image_id, {"event_id": f"up-{n}"}, NOW)
        service.events.fetching.add(f"up-{n}")
        service.events.fetched(FetchResult(f"up-{n}", image_record(image_id, store_dir=stores.store.store_dir)), NOW)
    with service.journal.batch():
        service.events.plan_fetched(NOW)
    assert [e.event_id for e in journal.unplanned_events()] == ["up-1"]
    assert not service.events.fetching  # up-1 is fetched again
