"""glance-sync-manage plan's rows and rendering (coordinator/planview.py)."""

from __future__ import annotations

import json

from coordinator import planview, reconciler, regiondrift

A, B = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"


def test_every_kind_of_finding_becomes_one_sorted_row() -> None:
    drift = reconciler.Drift(missing=[B], vanished=[A], tracked=5,
                             repairs=[regiondrift.Repair(A, "RegionTwo", "update", "metadata differs: x")])
    rows = planview.findings(drift, reconciler.DeletePlan(delete=[], held=[A]))
    assert [(r["image_id"], r["region"], r["action"]) for r in rows] == [
        (A, "*", "delete-held"), (A, "RegionTwo", "update"), (B, "*", "sync")]
    assert json.loads(planview.render(rows, as_json=True)) == rows
    lines = planview.render(rows, as_json=False).splitlines()
    assert lines[1] == f"{A}  RegionTwo  update       metadata differs: x"


def test_a_converged_system_renders_nothing_or_an_empty_list() -> None:
    assert planview.render([], as_json=False) == ""
    assert json.loads(planview.render([], as_json=True)) == []
