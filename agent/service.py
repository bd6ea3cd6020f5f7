"""The agent's session with the coordinator: one zmq DEALER, stepped by a poll loop.

The dialog is the ``agent session`` grammar of glancesync.protocol: ``hello`` →
``welcome`` → ``ready`` credits (free worker slots) → ``task`` → ``ack`` at once,
``progress``…, ``done`` | ``failed`` → ``ready`` 1.  Heartbeats go out every
``[agent] heartbeat_interval``, busy or not.  A coordinator silent for three of
its heartbeat intervals, or one that says ``disconnect``, gets a fresh socket after
a jittered backoff and a new ``hello`` whose ``in_flight`` lists the tasks still
running here: they keep running, and results finished while disconnected are sent
after the next ``welcome``.

A ``hello`` the coordinator refuses (``error`` with ``agent_id_in_use``: another live
session holds this agent id; ``too_many_sessions``; ``forbidden``: this key may not
serve the region; ``unknown_region``) is logged once as an ERROR and tried again on a
fresh socket with the same backoff, so a restarted agent gets in as soon as its
previous session has lapsed, and two agents given one id do not push each other out.

``initialize()`` / ``step(now)`` / ``shutdown()`` with the time passed in, so tests
drive the loop without sleeping.  A bad frame is logged and dropped; nothing the
coordinator sends can end the loop.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from agent.pool import Pool, PoolEvent
from glancesync import __version__, protocol, transport
from glancesync.exceptions import GlanceSyncError, ProtocolError
from glancesync.liveness import Backoff, Liveness

LOG = logging.getLogger(__name__)

# Results kept while disconnected; beyond this the oldest are dropped (their
# leases lapse and the coordinator runs them again, which is idempotent).
MAX_PENDING_RESULTS = 1000
# Seconds between attempts to send held results while the session is up but the
# socket's queue is full (each refused attempt logs a warning).
PENDING_RETRY = 1.0
# Error codes by which the coordinator refuses to open (or keep) our session.
REFUSALS = frozenset({"agent_id_in_use", "too_many_sessions", "forbidden", "unknown_region"})


class AgentService:
    """The DEALER session plus the worker pool of one region's agent."""

    def __init__(self, conf: Any, pool: Pool, context: zmq.Context | None = None) -> None:
        agent = conf.agent
        self.conf = conf
        self.region: str = agent.region
        self.agent_id: str = agent.agent_id
        self.capacity: int = agent.workers
        self.heartbeat_interval: float = agent.heartbeat_interval
        self.pool = pool
        self.context = context or zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.welcomed = False
        self.liveness = Liveness(interval=self.heartbeat_interval)
        self.backoff = Backoff(initial=1.0, maximum=agent.reconnect_max_backoff)
        self.next_heartbeat = 0.0
        self.reconnect_at: float | None = None
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.retry_pending_at = 0.0
        self.refused = False  # the last hello was refused: repeat refusals are not errors again

    # -- lifecycle ------------------------------------------------------------

    def initialize(self, now: float) -> None:
        self._connect(now)

    def shutdown(self) -> None:
        if self.sock is not None:
            self._send("bye", {"reason": "shutdown"})
        self._close()
        self.pool.shutdown()

    def step(self, now: float, timeout_ms: int = 100) -> None:
        """One loop iteration: receive, reap workers, send what is due."""
        if self.sock is None:
            if self.reconnect_at is not None and now >= self.reconnect_at:
                self._connect(now)
            else:
                timeout_ms = 0
        if self.sock is not None and self.sock.poll(timeout_ms, zmq.POLLIN):
            self._receive_all(now)
        for event in self.pool.poll(now):
            self._on_pool_event(event)
        if self.pending and self.welcomed and now >= self.retry_pending_at:
            if self._flush_pending() and self.pool.free_slots() > 0:
                # Results that had been held went out: their slots are credits again.
                self._send("ready", {"credits": self.pool.free_slots()})
            if self.pending:
                self.retry_pending_at = now + PENDING_RETRY
        if self.sock is None:
            return
        if self.liveness.expired(now):
            self._reconnect(now, f"coordinator silent for {now - self.liveness.last_heard:.1f} s")
        elif now >= self.next_heartbeat:
            self._send("heartbeat", {})
            self.next_heartbeat = now + self.heartbeat_interval

    # -- socket ---------------------------------------------------------------

    def in_flight(self) -> list[str]:
        return self.pool.running_ids() + [body["task_id"] for _, body in self.pending]

    def _connect(self, now: float) -> None:
        agent = self.conf.agent
        self.sock = transport.connect_client(
            self.context, zmq.DEALER, agent.coordinator_host, agent.coordinator_port, self.conf
        )
        self.welcomed = False
        self.reconnect_at = None
        # The coordinator gets three of our intervals to answer hello.
        self.liveness = Liveness(interval=self.heartbeat_interval, last_heard=now)
        self.next_heartbeat = now + self.heartbeat_interval
        self._send("hello", {
            "region": self.region, "agent_id": self.agent_id, "capacity": self.capacity,
            "version": __version__, "in_flight": self.in_flight(),
        })  # fmt: skip
        LOG.info("connecting to coordinator %s:%s as %s/%s", agent.coordinator_host, agent.coordinator_port,
                 self.region, self.agent_id)

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        self.welcomed = False

    def _reconnect(self, now: float, why: str) -> None:
        delay = self.backoff.next_delay()
        LOG.warning("%s; reconnecting in %.1f s with %d task(s) in flight", why, delay, len(self.in_flight()))
        self._close()
        self.reconnect_at = now + delay

    def _send(self, msg_type: str, body: dict[str, Any]) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.send(protocol.encode(msg_type, body), zmq.NOBLOCK)
        except ProtocolError as exc:
            LOG.error("not sending %s: %s", msg_type, exc)
            return False
        except zmq.Again:
            # The socket's queue is full (coordinator unreachable): liveness will notice.
            LOG.warning("coordinator not accepting messages; %s not sent%s", msg_type,
                        " (result held for resend)" if msg_type in ("done", "failed") else "")
            return False
        return True

    def _receive_all(self, now: float) -> None:
        while self.sock is not None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if len(frames) != 1:
                    raise ProtocolError(code="bad_frames", detail=f"{len(frames)} frames, expected 1")
                msg = protocol.decode(frames[0])
            except ProtocolError as exc:
                LOG.warning("dropped a malformed frame from the coordinator: %s", exc)
                continue
            self.liveness.heard(now)
            self._dispatch(msg, now)

    # -- messages ---------------------------------------------------------------

    def _dispatch(self, msg: protocol.Message, now: float) -> None:
        handler = getattr(self, f"_on_{msg.type}", None)
        if handler is None:
            if msg.type != "heartbeat":
                LOG.warning("ignoring unexpected %s from the coordinator", msg.type)
            return
        try:
            handler(msg.body, now)
        except GlanceSyncError as exc:  # never let one message end the loop
            LOG.error("handling %s failed: %s", msg.type, exc)

    def _on_welcome(self, body: dict[str, Any], now: float) -> None:
        self.welcomed = True
        self.refused = False
        self.backoff.reset()
        # Judge the coordinator's liveness by the rate it promised to beat at.
        self.liveness = Liveness(interval=max(body["heartbeat_interval"], 0.1), last_heard=now)
        delivered = self._flush_pending()
        LOG.info("welcomed by the coordinator; %d result(s) delivered, %d free slot(s)", delivered,
                 self.pool.free_slots())
        if self.pool.free_slots() > 0:
            self._send("ready", {"credits": self.pool.free_slots()})

    def _on_disconnect(self, body: dict[str, Any], now: float) -> None:
        self._reconnect(now, f"coordinator said disconnect ({body.get('reason') or 'no reason'})")

    def _on_error(self, body: dict[str, Any], now: float) -> None:
        code = body["code"]
        if code in REFUSALS and (not self.welcomed or code == "forbidden"):
            self._refused(code, body["reason"], now)
            return
        LOG.warning("coordinator refused a message: %s %s", code, body["reason"])

    def _refused(self, code: str, reason: str, now: float) -> None:
        """No session for us now: a fresh socket and a new hello after the backoff."""
        delay = self.backoff.next_delay()
        if not self.refused:
            LOG.error("the coordinator refused agent %s of region %s: %s: %s; trying again in %.1f s and "
                      "then with backoff", self.agent_id, self.region, code, reason, delay)
        else:
            LOG.info("hello refused again (%s); next try in %.1f s", code, delay)
        self.refused = True
        self._close()
        self.reconnect_at = now + delay

    def _on_task(self, body: dict[str, Any], now: float) -> None:
        ref = {"task_id": body["task_id"], "attempt": body["attempt"]}
        self._send("ack", ref)
        if body["region"] != self.region:
            self._finish(ref, {"outcome": "failed", "retryable": False,
                               "reason": f"task for region {body['region']} sent to an agent of {self.region}"})
            return
        if self.pool.is_running(body["task_id"]):
            LOG.info("task %s is already running here; attempt %s acknowledged", body["task_id"], body["attempt"])
            return
        other = self.pool.running_image(body["image_id"])
        if other is not None:
            # Two workers on one image would write the same <image_id>.part: the
            # second waits for the coordinator's retry.
            self._finish(ref, {"outcome": "failed", "retryable": True,
                               "reason": f"image {body['image_id']} is busy here with task {other}"})
            return
        if self.pool.free_slots() <= 0:
            # More tasks than credits: refuse without giving a credit back.
            failed = {**ref, "reason": "no free worker slot", "retryable": True}
            if not self._send("failed", failed):
                self._hold("failed", failed)
            return
        try:
            self.pool.start(dict(body), now)
        except OSError as exc:  # no process could be started (fd or memory exhaustion)
            self._finish(ref, {"outcome": "failed", "reason": f"cannot start a worker: {exc}", "retryable": True})

    # -- worker events ------------------------------------------------------------

    def _on_pool_event(self, event: PoolEvent) -> None:
        task = event.task
        ref = {"task_id": task["task_id"], "attempt": task["attempt"]}
        if event.kind == "progress":
            if self.welcomed:
                self._send("progress", {**ref, **event.body})
            return
        self._finish(ref, event.body)

    def _finish(self, ref: dict[str, Any], result: dict[str, Any]) -> None:
        if result.get("outcome") == "done":
            fields = ("size", "checksum", "os_hash_algo", "os_hash_value", "region_hash_algo", "region_hash_value",
                      "elapsed")
            msg_type, body = "done", {**ref, **{k: result.get(k) for k in fields if result.get(k) is not None}}
            LOG.info("task %s done", ref["task_id"])
        else:
            reason = str(result.get("reason") or "unknown failure")[:2000]
            msg_type, body = "failed", {**ref, "reason": reason, "retryable": bool(result.get("retryable"))}
            LOG.warning("task %s failed (retryable=%s): %s", ref["task_id"], body["retryable"], reason)
        if not self.welcomed or self.pending or not self._send(msg_type, body):
            # Not sendable now (no session, older results waiting, or the socket's
            # queue full): keep it, in order, for the next healthy moment.
            self._hold(msg_type, body)
            return
        self._send("ready", {"credits": 1})

    def _hold(self, msg_type: str, body: dict[str, Any]) -> None:
        self.pending = [*self.pending, (msg_type, body)][-MAX_PENDING_RESULTS:]

    def _flush_pending(self) -> int:
        """Send held results in order until the socket refuses one; returns how many went."""
        sent = 0
        while self.pending and self.welcomed:
            msg_type, body = self.pending[0]
            if not self._send(msg_type, body):
                break
            self.pending.pop(0)
            sent += 1
        return sent
