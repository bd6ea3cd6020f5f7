"""The agent-session dialog: what the coordinator answers to each message on the agent socket.

``frame`` decodes one frame, checks that the sender's key may send it (its role and
region, glancesync.roles) and hands it on: ``hello`` opens a session (agents.py) and
is answered with ``welcome`` and a ``cancel`` for each attempt it lists that is no
longer the agent's; ``ready``, ``ack``, ``progress``, ``done``, ``failed`` and ``bye``
go to the session and the task desk (tasks.py; ``ack`` and ``done`` are queued there and
applied together once per iteration, coordinator/taskreports.py).  ``done`` and ``failed`` are answered
with ``result_ack`` only after the loop iteration's journal batch has committed
(``ack_later``): the agent forgets a result once it is acked (doc/control-plane.md).
A frame that breaks the protocol is answered with ``error`` (``send_raw``: behind an earlier
reply to the same connection that waits for the commit, replies.py); when it was a report,
that attempt fails, so its task is not left handed out for ever (doc/sessions.md).
``heartbeats`` sends each session its heartbeat on its own beat.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from coordinator.agents import Agents, Session, SessionRefused
from coordinator.metrics import CoordinatorMetrics
from coordinator.tasks import TaskDesk
from glancesync import protocol, roles
from glancesync.exceptions import ProtocolError
from glancesync.storemap import StoreMap

LOG = logging.getLogger(__name__)
# Message types an agent may send; anything else on the agent socket is refused.
AGENT_TYPES = frozenset(roles.AGENT_MESSAGES)
# (routing id, message type, body) -> whether the socket took it.
Send = Callable[[bytes, str, dict[str, Any]], bool]


def peer_name(routing_id: bytes) -> str:
    return routing_id.hex()[:16] or "?"


class AgentDialog:
    def __init__(self, conf: cfg.ConfigOpts, storemap: StoreMap, agents: Agents, tasks: TaskDesk, *,
                 send: Send, send_raw: Callable[[bytes, bytes], bool], ack_later: Send,
                 admitted: Callable[[list[bytes], str | None, protocol.Message], roles.Peer | None],
                 metrics: CoordinatorMetrics, cancelled: Callable[[str], bool],
                 credited: Callable[[], None] = lambda: None) -> None:
        self.conf = conf
        self.storemap = storemap
        self.agents = agents
        self.tasks = tasks
        self.send = send
        self.send_raw = send_raw
        self.ack_later = ack_later
        self.admitted = admitted
        self.metrics = metrics
        # Whether an operator cancelled the task (its agent may then discard the bytes).
        self.cancelled = cancelled
        # An agent got credits (hello, ready): the hand-out has something new to look at.
        self.credited = credited
        # When the next session's heartbeat is due, and when that was worked out (None: look at every
        # session at the next call): 500 sessions are not walked at each of ~100 wake-ups a second.
        self._beat_due: float | None = None
        self._beat_seen = 0.0

    def unreachable(self, routing_id: bytes) -> None:
        """The agent's connection is gone (ROUTER_MANDATORY): no more work for its session."""
        session = self.agents.get(routing_id)
        if session is not None:
            LOG.warning("agent %s of region %s is offline: its connection is gone", session.agent_id,
                        session.region)
            self.agents.offline(session)

    def frame(self, frames: list[bytes], now: float, key: str | None = None) -> None:
        if len(frames) < 2:
            LOG.warning("agent peer %s: frame without payload dropped", peer_name(frames[0]))
            return
        routing_id, payload = frames[0], frames[-1]
        try:
            msg = protocol.decode(payload)
            if msg.type not in AGENT_TYPES:
                raise ProtocolError(code="unexpected", detail=f"{msg.type} is not an agent message")
        except ProtocolError as exc:
            LOG.warning("agent peer %s: refused frame: %s", peer_name(routing_id), exc)
            self.send_raw(routing_id, protocol.error_reply(exc))
            ref, session = protocol.refused_report(payload), self.agents.get(routing_id)
            if ref is not None and session is not None:
                if self.tasks.refused(session, ref, f"the agent's report was refused: {exc}", now):
                    self.ack_later(routing_id, "result_ack", ref)
            return
        peer = self.admitted([routing_id], key, msg)
        if peer is None:
            return
        if msg.type == "hello":
            self.tasks.apply_reports(now)  # its in_flight is judged against what was reported before
            self.hello(routing_id, peer, key, msg, now)
            return
        session = self.agents.get(routing_id)
        if session is None:
            LOG.info("agent peer %s: %s without a session; asking it to say hello", peer_name(routing_id),
                     msg.type)
            self.send(routing_id, "disconnect", {"reason": "unknown session; send hello"})
            return
        self.agents.heard(session, now)
        self.metrics.agent_message(session.region, msg)
        self.message(session, msg, now)

    def hello(self, routing_id: bytes, peer: roles.Peer, key: str | None, msg: protocol.Message,
               now: float) -> None:
        region = msg.body["region"]
        try:
            if peer is not roles.LOCAL and peer.region != region:
                raise SessionRefused("forbidden", f"key {peer.name} is for region {peer.region}, not {region}")
            if region not in self.storemap.regions:
                raise SessionRefused("unknown_region", f"region {region} is not in glance_store.yaml")
            self.agents.hello(routing_id, msg.body, now, key, "" if peer is roles.LOCAL else peer.name)
        except SessionRefused as exc:
            LOG.warning("agent peer %s (%s): hello as %s of region %s refused: %s", peer_name(routing_id),
                        peer.name, msg.body["agent_id"], region, exc)
            self.send(routing_id, "error", {"code": exc.code, "reason": exc.reason, "ref": msg.id})
            return
        self.credited()
        self._beat_due = None  # its first heartbeat is counted from now
        c = self.conf.coordinator
        self.send(routing_id, "welcome",
                        {"heartbeat_interval": c.heartbeat_interval, "lease_timeout": c.lease_timeout})
        session = self.agents.get(routing_id)
        if session is None:  # gone before the welcome reached it
            return
        for ref in session.stale:
            LOG.warning("agent %s of region %s runs task %s attempt %d, which is no longer its own: cancelled",
                        session.agent_id, region, ref["task_id"], ref["attempt"])
            self.send(routing_id, "cancel", {**ref, "reason": "attempt no longer current for this agent",
                                             "discard": self.cancelled(ref["task_id"])})
        session.stale = []

    def message(self, session: Session, msg: protocol.Message, now: float) -> None:
        body = msg.body
        if msg.type == "ready":
            self.agents.ready(session, body["credits"])
            self.credited()
        elif msg.type == "ack":
            self.tasks.ack(session, body, now)
        elif msg.type == "progress":
            self.tasks.progress(session, body, now)
        elif msg.type == "done":  # applied with the iteration's others; acked once journaled (or stale)
            ref = {"task_id": body["task_id"], "attempt": body["attempt"]}
            self.tasks.done(session, body, now, lambda: self.ack_later(session.routing_id, "result_ack", ref))
        elif msg.type == "failed":
            if self.tasks.failed(session, body, now):  # journaled (or stale): the agent may forget it
                self.ack_later(session.routing_id, "result_ack",
                               {"task_id": body["task_id"], "attempt": body["attempt"]})
        elif msg.type == "bye":
            LOG.info("agent %s of region %s said bye: %s", session.agent_id, session.region, body["reason"])
            self.tasks.handed_back(session, body["handed_back"], now)
            self.agents.offline(session)

    def heartbeats(self, now: float) -> None:
        # Each session on its own beat (from its hello on), so 500 agents are not all sent
        # their heartbeat in the same iteration.
        if self._beat_due is not None and self._beat_seen <= now < self._beat_due:
            return  # none due yet (a clock that went back looks again)
        interval = self.conf.coordinator.heartbeat_interval
        due = None
        for session in self.agents.online():
            if not session.heartbeat_sent or now < session.heartbeat_sent:
                session.heartbeat_sent = now
            elif now - session.heartbeat_sent >= interval:
                session.heartbeat_sent = now
                # Its cache files other regions fetch now: the agent keeps them (doc/peers.md).
                serving = self.tasks.sourcing.serving(session.region)[:protocol.MAX_ITEMS]
                self.send(session.routing_id, "heartbeat", {"serving": serving} if serving else {})
            at = session.heartbeat_sent + interval
            due = at if due is None or at < due else due
        self._beat_due, self._beat_seen = due, now
