"""Agent sessions: who is connected, for which region, with how many free slots.

A session is keyed by the zmq routing id of the agent's DEALER socket and created
by ``hello``.  ``ready`` adds credits (free slots, capped at the announced
capacity); every task handed out spends one.  Any message renews the agent's
liveness and the leases of the tasks it holds.  An agent silent for three heartbeat
intervals goes offline: it gets no work and stays listed for status, and if it
speaks again without a new ``hello`` it is told to ``disconnect`` and say hello again,
so that its credits are counted afresh.

On ``hello``, tasks the journal shows assigned to that agent id but missing from
``hello.in_flight`` went down with the agent's previous life: they return to their
queue, and that counts as a retry (see ``TaskDesk.requeue_lapsed``).  Those still in
flight keep their lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.journal import Journal
from glancesync.exceptions import StaleAttempt
from glancesync.liveness import Liveness
from glancesync.states import SyncState

LOG = logging.getLogger(__name__)
# Seconds an offline agent stays listed in status before its session is dropped: long
# enough for an operator to notice it, short enough that restarts of agents with new
# names do not grow the coordinator's memory without bound.
FORGET_AFTER = 24 * 3600
# (retryable, now[, backoff]) -> retry_at(retries) for Journal.fail; backoff=False retries at once.
RetryPolicy = Callable[..., Callable[[int], float | None]]


@dataclass
class Session:
    routing_id: bytes
    agent_id: str
    region: str
    capacity: int
    version: str
    liveness: Liveness
    credits: int = 0
    tasks: set[str] = field(default_factory=set)
    online: bool = True
    leases_renewed_at: float = 0.0

    def status(self) -> dict[str, Any]:
        """The agent entry of the status summary."""
        return {
            "agent_id": self.agent_id,
            "online": self.online,
            "last_heartbeat": self.liveness.last_heard,
            "capacity": self.capacity,
            "credits": self.credits,
            "tasks": sorted(self.tasks),
        }


class Agents:
    """Every agent session, online or not; the journal holds the tasks, this holds the peers."""

    def __init__(self, journal: Journal, heartbeat_interval: float, lease_timeout: float,
                 retry_policy: RetryPolicy | None = None) -> None:
        self.journal = journal
        # (retryable, now) -> retry_at(retries); without one, a lost task fails at once.
        self.retry_policy: RetryPolicy = retry_policy or (lambda *_args: lambda _retries: None)
        self.heartbeat_interval = heartbeat_interval
        self.lease_timeout = lease_timeout
        self.sessions: dict[bytes, Session] = {}

    def get(self, routing_id: bytes) -> Session | None:
        """The online session of ``routing_id``; None for a stranger or an agent gone offline."""
        session = self.sessions.get(routing_id)
        return session if session is not None and session.online else None

    def hello(self, routing_id: bytes, body: dict[str, Any], now: float) -> Session:
        """A new session; it replaces any older session of the same agent id."""
        agent_id, region = body["agent_id"], body["region"]
        # An agent is (region, agent_id): agent_id is unique within a region only.
        for old_id, old in list(self.sessions.items()):
            if (old.agent_id, old.region) == (agent_id, region) or old_id == routing_id:
                del self.sessions[old_id]
        session = Session(
            routing_id=routing_id, agent_id=agent_id, region=body["region"], capacity=body["capacity"],
            version=body["version"], liveness=Liveness(self.heartbeat_interval),
        )
        session.liveness.heard(now)
        self.sessions[routing_id] = session
        in_flight = set(body.get("in_flight") or ())
        for task in self.journal.agent_tasks(agent_id, region):
            if task.task_id in in_flight:
                session.tasks.add(task.task_id)
                continue
            # Lost with the agent's previous life: counts as a retry, like a lapsed lease,
            # so a task that crashes its agent every time ends failed instead of looping.
            reason = f"agent {agent_id} restarted without it on attempt {task.attempt}"
            try:
                state = self.journal.fail(task.task_id, task.attempt, reason, now, self.retry_policy(True, now, False))
                LOG.warning("task %s of %s (%s): agent %s no longer runs it; %s", task.task_id, task.image_id,
                            task.region, agent_id, "failed for good" if state == SyncState.FAILED
                            else "back in the queue")
            except StaleAttempt:
                pass
        self.renew(session, now, force=True)
        LOG.info("agent %s of region %s connected (capacity %d, %d tasks in flight)",
                 agent_id, session.region, session.capacity, len(session.tasks))
        return session

    def heard(self, session: Session, now: float) -> None:
        session.liveness.heard(now)
        self.renew(session, now)

    def renew(self, session: Session, now: float, force: bool = False) -> None:
        """Extend the leases of the agent's tasks; at most once per heartbeat interval."""
        if not session.tasks or (not force and now - session.leases_renewed_at < self.heartbeat_interval):
            return
        self.journal.renew_leases(session.agent_id, session.tasks, now + self.lease_timeout)
        session.leases_renewed_at = now

    def ready(self, session: Session, credits: int) -> None:
        session.credits = min(session.capacity, session.credits + credits)

    def took(self, session: Session, task_id: str) -> None:
        session.credits -= 1
        session.tasks.add(task_id)

    def released(self, task_id: str) -> None:
        """A task is no longer with any agent (finished, failed or requeued)."""
        for session in self.sessions.values():
            session.tasks.discard(task_id)

    def expire(self, now: float) -> list[Session]:
        """Mark silent agents offline; returns the ones that just went.

        Offline sessions stay listed for status, but not for ever: agents named after a
        container's random hostname never come back under the same name.
        """
        gone = []
        for routing_id, session in list(self.sessions.items()):
            if not session.online and now - session.liveness.last_heard > FORGET_AFTER:
                del self.sessions[routing_id]
                LOG.info("agent %s of region %s forgotten: offline for over %d s", session.agent_id,
                         session.region, FORGET_AFTER)
                continue
            if session.online and session.liveness.expired(now):
                session.online = False
                session.credits = 0
                gone.append(session)
                LOG.warning("agent %s of region %s is offline: silent since %.1f s",
                            session.agent_id, session.region, now - session.liveness.last_heard)
        return gone

    def online(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.online]

    def by_region(self) -> dict[str, list[Session]]:
        regions: dict[str, list[Session]] = {}
        for session in self.sessions.values():
            regions.setdefault(session.region, []).append(session)
        return regions
