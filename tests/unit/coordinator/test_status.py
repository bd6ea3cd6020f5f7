"""The status reply's ``settled``: what the journal must have seen before --wait may report success."""

from __future__ import annotations

from coordinator import status
from coordinator.agents import Agents
from coordinator.journal import Journal

from .conftest import IMAGE_ID

NOW = 2_000_000.0


def test_an_image_created_but_not_uploaded_is_not_settled(journal: Journal) -> None:
    journal.record_event("c1", "created", IMAGE_ID, {}, NOW)
    journal.plan_event("c1", IMAGE_ID, [], {}, NOW, record=(NOW - 5, False))  # status queued: nothing to do
    reply = status.image(journal, IMAGE_ID, NOW)
    assert reply["planned"] is True and reply["settled"] is False and reply["regions"] == {}
    journal.record_event("u1", "uploaded", IMAGE_ID, {}, NOW + 1)
    assert status.image(journal, IMAGE_ID, NOW + 1)["settled"] is False  # not planned yet
    journal.plan_event("u1", IMAGE_ID, [], {}, NOW + 1, record=(NOW, True))  # active, sync_strategy None
    assert status.image(journal, IMAGE_ID, NOW + 1)["settled"] is True


def test_a_planned_delete_settles_an_image(journal: Journal) -> None:
    journal.record_event("c1", "created", IMAGE_ID, {}, NOW)
    journal.plan_event("c1", IMAGE_ID, [], {}, NOW, record=(NOW, False))
    journal.record_event("d1", "deleted", IMAGE_ID, {}, NOW + 1)
    journal.plan_event("d1", IMAGE_ID, [], {}, NOW + 1)
    assert status.image(journal, IMAGE_ID, NOW + 1)["settled"] is True


def test_a_refused_delete_does_not_settle_an_image(journal: Journal) -> None:
    journal.record_event("d1", "deleted", IMAGE_ID, {}, NOW)
    journal.plan_event("d1", IMAGE_ID, [], {}, NOW, error="refused: glance still has the image")
    assert status.image(journal, IMAGE_ID, NOW)["settled"] is False


def test_the_newest_record_time_is_kept_per_image(journal: Journal) -> None:
    for n, (at, active) in enumerate([(NOW, True), (NOW - 10, False), (NOW + 10, False)]):
        journal.record_event(f"e{n}", "updated", IMAGE_ID, {}, NOW + n)
        journal.plan_event(f"e{n}", IMAGE_ID, [], {}, NOW + n, record=(at, active))
    assert journal.image_record_state(IMAGE_ID) == (NOW + 10, NOW)


def test_the_summary_says_a_lone_coordinator_is_single(journal: Journal) -> None:
    coordinator = status.summary(journal, Agents(journal, 1.0, 10.0), ["RegionOne"], NOW - 60, NOW)["coordinator"]
    assert coordinator["role"] == "single" and "lease" not in coordinator
