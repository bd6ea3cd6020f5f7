"""coordinator.rates and the image view's phase, rate, ETA and what a requeued pair waits for."""

from __future__ import annotations

import pytest

from coordinator import rates as rates_mod
from coordinator import status
from coordinator.journal import Journal
from coordinator.rates import Rates

from .conftest import IMAGE_ID
from .test_journal import copy_task, plan

NOW = 2_000_000.0
MIB = 1024 * 1024


def test_rate_and_eta_come_from_successive_reports_of_one_phase():
    rates = Rates()
    assert rates.view("t1", 1, NOW) is None
    rates.record("t1", 1, "fetching", 10 * MIB, 100 * MIB, NOW)
    assert rates.view("t1", 1, NOW)["rate_bytes_per_s"] is None  # one report: no rate yet
    rates.record("t1", 1, "fetching", 30 * MIB, 100 * MIB, NOW + 2)
    seen = rates.view("t1", 1, NOW + 2)
    assert seen["phase"] == "fetching" and seen["rate_bytes_per_s"] == 10 * MIB
    assert seen["eta_seconds"] == pytest.approx(7.0)
    assert rates.view("t1", 1, NOW + 3)["eta_seconds"] == pytest.approx(6.0)  # counts down between reports
    assert rates.view("t1", 2, NOW + 2) is None  # another attempt's numbers are not this one's


def test_a_new_phase_starts_its_own_rate_and_a_stall_shows_no_rate():
    rates = Rates()
    rates.record("t1", 1, "fetching", 90 * MIB, 100 * MIB, NOW)
    rates.record("t1", 1, "fetching", 100 * MIB, 100 * MIB, NOW + 1)
    rates.record("t1", 1, "uploading", 95 * MIB, 100 * MIB, NOW + 2)  # uploaded bytes now: fewer
    seen = rates.view("t1", 1, NOW + 2)
    assert seen["phase"] == "uploading" and seen["rate_bytes_per_s"] is None
    rates.record("t1", 1, "uploading", 99 * MIB, 100 * MIB, NOW + 4)
    assert rates.view("t1", 1, NOW + 4)["rate_bytes_per_s"] == 2 * MIB
    stalled = rates.view("t1", 1, NOW + 4 + rates_mod.STALE)
    assert stalled["rate_bytes_per_s"] is None and stalled["eta_seconds"] is None


def test_the_rate_follows_the_last_window_and_old_tasks_are_forgotten():
    rates = Rates()
    for second in range(0, 100):  # 1 MiB/s for a minute, then 5 MiB/s
        done = second * MIB if second < 60 else 60 * MIB + (second - 60) * 5 * MIB
        rates.record("t1", 1, "fetching", done, 1000 * MIB, NOW + second)
    assert rates.view("t1", 1, NOW + 99)["rate_bytes_per_s"] == pytest.approx(5 * MIB, rel=0.05)
    rates.record("t2", 1, "fetching", 0, MIB, NOW + 99 + rates_mod.FORGET + 1)
    assert rates.view("t1", 1, NOW + 99 + rates_mod.FORGET + 1) is None


def test_the_image_view_shows_phase_rate_and_eta_of_a_transfer(journal: Journal):
    [task_id] = plan(journal, copy_task())
    journal.assign(task_id, "a", NOW, NOW + 10)
    assert status.image(journal, IMAGE_ID, NOW)["regions"]["RegionOne"]["phase"] == "starting"
    journal.ack(task_id, 1, NOW)
    rates = Rates()
    for second, done in ((1, 10 * MIB), (3, 30 * MIB)):
        journal.progress(task_id, 1, done, 100 * MIB, NOW + second)
        rates.record(task_id, 1, "uploading", done, 100 * MIB, NOW + second)
    row = status.image(journal, IMAGE_ID, NOW + 3, rates)["regions"]["RegionOne"]
    assert (row["state"], row["phase"], row["bytes_done"]) == ("transferring", "uploading", 30 * MIB)
    assert row["rate_bytes_per_s"] == 10 * MIB and row["eta_seconds"] == pytest.approx(7.0)
    # An agent that names no phase (older than the overlapped copy).
    assert status.image(journal, IMAGE_ID, NOW + 3)["regions"]["RegionOne"]["phase"] == "transferring"


def test_a_requeued_pair_shows_what_it_waits_for_not_the_bytes_of_its_failed_attempt(journal: Journal):
    [task_id] = plan(journal, copy_task())
    journal.assign(task_id, "a", NOW, NOW + 10)
    journal.ack(task_id, 1, NOW)
    journal.progress(task_id, 1, 60 * MIB, 100 * MIB, NOW + 1)
    journal.fail(task_id, 1, "connection reset", NOW + 2, lambda retries: NOW + 32)
    row = status.image(journal, IMAGE_ID, NOW + 2)["regions"]["RegionOne"]
    assert (row["state"], row["phase"], row["retry_at"], row["bytes_done"]) == ("pending", "waiting", NOW + 32, 0)
    assert row["rate_bytes_per_s"] is None and row["last_error"] == "connection reset"
    later = status.image(journal, IMAGE_ID, NOW + 33)["regions"]["RegionOne"]
    assert (later["phase"], later["retry_at"], later["bytes_done"]) == ("queued", None, 0)
