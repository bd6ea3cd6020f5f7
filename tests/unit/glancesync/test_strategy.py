"""sync_strategy spellings, USER rules and the reasons a region name is no region."""

from __future__ import annotations

import pytest

from coordinator import planner
from glancesync import strategy
from glancesync.states import SyncState, can_move


@pytest.mark.parametrize("value, expected", [
    ("None", "None"), ("none", "None"), ("All", "ALL"), ("all", "ALL"), ("User", "USER"),
    ("on_demand", "ON_DEMAND"), ("nova", "ON_DEMAND"), ("NOVA", "ON_DEMAND"),
])
def test_original_spellings_are_accepted_in_any_case(value, expected) -> None:
    assert strategy.canonical(value) == expected


def test_anything_else_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'SOME' is not one of None, ALL, USER, ON_DEMAND, nova"):
        strategy.canonical("SOME")


def test_rules_are_checked_against_the_regions() -> None:
    known = ["RegionOne", "RegionTwo"]
    assert strategy.parse_rules({"p1": "RegionOne;RegionTwo", "p2": " RegionTwo "}, known) == {
        "p1": ("RegionOne", "RegionTwo"), "p2": ("RegionTwo",)}
    with pytest.raises(ValueError, match="did you mean 'RegionOne'"):
        strategy.parse_rules({"p1": "regionone"}, known)
    with pytest.raises(ValueError, match="needs a project id and at least one region"):
        strategy.parse_rules({"p1": ""}, known)


def test_user_rules_send_a_project_s_images_to_its_regions_only() -> None:
    known = ["RegionOne", "RegionTwo", "RegionThree"]
    rules = {"proj-a": ("RegionTwo",)}
    assert planner.target_regions({"owner": "proj-a"}, known, "user", rules) == ["RegionTwo"]
    assert planner.target_regions({"owner": "proj-a", "glance_sync_regions": "RegionThree"}, known, "USER",
                                  rules) == ["RegionTwo", "RegionThree"]
    assert planner.target_regions({"owner": "proj-b"}, known, "USER", rules) == []
    assert planner.target_regions({"owner": "proj-a"}, known, "ON_DEMAND", rules) == []


def test_targeting_problems_name_unknown_and_mis_cased_regions() -> None:
    image = {"glance_sync_regions": "RegionOne, regiontwo, Mars"}
    problems = planner.targeting_problems(image, ["RegionOne", "RegionTwo"], "USER")
    assert len(problems) == 2
    assert "did you mean 'RegionTwo'" in problems[0] and "'Mars' is not known" in problems[1]
    assert planner.targeting_problems(image, ["RegionOne", "RegionTwo"], "ALL") == []


def test_region_names_keep_their_first_order_without_repeats_among_hundreds() -> None:
    regions = [f"Region{i:03d}" for i in range(500)]
    raw = " , ".join(regions) + ",Region007,, Mars ,Region001"
    assert strategy.split_names(raw) == [*regions, "Mars"]
    problems = planner.targeting_problems({"glance_sync_regions": raw}, regions, "USER")
    assert len(problems) == 1 and "'Mars' is not known" in problems[0]


def test_cancelled_is_final_until_an_operator_or_a_delete() -> None:
    assert can_move(SyncState.TRANSFERRING, SyncState.CANCELLED)
    assert not can_move(SyncState.REGISTERING, SyncState.CANCELLED)
    assert can_move(SyncState.CANCELLED, SyncState.PENDING) and can_move(SyncState.CANCELLED, SyncState.DELETING)
    assert not can_move(SyncState.CANCELLED, SyncState.ASSIGNED)
