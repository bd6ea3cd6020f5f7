"""The reconciler's comparison of a cascading listing with the journal."""

from __future__ import annotations

import pytest
from glanceclient import exc as glance_exc

from coordinator import reconciler, regiondrift
from glancesync.exceptions import GlanceError

from .conftest import ListingHttp


class ListingImages:
    def __init__(self, visible: dict[str, str], hidden: dict[str, str], existing: set[str]) -> None:
        self.visible, self.hidden, self.existing = visible, hidden, existing
        self.filters: list[dict] = []

    def list(self, filters: dict, page_size: int = 20):
        self.filters.append(filters)
        source = self.hidden if filters.get("os_hidden") else self.visible
        return iter([{"id": i, "status": s} for i, s in source.items()])

    def get(self, image_id: str) -> dict:
        if image_id not in self.existing:
            raise glance_exc.HTTPNotFound("gone")
        return {"id": image_id}


class Client:
    def __init__(self, images: ListingImages) -> None:
        self.images = images
        self.http_client = ListingHttp(images)


def inputs(tracked=(), regions=()) -> reconciler.Inputs:
    policy = regiondrift.Policy(tuple(regions), "ALL", 1000.0)
    return reconciler.Inputs(known=set(), tracked=set(tracked), facts={}, policy=policy)


def test_active_images_unknown_to_the_journal_are_missing() -> None:
    drift = reconciler.find_drift(
        {i: {"id": i, "status": s} for i, s in (("a", "active"), ("b", "active"), ("q", "queued"),
                                                ("d", "deactivated"))},
        known={"b"}, tracked=(),
        exists=lambda i: True,
    )
    assert drift.missing == ["a", "d"]
    assert drift.vanished == []


def test_a_queued_snapshot_unknown_to_the_journal_is_missing_but_not_a_queued_image() -> None:
    def queued(image_id: str, *urls: str) -> dict:
        return {"id": image_id, "status": "queued", "locations": [{"url": u, "metadata": {}} for u in urls]}

    listed = {
        "s": queued("s", "cascaded://RegionA/s"),  # a snapshot whose every event was lost
        "n": queued("n"),  # an image being created
        "f": queued("f", "cascaded://RegionA/f", "file:///srv/f"),  # not a snapshot
        "x": queued("x", "cascaded://Mars/x"),  # a region we do not sync
        "k": queued("k", "cascaded://RegionA/k"),  # its event is in the journal
    }
    drift = reconciler.find_drift(listed, known={"k"}, tracked=(), exists=lambda i: True, regions=["RegionA"])
    assert drift.missing == ["s"] and drift.queued_snapshots == ["s"]
    assert reconciler.synthetic_events(drift.missing, [], 3)[0]["kind"] == "uploaded"


def test_only_images_confirmed_gone_are_vanished() -> None:
    drift = reconciler.find_drift({}, known={"x", "y"}, tracked={"x", "y"}, exists=lambda i: i == "y")
    assert drift.vanished == ["x"]


def test_synthetic_events_carry_the_pass_generation_and_valid_kinds() -> None:
    a, b = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
    events = reconciler.synthetic_events([a], [b], generation=7)
    assert [(e["kind"], e["image_id"]) for e in events] == [("uploaded", a), ("deleted", b)]
    later = reconciler.synthetic_events([a], [b], generation=8)
    # A later pass gets new ids, so a delete that failed can be tried again.
    assert not {e["event_id"] for e in events} & {e["event_id"] for e in later}
    assert events == reconciler.synthetic_events([a], [b], generation=7)
    uuid_id = "11111111-2222-3333-4444-555555555555"
    longest = reconciler.synthetic_events([uuid_id], [], generation=9_999_999)[0]["event_id"]
    assert len(longest) <= 64  # events.event_id is a String(64)
    from glancesync import protocol

    for event in events:  # each must pass the wire contract the journal's events follow
        protocol.decode(protocol.encode("event", event))


def test_drift_counts_the_tracked_images() -> None:
    drift = reconciler.find_drift({}, known={"x", "y"}, tracked={"x", "y"}, exists=lambda i: False)
    assert drift.vanished == ["x", "y"] and drift.tracked == 2


@pytest.mark.parametrize(("count", "tracked", "max_deletes", "max_percent", "over"), [
    (0, 0, 10, 10.0, False),
    (10, 1000, 10, 10.0, False),
    (11, 1000, 10, 10.0, True),     # more than reconcile_max_deletes
    (5, 40, 10, 10.0, True),        # 12.5 % of the tracked images
    (4, 40, 10, 10.0, False),       # exactly 10 %
    (1, 1, 10, 10.0, True),         # the only tracked image: 100 %
    (1, 1, 10, 0.0, False),         # 0 disables the percentage
    (500, 1000, 0, 60.0, False),    # 0 disables the count
    (500, 1000, 0, 0.0, False),
])
def test_over_limit(count, tracked, max_deletes, max_percent, over) -> None:
    assert reconciler.over_limit(count, tracked, max_deletes, max_percent) is over


def test_a_pass_over_the_limit_deletes_none_but_what_was_confirmed() -> None:
    gone = [f"i{n}" for n in range(12)]
    plan = reconciler.limit_deletes(gone, tracked=100, confirmed=(), max_deletes=10, max_percent=50)
    assert plan.delete == [] and plan.held == sorted(gone)
    plan = reconciler.limit_deletes(gone, tracked=100, confirmed=gone[:11], max_deletes=10, max_percent=50)
    assert plan.delete == sorted(gone) and plan.held == []  # i11 alone is within the limit
    plan = reconciler.limit_deletes(gone, tracked=100, confirmed=gone[:1], max_deletes=10, max_percent=50)
    assert plan.delete == ["i0"] and plan.held == sorted(gone[1:])  # 11 unconfirmed: still over
    plan = reconciler.limit_deletes(gone[:3], tracked=100, confirmed=(), max_deletes=10, max_percent=50)
    assert plan.delete == sorted(gone[:3]) and plan.held == []


def test_scan_lists_hidden_images_too_and_confirms_with_get() -> None:
    a, h = "aaaaaaaa-0000-4000-8000-000000000001", "eeeeeeee-0000-4000-8000-000000000002"
    images = ListingImages(visible={a: "active", "../../etc/passwd": "active"}, hidden={h: "active"},
                           existing={a, h, "t2"})
    drift = reconciler.scan(Client(images), lambda region: None, inputs(tracked={"t1", "t2"}), endpoint="http://c")
    assert drift.missing == [a, h]  # an entry whose id is not a glance id is ignored
    assert drift.vanished == ["t1"]
    assert {f["os_hidden"] for f in images.filters} == {False, True}


def test_scan_translates_glance_errors() -> None:
    class Broken:
        def list(self, filters, page_size=20):
            raise glance_exc.HTTPServiceUnavailable("down")

    with pytest.raises(GlanceError) as caught:
        reconciler.scan(Client(Broken()), lambda region: None, inputs(), endpoint="http://c")
    assert caught.value.retryable
