"""A loop iteration's reports of one kind written together: few statements, and each report still judged alone."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from coordinator.journal import Journal, NewTask
from coordinator.schema import image_regions, tasks
from glancesync.exceptions import StaleAttempt

from .conftest import image_record
from .test_loop_cost import NOW, Statements, plan_copies

REGIONS = [f"Region{i:02d}" for i in range(20)]
IMAGES = [f"{i:08d}-2222-3333-4444-555555555555" for i in range(2)]


def _kinds(count: Statements) -> list[str]:
    return [s.lstrip().split(None, 1)[0].upper() for s in count.seen]


def _handed_out(journal: Journal) -> list[str]:
    """Copies of two images to 20 regions (40 tasks), handed out in one call; leases and counters read."""
    ids = [task_id for n, image in enumerate(IMAGES) for task_id in plan_copies(journal, image, REGIONS, f"e{n}")]
    journal.lapsed(NOW)
    journal.region_counts()
    picks = [(task, "agent-" + task.region, NOW + 30)
             for found in journal.dispatchable_by_region({r: 10 for r in REGIONS}, NOW).values() for task in found]
    assert len(picks) == len(ids)
    with journal.batch():
        outcomes = journal.assign_many(picks, NOW)
    assert all(o.state.value == "assigned" and o.attempt == 1 for o in outcomes)
    return ids


def _counters_match(journal: Journal) -> bool:
    """The status counters in memory say what a fresh read of the journal says."""
    fresh = Journal(journal.engine.url.render_as_string(hide_password=False))._counts()
    kept = {region: {s: n for s, n in states.items() if n} for region, states in journal._counts().items()}
    return kept == fresh


def _states(journal: Journal, table=tasks) -> dict[str, str]:
    with journal.transaction() as conn:
        if table is tasks:
            return {r.task_id: r.state for r in conn.execute(tasks.select())}
        return {r.task_id: r.state for r in conn.execute(image_regions.select())}


def test_a_task_cycle_of_forty_tasks_costs_a_bounded_number_of_statements(journal: Journal) -> None:
    ids = _handed_out(journal)
    count = Statements(journal)
    with journal.batch():  # one loop iteration: every ack, then every done
        assert journal.ack_many([(t, 1) for t in ids], NOW) == [None] * len(ids)
        done = journal.done_many([(t, 1, {"size": 1024, "checksum": "c"}) for t in ids], NOW)
    assert [o.state.value for o in done] == ["registering"] * len(ids)
    assert all(o.report["size"] == 1024 for o in done)
    with journal.batch():
        assert journal.finish_many([(t, 1, "h" * 128) for t in ids], NOW + 1) == [None] * len(ids)
    kinds = _kinds(count)
    # One report at a time this was a savepoint and two UPDATEs per report and kind (480 statements).
    assert kinds.count("SAVEPOINT") <= 3, kinds
    if journal.engine.dialect.supports_sane_multi_rowcount:
        # Per kind: a savepoint, one UPDATE per table (executemany), its release; finish reads the
        # next tasks once. (psycopg2 counts no rows of an executemany: one UPDATE per row there.)
        assert len(kinds) <= 3 * 4 + 1 + 4, kinds
    else:
        assert kinds.count("UPDATE") <= 3 * 2 * len(ids), kinds
    assert set(_states(journal).values()) == {"synced"}
    assert set(_states(journal, image_regions).values()) == {"synced"}
    assert journal.region_counts()[REGIONS[0]]["synced"] == 2
    assert _counters_match(journal)
    assert journal.lapsed(NOW + 1000) == []  # no lease left behind


def test_a_report_another_process_made_stale_fails_alone(journal: Journal) -> None:
    ids = _handed_out(journal)
    other = Journal(journal.engine.url.render_as_string(hide_password=False))
    other.requeue(ids[3], 1, NOW, "taken back by another process")  # the table in memory still says assigned
    with journal.batch():
        outcomes = journal.ack_many([(t, 1) for t in ids], NOW)
    assert isinstance(outcomes[3], StaleAttempt)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * (len(ids) - 1)
    states = _states(journal)
    assert states.pop(ids[3]) == "pending"
    assert set(states.values()) == {"transferring"}
    assert _states(journal, image_regions)[ids[3]] == "pending"
    assert journal.held_task(ids[3]).state.value == "pending"
    # Counted once each (the rolled-back bulk counted nothing); another process's change shows
    # in the counters only after a restart (doc/control-plane.md).
    kept = {s: n for s, n in journal._counts()[journal.task(ids[3]).region].items() if n}
    assert kept == {"assigned": 1, "transferring": 1}


def test_a_duplicate_and_a_wrong_attempt_in_one_batch(journal: Journal) -> None:
    ids = _handed_out(journal)
    reports = [(t, 1) for t in ids] + [(ids[0], 1), (ids[1], 7)]
    outcomes = journal.ack_many(reports, NOW)
    assert outcomes[:len(ids)] == [None] * len(ids)
    assert all(isinstance(o, StaleAttempt) for o in outcomes[len(ids):])
    assert set(_states(journal).values()) == {"transferring"}


def test_a_batch_that_rolls_back_leaves_memory_as_the_journal(journal: Journal) -> None:
    ids = _handed_out(journal)
    with pytest.raises(RuntimeError):
        with journal.batch():
            journal.ack_many([(t, 1) for t in ids], NOW)
            journal.done_many([(t, 1, {"size": 1}) for t in ids], NOW)
            raise RuntimeError("the commit never happens")
    assert set(_states(journal).values()) == {"assigned"}
    assert all(journal.held_task(t).state.value == "assigned" for t in ids)
    assert _counters_match(journal)
    assert len(journal.lapsed(NOW + 1000)) == len(ids)  # every lease still there
    # And the reports go through when sent again.
    assert journal.ack_many([(t, 1) for t in ids], NOW) == [None] * len(ids)


def test_finish_hands_each_region_to_the_task_queued_behind(journal: Journal) -> None:
    ids = _handed_out(journal)
    journal.ack_many([(t, 1) for t in ids], NOW)
    journal.done_many([(t, 1, {"size": 1}) for t in ids], NOW)
    # An update of the first image waits behind its copy in two regions.
    journal.record_event("u1", "updated", IMAGES[0], {"event_id": "u1"}, NOW)
    queued = journal.plan_event("u1", IMAGES[0], [NewTask(r, "update", {"image": image_record(IMAGES[0])})
                                                  for r in REGIONS[:2]], {}, NOW)
    assert journal.finish_many([(t, 1, None) for t in ids], NOW + 1) == [None] * len(ids)
    regions = _states(journal, image_regions)
    assert [regions.get(t) for t in queued] == ["pending", "pending"]
    assert set(_states(journal).values()) == {"synced", "pending"}
    with journal.transaction() as conn:
        assert conn.execute(image_regions.select().where(image_regions.c.task_id.in_(ids))).all() != []


def test_one_bad_size_fails_only_its_own_done(journal: Journal) -> None:
    ids = _handed_out(journal)
    journal.ack_many([(t, 1) for t in ids], NOW)
    outcomes = journal.done_many([(t, 1, {"size": -5 if t == ids[2] else 1}) for t in ids], NOW)
    assert "byte count" in str(outcomes[2])
    assert sum(1 for o in outcomes if getattr(o, "state", None) is not None) == len(ids) - 1
    assert _states(journal)[ids[2]] == "transferring"


def test_reads_in_a_batch_take_no_savepoint_and_a_failed_read_breaks_the_batch(journal: Journal) -> None:
    from glancesync.exceptions import JournalError

    ids = _handed_out(journal)
    count = Statements(journal)
    with journal.batch():
        journal.region_records(IMAGES[0])
        journal.registrations_due(NOW)
        journal.ack_many([(t, 1) for t in ids], NOW)
    assert _kinds(count).count("SAVEPOINT") == 1, _kinds(count)  # the acks' only
    with pytest.raises(JournalError), journal.batch():
        journal.ack_many([(t, 1) for t in ids], NOW)  # stale now: nothing to write
        with pytest.raises(JournalError), journal.reading() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
    assert set(_states(journal).values()) == {"transferring"}


def _started_at(journal: Journal) -> dict[str, float | None]:
    with journal.transaction() as conn:
        return {r.task_id: r.started_at for r in conn.execute(sa.select(tasks.c.task_id, tasks.c.started_at))}


def test_an_ack_written_with_its_done_is_one_update_per_table_and_keeps_started_at(journal: Journal) -> None:
    ids = _handed_out(journal)
    count = Statements(journal)
    with journal.batch():
        done = journal.done_many([(t, 1, {"size": 1024}) for t in ids], NOW + 3, started=set(ids))
    assert [o.state.value for o in done] == ["registering"] * len(ids)
    kinds = _kinds(count)
    if journal.engine.dialect.supports_sane_multi_rowcount:
        assert kinds.count("UPDATE") == 2, kinds  # tasks and image_regions, no ack's pair before them
    assert set(_started_at(journal).values()) == {NOW + 3}
    assert set(_states(journal).values()) == {"registering"}
    assert set(_states(journal, image_regions).values()) == {"registering"}
    assert _counters_match(journal)
    assert journal.lapsed(NOW + 1000) == []


def test_a_done_carrying_its_ack_made_stale_elsewhere_fails_alone_and_the_rest_replay_one_by_one(
        journal: Journal) -> None:
    ids = _handed_out(journal)
    other = Journal(journal.engine.url.render_as_string(hide_password=False))
    other.requeue(ids[5], 1, NOW, "taken back by another process")  # memory still says assigned
    with journal.batch():
        outcomes = journal.done_many([(t, 1, {"size": 1}) for t in ids], NOW + 2, started=set(ids))
    assert isinstance(outcomes[5], StaleAttempt)
    assert all(o.state.value == "registering" for i, o in enumerate(outcomes) if i != 5)
    states, started = _states(journal), _started_at(journal)
    assert states.pop(ids[5]) == "pending" and started.pop(ids[5]) is None
    assert set(states.values()) == {"registering"}
    assert set(started.values()) == {NOW + 2}  # the one-by-one path wrote each ack with its done


def test_a_done_names_no_ack_when_the_task_already_transfers(journal: Journal) -> None:
    ids = _handed_out(journal)
    journal.ack_many([(t, 1) for t in ids], NOW + 1)
    journal.done_many([(t, 1, {"size": 1}) for t in ids], NOW + 9, started=set(ids))
    assert set(_started_at(journal).values()) == {NOW + 1}  # the ack's own time, not overwritten


def test_the_hand_out_query_built_once_reads_each_calls_regions_limits_and_time(journal: Journal) -> None:
    three = REGIONS[:3]
    first = plan_copies(journal, IMAGES[0], three, "e0")
    second = plan_copies(journal, IMAGES[1], three, "e1")
    assert [t.task_id for t in journal.dispatchable_by_region({three[0]: 1}, NOW)[three[0]]] == [first[0]]
    found = journal.dispatchable_by_region({three[1]: 2, three[2]: 1}, NOW)
    assert [t.task_id for t in found[three[1]]] == [first[1], second[1]]
    assert [t.task_id for t in found[three[2]]] == [first[2]]
    assert all(t.payload["image"]["id"] in IMAGES for rows in found.values() for t in rows)
    # A retry due later: not handed out before its time, whatever the earlier calls bound.
    task = journal.assign(first[0], "agent-0", NOW, NOW + 30)
    journal.fail(task.task_id, task.attempt, "try later", NOW, lambda _retries: NOW + 100)
    assert [t.task_id for t in journal.dispatchable_by_region({three[0]: 5}, NOW)[three[0]]] == [second[0]]
    later = journal.dispatchable_by_region({three[0]: 5, three[1]: 1}, NOW + 100)
    assert [t.task_id for t in later[three[0]]] == [first[0], second[0]]
    assert [t.task_id for t in later[three[1]]] == [first[1]]


def test_the_bulk_updates_sent_as_compiled_sql_store_what_a_fresh_read_finds(journal: Journal) -> None:
    ids = _handed_out(journal)
    count = Statements(journal)
    with journal.batch():
        journal.done_many([(t, 1, {"size": 2048, "checksum": "c" * 32}) for t in ids], NOW, started=set(ids))
    fresh = Journal(journal.engine.url.render_as_string(hide_password=False))
    for task_id in ids:
        row = fresh.task(task_id)  # read from the journal: this one never held the rows in memory
        assert row.state.value == "registering" and row.report == {"size": 2048, "checksum": "c" * 32}
        assert row.bytes_done == row.bytes_total == 2048 and row.lease_expires is None
    with fresh.transaction() as conn:
        regions = conn.execute(sa.select(image_regions.c.state, image_regions.c.bytes_total)
                               .where(image_regions.c.task_id.in_(ids))).all()
    assert set(regions) == {("registering", 2048)}
    if journal.engine.dialect.supports_sane_multi_rowcount:
        updates = [s for s in count.seen if s.lstrip().upper().startswith("UPDATE")]
        assert len(updates) == 2, updates  # one executemany per table
