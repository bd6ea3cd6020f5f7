"""The sender keeps a window of events in flight; each leaves the outbox only once acked, order kept on replay."""

from __future__ import annotations

import logging

from glance_proxy import sender as sender_mod
from glancesync import protocol

from .test_sender import Coordinator, event, wait_until


def ids(*numbers: int) -> list[str]:
    return [event(n)["event_id"] for n in numbers]


def test_a_backlog_goes_out_several_events_at_once_in_order(conf, make_sender):
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender(ack_timeout=30.0)
        for n in range(1, 6):
            s.submit(event(n))
        s.start()
        received = [coord.recv() for _ in range(5)]  # all five before any ack
        assert [msg.body["event_id"] for _ident, msg in received] == ids(1, 2, 3, 4, 5)
        assert len(s.spool.pending()) == 5  # nothing leaves the outbox before its ack
        for ident, msg in reversed(received):
            coord.ack(ident, msg)
        wait_until(lambda: not s.spool.pending())
    finally:
        coord.close()


def test_after_silence_only_the_unacked_events_are_sent_again_oldest_first(conf, make_sender):
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender()
        for n in range(1, 4):
            s.submit(event(n))
        s.start()
        received = [coord.recv() for _ in range(3)]
        coord.ack(*received[1])  # event 2 is journaled; 1 and 3 get no answer
        wait_until(lambda: len(s.spool.pending()) == 2)
        again = [coord.recv()[1].body["event_id"] for _ in range(2)]
        assert again == ids(1, 3)
    finally:
        coord.close()


def test_a_refusal_that_names_no_event_is_sorted_out_one_event_at_a_time(conf, make_sender, caplog):
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender(ack_timeout=30.0)  # no resend for silence while the test looks
        s.submit(event(1))
        s.submit(event(2))
        s.start()
        (ident, _first), _second = coord.recv(), coord.recv()
        coord.sock.send_multipart([ident, protocol.encode("error", {"code": "bad_field", "reason": "no",
                                                                      "ref": None})])
        # Which event was refused is unknown: nothing is dropped, and each goes alone now.
        ident, msg = coord.recv()
        while msg.body["event_id"] != ids(1)[0]:
            ident, msg = coord.recv()
        assert not coord.sock.poll(300)  # event 2 waits for the answer about event 1
        with caplog.at_level(logging.ERROR, logger=sender_mod.__name__):
            coord.error(ident, msg, "bad_field")  # event 1 is refused for good: dropped
            ident, msg = coord.recv()
        assert msg.body["event_id"] == ids(2)[0]
        assert "refused event " + ids(1)[0] in caplog.text
        coord.ack(ident, msg)
        wait_until(lambda: not s.spool.pending())
    finally:
        coord.close()


def test_acked_files_go_once_no_event_is_in_flight(conf, make_sender):
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender(ack_timeout=30.0)
        for n in range(1, 4):
            s.submit(event(n))
        s.start()
        received = [coord.recv() for _ in range(3)]
        coord.ack(*received[0])
        wait_until(lambda: len(s.spool.pending()) == 2)  # off the index at once...
        files = sorted(p.name for p in s.spool.dir.iterdir() if p.name.endswith(".evt"))
        assert len(files) == 3  # ...its file left while the others are in flight
        for ident, msg in received[1:]:
            coord.ack(ident, msg)
        wait_until(lambda: not any(p.name.endswith(".evt") for p in s.spool.dir.iterdir()))
        assert s.usage.used == 0
    finally:
        coord.close()
