"""The planning budget: an iteration plans at most PLAN_ROWS task rows; the answers left wait.

Runs the event desk of a real service (the ``service`` fixture of conftest.py: two
regions, so an image uploaded for all of them plans two task rows) over the real
SQLite journal, with the budget lowered to a few rows.
"""

from __future__ import annotations

import logging

from coordinator import eventdesk
from coordinator.registrar import FetchResult

from .conftest import NOW, image_record
from .test_service import pump

IDS = [f"{n:08d}-2222-3333-4444-555555555555" for n in range(5)]


def arrive(service, journal, stores, answers: list[tuple[str, str]]) -> None:
    """Journal an upload event per (event id, image id) and hand the desk glance's answer for it."""
    for event_id, image_id in answers:
        journal.record_event(event_id, "uploaded", image_id, {"event_id": event_id}, NOW)
        service.events.fetching.add(event_id)
        service.events.fetched(FetchResult(event_id, image_record(image_id, store_dir=stores.store.store_dir)), NOW)


def planned_per_call(service, monkeypatch) -> list[list[str]]:
    """The event ids of each ``plan_many`` call, in order, as the journal is asked to write them."""
    calls: list[list[str]] = []
    real = service.journal.plan_many

    def plan_many(plans, now):
        calls.append([plan.event_id for plan in plans])
        return real(plans, now)

    monkeypatch.setattr(service.journal, "plan_many", plan_many)
    return calls


def iteration(service) -> None:
    with service.journal.batch():  # as in the loop: one transaction per iteration
        service.events.plan_fetched(NOW)


def test_answers_past_the_budget_wait_for_the_next_iterations_in_order(service, journal, stores,
                                                                       monkeypatch) -> None:
    monkeypatch.setattr(eventdesk, "PLAN_ROWS", 4)  # two images of two rows each
    calls = planned_per_call(service, monkeypatch)
    # The same image twice across the budget's edge: its second answer is planned after the first.
    answers = [("e0", IDS[0]), ("e1", IDS[1]), ("e2", IDS[0]), ("e3", IDS[2]), ("e4", IDS[3])]
    arrive(service, journal, stores, answers)
    iteration(service)
    assert [e for call in calls for e in call] == ["e0", "e1"]
    assert [r.event_id for r in service.events.arrived] == ["e2", "e3", "e4"]
    assert service.events.waiting and {"e2", "e3", "e4"} <= service.events.fetching  # not fetched again
    assert {e.event_id for e in journal.unplanned_events()} == {"e2", "e3", "e4"}
    iteration(service)
    iteration(service)
    assert [e for call in calls for e in call] == ["e0", "e1", "e2", "e3", "e4"]
    assert not service.events.waiting and not service.events.fetching
    assert journal.unplanned_events() == []
    assert all(set(journal.region_records(i)) == {"RegionOne", "RegionTwo"} for i in IDS[:4])


def test_an_image_larger_than_the_budget_is_planned_whole_and_alone(service, journal, stores, monkeypatch,
                                                                    caplog) -> None:
    monkeypatch.setattr(eventdesk, "PLAN_ROWS", 3)
    caplog.set_level(logging.INFO, logger="coordinator.eventdesk")
    calls = planned_per_call(service, monkeypatch)
    arrive(service, journal, stores, [("e0", IDS[0]), ("e1", IDS[1])])
    iteration(service)  # e0's two rows fit; e1's would make four: it waits
    assert calls == [["e0"]] and [r.event_id for r in service.events.arrived] == ["e1"]
    monkeypatch.setattr(eventdesk, "PLAN_ROWS", 1)  # now every image is larger than the budget
    arrive(service, journal, stores, [("e2", IDS[2]), ("e3", IDS[3])])
    for _ in range(3):
        iteration(service)
    assert calls == [["e0"], ["e1"], ["e2"], ["e3"]]  # one image per iteration, each whole
    assert all(len(journal.region_records(i)) == 2 for i in IDS[:4])
    # An answer put back is judged again, but its plan is logged once, when it is written.
    assert sum("event e1 " in r.getMessage() and "2 tasks" in r.getMessage() for r in caplog.records) == 1


def test_the_loop_does_not_sleep_while_answers_wait(service, journal, stores, monkeypatch) -> None:
    pump(service, NOW)  # the planning query has run: its gate is not due by itself
    monkeypatch.setattr(eventdesk, "PLAN_ROWS", 2)
    timeouts: list[int] = []
    real = service.poller.poll

    def poll(timeout=None):
        timeouts.append(timeout)
        return real(0)

    monkeypatch.setattr(service.poller, "poll", poll)
    arrive(service, journal, stores, [("e0", IDS[0]), ("e1", IDS[1]), ("e2", IDS[2])])
    iteration(service)  # an iteration's planning: e0 fills the budget
    assert [r.event_id for r in service.events.arrived] == ["e1", "e2"]
    service.loop(NOW, poll_seconds=30)
    service.loop(NOW, poll_seconds=30)
    assert timeouts == [0, 0]  # waited for no frame: planning work was waiting
    assert not service.events.waiting and journal.unplanned_events() == []
    service.loop(NOW, poll_seconds=0.01)
    assert timeouts[-1] == 10  # nothing waits any more: the loop may wait for frames again

