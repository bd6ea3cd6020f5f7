"""Replies leave in the order each connection sent its requests (coordinator/replies.py, service.py)."""

from __future__ import annotations

import time

import sqlalchemy as sa
import zmq

from coordinator.replies import AfterCommit
from glancesync import protocol

from .conftest import IMAGE_ID, NOW
from .test_service import PATIENCE, dealer


def event_frame(event_id: str = "e1") -> bytes:
    return protocol.encode("event", {"event_id": event_id, "kind": "uploaded", "image_id": IMAGE_ID})


QUERY = protocol.encode("status_query", {"view": "summary"})


def handed(service, count: int) -> None:
    """Wait until the status thread has answered or passed on ``count`` frames in all."""
    desk = service.status_desk
    deadline = time.monotonic() + PATIENCE
    while desk.answered + sum(desk.at_loop.values()) < count:
        assert time.monotonic() < deadline, "the status thread did not take the frames"
        time.sleep(0.001)


def replies(sock: zmq.Socket, count: int) -> list[protocol.Message]:
    got = []
    while len(got) < count and sock.poll(int(PATIENCE * 1000)):
        got.append(protocol.decode(sock.recv()))
    return got


def test_a_status_reply_waits_behind_the_event_ack_of_its_connection(ctx, service) -> None:
    peer = dealer(ctx, service.conf.sync_server_port)
    for frame in (event_frame(), QUERY, event_frame("e2"), QUERY):
        peer.send(frame)
    handed(service, 4)
    assert service.status_desk.answered == 0  # each summary waits behind the event before it
    service.loop(NOW, poll_seconds=0)
    sent = replies(peer, 4)
    assert [m.type for m in sent] == ["event_ack", "status_reply", "event_ack", "status_reply"]
    assert [m.body["event_id"] for m in sent if m.type == "event_ack"] == ["e1", "e2"]
    assert not service.status_desk.at_loop  # the loop said it was done with them
    peer.send(QUERY)  # and the connection's next summary is the thread's again
    assert replies(peer, 1)[0].type == "status_reply" and service.status_desk.answered == 1


def test_when_the_commit_fails_the_acks_are_withheld_and_the_status_still_goes(ctx, service, journal) -> None:
    def commit(_conn) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    peer = dealer(ctx, service.conf.sync_server_port)
    peer.send(event_frame())
    peer.send(QUERY)
    handed(service, 2)
    sa.event.listen(journal.engine, "commit", commit)
    service.loop(NOW, poll_seconds=0)
    sa.event.remove(journal.engine, "commit", commit)
    assert [m.type for m in replies(peer, 1)] == ["status_reply"]
    assert not peer.poll(200)
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
