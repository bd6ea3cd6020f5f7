"""The rows of running tasks in memory: reports are checked without reads, and never against the journal's word."""

from __future__ import annotations

import dataclasses

import pytest

from coordinator.journal import Journal, TaskRow
from coordinator.journal.base import task_copy
from coordinator.schema import tasks
from glancesync.exceptions import StaleAttempt
from glancesync.states import SyncState

from .conftest import IMAGE_ID
from .test_loop_cost import NOW, Statements, plan_copies


def _kinds(count: Statements) -> list[str]:
    return [s.lstrip().split(None, 1)[0].upper() for s in count.seen]


def test_a_task_handed_out_runs_ack_done_and_finish_without_reading_its_row(journal: Journal) -> None:
    [task_id] = plan_copies(journal, IMAGE_ID, ["RegionOne"], "e1")
    journal.assign(task_id, "a", NOW, NOW + 10)
    journal.lapsed(NOW)  # the lease table is read
    count = Statements(journal)
    with journal.batch():  # as in one loop iteration: ack then done of the same attempt
        journal.ack(task_id, 1, NOW)
        assert journal.held_task(task_id).state.value == "transferring"
        journal.done(task_id, 1, {"size": 1024, "checksum": "c"}, NOW)
    journal.finish(task_id, 1, NOW + 1, "h" * 128)
    kinds = _kinds(count)
    # finish looks for the next task of the (image, region); nothing reads the task itself.
    assert kinds.count("SELECT") == 1
    assert kinds.count("UPDATE") == 6  # the task and its region, three times
    assert journal.task(task_id).state.value == "synced"
    assert journal.image_view(IMAGE_ID)[1]["RegionOne"]["state"] == "synced"
    assert journal.held_task(task_id).state.value == "synced"  # no longer kept: read from the journal


def test_a_change_made_by_another_process_still_wins(journal: Journal) -> None:
    [task_id] = plan_copies(journal, IMAGE_ID, ["RegionOne"], "e1")
    journal.assign(task_id, "a", NOW, NOW + 10)
    other = Journal(journal.engine.url.render_as_string(hide_password=False))
    other.requeue(task_id, 1, NOW, "taken back by another process")
    # The row in memory still says assigned, attempt 1: the compare-and-set refuses the report.
    with pytest.raises(StaleAttempt):
        journal.ack(task_id, 1, NOW)
    assert journal.task(task_id).state.value == "pending"
    assert journal.image_view(IMAGE_ID)[1]["RegionOne"]["state"] == "pending"
    # And the row was dropped: the next check reads the journal.
    assert journal.held_task(task_id).state.value == "pending"


def test_a_change_rolled_back_is_not_remembered(journal: Journal) -> None:
    [task_id] = plan_copies(journal, IMAGE_ID, ["RegionOne"], "e1")
    journal.assign(task_id, "a", NOW, NOW + 10)
    with pytest.raises(RuntimeError):
        with journal.batch():
            journal.ack(task_id, 1, NOW)
            raise RuntimeError("the commit never happens")
    assert journal.held_task(task_id).state.value == "assigned"
    journal.ack(task_id, 1, NOW)  # accepted: attempt 1 is still assigned
    with journal.transaction() as conn:
        assert conn.execute(tasks.select().where(tasks.c.task_id == task_id)).first().state == "transferring"


def test_a_savepoint_that_fails_drops_what_it_wrote(journal: Journal) -> None:
    first, second = plan_copies(journal, IMAGE_ID, ["RegionOne", "RegionTwo"], "e1")
    journal.assign(first, "a", NOW, NOW + 10)
    with journal.batch():
        journal.ack(first, 1, NOW)
        with pytest.raises(StaleAttempt):
            with journal.transaction():
                journal.done(first, 1, {"size": 1}, NOW)
                raise StaleAttempt(task_id=second, attempt=1)
        # The done rolled back with its savepoint: the task is transferring, not registering.
        assert journal.held_task(first).state.value == "transferring"
    assert journal.task(first).state.value == "transferring"


def test_assign_takes_the_row_dispatch_read_and_still_refuses_a_stale_one(journal: Journal) -> None:
    [task_id] = plan_copies(journal, IMAGE_ID, ["RegionOne"], "e1")
    journal.lapsed(NOW)  # the lease table is read
    [pending] = journal.dispatchable("RegionOne", NOW)
    count = Statements(journal)
    task = journal.assign(task_id, "a", NOW, NOW + 10, pending)
    assert task.attempt == 1 and task.state.value == "assigned"
    assert "SELECT" not in _kinds(count)
    # The same (now stale) row again: the compare-and-set finds attempt 1, not 0.
    with pytest.raises(StaleAttempt):
        journal.assign(task_id, "b", NOW, NOW + 10, pending)
    assert journal.task(task_id).agent_id == "a"


def test_a_kept_row_is_handed_out_as_a_copy_the_caller_may_change(journal: Journal) -> None:
    [task_id] = plan_copies(journal, IMAGE_ID, ["RegionOne"], "e1")
    journal.assign(task_id, "a", NOW, NOW + 10)
    held = journal.held_task(task_id)
    held.agent_id, held.attempt = "someone-else", 99
    again = journal.held_task(task_id)
    assert (again.agent_id, again.attempt) == ("a", 1)
    assert again is not held


def test_task_copy_is_replace_without_init() -> None:
    journal_row = TaskRow("t1", 1, IMAGE_ID, "RegionOne", "copy", SyncState.PENDING, 0, None, None, 0.0, 0, 0, 0,
                          None, {"id": IMAGE_ID}, event_id="e1")
    copy = task_copy(journal_row, state=SyncState.ASSIGNED, attempt=1)
    assert copy == dataclasses.replace(journal_row, state=SyncState.ASSIGNED, attempt=1)
    assert type(copy) is TaskRow and journal_row.state == SyncState.PENDING  # the original is untouched
    assert task_copy(journal_row) == journal_row and task_copy(journal_row) is not journal_row
    with pytest.raises(TypeError, match="no field"):
        task_copy(journal_row, colour="blue")
