"""The journal: durability, duplicate events, compare-and-set, ordering, leases and retries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from coordinator.journal import Journal, NewTask
from coordinator.schema import tasks
from glancesync.exceptions import JournalError, StaleAttempt
from glancesync.states import SyncState

from .conftest import IMAGE_ID, image_record

NOW = 1_000_000.0


def copy_task(region: str = "RegionOne") -> NewTask:
    return NewTask(region, "copy", {"image": image_record(), "source": {"type": "sftp", "path": "/x"}})


def plan(journal: Journal, *new: NewTask, event_id: str = "e1") -> list[str]:
    journal.record_event(event_id, "uploaded", IMAGE_ID, {"event_id": event_id}, NOW)
    return journal.plan_event(event_id, IMAGE_ID, list(new), {}, NOW)


def region_state(journal: Journal, region: str = "RegionOne") -> str:
    return journal.image_view(IMAGE_ID)[1][region]["state"]


def test_sqlite_runs_in_wal_with_full_sync(journal: Journal) -> None:
    with journal.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_committed_rows_are_there_for_a_new_engine(db_url: str) -> None:
    first = Journal(db_url)
    assert first.record_event("e1", "uploaded", IMAGE_ID, {"a": 1}, NOW)
    first.close()
    second = Journal(db_url)
    [event] = second.unplanned_events()
    assert (event.event_id, event.body) == ("e1", {"a": 1})
    second.close()


def test_committed_event_survives_kill_9(db_url: str) -> None:
    script = (
        "import sys, time\n"
        "from coordinator.journal import Journal\n"
        f"j = Journal({db_url!r})\n"
        f"j.record_event('killed', 'uploaded', {IMAGE_ID!r}, {{}}, 1.0)\n"
        "print('committed', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "committed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    journal = Journal(db_url)
    assert [e.event_id for e in journal.unplanned_events()] == ["killed"]
    journal.close()


def test_duplicate_event_ids_are_recognised(journal: Journal) -> None:
    assert journal.record_event("e1", "uploaded", IMAGE_ID, {"n": 1}, NOW) is True
    assert journal.record_event("e1", "uploaded", IMAGE_ID, {"n": 2}, NOW + 1) is False
    [event] = journal.unplanned_events()
    assert event.body == {"n": 1}


def test_plan_event_creates_tasks_and_marks_planned(journal: Journal) -> None:
    ids = plan(journal, copy_task("RegionOne"), copy_task("RegionTwo"))
    assert len(ids) == 2
    assert journal.unplanned_events() == []
    assert region_state(journal) == "pending"
    assert [t.task_id for t in journal.dispatchable("RegionTwo", NOW)] == [ids[1]]


def test_state_changes_are_compare_and_set(journal: Journal) -> None:
    [task_id] = plan(journal, copy_task())
    task = journal.assign(task_id, "agent-1", NOW, NOW + 10)
    assert task.attempt == 1 and task.state == SyncState.ASSIGNED
    with pytest.raises(StaleAttempt):
        journal.assign(task_id, "agent-2", NOW, NOW + 10)  # no longer pending
    with pytest.raises(StaleAttempt):
        journal.ack(task_id, 2, NOW)  # wrong attempt
    journal.ack(task_id, 1, NOW)
    with pytest.raises(StaleAttempt):
        journal.ack(task_id, 1, NOW)  # transferring already
    assert region_state(journal) == "transferring"


def test_copy_goes_through_registering_to_synced(journal: Journal) -> None:
    [task_id] = plan(journal, copy_task())
    journal.assign(task_id, "a", NOW, NOW + 10)
    journal.ack(task_id, 1, NOW)
    journal.progress(task_id, 1, 512, 1024, NOW)
    assert journal.image_view(IMAGE_ID)[1]["RegionOne"]["bytes_done"] == 512
    task = journal.done(task_id, 1, {"size": 1024, "checksum": "c"}, NOW)
    assert task.state == SyncState.REGISTERING and task.report["checksum"] == "c"
    assert [t.task_id for t in journal.registering()] == [task_id]
    journal.finish(task_id, 1, NOW + 1, os_hash_value="h")
    view = journal.image_view(IMAGE_ID)[1]["RegionOne"]
    assert view["state"] == "synced" and view["synced_at"] == NOW + 1
    assert journal.region_records(IMAGE_ID)["RegionOne"].os_hash_value == "h"
    assert journal.region_counts()["RegionOne"]["synced"] == 1


@pytest.mark.parametrize("too_large", [2**64 - 1, 2**63, -1])
def test_byte_counts_the_columns_cannot_hold_are_refused_as_journal_errors(journal: Journal,
                                                                          too_large: int) -> None:
    # sqlite3 raises OverflowError, not a DB-API error, for 2**63 and above: it must
    # come out as the JournalError every caller handles, with nothing changed.
    [task_id] = plan(journal, copy_task())
    journal.assign(task_id, "a", NOW, NOW + 10)
    journal.ack(task_id, 1, NOW)
    with pytest.raises(JournalError) as info:
        journal.progress(task_id, 1, too_large, 1024, NOW)
    assert not info.value.retryable
    with pytest.raises(JournalError):
        journal.done(task_id, 1, {"size": too_large, "checksum": "c"}, NOW)
    assert journal.task(task_id).state == SyncState.TRANSFERRING
    journal.progress(task_id, 1, 2**63 - 1, 2**63 - 1, NOW)
    assert journal.image_view(IMAGE_ID)[1]["RegionOne"]["bytes_done"] == 2**63 - 1


def test_an_overflow_inside_a_transaction_is_a_journal_error(journal: Journal) -> None:
    [task_id] = plan(journal, copy_task())
    with pytest.raises(JournalError) as info, journal.transaction() as conn:
        conn.execute(tasks.update().where(tasks.c.task_id == task_id).values(retries=1, bytes_done=2**64))
    assert "does not fit" in str(info.value) and not info.value.retryable
    assert journal.task(task_id).retries == 0


def test_a_value_that_cannot_be_packed_is_a_journal_error(journal: Journal) -> None:
    with pytest.raises(JournalError):
        journal.record_event("e-obj", "uploaded", IMAGE_ID, {"x": object()}, NOW)
    assert journal.unplanned_events() == []


def test_later_task_waits_for_the_earlier_one(journal: Journal) -> None:
    [copy_id] = plan(journal, copy_task())
    update = NewTask("RegionOne", "update", {"image": image_record(), "source": None})
    [update_id] = plan(journal, update, event_id="e2")
    assert [t.task_id for t in journal.dispatchable("RegionOne", NOW)] == [copy_id]
    journal.assign(copy_id, "a", NOW, NOW + 10)
    assert journal.dispatchable("RegionOne", NOW) == []  # the copy is unfinished
    journal.done(copy_id, 1, {}, NOW)
    journal.finish(copy_id, 1, NOW)
    assert [t.task_id for t in journal.dispatchable("RegionOne", NOW)] == [update_id]
    assert journal.image_view(IMAGE_ID)[1]["RegionOne"]["task_id"] == update_id


def test_lapsed_lease_requeues_and_old_attempt_is_ignored(journal: Journal) -> None:
    [task_id] = plan(journal, copy_task())
    journal.assign(task_id, "a", NOW, NOW + 10)
    assert journal.lapsed(NOW + 5) == []
    [lapsed] = journal.lapsed(NOW + 11)
    journal.requeue(task_id, lapsed.attempt, NOW + 11, "lease lapsed")
    assert region_state(journal) == "pending"
    second = journal.assign(task_id, "b", NOW + 12, NOW + 22)
    assert second.attempt == 2
    with pytest.raises(StaleAttempt):
        journal.done(task_id, 1, {}, NOW + 13)  # the first attempt's late done
    assert journal.task(task_id).state == SyncState.ASSIGNED


def test_renewed_lease_does_not_lapse(journal: Journal) -> None:
    [task_id] = plan(journal, copy_task())
    journal.assign(task_id, "a", NOW, NOW + 10)
    assert journal.renew_leases("a", [task_id], NOW + 30) == 1
    assert journal.renew_leases("other", [task_id], NOW + 99) == 0
    assert journal.lapsed(NOW + 20) == []


def test_retry_with_backoff_then_failed(journal: Journal) -> None:
    [task_id] = plan(journal, copy_task())

    def retry_at(retries: int) -> float | None:
        return None if retries >= 2 else NOW + 100 * (retries + 1)

    for attempt, due in ((1, NOW + 100), (2, NOW + 200)):
        journal.assign(task_id, "a", due, due + 10)
        assert journal.fail(task_id, attempt, "sftp down", due, retry_at) == SyncState.PENDING
        task = journal.task(task_id)
        assert task.not_before == NOW + 100 * attempt and task.retries == attempt
        assert journal.dispatchable("RegionOne", task.not_before - 1) == []
    journal.assign(task_id, "a", NOW + 300, NOW + 310)
    assert journal.fail(task_id, 3, "sftp down", NOW + 300, retry_at) == SyncState.FAILED
    view = journal.image_view(IMAGE_ID)[1]["RegionOne"]
    assert view["state"] == "failed" and view["last_error"] == "sftp down"


def test_delete_supersedes_pending_work_and_is_final(journal: Journal) -> None:
    [copy_id] = plan(journal, copy_task())
    delete = NewTask("RegionOne", "delete", {"image": {"id": IMAGE_ID}, "source": None})
    [delete_id] = plan(journal, delete, event_id="e2")
    assert journal.task(copy_id).state == SyncState.FAILED
    assert region_state(journal) == "deleting"
    journal.assign(delete_id, "a", NOW, NOW + 10)
    journal.done(delete_id, 1, {}, NOW)
    journal.finish(delete_id, 1, NOW)
    assert region_state(journal) == "deleted"
    [late] = plan(journal, copy_task(), event_id="e3")
    assert journal.task(late).state == SyncState.FAILED  # glance never takes the id back
    assert region_state(journal) == "deleted"


def test_refused_source_fails_the_region(journal: Journal) -> None:
    journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
    journal.plan_event("e1", IMAGE_ID, [], {"RegionTwo": "source refused: outside"}, NOW)
    view = journal.image_view(IMAGE_ID)
    assert view[0] is True
    assert view[1]["RegionTwo"]["state"] == "failed"
    assert "outside" in view[1]["RegionTwo"]["last_error"]


def test_image_view_tells_planned_with_nothing_to_do_from_not_planned_yet(journal: Journal) -> None:
    from coordinator import status

    assert status.image(journal, IMAGE_ID, NOW) == {"image_id": IMAGE_ID, "known": False, "planned": False,
                                                    "settled": False, "regions": {}, "now": NOW,
                                                    "targeting_error": None, "note": None}
    journal.record_event("e1", "uploaded", IMAGE_ID, {}, NOW)
    waiting = status.image(journal, IMAGE_ID, NOW)
    assert waiting["known"] is True and waiting["planned"] is False and waiting["regions"] == {}
    journal.plan_event("e1", IMAGE_ID, [], {}, NOW)  # sync_strategy None: no region wants it
    done = status.image(journal, IMAGE_ID, NOW)
    assert done["known"] is True and done["planned"] is True and done["regions"] == {}
    journal.record_event("e2", "updated", IMAGE_ID, {}, NOW + 1)  # a later event is not planned yet
    assert status.image(journal, IMAGE_ID, NOW)["planned"] is False


def _count(journal: Journal, table) -> int:
    import sqlalchemy as sa

    with journal.transaction() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar())


def test_purge_forgets_old_history_and_keeps_state_and_live_work(journal: Journal) -> None:
    from coordinator.schema import events, tasks

    [copy_id] = plan(journal, copy_task())  # finished, then superseded as current by the update
    update = NewTask("RegionOne", "update", {"image": image_record(), "source": None})
    [update_id] = plan(journal, update, event_id="e2")
    journal.assign(copy_id, "a", NOW, NOW + 10)
    journal.done(copy_id, 1, {}, NOW)
    journal.finish(copy_id, 1, NOW)
    journal.assign(update_id, "a", NOW, NOW + 10)
    journal.done(update_id, 1, {}, NOW)  # update: straight to synced; it is the current task
    [live_id] = plan(journal, copy_task("RegionTwo"), event_id="e3")  # still pending
    journal.record_event("e4", "uploaded", IMAGE_ID, {}, NOW)  # not planned yet
    assert (_count(journal, events), _count(journal, tasks)) == (4, 3)

    assert journal.purge(NOW - 1) == (0, 0)  # nothing is that old
    # e1 and the superseded copy; e2 and e3 stay while their tasks do (the events' rows hold
    # their image records, coordinator/journal/images.py).
    assert journal.purge(NOW + 100) == (1, 1)
    assert journal.task(copy_id) is None
    assert journal.task(update_id) is not None
    assert journal.task(live_id).payload["image"] == image_record()
    assert [e.event_id for e in journal.unplanned_events()] == ["e4"]
    view = journal.image_view(IMAGE_ID)[1]
    assert view["RegionOne"]["state"] == "synced" and view["RegionOne"]["task_kind"] == "update"
    assert view["RegionTwo"]["state"] == "pending"
    assert IMAGE_ID in journal.known_image_ids()


def test_cache_holders_need_a_synced_copy_that_the_agent_cached(journal: Journal) -> None:
    ids = plan(journal, copy_task("RegionOne"), copy_task("RegionTwo"), copy_task("RegionThree"))
    for task_id in ids:
        journal.assign(task_id, "a", NOW, NOW + 10)
        journal.ack(task_id, 1, NOW)
    one, two, three = ids
    journal.done(one, 1, {"size": 1, "cached": True}, NOW)
    journal.done(two, 1, {"size": 1, "cached": True}, NOW)
    journal.done(three, 1, {"size": 1, "cached": False}, NOW)
    assert journal.cache_holders(IMAGE_ID) == ([], ["RegionOne", "RegionTwo"])  # registering: soon
    journal.finish(two, 1, NOW + 1)
    journal.finish(one, 1, NOW + 2)
    journal.finish(three, 1, NOW + 3)
    # Synced and cached, earliest first; a copy the agent did not cache serves nobody.
    assert journal.cache_holders(IMAGE_ID) == (["RegionTwo", "RegionOne"], [])
    journal.record_event("e2", "updated", IMAGE_ID, {"event_id": "e2"}, NOW + 4)
    removal = NewTask("RegionTwo", "delete", {"image": image_record(), "source": None})
    [delete] = journal.plan_event("e2", IMAGE_ID, [removal], {}, NOW + 4)
    journal.assign(delete, "a", NOW + 5, NOW + 10)
    assert journal.cache_holders(IMAGE_ID) == (["RegionOne"], [])  # a region being deleted serves nobody
