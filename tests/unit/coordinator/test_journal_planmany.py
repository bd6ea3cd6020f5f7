"""Journal.plan_many: one iteration's planned events in a bounded number of statements, with the rows
plan_event writes for each, and an event whose plan fails never losing the others."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from coordinator.journal import Journal, NewTask, PlannedEvent, planmany, planning
from coordinator.journal.base import unpack
from coordinator.schema import events, image_records, image_regions, tasks
from glancesync.exceptions import GlanceSyncError, JournalError

from .conftest import image_record
from .test_loop_cost import NOW, Statements

EVENTS = 30
REGIONS = ["RegionOne", "RegionTwo"]


def _image(prefix: str, n: int) -> str:
    return f"{prefix}{n:07d}-2222-3333-4444-555555555555"


def _plans(journal: Journal, prefix: str) -> list[PlannedEvent]:
    """EVENTS new images, each event planned for REGIONS, one with no tasks and an error."""
    plans = []
    for n in range(EVENTS):
        image_id, event_id = _image(prefix, n), f"{prefix}-e{n}"
        journal.record_event(event_id, "uploaded", image_id, {"event_id": event_id}, NOW)
        payload = {"image": image_record(image_id), "source": {"type": "sftp", "path": "/x"}}
        new = [] if n == 3 else [NewTask(r, "copy", payload) for r in REGIONS]
        plans.append(PlannedEvent(event_id, image_id, new, {}, "not a glance image id" if n == 3 else None,
                                  (1000.0 + n, n % 2 == 0)))
    return plans


def _rows(journal: Journal, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every row the events of ``prefix`` left, with ids and seq made comparable across prefixes."""
    def plain(row: Any) -> dict[str, Any]:
        values = dict(row._mapping)
        for key in ("image_id", "event_id"):
            if isinstance(values.get(key), str):
                values[key] = values[key].replace(prefix, "X")
        if isinstance(values.get("payload"), bytes):
            values["payload"] = unpack(values["payload"])
            values["payload"].pop("planned_image", {}).pop("id", None)
            values["payload"].pop("event_id", None)
        values.pop("task_id", None)
        values.pop("seq", None)
        return values

    like = f"{prefix}%"
    with journal.engine.connect() as conn:
        return {
            "tasks": [plain(r) for r in conn.execute(sa.select(tasks).where(tasks.c.image_id.like(like))
                                                     .order_by(tasks.c.seq))],
            "regions": [plain(r) for r in conn.execute(sa.select(image_regions).where(
                image_regions.c.image_id.like(like)).order_by(image_regions.c.image_id, image_regions.c.region))],
            "records": [plain(r) for r in conn.execute(sa.select(image_records).where(
                image_records.c.image_id.like(like)).order_by(image_records.c.image_id))],
            "events": [plain(r) for r in conn.execute(sa.select(events).where(events.c.image_id.like(like))
                                                      .order_by(events.c.image_id))],
        }


def test_a_batch_of_events_is_planned_in_a_bounded_number_of_statements(journal: Journal) -> None:
    plans = _plans(journal, "a")
    count = Statements(journal)
    with journal.batch():
        outcomes = journal.plan_many(plans, NOW + 1)
    assert [len(o) for o in outcomes] == [0 if n == 3 else 2 for n in range(EVENTS)]
    kinds = [s.lstrip().split(None, 1)[0].upper() for s in count.seen]
    # One event at a time this was a savepoint and about ten statements per event (over 300).
    assert kinds.count("SAVEPOINT") <= 1, kinds
    extra = 0 if journal.engine.dialect.supports_sane_multi_rowcount else EVENTS  # psycopg2: an UPDATE per row
    assert len(kinds) <= 12 + extra, kinds
    assert journal.unplanned_events() == []
    assert journal.region_counts()["RegionOne"]["queued"] == EVENTS - 1


def test_a_batch_writes_the_rows_planning_one_by_one_writes(journal: Journal) -> None:
    with journal.batch():
        journal.plan_many(_plans(journal, "a"), NOW + 1)
    for plan in _plans(journal, "b"):
        journal.plan_event(plan.event_id, plan.image_id, plan.new_tasks, plan.failures, NOW + 1, error=plan.error,
                           record=plan.record)
    together, alone = _rows(journal, "a"), _rows(journal, "b")
    assert len(together["tasks"]) == 2 * (EVENTS - 1) and len(together["records"]) == EVENTS
    assert together == alone


def test_an_event_whose_plan_fails_does_not_lose_the_others(journal: Journal, monkeypatch) -> None:
    plans = _plans(journal, "c")
    bad = plans[5]
    bad.new_tasks = [NewTask(r, "copy", {"bad": True}) for r in REGIONS]

    def refused(stored):
        def store(payload, shared):
            if payload.get("bad"):  # as a database refuses a value that does not fit its column
                raise JournalError(detail="a value does not fit its column", retryable=False)
            return stored(payload, shared)
        return store

    for module in (planmany, planning):
        monkeypatch.setattr(module, "stored_payload", refused(module.stored_payload))
    with journal.batch():
        outcomes = journal.plan_many(plans, NOW + 1)
    assert isinstance(outcomes[5], JournalError)
    assert all(not isinstance(o, GlanceSyncError) for n, o in enumerate(outcomes) if n != 5)
    assert [e.event_id for e in journal.unplanned_events()] == [bad.event_id]
    rows = _rows(journal, "c")
    assert len(rows["tasks"]) == 2 * (EVENTS - 2) and len(rows["records"]) == EVENTS - 1


def test_an_image_already_known_or_twice_in_a_batch_is_planned_as_plan_event_plans_it(journal: Journal) -> None:
    plans = _plans(journal, "d")[:4]
    # The first image already has a region: its copy to RegionOne queues behind the one there.
    journal.plan_event(plans[0].event_id, plans[0].image_id, plans[0].new_tasks[:1], {}, NOW)
    journal.record_event("d-again", "uploaded", plans[0].image_id, {}, NOW)
    plans[0] = PlannedEvent("d-again", plans[0].image_id, plans[0].new_tasks, {}, None, (2000.0, True))
    journal.record_event("d-refused", "uploaded", plans[1].image_id, {}, NOW)
    plans.append(PlannedEvent("d-refused", plans[1].image_id, [], {"RegionTwo": "refused"}, None, None))
    with journal.batch():
        outcomes = journal.plan_many(plans, NOW + 1)
    assert all(not isinstance(o, GlanceSyncError) for o in outcomes)
    assert not {p.event_id for p in plans} & {e.event_id for e in journal.unplanned_events()}
    with journal.engine.connect() as conn:
        counted = dict(conn.execute(sa.select(tasks.c.image_id, sa.func.count()).group_by(tasks.c.image_id)).all())
    assert counted == {plans[0].image_id: 3, plans[1].image_id: 2, plans[2].image_id: 2}
    assert journal.region_records(plans[1].image_id)["RegionTwo"].state.value == "failed"
    assert journal.image_record_state(plans[0].image_id)[0] == 2000.0


def test_tasks_of_one_image_keep_their_events_order_when_a_batch_takes_both_paths(journal: Journal) -> None:
    """The bulk path's tasks take their seq before the one-by-one path's, whatever the events' order;
    but seq orders only the tasks of one (image, region), and an image never takes both paths."""
    every = _plans(journal, "g")
    plans = [every[0], every[1], every[2], every[4]]  # every[3] has no task
    image = plans[2].image_id
    # An earlier event of the same image in the call, with a refused region: one by one.
    journal.record_event("g-first", "uploaded", image, {}, NOW)
    plans.insert(2, PlannedEvent("g-first", image, plans[2].new_tasks[:1], {"RegionTwo": "refused"}, None, None))
    with journal.batch():
        outcomes = journal.plan_many(plans, NOW + 1)
    assert all(not isinstance(o, GlanceSyncError) for o in outcomes)
    with journal.engine.connect() as conn:
        seqs = {(r.event_id, r.region): r.seq for r in conn.execute(sa.select(tasks).where(tasks.c.image_id.like("g%")))}
    # The image's later event (alone it would have been bulk-planned) queues behind its earlier one.
    assert seqs[("g-first", "RegionOne")] < seqs[(plans[3].event_id, "RegionOne")]
    # Across images the order is the paths', not the events' (they arrived in the order the glance
    # pool answered them, itself arbitrary): the bulk-planned images first.
    bulk = [seqs[(p.event_id, r)] for p in (plans[0], plans[1], plans[4]) for r in REGIONS]
    assert max(bulk) < min(seq for (event_id, _r), seq in seqs.items() if event_id in ("g-first", plans[3].event_id))
