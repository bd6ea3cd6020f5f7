"""The leader lease in the journal (coordinator/journal/leader.py): take, renew, lose, fence; on SQLite."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from coordinator.journal import Journal, LeaseLost
from coordinator.schema import leader

LEASE = 15.0


@pytest.fixture
def other(db_url: str):
    """A second journal on the same database: the other coordinator of the pair."""
    journal = Journal(db_url)
    yield journal
    journal.close()


def test_a_free_lease_is_taken_once_and_refused_to_the_other_until_it_lapses(journal: Journal, other: Journal) -> None:
    assert journal.take_leader("a", 100.0, LEASE) == 1
    assert other.take_leader("b", 105.0, LEASE) is None  # held by a until 115
    assert other.take_leader("b", 114.9, LEASE) is None
    assert journal.leader_row() == ("a", 115.0, 1)
    assert other.take_leader("b", 115.1, LEASE) == 2  # lapsed: b takes it under a new generation
    assert journal.leader_row() == ("b", 130.1, 2)


def test_renewal_keeps_the_lease_and_fails_once_another_took_it(journal: Journal, other: Journal) -> None:
    generation = journal.take_leader("a", 100.0, LEASE)
    assert journal.renew_leader("a", generation, 110.0, LEASE)
    assert other.take_leader("b", 116.0, LEASE) is None  # renewed: held until 125
    assert other.take_leader("b", 125.5, LEASE) == generation + 1
    assert not journal.renew_leader("a", generation, 126.0, LEASE)  # lost: the renewal changes no row
    assert journal.leader_row() == ("b", 140.5, generation + 1)


def test_the_fence_refuses_every_write_of_a_former_holder(journal: Journal, other: Journal) -> None:
    generation = journal.take_leader("a", 100.0, LEASE)
    journal.fence_with("a", generation)
    assert journal.record_event("e1", "uploaded", "i1", {"event_id": "e1"}, 101.0, "t")  # ours: written
    other.take_leader("b", 200.0, LEASE)  # a paused past its lease; b took over
    with pytest.raises(LeaseLost):
        journal.record_event("e2", "uploaded", "i2", {"event_id": "e2"}, 201.0, "t")
    with pytest.raises(LeaseLost), journal.batch():
        journal.record_event("e3", "uploaded", "i3", {"event_id": "e3"}, 201.0, "t")
    assert journal.fence_broken is not None and "held by b" in journal.fence_broken
    with other.engine.connect() as conn:
        ids = {r[0] for r in conn.exec_driver_sql("SELECT event_id FROM events")}
    assert ids == {"e1"}  # nothing of a's was committed after the takeover


def test_a_released_lease_is_taken_at_once(journal: Journal, other: Journal) -> None:
    generation = journal.take_leader("a", 100.0, LEASE)
    assert journal.release_leader("a", generation)
    assert other.take_leader("b", 101.0, LEASE) == generation + 1
    assert not journal.release_leader("a", generation)  # no longer ours: nothing changes
    assert other.leader_row()[0] == "b"


def test_a_missing_row_is_made_by_the_first_taker_only(journal: Journal, other: Journal) -> None:
    with journal.engine.begin() as conn:
        conn.execute(leader.delete())
    assert journal.leader_row() is None
    assert journal.take_leader("a", 100.0, LEASE) == 1
    assert other.take_leader("b", 101.0, LEASE) is None
    with journal.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(leader)).scalar_one() == 1


def test_without_a_fence_the_journal_never_reads_the_lease(journal: Journal) -> None:
    # One coordinator on SQLite (the default): no lease, no extra statement per transaction.
    seen: list[str] = []
    sa.event.listen(journal.engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: seen.append(stmt))
    journal.record_event("e1", "uploaded", "i1", {"event_id": "e1"}, 101.0, "t")
    assert seen and not [s for s in seen if "leader" in s]


def test_a_takeover_never_interleaves_with_the_holders_open_iteration(journal: Journal, other: Journal) -> None:
    # The fence locks the lease row for the holder's whole transaction (FOR UPDATE on a server,
    # the write lock on SQLite): a taker waits, and the holder's iteration lands before the takeover.
    generation = journal.take_leader("a", 100.0, LEASE)
    journal.fence_with("a", generation)
    taken, result = threading.Event(), []

    def take() -> None:
        result.append(other.take_leader("b", 1000.0, LEASE))  # a's lease long lapsed on b's clock
        taken.set()

    taker = threading.Thread(target=take)
    with journal.batch():
        journal.record_event("e1", "uploaded", "i1", {"event_id": "e1"}, 101.0, "t")
        taker.start()
        taken.wait(1.0)
        took_during = taken.is_set()
        journal.record_event("e2", "uploaded", "i2", {"event_id": "e2"}, 101.0, "t")
    taker.join(60)
    assert not took_during and result == [generation + 1]
    with other.engine.connect() as conn:
        assert {r[0] for r in conn.exec_driver_sql("SELECT event_id FROM events")} == {"e1", "e2"}
    with pytest.raises(LeaseLost):  # and the next iteration of a is refused
        journal.record_event("e3", "uploaded", "i3", {"event_id": "e3"}, 102.0, "t")
