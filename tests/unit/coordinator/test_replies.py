"""Replies leave in the order each connection sent its requests (coordinator/replies.py, service.py)."""

from __future__ import annotations

import sqlalchemy as sa
import zmq

from coordinator.replies import AfterCommit
from glancesync import protocol

from .conftest import IMAGE_ID, NOW

PEER = b"\x00peer"
OTHER = b"\x00other"
WAKER = b"waker"  # the socket that makes the client socket ready
# (message type, whether it was sent outside the iteration's transaction) of each send.
outside: list[tuple[str, bool]] = []


def event_frame(event_id: str = "e1") -> bytes:
    return protocol.encode("event", {"event_id": event_id, "kind": "uploaded", "image_id": IMAGE_ID})


def one_iteration(service, monkeypatch, frames: list[bytes | tuple[bytes, bytes]]) -> list[tuple[bytes, protocol.Message]]:
    """Run one loop iteration that reads ``frames`` (from PEER, or (routing id, frame)), all in that
    iteration; what the service sends them, in order, as (routing id, message)."""
    sent: list[tuple[bytes, protocol.Message]] = []
    outside.clear()
    real_frames = service._waiting_frames

    def waiting_frames():
        yield from (([*item] if isinstance(item, tuple) else [PEER, item], None) for item in frames)
        yield from real_frames()

    def send(sock, envelope, payload):
        msg = protocol.decode(payload)
        sent.append((envelope[0], msg))
        outside.append((msg.type, service.journal._batch_conn is None))
        return True

    monkeypatch.setattr(service, "_waiting_frames", waiting_frames)
    monkeypatch.setattr(service, "_send", send)
    waker = service.context.socket(zmq.DEALER)
    waker.setsockopt(zmq.LINGER, 0)
    waker.setsockopt(zmq.ROUTING_ID, WAKER)
    waker.connect(f"tcp://127.0.0.1:{service.conf.sync_server_port}")
    waker.send(protocol.encode("status_query", {"view": "summary"}))  # makes the client socket ready
    while not service.client_sock.poll(0):
        pass
    service.loop(NOW, poll_seconds=0)
    waker.close()
    return [(rid, msg) for rid, msg in sent if rid != WAKER]


def test_a_status_reply_waits_behind_the_event_ack_of_its_connection(service, monkeypatch) -> None:
    query = protocol.encode("status_query", {"view": "summary"})
    sent = one_iteration(service, monkeypatch, [event_frame(), query, event_frame("e2"), query])
    assert [m.type for _, m in sent] == ["event_ack", "status_reply", "event_ack", "status_reply"]
    assert [m.body["event_id"] for _, m in sent if m.type == "event_ack"] == ["e1", "e2"]


def test_when_the_commit_fails_the_acks_are_withheld_and_the_status_still_goes(service, journal,
                                                                                  monkeypatch) -> None:
    def commit(_conn) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    sa.event.listen(journal.engine, "commit", commit)
    sent = one_iteration(service, monkeypatch, [event_frame(), protocol.encode("status_query", {"view": "summary"})])
    sa.event.remove(journal.engine, "commit", commit)
    assert [m.type for _, m in sent] == ["status_reply"]
    assert journal.image_view(IMAGE_ID)[0] is False  # the event was not journaled, and not acked


def test_after_commit_keeps_the_order_and_knows_which_connections_wait() -> None:
    replies = AfterCommit()
    client, agent_sock = object(), object()
    assert not replies.waiting(client, b"c1")
    replies.add(client, [b"c1"], b"ack")
    replies.add(agent_sock, [b"a1"], b"result_ack")
    replies.add(client, [b"c1"], b"summary", acks=False)
    assert replies.waiting(client, b"c1") and not replies.waiting(agent_sock, b"c1")
    assert replies.withhold() == 2 and [r.payload for r in replies.replies] == [b"summary"]
    assert [r.payload for r in replies.take()] == [b"summary"]
    assert not replies.waiting(client, b"c1") and len(replies) == 0


def test_a_summary_is_answered_before_the_transaction_opens_and_other_frames_wait_for_it(
        service, monkeypatch) -> None:
    query = protocol.encode("status_query", {"view": "summary"})
    sent = one_iteration(service, monkeypatch, [event_frame(), (OTHER, query), query])
    # OTHER's summary first, outside the transaction; PEER's waits behind its event_ack.
    assert [(rid, m.type) for rid, m in sent] == [(OTHER, "status_reply"), (PEER, "event_ack"),
                                                 (PEER, "status_reply")]
    assert outside[0] == ("status_reply", True)


def test_a_wake_up_with_only_summaries_skips_the_rest_of_a_recent_iteration(service, journal, monkeypatch) -> None:
    from coordinator import service as service_module

    from .test_loop_cost import Statements

    monkeypatch.setattr(service_module, "SUMMARY_ONLY_SECONDS", 3600.0)  # however slow the machine
    query = service.context.socket(zmq.DEALER)
    query.setsockopt(zmq.LINGER, 0)
    query.connect(f"tcp://127.0.0.1:{service.conf.sync_server_port}")
    service.loop(NOW, poll_seconds=0)  # a whole iteration
    iterations, count = service.iterations, Statements(journal)
    query.send(protocol.encode("status_query", {"view": "summary"}))
    while not service.client_sock.poll(10):
        pass
    service.loop(NOW, poll_seconds=0.01)
    assert query.poll(60_000) and protocol.decode(query.recv()).type == "status_reply"
    assert service.iterations == iterations and count.seen == []  # no transaction, no step
    query.send(event_frame())  # anything else runs the whole iteration
    while not query.poll(0):
        service.loop(NOW, poll_seconds=0.01)
    assert protocol.decode(query.recv()).type == "event_ack" and service.iterations > iterations
    query.close()
