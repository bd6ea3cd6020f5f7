"""AckWatch with a fake clock, and the sender's wiring of it (no ack for a while: one WARNING)."""

from __future__ import annotations

import logging
import threading

from glance_proxy import sender as sender_mod
from glance_proxy.outage import REMIND_EVERY, AckWatch
from glancesync.liveness import Backoff
from tests.unit.fakeclock import FakeClock

from .test_sender import Coordinator, event


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def infos(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


def make_watch(backlog: int = 3) -> AckWatch:
    return AckWatch(60.0, "127.0.0.1:9595", lambda: backlog)


def test_short_silence_logs_nothing(caplog):
    watch = make_watch()
    with caplog.at_level(logging.DEBUG, logger="glance_proxy.sender"):
        watch.unacked(100.0, 102.0)
        watch.check(159.0)
        watch.acked(159.5)
    assert not caplog.records


def test_one_warning_after_the_threshold_then_a_reminder_every_five_minutes(caplog):
    watch = make_watch()
    with caplog.at_level(logging.INFO, logger="glance_proxy.sender"):
        watch.unacked(100.0, 102.0)
        for now in range(102, 160, 5):
            watch.check(float(now))
        assert not warnings(caplog)
        watch.check(160.0)
        assert len(warnings(caplog)) == 1
        assert "no ack from the coordinator at 127.0.0.1:9595 for 60 s" in warnings(caplog)[0]
        assert "3 event(s) wait" in warnings(caplog)[0]
        # Further failed sends and rounds within five minutes add nothing.
        for now in range(161, 160 + int(REMIND_EVERY)):
            watch.unacked(float(now) - 2, float(now))
        assert len(warnings(caplog)) == 1
        watch.check(160.0 + REMIND_EVERY)
        assert len(warnings(caplog)) == 2 and "still no ack" in warnings(caplog)[1]
        assert "after 360 s" in warnings(caplog)[1]
        watch.check(160.0 + 2 * REMIND_EVERY - 1)
        assert len(warnings(caplog)) == 2
        watch.check(160.0 + 2 * REMIND_EVERY)
        assert len(warnings(caplog)) == 3
        assert not infos(caplog)
        watch.acked(800.0)
    assert len(infos(caplog)) == 1 and "acks events again after 700 s" in infos(caplog)[0]


def test_a_new_silence_after_the_acks_resumed_warns_again(caplog):
    watch = make_watch()
    with caplog.at_level(logging.INFO, logger="glance_proxy.sender"):
        watch.unacked(0.0, 1.0)
        watch.check(61.0)
        watch.acked(70.0)
        watch.unacked(80.0, 81.0)  # counted from this silence's first send, not the old one
        watch.check(139.0)
        assert len(warnings(caplog)) == 1
        watch.check(140.0)
    assert len(warnings(caplog)) == 2 and len(infos(caplog)) == 1


def test_sender_warns_once_when_the_coordinator_stays_silent_and_says_when_it_answers(conf, make_sender, caplog):
    conf.set_override("outage_warning_after", 60, group="proxy")
    clock = FakeClock(1000.0)
    s = make_sender(clock=clock, ack_timeout=0.0, backoff=Backoff(initial=1.0, maximum=1.0))
    with caplog.at_level(logging.INFO, logger=sender_mod.__name__):
        s.submit(event(1))
        s.submit(event(2))
        for _ in range(59):  # one unanswered send per fake second: quiet
            s.step()
            clock.now += 1.0
        assert not warnings(caplog)
        clock.now += 1.0
        s.step()
        assert len(warnings(caplog)) == 1 and "2 event(s) wait" in warnings(caplog)[0]
        for _ in range(int(REMIND_EVERY) - 1):
            clock.now += 1.0
            s.step()
        assert len(warnings(caplog)) == 1
        clock.now += 1.0
        s.step()
        assert len(warnings(caplog)) == 2 and "still no ack" in warnings(caplog)[1]
        coord = Coordinator(conf.sync_server_port)
        try:
            clock.now += 1.0
            s.ack_timeout = 3600.0  # fake seconds: the clock stands still while the real ack comes
            stepper = threading.Thread(target=s.step)
            stepper.start()
            first, second = coord.recv(), coord.recv()  # both events are in flight
            coord.ack(*first)  # the silence is over at the first ack, one event still unacked
            coord.ack(*second)
            stepper.join(10)
            assert not stepper.is_alive()
        finally:
            coord.close()
    assert len(infos(caplog)) == 1 and "acks events again" in infos(caplog)[0]
    assert "1 event(s) left to send" in infos(caplog)[0]
