"""The task desk's registration path: retried apart from the transfer, and what ``synced`` needs."""

from __future__ import annotations

import sqlalchemy as sa
from glanceclient import exc as glance_exc

from coordinator.journal import Journal, NewTask
from coordinator.registrar import Registrar
from coordinator.service import Service
from coordinator.tasks import RegistrationRetry
from glancesync import protocol
from glancesync.exceptions import JournalError
from glancesync.states import SyncState

from .conftest import IMAGE_ID, NOW, make_conf
from .test_loop_cost import Statements
from .test_service import agent, planned, pump, receive, report, run_copy, send_event, state


def cascading_down(monkeypatch, client) -> list[str]:
    """The cascading glance-api answers 503 (a rolling restart); returns the GETs tried."""
    tried: list[str] = []

    def unavailable(image_id):
        tried.append(image_id)
        raise glance_exc.HTTPServiceUnavailable("glance-api is restarting")

    monkeypatch.setattr(client.images, "get", unavailable)
    return tried


def region_row(journal: Journal, region: str = "RegionOne") -> dict:
    return journal.image_view(IMAGE_ID)[1][region]


def test_a_registration_outage_longer_than_the_task_retries_keeps_the_copy(ctx, service, journal, client,
                                                                           monkeypatch) -> None:
    sock, task = run_copy(ctx, service)
    tried = cascading_down(monkeypatch, client)
    sock.send(protocol.encode("done", report(task)))
    now = NOW
    pump(service, now, lambda: len(tried) == 1 and not service.tasks.registering)
    # task_retry_times is 2 here: the old code failed the copy after 3 registration failures.
    for _ in range(8):
        now += 4000.0  # past any registration backoff (max 3600 s)
        before = len(tried)
        pump(service, now, lambda b=before: len(tried) > b and not service.tasks.registering)
        assert state(journal) == SyncState.REGISTERING
    assert "glance-api is restarting" in region_row(journal)["last_error"]
    monkeypatch.undo()
    now += 4000.0
    pump(service, now, lambda: state(journal) == SyncState.SYNCED)
    row = region_row(journal)
    assert row["copy_registered"] and row["metadata_applied"] and row["attempts"] == 1
    assert journal.task(task["task_id"]).attempt == 1  # no second transfer
    while sock.poll(0):
        assert protocol.decode(sock.recv()).type != "task"


def test_a_registration_failing_past_its_horizon_fails_the_region(tmp_path, db_url, store_yaml, stores, journal,
                                                                 client, regional, ctx, monkeypatch) -> None:
    conf = make_conf(tmp_path, db_url, store_yaml, coordinator={"registration_retry_horizon": 600.0})
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _r: regional)
    svc = Service(conf, stores, journal, registrar, context=ctx)
    svc.initialize(NOW)
    try:
        sock, task = run_copy(ctx, svc)
        tried = cascading_down(monkeypatch, client)
        sock.send(protocol.encode("done", report(task)))
        pump(svc, NOW, lambda: tried and not svc.tasks.registering)
        assert state(journal) == SyncState.REGISTERING
        pump(svc, NOW + 700.0, lambda: state(journal) == SyncState.FAILED)
        assert "registration_retry_horizon" in region_row(journal)["last_error"]
    finally:
        svc.shutdown()


def test_other_bytes_in_the_region_end_the_registration_at_once(ctx, service, journal, client, regional) -> None:
    regional.images.records[IMAGE_ID]["os_hash_value"] = "0" * 128
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW, lambda: state(journal) == SyncState.FAILED)
    assert client.images.added == []


def test_registration_backoff_doubles_to_its_cap_and_stops_at_the_horizon() -> None:
    retry = RegistrationRetry(backoff=5.0, max_backoff=3600.0, horizon=86400.0)
    assert retry.due(0, None, 1000.0) == 1005.0
    assert retry.due(3, 900.0, 1000.0) == 1040.0
    assert retry.due(30, 900.0, 1000.0) == 1000.0 + 3600.0
    assert retry.due(30, 1000.0 - 86400.0, 1000.0) is None


def _copy_registering(journal: Journal, now: float = NOW) -> str:
    journal.record_event("up", "uploaded", IMAGE_ID, {}, now)
    journal.plan_event("up", IMAGE_ID, [NewTask("RegionOne", "copy", {"image": {"id": IMAGE_ID}})], {}, now)
    [pending] = journal.dispatchable("RegionOne", now)
    task = journal.assign(pending.task_id, "a1", now, now + 60)
    journal.done(task.task_id, task.attempt, {"size": 1}, now)
    return task.task_id


def _update(journal: Journal, event_id: str, now: float) -> None:
    journal.record_event(event_id, "updated", IMAGE_ID, {}, now)
    journal.plan_event(event_id, IMAGE_ID, [NewTask("RegionOne", "update", {"image": {"id": IMAGE_ID}})], {}, now)


def _run_update(journal: Journal, now: float) -> None:
    [pending] = journal.dispatchable("RegionOne", now)
    task = journal.assign(pending.task_id, "a1", now, now + 60)
    journal.done(task.task_id, task.attempt, {}, now)


def test_an_update_after_a_failed_registration_does_not_make_the_region_synced(journal) -> None:
    copy_id = _copy_registering(journal)
    _update(journal, "upd", NOW + 1)  # waits behind the copy
    journal.fail(copy_id, 1, "registration failed for good", NOW + 2, lambda _retries: None)
    _run_update(journal, NOW + 3)
    row = region_row(journal)
    assert row["state"] == SyncState.FAILED
    assert row["copy_registered"] is False and row["metadata_applied"] is True
    assert "no verified and registered copy" in row["last_error"]


def test_synced_needs_both_a_registered_copy_and_the_newest_metadata(journal) -> None:
    copy_id = _copy_registering(journal)
    journal.finish(copy_id, 1, NOW + 1, "h" * 128)
    assert region_row(journal)["state"] == SyncState.SYNCED
    _update(journal, "upd", NOW + 2)
    row = region_row(journal)
    assert row["state"] == SyncState.PENDING and row["copy_registered"] and not row["metadata_applied"]
    _run_update(journal, NOW + 3)
    row = region_row(journal)
    assert row["state"] == SyncState.SYNCED and row["copy_registered"] and row["metadata_applied"]


def test_an_iteration_that_hands_out_tasks_commits_once_and_sends_them_after(ctx, service, journal) -> None:
    send_event(ctx, service)
    pump(service, NOW, lambda: planned(service))
    sock = agent(ctx, service)
    count = Statements(journal)
    sent_at_commit: list[int] = []
    sa.event.listen(journal.engine, "commit", lambda _conn: sent_at_commit.append(len(given)))
    given: list[dict] = []
    real_send = service.send_agent

    def send(routing_id, msg_type, body):
        if msg_type == "task":
            given.append(body)
        return real_send(routing_id, msg_type, body)

    service.send_agent = send
    sock.send(protocol.encode("ready", {"credits": 1}))
    pump(service, NOW, lambda: given)
    # The ready's iteration: its writes and the assignment in one commit, the task sent after it.
    assert count.commits() == 1 and sent_at_commit == [0]
    assert journal.task(given[0]["task_id"]).state == SyncState.ASSIGNED and given[0]["attempt"] == 1
    sock.close()


def test_a_hand_out_whose_batch_rolls_back_is_not_sent_and_goes_out_later_as_attempt_one(
        ctx, service, journal, monkeypatch) -> None:
    send_event(ctx, service)
    pump(service, NOW, lambda: planned(service))
    sock = agent(ctx, service)
    real = journal.assign_many

    def broken(picks, now):
        outcomes = real(picks, now)
        journal._batch_broken = JournalError(detail="the disk is full")  # the commit will not happen
        return outcomes

    monkeypatch.setattr(journal, "assign_many", broken)
    sock.send(protocol.encode("ready", {"credits": 1}))
    pump(service, NOW, lambda: service.iterations > 3 and not service.tasks._routes)
    assert not sock.poll(0) and state(journal) == SyncState.PENDING
    monkeypatch.undo()
    pump(service, NOW + 2, lambda: sock.poll(0))
    task = receive(sock, service, NOW + 2, "task").body
    assert task["attempt"] == 1 and journal.task(task["task_id"]).attempt == 1
    sock.close()
