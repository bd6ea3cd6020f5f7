"""The active/passive pair's lease as the coordinator uses it (coordinator/leadership.py), on SQLite."""

from __future__ import annotations

import threading

import pytest

from coordinator import cmd
from coordinator.journal import Journal
from coordinator.leadership import Leadership
from coordinator.metrics import CoordinatorMetrics
from coordinator.registrar import Registrar
from coordinator.service import Service
from glancesync import protocol
from glancesync.exceptions import JournalError

from .conftest import IMAGE_ID, NOW, make_conf
from .test_service import arrived, dealer, pump

LEASE, INTERVAL = 15.0, 5.0


@pytest.fixture
def other(db_url: str):
    journal = Journal(db_url)
    yield journal
    journal.close()


def test_the_renew_interval_must_leave_room_for_a_failed_renewal(journal: Journal) -> None:
    with pytest.raises(ValueError, match="at most half"):
        Leadership(journal, lease=10.0, interval=6.0)


def test_the_active_renews_when_due_and_steps_down_once_another_took_over(journal: Journal, other: Journal) -> None:
    active = Leadership(journal, LEASE, INTERVAL, holder="a")
    passive = Leadership(other, LEASE, INTERVAL, holder="b")
    assert active.try_take(NOW) and not passive.try_take(NOW + 1)
    assert active.hold(NOW + 4) and journal.leader_row()[1] == NOW + LEASE  # not due yet: no write
    assert active.hold(NOW + 5) and journal.leader_row()[1] == NOW + 5 + LEASE  # renewed
    assert not passive.try_take(NOW + 19)  # still held: renewed until NOW + 20
    assert passive.try_take(NOW + 30)  # a paused past its lease
    assert not active.hold(NOW + 11)  # its renewal (or its fence) finds generation 2: lost
    assert active.lost and not active.held
    assert not active.hold(NOW + 12)  # and stays lost


def test_an_active_that_cannot_renew_stops_acting_at_expiry(journal: Journal, monkeypatch) -> None:
    active = Leadership(journal, LEASE, INTERVAL, holder="a")
    assert active.try_take(NOW)

    def unreachable(*_args) -> bool:
        raise JournalError(detail="server unreachable")

    monkeypatch.setattr(journal, "renew_leader", unreachable)
    for t in (5, 6, 10, 14.9):  # failed renewals are tried again while the lease has time left
        assert active.hold(NOW + t)
    assert not active.hold(NOW + LEASE)  # the passive one may take it from now on: stop
    assert "not renewed before it expired" in active.lost


def test_the_passive_waits_and_takes_a_released_lease_at_once(journal: Journal, other: Journal) -> None:
    active = Leadership(journal, LEASE, INTERVAL, holder="a")
    assert active.try_take(NOW)
    passive = Leadership(other, LEASE, 0.01, holder="b")
    stop = threading.Event()
    clock = iter(NOW + 1 + i * 0.01 for i in range(10**6))
    taken: list[bool] = []
    waiter = threading.Thread(target=lambda: taken.append(passive.wait(stop, lambda: next(clock))))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not passive.held  # held by a, not lapsed: still waiting
    active.release()  # a clean stop gives it back at once
    waiter.join(30)
    assert taken == [True] and passive.held and passive.generation == 2


def _active_service(conf, stores, journal, client, regional, ctx) -> tuple[Service, Leadership]:
    leadership = Leadership(journal, LEASE, INTERVAL, holder="a")
    assert leadership.try_take(NOW)
    registrar = Registrar(lambda: client, 2, "http://cascading", regional_client_factory=lambda _region: regional)
    svc = Service(conf, stores, journal, registrar, context=ctx, leadership=leadership)
    svc.initialize(NOW)
    return svc, leadership


def test_a_deposed_coordinator_acknowledges_and_writes_nothing(conf, stores, journal, other, client, regional,
                                                                ctx) -> None:
    svc, leadership = _active_service(conf, stores, journal, client, regional, ctx)
    try:
        sender = dealer(ctx, conf.sync_server_port)
        sender.send(protocol.encode("event", {"event_id": "e1", "kind": "uploaded", "image_id": IMAGE_ID}))
        pump(svc, NOW + 1, lambda: sender.poll(0))
        assert protocol.decode(sender.recv()).type == "event_ack"
        # The other coordinator takes over while this one still believes its lease runs (a pause):
        assert Leadership(other, LEASE, INTERVAL, holder="b").try_take(NOW + 100)
        sender.send(protocol.encode("event", {"event_id": "e2", "kind": "uploaded", "image_id": IMAGE_ID}))
        arrived(svc.client_sock)  # the iterations below journal it: the fence is what finds the lease lost
        for _ in range(20):
            svc.loop(NOW + 2, poll_seconds=0.01)
        assert not sender.poll(0)  # the fence rolled e2 back: no ack, the sender keeps it
        assert leadership.lost is not None and not leadership.held
        assert other.unplanned_event("e2") is None
        svc.poller.poll = lambda *_a: pytest.fail("an iteration went on after the lease was lost")
        svc.loop(NOW + 3)  # returns before it polls: not one more frame is served
        sender.close()
    finally:
        svc.shutdown()
    assert other.leader_row()[0] == "b"  # shutdown released nothing of b's


def test_a_clean_stop_releases_the_lease(conf, stores, journal, other, client, regional, ctx) -> None:
    svc, leadership = _active_service(conf, stores, journal, client, regional, ctx)
    svc.loop(NOW + 1, poll_seconds=0.01)
    svc.shutdown()
    assert other.leader_row()[:2] == (None, 0.0)
    assert Leadership(other, LEASE, INTERVAL, holder="b").try_take(NOW + 2)  # at once, not after the lease


def test_a_renew_interval_over_half_the_lease_stops_the_coordinator_with_one_line(tmp_path, db_url, store_yaml,
                                                                                   capsys) -> None:
    make_conf(tmp_path, db_url, store_yaml,
              coordinator={"pair": True, "leader_lease_time": 4, "leader_renew_interval": 3})
    with pytest.raises(SystemExit) as stopped:
        cmd.main(["--config-file", str(tmp_path / "coordinator.conf")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "leader_renew_interval (3) must be at most half" in err


def test_the_view_follows_the_lease_passive_active_lost(journal: Journal, other: Journal) -> None:
    active = Leadership(journal, LEASE, INTERVAL, holder="a")
    assert active.view.role == "passive" and active.view.holder is None
    assert active.try_take(NOW)
    assert (active.view.role, active.view.holder, active.view.generation, active.view.expires) == (
        "active", "a", 1, NOW + LEASE)
    assert active.hold(NOW + INTERVAL) and active.view.expires == NOW + INTERVAL + LEASE  # renewed
    passive = Leadership(other, LEASE, 0.01, holder="b")
    stop = threading.Event()

    def now() -> float:  # the passive's clock; stops it once it has read the row
        if passive.view.holder is not None:
            stop.set()
        return NOW + 6

    assert not passive.wait(stop, now)
    assert (passive.view.role, passive.view.holder, passive.view.generation) == ("passive", "a", 1)
    assert passive.view.expires == NOW + INTERVAL + LEASE
    assert passive.try_take(NOW + 100) and not active.hold(NOW + 11)
    assert active.view.role == "lost" and not active.view.acting


def test_the_metrics_say_which_coordinator_leads(journal: Journal, other: Journal) -> None:
    from .test_metrics import scrape, value

    single = CoordinatorMetrics()
    single.tick(NOW)  # its loop runs
    assert value(scrape(single), "glancesync_coordinator_leader") == 1.0
    assert not any(name.startswith("glancesync_coordinator_leader_") for name, _ in scrape(single))
    starting = CoordinatorMetrics()
    starting.pair = True  # a pair's coordinator before it made its Leadership: not acting
    assert value(scrape(starting), "glancesync_coordinator_leader") == 0.0
    active, passive = CoordinatorMetrics(), CoordinatorMetrics()
    active.pair = passive.pair = True
    active.leadership = Leadership(journal, LEASE, INTERVAL, holder="a")
    passive.leadership = Leadership(other, LEASE, INTERVAL, holder="b")
    assert active.leadership.try_take(NOW) and not passive.leadership.try_take(NOW + 1)
    samples = scrape(active)
    assert value(samples, "glancesync_coordinator_leader") == 1.0
    assert value(samples, "glancesync_coordinator_leader_generation") == 1.0
    assert value(samples, "glancesync_coordinator_leader_lease_expiry_timestamp_seconds") == NOW + LEASE
    assert value(scrape(passive), "glancesync_coordinator_leader") == 0.0
    active.leadership.release()
    assert value(scrape(active), "glancesync_coordinator_leader") == 0.0


def test_a_single_coordinator_leads_only_once_its_loop_runs() -> None:
    from .test_metrics import scrape, value

    single = CoordinatorMetrics()
    single.health.not_started("checking that the cascading credentials are admin in glance")
    assert value(scrape(single), "glancesync_coordinator_leader") == 0.0  # start-up check: not acting yet
    single.tick(NOW)
    assert value(scrape(single), "glancesync_coordinator_leader") == 1.0


def test_the_status_summary_names_the_role_and_the_lease(conf, stores, journal, client, regional, ctx) -> None:
    svc, _leadership = _active_service(conf, stores, journal, client, regional, ctx)
    try:
        asker = dealer(ctx, conf.sync_server_port)
        asker.send(protocol.encode("status_query", {"view": "summary"}))
        pump(svc, NOW + 1, lambda: asker.poll(0))
        coordinator = protocol.decode(asker.recv()).body["data"]["coordinator"]
        asker.close()
    finally:
        svc.shutdown()
    assert coordinator["role"] == "active"
    assert coordinator["lease"] == {"holder": "a", "generation": 1, "expires": NOW + LEASE}


def test_a_passive_facing_an_unreachable_journal_logs_its_edges_not_every_try(journal: Journal, other: Journal,
                                                                             monkeypatch, caplog) -> None:
    assert Leadership(journal, LEASE, INTERVAL, holder="a").try_take(NOW)
    passive = Leadership(other, LEASE, 0.001, holder="b")
    take, read = other.take_leader, other.leader_row
    tries = {"n": 0}
    down = range(1, 701)  # tries 1..700 fail: 700 s at one try per second of the passive's clock

    def failing(real):
        def call(*args):
            if tries["n"] in down:
                raise JournalError(detail="server unreachable")
            return real(*args)
        return call

    monkeypatch.setattr(other, "take_leader", failing(take))
    monkeypatch.setattr(other, "leader_row", failing(read))

    def clock() -> float:
        tries["n"] += 1
        return NOW + tries["n"]

    caplog.set_level("INFO", logger="coordinator.leadership")
    assert passive.wait(threading.Event(), clock)  # a's lease lapsed meanwhile: taken once it answers
    assert tries["n"] == 701 and passive.view.holder == "b"
    lines = [r.getMessage() for r in caplog.records if "journal" in r.getMessage()]
    assert len(lines) == 4, lines  # not one per try
    assert "cannot reach the journal" in lines[0] and "server unreachable" in lines[0]
    assert "still unreachable after 300 s" in lines[1] and "still unreachable after 600 s" in lines[2]
    assert "answers again after 700 s" in lines[3]
