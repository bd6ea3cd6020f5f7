"""The agent's session with the coordinator: one zmq DEALER, stepped by a poll loop.

The dialog is the ``agent session`` grammar of glancesync.protocol: ``hello`` → ``welcome`` → ``ready``
credits (free worker slots) → ``task`` → ``ack`` at once, ``progress``…, ``done`` | ``failed`` → ``ready``
1.  Heartbeats go out every ``[agent] heartbeat_interval``, busy or not.  A coordinator silent for three of
its heartbeat intervals (then the next of ``[agent] coordinators``: a pair), or one that says ``disconnect``,
gets a fresh socket after a jittered backoff and a new ``hello`` whose ``running`` lists the attempts still
running here or with an unacknowledged result: they keep running unless the coordinator answers ``cancel``
(the attempt is no longer ours: the worker is terminated, its result forgotten; ``discard``: its partial file
too).  Every ``done`` / ``failed`` is kept until ``result_ack``, sent again after each ``welcome`` and every RESEND_SECONDS.  One worker per task: a
``task`` for a task running here (or whose result is held) is acked and answered by that worker or result,
relabelled to the new attempt, never run twice.

``stop(now, grace)`` (SIGTERM) drains: no new work is taken, running transfers get ``grace`` seconds to
finish and their results to be acked; ``drained(now)`` says when to call ``shutdown()``, whose ``bye`` hands
back what is left unfinished.

A ``hello`` the coordinator refuses (``error`` with ``agent_id_in_use``: another live session holds this
agent id; ``too_many_sessions``; ``forbidden``: this key may not serve the region; ``unknown_region``) is
logged once as an ERROR and tried again on a fresh socket with the same backoff, so a restarted agent gets
in as soon as its previous session has lapsed, and two agents given one id do not push each other out.

The coordinator's heartbeats name the images other regions fetch from our cache now
(``serving``): they are pinned there, never evicted meanwhile (agent/cache.py, doc/peers.md).

``initialize()`` / ``step(now)`` / ``shutdown()`` with the time passed in, so tests drive the loop without
sleeping.  A bad frame is logged and dropped; nothing the coordinator sends can end the loop. Each step also
feeds agent/metrics.py, which ``/metrics`` and ``/healthz`` read.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from agent.cache import Cache
from agent.metrics import AgentMetrics
from agent.pool import Pool, PoolEvent
from agent.reports import Result, report_of
from glancesync import __version__, protocol, transport
from glancesync.exceptions import GlanceSyncError, ProtocolError
from glancesync.liveness import Backoff, Liveness

LOG = logging.getLogger(__name__)

# Results held unacknowledged; beyond this the oldest are dropped (their leases
# lapse and the coordinator runs them again, which is idempotent).
MAX_PENDING_RESULTS = 1000
# Seconds between two sends of a result the coordinator has not acknowledged.
RESEND_SECONDS = 5.0
# Seconds before a result the socket refused (queue full) is tried again.
REFUSED_RETRY = 1.0
BYE_LINGER_MS = 1000  # how long the final close waits for the bye to leave
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
        self.coordinators = transport.Failover(
            transport.addresses(agent.coordinators, agent.coordinator_host, agent.coordinator_port))
        self.context = context or zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.welcomed = False
        self.liveness = Liveness(interval=self.heartbeat_interval)
        self.backoff = Backoff(initial=1.0, maximum=agent.reconnect_max_backoff)
        self.next_heartbeat = 0.0
        self.reconnect_at: float | None = None
        # The attempt each running worker answers for (task id -> attempt).
        self.attempts: dict[str, int] = {}
        # Results until acked, in the order they were made, by task id.
        self.results: dict[str, Result] = {}
        self.credits_owed = 0  # slots freed since the last ready
        self.refused = False  # the last hello was refused: repeat refusals are not errors again
        self.stop_at: float | None = None  # draining until then (SIGTERM)
        self.handed_back: dict[str, dict[str, Any]] = {}  # tasks received while draining
        self.metrics = AgentMetrics(self.region, self.agent_id, agent.healthz_max_loop_age)
        self.cache = Cache(agent.cache_dir, agent.cache_max_bytes) if agent.cache_dir else None
        self.features = list(protocol.AGENT_FEATURES)
        work_dir = getattr(getattr(pool, "discards", None), "work_dir", None)  # the region's, as the pool has it
        if self.cache is not None and self.cache.can_relay(work_dir):
            self.cache.clear_relays()  # left by an agent that died: none of our copies runs yet
            self.features.append(protocol.FEATURE_CHAIN)

    # -- lifecycle ------------------------------------------------------------

    def initialize(self, now: float) -> None:
        self._connect(now)

    def stop(self, now: float, grace: float) -> None:
        """Take no more work; give running transfers ``grace`` seconds (see drained)."""
        if self.stop_at is None:
            self.stop_at = now + grace
            LOG.info("stopping: %d running task(s) get %.0f s to finish", len(self.attempts), grace)

    def drained(self, now: float) -> bool:
        """Stopping, and nothing runs or waits for an ack any more (or the grace is over)."""
        if self.stop_at is None:
            return False
        return now >= self.stop_at or (not self.pool.running_ids() and not self.results)

    def shutdown(self) -> None:
        """Say bye, handing back every attempt not finished; terminate the workers."""
        back = [{"task_id": tid, "attempt": attempt} for tid, attempt in self.attempts.items()]
        back += [{"task_id": b["task_id"], "attempt": b["attempt"]} for b in self.handed_back.values()]
        if self.sock is not None and self.welcomed:
            self._send("bye", {"reason": "shutdown", "handed_back": back[:protocol.MAX_ITEMS]})
            if back:
                LOG.info("handed %d unfinished task(s) back to the coordinator", len(back))
        self._close(linger_ms=BYE_LINGER_MS)
        self.pool.shutdown()

    def step(self, now: float, timeout_ms: int = 100) -> None:
        """One loop iteration: receive, reap workers, send what is due."""
        if self.sock is None and self.reconnect_at is not None and now >= self.reconnect_at:
            self._connect(now)
        if self.sock is not None:
            if self.sock.poll(timeout_ms, zmq.POLLIN):
                self._receive_all(now)
        elif timeout_ms > 0:
            # Disconnected, waiting to reconnect: nothing to wait on but the clock. Keep the
            # loop's pace instead of spinning a core for the whole coordinator outage.
            time.sleep(timeout_ms / 1000)
        for event in self.pool.poll(now):
            self._on_pool_event(event, now)
        self.metrics.tick(now, self)
        self._send_results(now)
        if self.sock is None:
            return
        if self.liveness.expired(now):
            silent = f"coordinator {self.coordinators} silent for {now - self.liveness.last_heard:.1f} s"
            self.coordinators.advance()  # only a pair's active member answers: try the next one
            self._reconnect(now, silent)
        elif now >= self.next_heartbeat:
            self._send("heartbeat", {})
            self.next_heartbeat = now + self.heartbeat_interval

    # -- socket ---------------------------------------------------------------

    def running(self) -> list[dict[str, Any]]:
        """Every attempt this agent answers for: running workers, then held results."""
        refs = [{"task_id": tid, "attempt": attempt} for tid, attempt in self.attempts.items()]
        refs += [{"task_id": tid, "attempt": r.body["attempt"]} for tid, r in self.results.items()
                 if tid not in self.attempts]
        return refs[:protocol.MAX_ITEMS]

    def in_flight(self) -> list[str]:
        return [ref["task_id"] for ref in self.running()]

    def _connect(self, now: float) -> None:
        host, port = self.coordinators.current
        self.sock = transport.connect_client(self.context, zmq.DEALER, host, port, self.conf)
        self.welcomed = False
        self.reconnect_at = None
        # The coordinator gets three of our intervals to answer hello.
        self.liveness = Liveness(interval=self.heartbeat_interval, last_heard=now)
        self.next_heartbeat = now + self.heartbeat_interval
        running = self.running()
        self._send("hello", {
            "region": self.region, "agent_id": self.agent_id, "capacity": self.capacity,
            "version": __version__, "in_flight": [ref["task_id"] for ref in running], "running": running,
            "features": self.features,
        })  # fmt: skip
        LOG.info("connecting to coordinator %s as %s/%s", self.coordinators, self.region, self.agent_id)

    def _close(self, linger_ms: int = 0) -> None:
        if self.sock is not None:
            self.sock.close(linger=linger_ms)
            self.sock = None
        self.welcomed = False

    def _reconnect(self, now: float, why: str) -> None:
        delay = self.backoff.next_delay()
        LOG.warning("%s; reconnecting in %.1f s with %d task(s) in flight", why, delay, len(self.running()))
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
        for result in self.results.values():
            result.resend_at = now  # every held result goes out again now
        delivered = self._send_results(now)
        LOG.info("welcomed by the coordinator; %d result(s) sent, %d free slot(s)", delivered,
                 self.pool.free_slots())
        self.credits_owed = self.pool.free_slots()
        self._announce()

    def _announce(self) -> None:
        """Tell the coordinator about freed slots (never while stopping)."""
        if self.credits_owed > 0 and self.welcomed and self.stop_at is None:
            if self._send("ready", {"credits": min(self.credits_owed, protocol.MAX_CAPACITY)}):
                self.credits_owed = 0

    def _on_heartbeat(self, body: dict[str, Any], now: float) -> None:
        if self.cache is not None:
            try:
                self.cache.pin(body["serving"])
            except OSError as exc:
                LOG.warning("cannot note the images served from %s: %s", self.cache.root, exc)

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

    def _on_result_ack(self, body: dict[str, Any], now: float) -> None:
        result = self.results.get(body["task_id"])
        if result is not None and result.body["attempt"] == body["attempt"]:
            del self.results[body["task_id"]]

    def _on_cancel(self, body: dict[str, Any], now: float) -> None:
        task_id, attempt = body["task_id"], body["attempt"]
        why = body.get("reason") or "no longer this agent's"
        if self.attempts.get(task_id) == attempt:
            LOG.warning("task %s attempt %d cancelled by the coordinator (%s): worker terminated",
                        task_id, attempt, why)
            self.pool.cancel(task_id, now, discard=body.get("discard") is True)
            del self.attempts[task_id]
            self.credits_owed += 1
            self._announce()
        result = self.results.get(task_id)
        if result is not None and result.body["attempt"] == attempt:
            LOG.warning("result of task %s attempt %d dropped: cancelled (%s)", task_id, attempt, why)
            del self.results[task_id]
        self.handed_back.pop(task_id, None)

    def _on_task(self, body: dict[str, Any], now: float) -> None:
        task_id, attempt = body["task_id"], body["attempt"]
        ref = {"task_id": task_id, "attempt": attempt}
        if self.stop_at is not None:
            # Stopping: not started, handed back in the bye.
            self.handed_back[task_id] = dict(body)
            return
        self._send("ack", ref)
        if body["region"] != self.region:
            self._finish(ref, {"outcome": "failed", "retryable": False,
                               "reason": f"task for region {body['region']} sent to an agent of {self.region}"},
                         now, freed=False)
            return
        if self._answered(task_id, attempt, now):
            return
        other = self.pool.running_image(body["image_id"])
        if other is not None:
            # Two workers on one image would write the same <image_id>.part: the
            # second waits for the coordinator's retry.
            self._finish(ref, {"outcome": "failed", "retryable": True,
                               "reason": f"image {body['image_id']} is busy here with task {other}"},
                         now, freed=False)
            return
        if self.pool.free_slots() <= 0:
            # More tasks than credits: refuse without giving a credit back.
            self._finish(ref, {"outcome": "failed", "reason": "no free worker slot", "retryable": True},
                         now, freed=False)
            return
        try:
            self.pool.start(dict(body), now)
        except OSError as exc:  # no process could be started (fd or memory exhaustion)
            self._finish(ref, {"outcome": "failed", "reason": f"cannot start a worker: {exc}", "retryable": True},
                         now, freed=False)
            return
        self.attempts[task_id] = attempt

    def _answered(self, task_id: str, attempt: int, now: float) -> bool:
        """One worker per task: a new attempt of a task running here (or with a held ``done``)
        is answered by that worker or result, relabelled; never a second run."""
        if task_id in self.attempts:
            if attempt > self.attempts[task_id]:
                LOG.info("task %s: attempt %d is answered by the worker of attempt %d still running here",
                         task_id, attempt, self.attempts[task_id])
                self.attempts[task_id] = attempt
            return True
        result = self.results.get(task_id)
        if result is None or attempt <= result.body["attempt"]:
            return result is not None
        if result.msg_type == "failed":
            # Superseded: the coordinator has moved on to a new attempt; run it.
            del self.results[task_id]
            return False
        LOG.info("task %s: attempt %d is answered by the held result of attempt %d", task_id, attempt,
                 result.body["attempt"])
        result.body = {**result.body, "attempt": attempt}
        result.resend_at = now
        return True

    # -- worker events ------------------------------------------------------------

    def _on_pool_event(self, event: PoolEvent, now: float) -> None:
        self.metrics.worker_event(event.kind, event.task, event.body)
        task_id = event.task["task_id"]
        ref = {"task_id": task_id, "attempt": self.attempts.get(task_id, event.task["attempt"])}
        if event.kind == "progress":
            if self.welcomed:
                self._send("progress", {**ref, **event.body})
            return
        if self.attempts.pop(task_id, None) is None:
            return  # cancelled meanwhile
        self._finish(ref, event.body, now)

    def _finish(self, ref: dict[str, Any], result: dict[str, Any], now: float, freed: bool = True) -> None:
        msg_type, body = report_of(ref, result)
        # Kept until acked; sent now when the session is up (after older ones, in order).
        self.results.pop(ref["task_id"], None)
        self.results[ref["task_id"]] = Result(msg_type, body, resend_at=now)
        while len(self.results) > MAX_PENDING_RESULTS:
            del self.results[next(iter(self.results))]
        self._send_results(now)
        if freed:
            self.credits_owed += 1
            self._announce()

    def _send_results(self, now: float) -> int:
        """Send held results that are due, in order, until the socket refuses one."""
        sent = 0
        if not self.welcomed:
            return sent
        for result in self.results.values():
            if result.resend_at > now:
                continue
            if not self._send(result.msg_type, result.body):
                result.resend_at = now + REFUSED_RETRY
                break
            result.resend_at = now + RESEND_SECONDS
            sent += 1
        return sent
