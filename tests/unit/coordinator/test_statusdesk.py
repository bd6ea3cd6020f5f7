"""The status thread (coordinator/statusdesk.py): summaries answered without the loop, from what committed."""

from __future__ import annotations

import logging
import threading
import time

from glancesync import protocol

from .conftest import NOW
from .test_replies import QUERY, event_frame, handed, replies
from .test_service import PATIENCE, dealer, pump


def held(data: dict) -> int:
    return data["deletions_held"]["images"]


def test_a_summary_is_answered_while_the_loop_is_blocked_and_shows_only_what_committed(ctx, service,
                                                                                      journal) -> None:
    pump(service, NOW, rounds=1)
    inside, release = threading.Event(), threading.Event()
    housekeeping = service._housekeeping

    def blocked(now: float) -> None:
        housekeeping(now)
        # Inside the iteration's transaction: a write the summary must not show before the commit.
        journal.record_reconcile([], ["img-x"], NOW - 5, "reconciler")
        inside.set()
        assert release.wait(PATIENCE)

    service._housekeeping = blocked
    loop = threading.Thread(target=service.loop, args=(NOW, 0))
    loop.start()
    try:
        assert inside.wait(PATIENCE)
        query = dealer(ctx, service.conf.sync_server_port)
        query.send(QUERY)
        answer = replies(query, 1)  # the loop is stuck in its step meanwhile
        assert loop.is_alive() and [m.type for m in answer] == ["status_reply"]
        assert held(answer[0].body["data"]) == 0  # not committed yet
    finally:
        release.set()
        loop.join(PATIENCE)
    service._housekeeping = housekeeping
    query.send(QUERY)
    assert held(replies(query, 1)[0].body["data"]) == 1  # committed, then published


def test_other_connections_are_answered_while_one_waits_behind_its_event(ctx, service) -> None:
    busy, other = dealer(ctx, service.conf.sync_server_port), dealer(ctx, service.conf.sync_server_port)
    busy.send(event_frame())
    busy.send(QUERY)
    handed(service, 2)
    other.send(QUERY)
    assert [m.type for m in replies(other, 1)] == ["status_reply"]  # no iteration ran
    assert not busy.poll(100)  # its summary waits behind the event_ack, at the loop
    service.loop(NOW, poll_seconds=0)
    assert [m.type for m in replies(busy, 2)] == ["event_ack", "status_reply"]


def test_malformed_frames_get_an_error_and_one_log_line_and_the_thread_goes_on(ctx, service, caplog,
                                                                               monkeypatch) -> None:
    caplog.set_level(logging.INFO)
    peer = dealer(ctx, service.conf.sync_server_port)
    for frame in (b"\xc1 not msgpack", protocol.encode("status_query", {"view": "summary"})[:-3],
                  b"\x00" * 100):
        peer.send(frame)
    handed(service, 3)
    service.loop(NOW, poll_seconds=0)
    assert [m.type for m in replies(peer, 3)] == ["error"] * 3
    assert caplog.text.count("refused frame") == 3
    # A failure inside the thread itself: one log line, and the next frame is served.
    monkeypatch.setattr(service.status_desk, "admits", lambda key: 1 / 0)
    peer.send(QUERY)
    deadline = time.monotonic() + PATIENCE
    while "status thread: frame from" not in caplog.text:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert not peer.poll(0)  # that one is lost (the tool asks again), the thread is not
    monkeypatch.undo()
    peer.send(QUERY)
    assert [m.type for m in replies(peer, 1)] == ["status_reply"] and service.status_desk.alive


def test_a_failure_outside_any_frame_is_one_log_line_and_the_thread_goes_on(ctx, service, caplog,
                                                                            monkeypatch) -> None:
    desk = service.status_desk
    failed = []

    def from_loop() -> None:
        failed.append(1)
        monkeypatch.undo()  # fails once
        raise RuntimeError("broken")

    monkeypatch.setattr(desk, "_from_loop", from_loop)
    peer = dealer(ctx, service.conf.sync_server_port)
    peer.send(event_frame())
    handed(service, 1)
    service.loop(NOW, poll_seconds=0)  # its reply reaches the pipe: the failing step
    deadline = time.monotonic() + PATIENCE
    while "status thread: failed; going on" not in caplog.text:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert [m.type for m in replies(peer, 1)] == ["event_ack"] and desk.alive and failed == [1]


def test_the_thread_stops_with_the_service_and_closes_the_socket(conf, stores, journal, client, regional, ctx) -> None:
    from .conftest import start_service

    svc = start_service(conf, stores, journal, client, regional, ctx)
    desk = svc.status_desk
    assert desk.alive
    svc.shutdown()
    assert not desk.alive and desk.router.closed and desk.pipe.closed and svc.status_desk is None
