"""The journal: the coordinator's only source of truth, and the only module that speaks SQL.

Everything the coordinator promises is written here first: an event is acked only
after its row is committed, a task exists only as a row, and every state change is a
compare-and-set (``UPDATE ... WHERE state = :expected``) checked against
``glancesync.states.can_move``.  A change that finds another state than expected
raises ``StaleAttempt`` and its transaction rolls back, so a late report of an old
attempt can never overwrite newer work.

Tasks of one (image, region) run one at a time in ``seq`` order; ``image_regions``
follows the task that currently drives it (``image_regions.task_id``).

On PostgreSQL and MariaDB the same holds through the server's own durability
(doc/database.md).  SQLite runs in WAL mode with ``synchronous=FULL``: every commit fsyncs the WAL, so
a committed row survives kill -9 and also a power cut.  NORMAL would survive only
the kill, and an ack tells the sender it may forget the event, so the stronger
promise is kept; the coordinator's loop pays it once per iteration, not once per
message, by running each iteration's calls in one ``batch`` (each call a savepoint)
and acknowledging only after its commit (doc/control-plane.md).

Three tables live in memory, read from the journal once and changed only when the
write that changes them commits (``on_commit``): the lease heap (``leases``), the
rows of running tasks (``livetasks``), the per-region status counters (``views``) and the held deletions (``holds``); progress
reports are kept in memory and written every few seconds (``progress``).

The journal is split by job, each module a mixin of ``Journal`` and together the only
modules with SQL: ``engine`` (oslo.db's enginefacade, the ``[database]`` options,
SQLite's pragmas, deadlock retry), ``base`` (rows, transactions, batches), ``planning``
(events and planning), ``taskstate`` (the task state machine, retries), ``taskreads`` (the
hand-out's query, registrations due, an agent's tasks), ``progress`` (progress
reports noted in memory and flushed), ``leases`` (the
lease heap), ``views`` (status queries), ``retention`` (purging old history), ``holds``
(the reconciler's pass counter and the deletions it holds back for an operator),
``operations`` (operators' cancels and bulk resyncs, applied by the loop), ``images`` (the
image record of an event's tasks, kept once in its row), ``bulk`` (a loop
iteration's reports of one kind written with one statement per table) and ``leader``
(the lease of a coordinator pair's active member, and the fence on its writes).
"""

from __future__ import annotations

from coordinator.journal.base import (
    EventRow,
    JournalBase,
    NewTask,
    RegionRecord,
    TaskRow,
    pack,
    unpack,
)
from coordinator.journal.bulk import BulkMixin
from coordinator.journal.engine import make_engine
from coordinator.journal.holds import HeldDelete, HoldsMixin
from coordinator.journal.images import ImageRecordMixin
from coordinator.journal.leader import LeaderMixin, LeaseLost
from coordinator.journal.leases import LeaseMixin
from coordinator.journal.livetasks import LiveTaskMixin
from coordinator.journal.operations import Cancelled, OperationsMixin
from coordinator.journal.planmany import PlanManyMixin, PlannedEvent
from coordinator.journal.planning import PlanningMixin
from coordinator.journal.progress import ProgressMixin
from coordinator.journal.retention import RetentionMixin
from coordinator.journal.taskreads import TaskReadsMixin
from coordinator.journal.taskstate import TaskStateMixin
from coordinator.journal.views import ViewsMixin

__all__ = ["Cancelled", "EventRow", "HeldDelete", "Journal", "LeaseLost", "NewTask", "PlannedEvent", "RegionRecord", "TaskRow", "make_engine", "pack", "unpack"]


class Journal(PlanningMixin, PlanManyMixin, HoldsMixin, OperationsMixin, BulkMixin, TaskStateMixin, TaskReadsMixin,
              ProgressMixin, ImageRecordMixin, LeaseMixin, LiveTaskMixin, ViewsMixin,
              RetentionMixin, LeaderMixin, JournalBase):
    """All reads and writes of the journal; safe to share within one thread."""

    def forget_memory(self) -> None:
        """Drop the in-memory tables (leases, status counters, held deletions, running tasks); each is read from
        the journal again on next use."""
        self._lease_table = None
        self._live_table = None
        self._count_table = None
        self._held_table = None
        self._image_cache = None
