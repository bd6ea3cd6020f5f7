"""The loop's queries run when something they read can have changed; a status query waits for none of them."""

from __future__ import annotations

import gc
import os
import threading

import pytest

from coordinator.wakeups import ChangeGate, Doorbell, poll_timeout
from glancesync import protocol
from glancesync.states import SyncState

from .conftest import IMAGE_ID, NOW
from .test_loop_cost import Statements
from .test_service import (
    PATIENCE,
    agent,
    arrived,
    dealer,
    deferred,
    planned,
    pump,
    receive,
    report,
    run_copy,
    send_event,
    state,
)


def selects(count: Statements) -> list[str]:
    return [s for s in count.seen if s.lstrip().upper().startswith("SELECT")]


def dispatch_queries(count: Statements) -> list[str]:
    # The hand-out's query, and only it, reads an alias "earlier" (Journal.dispatchable_by_region).
    return [s for s in selects(count) if "earlier" in s]


def test_a_gate_opens_on_a_write_a_stir_or_after_recheck_seconds() -> None:
    writes = {"n": 0}
    gate = ChangeGate(lambda: writes["n"], recheck=1.0)
    assert gate.due(NOW)  # never ran
    assert not gate.due(NOW + 0.5)
    writes["n"] += 1
    assert gate.due(NOW + 0.5) and not gate.due(NOW + 0.6)
    gate.stir()
    assert gate.due(NOW + 0.6) and not gate.due(NOW + 0.7)
    assert gate.due(NOW + 1.6)  # time alone: a retry that came due
    assert gate.due(NOW - 10)  # a clock that went back never stalls it


def test_a_gate_opens_at_each_time_it_was_told_of_and_the_loop_polls_no_longer_than_until_the_next() -> None:
    gate = ChangeGate(lambda: 0, recheck=3600.0)  # nothing written, nothing stirred: time alone
    other = ChangeGate(lambda: 0, recheck=3600.0)
    assert gate.due(NOW) and other.due(NOW)
    gate.wake_at(NOW + 7.5)
    gate.wake_at(NOW + 3.0)
    assert gate.next_wake() == NOW + 3.0
    assert poll_timeout(NOW, 0.1, gate, other) == 0.1
    assert poll_timeout(NOW + 2.95, 0.1, other, gate) == pytest.approx(0.05)
    assert not gate.due(NOW + 2.999)
    assert gate.due(NOW + 3.0) and not gate.due(NOW + 3.0)  # each time opens it once
    assert gate.next_wake() == NOW + 7.5
    assert not gate.due(NOW + 7.4) and gate.due(NOW + 9.0)  # a wake-up passed between two iterations
    assert gate.next_wake() is None and poll_timeout(NOW + 9.0, 0.1, gate) == 0.1
    other.wake_at(NOW + 1.0)
    assert poll_timeout(NOW + 9.0, 0.1, gate, other) == 0.0  # overdue: no wait at all


def test_a_retry_is_handed_out_when_its_backoff_ends_not_at_the_gates_next_recheck(ctx, service, journal) -> None:
    service._handouts.recheck = 3600.0  # time alone never reopens the hand-out here
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("failed", {"task_id": task["task_id"], "attempt": 1, "reason": "disk full",
                                         "retryable": True}))
    receive(sock, service, NOW, "result_ack")
    session = next(iter(service.agents.online()))
    sock.send(protocol.encode("ready", {"credits": 1}))
    pump(service, NOW, lambda: session.credits == 1)
    retry_at = journal.task(task["task_id"]).not_before
    assert retry_at == NOW + service.conf.coordinator.retry_backoff  # the first retry's backoff
    # The loop waits for frames no longer than until then.
    assert poll_timeout(retry_at - 0.05, 0.1, service._queries, service._handouts) == pytest.approx(0.05)
    sock.send(protocol.encode("heartbeat", {}))  # the agent stays online until then
    arrived(service.agent_sock)  # read in the first iteration at that time, before the agent is taken for gone
    pump(service, retry_at - 0.01, lambda: session.liveness.last_heard == retry_at - 0.01)
    pump(service, retry_at - 0.01)
    early = []
    while sock.poll(0):
        early.append(protocol.decode(sock.recv()).type)
    assert "task" not in early and journal.task(task["task_id"]).state == SyncState.PENDING
    again = receive(sock, service, retry_at, "task").body
    assert again["task_id"] == task["task_id"] and again["attempt"] == 2
    sock.close()


def test_a_summary_query_is_answered_by_the_status_thread_without_the_loop(ctx, service, journal) -> None:
    sock, _task = run_copy(ctx, service)  # a task handed out, an agent online
    pump(service, NOW)  # settled: the hand-out committed and published
    count = Statements(journal)
    iterations = service.iterations
    query = dealer(ctx, service.conf.sync_server_port)
    query.send(protocol.encode("status_query", {"view": "summary"}))
    assert query.poll(60_000)  # no loop iteration runs meanwhile
    reply = protocol.decode(query.recv())
    assert reply.type == "status_reply" and reply.body["data"]["regions"]["RegionOne"]["in_flight"] == 1
    # No statement and no iteration: the summary came from the snapshot of the last commit.
    assert count.seen == [] and service.iterations == iterations
    pump(service, NOW)
    assert selects(count) == []  # and nothing was left for the loop to do about it
    sock.close()


def test_a_heartbeat_alone_runs_no_dispatch_query_a_credit_or_a_report_does(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    one = agent(ctx, service, "RegionTwo", "b1", credits=2)  # takes RegionTwo's task, one credit left
    assert receive(one, service, NOW, "task").body["region"] == "RegionTwo"
    pump(service, NOW)
    count = Statements(journal)
    session = next(s for s in service.agents.online() if s.agent_id == "b1")
    assert session.credits == 1
    one.send(protocol.encode("heartbeat", {}))
    pump(service, NOW + 0.5, lambda: session.liveness.last_heard == NOW + 0.5)
    pump(service, NOW + 0.5)
    # An agent with credits online, nothing changed: nothing to look for, no query at all.
    assert dispatch_queries(count) == [] and selects(count) == []
    one.send(protocol.encode("ready", {"credits": 1}))
    pump(service, NOW + 0.5, lambda: session.credits == 2)
    assert len(dispatch_queries(count)) == 1  # the credit ran the hand-out (nothing to give)
    count.seen.clear()
    sock.send(protocol.encode("failed", {"task_id": task["task_id"], "attempt": 1, "reason": "disk full",
                                         "retryable": True}))
    receive(sock, service, NOW + 0.5, "result_ack")
    assert dispatch_queries(count)  # the report ran it
    sock.close()
    one.close()


def test_heartbeats_walk_the_sessions_only_when_one_is_due(ctx, service, monkeypatch) -> None:
    one = agent(ctx, service, "RegionOne", "a1")
    pump(service, NOW)
    walks = []
    online = service.agents.online
    monkeypatch.setattr(service.agents, "online", lambda: walks.append(1) or online())
    interval = service.conf.coordinator.heartbeat_interval
    service.dialog.heartbeats(NOW + interval / 2)
    assert walks == []  # nobody due: 500 sessions are not looked at on every wake-up
    service.dialog.heartbeats(NOW + interval)
    assert walks == [1]
    assert receive(one, service, NOW + interval, "heartbeat").type == "heartbeat"
    one.close()


def test_a_doorbell_wakes_a_poll_until_cleared_and_rings_no_more_once_closed() -> None:
    import zmq

    bell = Doorbell()
    poller = zmq.Poller()
    poller.register(bell.fileno(), zmq.POLLIN)
    assert dict(poller.poll(0)) == {}
    bell.ring()
    bell.ring()
    assert bell.fileno() in dict(poller.poll(0))
    bell.clear()
    assert dict(poller.poll(0)) == {}  # rung twice, cleared once: a later ring is a new one
    bell.ring()
    assert bell.fileno() in dict(poller.poll(0))
    poller.unregister(bell.fileno())
    bell.close()
    bell.ring()  # a job that ends after shutdown: nothing is written anywhere
    bell.close()


def test_a_doorbell_never_closed_gives_its_pipe_back_when_it_is_garbage() -> None:
    bell = Doorbell()
    ends = {fd: os.fstat(fd).st_ino for fd in (bell.fileno(), bell._write)}
    del bell
    gc.collect()
    for fd, pipe in ends.items():
        try:
            reused = os.fstat(fd).st_ino
        except OSError:
            continue  # closed
        assert reused != pipe, "the doorbell's pipe is still open"  # the number may be reused since


def test_a_glance_result_wakes_the_loops_poll_and_its_copies_are_handed_out_in_that_iteration(
        ctx, service, journal, client, monkeypatch) -> None:
    sock = agent(ctx, service, credits=1)
    gate, listing = threading.Event(), client.images.list
    # Events are fetched by listing (glancejobs.fetch_many): the listing waits on the gate.
    monkeypatch.setattr(client.images, "list", lambda filters, page_size=20: gate.wait(PATIENCE)
                        and listing(filters, page_size))
    events = dealer(ctx, service.conf.sync_server_port)
    events.send(protocol.encode("event", {"event_id": "e1", "kind": "uploaded", "image_id": IMAGE_ID}))
    receive(events, service, NOW, "event_ack")
    pump(service, NOW, lambda: "e1" in service.events.fetching)
    bell = service.doorbell.fileno()
    assert bell not in dict(service.poller.poll(0))  # the fetch waits on glance
    gate.set()
    # The answer wakes the poll: without the doorbell only the poll's timeout would end the wait.
    assert bell in dict(service.poller.poll(int(PATIENCE * 1000)))
    service.loop(NOW, poll_seconds=PATIENCE)  # takes the answer, plans the event, hands the copy out
    assert planned(service) and bell not in dict(service.poller.poll(0))  # cleared
    assert receive(sock, service, NOW, "task").body["image_id"] == IMAGE_ID
    sock.close()
    events.close()


def test_an_event_fetched_again_later_is_planned_when_its_backoff_ends_not_at_the_gates_next_recheck(
        ctx, service, journal, client, monkeypatch) -> None:
    from glanceclient import exc

    get, listing = client.images.get, client.images.list

    def restarting(*_args, **_kwargs):
        raise exc.HTTPServiceUnavailable("glance is restarting")

    monkeypatch.setattr(client.images, "get", restarting)
    monkeypatch.setattr(client.images, "list", restarting)  # events are fetched by listing
    send_event(ctx, service)
    pump(service, NOW, lambda: deferred(journal, "e1"))
    due = journal.unplanned_event("e1").not_before
    assert due > NOW and service._queries.next_wake() == due
    assert poll_timeout(due - 0.05, 0.1, service._queries, service._handouts) == pytest.approx(0.05)
    monkeypatch.setattr(client.images, "get", get)
    monkeypatch.setattr(client.images, "list", listing)
    service._queries.recheck = 3600.0  # time alone never reopens the planning here
    pump(service, due - 0.01)
    assert not planned(service)
    pump(service, due, lambda: planned(service))


def test_a_registration_retried_later_is_submitted_when_its_backoff_ends_not_at_the_gates_next_recheck(
        ctx, service, journal, client, monkeypatch) -> None:
    from glanceclient import exc

    sock, task = run_copy(ctx, service)
    get = client.images.get
    monkeypatch.setattr(client.images, "get", lambda _image_id: (_ for _ in ()).throw(
        exc.HTTPServiceUnavailable("glance is restarting")))
    sock.send(protocol.encode("done", report(task)))
    pump(service, NOW, lambda: journal.task(task["task_id"]).register_retries == 1
         and task["task_id"] not in service.tasks.registering)
    due = journal.task(task["task_id"]).not_before
    assert due > NOW and service._queries.next_wake() == due
    monkeypatch.setattr(client.images, "get", get)
    service._queries.recheck = 3600.0  # time alone never reopens the registrations due here
    pump(service, due - 0.01)
    assert state(journal) != "synced"
    pump(service, due, lambda: state(journal) == "synced")
    sock.close()
