"""The coordinator's loop facing peers that break the protocol: refused at the door, serving goes on."""

from __future__ import annotations

import logging
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glancesync import protocol
from glancesync.states import SyncState

from .conftest import IMAGE_ID, NOW
from .test_service import PATIENCE, agent, dealer, pump, receive, report, run_copy

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def raw(msg_type: str, body: dict[str, Any], msg_id: str = "m-1") -> bytes:
    """A frame as a hostile peer makes it: no checks on our side."""
    return msgpack.packb({"v": 1, "type": msg_type, "id": msg_id, "ts": 1.0, "body": body}, use_bin_type=True)


def no_tracebacks(caplog) -> bool:
    return not [r for r in caplog.records if r.exc_info and r.name.startswith("coordinator")]


def test_an_event_for_a_traversal_id_is_refused_and_nothing_is_journaled(ctx, service, journal, client,
                                                                        caplog) -> None:
    sock = dealer(ctx, service.conf.sync_server_port)
    for bad in ("../../../../etc/passwd", f"../images/{IMAGE_ID}", f"{IMAGE_ID}/../x"):
        sock.send(raw("event", {"event_id": "e-evil", "kind": "uploaded", "image_id": bad}))
        reply = receive(sock, service, NOW)
        assert reply.type == "error" and reply.body["code"] == "bad_field"
        assert "event.image_id" in reply.body["reason"]
    pump(service, NOW)
    assert journal.unplanned_events() == [] and journal.known_image_ids() == set()
    assert client.images.gets == []  # glance was never asked for /etc/passwd
    assert no_tracebacks(caplog)


def test_a_hello_with_a_huge_capacity_is_refused(ctx, service) -> None:
    sock = dealer(ctx, service.conf.coordinator.agent_port)
    sock.send(raw("hello", {"region": "RegionOne", "agent_id": "a1", "capacity": 10**9, "version": "t"}))
    reply = receive(sock, service, NOW)
    assert reply.type == "error" and "hello.capacity" in reply.body["reason"]
    assert service.agents.sessions == {}


def test_a_done_with_a_size_beyond_64_bits_is_refused_and_the_task_is_not_stuck(ctx, service, journal,
                                                                               caplog) -> None:
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("ack", {"task_id": task["task_id"], "attempt": 1}))
    pump(service, NOW, lambda: journal.task(task["task_id"]).state == SyncState.TRANSFERRING)
    sock.send(raw("done", report(task, size=2**64 - 1)))
    reply = receive(sock, service, NOW, "error")
    assert reply.body["code"] == "bad_field" and "done.size" in reply.body["reason"]
    # The agent has finished with the task: the attempt is over, the task goes back to its queue.
    row = journal.task(task["task_id"])
    assert row.state == SyncState.PENDING and "refused" in row.last_error
    assert all(not s.tasks for s in service.agents.sessions.values())
    assert no_tracebacks(caplog)


def test_a_refused_report_of_another_agents_task_changes_nothing(ctx, service, journal) -> None:
    sock, task = run_copy(ctx, service)
    other = agent(ctx, service, region="RegionTwo", agent_id="a2")
    other.send(raw("done", report(task, size=-5)))
    assert receive(other, service, NOW, "error").body["code"] == "bad_field"
    assert journal.task(task["task_id"]).state == SyncState.ASSIGNED


# -- fuzzing the loop ------------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats() | \
    st.text(max_size=40) | st.binary(max_size=20)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
_bodies = st.dictionaries(st.sampled_from(["event_id", "kind", "image_id", "view", "image", "task_id", "attempt",
                                           "size", "region", "agent_id", "capacity", "credits", "reason"]),
                          _values, max_size=6)
_envelopes = st.fixed_dictionaries({
    "v": st.sampled_from([1, 1, 1, 2, "1", None]),
    "type": st.sampled_from(sorted(protocol.SCHEMAS)) | st.text(max_size=12),
    "id": st.text(max_size=70),
    "ts": st.floats() | st.integers(min_value=-(2**63), max_value=2**63),
    "body": _bodies | _values,
})
FRAMES = st.binary(max_size=300) | _envelopes.map(lambda env: msgpack.packb(env, use_bin_type=True))


def test_garbage_frames_are_answered_and_the_loop_keeps_serving(ctx, service, caplog) -> None:
    caplog.set_level(logging.WARNING)
    clients = dealer(ctx, service.conf.sync_server_port)
    agents = dealer(ctx, service.conf.coordinator.agent_port)

    @FUZZ
    @given(frame=FRAMES)
    def feed(frame: bytes) -> None:
        clients.send(frame)
        agents.send(frame)
        # Every frame on the client socket gets exactly one answer, whatever it held.
        assert receive(clients, service, NOW).type in ("error", "event_ack", "status_reply")

    feed()
    assert no_tracebacks(caplog)
    query = dealer(ctx, service.conf.sync_server_port)
    query.send(protocol.encode("status_query", {"view": "summary"}))
    assert receive(query, service, NOW).type == "status_reply"
    fresh = agent(ctx, service, agent_id="after-the-storm")  # welcomed: the agent socket serves too
    fresh.close()


def test_an_event_journaled_with_a_bad_id_by_an_older_version_never_reaches_glance(service, journal,
                                                                                  client) -> None:
    journal.record_event("old-1", "uploaded", "../../../../etc/passwd", {"event_id": "old-1"}, NOW)
    pump(service, NOW, lambda: not journal.unplanned_events())
    assert client.images.gets == []
    assert journal.image_view("../../../../etc/passwd")[1] == {}


def test_a_protocol_error_waits_behind_the_result_ack_of_its_connection(ctx, service, journal,
                                                                         monkeypatch) -> None:
    sock, task = run_copy(ctx, service)
    sock.send(protocol.encode("failed", {"task_id": task["task_id"], "attempt": 1, "reason": "sshd down",
                                         "retryable": True}))
    sock.send(b"\x00not msgpack")
    real_drain = service._drain

    def both_frames(sock_, handler, now):
        # Both in one iteration, however late the second arrives: the order is decided within it.
        if sock_ is not service.agent_sock:
            return real_drain(sock_, handler, now)
        for _ in range(2):
            assert sock_.poll(int(PATIENCE * 1000)), "the frames did not reach the coordinator"
            handler(sock_.recv_multipart(), now, None)

    monkeypatch.setattr(service, "_drain", both_frames)
    service.loop(NOW, poll_seconds=PATIENCE)
    replies = []
    while len(replies) < 2 and sock.poll(int(PATIENCE * 1000)):
        msg = protocol.decode(sock.recv())
        if msg.type != "heartbeat":
            replies.append(msg)
    assert [m.type for m in replies] == ["result_ack", "error"]
    assert journal.task(task["task_id"]).state == SyncState.PENDING
