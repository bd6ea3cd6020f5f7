"""AgentService against a real zmq ROUTER on 127.0.0.1 played by the test."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest
import zmq

from agent import service as agent_service
from agent.service import AgentService
from glancesync import protocol
from tests.unit.agent.helpers import FakePool, make_conf

IMAGE_ID = "aaaaaaaa-0000-4000-8000-000000000001"


class Coordinator:
    """The test's side of the session: a ROUTER that records what the agent says."""

    def __init__(self, context: zmq.Context) -> None:
        self.sock = context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.peer: bytes | None = None

    def expect(self, service: AgentService, msg_type: str, now: float, steps: int = 50) -> protocol.Message:
        """Step the agent until it sends ``msg_type`` (other types are skipped)."""
        for step in range(steps + 1):
            # After the last step, wait a little: delivery over TCP is asynchronous (a bye
            # sent by shutdown() may still be on its way when the last step returns).
            while self.sock.poll(0 if step < steps else 2000):
                peer, frame = self.sock.recv_multipart()
                self.peer = peer
                msg = protocol.decode(frame)
                if msg.type == msg_type:
                    return msg
            if step < steps:
                service.step(now, timeout_ms=20)
        raise AssertionError(f"agent never sent {msg_type}")

    def send(self, msg_type: str, body: dict[str, Any]) -> None:
        assert self.peer is not None
        self.sock.send_multipart([self.peer, protocol.encode(msg_type, body)])

    def send_raw(self, frame: bytes) -> None:
        assert self.peer is not None
        self.sock.send_multipart([self.peer, frame])


def task_body(task_id: str = "t1", region: str = "RegionA", kind: str = "copy") -> dict[str, Any]:
    return {"task_id": task_id, "attempt": 1, "kind": kind, "image_id": IMAGE_ID, "region": region,
            "image": {"id": IMAGE_ID, "size": 100}, "source": {"type": "sftp", "path": f"/store/{IMAGE_ID}"}}


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def session(context):
    coord = Coordinator(context)
    pool = FakePool(workers=2)
    service = AgentService(make_conf(coord.port, heartbeat=1.0), pool, context=context)
    service.initialize(0.0)
    yield coord, service, pool
    service.shutdown()
    coord.sock.close()


def welcome(coord: Coordinator, service: AgentService, now: float = 0.0) -> protocol.Message:
    hello = coord.expect(service, "hello", now)
    coord.send("welcome", {"heartbeat_interval": 1.0, "lease_timeout": 10.0})
    return hello


def test_hello_welcome_ready_task_ack_progress_done(session):
    coord, service, pool = session
    hello = welcome(coord, service)
    assert hello.body["region"] == "RegionA" and hello.body["capacity"] == 2 and hello.body["in_flight"] == []
    assert coord.expect(service, "ready", 0.1).body["credits"] == 2
    coord.send("task", task_body())
    ack = coord.expect(service, "ack", 0.2)
    assert ack.body == {"task_id": "t1", "attempt": 1}
    assert pool.running_ids() == ["t1"]
    pool.progress("t1", 50, 100)
    assert coord.expect(service, "progress", 0.3).body["bytes_done"] == 50
    pool.finish("t1", {"outcome": "done", "size": 100, "checksum": "c", "os_hash_algo": "sha512",
                       "os_hash_value": "h", "elapsed": 1.5})
    done = coord.expect(service, "done", 0.4)
    assert done.body["size"] == 100 and done.body["os_hash_value"] == "h" and done.body["elapsed"] == 1.5
    assert coord.expect(service, "ready", 0.5).body["credits"] == 1


def test_done_carries_the_regions_own_hash(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.expect(service, "ready", 0.1)
    coord.send("task", task_body())
    coord.expect(service, "ack", 0.2)
    pool.finish("t1", {"outcome": "done", "size": 100, "checksum": "c", "os_hash_algo": "sha512",
                       "os_hash_value": "h", "region_hash_algo": "sha256", "region_hash_value": "r"})
    done = coord.expect(service, "done", 0.3)
    assert (done.body["region_hash_algo"], done.body["region_hash_value"]) == ("sha256", "r")


def test_failure_is_reported_with_retryable(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.send("task", task_body())
    coord.expect(service, "ack", 0.1)
    pool.finish("t1", {"outcome": "failed", "reason": "source refused", "retryable": False})
    failed = coord.expect(service, "failed", 0.2)
    assert failed.body["reason"] == "source refused" and failed.body["retryable"] is False


def test_task_of_another_region_fails_not_retryable(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.send("task", task_body(region="RegionB"))
    coord.expect(service, "ack", 0.1)
    failed = coord.expect(service, "failed", 0.1)
    assert failed.body["retryable"] is False and "RegionB" in failed.body["reason"]
    assert pool.running_ids() == []


def test_heartbeats_while_busy(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.send("task", task_body())
    coord.expect(service, "ack", 0.1)
    coord.send("heartbeat", {})
    coord.expect(service, "heartbeat", 1.2)  # the task is still running
    assert pool.running_ids() == ["t1"]


def test_malformed_frame_is_dropped_and_session_continues(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.expect(service, "ready", 0.1)
    coord.send_raw(b"\xc1 not msgpack")
    coord.send_raw(protocol.encode("heartbeat")[:-3])
    coord.send("task", task_body())
    assert coord.expect(service, "ack", 0.2).body["task_id"] == "t1"
    assert service.sock is not None and pool.running_ids() == ["t1"]


def test_silence_reconnects_with_in_flight_and_results_wait_for_welcome(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.send("task", task_body())
    coord.expect(service, "ack", 0.1)
    # Nothing heard for more than 3 intervals: the agent drops the socket.
    service.step(3.5, timeout_ms=0)
    assert service.sock is None and service.reconnect_at is not None
    assert 3.5 < service.reconnect_at <= 3.5 + 1.0
    pool.finish("t1", {"outcome": "done", "size": 100})
    service.step(3.6, timeout_ms=0)  # result arrives while disconnected: kept
    hello = coord.expect(service, "hello", service.reconnect_at + 0.01)
    assert hello.body["in_flight"] == ["t1"]
    coord.send("welcome", {"heartbeat_interval": 1.0, "lease_timeout": 10.0})
    now = service.reconnect_at or 10.0
    assert coord.expect(service, "done", now + 0.1).body["task_id"] == "t1"
    assert coord.expect(service, "ready", now + 0.2).body["credits"] == 2


def test_disconnect_makes_a_new_session_keeping_running_tasks(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.send("task", task_body())
    coord.expect(service, "ack", 0.1)
    coord.send("disconnect", {"reason": "coordinator restarting"})
    for _ in range(20):
        service.step(0.2, timeout_ms=20)
        if service.sock is None:
            break
    assert service.sock is None
    hello = coord.expect(service, "hello", 5.0)
    assert hello.body["in_flight"] == ["t1"] and pool.running_ids() == ["t1"]


def test_backoff_grows_while_coordinator_stays_silent(session):
    coord, service, pool = session
    coord.expect(service, "hello", 0.0)
    now, delays = 0.0, []
    for _ in range(4):
        now += 3.5
        service.step(now, timeout_ms=0)
        assert service.sock is None
        delays.append(service.reconnect_at - now)
        now = service.reconnect_at
        service.step(now, timeout_ms=0)
        assert service.sock is not None
    assert delays[-1] > delays[0]
    assert max(delays) <= 2.0  # reconnect_max_backoff


def test_real_clock_smoke(context):
    coord = Coordinator(context)
    service = AgentService(make_conf(coord.port), FakePool(), context=context)
    service.initialize(time.monotonic())
    try:
        assert coord.expect(service, "hello", time.monotonic()).body["agent_id"] == "agent-1"
    finally:
        service.shutdown()
        coord.sock.close()


class _FullQueue:
    """A socket whose queue is full while ``full``: results raise zmq.Again, as a real full DEALER does."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.full = True
        self.refused = 0

    def send(self, frame: bytes, flags: int = 0) -> None:
        if self.full and protocol.decode(frame).type in ("failed", "done"):
            self.refused += 1
            raise zmq.Again()
        self.sock.send(frame, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_result_dropped_by_a_full_socket_is_resent_once_the_session_is_healthy(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.expect(service, "ready", 0.1)
    coord.send("task", task_body())
    coord.expect(service, "ack", 0.1)
    full = _FullQueue(service.sock)
    service.sock = full
    pool.finish("t1", {"outcome": "failed", "reason": "boom", "retryable": True})
    service.step(0.2, timeout_ms=0)
    service.step(0.25, timeout_ms=0)
    assert full.refused >= 1
    # Held, not lost: still reported as in flight, and sent once the queue drains.
    assert service.in_flight() == ["t1"]
    full.full = False
    failed = coord.expect(service, "failed", 1.3)
    assert failed.body["task_id"] == "t1" and failed.body["reason"] == "boom"
    assert service.in_flight() == ["t1"]  # kept until the coordinator acknowledges it
    coord.send("result_ack", {"task_id": "t1", "attempt": 1})
    assert until(service, 1.4, lambda: service.in_flight() == [])
    service.sock = full.sock


def test_second_task_for_an_image_already_running_here_is_refused_retryable(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.expect(service, "ready", 0.1)
    coord.send("task", task_body("t1"))
    coord.expect(service, "ack", 0.1)
    coord.send("task", task_body("t2", kind="delete"))  # same image-1: would share its .part file
    failed = coord.expect(service, "failed", 0.2)
    assert failed.body["task_id"] == "t2" and failed.body["retryable"] is True
    assert "busy" in failed.body["reason"] and "t1" in failed.body["reason"]
    assert list(pool.running) == ["t1"]


def test_a_refused_hello_is_one_error_then_retried_with_backoff(session, caplog):
    # Another live session holds this agent id: the agent must neither give up nor hammer.
    coord, service, pool = session
    now, delays = 0.0, []
    for _ in range(3):
        hello = coord.expect(service, "hello", now)
        coord.send("error", {"code": "agent_id_in_use", "reason": "agent a1 of region RegionA is online",
                             "ref": hello.id})
        for _ in range(20):
            service.step(now, timeout_ms=20)
            if service.sock is None:
                break
        assert service.sock is None and not service.welcomed
        delays.append(service.reconnect_at - now)
        now = service.reconnect_at
    assert delays[0] > 0 and delays[-1] > delays[0]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "agent_id_in_use" in errors[0].getMessage()
    hello = coord.expect(service, "hello", now)  # once the old session lapsed, it gets in
    coord.send("welcome", {"heartbeat_interval": 1.0, "lease_timeout": 10.0})
    assert coord.expect(service, "ready", now + 0.1).body["credits"] == 2
    assert service.welcomed and not service.refused


# -- session faults ------------------------------------------------------------------------------


def until(service: AgentService, now: float, condition) -> bool:
    """Step the agent at ``now`` until ``condition()`` holds (a message may take a moment to arrive)."""
    for _ in range(50):
        service.step(now, timeout_ms=20)
        if condition():
            return True
    return False


def started(coord, service, body, now: float = 0.1) -> None:
    coord.send("task", body)
    coord.expect(service, "ack", now)


def test_hello_names_the_attempt_of_every_running_task(session):
    coord, service, pool = session
    welcome(coord, service)
    started(coord, service, {**task_body(), "attempt": 3})
    coord.send("disconnect", {"reason": "test"})
    assert until(service, 0.2, lambda: service.sock is None)
    hello = coord.expect(service, "hello", 5.0)
    assert hello.body["running"] == [{"task_id": "t1", "attempt": 3}] and hello.body["in_flight"] == ["t1"]


def test_a_new_attempt_of_a_running_task_is_answered_by_the_running_worker(session):
    coord, service, pool = session
    welcome(coord, service)
    started(coord, service, task_body())
    coord.send("task", {**task_body(), "attempt": 2})
    assert coord.expect(service, "ack", 0.2).body["attempt"] == 2
    assert list(pool.running) == ["t1"] and pool.running["t1"]["attempt"] == 1  # not started twice
    pool.finish("t1", {"outcome": "done", "size": 100})
    done = coord.expect(service, "done", 0.3)
    assert (done.body["task_id"], done.body["attempt"]) == ("t1", 2)


def test_a_new_attempt_of_a_task_whose_done_is_unacked_is_answered_by_that_done(session):
    coord, service, pool = session
    welcome(coord, service)
    started(coord, service, task_body())
    pool.finish("t1", {"outcome": "done", "size": 100})
    assert coord.expect(service, "done", 0.2).body["attempt"] == 1
    coord.send("task", {**task_body(), "attempt": 2})
    done = coord.expect(service, "done", 0.3)
    assert done.body["attempt"] == 2 and pool.running == {}


def test_cancel_terminates_the_worker_of_that_attempt_only(session):
    coord, service, pool = session
    welcome(coord, service)
    started(coord, service, {**task_body(), "attempt": 2})
    coord.send("cancel", {"task_id": "t1", "attempt": 1})  # an older attempt: not this worker
    coord.send("heartbeat", {})
    assert until(service, 1.1, lambda: service.liveness.last_heard == 1.1)
    assert pool.cancelled == [] and service.in_flight() == ["t1"]
    coord.send("cancel", {"task_id": "t1", "attempt": 2})
    assert coord.expect(service, "ready", 1.2).body["credits"] == 1  # its slot is free again
    assert pool.cancelled == ["t1"] and service.in_flight() == []
    assert pool.discarded == []  # an attempt that is no longer ours: its .part stays for a resume


def test_a_cancel_with_discard_removes_the_partial_data_too(session):
    coord, service, pool = session
    welcome(coord, service)
    started(coord, service, task_body())
    coord.send("cancel", {"task_id": "t1", "attempt": 1, "reason": "operator", "discard": True})
    assert coord.expect(service, "ready", 1.2).body["credits"] == 1
    assert pool.discarded == ["t1"]


def test_results_are_resent_until_acked(session, monkeypatch):
    coord, service, pool = session
    monkeypatch.setattr(agent_service, "RESEND_SECONDS", 2.0)  # within the coordinator's liveness
    welcome(coord, service)
    started(coord, service, task_body())
    pool.finish("t1", {"outcome": "failed", "reason": "boom", "retryable": True})
    assert coord.expect(service, "failed", 0.2).body["task_id"] == "t1"
    resend = 0.2 + agent_service.RESEND_SECONDS
    assert coord.expect(service, "failed", resend).body["task_id"] == "t1"  # no ack: again
    coord.send("result_ack", {"task_id": "t1", "attempt": 1})
    assert until(service, resend + 0.1, lambda: service.results == {})
    # A fresh session gets every unacked result again after its welcome.
    started(coord, service, task_body("t2"), resend + 0.2)
    pool.finish("t2", {"outcome": "done", "size": 100})
    coord.expect(service, "done", resend + 0.3)
    coord.send("disconnect", {"reason": "coordinator restarting"})
    assert until(service, resend + 0.4, lambda: service.sock is None)
    hello = coord.expect(service, "hello", resend + 5.0)
    assert hello.body["running"] == [{"task_id": "t2", "attempt": 1}]
    coord.send("welcome", {"heartbeat_interval": 1.0, "lease_timeout": 10.0})
    assert coord.expect(service, "done", resend + 5.1).body["task_id"] == "t2"


def test_stop_lets_running_work_finish_and_hands_back_the_rest(session):
    coord, service, pool = session
    welcome(coord, service)
    coord.expect(service, "ready", 0.1)
    started(coord, service, task_body("t1"))
    service.stop(1.0, grace=30.0)
    coord.send("task", {**task_body("t2"), "image_id": "bbbbbbbb-0000-4000-8000-000000000002"})
    # Received (and kept to hand back) before t1's end can leave the agent drained without it.
    assert until(service, 1.1, lambda: "t2" in service.handed_back)
    assert list(pool.running) == ["t1"] and not service.drained(1.1)  # t2 is not started
    pool.finish("t1", {"outcome": "done", "size": 100})
    coord.expect(service, "done", 1.2)
    assert not service.drained(1.2)  # its done is not acked yet
    coord.send("result_ack", {"task_id": "t1", "attempt": 1})
    assert until(service, 1.3, lambda: service.drained(1.3))
    service.shutdown()
    bye = coord.expect(service, "bye", 1.4, steps=1)
    assert bye.body["handed_back"] == [{"task_id": "t2", "attempt": 1}]


def test_at_the_end_of_the_grace_running_tasks_are_handed_back(session):
    coord, service, pool = session
    welcome(coord, service)
    started(coord, service, task_body("t1"))
    service.stop(1.0, grace=5.0)
    service.step(2.0, timeout_ms=0)
    assert not service.drained(2.0) and service.drained(6.0)
    service.shutdown()
    bye = coord.expect(service, "bye", 6.1, steps=1)
    assert bye.body["handed_back"] == [{"task_id": "t1", "attempt": 1}] and pool.shut


def test_a_disconnected_agent_waits_between_steps_instead_of_spinning(monkeypatch):
    svc = AgentService(make_conf(1), FakePool())
    svc.reconnect_at = 1_000.0  # disconnected, reconnecting later
    slept: list[float] = []
    monkeypatch.setattr(agent_service.time, "sleep", slept.append)
    svc.step(10.0)
    svc.step(11.0, timeout_ms=0)  # the tests' way to step without waiting still does not wait
    assert slept == [0.1] and svc.sock is None


def test_a_silent_coordinator_of_a_pair_makes_the_agent_go_to_the_other_and_back(context):
    first, second = Coordinator(context), Coordinator(context)
    conf = make_conf(first.port, heartbeat=1.0)
    conf.set_override("coordinators", [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"], group="agent")
    pool = FakePool(workers=2)
    service = AgentService(conf, pool, context=context)
    service.initialize(0.0)
    try:
        welcome(first, service)
        coord_task = task_body()
        first.send("task", coord_task)
        first.expect(service, "ack", 0.1)
        # The first one dies (it answers nothing more): after three intervals the agent moves on.
        service.step(3.5, timeout_ms=0)
        hello = second.expect(service, "hello", service.reconnect_at + 0.01)
        assert hello.body["in_flight"] == ["t1"]  # the other coordinator learns what runs here
        second.send("welcome", {"heartbeat_interval": 1.0, "lease_timeout": 10.0})
        now = service.reconnect_at or 5.0
        second.expect(service, "ready", now + 0.1)
        # Then the second one falls silent too: round the list, back to the first.
        service.step(now + 3.6, timeout_ms=0)
        assert service.sock is None
        assert first.expect(service, "hello", service.reconnect_at + 0.01).body["in_flight"] == ["t1"]
    finally:
        service.shutdown()
        first.sock.close()
        second.sock.close()


def test_peer_sources_announced_reported_and_served_files_pinned(context, tmp_path):
    """hello says the agent reads task.sources; done names the source; heartbeats pin what is served."""
    coord = Coordinator(context)
    pool = FakePool(workers=2)
    conf = make_conf(coord.port)
    conf.set_override("cache_dir", str(tmp_path / "cache"), group="agent")
    service = AgentService(conf, pool, context=context)
    service.initialize(0.0)
    try:
        # No work_dir known to relay running copies from: no "chain".
        assert welcome(coord, service).body["features"] == ["sources", "follow"]
        coord.send("task", task_body())
        coord.expect(service, "ack", 0.2)
        pool.finish("t1", {"outcome": "done", "size": 100, "checksum": "c", "os_hash_algo": "sha512",
                           "os_hash_value": "h", "fetched_from": "RegionB", "cached": True})
        done = coord.expect(service, "done", 0.4)
        assert done.body["fetched_from"] == "RegionB" and done.body["cached"] is True
        coord.send("heartbeat", {"serving": [IMAGE_ID]})
        assert until(service, 0.5, lambda: service.cache.pinned() == {IMAGE_ID})
        coord.send("heartbeat", {})
        assert until(service, 0.6, lambda: service.cache.pinned() == set())
    finally:
        service.shutdown()
        coord.sock.close()


def test_chain_announced_when_running_copies_can_be_relayed_and_stale_relays_cleared(context, tmp_path):
    """A cache on the work_dir's file system relays running copies: hello says "chain"; old relay names go."""
    coord = Coordinator(context)
    pool = FakePool(workers=2)
    pool.discards = types.SimpleNamespace(work_dir=str(tmp_path / "work"))
    (tmp_path / "work").mkdir()
    (tmp_path / "cache").mkdir()
    stale = tmp_path / "cache" / f".growing.{IMAGE_ID}"
    stale.write_bytes(b"left by an agent that died")
    conf = make_conf(coord.port)
    conf.set_override("cache_dir", str(tmp_path / "cache"), group="agent")
    service = AgentService(conf, pool, context=context)
    service.initialize(0.0)
    try:
        assert welcome(coord, service).body["features"] == ["sources", "follow", "chain"]
        assert not stale.exists()
    finally:
        service.shutdown()
        coord.sock.close()
