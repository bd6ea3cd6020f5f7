"""The client socket's events: those of one loop iteration are journaled together, acked after the commit."""

from __future__ import annotations

import contextlib

import sqlalchemy as sa

from coordinator.journal import Journal
from coordinator.schema import events
from coordinator.service import Service
from glancesync import protocol
from glancesync.exceptions import JournalError

from .conftest import IMAGE_ID
from .test_loop_cost import NOW, Statements


class FakePipe:
    """The loop's end of the status thread's pipe: frames given up front, replies kept."""

    def __init__(self, frames: list[list[bytes]]) -> None:
        self.frames = list(frames)
        self.sent: list[list[bytes]] = []
        self.finished: list[bytes] = []

    def recv(self):
        return (self.frames.pop(0), None) if self.frames else None

    def send_multipart(self, parts: list[bytes], flags: int = 0) -> None:
        self.sent.append(parts)

    def done(self, routing_ids: list[bytes]) -> None:
        self.finished += routing_ids

    def replies(self) -> list[tuple[bytes, protocol.Message]]:
        return [(parts[0], protocol.decode(parts[-1])) for parts in self.sent]


def _event(peer: bytes, event_id: str) -> list[bytes]:
    return [peer, protocol.encode("event", {"event_id": event_id, "kind": "uploaded", "image_id": IMAGE_ID})]


@contextlib.contextmanager
def _fed(service: Service, pipe: FakePipe):
    real, service.client_sock = service.client_sock, pipe
    try:
        yield pipe
    finally:
        service.client_sock = real


def test_events_of_one_iteration_are_journaled_together_and_duplicates_acked(service: Service,
                                                                             journal: Journal) -> None:
    journal.record_event("old", "uploaded", IMAGE_ID, {"event_id": "old"}, NOW)
    frames = [_event(b"p1", "e1"), _event(b"p2", "e1"), _event(b"p1", "e2"), _event(b"p2", "old")]
    count = Statements(journal)
    with _fed(service, FakePipe(frames)) as pipe:
        service.loop(NOW, poll_seconds=0)
    inserts = [s for s in count.seen if s.lstrip().upper().startswith("INSERT INTO EVENTS")]
    assert len(inserts) == 1  # one executemany for the iteration's fresh events
    assert _journaled(journal) == ["e1", "e2", "old"]
    # Every event is acked, duplicates too, each to its sender and in the order sent.
    assert [(peer, m.type, m.body["event_id"]) for peer, m in pipe.replies()] == [
        (b"p1", "event_ack", "e1"), (b"p2", "event_ack", "e1"), (b"p1", "event_ack", "e2"),
        (b"p2", "event_ack", "old")]
    assert service.metrics.events["new"] == 2 and service.metrics.events["duplicate"] == 2


def _journaled(journal: Journal) -> list[str]:
    with journal.reading() as conn:
        return sorted(conn.scalars(sa.select(events.c.event_id)))


def test_events_whose_commit_fails_are_not_acked(service: Service, journal: Journal, monkeypatch) -> None:
    real_batch = journal.batch

    @contextlib.contextmanager
    def failing_commit():
        with real_batch():
            yield
            raise JournalError(detail="OperationalError: disk I/O error")  # inside: the batch rolls back

    monkeypatch.setattr(journal, "batch", failing_commit)
    with _fed(service, FakePipe([_event(b"p1", "e1"), _event(b"p2", "e2")])) as pipe:
        service.loop(NOW, poll_seconds=0)
    assert pipe.replies() == []  # the senders keep the events and send them again
    assert _journaled(journal) == []
    monkeypatch.setattr(journal, "batch", real_batch)
    with _fed(service, FakePipe([_event(b"p1", "e1"), _event(b"p2", "e2")])) as pipe:
        service.loop(NOW, poll_seconds=0)
    assert [m.type for _peer, m in pipe.replies()] == ["event_ack", "event_ack"]
    assert _journaled(journal) == ["e1", "e2"]


def test_a_status_query_after_events_is_answered_after_their_acks(service: Service, journal: Journal) -> None:
    query = [b"p1", protocol.encode("status_query", {"view": "image", "image_id": IMAGE_ID})]
    with _fed(service, FakePipe([_event(b"p1", "e1"), query])) as pipe:
        service.loop(NOW, poll_seconds=0)
    assert [m.type for _peer, m in pipe.replies()] == ["event_ack", "status_reply"]


def test_a_malformed_frame_after_an_event_gets_its_error_after_the_events_ack(service: Service) -> None:
    with _fed(service, FakePipe([_event(b"p1", "e1"), [b"p1", b"\xc1 not msgpack"]])) as pipe:
        service.loop(NOW, poll_seconds=0)
    assert [m.type for _peer, m in pipe.replies()] == ["event_ack", "error"]
