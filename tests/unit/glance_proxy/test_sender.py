"""EventSender and Spool against a real zmq ROUTER on 127.0.0.1 played by the test."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import zmq

from glance_proxy import sender as sender_mod
from glance_proxy.sender import EventSender
from glance_proxy.spool import SharedUsage, Spool
from glancesync import protocol

ROOT_DIR = Path(__file__).resolve().parents[3]


def event(n: int) -> dict:
    return {
        "event_id": f"{n:032x}",
        "kind": "updated",
        "image_id": f"00000000-0000-4000-8000-{n:012x}",
        "image": None,
        "changes": ["name"],
        "context": {"user_id": "u"},
        "occurred_at": float(n),
    }


class Coordinator:
    """A ROUTER the test drives: receives events, answers as told."""

    def __init__(self, port: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://127.0.0.1:{port}")

    def recv(self, timeout: float = 30.0) -> tuple[bytes, protocol.Message]:
        assert self.sock.poll(int(timeout * 1000)), "no event arrived"
        ident, frame = self.sock.recv_multipart()
        return ident, protocol.decode(frame)

    def ack(self, ident: bytes, msg: protocol.Message) -> None:
        self.sock.send_multipart([ident, protocol.encode("event_ack", {"event_id": msg.body["event_id"]})])

    def ack_until(self, done, timeout: float = 60.0) -> list[str]:
        """Ack every event that comes, resends too, until ``done(ids received so far)``; those ids, in order.

        An ack that reaches a sender after its ``ack_timeout`` dies with its socket and the
        event is sent again: a test that acks once and then waits hangs whenever it was
        descheduled for that long between the receive and the ack.
        """
        received: list[str] = []
        deadline = time.monotonic() + timeout
        while not done(received):
            assert time.monotonic() < deadline, f"condition not met; received {received}"
            if self.sock.poll(10):
                ident, msg = self.recv()
                received.append(msg.body["event_id"])
                self.ack(ident, msg)
        return received

    def error(self, ident: bytes, msg: protocol.Message, code: str) -> None:
        body = {"code": code, "reason": "test says no", "ref": msg.id}
        self.sock.send_multipart([ident, protocol.encode("error", body)])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_acked_event_removes_its_spool_file(conf, make_sender):
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender().start()
        assert s.submit(event(1))
        ident, msg = coord.recv()
        assert msg.type == "event" and msg.body["event_id"] == event(1)["event_id"]
        assert msg.body["changes"] == ["name"]
        # Spooled durably before it was sent; still there until the ack.
        assert len(s.spool.pending()) == 1
        coord.ack(ident, msg)
        # The file leaves the index first, then its bytes leave the shared count.
        wait_until(lambda: not s.spool.pending() and s.spool.used_bytes == 0)
    finally:
        coord.close()


def test_without_coordinator_events_wait_on_disk_then_replay_in_order(conf, make_sender):
    s = make_sender().start()
    for n in range(1, 6):
        s.submit(event(n))
    wait_until(lambda: len(s.spool.pending()) == 5)
    files = s.spool.pending()
    stored = [msgpack.unpackb(f.read_bytes(), raw=False)["event_id"] for f in files]
    assert stored == [event(n)["event_id"] for n in range(1, 6)]
    time.sleep(0.8)  # several unanswered sends and reconnects
    assert len(s.spool.pending()) == 5
    coord = Coordinator(conf.sync_server_port)
    try:
        seen = []
        while len(seen) < 5:
            ident, msg = coord.recv()
            if msg.body["event_id"] in seen:
                continue  # a resend from before the ack: the coordinator dedups by id
            seen.append(msg.body["event_id"])
            coord.ack(ident, msg)
        assert seen == stored
        wait_until(lambda: not s.spool.pending())
    finally:
        coord.close()


def test_unanswered_event_is_resent_on_a_fresh_socket(conf, make_sender):
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender().start()
        s.submit(event(1))
        first_ident, first = coord.recv()
        ident, again = coord.recv()  # no ack: the sender retries
        assert again.body["event_id"] == first.body["event_id"]
        assert ident != first_ident  # a new DEALER identity, i.e. a fresh socket
        coord.ack(ident, again)
        wait_until(lambda: not s.spool.pending())
    finally:
        coord.close()


def test_permanent_error_drops_event_and_transient_error_keeps_it(conf, make_sender, caplog):
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender().start()
        s.submit(event(1))
        ident, msg = coord.recv()
        coord.error(ident, msg, "journal")  # transient: kept, resent
        ident, msg = coord.recv()
        assert msg.body["event_id"] == event(1)["event_id"]
        coord.error(ident, msg, "version")  # a coordinator of another protocol version: kept until upgraded
        ident, msg = coord.recv()
        assert msg.body["event_id"] == event(1)["event_id"]
        with caplog.at_level(logging.ERROR, logger=sender_mod.__name__):
            coord.error(ident, msg, "bad_field")
            wait_until(lambda: not s.spool.pending())
        assert "refused event" in caplog.text
    finally:
        coord.close()


def test_full_spool_logs_error_and_drops(conf, make_sender, caplog):
    conf.set_override("spool_max_bytes", 1024, group="proxy")
    s = make_sender().start()
    big = dict(event(1), image={"blob": "x" * 700})
    with caplog.at_level(logging.ERROR, logger=sender_mod.__name__):
        s.submit(big)
        s.submit(dict(big, event_id="f" * 32))
        wait_until(lambda: "is full" in caplog.text)
    assert len(s.spool.pending()) == 1 and s.dropped_full == 1
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) == 1
    assert conf.proxy.spool_dir in caplog.text and "1024" in caplog.text


def test_two_senders_sharing_a_spool_dir_share_one_cap(conf, make_sender, caplog):
    """spool_max_bytes bounds the whole spool_dir, not each worker's part of it."""
    conf.set_override("spool_max_bytes", 1024, group="proxy")
    one, two = make_sender().start(), make_sender().start()
    assert one.spool.dir != two.spool.dir
    big = dict(event(1), image={"blob": "x" * 700})
    one.submit(big)
    wait_until(lambda: len(one.spool) == 1)
    with caplog.at_level(logging.ERROR, logger=sender_mod.__name__):
        two.submit(dict(big, event_id="e" * 32))
        wait_until(lambda: two.dropped_full == 1)
    assert len(two.spool) == 0 and "is full" in caplog.text
    assert one.usage.used == two.usage.used == one.spool.used_bytes
    coord = Coordinator(conf.sync_server_port)
    try:  # once the first worker's event is acked, its room is the second worker's
        received = coord.ack_until(lambda _ids: one.usage.used == 0)
        assert set(received) == {big["event_id"]}  # maybe more than once: resent while no coordinator was bound
        two.submit(dict(big, event_id="d" * 32))
        received = coord.ack_until(lambda ids: "d" * 32 in ids and two.usage.used == 0)
        assert set(received) <= {big["event_id"], "d" * 32}
    finally:
        coord.close()
    assert two.dropped_full == 1


def test_sending_a_backlog_never_lists_the_spool_directory(conf, make_sender, monkeypatch):
    s = make_sender()
    for n in range(1, 41):
        s.spool.put(msgpack.packb(event(n)))
    listed = []
    real_scandir, real_listdir, real_iterdir = os.scandir, os.listdir, Path.iterdir
    monkeypatch.setattr(os, "scandir", lambda p=".": (listed.append(str(p)), real_scandir(p))[1])
    monkeypatch.setattr(os, "listdir", lambda p=".": (listed.append(str(p)), real_listdir(p))[1])
    monkeypatch.setattr(Path, "iterdir", lambda self: (listed.append(str(self)), real_iterdir(self))[1])
    coord = Coordinator(conf.sync_server_port)
    try:
        s.start()
        got = []
        while len(got) < 40:
            ident, msg = coord.recv()
            if msg.body["event_id"] not in got:
                got.append(msg.body["event_id"])
            coord.ack(ident, msg)
        wait_until(lambda: len(s.spool) == 0)
    finally:
        coord.close()
    assert got == [event(n)["event_id"] for n in range(1, 41)]
    # Once at start (the shared count is recounted), never per event: the old code listed it twice per event.
    assert listed.count(str(s.spool.dir)) <= 1, listed


def test_full_queue_drops_without_blocking(conf, caplog):
    conf.set_override("queue_size", 2, group="proxy")
    s = EventSender(conf)  # not started: nothing drains the queue
    try:
        with caplog.at_level(logging.ERROR, logger=sender_mod.__name__):
            start = time.monotonic()
            results = [s.submit(event(n)) for n in range(5)]
            assert time.monotonic() - start < 0.1
        assert results == [True, True, False, False, False]
        assert "queue full" in caplog.text
    finally:
        s.close()
        s.close()  # idempotent


def test_orphaned_spools_are_adopted_in_order_and_sent_and_held_ones_left_alone(conf, make_sender):
    root = Path(conf.proxy.spool_dir)
    usage = SharedUsage(root, 10_000)
    dead = Spool.create(root, usage)  # a worker that stopped and released its lock
    for n in (1, 2, 3):
        dead.put(msgpack.packb(event(n)))
    dead.close()
    reused = root / str(os.getppid())  # named after a live PID (reused after a reboot), but unlocked
    reused.mkdir()
    (reused / f"{1:020d}.evt").write_bytes(msgpack.packb(event(4)))
    alive = Spool.create(root, usage)  # a live worker: holds its lock
    alive.put(msgpack.packb(event(9)))
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender().start()
        got = []
        for _ in range(4):
            ident, msg = coord.recv()
            got.append(msg.body["event_id"])
            coord.ack(ident, msg)
        assert [g for g in got if g != event(4)["event_id"]] == [event(n)["event_id"] for n in (1, 2, 3)]
        assert set(got) == {event(n)["event_id"] for n in (1, 2, 3, 4)}
        wait_until(lambda: not dead.dir.exists() and not reused.exists())
        assert s.adopted == []
        assert len(alive) == 1 and alive.pending()[0].exists()
        assert not coord.sock.poll(300)  # the live worker's event is not ours to send
    finally:
        coord.close()
        alive.close()
        usage.close()


def test_a_worker_that_dies_later_is_adopted_by_a_running_sender(conf, make_sender):
    offset = [0.0]
    s = make_sender(clock=lambda: time.monotonic() + offset[0]).start()
    root = Path(conf.proxy.spool_dir)
    usage = SharedUsage(root, 10_000)
    dead = Spool.create(root, usage)
    dead.put(msgpack.packb(event(5)))
    dead.close()
    usage.close()
    coord = Coordinator(conf.sync_server_port)
    try:
        assert not coord.sock.poll(300)  # not before the next look
        offset[0] += sender_mod.ADOPT_INTERVAL
        ident, msg = coord.recv()
        assert msg.body["event_id"] == event(5)["event_id"]
        coord.ack(ident, msg)
        wait_until(lambda: not dead.dir.exists())
    finally:
        coord.close()
    assert s.spool.dir.is_dir()


def test_close_spools_what_is_still_queued(conf):
    s = EventSender(conf).start()
    s.submit(event(1))
    s.close()
    files = list(Path(conf.proxy.spool_dir).glob("*/*.evt"))
    assert len(files) == 1


def test_close_of_a_sender_never_started_spools_its_queue(conf):
    s = EventSender(conf)
    s.submit(event(1))
    s.submit(event(2))
    s.close()
    files = sorted(Path(conf.proxy.spool_dir).glob("*/*.evt"))
    assert [msgpack.unpackb(f.read_bytes())["event_id"] for f in files] == [event(1)["event_id"], event(2)["event_id"]]


_EXITING_WORKER = """
import sys
from oslo_config import cfg
from glancesync import opts
from glance_proxy.sender import EventSender
from tests.unit.glance_proxy.test_sender import event
conf = cfg.ConfigOpts()
opts.register_filter_opts(conf)
conf([], default_config_files=[])
conf.set_override("sync_server_host", "127.0.0.1")
conf.set_override("sync_server_port", int(sys.argv[2]))
conf.set_override("spool_dir", sys.argv[1], group="proxy")
sender = EventSender(conf, ack_timeout=600).start()
sender.submit(event(1))
sys.stdin.readline()  # event 1 is in flight: the thread waits for its ack, the next ones stay queued
for n in (2, 3, 4, 5):
    sender.submit(event(n))
sys.exit(0)  # how a gunicorn worker ends; nobody calls close()
"""


def test_events_queued_in_memory_are_spooled_when_the_process_exits(conf):
    root = ROOT_DIR
    coord = Coordinator(conf.sync_server_port)
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXITING_WORKER, conf.proxy.spool_dir, str(conf.sync_server_port)],
        stdin=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)}, cwd=root,
    )  # fmt: skip
    try:
        _, msg = coord.recv(timeout=60)
        assert msg.body["event_id"] == event(1)["event_id"]  # sent, never acked
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
        coord.close()
    files = sorted(Path(conf.proxy.spool_dir).glob("*/*.evt"))
    assert [msgpack.unpackb(f.read_bytes())["event_id"] for f in files] == [event(n)["event_id"] for n in range(1, 6)]
    usage = SharedUsage(conf.proxy.spool_dir, 10_000)
    try:  # and the exited worker's spool is free for a live one to adopt
        assert Spool.adopt(files[0].parent, usage) is not None
    finally:
        usage.close()


def test_start_leaves_the_orphan_scan_to_the_sender_thread(conf, make_sender, monkeypatch):
    """start() runs on the first event's request: reading a big orphaned spool must not happen there."""
    scanned_in = []
    monkeypatch.setattr(EventSender, "adopt_orphans", lambda self: scanned_in.append(threading.current_thread()) or 0)
    s = make_sender().start()
    wait_until(lambda: scanned_in)
    assert scanned_in[0] is s._thread


def test_events_fail_over_to_the_other_coordinator_of_a_pair_and_back(conf, make_sender):
    from .conftest import free_port

    first, second = conf.sync_server_port, free_port()
    conf.set_override("sync_servers", [f"127.0.0.1:{first}", f"127.0.0.1:{second}"])
    # Only the second one is active (binds): the first event gets no answer there and moves on.
    active = Coordinator(second)
    try:
        s = make_sender().start()
        s.submit(event(1))
        ident, msg = active.recv()
        active.ack(ident, msg)
        wait_until(lambda: not s.spool.pending())
        assert s.coordinators.current == ("127.0.0.1", second)
        s.submit(event(2))  # stays with the one that answers
        ident, msg = active.recv()
        active.ack(ident, msg)
        wait_until(lambda: not s.spool.pending())
    finally:
        active.close()
    # The second one dies, the first becomes active: the sender goes round the list, back to it.
    active = Coordinator(first)
    try:
        s.submit(event(3))
        ident, msg = active.recv(timeout=10.0)
        assert msg.body["event_id"] == event(3)["event_id"]
        active.ack(ident, msg)
        wait_until(lambda: not s.spool.pending())
        assert s.coordinators.current == ("127.0.0.1", first)
    finally:
        active.close()
