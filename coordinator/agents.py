"""Agent sessions: who is connected, for which region, with which key, with how many free slots.

A session is keyed by the zmq routing id of the agent's DEALER socket and created
by ``hello``; it is also found in O(1) by (region, agent_id) and by the id of each
task it holds.  Nobody evicts a live session: a ``hello`` for a (region, agent_id)
that is online on another connection (another key, or the same key on another
socket) is refused with ``agent_id_in_use``, so a restarted agent gets in once its
old session has gone offline (a ``bye``, or three silent heartbeat intervals) and
two agents configured with one id cannot push each other out in a loop.  Sessions
are bounded per key (``[coordinator] max_sessions_per_key``, CURVE only) and per
region (``max_sessions_per_region``): at a bound the offline session heard from
longest ago is dropped to make room, and with only online ones the ``hello`` is
refused with ``too_many_sessions``.  ``ready`` adds credits (free slots, capped at the announced
capacity); every task handed out spends one.  Any message renews the agent's
liveness and the leases of the tasks it holds.  An agent silent for three heartbeat
intervals goes offline: it gets no work and stays listed for status, and if it
speaks again without a new ``hello`` it is told to ``disconnect`` and say hello again,
so that its credits are counted afresh.

On ``hello`` the attempts the agent runs (``hello.running``; ``in_flight`` ids of an
older agent are taken as current attempts) are reconciled with the journal: one
still the agent's (the current attempt, or an older one while the current attempt
is held by the same agent, see glancesync.protocol's session rules) keeps its
lease; any other is listed in ``Session.stale`` for the service to ``cancel``.
Tasks the journal shows assigned to that agent id but not listed went down with the
agent's previous life: they return to their queue, and that counts as a retry (see
``TaskDesk.requeue_lapsed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.journal import Journal
from glancesync.exceptions import GlanceSyncError, StaleAttempt
from glancesync.liveness import Liveness
from glancesync.states import SyncState

LOG = logging.getLogger(__name__)
# Seconds an offline agent stays listed in status before its session is dropped: long
# enough for an operator to notice it, short enough that restarts of agents with new
# names do not grow the coordinator's memory without bound.
FORGET_AFTER = 24 * 3600
# (retryable, now[, backoff]) -> retry_at(retries) for Journal.fail; backoff=False retries at once.
RetryPolicy = Callable[..., Callable[[int], float | None]]


class SessionRefused(GlanceSyncError):
    """A ``hello`` that may not open a session; ``code`` goes into the error reply."""

    message = "%(code)s: %(reason)s"

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(code=code, reason=reason)


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
    # When the coordinator last sent this agent a heartbeat (0: not yet).
    heartbeat_sent: float = 0.0
    # The CURVE key (z85 public key, the ZAP User-Id) and its file name; None without CURVE.
    key: str | None = None
    key_name: str = ""
    # Attempts the agent said it runs that are no longer its ({task_id, attempt}): to cancel.
    stale: list[dict[str, Any]] = field(default_factory=list)
    # hello.features: what the agent understands beyond version 1 (e.g. task.sources).
    features: frozenset[str] = frozenset()

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
                 retry_policy: RetryPolicy | None = None, max_per_key: int = 16,
                 max_per_region: int = 64) -> None:
        self.journal = journal
        # (retryable, now) -> retry_at(retries); without one, a lost task fails at once.
        self.retry_policy: RetryPolicy = retry_policy or (lambda *_args: lambda _retries: None)
        self.heartbeat_interval = heartbeat_interval
        self.lease_timeout = lease_timeout
        self.max_per_key = max_per_key
        self.max_per_region = max_per_region
        self.sessions: dict[bytes, Session] = {}
        self._by_name: dict[tuple[str, str], Session] = {}
        self._by_task: dict[str, Session] = {}
        self._by_key: dict[str, dict[bytes, Session]] = {}
        self._by_region: dict[str, dict[bytes, Session]] = {}
        self._online: dict[bytes, Session] = {}
        # Offline sessions in the order they went offline, to forget them without a scan.
        self._offline: dict[bytes, Session] = {}
        # Routing ids whose status entry may have changed (heard, credits, tasks, online, added,
        # dropped); the status summary's cache empties it (coordinator/statuscache.py).
        self.touched: set[bytes] = set()
        # No online session falls silent before this time (deadlines only move later, and a new
        # session's lies past it): expire() does not walk 500 sessions at every iteration.
        self._quiet_until = float("-inf")

    def get(self, routing_id: bytes) -> Session | None:
        """The online session of ``routing_id``; None for a stranger or an agent gone offline."""
        session = self.sessions.get(routing_id)
        return session if session is not None and session.online else None

    def regions(self) -> list[str]:
        """The regions that have a session, online or not."""
        return list(self._by_region)

    def in_region(self, region: str) -> list[Session]:
        """The sessions of ``region``, online or not."""
        return list(self._by_region.get(region, {}).values())

    def find(self, region: str, agent_id: str) -> Session | None:
        return self._by_name.get((region, agent_id))

    def holder(self, task_id: str) -> Session | None:
        """The session holding ``task_id``, if any."""
        return self._by_task.get(task_id)

    def hello(self, routing_id: bytes, body: dict[str, Any], now: float, key: str | None = None,
              key_name: str = "") -> Session:
        """A new session, or SessionRefused; it replaces only what is not live elsewhere."""
        agent_id, region = body["agent_id"], body["region"]
        # An agent is (region, agent_id): agent_id is unique within a region only.
        holder = self._by_name.get((region, agent_id))
        if holder is not None and holder.online and holder.routing_id != routing_id:
            on = (f"key {holder.key_name}" if holder.key != key
                  else "another connection" + (" of the same key" if key else ""))
            raise SessionRefused("agent_id_in_use", (
                f"agent {agent_id} of region {region} is online on {on}, last heard "
                f"{max(0.0, now - holder.liveness.last_heard):.1f} s ago; a restarted agent gets in once "
                f"that session is offline (three heartbeat intervals), two agents need two agent_ids"))
        replaced = {s.routing_id: s for s in (self.sessions.get(routing_id), holder) if s is not None}
        victims = self._make_room(replaced, key, key_name, region)
        for old in (*replaced.values(), *victims):
            self._drop(old)
        session = Session(
            routing_id=routing_id, agent_id=agent_id, region=region, capacity=body["capacity"],
            version=body["version"], liveness=Liveness(self.heartbeat_interval), key=key, key_name=key_name,
            features=frozenset(body.get("features") or ()),
        )
        session.liveness.heard(now)
        self._add(session)
        running = body.get("running") or [{"task_id": tid, "attempt": None} for tid in body.get("in_flight") or ()]
        self._adopt_tasks(session, running, now)
        self.renew(session, now, force=True)
        LOG.info("agent %s of region %s connected (capacity %d, %d tasks in flight%s)", agent_id, region,
                 session.capacity, len(session.tasks), f", key {key_name}" if key_name else "")
        return session

    def _make_room(self, replaced: dict[bytes, Session], key: str | None, key_name: str,
                   region: str) -> list[Session]:
        """Offline sessions to drop so the key's and the region's bounds hold; or SessionRefused."""
        victims: dict[bytes, Session] = {}
        groups = [(self._by_region.get(region), self.max_per_region, f"region {region}",
                   "max_sessions_per_region")]
        if key is not None:
            groups.append((self._by_key.get(key), self.max_per_key, f"key {key_name}", "max_sessions_per_key"))
        for group, bound, what, option in groups:
            if group is None or len(group) < bound:
                continue
            # A group holds at most ``bound`` sessions: this look is O(bound), not O(sessions).
            members = [s for rid, s in group.items() if rid not in replaced and rid not in victims]
            if len(members) < bound:
                continue
            offline = [s for s in members if not s.online]
            if not offline:
                raise SessionRefused("too_many_sessions", (
                    f"{what} already has {bound} agents online ([coordinator] {option})"))
            oldest = min(offline, key=lambda s: s.liveness.last_heard)
            victims[oldest.routing_id] = oldest
        return list(victims.values())

    def _adopt_tasks(self, session: Session, running: list[dict[str, Any]], now: float) -> None:
        """Keep the agent's attempts that are still its own, mark the others stale, requeue the lost."""
        agent_id, region = session.agent_id, session.region
        kept: set[str] = set()
        for ref in running:
            task = self.journal.task(ref["task_id"])
            attempt = ref["attempt"]
            if (task is not None and task.agent_id == agent_id and task.region == region
                    and task.state in (SyncState.ASSIGNED, SyncState.TRANSFERRING)
                    and (attempt is None or attempt <= task.attempt)):
                kept.add(task.task_id)
                self._hold(session, task.task_id)
            elif attempt is not None:
                session.stale.append({"task_id": ref["task_id"], "attempt": attempt})
        for task in self.journal.agent_tasks(agent_id, region):
            if task.task_id in kept:
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

    def _add(self, session: Session) -> None:
        rid = session.routing_id
        self.sessions[rid] = session
        self._by_name[(session.region, session.agent_id)] = session
        self._by_region.setdefault(session.region, {})[rid] = session
        if session.key is not None:
            self._by_key.setdefault(session.key, {})[rid] = session
        self._online[rid] = session
        self.touched.add(rid)
        self._quiet_until = min(self._quiet_until, session.liveness.deadline())

    def _drop(self, session: Session) -> None:
        rid = session.routing_id
        if self.sessions.get(rid) is not session:
            return
        del self.sessions[rid]
        self.touched.add(rid)
        if self._by_name.get((session.region, session.agent_id)) is session:
            del self._by_name[(session.region, session.agent_id)]
        for index, group_key in ((self._by_region, session.region), (self._by_key, session.key)):
            group = index.get(group_key) if group_key is not None else None
            if group is not None:
                group.pop(rid, None)
                if not group:
                    del index[group_key]
        self._online.pop(rid, None)
        self._offline.pop(rid, None)
        for task_id in session.tasks:
            if self._by_task.get(task_id) is session:
                del self._by_task[task_id]

    def _hold(self, session: Session, task_id: str) -> None:
        former = self._by_task.get(task_id)
        if former is not None and former is not session:
            former.tasks.discard(task_id)
            self.touched.add(former.routing_id)
        session.tasks.add(task_id)
        self.touched.add(session.routing_id)
        self._by_task[task_id] = session

    def heard(self, session: Session, now: float) -> None:
        session.liveness.heard(now)
        self.touched.add(session.routing_id)
        self._quiet_until = min(self._quiet_until, session.liveness.deadline())  # a clock gone back
        self.renew(session, now)

    def renew(self, session: Session, now: float, force: bool = False) -> None:
        """Extend the leases of the agent's tasks; at most once per heartbeat interval."""
        if not session.tasks or (not force and now - session.leases_renewed_at < self.heartbeat_interval):
            return
        self.journal.renew_leases(session.agent_id, session.tasks, now + self.lease_timeout)
        session.leases_renewed_at = now

    def ready(self, session: Session, credits: int) -> None:
        session.credits = min(session.capacity, session.credits + credits)
        self.touched.add(session.routing_id)

    def took(self, session: Session, task_id: str) -> None:
        session.credits -= 1
        self._hold(session, task_id)  # touches it

    def released(self, task_id: str) -> None:
        """A task is no longer with any agent (finished, failed or requeued)."""
        session = self._by_task.pop(task_id, None)
        if session is not None:
            session.tasks.discard(task_id)
            self.touched.add(session.routing_id)

    def offline(self, session: Session) -> None:
        """No more work for ``session`` (silent, said bye, or its key was revoked); listed still."""
        if not session.online:
            return
        session.online = False
        session.credits = 0
        self.touched.add(session.routing_id)
        self._online.pop(session.routing_id, None)
        self._offline[session.routing_id] = session

    def revoke(self, admitted: Callable[[str, str], bool]) -> list[Session]:
        """Take offline every session whose key ``admitted(key, region)`` no longer allows."""
        gone = [s for key, group in self._by_key.items() for s in group.values()
                if s.online and not admitted(key, s.region)]
        for session in gone:
            self.offline(session)
            LOG.warning("agent %s of region %s is offline: its key %s is no longer admitted for it",
                        session.agent_id, session.region, session.key_name)
        return gone

    def expire(self, now: float) -> list[Session]:
        """Mark silent agents offline; returns the ones that just went.

        Offline sessions stay listed for status, but not for ever: agents named after a
        container's random hostname never come back under the same name.
        """
        while self._offline:
            session = next(iter(self._offline.values()))
            if now - session.liveness.last_heard <= FORGET_AFTER:
                break
            self._drop(session)
            LOG.info("agent %s of region %s forgotten: offline for over %d s", session.agent_id,
                         session.region, FORGET_AFTER)
        if now <= self._quiet_until:
            return []
        gone = [s for s in self._online.values() if s.liveness.expired(now)]
        for session in gone:
            self.offline(session)
            LOG.warning("agent %s of region %s is offline: silent since %.1f s",
                        session.agent_id, session.region, now - session.liveness.last_heard)
        self._quiet_until = min((s.liveness.deadline() for s in self._online.values()), default=float("inf"))
        return gone

    def online(self) -> list[Session]:
        return list(self._online.values())

    def by_region(self) -> dict[str, list[Session]]:
        return {region: list(group.values()) for region, group in self._by_region.items()}
