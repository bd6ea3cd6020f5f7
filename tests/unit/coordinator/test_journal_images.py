"""The image record of an event's tasks is journaled once, in the event's row, and read back into each task."""

from __future__ import annotations

import sqlalchemy as sa

from coordinator.journal import Journal, pack, unpack
from coordinator.journal.images import PLANNED_IMAGE
from coordinator.schema import events, tasks

from .conftest import IMAGE_ID, image_record
from .test_loop_cost import NOW, plan_copies

REGIONS = ["RegionOne", "RegionTwo", "RegionThree"]


def _payloads(journal: Journal) -> dict[str, dict]:
    with journal.transaction() as conn:
        return {r.task_id: unpack(r.payload) for r in conn.execute(sa.select(tasks.c.task_id, tasks.c.payload))}


def test_the_record_is_stored_once_and_every_read_puts_it_back(journal: Journal) -> None:
    ids = plan_copies(journal, IMAGE_ID, REGIONS, "e1")
    assert all("image" not in payload for payload in _payloads(journal).values())
    with journal.transaction() as conn:
        stored = unpack(conn.execute(sa.select(events.c.payload).where(events.c.event_id == "e1")).scalar())
    assert stored[PLANNED_IMAGE] == image_record() and stored["event_id"] == "e1"  # the event's body kept
    fresh = Journal(journal.engine.url.render_as_string(hide_password=False))  # nothing in memory
    found = [t for rows in fresh.dispatchable_by_region({r: 5 for r in REGIONS}, NOW).values() for t in rows]
    assert sorted(t.task_id for t in found) == sorted(ids)
    assert all(t.payload["image"] == image_record() and t.payload["source"]["path"] == "/x" for t in found)
    assert fresh.task(ids[0]).payload["image"] == image_record()
    fresh.assign(ids[0], "a", NOW, NOW + 10)
    fresh.done(ids[0], 1, {"size": 1024}, NOW)
    again = Journal(journal.engine.url.render_as_string(hide_password=False))
    assert [t.payload["image"] for t in again.registrations_due(NOW)] == [image_record()]
    assert [t.payload["image"] for t in again.registering()] == [image_record()]


def test_a_task_journaled_with_its_record_inline_is_read_as_it_is(journal: Journal) -> None:
    """Journals written before the record moved to the event: the task's own record counts."""
    ids = plan_copies(journal, IMAGE_ID, REGIONS, "e1")
    old = image_record(name="as it was")
    with journal.transaction() as conn:
        conn.execute(events.update().values(payload=pack({"event_id": "e1"})))
        conn.execute(tasks.update().values(payload=pack({"image": old, "source": {"type": "sftp", "path": "/x"}})))
    fresh = Journal(journal.engine.url.render_as_string(hide_password=False))
    assert all(fresh.task(t).payload["image"] == old for t in ids)
    found = fresh.dispatchable("RegionOne", NOW)
    assert [t.payload["image"]["name"] for t in found] == ["as it was"]


def test_a_task_whose_event_row_is_gone_has_no_record_and_is_not_sent(journal: Journal) -> None:
    from coordinator.agents import Agents
    from coordinator.tasks import TaskDesk

    from .test_loop_cost import session as make_session

    [task_id] = plan_copies(journal, IMAGE_ID, ["RegionOne"], "e1")
    with journal.transaction() as conn:
        conn.execute(events.delete())
    fresh = Journal(journal.engine.url.render_as_string(hide_password=False))
    assert "image" not in fresh.task(task_id).payload
    agents = Agents(fresh, 1.0, 10.0)
    desk = TaskDesk(fresh, agents, registrar=None, retry_policy=lambda *_: lambda _r: None)
    session = make_session("RegionOne", "a1", 1)
    agents._add(session)
    sent = []
    assert desk.dispatch_all([session], NOW, lambda *args: sent.append(args) or True) == 0
    assert sent == []
    task = fresh.task(task_id)
    assert task.state.value == "failed" and "image record" in task.last_error


def test_tasks_of_an_event_never_recorded_keep_their_own_record(journal: Journal) -> None:
    from coordinator.journal import NewTask

    [task_id] = journal.plan_event("not-recorded", IMAGE_ID, [NewTask("RegionOne", "copy", {
        "image": image_record(), "source": {"type": "sftp", "path": "/x"}})], {}, NOW)
    assert _payloads(journal)[task_id]["image"] == image_record()
    assert journal.task(task_id).payload["image"] == image_record()
