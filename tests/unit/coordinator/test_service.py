"""The service loop over real zmq sockets on 127.0.0.1, with a fake cascading glance."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from coordinator import wakeups
from coordinator.journal import Journal
from coordinator.registrar import Registrar
from coordinator.service import Service
from glancesync import protocol
from glancesync.states import SyncState

from .conftest import IMAGE_ID, NOW, free_port, image_record

OTHER_ID = "99999999-0000-4000-8000-000000000000"


def dealer(ctx, port: int) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


# Wall-clock bounds, not iteration counts: registrations run on the registrar's
# threads, which a busy machine may leave waiting for seconds.
PATIENCE = 60.0


def pump(service: Service, now: float, until=None, rounds: int = 5) -> None:
    """Run loop iterations at ``now`` until ``until()`` holds (or ``rounds`` iterations when None)."""
    if until is None:
        for _ in range(rounds):
            service.loop(now, poll_seconds=0.01)
        return
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        service.loop(now, poll_seconds=0.01)
        if until():
            return
    raise AssertionError("condition not reached")


def receive(sock: zmq.Socket, service: Service, now: float, msg_type: str | None = None) -> protocol.Message:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        service.loop(now, poll_seconds=0.005)
        while sock.poll(0):
            msg = protocol.decode(sock.recv())
            if msg_type is None or msg.type == msg_type:
                return msg
    raise AssertionError(f"no {msg_type or 'message'} received")


def arrived(sock: zmq.Socket) -> None:
    """Wait until a frame sent to the coordinator's ``sock`` is there to read.

    A test that sends a frame and then runs the loop at a later ``now`` needs the frame
    handled in the first iteration at that time: one iteration without it may take the
    silent agent for gone (three heartbeat intervals) before the frame is read.
    """
    # The client socket's frames reach the loop through the status thread's pipe (statusdesk.LoopEnd).
    sock = getattr(sock, "sock", sock)
    assert sock.poll(int(PATIENCE * 1000)), "the frame never reached the coordinator"


def agent(ctx, service, region: str = "RegionOne", agent_id: str = "a1", credits: int = 0,
          in_flight=(), now: float = NOW) -> zmq.Socket:
    sock = dealer(ctx, service.conf.coordinator.agent_port)
    sock.send(protocol.encode("hello", {"region": region, "agent_id": agent_id, "capacity": 2,
                                        "version": "t", "in_flight": list(in_flight)}))
    assert receive(sock, service, now, "welcome").body["lease_timeout"] == 10.0
    if credits:
        session = next(s for s in service.agents.sessions.values() if (s.region, s.agent_id) == (region, agent_id))
        kept = len(session.tasks)  # its in_flight
        sock.send(protocol.encode("ready", {"credits": credits}))
        # Taken: as credits, or already spent on tasks handed out in the same iteration.
        pump(service, now, lambda: session.credits + len(session.tasks) - kept >= min(credits, session.capacity))
    return sock


def send_event(ctx, service, event_id: str = "e1", kind: str = "uploaded", now: float = NOW) -> protocol.Message:
    sock = dealer(ctx, service.conf.sync_server_port)
    sock.send(protocol.encode("event", {"event_id": event_id, "kind": kind, "image_id": IMAGE_ID}))
    reply = receive(sock, service, now)
    sock.close()
    return reply


def planned(service: Service) -> bool:
    return not service.journal.unplanned_events()


def deferred(journal: Journal, event_id: str, now: float = NOW) -> bool:
    """The event waits in the journal for a later fetch (backoff, or an import that runs)."""
    event = journal.unplanned_event(event_id)
    return event is not None and event.not_before > now


def state(journal: Journal, region: str = "RegionOne") -> str:
    return journal.image_view(IMAGE_ID)[1][region]["state"]


def test_event_is_journaled_before_ack_and_duplicates_make_no_work(ctx, service, journal) -> None:
    reply = send_event(ctx, service)
    assert reply.type == "event_ack" and reply.body["event_id"] == "e1"
    assert journal.image_view(IMAGE_ID)[0] is True  # the event row was committed before the ack
    pump(service, NOW, lambda: planned(service))
    assert send_event(ctx, service).type == "event_ack"
    pump(service, NOW)
    assert len(journal.dispatchable("RegionOne", NOW)) == 1
    assert len(journal.dispatchable("RegionTwo", NOW)) == 1


def test_dispatch_only_to_the_right_region_and_only_with_credits(ctx, service, journal) -> None:
    send_event(ctx, service)
    pump(service, NOW, lambda: planned(service))
    one = agent(ctx, service, "RegionOne", "a1")
    pump(service, NOW)
    assert not one.poll(50) or receive(one, service, NOW).type == "heartbeat"
    assert state(journal, "RegionOne") == "pending"  # no credits, no task
    one.send(protocol.encode("ready", {"credits": 2}))
    task = receive(one, service, NOW, "task")
    assert task.body["region"] == "RegionOne" and task.body["attempt"] == 1
    assert task.body["source"]["type"] == "sftp" and task.body["image"]["id"] == IMAGE_ID
    assert state(journal, "RegionOne") == "assigned"
    assert state(journal, "RegionTwo") == "pending"
    session = service.agents.get(next(iter(service.agents.sessions)))
    assert session.credits == 1 and session.tasks == {task.body["task_id"]}


def run_copy(ctx, service, now=NOW):
    send_event(ctx, service, now=now)
    pump(service, now, lambda: planned(service))
    sock = agent(ctx, service, credits=1, now=now)
    task = receive(sock, service, now, "task").body
    return sock, task


def report(task, **overrides):
    image = image_record()
    body = {"task_id": task["task_id"], "attempt": task["attempt"], "size": image["size"],
            "checksum": image["checksum"], "os_hash_algo": "sha512", "os_hash_value": image["os_hash_value"]}
    body.update(overrides)
    return body


def test_verified_done_registers_and_syncs(ctx, service, journal, client) -> None:
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("ack", {"task_id": task["task_id"], "attempt": 1}))
    sock.send(protocol.encode("progress", {"task_id": task["task_id"], "attempt": 1,
                                           "bytes_done": 10, "bytes_total": 1024}))
    pump(service, NOW, lambda: state(journal) == "transferring")
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW, lambda: state(journal) == "synced")
    assert [a[1] for a in client.images.added] == [protocol.cascaded_url("RegionOne", IMAGE_ID)]


def test_progress_phases_give_the_image_view_its_phase_rate_and_eta(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("ack", {"task_id": task["task_id"], "attempt": 1}))
    for at, done in ((NOW + 1, 100), (NOW + 3, 300)):
        sock.send(protocol.encode("progress", {"task_id": task["task_id"], "attempt": 1, "bytes_done": done,
                                               "bytes_total": 1024, "phase": "uploading"}))
        pump(service, at, lambda done=done: journal.image_view(IMAGE_ID)[1]["RegionOne"]["bytes_done"] == done)
    reply = protocol.decode(service._status({"view": "image", "image_id": IMAGE_ID}))
    row = reply.body["data"]["regions"]["RegionOne"]
    assert (row["phase"], row["bytes_done"], row["rate_bytes_per_s"]) == ("uploading", 300, 100.0)
    assert row["eta_seconds"] == pytest.approx(7.24)


def test_done_for_a_regional_image_with_other_bytes_is_not_registered(ctx, service, journal, client,
                                                                    regional) -> None:
    regional.images.records[IMAGE_ID]["checksum"] = "0" * 32
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW, lambda: journal.task(task["task_id"]).state == SyncState.FAILED)
    assert client.images.added == []
    assert "checksum mismatch" in journal.task(task["task_id"]).last_error


def test_lapsed_lease_requeues_and_a_late_done_of_another_agent_is_ignored(ctx, service, journal, client) -> None:
    sock, task = run_copy(ctx, service)
    later = NOW + 11  # past lease_timeout (10 s); the silent agent also goes offline
    pump(service, later, lambda: journal.task(task["task_id"]).state == SyncState.PENDING)
    again = agent(ctx, service, agent_id="a2", credits=1, now=later)
    second = receive(again, service, later, "task").body
    assert second["task_id"] == task["task_id"] and second["attempt"] == 2
    sock.send(protocol.encode("done", report(task)))  # attempt 1 of a1: stale
    receive(sock, service, later, "disconnect")  # handled: a1 went offline with the lapse
    assert journal.task(task["task_id"]).state == SyncState.ASSIGNED
    assert client.images.added == []


def test_a_done_of_an_older_attempt_counts_when_the_same_agent_holds_the_current_one(ctx, service, journal,
                                                                                   client) -> None:
    sock, task = run_copy(ctx, service)
    later = NOW + 11
    pump(service, later, lambda: journal.task(task["task_id"]).state == SyncState.PENDING)
    again = agent(ctx, service, credits=1, now=later)
    second = receive(again, service, later, "task").body
    assert second["attempt"] == 2
    again.send(protocol.encode("ack", {"task_id": task["task_id"], "attempt": 2}))
    again.send(protocol.encode("done", report(task)))  # attempt 1, the same worker: not lost
    ack = receive(again, service, later, "result_ack").body
    assert ack == {"task_id": task["task_id"], "attempt": 1}
    pump(service, later, lambda: state(journal) == "synced")
    assert journal.task(task["task_id"]).retries == 1  # the one lapse, nothing more


def bye(service: Service, sock: zmq.Socket, now: float = NOW) -> None:
    """The agent of ``sock`` stops cleanly: its session goes offline at once."""
    sock.send(protocol.encode("bye", {"reason": "shutdown"}))
    pump(service, now, lambda: not any(s.online for s in service.agents.sessions.values()))


def test_hello_requeues_tasks_missing_from_in_flight_and_keeps_the_others(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    bye(service, sock)
    again = agent(ctx, service, in_flight=[task["task_id"]])
    assert journal.task(task["task_id"]).state == SyncState.ASSIGNED
    bye(service, again)
    agent(ctx, service, in_flight=[])
    assert journal.task(task["task_id"]).state == SyncState.PENDING


def test_retryable_failure_backs_off_then_fails_after_retry_times(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    now = NOW
    for attempt, delay in ((1, 5.0), (2, 10.0)):
        sock.send(protocol.encode("failed", {"task_id": task["task_id"], "attempt": attempt,
                                             "reason": "sshd down", "retryable": True}))
        pump(service, now, lambda: journal.task(task["task_id"]).state == SyncState.PENDING)
        assert journal.task(task["task_id"]).not_before == pytest.approx(now + delay)
        sock.send(protocol.encode("ready", {"credits": 1}))
        arrived(service.agent_sock)  # heard at now + delay - 1: the agent stays online
        pump(service, now + delay - 1)
        assert journal.task(task["task_id"]).state == SyncState.PENDING  # not before its time
        now += delay
        assert receive(sock, service, now, "task").body["attempt"] == attempt + 1
    sock.send(protocol.encode("failed", {"task_id": task["task_id"], "attempt": 3,
                                         "reason": "sshd down", "retryable": True}))
    pump(service, now, lambda: state(journal) == "failed")


def test_non_retryable_failure_fails_at_once(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("failed", {"task_id": task["task_id"], "attempt": 1,
                                         "reason": "host key unknown", "retryable": False}))
    pump(service, NOW, lambda: state(journal) == "failed")
    assert journal.image_view(IMAGE_ID)[1]["RegionOne"]["last_error"] == "host key unknown"


def test_heartbeats_reach_busy_agents(ctx, service) -> None:
    sock, _task = run_copy(ctx, service)
    assert receive(sock, service, NOW + 1.5, "heartbeat").type == "heartbeat"


def test_unknown_peer_is_told_to_disconnect(ctx, service) -> None:
    sock = dealer(ctx, service.conf.coordinator.agent_port)
    sock.send(protocol.encode("ready", {"credits": 1}))
    assert receive(sock, service, NOW).type == "disconnect"


def envelope(**changes) -> bytes:
    env = {"v": 1, "type": "status_query", "id": "x1", "ts": 1.0, "body": {"view": "summary"}}
    env.update(changes)
    return msgpack.packb(env)


MALFORMED = {
    "garbage": b"\xc1\x00garbage",
    "version": envelope(v=99),
    "unknown_type": envelope(type="launch_missiles"),
    "missing_field": envelope(type="event", body={"kind": "uploaded"}),
}


@pytest.mark.parametrize("port_opt", ["client", "agent"])
def test_malformed_frames_are_answered_and_serving_goes_on(ctx, service, port_opt, caplog) -> None:
    port = service.conf.sync_server_port if port_opt == "client" else service.conf.coordinator.agent_port
    sock = dealer(ctx, port)
    codes = {}
    for name, frame in MALFORMED.items():
        sock.send(frame)
        codes[name] = receive(sock, service, NOW)
    assert all(m.type == "error" for m in codes.values())
    assert codes["version"].body["code"] == "version"
    assert codes["missing_field"].body["code"] in ("missing_field", "unexpected")
    assert "refused frame" in caplog.text
    big = dealer(ctx, port)
    big.send(b"\x00" * (protocol.MAX_MESSAGE_BYTES + 10))  # zmq drops it and the connection
    pump(service, NOW)
    status_sock = dealer(ctx, service.conf.sync_server_port)
    status_sock.send(protocol.encode("status_query", {"view": "summary"}))
    reply = receive(status_sock, service, NOW)
    assert reply.type == "status_reply"
    assert set(reply.body["data"]["regions"]) == {"RegionOne", "RegionTwo"}


def test_status_views(ctx, service) -> None:
    sock, task = run_copy(ctx, service)
    query = dealer(ctx, service.conf.sync_server_port)
    query.send(protocol.encode("status_query", {"view": "summary"}))
    data = receive(query, service, NOW).body["data"]
    assert data["coordinator"]["started_at"] == NOW
    region = data["regions"]["RegionOne"]
    assert region["in_flight"] == 1 and region["queued"] == 0
    assert region["agents"][0]["tasks"] == [task["task_id"]] and region["agents"][0]["online"] is True
    assert data["regions"]["RegionTwo"]["queued"] == 1
    assert data["deletions_held"] == {"images": 0, "confirmed": 0, "since": None}
    service.journal.record_reconcile([], ["img-x"], NOW - 5, "reconciler")
    pump(service, NOW, rounds=1)  # the summary shows what an iteration published (statusdesk.py)
    query.send(protocol.encode("status_query", {"view": "summary"}))
    held = receive(query, service, NOW).body["data"]["deletions_held"]
    assert held == {"images": 1, "confirmed": 0, "since": NOW - 5}
    query.send(protocol.encode("status_query", {"view": "image", "image_id": IMAGE_ID}))
    image = receive(query, service, NOW).body["data"]
    assert image["known"] is True
    assert image["regions"]["RegionOne"]["agent_id"] == "a1"
    assert image["regions"]["RegionOne"]["task_kind"] == "copy"
    query.send(protocol.encode("status_query", {"view": "image", "image_id": OTHER_ID}))
    assert receive(query, service, NOW).body["data"] == {"image_id": OTHER_ID, "known": False, "planned": False,
                                                            "settled": False, "regions": {}, "now": NOW,
                                                            "targeting_error": None, "note": None}


def lose_task(ctx, service, journal, task_id: str, how: str, now: float) -> tuple[float, zmq.Socket | None]:
    """Let the agent holding ``task_id`` lose it (lease lapse or restart): (the time after, the
    restarted agent's socket or None)."""
    if how == "lapse":
        now += service.conf.coordinator.lease_timeout + 1
        pump(service, now, lambda: journal.task(task_id).state != SyncState.ASSIGNED)
        return now, None
    # The agent crashed and restarted without the task: its hello gets in once the old
    # session has gone offline (three silent heartbeat intervals, well within the lease).
    now += 3 * service.conf.coordinator.heartbeat_interval + 0.5
    pump(service, now)
    return now, agent(ctx, service, in_flight=[], now=now)


@pytest.mark.parametrize("how", ["lapse", "restart"])
def test_a_task_that_keeps_losing_its_agent_ends_failed(ctx, service, journal, how) -> None:
    # A poison image that kills the agent on every attempt must not be handed out forever:
    # each loss counts as a retry (task_retry_times = 2 here).
    sock, task = run_copy(ctx, service)
    task_id, now = task["task_id"], NOW
    for attempt in (1, 2):
        now, restarted = lose_task(ctx, service, journal, task_id, how, now)
        row = journal.task(task_id)
        assert row.state == SyncState.PENDING and row.retries == attempt
        if restarted is None:
            again = agent(ctx, service, credits=1, now=now)
        else:
            again = restarted
            again.send(protocol.encode("ready", {"credits": 1}))
        assert receive(again, service, now, "task").body["attempt"] == attempt + 1
    lose_task(ctx, service, journal, task_id, how, now)
    assert journal.task(task_id).state == SyncState.FAILED
    view = journal.image_view(IMAGE_ID)[1]["RegionOne"]
    assert view["state"] == "failed" and "a1" in view["last_error"]


def test_a_restarted_coordinator_gives_agents_a_lease_to_come_back(ctx, service, journal, conf, stores,
                                                                    client, regional) -> None:
    # The coordinator was down longer than lease_timeout: its agents kept working and say hello
    # again within a few heartbeats. Their tasks must not lapse (and burn a retry) before that.
    sock, task = run_copy(ctx, service)
    service.shutdown()
    restart = NOW + 100
    # New ports: zmq releases the old ones asynchronously.
    conf.set_override("agent_port", free_port(), group="coordinator")
    conf.set_override("sync_server_port", free_port())
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _region: regional)
    again = Service(conf, stores, journal, registrar, context=ctx)
    again.initialize(restart)
    try:
        pump(again, restart)
        row = journal.task(task["task_id"])
        assert row.state == SyncState.ASSIGNED and row.retries == 0
        agent(ctx, again, in_flight=[task["task_id"]], now=restart + 5)
        pump(again, restart + 5 + again.conf.coordinator.lease_timeout - 1)
        assert journal.task(task["task_id"]).state == SyncState.ASSIGNED
    finally:
        again.shutdown()


def test_an_event_deferred_before_a_restart_is_planned_when_it_is_due(service, journal, conf, stores,
                                                                      client, regional, ctx) -> None:
    journal.record_event("e1", "uploaded", IMAGE_ID, {"event_id": "e1"}, NOW)
    journal.defer_event("e1", NOW + 5, fetch_tries=1)  # its fetch failed before the stop
    service.shutdown()
    conf.set_override("agent_port", free_port(), group="coordinator")
    conf.set_override("sync_server_port", free_port())
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _region: regional)
    again = Service(conf, stores, journal, registrar, context=ctx)
    again.initialize(NOW)
    try:
        # The poll waits no longer than the event's due time ...
        assert wakeups.poll_timeout(NOW + 4.5, 10.0, again._queries, again._handouts) == pytest.approx(0.5)
        again.loop(NOW + 4.5, poll_seconds=0)  # the planning ran half a second before it is due
        assert client.images.gets == [] and client.images.listed == []
        # ... and planning runs at it, not at the gate's recheck a second after the last run.
        pump(again, NOW + 5, lambda: planned(again))
        assert any(IMAGE_ID in asked.get("id", "") for asked in client.images.listed)  # events are fetched by listing
    finally:
        again.shutdown()


def failing_once(monkeypatch, obj, name: str) -> list[int]:
    """Make ``obj.name`` raise JournalError (a locked or full journal) on its first call only."""
    from glancesync.exceptions import JournalError

    real, calls = getattr(obj, name), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise JournalError(detail="OperationalError: database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, flaky)
    return calls


def test_a_result_that_cannot_be_journaled_is_applied_on_a_later_iteration(ctx, service, journal,
                                                                             monkeypatch) -> None:
    sock, task = run_copy(ctx, service)
    calls = failing_once(monkeypatch, journal, "finish")
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW, lambda: state(journal) == "synced")
    assert len(calls) == 2


def test_a_fetch_result_that_cannot_be_journaled_is_planned_later(ctx, service, journal, monkeypatch) -> None:
    calls = failing_once(monkeypatch, journal, "plan_event")
    send_event(ctx, service)
    pump(service, NOW, lambda: planned(service))
    assert len(calls) == 2 and len(journal.dispatchable("RegionOne", NOW)) == 1


def test_a_done_the_journal_could_not_take_is_redone_after_the_lease(ctx, service, journal,
                                                                    monkeypatch) -> None:
    # The agent sends done once. If the journal cannot take it, the task must not stay
    # "transferring" for ever with its lease renewed by the agent's heartbeats.
    sock, task = run_copy(ctx, service)
    session = next(iter(service.agents.online()))
    calls = failing_once(monkeypatch, journal, "done")
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW, lambda: calls)
    now = NOW
    for _ in range(12):  # the agent keeps beating for longer than lease_timeout
        now += 1
        sock.send(protocol.encode("heartbeat", {}))
        pump(service, now, lambda now=now: session.liveness.last_heard == now)
    assert journal.task(task["task_id"]).state == SyncState.PENDING
    assert session.online  # the lease lapsed, not the agent


def test_a_fetch_that_returns_after_the_delete_makes_no_copies(service, journal, client) -> None:
    # uploaded is being fetched when deleted arrives and is planned (no regions yet); the
    # fetch then answers with the image as it was. Copying it now would leave regional
    # copies of a deleted image that nothing ever removes.
    from coordinator.registrar import FetchResult

    journal.record_event("e1", "uploaded", IMAGE_ID, {"event_id": "e1"}, NOW)
    journal.record_event("e2", "deleted", IMAGE_ID, {"event_id": "e2"}, NOW + 1)
    old = client.images.records.pop(IMAGE_ID)  # gone: the delete is confirmed by a 404
    service.events.fetching.add("e1")
    pump(service, NOW + 1, until=lambda: journal.unplanned_event("e2") is None)
    service.events.fetched(FetchResult("e1", old), NOW + 2)
    service.events.plan_fetched(NOW + 2)
    assert planned(service)
    assert journal.dispatchable("RegionOne", NOW + 2) == [] and journal.dispatchable("RegionTwo", NOW + 2) == []
    assert journal.image_view(IMAGE_ID)[1] == {}


def test_agents_of_two_regions_may_share_an_agent_id(ctx, service, journal) -> None:
    # [agent] agent_id is unique among the agents of a region only (e.g. "agent-1" in each).
    sock, task = run_copy(ctx, service)  # agent a1 of RegionOne holds the copy
    other = agent(ctx, service, region="RegionTwo", agent_id="a1", credits=1)
    two = receive(other, service, NOW, "task").body
    assert two["region"] == "RegionTwo"
    row = journal.task(task["task_id"])
    assert row.state == SyncState.ASSIGNED and row.retries == 0  # RegionOne's task untouched
    sessions = service.agents.by_region()
    assert [s.agent_id for s in sessions["RegionOne"]] == ["a1"] and sessions["RegionOne"][0].online
    assert [s.agent_id for s in sessions["RegionTwo"]] == ["a1"]
    # A report names the task; an agent of another region cannot settle it.
    other.send(protocol.encode("failed", {"task_id": task["task_id"], "attempt": 1, "reason": "x",
                                          "retryable": False}))
    pump(service, NOW)
    assert journal.task(task["task_id"]).state == SyncState.ASSIGNED


def test_agents_that_never_come_back_are_forgotten(ctx, service) -> None:
    agent(ctx, service, agent_id="ephemeral-1")
    pump(service, NOW + 10)
    assert [s.online for s in service.agents.sessions.values()] == [False]  # offline, still listed
    pump(service, NOW + 10 + 24 * 3600)
    assert service.agents.sessions == {}


def test_an_image_deleted_before_planning_is_planned_with_no_tasks(ctx, service, journal, client) -> None:
    del client.images.records[IMAGE_ID]
    send_event(ctx, service)
    pump(service, NOW, lambda: planned(service))
    assert service.events.fetching == set()
    assert journal.image_view(IMAGE_ID)[1] == {} and len(client.images.gets) == 1


def test_a_fetch_that_keeps_failing_gives_up_with_a_reason(ctx, service, journal, client, monkeypatch) -> None:
    from glanceclient import exc

    def broken(image_id):
        client.images.gets.append(image_id)
        raise exc.HTTPInternalServerError("glance cannot show this image")

    def broken_listing(filters, page_size=20):
        client.images.gets.append(filters["id"])  # one more try, as a GET's
        raise exc.HTTPInternalServerError("glance cannot show this image")

    monkeypatch.setattr(client.images, "get", broken)
    monkeypatch.setattr(client.images, "list", broken_listing)  # events are fetched by listing
    send_event(ctx, service)
    now = NOW
    pump(service, now, lambda: client.images.gets and "e1" not in service.events.fetching)
    for _ in range(40):
        now += 3600  # past any backoff
        before = len(client.images.gets)
        pump(service, now, lambda b=before: len(client.images.gets) > b and "e1" not in service.events.fetching)
        if planned(service):
            break
    assert planned(service), "the event is fetched for ever"
    with journal.transaction() as conn:
        from coordinator.schema import events
        error = conn.execute(events.select()).one().plan_error
    assert "glance cannot show this image" in error


def test_an_event_the_journal_cannot_take_is_not_acked(ctx, service, journal, monkeypatch) -> None:
    failing_once(monkeypatch, journal, "record_events")
    reply = send_event(ctx, service)
    assert reply.type == "error" and reply.body["code"] == "unavailable"
    assert journal.unplanned_events() == []
    assert send_event(ctx, service).type == "event_ack"  # the sender's resend is taken


def test_reconciler_makes_events_for_an_image_whose_event_was_lost(service, journal, client) -> None:
    from .conftest import add_listing

    add_listing(client.images)
    assert service.passes.next_reconcile is not None
    later = service.passes.next_reconcile + 1
    pump(service, later, until=lambda: journal.known_image_ids() == {IMAGE_ID})
    pump(service, later, until=lambda: set(journal.region_records(IMAGE_ID)) == {"RegionOne", "RegionTwo"})
    assert all(r.state == SyncState.PENDING for r in journal.region_records(IMAGE_ID).values())
    # The next pass is a full interval away, and a second pass makes no second event.
    assert service.passes.next_reconcile == pytest.approx(later + service.conf.coordinator.reconcile_interval)
    pump(service, service.passes.next_reconcile + 1)
    assert journal.unplanned_count(IMAGE_ID) == 0


def test_reconciler_deletes_regional_copies_of_a_vanished_image_within_the_limit(
        tmp_path, db_url, store_yaml, stores, journal, client, ctx) -> None:
    from .conftest import add_listing, make_conf

    conf = make_conf(tmp_path, db_url, store_yaml,
                     coordinator={"reconcile_max_deletes": 0, "reconcile_max_delete_percent": 0})
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _region: client)
    svc = Service(conf, stores, journal, registrar, context=ctx)
    svc.initialize(NOW)
    try:
        add_listing(client.images)
        later = svc.passes.next_reconcile + 1
        pump(svc, later, until=lambda: set(journal.region_records(IMAGE_ID)) == {"RegionOne", "RegionTwo"})
        del client.images.records[IMAGE_ID]  # deleted in the cascading glance, its event lost
        again = svc.passes.next_reconcile + 1
        pump(svc, again, until=lambda: all(
            r.state == SyncState.DELETING for r in journal.region_records(IMAGE_ID).values()))
        assert journal.held_deletes() == []
    finally:
        svc.shutdown()


def _imported(journal, now: float) -> None:
    body = {"event_id": "imp-1", "kind": "imported", "image_id": IMAGE_ID, "image": None}
    journal.record_event("imp-1", "imported", IMAGE_ID, body, now)


def test_an_import_is_fetched_again_until_active_without_holding_a_thread(service, journal, client) -> None:
    client.images.records[IMAGE_ID]["status"] = "importing"
    _imported(journal, NOW)
    pump(service, NOW, until=lambda: deferred(journal, "imp-1"))
    assert journal.region_records(IMAGE_ID) == {}
    gets = len(client.images.gets)
    pump(service, NOW + 1)  # before snapshot_sleep_interval: no new GET
    assert len(client.images.gets) == gets
    client.images.records[IMAGE_ID]["status"] = "active"
    later = NOW + service.conf.snapshot_sleep_interval + 1
    pump(service, later, until=lambda: set(journal.region_records(IMAGE_ID)) == {"RegionOne", "RegionTwo"})


def test_an_import_never_active_is_planned_with_no_tasks_after_snapshot_timeout(service, journal, client) -> None:
    client.images.records[IMAGE_ID]["status"] = "importing"
    _imported(journal, NOW)
    pump(service, NOW, until=lambda: deferred(journal, "imp-1"))
    late = NOW + service.conf.snapshot_timeout + 1
    pump(service, late, until=lambda: journal.unplanned_event("imp-1") is None)
    assert journal.region_records(IMAGE_ID) == {}


def test_status_carries_the_coordinators_clock(service, ctx) -> None:
    pump(service, NOW + 42, rounds=1)  # the summary is the one published by the last iteration
    query = dealer(ctx, service.conf.sync_server_port)
    query.send(protocol.encode("status_query", {"view": "summary"}))
    assert receive(query, service, NOW + 42).body["data"]["coordinator"]["now"] == NOW + 42


def test_steady_clock_ignores_a_wall_clock_step(monkeypatch) -> None:
    from coordinator import service as service_module

    wall, mono = [1000.0], [50.0]
    monkeypatch.setattr(service_module.time, "time", lambda: wall[0])
    monkeypatch.setattr(service_module.time, "monotonic", lambda: mono[0])
    clock = service_module.SteadyClock()
    mono[0] += 2
    wall[0] += 3600 + 2  # NTP stepped the wall clock an hour forward
    assert clock.now() == 1002.0
    wall[0] -= 7200  # and then two hours back
    mono[0] += 1
    assert clock.now() == 1003.0


def test_a_second_agent_with_a_taken_id_is_refused_and_evicts_nothing(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    twin = dealer(ctx, service.conf.coordinator.agent_port)
    twin.send(protocol.encode("hello", {"region": "RegionOne", "agent_id": "a1", "capacity": 2,
                                        "version": "t", "in_flight": []}))
    reply = receive(twin, service, NOW, "error")
    assert reply.body["code"] == "agent_id_in_use" and "a1" in reply.body["reason"]
    row = journal.task(task["task_id"])
    assert row.state == SyncState.ASSIGNED and row.retries == 0  # the live agent keeps its task
    assert [s.online for s in service.agents.sessions.values()] == [True]
    sock.send(protocol.encode("ack", {"task_id": task["task_id"], "attempt": 1}))
    pump(service, NOW)
    assert not any(receive_all(sock, "disconnect"))


def receive_all(sock: zmq.Socket, msg_type: str) -> list[protocol.Message]:
    found = []
    while sock.poll(0):
        msg = protocol.decode(sock.recv())
        if msg.type == msg_type:
            found.append(msg)
    return found


def test_a_hello_for_a_region_the_store_map_does_not_name_is_refused(ctx, service) -> None:
    sock = dealer(ctx, service.conf.coordinator.agent_port)
    sock.send(protocol.encode("hello", {"region": "RegionMadeUp", "agent_id": "a1", "capacity": 2,
                                        "version": "t"}))
    assert receive(sock, service, NOW, "error").body["code"] == "unknown_region"
    assert service.agents.sessions == {}


# -- session faults: reconcile on hello, acked results, mandatory routes, hand-back ----------------


def hello_running(ctx, service, running, now: float, agent_id: str = "a1") -> zmq.Socket:
    sock = dealer(ctx, service.conf.coordinator.agent_port)
    sock.send(protocol.encode("hello", {"region": "RegionOne", "agent_id": agent_id, "capacity": 2,
                                        "version": "t", "in_flight": [r["task_id"] for r in running],
                                        "running": running}))
    receive(sock, service, now, "welcome")
    return sock


def test_hello_cancels_an_attempt_that_is_no_longer_the_agents(ctx, service, journal) -> None:
    # The partition: the agent was cut off past lease_timeout, its task went back to the queue.
    sock, task = run_copy(ctx, service)
    later = NOW + 11
    pump(service, later, lambda: journal.task(task["task_id"]).state == SyncState.PENDING)
    again = hello_running(ctx, service, [{"task_id": task["task_id"], "attempt": 1}], later)
    cancel = receive(again, service, later, "cancel").body
    assert (cancel["task_id"], cancel["attempt"]) == (task["task_id"], 1)


def test_hello_keeps_the_lease_of_an_attempt_still_current(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    bye(service, sock)
    again = hello_running(ctx, service, [{"task_id": task["task_id"], "attempt": 1}], NOW + 1)
    row = journal.task(task["task_id"])
    assert row.state == SyncState.ASSIGNED and row.retries == 0 and row.lease_expires == NOW + 11
    pump(service, NOW + 1)
    assert receive_all(again, "cancel") == []


def test_done_and_failed_are_acked_after_the_journal_and_a_resent_one_changes_nothing(ctx, service,
                                                                                    journal) -> None:
    sock, task = run_copy(ctx, service)
    ref = {"task_id": task["task_id"], "attempt": 1}
    sock.send(protocol.encode("done", report(task)))
    assert receive(sock, service, NOW, "result_ack").body == ref
    pump(service, NOW, lambda: state(journal) == "synced")
    sock.send(protocol.encode("done", report(task)))  # resent after a lost ack
    assert receive(sock, service, NOW, "result_ack").body == ref
    assert state(journal) == "synced" and journal.task(task["task_id"]).retries == 0


def test_a_done_the_journal_cannot_take_is_not_acked(ctx, service, journal, monkeypatch) -> None:
    sock, task = run_copy(ctx, service)
    failing_once(monkeypatch, service.journal, "done")
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW)
    assert receive_all(sock, "result_ack") == []
    sock.send(protocol.encode("done", report(task)))  # the agent's resend
    assert receive(sock, service, NOW, "result_ack").body["task_id"] == task["task_id"]
    pump(service, NOW, lambda: state(journal) == "synced")


def test_a_task_for_an_agent_whose_connection_is_gone_is_requeued_without_a_retry(ctx, service,
                                                                                 journal) -> None:
    monitor = service.agent_sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock = agent(ctx, service, credits=1)
        rid = next(iter(service.agents.sessions))
        sock.close(linger=0)
        assert monitor.poll(10_000), "the coordinator never saw the agent's connection close"
        send_event(ctx, service)
        pump(service, NOW, lambda: planned(service) and service.agents.get(rid) is None)
    finally:
        service.agent_sock.disable_monitor()
        monitor.close(linger=0)
    row = journal.dispatchable("RegionOne", NOW)[0]
    assert row.retries == 0 and "could not be reached" in row.last_error


def test_bye_hands_back_unfinished_tasks_without_a_retry(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("ack", {"task_id": task["task_id"], "attempt": 1}))
    pump(service, NOW, lambda: state(journal) == "transferring")
    sock.send(protocol.encode("bye", {"reason": "shutdown",
                                      "handed_back": [{"task_id": task["task_id"], "attempt": 1}]}))
    pump(service, NOW, lambda: journal.task(task["task_id"]).state == SyncState.PENDING)
    row = journal.task(task["task_id"])
    assert row.retries == 0 and "handed back" in row.last_error
