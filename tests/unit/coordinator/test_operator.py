"""Operators' requests served by the loop: cancel, resync of failed regions, sync on demand, targeting."""

from __future__ import annotations

import pytest

from coordinator import operator
from coordinator.journal import RegionRecord
from coordinator.service import Service
from glancesync import protocol
from glancesync.states import SyncState

from .conftest import IMAGE_ID, NOW, make_conf, start_service
from .test_service import dealer, planned, pump, receive, run_copy, send_event, state


def ask(ctx, service: Service, action: str, **body) -> protocol.Message:
    sock = dealer(ctx, service.conf.sync_server_port)
    sock.send(protocol.encode("operator", {"action": action, **body}))
    reply = receive(sock, service, NOW)
    sock.close()
    return reply


def test_cancel_stops_the_running_copy_and_tells_its_agent_to_discard(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("ack", {"task_id": task["task_id"], "attempt": 1}))
    pump(service, NOW, lambda: state(journal) == SyncState.TRANSFERRING)
    reply = ask(ctx, service, "cancel", image_id=IMAGE_ID, regions=["RegionOne"])
    assert reply.type == "operator_reply"
    assert [(c["region"], c["agent_told"]) for c in reply.body["data"]["cancelled"]] == [("RegionOne", True)]
    cancel = receive(sock, service, NOW, "cancel").body
    assert cancel["task_id"] == task["task_id"] and cancel["discard"] is True
    assert state(journal) == SyncState.CANCELLED
    assert state(journal, "RegionTwo") == SyncState.PENDING  # only the region asked for
    # A late done of the cancelled attempt changes nothing.
    sock.send(protocol.encode("done", {"task_id": task["task_id"], "attempt": 1}))
    pump(service, NOW)
    assert state(journal) == SyncState.CANCELLED
    assert not service.agents.holder(task["task_id"])


def test_a_cancelled_region_is_not_retried_by_events_but_by_an_operator_sync(ctx, service, journal) -> None:
    run_copy(ctx, service)
    ask(ctx, service, "cancel", image_id=IMAGE_ID)
    assert {state(journal, r) for r in ("RegionOne", "RegionTwo")} == {SyncState.CANCELLED}
    send_event(ctx, service, event_id="again", kind="uploaded")
    send_event(ctx, service, event_id="upd", kind="updated")
    pump(service, NOW, lambda: planned(service))
    assert state(journal) == SyncState.CANCELLED
    reply = ask(ctx, service, "sync", image_id=IMAGE_ID, regions=["RegionOne"])
    assert reply.body["data"]["regions"] == ["RegionOne"]
    pump(service, NOW, lambda: planned(service) and state(journal) == SyncState.PENDING)
    assert state(journal, "RegionTwo") == SyncState.CANCELLED


def test_cancel_says_why_nothing_was_cancelled(ctx, service, journal) -> None:
    data = ask(ctx, service, "cancel", image_id=IMAGE_ID, regions=["RegionOne"]).body["data"]
    assert data["cancelled"] == []
    assert data["not_cancelled"][0]["reason"] == "no copy of the image is planned in this region"


@pytest.mark.parametrize("body, words", [
    ({"action": "cancel", "image_id": IMAGE_ID, "regions": ["regionone"]}, "did you mean 'RegionOne'"),
    ({"action": "sync", "image_id": IMAGE_ID, "regions": ["Nowhere"]}, "'Nowhere' is not known"),
    ({"action": "sync", "image_id": IMAGE_ID}, "sync needs at least one region"),
    ({"action": "cancel"}, "cancel needs an image id"),
])
def test_bad_requests_get_an_error_reply(ctx, service, body, words) -> None:
    reply = ask(ctx, service, **body)
    assert reply.type == "error" and reply.body["code"] == "bad_request" and words in reply.body["reason"]


def test_resync_failed_restarts_only_failed_regions_of_the_asked_region(ctx, service, journal) -> None:
    send_event(ctx, service)
    pump(service, NOW, lambda: planned(service))
    for region in ("RegionOne", "RegionTwo"):
        task = journal.dispatchable(region, NOW)[0]
        task = journal.assign(task.task_id, "a", NOW, NOW + 10)
        journal.fail(task.task_id, task.attempt, "broken", NOW, lambda _r: None)
    assert {state(journal, r) for r in ("RegionOne", "RegionTwo")} == {SyncState.FAILED}
    data = ask(ctx, service, "resync_failed", regions=["RegionTwo"]).body["data"]
    assert [(i["image_id"], i["regions"]) for i in data["images"]] == [(IMAGE_ID, ["RegionTwo"])]
    pump(service, NOW, lambda: planned(service) and state(journal, "RegionTwo") == SyncState.PENDING)
    assert state(journal, "RegionOne") == SyncState.FAILED
    data = ask(ctx, service, "resync_failed").body["data"]
    assert [i["regions"] for i in data["images"]] == [["RegionOne"]]
    pump(service, NOW, lambda: planned(service) and state(journal, "RegionOne") == SyncState.PENDING)


def test_a_delete_cancels_the_running_copy(ctx, service, journal, client) -> None:
    sock, task = run_copy(ctx, service)
    del client.images.records[IMAGE_ID]
    send_event(ctx, service, event_id="gone", kind="deleted")
    cancel = receive(sock, service, NOW, "cancel").body
    assert cancel["task_id"] == task["task_id"] and cancel["discard"] is True
    assert journal.task(task["task_id"]).state == SyncState.CANCELLED
    assert state(journal) == SyncState.DELETING  # the delete runs next


def test_on_demand_moves_nothing_until_asked(tmp_path, db_url, store_yaml, stores, journal, client, regional,
                                             ctx) -> None:
    conf = make_conf(tmp_path, db_url, store_yaml, DEFAULT={"sync_strategy": "nova"})
    service = start_service(conf, stores, journal, client, regional, ctx)
    try:
        send_event(ctx, service)
        pump(service, NOW, lambda: planned(service))
        assert journal.image_view(IMAGE_ID)[1] == {}
        ask(ctx, service, "sync", image_id=IMAGE_ID, regions=["RegionTwo"])
        pump(service, NOW, lambda: planned(service))
        assert list(journal.image_view(IMAGE_ID)[1]) == ["RegionTwo"]
        assert "ON_DEMAND" in service.events.strategy_in_force
    finally:
        service.shutdown()


def test_an_unknown_region_in_glance_sync_regions_is_kept_as_the_reason(tmp_path, db_url, store_yaml, stores,
                                                                        journal, client, regional, ctx) -> None:
    client.images.records[IMAGE_ID]["glance_sync_regions"] = "RegionOne, regiontwo"
    conf = make_conf(tmp_path, db_url, store_yaml, DEFAULT={"sync_strategy": "user"})
    service = start_service(conf, stores, journal, client, regional, ctx)
    try:
        send_event(ctx, service)
        pump(service, NOW, lambda: planned(service))
        assert list(journal.image_view(IMAGE_ID)[1]) == ["RegionOne"]
        assert "did you mean 'RegionTwo'" in journal.targeting_error(IMAGE_ID)
    finally:
        service.shutdown()


def test_operator_event_targets() -> None:
    known = ["RegionOne", "RegionTwo"]
    existing = {"RegionTwo": RegionRecord(SyncState.CANCELLED, "copy", None)}
    assert operator.event_targets({}, known, "USER", existing) == (known, "USER", False)
    assert operator.event_targets({"operator": True, "regions": ["RegionTwo"]}, known, "None", {}) == (
        ["RegionTwo"], "ALL", True)
    assert operator.event_targets({"operator": True}, known, "ON_DEMAND", existing) == (["RegionTwo"], "ALL", True)


@pytest.mark.parametrize("rules, words", [
    ("p1:regionone", "did you mean 'RegionOne'"),
    ("p1:Mars", "'Mars' is not known"),
])
def test_a_bad_user_rule_stops_the_coordinator_at_start_with_one_line(tmp_path, db_url, store_yaml, capsys,
                                                                      rules, words) -> None:
    from coordinator import cmd

    make_conf(tmp_path, db_url, store_yaml, DEFAULT={"sync_strategy": "USER", "sync_user_rules": rules})
    with pytest.raises(SystemExit) as info:
        cmd.main(["--config-file", str(tmp_path / "coordinator.conf")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and words in err and "sync_user_rules" in err


def test_manage_talks_to_the_loop_and_prints_json(tmp_path, conf, service, journal, capsys) -> None:
    import json
    import threading

    from coordinator import manage

    conf_file = str(tmp_path / "coordinator.conf")
    results: dict[str, int] = {}

    def run(name: str, *argv: str) -> None:
        def target() -> None:
            try:
                results[name] = manage.main(["--config-file", conf_file, *argv])
            except SystemExit as exc:
                results[name] = int(exc.code or 0)

        thread = threading.Thread(target=target)
        thread.start()
        pump(service, NOW, lambda: name in results, rounds=3000)
        thread.join()

    run("sync", "sync", IMAGE_ID, "--regions", "RegionTwo", "--json")
    assert results["sync"] == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["regions"] == ["RegionTwo"] and reply["event_id"].startswith("operator-")
    run("cancel", "cancel", IMAGE_ID, "--region", "RegionOne")
    out = capsys.readouterr().out
    assert results["cancel"] == 1 and "RegionOne: not cancelled" in out and "nothing to cancel" in out
