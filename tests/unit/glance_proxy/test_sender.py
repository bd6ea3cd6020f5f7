"""EventSender and Spool against a real zmq ROUTER on 127.0.0.1 played by the test."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from glance_proxy import sender as sender_mod
from glance_proxy.sender import EventSender
from glance_proxy.spool import Spool
from glancesync import protocol
from glancesync.liveness import Backoff


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

    def recv(self, timeout: float = 5.0) -> tuple[bytes, protocol.Message]:
        assert self.sock.poll(int(timeout * 1000)), "no event arrived"
        ident, frame = self.sock.recv_multipart()
        return ident, protocol.decode(frame)

    def ack(self, ident: bytes, msg: protocol.Message) -> None:
        self.sock.send_multipart([ident, protocol.encode("event_ack", {"event_id": msg.body["event_id"]})])

    def error(self, ident: bytes, msg: protocol.Message, code: str) -> None:
        body = {"code": code, "reason": "test says no", "ref": msg.id}
        self.sock.send_multipart([ident, protocol.encode("error", body)])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
def make_sender(conf):
    made: list[EventSender] = []

    def make(**kwargs) -> EventSender:
        kwargs.setdefault("ack_timeout", 0.3)
        kwargs.setdefault("backoff", Backoff(initial=0.05, maximum=0.2))
        s = EventSender(conf, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


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
        wait_until(lambda: not s.spool.pending())
        assert s.spool.used_bytes == 0
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
    assert len(s.spool.pending()) == 1
    assert str(s.spool.dir) in caplog.text and "1024" in caplog.text


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


def test_spool_write_is_fsynced_and_atomic(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    spool = Spool(tmp_path, 10_000, pid=123)
    path = spool.put(b"abc")
    assert path.read_bytes() == b"abc"
    assert len(synced) == 2  # the file and its directory
    assert [p.name for p in (tmp_path / "123").iterdir()] == [path.name]


def test_spool_restart_continues_sequence_and_drops_half_written(tmp_path):
    spool = Spool(tmp_path, 10_000, pid=7)
    first = spool.put(b"1")
    (tmp_path / "7" / ".tmp-99").write_bytes(b"partial")
    again = Spool(tmp_path, 10_000, pid=7)
    second = again.put(b"2")
    assert again.pending() == [first, second]
    assert again.used_bytes == 2
    assert not (tmp_path / "7" / ".tmp-99").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_orphaned_spool_of_dead_pid_is_adopted_in_order_and_sent(conf, make_sender):
    root = Path(conf.proxy.spool_dir)
    dead = Spool(root, 10_000, pid=_dead_pid())
    for n in (1, 2, 3):
        dead.put(msgpack.packb(event(n)))
    alive = Spool(root, 10_000, pid=os.getppid())  # a live process: left alone
    alive.put(msgpack.packb(event(9)))
    coord = Coordinator(conf.sync_server_port)
    try:
        s = make_sender().start()
        got = []
        for _ in range(3):
            ident, msg = coord.recv()
            got.append(msg.body["event_id"])
            coord.ack(ident, msg)
        assert got == [event(n)["event_id"] for n in (1, 2, 3)]
        assert not dead.dir.exists()
        assert len(alive.pending()) == 1
        wait_until(lambda: not s.spool.pending())
    finally:
        coord.close()


def test_close_spools_what_is_still_queued(conf):
    s = EventSender(conf).start()
    s.submit(event(1))
    s.close()
    files = list(Path(conf.proxy.spool_dir).glob("*/*.evt"))
    assert len(files) == 1
