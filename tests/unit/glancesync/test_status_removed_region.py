"""``--wait`` over a region removed from an image's targets (its copy deleted): done there, never waited for."""

from __future__ import annotations

from glancesync import status_render

from .test_status import image, region


def test_a_removed_region_beside_synced_ones_is_done() -> None:
    outcome, why = status_render.evaluate(image(RegionOne=region("synced", 10, 10), RegionTwo=region("deleted")))
    assert outcome == "synced" and why.endswith("is synced in RegionOne")


def test_a_removed_region_added_back_is_a_failure_with_its_reason() -> None:
    why_not = "region 'RegionTwo': the copy of image x there was deleted ... purges the id"
    data = {**image(RegionOne=region("synced", 10, 10), RegionTwo=region("deleted")), "targeting_error": why_not}
    outcome, why = status_render.evaluate(data)
    assert outcome == "failed" and why_not in why


def test_a_region_still_deleting_is_waited_for() -> None:
    outcome, _ = status_render.evaluate(image(RegionOne=region("synced", 10, 10), RegionTwo=region("deleting")))
    assert outcome == "waiting"
