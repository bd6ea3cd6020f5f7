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


def test_plan_reads_and_compares_as_a_pass_does(tmp_path, conf, journal, stores, monkeypatch) -> None:
    """``plan`` (planview.compute) over a journal and fake glances: the rows a pass finds, unchanged
    since the pass's journal reads moved to reconciler.read_inputs."""
    from .conftest import FakeClient, add_listing, image_record
    from .test_eventdesk import synced_everywhere

    a, b, c = A, B, "cccccccc-0000-4000-8000-000000000003"
    for image_id in (a, c):
        synced_everywhere(journal, image_id)
    cascading = FakeClient()
    for image_id in (a, b):  # c is gone (404): its delete is held (1 of 2 tracked is over 10 %)
        cascading.images.records[image_id] = image_record(image_id, store_dir=stores.store.store_dir)
    cascading.images.records[a]["locations"].append({"url": f"cascaded://RegionOne/{a}", "metadata": {}})
    d = "dddddddd-0000-4000-8000-000000000004"  # a queued snapshot whose events were all lost
    cascading.images.records[d] = {"id": d, "status": "queued", "locations": [
        {"url": f"cascaded://RegionOne/{d}", "metadata": {}}]}
    regional = FakeClient()
    regional.images.records[a] = {k: v for k, v in cascading.images.records[a].items() if k != "locations"}
    other = FakeClient()
    other.images.records[a] = dict(regional.images.records[a], name="renamed by hand")
    for fake in (cascading, regional, other):
        add_listing(fake.images)
    clients = iter([cascading, regional, other])
    monkeypatch.setattr(planview.glance, "make_client", lambda endpoint: next(clients))
    rows = planview.compute(conf, 2_000_000.0)
    assert [(r["image_id"], r["region"], r["action"], r["reason"]) for r in rows] == [
        (a, "RegionTwo", "update", "metadata differs: name"),
        (b, "*", "sync", "active in the cascading glance, unknown to the journal"),
        (c, "*", "delete-held", "gone from the cascading glance (404); over the reconciler's safety limit"),
        (d, "*", "sync", "queued snapshot in the cascading glance, unknown to the journal (waits for its "
                         "regional image)"),
    ]
