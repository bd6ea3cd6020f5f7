"""The task desk: hands tasks to agents and applies what agents and the glance pool report.

Every report names a task and an attempt; the journal accepts it only while that
attempt is current (compare-and-set), so a late ``done`` of an attempt whose lease
lapsed, or a duplicate report, raises ``StaleAttempt`` and is dropped with a log line.
One exception, a session rule of glancesync.protocol: a ``done`` or ``progress`` of
an older attempt counts for the current one when the same agent holds it (an agent
runs one worker per task).  ``done`` and ``failed`` return whether the report is
settled (journaled or stale), i.e. whether the agent may forget it (``result_ack``).

Lifecycle of a handed-out task::

    pending --task--> assigned --ack--> transferring --done--> registering --(pool)--> synced
                                     \\--failed / lease lapsed / agent lost it--> pending (retry) | failed

Update tasks are synced at ``done`` (when the region holds a registered copy, else
the region fails: see doc/states.md); delete tasks finish (deleted) once the pool has
removed the region's location from the cascading image.

A registration (or location removal) that fails for a reason that may pass, such as
the cascading glance-api restarting, keeps the verified regional copy and is retried
on its own backoff (``registration_retry_backoff`` doubling up to
``max_registration_retry_backoff``) for ``registration_retry_horizon`` seconds from its
first failure; it does not use the task's ``task_retry_times``.  Only a verification
that finds the copy missing sends the task back to transfer, and only a non-retryable
failure (other bytes, the cascading image gone) or the horizon ends it ``failed``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator.agents import Agents, RetryPolicy, Session
from coordinator.journal import Journal, TaskRow
from coordinator.rates import Rates
from coordinator.registrar import Registrar, TaskResult
from coordinator.sources import Sourcing, source_name, wire_sources
from coordinator.taskreports import ReportsMixin
from glancesync.exceptions import JournalError, ProtocolError, StaleAttempt
from glancesync.liveness import retry_delay
from glancesync.protocol import FEATURE_SOURCES
from glancesync.states import SyncState

LOG = logging.getLogger(__name__)
# Sends one message to an agent; False when it could not be handed to the socket.
Send = Callable[[bytes, str, dict[str, Any]], bool]


@dataclass(frozen=True)
class RegistrationRetry:
    """The registration's own backoff and horizon ([coordinator] registration_retry_*)."""

    backoff: float = 5.0
    max_backoff: float = 3600.0
    horizon: float = 86400.0
    # Told when each retry is due (the loop's ChangeGate.wake_at): submitted when its backoff
    # ends, not at the gate's next recheck.
    wake: Callable[[float], None] = lambda _when: None

    def due(self, retries: int, failing_since: float | None, now: float) -> float | None:
        """When to try again after failure number ``retries + 1``; None once past the horizon."""
        if now - (now if failing_since is None else failing_since) >= self.horizon:
            return None
        when = now + retry_delay(retries + 1, self.backoff, self.max_backoff)
        self.wake(when)
        return when


class TaskDesk(ReportsMixin):
    def __init__(self, journal: Journal, agents: Agents, registrar: Registrar, retry_policy: RetryPolicy,
                 registration_retry: RegistrationRetry | None = None, sourcing: Sourcing | None = None) -> None:
        self.journal = journal
        self.agents = agents
        self.registrar = registrar
        self.retry_policy = retry_policy
        self.registration_retry = registration_retry or RegistrationRetry()
        # Tasks whose registration is in the glance pool now (not to be submitted twice).
        self.registering: set[str] = set()
        # Failed attempts since start by (region, failure kind), read by coordinator/metrics.py.
        self.failures: Counter[tuple[str, str]] = Counter()
        # Phase, rate and ETA of running transfers, from their progress reports (status only).
        self.rates = Rates()
        # Which source each copy fetches from: the image's distribution tree (coordinator/sources.py).
        self.sourcing = sourcing or Sourcing(0, ())
        # The order of sources chosen for the copies being handed out now.
        self._routes: dict[str, list[str | None]] = {}
        # Tasks assigned in the open batch (assign_due) and how to send them once it commits.
        self._assigned: list[tuple[Session, TaskRow]] = []
        self._send: Send = lambda *_args: False
        self._init_reports()

    # -- hand-out -----------------------------------------------------------------------

    def dispatch(self, session: Session, now: float, send: Send) -> int:
        """Give ``session`` up to its credits of due tasks of its region; returns how many."""
        return self.dispatch_all([session], now, send)

    def dispatch_all(self, sessions: list[Session], now: float, send: Send) -> int:
        """Give every session with credits due tasks of its region: one query, one commit, then the sends.

        A task is sent only once its assignment is committed, so an agent never runs
        an attempt the journal does not know.
        """
        with self.journal.batch():
            self.assign_due(sessions, now, send)
        return self.send_assigned(now)

    def assign_due(self, sessions: list[Session], now: float, send: Send) -> None:
        """Assign due tasks to the sessions with credits (one query), in the open batch if any.

        ``send_assigned`` sends them once that batch committed; ``withdraw`` forgets them
        when it rolled back.
        """
        assigned = []
        try:
            with self.journal.batch():
                picked = self._pick(sessions, now)
                expires = now + self.agents.lease_timeout
                outcomes = self.journal.assign_many([(task, s.agent_id, expires) for s, task in picked], now)
                for (session, pending), outcome in zip(picked, outcomes, strict=True):
                    if isinstance(outcome, JournalError):
                        raise outcome
                    if isinstance(outcome, StaleAttempt):
                        self._unroute(pending.task_id)
                        continue
                    assigned.append((session, outcome))
        except JournalError as exc:
            LOG.error("tasks not handed out this time: %s", exc)
            self.withdraw()
            return
        self._assigned, self._send = assigned, send

    def withdraw(self) -> None:
        """Forget the hand-outs that will not be sent (their batch rolled back) and the sources chosen."""
        self._assigned = []
        list(map(self._unroute, list(self._routes)))

    def send_assigned(self, now: float) -> int:
        """Send the assignments of ``assign_due``, now committed; returns how many went out."""
        assigned, send, self._assigned = self._assigned, self._send, []
        given, back = 0, []
        by_agent: dict[str, list[str]] = {}
        for session, task in assigned:
            if self._send_task(session, task, send, back):
                given += 1
                by_agent.setdefault(session.agent_id, []).append(f"{task.task_id}/{task.attempt}")
        for agent_id, refs in by_agent.items():  # one line per agent, not per task (doc/control-plane.md)
            LOG.info("agent %s given %d task(s): %s", agent_id, len(refs), " ".join(refs))
        if back:
            self._take_back(back, now)
        self._routes.clear()
        return given

    def _unroute(self, task_id: str) -> None:
        self._routes.pop(task_id, None)
        self.sourcing.drop(task_id)

    def _route(self, session: Session, task: TaskRow, now: float, online: set[str]) -> bool:
        """Choose a copy's sources (kept for its send) among ``online`` regions; False: all busy, it waits."""
        source = task.payload.get("source")
        if task.kind != "copy" or not isinstance(source, dict) or source.get("region") is not None:
            return True  # a snapshot's copy reads from the region that made it, not along the tree
        ready, soon = ([r for r in found if r in online]
                       for found in self.sourcing.holders(task.image_id, now, self.journal.cache_holders))
        order = self.sourcing.choose(task.task_id, task.image_id, task.region, ready,
                                     FEATURE_SOURCES in session.features, retried=task.retries > 0, soon=soon,
                                     features=session.features)
        if order is not None:
            self._routes[task.task_id] = order
        return order is not None

    def _pick(self, sessions: list[Session], now: float) -> list[tuple[Session, TaskRow]]:
        """Due tasks for the sessions' credits, spread over each region's sessions in turn.

        A copy whose image's sources are all at their fanout is left pending (it
        takes no credit): it goes once a source is free or a region holds a copy.
        """
        self.sourcing.prune(lambda task_id: self.agents.holder(task_id) is not None, now)
        by_region: dict[str, list[Session]] = {}
        for session in sessions:
            if session.credits > 0 and session.online:
                by_region.setdefault(session.region, []).append(session)
        # Copies may wait for a source: look further down each queue than the credits reach.
        wants = {region: sum(s.credits for s in group) * self.sourcing.lookahead for region, group in by_region.items()}
        picked = []
        online = {s.region for s in self.agents.online()}  # once per pick, not once per copy
        for region, pending in self.journal.dispatchable_by_region(wants, now).items():
            left = {s.routing_id: s.credits for s in by_region[region]}
            turn = 0
            for task in pending:
                group = [s for s in by_region[region] if left[s.routing_id] > 0]
                if not group:
                    break
                session = group[turn % len(group)]
                if not self._route(session, task, now, online):
                    continue
                turn += 1
                left[session.routing_id] -= 1
                picked.append((session, task))
        return picked

    def _send_task(self, session: Session, task: TaskRow, send: Send, back: list[tuple[TaskRow, str | None]]) -> bool:
        order = self._routes.get(task.task_id)
        if not session.online:  # its connection went while earlier tasks were sent
            self._unroute(task.task_id)
            back.append((task, None))
            return False
        if "image" not in task.payload:  # its event's row is gone (journal/images.py): nothing to send
            self._unroute(task.task_id)
            back.append((task, "the image record of this task is no longer in the journal"))
            return False
        body = {"task_id": task.task_id, "attempt": task.attempt, "kind": task.kind,
                "image_id": task.image_id, "region": task.region, "image": task.payload["image"],
                "source": task.payload.get("source"), "members": task.payload.get("members")}
        if order is not None and FEATURE_SOURCES in session.features:
            body["sources"] = wire_sources(order, task.payload["source"])
        try:
            sent = send(session.routing_id, "task", body)
        except ProtocolError as exc:
            LOG.error("task %s cannot be sent: %s", task.task_id, exc)
            self._unroute(task.task_id)
            back.append((task, f"task cannot be sent: {exc}"))
            return False
        if not sent:
            # The agent is gone (or its queue is full): nobody got the task, no retry burnt.
            self._unroute(task.task_id)
            back.append((task, None))
            return False
        self.agents.took(session, task.task_id)
        LOG.debug("task %s (%s %s -> %s) attempt %d given to agent %s%s", task.task_id, task.kind,
                 task.image_id, task.region, task.attempt, session.agent_id,
                 f", sources {', '.join(source_name(name) for name in order)}" if order is not None else "")
        return True

    def _take_back(self, back: list[tuple[TaskRow, str | None]], now: float) -> None:
        """Tasks assigned but not sent: requeued without a retry, or failed when they cannot be encoded."""
        try:
            with self.journal.batch():
                for task, error in back:
                    try:
                        if error is None:
                            self.journal.requeue(task.task_id, task.attempt, now,
                                                 f"agent {task.agent_id} could not be reached")
                        else:
                            self.journal.fail(task.task_id, task.attempt, error, now, lambda _retries: None)
                    except StaleAttempt:
                        continue
        except JournalError as exc:  # their leases lapse and requeue them
            LOG.error("%d task(s) not sent stay assigned until their lease lapses: %s", len(back), exc)

    # -- the glance pool ------------------------------------------------------------------

    def register(self, task: TaskRow) -> None:
        """Verification and registration (copy) or location removal (delete), in the pool."""
        self.registering.add(task.task_id)
        if task.kind == "delete":
            self.registrar.unregister(task)
        else:
            self.registrar.register(task)

    def retry_registrations(self, now: float) -> None:
        """Submit the registrations whose backoff is over (and any a restart left unfinished)."""
        for task in self.journal.registrations_due(now, skip=self.registering):
            if task.register_retries:
                LOG.info("task %s of %s: registration try %d", task.task_id, task.image_id,
                         task.register_retries + 1)
            self.register(task)

    def registered(self, result: TaskResult, now: float) -> None:
        """Apply a registration's result; a JournalError leaves it in flight for the caller to retry.

        A success is queued and journaled with the others of the iteration (``apply_reports``).
        """
        if result.ok:
            self._finished.append(result)
            return
        try:
            if result.retryable and not result.redo_transfer:
                self._retry_registration(result, now)
            else:
                self._fail(result.task_id, result.attempt, result.reason, result.retryable, now)
        except StaleAttempt:
            LOG.info("registration result of task %s attempt %d ignored: no longer current",
                     result.task_id, result.attempt)
        self.registering.discard(result.task_id)

    def _retry_registration(self, result: TaskResult, now: float) -> None:
        """Keep the copy and try the registration again later, or fail once past the horizon."""
        task = self.journal.task(result.task_id)
        if task is None or task.attempt != result.attempt or task.state != SyncState.REGISTERING:
            raise StaleAttempt(task_id=result.task_id, attempt=result.attempt)
        due = self.registration_retry.due(task.register_retries, task.register_failing_since, now)
        if due is None:
            reason = (f"registration failed for {self.registration_retry.horizon:g} s "
                      f"(registration_retry_horizon): {result.reason}")
            self.journal.fail(result.task_id, result.attempt, reason, now, lambda _retries: None)
            self._count_failure(task.task_id, reason, task.region)
            LOG.error("task %s failed for good: %s", result.task_id, reason)
            return
        self.journal.defer_registration(result.task_id, result.attempt, result.reason, now, due)
        self._count_failure(task.task_id, f"registration: {result.reason}", task.region)
        LOG.warning("task %s: registration failed, copy kept, next try in %.1f s: %s", result.task_id,
                    due - now, result.reason)

    # -- leases ----------------------------------------------------------------------------

    def requeue_lapsed(self, now: float) -> None:
        """Tasks whose lease lapsed go back to their queue; each lapse counts as a retry.

        A task that kills its agent on every attempt (a poison image that crashes the
        worker host) would otherwise be handed out forever: after ``task_retry_times``
        lapses it ends ``failed`` with the reason in ``last_error``.  No backoff: the
        lapse itself already took ``lease_timeout``.
        """
        for task in self.journal.lapsed(now):
            reason = (f"lease of agent {task.agent_id} lapsed on attempt {task.attempt} "
                      "(the agent died or went silent while running it)")
            try:
                self._fail(task.task_id, task.attempt, reason, True, now, backoff=False, region=task.region)
            except StaleAttempt:
                continue
            self.agents.released(task.task_id)
