"""The task desk's side of agent reports: each checked against the current attempt, applied per kind.

``ack`` and ``done`` (and the registrations the glance pool finished, ``registered``)
are queued as they arrive and applied together by ``apply_reports``, once per loop
iteration inside its batch: one journal call per kind (``Journal.ack_many``,
``done_many``, ``finish_many``: a statement per table, not per report), acks before
dones, so a ``done`` sees the ``ack`` of the same iteration; the current ``ack`` of an
attempt whose ``done`` came in the same iteration is written with that ``done``.  Any other report
(``failed``, ``bye``'s hand-back, a refused frame) or a ``hello`` applies the queue
first, so a task's reports keep their order.  A ``done`` is answered (``settled``,
then ``result_ack`` after the commit) only once journaled or found stale.

Every report names a task and an attempt; the journal accepts it only while that
attempt is current (compare-and-set), so a late ``done`` of an attempt whose lease
lapsed, or a duplicate report, is dropped with a log line.  One exception, a session
rule of glancesync.protocol: a ``done`` or ``progress`` of an older attempt counts for
the current one when the same agent holds it (an agent runs one worker per task).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coordinator.agents import Session
from glancesync.exceptions import GlanceSyncError, JournalError, StaleAttempt
from glancesync.metrics import failure_kind
from glancesync.states import SyncState

if TYPE_CHECKING:
    from coordinator.registrar import TaskResult

LOG = logging.getLogger(__name__)
_HELD = (SyncState.ASSIGNED, SyncState.TRANSFERRING)
# Called once a done is journaled or found stale: the agent may forget it.
Settled = Callable[[], None]


class ReportsMixin:
    """Agent reports of ``TaskDesk`` (coordinator/tasks.py), on its journal, agents and pool."""

    def _init_reports(self) -> None:
        # Reports of this iteration not applied yet: (kind, session, body, settled), in arrival order.
        self._queued: list[tuple[str, Session, dict[str, Any], Settled | None]] = []
        self._finished: list[TaskResult] = []

    def _stale(self, what: str, body: dict[str, Any], session: Session | None = None) -> None:
        who = f" from agent {session.agent_id}" if session else ""
        LOG.info("ignored %s%s for task %s attempt %s: not the current attempt",
                 what, who, body.get("task_id"), body.get("attempt"))

    def _attempt(self, session: Session, body: dict[str, Any], older: bool = False) -> int:
        """The current attempt ``body`` reports on for ``session``, or StaleAttempt.

        ``older``: a report of an older attempt counts for the current one when this
        agent holds it (one worker per task: it is the same worker's).
        """
        task = self.journal.held_task(body["task_id"])
        if task is not None and task.agent_id == session.agent_id and task.region == session.region:
            if task.attempt == body["attempt"]:
                return task.attempt
            if older and body["attempt"] < task.attempt and task.state in _HELD:
                LOG.info("task %s: report of attempt %d from agent %s counts for attempt %d, which it holds",
                         task.task_id, body["attempt"], session.agent_id, task.attempt)
                return task.attempt
        raise StaleAttempt(task_id=body["task_id"], attempt=body["attempt"])

    # -- queued: applied per kind --------------------------------------------------------

    def ack(self, session: Session, body: dict[str, Any], now: float) -> None:
        self._queued.append(("ack", session, body, None))

    def done(self, session: Session, body: dict[str, Any], now: float, settled: Settled) -> None:
        """Queue a ``done``; ``settled()`` once it is journaled (or stale) in ``apply_reports``."""
        self._queued.append(("done", session, body, settled))

    def apply_reports(self, now: float) -> None:
        """Apply the queued acks, then dones, then finished registrations: one journal call per kind."""
        queued, self._queued = self._queued, []
        finished, self._finished = self._finished, []
        acks = [(s, b) for kind, s, b, _ in queued if kind == "ack"]
        dones = [(s, b, settled) for kind, s, b, settled in queued if kind == "done"]
        folded = self._folded_acks(acks, dones)
        started = {key[0] for key in folded}
        acks = [(s, b) for s, b in acks if (b["task_id"], b["attempt"], s.routing_id) not in folded]
        if acks:
            self._apply(acks, "ack", lambda items: self.journal.ack_many(items, now), self._acked)
        if dones:
            self._apply(dones, "done", lambda items: self.journal.done_many(
                [(task_id, attempt, {**body, "attempt": attempt}) for task_id, attempt, body in items], now,
                started=started), self._was_done)
        if finished:
            self._apply_finished(finished, now)

    def _folded_acks(self, acks: list[tuple[Session, dict[str, Any]]],
                     dones: list[tuple[Session, dict[str, Any], Settled | None]]) -> set[tuple[str, int, bytes]]:
        """(task_id, attempt, session) of each current ``ack`` that came with the ``done`` of that attempt.

        An agent that finishes quickly sends both at once.  The ``done`` alone is written,
        with the ack's ``started_at`` (journal ``done_many(started=...)``): one change per
        table for the task instead of two.  A stale ack is never folded: it is logged as before.
        """
        done_by = {(b["task_id"], b["attempt"], s.routing_id) for s, b, _ in dones}
        folded = set()
        for session, body in acks:
            if (body["task_id"], body["attempt"], session.routing_id) not in done_by:
                continue
            try:
                self._attempt(session, body)
            except StaleAttempt:
                continue
            folded.add((body["task_id"], body["attempt"], session.routing_id))
        return folded

    def _apply(self, reports: list[tuple[Any, ...]], what: str, write: Callable[[list[Any]], list[Any]],
               applied: Callable[[tuple[Any, ...], Any], None]) -> None:
        """Check each report's attempt, write the current ones with one call, then ``applied`` each."""
        current, items = [], []
        for report in reports:
            session, body = report[0], report[1]
            try:
                attempt = self._attempt(session, body, older=what == "done")
            except StaleAttempt:
                self._stale(what, body, session)
                if what == "done":
                    report[2]()  # stale: the agent may forget it
                continue
            current.append(report)
            items.append((body["task_id"], attempt, body) if what == "done" else (body["task_id"], attempt))
        if not items:
            return
        try:
            outcomes = write(items)
        except JournalError as exc:  # the batch rolls back: none of them is acknowledged
            outcomes = [exc] * len(items)
        for report, outcome in zip(current, outcomes, strict=True):
            if isinstance(outcome, StaleAttempt):
                self._stale(what, report[1], report[0])
                if what == "done":
                    report[2]()
            elif isinstance(outcome, GlanceSyncError):
                self._lost_report(what, report[1], outcome)
            else:
                applied(report, outcome)

    def _acked(self, report: tuple[Any, ...], _task: Any) -> None:
        """Nothing more: the lease and the rows in memory moved with the journal."""

    def _was_done(self, report: tuple[Any, ...], task: Any) -> None:
        session, _body, settled = report
        self.agents.released(task.task_id)
        LOG.debug("task %s (%s %s -> %s) done by agent %s", task.task_id, task.kind, task.image_id,
                  task.region, session.agent_id)
        if task.state == SyncState.REGISTERING:
            self.register(task)
        settled()

    def _apply_finished(self, finished: list[TaskResult], now: float) -> None:
        try:
            outcomes: list[Any] = self.journal.finish_many(
                [(r.task_id, r.attempt, r.os_hash_value) for r in finished], now)
        except JournalError as exc:
            # Rolled back with the batch: the tasks stay registering, due at once, and their
            # registration runs again (retry_registrations; an added location is found there).
            LOG.error("%d registration(s) not journaled, done again: %s", len(finished), exc)
            outcomes = [None] * len(finished)
        for result, outcome in zip(finished, outcomes, strict=True):
            if isinstance(outcome, StaleAttempt):
                LOG.info("registration result of task %s attempt %d ignored: no longer current",
                         result.task_id, result.attempt)
            elif isinstance(outcome, GlanceSyncError):
                LOG.error("registration of task %s not journaled, done again: %s", result.task_id, outcome)
            else:
                LOG.debug("task %s complete", result.task_id)
            self.registering.discard(result.task_id)
        LOG.info("%d registration(s) applied", len(finished))

    # -- applied at once -------------------------------------------------------------------

    def progress(self, session: Session, body: dict[str, Any], now: float) -> None:
        try:
            attempt = self._attempt(session, body, older=True)
            self.journal.progress(body["task_id"], attempt, body["bytes_done"], body["bytes_total"], now)
            self.rates.record(body["task_id"], attempt, body.get("phase"), body["bytes_done"], body["bytes_total"],
                              now)
        except StaleAttempt:
            self._stale("progress", body, session)
        except JournalError as exc:  # progress is a hint: the next one, or done, brings it up to date
            LOG.warning("progress of task %s not journaled: %s", body["task_id"], exc)

    def _lost_report(self, what: str, body: dict[str, Any], exc: GlanceSyncError) -> None:
        # Not acked: the agent sends it again. Stop renewing the lease meanwhile, so the
        # task is redone if the journal stays unable to take it.
        LOG.error("%s of task %s attempt %s not journaled (%s); not acked, the agent sends it again",
                  what, body["task_id"], body["attempt"], exc)
        self.agents.released(body["task_id"])

    def failed(self, session: Session, body: dict[str, Any], now: float) -> bool:
        self.apply_reports(now)
        try:
            self._fail(body["task_id"], self._attempt(session, body), body["reason"], body["retryable"], now,
                       region=session.region)
        except StaleAttempt:
            self._stale("failed", body, session)
            return True
        except JournalError as exc:
            self._lost_report("failed", body, exc)
            return False
        self.agents.released(body["task_id"])
        return True

    def handed_back(self, session: Session, refs: list[dict[str, Any]], now: float) -> None:
        """A stopping agent gives these attempts back unfinished: requeued, no retry counted."""
        self.apply_reports(now)
        for ref in refs:
            try:
                attempt = self._attempt(session, ref)
                self.journal.requeue(ref["task_id"], attempt, now, f"handed back by agent {session.agent_id}")
            except StaleAttempt:
                continue
            self.agents.released(ref["task_id"])
            LOG.info("task %s attempt %d handed back by agent %s: back in the queue", ref["task_id"], attempt,
                     session.agent_id)

    def refused(self, session: Session, ref: dict[str, Any], reason: str, now: float) -> bool:
        """A ``done`` or ``failed`` of ``ref`` that broke the protocol: that attempt failed.

        The agent has finished with the task and will not report it again; without
        this the task would stay handed out, its lease renewed by every heartbeat.
        """
        return self.failed(session, {**ref, "reason": reason, "retryable": True}, now)

    def _fail(self, task_id: str, attempt: int, reason: str, retryable: bool, now: float,
              backoff: bool = True, region: str | None = None) -> None:
        state = self.journal.fail(task_id, attempt, reason, now, self.retry_policy(retryable, now, backoff))
        self._count_failure(task_id, reason, region)
        if state == SyncState.FAILED:
            LOG.error("task %s failed for good: %s", task_id, reason)
        else:
            LOG.warning("task %s attempt %d failed, will retry: %s", task_id, attempt, reason)

    def _count_failure(self, task_id: str, reason: str, region: str | None) -> None:
        if region is None:  # a registration's result names no region: rare enough to look it up
            try:
                task = self.journal.task(task_id)
            except JournalError:  # the failure is journaled: a metric must not undo its handling
                task = None
            region = task.region if task is not None else "?"
        self.failures[region, failure_kind(reason)] += 1
